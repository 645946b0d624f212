//! Row kernels: softmax, rmsnorm and layernorm over the last axis, and sum/max
//! reductions over trailing axes; each row is reduced within one partition.
//! (The second-to-last axis is handled by transposing around this kernel; see
//! [`select`].)
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
//! Blocks are software-pipelined: a block's ops are split into stages wherever a
//! value passes between the VE and the ACT, and iteration i runs stage s of
//! block i - s, so neither engine waits for the other within an iteration. Each
//! block buffer has as many copies as iterations it lives (fewer stages when
//! that does not fit SRAM). gamma and beta are loaded once, each row into every
//! partition.

use jpu_isa::operand::{ActFunc, AluOp, ReduceOp, Space};
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::copy::CopyProblem;
use super::layout::{row_major, TensorView};
use super::transpose::TransposeProblem;
use super::{statement, unsupported, Ctx, Kernel, Work};
use crate::error::CompileError;
use crate::ir::{Node, Op, Operand, ReduceKind, ScalarType, Span, ValueId};
use crate::tiles::{BufSlice, Buffer, BufferId, HbmBox, HbmTensor, TileOp, TileProgram, TileScalar};

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
    /// The op's source span.
    pub span: Span,
}

/// A row kernel and its pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct RowsKernel {
    /// What it computes.
    pub p: RowProblem,
    /// Its pipeline; `None`: one long row, in the form of [`super::wide_row`].
    pub sched: Option<RowSchedule>,
}

/// The kernels of the softmax, norm or reduction at node `i`: the row kernel,
/// with a cast that follows it fused when the op's result is f32 (one rounding
/// either way); over the second-to-last axis, a transpose kernel into HBM scratch
/// before it and (unless that axis is reduced away) one back after it. Also the
/// node whose value the last kernel writes.
pub fn select(cx: &Ctx<'_>, i: usize, t: &Target) -> Result<(Vec<Box<dyn Kernel>>, usize), CompileError> {
    let node = &cx.f.nodes[i];
    if node.operands.iter().any(|o| matches!(o, Operand::Scalar(_))) {
        return Err(unsupported(node, "has a literal operand"));
    }
    let values = cx.hbm_values(node)?;
    let x = cx.f.node(values[0]);
    let moved = moved_axes(node, x.ty.rank());
    let (kind, reduced, across) = row_kind(node, x.ty.rank(), moved.is_some())?;
    // Integer sums and maxima are exact on the VE (its integer mode).
    if !x.ty.dtype.is_float() && !matches!(kind, RowKind::Reduce(_)) {
        return Err(unsupported(node, "on integers is not supported"));
    }
    let rank = x.ty.rank();
    let mut shape = x.ty.shape.clone();
    if across {
        shape.swap(rank - 2, rank - 1);
    }
    if let Some(perm) = &moved {
        shape = perm.iter().map(|&a| x.ty.shape[a]).collect();
    }
    let len: u64 = shape[rank - reduced..].iter().product();
    let rows: u64 = shape[..rank - reduced].iter().product();
    if len == 0 && rows > 0 {
        return Err(unsupported(node, "runs over an empty axis, which is not supported yet"));
    }
    let params = values[1..]
        .iter()
        .map(|v| Ok((cx.tensor(*v), cx.f.node(*v).ty.dtype.storage())))
        .collect::<Result<Vec<_>, CompileError>>()?;
    let (mut nodes, mut text) = (vec![i], vec![statement(cx.f, i)]);
    let mut out_dtype = node.ty.dtype.storage();
    if let Some((c, to)) = fused_cast(cx, i, out_dtype)? {
        out_dtype = to;
        text.push(format!("{} {{to = {to}}}", statement(cx.f, c)));
        nodes.push(c);
    }
    let out_node = *nodes.last().unwrap_or(&i);
    let last = cx.f.node(ValueId(out_node as u32));
    let dtype = x.ty.dtype.storage();
    let p = RowProblem {
        kind,
        input: cx.tensor(values[0]),
        input_shape: x.ty.shape.clone(),
        dtype,
        rows,
        len,
        params,
        output: cx.tensor(ValueId(out_node as u32)),
        output_shape: last.ty.shape.clone(),
        out_dtype,
        text,
        nodes,
        span: node.span.clone(),
    };
    let out = *p.nodes.last().unwrap_or(&i);
    // The PE transposes i32 only into PSUM; integer tensors move by copy kernels.
    let on_pe = p.dtype.is_pe_operand() && p.out_dtype.is_pe_operand();
    let moved = match moved {
        None if across && !on_pe => {
            let r = p.input_shape.len();
            Some((0..r - 2).chain([r - 1, r - 2]).collect())
        }
        moved => moved,
    };
    let kernels = if across && on_pe {
        transposed(p, shape, &node.name, t)?
    } else if let Some(perm) = moved {
        permuted(p, &perm, &node.name, t)?
    } else {
        vec![Box::new(RowsKernel::new(p, t)?) as Box<dyn Kernel>]
    };
    Ok((kernels, out))
}

/// What the row op `node` (over an operand of rank `rank`) computes, how many
/// trailing dims it reduces, and whether it runs over the second-to-last axis
/// (then as the last axis of the transposed tensor).
fn row_kind(node: &Node, rank: usize, moved: bool) -> Result<(RowKind, usize, bool), CompileError> {
    let second_to_last = |axis: usize| !moved && rank >= 2 && axis + 2 == rank;
    let across = match &node.op {
        Op::Softmax { axis } | Op::RmsNorm { axis, .. } | Op::LayerNorm { axis, .. } => second_to_last(*axis),
        Op::Reduce { axes, .. } => axes.len() == 1 && second_to_last(axes[0]),
        _ => false,
    };
    let last_axis = |axis: usize, what: &str| {
        if moved || axis + 1 == rank || second_to_last(axis) {
            Ok(())
        } else {
            Err(unsupported(
                node,
                &format!("{what} over axis {axis}, neither of the last two, which is not supported yet"),
            ))
        }
    };
    let kind = match &node.op {
        Op::Softmax { axis } => last_axis(*axis, "runs").map(|_| (RowKind::Softmax, 1))?,
        Op::RmsNorm { axis, eps } => {
            last_axis(*axis, "normalises").map(|_| (RowKind::RmsNorm { eps: *eps as f32 }, 1))?
        }
        Op::LayerNorm { axis, eps } => {
            last_axis(*axis, "normalises").map(|_| (RowKind::LayerNorm { eps: *eps as f32 }, 1))?
        }
        Op::Reduce { kind, axes, .. } => {
            let k = if across { 1 } else { axes.len() };
            if !moved && !across && axes.iter().enumerate().any(|(j, &a)| a != rank - k + j) {
                return Err(unsupported(node, &format!(
                    "reduces axes {axes:?}; only trailing axes (a suffix of the dims) or the second-to-last alone are supported yet"
                )));
            }
            let op = match kind {
                ReduceKind::Sum => ReduceOp::Sum,
                ReduceKind::Max => ReduceOp::Max,
            };
            (RowKind::Reduce(op), k)
        }
        _ => return Err(unsupported(node, "is not a row op")),
    };
    Ok((kind.0, kind.1, across))
}

/// The permutation that puts the axes row op `node` runs over last (the other
/// axes first, in order), when they are neither trailing already nor the
/// second-to-last alone (which the PE transposes).
fn moved_axes(node: &Node, rank: usize) -> Option<Vec<usize>> {
    let axes: Vec<usize> = match &node.op {
        Op::Softmax { axis } | Op::RmsNorm { axis, .. } | Op::LayerNorm { axis, .. } => vec![*axis],
        Op::Reduce { axes, .. } => axes.clone(),
        _ => return None,
    };
    let trailing = axes.iter().enumerate().all(|(j, &a)| a + axes.len() == rank + j);
    if axes.is_empty() || trailing || (axes.len() == 1 && axes[0] + 2 == rank) {
        return None;
    }
    Some((0..rank).filter(|a| !axes.contains(a)).chain(axes.iter().copied()).collect())
}

/// The kernels of a row op over axes moved last by `perm`: a copy kernel
/// writing the permuted input into HBM scratch, the row kernel, and (unless the
/// axes are reduced away, which leaves the kept axes in order) a copy back.
fn permuted(mut p: RowProblem, perm: &[usize], name: &str, t: &Target) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
    let shape: Vec<u64> = perm.iter().map(|&a| p.input_shape[a]).collect();
    let in_p = format!("{name}__in_p");
    let strides = row_major(&p.input_shape);
    let view = TensorView {
        tensor: p.input.clone(),
        tensor_shape: p.input_shape.clone(),
        shape: shape.clone(),
        offset: 0,
        strides: perm.iter().map(|&a| strides[a]).collect(),
    };
    let before = CopyProblem::scratch(&view, p.dtype, &in_p, (&p.text[0], p.nodes[0], &p.span));
    p.input = in_p;
    p.input_shape = shape.clone();
    let after = (!matches!(p.kind, RowKind::Reduce(_))).then(|| {
        let out_p = format!("{}__out_p", p.output);
        let permuted = row_major(&shape);
        let mut back = vec![0u64; perm.len()];
        for (k, &a) in perm.iter().enumerate() {
            back[a] = permuted[k];
        }
        let view = TensorView {
            tensor: out_p.clone(),
            tensor_shape: shape.clone(),
            shape: p.output_shape.clone(),
            offset: 0,
            strides: back,
        };
        let k = CopyProblem::scratch(&view, p.out_dtype, &p.output, (&p.text[0], p.nodes[0], &p.span));
        p.output = out_p;
        p.output_shape = shape;
        k
    });
    let mut kernels: Vec<Box<dyn Kernel>> = vec![Box::new(before), Box::new(RowsKernel::new(p, t)?)];
    kernels.extend(after.map(|k| Box::new(k) as Box<dyn Kernel>));
    Ok(kernels)
}

/// The cast that consumes an f32 result of node `i` alone (fused into the
/// store), and its dtype.
fn fused_cast(cx: &Ctx<'_>, i: usize, out_dtype: DType) -> Result<Option<(usize, DType)>, CompileError> {
    let f = cx.f;
    if !cx.fuse || out_dtype != DType::F32 || cx.uses[i] != 1 || f.results.contains(&ValueId(i as u32)) {
        return Ok(None);
    }
    let cast = f.nodes.iter().enumerate().skip(i + 1).find(|(_, n)| {
        // A cast to i1 is a comparison, not a conversion the store can do.
        matches!(n.op, Op::Cast { to } if to != ScalarType::I1)
            && matches!(n.operands.as_slice(), [Operand::Value(v)] if v.0 as usize == i)
    });
    match cast {
        Some((c, cn)) => Ok(Some((c, cn.ty.dtype.storage()))),
        None => Ok(None),
    }
}

/// The kernels of a row op over the second-to-last axis: a transpose into HBM
/// scratch, the row kernel on it (viewed as `shape`), and (unless the axis is
/// reduced away) a transpose back. Scratch is named after the node (`__` cannot
/// appear in a .tir name, so it never collides with program values).
fn transposed(
    mut p: RowProblem,
    shape: Vec<u64>,
    name: &str,
    t: &Target,
) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
    let (text, node, span) = (p.text[0].clone(), p.nodes[0], p.span.clone());
    let transpose = |input: &str, shape: &[u64], dtype, output: &str| {
        TransposeProblem::scratch(input, shape, dtype, output, (&text, node, &span))
    };
    let in_t = format!("{name}__in_t");
    let before = transpose(&p.input, &p.input_shape, p.dtype, &in_t);
    p.input = in_t;
    p.input_shape = shape.clone();
    let after = (!matches!(p.kind, RowKind::Reduce(_))).then(|| {
        let out_t = format!("{}__out_t", p.output);
        let back = transpose(&out_t, &shape, p.out_dtype, &p.output);
        p.output = out_t;
        p.output_shape = shape;
        back
    });
    let mut kernels: Vec<Box<dyn Kernel>> = vec![Box::new(before), Box::new(RowsKernel::new(p, t)?)];
    kernels.extend(after.map(|k| Box::new(k) as Box<dyn Kernel>));
    Ok(kernels)
}

impl RowsKernel {
    /// The kernel with the deepest pipeline that fits `t`.
    fn new(p: RowProblem, t: &Target) -> Result<RowsKernel, CompileError> {
        if super::wide_row::applies(&p, t) {
            return Ok(RowsKernel { p, sched: None });
        }
        let sched = p.schedule(t).ok_or_else(|| {
            let what = format!(
                "rows of {} elements do not fit one SRAM partition of {} ({} bytes) with the kernel's working tiles",
                p.len, t.name, t.sram.partition_bytes
            );
            CompileError::limit(&p.text[0], what, p.span.clone())
        })?;
        Ok(RowsKernel { p, sched: Some(sched) })
    }
}

impl Kernel for RowsKernel {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn kind(&self) -> &'static str {
        "rows"
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
        self.p.text.join("; ")
    }

    fn describe(&self, t: &Target) -> String {
        let p = &self.p;
        let Some(sched) = &self.sched else {
            let parts = t.sram.partitions;
            return format!(
                "{}\n  1 row of {} {} -> {}, its sum on one partition, then spread over {parts} partitions ({} each)\n",
                p.text.join("; "),
                p.len,
                p.dtype,
                p.out_dtype,
                p.len / parts as u64
            );
        };
        let copies = sched.copies.map(|c| c.to_string());
        format!(
            "{}\n  {} rows of {} {} -> {}, blocks of {} rows, copies {}\n",
            p.text.join("; "),
            p.rows,
            p.len,
            p.dtype,
            p.out_dtype,
            p.rows.min(t.sram.partitions as u64),
            copies.join("/")
        )
    }

    fn tile_ops(&self, t: &Target) -> u64 {
        // Per block of one row per partition: a load, a store and each stage's
        // VE and ACT passes.
        let passes = match self.p.kind {
            RowKind::Reduce(_) => 1,
            RowKind::Softmax => 5,
            RowKind::RmsNorm { .. } => 7,
            RowKind::LayerNorm { .. } => 10,
        };
        let params = self.p.params.len() as u64;
        self.p.rows.div_ceil(t.sram.partitions as u64).saturating_mul(passes + 2) + params
    }

    fn work(&self) -> Work {
        Work { transcendentals: self.p.rows.saturating_mul(self.p.kind.transcendentals(self.p.len)), ..Work::default() }
    }

    fn lower(&self, t: &Target) -> TileProgram {
        self.lower_cores(t, 1)
    }

    fn partition(&self, t: &Target, cores: u32) -> String {
        super::split_text(super::split(block_count(&self.p, t), cores).len(), "blocks of rows")
    }

    fn lower_cores(&self, t: &Target, cores: u32) -> TileProgram {
        match &self.sched {
            Some(sched) => super::spread(block_count(&self.p, t), cores, |r| lower_blocks(&self.p, t, sched, r)),
            None => super::wide_row::lower(&self.p, t),
        }
    }
}

/// Blocks of rows (one row per partition).
fn block_count(p: &RowProblem, t: &Target) -> u64 {
    p.rows.div_ceil((t.sram.partitions as u64).min(p.rows).max(1))
}

/// The per-block buffers, by index: the input block, an f32 work tile, the
/// result block, and two f32 columns (a statistic and a row sum).
const X: usize = 0;
const WORK: usize = 1;
const Y: usize = 2;
const STAT: usize = 3;
const SUM: usize = 4;
/// How many block buffers there are (parameter buffers are numbered after them).
const BLOCK_BUFFERS: usize = 5;

/// Tiles of one block: (name, dtype, elements per partition), indexed as above.
fn block_tiles(p: &RowProblem) -> [(&'static str, DType, u64); BLOCK_BUFFERS] {
    let n = p.len;
    let (work, y) = match p.kind {
        RowKind::Reduce(_) => (1, 1),
        _ => (n, n),
    };
    [
        ("x_tile", p.dtype, n),
        ("f32_tile", DType::F32, work),
        ("y_tile", p.out_dtype, y),
        ("row_stat", DType::F32, 1),
        ("row_sum", DType::F32, 1),
    ]
}

/// How the ops of a block are spread over iterations, and the copies of each
/// block buffer that spreading needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSchedule {
    /// 0: every stage its own iteration; 1: statistics, then the final passes;
    /// 2: all in one iteration; 3: that, with one copy of each buffer.
    pub squash: u32,
    /// Copies of each block buffer.
    pub copies: [u32; BLOCK_BUFFERS],
}

impl RowSchedule {
    fn stage(&self, s: u32, depth: u32) -> u32 {
        match self.squash {
            0 => s,
            1 => u32::from(s == depth),
            _ => 0,
        }
    }
}

impl RowProblem {
    /// The deepest pipeline whose buffers fit SRAM, or `None` when even one
    /// block does not fit.
    pub fn schedule(&self, t: &Target) -> Option<RowSchedule> {
        let pad = |bytes: u64| bytes.div_ceil(64) * 64;
        let tiles = block_tiles(self);
        let fixed: u64 = self.params.iter().map(|(_, d)| pad(self.len * d.size_bytes() as u64)).sum();
        // One block's ops at full depth; parameter buffers are numbered past the
        // block buffers, so `touched` ignores them.
        let params = [BLOCK_BUFFERS, BLOCK_BUFFERS + 1];
        let full = RowSchedule { squash: 0, copies: [1; BLOCK_BUFFERS] };
        let (ops, _) = block_ops((self.kind, self.len), 0, 1, &full.copies, &params, &full);
        let depth = ops.iter().map(|(s, _)| *s).max().unwrap_or(0);
        // squash 3: one copy of everything (no overlap between blocks).
        (0..4).find_map(|squash| {
            let mut sched = RowSchedule { squash, copies: [1; BLOCK_BUFFERS] };
            // A buffer lives from the first to the last stage touching it; the
            // input is loaded one iteration early, the result stored after.
            let mut first = [u32::MAX; BLOCK_BUFFERS];
            let mut last = [0u32; BLOCK_BUFFERS];
            for (stage, op) in &ops {
                let st = sched.stage(*stage, depth) + 1;
                for b in touched(op) {
                    first[b] = first[b].min(st);
                    last[b] = last[b].max(st);
                }
            }
            first[X] = 0;
            last[Y] += 1;
            for b in 0..BLOCK_BUFFERS {
                sched.copies[b] = if first[b] == u32::MAX || squash == 3 { 1 } else { last[b] - first[b] + 1 };
            }
            let bytes: u64 = fixed
                + tiles
                    .iter()
                    .zip(sched.copies)
                    .map(|((_, d, n), c)| c as u64 * pad(n * d.size_bytes() as u64))
                    .sum::<u64>();
            (bytes <= t.sram.partition_bytes as u64).then_some(sched)
        })
    }
}

/// A row op run inside another kernel, on blocks that kernel has already staged
/// on chip (a GEMM whose output tile holds whole rows: [`super::row_epilogue`]),
/// with the same ops as the row kernel's, so the results are the same bits.
/// Each block runs whole right after the host writes it: spread over later
/// iterations (as the row kernel pipelines them), a block's result would wait
/// for the host's next tiles, and so would every kernel that reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InPlace {
    /// What it computes (not a reduction).
    pub kind: RowKind,
    /// Elements per row.
    pub len: u64,
}

/// The working buffers of an [`InPlace`] row op besides its input, as
/// [`InPlace::block`] takes them: (name, dtype, elements per partition, copies).
pub type InPlaceBuffers = [(&'static str, DType, u64, u32); BLOCK_BUFFERS - 1];

/// Copies of an [`InPlace`] row op's block buffers (indexed as `block_tiles`;
/// the input's is the host's): one each, the result two (its store in flight
/// while the next block computes).
const IN_PLACE_COPIES: [u32; BLOCK_BUFFERS] = [0, 1, 2, 1, 1];

impl InPlace {
    /// Its working buffers ([`IN_PLACE_COPIES`] copies each).
    pub fn buffers(&self, out_dtype: DType) -> InPlaceBuffers {
        let c = IN_PLACE_COPIES;
        [
            ("row_work", DType::F32, self.len, c[WORK]),
            ("row_y", out_dtype, self.len, c[Y]),
            ("row_stat", DType::F32, 1, c[STAT]),
            ("row_sum", DType::F32, 1, c[SUM]),
        ]
    }

    /// Block j's ops (`pr` rows) and the slice holding its result: the input in
    /// copy `j % x_copies` of buffer `x`, the working buffers `work` (in
    /// [`InPlace::buffers`] order), gamma and beta in `params` (every row on
    /// every partition).
    pub fn block(
        &self,
        j: u64,
        pr: u32,
        (x, x_copies): (BufferId, u32),
        work: [BufferId; BLOCK_BUFFERS - 1],
        params: &[BufferId],
    ) -> (Vec<TileOp>, BufSlice) {
        let mut copies = IN_PLACE_COPIES;
        copies[X] = x_copies;
        let sched = RowSchedule { squash: 2, copies };
        let numbered = [BLOCK_BUFFERS, BLOCK_BUFFERS + 1];
        let (ops, mut y) = block_ops((self.kind, self.len), j, pr, &copies, &numbered, &sched);
        let host = |b: BufferId| match b {
            X => x,
            b if b < BLOCK_BUFFERS => work[b - 1],
            b => params[b - BLOCK_BUFFERS],
        };
        // The result is always in the Y buffer.
        y.buf = work[Y - 1];
        let ops = ops
            .into_iter()
            .map(|(_, mut op)| {
                op.remap(host, |t| t);
                op
            })
            .collect();
        (ops, y)
    }
}

/// Block buffers a tile op touches.
fn touched(op: &TileOp) -> Vec<usize> {
    let (reads, writes) = op.slices();
    reads.iter().chain(&writes).map(|s| s.buf).filter(|&b| b < BLOCK_BUFFERS).collect()
}

/// The ops of block `j` (`pr` rows) with the pipeline stage of each, and the
/// slice holding the block's result: a new stage starts wherever a value passes
/// from one engine to the other, so stage s of block j and stage s - 1 of block
/// j + 1 run side by side.
fn block_ops(
    (kind, len): (RowKind, u64),
    j: u64,
    pr: u32,
    copies: &[u32; BLOCK_BUFFERS],
    param_bufs: &[BufferId],
    sched: &RowSchedule,
) -> (Vec<(u32, TileOp)>, BufSlice) {
    let n = len as u32;
    let slice = |buf: usize, len| BufSlice { buf, copy: (j % copies[buf] as u64) as u32, parts: pr, offset: 0, len };
    let (x, work, stat, sum) = (slice(X, n), slice(WORK, n), slice(STAT, 1), slice(SUM, 1));
    let y = match kind {
        RowKind::Reduce(_) => slice(Y, 1),
        _ => slice(Y, n),
    };
    let param = |k: usize| BufSlice { buf: param_bufs[k], copy: 0, parts: pr, offset: 0, len: n };
    let imm =
        |c: BufSlice, op, v: f32| TileOp::Scalar { op, dst: c, src: c, scalar: TileScalar::Imm(v), reverse: false };
    let act = |func, dst, src, scale, bias, accum| TileOp::Activate { func, dst, src, scale, bias, accum };
    let (one, zero) = (TileScalar::Imm(1.0), TileScalar::Imm(-0.0));
    // `dst = src * column`: the VE and the ACT (identity with a column scale)
    // round it alike; rmsnorm alternates them by block to balance the engines.
    let scale_rows = |on_act: bool, dst, src, c| {
        if on_act {
            act(ActFunc::Identity, dst, src, TileScalar::Column(c), zero, None)
        } else {
            TileOp::Scalar { op: AluOp::Mul, dst, src, scalar: TileScalar::Column(c), reverse: false }
        }
    };
    let per_row = |op, dst, src, c| TileOp::Scalar { op, dst, src, scalar: TileScalar::Column(c), reverse: false };
    let mut ops = match kind {
        RowKind::Softmax => vec![
            (0, TileOp::Reduce { op: ReduceOp::Max, dst: stat, src: x }),
            (0, imm(stat, AluOp::Mul, -1.0)),
            (1, act(ActFunc::Exp, work, x, one, TileScalar::Column(stat), Some(sum))),
            (2, per_row(AluOp::Div, y, work, sum)),
        ],
        RowKind::RmsNorm { eps } => vec![
            // The squares themselves land in y, which the last step overwrites.
            (0, act(ActFunc::Square, y, x, one, zero, Some(sum))),
            (1, imm(sum, AluOp::Div, n as f32)),
            (1, imm(sum, AluOp::Add, eps)),
            (2, TileOp::activate(ActFunc::Rsqrt, sum, sum)),
            (3, scale_rows(j % 2 == 1, work, x, sum)),
            (4, TileOp::Binary { op: AluOp::Mul, dst: y, a: work, b: param(0) }),
        ],
        RowKind::LayerNorm { eps } => vec![
            (0, TileOp::Reduce { op: ReduceOp::Sum, dst: stat, src: x }),
            (0, imm(stat, AluOp::Div, n as f32)),
            (0, imm(stat, AluOp::Mul, -1.0)),
            (1, act(ActFunc::Identity, work, x, one, TileScalar::Column(stat), None)),
            // The squares land in x, which is no longer needed.
            (1, act(ActFunc::Square, x, work, one, zero, Some(sum))),
            (2, imm(sum, AluOp::Div, n as f32)),
            (2, imm(sum, AluOp::Add, eps)),
            (3, TileOp::activate(ActFunc::Rsqrt, sum, sum)),
            (3, scale_rows(true, work, work, sum)),
            (4, TileOp::Binary { op: AluOp::Mul, dst: work, a: work, b: param(0) }),
            (4, TileOp::Binary { op: AluOp::Add, dst: y, a: work, b: param(1) }),
        ],
        RowKind::Reduce(op) => vec![(0, TileOp::Reduce { op, dst: y, src: x })],
    };
    let depth = ops.iter().map(|(s, _)| *s).max().unwrap_or(0);
    for (s, _) in ops.iter_mut() {
        *s = sched.stage(*s, depth);
    }
    (ops, y)
}

/// The tile program of blocks `range` of rows (a core's share).
fn lower_blocks(p: &RowProblem, t: &Target, sched: &RowSchedule, range: std::ops::Range<u64>) -> TileProgram {
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
    let mut buffers: Vec<Buffer> = block_tiles(p)
        .into_iter()
        .zip(sched.copies)
        .map(|((name, dtype, free), copies)| Buffer::new(name, Space::Sram, dtype, parts as u32, free as u32, copies))
        .collect();
    let param_bufs: Vec<BufferId> = p
        .params
        .iter()
        .map(|(name, dtype)| {
            buffers.push(Buffer::new(format!("row_{name}"), Space::Sram, *dtype, parts as u32, n as u32, 1));
            buffers.len() - 1
        })
        .collect();
    let mut ops: Vec<(TileOp, u32)> = Vec::new();
    for (k, &b) in param_bufs.iter().enumerate() {
        let src = HbmBox { tensor: 1 + k, start: 0, rows: parts as u32, row_stride: 0, cols: n as u32 };
        let dst = BufSlice { buf: b, copy: 0, parts: parts as u32, offset: 0, len: n as u32 };
        ops.push((TileOp::Load { dst, src, queue: None }, 0));
    }
    let (first, blocks) = (range.start, range.end - range.start);
    let rows_of = |j: u64| parts.min(rows - j * parts) as u32;
    let last_debug = p.text.len() as u32 - 1;
    let staged: Vec<Vec<(u32, TileOp)>> = range
        .map(|j| {
            let pr = rows_of(j);
            let (mut v, y) = block_ops((p.kind, p.len), j, pr, &sched.copies, &param_bufs, sched);
            let last = v.iter().map(|(s, _)| *s).max().unwrap_or(0);
            let dst = match p.kind {
                RowKind::Reduce(_) => HbmBox { tensor: out_tensor, start: j * parts, rows: pr, row_stride: 1, cols: 1 },
                _ => HbmBox { tensor: out_tensor, start: j * parts * n, rows: pr, row_stride: n, cols: n as u32 },
            };
            v.push((last, TileOp::Store { dst, src: y }));
            v
        })
        .collect();
    let depth = staged.iter().flatten().map(|(s, _)| *s).max().unwrap_or(0) as u64;
    // Iteration i loads block i + 1 and runs stage s of block i - s, oldest
    // block first (its store leaves earliest).
    let load = |ops: &mut Vec<(TileOp, u32)>, i: u64| {
        let j = first + i;
        let pr = rows_of(j);
        let dst = BufSlice { buf: X, copy: (j % sched.copies[X] as u64) as u32, parts: pr, offset: 0, len: n as u32 };
        let src = HbmBox { tensor: 0, start: j * parts * n, rows: pr, row_stride: n, cols: n as u32 };
        ops.push((TileOp::Load { dst, src, queue: None }, 0));
    };
    if blocks > 0 {
        load(&mut ops, 0);
    }
    for i in 0..blocks + depth {
        if i + 1 < blocks {
            load(&mut ops, i + 1);
        }
        for s in (0..=depth).rev() {
            let Some(j) = i.checked_sub(s).filter(|&j| j < blocks) else { continue };
            for (stage, op) in &staged[j as usize] {
                if *stage as u64 == s {
                    let debug = if matches!(op, TileOp::Store { .. }) { last_debug } else { 0 };
                    ops.push((op.clone(), debug));
                }
            }
        }
    }
    TileProgram { tensors, buffers, ops, debug_ops: p.text.clone() }
}
