//! Elementwise chains: the steps that follow a value one after another, each
//! consuming the previous one, and run in place on tiles already on chip. A GEMM
//! fuses the chain after its matmul as an epilogue ([`super::gemm`]); the map
//! kernel runs a chain over a tensor in HBM ([`super::map`]). This module owns
//! the chain vocabulary ([`EpilogueStep`] and its operands) and how a chain is
//! read from the IR ([`chain`]).
//!
//! A chain ends at a cast (steps after it run in the cast's dtype), at a value
//! used more than once or returned, at a shape change, and at a step that reads
//! a value not yet in HBM (a mask condition is computed in place).

use jpu_isa::numerics::round_f64;
use jpu_isa::operand::{ActFunc, AluOp};
use jpu_isa::program::Role;
use jpu_isa::DType;

use super::{statement, unsupported, Ctx};
use crate::error::CompileError;
use crate::ir::{BinaryOp, CompareKind, GeluApprox, Node, Op, Operand, ScalarType, TensorType, UnaryOp, ValueId};
use crate::tiles::{BufSlice, HbmTensor, TileOp, TileScalar};

/// The listing of the store of an i1 result (0 or 1 in an i8).
const I1_STORE: &str = "i1 stored as i8 (0 or 1)";

/// A tensor operand of the epilogue.
#[derive(Debug, Clone, PartialEq)]
pub struct EpilogueInput {
    /// Parameter name.
    pub name: String,
    /// Element type (the matmul's result type).
    pub dtype: DType,
    /// Shape as declared.
    pub shape: Vec<u64>,
    /// How it lines up with the result.
    pub broadcast: Broadcast,
}

/// How an epilogue operand lines up with the result `[.., M, N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broadcast {
    /// One row of N values (`[N]` or `[1, .., N]`) for every row: a bias.
    Row,
    /// The result's shape: a residual.
    Full,
    /// One value per row (`[.., M, 1]`, the result's leading dims): a row scale.
    Column,
    /// One `[M, N]` matrix for every batch index (`[M, N]` or `[1, .., M, N]`):
    /// a position bias or mask shared by heads.
    Matrix,
}

impl Broadcast {
    /// Buffer-name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Broadcast::Row => "row",
            Broadcast::Full => "res",
            Broadcast::Column => "col",
            Broadcast::Matrix => "mat",
        }
    }
}

impl EpilogueInput {
    /// The HBM tensor it is read from.
    pub fn hbm_tensor(&self) -> HbmTensor {
        HbmTensor { name: self.name.clone(), dtype: self.dtype, shape: self.shape.clone(), role: Role::Input }
    }
}

/// The second operand of an epilogue binary op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EpilogueOperand {
    /// Epilogue input `i`.
    Tensor(usize),
    /// A literal, rounded to the result dtype.
    Scalar(f32),
    /// The tile itself (`x * x`).
    Same,
}

/// One elementwise step of a fused epilogue, applied in place to the output tile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EpilogueStep {
    /// `tile <op> other`, or `other <op> tile` when `other_first`.
    Binary {
        /// Operation.
        op: AluOp,
        /// The other operand.
        other: EpilogueOperand,
        /// The other operand is on the left.
        other_first: bool,
    },
    /// `func(tile)`.
    Activate(ActFunc),
    /// Replace the tile by `other` where epilogue input `cond` is nonzero (zero
    /// with `negate`): a select by a tensor condition.
    Where {
        /// Epilogue input holding the condition (an i1 stored as i8).
        cond: usize,
        /// The value written where it applies.
        other: EpilogueOperand,
        /// Write where the condition is zero (the tile is the select's `a`).
        negate: bool,
    },
    /// Keep the tile where an affine condition of the element's (row, column)
    /// within its matrix holds, else `fill` (a mask select; see [`super::mask`]).
    Mask {
        /// The condition.
        condition: super::mask::AffineCondition,
        /// The value elsewhere, rounded to the result dtype.
        fill: f32,
    },
}

impl EpilogueStep {
    /// Whether the step reads epilogue input `e`.
    pub fn reads(&self, e: usize) -> bool {
        match *self {
            EpilogueStep::Binary { other: EpilogueOperand::Tensor(k), .. } => k == e,
            EpilogueStep::Where { cond, other, .. } => cond == e || other == EpilogueOperand::Tensor(e),
            _ => false,
        }
    }

    /// The tile op applying this step in place to `tile`, whose first element is
    /// at (`row`, `col`) of its matrix; `operand(i)` is the slice of epilogue input
    /// `i` matching the tile, and whether it is a column (one value per partition).
    pub fn tile_op(
        &self,
        tile: BufSlice,
        (row, col): (u64, u64),
        operand: impl Fn(usize) -> (BufSlice, bool),
    ) -> TileOp {
        match *self {
            EpilogueStep::Activate(func) => TileOp::activate(func, tile, tile),
            EpilogueStep::Mask { condition: c, fill } => TileOp::Select {
                cmp: c.cmp,
                dst: tile,
                src: tile,
                partition_step: c.row,
                free_step: c.col,
                base: c.row * row as i32 + c.col * col as i32 + c.constant,
                fill,
            },
            EpilogueStep::Where { cond, other, negate } => {
                let (cond, _) = operand(cond);
                match other {
                    EpilogueOperand::Same => TileOp::Copy { dst: tile, src: tile },
                    EpilogueOperand::Scalar(v) => {
                        TileOp::FillWhere { dst: tile, cond, value: TileScalar::Imm(v), negate }
                    }
                    EpilogueOperand::Tensor(e) => match operand(e) {
                        (col, true) => TileOp::FillWhere { dst: tile, cond, value: TileScalar::Column(col), negate },
                        (src, false) => TileOp::CopyWhere { dst: tile, src, cond, negate },
                    },
                }
            }
            EpilogueStep::Binary { op, other: EpilogueOperand::Scalar(value), other_first } => {
                TileOp::Scalar { op, dst: tile, src: tile, scalar: TileScalar::Imm(value), reverse: other_first }
            }
            EpilogueStep::Binary { op, other: EpilogueOperand::Same, .. } => {
                TileOp::Binary { op, dst: tile, a: tile, b: tile }
            }
            EpilogueStep::Binary { op, other: EpilogueOperand::Tensor(e), other_first } => match operand(e) {
                (col, true) => {
                    TileOp::Scalar { op, dst: tile, src: tile, scalar: TileScalar::Column(col), reverse: other_first }
                }
                (other, false) => {
                    let (a, b) = if other_first { (other, tile) } else { (tile, other) };
                    TileOp::Binary { op, dst: tile, a, b }
                }
            },
        }
    }
}

/// A chain of elementwise steps, each consuming the previous value.
pub struct Chain {
    /// The steps, with the IR statement of each.
    pub epilogue: Vec<(EpilogueStep, String)>,
    /// Tensor operands of the steps.
    pub epilogue_inputs: Vec<EpilogueInput>,
    /// A final cast and its statement.
    pub cast: Option<(DType, String)>,
    /// Indices of the nodes the steps compute.
    pub nodes: Vec<usize>,
    /// The chain's last value.
    pub last: ValueId,
}

/// Collects the elementwise steps after `start` (a value of type `ty`): each reads
/// the previous value (used by nothing else and not returned) plus parameters,
/// earlier kernels' outputs or literals. With `first`, that node is the first step
/// whatever `start`'s other uses. Without fusion, only `first` (if any) is taken.
pub fn chain(cx: &Ctx<'_>, start: ValueId, first: Option<usize>, ty: &TensorType) -> Result<Chain, CompileError> {
    let f = cx.f;
    let mut c = Chain { epilogue: Vec::new(), epilogue_inputs: Vec::new(), cast: None, nodes: Vec::new(), last: start };
    let mut first = first;
    loop {
        let next = match first.take() {
            Some(i) => Some(i),
            None => next_consumer(cx, c.last),
        };
        let Some(i) = next else { break };
        let n = &f.nodes[i];
        if !is_step(cx, n, c.last) || c.cast.is_some() {
            break;
        }
        if n.ty.shape != ty.shape {
            // A step that broadcasts the value to a larger shape (a mask added to
            // scores) starts a chain of its own: this one ends and stores.
            break;
        }
        let prev = c.last;
        let uses_prev = |o: &Operand| matches!(o, Operand::Value(v) if *v == prev);
        let text = statement(f, i);
        match (&n.op, n.operands.as_slice()) {
            (Op::Cast { to: ScalarType::I1 }, [x]) if uses_prev(x) => {
                // Nonzero (NaN included) is true.
                let step =
                    EpilogueStep::Binary { op: AluOp::IsNe, other: EpilogueOperand::Scalar(0.0), other_first: false };
                c.epilogue.push((step, text));
                c.cast = Some((DType::I8, I1_STORE.into()));
            }
            (Op::Cast { to }, [x]) if uses_prev(x) => {
                let to = to.storage();
                c.cast = Some((to, format!("{text} {{to = {to}}}")));
            }
            (Op::Binary(op), [x, y]) if uses_prev(x) || uses_prev(y) => {
                let step = binary_step(cx, &mut c.epilogue_inputs, n, alu_op(*op), (x, y), prev, ty)?;
                c.epilogue.push((step, text));
            }
            (Op::Compare { kind }, [x, y]) if uses_prev(x) || uses_prev(y) => {
                // The tile holds 1 or 0 in the operands' dtype; the result is stored
                // as i8 and ends the chain.
                let step = binary_step(cx, &mut c.epilogue_inputs, n, compare_op(*kind), (x, y), prev, ty)?;
                c.epilogue.push((step, text));
                c.cast = Some((DType::I8, I1_STORE.into()));
            }
            (Op::Unary(_) | Op::Gelu { .. }, [x]) if uses_prev(x) => c.epilogue.push((unary_step(n)?, text)),
            (Op::Select, [Operand::Value(cond), a, b]) if super::mask::is_mask_select(cx.f, n) => {
                c.epilogue.push((mask_step(cx, n, *cond, (a, b), prev)?, text))
            }
            (Op::Select, [Operand::Value(cond), a, b]) => {
                c.epilogue.push((where_step(cx, &mut c.epilogue_inputs, n, *cond, (a, b), prev, ty)?, text))
            }
            _ => return Err(unsupported(n, "is not an elementwise step on the product")),
        }
        c.nodes.push(i);
        c.last = ValueId(i as u32);
    }
    Ok(c)
}

/// The one live consumer of `prev` when fusion may continue through it.
fn next_consumer(cx: &Ctx<'_>, prev: ValueId) -> Option<usize> {
    let f = cx.f;
    if !cx.fuse || cx.uses[prev.0 as usize] != 1 || f.results.contains(&prev) {
        return None;
    }
    let reads = |n: &Node| n.operands.iter().any(|o| matches!(o, Operand::Value(v) if *v == prev));
    f.nodes.iter().enumerate().skip(prev.0 as usize + 1).find(|(_, n)| reads(n)).map(|(i, _)| i)
}

/// True when `n` is an elementwise op whose other operands are ready: in HBM,
/// literals, or a mask condition (computed in place).
fn is_step(cx: &Ctx<'_>, n: &Node, prev: ValueId) -> bool {
    let elementwise = matches!(
        n.op,
        Op::Cast { .. } | Op::Binary(_) | Op::Unary(_) | Op::Gelu { .. } | Op::Select | Op::Compare { .. }
    );
    let mask = matches!(n.op, Op::Select) && super::mask::is_mask_select(cx.f, n);
    let ready = n.operands.iter().enumerate().all(|(k, o)| match o {
        // A select's condition is not the tile's value.
        Operand::Value(v) if *v == prev => !(matches!(n.op, Op::Select) && k == 0),
        Operand::Value(v) => cx.in_hbm[v.0 as usize] || (mask && k == 0),
        Operand::Scalar(_) => true,
    });
    elementwise && ready
}

/// The step of binary op `n` with operands `(x, y)`, one of which is `prev`.
fn binary_step(
    cx: &Ctx<'_>,
    inputs: &mut Vec<EpilogueInput>,
    n: &Node,
    op: AluOp,
    (x, y): (&Operand, &Operand),
    prev: ValueId,
    ty: &TensorType,
) -> Result<EpilogueStep, CompileError> {
    let uses_prev = |o: &Operand| matches!(o, Operand::Value(v) if *v == prev);
    let other_first = !uses_prev(x);
    let other = match if other_first { x } else { y } {
        _ if uses_prev(x) && uses_prev(y) => EpilogueOperand::Same,
        other => other_operand(cx, inputs, n, other, ty)?,
    };
    Ok(EpilogueStep::Binary { op, other, other_first })
}

/// An operand that is not the tile: a literal (rounded to the chain's dtype) or
/// a tensor in HBM.
fn other_operand(
    cx: &Ctx<'_>,
    inputs: &mut Vec<EpilogueInput>,
    n: &Node,
    o: &Operand,
    ty: &TensorType,
) -> Result<EpilogueOperand, CompileError> {
    match o {
        Operand::Scalar(v) => {
            let dtype = ty.dtype.storage();
            let value = round_f64(dtype, *v);
            // Immediates are f32 (rounded to an integer, saturating, in integer mode).
            let imm = value as f32 as f64;
            let exact = value.is_nan() || imm == value || (dtype.is_int() && round_f64(DType::I32, imm) == value);
            if !exact {
                return Err(unsupported(n, &format!("has the literal {v}, which has no exact f32 immediate")));
            }
            Ok(EpilogueOperand::Scalar(value as f32))
        }
        Operand::Value(v) if cx.in_hbm[v.0 as usize] => {
            Ok(EpilogueOperand::Tensor(tensor_operand(cx, inputs, n, *v, ty)?))
        }
        Operand::Value(v) => {
            let why =
                format!("reads `%{}`, which is not a parameter or an earlier kernel's output", cx.f.node(*v).name);
            Err(unsupported(n, &why))
        }
    }
}

/// The VE operation of a binary op.
fn alu_op(op: BinaryOp) -> AluOp {
    match op {
        BinaryOp::Add => AluOp::Add,
        BinaryOp::Sub => AluOp::Sub,
        BinaryOp::Mul => AluOp::Mul,
        BinaryOp::Div => AluOp::Div,
        BinaryOp::Max => AluOp::Max,
        BinaryOp::Min => AluOp::Min,
    }
}

/// The VE comparison of a compare kind (1 where it holds, else 0).
fn compare_op(kind: CompareKind) -> AluOp {
    match kind {
        CompareKind::Lt => AluOp::IsLt,
        CompareKind::Le => AluOp::IsLe,
        CompareKind::Gt => AluOp::IsGt,
        CompareKind::Ge => AluOp::IsGe,
        CompareKind::Eq => AluOp::IsEq,
    }
}

/// The step of `select(cond, a, b)` with a condition in HBM, where one of `a`,
/// `b` is `prev` (the tile) and the other is written where it applies.
fn where_step(
    cx: &Ctx<'_>,
    inputs: &mut Vec<EpilogueInput>,
    n: &Node,
    cond: ValueId,
    (a, b): (&Operand, &Operand),
    prev: ValueId,
    ty: &TensorType,
) -> Result<EpilogueStep, CompileError> {
    let uses_prev = |o: &Operand| matches!(o, Operand::Value(v) if *v == prev);
    let c = cx.f.node(cond);
    let cond_ty = TensorType::new(c.ty.dtype, ty.shape.clone());
    let cond = tensor_operand(cx, inputs, n, cond, &cond_ty)?;
    if inputs[cond].broadcast == Broadcast::Column {
        return Err(unsupported(n, "has a condition of one value per row, which is not expanded yet"));
    }
    let negate = uses_prev(a);
    let other = match (a, b) {
        _ if uses_prev(a) && uses_prev(b) => EpilogueOperand::Same,
        (_, o) if negate => other_operand(cx, inputs, n, o, ty)?,
        (o, _) => other_operand(cx, inputs, n, o, ty)?,
    };
    Ok(EpilogueStep::Where { cond, other, negate })
}

/// How an operand shaped `shape` lines up with a result shaped `c`, if an
/// epilogue can read it as it is.
pub fn broadcast_class(shape: &[u64], c: &[u64]) -> Option<Broadcast> {
    let (r, cr) = (shape.len(), c.len());
    let n_cols = c.last().copied().unwrap_or(1);
    let row = r >= 1 && shape.last() == Some(&n_cols) && shape[..r - 1].iter().all(|&d| d == 1);
    let column = r == cr && r >= 1 && shape[r - 1] == 1 && shape[..r - 1] == c[..r - 1];
    // One matrix (the last two dims) for every batch index.
    let matrix = cr > 2 && r >= 2 && shape[r - 2..] == c[cr - 2..] && shape[..r - 2].iter().all(|&d| d == 1);
    if row {
        Some(Broadcast::Row)
    } else if shape == c {
        Some(Broadcast::Full)
    } else if column {
        Some(Broadcast::Column)
    } else if matrix {
        Some(Broadcast::Matrix)
    } else {
        None
    }
}

/// The index among `inputs` of tensor operand `v` of step `n` (added if new),
/// classified by how it lines up with the chain's type `ty`.
fn tensor_operand(
    cx: &Ctx<'_>,
    inputs: &mut Vec<EpilogueInput>,
    n: &Node,
    v: ValueId,
    ty: &TensorType,
) -> Result<usize, CompileError> {
    let p = cx.f.node(v);
    let (mut shape, c) = (&p.ty.shape, &ty.shape);
    let mut name = cx.tensor(v);
    let broadcast = match (broadcast_class(shape, c), cx.broadcasts.get(&(n.name.clone(), v))) {
        // Expanded to the result's shape by a copy kernel before this one.
        (_, Some(expanded)) => {
            (shape, name) = (c, expanded.clone());
            Broadcast::Full
        }
        (Some(b), None) => b,
        (None, None) => {
            let n_cols = c.last().copied().unwrap_or(1);
            return Err(unsupported(n, &format!(
                "reads `%{}` of shape {shape:?}; an epilogue operand must be a row of N = {n_cols} values, a column of one value per row, one matrix of the last two dims, or have the result's shape {c:?}",
                p.name
            )));
        }
    };
    if p.ty.dtype != ty.dtype {
        return Err(unsupported(n, "mixes dtypes"));
    }
    if let Some(k) = inputs.iter().position(|e| e.name == name && e.broadcast == broadcast) {
        return Ok(k);
    }
    let dtype = ty.dtype.storage();
    inputs.push(EpilogueInput { name, dtype, shape: shape.clone(), broadcast });
    Ok(inputs.len() - 1)
}

/// The step of a unary op or GELU: an activation-engine function, or `x * -1`.
fn unary_step(n: &Node) -> Result<EpilogueStep, CompileError> {
    let func = match &n.op {
        Op::Unary(UnaryOp::Exp) => ActFunc::Exp,
        Op::Unary(UnaryOp::Tanh) => ActFunc::Tanh,
        Op::Unary(UnaryOp::Erf) => ActFunc::Erf,
        Op::Unary(UnaryOp::Sigmoid) => ActFunc::Sigmoid,
        Op::Unary(UnaryOp::Rsqrt) => ActFunc::Rsqrt,
        Op::Unary(UnaryOp::Recip) => ActFunc::Reciprocal,
        Op::Unary(UnaryOp::Relu) => ActFunc::Relu,
        Op::Unary(UnaryOp::Silu) => ActFunc::Silu,
        Op::Unary(UnaryOp::Log) => ActFunc::Ln,
        Op::Unary(UnaryOp::Sqrt) => ActFunc::Sqrt,
        Op::Gelu { approx: GeluApprox::Tanh } => ActFunc::GeluTanh,
        Op::Gelu { approx: GeluApprox::None } => ActFunc::Gelu,
        // -x is exact as x * -1 on the vector engine (in integer mode on integers).
        Op::Unary(UnaryOp::Neg) => {
            return Ok(EpilogueStep::Binary {
                op: AluOp::Mul,
                other: EpilogueOperand::Scalar(-1.0),
                other_first: false,
            })
        }
        _ => return Err(unsupported(n, "has no activation-engine function yet")),
    };
    Ok(EpilogueStep::Activate(func))
}

/// The mask step of `select(cond, a, b)` where one of `a`, `b` is `prev` and the
/// other a literal fill.
fn mask_step(
    cx: &Ctx<'_>,
    n: &Node,
    cond: ValueId,
    (a, b): (&Operand, &Operand),
    prev: ValueId,
) -> Result<EpilogueStep, CompileError> {
    let condition = super::mask::condition(cx.f, cond, &n.ty.shape).ok_or_else(|| {
        unsupported(
            n,
            "selects by a condition that is not a comparison of iotas over the last two dims and integer literals",
        )
    })?;
    let uses_prev = |o: &Operand| matches!(o, Operand::Value(v) if *v == prev);
    let (condition, fill) = match (a, b) {
        (x, Operand::Scalar(v)) if uses_prev(x) => (condition, *v),
        (Operand::Scalar(v), x) if uses_prev(x) => (condition.negated(), *v),
        _ => {
            return Err(unsupported(
                n,
                "selects between two tensors; a mask select keeps one value and fills a literal",
            ))
        }
    };
    let fill = round_f64(n.ty.dtype.storage(), fill) as f32;
    Ok(EpilogueStep::Mask { condition, fill })
}
