//! The flash path: query tiles against K/V windows with an online softmax (the
//! steps of the module above).

use jpu_isa::operand::{ActFunc, AluOp, ReduceOp, Space};
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::{buffer, rows_box, slice, tensors, zero_buffer, AttentionPlan, AttentionProblem, TK, TO, TQ, TV};
use crate::tiles::{Buffer, HbmBox, HbmTensor, TileOp, TileProgram, TileScalar};

/// Copies of the per-block statistics columns.
const STAT_COPIES: usize = 3;
/// Copies of the probabilities tile.
const PROB_COPIES: usize = 3;
/// Copies of the output staging tile: enough that a store's DMA latency
/// (1,000 cycles on jpu1) does not hold up short tiles' divides.
const O_TILE_COPIES: usize = 6;
/// Copies of the query tile (at least; a multiple of the heads sharing a
/// K^T, so that each copy always holds the same head slot).
const Q_COPIES: usize = 3;

/// A query tile: `heads` consecutive query heads from `head` (global index over
/// batch x heads), rows `r0 .. r0 + rows` of each, packed head after head.
#[derive(Debug, Clone, Copy)]
struct QTile {
    group: u64,
    head: u64,
    heads: u64,
    r0: u64,
    rows: u64,
}

impl QTile {
    fn parts(&self) -> u32 {
        (self.heads * self.rows) as u32
    }
}

/// One KV block of a query tile.
#[derive(Debug, Clone, Copy)]
struct Block {
    tile: usize,
    c0: u64,
    c1: u64,
    first: bool,
    last: bool,
    window: usize,
}

/// A window of K/V rows `a .. b` of the groups from `group` (one, or
/// `kt_heads` of them sharing a K^T).
#[derive(Debug, Clone, Copy)]
struct Window {
    group: u64,
    a: u64,
    b: u64,
}

/// Buffers of the flash path, as [`flash_buffers`] orders them.
const K_ROWS: usize = 0;
const V_ROWS: usize = 1;
const K_T: usize = 2;
const K_T_PSUM: usize = 3;
const Q_TILE: usize = 4;
const SCORES: usize = 5;
const PROBS: usize = 6;
const O_ACC: usize = 7;
const O_TILE: usize = 8;
const ROW_MAX: usize = 9;
const NEG_MAX: usize = 10;
const BLOCK_SUM: usize = 11;
const RESCALE: usize = 12;
const ROW_SUM: usize = 13;
const MASK: usize = 14;
/// With the mask on the PE: the mask row as key columns in f32 divided by the
/// scale, and its high and low parts in the operand dtype (high parts in
/// columns `0..chunks`, low parts after them).
const MASK_F32: usize = 15;
const MASK_PARTS: usize = 16;
/// 1 where the mask is finite, else 0.
const MASK_FINITE: usize = 17;
/// A prepared mask row is clamped to +-2^100 so that its parts stay finite (an
/// `-inf` or `f32::MIN` mask keeps the scores' row max finite too).
const MASK_LIMIT: f32 = 1.2676506e30;
/// The flash path being lowered: its query tiles, KV blocks and K/V windows in
/// execution order.
struct Flash<'a> {
    p: &'a AttentionProblem,
    plan: &'a AttentionPlan,
    tiles: Vec<QTile>,
    blocks: Vec<Block>,
    windows: Vec<Window>,
    /// The K^T tensor, when a transpose kernel wrote it to HBM scratch.
    tkt: Option<usize>,
    /// The mask tensor, when there is one.
    tmask: Option<usize>,
    /// With the mask on the PE: the HBM scratch tensor of its prepared rows.
    mask_parts: Option<usize>,
    d_chunks: u64,
    /// Window rows rounded up to whole KV chunks.
    win_pad: u64,
    /// `sk - sq`: query i sees keys up to `i + off` when causal.
    off: i64,
    /// Window copies.
    wc: usize,
    /// Score copies.
    nsc: usize,
    /// The `Q . K^T` contraction width: the head dim, plus the two mask
    /// columns with the mask on the PE.
    da: u64,
    /// KV heads per window (see `AttentionPlan::kt_heads`).
    kt: u64,
    /// Copies of the query tile.
    q_copies: usize,
    /// With the mask on the PE, per window: whether it starts a new mask row
    /// (which is then prepared) and whether its K rows copy needs the row's
    /// parts written (the copy held another row, or none).
    mask_rows: Vec<(bool, bool)>,
    /// The first window of each distinct mask row.
    mask_row_windows: Vec<usize>,
}

/// Query tiles in the order the flash path runs them: KV group by group, each
/// group's heads, each head's rows (or a group's heads packed in one tile).
fn query_tiles(p: &AttentionProblem, plan: &AttentionPlan) -> Vec<QTile> {
    let (sq, group) = (p.sq, p.group());
    let mut tiles = Vec::new();
    for g in 0..p.batch * p.hk {
        let first_head = p.first_head(g);
        if plan.heads_per_tile > 1 {
            tiles.push(QTile { group: g, head: first_head, heads: group, r0: 0, rows: sq });
            continue;
        }
        for h in first_head..first_head + group {
            for r0 in (0..sq).step_by(plan.q_tile as usize) {
                tiles.push(QTile { group: g, head: h, heads: 1, r0, rows: plan.q_tile.min(sq - r0) });
            }
        }
    }
    tiles
}

/// Per query tile ([`query_tiles`]'s order): its KV group and the KV blocks
/// it visits (its work, up to its causal limit).
pub(super) fn tile_work(p: &AttentionProblem, plan: &AttentionPlan) -> Vec<(u64, u64)> {
    let off = p.sk as i64 - p.sq as i64;
    let blocks = |t: &QTile| {
        let end = if p.causal { ((t.r0 + t.rows) as i64 + off).clamp(0, p.sk as i64) as u64 } else { p.sk };
        end.div_ceil(plan.kv_block) * t.heads
    };
    query_tiles(p, plan).iter().map(|t| (t.group, blocks(t))).collect()
}

/// Lowers the flash path for query tiles `tiles` ([`query_tiles`]'s order)
/// on core `core` (each core prepares the mask rows its tiles read in a
/// scratch tensor of its own).
pub(super) fn lower(
    p: &AttentionProblem,
    plan: &AttentionPlan,
    t: &Target,
    (tiles, core): (std::ops::Range<usize>, usize),
) -> TileProgram {
    let mut tensors = tensors(p);
    // With K^T in HBM, a window's K^T is loaded, not transposed.
    let tkt = p.k_transposed.as_ref().map(|name| {
        let mut shape = p.k.shape.clone();
        let r = shape.len();
        shape.swap(r - 2, r - 1);
        tensors.push(HbmTensor { name: name.clone(), dtype: p.dtype, shape, role: Role::Input });
        tensors.len() - 1
    });
    let tmask = p.mask.as_ref().map(|m| {
        let (name, shape) = (m.view.tensor.clone(), m.view.tensor_shape.clone());
        tensors.push(HbmTensor { name, dtype: m.dtype, shape, role: Role::Input });
        tensors.len() - 1
    });
    let mask_parts = tmask.filter(|_| plan.mask_on_pe).map(|_| {
        let suffix = if core == 0 { String::new() } else { core.to_string() };
        let name = format!("{}__mask_parts{suffix}", p.out.tensor);
        let shape = vec![mask_row_count(p, plan), p.sk, 2];
        tensors.push(HbmTensor { name, dtype: p.dtype, shape, role: Role::Scratch });
        tensors.len() - 1
    });
    let mut ops = Flash::new(p, plan, tkt, (tmask, mask_parts), tiles).ops();
    evacuate_kt_on_act_if_it_pays(&mut ops, p.dtype, t);
    TileProgram { tensors, buffers: flash_buffers(p, plan), ops, debug_ops: p.text.clone() }
}

/// When the VE is the kernel's busiest engine (short heads: it carries the
/// softmax statistics), the K^T evacuations (VE copies out of the transposes'
/// PSUM) become ACT identity activations, which round exactly as a copy does,
/// if that lowers the busier of the VE and the ACT; otherwise they stay on the
/// VE, whose shorter fixed cost keeps them off the PE's path. Loads are the
/// target's costs over the tile ops (matmuls on `operand`).
fn evacuate_kt_on_act_if_it_pays(ops: &mut [(TileOp, u32)], operand: DType, t: &Target) {
    let timing = &t.timing;
    let elems = |op: &TileOp| {
        let (reads, writes) = op.slices();
        reads.iter().chain(&writes).map(|s| s.len as u64).max().unwrap_or(0)
    };
    let is_evacuation = |op: &TileOp| matches!(op, TileOp::Copy { src, .. } if src.buf == K_T_PSUM);
    let [mut pe, mut ve, mut act, mut moved] = [0u64; 4];
    for (op, _) in ops.iter() {
        match op {
            TileOp::Matmul { moving, .. } => pe += jpu_isa::cost::matmul_cycles(operand, moving.len as u64, t),
            TileOp::Transpose { src, .. } => pe += (src.parts as u64).max(timing.pe.transpose_min_cycles),
            TileOp::Activate { .. } => act += timing.act.fixed_cycles + elems(op),
            TileOp::Load { .. } | TileOp::HbmCopy { .. } | TileOp::Store { .. } | TileOp::Gather { .. } => {}
            _ => {
                ve += timing.ve.fixed_cycles + elems(op);
                moved += u64::from(is_evacuation(op)) * elems(op);
            }
        }
    }
    let count = ops.iter().filter(|(op, _)| is_evacuation(op)).count() as u64;
    let (ve_after, act_after) =
        (ve - moved - count * timing.ve.fixed_cycles, act + moved + count * timing.act.fixed_cycles);
    if ve <= pe || ve_after.max(act_after) >= ve.max(act) {
        return;
    }
    for (op, _) in ops.iter_mut() {
        if let TileOp::Copy { dst, src } = *op {
            if src.buf == K_T_PSUM {
                *op = TileOp::activate(ActFunc::Identity, dst, src);
            }
        }
    }
}

impl<'a> Flash<'a> {
    /// Query tiles `tiles` of [`query_tiles`], then each tile's KV blocks up
    /// to its causal limit, and the windows they read.
    fn new(
        p: &'a AttentionProblem,
        plan: &'a AttentionPlan,
        tkt: Option<usize>,
        (tmask, mask_parts): (Option<usize>, Option<usize>),
        tiles: std::ops::Range<usize>,
    ) -> Flash<'a> {
        let (sq, sk) = (p.sq, p.sk);
        let off = sk as i64 - sq as i64;
        let tiles = query_tiles(p, plan)[tiles].to_vec();
        let (mut windows, mut blocks): (Vec<Window>, Vec<Block>) = (Vec::new(), Vec::new());
        for (ti, tile) in tiles.iter().enumerate() {
            // Keys past the last row's limit are masked for every row of the tile.
            let end = if p.causal { ((tile.r0 + tile.rows) as i64 + off).clamp(0, sk as i64) as u64 } else { sk };
            let mut c0 = 0;
            while c0 < end {
                let c1 = end.min(c0 + plan.kv_block);
                let a = c0 / plan.window * plan.window;
                let group = tile.group - tile.group % plan.kt_heads;
                if windows.last().is_none_or(|w| w.group != group || w.a != a) {
                    windows.push(Window { group, a, b: sk.min(a + plan.window) });
                }
                blocks.push(Block { tile: ti, c0, c1, first: c0 == 0, last: c1 == end, window: windows.len() - 1 });
                c0 = c1;
            }
        }
        let mask_rows = match (plan.mask_on_pe, &p.mask) {
            (true, Some(mask)) => {
                let row = |w: &Window| mask.view.row_start(p.first_head(w.group), 0);
                let mut held = vec![None; plan.window_copies as usize];
                let copies = held.len();
                windows
                    .iter()
                    .enumerate()
                    .map(|(wi, w)| {
                        let fresh = wi == 0 || row(&windows[wi - 1]) != row(w);
                        let copy = &mut held[wi % copies];
                        let stale = *copy != Some(row(w));
                        *copy = Some(row(w));
                        (fresh, stale)
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let mask_row_windows: Vec<usize> = (0..mask_rows.len()).filter(|&w| mask_rows[w].0).collect();
        debug_assert!(mask_row_windows.len() as u64 <= mask_row_count(p, plan));
        Flash {
            mask_row_windows,
            kt: plan.kt_heads,
            q_copies: q_copies(plan),
            mask_rows,
            p,
            plan,
            tiles,
            blocks,
            windows,
            tkt,
            tmask,
            mask_parts,
            d_chunks: contraction(p, plan).div_ceil(plan.d_chunk),
            da: contraction(p, plan),
            win_pad: plan.window.div_ceil(plan.kv_chunk) * plan.kv_chunk,
            off,
            wc: plan.window_copies as usize,
            nsc: plan.score_copies as usize,
        }
    }

    /// Loads window `wi`'s K rows (or its K^T from HBM scratch) and V rows.
    fn load_window(&self, ops: &mut Vec<(TileOp, u32)>, wi: usize) {
        let windows = &self.windows;
        let tkt = self.tkt;
        let d_chunks = self.d_chunks;
        let win_pad = self.win_pad;
        let wc = self.wc;
        let kv_chunk = self.plan.kv_chunk;
        let d_chunk = self.plan.d_chunk;
        let d = self.p.d;
        let dv = self.p.dv;
        let sk = self.p.sk;
        let w = windows[wi];
        let copy = wi % wc;
        if let Some(tkt) = tkt {
            for dc in 0..d_chunks {
                let dk = d_chunk.min(d - dc * d_chunk);
                let src = HbmBox {
                    tensor: tkt,
                    start: (w.group * d + dc * d_chunk) * sk + w.a,
                    rows: dk as u32,
                    row_stride: sk,
                    cols: (w.b - w.a) as u32,
                };
                let dst = slice(K_T, copy, dk, dc * win_pad, w.b - w.a);
                ops.push((TileOp::Load { dst, src, queue: None }, 0));
            }
        }
        let chunks = (w.b - w.a).div_ceil(kv_chunk);
        // Packs are whole (the plan only packs a count that divides the groups).
        for (slot, c) in (0..self.kt).flat_map(|slot| (0..chunks).map(move |c| (slot, c))) {
            let (r, g) = (w.a + c * kv_chunk, w.group + slot);
            let kk = kv_chunk.min(w.b - r);
            if tkt.is_none() {
                let k_src = rows_box(&self.p.k, TK, (g, 1), r, kk);
                let dst = slice(K_ROWS, copy, kk, c * self.da + slot * d, d);
                ops.push((TileOp::Load { dst, src: k_src, queue: None }, 0));
            }
            let v_src = rows_box(&self.p.v, TV, (g, 1), r, kk);
            let dst = slice(V_ROWS, copy, kk, (slot * win_pad / kv_chunk + c) * dv, dv);
            ops.push((TileOp::Load { dst, src: v_src, queue: None }, 0));
        }
        self.mask_into_window(ops, wi);
    }

    /// Transposes window `wi`'s K rows on the PE into `[head dim, keys]` (not needed when K^T comes from HBM).
    fn transpose_window(&self, ops: &mut Vec<(TileOp, u32)>, wi: usize) {
        let windows = &self.windows;
        let tkt = self.tkt;
        let d_chunks = self.d_chunks;
        let win_pad = self.win_pad;
        let wc = self.wc;
        let kv_chunk = self.plan.kv_chunk;
        let d_chunk = self.plan.d_chunk;
        let bank_cols = self.plan.bank_cols;
        let da = self.da;
        if tkt.is_some() {
            return;
        }
        let w = windows[wi];
        let copy = wi % wc;
        let chunks = (w.b - w.a).div_ceil(kv_chunk);
        let per_bank = bank_cols / kv_chunk;
        for dc in 0..d_chunks {
            let dk = d_chunk.min(da - dc * d_chunk);
            let mut c = 0;
            while c < chunks {
                let group_end = chunks.min(c + per_bank);
                let mut width = 0;
                for ci in c..group_end {
                    let kk = kv_chunk.min(w.b - w.a - ci * kv_chunk);
                    let dst = slice(K_T_PSUM, 0, dk, (ci - c) * kv_chunk, kk);
                    let src = slice(K_ROWS, copy, kk, ci * da + dc * d_chunk, dk);
                    ops.push((TileOp::Transpose { dst, src }, 0));
                    width = (ci - c) * kv_chunk + kk;
                }
                // (On the ACT instead when that pays: `evacuate_kt_on_act_if_it_pays`.)
                let dst = slice(K_T, copy, dk, dc * win_pad + c * kv_chunk, width);
                ops.push((TileOp::Copy { dst, src: slice(K_T_PSUM, 0, dk, 0, width) }, 0));
                c = group_end;
            }
        }
    }

    /// Loads query tile `ti`.
    fn load_q(&self, ops: &mut Vec<(TileOp, u32)>, ti: usize) {
        let tiles = &self.tiles;
        let d = self.p.d;
        let t = tiles[ti];
        let src = rows_box(&self.p.q, TQ, (t.head, t.heads), t.r0, t.parts() as u64);
        let dst = slice(Q_TILE, ti % self.q_copies, t.parts() as u64, t.group % self.kt * d, d);
        ops.push((TileOp::Load { dst, src, queue: None }, 0));
    }

    /// Block `bi`'s scores `S = Q . K^T` on the PE, bank by bank.
    fn scores_of(&self, ops: &mut Vec<(TileOp, u32)>, bi: usize) {
        let plan = self.plan;
        let tiles = &self.tiles;
        let blocks = &self.blocks;
        let windows = &self.windows;
        let d_chunks = self.d_chunks;
        let win_pad = self.win_pad;
        let wc = self.wc;
        let d_chunk = self.plan.d_chunk;
        let bank_cols = self.plan.bank_cols;
        let da = self.da;
        let blk = blocks[bi];
        let t = tiles[blk.tile];
        let w = windows[blk.window];
        let mq = t.parts() as u64;
        let mut col = 0;
        while col < blk.c1 - blk.c0 {
            let n = bank_cols.min(blk.c1 - blk.c0 - col);
            for dc in 0..d_chunks {
                let dk = d_chunk.min(da - dc * d_chunk);
                ops.push((
                    TileOp::Matmul {
                        dst: slice(SCORES, bi % plan.score_copies as usize, mq, col, n),
                        stationary: slice(Q_TILE, blk.tile % self.q_copies, mq, dc * d_chunk, dk),
                        moving: slice(K_T, blk.window % wc, dk, dc * win_pad + blk.c0 - w.a + col, n),
                        accumulate: dc > 0,
                        transposed: true,
                    },
                    0,
                ));
            }
            col += n;
        }
    }

    /// Loads block `bi`'s mask rows (one row per query row of the tile, the
    /// block's keys; a row shared by every query row is read per partition).
    fn load_mask(&self, ops: &mut Vec<(TileOp, u32)>, bi: usize) {
        let (Some(tm), Some(mask)) = (self.tmask, self.p.mask.as_ref()) else { return };
        if self.plan.mask_on_pe {
            return;
        }
        let view = &mask.view;
        let blk = self.blocks[bi];
        let t = self.tiles[blk.tile];
        let (mq, width) = (t.parts() as u64, blk.c1 - blk.c0);
        let start = view.row_start(t.head, t.r0) + blk.c0 * view.strides.last().copied().unwrap_or(1);
        let src = HbmBox { tensor: tm, start, rows: mq as u32, row_stride: view.row_stride(), cols: width as u32 };
        ops.push((TileOp::Load { dst: slice(MASK, bi % self.nsc, mq, 0, width), src, queue: None }, 0));
    }

    /// With the mask on the PE, with window `wi`'s K rows: its mask row's high
    /// and low parts (see [`Flash::prepare_masks`]) loaded from
    /// HBM scratch into the two columns after each chunk's head dims, where the
    /// transposes carry them into K^T (unless this K rows copy already holds
    /// them). Q's two columns there hold ones, so `Q . K^T` adds `mask / scale`
    /// to the scores.
    fn mask_into_window(&self, ops: &mut Vec<(TileOp, u32)>, wi: usize) {
        let (Some(parts), Some(&(_, stale))) = (self.mask_parts, self.mask_rows.get(wi)) else { return };
        if !stale {
            return;
        }
        let (w, kc, sk) = (self.windows[wi], self.plan.kv_chunk, self.p.sk);
        let r = self.mask_row(wi) as u64;
        for c in 0..(w.b - w.a).div_ceil(kc) {
            let (key, kk) = (w.a + c * kc, kc.min(w.b - w.a - c * kc));
            let src = HbmBox { tensor: parts, start: (r * sk + key) * 2, rows: kk as u32, row_stride: 2, cols: 2 };
            let dst = slice(K_ROWS, wi % self.wc, kk, c * self.da + self.kt * self.p.d, 2);
            ops.push((TileOp::Load { dst, src, queue: None }, 0));
        }
    }

    /// The ordinal of window `wi`'s distinct mask row.
    fn mask_row(&self, wi: usize) -> usize {
        self.mask_row_windows.partition_point(|&w| w <= wi) - 1
    }

    /// With the mask on the PE, first of all: every distinct mask row loaded
    /// (key chunk c of row r in column `c * rows + r`, key `c * kv_chunk + p`
    /// on partition p), divided by the scale, clamped, and split into
    /// operand-dtype high and low parts (their sum is within 2^-17 of it in
    /// bf16; an infinite or NaN mask value is its high part as is), all rows in
    /// each VE pass; then stored to HBM scratch as `[rows, keys, 2]` (high, low),
    /// where each window's K rows load their key's pair.
    fn prepare_masks(&self, ops: &mut Vec<(TileOp, u32)>) {
        let (Some(tm), Some(parts), Some(mask)) = (self.tmask, self.mask_parts, &self.p.mask) else { return };
        let (sk, kc) = (self.p.sk, self.plan.kv_chunk);
        let (rows, chunks) = (self.mask_row_windows.len() as u64, sk.div_ceil(kc));
        let kk = |c: u64| kc.min(sk - c * kc);
        for (r, &wi) in self.mask_row_windows.iter().enumerate() {
            let start = mask.view.row_start(self.p.first_head(self.windows[wi].group), 0);
            for c in 0..chunks {
                let src = HbmBox { tensor: tm, start: start + c * kc, rows: kk(c) as u32, row_stride: 1, cols: 1 };
                ops.push((TileOp::Load { dst: slice(MASK, 0, kk(c), c * rows + r as u64, 1), src, queue: None }, 0));
            }
        }
        // Whole chunks as one box, a partial last chunk as another.
        let whole = sk / kc;
        let boxes =
            [(kc, 0, whole * rows), (sk % kc, whole * rows, rows)].into_iter().filter(|&(p, _, n)| p > 0 && n > 0);
        for (pp, c0, n) in boxes {
            let (raw, row) = (slice(MASK, 0, pp, c0, n), slice(MASK_F32, 0, pp, c0, n));
            let (hi, lo) = (slice(MASK_PARTS, 0, pp, c0, n), slice(MASK_PARTS, 0, pp, chunks * rows + c0, n));
            let scale = TileScalar::Imm(1.0 / self.p.scale);
            ops.push((TileOp::Scalar { op: AluOp::Mul, dst: row, src: raw, scalar: scale, reverse: false }, 0));
            for (op, limit) in [(AluOp::Max, -MASK_LIMIT), (AluOp::Min, MASK_LIMIT)] {
                let scalar = TileScalar::Imm(limit);
                ops.push((TileOp::Scalar { op, dst: row, src: row, scalar, reverse: false }, 0));
            }
            ops.push((TileOp::Copy { dst: hi, src: row }, 0));
            ops.push((TileOp::Binary { op: AluOp::Sub, dst: lo, a: row, b: hi }, 0));
            // Infinities and NaNs of the mask stay what they are (the clamp is
            // for finite values only): `x * 0 == 0` holds exactly for finite x.
            let finite = slice(MASK_FINITE, 0, pp, c0, n);
            let zero = TileScalar::Imm(0.0);
            ops.push((TileOp::Scalar { op: AluOp::Mul, dst: finite, src: raw, scalar: zero, reverse: false }, 0));
            ops.push((TileOp::Scalar { op: AluOp::IsEq, dst: finite, src: finite, scalar: zero, reverse: false }, 0));
            ops.push((TileOp::CopyWhere { dst: hi, src: raw, cond: finite, negate: true }, 0));
        }
        for (r, c, part) in (0..rows).flat_map(|r| (0..chunks).flat_map(move |c| [(r, c, 0), (r, c, 1)])) {
            let dst = HbmBox {
                tensor: parts,
                start: (r * sk + c * kc) * 2 + part,
                rows: kk(c) as u32,
                row_stride: 2,
                cols: 1,
            };
            let src = slice(MASK_PARTS, 0, kk(c), part * chunks * rows + c * rows + r, 1);
            ops.push((TileOp::Store { dst, src }, 0));
        }
    }

    /// Stage A of block `bi`: mask, running max, exponentials with their row sum, and (after the first block) the rescale factor and the running sum.
    fn stage_a(&self, ops: &mut Vec<(TileOp, u32)>, bi: usize) {
        let p = self.p;
        let tiles = &self.tiles;
        let blocks = &self.blocks;
        let off = self.off;
        let nsc = self.nsc;
        let blk = blocks[bi];
        let t = tiles[blk.tile];
        let (mq, width) = (t.parts() as u64, blk.c1 - blk.c0);
        let (cur, prev, tc) = (bi % STAT_COPIES, (bi + STAT_COPIES - 1) % STAT_COPIES, blk.tile % 2);
        let s = slice(SCORES, bi % nsc, mq, 0, width);
        let col = |b, copy| slice(b, copy, mq, 0, 1);
        // With a mask the scores become `S * scale + mask` in place (the
        // reference's roundings), and the softmax then runs at scale 1.
        let scale = if p.mask.is_some() && !self.plan.mask_on_pe {
            // The ACT scales (x * scale + -0.0 is x * scale exactly): the VE is the busier engine.
            let scale = TileScalar::Imm(p.scale);
            let (bias, accum) = (TileScalar::Imm(-0.0), None);
            ops.push((TileOp::Activate { func: ActFunc::Identity, dst: s, src: s, scale, bias, accum }, 0));
            let m = slice(MASK, bi % nsc, mq, 0, width);
            ops.push((TileOp::Binary { op: AluOp::Add, dst: s, a: s, b: m }, 0));
            1.0
        } else {
            p.scale
        };
        if p.causal && t.heads == 1 {
            // Row r (query r0 + r) keeps keys c0 + f <= r0 + r + off.
            let first_masked = (t.r0 as i64 + off + 1 - blk.c0 as i64).max(0) as u64;
            if first_masked < width {
                let sub = slice(SCORES, bi % nsc, mq, first_masked, width - first_masked);
                let base = t.r0 as i64 + off - blk.c0 as i64 - first_masked as i64;
                ops.push((
                    TileOp::Select {
                        cmp: jpu_isa::operand::CmpOp::Ge,
                        dst: sub,
                        src: sub,
                        partition_step: 1,
                        free_step: -1,
                        base: base as i32,
                        fill: f32::NEG_INFINITY,
                    },
                    0,
                ));
            }
        }
        let m = col(ROW_MAX, cur);
        ops.push((TileOp::Reduce { op: ReduceOp::Max, dst: m, src: s }, 0));
        if !blk.first {
            ops.push((TileOp::Binary { op: AluOp::Max, dst: m, a: m, b: col(ROW_MAX, prev) }, 0));
        }
        let nb = col(NEG_MAX, cur);
        ops.push((
            TileOp::Scalar { op: AluOp::Mul, dst: nb, src: m, scalar: TileScalar::Imm(-scale), reverse: false },
            0,
        ));
        let l = col(ROW_SUM, tc);
        let sum_to = if blk.first { l } else { col(BLOCK_SUM, cur) };
        ops.push((
            TileOp::Activate {
                func: ActFunc::Exp,
                dst: slice(PROBS, bi % PROB_COPIES, mq, 0, width),
                src: s,
                scale: TileScalar::Imm(scale),
                bias: TileScalar::Column(nb),
                accum: Some(sum_to),
            },
            0,
        ));
        if !blk.first {
            let alpha = col(RESCALE, cur);
            ops.push((
                TileOp::Activate {
                    func: ActFunc::Exp,
                    dst: alpha,
                    src: col(ROW_MAX, prev),
                    scale: TileScalar::Imm(scale),
                    bias: TileScalar::Column(nb),
                    accum: None,
                },
                0,
            ));
            // l = l * alpha + block sum, on the ACT beside the exponentials.
            ops.push((
                TileOp::Activate {
                    func: ActFunc::Identity,
                    dst: l,
                    src: l,
                    scale: TileScalar::Column(alpha),
                    bias: TileScalar::Column(sum_to),
                    accum: None,
                },
                0,
            ));
        }
    }

    /// Stage B of block `bi`: rescale O, `O += P . V`, and after the last block `O / l` and the store.
    fn stage_b(&self, ops: &mut Vec<(TileOp, u32)>, bi: usize) {
        let plan = self.plan;
        let tiles = &self.tiles;
        let blocks = &self.blocks;
        let windows = &self.windows;
        let wc = self.wc;
        let kv_chunk = self.plan.kv_chunk;
        let dv = self.p.dv;
        let blk = blocks[bi];
        let t = tiles[blk.tile];
        let w = windows[blk.window];
        let mq = t.parts() as u64;
        let o = slice(O_ACC, blk.tile % plan.o_copies as usize, mq, 0, dv);
        if !blk.first {
            let alpha = slice(RESCALE, bi % STAT_COPIES, mq, 0, 1);
            ops.push((
                TileOp::Scalar { op: AluOp::Mul, dst: o, src: o, scalar: TileScalar::Column(alpha), reverse: false },
                0,
            ));
        }
        for (s_i, k0) in (blk.c0..blk.c1).step_by(kv_chunk as usize).enumerate() {
            let kk = kv_chunk.min(blk.c1 - k0);
            let chunk = (k0 - w.a) / kv_chunk;
            ops.push((
                TileOp::Matmul {
                    dst: o,
                    stationary: slice(PROBS, bi % PROB_COPIES, mq, k0 - blk.c0, kk),
                    moving: slice(
                        V_ROWS,
                        blk.window % wc,
                        kk,
                        ((t.group - w.group) * self.win_pad / kv_chunk + chunk) * dv,
                        dv,
                    ),
                    accumulate: !(blk.first && s_i == 0),
                    transposed: true,
                },
                0,
            ));
        }
        if blk.last {
            let tc = blk.tile % 2;
            let out = slice(O_TILE, blk.tile % O_TILE_COPIES, mq, 0, dv);
            let l = slice(ROW_SUM, tc, mq, 0, 1);
            ops.push((
                TileOp::Scalar { op: AluOp::Div, dst: out, src: o, scalar: TileScalar::Column(l), reverse: false },
                0,
            ));
            let dst = rows_box(&self.p.out, TO, (t.head, t.heads), t.r0, mq);
            ops.push((TileOp::Store { dst, src: out }, 0));
        }
    }

    /// Every tile op in emission order (each engine runs its ops in this order).
    fn ops(&self) -> Vec<(TileOp, u32)> {
        let tiles = &self.tiles;
        let blocks = &self.blocks;
        let windows = &self.windows;
        let wc = self.wc;
        let nsc = self.nsc;
        let mut ops: Vec<(TileOp, u32)> = Vec::new();
        self.prepare_masks(&mut ops);
        for copy in 0..self.q_copies {
            // Other heads' columns of a shared K^T: zeros, never overwritten
            // (each copy always holds the same head slot).
            if self.kt > 1 {
                ops.push((TileOp::Memset { dst: slice(Q_TILE, copy, self.plan.q_tile, 0, self.da), value: 0.0 }, 0));
            }
            // Q's mask columns: ones, never overwritten by the Q loads.
            if self.plan.mask_on_pe {
                let at = self.kt * self.p.d;
                ops.push((TileOp::Memset { dst: slice(Q_TILE, copy, self.plan.q_tile, at, 2), value: 1.0 }, 0));
            }
        }
        // Emission order (each engine runs its ops in this order). Iteration i issues
        // the SCORES of block i + L (L = score copies - 1), stage A of block i + a
        // (a = 1 when L >= 2, so ACT and VE work on the next block while the PE
        // finishes this one), then stage B of block i. A window's loads are issued
        // when the window `copies - 1` back starts, its transposes just before its
        // first SCORES; a tile's Q load when the tile two back starts.
        let lookahead = nsc - 1;
        let lag_a = usize::from(lookahead >= 2);
        let (mut windows_loaded, mut windows_transposed, mut tiles_loaded) = (0usize, 0usize, 0usize);
        let mut scores_issued = 0usize;
        // `oldest`: the first block whose stage B is not yet issued; windows up TO
        // `copies - 1` past its window may be loaded (a load before a PV in program
        // order would overwrite what that PV reads).
        let mut issue_scores = |ops: &mut Vec<(TileOp, u32)>, upto: usize, oldest: usize| {
            let window_limit = blocks.get(oldest).map_or(0, |b| b.window) + wc;
            while scores_issued <= upto && scores_issued < blocks.len() {
                let blk = blocks[scores_issued];
                if blk.window >= window_limit {
                    break;
                }
                // Loads: windows up TO the limit; this tile and the next.
                while windows_loaded < windows.len() && windows_loaded < window_limit {
                    self.load_window(ops, windows_loaded);
                    windows_loaded += 1;
                }
                while tiles_loaded < tiles.len() && tiles_loaded < blk.tile + self.q_copies - 1 {
                    self.load_q(ops, tiles_loaded);
                    tiles_loaded += 1;
                }
                if blk.window >= windows_transposed {
                    self.transpose_window(ops, blk.window);
                    windows_transposed = blk.window + 1;
                }
                self.load_mask(ops, scores_issued);
                self.scores_of(ops, scores_issued);
                // With a third window copy, the next window's K^T is prepared
                // behind these scores: off the chain of its own first scores.
                let next = blk.window + 1;
                if wc >= 3 && windows_transposed == next && next < windows.len().min(window_limit) {
                    self.transpose_window(ops, next);
                    windows_transposed = next + 1;
                }
                scores_issued += 1;
            }
        };
        issue_scores(&mut ops, lookahead.saturating_sub(1), 0);
        for bi in 0..lag_a.min(blocks.len()) {
            self.stage_a(&mut ops, bi);
        }
        for bi in 0..blocks.len() {
            issue_scores(&mut ops, bi + lookahead, bi);
            if bi + lag_a < blocks.len() {
                self.stage_a(&mut ops, bi + lag_a);
            }
            self.stage_b(&mut ops, bi);
        }
        ops
    }
}

/// The buffers of the flash path, indexed as [`lower`] uses them.
pub(super) fn flash_buffers(p: &AttentionProblem, plan: &AttentionPlan) -> Vec<Buffer> {
    let (kc, dc, qt) = (plan.kv_chunk, plan.d_chunk, plan.q_tile);
    let win_pad = plan.window.div_ceil(kc) * kc;
    let da = contraction(p, plan);
    let (win_chunks, d_chunks) = (win_pad / kc, da.div_ceil(dc));
    let (wc, sram, psum, f32) = (plan.window_copies, Space::Sram, Space::Psum, DType::F32);
    vec![
        buffer("k_rows", sram, p.dtype, kc, win_chunks * da, wc),
        buffer("v_rows", sram, p.dtype, kc, plan.kt_heads * win_chunks * p.dv, wc),
        buffer("k_t", sram, p.dtype, dc, d_chunks * win_pad, wc),
        buffer("k_t_psum", psum, f32, dc, plan.bank_cols.min(win_pad), 1),
        buffer("q_tile", sram, p.dtype, qt, da, q_copies(plan) as u32),
        buffer("scores", psum, f32, qt, block_cols(p, plan), plan.score_copies),
        buffer("probs", sram, p.dtype, qt, block_cols(p, plan), PROB_COPIES as u32),
        buffer("o_acc", psum, f32, qt, p.dv, plan.o_copies),
        buffer("o_tile", sram, p.out_dtype, qt, p.dv, O_TILE_COPIES as u32),
        buffer("row_max", sram, f32, qt, 1, STAT_COPIES as u32),
        buffer("neg_max", sram, f32, qt, 1, STAT_COPIES as u32),
        buffer("block_sum", sram, f32, qt, 1, STAT_COPIES as u32),
        buffer("rescale", sram, f32, qt, 1, STAT_COPIES as u32),
        buffer("row_sum", sram, f32, qt, 1, 2),
    ]
    .into_iter()
    .chain(mask_buffers(p, plan))
    .chain(zero_buffer(p, plan))
    .collect()
}

/// The mask's buffers: its block rows, or with the mask on the PE its prepared rows.
fn mask_buffers(p: &AttentionProblem, plan: &AttentionPlan) -> Vec<Buffer> {
    let Some(m) = &p.mask else { return Vec::new() };
    if !plan.mask_on_pe {
        return vec![buffer("mask", Space::Sram, m.dtype, plan.q_tile, block_cols(p, plan), plan.score_copies)];
    }
    let (sram, cols) = (Space::Sram, p.sk.div_ceil(plan.kv_chunk) * mask_row_count(p, plan));
    vec![
        buffer("mask", sram, m.dtype, plan.kv_chunk, cols, 1),
        buffer("mask_f32", sram, DType::F32, plan.kv_chunk, cols, 1),
        buffer("mask_parts", sram, p.dtype, plan.kv_chunk, 2 * cols, 1),
        buffer("mask_finite", sram, DType::F32, plan.kv_chunk, cols, 1),
    ]
}

/// With the mask on the PE, its distinct rows in window order: one per run of
/// K/V head packs (one resident window each) that read the same row.
fn mask_row_count(p: &AttentionProblem, plan: &AttentionPlan) -> u64 {
    let Some(m) = &p.mask else { return 0 };
    let row = |g: u64| m.view.row_start(p.first_head(g), 0);
    let packs = (0..p.batch * p.hk).step_by(plan.kt_heads.max(1) as usize);
    packs.enumerate().filter(|&(i, g)| i == 0 || row(g) != row(g - plan.kt_heads)).count() as u64
}

/// Copies of the query tile: [`Q_COPIES`] rounded up to a multiple of the heads
/// sharing a K^T.
fn q_copies(plan: &AttentionPlan) -> usize {
    (Q_COPIES as u64).div_ceil(plan.kt_heads) as usize * plan.kt_heads as usize
}

/// Columns of a score block's buffers: a block, or all keys when fewer (short
/// sequences then share a PSUM bank with other accumulators).
pub(super) fn block_cols(p: &AttentionProblem, plan: &AttentionPlan) -> u64 {
    plan.kv_block.min(p.sk.div_ceil(plan.kv_chunk) * plan.kv_chunk)
}

/// The width of the `Q . K^T` contraction: the head dim, and with the mask on
/// the PE its two columns.
fn contraction(p: &AttentionProblem, plan: &AttentionPlan) -> u64 {
    plan.kt_heads * p.d + if plan.mask_on_pe { 2 } else { 0 }
}
