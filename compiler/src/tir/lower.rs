//! Checking and typing: syntax tree -> typed IR, or every error found.
//!
//! Each statement is checked on its own: names (defined before use, not
//! redefined), the op and its arity, every attribute (known, present when
//! required, of the right kind and in range), dtypes, shapes and broadcasting, and
//! the result-type annotation. A statement with an error still defines its name
//! (as "poisoned"), so later uses do not repeat the error; all errors of a file
//! are reported together.

use std::collections::HashMap;

use super::ast::{self, AttrValue, OperandExpr, Span, Spanned, Stmt, TypeExpr};
use super::diag::Diagnostic;
use super::ir::*;
use super::types::{ScalarType, TensorType};

type R<T> = Result<T, Diagnostic>;

enum Binding {
    Value(ValueId, Span),
    /// Defined by a statement with an error: uses are silently skipped.
    Poisoned,
}

struct Cx {
    nodes: Vec<Node>,
    names: HashMap<String, Binding>,
    diags: Vec<Diagnostic>,
}

/// Lowers the one function of a module.
pub fn lower(m: &ast::Module) -> Result<Func, Vec<Diagnostic>> {
    let Some(f) = m.funcs.first() else {
        return Err(vec![Diagnostic::new(
            0..0,
            "the file defines no function (expected `func @name(...) -> type { ... }`)",
        )]);
    };
    let mut cx = Cx { nodes: Vec::new(), names: HashMap::new(), diags: Vec::new() };
    for extra in &m.funcs[1..] {
        cx.diags.push(
            Diagnostic::new(extra.head.clone(), "only one function per file is supported")
                .with_label(f.head.clone(), "the first function is here"),
        );
    }
    for (name, te) in &f.params {
        let ty = match lower_type(te) {
            Ok(t) => t,
            Err(d) => {
                cx.diags.push(d);
                cx.names.insert(name.node.clone(), Binding::Poisoned);
                continue;
            }
        };
        if let Err(d) = cx.define(name) {
            cx.diags.push(d);
            continue;
        }
        let id = ValueId(cx.nodes.len() as u32);
        cx.nodes.push(Node {
            name: name.node.clone(),
            op: Op::Param,
            operands: Vec::new(),
            ty,
            span: name.span.clone(),
        });
        cx.names.insert(name.node.clone(), Binding::Value(id, name.span.clone()));
    }
    let num_params = cx.nodes.len();
    let declared: Vec<Option<TensorType>> = f
        .results
        .iter()
        .map(|t| match lower_type(t) {
            Ok(t) => Some(t),
            Err(d) => {
                cx.diags.push(d);
                None
            }
        })
        .collect();
    let mut results = None;
    for stmt in &f.body {
        match stmt {
            Stmt::Error => {}
            Stmt::Let { span, .. } if results.is_some() => {
                cx.diags.push(Diagnostic::new(span.clone(), "statement after `return` (return ends the function)"));
            }
            Stmt::Let { name, op, operands, attrs, ty, span } => {
                let outcome = cx.statement(op, operands, attrs, ty.as_ref(), span);
                if let Err(d) = cx.define(name) {
                    cx.diags.push(d);
                    continue;
                }
                match outcome {
                    Ok(Some((op, operands, ty))) => {
                        let id = ValueId(cx.nodes.len() as u32);
                        cx.nodes.push(Node { name: name.node.clone(), op, operands, ty, span: span.clone() });
                        cx.names.insert(name.node.clone(), Binding::Value(id, name.span.clone()));
                    }
                    Ok(None) => {
                        cx.names.insert(name.node.clone(), Binding::Poisoned);
                    }
                    Err(d) => {
                        cx.diags.push(d);
                        cx.names.insert(name.node.clone(), Binding::Poisoned);
                    }
                }
            }
            Stmt::Return { values, span } => {
                if results.is_some() {
                    cx.diags.push(Diagnostic::new(span.clone(), "a function has one `return`"));
                    continue;
                }
                let mut ids = Vec::new();
                let mut ok = true;
                for v in values {
                    match cx.lookup(v) {
                        Ok(Some(id)) => ids.push((id, v.span.clone())),
                        Ok(None) => ok = false,
                        Err(d) => {
                            cx.diags.push(d);
                            ok = false;
                        }
                    }
                }
                results = Some(ids.iter().map(|(id, _)| *id).collect::<Vec<_>>());
                if !ok {
                    continue;
                }
                if ids.len() != declared.len() {
                    cx.diags.push(Diagnostic::new(
                        span.clone(),
                        format!(
                            "`return` gives {} value{} but the function declares {} result{}",
                            ids.len(),
                            if ids.len() == 1 { "" } else { "s" },
                            declared.len(),
                            if declared.len() == 1 { "" } else { "s" }
                        ),
                    ));
                    continue;
                }
                for ((id, vspan), (want, te)) in ids.iter().zip(declared.iter().zip(&f.results)) {
                    let got = &cx.nodes[id.0 as usize].ty;
                    if let Some(want) = want {
                        if got != want {
                            cx.diags.push(
                                Diagnostic::new(
                                    vspan.clone(),
                                    format!("returns {got}, but the function declares {want}"),
                                )
                                .with_label(te.span.clone(), "declared here"),
                            );
                        }
                    }
                }
            }
        }
    }
    let Some(results) = results else {
        cx.diags.push(Diagnostic::new(f.end.clone(), "the function ends without `return`"));
        return Err(cx.diags);
    };
    if !cx.diags.is_empty() {
        cx.diags.sort_by_key(|d| d.span.start);
        return Err(cx.diags);
    }
    Ok(Func { name: f.name.node.clone(), nodes: cx.nodes, num_params, results })
}

fn lower_type(te: &TypeExpr) -> R<TensorType> {
    let dtype = ScalarType::from_name(&te.dtype.node).ok_or_else(|| {
        Diagnostic::new(te.dtype.span.clone(), format!("unknown dtype `{}`", te.dtype.node))
            .with_note("dtypes: f32, f16, bf16, f8e4m3, f8e5m2, i8, i32, i1")
    })?;
    if te.dims.len() > 8 {
        return Err(Diagnostic::new(te.span.clone(), format!("{} dims; at most 8 are supported", te.dims.len())));
    }
    let shape: Vec<u64> = te.dims.iter().map(|d| d.node).collect();
    if shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_none_or(|n| n > 1 << 40) {
        return Err(Diagnostic::new(te.span.clone(), "tensor has more than 2^40 elements"));
    }
    Ok(TensorType::new(dtype, shape))
}

/// A resolved operand: a value with its type, or a literal.
#[derive(Clone)]
enum Arg {
    Value(ValueId, TensorType, Span),
    Literal(f64, Span),
}

impl Arg {
    fn span(&self) -> Span {
        match self {
            Arg::Value(_, _, s) | Arg::Literal(_, s) => s.clone(),
        }
    }
}

struct Attrs<'a> {
    list: &'a [(Spanned<String>, Spanned<AttrValue>)],
    used: Vec<bool>,
    op: &'a str,
}

impl<'a> Attrs<'a> {
    fn get(&mut self, name: &str) -> Option<&'a Spanned<AttrValue>> {
        let i = self.list.iter().position(|(n, _)| n.node == name)?;
        self.used[i] = true;
        Some(&self.list[i].1)
    }

    fn kind_error(&self, name: &str, v: &Spanned<AttrValue>, want: &str) -> Diagnostic {
        let found = match &v.node {
            AttrValue::Int(_) => "an integer",
            AttrValue::Float(_) => "a float",
            AttrValue::Bool(_) => "a boolean",
            AttrValue::Str(_) => "a string",
            AttrValue::Ident(_) => "a name",
            AttrValue::List(_) => "a list",
        };
        Diagnostic::new(v.span.clone(), format!("attribute `{name}` of `{}` must be {want}, found {found}", self.op))
    }

    fn int(&mut self, name: &str) -> R<Option<(i64, Span)>> {
        match self.get(name) {
            None => Ok(None),
            Some(Spanned { node: AttrValue::Int(i), span }) => Ok(Some((*i, span.clone()))),
            Some(v) => Err(self.kind_error(name, v, "an integer")),
        }
    }

    fn float(&mut self, name: &str) -> R<Option<(f64, Span)>> {
        match self.get(name) {
            None => Ok(None),
            Some(Spanned { node: AttrValue::Int(i), span }) => Ok(Some((*i as f64, span.clone()))),
            Some(Spanned { node: AttrValue::Float(f), span }) => Ok(Some((*f, span.clone()))),
            Some(v) => Err(self.kind_error(name, v, "a number")),
        }
    }

    fn boolean(&mut self, name: &str) -> R<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Spanned { node: AttrValue::Bool(b), .. }) => Ok(Some(*b)),
            Some(v) => Err(self.kind_error(name, v, "`true` or `false`")),
        }
    }

    fn word(&mut self, name: &str) -> R<Option<(String, Span)>> {
        match self.get(name) {
            None => Ok(None),
            Some(Spanned { node: AttrValue::Ident(s) | AttrValue::Str(s), span }) => {
                Ok(Some((s.clone(), span.clone())))
            }
            Some(v) => Err(self.kind_error(name, v, "a name")),
        }
    }

    fn ints(&mut self, name: &str) -> R<Option<(Vec<i64>, Span)>> {
        match self.get(name) {
            None => Ok(None),
            Some(v @ Spanned { node: AttrValue::List(items), span }) => {
                let mut out = Vec::new();
                for item in items {
                    match item.node {
                        AttrValue::Int(i) => out.push(i),
                        _ => return Err(self.kind_error(name, v, "a list of integers")),
                    }
                }
                Ok(Some((out, span.clone())))
            }
            Some(v) => Err(self.kind_error(name, v, "a list of integers")),
        }
    }

    fn finish(self) -> R<()> {
        for (i, (n, _)) in self.list.iter().enumerate() {
            if self.list[..i].iter().any(|(m, _)| m.node == n.node) {
                return Err(Diagnostic::new(n.span.clone(), format!("attribute `{}` is given twice", n.node)));
            }
            if !self.used[i] {
                return Err(Diagnostic::new(n.span.clone(), format!("`{}` has no attribute `{}`", self.op, n.node)));
            }
        }
        Ok(())
    }
}

fn axis(a: i64, rank: usize, span: &Span, what: &str) -> R<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        let range = if rank == 0 { "none (the operand is a scalar)".to_string() } else { format!("-{r}..{}", r - 1) };
        return Err(Diagnostic::new(
            span.clone(),
            format!("{what} {a} is out of range for rank {rank} (valid: {range})"),
        ));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// numpy broadcasting of two shapes.
fn broadcast(a: &[u64], b: &[u64]) -> Option<Vec<u64>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

fn shape_str(s: &[u64]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

impl Cx {
    fn define(&self, name: &Spanned<String>) -> R<()> {
        if let Some(b) = self.names.get(&name.node) {
            let mut d = Diagnostic::new(name.span.clone(), format!("`%{}` is already defined", name.node));
            if let Binding::Value(_, prev) = b {
                d = d.with_label(prev.clone(), "first defined here");
            }
            return Err(d);
        }
        Ok(())
    }

    fn lookup(&self, name: &Spanned<String>) -> R<Option<ValueId>> {
        match self.names.get(&name.node) {
            Some(Binding::Value(id, _)) => Ok(Some(*id)),
            Some(Binding::Poisoned) => Ok(None),
            None => Err(Diagnostic::new(name.span.clone(), format!("undefined value `%{}`", name.node))),
        }
    }

    /// Checks one statement; `Ok(None)` when an operand is poisoned.
    fn statement(
        &self,
        op: &Spanned<String>,
        operands: &[OperandExpr],
        attrs: &[(Spanned<String>, Spanned<AttrValue>)],
        annotation: Option<&TypeExpr>,
        span: &Span,
    ) -> R<Option<(Op, Vec<Operand>, TensorType)>> {
        let mut args = Vec::new();
        for o in operands {
            match o {
                OperandExpr::Value(v) => match self.lookup(v)? {
                    Some(id) => args.push(Arg::Value(id, self.nodes[id.0 as usize].ty.clone(), v.span.clone())),
                    None => return Ok(None),
                },
                OperandExpr::Literal(l) => args.push(Arg::Literal(l.node, l.span.clone())),
            }
        }
        let annotated = annotation.map(lower_type).transpose()?;
        let name = op.node.as_str();
        if !OP_NAMES.contains(&name) {
            let mut d = Diagnostic::new(op.span.clone(), format!("unknown op `{name}`"));
            if let Some(close) = OP_NAMES.iter().find(|o| o.starts_with(&name[..name.len().min(3)])) {
                d = d.with_note(format!("did you mean `{close}`?"));
            }
            return Err(d.with_note(format!("ops: {}", OP_NAMES.join(", "))));
        }
        let mut at = Attrs { list: attrs, used: vec![false; attrs.len()], op: name };
        let (op_ir, ty) = self.check_op(name, &op.span, &args, &mut at, annotated.as_ref(), span)?;
        at.finish()?;
        // The annotation, where given, must agree (matmul may widen to its accumulator).
        if let (Some(want), Some(te)) = (&annotated, annotation) {
            let ok = want == &ty || (matches!(op_ir, Op::Matmul { .. }) && want.shape == ty.shape);
            if !ok {
                return Err(Diagnostic::new(
                    te.span.clone(),
                    format!("annotated type {want} does not match the inferred {ty}"),
                ));
            }
        }
        let ty = match (&op_ir, annotated) {
            (Op::Matmul { .. }, Some(a)) => a,
            _ => ty,
        };
        let operands = args
            .iter()
            .map(|a| match a {
                Arg::Value(id, ..) => Operand::Value(*id),
                Arg::Literal(v, _) => Operand::Scalar(*v),
            })
            .collect();
        Ok(Some((op_ir, operands, ty)))
    }

    fn arity(&self, name: &str, op_span: &Span, args: &[Arg], n: usize) -> R<()> {
        if args.len() != n {
            let plural = if n == 1 { "" } else { "s" };
            return Err(Diagnostic::new(
                op_span.clone(),
                format!("`{name}` takes {n} operand{plural}, found {}", args.len()),
            ));
        }
        Ok(())
    }

    fn value<'x>(&self, name: &str, arg: &'x Arg) -> R<&'x TensorType> {
        match arg {
            Arg::Value(_, t, _) => Ok(t),
            Arg::Literal(_, s) => Err(Diagnostic::new(s.clone(), format!("`{name}` takes values here, not a literal"))),
        }
    }

    fn float_value<'x>(&self, name: &str, arg: &'x Arg) -> R<&'x TensorType> {
        let t = self.value(name, arg)?;
        if !t.dtype.is_float() {
            return Err(Diagnostic::new(arg.span(), format!("`{name}` needs a float operand, found {}", t.dtype)));
        }
        Ok(t)
    }

    /// Elementwise operands: values broadcast; literals take the values' dtype.
    fn elementwise(&self, name: &str, args: &[Arg]) -> R<TensorType> {
        let mut ty: Option<(TensorType, Span)> = None;
        for a in args {
            if let Arg::Value(_, t, s) = a {
                match &mut ty {
                    None => ty = Some((t.clone(), s.clone())),
                    Some((acc, first)) => {
                        if acc.dtype != t.dtype {
                            return Err(Diagnostic::new(
                                s.clone(),
                                format!(
                                    "`{name}` operands must have one dtype: this is {}, the first is {}",
                                    t.dtype, acc.dtype
                                ),
                            )
                            .with_label(first.clone(), format!("{}", acc.dtype)));
                        }
                        acc.shape = broadcast(&acc.shape, &t.shape).ok_or_else(|| {
                            Diagnostic::new(
                                s.clone(),
                                format!("cannot broadcast {} with {}", shape_str(&t.shape), shape_str(&acc.shape)),
                            )
                            .with_label(first.clone(), shape_str(&acc.shape))
                            .with_note("broadcasting aligns trailing dims; each pair must be equal or contain a 1")
                        })?;
                    }
                }
            }
        }
        let (ty, _) = ty.ok_or_else(|| {
            Diagnostic::new(
                args.first().map_or(0..0, Arg::span),
                format!("`{name}` needs at least one value operand (all operands are literals)"),
            )
        })?;
        for a in args {
            if let Arg::Literal(v, s) = a {
                if !ty.dtype.is_float() && (v.fract() != 0.0 || !v.is_finite()) {
                    return Err(Diagnostic::new(
                        s.clone(),
                        format!("literal {v} does not fit the {} operands of `{name}`", ty.dtype),
                    ));
                }
            }
        }
        Ok(ty)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_op(
        &self,
        name: &str,
        op_span: &Span,
        args: &[Arg],
        at: &mut Attrs<'_>,
        annotated: Option<&TensorType>,
        stmt: &Span,
    ) -> R<(Op, TensorType)> {
        Ok(match name {
            "matmul" => {
                self.arity(name, op_span, args, 2)?;
                let a = self.value(name, &args[0])?;
                let b = self.value(name, &args[1])?;
                if a.dtype != b.dtype {
                    return Err(Diagnostic::new(
                        args[1].span(),
                        format!("`matmul` operands must have one dtype: {} and {}", a.dtype, b.dtype),
                    ));
                }
                if a.dtype == ScalarType::I1 || a.dtype == ScalarType::I32 {
                    return Err(Diagnostic::new(
                        args[0].span(),
                        format!("`matmul` takes float or i8 operands, found {}", a.dtype),
                    ));
                }
                for (t, arg) in [(a, &args[0]), (b, &args[1])] {
                    if t.rank() < 2 {
                        return Err(Diagnostic::new(
                            arg.span(),
                            format!("`matmul` operands have rank 2 or more, found {t}"),
                        ));
                    }
                }
                let transpose_a = at.boolean("transpose_a")?.unwrap_or(false);
                let transpose_b = at.boolean("transpose_b")?.unwrap_or(false);
                let (ra, rb) = (a.rank(), b.rank());
                let (m, ka) =
                    if transpose_a { (a.shape[ra - 1], a.shape[ra - 2]) } else { (a.shape[ra - 2], a.shape[ra - 1]) };
                let (kb, n) =
                    if transpose_b { (b.shape[rb - 1], b.shape[rb - 2]) } else { (b.shape[rb - 2], b.shape[rb - 1]) };
                if ka != kb {
                    let where_a = if transpose_a { "second-to-last, transpose_a" } else { "last" };
                    let where_b = if transpose_b { "last, transpose_b" } else { "second-to-last" };
                    return Err(Diagnostic::new(
                        args[1].span(),
                        format!("`matmul` contraction dims differ: {a} has K = {ka} (its {where_a} dim), {b} has K = {kb} (its {where_b})"),
                    ));
                }
                let batch = broadcast(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2]).ok_or_else(|| {
                    Diagnostic::new(
                        args[1].span(),
                        format!(
                            "cannot broadcast the batch dims {} and {}",
                            shape_str(&a.shape[..a.rank() - 2]),
                            shape_str(&b.shape[..b.rank() - 2])
                        ),
                    )
                })?;
                let mut shape = batch;
                shape.push(m);
                shape.push(n);
                if let Some(t) = annotated {
                    let allowed = if a.dtype.is_int() {
                        t.dtype == ScalarType::I32 || t.dtype == a.dtype
                    } else {
                        t.dtype.is_float()
                    };
                    if !allowed {
                        return Err(Diagnostic::new(
                            stmt.clone(),
                            format!("`matmul` of {} operands cannot produce {}", a.dtype, t.dtype),
                        ));
                    }
                }
                (Op::Matmul { transpose_a, transpose_b }, TensorType::new(a.dtype, shape))
            }
            "transpose" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.value(name, &args[0])?;
                let (perm, pspan) = required(name, at.ints("perm")?, "perm", stmt, "[1, 0]")?;
                let mut seen = vec![false; t.rank()];
                let mut p = Vec::new();
                for &x in &perm {
                    let a = axis(x, t.rank(), &pspan, "perm entry")?;
                    if std::mem::replace(&mut seen[a], true) {
                        return Err(Diagnostic::new(pspan, format!("`perm` names axis {a} twice")));
                    }
                    p.push(a);
                }
                if p.len() != t.rank() {
                    return Err(Diagnostic::new(
                        pspan,
                        format!("`perm` has {} entries; the operand {t} has rank {}", p.len(), t.rank()),
                    ));
                }
                let shape = p.iter().map(|&i| t.shape[i]).collect();
                (Op::Transpose { perm: p }, TensorType::new(t.dtype, shape))
            }
            "reshape" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.value(name, &args[0])?;
                let (dims, sspan) = required(name, at.ints("shape")?, "shape", stmt, "[2, 3]")?;
                let known: i64 = dims.iter().filter(|&&d| d != -1).product();
                let holes = dims.iter().filter(|&&d| d == -1).count();
                if dims.iter().any(|&d| d < -1) || holes > 1 {
                    return Err(Diagnostic::new(sspan, "`shape` entries are sizes, with at most one -1 (inferred)"));
                }
                let total = t.elems() as i64;
                let shape: Vec<u64> = if holes == 1 {
                    if known == 0 || total % known != 0 {
                        return Err(Diagnostic::new(
                            sspan,
                            format!("cannot infer the -1 dim: {total} elements are not a multiple of {known}"),
                        ));
                    }
                    dims.iter().map(|&d| if d == -1 { (total / known) as u64 } else { d as u64 }).collect()
                } else {
                    dims.iter().map(|&d| d as u64).collect()
                };
                let n: u64 = shape.iter().product();
                if n != t.elems() {
                    return Err(Diagnostic::new(
                        sspan,
                        format!("`reshape` to {} ({n} elements) from {t} ({} elements)", shape_str(&shape), t.elems()),
                    ));
                }
                (Op::Reshape { shape: shape.clone() }, TensorType::new(t.dtype, shape))
            }
            "add" | "sub" | "mul" | "div" | "max" | "min" => {
                self.arity(name, op_span, args, 2)?;
                let ty = self.elementwise(name, args)?;
                if ty.dtype == ScalarType::I1 || (name == "div" && !ty.dtype.is_float()) {
                    return Err(Diagnostic::new(args[0].span(), format!("`{name}` is not defined on {}", ty.dtype)));
                }
                let op = match name {
                    "add" => BinaryOp::Add,
                    "sub" => BinaryOp::Sub,
                    "mul" => BinaryOp::Mul,
                    "div" => BinaryOp::Div,
                    "max" => BinaryOp::Max,
                    _ => BinaryOp::Min,
                };
                (Op::Binary(op), ty)
            }
            "neg" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.value(name, &args[0])?;
                if t.dtype == ScalarType::I1 {
                    return Err(Diagnostic::new(args[0].span(), "`neg` is not defined on i1"));
                }
                (Op::Unary(UnaryOp::Neg), t.clone())
            }
            "exp" | "tanh" | "erf" | "sigmoid" | "rsqrt" | "sqrt" | "recip" | "relu" | "silu" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.float_value(name, &args[0])?;
                let u = match name {
                    "exp" => UnaryOp::Exp,
                    "tanh" => UnaryOp::Tanh,
                    "erf" => UnaryOp::Erf,
                    "sigmoid" => UnaryOp::Sigmoid,
                    "rsqrt" => UnaryOp::Rsqrt,
                    "sqrt" => UnaryOp::Sqrt,
                    "recip" => UnaryOp::Recip,
                    "relu" => UnaryOp::Relu,
                    _ => UnaryOp::Silu,
                };
                (Op::Unary(u), t.clone())
            }
            "gelu" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.float_value(name, &args[0])?;
                let approx = match at.word("approx")? {
                    None => GeluApprox::None,
                    Some((w, _)) if w == "none" => GeluApprox::None,
                    Some((w, _)) if w == "tanh" => GeluApprox::Tanh,
                    Some((w, s)) => {
                        return Err(Diagnostic::new(s, format!("`approx` is \"tanh\" or \"none\", found \"{w}\"")))
                    }
                };
                (Op::Gelu { approx }, t.clone())
            }
            "reduce_sum" | "reduce_max" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.value(name, &args[0])?;
                if t.dtype == ScalarType::I1 {
                    return Err(Diagnostic::new(args[0].span(), format!("`{name}` is not defined on i1")));
                }
                let (list, aspan) = required(name, at.ints("axes")?, "axes", stmt, "[1]")?;
                let keepdims = at.boolean("keepdims")?.unwrap_or(false);
                let mut axes = Vec::new();
                for &a in &list {
                    let a = axis(a, t.rank(), &aspan, "axis")?;
                    if axes.contains(&a) {
                        return Err(Diagnostic::new(aspan, format!("`axes` names axis {a} twice")));
                    }
                    axes.push(a);
                }
                axes.sort_unstable();
                let shape = (0..t.rank())
                    .filter_map(|i| if axes.contains(&i) { keepdims.then_some(1) } else { Some(t.shape[i]) })
                    .collect();
                let kind = if name == "reduce_sum" { ReduceKind::Sum } else { ReduceKind::Max };
                (Op::Reduce { kind, axes, keepdims }, TensorType::new(t.dtype, shape))
            }
            "softmax" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.float_value(name, &args[0])?;
                let (a, aspan) = required(name, at.int("axis")?, "axis", stmt, "-1")?;
                (Op::Softmax { axis: axis(a, t.rank(), &aspan, "axis")? }, t.clone())
            }
            "cast" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.value(name, &args[0])?;
                let (w, wspan) = required(name, at.word("to")?, "to", stmt, "bf16")?;
                let to =
                    ScalarType::from_name(&w).ok_or_else(|| Diagnostic::new(wspan, format!("unknown dtype `{w}`")))?;
                (Op::Cast { to }, TensorType::new(to, t.shape.clone()))
            }
            "const" => {
                self.arity(name, op_span, args, 0)?;
                let (value, vspan) = required(name, at.float("value")?, "value", stmt, "0.0")?;
                let t = annotated.ok_or_else(|| {
                    Diagnostic::new(stmt.clone(), "`const` needs its type: `%c = const() {value = 1.0} : f32[4]`")
                })?;
                if !t.dtype.is_float() && (value.fract() != 0.0 || !value.is_finite()) {
                    return Err(Diagnostic::new(vspan, format!("value {value} does not fit {}", t.dtype)));
                }
                (Op::Const { value }, t.clone())
            }
            "iota" => {
                self.arity(name, op_span, args, 0)?;
                let t = annotated.ok_or_else(|| {
                    Diagnostic::new(stmt.clone(), "`iota` needs its type: `%i = iota() {axis = 0} : i32[4, 4]`")
                })?;
                let (a, aspan) = required(name, at.int("axis")?, "axis", stmt, "0")?;
                if t.dtype == ScalarType::I1 {
                    return Err(Diagnostic::new(stmt.clone(), "`iota` cannot produce i1"));
                }
                (Op::Iota { axis: axis(a, t.rank(), &aspan, "axis")? }, t.clone())
            }
            "compare" => {
                self.arity(name, op_span, args, 2)?;
                let ty = self.elementwise(name, args)?;
                let (w, wspan) = required(name, at.word("kind")?, "kind", stmt, "lt")?;
                let kind = match w.as_str() {
                    "lt" => CompareKind::Lt,
                    "le" => CompareKind::Le,
                    "gt" => CompareKind::Gt,
                    "ge" => CompareKind::Ge,
                    "eq" => CompareKind::Eq,
                    _ => return Err(Diagnostic::new(wspan, format!("`kind` is lt, le, gt, ge or eq, found `{w}`"))),
                };
                (Op::Compare { kind }, TensorType::new(ScalarType::I1, ty.shape))
            }
            "select" => {
                self.arity(name, op_span, args, 3)?;
                let c = self.value(name, &args[0])?;
                if c.dtype != ScalarType::I1 {
                    return Err(Diagnostic::new(
                        args[0].span(),
                        format!("`select`'s condition is i1, found {}", c.dtype),
                    ));
                }
                let ty = self.elementwise(name, &args[1..])?;
                let shape = broadcast(&c.shape, &ty.shape).ok_or_else(|| {
                    Diagnostic::new(
                        args[0].span(),
                        format!("cannot broadcast the condition {} with {}", shape_str(&c.shape), shape_str(&ty.shape)),
                    )
                })?;
                (Op::Select, TensorType::new(ty.dtype, shape))
            }
            "concat" => {
                if args.is_empty() {
                    return Err(Diagnostic::new(op_span.clone(), "`concat` takes one or more operands"));
                }
                let first = self.value(name, &args[0])?.clone();
                let (a, aspan) = required(name, at.int("axis")?, "axis", stmt, "0")?;
                let ax = axis(a, first.rank(), &aspan, "axis")?;
                let mut total = 0;
                for arg in args {
                    let t = self.value(name, arg)?;
                    let same = t.dtype == first.dtype
                        && t.rank() == first.rank()
                        && (0..t.rank()).all(|i| i == ax || t.shape[i] == first.shape[i]);
                    if !same {
                        return Err(Diagnostic::new(
                            arg.span(),
                            format!("`concat` operands must match except along axis {ax}: {t} and {first}"),
                        ));
                    }
                    total += t.shape[ax];
                }
                let mut shape = first.shape.clone();
                shape[ax] = total;
                (Op::Concat { axis: ax }, TensorType::new(first.dtype, shape))
            }
            "slice" => {
                self.arity(name, op_span, args, 1)?;
                let t = self.value(name, &args[0])?;
                let (start, sspan) = required(name, at.ints("start")?, "start", stmt, "[0, 0]")?;
                let (stop, tspan) = required(name, at.ints("stop")?, "stop", stmt, "[2, 2]")?;
                if start.len() != t.rank() || stop.len() != t.rank() {
                    return Err(Diagnostic::new(sspan, format!("`start` and `stop` need one entry per dim of {t}")));
                }
                let mut shape = Vec::new();
                for i in 0..t.rank() {
                    let (a, b) = (start[i], stop[i]);
                    if a < 0 || b < a || b as u64 > t.shape[i] {
                        return Err(Diagnostic::new(
                            tspan,
                            format!("dim {i}: slice {a}..{b} is not inside 0..{} of {t}", t.shape[i]),
                        ));
                    }
                    shape.push((b - a) as u64);
                }
                let start = start.iter().map(|&x| x as u64).collect();
                let stop = stop.iter().map(|&x| x as u64).collect();
                (Op::Slice { start, stop }, TensorType::new(t.dtype, shape))
            }
            "layernorm" | "rmsnorm" => {
                let n = if name == "layernorm" { 3 } else { 2 };
                self.arity(name, op_span, args, n)?;
                let x = self.float_value(name, &args[0])?;
                let (a, aspan) = required(name, at.int("axis")?, "axis", stmt, "-1")?;
                let ax = axis(a, x.rank(), &aspan, "axis")?;
                let eps = at.float("eps")?.map_or(1e-5, |(e, _)| e);
                for arg in &args[1..] {
                    let p = self.value(name, arg)?;
                    if p.dtype != x.dtype || p.shape != [x.shape[ax]] {
                        return Err(Diagnostic::new(
                            arg.span(),
                            format!(
                                "`{name}` parameters are {}[{}] (the normalised axis), found {p}",
                                x.dtype, x.shape[ax]
                            ),
                        ));
                    }
                }
                let op =
                    if name == "layernorm" { Op::LayerNorm { axis: ax, eps } } else { Op::RmsNorm { axis: ax, eps } };
                (op, x.clone())
            }
            "attention" => {
                self.arity(name, op_span, args, 3)?;
                let q = self.float_value(name, &args[0])?;
                let k = self.value(name, &args[1])?;
                let v = self.value(name, &args[2])?;
                if q.rank() < 3 || k.rank() != q.rank() || v.rank() != q.rank() {
                    return Err(Diagnostic::new(op_span.clone(), format!("`attention` takes q, k, v of one rank >= 3 ([..., heads, seq, head_dim]); found {q}, {k}, {v}")));
                }
                if k.dtype != q.dtype || v.dtype != q.dtype {
                    return Err(Diagnostic::new(
                        args[1].span(),
                        format!("`attention` operands must have one dtype: {q}, {k}, {v}"),
                    ));
                }
                let r = q.rank();
                let (hq, d) = (q.shape[r - 3], q.shape[r - 1]);
                let (hk, dk) = (k.shape[r - 3], k.shape[r - 1]);
                if q.shape[..r - 3] != k.shape[..r - 3] || v.shape[..r - 2] != k.shape[..r - 2] {
                    return Err(Diagnostic::new(
                        args[2].span(),
                        format!("`attention` batch, head and sequence dims must agree: {q}, {k}, {v}"),
                    ));
                }
                if dk != d {
                    return Err(Diagnostic::new(
                        args[1].span(),
                        format!("`attention` head_dim differs: q has {d}, k has {dk}"),
                    ));
                }
                if hk == 0 || hq % hk != 0 {
                    return Err(Diagnostic::new(
                        args[1].span(),
                        format!("`attention` query heads ({hq}) must be a multiple of key/value heads ({hk})"),
                    ));
                }
                let causal = at.boolean("causal")?.unwrap_or(false);
                let scale = at.float("scale")?.map_or(1.0 / (d as f64).sqrt(), |(s, _)| s);
                let mut shape = q.shape.clone();
                shape[r - 1] = v.shape[r - 1];
                (Op::Attention { causal, scale }, TensorType::new(q.dtype, shape))
            }
            other => unreachable!("`{other}` is in OP_NAMES but has no rule"),
        })
    }
}

fn required<T>(op: &str, value: Option<T>, attr: &str, stmt: &Span, example: &str) -> R<T> {
    value.ok_or_else(|| {
        Diagnostic::new(stmt.clone(), format!("`{op}` needs the attribute `{attr}` (e.g. `{{{attr} = {example}}}`)"))
    })
}
