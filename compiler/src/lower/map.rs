//! Elementwise kernels: a chain of elementwise steps over one HBM tensor, for
//! elementwise ops no matmul epilogue absorbs, and reshapes (a copy with no steps,
//! or the first link of a chain: row-major elements are the same in both shapes),
//! and `const` splats (each block set by the VE instead of loaded, then the chain).
//!
//! The tensor is viewed as `rows x cols` (its last dim is `cols`); each work item
//! is a block of up to one partition per row and [`MAX_COLS`] columns (fewer when
//! the tiles would not fit SRAM): load the
//! block and each tensor operand's matching block (bias rows by a zero-stride
//! DMA), run the steps in place on the VE and ACT engines with the IR's rounding
//! after each, cast, store. Three copies of every tile let the next block's loads
//! run while this one computes.

use jpu_isa::operand::Space;
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::gemm::{Broadcast, EpilogueInput, EpilogueStep};
use super::{BufSlice, Buffer, BufferId, HbmBox, HbmTensor, TileOp, TileProgram};

/// Widest block, in elements per partition.
pub const MAX_COLS: u64 = 512;
/// Copies of every tile.
const COPIES: u32 = 3;

/// An elementwise kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct MapProblem {
    /// The tensor the first step reads.
    pub input: String,
    /// Its declared shape (a reshape's input differs from the result's shape; the
    /// elements, row-major, are the same).
    pub input_shape: Vec<u64>,
    /// The result's shape.
    pub shape: Vec<u64>,
    /// Its element type (each step's result type).
    pub dtype: DType,
    /// The steps, with the IR statement of each.
    pub steps: Vec<(EpilogueStep, String)>,
    /// Tensor operands of the steps.
    pub inputs: Vec<EpilogueInput>,
    /// A final cast and its statement.
    pub cast: Option<(DType, String)>,
    /// The result's name.
    pub output: String,
    /// Indices of the IR nodes the kernel computes.
    pub nodes: Vec<usize>,
    /// A `const` splat the chain starts from (each block is set to it on the VE)
    /// instead of loading `input`.
    pub splat: Option<f64>,
}

impl MapProblem {
    /// Rows and columns of the 2-D view.
    pub fn view(&self) -> (u64, u64) {
        let cols = self.shape.last().copied().unwrap_or(1);
        (self.shape.iter().product::<u64>() / cols.max(1), cols)
    }

    /// Columns per block: up to [`MAX_COLS`], fewer when every tile's copies would
    /// not fit one SRAM partition.
    pub fn width(&self, t: &Target) -> u64 {
        let per_col = self.dtype.size_bytes() as u64
            + self.inputs.iter().map(|e| e.dtype.size_bytes() as u64).sum::<u64>()
            + self.cast.as_ref().map_or(0, |c| c.0.size_bytes() as u64);
        // Each copy is padded to 64 bytes by the allocator.
        let tiles = 1 + self.inputs.len() as u64 + self.cast.is_some() as u64;
        let cap = (t.sram.partition_bytes as u64).saturating_sub(64 * COPIES as u64 * tiles);
        let fit = cap / (COPIES as u64 * per_col);
        MAX_COLS.min(fit).min(self.view().1).max(1)
    }

    /// The dtype stored to HBM.
    pub fn output_dtype(&self) -> DType {
        self.cast.as_ref().map_or(self.dtype, |c| c.0)
    }
}

/// Lowers an elementwise kernel to a tile program.
pub fn lower(p: &MapProblem, t: &Target) -> TileProgram {
    let (rows, cols) = p.view();
    let parts = (t.sram.partitions as u64).min(rows).max(1);
    let width = p.width(t);
    let mut tensors = Vec::new();
    if p.splat.is_none() {
        tensors.push(HbmTensor {
            name: p.input.clone(),
            dtype: p.dtype,
            shape: p.input_shape.clone(),
            role: Role::Input,
        });
    }
    // Tensor index of epilogue input e.
    let first_input = tensors.len();
    tensors.extend(p.inputs.iter().map(EpilogueInput::hbm_tensor));
    let out_tensor = tensors.len();
    tensors.push(HbmTensor {
        name: p.output.clone(),
        dtype: p.output_dtype(),
        shape: p.shape.clone(),
        role: Role::Output,
    });
    let tile = |name: String, dtype| Buffer {
        name,
        space: Space::Sram,
        dtype,
        parts: parts as u32,
        free: width as u32,
        copies: COPIES,
    };
    let mut buffers = vec![tile("x_tile".into(), p.dtype)];
    let operand_bufs: Vec<BufferId> = p
        .inputs
        .iter()
        .map(|e| {
            let mut b = tile(format!("{}_{}", e.broadcast.prefix(), e.name), e.dtype);
            if e.broadcast == Broadcast::Column {
                b.free = 1;
            }
            buffers.push(b);
            buffers.len() - 1
        })
        .collect();
    let cast_buf = p.cast.as_ref().map(|(d, _)| {
        buffers.push(tile("x_cast".into(), *d));
        buffers.len() - 1
    });
    // Row blocks stay within one matrix (the last two dims) when a mask step or a
    // matrix operand needs each element's row within its matrix.
    let masked = p.steps.iter().any(|(s, _)| matches!(s, EpilogueStep::Mask { .. }))
        || p.inputs.iter().any(|e| e.broadcast == Broadcast::Matrix);
    let matrix_rows = if masked && p.shape.len() >= 2 { p.shape[p.shape.len() - 2].max(1) } else { rows.max(1) };
    // (first row, its row within the matrix, rows in the block, column block)
    let items: Vec<(u64, u64, u64, u64)> = (0..rows.div_ceil(matrix_rows))
        .flat_map(|m| {
            let first = m * matrix_rows;
            let in_matrix = matrix_rows.min(rows - first);
            (0..in_matrix.div_ceil(parts))
                .map(move |r| (first + r * parts, r * parts, parts.min(in_matrix - r * parts)))
        })
        .flat_map(|(row0, in_row, pr)| (0..cols.div_ceil(width)).map(move |c| (row0, in_row, pr, c)))
        .collect();
    // (first element, first column, rows, columns, copy, row within the matrix)
    let block = |j: usize| {
        let (row0, in_row, pr, c) = items[j];
        let w = width.min(cols - c * width);
        (row0 * cols + c * width, c * width, pr as u32, w as u32, j as u32 % COPIES, in_row)
    };
    let loads = |ops: &mut Vec<(TileOp, u32)>, j: usize| {
        let (start, col, pr, w, copy, in_row) = block(j);
        let slice = |buf| BufSlice { buf, copy, parts: pr, offset: 0, len: w };
        let first = match p.splat {
            Some(value) => TileOp::Memset { dst: slice(0), value: value as f32 },
            None => TileOp::Load {
                dst: slice(0),
                src: HbmBox { tensor: 0, start, rows: pr, row_stride: cols, cols: w },
                queue: None,
            },
        };
        ops.push((first, 0));
        for (e, input) in p.inputs.iter().enumerate() {
            let (src, dst) = match input.broadcast {
                Broadcast::Row => (
                    HbmBox { tensor: first_input + e, start: col, rows: pr, row_stride: 0, cols: w },
                    slice(operand_bufs[e]),
                ),
                Broadcast::Full => (
                    HbmBox { tensor: first_input + e, start, rows: pr, row_stride: cols, cols: w },
                    slice(operand_bufs[e]),
                ),
                Broadcast::Matrix => {
                    let start = in_row * cols + col;
                    (
                        HbmBox { tensor: first_input + e, start, rows: pr, row_stride: cols, cols: w },
                        slice(operand_bufs[e]),
                    )
                }
                Broadcast::Column => (
                    HbmBox { tensor: first_input + e, start: start / cols.max(1), rows: pr, row_stride: 1, cols: 1 },
                    BufSlice { len: 1, ..slice(operand_bufs[e]) },
                ),
            };
            ops.push((TileOp::Load { dst, src, queue: None }, 0));
        }
    };
    let mut ops = Vec::new();
    if !items.is_empty() {
        loads(&mut ops, 0);
    }
    for j in 0..items.len() {
        if j + 1 < items.len() {
            loads(&mut ops, j + 1);
        }
        let (start, col, pr, w, copy, in_row) = block(j);
        let x = BufSlice { buf: 0, copy, parts: pr, offset: 0, len: w };
        for (si, (step, _)) in p.steps.iter().enumerate() {
            let op = step.tile_op(x, (in_row, col), |e| {
                let column = p.inputs[e].broadcast == Broadcast::Column;
                (BufSlice { buf: operand_bufs[e], copy, parts: pr, offset: 0, len: if column { 1 } else { w } }, column)
            });
            ops.push((op, si as u32));
        }
        let last = p.steps.len().max(1) as u32 - 1;
        let out = match cast_buf {
            Some(cb) => {
                let cast = BufSlice { buf: cb, copy, parts: pr, offset: 0, len: w };
                ops.push((TileOp::Copy { dst: cast, src: x }, p.steps.len() as u32));
                cast
            }
            None => x,
        };
        let debug = if p.cast.is_some() { p.steps.len() as u32 } else { last };
        let dst = HbmBox { tensor: out_tensor, start, rows: pr, row_stride: cols, cols: w };
        ops.push((TileOp::Store { dst, src: out }, debug));
    }
    let mut debug_ops: Vec<String> = p.steps.iter().map(|(_, text)| text.clone()).collect();
    debug_ops.extend(p.cast.as_ref().map(|c| c.1.clone()));
    if debug_ops.is_empty() {
        debug_ops.push(match p.splat {
            Some(v) => format!("%{} = const() {{value = {v}}}", p.output),
            None => format!("%{} = reshape(%{})", p.output, p.input),
        });
    }
    TileProgram { tensors, buffers, ops, debug_ops }
}
