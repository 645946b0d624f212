//! Instruction order: which instruction enters each engine's stream next.
//!
//! Kernels are lowered one after another, but their instructions need not run
//! that way: while a GEMM keeps the PE busy, the VE and ACT can run the softmax of
//! an attention that follows it, and the next kernel's first loads can overlap
//! this one's last stores. This module list-schedules the instruction DAG over
//! the engines with an estimate of each instruction's time, and returns the
//! order in which instructions join their streams.
//!
//! Guarantees:
//! - The order is a topological order of the DAG, and every engine's stream is
//!   its restriction to that engine: no stream waits on a later one, so the
//!   program cannot deadlock.
//! - Within one kernel, the instructions of each engine keep the kernel's own
//!   order (its software pipelining is the kernel's choice); only instructions of
//!   different kernels, at most [`WINDOW`] kernels apart, are interleaved. A
//!   program of one kernel keeps the tile program's order exactly.
//! - The order depends only on the program and the target: the same input gives
//!   the same binary.
//!
//! Of the instructions that can start first, the earliest in program order goes
//! next, or (`critical_first`) the one with the longest estimated path to the end
//! of the program (its bottom level), so a busy engine serves the critical chain
//! before work with slack; the backend times both and keeps the faster.
//!
//! The estimate is the simulator's cost model without bandwidth sharing: compute
//! instructions take their fixed cycles; a transfer's data phase starts its
//! latency after issue and after the queue's previous transfer, and moves at
//! half the core's HBM bandwidth (two queues busy is the common case). It only
//! chooses the order; the simulator times the program exactly.

use jpu_isa::cost::{compute_cycles, transfer_cost};
use jpu_isa::inst::EngineClass;
use jpu_isa::{Engine, Op, Target};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

/// How many consecutive kernels may have instructions interleaved.
pub const WINDOW: usize = 6;

/// The order in which the instructions `insts` (tile-program order, `kernel_of`
/// giving each one's kernel, non-decreasing; `lane` each one's engine across
/// cores, `core * engines per core + engine`) join their streams. Of the
/// instructions that can start first, the one on the longest path to the end
/// goes first with `critical_first`, else the earliest in program order.
pub fn interleave(
    insts: &[(Engine, Op, u32)],
    lane: &[usize],
    dag: &DiGraph<usize, ()>,
    kernel_of: &[usize],
    t: &Target,
    measured: Option<&[u64]>,
    critical_first: bool,
) -> Vec<usize> {
    let n = insts.len();
    let kernels = kernel_of.iter().max().map_or(0, |k| k + 1);
    if kernels <= 1 || kernel_of.len() != n {
        return (0..n).collect();
    }
    let engines = lane.iter().max().map_or(1, |l| l + 1);
    // Per kernel, per lane, its instructions in program order; the next one.
    let mut lanes: Vec<Vec<Vec<usize>>> = vec![vec![Vec::new(); engines]; kernels];
    for i in 0..n {
        lanes[kernel_of[i]][lane[i]].push(i);
    }
    let mut next = vec![vec![0usize; engines]; kernels];
    let mut left: Vec<usize> = lanes.iter().map(|l| l.iter().map(Vec::len).sum()).collect();
    let mut preds_left: Vec<u32> =
        (0..n).map(|i| dag.neighbors_directed(NodeIndex::new(i), Direction::Incoming).count() as u32).collect();
    let mut clock = Clock::new(t, engines);
    clock.measured = measured;
    let mut ready_at = vec![0u64; n];
    let mut order = Vec::with_capacity(n);
    // Only the critical-path ranking reads the levels.
    let level = if critical_first { bottom_levels(insts, dag, &clock) } else { Vec::new() };
    let mut lo = 0usize;
    while order.len() < n {
        while lo < kernels && left[lo] == 0 {
            lo += 1;
        }
        // The instruction that can start first; ties by rank, then program order.
        let mut best: Option<(u64, u64, usize)> = None;
        for k in lo..kernels.min(lo + WINDOW) {
            for e in 0..engines {
                let Some(&i) = lanes[k][e].get(next[k][e]) else { continue };
                if preds_left[i] == 0 {
                    let rank = if critical_first { u64::MAX - level[i] } else { 0 };
                    let key = (clock.start(e, ready_at[i]), rank, i);
                    if best.is_none_or(|b| key < b) {
                        best = Some(key);
                    }
                }
            }
        }
        // The earliest unscheduled instruction of kernel `lo` is always ready.
        let Some((start, _, i)) = best else { return (0..n).collect() };
        let end = clock.run(lane[i], start, i, &insts[i].1);
        next[kernel_of[i]][lane[i]] += 1;
        left[kernel_of[i]] -= 1;
        order.push(i);
        for s in dag.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            let s = dag[s];
            preds_left[s] -= 1;
            ready_at[s] = ready_at[s].max(end);
        }
    }
    order
}

/// Each instruction's bottom level: the estimated cycles of the longest
/// dependency path from its start to the end of the program.
fn bottom_levels(insts: &[(Engine, Op, u32)], dag: &DiGraph<usize, ()>, clock: &Clock<'_>) -> Vec<u64> {
    let mut level = vec![0u64; insts.len()];
    for i in (0..insts.len()).rev() {
        let op = &insts[i].1;
        let own = match transfer_cost(op, clock.t) {
            Some(c) => c.latency_cycles + clock.estimated_data_cycles(c.charged_bytes),
            None => compute_cycles(op, clock.t).unwrap_or(0),
        };
        let after = dag.neighbors_directed(NodeIndex::new(i), Direction::Outgoing).map(|s| level[dag[s]]).max();
        level[i] = own + after.unwrap_or(0);
    }
    level
}

/// Estimated engine availability.
struct Clock<'t> {
    t: &'t Target,
    /// When each engine may start (DMA queues: issue) its next instruction.
    free: Vec<u64>,
    /// When each DMA queue's last data phase ends.
    drained: Vec<u64>,
    /// Bytes per cycle of one transfer.
    rate: f64,
    /// Each transfer's data-phase cycles measured by simulating an earlier
    /// order (bandwidth shared as it was then), instead of the estimate.
    measured: Option<&'t [u64]>,
}

impl<'t> Clock<'t> {
    fn new(t: &'t Target, engines: usize) -> Clock<'t> {
        let rate = t.hbm.bytes_per_cycle.as_f64() / 2.0;
        Clock { t, free: vec![0; engines], drained: vec![0; engines], rate, measured: None }
    }

    fn start(&self, e: usize, ready: u64) -> u64 {
        self.free[e].max(ready)
    }

    /// Whether lane `e` is a DMA queue (issuing takes no time there).
    fn is_queue(&self, e: usize) -> bool {
        Engine((e % self.t.engines_per_core() as usize) as u8).class() == EngineClass::Dma
    }

    /// Runs instruction `i`, `op`, on engine `e` from `start`; returns when it ends.
    /// Cycles transfer `i`'s data phase takes: as measured, else estimated.
    fn data_cycles(&self, i: usize, charged_bytes: u64) -> u64 {
        self.measured.map_or_else(|| self.estimated_data_cycles(charged_bytes), |m| m[i])
    }

    /// A data phase of `charged_bytes` at the estimate's rate.
    fn estimated_data_cycles(&self, charged_bytes: u64) -> u64 {
        (charged_bytes as f64 / self.rate).ceil() as u64
    }

    fn run(&mut self, e: usize, start: u64, i: usize, op: &Op) -> u64 {
        if let Some(cost) = transfer_cost(op, self.t) {
            let data = (start + cost.latency_cycles).max(self.drained[e]);
            let end = data + self.data_cycles(i, cost.charged_bytes);
            (self.free[e], self.drained[e]) = (start, end);
            return end;
        }
        let end = start + compute_cycles(op, self.t).unwrap_or(0);
        // A nop or halt on a queue completes after the queue's transfers.
        let end = end.max(if self.is_queue(e) { self.drained[e] } else { 0 });
        self.free[e] = end;
        end
    }
}
