//! The decode path: few query rows against a resident K/V group, scores transposed.

use jpu_isa::operand::{ActFunc, AluOp, ReduceOp, Space};
use jpu_isa::DType;

use super::{buffer, rows_box, slice, tensors, zero_buffer, AttentionPlan, AttentionProblem, TK, TO, TQ, TV};
use crate::tiles::{Buffer, TileOp, TileProgram, TileScalar};

/// The buffers of the decode path, indexed as the `Decode` path uses them (the constants below).
pub(super) fn decode_buffers(p: &AttentionProblem, plan: &AttentionPlan) -> Vec<Buffer> {
    let (kc, dc, bank) = (plan.kv_chunk, plan.d_chunk, plan.bank_cols);
    let mq = p.group() * p.sq;
    let (nd, nvc, nc) = (p.d.div_ceil(dc), p.dv.div_ceil(dc), p.sk.div_ceil(kc));
    let cols = nc * mq;
    let wide = kc.max(dc).max(mq);
    let (sram, psum, f32) = (Space::Sram, Space::Psum, DType::F32);
    vec![
        buffer("k_rows", sram, p.dtype, kc, nc * p.d, 2),
        buffer("v_rows", sram, p.dtype, kc, nc * p.dv, 2),
        buffer("q_tile", sram, p.dtype, mq, p.d, 2),
        buffer("q_t", sram, p.dtype, dc, nd * mq, 2),
        buffer("scores_t_psum", psum, f32, wide, bank, 1),
        buffer("bcast_psum", psum, f32, wide, bank, 1),
        buffer("small_psum", psum, f32, wide, bank, 1),
        buffer("scores_t", sram, f32, kc, cols, 2),
        buffer("key_max", sram, f32, kc, nc.div_ceil(2) * mq, 1),
        buffer("row_max", sram, f32, mq, 1, 2),
        buffer("max_row", sram, f32, 1, cols, 2),
        buffer("ones_row", sram, f32, 1, kc, 1),
        buffer("ones_col", sram, p.dtype, kc, 1, 1),
        buffer("probs_t", sram, p.dtype, kc, cols, 2),
        buffer("sums", sram, f32, 1, cols, 2),
        buffer("row_sum", sram, f32, mq, 1, 2),
        buffer("o_t", sram, f32, dc, nvc * mq, 2),
        buffer("o_tile", sram, p.out_dtype, mq, p.dv, 2),
    ]
    .into_iter()
    .chain(zero_buffer(p, plan))
    .collect()
}

/// Lowers the decode path for KV groups `groups`: few query rows (the packed heads of a group), K and V of the
/// group resident. Scores are computed transposed, `S^T = K . Q^T` (K as the
/// transposed stationary operand: no K transposes, and each 128-key chunk costs
/// one minimum-length matmul), so the PE work is about half the HBM time:
///
/// 1. PE: `Q^T` (one transpose per head-dim chunk); `S^T` chunk by chunk into one
///    bank, `[keys, chunk x rows]` (a partial last chunk is first set to -inf;
///    causal: each head's columns of the last chunks get the affine select).
/// 2. VE: `S^T` to SRAM; the per-key maximum over chunks (a tree of elementwise
///    max over halves); PE transpose, VE row max: `m` per query row.
/// 3. PE/VE: `m` as a row replicated per chunk, broadcast to every key partition
///    by an f32 matmul with a ones row (exact); VE: `S^T - m`; ACT: `P^T =
///    exp(scale (S^T - m))` in the operand dtype.
/// 4. PE: row sums by a ones column times `P^T`; VE: sum over chunks (tree), PE
///    transpose to a column `l`.
/// 5. PE: `O^T += V_c^T . P^T_c` per chunk (V as the plain stationary operand, in
///    value-dim chunks of at most one PE width); VE to SRAM, PE transpose, VE
///    `O / l` in the result dtype, store.
///
/// PSUM: three banks, each reused in turn (the order of use is the program
/// order, so dependencies are exact).
pub(super) fn lower(p: &AttentionProblem, plan: &AttentionPlan, groups: std::ops::Range<u64>) -> TileProgram {
    let decode = Decode::new(p, plan);
    let mut ops = Vec::new();
    ops.push((TileOp::Memset { dst: slice(ONES_ROW, 0, 1, 0, decode.kc), value: 1.0 }, 0));
    ops.push((TileOp::Memset { dst: slice(ONES_COL, 0, decode.kc, 0, 1), value: 1.0 }, 0));
    if !groups.is_empty() {
        decode.load(&mut ops, groups.start);
    }
    for g in groups.clone() {
        if g + 1 < groups.end {
            decode.load(&mut ops, g + 1);
        }
        let c = (g % 2) as usize;
        decode.scores(&mut ops, c);
        decode.row_max(&mut ops, c);
        decode.probabilities(&mut ops, c);
        decode.row_sums(&mut ops, c);
        decode.output(&mut ops, c, g);
    }
    TileProgram { tensors: tensors(p), buffers: decode_buffers(p, plan), ops, debug_ops: p.text.clone() }
}

/// Buffers of the decode path, as [`decode_buffers`] orders them.
const K_ROWS: usize = 0;
const V_ROWS: usize = 1;
const Q_TILE: usize = 2;
const Q_T: usize = 3;
const ST_PSUM: usize = 4;
const BCAST: usize = 5;
const SMALL: usize = 6;
const ST: usize = 7;
const KEY_MAX: usize = 8;
const ROW_MAX: usize = 9;
const MAX_ROW: usize = 10;
const ONES_ROW: usize = 11;
const ONES_COL: usize = 12;
const PROBS_T: usize = 13;
const SUMS: usize = 14;
const ROW_SUM: usize = 15;
const O_T: usize = 16;
const O_TILE: usize = 17;

type Ops = Vec<(TileOp, u32)>;

/// The decode path's sizes: chunks of keys (`kc`), of head dims (`dc`), and the
/// group's `mq` query rows packed in one tile.
struct Decode<'a> {
    p: &'a AttentionProblem,
    kc: u64,
    dc: u64,
    group: u64,
    mq: u64,
    /// Head-dim chunks of q and k, of v, and key chunks.
    nd: u64,
    nvc: u64,
    nc: u64,
    /// Score columns: `nc` chunks of `mq`.
    cols: u64,
    /// Keys in the last chunk.
    last_rows: u64,
}

impl<'a> Decode<'a> {
    fn new(p: &'a AttentionProblem, plan: &AttentionPlan) -> Decode<'a> {
        let (kc, dc) = (plan.kv_chunk, plan.d_chunk);
        let group = p.group();
        let mq = group * p.sq;
        let nc = p.sk.div_ceil(kc);
        Decode {
            p,
            kc,
            dc,
            group,
            mq,
            nd: p.d.div_ceil(dc),
            nvc: p.dv.div_ceil(dc),
            nc,
            cols: nc * mq,
            last_rows: p.sk - (nc - 1) * kc,
        }
    }

    /// The first query head of group `g` (its heads are consecutive and, as
    /// the plan checked, evenly spaced in HBM: one box).
    fn first_head(&self, g: u64) -> u64 {
        let (b, kvh) = (g / self.p.hk, g % self.p.hk);
        b * self.p.hq + kvh * self.group
    }

    /// Loads group `g`'s K and V chunks and its query rows into copy `g % 2`.
    fn load(&self, ops: &mut Ops, g: u64) {
        let (p, kc, mq) = (self.p, self.kc, self.mq);
        let (d, dv, sk) = (p.d, p.dv, p.sk);
        let c = (g % 2) as usize;
        for ci in 0..self.nc {
            let kk = kc.min(sk - ci * kc);
            let k_src = rows_box(&p.k, TK, (g, 1), ci * kc, kk);
            ops.push((TileOp::Load { dst: slice(K_ROWS, c, kk, ci * d, d), src: k_src, queue: None }, 0));
            let v_src = rows_box(&p.v, TV, (g, 1), ci * kc, kk);
            ops.push((TileOp::Load { dst: slice(V_ROWS, c, kk, ci * dv, dv), src: v_src, queue: None }, 0));
        }
        let q_src = rows_box(&p.q, TQ, (self.first_head(g), self.group), 0, mq);
        ops.push((TileOp::Load { dst: slice(Q_TILE, c, mq, 0, d), src: q_src, queue: None }, 0));
    }

    /// Folds the `nc` chunks of `src` (each `mq` wide) into chunk 0 of `dst` with
    /// `op`, halving each round; returns where the result is.
    fn tree(&self, ops: &mut Ops, op: AluOp, dst: (usize, usize), src: (usize, usize), parts: u64) -> (usize, usize) {
        let mq = self.mq;
        let mut n = self.nc;
        let mut from = src;
        while n > 1 {
            let h = n / 2;
            ops.push((
                TileOp::Binary {
                    op,
                    dst: slice(dst.0, dst.1, parts, 0, h * mq),
                    a: slice(from.0, from.1, parts, 0, h * mq),
                    b: slice(from.0, from.1, parts, (n - h) * mq, h * mq),
                },
                0,
            ));
            if n % 2 == 1 && from != dst {
                // The unpaired middle chunk moves along.
                let (dst, src) = (slice(dst.0, dst.1, parts, h * mq, mq), slice(from.0, from.1, parts, h * mq, mq));
                ops.push((TileOp::Copy { dst, src }, 0));
            }
            from = dst;
            n -= h;
        }
        from
    }

    /// Step 1: `Q^T`, then `S^T` chunk by chunk (causal: the affine select).
    fn scores(&self, ops: &mut Ops, c: usize) {
        let (p, kc, dc, mq, nc) = (self.p, self.kc, self.dc, self.mq, self.nc);
        let (d, sk) = (p.d, p.sk);
        for dd in 0..self.nd {
            let dk = dc.min(d - dd * dc);
            let (small, q) = (slice(SMALL, 0, dk, dd * mq, mq), slice(Q_TILE, c, mq, dd * dc, dk));
            ops.push((TileOp::Transpose { dst: small, src: q }, 0));
            ops.push((TileOp::Copy { dst: slice(Q_T, c, dk, dd * mq, mq), src: small }, 0));
        }
        if self.last_rows < kc {
            ops.push((TileOp::Memset { dst: slice(ST_PSUM, 0, kc, (nc - 1) * mq, mq), value: f32::NEG_INFINITY }, 0));
        }
        for ci in 0..nc {
            let kk = kc.min(sk - ci * kc);
            for dd in 0..self.nd {
                let dk = dc.min(d - dd * dc);
                let op = TileOp::Matmul {
                    dst: slice(ST_PSUM, 0, kk, ci * mq, mq),
                    stationary: slice(K_ROWS, c, kk, ci * d + dd * dc, dk),
                    moving: slice(Q_T, c, dk, dd * mq, mq),
                    accumulate: dd > 0,
                    transposed: true,
                };
                ops.push((op, 0));
            }
        }
        if p.causal {
            self.causal_mask(ops);
        }
    }

    /// Query i of each head sees keys j <= i + sk - sq, so only the last chunks
    /// hold masked keys; each head's columns get the affine select.
    fn causal_mask(&self, ops: &mut Ops) {
        let (p, kc, mq) = (self.p, self.kc, self.mq);
        let off = p.sk as i64 - p.sq as i64;
        for ci in 0..self.nc {
            let last_key = (ci * kc + kc.min(p.sk - ci * kc)) as i64 - 1;
            if last_key <= off {
                continue;
            }
            for hh in 0..self.group {
                let cols_of_head = slice(ST_PSUM, 0, kc, ci * mq + hh * p.sq, p.sq);
                let select = TileOp::Select {
                    cmp: jpu_isa::operand::CmpOp::Ge,
                    dst: cols_of_head,
                    src: cols_of_head,
                    partition_step: -1,
                    free_step: 1,
                    base: (off - (ci * kc) as i64) as i32,
                    fill: f32::NEG_INFINITY,
                };
                ops.push((select, 0));
            }
        }
    }

    /// Step 2: the maximum per query row, into `ROW_MAX`.
    fn row_max(&self, ops: &mut Ops, c: usize) {
        let (kc, mq, cols) = (self.kc, self.mq, self.cols);
        ops.push((TileOp::Copy { dst: slice(ST, c, kc, 0, cols), src: slice(ST_PSUM, 0, kc, 0, cols) }, 0));
        let folded = self.tree(ops, AluOp::Max, (KEY_MAX, 0), (ST, c), kc);
        let src = slice(folded.0, folded.1, kc, 0, mq);
        ops.push((TileOp::Transpose { dst: slice(SMALL, 0, mq, 0, kc), src }, 0));
        let (dst, src) = (slice(ROW_MAX, c, mq, 0, 1), slice(SMALL, 0, mq, 0, kc));
        ops.push((TileOp::Reduce { op: ReduceOp::Max, dst, src }, 0));
    }

    /// Step 3: the maximum broadcast to every key partition, subtracted, and
    /// `P^T = exp(scale (S^T - m))`.
    fn probabilities(&self, ops: &mut Ops, c: usize) {
        let (kc, mq, nc, cols) = (self.kc, self.mq, self.nc, self.cols);
        ops.push((TileOp::Transpose { dst: slice(SMALL, 0, 1, 0, mq), src: slice(ROW_MAX, c, mq, 0, 1) }, 0));
        ops.push((TileOp::Copy { dst: slice(MAX_ROW, c, 1, 0, mq), src: slice(SMALL, 0, 1, 0, mq) }, 0));
        let mut have = 1;
        while have < nc {
            let k = have.min(nc - have);
            let (dst, src) = (slice(MAX_ROW, c, 1, have * mq, k * mq), slice(MAX_ROW, c, 1, 0, k * mq));
            ops.push((TileOp::Copy { dst, src }, 0));
            have += k;
        }
        let broadcast = TileOp::Matmul {
            dst: slice(BCAST, 0, kc, 0, cols),
            stationary: slice(ONES_ROW, 0, 1, 0, kc),
            moving: slice(MAX_ROW, c, 1, 0, cols),
            accumulate: false,
            transposed: false,
        };
        ops.push((broadcast, 0));
        let s = slice(ST, c, kc, 0, cols);
        ops.push((TileOp::Binary { op: AluOp::Sub, dst: s, a: s, b: slice(BCAST, 0, kc, 0, cols) }, 0));
        let exp = TileOp::Activate {
            func: ActFunc::Exp,
            dst: slice(PROBS_T, c, kc, 0, cols),
            src: s,
            scale: TileScalar::Imm(self.p.scale),
            bias: TileScalar::Imm(-0.0),
            accum: None,
        };
        ops.push((exp, 0));
    }

    /// Step 4: row sums of the rounded probabilities, as a column `ROW_SUM`.
    fn row_sums(&self, ops: &mut Ops, c: usize) {
        let (kc, mq, cols) = (self.kc, self.mq, self.cols);
        let sums = TileOp::Matmul {
            dst: slice(SMALL, 0, 1, 0, cols),
            stationary: slice(ONES_COL, 0, kc, 0, 1),
            moving: slice(PROBS_T, c, kc, 0, cols),
            accumulate: false,
            transposed: false,
        };
        ops.push((sums, 0));
        ops.push((TileOp::Copy { dst: slice(SUMS, c, 1, 0, cols), src: slice(SMALL, 0, 1, 0, cols) }, 0));
        let summed = self.tree(ops, AluOp::Add, (SUMS, c), (SUMS, c), 1);
        let src = slice(summed.0, summed.1, 1, 0, mq);
        ops.push((TileOp::Transpose { dst: slice(SMALL, 0, mq, 0, 1), src }, 0));
        ops.push((TileOp::Copy { dst: slice(ROW_SUM, c, mq, 0, 1), src: slice(SMALL, 0, mq, 0, 1) }, 0));
    }

    /// Step 5: `O^T` = the sum over chunks of `V_c^T . P^T_c` (per value-dim
    /// chunk of at most `dc` rows); transposed back, divided, stored.
    fn output(&self, ops: &mut Ops, c: usize, g: u64) {
        let (p, kc, dc, mq) = (self.p, self.kc, self.dc, self.mq);
        let (dv, sk) = (p.dv, p.sk);
        for vc in 0..self.nvc {
            let dvk = dc.min(dv - vc * dc);
            for ci in 0..self.nc {
                let kk = kc.min(sk - ci * kc);
                let op = TileOp::Matmul {
                    dst: slice(ST_PSUM, 0, dvk, vc * mq, mq),
                    stationary: slice(V_ROWS, c, kk, ci * dv + vc * dc, dvk),
                    moving: slice(PROBS_T, c, kk, ci * mq, mq),
                    accumulate: ci > 0,
                    transposed: false,
                };
                ops.push((op, 0));
            }
            let (o_t, acc) = (slice(O_T, c, dvk, vc * mq, mq), slice(ST_PSUM, 0, dvk, vc * mq, mq));
            ops.push((TileOp::Copy { dst: o_t, src: acc }, 0));
            ops.push((TileOp::Transpose { dst: slice(BCAST, 0, mq, vc * dc, dvk), src: o_t }, 0));
        }
        let out = slice(O_TILE, c, mq, 0, dv);
        let divide = TileOp::Scalar {
            op: AluOp::Div,
            dst: out,
            src: slice(BCAST, 0, mq, 0, dv),
            scalar: TileScalar::Column(slice(ROW_SUM, c, mq, 0, 1)),
            reverse: false,
        };
        ops.push((divide, 0));
        let dst = rows_box(&self.p.out, TO, (self.first_head(g), self.group), 0, self.mq);
        ops.push((TileOp::Store { dst, src: out }, 0));
    }
}
