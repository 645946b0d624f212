//! The backend: tile program -> placed, scheduled, synchronised chip program.
//!
//! 1. **Allocation**: each buffer copy gets SRAM bytes (the same range in every
//!    partition) or PSUM banks.
//! 2. **Instruction DAG** (petgraph): one instruction per tile op; an edge for every
//!    read-after-write, write-after-read and write-after-write between tile ops
//!    touching overlapping bytes.
//! 3. **Engine assignment and list scheduling**: compute ops go to their engine; each
//!    DMA goes to the queue with the least data assigned so far. Each engine's
//!    stream keeps the tile program's order (a topological order), so no stream can
//!    wait on a later one: the program cannot deadlock.
//! 4. **Semaphores**: every instruction signals its engine's counter; an instruction
//!    waits only for the latest instruction of each other engine it depends on and
//!    does not already know to be complete (knowledge propagates along waits, as
//!    vector clocks do). A second engine to wait for costs a zero-cycle `nop`.
//! 5. **Emission**: tensors in HBM, streams ending in `halt`, debug info, roofline.

use std::collections::HashMap;

use jpu_isa::inst::{Engine, Wait};
use jpu_isa::operand::{Dim, DmaDim, DmaSide, DmaSpace, DmaTransfer, Imm, Scalar, Space, Tile};
use jpu_isa::program::{RooflineInputs, SemDecl, TensorDecl};
use jpu_isa::{Inst, Op, Program, Target};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::lower::{BufSlice, BufferId, HbmBox, TileOp, TileProgram};

/// Why a tile program cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError(pub String);

/// Where each buffer copy lives: byte offset within each partition.
pub struct Allocation {
    offsets: Vec<Vec<u32>>,
}

/// Places every buffer copy.
pub fn allocate(tp: &TileProgram, t: &Target) -> Result<Allocation, BackendError> {
    let mut sram_next = 0u64;
    let mut psum_bank = 0u32;
    let bank_bytes = t.psum_bank_bytes() as u64;
    let mut offsets = Vec::new();
    for (i, b) in tp.buffers.iter().enumerate() {
        let bytes = tp.copy_bytes(i);
        let mut copies = Vec::new();
        for _ in 0..b.copies {
            match b.space {
                Space::Sram => {
                    copies.push(sram_next as u32);
                    sram_next = (sram_next + bytes).div_ceil(64) * 64;
                }
                Space::Psum => {
                    if bytes > bank_bytes {
                        return Err(BackendError(format!(
                            "buffer {} needs {bytes} bytes of PSUM; a bank holds {bank_bytes}",
                            b.name
                        )));
                    }
                    copies.push(psum_bank * bank_bytes as u32);
                    psum_bank += 1;
                }
            }
        }
        offsets.push(copies);
    }
    if sram_next > t.sram.partition_bytes as u64 {
        return Err(BackendError(format!(
            "buffers need {sram_next} bytes per SRAM partition; {} has {}",
            t.name, t.sram.partition_bytes
        )));
    }
    if psum_bank > t.psum.banks.unwrap_or(1) {
        return Err(BackendError(format!(
            "buffers need {psum_bank} PSUM banks; {} has {}",
            t.name,
            t.psum.banks.unwrap_or(1)
        )));
    }
    Ok(Allocation { offsets })
}

/// Bytes a tile op touches, for dependencies.
#[derive(Debug, Clone, Copy)]
enum Region {
    OnChip { buf: BufferId, copy: u32, parts: u32, start: u64, end: u64 },
    Hbm { tensor: usize, start: u64, end: u64 },
}

fn overlaps(a: &Region, b: &Region) -> bool {
    match (a, b) {
        (
            Region::OnChip { buf: b1, copy: c1, start: s1, end: e1, .. },
            Region::OnChip { buf: b2, copy: c2, start: s2, end: e2, .. },
        ) => {
            // Every slice starts at partition 0, so partition ranges always meet.
            b1 == b2 && c1 == c2 && s1 < e2 && s2 < e1
        }
        (Region::Hbm { tensor: t1, start: s1, end: e1 }, Region::Hbm { tensor: t2, start: s2, end: e2 }) => {
            t1 == t2 && s1 < e2 && s2 < e1
        }
        _ => false,
    }
}

fn on_chip(s: &BufSlice) -> Region {
    Region::OnChip { buf: s.buf, copy: s.copy, parts: s.parts, start: s.offset as u64, end: (s.offset + s.len) as u64 }
}

fn hbm(h: &HbmBox) -> Region {
    Region::Hbm { tensor: h.tensor, start: h.start, end: h.start + (h.rows as u64 - 1) * h.row_stride + h.cols as u64 }
}

/// (reads, writes) of a tile op.
fn accesses(op: &TileOp) -> (Vec<Region>, Vec<Region>) {
    match op {
        TileOp::Load { dst, src } => (vec![hbm(src)], vec![on_chip(dst)]),
        TileOp::Store { dst, src } => (vec![on_chip(src)], vec![hbm(dst)]),
        TileOp::Matmul { dst, stationary, moving, accumulate, .. } => {
            let mut r = vec![on_chip(stationary), on_chip(moving)];
            if *accumulate {
                r.push(on_chip(dst));
            }
            (r, vec![on_chip(dst)])
        }
        TileOp::Copy { dst, src }
        | TileOp::Transpose { dst, src }
        | TileOp::Scalar { dst, src, .. }
        | TileOp::Activate { dst, src, .. } => (vec![on_chip(src)], vec![on_chip(dst)]),
        TileOp::Binary { dst, a, b, .. } => (vec![on_chip(a), on_chip(b)], vec![on_chip(dst)]),
    }
}

/// The instruction DAG: nodes are tile-op indices, edges point from the earlier op.
pub fn dependencies(tp: &TileProgram) -> DiGraph<usize, ()> {
    let mut g = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..tp.ops.len()).map(|i| g.add_node(i)).collect();
    // Per memory, the accesses since each region was last completely overwritten.
    let mut live: Vec<(Region, usize, bool)> = Vec::new();
    let mut index: HashMap<(usize, u32), Vec<usize>> = HashMap::new();
    let key = |r: &Region| match r {
        Region::OnChip { buf, copy, .. } => (*buf, *copy),
        Region::Hbm { tensor, .. } => (usize::MAX - tensor, 0),
    };
    for (i, (op, _)) in tp.ops.iter().enumerate() {
        let (reads, writes) = accesses(op);
        let mut deps: Vec<usize> = Vec::new();
        for r in &reads {
            for &j in index.get(&key(r)).into_iter().flatten() {
                let (region, op_index, write) = live[j];
                if write && overlaps(&region, r) {
                    deps.push(op_index);
                }
            }
        }
        for w in &writes {
            for &j in index.get(&key(w)).into_iter().flatten() {
                let (region, op_index, _) = live[j];
                if overlaps(&region, w) {
                    deps.push(op_index);
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
        for (r, write) in reads.iter().map(|r| (r, false)).chain(writes.iter().map(|w| (w, true))) {
            let k = key(r);
            let list = index.entry(k).or_default();
            if write {
                // A later access of these bytes depends on this write, which depends on
                // everything it overwrites: covered entries can be dropped.
                list.retain(|&j| {
                    let (old, _, _) = live[j];
                    !covers(r, &old)
                });
            }
            live.push((*r, i, write));
            list.push(live.len() - 1);
        }
    }
    g
}

fn covers(a: &Region, b: &Region) -> bool {
    match (a, b) {
        (
            Region::OnChip { buf: b1, copy: c1, parts: p1, start: s1, end: e1 },
            Region::OnChip { buf: b2, copy: c2, parts: p2, start: s2, end: e2 },
        ) => b1 == b2 && c1 == c2 && p1 >= p2 && s1 <= s2 && e1 >= e2,
        _ => false,
    }
}

/// A scheduled program plus what the listings show.
pub struct Scheduled {
    /// The chip program.
    pub program: Program,
}

fn tile(tp: &TileProgram, alloc: &Allocation, s: &BufSlice) -> Tile {
    let b = &tp.buffers[s.buf];
    let size = b.dtype.size_bytes();
    let offset = alloc.offsets[s.buf][s.copy as usize] + s.offset * size;
    Tile::with_dims(b.space, b.dtype, 0, s.parts as u16, offset, &[Dim { count: s.len as u16, stride: 1 }])
}

fn sram_side(tp: &TileProgram, alloc: &Allocation, s: &BufSlice, t: &Target) -> DmaSide {
    let b = &tp.buffers[s.buf];
    let size = b.dtype.size_bytes() as u64;
    let offset = alloc.offsets[s.buf][s.copy as usize] as u64 + s.offset as u64 * size;
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
pub fn compile(tp: &TileProgram, t: &Target, roofline: RooflineInputs) -> Result<Scheduled, BackendError> {
    let alloc = allocate(tp, t)?;
    // HBM layout: tensors one after another, 4 KiB aligned.
    let mut addr = 0u64;
    let mut tensors = Vec::new();
    for ht in &tp.tensors {
        let size: u64 = ht.shape.iter().product::<u64>() * ht.dtype.size_bytes() as u64;
        tensors.push(TensorDecl {
            name: ht.name.clone(),
            dtype: ht.dtype,
            shape: ht.shape.clone(),
            addr,
            role: ht.role,
            data: Vec::new(),
        });
        addr = (addr + size).div_ceil(4096) * 4096;
    }
    if addr > t.hbm.size_bytes {
        return Err(BackendError(format!("tensors need {addr} bytes of HBM; {} has {}", t.name, t.hbm.size_bytes)));
    }
    // Instruction selection and engine assignment.
    let queues = t.dma.queues as usize;
    let mut queue_bytes = vec![0u64; queues];
    let mut insts: Vec<(Engine, Op, u32)> = Vec::with_capacity(tp.ops.len());
    for (op, debug) in &tp.ops {
        let (engine, inst_op) = match op {
            TileOp::Load { dst, src } => {
                let size = tp.tensors[src.tensor].dtype.size_bytes() as u64;
                let xfer = DmaTransfer {
                    elem_bytes: size as u8,
                    src: hbm_side(src, tensors[src.tensor].addr, size),
                    dst: sram_side(tp, &alloc, dst, t),
                };
                (Engine::dma(0), Op::Dma { xfer })
            }
            TileOp::Store { dst, src } => {
                let size = tp.tensors[dst.tensor].dtype.size_bytes() as u64;
                let xfer = DmaTransfer {
                    elem_bytes: size as u8,
                    src: sram_side(tp, &alloc, src, t),
                    dst: hbm_side(dst, tensors[dst.tensor].addr, size),
                };
                (Engine::dma(0), Op::Dma { xfer })
            }
            TileOp::Matmul { dst, stationary, moving, accumulate, transposed } => (
                Engine::PE,
                Op::Matmul {
                    dst: tile(tp, &alloc, dst),
                    stationary: tile(tp, &alloc, stationary),
                    moving: tile(tp, &alloc, moving),
                    accumulate: *accumulate,
                    transposed: *transposed,
                },
            ),
            TileOp::Copy { dst, src } => {
                (Engine::VE, Op::Copy { dst: tile(tp, &alloc, dst), src: tile(tp, &alloc, src) })
            }
            TileOp::Transpose { dst, src } => {
                (Engine::PE, Op::Transpose { dst: tile(tp, &alloc, dst), src: tile(tp, &alloc, src) })
            }
            TileOp::Binary { op, dst, a, b } => (
                Engine::VE,
                Op::TensorTensor {
                    op: *op,
                    dst: tile(tp, &alloc, dst),
                    a: tile(tp, &alloc, a),
                    b: tile(tp, &alloc, b),
                },
            ),
            TileOp::Scalar { op, dst, src, value, reverse } => (
                Engine::VE,
                Op::TensorScalar {
                    op: *op,
                    reverse: *reverse,
                    dst: tile(tp, &alloc, dst),
                    src: tile(tp, &alloc, src),
                    scalar: Scalar::Imm(Imm(*value)),
                },
            ),
            // func(x * 1 + -0) is func(x) for every x, signed zeros included.
            TileOp::Activate { func, dst, src } => (
                Engine::ACT,
                Op::Activate {
                    func: *func,
                    dst: tile(tp, &alloc, dst),
                    src: tile(tp, &alloc, src),
                    scale: Scalar::Imm(Imm(1.0)),
                    bias: Scalar::Imm(Imm(-0.0)),
                    accum: None,
                },
            ),
        };
        let engine = if let Op::Dma { xfer } = &inst_op {
            // List scheduling of DMA: the least-loaded queue. Stores wait for compute,
            // so with two or more queues they get the last one to themselves: a
            // prefetch never waits behind a store in an in-order queue.
            let is_store = matches!(op, TileOp::Store { .. });
            let candidates: Vec<usize> = match (queues, is_store) {
                (1, _) => vec![0],
                (_, true) => vec![queues - 1],
                (_, false) => (0..queues - 1).collect(),
            };
            let q = candidates.iter().copied().min_by_key(|&q| (queue_bytes[q], q)).unwrap_or(0);
            queue_bytes[q] += xfer.charged_bytes(t.timing.dma.min_run_bytes);
            Engine::dma(q as u8)
        } else {
            engine
        };
        insts.push((engine, inst_op, *debug));
    }
    let dag = dependencies(tp);
    let engines = t.engines_per_core() as usize;
    // Position of each instruction in its engine's stream, before nops.
    // Knowledge: for each stream, the latest instruction (by per-engine ordinal) of
    // each engine known complete.
    let mut ordinal = vec![0usize; insts.len()];
    let mut counts = vec![0usize; engines];
    for (i, (e, _, _)) in insts.iter().enumerate() {
        ordinal[i] = counts[e.0 as usize];
        counts[e.0 as usize] += 1;
    }
    let mut knows: Vec<Vec<Option<usize>>> = vec![vec![None; engines]; engines];
    let mut know_after: Vec<Vec<Option<usize>>> = Vec::with_capacity(insts.len());
    // For each instruction: the (engine, instruction index) it waits for.
    let mut waits: Vec<Vec<usize>> = vec![Vec::new(); insts.len()];
    let mut by_engine_ordinal: Vec<Vec<usize>> = vec![Vec::new(); engines];
    for (i, (e, _, _)) in insts.iter().enumerate() {
        by_engine_ordinal[e.0 as usize].push(i);
    }
    for (i, (e, _, _)) in insts.iter().enumerate() {
        let me = e.0 as usize;
        let mut latest: Vec<Option<usize>> = vec![None; engines];
        for d in dag.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming) {
            let u = dag[d];
            let ue = insts[u].0 .0 as usize;
            if ue == me {
                continue;
            }
            if latest[ue].is_none_or(|x| ordinal[u] > x) {
                latest[ue] = Some(ordinal[u]);
            }
        }
        for (ue, need) in latest.iter().enumerate() {
            let Some(need) = *need else { continue };
            if knows[me][ue].is_some_and(|k| k >= need) {
                continue;
            }
            let u = by_engine_ordinal[ue][need];
            waits[i].push(u);
            let k = know_after[u].clone();
            for (x, kx) in knows[me].iter_mut().zip(k) {
                if kx > *x {
                    *x = kx;
                }
            }
            knows[me][ue] = Some(need.max(knows[me][ue].unwrap_or(0)));
        }
        knows[me][me] = Some(ordinal[i]);
        know_after.push(knows[me].clone());
    }
    // Streams with nops for extra waits; then final positions and wait values.
    let mut streams: Vec<Vec<(Option<usize>, Inst)>> = vec![Vec::new(); engines];
    for (i, (e, op, debug)) in insts.iter().enumerate() {
        let s = &mut streams[e.0 as usize];
        let (last, extra) = waits[i].split_last().map_or((None, &[][..]), |(l, x)| (Some(*l), x));
        for &u in extra {
            let mut nop = Inst::new(Op::Nop {});
            nop.wait = Some(Wait { sem: 0, value: u as u32 }); // resolved below
            nop.debug = Some(*debug);
            s.push((None, nop));
        }
        let mut inst = Inst::new(op.clone());
        inst.debug = Some(*debug);
        if let Some(u) = last {
            inst.wait = Some(Wait { sem: 0, value: u as u32 });
        }
        s.push((Some(i), inst));
    }
    let mut position = vec![0u32; insts.len()];
    for s in &streams {
        for (p, (i, _)) in s.iter().enumerate() {
            if let Some(i) = i {
                position[*i] = p as u32 + 1;
            }
        }
    }
    let mut cores = vec![Vec::new(); engines];
    for (e, s) in streams.into_iter().enumerate() {
        if s.is_empty() {
            continue;
        }
        let mut out: Vec<Inst> = s
            .into_iter()
            .map(|(_, mut inst)| {
                if let Some(w) = inst.wait {
                    let u = w.value as usize;
                    inst.wait = Some(Wait { sem: insts[u].0 .0, value: position[u] });
                }
                inst.signal = Some(e as u8);
                inst
            })
            .collect();
        out.push(Inst::new(Op::Halt {}));
        cores[e] = out;
    }
    let semaphores = (0..engines)
        .filter(|e| !cores[*e].is_empty())
        .map(|e| SemDecl { id: e as u8, name: format!("{}_done", Engine(e as u8).name()) })
        .collect();
    let mut program = Program::new(t);
    program.tensors = tensors;
    program.semaphores = semaphores;
    program.debug_ops = tp.debug_ops.clone();
    program.cores = vec![cores];
    program.roofline = Some(roofline);
    program.canonicalize_debug_ops();
    program.validate(t).map_err(|e| BackendError(format!("internal: emitted program is invalid: {e}")))?;
    Ok(Scheduled { program })
}
