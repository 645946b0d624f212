//! The GEMM kernel: `C[batch.., M, N] = A[batch.., M, K] . B[batch.., K, N]`.
//!
//! Loop nest (per batch index, `loop_order = n_outer`; `m_outer` swaps the two
//! loops): for each N-panel of `tile_n` columns, load the B
//! panel (every k-tile, resident for the panel); for each M-tile of `tile_m` rows,
//! load the A rows (every k; used as the PE's transposed stationary operand, so
//! row-major A needs no transpose), accumulate the k-tiles into one PSUM bank,
//! evacuate it through the VE (converting to the matmul's dtype, then to a fused
//! cast's), and store the rows. A tiles, B panels, PSUM banks and output staging
//! rotate through their copies. The tile program is software-pipelined: the loads
//! of the next work item come before the current item's compute, so prefetches
//! overlap compute on in-order engines. When every M-tile fits in the A copies,
//! A stays resident and is loaded once per batch.

use std::fmt;

use jpu_isa::operand::{ActFunc, AluOp, Space};
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::{BufSlice, Buffer, BufferId, HbmBox, HbmTensor, TileOp, TileProgram, TileScalar};
use crate::ir::types::ScalarType;
use crate::ir::{BinaryOp, Func, GeluApprox, Op, Operand, UnaryOp, ValueId};

/// Copies of the raw (untransposed) B chunk staging when B is stored transposed:
/// loads run `BT_RAW_COPIES - 1` chunks ahead of the transposes, enough to cover
/// the DMA latency with 128-cycle transposes.
const BT_RAW_COPIES: u64 = 16;
/// PSUM banks reserved for transposing B when it is stored transposed.
const BT_PSUM_BANKS: u32 = 2;

/// Tile sizes and buffering of a GEMM (the `--emit kernels` form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmSchedule {
    /// Rows of A (and C) per tile: PSUM partitions (at most `pe.cols`).
    pub tile_m: u32,
    /// Columns of B (and C) per tile (at most `pe.max_moving_free` and one bank).
    pub tile_n: u32,
    /// Contraction per matmul (at most `pe.rows`).
    pub tile_k: u32,
    /// Copies of the A tile.
    pub a_buffers: u32,
    /// Copies of the B panel.
    pub b_buffers: u32,
    /// Copies of the output staging tile.
    pub out_buffers: u32,
    /// PSUM banks used round-robin.
    pub psum_banks: u32,
    /// Which tile loop is outer (per batch index).
    pub loop_order: LoopOrder,
    /// DMA queue for A's loads (`None`: the backend's least-loaded queue).
    pub a_queue: Option<u8>,
    /// DMA queue for B's loads (`None`: the backend's least-loaded queue).
    pub b_queue: Option<u8>,
}

/// The order of a GEMM's work items within a batch index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopOrder {
    /// For each N-panel, every M-tile: each B panel is loaded once, A tiles are
    /// reloaded per panel unless every M-tile stays resident.
    NOuter,
    /// For each M-tile, every N-panel: each A tile is loaded once, B panels are
    /// reloaded per M-tile.
    MOuter,
}

impl LoopOrder {
    /// The schedule-file spelling.
    pub fn name(self) -> &'static str {
        match self {
            LoopOrder::NOuter => "n_outer",
            LoopOrder::MOuter => "m_outer",
        }
    }
}

/// The matmul a function computes, as the kernel needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmProblem {
    /// The IR statement (for listings and debug info).
    pub text: String,
    /// Batch dims of C.
    pub batch: Vec<u64>,
    /// For each C batch index, the A and B batch indices (broadcasting).
    pub batch_map: Vec<(u64, u64)>,
    /// Rows of A.
    pub m: u64,
    /// Contraction.
    pub k: u64,
    /// Columns of B.
    pub n: u64,
    /// Operand dtype.
    pub operand: DType,
    /// The matmul's result dtype (rounding after accumulation).
    pub result: DType,
    /// A final cast's dtype and statement, if the chain ends in one.
    pub cast: Option<(DType, String)>,
    /// A is stored `[.., K, M]`.
    pub transpose_a: bool,
    /// B is stored `[.., N, K]`.
    pub transpose_b: bool,
    /// Names of A, B, C.
    pub names: [String; 3],
    /// Shapes of A and B.
    pub shapes: [Vec<u64>; 2],
    /// Elementwise steps applied to each output tile between PSUM evacuation and
    /// the cast, with the IR statement each implements.
    pub epilogue: Vec<(EpilogueStep, String)>,
    /// HBM tensors the epilogue reads (tensor `2 + i` of the tile program).
    pub epilogue_inputs: Vec<EpilogueInput>,
    /// Indices of the IR nodes the kernel computes: the matmul, then each fused step.
    pub nodes: Vec<usize>,
}

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

impl fmt::Display for GemmSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tile_m = {}, tile_n = {}, tile_k = {}, a_buffers = {}, b_buffers = {}, out_buffers = {}, psum_banks = {}, loop_order = {}, a_queue = {}, b_queue = {}",
            self.tile_m,
            self.tile_n,
            self.tile_k,
            self.a_buffers,
            self.b_buffers,
            self.out_buffers,
            self.psum_banks,
            self.loop_order.name(),
            self.a_queue.map_or("auto".to_string(), |q| q.to_string()),
            self.b_queue.map_or("auto".to_string(), |q| q.to_string())
        )
    }
}

/// Why a function cannot be compiled (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

pub(crate) fn chip(t: ScalarType, what: &str) -> Result<DType, Unsupported> {
    t.chip().ok_or_else(|| Unsupported(format!("{what} of type {t} cannot live in HBM")))
}

/// What code generation covers, for error messages.
pub(crate) const SUPPORTED: &str = "this compiler version compiles matmuls, elementwise ops (binary, activation-engine functions, casts, mask selects over iotas, const splats), softmax, rmsnorm and layernorm over either of the last two axes, sum/max reductions over trailing axes or the second-to-last, attention, concat, slice, reshapes and transposes of the last two dims, over parameters and earlier results";

/// A chain of elementwise steps, each consuming the previous value.
pub(crate) struct Chain {
    pub epilogue: Vec<(EpilogueStep, String)>,
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
/// whatever `start`'s other uses. Without `fuse`, only `first` (if any) is taken.
pub(crate) fn chain(
    f: &Func,
    start: ValueId,
    first: Option<usize>,
    ty: &crate::ir::types::TensorType,
    uses: &[usize],
    in_hbm: &[bool],
    fuse: bool,
) -> Result<Chain, Unsupported> {
    let supported = SUPPORTED;
    let result_dtype = chip(ty.dtype, "the result")?;
    let (n_cols, c_shape) = (ty.shape.last().copied().unwrap_or(1), ty.shape.clone());
    let mut epilogue = Vec::new();
    let mut epilogue_inputs: Vec<EpilogueInput> = Vec::new();
    let mut cast = None;
    let mut prev = start;
    let mut nodes = Vec::new();
    let mut first = first;
    loop {
        let next = if let Some(i) = first.take() {
            Some((i, &f.nodes[i]))
        } else if !fuse || uses[prev.0 as usize] != 1 || f.results.contains(&prev) {
            None
        } else {
            f.nodes
                .iter()
                .enumerate()
                .skip(prev.0 as usize + 1)
                .find(|(_, n)| n.operands.iter().any(|o| matches!(o, Operand::Value(v) if *v == prev)))
        };
        let Some((i, n)) = next else {
            break;
        };
        let elementwise = matches!(n.op, Op::Cast { .. } | Op::Binary(_) | Op::Unary(_) | Op::Gelu { .. } | Op::Select);
        // A step reading a value computed later belongs to that value's kernel
        // (a mask condition is computed in place).
        let mask_condition = |v: &ValueId| super::mask::condition(f, *v, &n.ty.shape).is_some();
        let ready = n.operands.iter().all(|o| match o {
            Operand::Value(v) => *v == prev || in_hbm[v.0 as usize] || mask_condition(v),
            Operand::Scalar(_) => true,
        });
        // A cast ends a chain (steps after it run in the cast's dtype: a kernel of their own).
        if !elementwise || !ready || cast.is_some() {
            break;
        }
        let here = ValueId(i as u32);
        let uses_prev = |o: &Operand| matches!(o, Operand::Value(v) if *v == prev);
        let not_yet = |why: &str| Unsupported(format!("`%{} = {}` {why}: {supported}", n.name, n.op.name()));
        if n.ty.shape != c_shape {
            return Err(not_yet("changes the shape, which is not supported in a fused chain yet"));
        }
        let text = super::statement(f, i);
        match (&n.op, n.operands.as_slice()) {
            (Op::Cast { to }, [x]) if uses_prev(x) => {
                let to = chip(*to, "the cast result")?;
                cast = Some((to, format!("{text} {{to = {to}}}")));
            }
            (Op::Binary(op), [x, y]) if uses_prev(x) || uses_prev(y) => {
                if !ty.dtype.is_float() {
                    return Err(not_yet("on an integer result is not supported yet"));
                }
                let other_first = !uses_prev(x);
                let other = match if other_first { x } else { y } {
                    _ if uses_prev(x) && uses_prev(y) => EpilogueOperand::Same,
                    Operand::Scalar(v) => {
                        EpilogueOperand::Scalar(jpu_isa::numerics::round_f64(result_dtype, *v) as f32)
                    }
                    Operand::Value(v) if in_hbm[v.0 as usize] => {
                        let p = f.node(*v);
                        let r = p.ty.rank();
                        let row = p.ty.shape.last() == Some(&n_cols) && p.ty.shape[..r - 1].iter().all(|&d| d == 1);
                        let column = r == c_shape.len()
                            && r >= 1
                            && p.ty.shape[r - 1] == 1
                            && p.ty.shape[..r - 1] == c_shape[..r - 1];
                        // One matrix (the last two dims) for every batch index.
                        let cr = c_shape.len();
                        let matrix = cr > 2
                            && r >= 2
                            && p.ty.shape[r - 2..] == c_shape[cr - 2..]
                            && p.ty.shape[..r - 2].iter().all(|&d| d == 1);
                        let broadcast = if row {
                            Broadcast::Row
                        } else if p.ty.shape == c_shape {
                            Broadcast::Full
                        } else if column {
                            Broadcast::Column
                        } else if matrix {
                            Broadcast::Matrix
                        } else {
                            return Err(not_yet(&format!(
                                "reads `%{}` of shape {:?}; an epilogue operand must be a row of N = {n_cols} values, a column of one value per row, one matrix of the last two dims, or have the result's shape {c_shape:?}",
                                p.name, p.ty.shape
                            )));
                        };
                        if p.ty.dtype != ty.dtype {
                            return Err(not_yet("mixes dtypes"));
                        }
                        let k = epilogue_inputs.iter().position(|e| e.name == p.name).unwrap_or_else(|| {
                            epilogue_inputs.push(EpilogueInput {
                                name: p.name.clone(),
                                dtype: result_dtype,
                                shape: p.ty.shape.clone(),
                                broadcast,
                            });
                            epilogue_inputs.len() - 1
                        });
                        EpilogueOperand::Tensor(k)
                    }
                    Operand::Value(v) => {
                        return Err(not_yet(&format!(
                            "reads `%{}`, which is not a parameter or an earlier kernel's output",
                            f.node(*v).name
                        )))
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
                epilogue.push((EpilogueStep::Binary { op, other, other_first }, text));
            }
            (Op::Unary(_) | Op::Gelu { .. }, [x]) if uses_prev(x) => {
                if !ty.dtype.is_float() {
                    return Err(not_yet("on an integer result is not supported yet"));
                }
                let func = match &n.op {
                    Op::Unary(UnaryOp::Exp) => ActFunc::Exp,
                    Op::Unary(UnaryOp::Tanh) => ActFunc::Tanh,
                    Op::Unary(UnaryOp::Erf) => ActFunc::Erf,
                    Op::Unary(UnaryOp::Sigmoid) => ActFunc::Sigmoid,
                    Op::Unary(UnaryOp::Rsqrt) => ActFunc::Rsqrt,
                    Op::Unary(UnaryOp::Recip) => ActFunc::Reciprocal,
                    Op::Unary(UnaryOp::Relu) => ActFunc::Relu,
                    Op::Unary(UnaryOp::Silu) => ActFunc::Silu,
                    Op::Gelu { approx: GeluApprox::Tanh } => ActFunc::GeluTanh,
                    Op::Unary(UnaryOp::Sqrt) => ActFunc::Sqrt,
                    Op::Gelu { approx: GeluApprox::None } => ActFunc::Gelu,
                    Op::Unary(UnaryOp::Neg) => {
                        // -x is exact as x * -1 on the vector engine.
                        let step = EpilogueStep::Binary {
                            op: AluOp::Mul,
                            other: EpilogueOperand::Scalar(-1.0),
                            other_first: false,
                        };
                        epilogue.push((step, text));
                        nodes.push(i);
                        prev = here;
                        continue;
                    }
                    _ => return Err(not_yet("has no activation-engine function yet")),
                };
                epilogue.push((EpilogueStep::Activate(func), text));
            }
            (Op::Select, [Operand::Value(c), a, b]) => {
                let condition = super::mask::condition(f, *c, &n.ty.shape).ok_or_else(|| {
                    not_yet("selects by a condition that is not a comparison of iotas over the last two dims and integer literals")
                })?;
                let (condition, fill) = match (a, b) {
                    (x, Operand::Scalar(v)) if uses_prev(x) => (condition, *v),
                    (Operand::Scalar(v), x) if uses_prev(x) => (condition.negated(), *v),
                    _ => {
                        return Err(not_yet(
                            "selects between two tensors; a mask select keeps one value and fills a literal",
                        ))
                    }
                };
                let fill = jpu_isa::numerics::round_f64(chip(n.ty.dtype, "the select")?, fill) as f32;
                epilogue.push((EpilogueStep::Mask { condition, fill }, text));
            }
            _ => return Err(not_yet("is not an elementwise step on the product")),
        }
        nodes.push(i);
        prev = here;
    }
    Ok(Chain { epilogue, epilogue_inputs, cast, nodes, last: prev })
}

/// Recognises a function that is exactly one GEMM kernel.
pub fn recognise(f: &Func) -> Result<GemmProblem, Unsupported> {
    let mut kernels = super::plan(f)?;
    match (kernels.len(), kernels.pop()) {
        (1, Some(super::KernelProblem::Gemm(p))) => Ok(p),
        (n, _) => Err(Unsupported(format!("the function needs {n} kernels; one GEMM was expected"))),
    }
}

/// The kernel of the matmul at node `mm_index` and the node index of its output.
pub(crate) fn gemm_kernel(
    f: &Func,
    mm_index: usize,
    uses: &[usize],
    in_hbm: &[bool],
    fuse: bool,
) -> Result<(GemmProblem, usize), Unsupported> {
    let supported = SUPPORTED;
    let mm = &f.nodes[mm_index];
    let (Op::Matmul { transpose_a, transpose_b }, [Operand::Value(a), Operand::Value(b)]) =
        (&mm.op, mm.operands.as_slice())
    else {
        return Err(Unsupported(format!("`{}` is not supported yet: {supported}", mm.op.name())));
    };
    for v in [a, b] {
        if !in_hbm[v.0 as usize] {
            return Err(Unsupported(format!(
                "`%{}` reads `%{}`, which is not a parameter or a kernel's output: {supported}",
                mm.name,
                f.node(*v).name
            )));
        }
    }
    let result_dtype = chip(mm.ty.dtype, "the matmul result")?;
    let Chain { epilogue, epilogue_inputs, cast, mut nodes, last: result } =
        chain(f, ValueId(mm_index as u32), None, &mm.ty, uses, in_hbm, fuse)?;
    nodes.insert(0, mm_index);
    let (an, bn) = (f.node(*a), f.node(*b));
    let (ra, rb) = (an.ty.rank(), bn.ty.rank());
    let batch: Vec<u64> = mm.ty.shape[..mm.ty.rank() - 2].to_vec();
    // Broadcast batch indices, row-major over C's batch dims.
    let count: u64 = batch.iter().product();
    let index = |shape: &[u64], c: u64| -> u64 {
        let mut rem = c;
        let mut idx = 0u64;
        let mut stride = 1u64;
        let offset = batch.len() - shape.len();
        for d in (0..batch.len()).rev() {
            let i = rem % batch[d];
            rem /= batch[d];
            if d >= offset {
                let sd = shape[d - offset];
                idx += if sd == 1 { 0 } else { i } * stride;
                stride *= sd;
            }
        }
        idx
    };
    let batch_map = (0..count).map(|c| (index(&an.ty.shape[..ra - 2], c), index(&bn.ty.shape[..rb - 2], c))).collect();
    Ok((
        GemmProblem {
            text: format!(
                "%{} = matmul(%{}, %{}){}",
                mm.name,
                an.name,
                bn.name,
                match (transpose_a, transpose_b) {
                    (false, false) => String::new(),
                    (ta, tb) => format!(" {{transpose_a = {ta}, transpose_b = {tb}}}"),
                }
            ),
            batch,
            batch_map,
            m: an.ty.shape[if *transpose_a { ra - 1 } else { ra - 2 }],
            k: an.ty.shape[if *transpose_a { ra - 2 } else { ra - 1 }],
            n: bn.ty.shape[if *transpose_b { rb - 2 } else { rb - 1 }],
            transpose_a: *transpose_a,
            transpose_b: *transpose_b,
            operand: chip(an.ty.dtype, "the operands")?,
            result: result_dtype,
            cast,
            names: [an.name.clone(), bn.name.clone(), f.node(result).name.clone()],
            shapes: [an.ty.shape.clone(), bn.ty.shape.clone()],
            epilogue,
            epilogue_inputs,
            nodes,
        },
        result.0 as usize,
    ))
}

impl GemmProblem {
    /// The dtype stored to HBM.
    pub fn output(&self) -> DType {
        self.cast.as_ref().map_or(self.result, |c| c.0)
    }

    /// Bytes per SRAM partition a schedule needs.
    pub fn sram_bytes(&self, s: &GemmSchedule) -> u64 {
        let es = self.operand.size_bytes() as u64;
        let kt = self.k.div_ceil(s.tile_k as u64);
        let a = if self.transpose_a {
            s.a_buffers as u64 * kt * s.tile_m as u64 * es
        } else {
            s.a_buffers as u64 * self.k * es
        };
        let b = s.b_buffers as u64 * kt * s.tile_n as u64 * es
            + if self.transpose_b { BT_RAW_COPIES * s.tile_k as u64 * es } else { 0 };
        let stage = s.tile_n as u64 * self.result.size_bytes() as u64;
        let cast = self.cast.as_ref().map_or(0, |c| s.tile_n as u64 * c.0.size_bytes() as u64);
        // Bias rows stay resident (all of N); residual tiles and row-scale columns
        // rotate with the output.
        let epilogue: u64 = self
            .epilogue_inputs
            .iter()
            .map(|e| match e.broadcast {
                Broadcast::Row => self.n * e.dtype.size_bytes() as u64,
                Broadcast::Full | Broadcast::Matrix => {
                    s.out_buffers as u64 * s.tile_n as u64 * e.dtype.size_bytes() as u64
                }
                // One element per partition, each copy padded to 64 bytes.
                Broadcast::Column => s.out_buffers as u64 * 64,
            })
            .sum();
        a + b + s.out_buffers as u64 * (stage + cast) + epilogue
    }
}

/// Chooses a schedule: full PE tiles, the widest N a bank holds, double buffering,
/// every PSUM bank; narrower or single-buffered only when SRAM requires it.
pub fn choose(p: &GemmProblem, t: &Target) -> Result<GemmSchedule, Unsupported> {
    let bank_elems = t.psum_bank_bytes() / 4;
    let mut s = GemmSchedule {
        tile_m: (t.pe.cols as u64).min(p.m) as u32,
        tile_n: (t.pe.max_moving_free.min(bank_elems) as u64).min(p.n) as u32,
        tile_k: (if p.transpose_b { t.pe.rows.min(t.pe.cols) } else { t.pe.rows } as u64).min(p.k) as u32,
        a_buffers: 2,
        b_buffers: 2,
        out_buffers: 3,
        psum_banks: t.psum.banks.unwrap_or(1).saturating_sub(if p.transpose_b { BT_PSUM_BANKS } else { 0 }).max(1),
        // The kernel keeps a B panel resident across M-tiles: B, usually the larger
        // operand, is then read once.
        loop_order: LoopOrder::NOuter,
        // Queue choice is left to the backend's list scheduler, which balances bytes.
        a_queue: None,
        b_queue: None,
    };
    let cap = t.sram.partition_bytes as u64;
    while p.sram_bytes(&s) > cap {
        if s.out_buffers > 2 {
            s.out_buffers -= 1;
        } else if s.b_buffers > 1 {
            s.b_buffers = 1;
        } else if s.tile_n > 64 {
            s.tile_n /= 2;
        } else if s.a_buffers > 1 {
            s.a_buffers = 1;
        } else {
            return Err(Unsupported(format!(
                "K = {} is too long for one SRAM partition of {} ({} bytes needed, {cap} available); K-splitting is not implemented yet",
                p.k,
                t.name,
                p.sram_bytes(&s)
            )));
        }
    }
    Ok(s)
}

/// Checks a schedule (e.g. one given with `--schedule`) against the target.
pub fn check(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> Result<(), Unsupported> {
    let fail = |m: String| Err(Unsupported(m));
    if s.tile_m == 0 || s.tile_m > t.pe.cols {
        return fail(format!("tile_m = {} must be in 1..={} (the PE's columns)", s.tile_m, t.pe.cols));
    }
    if s.tile_k == 0 || s.tile_k > t.pe.rows {
        return fail(format!("tile_k = {} must be in 1..={} (the PE's rows)", s.tile_k, t.pe.rows));
    }
    let bank_elems = t.psum_bank_bytes() / 4;
    if s.tile_n == 0 || s.tile_n > t.pe.max_moving_free.min(bank_elems) {
        return fail(format!(
            "tile_n = {} must be in 1..={} (moving free size and one PSUM bank)",
            s.tile_n,
            t.pe.max_moving_free.min(bank_elems)
        ));
    }
    let reserved = if p.transpose_b { BT_PSUM_BANKS } else { 0 };
    let banks = t.psum.banks.unwrap_or(1).saturating_sub(reserved);
    if s.psum_banks == 0 || s.psum_banks > banks {
        let why =
            if reserved > 0 { format!(" ({reserved} banks transpose the stored-transposed B)") } else { String::new() };
        return fail(format!("psum_banks = {} must be in 1..={banks}{why}", s.psum_banks));
    }
    if p.transpose_b && (s.tile_k > t.pe.cols || s.tile_k > t.pe.rows) {
        return fail(format!(
            "tile_k = {} must fit the PE transpose ({}x{}) when B is stored transposed",
            s.tile_k, t.pe.rows, t.pe.cols
        ));
    }
    // The last queue carries stores when there are two or more.
    let load_queues = if t.dma.queues > 1 { t.dma.queues - 1 } else { 1 };
    for (name, q) in [("a_queue", s.a_queue), ("b_queue", s.b_queue)] {
        if let Some(q) = q {
            if q as u32 >= load_queues {
                let why = if t.dma.queues > 1 {
                    format!(" (queue {} carries stores)", t.dma.queues - 1)
                } else {
                    String::new()
                };
                return fail(format!("{name} = {q} must be in 0..={}{why}", load_queues - 1));
            }
        }
    }
    if s.a_buffers == 0 || s.b_buffers == 0 || s.out_buffers == 0 {
        return fail("buffer counts must be at least 1".into());
    }
    let need = p.sram_bytes(s);
    if need > t.sram.partition_bytes as u64 {
        return fail(format!(
            "the schedule needs {need} bytes per SRAM partition; {} has {}",
            t.name, t.sram.partition_bytes
        ));
    }
    Ok(())
}

/// Lowers the GEMM to a tile program.
pub fn lower(p: &GemmProblem, s: &GemmSchedule) -> TileProgram {
    let acc = p.operand.accumulator();
    let batch_shape = |shape: &[u64]| shape.to_vec();
    let mut c_shape = p.batch.clone();
    c_shape.extend([p.m, p.n]);
    let mut tensors = vec![
        HbmTensor { name: p.names[0].clone(), dtype: p.operand, shape: batch_shape(&p.shapes[0]), role: Role::Input },
        HbmTensor { name: p.names[1].clone(), dtype: p.operand, shape: batch_shape(&p.shapes[1]), role: Role::Input },
    ];
    tensors.extend(p.epilogue_inputs.iter().map(EpilogueInput::hbm_tensor));
    let c_tensor = tensors.len();
    tensors.push(HbmTensor { name: p.names[2].clone(), dtype: p.output(), shape: c_shape, role: Role::Output });
    let (tm, tn, tk) = (s.tile_m as u64, s.tile_n as u64, s.tile_k as u64);
    let (mt, nt, kt) = (p.m.div_ceil(tm), p.n.div_ceil(tn), p.k.div_ceil(tk));
    let mut buffers = vec![
        // Row-major A: rows on partitions, all of K free (the transposed stationary
        // operand). Stored-transposed A: k-tiles on partitions, M-tile columns free
        // (the plain stationary operand).
        if p.transpose_a {
            Buffer {
                name: "a_tile".into(),
                space: Space::Sram,
                dtype: p.operand,
                parts: s.tile_k,
                free: (kt * tm) as u32,
                copies: s.a_buffers.max(1),
            }
        } else {
            Buffer {
                name: "a_tile".into(),
                space: Space::Sram,
                dtype: p.operand,
                parts: s.tile_m,
                free: p.k as u32,
                copies: s.a_buffers.max(1),
            }
        },
        Buffer {
            name: "b_panel".into(),
            space: Space::Sram,
            dtype: p.operand,
            parts: s.tile_k,
            free: (kt * tn) as u32,
            copies: s.b_buffers,
        },
        Buffer {
            name: "psum".into(),
            space: Space::Psum,
            dtype: acc,
            parts: s.tile_m,
            free: s.tile_n,
            copies: s.psum_banks,
        },
        Buffer {
            name: "c_tile".into(),
            space: Space::Sram,
            dtype: p.result,
            parts: s.tile_m,
            free: s.tile_n,
            copies: s.out_buffers,
        },
    ];
    let cast_buf = p.cast.as_ref().map(|&(c, _)| {
        buffers.push(Buffer {
            name: "c_cast".into(),
            space: Space::Sram,
            dtype: c,
            parts: s.tile_m,
            free: s.tile_n,
            copies: s.out_buffers,
        });
        buffers.len() - 1
    });
    // Epilogue inputs: a bias row replicated on every partition (loaded once), or
    // residual tiles rotating with the output staging.
    let epi_bufs: Vec<BufferId> = p
        .epilogue_inputs
        .iter()
        .map(|e| {
            buffers.push(Buffer {
                name: format!("{}_{}", e.broadcast.prefix(), e.name),
                space: Space::Sram,
                dtype: e.dtype,
                parts: s.tile_m,
                free: match e.broadcast {
                    Broadcast::Row => p.n as u32,
                    Broadcast::Full | Broadcast::Matrix => s.tile_n,
                    Broadcast::Column => 1,
                },
                copies: if e.broadcast == Broadcast::Row { 1 } else { s.out_buffers },
            });
            buffers.len() - 1
        })
        .collect();
    // Stored-transposed B: raw [n, k] chunks are transposed on the PE into the panel.
    let bt = p.transpose_b.then(|| {
        buffers.push(Buffer {
            name: "bt_raw".into(),
            space: Space::Sram,
            dtype: p.operand,
            parts: s.tile_k,
            free: s.tile_k,
            copies: BT_RAW_COPIES as u32,
        });
        buffers.push(Buffer {
            name: "bt_psum".into(),
            space: Space::Psum,
            dtype: acc,
            parts: s.tile_k,
            free: s.tile_n,
            copies: BT_PSUM_BANKS,
        });
        (buffers.len() - 2, buffers.len() - 1)
    });
    let (a_buf, b_buf, psum_buf, c_buf) = (0, 1, 2, 3);
    let a_batch_elems = p.m * p.k;
    let b_batch_elems = p.k * p.n;
    // Work items in execution order: (C batch index, N-panel, M-tile).
    let items: Vec<(usize, u64, u64)> = match s.loop_order {
        LoopOrder::NOuter => (0..p.batch_map.len())
            .flat_map(|ci| (0..nt).flat_map(move |ni| (0..mt).map(move |mi| (ci, ni, mi))))
            .collect(),
        LoopOrder::MOuter => (0..p.batch_map.len())
            .flat_map(|ci| (0..mt).flat_map(move |mi| (0..nt).map(move |ni| (ci, ni, mi))))
            .collect(),
    };
    // Which copy holds each item's B panel and A tile, and whether it must be loaded.
    // A tiles stay resident when all M-tiles of a batch fit in the A copies.
    let a_resident = mt <= s.a_buffers as u64;
    let mut plan = Vec::with_capacity(items.len());
    let (mut panels, mut a_loads) = (0u32, 0u32);
    let mut last_panel = None;
    let mut last_a: Option<(u64, u64)> = None;
    // With resident A, copy mi holds M-tile mi of the batch recorded here.
    let mut a_holds: Vec<Option<u64>> = vec![None; mt as usize];
    for &(ci, ni, mi) in &items {
        let (ab, _) = p.batch_map[ci];
        let new_panel = last_panel != Some((ci, ni));
        if new_panel {
            panels += 1;
            last_panel = Some((ci, ni));
        }
        let b_copy = (panels - 1) % s.b_buffers;
        let (a_copy, load_a) = if a_resident {
            let load = a_holds[mi as usize] != Some(ab);
            a_holds[mi as usize] = Some(ab);
            (mi as u32, load)
        } else if last_a == Some((ab, mi)) {
            // The previous item read the same A tile (M-outer order): reuse it.
            ((a_loads - 1) % s.a_buffers, false)
        } else {
            a_loads += 1;
            ((a_loads - 1) % s.a_buffers, true)
        };
        last_a = Some((ab, mi));
        plan.push((new_panel, b_copy, a_copy, load_a));
    }
    // Debug op of each epilogue input: the first step reading it.
    let epilogue_debug: Vec<u32> = (0..p.epilogue_inputs.len())
        .map(|e| {
            let reads = |st: &EpilogueStep| {
                matches!(st, EpilogueStep::Binary { other: EpilogueOperand::Tensor(k), .. } if *k == e)
            };
            1 + p.epilogue.iter().position(|(st, _)| reads(st)).expect("every epilogue input is read") as u32
        })
        .collect();
    let mut ops = Vec::new();
    for (e, _) in p.epilogue_inputs.iter().enumerate().filter(|(_, i)| i.broadcast == Broadcast::Row) {
        // Every partition reads the same N values: a zero row stride.
        let src = HbmBox { tensor: 2 + e, start: 0, rows: s.tile_m, row_stride: 0, cols: p.n as u32 };
        let dst = BufSlice { buf: epi_bufs[e], copy: 0, parts: s.tile_m, offset: 0, len: p.n as u32 };
        ops.push((TileOp::Load { dst, src, queue: None }, epilogue_debug[e]));
    }
    let emit_loads = |ops: &mut Vec<(TileOp, u32)>, j: usize| {
        let (ci, ni, mi) = items[j];
        let (ab, bb) = p.batch_map[ci];
        let (new_panel, b_copy, a_copy, load_a) = plan[j];
        let nw = tn.min(p.n - ni * tn);
        // Loads in k order, A's chunk before B's k-tile: matmul kc waits only for
        // the k-slices it reads, so compute starts after the first slices arrive.
        let mr = tm.min(p.m - mi * tm);
        for kc in 0..kt {
            let kr = tk.min(p.k - kc * tk);
            if load_a {
                // Stored-transposed A: k rows of M-tile columns; row-major A: M-tile
                // rows of k columns (both land rows on partitions).
                let (start, rows, row_stride, cols, offset) = if p.transpose_a {
                    (kc * tk * p.m + mi * tm, kr, p.m, mr, kc * tm)
                } else {
                    (mi * tm * p.k + kc * tk, mr, p.k, kr, kc * tk)
                };
                let src = HbmBox {
                    tensor: 0,
                    start: ab * a_batch_elems + start,
                    rows: rows as u32,
                    row_stride,
                    cols: cols as u32,
                };
                let dst =
                    BufSlice { buf: a_buf, copy: a_copy, parts: rows as u32, offset: offset as u32, len: cols as u32 };
                ops.push((TileOp::Load { dst, src, queue: s.a_queue }, 0));
            }
            if new_panel && !p.transpose_b {
                let src = HbmBox {
                    tensor: 1,
                    start: bb * b_batch_elems + kc * tk * p.n + ni * tn,
                    rows: kr as u32,
                    row_stride: p.n,
                    cols: nw as u32,
                };
                let dst =
                    BufSlice { buf: b_buf, copy: b_copy, parts: kr as u32, offset: (kc * tn) as u32, len: nw as u32 };
                ops.push((TileOp::Load { dst, src, queue: s.b_queue }, 0));
            }
        }
        for (e, input) in p.epilogue_inputs.iter().enumerate().filter(|(_, i)| i.broadcast != Broadcast::Row) {
            let (src, len) = if input.broadcast == Broadcast::Column {
                let start = ci as u64 * p.m + mi * tm;
                (HbmBox { tensor: 2 + e, start, rows: mr as u32, row_stride: 1, cols: 1 }, 1)
            } else {
                let batch = if input.broadcast == Broadcast::Matrix { 0 } else { ci as u64 };
                let start = batch * p.m * p.n + mi * tm * p.n + ni * tn;
                (HbmBox { tensor: 2 + e, start, rows: mr as u32, row_stride: p.n, cols: nw as u32 }, nw as u32)
            };
            let dst = BufSlice { buf: epi_bufs[e], copy: j as u32 % s.out_buffers, parts: mr as u32, offset: 0, len };
            ops.push((TileOp::Load { dst, src, queue: None }, epilogue_debug[e]));
        }
    };
    // Preparing a stored-transposed B panel: load [n, k] chunks (BT_RAW_COPIES
    // copies, loads that many less one ahead), transpose each on the PE into a PSUM staging bank, copy each
    // k-tile into the panel. Emitted after the previous item's matmuls, so the PE
    // meets these transposes once its current work is done.
    let mut raw_count = 0u32;
    let mut tp_count = 0u32;
    let mut prep = |ops: &mut Vec<(TileOp, u32)>, j: usize| {
        let Some((raw_buf, tp_buf)) = bt else { return };
        let (ci, ni, _) = items[j];
        let (_, bb) = p.batch_map[ci];
        let (new_panel, b_copy, _, _) = plan[j];
        if !new_panel {
            return;
        }
        let nw = tn.min(p.n - ni * tn);
        let chunks: Vec<(u64, u64)> = (0..kt).flat_map(|kc| (0..nw.div_ceil(tk)).map(move |sb| (kc, sb))).collect();
        let base = raw_count;
        raw_count += chunks.len() as u32;
        let raw = |c: usize| {
            let (kc, sb) = chunks[c];
            let kr = tk.min(p.k - kc * tk);
            let ns = tk.min(nw - sb * tk);
            BufSlice {
                buf: raw_buf,
                copy: (base + c as u32) % BT_RAW_COPIES as u32,
                parts: ns as u32,
                offset: 0,
                len: kr as u32,
            }
        };
        let load = |ops: &mut Vec<(TileOp, u32)>, c: usize| {
            let (kc, sb) = chunks[c];
            let dst = raw(c);
            let src = HbmBox {
                tensor: 1,
                start: bb * b_batch_elems + (ni * tn + sb * tk) * p.k + kc * tk,
                rows: dst.parts,
                row_stride: p.k,
                cols: dst.len,
            };
            ops.push((TileOp::Load { dst, src, queue: s.b_queue }, 0));
        };
        let ahead = BT_RAW_COPIES as usize - 1;
        for c in 0..chunks.len().min(ahead) {
            load(ops, c);
        }
        for c in 0..chunks.len() {
            if c + ahead < chunks.len() {
                load(ops, c + ahead);
            }
            let (kc, sb) = chunks[c];
            let kr = tk.min(p.k - kc * tk);
            let ns = tk.min(nw - sb * tk);
            let tcopy = tp_count % BT_PSUM_BANKS;
            let dst = BufSlice { buf: tp_buf, copy: tcopy, parts: kr as u32, offset: (sb * tk) as u32, len: ns as u32 };
            ops.push((TileOp::Transpose { dst, src: raw(c) }, 0));
            if c + 1 == chunks.len() || chunks[c + 1].0 != kc {
                let src = BufSlice { buf: tp_buf, copy: tcopy, parts: kr as u32, offset: 0, len: nw as u32 };
                let dst =
                    BufSlice { buf: b_buf, copy: b_copy, parts: kr as u32, offset: (kc * tn) as u32, len: nw as u32 };
                ops.push((TileOp::Copy { dst, src }, 0));
                tp_count += 1;
            }
        }
    };
    // Software pipelining: the loads of item j + 1 go before item j's compute,
    // except loads into a copy item j still reads, which go after its matmuls (the
    // tile program's order is its meaning).
    // Each panel's preparation (stored-transposed B only), built in panel order.
    let panel_of: Vec<usize> = plan
        .iter()
        .scan(0usize, |n, pl| {
            if pl.0 {
                *n += 1;
            }
            Some(*n - 1)
        })
        .collect();
    let mut preps: Vec<std::collections::VecDeque<(TileOp, u32)>> = Vec::new();
    for (j, pl) in plan.iter().enumerate() {
        if pl.0 {
            let mut v = Vec::new();
            prep(&mut v, j);
            preps.push(v.into());
        }
    }
    if !items.is_empty() {
        emit_loads(&mut ops, 0);
        ops.extend(preps[0].drain(..));
    }
    for (j, &(ci, ni, mi)) in items.iter().enumerate() {
        let (_, b_copy, a_copy, _) = plan[j];
        let mut deferred = Vec::new();
        let mut after_store = Vec::new();
        let stage = j as u32 % s.out_buffers;
        if j + 1 < items.len() {
            let mut next = Vec::new();
            emit_loads(&mut next, j + 1);
            for (op, d) in next {
                let busy = matches!(&op, TileOp::Load { dst, .. }
                    if (dst.buf == a_buf && dst.copy == a_copy) || (dst.buf == b_buf && dst.copy == b_copy));
                let residual_busy =
                    matches!(&op, TileOp::Load { dst, .. } if epi_bufs.contains(&dst.buf) && dst.copy == stage);
                if residual_busy {
                    after_store.push((op, d));
                } else if busy {
                    deferred.push((op, d));
                } else {
                    ops.push((op, d));
                }
            }
        }
        let nw = tn.min(p.n - ni * tn);
        let mr = tm.min(p.m - mi * tm);
        let bank = j as u32 % s.psum_banks;
        let psum = BufSlice { buf: psum_buf, copy: bank, parts: mr as u32, offset: 0, len: nw as u32 };
        for kc in 0..kt {
            let kr = tk.min(p.k - kc * tk);
            let stationary = if p.transpose_a {
                BufSlice { buf: a_buf, copy: a_copy, parts: kr as u32, offset: (kc * tm) as u32, len: mr as u32 }
            } else {
                BufSlice { buf: a_buf, copy: a_copy, parts: mr as u32, offset: (kc * tk) as u32, len: kr as u32 }
            };
            let moving =
                BufSlice { buf: b_buf, copy: b_copy, parts: kr as u32, offset: (kc * tn) as u32, len: nw as u32 };
            let transposed = !p.transpose_a;
            ops.push((TileOp::Matmul { dst: psum, stationary, moving, accumulate: kc > 0, transposed }, 0));
        }
        ops.append(&mut deferred);
        // Spread the next panel's preparation over this panel's items (it writes
        // the other B copy); with one B copy it waits for this panel's last item.
        let pi = panel_of[j];
        if let Some(next) = preps.get_mut(pi + 1) {
            let left = panel_of[j..].iter().take_while(|&&q| q == pi).count();
            let share = if s.b_buffers > 1 {
                next.len().div_ceil(left)
            } else if left == 1 {
                next.len()
            } else {
                0
            };
            ops.extend(next.drain(..share.min(next.len())));
        }
        let staged = BufSlice { buf: c_buf, copy: stage, parts: mr as u32, offset: 0, len: nw as u32 };
        ops.push((TileOp::Copy { dst: staged, src: psum }, 0));
        for (si, (step, _)) in p.epilogue.iter().enumerate() {
            let debug = 1 + si as u32;
            let op = step.tile_op(staged, (mi * tm, ni * tn), |e| {
                let (copy, offset, len) = match p.epilogue_inputs[e].broadcast {
                    Broadcast::Row => (0, (ni * tn) as u32, nw as u32),
                    Broadcast::Full | Broadcast::Matrix => (stage, 0, nw as u32),
                    Broadcast::Column => (stage, 0, 1),
                };
                let slice = BufSlice { buf: epi_bufs[e], copy, parts: mr as u32, offset, len };
                (slice, p.epilogue_inputs[e].broadcast == Broadcast::Column)
            });
            ops.push((op, debug));
        }
        let last_step = p.epilogue.len() as u32;
        let out = match cast_buf {
            Some(cb) => {
                let cast = BufSlice { buf: cb, copy: stage, parts: mr as u32, offset: 0, len: nw as u32 };
                ops.push((TileOp::Copy { dst: cast, src: staged }, last_step + 1));
                cast
            }
            None => staged,
        };
        let dst = HbmBox {
            tensor: c_tensor,
            start: ci as u64 * p.m * p.n + mi * tm * p.n + ni * tn,
            rows: mr as u32,
            row_stride: p.n,
            cols: nw as u32,
        };
        ops.push((TileOp::Store { dst, src: out }, last_step + p.cast.is_some() as u32));
        ops.append(&mut after_store);
    }
    let mut debug_ops = vec![p.text.clone()];
    debug_ops.extend(p.epilogue.iter().map(|(_, text)| text.clone()));
    debug_ops.extend(p.cast.as_ref().map(|c| c.1.clone()));
    TileProgram { tensors, buffers, ops, debug_ops }
}
