//! Row kernels: softmax, rmsnorm and layernorm over the last axis, and sum/max
//! reductions over trailing axes; each row is reduced within one partition.
//!
//! The input is viewed as `rows x len` (`len` the reduced extent); each work item
//! is a block of up to one partition per row, the whole row in each partition.
//! The steps are the reference evaluator's, operation for operation (the same
//! f32 roundings in the same order), so the results are bit-exact:
//!
//! - softmax: `m = max(x)` (VE), `e = exp(x + -m)` with the row sum `s` fused
//!   (ACT), `y = e / s` (VE).
//! - rmsnorm: `ss = sum(x * x)` (ACT square with the row sum), `r = rsqrt(ss / n +
//!   eps)` (VE, ACT), `y = x * r * gamma` (`x * r` on the VE or the ACT, alternating
//!   by block to balance the engines; the product rounds alike on both).
//! - layernorm: `mean = sum(x) / n` (VE), `d = x + -mean` (ACT), `var = sum(d * d) /
//!   n` (ACT, VE), `y = d * rsqrt(var + eps) * gamma + beta` (ACT, VE).
//! - reduce: one VE fold per row.
//!
//! Copies of every per-block tile let the next block's load run while this one
//! computes and the previous one stores. gamma and beta are loaded once, each row
//! into every partition.

use jpu_isa::operand::{ActFunc, AluOp, ReduceOp, Space};
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::{BufSlice, Buffer, BufferId, HbmBox, HbmTensor, TileOp, TileProgram, TileScalar};

/// What a row kernel computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowKind {
    /// Softmax over the row.
    Softmax,
    /// `x / sqrt(mean(x^2) + eps) * gamma`.
    RmsNorm {
        /// Added to the mean square (rounded to f32).
        eps: f32,
    },
    /// `(x - mean) / sqrt(var + eps) * gamma + beta`.
    LayerNorm {
        /// Added to the variance (rounded to f32).
        eps: f32,
    },
    /// A fold of the row to one value.
    Reduce(ReduceOp),
}

impl RowKind {
    /// Name for listings.
    pub fn name(&self) -> &'static str {
        match self {
            RowKind::Softmax => "softmax",
            RowKind::RmsNorm { .. } => "rmsnorm",
            RowKind::LayerNorm { .. } => "layernorm",
            RowKind::Reduce(ReduceOp::Sum) => "reduce_sum",
            RowKind::Reduce(ReduceOp::Max) => "reduce_max",
        }
    }

    /// Per-row tensor parameters (gamma, beta).
    pub fn params(&self) -> usize {
        match self {
            RowKind::RmsNorm { .. } => 1,
            RowKind::LayerNorm { .. } => 2,
            _ => 0,
        }
    }

    /// Transcendental evaluations per row of `len` elements.
    pub fn transcendentals(&self, len: u64) -> u64 {
        match self {
            RowKind::Softmax => len,
            RowKind::RmsNorm { .. } | RowKind::LayerNorm { .. } => 1,
            RowKind::Reduce(_) => 0,
        }
    }
}

/// A row kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct RowProblem {
    /// What it computes.
    pub kind: RowKind,
    /// The input tensor.
    pub input: String,
    /// Its shape.
    pub input_shape: Vec<u64>,
    /// Its element type.
    pub dtype: DType,
    /// Rows of the 2-D view.
    pub rows: u64,
    /// Elements per row (the reduced extent).
    pub len: u64,
    /// gamma (and beta): name and dtype, each `len` elements.
    pub params: Vec<(String, DType)>,
    /// The result's name.
    pub output: String,
    /// Its shape.
    pub output_shape: Vec<u64>,
    /// The dtype stored (the op's, or a fused cast's when the op's is f32).
    pub out_dtype: DType,
    /// The IR statement, and a fused cast's.
    pub text: Vec<String>,
    /// Indices of the IR nodes the kernel computes.
    pub nodes: Vec<usize>,
}

/// Tiles of one block: (name, dtype, elements per partition).
fn block_tiles(p: &RowProblem) -> Vec<(&'static str, DType, u64)> {
    let n = p.len;
    let mut tiles = vec![("x_tile", p.dtype, n)];
    match p.kind {
        RowKind::Reduce(_) => tiles.push(("y_tile", p.out_dtype, 1)),
        _ => {
            tiles.push(("f32_tile", DType::F32, n));
            tiles.push(("y_tile", p.out_dtype, n));
        }
    }
    // Per-row statistics: one f32 column each.
    tiles.push(("row_stat", DType::F32, 1));
    tiles.push(("row_sum", DType::F32, 1));
    tiles
}

impl RowProblem {
    /// Copies of each per-block tile that fit SRAM (3, 2 or 1), or `None` when
    /// even one block does not fit.
    pub fn copies(&self, t: &Target) -> Option<u32> {
        let pad = |bytes: u64| bytes.div_ceil(64) * 64;
        let block: u64 = block_tiles(self).iter().map(|(_, d, n)| pad(n * d.size_bytes() as u64)).sum();
        let fixed: u64 = self.params.iter().map(|(_, d)| pad(self.len * d.size_bytes() as u64)).sum();
        let cap = t.sram.partition_bytes as u64;
        [4u32, 3, 2, 1].into_iter().find(|&c| fixed + c as u64 * block <= cap)
    }
}

/// Lowers a row kernel; `copies` from [`RowProblem::copies`].
pub fn lower(p: &RowProblem, t: &Target, copies: u32) -> TileProgram {
    let (rows, n) = (p.rows, p.len);
    let parts = (t.sram.partitions as u64).min(rows).max(1);
    let mut tensors =
        vec![HbmTensor { name: p.input.clone(), dtype: p.dtype, shape: p.input_shape.clone(), role: Role::Input }];
    tensors.extend(p.params.iter().map(|(name, dtype)| HbmTensor {
        name: name.clone(),
        dtype: *dtype,
        shape: vec![n],
        role: Role::Input,
    }));
    let out_tensor = tensors.len();
    tensors.push(HbmTensor {
        name: p.output.clone(),
        dtype: p.out_dtype,
        shape: p.output_shape.clone(),
        role: Role::Output,
    });
    let tiles = block_tiles(p);
    let (stat_buf, sum_buf) = (tiles.len() - 2, tiles.len() - 1);
    let mut buffers: Vec<Buffer> = tiles
        .into_iter()
        .map(|(name, dtype, free)| Buffer {
            name: name.into(),
            space: Space::Sram,
            dtype,
            parts: parts as u32,
            free: free as u32,
            copies,
        })
        .collect();
    let param_bufs: Vec<BufferId> = p
        .params
        .iter()
        .map(|(name, dtype)| {
            buffers.push(Buffer {
                name: format!("row_{name}"),
                space: Space::Sram,
                dtype: *dtype,
                parts: parts as u32,
                free: n as u32,
                copies: 1,
            });
            buffers.len() - 1
        })
        .collect();
    let (x_buf, f32_buf, y_buf) = match p.kind {
        RowKind::Reduce(_) => (0, usize::MAX, 1),
        _ => (0, 1, 2),
    };
    let mut ops: Vec<(TileOp, u32)> = Vec::new();
    for (k, &b) in param_bufs.iter().enumerate() {
        let src = HbmBox { tensor: 1 + k, start: 0, rows: parts as u32, row_stride: 0, cols: n as u32 };
        let dst = BufSlice { buf: b, copy: 0, parts: parts as u32, offset: 0, len: n as u32 };
        ops.push((TileOp::Load { dst, src, queue: None }, 0));
    }
    let blocks = rows.div_ceil(parts);
    let load = |ops: &mut Vec<(TileOp, u32)>, j: u64| {
        let pr = parts.min(rows - j * parts) as u32;
        let dst = BufSlice { buf: x_buf, copy: (j % copies as u64) as u32, parts: pr, offset: 0, len: n as u32 };
        let src = HbmBox { tensor: 0, start: j * parts * n, rows: pr, row_stride: n, cols: n as u32 };
        ops.push((TileOp::Load { dst, src, queue: None }, 0));
    };
    // Loads run `copies - 1` blocks ahead of compute.
    let ahead = (copies as u64 - 1).max(1);
    for j in 0..ahead.min(blocks) {
        load(&mut ops, j);
    }
    let last_debug = p.text.len() as u32 - 1;
    // Three stages of block j (the first statistics, the rest of them, the final
    // passes and the store). Iteration j issues stage 1 of block j + 2, stage 2 of
    // block j + 1 and stage 3 of block j, so each engine's in-order stream has
    // work from three blocks and the VE/ACT hand-offs within a block's
    // statistics never stall it (with two copies: stages 1 and 2 of block j + 1).
    let stages = |j: u64| -> [Vec<TileOp>; 3] {
        let pr = parts.min(rows - j * parts) as u32;
        let copy = (j % copies as u64) as u32;
        let row = |buf| BufSlice { buf, copy, parts: pr, offset: 0, len: n as u32 };
        let col = |buf| BufSlice { buf, copy, parts: pr, offset: 0, len: 1 };
        let param = |k: usize| BufSlice { buf: param_bufs[k], copy: 0, parts: pr, offset: 0, len: n as u32 };
        let (x, stat, sum) = (row(x_buf), col(stat_buf), col(sum_buf));
        let imm = |stat: BufSlice, op, v: f32| TileOp::Scalar {
            op,
            dst: stat,
            src: stat,
            scalar: TileScalar::Imm(v),
            reverse: false,
        };
        let per_row = |op, dst, src, c| TileOp::Scalar { op, dst, src, scalar: TileScalar::Column(c), reverse: false };
        // `dst = src * column`: the VE and the ACT (identity with a column scale)
        // round it alike, so blocks alternate engines to balance their load.
        let scale_rows = |j: u64, dst, src, c| {
            if j.is_multiple_of(2) {
                per_row(AluOp::Mul, dst, src, c)
            } else {
                TileOp::Activate {
                    func: ActFunc::Identity,
                    dst,
                    src,
                    scale: TileScalar::Column(c),
                    bias: TileScalar::Imm(-0.0),
                    accum: None,
                }
            }
        };
        let y = match p.kind {
            RowKind::Reduce(_) => col(y_buf),
            _ => row(y_buf),
        };
        // The ops, and where the first and second statistics stages end.
        let (mut body, s1, s2): (Vec<TileOp>, usize, usize) = match p.kind {
            RowKind::Softmax => {
                let e = row(f32_buf);
                let ops = vec![
                    TileOp::Reduce { op: ReduceOp::Max, dst: stat, src: x },
                    imm(stat, AluOp::Mul, -1.0),
                    TileOp::Activate {
                        func: ActFunc::Exp,
                        dst: e,
                        src: x,
                        scale: TileScalar::Imm(1.0),
                        bias: TileScalar::Column(stat),
                        accum: Some(sum),
                    },
                    per_row(AluOp::Div, y, e, sum),
                ];
                (ops, 2, 3)
            }
            RowKind::RmsNorm { eps } => {
                let u = row(f32_buf);
                let ops = vec![
                    TileOp::Activate {
                        func: ActFunc::Square,
                        dst: u,
                        src: x,
                        scale: TileScalar::Imm(1.0),
                        bias: TileScalar::Imm(-0.0),
                        accum: Some(sum),
                    },
                    imm(sum, AluOp::Div, n as f32),
                    imm(sum, AluOp::Add, eps),
                    TileOp::activate(ActFunc::Rsqrt, sum, sum),
                    scale_rows(j, u, x, sum),
                    TileOp::Binary { op: AluOp::Mul, dst: y, a: u, b: param(0) },
                ];
                (ops, 1, 4)
            }
            RowKind::LayerNorm { eps } => {
                let d = row(f32_buf);
                let ops = vec![
                    TileOp::Reduce { op: ReduceOp::Sum, dst: stat, src: x },
                    imm(stat, AluOp::Div, n as f32),
                    imm(stat, AluOp::Mul, -1.0),
                    TileOp::Activate {
                        func: ActFunc::Identity,
                        dst: d,
                        src: x,
                        scale: TileScalar::Imm(1.0),
                        bias: TileScalar::Column(stat),
                        accum: None,
                    },
                    // The squares land in y, which the last step overwrites.
                    TileOp::Activate {
                        func: ActFunc::Square,
                        dst: y,
                        src: d,
                        scale: TileScalar::Imm(1.0),
                        bias: TileScalar::Imm(-0.0),
                        accum: Some(sum),
                    },
                    imm(sum, AluOp::Div, n as f32),
                    imm(sum, AluOp::Add, eps),
                    TileOp::activate(ActFunc::Rsqrt, sum, sum),
                    scale_rows(1, d, d, sum),
                    TileOp::Binary { op: AluOp::Mul, dst: d, a: d, b: param(0) },
                    TileOp::Binary { op: AluOp::Add, dst: y, a: d, b: param(1) },
                ];
                (ops, 5, 8)
            }
            RowKind::Reduce(op) => (vec![TileOp::Reduce { op, dst: y, src: x }], 1, 1),
        };
        let dst = match p.kind {
            RowKind::Reduce(_) => HbmBox { tensor: out_tensor, start: j * parts, rows: pr, row_stride: 1, cols: 1 },
            _ => HbmBox { tensor: out_tensor, start: j * parts * n, rows: pr, row_stride: n, cols: n as u32 },
        };
        body.push(TileOp::Store { dst, src: y });
        let finish = body.split_off(s2);
        let second = body.split_off(s1);
        [body, second, finish]
    };
    let debug = |op: TileOp| {
        let d = if matches!(op, TileOp::Store { .. }) { last_debug } else { 0 };
        (op, d)
    };
    let lag = if copies >= 3 { 2 } else { 1 };
    // Stage `k` of block `j` runs `lag - k` iterations early (stage 2 with stage 1
    // when the lag is 1).
    let emit = |ops: &mut Vec<(TileOp, u32)>, j: u64, stage: usize| {
        if j < blocks {
            let [a, b, c] = stages(j);
            let chosen = match (lag, stage) {
                (1, 0) => [a, b].concat(),
                (1, 1) => Vec::new(),
                (_, 0) => a,
                (_, 1) => b,
                _ => c,
            };
            ops.extend(chosen.into_iter().map(debug));
        }
    };
    for j in 0..lag {
        emit(&mut ops, j, 0);
        if j + 1 < lag {
            emit(&mut ops, j, 1);
        }
    }
    for j in 0..blocks {
        if j + ahead < blocks {
            load(&mut ops, j + ahead);
        }
        emit(&mut ops, j + lag, 0);
        emit(&mut ops, j + lag - 1, 1);
        emit(&mut ops, j, 2);
    }
    TileProgram { tensors, buffers, ops, debug_ops: p.text.clone() }
}
