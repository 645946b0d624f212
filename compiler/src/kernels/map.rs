//! Elementwise kernels: a chain of elementwise steps over one HBM tensor, for
//! elementwise ops no matmul epilogue absorbs (float, integer and boolean:
//! comparisons store an i1 as i8 0/1, selects by a tensor condition are
//! predicated VE copies or fills), and `const` splats and iotas (each block set
//! by the VE instead of loaded, then the chain). Reshapes are not kernels: they
//! are read in place ([`super::layout`]) or copied ([`super::copy`]).
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

use super::chain::{chain, Broadcast, Chain, EpilogueInput, EpilogueStep};
use super::{statement, unsupported, Ctx, Field, Kernel, Work};
use crate::error::CompileError;
use crate::ir::{Op, Operand, Span, ValueId};
use crate::tiles::{BufSlice, Buffer, BufferId, HbmBox, HbmTensor, TileOp, TileProgram};

/// Widest block, in elements per partition.
pub const MAX_COLS: u64 = 512;
/// Copies of every tile.
const COPIES: u32 = 3;

/// An elementwise kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct MapProblem {
    /// The tensor the first step reads.
    pub input: String,
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
    /// The statement of the node a splat computes (a `const`, or an op whose
    /// result is a constant because an operand is empty).
    pub splat_of: Option<String>,
    /// Instead of the splat, each block starts as an iota: `(per row, per
    /// column)` coefficients of the element's row and column in the 2-D view.
    pub iota: Option<(i32, i32)>,
    /// The first statement's source span.
    pub span: Span,
}

/// An elementwise kernel and its block width (its schedule).
#[derive(Debug, Clone, PartialEq)]
pub struct MapKernel {
    /// What it computes.
    pub p: MapProblem,
    /// Columns per block.
    pub width: u64,
}

/// The elementwise kernel of the chain starting at node `i` (an elementwise op
/// whose main operand, of the result's shape, is in HBM); and its output node.
pub fn select_chain(cx: &Ctx<'_>, i: usize, t: &Target) -> Result<(MapKernel, usize), CompileError> {
    let node = &cx.f.nodes[i];
    // A select's condition is never the tile (its values are not the result's).
    let skip = usize::from(matches!(node.op, Op::Select));
    let values = || {
        node.operands.iter().skip(skip).filter_map(|o| match o {
            Operand::Value(v) if cx.in_hbm[v.0 as usize] => Some(*v),
            _ => None,
        })
    };
    let full = values().find(|v| cx.f.node(*v).ty.shape == node.ty.shape);
    let expanded = values().find_map(|v| Some((v, cx.broadcasts.get(&(node.name.clone(), v))?.clone())));
    let (x, tensor) = match (full, expanded) {
        (Some(x), _) => (x, cx.tensor(x)),
        (None, Some((x, name))) => (x, name),
        (None, None) => {
            return Err(unsupported(node, "has no tensor operand of the result's shape, and none was expanded to it"))
        }
    };
    let ty = crate::ir::TensorType::new(cx.f.node(x).ty.dtype, node.ty.shape.clone());
    let c = chain(cx, x, Some(i), &ty)?;
    if c.nodes.is_empty() {
        return Err(unsupported(node, "cannot run as an elementwise kernel yet"));
    }
    let (mut k, out) = kernel(cx, c, None, x, &node.ty.shape, None, t)?;
    k.p.input = tensor;
    Ok((k, out))
}

/// The kernel of a const splat at node `i`, with the elementwise chain that
/// consumes it; and its output node.
pub fn select_const(cx: &Ctx<'_>, i: usize, t: &Target) -> Result<(MapKernel, usize), CompileError> {
    let node = &cx.f.nodes[i];
    let Op::Const { value } = node.op else { return Err(unsupported(node, "is not a const")) };
    let c = chain(cx, ValueId(i as u32), None, &node.ty)?;
    let (mut k, out) = kernel(cx, c, Some(i), ValueId(i as u32), &node.ty.shape, Some(value), t)?;
    k.p.splat_of = Some(statement(cx.f, i));
    Ok((k, out))
}

/// The kernels of iota node `i` (with the elementwise chain that consumes it);
/// and the node whose value the last leaves in HBM. An iota along the last dim
/// (or along the rows of a matrix) is set block by block on the VE; any other
/// axis is one line of the axis's indices, broadcast by a copy kernel.
pub fn select_iota(cx: &Ctx<'_>, i: usize, t: &Target) -> Result<(Vec<Box<dyn Kernel>>, usize), CompileError> {
    let node = &cx.f.nodes[i];
    let Op::Iota { axis } = node.op else { return Err(unsupported(node, "is not an iota")) };
    let (shape, r) = (&node.ty.shape, node.ty.shape.len());
    let coefficients = if axis + 1 == r {
        Some((0, 1))
    } else if axis + 2 == r && shape[..axis].iter().all(|&d| d == 1) {
        Some((1, 0))
    } else {
        None
    };
    if let Some(iota) = coefficients {
        let c = chain(cx, ValueId(i as u32), None, &node.ty)?;
        let (mut k, out) = kernel(cx, c, Some(i), ValueId(i as u32), shape, Some(0.0), t)?;
        (k.p.splat_of, k.p.iota) = (Some(statement(cx.f, i)), Some(iota));
        return Ok((vec![Box::new(k)], out));
    }
    let line = format!("{}__line", node.name);
    let dtype = node.ty.dtype.storage();
    let mut p = MapProblem::fill(cx, i, &line, vec![shape[axis]], 0.0);
    (p.nodes, p.iota) = (Vec::new(), Some((0, 1)));
    let width = p.width(t);
    let mut strides = vec![0; r];
    strides[axis] = 1;
    let view = super::layout::TensorView {
        tensor: line,
        tensor_shape: vec![shape[axis]],
        shape: shape.clone(),
        offset: 0,
        strides,
    };
    if super::copy::transfers(&view) > 1 << 20 {
        let what = format!("broadcasting the iota to {shape:?} needs more than 2^20 transfers");
        return Err(CompileError::limit(&statement(cx.f, i), what, node.span.clone()));
    }
    let copy = super::copy::CopyProblem::scratch(
        &view,
        dtype,
        &cx.tensor(ValueId(i as u32)),
        (&statement(cx.f, i), i, &node.span),
    );
    Ok((vec![Box::new(MapKernel { p, width }), Box::new(copy)], i))
}

/// The kernel that sets node `i`'s result to `value` everywhere: an op whose
/// operands are empty but whose result is not (a matmul with K = 0 is zeros, a
/// sum over nothing 0), or whose result is empty (no blocks, no ops).
pub fn select_fill(cx: &Ctx<'_>, i: usize, value: f64, t: &Target) -> Result<(MapKernel, usize), CompileError> {
    let node = &cx.f.nodes[i];
    let p = MapProblem::fill(cx, i, &cx.tensor(ValueId(i as u32)), node.ty.shape.clone(), value);
    let width = p.width(t);
    Ok((MapKernel { p, width }, i))
}

impl MapProblem {
    /// Tensor `output` shaped `shape` set to `value` everywhere, in node `i`'s
    /// dtype, implementing node `i`.
    fn fill(cx: &Ctx<'_>, i: usize, output: &str, shape: Vec<u64>, value: f64) -> MapProblem {
        let node = &cx.f.nodes[i];
        MapProblem {
            input: output.to_string(),
            shape,
            dtype: node.ty.dtype.storage(),
            steps: Vec::new(),
            inputs: Vec::new(),
            cast: None,
            output: output.to_string(),
            nodes: vec![i],
            splat: Some(value),
            splat_of: Some(statement(cx.f, i)),
            iota: None,
            span: node.span.clone(),
        }
    }
}

/// The kernel running chain `c` over `input` (or over a splat of `splat`), with
/// node `lead` (a const or an iota) computed first.
fn kernel(
    cx: &Ctx<'_>,
    c: Chain,
    lead: Option<usize>,
    input: ValueId,
    shape: &[u64],
    splat: Option<f64>,
    t: &Target,
) -> Result<(MapKernel, usize), CompileError> {
    let nodes: Vec<usize> = lead.into_iter().chain(c.nodes).collect();
    let first = &cx.f.nodes[nodes[0]];
    let input_node = cx.f.node(input);
    let p = MapProblem {
        input: cx.tensor(input),
        shape: shape.to_vec(),
        dtype: input_node.ty.dtype.storage(),
        steps: c.epilogue,
        inputs: c.epilogue_inputs,
        cast: c.cast,
        output: cx.tensor(c.last),
        nodes,
        splat,
        splat_of: None,
        iota: None,
        span: first.span.clone(),
    };
    let width = p.width(t);
    Ok((MapKernel { p, width }, c.last.0 as usize))
}

impl MapProblem {
    /// The statements it implements, for listings.
    fn text(&self) -> Vec<String> {
        let steps = self.steps.iter().map(|(_, t)| t.clone());
        self.splat_of.clone().into_iter().chain(steps).chain(self.cast.as_ref().map(|c| c.1.clone())).collect()
    }

    /// Bytes per partition of `width` columns of every tile, times its copies.
    fn sram_bytes(&self, width: u64) -> u64 {
        let per_col = self.dtype.size_bytes() as u64
            + self.inputs.iter().map(|e| e.dtype.size_bytes() as u64).sum::<u64>()
            + self.cast.as_ref().map_or(0, |c| c.0.size_bytes() as u64);
        let tiles = 1 + self.inputs.len() as u64 + self.cast.is_some() as u64;
        // Each copy is padded to 64 bytes by the allocator.
        COPIES as u64 * (width * per_col + 64 * tiles)
    }
}

impl Kernel for MapKernel {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn kind(&self) -> &'static str {
        "map"
    }

    fn output(&self) -> &str {
        &self.p.output
    }

    fn nodes(&self) -> &[usize] {
        &self.p.nodes
    }

    fn span(&self) -> Span {
        self.p.span.clone()
    }

    fn statement(&self) -> String {
        self.p.text().join("; ")
    }

    fn schedule_fields(&self) -> &'static [&'static str] {
        &["width"]
    }

    fn schedule(&mut self, t: &Target, overrides: &[Field]) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
        for f in overrides {
            if f.name != "width" {
                return Err(self.field_error(f, format!("unknown field `{}` (fields: width)", f.name)));
            }
            let w: u64 = f.value.parse().map_err(|_| self.field_error(f, format!("`{}` is not a number", f.value)))?;
            let cap = t.sram.partition_bytes as u64;
            if w == 0 || w > MAX_COLS {
                return Err(self.field_error(f, format!("width = {w} must be in 1..={MAX_COLS}")));
            }
            if self.p.sram_bytes(w) > cap {
                let why = format!(
                    "width = {w} needs {} bytes per SRAM partition; {} has {cap}",
                    self.p.sram_bytes(w),
                    t.name
                );
                return Err(self.field_error(f, why));
            }
            self.width = w.min(self.p.view().1.max(1));
        }
        Ok(Vec::new())
    }

    fn describe(&self, _: &Target) -> String {
        let p = &self.p;
        let over = match (p.iota, p.splat) {
            (Some((per_row, per_col)), _) => format!("an iota ({per_row} per row, {per_col} per column)"),
            (None, Some(v)) => format!("a splat of {v}"),
            (None, None) => format!("%{}", p.input),
        };
        format!("{} over {over} {:?} {}\n  blocks of {} columns\n", self.statement(), p.shape, p.dtype, self.width)
    }

    fn tile_ops(&self, t: &Target) -> u64 {
        let (rows, cols) = self.p.view();
        let parts = (t.sram.partitions as u64).max(1);
        let blocks = rows.div_ceil(parts).saturating_mul(cols.div_ceil(self.width.max(1)));
        let per_block = 2 + self.p.inputs.len() + self.p.steps.len() + self.p.cast.is_some() as usize;
        blocks.saturating_mul(per_block as u64)
    }

    fn work(&self) -> Work {
        let p = &self.p;
        let steps = p.steps.iter().filter(|(s, _)| matches!(s, EpilogueStep::Activate(f) if f.is_transcendental()));
        let elems: u64 = p.shape.iter().product();
        Work { transcendentals: elems.saturating_mul(steps.count() as u64), ..Work::default() }
    }

    fn lower(&self, t: &Target) -> TileProgram {
        lower(&self.p, self.width, t)
    }

    fn partition(&self, t: &Target, cores: u32) -> String {
        super::split_text(super::split(self.blocks(t), cores).len(), "blocks")
    }

    fn lower_cores(&self, t: &Target, cores: u32) -> TileProgram {
        super::spread(self.blocks(t), cores, |r| lower_items(&self.p, self.width, t, r))
    }
}

impl MapKernel {
    /// Blocks of the 2-D view (rows on partitions, `width` columns).
    fn blocks(&self, t: &Target) -> u64 {
        let parts = (t.sram.partitions as u64).min(self.p.view().0).max(1);
        blocks(&self.p, parts, self.width).len() as u64
    }
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
        let per_col = self.sram_bytes(1) - self.sram_bytes(0);
        let cap = (t.sram.partition_bytes as u64).saturating_sub(self.sram_bytes(0));
        MAX_COLS.min(cap / per_col.max(1)).min(self.view().1).max(1)
    }

    /// The dtype stored to HBM.
    pub fn output_dtype(&self) -> DType {
        self.cast.as_ref().map_or(self.dtype, |c| c.0)
    }
}

/// Lowers an elementwise kernel with blocks of `width` columns to a tile program.
pub fn lower(p: &MapProblem, width: u64, t: &Target) -> TileProgram {
    lower_items(p, width, t, 0..u64::MAX)
}

/// The tile program of blocks `range` (a core's share).
fn lower_items(p: &MapProblem, width: u64, t: &Target, range: std::ops::Range<u64>) -> TileProgram {
    let parts = (t.sram.partitions as u64).min(p.view().0).max(1);
    let (tensors, first_input, out_tensor) = map_tensors(p);
    let (buffers, operand_bufs, cast_buf) = map_buffers(p, parts, width);
    let mut items = blocks(p, parts, width);
    items.truncate(range.end.min(items.len() as u64) as usize);
    items.drain(..(range.start as usize).min(items.len()));
    let lowering = MapLowering { p, width, first_input, out_tensor, operand_bufs, cast_buf, items };
    let mut ops = Vec::new();
    if !lowering.items.is_empty() {
        lowering.load(&mut ops, 0);
    }
    for j in 0..lowering.items.len() {
        if j + 1 < lowering.items.len() {
            lowering.load(&mut ops, j + 1);
        }
        lowering.compute(&mut ops, j);
    }
    TileProgram { tensors, buffers, ops, debug_ops: map_debug_ops(p) }
}

/// The HBM tensors (the input unless splatted, the epilogue inputs, the output),
/// with the index of the first epilogue input and of the output.
fn map_tensors(p: &MapProblem) -> (Vec<HbmTensor>, usize, usize) {
    let mut tensors = Vec::new();
    if p.splat.is_none() {
        tensors.push(HbmTensor { name: p.input.clone(), dtype: p.dtype, shape: p.shape.clone(), role: Role::Input });
    }
    let first_input = tensors.len();
    tensors.extend(p.inputs.iter().map(EpilogueInput::hbm_tensor));
    let out_tensor = tensors.len();
    let output =
        HbmTensor { name: p.output.clone(), dtype: p.output_dtype(), shape: p.shape.clone(), role: Role::Output };
    tensors.push(output);
    (tensors, first_input, out_tensor)
}

/// The SRAM tiles: `x_tile` (buffer 0), one per epilogue input, and the cast
/// tile; with the buffer of each input and of the cast.
fn map_buffers(p: &MapProblem, parts: u64, width: u64) -> (Vec<Buffer>, Vec<BufferId>, Option<BufferId>) {
    let tile = |name: String, dtype| Buffer::new(name, Space::Sram, dtype, parts as u32, width as u32, COPIES);
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
    (buffers, operand_bufs, cast_buf)
}

/// The blocks in order: (first row, its row within the matrix, rows, column
/// block). Row blocks stay within one matrix (the last two dims) when a mask
/// step or a matrix operand needs each element's row within its matrix.
fn blocks(p: &MapProblem, parts: u64, width: u64) -> Vec<(u64, u64, u64, u64)> {
    let (rows, cols) = p.view();
    let masked = p.steps.iter().any(|(s, _)| matches!(s, EpilogueStep::Mask { .. }))
        || p.inputs.iter().any(|e| e.broadcast == Broadcast::Matrix);
    let matrix_rows = if masked && p.shape.len() >= 2 { p.shape[p.shape.len() - 2].max(1) } else { rows.max(1) };
    (0..rows.div_ceil(matrix_rows))
        .flat_map(|m| {
            let first = m * matrix_rows;
            let in_matrix = matrix_rows.min(rows - first);
            (0..in_matrix.div_ceil(parts))
                .map(move |r| (first + r * parts, r * parts, parts.min(in_matrix - r * parts)))
        })
        .flat_map(|(row0, in_row, pr)| (0..cols.div_ceil(width)).map(move |c| (row0, in_row, pr, c)))
        .collect()
}

/// The statements the ops' debug indices name: the steps, then the cast (or
/// the splat, iota or constant result the kernel is, when it has no steps).
fn map_debug_ops(p: &MapProblem) -> Vec<String> {
    let mut debug_ops: Vec<String> = p.steps.iter().map(|(_, text)| text.clone()).collect();
    debug_ops.extend(p.cast.as_ref().map(|c| c.1.clone()));
    if debug_ops.is_empty() {
        let v = p.splat.unwrap_or(0.0);
        debug_ops.push(p.splat_of.clone().unwrap_or_else(|| format!("%{} = const() {{value = {v}}}", p.output)));
    }
    debug_ops
}

/// An elementwise kernel being lowered, block by block.
struct MapLowering<'a> {
    p: &'a MapProblem,
    width: u64,
    first_input: usize,
    out_tensor: usize,
    operand_bufs: Vec<BufferId>,
    cast_buf: Option<BufferId>,
    items: Vec<(u64, u64, u64, u64)>,
}

/// Block `j`'s place: first element, first column, rows, columns, copy, and row
/// within its matrix.
struct Block {
    start: u64,
    col: u64,
    rows: u32,
    cols: u32,
    copy: u32,
    in_row: u64,
}

impl MapLowering<'_> {
    fn block(&self, j: usize) -> Block {
        let cols = self.p.view().1;
        let (row0, in_row, pr, c) = self.items[j];
        let w = self.width.min(cols - c * self.width);
        let start = row0 * cols + c * self.width;
        Block { start, col: c * self.width, rows: pr as u32, cols: w as u32, copy: j as u32 % COPIES, in_row }
    }

    /// Loads (or sets) block `j`'s input and every epilogue input's block.
    fn load(&self, ops: &mut Vec<(TileOp, u32)>, j: usize) {
        let (p, cols) = (self.p, self.p.view().1);
        let Block { start, col, rows: pr, cols: w, copy, in_row } = self.block(j);
        let slice = |buf| BufSlice { buf, copy, parts: pr, offset: 0, len: w };
        let first = match (p.iota, p.splat) {
            (Some((per_row, per_col)), _) => TileOp::Iota {
                dst: slice(0),
                base: per_row * (start / cols.max(1)) as i32 + per_col * col as i32,
                partition_step: per_row,
                free_step: per_col,
            },
            (None, Some(value)) => TileOp::Memset { dst: slice(0), value: value as f32 },
            (None, None) => TileOp::Load {
                dst: slice(0),
                src: HbmBox { tensor: 0, start, rows: pr, row_stride: cols, cols: w },
                queue: None,
            },
        };
        ops.push((first, 0));
        for (e, input) in p.inputs.iter().enumerate() {
            let tensor = self.first_input + e;
            let dst = slice(self.operand_bufs[e]);
            let (src, dst) = match input.broadcast {
                Broadcast::Row => (HbmBox { tensor, start: col, rows: pr, row_stride: 0, cols: w }, dst),
                Broadcast::Full => (HbmBox { tensor, start, rows: pr, row_stride: cols, cols: w }, dst),
                Broadcast::Matrix => {
                    let start = in_row * cols + col;
                    (HbmBox { tensor, start, rows: pr, row_stride: cols, cols: w }, dst)
                }
                Broadcast::Column => (
                    HbmBox { tensor, start: start / cols.max(1), rows: pr, row_stride: 1, cols: 1 },
                    BufSlice { len: 1, ..dst },
                ),
            };
            ops.push((TileOp::Load { dst, src, queue: None }, 0));
        }
    }

    /// Block `j`'s steps in place, its cast, and its store.
    fn compute(&self, ops: &mut Vec<(TileOp, u32)>, j: usize) {
        let (p, cols) = (self.p, self.p.view().1);
        let Block { start, col, rows: pr, cols: w, copy, in_row } = self.block(j);
        let x = BufSlice { buf: 0, copy, parts: pr, offset: 0, len: w };
        for (si, (step, _)) in p.steps.iter().enumerate() {
            let op = step.tile_op(x, (in_row, col), |e| {
                let column = p.inputs[e].broadcast == Broadcast::Column;
                let len = if column { 1 } else { w };
                (BufSlice { buf: self.operand_bufs[e], copy, parts: pr, offset: 0, len }, column)
            });
            ops.push((op, si as u32));
        }
        let last = p.steps.len().max(1) as u32 - 1;
        let out = match self.cast_buf {
            Some(cb) => {
                let cast = BufSlice { buf: cb, copy, parts: pr, offset: 0, len: w };
                ops.push((TileOp::Copy { dst: cast, src: x }, p.steps.len() as u32));
                cast
            }
            None => x,
        };
        let debug = if p.cast.is_some() { p.steps.len() as u32 } else { last };
        let dst = HbmBox { tensor: self.out_tensor, start, rows: pr, row_stride: cols, cols: w };
        ops.push((TileOp::Store { dst, src: out }, debug));
    }
}
