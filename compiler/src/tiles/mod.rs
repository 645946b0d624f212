//! The tile program: what kernels lower to and the backend places (`--emit tiles`).
//!
//! A [`TileProgram`] is target-shaped but not yet placed: HBM tensors, on-chip
//! buffers (with a number of copies for multi-buffering) and a list of tile
//! operations, each of which becomes one instruction. Tile ops name the bytes
//! they touch, so the backend derives every dependency (read after write, write
//! after read, write after write) from them; no kernel inserts synchronisation by
//! hand. The order of `ops` is a valid sequential execution; the backend may
//! overlap anything the dependencies allow.
//!
//! This module owns the vocabulary, the printed form, [`link`] (kernels' programs
//! into one) and [`TileProgram::validate`], which the driver runs after linking:
//! every buffer fits its memory, every slice and box lies inside its buffer copy
//! or tensor, every tensor is read only after it is written (inputs excepted), and
//! every output is written. The backend may then place and schedule without
//! checking again.

mod validate;

use std::fmt::{self, Write as _};

use jpu_isa::operand::{ActFunc, AluOp, ReduceOp, Space};
use jpu_isa::program::Role;
use jpu_isa::DType;

pub use validate::TileError;

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

/// The names the binary gives `tensors`, in order. An IR name that is a binary
/// identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 255 bytes) is kept; any other
/// (`%0.x`, or longer) has each `.` replaced by `_`, a `v` before a leading
/// digit, and is cut to 240 bytes; a name another tensor already has gets `_2`,
/// `_3`, ... The IR names stay in the binary's debug strings (the statements).
pub fn binary_names(tensors: &[HbmTensor]) -> Vec<String> {
    let valid = |n: &str| jpu_isa::program::is_identifier(n);
    let mut taken: std::collections::HashSet<String> =
        tensors.iter().filter(|t| valid(&t.name)).map(|t| t.name.clone()).collect();
    tensors
        .iter()
        .map(|t| {
            if valid(&t.name) {
                return t.name.clone();
            }
            let mut base: String = t.name.chars().map(|c| if c == '.' { '_' } else { c }).collect();
            if !base.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                base.insert(0, 'v');
            }
            base.truncate(240);
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base}_{n}");
                n += 1;
            }
            taken.insert(name.clone());
            name
        })
        .collect()
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
    /// The core whose SRAM or PSUM holds it (set by [`merge_cores`]).
    pub core: u32,
    /// A buffer of another core this one is placed at the same address as (a
    /// [`TileOp::Share`] writes every core's copy at one address).
    pub mirrors: Option<BufferId>,
}

impl Buffer {
    /// A buffer on core 0 ([`merge_cores`] moves a core's buffers to it).
    pub fn new(name: impl Into<String>, space: Space, dtype: DType, parts: u32, free: u32, copies: u32) -> Buffer {
        Buffer { name: name.into(), space, dtype, parts, free, copies, core: 0, mirrors: None }
    }
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
        /// The core whose DMA queue moves it (it touches no buffer to say so).
        core: u32,
    },
    /// SRAM -> the same bytes of other cores' SRAM (core-to-core DMA over the
    /// fabric; a multicast when several): `dst` holds one slice per core, each
    /// the same slice of a buffer that mirrors `src`'s. Runs on `src`'s core.
    Share {
        /// Destinations, one per core.
        dst: Vec<BufSlice>,
        /// Source.
        src: BufSlice,
        /// The DMA queue (`None`: the backend chooses).
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
    /// Indirect DMA: partition p of `dst` receives row `idx[p]` of `table` (a box of
    /// `rows` rows of `cols` elements, `row_stride` apart; valid indices `0..rows`).
    Gather {
        /// SRAM destination, one row per partition.
        dst: BufSlice,
        /// The i32 index column.
        idx: BufSlice,
        /// The table's rows (the box's `start` is row 0's first element).
        table: HbmBox,
    },
    /// `dst[p, i] = base + partition_step * p + free_step * i` (exact, then rounded
    /// into the dtype) on the VE.
    Iota {
        /// Result.
        dst: BufSlice,
        /// Value of the first element.
        base: i32,
        /// Added per partition.
        partition_step: i32,
        /// Added per element.
        free_step: i32,
    },
    /// `dst = src` where `cond` is nonzero (zero with `negate`), else `dst` kept,
    /// on the VE (selects by a tensor condition).
    CopyWhere {
        /// Result, read where the condition fails.
        dst: BufSlice,
        /// Values copied.
        src: BufSlice,
        /// Condition.
        cond: BufSlice,
        /// Copy where the condition is zero.
        negate: bool,
    },
    /// `dst = value` where `cond` is nonzero (zero with `negate`), else `dst` kept.
    FillWhere {
        /// Result, read where the condition fails.
        dst: BufSlice,
        /// Condition.
        cond: BufSlice,
        /// An immediate or a per-partition column.
        value: TileScalar,
        /// Fill where the condition is zero.
        negate: bool,
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

impl TileProgram {
    /// The core op `i` runs on: its buffers' (every op but an HBM-to-HBM copy
    /// has one; a copy names its core).
    pub fn op_core(&self, i: usize) -> u32 {
        if let TileOp::HbmCopy { core, .. } = self.ops[i].0 {
            return core;
        }
        let (reads, writes) = self.ops[i].0.slices();
        reads.iter().chain(&writes).next().map_or(0, |s| self.buffers[s.buf].core)
    }

    /// The cores the program uses (at least 1).
    pub fn cores(&self) -> u32 {
        let copies = self.ops.iter().filter_map(|(op, _)| match op {
            TileOp::HbmCopy { core, .. } => Some(core + 1),
            _ => None,
        });
        self.buffers.iter().map(|b| b.core + 1).chain(copies).max().unwrap_or(1)
    }
}

/// One kernel's per-core tile programs as one: part `c` runs on core `c`. The
/// parts are lowerings of one kernel (the same debug ops; tensors shared by
/// name, a part may add scratch of its own); their buffers are put on their
/// core and their ops follow one another.
pub fn merge_cores(mut parts: Vec<TileProgram>) -> TileProgram {
    let mut out = parts.remove(0);
    for (c, part) in parts.into_iter().enumerate() {
        let tensor_map: Vec<usize> = part
            .tensors
            .into_iter()
            .map(|t| match out.tensors.iter().position(|o| o.name == t.name) {
                Some(i) => i,
                None => {
                    out.tensors.push(t);
                    out.tensors.len() - 1
                }
            })
            .collect();
        let base = out.buffers.len();
        out.buffers.extend(part.buffers.into_iter().map(|b| Buffer {
            core: c as u32 + 1,
            mirrors: b.mirrors.map(|m| m + base),
            ..b
        }));
        out.ops.extend(part.ops.into_iter().map(|(mut op, d)| {
            op.remap(|b| b + base, |t| tensor_map[t]);
            if let TileOp::HbmCopy { core, .. } = &mut op {
                *core = c as u32 + 1;
            }
            (op, d)
        }));
    }
    out
}

impl TileOp {
    /// The on-chip slices it reads and writes.
    pub fn slices(&self) -> (Vec<BufSlice>, Vec<BufSlice>) {
        match self {
            TileOp::Load { dst, .. } => (vec![], vec![*dst]),
            TileOp::Gather { dst, idx, .. } => (vec![*idx], vec![*dst]),
            TileOp::Store { src, .. } => (vec![*src], vec![]),
            TileOp::Share { dst, src, .. } => (vec![*src], dst.clone()),
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
            TileOp::Memset { dst, .. } | TileOp::Iota { dst, .. } => (vec![], vec![*dst]),
            TileOp::CopyWhere { dst, src, cond, .. } => (vec![*src, *cond, *dst], vec![*dst]),
            TileOp::FillWhere { dst, cond, value, .. } => {
                ([*cond, *dst].into_iter().chain(value.column()).collect(), vec![*dst])
            }
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
            TileOp::Share { dst, src, .. } => {
                slices.push(src);
                slices.extend(dst.iter_mut());
            }
            TileOp::Gather { dst, idx, table } => {
                table.tensor = tensor(table.tensor);
                slices.extend([dst, idx]);
            }
            TileOp::HbmCopy { dst, src, .. } => {
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
            TileOp::Memset { dst, .. } | TileOp::Iota { dst, .. } => slices.push(dst),
            TileOp::Activate { dst, src, scale, bias, accum, .. } => {
                slices.extend([dst, src]);
                slices.extend(scale.column_mut());
                slices.extend(bias.column_mut());
                slices.extend(accum.as_mut());
            }
            TileOp::Binary { dst, a, b, .. } => slices.extend([dst, a, b]),
            TileOp::CopyWhere { dst, src, cond, .. } => slices.extend([dst, src, cond]),
            TileOp::FillWhere { dst, cond, value, .. } => {
                slices.extend([dst, cond]);
                slices.extend(value.column_mut());
            }
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

impl TileProgram {
    /// The printed form of tile op `i` (without its debug op).
    pub fn op_text(&self, i: usize) -> String {
        let (op, _) = &self.ops[i];
        match op {
            TileOp::Load { dst, src, queue } => {
                let on = queue.map_or(String::new(), |q| format!(" on dma{q}"));
                format!("load {} <- {}{on}", slice_text(self, dst), hbm_text(self, src))
            }
            TileOp::Store { dst, src } => format!("store {} <- {}", hbm_text(self, dst), slice_text(self, src)),
            TileOp::Share { dst, src, queue } => {
                let cores: Vec<String> = dst.iter().map(|d| self.buffers[d.buf].core.to_string()).collect();
                let from = self.buffers[src.buf].core;
                let on = if from > 0 { format!(" on core {from}") } else { String::new() };
                let queue = queue.map_or(String::new(), |q| format!(" on dma{q}"));
                format!("share {}{on} -> cores {}{queue}", slice_text(self, src), cores.join(", "))
            }
            TileOp::Gather { dst, idx, table } => {
                format!("gather {} <- {} rows {}", slice_text(self, dst), hbm_text(self, table), slice_text(self, idx))
            }
            TileOp::HbmCopy { dst, src, core: 0 } => format!("copy {} <- {}", hbm_text(self, dst), hbm_text(self, src)),
            TileOp::HbmCopy { dst, src, core } => {
                format!("copy {} <- {} on core {core}", hbm_text(self, dst), hbm_text(self, src))
            }
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
            TileOp::Binary { op, dst, a, b } => {
                format!("{} {} <- {}, {}", op.name(), slice_text(self, dst), slice_text(self, a), slice_text(self, b))
            }
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
            TileOp::Iota { dst, base, partition_step, free_step } => {
                format!("iota {} <- {base} + {partition_step}*p + {free_step}*i", slice_text(self, dst))
            }
            TileOp::CopyWhere { dst, src, cond, negate } => format!(
                "copy {} <- {} where {}{}",
                slice_text(self, dst),
                slice_text(self, src),
                if *negate { "not " } else { "" },
                slice_text(self, cond)
            ),
            TileOp::FillWhere { dst, cond, value, negate } => format!(
                "fill {} <- {} where {}{}",
                slice_text(self, dst),
                value.text(self),
                if *negate { "not " } else { "" },
                slice_text(self, cond)
            ),
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
        }
    }
}

impl fmt::Display for TileProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        for t in &self.tensors {
            let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(out, "tensor {}: {}[{}] {}", t.name, t.dtype, dims.join(", "), t.role.name());
        }
        for b in &self.buffers {
            let _ = write!(
                out,
                "buffer {}: {} {}[{} x {}] x{}",
                b.name,
                b.space.name(),
                b.dtype,
                b.parts,
                b.free,
                b.copies
            );
            let _ = if b.core > 0 { write!(out, " on core {}", b.core) } else { Ok(()) };
            let _ = match b.mirrors {
                Some(m) => writeln!(out, " at the address of core {}'s", self.buffers[m].core),
                None => writeln!(out),
            };
        }
        for (i, (_, d)) in self.ops.iter().enumerate() {
            let text = self.op_text(i);
            let _ = writeln!(out, "{text}  ; {}", self.debug_ops[*d as usize]);
        }
        f.write_str(&out)
    }
}

/// Links kernels' tile programs into one, in order: HBM tensors are shared by
/// name (`inputs` are the program's inputs, `outputs` its outputs, every other
/// tensor HBM scratch); buffers stay per kernel (the allocator lets kernels that
/// do not overlap in time share memory), prefixed with the kernel's name
/// (`names[k]`) when there are several.
pub fn link(inputs: &[&str], outputs: &[&str], names: &[String], parts: Vec<TileProgram>) -> TileProgram {
    let mut out = TileProgram { tensors: Vec::new(), buffers: Vec::new(), ops: Vec::new(), debug_ops: Vec::new() };
    let several = parts.len() > 1;
    let mut by_name: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (k, part) in parts.into_iter().enumerate() {
        let tensor_map: Vec<usize> = part
            .tensors
            .into_iter()
            .map(|mut t| {
                if let Some(i) = by_name.get(&t.name) {
                    return *i;
                }
                by_name.insert(t.name.clone(), out.tensors.len());
                t.role = if inputs.contains(&t.name.as_str()) {
                    Role::Input
                } else if outputs.contains(&t.name.as_str()) {
                    Role::Output
                } else {
                    Role::Scratch
                };
                out.tensors.push(t);
                out.tensors.len() - 1
            })
            .collect();
        let (buf_base, debug_base) = (out.buffers.len(), out.debug_ops.len() as u32);
        out.buffers.extend(part.buffers.into_iter().map(|mut b| {
            b.mirrors = b.mirrors.map(|m| m + buf_base);
            if several {
                let kernel = names.get(k).cloned().unwrap_or_else(|| format!("k{}", k + 1));
                b.name = format!("{kernel}.{}", b.name);
            }
            b
        }));
        out.debug_ops.extend(part.debug_ops);
        out.ops.extend(part.ops.into_iter().map(|(mut op, d)| {
            op.remap(|b| b + buf_base, |t| tensor_map[t]);
            (op, d + debug_base)
        }));
    }
    out
}
