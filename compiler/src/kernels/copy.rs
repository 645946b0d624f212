//! Copy kernels: `concat`, and the `reshape`, `transpose` and `slice` ops that
//! [`super::layout`] materialises, move elements between HBM tensors without
//! touching them, so each is a list of HBM-to-HBM DMA boxes (no SRAM, no engine
//! work; exact for every dtype).
//!
//! - `concat` along axis a: with `outer` the product of the dims before a and
//!   `inner` the product after, input i (`n_i` along a) is one box of `outer`
//!   rows of `n_i * inner` elements, placed at column `offset_i * inner` of the
//!   output's `N * inner`-element rows.
//! - a view op reads its operand's tensor in place (the strides
//!   [`super::layout`] derives) and writes its own, row-major: one box per
//!   index of the leading dims ([`view_boxes`]). A swap of the last two dims of
//!   a plain operand is the PE's ([`super::transpose`]) instead.

use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::layout::{row_major, TensorView};
use super::{statement, unsupported, Ctx, Kernel, Work};
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

/// The copy kernel of node `i`: a concat, or a reshape, transpose or slice
/// that is materialised (read in place from its operand's tensor, written into
/// its own).
pub fn select(cx: &Ctx<'_>, i: usize) -> Result<CopyProblem, CompileError> {
    let node = &cx.f.nodes[i];
    let values = cx.hbm_values(node)?;
    let dtype = node.ty.dtype.storage();
    let dims = &node.ty.shape;
    let (inputs, boxes) = match &node.op {
        Op::Concat { axis } => {
            // A box's rows and columns are DMA counts (32 bits).
            let outer: u64 = dims[..*axis].iter().product();
            let inner: u64 = dims[*axis..].iter().product();
            if outer > u32::MAX as u64 || inner > u32::MAX as u64 {
                return Err(too_big(cx, i));
            }
            let inputs: Vec<(String, Vec<u64>)> =
                values.iter().map(|v| (cx.tensor(*v), cx.f.node(*v).ty.shape.clone())).collect();
            let shapes: Vec<Vec<u64>> = inputs.iter().map(|(_, s)| s.clone()).collect();
            (inputs, concat_boxes(&shapes, *axis, dims))
        }
        Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. } => {
            let Some(view) = cx.view_through(i) else {
                return Err(unsupported(node, "reads a value that is not contiguous in HBM"));
            };
            if dims.iter().any(|&d| d > u32::MAX as u64) || transfers(&view) > 1 << 20 {
                return Err(too_big(cx, i));
            }
            (vec![(view.tensor.clone(), view.tensor_shape.clone())], view_boxes(&view))
        }
        _ => return Err(unsupported(node, "is not a concat, a reshape, a transpose or a slice")),
    };
    Ok(CopyProblem {
        inputs,
        dtype,
        output: cx.tensor(crate::ir::ValueId(i as u32)),
        shape: node.ty.shape.clone(),
        boxes,
        text: statement(cx.f, i),
        node: i,
        span: node.span.clone(),
    })
}

impl CopyProblem {
    /// A copy of `view` into scratch tensor `output` (row-major), a prelude or
    /// postlude of the kernel whose statement, node and span it carries.
    pub fn scratch(
        view: &TensorView,
        dtype: DType,
        output: &str,
        (text, node, span): (&str, usize, &Span),
    ) -> CopyProblem {
        CopyProblem {
            inputs: vec![(view.tensor.clone(), view.tensor_shape.clone())],
            dtype,
            output: output.to_string(),
            shape: view.shape.clone(),
            boxes: view_boxes(view),
            text: text.to_string(),
            node,
            span: span.clone(),
        }
    }
}

fn too_big(cx: &Ctx<'_>, i: usize) -> CompileError {
    let what = "its copy needs more than 2^32 rows or columns in one transfer, or more than 2^20 transfers";
    CompileError::limit(&statement(cx.f, i), what, cx.f.nodes[i].span.clone())
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

    fn partition(&self, _: &Target, cores: u32) -> String {
        match core_boxes(self, cores).len() {
            0 | 1 => "core 0".into(),
            n if self.boxes.len() >= n => format!("{n} cores, each a run of boxes"),
            n => format!("{n} cores, each a run of every box's rows"),
        }
    }

    fn lower_cores(&self, _: &Target, cores: u32) -> TileProgram {
        let shares = core_boxes(self, cores);
        if shares.len() <= 1 {
            return lower(self);
        }
        let parts = shares.into_iter().map(|boxes| lower(&CopyProblem { boxes, ..self.clone() })).collect();
        crate::tiles::merge_cores(parts)
    }
}

/// Each core's boxes: runs of the boxes when there are at least as many as
/// cores, else every box cut into runs of its rows (or, with fewer rows than
/// cores, of its columns), the i-th run of each box on core i. One share when
/// the copy does not spread.
fn core_boxes(p: &CopyProblem, cores: u32) -> Vec<Vec<(usize, HbmBox, HbmBox)>> {
    let n = p.boxes.len() as u64;
    if cores <= 1 || n == 0 {
        return vec![p.boxes.clone()];
    }
    if n >= cores as u64 {
        return super::split(n, cores)
            .into_iter()
            .map(|r| p.boxes[r.start as usize..r.end as usize].to_vec())
            .collect();
    }
    let mut shares = vec![Vec::new(); cores as usize];
    for &(i, src, dst) in &p.boxes {
        if src.rows != dst.rows || src.cols != dst.cols {
            shares[0].push((i, src, dst));
            continue;
        }
        let by_rows = src.rows >= cores;
        let runs = super::split(if by_rows { src.rows as u64 } else { src.cols as u64 }, cores);
        for (c, r) in runs.into_iter().enumerate() {
            let cut = |b: HbmBox| match by_rows {
                true => HbmBox { start: b.start + r.start * b.row_stride, rows: (r.end - r.start) as u32, ..b },
                false => HbmBox { start: b.start + r.start, cols: (r.end - r.start) as u32, ..b },
            };
            shares[c].push((i, cut(src), cut(dst)));
        }
    }
    shares.retain(|s| !s.is_empty());
    shares
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

/// How `view` splits into boxes: the axis a box's rows run along (`None`: one
/// row), the box's columns, and whether they are contiguous in the source.
fn box_shape(view: &TensorView) -> (Option<usize>, u64) {
    let r = view.shape.len();
    match r {
        0 => (None, 1),
        _ if view.strides[r - 1] == 1 || view.shape[r - 1] == 1 => (r.checked_sub(2), view.shape[r - 1]),
        // The last dim is strided: each box is one output row gathered element by element.
        _ => (Some(r - 1), 1),
    }
}

/// The number of boxes [`view_boxes`] makes.
pub fn transfers(view: &TensorView) -> u64 {
    let view = merged(view);
    let (row, _) = box_shape(&view);
    view.shape[..row.unwrap_or(0)].iter().product()
}

/// `view` with size-1 dims dropped and neighbours merged where the outer one
/// steps over exactly the inner one (the same elements in the same order, in
/// fewer, longer runs).
fn merged(view: &TensorView) -> TensorView {
    let mut dims: Vec<(u64, u64)> = Vec::new();
    for (&d, &s) in view.shape.iter().zip(&view.strides).filter(|(&d, _)| d != 1) {
        match dims.last_mut() {
            // A run stays a DMA count (32 bits).
            Some(outer) if outer.1 == s.saturating_mul(d) && outer.0 * d <= u32::MAX as u64 => {
                *outer = (outer.0 * d, s)
            }
            _ => dims.push((d, s)),
        }
    }
    TensorView {
        shape: dims.iter().map(|x| x.0).collect(),
        strides: dims.iter().map(|x| x.1).collect(),
        ..view.clone()
    }
}

/// The boxes copying `view` (any strides) into a row-major tensor of its shape:
/// one box per index of the dims before the box's rows. When the last dim is
/// contiguous a box is rows of the second-to-last dim (the head split `[S, H,
/// D] -> [H, S, D]` is H boxes); otherwise one output row element by element.
pub fn view_boxes(view: &TensorView) -> Vec<(usize, HbmBox, HbmBox)> {
    if view.shape.contains(&0) {
        return Vec::new();
    }
    let view = &merged(view);
    let shape = &view.shape;
    let out = row_major(shape);
    let (row, cols) = box_shape(view);
    let (rows, src_stride, dst_stride) = match row {
        Some(k) => (shape[k], view.strides[k], out[k]),
        None => (1, cols, cols),
    };
    let lead = row.unwrap_or(0);
    let count: u64 = shape[..lead].iter().product();
    (0..count)
        .map(|n| {
            let (mut rest, mut src, mut dst) = (n, view.offset, 0u64);
            for k in (0..lead).rev() {
                let i = rest % shape[k];
                rest /= shape[k];
                src += i * view.strides[k];
                dst += i * out[k];
            }
            let box_at =
                |tensor, start, row_stride| HbmBox { tensor, start, rows: rows as u32, row_stride, cols: cols as u32 };
            (0, box_at(0, src, src_stride), box_at(1, dst, dst_stride))
        })
        .collect()
}

/// Lowers a copy kernel: one DMA per box.
pub fn lower(p: &CopyProblem) -> TileProgram {
    let mut tensors: Vec<HbmTensor> = p
        .inputs
        .iter()
        .map(|(name, shape)| HbmTensor { name: name.clone(), dtype: p.dtype, shape: shape.clone(), role: Role::Input })
        .collect();
    tensors.push(HbmTensor { name: p.output.clone(), dtype: p.dtype, shape: p.shape.clone(), role: Role::Output });
    let ops = p.boxes.iter().map(|&(_, src, dst)| (TileOp::HbmCopy { dst, src, core: 0 }, 0)).collect();
    TileProgram { tensors, buffers: Vec::new(), ops, debug_ops: vec![p.text.clone()] }
}
