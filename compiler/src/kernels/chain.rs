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

use super::{chip, statement, unsupported, Ctx};
use crate::error::CompileError;
use crate::ir::{BinaryOp, GeluApprox, Node, Op, Operand, TensorType, UnaryOp, ValueId};
use crate::tiles::{BufSlice, HbmTensor, TileOp, TileScalar};

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
            return Err(unsupported(n, "changes the shape, which is not supported in a fused chain yet"));
        }
        let prev = c.last;
        let uses_prev = |o: &Operand| matches!(o, Operand::Value(v) if *v == prev);
        let text = statement(f, i);
        match (&n.op, n.operands.as_slice()) {
            (Op::Cast { to }, [x]) if uses_prev(x) => {
                let to = chip(*to, "a cast result", n)?;
                c.cast = Some((to, format!("{text} {{to = {to}}}")));
            }
            (Op::Binary(op), [x, y]) if uses_prev(x) || uses_prev(y) => {
                let step = binary_step(cx, &mut c.epilogue_inputs, n, *op, (x, y), prev, ty)?;
                c.epilogue.push((step, text));
            }
            (Op::Unary(_) | Op::Gelu { .. }, [x]) if uses_prev(x) => {
                if !ty.dtype.is_float() {
                    return Err(unsupported(n, "on an integer result is not supported yet"));
                }
                c.epilogue.push((unary_step(n)?, text));
            }
            (Op::Select, [Operand::Value(cond), a, b]) => {
                c.epilogue.push((mask_step(cx, n, *cond, (a, b), prev)?, text))
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
    let elementwise = matches!(n.op, Op::Cast { .. } | Op::Binary(_) | Op::Unary(_) | Op::Gelu { .. } | Op::Select);
    let mask_condition = |v: &ValueId| super::mask::condition(cx.f, *v, &n.ty.shape).is_some();
    let ready = n.operands.iter().all(|o| match o {
        Operand::Value(v) => *v == prev || cx.in_hbm[v.0 as usize] || mask_condition(v),
        Operand::Scalar(_) => true,
    });
    elementwise && ready
}

/// The step of binary op `n` with operands `(x, y)`, one of which is `prev`.
fn binary_step(
    cx: &Ctx<'_>,
    inputs: &mut Vec<EpilogueInput>,
    n: &Node,
    op: BinaryOp,
    (x, y): (&Operand, &Operand),
    prev: ValueId,
    ty: &TensorType,
) -> Result<EpilogueStep, CompileError> {
    if !ty.dtype.is_float() {
        return Err(unsupported(n, "on an integer result is not supported yet"));
    }
    let uses_prev = |o: &Operand| matches!(o, Operand::Value(v) if *v == prev);
    let other_first = !uses_prev(x);
    let other = match if other_first { x } else { y } {
        _ if uses_prev(x) && uses_prev(y) => EpilogueOperand::Same,
        Operand::Scalar(v) => EpilogueOperand::Scalar(round_f64(chip(ty.dtype, "a result", n)?, *v) as f32),
        Operand::Value(v) if cx.in_hbm[v.0 as usize] => EpilogueOperand::Tensor(tensor_operand(cx, inputs, n, *v, ty)?),
        Operand::Value(v) => {
            let why =
                format!("reads `%{}`, which is not a parameter or an earlier kernel's output", cx.f.node(*v).name);
            return Err(unsupported(n, &why));
        }
    };
    let op = match op {
        BinaryOp::Add => AluOp::Add,
        BinaryOp::Sub => AluOp::Sub,
        BinaryOp::Mul => AluOp::Mul,
        BinaryOp::Div => AluOp::Div,
        BinaryOp::Max => AluOp::Max,
        BinaryOp::Min => AluOp::Min,
    };
    Ok(EpilogueStep::Binary { op, other, other_first })
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
        (Some(b), _) => b,
        // Expanded to the result's shape by a copy kernel before this one.
        (None, Some(expanded)) => {
            (shape, name) = (c, expanded.clone());
            Broadcast::Full
        }
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
    if let Some(k) = inputs.iter().position(|e| e.name == name) {
        return Ok(k);
    }
    let dtype = chip(ty.dtype, "a result", n)?;
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
        Op::Unary(UnaryOp::Sqrt) => ActFunc::Sqrt,
        Op::Gelu { approx: GeluApprox::Tanh } => ActFunc::GeluTanh,
        Op::Gelu { approx: GeluApprox::None } => ActFunc::Gelu,
        // -x is exact as x * -1 on the vector engine.
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
    let fill = round_f64(chip(n.ty.dtype, "a result", n)?, fill) as f32;
    Ok(EpilogueStep::Mask { condition, fill })
}
