//! The checker: types every statement from the op table, for every front end.
//!
//! [`infer`] takes an op name, its operands' types, its attributes and an
//! optional result-type annotation, validates the attributes against the op's
//! [`OpDef`] (known, given once, of the right kind, required ones present,
//! defaults filled in), runs the op's shape rule, and checks the annotation. A
//! [`CheckError`] says where the problem is ([`At`]) so that each front end can
//! point at its own source: the `.tir` front end maps it to spans, an importer
//! to node names. [`Builder`] assembles a [`Func`] statement by statement through
//! [`infer`], so a function built by any front end or pass satisfies the IR's
//! invariants (see [`super`]).

use std::collections::HashMap;

use super::ops::{self, Arity, Attr, AttrDefault, AttrKind, OpDef, Typed};
use super::types::{ScalarType, TensorType};
use super::{Func, Node, Op, Operand, Span, ValueId};

/// Where a check failed, relative to the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The op name (unknown op, operand count).
    Op,
    /// Operand `i`.
    Operand(usize),
    /// The name of the `i`th attribute as given.
    AttrName(usize),
    /// The value of the `i`th attribute as given.
    AttrValue(usize),
    /// The result-type annotation.
    Annotation,
    /// The statement as a whole.
    Statement,
}

/// A statement that does not check: where, what, and what explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckError {
    /// Where.
    pub at: At,
    /// What is wrong.
    pub message: String,
    /// Other places that explain it.
    pub labels: Vec<(At, String)>,
    /// Extra lines (allowed values, hints).
    pub notes: Vec<String>,
}

impl CheckError {
    /// An error at `at`.
    pub fn new(at: At, message: impl Into<String>) -> CheckError {
        CheckError { at, message: message.into(), labels: Vec::new(), notes: Vec::new() }
    }

    fn label(mut self, at: At, text: impl Into<String>) -> CheckError {
        self.labels.push((at, text.into()));
        self
    }

    fn note(mut self, note: impl Into<String>) -> CheckError {
        self.notes.push(note.into());
        self
    }
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// An operand as the checker sees it: a value's type, or a scalar literal.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// A value of this type.
    Value(&'a TensorType),
    /// A literal.
    Literal(f64),
}

/// An attribute's value (given or default) and its position among the given ones.
type AttrSlot = Option<(Attr, Option<usize>)>;

/// A statement's inputs after attribute validation: what a shape rule reads.
pub struct Inputs<'a> {
    /// The op's name.
    pub op: &'static str,
    /// Operands.
    pub args: &'a [Arg<'a>],
    /// The annotation, if any.
    pub annotation: Option<&'a TensorType>,
    /// Each table attribute's value (given or default) and its position as given.
    attrs: Vec<(&'static str, AttrSlot)>,
}

impl<'a> Inputs<'a> {
    fn validate(
        def: &'static OpDef,
        args: &'a [Arg<'a>],
        given: &[(String, Attr)],
        annotation: Option<&'a TensorType>,
    ) -> Result<Inputs<'a>, CheckError> {
        for (i, (name, value)) in given.iter().enumerate() {
            if given[..i].iter().any(|(n, _)| n == name) {
                return Err(CheckError::new(At::AttrName(i), format!("attribute `{name}` is given twice")));
            }
            let Some(a) = def.attrs.iter().find(|a| a.name == name) else {
                return Err(CheckError::new(At::AttrName(i), format!("`{}` has no attribute `{name}`", def.name)));
            };
            check_kind(def.name, a.name, a.kind, value).map_err(|m| CheckError::new(At::AttrValue(i), m))?;
        }
        let mut attrs = Vec::new();
        for a in def.attrs {
            let value = match given.iter().position(|(n, _)| n == a.name) {
                Some(i) => Some((given[i].1.clone(), Some(i))),
                None => match a.default {
                    AttrDefault::Required(example) => {
                        let msg = format!(
                            "`{}` needs the attribute `{}` (e.g. `{{{} = {example}}}`)",
                            def.name, a.name, a.name
                        );
                        return Err(CheckError::new(At::Statement, msg));
                    }
                    AttrDefault::Value(text) => Some((default_value(a.kind, text), None)),
                    AttrDefault::Computed(_) => None,
                },
            };
            attrs.push((a.name, value));
        }
        Ok(Inputs { op: def.name, args, annotation, attrs })
    }

    fn attr(&self, name: &str) -> Option<&(Attr, Option<usize>)> {
        self.attrs.iter().find(|(n, _)| *n == name).and_then(|(_, v)| v.as_ref())
    }

    /// An error at operand `i`.
    pub fn at_operand(&self, i: usize, message: impl Into<String>) -> CheckError {
        CheckError::new(At::Operand(i), message)
    }

    /// An error at attribute `name`'s value (the statement when it was defaulted).
    pub fn at_attr(&self, name: &str, message: impl Into<String>) -> CheckError {
        match self.attr(name) {
            Some((_, Some(i))) => CheckError::new(At::AttrValue(*i), message),
            _ => CheckError::new(At::Statement, message),
        }
    }

    /// An error at the statement.
    pub fn at_statement(&self, message: impl Into<String>) -> CheckError {
        CheckError::new(At::Statement, message)
    }

    /// An error at the op name.
    pub fn at_op(&self, message: impl Into<String>) -> CheckError {
        CheckError::new(At::Op, message)
    }

    /// Operand `i`, which must be a value.
    pub fn value(&self, i: usize) -> Result<&'a TensorType, CheckError> {
        match self.args[i] {
            Arg::Value(t) => Ok(t),
            Arg::Literal(_) => Err(self.at_operand(i, format!("`{}` takes values here, not a literal", self.op))),
        }
    }

    /// Operand `i`, which must be a float value.
    pub fn float_value(&self, i: usize) -> Result<&'a TensorType, CheckError> {
        let t = self.value(i)?;
        if !t.dtype.is_float() {
            return Err(self.at_operand(i, format!("`{}` needs a float operand, found {}", self.op, t.dtype)));
        }
        Ok(t)
    }

    /// Elementwise operands `range`: values of one dtype that broadcast, and
    /// literals that fit that dtype. The broadcast type.
    pub fn elementwise(&self, range: std::ops::Range<usize>) -> Result<TensorType, CheckError> {
        let name = self.op;
        let mut ty: Option<(TensorType, usize)> = None;
        for i in range.clone() {
            let Arg::Value(t) = self.args[i] else { continue };
            let Some((acc, first)) = &mut ty else {
                ty = Some((t.clone(), i));
                continue;
            };
            if acc.dtype != t.dtype {
                let msg =
                    format!("`{name}` operands must have one dtype: this is {}, the first is {}", t.dtype, acc.dtype);
                return Err(self.at_operand(i, msg).label(At::Operand(*first), acc.dtype.to_string()));
            }
            acc.shape = ops::broadcast(&acc.shape, &t.shape).ok_or_else(|| {
                self.at_operand(
                    i,
                    format!("cannot broadcast {} with {}", ops::shape_str(&t.shape), ops::shape_str(&acc.shape)),
                )
                .label(At::Operand(*first), ops::shape_str(&acc.shape))
                .note("broadcasting aligns trailing dims; each pair must be equal or contain a 1")
            })?;
        }
        let Some((ty, _)) = ty else {
            let msg = format!("`{name}` needs at least one value operand (all operands are literals)");
            return Err(self.at_operand(range.start, msg));
        };
        for i in range {
            if let Arg::Literal(v) = self.args[i] {
                if !ty.dtype.is_float() && (v.fract() != 0.0 || !v.is_finite()) {
                    let msg = format!("literal {v} does not fit the {} operands of `{name}`", ty.dtype);
                    return Err(self.at_operand(i, msg));
                }
            }
        }
        Ok(ty)
    }

    /// A boolean attribute (validated, defaulted).
    pub fn bool(&self, name: &str) -> bool {
        matches!(self.attr(name), Some((Attr::Bool(true), _)))
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> i64 {
        match self.attr(name) {
            Some((Attr::Int(v), _)) => *v,
            _ => 0,
        }
    }

    /// A number attribute, if given or defaulted.
    pub fn opt_float(&self, name: &str) -> Option<f64> {
        match self.attr(name) {
            Some((Attr::Float(v), _)) => Some(*v),
            Some((Attr::Int(v), _)) => Some(*v as f64),
            _ => None,
        }
    }

    /// A number attribute.
    pub fn float(&self, name: &str) -> f64 {
        self.opt_float(name).unwrap_or(0.0)
    }

    /// A list-of-integers attribute.
    pub fn ints(&self, name: &str) -> Vec<i64> {
        match self.attr(name) {
            Some((Attr::List(items), _)) => {
                items.iter().filter_map(|a| if let Attr::Int(v) = a { Some(*v) } else { None }).collect()
            }
            _ => Vec::new(),
        }
    }

    /// A word (choice) attribute.
    pub fn word(&self, name: &str) -> String {
        self.attr(name).and_then(|(a, _)| a.word()).unwrap_or("").to_string()
    }

    /// A dtype attribute.
    pub fn dtype(&self, name: &str) -> ScalarType {
        ScalarType::from_name(&self.word(name)).unwrap_or(ScalarType::F32)
    }

    /// Normalises axis `a` of a rank-`rank` tensor (negative counts from the end),
    /// or says it is out of range at attribute `attr`.
    pub fn axis(&self, attr: &str, a: i64, rank: usize, what: &str) -> Result<usize, CheckError> {
        let r = rank as i64;
        if a < -r || a >= r {
            let range =
                if rank == 0 { "none (the operand is a scalar)".to_string() } else { format!("-{r}..{}", r - 1) };
            return Err(self.at_attr(attr, format!("{what} {a} is out of range for rank {rank} (valid: {range})")));
        }
        Ok(if a < 0 { (a + r) as usize } else { a as usize })
    }
}

/// Checks an attribute value against its kind; the message when it does not fit.
fn check_kind(op: &str, name: &str, kind: AttrKind, value: &Attr) -> Result<(), String> {
    let fits = match (kind, value) {
        (AttrKind::Int, Attr::Int(_)) | (AttrKind::Float, Attr::Int(_) | Attr::Float(_)) => true,
        (AttrKind::Bool, Attr::Bool(_)) => true,
        (AttrKind::Ints, Attr::List(items)) => items.iter().all(|i| matches!(i, Attr::Int(_))),
        (AttrKind::DType, Attr::Word(w) | Attr::Str(w)) => {
            return ScalarType::from_name(w).map(|_| ()).ok_or_else(|| format!("unknown dtype `{w}`"));
        }
        (AttrKind::Choice { values, quoted }, Attr::Word(w) | Attr::Str(w)) => {
            if values.contains(&w.as_str()) {
                return Ok(());
            }
            let q = |v: &str| if quoted { format!("\"{v}\"") } else { v.to_string() };
            let (last, rest) = values.split_last().unwrap_or((&"", &[]));
            let list = rest.iter().map(|v| q(v)).collect::<Vec<_>>().join(", ");
            let found = if quoted { q(w) } else { format!("`{w}`") };
            return Err(format!("`{name}` is {list} or {}, found {found}", q(last)));
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("attribute `{name}` of `{op}` must be {}, found {}", kind.want(), value.found()))
    }
}

/// The value of a table default (`.tir` syntax; a test checks every one parses).
fn default_value(kind: AttrKind, text: &str) -> Attr {
    match kind {
        AttrKind::Bool => Attr::Bool(text == "true"),
        AttrKind::Int => Attr::Int(text.parse().unwrap_or(0)),
        AttrKind::Float => Attr::Float(text.parse().unwrap_or(0.0)),
        AttrKind::DType => Attr::Word(text.into()),
        AttrKind::Choice { .. } => Attr::Str(text.trim_matches('"').into()),
        AttrKind::Ints => Attr::List(Vec::new()),
    }
}

fn unknown_op(name: &str) -> CheckError {
    let mut e = CheckError::new(At::Op, format!("unknown op `{name}`"));
    let prefix: String = name.chars().take(3).collect();
    if let Some(close) = ops::names().find(|o| o.starts_with(&prefix)) {
        e = e.note(format!("did you mean `{close}`?"));
    }
    e.note(format!("ops: {}", ops::names().collect::<Vec<_>>().join(", ")))
}

/// Types one statement: the op with normalised attributes and its result type.
pub fn infer(
    op: &str,
    args: &[Arg<'_>],
    attrs: &[(String, Attr)],
    annotation: Option<&TensorType>,
) -> Result<Typed, CheckError> {
    let def = ops::def(op).ok_or_else(|| unknown_op(op))?;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    match def.arity {
        Arity::Exactly(n) if args.len() != n => {
            let msg = format!("`{op}` takes {n} operand{}, found {}", plural(n), args.len());
            return Err(CheckError::new(At::Op, msg));
        }
        Arity::Between(lo, hi) if !(lo..=hi).contains(&args.len()) => {
            return Err(CheckError::new(At::Op, format!("`{op}` takes {lo} to {hi} operands, found {}", args.len())));
        }
        Arity::AtLeast(n) if args.len() < n => {
            let n = if n == 1 { "one".to_string() } else { n.to_string() };
            return Err(CheckError::new(At::Op, format!("`{op}` takes {n} or more operands")));
        }
        _ => {}
    }
    let inputs = Inputs::validate(def, args, attrs, annotation)?;
    let (op_ir, ty) = (def.rule)(&inputs)?;
    let Some(want) = annotation else { return Ok((op_ir, ty)) };
    // A matmul may widen to its accumulator; every other op's annotation must agree.
    let widening = matches!(op_ir, Op::Matmul { .. }) && want.shape == ty.shape;
    if want != &ty && !widening {
        let msg = format!("annotated type {want} does not match the inferred {ty}");
        return Err(CheckError::new(At::Annotation, msg));
    }
    Ok((op_ir, want.clone()))
}

/// Why a value cannot be added to a [`Builder`].
#[derive(Debug, Clone, PartialEq)]
pub enum BuildError {
    /// The statement does not check.
    Check(CheckError),
    /// The name is taken, or not a valid value name.
    Name(String),
    /// A parameter after a statement, or an operand that is not defined.
    Order(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Check(e) => f.write_str(&e.message),
            BuildError::Name(m) | BuildError::Order(m) => f.write_str(m),
        }
    }
}

/// True for a valid value name (`[A-Za-z0-9_.]+`).
pub fn is_value_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Builds a checked [`Func`]: parameters, then statements, each typed by [`infer`].
pub struct Builder {
    func: Func,
    names: HashMap<String, ValueId>,
}

impl Builder {
    /// An empty function named `name`.
    pub fn new(name: &str) -> Builder {
        let func = Func {
            name: name.into(),
            nodes: Vec::new(),
            num_params: 0,
            results: Vec::new(),
            weights: Default::default(),
        };
        Builder { func, names: HashMap::new() }
    }

    fn define(&mut self, name: &str) -> Result<ValueId, BuildError> {
        if !is_value_name(name) {
            return Err(BuildError::Name(format!("`{name}` is not a value name ([A-Za-z0-9_.]+)")));
        }
        if self.names.contains_key(name) {
            return Err(BuildError::Name(format!("`%{name}` is already defined")));
        }
        let id = ValueId(self.func.nodes.len() as u32);
        self.names.insert(name.into(), id);
        Ok(id)
    }

    /// A parameter (all parameters come before the first statement).
    pub fn param(&mut self, name: &str, ty: TensorType, span: Span) -> Result<ValueId, BuildError> {
        if self.func.nodes.len() != self.func.num_params {
            return Err(BuildError::Order(format!("parameter `%{name}` after a statement")));
        }
        let id = self.define(name)?;
        self.func.nodes.push(Node { name: name.into(), op: Op::Param, operands: Vec::new(), ty, span });
        self.func.num_params += 1;
        Ok(id)
    }

    /// The value named `name`.
    pub fn lookup(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }

    /// The name of a value.
    pub fn name(&self, v: ValueId) -> &str {
        &self.func.nodes[v.0 as usize].name
    }

    /// The type of a value.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.func.nodes[v.0 as usize].ty
    }

    /// A statement `%name = op(operands) {attrs} [: annotation]`.
    pub fn push(
        &mut self,
        name: &str,
        op: &str,
        operands: &[Operand],
        attrs: &[(String, Attr)],
        annotation: Option<&TensorType>,
        span: Span,
    ) -> Result<ValueId, BuildError> {
        let n = self.func.nodes.len() as u32;
        if let Some(Operand::Value(v)) = operands.iter().find(|o| matches!(o, Operand::Value(v) if v.0 >= n)) {
            return Err(BuildError::Order(format!("operand {} of `%{name}` is not defined yet", v.0)));
        }
        let args: Vec<Arg<'_>> = operands
            .iter()
            .map(|o| match o {
                Operand::Value(v) => Arg::Value(&self.func.nodes[v.0 as usize].ty),
                Operand::Scalar(x) => Arg::Literal(*x),
            })
            .collect();
        let (op, ty) = infer(op, &args, attrs, annotation).map_err(BuildError::Check)?;
        self.define(name)?;
        self.func.nodes.push(Node { name: name.into(), op, operands: operands.to_vec(), ty, span });
        Ok(ValueId(n))
    }

    /// [`Builder::push`] of a typed op (its attributes go through the same checks).
    pub fn push_op(
        &mut self,
        name: &str,
        op: &Op,
        operands: &[Operand],
        annotation: Option<&TensorType>,
        span: Span,
    ) -> Result<ValueId, BuildError> {
        let def = op.def().ok_or_else(|| BuildError::Order("a parameter is added with `param`".into()))?;
        let attrs: Vec<(String, Attr)> = def.attrs.iter().map(|a| a.name.to_string()).zip(op.attrs()).collect();
        self.push(name, def.name, operands, &attrs, annotation, span)
    }

    /// The function returning `results`.
    pub fn finish(mut self, results: Vec<ValueId>) -> Func {
        self.func.results = results;
        self.func
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_a_valid_value_of_its_kind() {
        for d in ops::OPS {
            for a in d.attrs {
                if let AttrDefault::Value(text) = a.default {
                    let v = default_value(a.kind, text);
                    assert_eq!(check_kind(d.name, a.name, a.kind, &v), Ok(()), "{}.{}", d.name, a.name);
                    if let AttrKind::Float = a.kind {
                        assert!(text.parse::<f64>().is_ok(), "{}.{} = {text}", d.name, a.name);
                    }
                }
            }
        }
    }

    #[test]
    fn every_typed_op_rebuilds_through_the_table() {
        let f32x = |s: &[u64]| TensorType::new(ScalarType::F32, s.to_vec());
        let mut b = Builder::new("t");
        let x = b.param("x", f32x(&[2, 3, 4]), 0..0).unwrap();
        let y = b.push("y", "softmax", &[Operand::Value(x)], &[("axis".into(), Attr::Int(-1))], None, 0..0).unwrap();
        let op = b.func.nodes[y.0 as usize].op.clone();
        assert_eq!(op, Op::Softmax { axis: 2 });
        let z = b.push_op("z", &op, &[Operand::Value(y)], None, 0..0).unwrap();
        assert_eq!(b.ty(z), &f32x(&[2, 3, 4]));
        let e = b.push("w", "softmax", &[Operand::Value(x)], &[("axis".into(), Attr::Int(3))], None, 0..0);
        assert!(matches!(e, Err(BuildError::Check(CheckError { at: At::AttrValue(0), .. }))), "{e:?}");
        assert!(matches!(b.push_op("z", &op, &[Operand::Value(x)], None, 0..0), Err(BuildError::Name(_))));
        assert!(matches!(b.param("p", f32x(&[1]), 0..0), Err(BuildError::Order(_))));
    }
}
