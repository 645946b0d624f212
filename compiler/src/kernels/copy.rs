//! Copy kernels: `concat` and `slice` move elements between HBM tensors without
//! touching them, so each is a list of HBM-to-HBM DMA boxes (no SRAM, no engine
//! work; exact for every dtype).
//!
//! - `concat` along axis a: with `outer` the product of the dims before a and
//!   `inner` the product after, input i (`n_i` along a) is one box of `outer`
//!   rows of `n_i * inner` elements, placed at column `offset_i * inner` of the
//!   output's `N * inner`-element rows.
//! - `slice`: one box per index of the dims before the last two: rows of the
//!   second-to-last dim, columns of the last.
//! - `transpose` by any permutation other than a swap of the last two dims
//!   (which the PE does, [`super::transpose`]): one box per index of the
//!   output's leading dims, reading the input with the permuted strides. When
//!   the last axis stays last, a box is rows of the output's second-to-last dim
//!   with the last dim contiguous (the head split and merge `[S, H, D] <-> [H,
//!   S, D]` is H boxes); otherwise each box is one output row gathered element
//!   by element.

use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::{chip, statement, unsupported, Ctx, Kernel, Work};
use crate::error::CompileError;
use crate::ir::{Op, Span};
use crate::tiles::{HbmBox, HbmTensor, TileOp, TileProgram};

/// A copy kernel: boxes of its input tensors copied into the output.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyProblem {
    /// Input tensors (name, shape).
    pub inputs: Vec<(String, Vec<u64>)>,
    /// Element type of every tensor.
    pub dtype: DType,
    /// The output's name.
    pub output: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// (input index, source box, destination box); boxes name input `i` as
    /// tensor `i` and the output as tensor `inputs.len()`.
    pub boxes: Vec<(usize, HbmBox, HbmBox)>,
    /// The IR statement.
    pub text: String,
    /// Index of its IR node.
    pub node: usize,
    /// Its source span.
    pub span: Span,
}

/// The copy kernel of the concat or slice at node `i`.
pub fn select(cx: &Ctx<'_>, i: usize) -> Result<CopyProblem, CompileError> {
    let node = &cx.f.nodes[i];
    let values = cx.hbm_values(node)?;
    let dtype = chip(node.ty.dtype, "a result", node)?;
    let inputs: Vec<(String, Vec<u64>)> =
        values.iter().map(|v| (cx.f.node(*v).name.clone(), cx.f.node(*v).ty.shape.clone())).collect();
    let shapes: Vec<Vec<u64>> = inputs.iter().map(|(_, s)| s.clone()).collect();
    // A box's rows and columns are DMA counts (32 bits); a slice has one box per
    // index of the leading dims.
    let dims = &node.ty.shape;
    let too_big = match &node.op {
        Op::Concat { axis } => {
            let outer: u64 = dims[..*axis].iter().product();
            let inner: u64 = dims[*axis..].iter().product();
            outer > u32::MAX as u64 || inner > u32::MAX as u64
        }
        Op::Transpose { perm } if perm.last().is_some_and(|&a| a + 1 != perm.len()) => {
            dims.iter().any(|&d| d > u32::MAX as u64) || dims.iter().rev().skip(1).product::<u64>() > 1 << 20
        }
        _ => dims.iter().any(|&d| d > u32::MAX as u64) || dims.iter().rev().skip(2).product::<u64>() > 1 << 20,
    };
    if too_big {
        let what = "its copy needs more than 2^32 rows or columns in one transfer, or more than 2^20 transfers";
        return Err(CompileError::limit(&statement(cx.f, i), what, node.span.clone()));
    }
    let boxes = match &node.op {
        Op::Concat { axis } => concat_boxes(&shapes, *axis, &node.ty.shape),
        Op::Slice { start, .. } => slice_boxes(&shapes[0], start, &node.ty.shape),
        Op::Transpose { perm } => permute_boxes(&shapes[0], perm),
        _ => return Err(unsupported(node, "is not a concat, a slice or a transpose")),
    };
    Ok(CopyProblem {
        inputs,
        dtype,
        output: node.name.clone(),
        shape: node.ty.shape.clone(),
        boxes,
        text: statement(cx.f, i),
        node: i,
        span: node.span.clone(),
    })
}

impl Kernel for CopyProblem {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn kind(&self) -> &'static str {
        "copy"
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
        format!("{} {:?} {}\n  {} HBM-to-HBM boxes\n", self.text, self.shape, self.dtype, self.boxes.len())
    }

    fn tile_ops(&self, _: &Target) -> u64 {
        self.boxes.len() as u64
    }

    fn work(&self) -> Work {
        Work::default()
    }

    fn lower(&self, _: &Target) -> TileProgram {
        lower(self)
    }
}

/// The boxes of `concat` along `axis` of inputs shaped `inputs` into `shape`.
pub fn concat_boxes(inputs: &[Vec<u64>], axis: usize, shape: &[u64]) -> Vec<(usize, HbmBox, HbmBox)> {
    let outer: u64 = shape[..axis].iter().product();
    let inner: u64 = shape[axis + 1..].iter().product();
    let out = inputs.len();
    let mut boxes = Vec::new();
    let mut offset = 0;
    for (i, s) in inputs.iter().enumerate() {
        let cols = s[axis] * inner;
        if outer > 0 && cols > 0 {
            let src = HbmBox { tensor: i, start: 0, rows: outer as u32, row_stride: cols, cols: cols as u32 };
            let dst = HbmBox {
                tensor: out,
                start: offset * inner,
                rows: outer as u32,
                row_stride: shape[axis] * inner,
                cols: cols as u32,
            };
            boxes.push((i, src, dst));
        }
        offset += s[axis];
    }
    boxes
}

/// Row-major strides (in elements) of a tensor shaped `s`.
fn strides(s: &[u64]) -> Vec<u64> {
    let mut v = vec![1u64; s.len()];
    for k in (0..s.len().saturating_sub(1)).rev() {
        v[k] = v[k + 1] * s[k + 1];
    }
    v
}

/// The boxes of `transpose` by `perm` (output axis k is input axis `perm[k]`)
/// of an input shaped `in_shape`.
pub fn permute_boxes(in_shape: &[u64], perm: &[usize]) -> Vec<(usize, HbmBox, HbmBox)> {
    let shape: Vec<u64> = perm.iter().map(|&a| in_shape[a]).collect();
    let r = shape.len();
    if r == 0 || shape.contains(&0) {
        let unit = HbmBox { tensor: 0, start: 0, rows: 1, row_stride: 1, cols: 1 };
        return if r == 0 { vec![(0, unit, HbmBox { tensor: 1, ..unit })] } else { Vec::new() };
    }
    let (si, so) = (strides(in_shape), strides(&shape));
    // The box's rows run along output axis `row`; its columns are contiguous on
    // both sides only when the last axis stays last.
    let keeps_last = perm[r - 1] == r - 1;
    let (row, cols) = if keeps_last { (r.checked_sub(2), shape[r - 1]) } else { (Some(r - 1), 1) };
    let (rows, src_stride, dst_stride) = match row {
        Some(k) => (shape[k], si[perm[k]], so[k]),
        None => (1, cols, cols),
    };
    let lead = row.unwrap_or(0);
    let count: u64 = shape[..lead].iter().product();
    (0..count)
        .map(|n| {
            let (mut rest, mut src, mut dst) = (n, 0u64, 0u64);
            for k in (0..lead).rev() {
                let i = rest % shape[k];
                rest /= shape[k];
                src += i * si[perm[k]];
                dst += i * so[k];
            }
            let box_at =
                |tensor, start, row_stride| HbmBox { tensor, start, rows: rows as u32, row_stride, cols: cols as u32 };
            (0, box_at(0, src, src_stride), box_at(1, dst, dst_stride))
        })
        .collect()
}

/// The boxes of `slice` from `start` of an input shaped `in_shape` into `shape`.
pub fn slice_boxes(in_shape: &[u64], start: &[u64], shape: &[u64]) -> Vec<(usize, HbmBox, HbmBox)> {
    let r = shape.len();
    let (si, so) = (strides(in_shape), strides(shape));
    let (rows, cols) = match r {
        0 => (1, 1),
        1 => (1, shape[0]),
        _ => (shape[r - 2], shape[r - 1]),
    };
    let lead = r.saturating_sub(2);
    let count: u64 = shape[..lead].iter().product();
    let mut boxes = Vec::new();
    if rows == 0 || cols == 0 {
        return boxes;
    }
    let (row_stride, out_stride) = if r >= 2 { (si[r - 2], so[r - 2]) } else { (cols, cols) };
    for n in 0..count {
        // The index over the leading dims, last dim fastest.
        let mut rest = n;
        let (mut src, mut dst) = (0u64, 0u64);
        for k in (0..lead).rev() {
            let i = rest % shape[k];
            rest /= shape[k];
            src += (start[k] + i) * si[k];
            dst += i * so[k];
        }
        for k in lead..r {
            src += start[k] * si[k];
        }
        boxes.push((
            0,
            HbmBox { tensor: 0, start: src, rows: rows as u32, row_stride, cols: cols as u32 },
            HbmBox { tensor: 1, start: dst, rows: rows as u32, row_stride: out_stride, cols: cols as u32 },
        ));
    }
    boxes
}

/// Lowers a copy kernel: one DMA per box.
pub fn lower(p: &CopyProblem) -> TileProgram {
    let mut tensors: Vec<HbmTensor> = p
        .inputs
        .iter()
        .map(|(name, shape)| HbmTensor { name: name.clone(), dtype: p.dtype, shape: shape.clone(), role: Role::Input })
        .collect();
    tensors.push(HbmTensor { name: p.output.clone(), dtype: p.dtype, shape: p.shape.clone(), role: Role::Output });
    let ops = p.boxes.iter().map(|&(_, src, dst)| (TileOp::HbmCopy { dst, src }, 0)).collect();
    TileProgram { tensors, buffers: Vec::new(), ops, debug_ops: vec![p.text.clone()] }
}
