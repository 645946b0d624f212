//! The op table: every tensor-IR op as data, the way the ISA's instructions are.
//!
//! One [`OpDef`] per op gives its name, operand count, attributes (name, kind,
//! default), the shape-and-dtype rule that types it, and the lines docs/tir.md
//! prints for it. The checker ([`super::check`]) validates attributes from the
//! table before a rule runs; the printer ([`super::printer`]) writes attributes
//! in table order; `docs/tir.md`'s op reference is generated from it
//! ([`reference()`]); the test suite's program generator covers every entry.
//! Adding an op is one entry here, one [`Op`] variant with its [`Op::attrs`] arm,
//! and the passes that give it meaning (evaluator, kernels).

use std::fmt::Write as _;

use super::check::{CheckError, Inputs};
use super::types::{ScalarType, TensorType};
use super::{BinaryOp, CompareKind, GeluApprox, Op, ReduceKind, UnaryOp};

/// An attribute value as a front end gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// An integer (with sign).
    Int(i64),
    /// A number (`inf`, `-inf` included).
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// A bare word (dtypes, enum values such as `lt`).
    Word(String),
    /// A quoted string.
    Str(String),
    /// A list.
    List(Vec<Attr>),
}

impl Attr {
    /// What the value is, for "must be X, found Y" messages.
    pub fn found(&self) -> &'static str {
        match self {
            Attr::Int(_) => "an integer",
            Attr::Float(_) => "a float",
            Attr::Bool(_) => "a boolean",
            Attr::Str(_) => "a string",
            Attr::Word(_) => "a name",
            Attr::List(_) => "a list",
        }
    }

    /// The text of a word or a string.
    pub fn word(&self) -> Option<&str> {
        match self {
            Attr::Word(s) | Attr::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// What an attribute holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// An integer.
    Int,
    /// A number (integers are accepted).
    Float,
    /// `true` or `false`.
    Bool,
    /// An element type.
    DType,
    /// One of a few words; `quoted` ones are printed as strings.
    Choice {
        /// The allowed words, in the order messages list them.
        values: &'static [&'static str],
        /// Printed as `"word"` (else bare).
        quoted: bool,
    },
    /// A list of integers.
    Ints,
}

impl AttrKind {
    /// "must be X" in messages.
    pub fn want(self) -> &'static str {
        match self {
            AttrKind::Int => "an integer",
            AttrKind::Float => "a number",
            AttrKind::Bool => "`true` or `false`",
            AttrKind::DType | AttrKind::Choice { .. } => "a name",
            AttrKind::Ints => "a list of integers",
        }
    }

    /// The kind's name in the docs.
    pub fn doc(self) -> String {
        match self {
            AttrKind::Int => "int".into(),
            AttrKind::Float => "float".into(),
            AttrKind::Bool => "bool".into(),
            AttrKind::DType => "dtype".into(),
            AttrKind::Ints => "ints".into(),
            AttrKind::Choice { values, quoted } => {
                let q = |v: &&str| if quoted { format!("\"{v}\"") } else { (*v).to_string() };
                values.iter().map(q).collect::<Vec<_>>().join("\\|")
            }
        }
    }
}

/// When an attribute may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrDefault {
    /// It must be given; the text is an example value for the message.
    Required(&'static str),
    /// It defaults to this value (in `.tir` syntax).
    Value(&'static str),
    /// The rule computes it from the operands (described here).
    Computed(&'static str),
}

/// One attribute of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrDef {
    /// Name.
    pub name: &'static str,
    /// Kind of value.
    pub kind: AttrKind,
    /// Default.
    pub default: AttrDefault,
}

/// How many operands an op takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// Exactly this many.
    Exactly(usize),
    /// At least this many.
    AtLeast(usize),
    /// Between these many, inclusive.
    Between(usize, usize),
}

/// The result of a rule: the typed op and its result type.
pub type Typed = (Op, TensorType);

/// One op of the language.
pub struct OpDef {
    /// Name in `.tir`.
    pub name: &'static str,
    /// Operand count.
    pub arity: Arity,
    /// Scalar literals may stand for tensor operands (the rule says which).
    pub literals: bool,
    /// Attributes, in canonical (printing) order.
    pub attrs: &'static [AttrDef],
    /// Docs: the operands.
    pub operands: &'static str,
    /// Docs: the result.
    pub result: &'static str,
    /// Docs: what the evaluator computes.
    pub semantics: &'static str,
    /// Types the op from validated inputs.
    pub rule: fn(&Inputs<'_>) -> Result<Typed, CheckError>,
}

impl std::fmt::Debug for OpDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpDef({})", self.name)
    }
}

const fn attr(name: &'static str, kind: AttrKind, default: AttrDefault) -> AttrDef {
    AttrDef { name, kind, default }
}

const BOOL_FALSE: AttrDefault = AttrDefault::Value("false");
const EPS: AttrDefault = AttrDefault::Value("1e-5");
const NO_ATTRS: &[AttrDef] = &[];
const AXIS: &[AttrDef] = &[attr("axis", AttrKind::Int, AttrDefault::Required("-1"))];
const AXIS_0: &[AttrDef] = &[attr("axis", AttrKind::Int, AttrDefault::Required("0"))];
const NORM: &[AttrDef] = &[attr("axis", AttrKind::Int, AttrDefault::Required("-1")), attr("eps", AttrKind::Float, EPS)];
const REDUCE: &[AttrDef] =
    &[attr("axes", AttrKind::Ints, AttrDefault::Required("[1]")), attr("keepdims", AttrKind::Bool, BOOL_FALSE)];

const BINARY_DOC: &str = "f32 op, rounded; `max`/`min` return the non-NaN operand; on integers exact then wrapped (i32) or saturated (i8), `div` truncating toward zero with `x / 0 = 0`";
const UNARY_DOC: &str = "libm's `expf`, `tanhf`, `erff`, `sqrtf`, `logf`; `sigmoid = 1/(1+exp(-x))`; `rsqrt = 1/sqrtf(x)`; `silu = x*sigmoid(x)`; `relu` keeps NaN";
const REDUCE_DOC: &str = "fold in row-major order of the reduced index from the first element, f32; over no elements the identity: sum 0, max -inf (integers: the least i32, saturated)";

macro_rules! binary {
    ($name:literal) => {
        OpDef {
            name: $name,
            arity: Arity::Exactly(2),
            literals: true,
            attrs: NO_ATTRS,
            operands: "a, b (one dtype; literal allowed)",
            result: "broadcast shape",
            semantics: BINARY_DOC,
            rule: binary_rule,
        }
    };
}

macro_rules! unary {
    ($name:literal) => {
        OpDef {
            name: $name,
            arity: Arity::Exactly(1),
            literals: false,
            attrs: NO_ATTRS,
            operands: "x (float)",
            result: "same",
            semantics: UNARY_DOC,
            rule: unary_rule,
        }
    };
}

/// Every op of the language, in the order docs/tir.md lists them.
pub static OPS: &[OpDef] = &[
    OpDef {
        name: "matmul",
        arity: Arity::Exactly(2),
        literals: false,
        attrs: &[attr("transpose_a", AttrKind::Bool, BOOL_FALSE), attr("transpose_b", AttrKind::Bool, BOOL_FALSE)],
        operands: "a `[..., M, K]` (`[..., K, M]` with `transpose_a`), b `[..., K, N]` (`[..., N, K]` with `transpose_b`), one dtype (float or i8)",
        result: "`[batch..., M, N]` of the operands' dtype, or the annotation's",
        semantics: "batch dims broadcast; `acc = 0; for k ascending: acc = acc + a[m,k] * b[k,n]` in f32 (i8: exact i32, wrapping), then rounded",
        rule: matmul_rule,
    },
    OpDef {
        name: "transpose",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: &[attr("perm", AttrKind::Ints, AttrDefault::Required("[1, 0]"))],
        operands: "x",
        result: "dims permuted: out dim i is `perm[i]`",
        semantics: "",
        rule: transpose_rule,
    },
    OpDef {
        name: "reshape",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: &[attr("shape", AttrKind::Ints, AttrDefault::Required("[2, 3]"))],
        operands: "x",
        result: "same elements, new shape (one `shape` entry may be -1)",
        semantics: "row-major order kept",
        rule: reshape_rule,
    },
    binary!("add"),
    binary!("sub"),
    binary!("mul"),
    binary!("div"),
    binary!("max"),
    binary!("min"),
    OpDef {
        name: "neg",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: NO_ATTRS,
        operands: "x",
        result: "same",
        semantics: "",
        rule: neg_rule,
    },
    unary!("exp"),
    unary!("tanh"),
    unary!("erf"),
    unary!("sigmoid"),
    unary!("rsqrt"),
    unary!("sqrt"),
    unary!("recip"),
    unary!("relu"),
    unary!("silu"),
    unary!("log"),
    OpDef {
        name: "gelu",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: &[attr(
            "approx",
            AttrKind::Choice { values: &["tanh", "none"], quoted: true },
            AttrDefault::Value("\"none\""),
        )],
        operands: "x (float)",
        result: "same",
        semantics: "`0.5x(1+erf(x/sqrt 2))`, or the tanh form of isa.md",
        rule: gelu_rule,
    },
    OpDef {
        name: "reduce_sum",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: REDUCE,
        operands: "x",
        result: "reduced dims dropped (or 1)",
        semantics: REDUCE_DOC,
        rule: reduce_rule,
    },
    OpDef {
        name: "reduce_max",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: REDUCE,
        operands: "x",
        result: "reduced dims dropped (or 1)",
        semantics: REDUCE_DOC,
        rule: reduce_rule,
    },
    OpDef {
        name: "softmax",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: AXIS,
        operands: "x (float)",
        result: "same",
        semantics: "`m = max; e = expf(x - m); y = e / sum(e)`, f32",
        rule: softmax_rule,
    },
    OpDef {
        name: "cast",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: &[attr("to", AttrKind::DType, AttrDefault::Required("bf16"))],
        operands: "x",
        result: "same shape, dtype `to`",
        semantics: "one rounding (RNE, saturating for integers, nonzero, NaN included, -> 1 for i1)",
        rule: cast_rule,
    },
    OpDef {
        name: "const",
        arity: Arity::Exactly(0),
        literals: false,
        attrs: &[attr("value", AttrKind::Float, AttrDefault::Required("0.0"))],
        operands: "none",
        result: "the annotation",
        semantics: "splat, rounded into the dtype",
        rule: const_rule,
    },
    OpDef {
        name: "iota",
        arity: Arity::Exactly(0),
        literals: false,
        attrs: AXIS_0,
        operands: "none",
        result: "the annotation (not i1)",
        semantics: "each element is its index along `axis`",
        rule: iota_rule,
    },
    OpDef {
        name: "compare",
        arity: Arity::Exactly(2),
        literals: true,
        attrs: &[attr(
            "kind",
            AttrKind::Choice { values: &["lt", "le", "gt", "ge", "eq"], quoted: false },
            AttrDefault::Required("lt"),
        )],
        operands: "a, b (one dtype; literal allowed)",
        result: "broadcast shape, i1",
        semantics: "exact comparison of the operands' values",
        rule: compare_rule,
    },
    OpDef {
        name: "select",
        arity: Arity::Exactly(3),
        literals: true,
        attrs: NO_ATTRS,
        operands: "cond (i1), a, b (literals allowed for a, b)",
        result: "broadcast of all three",
        semantics: "`cond ? a : b`",
        rule: select_rule,
    },
    OpDef {
        name: "concat",
        arity: Arity::AtLeast(1),
        literals: false,
        attrs: AXIS_0,
        operands: "one or more, one dtype and rank",
        result: "sizes along `axis` add",
        semantics: "",
        rule: concat_rule,
    },
    OpDef {
        name: "gather",
        arity: Arity::Exactly(2),
        literals: false,
        attrs: &[attr("axis", AttrKind::Int, AttrDefault::Value("0"))],
        operands: "table, indices (i32, any shape)",
        result: "`table.shape[:axis] + indices.shape + table.shape[axis+1:]`, the table's dtype",
        semantics: "each index picks a slice of the table along `axis`; an index outside `[0, table.shape[axis])` is an error at run time (evaluator and chip), never a read",
        rule: gather_rule,
    },
    OpDef {
        name: "slice",
        arity: Arity::Exactly(1),
        literals: false,
        attrs: &[
            attr("start", AttrKind::Ints, AttrDefault::Required("[0, 0]")),
            attr("stop", AttrKind::Ints, AttrDefault::Required("[2, 2]")),
        ],
        operands: "x",
        result: "`stop - start` per dim (one entry per dim)",
        semantics: "",
        rule: slice_rule,
    },
    OpDef {
        name: "layernorm",
        arity: Arity::Exactly(3),
        literals: false,
        attrs: NORM,
        operands: "x (float), gamma, beta (`[size of axis]`, x's dtype)",
        result: "same",
        semantics: "`mean = sum/n; d = x-mean; var = sum(d^2)/n; rstd = 1/sqrtf(var+eps); y = d*rstd*gamma + beta`, f32, sums in order, each step rounded to f32 (PyTorch's formulation)",
        rule: norm_rule,
    },
    OpDef {
        name: "rmsnorm",
        arity: Arity::Exactly(2),
        literals: false,
        attrs: NORM,
        operands: "x (float), gamma",
        result: "same",
        semantics: "`rstd = 1/sqrtf(sum(x^2)/n + eps); y = x*rstd*gamma`, f32, each step rounded to f32 (PyTorch's formulation)",
        rule: norm_rule,
    },
    OpDef {
        name: "attention",
        arity: Arity::Between(3, 4),
        literals: false,
        attrs: &[
            attr("causal", AttrKind::Bool, BOOL_FALSE),
            attr("scale", AttrKind::Float, AttrDefault::Computed("`1/sqrt(D)`")),
        ],
        operands: "q `[..., Hq, Sq, D]`, k `[..., Hk, Sk, D]`, v `[..., Hk, Sk, Dv]`, one float dtype; Hq a multiple of Hk; optionally a mask (any float dtype) that broadcasts to `[..., Hq, Sq, Sk]`",
        result: "`[..., Hq, Sq, Dv]`",
        semantics: "query head h reads kv head `h / (Hq/Hk)`; `s_j = (q . k_j) * scale` in f32, plus `mask[.., h, i, j]` in f32 when given; causal hides keys `j > i + Sk - Sq`; `p = softmax(s)`; `o = sum_j p_j v_j` (j ascending, from 0), rounded; a query row that sees no key is 0",
        rule: attention_rule,
    },
];

/// The definition of op `name`.
pub fn def(name: &str) -> Option<&'static OpDef> {
    OPS.iter().find(|d| d.name == name)
}

/// Every op name, in table order.
pub fn names() -> impl Iterator<Item = &'static str> {
    OPS.iter().map(|d| d.name)
}

impl Op {
    /// The op's table entry (none for parameters).
    pub fn def(&self) -> Option<&'static OpDef> {
        def(self.name())
    }

    /// The attribute values, in the order of the op's [`OpDef::attrs`].
    pub fn attrs(&self) -> Vec<Attr> {
        let ints = |v: &[u64]| Attr::List(v.iter().map(|&x| Attr::Int(x as i64)).collect());
        let axes = |v: &[usize]| Attr::List(v.iter().map(|&x| Attr::Int(x as i64)).collect());
        match self {
            Op::Param | Op::Binary(_) | Op::Unary(_) | Op::Select => vec![],
            Op::Matmul { transpose_a, transpose_b } => vec![Attr::Bool(*transpose_a), Attr::Bool(*transpose_b)],
            Op::Transpose { perm } => vec![axes(perm)],
            Op::Reshape { shape } => vec![ints(shape)],
            Op::Gelu { approx } => {
                vec![Attr::Str(if *approx == GeluApprox::Tanh { "tanh" } else { "none" }.into())]
            }
            Op::Reduce { axes: a, keepdims, .. } => vec![axes(a), Attr::Bool(*keepdims)],
            Op::Softmax { axis } | Op::Iota { axis } | Op::Concat { axis } | Op::Gather { axis } => {
                vec![Attr::Int(*axis as i64)]
            }
            Op::Cast { to } => vec![Attr::Word(to.name().into())],
            Op::Const { value } => vec![Attr::Float(*value)],
            Op::Compare { kind } => vec![Attr::Word(kind.name().into())],
            Op::Slice { start, stop } => vec![ints(start), ints(stop)],
            Op::LayerNorm { axis, eps } | Op::RmsNorm { axis, eps } => vec![Attr::Int(*axis as i64), Attr::Float(*eps)],
            Op::Attention { causal, scale } => vec![Attr::Bool(*causal), Attr::Float(*scale)],
        }
    }
}

/// numpy broadcasting of two shapes.
pub fn broadcast(a: &[u64], b: &[u64]) -> Option<Vec<u64>> {
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

/// `[d0, d1]`.
pub fn shape_str(s: &[u64]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

fn matmul_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let (a, b) = (x.value(0)?, x.value(1)?);
    if a.dtype != b.dtype {
        return Err(x.at_operand(1, format!("`matmul` operands must have one dtype: {} and {}", a.dtype, b.dtype)));
    }
    if a.dtype == ScalarType::I1 || a.dtype == ScalarType::I32 {
        return Err(x.at_operand(0, format!("`matmul` takes float or i8 operands, found {}", a.dtype)));
    }
    for (i, t) in [a, b].into_iter().enumerate() {
        if t.rank() < 2 {
            return Err(x.at_operand(i, format!("`matmul` operands have rank 2 or more, found {t}")));
        }
    }
    let (transpose_a, transpose_b) = (x.bool("transpose_a"), x.bool("transpose_b"));
    let (ra, rb) = (a.rank(), b.rank());
    let (m, ka) = if transpose_a { (a.shape[ra - 1], a.shape[ra - 2]) } else { (a.shape[ra - 2], a.shape[ra - 1]) };
    let (kb, n) = if transpose_b { (b.shape[rb - 1], b.shape[rb - 2]) } else { (b.shape[rb - 2], b.shape[rb - 1]) };
    if ka != kb {
        let where_a = if transpose_a { "second-to-last, transpose_a" } else { "last" };
        let where_b = if transpose_b { "last, transpose_b" } else { "second-to-last" };
        return Err(x.at_operand(
            1,
            format!("`matmul` contraction dims differ: {a} has K = {ka} (its {where_a} dim), {b} has K = {kb} (its {where_b})"),
        ));
    }
    let (batch_a, batch_b) = (&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let Some(mut shape) = broadcast(batch_a, batch_b) else {
        let msg = format!("cannot broadcast the batch dims {} and {}", shape_str(batch_a), shape_str(batch_b));
        return Err(x.at_operand(1, msg));
    };
    shape.extend([m, n]);
    if let Some(t) = x.annotation {
        let allowed =
            if a.dtype.is_int() { t.dtype == ScalarType::I32 || t.dtype == a.dtype } else { t.dtype.is_float() };
        if !allowed {
            return Err(x.at_statement(format!("`matmul` of {} operands cannot produce {}", a.dtype, t.dtype)));
        }
    }
    Ok((Op::Matmul { transpose_a, transpose_b }, TensorType::new(a.dtype, shape)))
}

fn transpose_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.value(0)?;
    let perm = x.ints("perm");
    let mut seen = vec![false; t.rank()];
    let mut p = Vec::new();
    for &e in &perm {
        let a = x.axis("perm", e, t.rank(), "perm entry")?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(x.at_attr("perm", format!("`perm` names axis {a} twice")));
        }
        p.push(a);
    }
    if p.len() != t.rank() {
        return Err(x.at_attr("perm", format!("`perm` has {} entries; the operand {t} has rank {}", p.len(), t.rank())));
    }
    let shape = p.iter().map(|&i| t.shape[i]).collect();
    Ok((Op::Transpose { perm: p }, TensorType::new(t.dtype, shape)))
}

fn reshape_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.value(0)?;
    let dims = x.ints("shape");
    let known = dims.iter().filter(|&&d| d != -1).try_fold(1i64, |a, &d| a.checked_mul(d));
    let holes = dims.iter().filter(|&&d| d == -1).count();
    let Some(known) = known.filter(|_| dims.iter().all(|&d| d >= -1) && holes <= 1) else {
        return Err(x.at_attr("shape", "`shape` entries are sizes, with at most one -1 (inferred)"));
    };
    let total = t.elems() as i64;
    let shape: Vec<u64> = if holes == 1 {
        if known == 0 || total % known != 0 {
            let msg = format!("cannot infer the -1 dim: {total} elements are not a multiple of {known}");
            return Err(x.at_attr("shape", msg));
        }
        dims.iter().map(|&d| if d == -1 { (total / known) as u64 } else { d as u64 }).collect()
    } else {
        dims.iter().map(|&d| d as u64).collect()
    };
    let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if n != Some(t.elems()) {
        let n = n.map_or("more than 2^64".to_string(), |n| n.to_string());
        let msg = format!("`reshape` to {} ({n} elements) from {t} ({} elements)", shape_str(&shape), t.elems());
        return Err(x.at_attr("shape", msg));
    }
    Ok((Op::Reshape { shape: shape.clone() }, TensorType::new(t.dtype, shape)))
}

fn binary_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let ty = x.elementwise(0..2)?;
    let name = x.op;
    if ty.dtype == ScalarType::I1 {
        return Err(x.at_operand(0, format!("`{name}` is not defined on {}", ty.dtype)));
    }
    let op = match name {
        "add" => BinaryOp::Add,
        "sub" => BinaryOp::Sub,
        "mul" => BinaryOp::Mul,
        "div" => BinaryOp::Div,
        "max" => BinaryOp::Max,
        _ => BinaryOp::Min,
    };
    Ok((Op::Binary(op), ty))
}

fn neg_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.value(0)?;
    if t.dtype == ScalarType::I1 {
        return Err(x.at_operand(0, "`neg` is not defined on i1"));
    }
    Ok((Op::Unary(UnaryOp::Neg), t.clone()))
}

fn unary_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.float_value(0)?;
    let u = match x.op {
        "exp" => UnaryOp::Exp,
        "tanh" => UnaryOp::Tanh,
        "erf" => UnaryOp::Erf,
        "sigmoid" => UnaryOp::Sigmoid,
        "rsqrt" => UnaryOp::Rsqrt,
        "sqrt" => UnaryOp::Sqrt,
        "recip" => UnaryOp::Recip,
        "relu" => UnaryOp::Relu,
        "log" => UnaryOp::Log,
        _ => UnaryOp::Silu,
    };
    Ok((Op::Unary(u), t.clone()))
}

fn gelu_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.float_value(0)?;
    let approx = if x.word("approx") == "tanh" { GeluApprox::Tanh } else { GeluApprox::None };
    Ok((Op::Gelu { approx }, t.clone()))
}

fn reduce_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.value(0)?;
    if t.dtype == ScalarType::I1 {
        return Err(x.at_operand(0, format!("`{}` is not defined on i1", x.op)));
    }
    let keepdims = x.bool("keepdims");
    let mut axes = Vec::new();
    for &a in &x.ints("axes") {
        let a = x.axis("axes", a, t.rank(), "axis")?;
        if axes.contains(&a) {
            return Err(x.at_attr("axes", format!("`axes` names axis {a} twice")));
        }
        axes.push(a);
    }
    axes.sort_unstable();
    let shape = (0..t.rank())
        .filter_map(|i| if axes.contains(&i) { keepdims.then_some(1) } else { Some(t.shape[i]) })
        .collect();
    let kind = if x.op == "reduce_sum" { ReduceKind::Sum } else { ReduceKind::Max };
    Ok((Op::Reduce { kind, axes, keepdims }, TensorType::new(t.dtype, shape)))
}

fn softmax_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.float_value(0)?;
    let axis = x.axis("axis", x.int("axis"), t.rank(), "axis")?;
    Ok((Op::Softmax { axis }, t.clone()))
}

fn cast_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.value(0)?;
    let to = x.dtype("to");
    Ok((Op::Cast { to }, TensorType::new(to, t.shape.clone())))
}

fn const_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let value = x.float("value");
    let Some(t) = x.annotation else {
        return Err(x.at_statement("`const` needs its type: `%c = const() {value = 1.0} : f32[4]`"));
    };
    if !t.dtype.is_float() && (value.fract() != 0.0 || !value.is_finite()) {
        return Err(x.at_attr("value", format!("value {value} does not fit {}", t.dtype)));
    }
    Ok((Op::Const { value }, t.clone()))
}

fn iota_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let Some(t) = x.annotation else {
        return Err(x.at_statement("`iota` needs its type: `%i = iota() {axis = 0} : i32[4, 4]`"));
    };
    if t.dtype == ScalarType::I1 {
        return Err(x.at_statement("`iota` cannot produce i1"));
    }
    let axis = x.axis("axis", x.int("axis"), t.rank(), "axis")?;
    Ok((Op::Iota { axis }, t.clone()))
}

fn compare_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let ty = x.elementwise(0..2)?;
    let kind = match x.word("kind").as_str() {
        "lt" => CompareKind::Lt,
        "le" => CompareKind::Le,
        "gt" => CompareKind::Gt,
        "ge" => CompareKind::Ge,
        _ => CompareKind::Eq,
    };
    Ok((Op::Compare { kind }, TensorType::new(ScalarType::I1, ty.shape)))
}

fn select_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let c = x.value(0)?;
    if c.dtype != ScalarType::I1 {
        return Err(x.at_operand(0, format!("`select`'s condition is i1, found {}", c.dtype)));
    }
    let ty = x.elementwise(1..3)?;
    let Some(shape) = broadcast(&c.shape, &ty.shape) else {
        let msg = format!("cannot broadcast the condition {} with {}", shape_str(&c.shape), shape_str(&ty.shape));
        return Err(x.at_operand(0, msg));
    };
    Ok((Op::Select, TensorType::new(ty.dtype, shape)))
}

fn gather_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let (table, indices) = (x.value(0)?, x.value(1)?);
    if table.rank() == 0 {
        return Err(x.at_operand(0, "`gather` needs a table of rank 1 or more, found a scalar"));
    }
    if indices.dtype != ScalarType::I32 {
        return Err(x.at_operand(1, format!("`gather` indices are i32, found {}", indices.dtype)));
    }
    let axis = x.axis("axis", x.int("axis"), table.rank(), "axis")?;
    let shape: Vec<u64> =
        table.shape[..axis].iter().chain(&indices.shape).chain(&table.shape[axis + 1..]).copied().collect();
    let ty = TensorType::checked(table.dtype, shape).map_err(|e| x.at_statement(format!("`gather` result: {e}")))?;
    Ok((Op::Gather { axis }, ty))
}

fn concat_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let first = x.value(0)?;
    let ax = x.axis("axis", x.int("axis"), first.rank(), "axis")?;
    let mut total = 0u64;
    for i in 0..x.args.len() {
        let t = x.value(i)?;
        let same = t.dtype == first.dtype
            && t.rank() == first.rank()
            && (0..t.rank()).all(|d| d == ax || t.shape[d] == first.shape[d]);
        if !same {
            let msg = format!("`concat` operands must match except along axis {ax}: {t} and {first}");
            return Err(x.at_operand(i, msg));
        }
        total = total.saturating_add(t.shape[ax]);
    }
    let mut shape = first.shape.clone();
    shape[ax] = total;
    Ok((Op::Concat { axis: ax }, TensorType::new(first.dtype, shape)))
}

fn slice_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.value(0)?;
    let (start, stop) = (x.ints("start"), x.ints("stop"));
    if start.len() != t.rank() || stop.len() != t.rank() {
        return Err(x.at_attr("start", format!("`start` and `stop` need one entry per dim of {t}")));
    }
    let mut shape = Vec::new();
    for i in 0..t.rank() {
        let (a, b) = (start[i], stop[i]);
        if a < 0 || b < a || b as u64 > t.shape[i] {
            let msg = format!("dim {i}: slice {a}..{b} is not inside 0..{} of {t}", t.shape[i]);
            return Err(x.at_attr("stop", msg));
        }
        shape.push((b - a) as u64);
    }
    let start = start.iter().map(|&v| v as u64).collect();
    let stop = stop.iter().map(|&v| v as u64).collect();
    Ok((Op::Slice { start, stop }, TensorType::new(t.dtype, shape)))
}

fn norm_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let t = x.float_value(0)?;
    let ax = x.axis("axis", x.int("axis"), t.rank(), "axis")?;
    let eps = x.float("eps");
    for i in 1..x.args.len() {
        let p = x.value(i)?;
        if p.dtype != t.dtype || p.shape != [t.shape[ax]] {
            let msg =
                format!("`{}` parameters are {}[{}] (the normalised axis), found {p}", x.op, t.dtype, t.shape[ax]);
            return Err(x.at_operand(i, msg));
        }
    }
    let op = if x.op == "layernorm" { Op::LayerNorm { axis: ax, eps } } else { Op::RmsNorm { axis: ax, eps } };
    Ok((op, t.clone()))
}

fn attention_rule(x: &Inputs<'_>) -> Result<Typed, CheckError> {
    let q = x.float_value(0)?;
    let (k, v) = (x.value(1)?, x.value(2)?);
    if q.rank() < 3 || k.rank() != q.rank() || v.rank() != q.rank() {
        let msg =
            format!("`attention` takes q, k, v of one rank >= 3 ([..., heads, seq, head_dim]); found {q}, {k}, {v}");
        return Err(x.at_op(msg));
    }
    if k.dtype != q.dtype || v.dtype != q.dtype {
        return Err(x.at_operand(1, format!("`attention` operands must have one dtype: {q}, {k}, {v}")));
    }
    let r = q.rank();
    let (hq, d) = (q.shape[r - 3], q.shape[r - 1]);
    let (hk, dk) = (k.shape[r - 3], k.shape[r - 1]);
    if q.shape[..r - 3] != k.shape[..r - 3] || v.shape[..r - 2] != k.shape[..r - 2] {
        return Err(x.at_operand(2, format!("`attention` batch, head and sequence dims must agree: {q}, {k}, {v}")));
    }
    if dk != d {
        return Err(x.at_operand(1, format!("`attention` head_dim differs: q has {d}, k has {dk}")));
    }
    if hk == 0 || hq % hk != 0 {
        let msg = format!("`attention` query heads ({hq}) must be a multiple of key/value heads ({hk})");
        return Err(x.at_operand(1, msg));
    }
    if x.args.len() == 4 {
        let m = x.float_value(3)?;
        let mut scores = q.shape.clone();
        scores[r - 1] = k.shape[r - 2];
        if m.rank() > r || broadcast(&m.shape, &scores).as_deref() != Some(&scores[..]) {
            let msg = format!("`attention`'s mask {m} does not broadcast to the scores' shape {}", shape_str(&scores));
            return Err(x.at_operand(3, msg));
        }
    }
    let causal = x.bool("causal");
    let scale = x.opt_float("scale").unwrap_or(1.0 / (d as f64).sqrt());
    let mut shape = q.shape.clone();
    shape[r - 1] = v.shape[r - 1];
    Ok((Op::Attention { causal, scale }, TensorType::new(q.dtype, shape)))
}

/// Marker opening the generated op reference in docs/tir.md.
pub const BEGIN: &str = "<!-- BEGIN GENERATED: op reference (jalc::ir::ops) -->";
/// Marker closing it.
pub const END: &str = "<!-- END GENERATED -->";

/// docs/tir.md's op reference: one row per op, ops with identical rows merged.
pub fn reference() -> String {
    let mut rows: Vec<(Vec<&str>, String)> = Vec::new();
    for d in OPS {
        let attrs: Vec<String> = d
            .attrs
            .iter()
            .map(|a| {
                let default = match a.default {
                    AttrDefault::Required(_) => ", required".to_string(),
                    AttrDefault::Value(v) => format!(" = {v}"),
                    AttrDefault::Computed(how) => format!(" = {how}"),
                };
                format!("`{}` ({}{default})", a.name, a.kind.doc())
            })
            .collect();
        let row = format!("| {} | {} | {} | {} |", d.operands, attrs.join(", "), d.result, d.semantics);
        match rows.last_mut() {
            Some((names, last)) if *last == row => names.push(d.name),
            _ => rows.push((vec![d.name], row)),
        }
    }
    let mut out = String::from(
        "| op | operands | attributes (kind, default) | result | semantics (evaluator) |\n|---|---|---|---|---|\n",
    );
    for (names, row) in rows {
        let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        let _ = writeln!(out, "| {} |{}", names.join(" "), &row[1..]);
    }
    out
}

/// Replaces the generated section of a document (between [`BEGIN`] and [`END`]).
pub fn splice(doc: &str, generated: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = doc[start..].find(END)? + start;
    Some(format!("{}\n{}{}", &doc[..start], generated, &doc[end..]))
}
