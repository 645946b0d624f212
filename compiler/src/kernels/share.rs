//! Operand sharing over the fabric: a kernel spread over cores whose every
//! core loads the same bytes into the same buffer (a short GEMM's A) loads
//! them once instead, a run on each core, and multicasts each run to the
//! others' copies of the buffer (core-to-core DMA, charged once however many
//! cores it writes).
//!
//! [`share_loads`] rewrites a kernel's merged per-core program (part `c`'s
//! buffers at `c * per_core ..`): the shared buffer's loads and their shares
//! go first, every other op keeps its order, and the buffer's copies on cores
//! 1.. mirror core 0's (the allocator places them at one address, as a
//! multicast writes one address on every core). A reader on another core
//! depends on the share that wrote its bytes, which the backend turns into a
//! remote signal like any dependency between cores.

use crate::tiles::{BufSlice, BufferId, HbmBox, TileOp, TileProgram};

/// Shares the loads of buffer `buf` (its index within a core's part) of `tp`,
/// a kernel on `cores` cores with `per_core` buffers each. Returns whether it
/// did: every core must load the same boxes into the same disjoint slices, in
/// the same order, at least one per core, nothing else may write the buffer,
/// and the buffer must be SRAM. A share goes on its load's queue.
pub fn share_loads(tp: &mut TileProgram, cores: usize, per_core: usize, buf: BufferId) -> bool {
    let Some(loads) = identical_loads(tp, cores, per_core, buf) else { return false };
    let n = loads[0].len();
    if n < cores {
        return false;
    }
    let on = |s: BufSlice, c: usize| BufSlice { buf: c * per_core + buf, ..s };
    let mut ops = Vec::with_capacity(tp.ops.len() + n);
    for (c, mine) in loads.iter().enumerate() {
        // Core c's run of the loads, adjacent ones merged: one transfer each way.
        let mut run: Vec<(TileOp, u32)> = Vec::new();
        for &i in &mine[(c * n).div_ceil(cores)..((c + 1) * n).div_ceil(cores)] {
            let (load, debug) = tp.ops[i].clone();
            match run.last_mut() {
                Some(last) if let Some(both) = merged(&last.0, &load) => last.0 = both,
                _ => run.push((load, debug)),
            }
        }
        for (load, debug) in run {
            let TileOp::Load { dst, queue, .. } = load else { unreachable!("identical_loads keeps loads") };
            ops.push((load, debug));
            let dst_on_others = (0..cores).filter(|&d| d != c).map(|d| on(dst, d)).collect();
            ops.push((TileOp::Share { dst: dst_on_others, src: dst, queue }, debug));
        }
    }
    let moved: std::collections::HashSet<usize> = loads.iter().flatten().copied().collect();
    ops.extend(tp.ops.iter().enumerate().filter(|(i, _)| !moved.contains(i)).map(|(_, op)| op.clone()));
    tp.ops = ops;
    for c in 1..cores {
        tp.buffers[c * per_core + buf].mirrors = Some(buf);
    }
    true
}

/// Per core, the op indices of its loads into `buf`, when sharing applies
/// (see [`share_loads`]).
fn identical_loads(tp: &TileProgram, cores: usize, per_core: usize, buf: BufferId) -> Option<Vec<Vec<usize>>> {
    if cores < 2 || tp.buffers.len() != cores * per_core || buf >= per_core {
        return None;
    }
    if tp.buffers[buf].space != jpu_isa::operand::Space::Sram {
        return None;
    }
    let mut loads = vec![Vec::new(); cores];
    for (i, (op, _)) in tp.ops.iter().enumerate() {
        let (_, writes) = op.slices();
        let Some(w) = writes.iter().find(|w| w.buf % per_core == buf) else { continue };
        if !matches!(op, TileOp::Load { .. }) {
            return None;
        }
        loads[w.buf / per_core].push(i);
    }
    let key = |i: usize| match &tp.ops[i].0 {
        TileOp::Load { dst, src, .. } => Some((BufSlice { buf, ..*dst }, *src)),
        _ => None,
    };
    let first: Vec<_> = loads[0].iter().map(|&i| key(i)).collect::<Option<_>>()?;
    let same = loads.iter().all(|l| l.len() == first.len() && l.iter().zip(&first).all(|(&i, k)| key(i) == Some(*k)));
    let disjoint = first.iter().enumerate().all(|(j, (a, _))| {
        first[..j].iter().all(|(b, _)| a.copy != b.copy || a.offset + a.len <= b.offset || b.offset + b.len <= a.offset)
    });
    (same && disjoint).then_some(loads)
}

/// One load doing `a` then `b`, when `b` continues `a`'s rows on both sides.
fn merged(a: &TileOp, b: &TileOp) -> Option<TileOp> {
    let (TileOp::Load { dst: d1, src: s1, queue }, TileOp::Load { dst: d2, src: s2, queue: q2 }) = (a, b) else {
        return None;
    };
    let continues = queue == q2
        && (d1.buf, d1.copy, d1.parts, d1.offset + d1.len) == (d2.buf, d2.copy, d2.parts, d2.offset)
        && (s1.tensor, s1.rows, s1.row_stride, s1.start + s1.cols as u64)
            == (s2.tensor, s2.rows, s2.row_stride, s2.start)
        && s1.rows == d1.parts;
    let (dst, src) = (BufSlice { len: d1.len + d2.len, ..*d1 }, HbmBox { cols: s1.cols + s2.cols, ..*s1 });
    continues.then_some(TileOp::Load { dst, src, queue: *queue })
}
