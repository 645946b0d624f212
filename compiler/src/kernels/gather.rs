//! Gather kernels: `gather(table, indices) {axis = 0}` (an embedding lookup) as
//! indirect DMA. The table is viewed as `rows x row` (its first dim by the rest)
//! and the result as `indices x row`. Each block of up to one index per
//! partition loads its i32 indices as a column, then per column chunk one
//! `dma_gather` brings the selected rows into SRAM and one DMA stores them: the
//! table is never read beyond the selected rows, and nothing is computed.
//!
//! A gather along another axis moves that axis first (a copy kernel into
//! scratch), gathers, and moves the indices' dims back into place (a second
//! copy kernel). An index out of range is the simulator's fault at the gather.

use jpu_isa::operand::Space;
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::copy::CopyProblem;
use super::layout::{row_major, TensorView};
use super::{statement, unsupported, Ctx, Kernel, Work};
use crate::error::CompileError;
use crate::ir::{Op, Operand, Span, ValueId};
use crate::tiles::{BufSlice, Buffer, HbmBox, HbmTensor, TileOp, TileProgram};

/// Copies of the row tile (a block's gathers overlap the previous block's store).
const COPIES: u32 = 3;
/// Copies of the index column.
const INDEX_COPIES: u32 = 2;

/// One gather along the table's first dim.
#[derive(Debug, Clone, PartialEq)]
pub struct GatherKernel {
    /// The table tensor, `[rows, ...]`.
    pub table: String,
    /// Its shape.
    pub table_shape: Vec<u64>,
    /// The i32 indices tensor.
    pub indices: String,
    /// Its shape.
    pub indices_shape: Vec<u64>,
    /// Element type of the table and result.
    pub dtype: DType,
    /// The result tensor, `indices.shape + table.shape[1..]`.
    pub output: String,
    /// Elements per row block (the schedule).
    pub width: u64,
    /// The IR node it computes.
    pub node: usize,
    /// The statement.
    pub text: String,
    /// Its source span.
    pub span: Span,
}

impl GatherKernel {
    /// Table rows (valid indices are `0..rows`).
    fn rows(&self) -> u64 {
        self.table_shape.first().copied().unwrap_or(1)
    }

    /// Elements per table row.
    fn row_len(&self) -> u64 {
        self.table_shape[1..].iter().product()
    }

    /// The result's shape: the indices' then a row's.
    fn output_shape(&self) -> Vec<u64> {
        self.indices_shape.iter().chain(&self.table_shape[1..]).copied().collect()
    }

    /// Number of indices.
    fn count(&self) -> u64 {
        self.indices_shape.iter().product()
    }

    /// The widest row chunk whose tile copies fit half a partition.
    fn widest(&self, t: &Target) -> u64 {
        let e = self.dtype.size_bytes() as u64;
        let cap = (t.sram.partition_bytes as u64 / 2) / (COPIES as u64 * e);
        self.row_len().clamp(1, cap.max(1))
    }
}

/// The kernels of gather node `i`, and the node whose value the last leaves in HBM.
pub fn select(cx: &Ctx<'_>, i: usize, t: &Target) -> Result<(Vec<Box<dyn Kernel>>, usize), CompileError> {
    let node = &cx.f.nodes[i];
    let (Op::Gather { axis }, [Operand::Value(tv), Operand::Value(iv)]) = (&node.op, node.operands.as_slice()) else {
        return Err(unsupported(node, "is not a gather of two tensors"));
    };
    let (table, indices) = (cx.f.node(*tv), cx.f.node(*iv));
    let dtype = node.ty.dtype.storage();
    let text = statement(cx.f, i);
    let mut k = GatherKernel {
        table: cx.tensor(*tv),
        table_shape: table.ty.shape.clone(),
        indices: cx.tensor(*iv),
        indices_shape: indices.ty.shape.clone(),
        dtype,
        output: cx.tensor(ValueId(i as u32)),
        width: 1,
        node: i,
        text: text.clone(),
        span: node.span.clone(),
    };
    if k.row_len() > u32::MAX as u64 || k.rows() > u32::MAX as u64 {
        return Err(CompileError::limit(&text, "table rows or row lengths beyond 2^32", node.span.clone()));
    }
    k.width = k.widest(t);
    if *axis == 0 {
        return Ok((vec![Box::new(k)], i));
    }
    // Move `axis` first, gather, and put the indices' dims back at `axis`.
    let r = table.ty.rank();
    let perm: Vec<usize> = std::iter::once(*axis).chain((0..r).filter(|a| a != axis)).collect();
    let strides = row_major(&table.ty.shape);
    let moved = TensorView {
        tensor: k.table.clone(),
        tensor_shape: table.ty.shape.clone(),
        shape: perm.iter().map(|&a| table.ty.shape[a]).collect(),
        offset: 0,
        strides: perm.iter().map(|&a| strides[a]).collect(),
    };
    let before = CopyProblem::scratch(&moved, dtype, &format!("{}__table", node.name), (&text, i, &node.span));
    let (n_idx, pre) = (indices.ty.rank(), *axis);
    let gathered_shape: Vec<u64> =
        indices.ty.shape.iter().chain(&table.ty.shape[..pre]).chain(&table.ty.shape[pre + 1..]).copied().collect();
    let g = row_major(&gathered_shape);
    // Result dims: pre (after the indices in scratch), the indices, post.
    let back: Vec<u64> = (0..pre)
        .map(|d| g[n_idx + d])
        .chain(g[..n_idx].iter().copied())
        .chain(g[n_idx + pre..].iter().copied())
        .collect();
    let gathered = format!("{}__rows", node.name);
    let after = CopyProblem::scratch(
        &TensorView {
            tensor: gathered.clone(),
            tensor_shape: gathered_shape.clone(),
            shape: node.ty.shape.clone(),
            offset: 0,
            strides: back,
        },
        dtype,
        &k.output,
        (&text, i, &node.span),
    );
    (k.table, k.table_shape, k.output) = (before.output().to_string(), moved.shape.clone(), gathered);
    k.width = k.widest(t);
    Ok((vec![Box::new(before), Box::new(k), Box::new(after)], i))
}

impl Kernel for GatherKernel {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn kind(&self) -> &'static str {
        "gather"
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

    fn schedule_fields(&self) -> &'static [&'static str] {
        &["width"]
    }

    fn schedule(&mut self, t: &Target, overrides: &[super::Field]) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
        for f in overrides {
            if f.name != "width" {
                return Err(self.field_error(f, format!("unknown field `{}` (fields: width)", f.name)));
            }
            let w: u64 = f.value.parse().map_err(|_| self.field_error(f, format!("`{}` is not a number", f.value)))?;
            let most = self.widest(t);
            if w == 0 || w > most {
                let why = format!(
                    "width = {w} must be in 1..={most} (the row, or what three copies fit in half a partition)"
                );
                return Err(self.field_error(f, why));
            }
            self.width = w;
        }
        Ok(Vec::new())
    }

    fn describe(&self, _: &Target) -> String {
        format!(
            "{} {:?} rows of {} {} by {} indices\n  row chunks of {} elements\n",
            self.text,
            self.table_shape,
            self.row_len(),
            self.dtype,
            self.count(),
            self.width
        )
    }

    fn tile_ops(&self, t: &Target) -> u64 {
        let blocks = self.count().div_ceil(t.sram.partitions as u64);
        blocks.saturating_mul(1 + 2 * self.row_len().div_ceil(self.width.max(1)))
    }

    fn work(&self) -> Work {
        Work::default()
    }

    fn lower(&self, t: &Target) -> TileProgram {
        lower(self, t)
    }

    fn partition(&self, t: &Target, cores: u32) -> String {
        super::split_text(super::split(block_count(self, t), cores).len(), "blocks of indices")
    }

    fn lower_cores(&self, t: &Target, cores: u32) -> TileProgram {
        super::spread(block_count(self, t), cores, |r| lower_blocks(self, t, r))
    }
}

/// Blocks of up to one index per partition.
fn block_count(k: &GatherKernel, t: &Target) -> u64 {
    let m = k.count();
    m.div_ceil((t.sram.partitions as u64).min(m).max(1))
}

/// Per block of up to one index per partition: load the indices, then per row
/// chunk gather and store.
fn lower(k: &GatherKernel, t: &Target) -> TileProgram {
    lower_blocks(k, t, 0..block_count(k, t))
}

/// The tile program of blocks `range` of indices (a core's share).
fn lower_blocks(k: &GatherKernel, t: &Target, range: std::ops::Range<u64>) -> TileProgram {
    let (m, row, w) = (k.count(), k.row_len(), k.width.max(1));
    let parts = (t.sram.partitions as u64).min(m).max(1);
    let tensors = vec![
        HbmTensor { name: k.table.clone(), dtype: k.dtype, shape: k.table_shape.clone(), role: Role::Input },
        HbmTensor { name: k.indices.clone(), dtype: DType::I32, shape: k.indices_shape.clone(), role: Role::Input },
        HbmTensor { name: k.output.clone(), dtype: k.dtype, shape: k.output_shape(), role: Role::Output },
    ];
    let buffer = |name: &str, dtype, free, copies| Buffer::new(name, Space::Sram, dtype, parts as u32, free, copies);
    let buffers = vec![buffer("ids", DType::I32, 1, INDEX_COPIES), buffer("rows", k.dtype, w as u32, COPIES)];
    let mut ops = Vec::new();
    let mut chunk = 0u32;
    for (b, m0) in
        (0..m).step_by(parts as usize).enumerate().skip(range.start as usize).take((range.end - range.start) as usize)
    {
        let p = parts.min(m - m0) as u32;
        let ids = BufSlice { buf: 0, copy: b as u32 % INDEX_COPIES, parts: p, offset: 0, len: 1 };
        let src = HbmBox { tensor: 1, start: m0, rows: p, row_stride: 1, cols: 1 };
        ops.push((TileOp::Load { dst: ids, src, queue: None }, 0));
        for c0 in (0..row).step_by(w as usize) {
            let cols = w.min(row - c0) as u32;
            let rows = BufSlice { buf: 1, copy: chunk % COPIES, parts: p, offset: 0, len: cols };
            let table = HbmBox { tensor: 0, start: c0, rows: k.rows() as u32, row_stride: row, cols };
            ops.push((TileOp::Gather { dst: rows, idx: ids, table }, 0));
            let dst = HbmBox { tensor: 2, start: m0 * row + c0, rows: p, row_stride: row, cols };
            ops.push((TileOp::Store { dst, src: rows }, 0));
            chunk += 1;
        }
    }
    TileProgram { tensors, buffers, ops, debug_ops: vec![k.text.clone()] }
}
