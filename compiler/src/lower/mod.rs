//! Kernel selection and lowering: typed IR -> schedules (`--emit kernels`) ->
//! a tile program (`--emit tiles`).
//!
//! A [`TileProgram`] is target-shaped but not yet placed: on-chip buffers (with a
//! number of copies for multi-buffering) and a list of tile operations, each of
//! which becomes one instruction. Tile ops name the bytes they touch, so the
//! backend derives every dependency (read after write, write after read, write
//! after write) from them; no kernel inserts synchronisation by hand. The order of
//! `ops` is a valid sequential execution; the backend may overlap anything the
//! dependencies allow.

pub mod attention;
pub mod copy;
pub mod gemm;
pub mod map;
pub mod mask;
pub mod rows;
pub mod transpose;

use std::fmt::{self, Write as _};

use jpu_isa::operand::Space;
use jpu_isa::operand::{ActFunc, AluOp, ReduceOp};
use jpu_isa::program::Role;
use jpu_isa::DType;

use crate::ir::{Func, Op, Operand, ValueId};
use attention::AttentionProblem;
use gemm::{GemmProblem, Unsupported, SUPPORTED};
use map::MapProblem;
use rows::{RowKind, RowProblem};
use transpose::TransposeProblem;

/// One kernel of a compiled function.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelProblem {
    /// A matmul with its fused elementwise chain.
    Gemm(GemmProblem),
    /// A chain of elementwise ops.
    Map(MapProblem),
    /// A swap of the last two dims.
    Transpose(TransposeProblem),
    /// Softmax, a norm or a reduction, row by row.
    Rows(RowProblem),
    /// Fused attention.
    Attention(AttentionProblem),
    /// Concat or slice: HBM-to-HBM copies.
    Copy(copy::CopyProblem),
}

impl KernelProblem {
    /// Indices of the IR nodes the kernel computes.
    pub fn nodes(&self) -> &[usize] {
        match self {
            KernelProblem::Gemm(p) => &p.nodes,
            KernelProblem::Map(p) => &p.nodes,
            KernelProblem::Transpose(p) => std::slice::from_ref(&p.node),
            KernelProblem::Rows(p) => &p.nodes,
            KernelProblem::Attention(p) => &p.nodes,
            KernelProblem::Copy(p) => std::slice::from_ref(&p.node),
        }
    }
}

/// Splits a function into kernels in execution order: each matmul with the
/// elementwise steps that consume its result one after another (each step's input
/// used only by the next step and not returned), each remaining elementwise chain,
/// and each transpose of the last two dims; values no result needs are dropped.
/// Kernel outputs that the function does not return live in HBM scratch between
/// kernels.
pub fn plan(f: &Func) -> Result<Vec<KernelProblem>, Unsupported> {
    plan_with(f, true)
}

/// [`plan`], optionally without fusion: then every op is a kernel of its own (the
/// `-O0` baseline that measures what fusion is worth).
pub fn plan_with(f: &Func, fuse: bool) -> Result<Vec<KernelProblem>, Unsupported> {
    let n = f.nodes.len();
    // Values the results need; the rest is dead code and gets no kernel.
    let mut live = vec![false; n];
    for r in &f.results {
        live[r.0 as usize] = true;
    }
    for i in (0..n).rev() {
        if live[i] {
            for o in &f.nodes[i].operands {
                if let Operand::Value(v) = o {
                    live[v.0 as usize] = true;
                }
            }
        }
    }
    // Live consumers of each value (`mul(%x, %x)` is one).
    let mut uses = vec![0usize; n];
    for node in f.nodes.iter().zip(&live).filter(|(_, l)| **l).map(|(node, _)| node) {
        let mut seen: Vec<ValueId> = Vec::new();
        for o in &node.operands {
            if let Operand::Value(v) = o {
                if !seen.contains(v) {
                    seen.push(*v);
                    uses[v.0 as usize] += 1;
                }
            }
        }
    }
    // Values in HBM: parameters, then each kernel's output once it is planned.
    let mut in_hbm: Vec<bool> = (0..n).map(|i| i < f.num_params).collect();
    let mut fused = vec![false; n];
    // Iotas and comparisons that only shape masks live inside the selects' kernels.
    let absorbed = mask::absorbed(f);
    let mut kernels = Vec::new();
    for i in f.num_params..n {
        if fused[i] || !live[i] || absorbed[i] {
            continue;
        }
        let node = &f.nodes[i];
        let not_yet = |why: &str| unsupported(node, why);
        let (kernel, out) = match &node.op {
            Op::Matmul { .. } => {
                let (p, out) = gemm::gemm_kernel(f, i, &uses, &in_hbm, fuse)?;
                (KernelProblem::Gemm(p), out)
            }
            Op::Transpose { perm } => {
                if !crate::ir::swaps_last_two(perm) {
                    return Err(not_yet("permutes more than the last two dims, which is not supported yet"));
                }
                let [x] = hbm_values(f, node, &in_hbm)?[..] else { return Err(not_yet("is malformed")) };
                let xn = f.node(x);
                let p = TransposeProblem {
                    input: xn.name.clone(),
                    shape: xn.ty.shape.clone(),
                    dtype: gemm::chip(xn.ty.dtype, "the transposed tensor")?,
                    output: node.name.clone(),
                    text: format!("%{} = transpose(%{})", node.name, xn.name),
                    node: i,
                };
                (KernelProblem::Transpose(p), i)
            }
            Op::Cast { .. } | Op::Binary(_) | Op::Unary(_) | Op::Gelu { .. } | Op::Select => {
                // The chain runs over the tensor operand with the result's shape.
                let Some(x) = node.operands.iter().find_map(|o| match o {
                    Operand::Value(v) if in_hbm[v.0 as usize] && f.node(*v).ty.shape == node.ty.shape => Some(*v),
                    _ => None,
                }) else {
                    return Err(not_yet("has no operand of the result's shape in HBM (broadcasting the main operand is not supported yet)"));
                };
                let xn = f.node(x);
                let c = gemm::chain(f, x, Some(i), &xn.ty, &uses, &in_hbm, fuse)?;
                if c.nodes.is_empty() {
                    return Err(not_yet("cannot run as an elementwise kernel yet"));
                }
                let last = c.last.0 as usize;
                (KernelProblem::Map(map_problem(f, c, None, xn, &xn.ty.shape, None)?), last)
            }
            // A reshape (a copy in the result's view) or a const splat, then the
            // elementwise chain that consumes it.
            Op::Reshape { .. } | Op::Const { .. } => {
                let (source, splat) = match node.op {
                    Op::Const { value } => (node, Some(value)),
                    _ => {
                        let [x] = hbm_values(f, node, &in_hbm)?[..] else { return Err(not_yet("is malformed")) };
                        (f.node(x), None)
                    }
                };
                let c = gemm::chain(f, ValueId(i as u32), None, &node.ty, &uses, &in_hbm, fuse)?;
                let last = c.last.0 as usize;
                (KernelProblem::Map(map_problem(f, c, Some(i), source, &node.ty.shape, splat)?), last)
            }
            Op::Softmax { .. } | Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::Reduce { .. } => {
                let (p, around) = row_kernel(f, i, &uses, &in_hbm, fuse)?;
                let out = *p.nodes.last().unwrap_or(&i);
                // Over the second-to-last axis: transpose in, the row kernel, and
                // (unless the axis is reduced away) transpose back.
                let after = around.and_then(|(before, after)| {
                    kernels.push(KernelProblem::Transpose(before));
                    after
                });
                match after {
                    Some(t) => {
                        kernels.push(KernelProblem::Rows(p));
                        (KernelProblem::Transpose(t), out)
                    }
                    None => (KernelProblem::Rows(p), out),
                }
            }
            Op::Attention { causal, scale } => {
                let p = attention_kernel(f, i, *causal, *scale, &in_hbm)?;
                (KernelProblem::Attention(p), i)
            }
            Op::Concat { .. } | Op::Slice { .. } => {
                let values = hbm_values(f, node, &in_hbm)?;
                let dtype = gemm::chip(node.ty.dtype, "the result")?;
                let inputs: Vec<(String, Vec<u64>)> =
                    values.iter().map(|v| (f.node(*v).name.clone(), f.node(*v).ty.shape.clone())).collect();
                let text = statement(f, i);
                let shapes: Vec<Vec<u64>> = inputs.iter().map(|(_, s)| s.clone()).collect();
                let boxes = match &node.op {
                    Op::Concat { axis } => copy::concat_boxes(&shapes, *axis, &node.ty.shape),
                    Op::Slice { start, .. } => copy::slice_boxes(&shapes[0], start, &node.ty.shape),
                    _ => return Err(not_yet("is malformed")),
                };
                let p = copy::CopyProblem {
                    inputs,
                    dtype,
                    output: node.name.clone(),
                    shape: node.ty.shape.clone(),
                    boxes,
                    text,
                    node: i,
                };
                (KernelProblem::Copy(p), i)
            }
            Op::Compare { .. } | Op::Iota { .. } => {
                return Err(not_yet(
                    "is only supported inside a mask select (a comparison of iotas over the last two dims and integer literals)",
                ))
            }
            _ => return Err(not_yet("is not supported yet")),
        };
        for &v in kernel.nodes() {
            fused[v] = true;
        }
        in_hbm[out] = true;
        kernels.push(kernel);
    }
    if let Some(r) = f.results.iter().find(|r| (r.0 as usize) < f.num_params) {
        return Err(Unsupported(format!(
            "returning the parameter `%{}` unchanged is not supported yet: {SUPPORTED}",
            f.node(*r).name
        )));
    }
    if kernels.is_empty() {
        return Err(Unsupported(SUPPORTED.into()));
    }
    Ok(kernels)
}

/// The row kernel of the softmax, norm or reduction at node `i`, with a cast that
/// follows it fused when the op's result is f32 (one rounding either way).
/// Why node `node` cannot be compiled: the statement, the reason, and what is covered.
fn unsupported(node: &crate::ir::Node, why: &str) -> Unsupported {
    Unsupported(format!("`%{} = {}` {why}: {SUPPORTED}", node.name, node.op.name()))
}

/// The value operands of `node`, each of which must already be in HBM (a
/// parameter or an earlier kernel's output).
fn hbm_values(f: &Func, node: &crate::ir::Node, in_hbm: &[bool]) -> Result<Vec<ValueId>, Unsupported> {
    let values: Vec<ValueId> = node
        .operands
        .iter()
        .filter_map(|o| match o {
            Operand::Value(v) => Some(*v),
            Operand::Scalar(_) => None,
        })
        .collect();
    match values.iter().find(|v| !in_hbm[v.0 as usize]) {
        Some(v) => Err(unsupported(
            node,
            &format!("reads `%{}`, which is not a parameter or an earlier kernel's output", f.node(*v).name),
        )),
        None => Ok(values),
    }
}

/// The elementwise kernel running chain `c` over `input` (or over a splat of
/// `splat`), with node `lead` (a reshape or a const) computed first.
fn map_problem(
    f: &Func,
    c: gemm::Chain,
    lead: Option<usize>,
    input: &crate::ir::Node,
    shape: &[u64],
    splat: Option<f64>,
) -> Result<MapProblem, Unsupported> {
    let nodes = lead.into_iter().chain(c.nodes).collect();
    Ok(MapProblem {
        input: input.name.clone(),
        input_shape: input.ty.shape.clone(),
        shape: shape.to_vec(),
        dtype: gemm::chip(input.ty.dtype, "the operand")?,
        steps: c.epilogue,
        inputs: c.epilogue_inputs,
        cast: c.cast,
        output: f.node(c.last).name.clone(),
        nodes,
        splat,
    })
}

/// Transposes around a row kernel over the second-to-last axis: into it, and
/// back out of it (none when that axis is reduced away).
type Around = (TransposeProblem, Option<TransposeProblem>);

fn row_kernel(
    f: &Func,
    i: usize,
    uses: &[usize],
    in_hbm: &[bool],
    fuse: bool,
) -> Result<(RowProblem, Option<Around>), Unsupported> {
    let node = &f.nodes[i];
    let not_yet = |why: &str| unsupported(node, why);
    if node.operands.iter().any(|o| matches!(o, Operand::Scalar(_))) {
        return Err(not_yet("has a literal operand"));
    }
    let values = hbm_values(f, node, in_hbm)?;
    let x = f.node(values[0]);
    let rank = x.ty.shape.len();
    // The second-to-last axis runs as the last one of the transposed tensor.
    let second_to_last = |axis: usize| rank >= 2 && axis + 2 == rank;
    let across = match &node.op {
        Op::Softmax { axis } | Op::RmsNorm { axis, .. } | Op::LayerNorm { axis, .. } => second_to_last(*axis),
        Op::Reduce { axes, .. } => axes.len() == 1 && second_to_last(axes[0]),
        _ => false,
    };
    let last_axis = |axis: usize, what: &str| {
        if axis + 1 == rank || second_to_last(axis) {
            Ok(())
        } else {
            Err(not_yet(&format!("{what} over axis {axis}, neither of the last two, which is not supported yet")))
        }
    };
    let (kind, reduced) = match &node.op {
        Op::Softmax { axis } => (last_axis(*axis, "runs").map(|_| RowKind::Softmax)?, 1),
        Op::RmsNorm { axis, eps } => {
            (last_axis(*axis, "normalises").map(|_| RowKind::RmsNorm { eps: *eps as f32 })?, 1)
        }
        Op::LayerNorm { axis, eps } => {
            (last_axis(*axis, "normalises").map(|_| RowKind::LayerNorm { eps: *eps as f32 })?, 1)
        }
        Op::Reduce { kind, axes, .. } => {
            let k = if across { 1 } else { axes.len() };
            if !across && axes.iter().enumerate().any(|(j, &a)| a != rank - k + j) {
                return Err(not_yet(&format!(
                    "reduces axes {axes:?}; only trailing axes (a suffix of the dims) or the second-to-last alone are supported yet"
                )));
            }
            let op = match kind {
                crate::ir::ReduceKind::Sum => jpu_isa::operand::ReduceOp::Sum,
                crate::ir::ReduceKind::Max => jpu_isa::operand::ReduceOp::Max,
            };
            (RowKind::Reduce(op), k)
        }
        _ => return Err(not_yet("is not a row op")),
    };
    if !x.ty.dtype.is_float() {
        return Err(not_yet("on integers is not supported yet (the vector engine computes in f32)"));
    }
    let mut shape = x.ty.shape.clone();
    if across {
        shape.swap(rank - 2, rank - 1);
    }
    let len: u64 = shape[rank - reduced..].iter().product();
    let rows: u64 = shape[..rank - reduced].iter().product();
    if len == 0 && rows > 0 {
        return Err(not_yet("runs over an empty axis, which is not supported yet"));
    }
    let params = values[1..]
        .iter()
        .map(|v| {
            let pn = f.node(*v);
            Ok((pn.name.clone(), gemm::chip(pn.ty.dtype, "a norm parameter")?))
        })
        .collect::<Result<Vec<_>, Unsupported>>()?;
    let mut out_dtype = gemm::chip(node.ty.dtype, "the result")?;
    let mut text = vec![statement(f, i)];
    let mut nodes = vec![i];
    // A cast consuming the f32 result becomes the kernel's store dtype.
    if fuse && out_dtype == DType::F32 && uses[i] == 1 && !f.results.contains(&ValueId(i as u32)) {
        let cast = f.nodes.iter().enumerate().skip(i + 1).find(|(_, n)| {
            matches!(n.op, Op::Cast { .. }) && matches!(n.operands.as_slice(), [Operand::Value(v)] if v.0 as usize == i)
        });
        if let Some((c, cn)) = cast {
            out_dtype = gemm::chip(cn.ty.dtype, "the cast result")?;
            text.push(format!("{} {{to = {out_dtype}}}", statement(f, c)));
            nodes.push(c);
        }
    }
    let last = f.node(ValueId(*nodes.last().unwrap_or(&i) as u32));
    let dtype = gemm::chip(x.ty.dtype, "the operand")?;
    let mut p = RowProblem {
        kind,
        input: x.name.clone(),
        input_shape: x.ty.shape.clone(),
        dtype,
        rows,
        len,
        params,
        output: last.name.clone(),
        output_shape: last.ty.shape.clone(),
        out_dtype,
        text,
        nodes,
    };
    if !across {
        return Ok((p, None));
    }
    // HBM scratch between the kernels, named after the node (`__` cannot
    // appear in a .tir name, so they never collide with program values).
    let for_text = p.text[0].clone();
    let transpose = |input: &str, shape: &[u64], dtype, output: &str| {
        TransposeProblem::scratch(input, shape, dtype, output, &for_text, i)
    };
    let in_t = format!("{}__in_t", node.name);
    let before = transpose(&x.name, &x.ty.shape, dtype, &in_t);
    p.input = in_t;
    p.input_shape = shape.clone();
    let after = if matches!(kind, RowKind::Reduce(_)) {
        None
    } else {
        let out_t = format!("{}__out_t", last.name);
        let t = transpose(&out_t, &shape, out_dtype, &last.name);
        p.output = out_t;
        p.output_shape = shape;
        Some(t)
    };
    Ok((p, Some((before, after))))
}

/// The attention kernel of node `i`.
fn attention_kernel(
    f: &Func,
    i: usize,
    causal: bool,
    scale: f64,
    in_hbm: &[bool],
) -> Result<AttentionProblem, Unsupported> {
    let node = &f.nodes[i];
    let not_yet = |why: &str| unsupported(node, why);
    let [q, k, v] = hbm_values(f, node, in_hbm)?[..] else { return Err(not_yet("is malformed")) };
    let (qn, kn, vn) = (f.node(q), f.node(k), f.node(v));
    let dtype = gemm::chip(qn.ty.dtype, "the query")?;
    if !matches!(dtype, DType::Bf16 | DType::F16 | DType::F32) {
        return Err(not_yet(&format!("on {dtype} operands is not supported yet (bf16, f16 and f32 are)")));
    }
    let r = qn.ty.shape.len();
    let dims = |s: &[u64]| (s[r - 3], s[r - 2], s[r - 1]);
    let ((hq, sq, d), (hk, sk, _), (_, _, dv)) = (dims(&qn.ty.shape), dims(&kn.ty.shape), dims(&vn.ty.shape));
    if qn.ty.shape[..r - 3] != kn.ty.shape[..r - 3] || kn.ty.shape[..r - 3] != vn.ty.shape[..r - 3] {
        return Err(not_yet("broadcasts batch dims between q, k and v, which is not supported yet"));
    }
    if scale <= 0.0 {
        return Err(not_yet(&format!("has scale {scale}; the kernel needs a positive scale")));
    }
    if qn.ty.elems() == 0 || kn.ty.elems() == 0 || vn.ty.elems() == 0 {
        return Err(not_yet(&format!(
            "has an empty operand ({}, {}, {}), which is not supported yet",
            qn.ty, kn.ty, vn.ty
        )));
    }
    if causal && sq > sk {
        return Err(not_yet(&format!(
            "is causal with more query rows ({sq}) than keys ({sk}), which leaves rows with no key; not supported yet"
        )));
    }
    Ok(AttentionProblem {
        q: qn.name.clone(),
        k: kn.name.clone(),
        v: vn.name.clone(),
        shapes: [qn.ty.shape.clone(), kn.ty.shape.clone(), vn.ty.shape.clone()],
        dtype,
        batch: qn.ty.shape[..r - 3].iter().product(),
        hq,
        hk,
        sq,
        sk,
        d,
        dv,
        causal,
        scale: scale as f32,
        output: node.name.clone(),
        out_shape: node.ty.shape.clone(),
        out_dtype: gemm::chip(node.ty.dtype, "the result")?,
        text: vec![format!("{} {{causal = {causal}, scale = {scale}}}", statement(f, i))],
        nodes: vec![i],
        k_transposed: None,
    })
}

/// `%y = op(%a, %b)` of node `i`, for listings and debug info.
pub(crate) fn statement(f: &Func, i: usize) -> String {
    let n = &f.nodes[i];
    let args: Vec<String> = n
        .operands
        .iter()
        .map(|o| match o {
            Operand::Value(v) => format!("%{}", f.node(*v).name),
            Operand::Scalar(x) => format!("{x}"),
        })
        .collect();
    format!("%{} = {}({})", n.name, n.op.name(), args.join(", "))
}

/// An HBM tensor of the compiled program (a parameter or a result of the function).
#[derive(Debug, Clone, PartialEq)]
pub struct HbmTensor {
    /// Name (the IR value's, without `%`).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Input or output.
    pub role: Role,
}

/// Index of an [`HbmTensor`].
pub type TensorId = usize;
/// Index of a [`Buffer`].
pub type BufferId = usize;

/// An on-chip buffer: `copies` x (`parts` partitions x `free` elements of `dtype`).
#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
    /// Name for listings.
    pub name: String,
    /// SRAM or PSUM.
    pub space: Space,
    /// Element type.
    pub dtype: DType,
    /// Partitions (from partition 0).
    pub parts: u32,
    /// Elements per partition per copy.
    pub free: u32,
    /// Copies (2 = double buffering).
    pub copies: u32,
}

/// A box of an on-chip buffer copy: partitions `0..parts`, elements `offset..offset + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufSlice {
    /// Buffer.
    pub buf: BufferId,
    /// Which copy.
    pub copy: u32,
    /// Partitions used (from 0).
    pub parts: u32,
    /// First element within each partition.
    pub offset: u32,
    /// Elements per partition.
    pub len: u32,
}

/// A 2-D box of an HBM tensor: `rows` rows of `cols` contiguous elements, rows
/// `row_stride` elements apart, starting at element `start` (row r goes to
/// partition r of the on-chip side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HbmBox {
    /// Tensor.
    pub tensor: TensorId,
    /// First element.
    pub start: u64,
    /// Rows.
    pub rows: u32,
    /// Distance between rows, in elements.
    pub row_stride: u64,
    /// Contiguous elements per row.
    pub cols: u32,
}

/// One tile operation; each becomes one instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum TileOp {
    /// HBM -> SRAM (DMA).
    Load {
        /// Destination.
        dst: BufSlice,
        /// Source.
        src: HbmBox,
        /// The DMA queue a schedule assigned (`None`: the backend chooses).
        queue: Option<u8>,
    },
    /// HBM -> HBM (DMA): a box of one tensor into a box of another.
    HbmCopy {
        /// Destination.
        dst: HbmBox,
        /// Source.
        src: HbmBox,
    },
    /// SRAM -> HBM (DMA).
    Store {
        /// Destination.
        dst: HbmBox,
        /// Source.
        src: BufSlice,
    },
    /// `dst (+)= stationary^T . moving` on the PE.
    Matmul {
        /// PSUM result.
        dst: BufSlice,
        /// Stationary operand (`transposed`: [M parts, K free]).
        stationary: BufSlice,
        /// Moving operand [K parts, N free].
        moving: BufSlice,
        /// Accumulate into dst.
        accumulate: bool,
        /// Stationary stored [M, K].
        transposed: bool,
    },
    /// `dst[F, P] = src[P, F]^T` on the PE (exact; the result is f32 or i32).
    Transpose {
        /// PSUM result.
        dst: BufSlice,
        /// SRAM source.
        src: BufSlice,
    },
    /// Elementwise copy with conversion (PSUM evacuation, casts) on the VE.
    Copy {
        /// Destination.
        dst: BufSlice,
        /// Source.
        src: BufSlice,
    },
    /// `dst = a <op> b` elementwise on the VE (epilogues).
    Binary {
        /// Operation.
        op: AluOp,
        /// Result.
        dst: BufSlice,
        /// Left operand.
        a: BufSlice,
        /// Right operand.
        b: BufSlice,
    },
    /// `dst = src <op> scalar` (`scalar <op> src` when `reverse`) on the VE.
    Scalar {
        /// Operation.
        op: AluOp,
        /// Result.
        dst: BufSlice,
        /// Tensor operand.
        src: BufSlice,
        /// The scalar operand.
        scalar: TileScalar,
        /// The scalar is the left operand.
        reverse: bool,
    },
    /// `dst = func(src * scale + bias)` on the ACT engine, with the f32 row sums of
    /// the results into `accum`.
    Activate {
        /// Function.
        func: ActFunc,
        /// Result.
        dst: BufSlice,
        /// Source.
        src: BufSlice,
        /// Multiplier (`Imm(1.0)`: none).
        scale: TileScalar,
        /// Addend (`Imm(-0.0)`: none; `x + -0` is `x` for every x).
        bias: TileScalar,
        /// A `len` 1 f32 slice receiving each partition's sum of results.
        accum: Option<BufSlice>,
    },
    /// `dst[p] = fold(src[p, ..])` (sum or max, in order) on the VE.
    Reduce {
        /// Reduction.
        op: ReduceOp,
        /// Result: a `len` 1 slice.
        dst: BufSlice,
        /// Source.
        src: BufSlice,
    },
    /// `dst = value` on the VE.
    Memset {
        /// Result.
        dst: BufSlice,
        /// The value.
        value: f32,
    },
    /// Affine select on the VE: `dst[p, i] = src[p, i]` where
    /// `partition_step * p + free_step * i + base <cmp> 0`, else `fill` (masks).
    Select {
        /// Comparison against zero.
        cmp: jpu_isa::operand::CmpOp,
        /// Result.
        dst: BufSlice,
        /// Source.
        src: BufSlice,
        /// Coefficient of the partition.
        partition_step: i32,
        /// Coefficient of the element within the slice.
        free_step: i32,
        /// Constant term.
        base: i32,
        /// Value where the condition fails.
        fill: f32,
    },
}

/// The scalar operand of [`TileOp::Scalar`] and of the ACT's scale and bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TileScalar {
    /// One value for every element, already rounded to the IR literal's dtype.
    Imm(f32),
    /// One value per partition: a `len` 1 slice.
    Column(BufSlice),
}

impl TileScalar {
    /// The column slice, if this scalar is one.
    pub fn column(&self) -> Option<BufSlice> {
        match self {
            TileScalar::Imm(_) => None,
            TileScalar::Column(c) => Some(*c),
        }
    }

    fn column_mut(&mut self) -> Option<&mut BufSlice> {
        match self {
            TileScalar::Imm(_) => None,
            TileScalar::Column(c) => Some(c),
        }
    }

    fn text(&self, p: &TileProgram) -> String {
        match self {
            TileScalar::Imm(v) => format!("{v:?}"),
            TileScalar::Column(col) => slice_text(p, col),
        }
    }
}

impl TileOp {
    /// An ACT op with no scale, bias or row sum: `dst = func(src)`.
    pub fn activate(func: ActFunc, dst: BufSlice, src: BufSlice) -> TileOp {
        TileOp::Activate { func, dst, src, scale: TileScalar::Imm(1.0), bias: TileScalar::Imm(-0.0), accum: None }
    }
}

/// A lowered kernel: tile ops and the IR op they implement (for debug info).
#[derive(Debug, Clone, PartialEq)]
pub struct TileProgram {
    /// HBM tensors: parameters (inputs) then results (outputs).
    pub tensors: Vec<HbmTensor>,
    /// On-chip buffers.
    pub buffers: Vec<Buffer>,
    /// Operations in a valid sequential order, each with its debug-op index.
    pub ops: Vec<(TileOp, u32)>,
    /// Debug strings: the IR op each tile op implements.
    pub debug_ops: Vec<String>,
}

impl TileOp {
    /// The on-chip slices it reads and writes.
    pub fn slices(&self) -> (Vec<BufSlice>, Vec<BufSlice>) {
        match self {
            TileOp::Load { dst, .. } => (vec![], vec![*dst]),
            TileOp::Store { src, .. } => (vec![*src], vec![]),
            TileOp::HbmCopy { .. } => (vec![], vec![]),
            TileOp::Matmul { dst, stationary, moving, accumulate, .. } => {
                let mut r = vec![*stationary, *moving];
                if *accumulate {
                    r.push(*dst);
                }
                (r, vec![*dst])
            }
            TileOp::Copy { dst, src }
            | TileOp::Transpose { dst, src }
            | TileOp::Reduce { dst, src, .. }
            | TileOp::Select { dst, src, .. } => (vec![*src], vec![*dst]),
            TileOp::Scalar { dst, src, scalar, .. } => {
                (std::iter::once(*src).chain(scalar.column()).collect(), vec![*dst])
            }
            TileOp::Activate { dst, src, scale, bias, accum, .. } => (
                std::iter::once(*src).chain(scale.column()).chain(bias.column()).collect(),
                [*dst].into_iter().chain(*accum).collect(),
            ),
            TileOp::Binary { dst, a, b, .. } => (vec![*a, *b], vec![*dst]),
            TileOp::Memset { dst, .. } => (vec![], vec![*dst]),
        }
    }

    /// Renumbers the buffers and HBM tensors the op names (linking kernels).
    pub fn remap(&mut self, buf: impl Fn(BufferId) -> BufferId, tensor: impl Fn(TensorId) -> TensorId) {
        let mut slices: Vec<&mut BufSlice> = Vec::new();
        match self {
            TileOp::Load { dst, src, .. } => {
                src.tensor = tensor(src.tensor);
                slices.push(dst);
            }
            TileOp::Store { dst, src } => {
                dst.tensor = tensor(dst.tensor);
                slices.push(src);
            }
            TileOp::HbmCopy { dst, src } => {
                dst.tensor = tensor(dst.tensor);
                src.tensor = tensor(src.tensor);
            }
            TileOp::Matmul { dst, stationary, moving, .. } => slices.extend([dst, stationary, moving]),
            TileOp::Copy { dst, src }
            | TileOp::Transpose { dst, src }
            | TileOp::Reduce { dst, src, .. }
            | TileOp::Select { dst, src, .. } => slices.extend([dst, src]),
            TileOp::Scalar { dst, src, scalar, .. } => {
                slices.extend([dst, src]);
                slices.extend(scalar.column_mut());
            }
            TileOp::Memset { dst, .. } => slices.push(dst),
            TileOp::Activate { dst, src, scale, bias, accum, .. } => {
                slices.extend([dst, src]);
                slices.extend(scale.column_mut());
                slices.extend(bias.column_mut());
                slices.extend(accum.as_mut());
            }
            TileOp::Binary { dst, a, b, .. } => slices.extend([dst, a, b]),
        }
        for s in slices {
            s.buf = buf(s.buf);
        }
    }
}

impl TileProgram {
    /// Bytes of each buffer copy per partition.
    pub fn copy_bytes(&self, b: BufferId) -> u64 {
        let buf = &self.buffers[b];
        buf.free as u64 * buf.dtype.size_bytes() as u64
    }
}

fn slice_text(p: &TileProgram, s: &BufSlice) -> String {
    let b = &p.buffers[s.buf];
    let copy = if b.copies > 1 { format!("#{}", s.copy) } else { String::new() };
    format!("{}{copy}[0:{}, {}:{}]", b.name, s.parts, s.offset, s.offset + s.len)
}

fn hbm_text(p: &TileProgram, h: &HbmBox) -> String {
    let t = &p.tensors[h.tensor];
    format!("{}[@{} {}x{} stride {}]", t.name, h.start, h.rows, h.cols, h.row_stride)
}

impl fmt::Display for TileProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        for t in &self.tensors {
            let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(out, "tensor {}: {}[{}] {}", t.name, t.dtype, dims.join(", "), t.role.name());
        }
        for b in &self.buffers {
            let _ = writeln!(
                out,
                "buffer {}: {} {}[{} x {}] x{}",
                b.name,
                b.space.name(),
                b.dtype,
                b.parts,
                b.free,
                b.copies
            );
        }
        for (op, d) in &self.ops {
            let text = match op {
                TileOp::Load { dst, src, queue } => {
                    let on = queue.map_or(String::new(), |q| format!(" on dma{q}"));
                    format!("load {} <- {}{on}", slice_text(self, dst), hbm_text(self, src))
                }
                TileOp::Store { dst, src } => format!("store {} <- {}", hbm_text(self, dst), slice_text(self, src)),
                TileOp::HbmCopy { dst, src } => format!("copy {} <- {}", hbm_text(self, dst), hbm_text(self, src)),
                TileOp::Matmul { dst, stationary, moving, accumulate, transposed } => format!(
                    "matmul {} {} {}{} . {}",
                    slice_text(self, dst),
                    if *accumulate { "+=" } else { "=" },
                    slice_text(self, stationary),
                    if *transposed { "^T" } else { "" },
                    slice_text(self, moving)
                ),
                TileOp::Copy { dst, src } => format!("copy {} <- {}", slice_text(self, dst), slice_text(self, src)),
                TileOp::Transpose { dst, src } => {
                    format!("transpose {} <- {}^T", slice_text(self, dst), slice_text(self, src))
                }
                TileOp::Binary { op, dst, a, b } => format!(
                    "{} {} <- {}, {}",
                    op.name(),
                    slice_text(self, dst),
                    slice_text(self, a),
                    slice_text(self, b)
                ),
                TileOp::Scalar { op, dst, src, scalar, reverse } => {
                    let (s, per_row) = (scalar.text(self), if scalar.column().is_some() { " per row" } else { "" });
                    let (x, y) = if *reverse { (s, slice_text(self, src)) } else { (slice_text(self, src), s) };
                    format!("{} {} <- {x}, {y}{per_row}", op.name(), slice_text(self, dst))
                }
                TileOp::Activate { func, dst, src, scale, bias, accum } => {
                    let mut text =
                        format!("activate {} {} <- {}", func.name(), slice_text(self, dst), slice_text(self, src));
                    if *scale != TileScalar::Imm(1.0) {
                        text += &format!(" scale {}", scale.text(self));
                    }
                    if *bias != TileScalar::Imm(-0.0) {
                        text += &format!(" bias {}", bias.text(self));
                    }
                    if let Some(a) = accum {
                        text += &format!(" sum -> {}", slice_text(self, a));
                    }
                    text
                }
                TileOp::Memset { dst, value } => format!("memset {} <- {value:?}", slice_text(self, dst)),
                TileOp::Reduce { op, dst, src } => {
                    format!("reduce_{} {} <- {}", op.name(), slice_text(self, dst), slice_text(self, src))
                }
                TileOp::Select { cmp, dst, src, partition_step, free_step, base, fill } => format!(
                    "select {} <- {} where {partition_step}*p + {free_step}*i + {base} {} 0 else {fill:?}",
                    slice_text(self, dst),
                    slice_text(self, src),
                    match cmp {
                        jpu_isa::operand::CmpOp::Ge => ">=",
                        jpu_isa::operand::CmpOp::Gt => ">",
                        jpu_isa::operand::CmpOp::Le => "<=",
                        jpu_isa::operand::CmpOp::Lt => "<",
                        jpu_isa::operand::CmpOp::Eq => "==",
                        jpu_isa::operand::CmpOp::Ne => "!=",
                    }
                ),
            };
            let _ = writeln!(out, "{text}  ; {}", self.debug_ops[*d as usize]);
        }
        f.write_str(&out)
    }
}
