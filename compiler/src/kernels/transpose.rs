//! Transpose kernels: swap the last two dims of an HBM tensor on the PE.
//!
//! Per batch index, each block of up to `min(pe.rows, pe.cols)` square is loaded
//! (rows on partitions), transposed exactly by the PE into PSUM (f32 or i32),
//! copied by the VE into the tensor's dtype (exact: every value came from it) and
//! stored to the mirrored block. Three SRAM copies and two PSUM banks let loads,
//! transposes and stores of neighbouring blocks overlap.

use jpu_isa::operand::Space;
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::{unsupported, Ctx, Kernel, Work};
use crate::error::CompileError;
use crate::ir::{swaps_last_two, Op, Span};
use crate::tiles::{BufSlice, Buffer, HbmBox, HbmTensor, TileOp, TileProgram};

/// A transpose kernel: `output[.., j, i] = input[.., i, j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransposeProblem {
    /// Input name.
    pub input: String,
    /// Input shape (rank >= 2).
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// Output name.
    pub output: String,
    /// The IR statement.
    pub text: String,
    /// Index of its IR node.
    pub node: usize,
    /// Its source span.
    pub span: Span,
}

/// The transpose kernel of node `i` (a swap of the last two dims).
pub fn select(cx: &Ctx<'_>, i: usize) -> Result<TransposeProblem, CompileError> {
    let node = &cx.f.nodes[i];
    let Op::Transpose { perm } = &node.op else { return Err(unsupported(node, "is not a transpose")) };
    if !swaps_last_two(perm) {
        return Err(unsupported(node, "permutes more than the last two dims, which is not supported yet"));
    }
    let [x] = cx.hbm_values(node)?[..] else { return Err(unsupported(node, "is malformed")) };
    let xn = cx.f.node(x);
    Ok(TransposeProblem {
        input: cx.tensor(x),
        shape: xn.ty.shape.clone(),
        dtype: xn.ty.dtype.storage(),
        output: cx.tensor(crate::ir::ValueId(i as u32)),
        text: format!("%{} = transpose(%{})", node.name, xn.name),
        node: i,
        span: node.span.clone(),
    })
}

impl Kernel for TransposeProblem {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn kind(&self) -> &'static str {
        "transpose"
    }

    fn output(&self) -> &str {
        &self.output
    }

    fn nodes(&self) -> &[usize] {
        std::slice::from_ref(&self.node)
    }

    fn span(&self) -> Span {
        self.span.clone()
    }

    fn statement(&self) -> String {
        self.text.clone()
    }

    fn describe(&self, _: &Target) -> String {
        format!("{} {:?} {}\n", self.text, self.shape, self.dtype)
    }

    fn tile_ops(&self, t: &Target) -> u64 {
        let r = self.shape.len();
        let (rows, cols) = (self.shape[r - 2], self.shape[r - 1]);
        let batch = self.shape[..r - 2].iter().product::<u64>();
        let b = t.pe.rows.min(t.pe.cols) as u64;
        // Per square block: load, PE transpose, copy out of PSUM, store.
        (batch * rows.div_ceil(b) * cols.div_ceil(b)).saturating_mul(4)
    }

    fn work(&self) -> Work {
        Work::default()
    }

    fn lower(&self, t: &Target) -> TileProgram {
        lower(self, t)
    }

    fn partition(&self, t: &Target, cores: u32) -> String {
        super::split_text(super::split(block_count(self, t), cores).len(), "square blocks")
    }

    fn lower_cores(&self, t: &Target, cores: u32) -> TileProgram {
        super::spread(block_count(self, t), cores, |r| lower_blocks(self, t, r))
    }
}

impl TransposeProblem {
    /// A transpose the compiler adds into HBM scratch `output` for the kernel of
    /// statement `for_text` (IR node `node` at `span`), which then reads the
    /// transposed form.
    pub fn scratch(
        input: &str,
        shape: &[u64],
        dtype: DType,
        output: &str,
        (for_text, node, span): (&str, usize, &Span),
    ) -> Self {
        TransposeProblem {
            input: input.into(),
            shape: shape.to_vec(),
            dtype,
            output: output.into(),
            text: format!("%{output} = transpose(%{input}) (for `{for_text}`)"),
            node,
            span: span.clone(),
        }
    }
}

/// Lowers a transpose kernel to a tile program.
pub fn lower(p: &TransposeProblem, t: &Target) -> TileProgram {
    lower_blocks(p, t, 0..u64::MAX)
}

/// Blocks of one PE width square.
fn block_count(p: &TransposeProblem, t: &Target) -> u64 {
    let r = p.shape.len();
    let tb = t.pe.rows.min(t.pe.cols) as u64;
    let batches: u64 = p.shape[..r - 2].iter().product();
    batches * p.shape[r - 2].div_ceil(tb) * p.shape[r - 1].div_ceil(tb)
}

/// The tile program of blocks `range` (a core's share).
fn lower_blocks(p: &TransposeProblem, t: &Target, range: std::ops::Range<u64>) -> TileProgram {
    let r = p.shape.len();
    let (rows, cols) = (p.shape[r - 2], p.shape[r - 1]);
    let batches: u64 = p.shape[..r - 2].iter().product();
    let mut out_shape = p.shape.clone();
    out_shape.swap(r - 2, r - 1);
    let tb = t.pe.rows.min(t.pe.cols) as u64;
    let tensors = vec![
        HbmTensor { name: p.input.clone(), dtype: p.dtype, shape: p.shape.clone(), role: Role::Input },
        HbmTensor { name: p.output.clone(), dtype: p.dtype, shape: out_shape, role: Role::Output },
    ];
    let side = tb.min(rows.max(cols)) as u32;
    let block = |name: &str, space, dtype, copies| Buffer::new(name, space, dtype, side, side, copies);
    let buffers = vec![
        block("t_in", Space::Sram, p.dtype, 3),
        block("t_psum", Space::Psum, p.dtype.accumulator(), 2),
        block("t_out", Space::Sram, p.dtype, 3),
    ];
    let items: Vec<(u64, u64, u64)> = (0..batches)
        .flat_map(|b| (0..rows.div_ceil(tb)).flat_map(move |i| (0..cols.div_ceil(tb)).map(move |j| (b, i, j))))
        .skip(range.start as usize)
        .take(range.end.saturating_sub(range.start) as usize)
        .collect();
    let load = |ops: &mut Vec<(TileOp, u32)>, k: usize| {
        let (b, i, j) = items[k];
        let (pr, pc) = (tb.min(rows - i * tb), tb.min(cols - j * tb));
        let src = HbmBox {
            tensor: 0,
            start: b * rows * cols + i * tb * cols + j * tb,
            rows: pr as u32,
            row_stride: cols,
            cols: pc as u32,
        };
        let dst = BufSlice { buf: 0, copy: k as u32 % 3, parts: pr as u32, offset: 0, len: pc as u32 };
        ops.push((TileOp::Load { dst, src, queue: None }, 0));
    };
    let mut ops = Vec::new();
    if !items.is_empty() {
        load(&mut ops, 0);
    }
    for (k, &(b, i, j)) in items.iter().enumerate() {
        if k + 1 < items.len() {
            load(&mut ops, k + 1);
        }
        let (pr, pc) = (tb.min(rows - i * tb) as u32, tb.min(cols - j * tb) as u32);
        let src = BufSlice { buf: 0, copy: k as u32 % 3, parts: pr, offset: 0, len: pc };
        let psum = BufSlice { buf: 1, copy: k as u32 % 2, parts: pc, offset: 0, len: pr };
        let staged = BufSlice { buf: 2, copy: k as u32 % 3, parts: pc, offset: 0, len: pr };
        ops.push((TileOp::Transpose { dst: psum, src }, 0));
        ops.push((TileOp::Copy { dst: staged, src: psum }, 0));
        let dst =
            HbmBox { tensor: 1, start: b * rows * cols + j * tb * rows + i * tb, rows: pc, row_stride: rows, cols: pr };
        ops.push((TileOp::Store { dst, src: staged }, 0));
    }
    TileProgram { tensors, buffers, ops, debug_ops: vec![p.text.clone()] }
}
