//! The GEMM kernel's one-row path: `C[b, 1, N] = A[b, 1, K] . B[b, K, N]`, a
//! decode step's projection, computed transposed.
//!
//! The general path multiplies with A as the stationary operand and a B panel
//! moving, so each matmul costs its `tile_n` moving columns however few rows A
//! has: one row of A keeps the PE busy as long as 128. Here B is the stationary
//! operand instead, a block of its columns at a time (`[K, block]`, as B is
//! stored), and A's row moves as a column, `A^T` (one element per partition):
//! `C^T[n0.., 0] = B[.., n0..]^T . A^T`. A matmul then costs the PE's minimum
//! (one moving column), half or less of the general path's PE time, and the
//! kernel is bound by reading B, as a decode step is. Blocks are `pe.cols`
//! columns wide (fewer when that is all of N).
//!
//! The result lands one column per PSUM partition: evacuated, it is a column
//! of one partition per column of C, and every elementwise epilogue step runs on it as on
//! a tile (a bias row and a residual are loaded the same way, one element per
//! partition). Steps that depend on an element's position (masks), a per-row
//! scale and a fused row op have no such form: those GEMMs take the general path
//! ([`is_one_row`]).

use jpu_isa::operand::Space;
use jpu_isa::Target;

use super::chain::{Broadcast, EpilogueStep};
use super::gemm::{tensors, Form, GemmProblem, GemmSchedule};
use crate::tiles::{BufSlice, Buffer, HbmBox, TileOp, TileProgram};

/// Whether `p` takes the one-row path: one row of A per batch index, both
/// operands stored plainly, only epilogue steps that are elementwise on a
/// column of C, the buffers within one SRAM partition, and faster by the
/// target's rates than the general path (whose PE time it halves or better,
/// for `A^T`'s one element per partition, each a short DMA run, in HBM time).
/// A schedule's `form` decides instead where it names one.
pub fn is_one_row(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> bool {
    match s.form {
        Some(form) => form == Form::OneRow && one_row_fits(p, s, t),
        None => {
            one_row_fits(p, s, t)
                && estimate(p, t, 1, p.k * t.timing.dma.min_run_bytes.max(p.operand.size_bytes() as u64))
                    < estimate(p, t, s.tile_n as u64, p.k * p.operand.size_bytes() as u64)
        }
    }
}

/// Whether the one-row path can run `p` with `s` (what [`ONE_ROW_NEEDS`] says).
pub fn one_row_fits(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> bool {
    p.m == 1
        && !p.transpose_a
        && !p.transpose_b
        && p.row.is_none()
        && p.epilogue_inputs.iter().all(|e| e.broadcast != Broadcast::Column)
        && p.epilogue.iter().all(|(s, _)| !matches!(s, EpilogueStep::Mask { .. }))
        && buffers(p, s, t).iter().map(|b| b.copies as u64 * b.free as u64 * b.dtype.size_bytes() as u64).sum::<u64>()
            <= t.sram.partition_bytes as u64
}

/// What the one-row path needs, for errors.
pub const ONE_ROW_NEEDS: &str = "M = 1, A and B stored plainly, no fused row op, column operand or mask, \
     and its buffers within one SRAM partition";

/// Cycles of the larger of PE time (matmuls of `moving` columns) and HBM time
/// (B, C and `a_bytes` of A per batch index), without overlap losses.
fn estimate(p: &GemmProblem, t: &Target, moving: u64, a_bytes: u64) -> u64 {
    let size = p.operand.size_bytes() as u64;
    let batch = p.batch_map.len() as u64;
    let kt = p.k.div_ceil(t.pe.rows as u64);
    let matmuls = if moving == 1 { p.n.div_ceil(t.pe.cols as u64) } else { p.n.div_ceil(moving) };
    let pe = batch * matmuls * kt * jpu_isa::cost::matmul_cycles(p.operand, moving, t);
    let bytes = batch * (p.k * p.n * size + a_bytes + p.n * p.result.size_bytes() as u64);
    let rate = t.hbm.bytes_per_cycle;
    pe.max((bytes * rate.den).div_ceil(rate.num))
}

/// Columns of C per block.
fn block(p: &GemmProblem, t: &Target) -> u64 {
    (t.pe.cols as u64).min(p.n).max(1)
}

/// The work items of `p`: (batch index, block of columns of C).
pub fn items(p: &GemmProblem, t: &Target) -> Vec<(usize, u64)> {
    let blocks = p.n.div_ceil(block(p, t));
    (0..p.batch_map.len()).flat_map(|ci| (0..blocks).map(move |nb| (ci, nb))).collect()
}

/// Buffer indices of the one-row path.
const A_T: usize = 0;
const B_BLOCK: usize = 1;
const PSUM: usize = 2;
const C_COL: usize = 3;
const CAST: usize = 4;
/// The first epilogue input's buffer (one per input, in order).
const EPILOGUE: usize = 5;

/// The tile program of items `range` of [`items`] (a core's share).
pub fn lower(p: &GemmProblem, s: &GemmSchedule, t: &Target, range: std::ops::Range<usize>) -> TileProgram {
    let (tensors, c_tensor) = tensors(p);
    let all = items(p, t);
    let mine = &all[range.start.min(all.len())..range.end.min(all.len())];
    let (kt, block, queues) = (p.k.div_ceil(s.tile_k as u64), block(p, t), queues(s, t));
    let l = OneRow { p, s, c_tensor, kt, block, queues };
    let new_batch = |j: usize| j == 0 || mine[j - 1].0 != mine[j].0;
    let mut ops = Vec::new();
    // Item j + 1's loads go before item j's matmuls.
    if !mine.is_empty() {
        ops.extend(l.loads(0, mine[0], true));
    }
    for j in 0..mine.len() {
        if j + 1 < mine.len() {
            ops.extend(l.loads(j + 1, mine[j + 1], new_batch(j + 1)));
        }
        l.compute(&mut ops, j, mine[j]);
    }
    let mut debug_ops = vec![p.text.clone()];
    debug_ops.extend(p.epilogue.iter().map(|(_, text)| text.clone()));
    debug_ops.extend(p.cast.as_ref().map(|c| c.1.clone()));
    TileProgram { tensors, buffers: buffers(p, s, t), ops, debug_ops }
}

/// Queues of the input row's loads and of B's blocks, unless the schedule
/// pins them: apart, because a DMA queue is in order and the input row waits
/// for the kernel that produces it (a norm, say) while B can stream from the
/// start. B takes queue 0; the row the next one, or the last (the stores'
/// queue, where the row's producer stored it) when there are two.
fn queues(s: &GemmSchedule, t: &Target) -> (u8, u8) {
    let q = t.dma.queues;
    let row = if q >= 3 { 1 } else { q.saturating_sub(1) as u8 };
    (s.a_queue.unwrap_or(row), s.b_queue.unwrap_or(0))
}

/// `A^T` chunks (two copies, one per batch index in turn), B blocks, the PSUM
/// column, the evacuated column, the cast column, one column per epilogue input.
fn buffers(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> Vec<Buffer> {
    let kt = p.k.div_ceil(s.tile_k as u64) as u32;
    let cols = block(p, t) as u32;
    let sram = |name: &str, dtype, parts, free, copies| Buffer::new(name, Space::Sram, dtype, parts, free, copies);
    let mut buffers = vec![
        sram("a_t", p.operand, s.tile_k, kt, 2),
        sram("b_block", p.operand, s.tile_k, kt * cols, s.b_buffers.max(2)),
        Buffer::new("psum", Space::Psum, p.operand.accumulator(), cols, 1, s.psum_banks),
        sram("c_col", p.result, cols, 1, s.out_buffers),
        sram("c_cast", p.cast.as_ref().map_or(p.result, |c| c.0), cols, 1, s.out_buffers),
    ];
    for e in &p.epilogue_inputs {
        buffers.push(sram(&format!("{}_{}", e.broadcast.prefix(), e.name), e.dtype, cols, 1, s.out_buffers));
    }
    buffers
}

struct OneRow<'a> {
    p: &'a GemmProblem,
    s: &'a GemmSchedule,
    c_tensor: usize,
    kt: u64,
    /// Columns of C per block.
    block: u64,
    /// DMA queues of the loads that wait for other kernels (`A^T`, epilogue
    /// inputs) and of B's blocks (see [`queues`]).
    queues: (u8, u8),
}

impl OneRow<'_> {
    /// Columns of C in block `nb`.
    fn width(&self, nb: u64) -> u64 {
        self.block.min(self.p.n - nb * self.block)
    }

    /// Item j's loads: its batch index's `A^T` chunks when it starts one, its B
    /// block's K-chunks, and its epilogue inputs' columns.
    fn loads(&self, j: usize, (ci, nb): (usize, u64), new_batch: bool) -> Vec<(TileOp, u32)> {
        let (p, s) = (self.p, self.s);
        let (tk, n0, w) = (s.tile_k as u64, nb * self.block, self.width(nb));
        let (ab, bb) = p.batch_map[ci];
        let mut ops = Vec::new();
        for kc in 0..self.kt {
            let kr = tk.min(p.k - kc * tk);
            if new_batch {
                // One element of A per partition: K rows 1 element apart.
                let src = HbmBox { tensor: 0, start: ab * p.k + kc * tk, rows: kr as u32, row_stride: 1, cols: 1 };
                let dst = BufSlice { buf: A_T, copy: ci as u32 % 2, parts: kr as u32, offset: kc as u32, len: 1 };
                ops.push((TileOp::Load { dst, src, queue: Some(self.queues.0) }, 0));
            }
            let start = bb * p.k * p.n + kc * tk * p.n + n0;
            let src = HbmBox { tensor: 1, start, rows: kr as u32, row_stride: p.n, cols: w as u32 };
            let offset = (kc * self.block) as u32;
            let dst = BufSlice { buf: B_BLOCK, copy: self.b_copy(j), parts: kr as u32, offset, len: w as u32 };
            ops.push((TileOp::Load { dst, src, queue: Some(self.queues.1) }, 0));
        }
        for (e, input) in p.epilogue_inputs.iter().enumerate() {
            let batch = if input.broadcast == Broadcast::Full { ci as u64 * p.n } else { 0 };
            let src = HbmBox { tensor: 2 + e, start: batch + n0, rows: w as u32, row_stride: 1, cols: 1 };
            let dst = BufSlice { buf: EPILOGUE + e, copy: self.stage(j), parts: w as u32, offset: 0, len: 1 };
            ops.push((TileOp::Load { dst, src, queue: Some(self.queues.0) }, self.reader(e)));
        }
        ops
    }

    fn b_copy(&self, j: usize) -> u32 {
        j as u32 % self.s.b_buffers.max(2)
    }

    fn stage(&self, j: usize) -> u32 {
        j as u32 % self.s.out_buffers
    }

    /// The debug op of the first step that reads epilogue input `e`.
    fn reader(&self, e: usize) -> u32 {
        1 + self.p.epilogue.iter().position(|(st, _)| st.reads(e)).unwrap_or(0) as u32
    }

    /// Item j's matmuls into one PSUM column, its evacuation, epilogue steps,
    /// cast and store.
    fn compute(&self, ops: &mut Vec<(TileOp, u32)>, j: usize, (ci, nb): (usize, u64)) {
        let (p, s) = (self.p, self.s);
        let (tk, w) = (s.tile_k as u64, self.width(nb) as u32);
        let psum = BufSlice { buf: PSUM, copy: j as u32 % s.psum_banks, parts: w, offset: 0, len: 1 };
        for kc in 0..self.kt {
            let kr = tk.min(p.k - kc * tk) as u32;
            let offset = (kc * self.block) as u32;
            let stationary = BufSlice { buf: B_BLOCK, copy: self.b_copy(j), parts: kr, offset, len: w };
            let moving = BufSlice { buf: A_T, copy: ci as u32 % 2, parts: kr, offset: kc as u32, len: 1 };
            let matmul = TileOp::Matmul { dst: psum, stationary, moving, accumulate: kc > 0, transposed: false };
            ops.push((matmul, 0));
        }
        let stage = self.stage(j);
        let col = BufSlice { buf: C_COL, copy: stage, parts: w, offset: 0, len: 1 };
        ops.push((TileOp::Copy { dst: col, src: psum }, 0));
        for (si, (step, _)) in p.epilogue.iter().enumerate() {
            let input = |e: usize| (BufSlice { buf: EPILOGUE + e, copy: stage, parts: w, offset: 0, len: 1 }, false);
            ops.push((step.tile_op(col, (0, nb * self.block), input), 1 + si as u32));
        }
        let last_step = p.epilogue.len() as u32;
        let out = match p.cast {
            Some(_) => {
                let cast = BufSlice { buf: CAST, copy: stage, parts: w, offset: 0, len: 1 };
                ops.push((TileOp::Copy { dst: cast, src: col }, last_step + 1));
                cast
            }
            None => col,
        };
        let start = ci as u64 * p.n + nb * self.block;
        let dst = HbmBox { tensor: self.c_tensor, start, rows: w, row_stride: 1, cols: 1 };
        ops.push((TileOp::Store { dst, src: out }, last_step + p.cast.is_some() as u32));
    }
}
