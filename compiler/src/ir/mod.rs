//! The tensor IR: one function, its values in an arena, every one typed.
//!
//! The IR stands apart from any syntax: the `.tir` front end
//! ([`crate::front::tir`]) builds it, and so can any other front end or pass,
//! through [`check::Builder`], which types each statement from the op table
//! ([`ops`]). The canonical text form is [`printer`]'s.
//!
//! Invariants (established by [`check`]): operands refer to earlier nodes;
//! every node's type is the one its op's shape rule gives; attribute values are
//! in range (axes normalised to `0..rank`); names are unique value names. Passes
//! may rely on them without checking.

pub mod check;
pub mod ops;
pub mod printer;
pub mod types;

pub use check::{Builder, CheckError};
pub use types::{ScalarType, TensorType};

/// Byte range in the source a value came from (empty when it has no source).
pub type Span = std::ops::Range<usize>;

/// Index of a node (value) in [`Func::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// An operand: a value, or a scalar literal broadcast to the other operand's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    /// A value.
    Value(ValueId),
    /// A scalar literal; its type is the node's operand type.
    Scalar(f64),
}

/// Elementwise binary operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
}

/// Elementwise unary operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// -x
    Neg,
    /// e^x
    Exp,
    /// tanh x
    Tanh,
    /// erf x
    Erf,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// 1 / sqrt x
    Rsqrt,
    /// sqrt x
    Sqrt,
    /// 1 / x
    Recip,
    /// max(x, 0)
    Relu,
    /// x sigmoid(x)
    Silu,
    /// ln x
    Log,
}

/// GELU variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GeluApprox {
    /// 0.5 x (1 + erf(x / sqrt 2))
    None,
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    Tanh,
}

/// Reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
}

/// Comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareKind {
    /// a < b
    Lt,
    /// a <= b
    Le,
    /// a > b
    Gt,
    /// a >= b
    Ge,
    /// a == b
    Eq,
}

/// An operation with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A function parameter.
    Param,
    /// Batched matrix product `op(a) . op(b)`, where `op` transposes the last two
    /// dims of an operand whose flag is set (a stored `[.., K, M]`, b `[.., N, K]`).
    Matmul {
        /// A is stored transposed.
        transpose_a: bool,
        /// B is stored transposed.
        transpose_b: bool,
    },
    /// Permutes dims.
    Transpose {
        /// `perm[i]` is the input dim that becomes output dim i.
        perm: Vec<usize>,
    },
    /// Same elements, new shape.
    Reshape {
        /// The new shape.
        shape: Vec<u64>,
    },
    /// Elementwise binary with broadcasting.
    Binary(BinaryOp),
    /// Elementwise unary.
    Unary(UnaryOp),
    /// GELU.
    Gelu {
        /// Exact or tanh approximation.
        approx: GeluApprox,
    },
    /// Reduction over axes.
    Reduce {
        /// Sum or max.
        kind: ReduceKind,
        /// Reduced axes, ascending.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// Softmax along an axis.
    Softmax {
        /// The axis.
        axis: usize,
    },
    /// Conversion.
    Cast {
        /// Target element type.
        to: ScalarType,
    },
    /// A splat constant.
    Const {
        /// The value.
        value: f64,
    },
    /// Index along an axis.
    Iota {
        /// The axis.
        axis: usize,
    },
    /// Elementwise comparison to i1.
    Compare {
        /// The comparison.
        kind: CompareKind,
    },
    /// `cond ? a : b`, elementwise with broadcasting.
    Select,
    /// Joins operands along an axis.
    Concat {
        /// The axis.
        axis: usize,
    },
    /// Rows of a table selected by i32 indices along `axis` (embedding lookup).
    Gather {
        /// The table axis the indices select along.
        axis: usize,
    },
    /// A box of the input: `[start, stop)` per dim.
    Slice {
        /// First index per dim.
        start: Vec<u64>,
        /// One past the last index per dim.
        stop: Vec<u64>,
    },
    /// Layer normalisation over one axis (x, gamma, beta).
    LayerNorm {
        /// The normalised axis.
        axis: usize,
        /// Added to the variance.
        eps: f64,
    },
    /// RMS normalisation over one axis (x, gamma).
    RmsNorm {
        /// The normalised axis.
        axis: usize,
        /// Added to the mean square.
        eps: f64,
    },
    /// Scaled dot-product attention (q, k, v).
    Attention {
        /// Query i sees keys j <= i + kv_seq - q_seq.
        causal: bool,
        /// Multiplies the scores.
        scale: f64,
    },
}

/// One value: its name, op, operands, type and source span.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name without `%`.
    pub name: String,
    /// Operation.
    pub op: Op,
    /// Operands in order.
    pub operands: Vec<Operand>,
    /// Result type.
    pub ty: TensorType,
    /// Source span (the statement, or the parameter).
    pub span: Span,
}

/// A function.
#[derive(Debug, Clone, PartialEq)]
pub struct Func {
    /// Name without `@`.
    pub name: String,
    /// Every value; parameters first, in order.
    pub nodes: Vec<Node>,
    /// Number of parameters (the first nodes).
    pub num_params: usize,
    /// Returned values.
    pub results: Vec<ValueId>,
    /// Parameters whose values are stored weights, by parameter name (no
    /// caller passes them; see [`crate::weights`]).
    pub weights: std::collections::BTreeMap<String, WeightRef>,
}

/// Where a weight parameter's value is stored: a tensor of a safetensors file,
/// the path relative to the program's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightRef {
    /// The safetensors file.
    pub file: String,
    /// The tensor's name in it.
    pub tensor: String,
}

impl Func {
    /// The node of a value.
    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.0 as usize]
    }

    /// Parameter values.
    pub fn params(&self) -> impl Iterator<Item = ValueId> {
        (0..self.num_params as u32).map(ValueId)
    }

    /// The function with each parameter it returns as it is replaced, among the
    /// results, by a copy under a name of its own (`%x_out`, or `%x_out_2`, ...
    /// when taken): a chip binary's output is never one of its inputs.
    pub fn with_parameter_results_copied(mut self) -> Func {
        let mut taken: std::collections::HashSet<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let mut copies: Vec<(ValueId, ValueId)> = Vec::new();
        for k in 0..self.results.len() {
            let r = self.results[k];
            if r.0 as usize >= self.num_params {
                continue;
            }
            if let Some(&(_, copy)) = copies.iter().find(|(p, _)| *p == r) {
                self.results[k] = copy;
                continue;
            }
            let param = self.node(r).clone();
            let mut name = format!("{}_out", param.name);
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{}_out_{n}", param.name);
                n += 1;
            }
            taken.insert(name.clone());
            let op = Op::Reshape { shape: param.ty.shape.clone() };
            self.nodes.push(Node { name, op, operands: vec![Operand::Value(r)], ty: param.ty, span: param.span });
            let copy = ValueId((self.nodes.len() - 1) as u32);
            copies.push((r, copy));
            self.results[k] = copy;
        }
        self
    }
}

impl Op {
    /// The op's name in `.tir`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Param => "param",
            Op::Matmul { .. } => "matmul",
            Op::Transpose { .. } => "transpose",
            Op::Reshape { .. } => "reshape",
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
            },
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Exp => "exp",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Erf => "erf",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Rsqrt => "rsqrt",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Recip => "recip",
                UnaryOp::Relu => "relu",
                UnaryOp::Silu => "silu",
                UnaryOp::Log => "log",
            },
            Op::Gelu { .. } => "gelu",
            Op::Reduce { kind: ReduceKind::Sum, .. } => "reduce_sum",
            Op::Reduce { kind: ReduceKind::Max, .. } => "reduce_max",
            Op::Softmax { .. } => "softmax",
            Op::Cast { .. } => "cast",
            Op::Const { .. } => "const",
            Op::Iota { .. } => "iota",
            Op::Compare { .. } => "compare",
            Op::Select => "select",
            Op::Concat { .. } => "concat",
            Op::Gather { .. } => "gather",
            Op::Slice { .. } => "slice",
            Op::LayerNorm { .. } => "layernorm",
            Op::RmsNorm { .. } => "rmsnorm",
            Op::Attention { .. } => "attention",
        }
    }
}

impl CompareKind {
    /// Name in `.tir`.
    pub fn name(self) -> &'static str {
        match self {
            CompareKind::Lt => "lt",
            CompareKind::Le => "le",
            CompareKind::Gt => "gt",
            CompareKind::Ge => "ge",
            CompareKind::Eq => "eq",
        }
    }
}

/// True when `perm` swaps the last two dims and keeps the others in place.
pub fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2 && perm[r - 2] == r - 1 && perm[r - 1] == r - 2 && (0..r - 2).all(|d| perm[d] == d)
}
