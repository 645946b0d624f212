//! The backend: tile program -> placed, scheduled, synchronised chip program.
//!
//! 1. **Allocation**: each buffer copy gets SRAM bytes (the same range in every
//!    partition) or PSUM banks; buffers whose live ranges do not overlap share
//!    memory.
//! 2. **Instruction DAG** (petgraph): one instruction per tile op; an edge for every
//!    read-after-write, write-after-read and write-after-write between tile ops
//!    touching overlapping placed bytes (so reuse of memory is ordered too).
//! 3. **Engine assignment and list scheduling**: compute ops go to their engine; each
//!    DMA goes to the queue with the least data assigned so far. Instructions of
//!    neighbouring kernels are interleaved by list scheduling ([`order`]); every
//!    stream is the restriction of one topological order, so no stream can wait
//!    on a later one: the program cannot deadlock. Programs of moderate size
//!    are timed by the simulator and rescheduled with the measured transfer
//!    times; the fastest schedule (never slower than program order) is kept.
//! 4. **Semaphores**: every instruction signals its engine's counter; an instruction
//!    waits only for the latest instruction of each other engine it depends on and
//!    does not already know to be complete (knowledge propagates along waits, as
//!    vector clocks do). A second engine to wait for costs a zero-cycle `nop`.
//! 5. **Emission**: tensors in HBM, streams ending in `halt`, debug info, roofline.

use std::collections::HashMap;

use jpu_isa::inst::{Engine, Wait};
use jpu_isa::operand::{Column, Dim, DmaDim, DmaSide, DmaSpace, DmaTransfer, HbmRows, Imm, Scalar, Space, Tile};
use jpu_isa::program::{RooflineInputs, SemDecl, TensorDecl};
use jpu_isa::{Inst, Op, Program, Target};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::tiles::{BufSlice, BufferId, HbmBox, TensorId, TileOp, TileProgram, TileScalar};

pub mod order;

/// Why a tile program cannot be placed or emitted. The driver attributes each
/// to the kernel (and source statement) that owns the buffer or tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The buffers live at one time need more SRAM per partition than there is;
    /// `buffer` is the first whose placement ends past the limit.
    #[error("buffers need {needed} bytes per SRAM partition; {target} has {available}")]
    Sram {
        /// The first buffer past the limit.
        buffer: BufferId,
        /// Bytes per partition needed.
        needed: u64,
        /// Bytes per partition the target has.
        available: u64,
        /// The target's name.
        target: String,
    },
    /// The same for PSUM banks.
    #[error("buffers need {needed} PSUM banks; {target} has {available}")]
    Psum {
        /// The first buffer past the limit.
        buffer: BufferId,
        /// Banks needed.
        needed: u64,
        /// Banks the target has.
        available: u64,
        /// The target's name.
        target: String,
    },
    /// The tensors need more HBM than the target has; `largest` is the largest.
    #[error("tensors need {needed} bytes of HBM; {target} has {available}")]
    Hbm {
        /// The largest tensor.
        largest: TensorId,
        /// Bytes needed.
        needed: u64,
        /// Bytes the target has.
        available: u64,
        /// The target's name.
        target: String,
    },
    /// A program on `cores` cores needs a semaphore per engine and a mailbox
    /// per core on every core.
    #[error(
        "{cores} cores need {needed} semaphores per core (one per engine, one per core); {target} has {available}"
    )]
    Semaphores {
        /// Cores the program uses.
        cores: usize,
        /// Semaphores per core needed.
        needed: usize,
        /// Semaphores per core the target has.
        available: usize,
        /// The target's name.
        target: String,
    },
    /// A bug: the backend produced something the ISA rejects.
    #[error("{0}")]
    Internal(String),
}

/// Where each buffer copy lives: byte offset within each partition.
pub struct Allocation {
    offsets: Vec<Vec<u32>>,
}

impl Allocation {
    /// Byte offset (within each partition of its memory) of a buffer copy.
    pub fn offset(&self, buf: BufferId, copy: u32) -> u32 {
        self.offsets[buf][copy as usize]
    }
}

/// The first and last tile op touching each buffer (`None`: never touched).
fn live_ranges(tp: &TileProgram) -> Vec<Option<(usize, usize)>> {
    let mut live: Vec<Option<(usize, usize)>> = vec![None; tp.buffers.len()];
    for (i, (op, _)) in tp.ops.iter().enumerate() {
        let (reads, writes) = op.slices();
        for s in reads.iter().chain(&writes) {
            let r = live[s.buf].get_or_insert((i, i));
            r.1 = i;
        }
    }
    live
}

/// Places every buffer: all copies of a buffer in one block (SRAM bytes, the same
/// range in every partition; PSUM blocks that never cross a bank), first fit
/// among the buffers whose live ranges (first to last tile op touching them)
/// overlap its own. Buffers of kernels fewer than [`order::WINDOW`] apart
/// (`kernel_of` gives each tile op's kernel) share no memory, so their
/// instructions may be interleaved without one kernel's reuse of memory
/// waiting for another's: each space (SRAM, PSUM) takes the widest such
/// window that fits, and with none, kernels that run one after another share
/// memory.
pub fn allocate(tp: &TileProgram, kernel_of: &[usize], t: &Target) -> Result<Allocation, BackendError> {
    let exact = live_ranges(tp);
    let kernels = kernel_of.iter().max().map_or(0, |k| k + 1);
    if kernels <= 1 || kernel_of.len() != tp.ops.len() {
        return place_buffers(tp, t, &exact);
    }
    // Each kernel's first and last op.
    let mut span = vec![(usize::MAX, 0usize); kernels];
    for (i, &k) in kernel_of.iter().enumerate() {
        span[k] = (span[k].0.min(i), span[k].1.max(i));
    }
    // Live ranges with each buffer of space `space` live on to the end of the
    // `w`-th kernel after its own: kernels up to `w` apart share no memory.
    let widened = |space: Space, w: usize| -> Vec<Option<(usize, usize)>> {
        (0..tp.buffers.len())
            .map(|b| match exact[b] {
                Some((first, last)) if w > 0 && tp.buffers[b].space == space => {
                    Some((first, span[(kernel_of[last] + w).min(kernels - 1)].1))
                }
                r => r,
            })
            .collect()
    };
    let fits = |space: Space, live: &[Option<(usize, usize)>]| match place_buffers(tp, t, live) {
        Err(BackendError::Sram { .. }) => space != Space::Sram,
        Err(BackendError::Psum { .. }) => space != Space::Psum,
        _ => true,
    };
    // Wider windows need more memory: the widest that fits, by bisection.
    let window = |space| {
        let (mut lo, mut hi) = (0, order::WINDOW - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(space, &widened(space, mid)) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    };
    let (sram_w, psum_w) = (window(Space::Sram), window(Space::Psum));
    let (sram, psum) = (widened(Space::Sram, sram_w), widened(Space::Psum, psum_w));
    let live: Vec<_> =
        (0..tp.buffers.len()).map(|b| if tp.buffers[b].space == Space::Sram { sram[b] } else { psum[b] }).collect();
    place_buffers(tp, t, &live)
}

/// Places every buffer over the given live ranges (see [`allocate`]).
fn place_buffers(tp: &TileProgram, t: &Target, live: &[Option<(usize, usize)>]) -> Result<Allocation, BackendError> {
    let bank_bytes = t.psum_bank_bytes() as u64;
    // (memory: space and core, live range, start, end) of every placed block.
    type Block = ((Space, u32), (usize, usize), u64, u64);
    // A buffer to place with its memory and live range.
    type Member = (BufferId, (Space, u32), (usize, usize));
    let mut placed: Vec<Block> = Vec::new();
    let mut offsets = vec![Vec::new(); tp.buffers.len()];
    let (mut sram_high, mut psum_high) = (0u64, 0u64);
    let (sram_cap, psum_cap) = (t.sram.partition_bytes as u64, t.psum.banks.unwrap_or(1) as u64 * bank_bytes);
    let (mut sram_over, mut psum_over) = (None, None);
    // The earliest start of any live range from buffer b on: a placed block that
    // ends before it can overlap no later buffer, so it leaves the search (this
    // keeps long programs linear; placement is unchanged).
    let mut earliest_from = vec![usize::MAX; tp.buffers.len() + 1];
    for b in (0..tp.buffers.len()).rev() {
        earliest_from[b] = earliest_from[b + 1].min(live[b].map_or(usize::MAX, |r| r.0));
    }
    let mirrors = mirror_groups(tp, live);
    for b in 0..tp.buffers.len() {
        placed.retain(|(_, r, _, _)| r.1 >= earliest_from[b]);
        let buf = &tp.buffers[b];
        if placed_with(tp, live, b).is_some() {
            continue;
        }
        let bytes = tp.copy_bytes(b);
        let (stride, align) = copy_stride_and_alignment(buf.space, bytes, bank_bytes);
        let size = stride * buf.copies as u64;
        // A buffer no op touches takes no memory.
        let Some(range) = live[b] else {
            offsets[b] = vec![0; buf.copies as usize];
            continue;
        };
        // Each core has its own memories; a buffer and its mirrors take the
        // first range free in each of theirs.
        let group: Vec<Member> = std::iter::once((b, (buf.space, buf.core), range))
            .chain(mirrors[b].iter().filter_map(|&m| Some((m, (buf.space, tp.buffers[m].core), live[m]?))))
            .collect();
        let busy = placed
            .iter()
            .filter(|(m, r, _, _)| group.iter().any(|(_, gm, gr)| m == gm && r.0 <= gr.1 && gr.0 <= r.1))
            .map(|&(_, _, s, e)| (s, e))
            .collect();
        let start = first_free(busy, size, align);
        for &(g, memory, range) in &group {
            placed.push((memory, range, start, start + size));
            offsets[g] = (0..buf.copies as u64).map(|c| (start + c * stride) as u32).collect();
        }
        match buf.space {
            Space::Sram => sram_high = sram_high.max(start + bytes + (buf.copies as u64 - 1) * stride),
            Space::Psum => psum_high = psum_high.max(start + size),
        }
        if sram_high > sram_cap {
            sram_over.get_or_insert(b);
        }
        if psum_high > psum_cap {
            psum_over.get_or_insert(b);
        }
    }
    let target = t.name.clone();
    if let Some(buffer) = sram_over {
        return Err(BackendError::Sram { buffer, needed: sram_high, available: sram_cap, target });
    }
    if let Some(buffer) = psum_over {
        let available = t.psum.banks.unwrap_or(1) as u64;
        return Err(BackendError::Psum { buffer, needed: psum_high.div_ceil(bank_bytes), available, target });
    }
    Ok(Allocation { offsets })
}

/// The earlier buffer `b` is placed with: the one it mirrors on another core
/// (a multicast writes at the address it reads from), when both are live.
fn placed_with(tp: &TileProgram, live: &[Option<(usize, usize)>], b: BufferId) -> Option<BufferId> {
    tp.buffers[b].mirrors.filter(|&m| m < b && live[b].is_some() && live[m].is_some())
}

/// For each buffer, the buffers placed with it ([`placed_with`]).
fn mirror_groups(tp: &TileProgram, live: &[Option<(usize, usize)>]) -> Vec<Vec<BufferId>> {
    let mut mirrors: Vec<Vec<BufferId>> = vec![Vec::new(); tp.buffers.len()];
    for b in 0..tp.buffers.len() {
        if let Some(m) = placed_with(tp, live, b) {
            mirrors[m].push(b);
        }
    }
    mirrors
}

/// The stride between a buffer's copies of `bytes` each, and their alignment.
fn copy_stride_and_alignment(space: Space, bytes: u64, bank_bytes: u64) -> (u64, u64) {
    match space {
        Space::Sram => (bytes.div_ceil(64) * 64, 64),
        // A PE result must not cross a bank: a copy up to a bank takes a
        // power-of-two block aligned to its size (so small accumulators share
        // a bank); a wider copy, written by one matmul per bank, whole banks.
        Space::Psum if bytes <= bank_bytes => {
            let block = bytes.next_power_of_two().max(64);
            (block, block)
        }
        Space::Psum => (bytes.div_ceil(bank_bytes) * bank_bytes, bank_bytes),
    }
}

/// The lowest `align`-aligned start of `size` bytes clear of the `busy` ranges.
fn first_free(mut busy: Vec<(u64, u64)>, size: u64, align: u64) -> u64 {
    busy.sort_unstable();
    let mut start = 0u64;
    for (s, e) in busy {
        if start + size <= s {
            break;
        }
        start = start.max(e.div_ceil(align) * align);
    }
    start
}

/// Bytes a tile op touches, for dependencies: on-chip ranges are placed byte
/// ranges within partitions `0..parts` of SRAM or PSUM, so buffers sharing memory
/// are ordered like any other access.
#[derive(Debug, Clone, Copy)]
enum Region {
    OnChip {
        core: u32,
        psum: bool,
        parts: u32,
        start: u64,
        end: u64,
    },
    /// Elements `start..end` of a tensor; with `rect`, only the rectangle
    /// `(row stride, first row, rows, first column, columns)` of them (a box
    /// whose rows do not wrap), so boxes side by side (two cores' column
    /// panels) do not overlap.
    Hbm {
        tensor: usize,
        start: u64,
        end: u64,
        rect: Option<[u64; 5]>,
    },
}

fn overlaps(a: &Region, b: &Region) -> bool {
    match (a, b) {
        (
            Region::OnChip { core: c1, psum: m1, start: s1, end: e1, .. },
            Region::OnChip { core: c2, psum: m2, start: s2, end: e2, .. },
        ) => {
            // Every slice starts at partition 0, so partition ranges always meet.
            c1 == c2 && m1 == m2 && s1 < e2 && s2 < e1
        }
        (
            Region::Hbm { tensor: t1, start: s1, end: e1, rect: r1 },
            Region::Hbm { tensor: t2, start: s2, end: e2, rect: r2 },
        ) => {
            let meet = |a0: u64, an: u64, b0: u64, bn: u64| a0 < b0 + bn && b0 < a0 + an;
            let apart = match (r1, r2) {
                (Some([w1, y1, h1, x1, c1]), Some([w2, y2, h2, x2, c2])) if w1 == w2 => {
                    !meet(*y1, *h1, *y2, *h2) || !meet(*x1, *c1, *x2, *c2)
                }
                _ => false,
            };
            t1 == t2 && s1 < e2 && s2 < e1 && !apart
        }
        _ => false,
    }
}

fn on_chip(tp: &TileProgram, alloc: &Allocation, s: &BufSlice) -> Region {
    let b = &tp.buffers[s.buf];
    let size = b.dtype.size_bytes() as u64;
    let start = alloc.offset(s.buf, s.copy) as u64 + s.offset as u64 * size;
    Region::OnChip {
        core: b.core,
        psum: b.space == Space::Psum,
        parts: s.parts,
        start,
        end: start + s.len as u64 * size,
    }
}

fn hbm(h: &HbmBox) -> Region {
    let (w, cols) = (h.row_stride, h.cols as u64);
    let rect = (w > 0 && h.start % w + cols <= w).then(|| [w, h.start / w, h.rows as u64, h.start % w, cols]);
    Region::Hbm { tensor: h.tensor, start: h.start, end: h.start + (h.rows as u64 - 1) * h.row_stride + cols, rect }
}

/// (reads, writes) of a tile op.
fn accesses(tp: &TileProgram, alloc: &Allocation, op: &TileOp) -> (Vec<Region>, Vec<Region>) {
    let (r, w) = op.slices();
    let mut reads: Vec<Region> = r.iter().map(|s| on_chip(tp, alloc, s)).collect();
    let mut writes: Vec<Region> = w.iter().map(|s| on_chip(tp, alloc, s)).collect();
    match op {
        TileOp::Load { src, .. } => reads.push(hbm(src)),
        TileOp::Store { dst, .. } => writes.push(hbm(dst)),
        TileOp::HbmCopy { dst, src, .. } => {
            reads.push(hbm(src));
            writes.push(hbm(dst));
        }
        // Any row may be read: the whole table.
        TileOp::Gather { table, .. } => reads.push(hbm(table)),
        _ => {}
    }
    (reads, writes)
}

/// Bytes per bucket of the dependency index: an access is filed under every
/// bucket its range meets, so a lookup only scans accesses nearby.
const BUCKET_BYTES: u64 = 1024;

fn buckets(r: &Region) -> impl Iterator<Item = (u64, u64)> {
    // HBM boxes are strided and span far, so each tensor is one bucket.
    let (space, first, last) = match *r {
        Region::OnChip { core, psum, start, end, .. } => {
            (2 * core as u64 + psum as u64, start / BUCKET_BYTES, (end.max(start + 1) - 1) / BUCKET_BYTES)
        }
        Region::Hbm { tensor, .. } => ((1 << 32) + tensor as u64, 0, 0),
    };
    (first..=last).map(move |b| (space, b))
}

/// The instruction DAG: nodes are tile-op indices, edges point from the earlier op.
pub fn dependencies(tp: &TileProgram, alloc: &Allocation) -> DiGraph<usize, ()> {
    let mut g = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..tp.ops.len()).map(|i| g.add_node(i)).collect();
    // Per bucket, the reads and the writes whose bytes have not all been
    // overwritten since (kept apart: a read only looks for writes, so reading an
    // input many times costs nothing). Each access keeps the byte ranges no
    // later write has covered; once they are gone, every later access of those
    // bytes depends on the covering writes, which depend on it, so it is dropped.
    struct Access {
        region: Region,
        op: usize,
        uncovered: Vec<(u64, u64)>,
    }
    let mut live: Vec<Access> = Vec::new();
    let mut index: HashMap<(u64, u64), [Vec<usize>; 2]> = HashMap::new();
    for (i, (op, _)) in tp.ops.iter().enumerate() {
        let (reads, writes) = accesses(tp, alloc, op);
        let mut deps: Vec<usize> = Vec::new();
        for (r, is_write) in reads.iter().map(|r| (r, false)).chain(writes.iter().map(|w| (w, true))) {
            for key in buckets(r) {
                let Some([earlier_reads, earlier_writes]) = index.get(&key) else { continue };
                // Reads wait for writes; writes wait for every access.
                let earlier_reads = if is_write { &earlier_reads[..] } else { &[] };
                for &j in earlier_reads.iter().chain(earlier_writes) {
                    // Retired in another bucket: later writes stand in for it.
                    if !live[j].uncovered.is_empty() && overlaps(&live[j].region, r) {
                        deps.push(live[j].op);
                    }
                }
            }
        }
        deps.sort_unstable();
        deps.dedup();
        for d in deps {
            if d != i {
                g.add_edge(nodes[d], nodes[i], ());
            }
        }
        for w in &writes {
            for key in buckets(w) {
                let Some(lists) = index.get_mut(&key) else { continue };
                for list in lists.iter_mut() {
                    list.retain(|&j| {
                        let a = &mut live[j];
                        if let Some((s, e)) = covered_range(w, &a.region) {
                            a.uncovered = a
                                .uncovered
                                .iter()
                                .flat_map(|&(us, ue)| [(us, ue.min(s)), (us.max(e), ue)])
                                .filter(|(us, ue)| us < ue)
                                .collect();
                        }
                        !a.uncovered.is_empty()
                    });
                }
            }
        }
        for (r, write) in reads.iter().map(|r| (r, false)).chain(writes.iter().map(|w| (w, true))) {
            let uncovered = match *r {
                Region::OnChip { start, end, .. } | Region::Hbm { start, end, .. } => vec![(start, end)],
            };
            live.push(Access { region: *r, op: i, uncovered });
            let entry = live.len() - 1;
            for key in buckets(r) {
                index.entry(key).or_default()[usize::from(write)].push(entry);
            }
        }
    }
    g
}

/// The byte range a write `w` overwrites of region `b`, when it overwrites all
/// of b's partitions in the same memory (HBM writes never retire accesses: their
/// boxes are strided).
fn covered_range(w: &Region, b: &Region) -> Option<(u64, u64)> {
    match (w, b) {
        (
            Region::OnChip { core: c1, psum: m1, parts: p1, start: s1, end: e1 },
            Region::OnChip { core: c2, psum: m2, parts: p2, start: s2, end: e2 },
        ) if c1 == c2 && m1 == m2 && p1 >= p2 && s1 < e2 && s2 < e1 => Some((*s1, *e1)),
        _ => None,
    }
}

/// Per lane (engine `e` of core `c`: lane `c * engines per core + e`), per
/// instruction of its stream, the tile op it implements (`None` for the final
/// `halt` and for a message to another core).
pub type Origins = Vec<Vec<Option<usize>>>;

/// A scheduled program plus what the listings show.
pub struct Scheduled {
    /// The chip program.
    pub program: Program,
    /// For each lane, the tile op each instruction of its stream implements (a
    /// `nop` carrying an extra wait counts for the op after it; the final `halt`
    /// and messages to other cores for none).
    pub origins: Origins,
}

fn tile(tp: &TileProgram, alloc: &Allocation, s: &BufSlice) -> Tile {
    let b = &tp.buffers[s.buf];
    let size = b.dtype.size_bytes();
    let offset = alloc.offset(s.buf, s.copy) + s.offset * size;
    Tile::with_dims(b.space, b.dtype, 0, s.parts as u16, offset, &[Dim { count: s.len as u16, stride: 1 }])
}

fn column(tp: &TileProgram, alloc: &Allocation, s: &BufSlice) -> Column {
    let c = tile(tp, alloc, s);
    Column { space: c.space, dtype: c.dtype, offset: c.offset }
}

fn scalar_operand(tp: &TileProgram, alloc: &Allocation, s: &TileScalar) -> Scalar {
    match s {
        TileScalar::Imm(v) => Scalar::Imm(Imm(*v)),
        TileScalar::Column(col) => Scalar::Col(column(tp, alloc, col)),
    }
}

fn sram_side(tp: &TileProgram, alloc: &Allocation, s: &BufSlice, t: &Target) -> DmaSide {
    let b = &tp.buffers[s.buf];
    let size = b.dtype.size_bytes() as u64;
    let offset = alloc.offset(s.buf, s.copy) as u64 + s.offset as u64 * size;
    DmaSide::new(
        DmaSpace::Sram,
        offset,
        &[
            DmaDim { count: s.parts, stride: t.sram.partition_bytes as i64 },
            DmaDim { count: s.len, stride: size as i64 },
        ],
    )
}

fn hbm_side(h: &HbmBox, base: u64, size: u64) -> DmaSide {
    DmaSide::new(
        DmaSpace::Hbm,
        base + h.start * size,
        &[
            DmaDim { count: h.rows, stride: (h.row_stride * size) as i64 },
            DmaDim { count: h.cols, stride: size as i64 },
        ],
    )
}

/// Places, schedules, synchronises and emits a tile program.
pub fn compile(
    tp: &TileProgram,
    kernel_of: &[usize],
    t: &Target,
    roofline: RooflineInputs,
) -> Result<Scheduled, BackendError> {
    let alloc = allocate(tp, kernel_of, t)?;
    let tensors = place_tensors(tp, t)?;
    let op_core: Vec<usize> = (0..tp.ops.len()).map(|i| tp.op_core(i) as usize).collect();
    let insts = select_instructions(tp, t, &alloc, &tensors, &op_core)?;
    let dag = dependencies(tp, &alloc);
    let lanes = Lanes::new(tp, &insts, &op_core, t)?;
    let emit = |order: &[usize]| {
        let waits = synchronise(&lanes, order, &dag);
        let (cores, origins) = streams(&insts, &lanes, order, &waits);
        let mut program = Program::new(t);
        program.tensors = tensors.clone();
        program.semaphores = lanes.semaphores(&cores);
        program.debug_ops = tp.debug_ops.clone();
        program.cores = cores;
        program.roofline = Some(roofline);
        program.canonicalize_debug_ops();
        program.validate(t).map_err(|e| BackendError::Internal(format!("the emitted program is invalid: {e}")))?;
        Ok(Scheduled { program, origins })
    };
    let estimated = order::interleave(&insts, &lanes.lane, &dag, kernel_of, t, None, false);
    let first = emit(&estimated)?;
    if estimated.iter().enumerate().all(|(k, &i)| k == i) || insts.len() > REFINE_LIMIT {
        return Ok(first);
    }
    refine(first, &insts, &lanes, &dag, kernel_of, t, emit)
}

/// Where each instruction runs, across cores: lane `core * engines + engine`.
/// Semaphores: each engine's counter has its engine's index on every core; a
/// core's messages from core `a` (remote signals, see [`streams`]) count in
/// semaphore `engines + a`.
struct Lanes {
    /// Each instruction's lane.
    lane: Vec<usize>,
    /// Engines per core.
    engines: usize,
    /// Cores the program uses.
    cores: usize,
}

impl Lanes {
    /// The lanes of `insts`, each on the core `op_core` gives.
    fn new(
        tp: &TileProgram,
        insts: &[(Engine, Op, u32)],
        op_core: &[usize],
        t: &Target,
    ) -> Result<Lanes, BackendError> {
        let engines = t.engines_per_core() as usize;
        let cores = tp.cores() as usize;
        if cores > 1 && engines + cores > t.sync.semaphores as usize {
            let (needed, available, target) = (engines + cores, t.sync.semaphores as usize, t.name.clone());
            return Err(BackendError::Semaphores { cores, needed, available, target });
        }
        let lane = insts.iter().zip(op_core).map(|((e, _, _), c)| c * engines + e.0 as usize);
        Ok(Lanes { lane: lane.collect(), engines, cores })
    }

    fn core(&self, i: usize) -> usize {
        self.lane[i] / self.engines
    }

    /// The lane that sends core `core`'s messages: its last DMA queue (where
    /// stores, the usual producers of another core's data, already are).
    fn sender(&self, core: usize) -> usize {
        core * self.engines + self.engines - 1
    }

    fn mailbox(&self, from: usize) -> u8 {
        (self.engines + from) as u8
    }

    /// Names for the semaphores the streams use.
    fn semaphores(&self, cores: &[Vec<Vec<Inst>>]) -> Vec<SemDecl> {
        let used = |e: usize| cores.iter().any(|c| !c[e].is_empty());
        let mut out: Vec<SemDecl> = (0..self.engines)
            .filter(|&e| used(e))
            .map(|e| SemDecl { id: e as u8, name: format!("{}_done", Engine(e as u8).name()) })
            .collect();
        if self.cores > 1 {
            out.extend((0..self.cores).map(|a| SemDecl { id: self.mailbox(a), name: format!("from_core{a}") }));
        }
        out
    }
}

/// Programs of at most this many instructions are scheduled again with the
/// transfer times a timing simulation measured (larger ones keep the estimate:
/// the simulation would dominate their compile time).
const REFINE_LIMIT: usize = 40_000;

/// Rounds of scheduling with measured transfer times.
const REFINE_ROUNDS: usize = 3;

/// Schedules again with each transfer's data-phase time as simulated under the
/// best order so far (bandwidth shared as it really was), and keeps the fastest
/// of: the estimated orders (ties to program order, or critical path first),
/// the refined ones, and the tile program's own order. The simulator is
/// deterministic, so the choice (and the binary) is too.
fn refine(
    first: Scheduled,
    insts: &[(Engine, Op, u32)],
    lanes: &Lanes,
    dag: &DiGraph<usize, ()>,
    kernel_of: &[usize],
    t: &Target,
    emit: impl Fn(&[usize]) -> Result<Scheduled, BackendError>,
) -> Result<Scheduled, BackendError> {
    let time = |s: &Scheduled| simulate_timing(s, insts.len(), t);
    let Some((mut best_cycles, mut measured)) = time(&first) else { return Ok(first) };
    let mut best = first;
    let mut critical_first = false;
    let in_order: Vec<usize> = (0..insts.len()).collect();
    let critical = order::interleave(insts, &lanes.lane, dag, kernel_of, t, None, true);
    for (candidate, critical) in [(in_order, false), (critical, true)] {
        let candidate = emit(&candidate)?;
        if let Some((c, m)) = time(&candidate).filter(|(c, _)| *c < best_cycles) {
            (best, best_cycles, measured, critical_first) = (candidate, c, m, critical);
        }
    }
    for _ in 0..REFINE_ROUNDS {
        let order = order::interleave(insts, &lanes.lane, dag, kernel_of, t, Some(&measured), critical_first);
        let candidate = emit(&order)?;
        match time(&candidate) {
            Some((c, m)) if c < best_cycles => (best, best_cycles, measured) = (candidate, c, m),
            _ => break,
        }
    }
    Ok(best)
}

/// The cycles of a timing-only run of `s`, and each transfer's data-phase
/// cycles by tile op (`None` if the run faults, which validation rules out).
fn simulate_timing(s: &Scheduled, ops: usize, t: &Target) -> Option<(u64, Vec<u64>)> {
    let opts = jpu_runtime::RunOptions { timing_only: true, trace: true, ..Default::default() };
    let out = jpu_runtime::run(&s.program, t, &[], &opts).ok()?;
    let mut data = vec![0u64; ops];
    let engines = t.engines_per_core() as usize;
    for slice in &out.trace {
        let lane = slice.inst.core * engines + slice.inst.engine.0 as usize;
        let origin = s.origins.get(lane).and_then(|e| e.get(slice.inst.index)).copied();
        if let (Some(Some(op)), Some(_)) = (origin, slice.issue) {
            data[op] = data[op].max(slice.end.saturating_sub(slice.start));
        }
    }
    Some((out.report.cycles, data))
}

/// HBM layout: tensors one after another, 4 KiB aligned.
fn place_tensors(tp: &TileProgram, t: &Target) -> Result<Vec<TensorDecl>, BackendError> {
    let mut addr = 0u64;
    let mut tensors = Vec::new();
    for (ht, name) in tp.tensors.iter().zip(crate::tiles::binary_names(&tp.tensors)) {
        let size = ht.shape.iter().fold(ht.dtype.size_bytes() as u64, |a, &d| a.saturating_mul(d));
        tensors.push(TensorDecl {
            name,
            dtype: ht.dtype,
            shape: ht.shape.clone(),
            addr,
            role: ht.role,
            data: Vec::new(),
        });
        addr = addr.saturating_add(size).div_ceil(4096).saturating_mul(4096);
    }
    if addr > t.hbm.size_bytes {
        let elems = |i: &usize| tp.tensors[*i].shape.iter().fold(1u64, |a, &d| a.saturating_mul(d));
        let largest = (0..tp.tensors.len()).max_by_key(elems).unwrap_or(0);
        let target = t.name.clone();
        return Err(BackendError::Hbm { largest, needed: addr, available: t.hbm.size_bytes, target });
    }
    Ok(tensors)
}

/// One instruction per tile op, on its engine; each DMA on a queue of its core
/// (`op_core`) chosen by list scheduling: the least-loaded (by bytes charged). Stores wait for
/// compute, so with two or more queues they get the last one to themselves: a
/// prefetch never waits behind a store in an in-order queue.
fn select_instructions(
    tp: &TileProgram,
    t: &Target,
    alloc: &Allocation,
    tensors: &[TensorDecl],
    op_core: &[usize],
) -> Result<Vec<(Engine, Op, u32)>, BackendError> {
    let queues = t.dma.queues as usize;
    let mut queue_bytes = vec![vec![0u64; queues]; tp.cores() as usize];
    let mut insts = Vec::with_capacity(tp.ops.len());
    for ((op, debug), &core) in tp.ops.iter().zip(op_core) {
        let queue_bytes = &mut queue_bytes[core];
        let (engine, inst_op) = instruction(tp, t, alloc, tensors, op);
        let engine = if inst_op.is_dma() {
            let candidates: Vec<usize> = match (queues, matches!(op, TileOp::Store { .. })) {
                (1, _) => vec![0],
                (_, true) => vec![queues - 1],
                (_, false) => (0..queues - 1).collect(),
            };
            let assigned = match op {
                TileOp::Load { queue: Some(q), .. } | TileOp::Share { queue: Some(q), .. } => Some(*q as usize),
                _ => None,
            };
            if let Some(q) = assigned.filter(|&q| q >= queues) {
                return Err(BackendError::Internal(format!(
                    "a load is assigned DMA queue {q}; {} has {queues}",
                    t.name
                )));
            }
            let q = assigned
                .unwrap_or_else(|| candidates.iter().copied().min_by_key(|&q| (queue_bytes[q], q)).unwrap_or(0));
            queue_bytes[q] += jpu_isa::cost::transfer_bytes(&inst_op, t).1;
            Engine::dma(q as u8)
        } else {
            engine
        };
        insts.push((engine, inst_op, *debug));
    }
    Ok(insts)
}

/// The instruction of one tile op, and its engine (DMA: queue 0 until placed).
fn instruction(tp: &TileProgram, t: &Target, alloc: &Allocation, tensors: &[TensorDecl], op: &TileOp) -> (Engine, Op) {
    match op {
        TileOp::Gather { .. }
        | TileOp::Load { .. }
        | TileOp::Share { .. }
        | TileOp::Store { .. }
        | TileOp::HbmCopy { .. } => (Engine::dma(0), transfer(tp, t, alloc, tensors, op)),
        TileOp::Matmul { dst, stationary, moving, accumulate, transposed } => (
            Engine::PE,
            Op::Matmul {
                dst: tile(tp, alloc, dst),
                stationary: tile(tp, alloc, stationary),
                moving: tile(tp, alloc, moving),
                accumulate: *accumulate,
                transposed: *transposed,
            },
        ),
        TileOp::Copy { dst, src } => (Engine::VE, Op::Copy { dst: tile(tp, alloc, dst), src: tile(tp, alloc, src) }),
        TileOp::Transpose { dst, src } => {
            (Engine::PE, Op::Transpose { dst: tile(tp, alloc, dst), src: tile(tp, alloc, src) })
        }
        TileOp::Binary { op, dst, a, b } => (
            Engine::VE,
            Op::TensorTensor { op: *op, dst: tile(tp, alloc, dst), a: tile(tp, alloc, a), b: tile(tp, alloc, b) },
        ),
        TileOp::Scalar { op, dst, src, scalar, reverse } => {
            let scalar = scalar_operand(tp, alloc, scalar);
            let (dst, src) = (tile(tp, alloc, dst), tile(tp, alloc, src));
            (Engine::VE, Op::TensorScalar { op: *op, reverse: *reverse, dst, src, scalar })
        }
        TileOp::Activate { func, dst, src, scale, bias, accum } => (
            Engine::ACT,
            Op::Activate {
                func: *func,
                dst: tile(tp, alloc, dst),
                src: tile(tp, alloc, src),
                scale: scalar_operand(tp, alloc, scale),
                bias: scalar_operand(tp, alloc, bias),
                accum: accum.map(|a| column(tp, alloc, &a)),
            },
        ),
        TileOp::Memset { dst, value } => (Engine::VE, Op::Memset { dst: tile(tp, alloc, dst), value: Imm(*value) }),
        TileOp::Reduce { op, dst, src } => {
            (Engine::VE, Op::Reduce { op: *op, dst: tile(tp, alloc, dst), src: tile(tp, alloc, src) })
        }
        TileOp::Iota { dst, base, partition_step, free_step } => (
            Engine::VE,
            Op::Iota { dst: tile(tp, alloc, dst), base: *base, partition_step: *partition_step, free_step: *free_step },
        ),
        TileOp::CopyWhere { dst, src, cond, negate } => (
            Engine::VE,
            Op::CopyPredicated {
                dst: tile(tp, alloc, dst),
                src: tile(tp, alloc, src),
                cond: tile(tp, alloc, cond),
                negate: *negate,
            },
        ),
        TileOp::FillWhere { dst, cond, value, negate } => (
            Engine::VE,
            Op::FillPredicated {
                dst: tile(tp, alloc, dst),
                cond: tile(tp, alloc, cond),
                value: scalar_operand(tp, alloc, value),
                negate: *negate,
            },
        ),
        TileOp::Select { cmp, dst, src, partition_step, free_step, base, fill } => (
            Engine::VE,
            Op::Select {
                cmp: *cmp,
                dst: tile(tp, alloc, dst),
                src: tile(tp, alloc, src),
                partition_step: *partition_step,
                free_step: *free_step,
                base: *base,
                fill: Imm(*fill),
            },
        ),
    }
}

/// The transfer of one DMA tile op.
fn transfer(tp: &TileProgram, t: &Target, alloc: &Allocation, tensors: &[TensorDecl], op: &TileOp) -> Op {
    match op {
        TileOp::Gather { dst, idx, table } => {
            let size = tp.tensors[table.tensor].dtype.size_bytes() as u64;
            let rows = HbmRows {
                addr: tensors[table.tensor].addr + table.start * size,
                rows: table.rows,
                stride: table.row_stride * size,
            };
            Op::DmaGather { dst: tile(tp, alloc, dst), idx: column(tp, alloc, idx), table: rows }
        }
        TileOp::Load { dst, src, .. } => {
            let size = tp.tensors[src.tensor].dtype.size_bytes() as u64;
            let xfer = DmaTransfer {
                elem_bytes: size as u8,
                src: hbm_side(src, tensors[src.tensor].addr, size),
                dst: sram_side(tp, alloc, dst, t),
            };
            Op::Dma { xfer }
        }
        TileOp::Share { dst, src, .. } => {
            // The mirrors are at the source's address: the same side, on other cores.
            let from = sram_side(tp, alloc, src, t);
            let cores = dst.iter().fold(0, |m, d| m | 1 << tp.buffers[d.buf].core);
            let size = tp.buffers[src.buf].dtype.size_bytes();
            let xfer = DmaTransfer { elem_bytes: size as u8, src: from, dst: DmaSide { cores, ..from } };
            Op::Dma { xfer }
        }
        TileOp::Store { dst, src } => {
            let size = tp.tensors[dst.tensor].dtype.size_bytes() as u64;
            let xfer = DmaTransfer {
                elem_bytes: size as u8,
                src: sram_side(tp, alloc, src, t),
                dst: hbm_side(dst, tensors[dst.tensor].addr, size),
            };
            Op::Dma { xfer }
        }
        TileOp::HbmCopy { dst, src, .. } => {
            let size = tp.tensors[dst.tensor].dtype.size_bytes() as u64;
            let xfer = DmaTransfer {
                elem_bytes: size as u8,
                src: hbm_side(src, tensors[src.tensor].addr, size),
                dst: hbm_side(dst, tensors[dst.tensor].addr, size),
            };
            Op::Dma { xfer }
        }
        _ => unreachable!("instruction() passes only DMA tile ops"),
    }
}

/// For each instruction, the instructions of other lanes it waits for: only
/// the latest instruction of each other lane it depends on that it does not
/// already know to be complete (knowledge propagates along waits, as vector
/// clocks do; a wait across cores, through a message, is credited with what the
/// awaited instruction knew, which the message's sender knew too).
fn synchronise(lanes: &Lanes, order: &[usize], dag: &DiGraph<usize, ()>) -> Vec<Vec<usize>> {
    let n_lanes = lanes.cores * lanes.engines;
    let lane = &lanes.lane;
    // Position of each instruction in its lane's stream, before nops.
    let mut ordinal = vec![0usize; lane.len()];
    let mut by_lane_ordinal: Vec<Vec<usize>> = vec![Vec::new(); n_lanes];
    for &i in order {
        ordinal[i] = by_lane_ordinal[lane[i]].len();
        by_lane_ordinal[lane[i]].push(i);
    }
    // For each lane, the latest instruction (by ordinal) of each lane known
    // complete. What a lane knew after each of its instructions is kept as
    // snapshots taken when its knowledge of other lanes grows (its own entry
    // is the instruction itself).
    let mut knows: Vec<Vec<Option<usize>>> = vec![vec![None; n_lanes]; n_lanes];
    // Per lane: (first ordinal it holds for, what the lane knew of the others).
    type Snapshots = Vec<(usize, std::rc::Rc<Vec<Option<usize>>>)>;
    let mut snapshots: Vec<Snapshots> = vec![Vec::new(); n_lanes];
    let know_after = |snapshots: &[Snapshots], u: usize| {
        let list = &snapshots[lane[u]];
        let at = list.partition_point(|(from, _)| *from <= ordinal[u]);
        let mut k = if at == 0 { vec![None; n_lanes] } else { list[at - 1].1.as_ref().clone() };
        k[lane[u]] = Some(ordinal[u]);
        k
    };
    let mut waits: Vec<Vec<usize>> = vec![Vec::new(); lane.len()];
    for &i in order {
        let me = lane[i];
        let mut latest: Vec<Option<usize>> = vec![None; n_lanes];
        for d in dag.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming) {
            let u = dag[d];
            let ul = lane[u];
            if ul != me && latest[ul].is_none_or(|x| ordinal[u] > x) {
                latest[ul] = Some(ordinal[u]);
            }
        }
        let mut learned = false;
        for (ul, need) in latest.iter().enumerate() {
            let Some(need) = *need else { continue };
            if knows[me][ul].is_some_and(|k| k >= need) {
                continue;
            }
            let u = by_lane_ordinal[ul][need];
            waits[i].push(u);
            for (x, kx) in knows[me].iter_mut().zip(know_after(&snapshots, u)) {
                if kx > *x {
                    *x = kx;
                }
            }
            learned = true;
        }
        if learned {
            let mut k = knows[me].clone();
            k[me] = None;
            snapshots[me].push((ordinal[i], std::rc::Rc::new(k)));
        }
        knows[me][me] = Some(ordinal[i]);
    }
    waits
}

/// One entry of a stream being built: the tile op it implements (`None` for
/// an extra wait's `nop` and for a message), the instruction, and whether it
/// signals its engine's counter (a message signals another core instead).
struct Entry {
    op: Option<usize>,
    inst: Inst,
    counts: bool,
    /// A wait on this instruction's completion (resolved to its position).
    wait_on: Option<usize>,
}

/// What an instruction waits for: an instruction of its own core, or a count
/// of a mailbox (messages from another core).
#[derive(Clone, Copy)]
enum Await {
    Local(usize),
    Mailbox(Wait),
}

impl Entry {
    fn new(op: Option<usize>, mut inst: Inst, wait: Option<Await>) -> Entry {
        let wait_on = match wait {
            Some(Await::Local(u)) => Some(u),
            Some(Await::Mailbox(w)) => {
                inst.wait = Some(w);
                None
            }
            None => None,
        };
        Entry { op, inst, counts: true, wait_on }
    }
}

/// Each core's streams. Every instruction signals its engine's semaphore and
/// waits for the last instruction it needs (a second one costs a zero-cycle
/// `nop` before it); semaphore values are positions among the stream's
/// signalling instructions; streams end in `halt`.
///
/// An instruction of core `b` that needs one of core `a` gets a **message**:
/// right after the needed instruction (in `order`), core `a`'s sender lane
/// ([`Lanes::sender`]) gets a `nop` that waits for it (no wait when it is on
/// that lane: the queue is in order) and signals `b`'s mailbox for `a`
/// remotely; the instruction of `b` waits for the mailbox to count that
/// message. One lane sends all of a core's messages, in order, so the k-th
/// message from `a` to `b` is the k-th increment of the mailbox. Each needed
/// instruction is sent to each core once.
fn streams(
    insts: &[(Engine, Op, u32)],
    lanes: &Lanes,
    order: &[usize],
    waits: &[Vec<usize>],
) -> (Vec<Vec<Vec<Inst>>>, Origins) {
    let outbox = outboxes(lanes, order, waits);
    let mut streams: Vec<Vec<Entry>> = (0..lanes.cores * lanes.engines).map(|_| Vec::new()).collect();
    // (needed instruction, receiving core) -> its message's count at that core.
    let mut sent: HashMap<(usize, usize), u32> = HashMap::new();
    let mut sent_to: Vec<Vec<u32>> = vec![vec![0; lanes.cores]; lanes.cores];
    for &i in order {
        let (_, op, debug) = &insts[i];
        let core = lanes.core(i);
        let awaits: Vec<Await> = waits[i]
            .iter()
            .map(|&u| match lanes.core(u) {
                from if from == core => Await::Local(u),
                from => Await::Mailbox(Wait { sem: lanes.mailbox(from), value: sent[&(u, core)] }),
            })
            .collect();
        let s = &mut streams[lanes.lane[i]];
        let (last, extra) = awaits.split_last().map_or((None, &[][..]), |(l, x)| (Some(*l), x));
        for w in extra {
            let mut nop = Inst::new(Op::Nop {});
            nop.debug = Some(*debug);
            s.push(Entry::new(None, nop, Some(*w)));
        }
        let mut inst = Inst::new(op.clone());
        inst.debug = Some(*debug);
        s.push(Entry::new(Some(i), inst, last));
        for &b in &outbox[i] {
            let k = &mut sent_to[core][b];
            *k += 1;
            sent.insert((i, b), *k);
            let mut nop = Inst::new(Op::Nop {});
            nop.debug = Some(*debug);
            nop.signal = Some(jpu_isa::Signal::remote(b as u8, lanes.mailbox(core)));
            let sender = lanes.sender(core);
            let wait_on = (lanes.lane[i] != sender).then_some(i);
            streams[sender].push(Entry { op: None, inst: nop, counts: false, wait_on });
        }
    }
    resolve(streams, lanes, insts.len())
}

/// For each instruction, the other cores that need it (so it sends them a
/// message), in the order they first do.
fn outboxes(lanes: &Lanes, order: &[usize], waits: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut outbox: Vec<Vec<usize>> = vec![Vec::new(); waits.len()];
    for &i in order {
        for &u in &waits[i] {
            let (a, b) = (lanes.core(u), lanes.core(i));
            if a != b && !outbox[u].contains(&b) {
                outbox[u].push(b);
            }
        }
    }
    outbox
}

/// The streams' instructions with every local wait resolved to the awaited
/// instruction's position among its stream's signalling entries, each
/// signalling its engine's counter, and a final `halt`.
fn resolve(streams: Vec<Vec<Entry>>, lanes: &Lanes, n: usize) -> (Vec<Vec<Vec<Inst>>>, Origins) {
    let engines = lanes.engines;
    let mut position = vec![0u32; n];
    for s in &streams {
        let mut p = 0u32;
        for en in s {
            p += u32::from(en.counts);
            if let (Some(i), true) = (en.op, en.counts) {
                position[i] = p;
            }
        }
    }
    let mut origins: Origins = vec![Vec::new(); lanes.cores * engines];
    let mut out = vec![vec![Vec::new(); engines]; lanes.cores];
    for (l, s) in streams.into_iter().enumerate().filter(|(_, s)| !s.is_empty()) {
        let e = l % engines;
        let mut stream: Vec<Inst> = Vec::with_capacity(s.len() + 1);
        for en in s {
            let mut inst = en.inst;
            if let Some(u) = en.wait_on {
                inst.wait = Some(Wait { sem: (lanes.lane[u] % engines) as u8, value: position[u] });
            }
            if en.counts {
                inst.signal = Some(jpu_isa::Signal::local(e as u8));
            }
            origins[l].push(en.op);
            stream.push(inst);
        }
        stream.push(Inst::new(Op::Halt {}));
        origins[l].push(None);
        out[l / engines][e] = stream;
    }
    (out, origins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiles::{Buffer, HbmTensor};
    use jpu_isa::program::Role;
    use jpu_isa::DType;

    /// Two staging buffers used one after the other: `in -> b0 -> x`, then
    /// `in -> b1 -> y` (b1 doubled by the VE on the way).
    fn two_phase() -> TileProgram {
        let t = |name: &str, role| HbmTensor { name: name.into(), dtype: DType::F32, shape: vec![4, 8], role };
        let b = |name: &str| Buffer::new(name, Space::Sram, DType::F32, 4, 8, 1);
        let s = |buf| BufSlice { buf, copy: 0, parts: 4, offset: 0, len: 8 };
        let h = |tensor| HbmBox { tensor, start: 0, rows: 4, row_stride: 8, cols: 8 };
        TileProgram {
            tensors: vec![t("in", Role::Input), t("x", Role::Output), t("y", Role::Output)],
            buffers: vec![b("b0"), b("b1")],
            ops: vec![
                (TileOp::Load { dst: s(0), src: h(0), queue: None }, 0),
                (TileOp::Store { dst: h(1), src: s(0) }, 0),
                (TileOp::Load { dst: s(1), src: h(0), queue: None }, 0),
                (TileOp::Binary { op: jpu_isa::operand::AluOp::Add, dst: s(1), a: s(1), b: s(1) }, 0),
                (TileOp::Store { dst: h(2), src: s(1) }, 0),
            ],
            debug_ops: vec!["test".into()],
        }
    }

    #[test]
    fn buffers_with_disjoint_live_ranges_share_memory_and_reuse_is_ordered() {
        let tp = two_phase();
        let t = Target::builtin("jpu-tiny").unwrap();
        let alloc = allocate(&tp, &[], &t).unwrap();
        assert_eq!(alloc.offset(0, 0), alloc.offset(1, 0), "b1 reuses b0's bytes");
        // Loading b1 overwrites what the first store reads: a write-after-read edge.
        let dag = dependencies(&tp, &alloc);
        assert!(dag.find_edge(NodeIndex::new(1), NodeIndex::new(2)).is_some());
        // The program runs race-free and computes x = in, y = 2 in.
        let program = compile(&tp, &[], &t, RooflineInputs::default()).unwrap().program;
        let input: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let opts = jpu_runtime::RunOptions { check_races: true, strict_uninit: true, ..Default::default() };
        let out = jpu_runtime::run(&program, &t, &[("in".into(), input.clone())], &opts).unwrap();
        let get = |n: &str| out.outputs.iter().find(|(name, _)| name == n).unwrap().1.clone();
        assert_eq!(get("x"), input);
        let doubled: Vec<u8> = (0..32).flat_map(|i| (2.0 * i as f32).to_le_bytes()).collect();
        assert_eq!(get("y"), doubled);
    }

    #[test]
    fn neighbouring_kernels_share_no_memory_and_are_interleaved() {
        let tp = two_phase();
        let t = Target::builtin("jpu-tiny").unwrap();
        // One kernel: b1 reuses b0's bytes, and the order is the tile program's.
        let one = [0, 0, 0, 0, 0];
        let alloc = allocate(&tp, &one, &t).unwrap();
        assert_eq!(alloc.offset(0, 0), alloc.offset(1, 0));
        let one_core = vec![0; tp.ops.len()];
        let insts = select_instructions(&tp, &t, &alloc, &place_tensors(&tp, &t).unwrap(), &one_core).unwrap();
        let lanes = Lanes::new(&tp, &insts, &one_core, &t).unwrap().lane;
        assert_eq!(
            order::interleave(&insts, &lanes, &dependencies(&tp, &alloc), &one, &t, None, false),
            vec![0, 1, 2, 3, 4]
        );
        // Two kernels: separate memory, so the second kernel's load need not wait
        // for the first one's store and goes first.
        let two = [0, 0, 1, 1, 1];
        let alloc = allocate(&tp, &two, &t).unwrap();
        assert_ne!(alloc.offset(0, 0), alloc.offset(1, 0));
        let dag = dependencies(&tp, &alloc);
        let order = order::interleave(&insts, &lanes, &dag, &two, &t, None, false);
        assert_eq!(order, vec![0, 2, 1, 3, 4]);
        let position = |i: usize| order.iter().position(|&o| o == i).unwrap();
        assert!(dag.edge_indices().all(|e| {
            let (a, b) = dag.edge_endpoints(e).unwrap();
            position(dag[a]) < position(dag[b])
        }));
        // Still race-free and correct.
        let program = compile(&tp, &two, &t, RooflineInputs::default()).unwrap().program;
        let input: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let opts = jpu_runtime::RunOptions { check_races: true, strict_uninit: true, ..Default::default() };
        let out = jpu_runtime::run(&program, &t, &[("in".into(), input.clone())], &opts).unwrap();
        assert_eq!(out.outputs.iter().find(|(n, _)| n == "x").unwrap().1, input);
    }

    /// Two memsets can start at once on the VE: program order takes kernel 0's,
    /// critical-path-first takes kernel 1's, whose result still goes through
    /// the ACT before its store.
    #[test]
    fn critical_first_breaks_ties_by_the_longest_path_to_the_end() {
        let mut tp = two_phase();
        let s = |buf| BufSlice { buf, copy: 0, parts: 4, offset: 0, len: 8 };
        let h = |tensor| HbmBox { tensor, start: 0, rows: 4, row_stride: 8, cols: 8 };
        tp.ops = vec![
            (TileOp::Memset { dst: s(0), value: 1.0 }, 0),
            (TileOp::Store { dst: h(1), src: s(0) }, 0),
            (TileOp::Memset { dst: s(1), value: 2.0 }, 0),
            (TileOp::activate(jpu_isa::operand::ActFunc::Exp, s(1), s(1)), 0),
            (TileOp::Store { dst: h(2), src: s(1) }, 0),
        ];
        let t = Target::builtin("jpu-tiny").unwrap();
        let two = [0, 0, 1, 1, 1];
        let alloc = allocate(&tp, &two, &t).unwrap();
        let one_core = vec![0; tp.ops.len()];
        let insts = select_instructions(&tp, &t, &alloc, &place_tensors(&tp, &t).unwrap(), &one_core).unwrap();
        let dag = dependencies(&tp, &alloc);
        let lanes = Lanes::new(&tp, &insts, &one_core, &t).unwrap().lane;
        assert_eq!(order::interleave(&insts, &lanes, &dag, &two, &t, None, false)[0], 0);
        assert_eq!(order::interleave(&insts, &lanes, &dag, &two, &t, None, true)[0], 2);
    }

    /// With several kernels, the schedule kept is never slower than the tile
    /// program's own order (both timed by the simulator), and compiling twice
    /// gives the same program.
    #[test]
    fn the_kept_schedule_is_never_slower_than_program_order() {
        let tp = two_phase();
        let t = Target::builtin("jpu-tiny").unwrap();
        let two = [0, 0, 1, 1, 1];
        let kept = compile(&tp, &two, &t, RooflineInputs::default()).unwrap();
        let again = compile(&tp, &two, &t, RooflineInputs::default()).unwrap();
        assert_eq!(jpu_isa::jbin::write(&kept.program), jpu_isa::jbin::write(&again.program));
        let alloc = allocate(&tp, &two, &t).unwrap();
        let one_core = vec![0; tp.ops.len()];
        let insts = select_instructions(&tp, &t, &alloc, &place_tensors(&tp, &t).unwrap(), &one_core).unwrap();
        let dag = dependencies(&tp, &alloc);
        let lanes = Lanes::new(&tp, &insts, &one_core, &t).unwrap();
        let in_order: Vec<usize> = (0..insts.len()).collect();
        let waits = synchronise(&lanes, &in_order, &dag);
        let (cores, origins) = streams(&insts, &lanes, &in_order, &waits);
        let mut program = kept.program.clone();
        program.cores = cores;
        let plain = Scheduled { program, origins };
        let cycles = |s: &Scheduled| simulate_timing(s, insts.len(), &t).unwrap().0;
        assert!(cycles(&kept) <= cycles(&plain), "{} > {}", cycles(&kept), cycles(&plain));
    }

    #[test]
    fn small_psum_buffers_share_a_bank_without_crossing_one() {
        let t = Target::builtin("jpu1").unwrap();
        let bank = t.psum_bank_bytes();
        let psum = |name: &str, free| Buffer::new(name, Space::Psum, DType::F32, 4, free, 2);
        let s = |buf, copy, len| BufSlice { buf, copy, parts: 4, offset: 0, len };
        let tp = TileProgram {
            tensors: Vec::new(),
            // 40 bytes (a 64-byte block), 320 bytes (512), 600 bytes (three blocks of a whole bank).
            buffers: vec![psum("a", 10), psum("b", 80), psum("c", 600)],
            ops: vec![
                (TileOp::Memset { dst: s(0, 0, 10), value: 0.0 }, 0),
                (TileOp::Memset { dst: s(1, 1, 80), value: 0.0 }, 0),
                (TileOp::Memset { dst: s(2, 1, 600), value: 0.0 }, 0),
                (TileOp::Copy { dst: s(0, 1, 10), src: s(1, 0, 10) }, 0),
                (TileOp::Copy { dst: s(2, 0, 10), src: s(0, 0, 10) }, 0),
            ],
            debug_ops: vec!["test".into()],
        };
        let alloc = allocate(&tp, &[], &t).unwrap();
        let blocks = [(0, 64), (1, 512), (2, 2 * bank)];
        for (b, size) in blocks {
            for copy in 0..2 {
                let at = alloc.offset(b, copy);
                assert_eq!(at % size.min(bank), 0, "buffer {b} copy {copy} at {at}");
            }
        }
        // The two small buffers fit in one bank together.
        assert!(alloc.offset(0, 1) < bank && alloc.offset(1, 1) < bank);
    }

    #[test]
    fn buffers_live_together_never_overlap() {
        let mut tp = two_phase();
        // Make b0 live to the end: it may no longer share with b1.
        tp.ops.push((
            TileOp::Store {
                dst: HbmBox { tensor: 1, start: 0, rows: 4, row_stride: 8, cols: 8 },
                src: BufSlice { buf: 0, copy: 0, parts: 4, offset: 0, len: 8 },
            },
            0,
        ));
        let t = Target::builtin("jpu-tiny").unwrap();
        let alloc = allocate(&tp, &[], &t).unwrap();
        let (a, b) = (alloc.offset(0, 0) as u64, alloc.offset(1, 0) as u64);
        assert!(a + 32 <= b || b + 32 <= a, "{a} {b}");
    }
}
