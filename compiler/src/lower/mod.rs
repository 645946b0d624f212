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

pub mod gemm;
pub mod map;
pub mod transpose;

use std::fmt::{self, Write as _};

use jpu_isa::operand::Space;
use jpu_isa::operand::{ActFunc, AluOp};
use jpu_isa::program::Role;
use jpu_isa::DType;

use crate::tir::ir::{Func, Op, Operand, ValueId};
use gemm::{GemmProblem, Unsupported, SUPPORTED};
use map::MapProblem;
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
}

impl KernelProblem {
    /// Indices of the IR nodes the kernel computes.
    pub fn nodes(&self) -> &[usize] {
        match self {
            KernelProblem::Gemm(p) => &p.nodes,
            KernelProblem::Map(p) => &p.nodes,
            KernelProblem::Transpose(p) => std::slice::from_ref(&p.node),
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
    let mut kernels = Vec::new();
    for i in f.num_params..n {
        if fused[i] || !live[i] {
            continue;
        }
        let node = &f.nodes[i];
        let not_yet = |why: &str| Unsupported(format!("`%{} = {}` {why}: {SUPPORTED}", node.name, node.op.name()));
        let (kernel, out) = match &node.op {
            Op::Matmul { .. } => {
                let (p, out) = gemm::gemm_kernel(f, i, &uses, &in_hbm, fuse)?;
                (KernelProblem::Gemm(p), out)
            }
            Op::Transpose { perm } => {
                let r = perm.len();
                let swaps_last_two =
                    r >= 2 && perm[r - 2] == r - 1 && perm[r - 1] == r - 2 && (0..r - 2).all(|d| perm[d] == d);
                let [Operand::Value(x)] = node.operands.as_slice() else { return Err(not_yet("is malformed")) };
                if !swaps_last_two {
                    return Err(not_yet("permutes more than the last two dims, which is not supported yet"));
                }
                if !in_hbm[x.0 as usize] {
                    return Err(not_yet("reads a value that is not in HBM"));
                }
                let xn = f.node(*x);
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
            Op::Cast { .. } | Op::Binary(_) | Op::Unary(_) | Op::Gelu { .. } => {
                // The chain runs over the tensor operand with the result's shape.
                let Some(x) = node.operands.iter().find_map(|o| match o {
                    Operand::Value(v) if in_hbm[v.0 as usize] && f.node(*v).ty.shape == node.ty.shape => Some(*v),
                    _ => None,
                }) else {
                    return Err(not_yet("has no operand of the result's shape in HBM (broadcasting the main operand is not supported yet)"));
                };
                let xt = &f.node(x).ty;
                let c = gemm::chain(f, x, Some(i), xt, &uses, &in_hbm, fuse)?;
                if c.nodes.is_empty() {
                    return Err(not_yet("cannot run as an elementwise kernel yet"));
                }
                let p = MapProblem {
                    input: f.node(x).name.clone(),
                    input_shape: xt.shape.clone(),
                    shape: xt.shape.clone(),
                    dtype: gemm::chip(xt.dtype, "the operand")?,
                    steps: c.epilogue,
                    inputs: c.epilogue_inputs,
                    cast: c.cast,
                    output: f.node(c.last).name.clone(),
                    nodes: c.nodes,
                };
                (KernelProblem::Map(p), c.last.0 as usize)
            }
            Op::Reshape { .. } => {
                let [Operand::Value(x)] = node.operands.as_slice() else { return Err(not_yet("is malformed")) };
                if !in_hbm[x.0 as usize] {
                    return Err(not_yet("reads a value that is not in HBM"));
                }
                let xn = f.node(*x);
                let c = gemm::chain(f, ValueId(i as u32), None, &node.ty, &uses, &in_hbm, fuse)?;
                let mut nodes = vec![i];
                nodes.extend(c.nodes);
                let p = MapProblem {
                    input: xn.name.clone(),
                    input_shape: xn.ty.shape.clone(),
                    shape: node.ty.shape.clone(),
                    dtype: gemm::chip(xn.ty.dtype, "the reshaped tensor")?,
                    steps: c.epilogue,
                    inputs: c.epilogue_inputs,
                    cast: c.cast,
                    output: f.node(c.last).name.clone(),
                    nodes,
                };
                (KernelProblem::Map(p), c.last.0 as usize)
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
    /// `dst = func(src)` on the ACT engine.
    Activate {
        /// Function.
        func: ActFunc,
        /// Result.
        dst: BufSlice,
        /// Source.
        src: BufSlice,
    },
}

/// The scalar operand of [`TileOp::Scalar`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TileScalar {
    /// One value for every element, already rounded to the IR literal's dtype.
    Imm(f32),
    /// One value per partition: a `len` 1 slice.
    Column(BufSlice),
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
            TileOp::Matmul { dst, stationary, moving, .. } => slices.extend([dst, stationary, moving]),
            TileOp::Copy { dst, src }
            | TileOp::Transpose { dst, src }
            | TileOp::Scalar { dst, src, scalar: TileScalar::Imm(_), .. }
            | TileOp::Activate { dst, src, .. } => slices.extend([dst, src]),
            TileOp::Scalar { dst, src, scalar: TileScalar::Column(col), .. } => slices.extend([dst, src, col]),
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
                    let (s, per_row) = match scalar {
                        TileScalar::Imm(v) => (format!("{v:?}"), ""),
                        TileScalar::Column(col) => (slice_text(self, col), " per row"),
                    };
                    let (x, y) = if *reverse { (s, slice_text(self, src)) } else { (slice_text(self, src), s) };
                    format!("{} {} <- {x}, {y}{per_row}", op.name(), slice_text(self, dst))
                }
                TileOp::Activate { func, dst, src } => {
                    format!("activate {} {} <- {}", func.name(), slice_text(self, dst), slice_text(self, src))
                }
            };
            let _ = writeln!(out, "{text}  ; {}", self.debug_ops[*d as usize]);
        }
        f.write_str(&out)
    }
}
