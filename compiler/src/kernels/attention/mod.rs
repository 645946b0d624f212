//! The flash-attention kernel: `softmax(q . k^T * scale [+ causal mask]) . v` with
//! grouped-query heads, never writing the score matrix to HBM.
//!
//! Per KV head (a *group*: the query heads that read it), K and V rows are loaded
//! into a *window*: the whole sequence when it fits SRAM (then K and V are read
//! from HBM once and serve every query head and query tile of the group), else one
//! KV block at a time (re-read per query tile). K is transposed once per window on
//! the PE (into `[head dim, kv]`, the moving operand of `Q . K^T`); short heads
//! share a window, so one transpose makes the K^T of several heads
//! ([`AttentionPlan::kt_heads`]).
//!
//! A *query tile* is up to one partition per query row: a tile of one head, or
//! several heads of a group packed together when their rows fit (decode), so the
//! group's heads share each K/V read. For each KV block of a tile (online softmax):
//!
//! 1. PE: `S = Q . K^T` into PSUM (Q is the stationary operand, read transposed
//!    from its row-major tile at no cost), accumulated over head-dim chunks.
//! 2. VE: the diagonal block of a causal tile gets the affine select (`-inf`
//!    above the diagonal); fully masked blocks are never computed.
//! 3. VE: block row max, running max `m`, `nb = -scale * m`.
//! 4. ACT: `P = exp(S * scale + nb)` into SRAM in the operand dtype, with the f32
//!    row sum fused; on later blocks `alpha = exp(m_old * scale + nb)`.
//! 5. VE: `l = l * alpha + rowsum`, `O *= alpha` (O stays in PSUM).
//! 6. PE: `O += P . V`, P read as the transposed stationary operand (no transpose
//!    pass), V chunks as moving operands.
//!
//! After the last block, `O / l` is rounded into the result dtype and stored.
//! Scores of block i + 1 are issued on the PE before block i's softmax, and every
//! per-block buffer has two copies, so the PE computes while ACT and VE work.
//!
//! Numerics: the scores, maxima and sums are f32 as in the reference; P reaches
//! the PV matmul rounded to the operand dtype (unnormalised) and the sum of
//! exponentials is of unrounded values, so results match the reference within
//! the attention tolerance of docs/testing.md, not bit for bit.

use jpu_isa::operand::Space;
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::layout::TensorView;
use super::transpose::TransposeProblem;
use super::{statement, unsupported, Ctx, Field, Kernel, Work};
use crate::error::CompileError;
use crate::ir::ValueId;
use crate::ir::{Op, Span};
use crate::tiles::{BufSlice, Buffer, HbmBox, HbmTensor, TileOp, TileProgram};

mod decode;
mod flash;

use decode::decode_buffers;
use flash::flash_buffers;

/// An attention kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionProblem {
    /// Queries (`[.., heads, seq, dim]`), as they sit in HBM: a tensor of
    /// their own or a view of another (the head split folded into the loads).
    pub q: TensorView,
    /// Keys.
    pub k: TensorView,
    /// Values.
    pub v: TensorView,
    /// Operand dtype (q, k and v share it).
    pub dtype: DType,
    /// Leading (batch) elements.
    pub batch: u64,
    /// Query heads.
    pub hq: u64,
    /// KV heads.
    pub hk: u64,
    /// Query rows per head.
    pub sq: u64,
    /// Keys per head.
    pub sk: u64,
    /// Head dim of q and k.
    pub d: u64,
    /// Head dim of v.
    pub dv: u64,
    /// Query i sees keys j <= i + sk - sq.
    pub causal: bool,
    /// An additive mask or bias.
    pub mask: Option<Mask>,
    /// Multiplies the scores (positive).
    pub scale: f32,
    /// The result, as it is stored: its own tensor, or a transpose's that the
    /// kernel writes in place (the head merge folded into the stores).
    pub out: TensorView,
    /// Rows at the start of each head that see no key (causal, more queries
    /// than keys): zero, stored from a zeroed tile. `q`, `out` and `sq` cover
    /// only the rows after them.
    pub zero_rows: u64,
    /// The dtype stored.
    pub out_dtype: DType,
    /// The IR statements the kernel implements.
    pub text: Vec<String>,
    /// Indices of the IR nodes the kernel computes.
    pub nodes: Vec<usize>,
    /// An HBM tensor holding K with its last two dims swapped (`[.., heads,
    /// dim, seq]`), written by a transpose kernel before this one: streamed
    /// windows then load K^T directly instead of transposing K per window.
    pub k_transposed: Option<String>,
    /// The op's source span.
    pub span: Span,
}

/// An attention mask or bias as the kernel reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Its view over the scores `[.., hq, sq, sk]` (stride 0 along its broadcast
    /// dims, 1 along the keys): a key-padding mask is one row per batch index
    /// read for every head and query row.
    pub view: TensorView,
    /// Its element type.
    pub dtype: DType,
}

/// An attention kernel and its tiling.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionKernel {
    /// What it computes.
    pub p: AttentionProblem,
    /// How it is tiled.
    pub plan: AttentionPlan,
}

/// The attention kernel of node `i`, with its tiling chosen for `t`.
pub fn select(cx: &Ctx<'_>, i: usize, t: &Target) -> Result<AttentionKernel, CompileError> {
    let node = &cx.f.nodes[i];
    let Op::Attention { causal, scale } = node.op else { return Err(unsupported(node, "is not attention")) };
    let values = cx.hbm_values(node)?;
    let (&[q, k, v], mask) = (&values[..3.min(values.len())], values.get(3)) else {
        return Err(unsupported(node, "is malformed"));
    };
    let (qn, kn, vn) = (cx.f.node(q), cx.f.node(k), cx.f.node(v));
    let dtype = qn.ty.dtype.storage();
    if !matches!(dtype, DType::Bf16 | DType::F16 | DType::F32) {
        return Err(unsupported(node, &format!("on {dtype} operands is not supported yet (bf16, f16 and f32 are)")));
    }
    let r = qn.ty.shape.len();
    let dims = |s: &[u64]| (s[r - 3], s[r - 2], s[r - 1]);
    let ((hq, sq, d), (hk, sk, _), (_, _, dv)) = (dims(&qn.ty.shape), dims(&kn.ty.shape), dims(&vn.ty.shape));
    if qn.ty.shape[..r - 3] != kn.ty.shape[..r - 3] || kn.ty.shape[..r - 3] != vn.ty.shape[..r - 3] {
        return Err(unsupported(node, "broadcasts batch dims between q, k and v, which is not supported yet"));
    }
    if scale <= 0.0 {
        return Err(unsupported(node, &format!("has scale {scale}; the kernel needs a positive scale")));
    }
    if qn.ty.elems() == 0 || kn.ty.elems() == 0 || vn.ty.elems() == 0 {
        let why = format!("has an empty operand ({}, {}, {}), which is not supported yet", qn.ty, kn.ty, vn.ty);
        return Err(unsupported(node, &why));
    }
    // Causal with more queries than keys: the first rows of each head see no
    // key and are zero; the kernel computes the last `sk` rows (views shifted past the others).
    let zero_rows = if causal { sq.saturating_sub(sk) } else { 0 };
    let (mut q_view, mut out_view) = (cx.view(q), cx.view(ValueId(i as u32)));
    for view in [&mut q_view, &mut out_view] {
        view.offset += zero_rows * view.row_stride();
        view.shape[r - 2] -= zero_rows;
    }
    let mask = match mask {
        Some(&m) => Some(Mask {
            view: mask_view(cx, m, &qn.ty.shape, sk, zero_rows).ok_or_else(|| {
                unsupported(
                    node,
                    "has a mask that is constant along the keys (broadcast over the last dim), which is not supported",
                )
            })?,
            dtype: cx.f.node(m).ty.dtype.storage(),
        }),
        None => None,
    };
    let mut text = vec![format!("{} {{causal = {causal}, scale = {scale}}}", statement(cx.f, i))];
    let mut nodes = vec![i];
    let stored_in = cx.layout.place[i].tensor;
    if stored_in != i {
        text.push(statement(cx.f, stored_in));
        nodes.push(stored_in);
    }
    let p = AttentionProblem {
        q: q_view,
        k: cx.view(k),
        v: cx.view(v),
        dtype,
        batch: qn.ty.shape[..r - 3].iter().product(),
        hq,
        hk,
        sq: sq - zero_rows,
        sk,
        d,
        dv,
        causal,
        mask,
        scale: scale as f32,
        out: out_view,
        zero_rows,
        out_dtype: node.ty.dtype.storage(),
        text,
        nodes,
        k_transposed: None,
        span: node.span.clone(),
    };
    let plan = p.plan(t).map_err(|why| CompileError::limit(&p.text[0], why, p.span.clone()))?;
    Ok(AttentionKernel { p, plan })
}

/// Mask value `m` viewed over the scores `[.., hq, sq, sk]` (q's shape with the
/// keys last) and shifted past the `zero_rows` rows that see no key; `None` when
/// it is broadcast along the keys.
fn mask_view(cx: &Ctx<'_>, m: ValueId, q_shape: &[u64], sk: u64, zero_rows: u64) -> Option<TensorView> {
    let own = cx.view(m);
    let r = q_shape.len();
    let mut shape = q_shape.to_vec();
    shape[r - 1] = sk;
    let mr = own.shape.len();
    let strides: Vec<u64> = (0..r)
        .map(|j| match (j + mr).checked_sub(r) {
            Some(k) if own.shape[k] != 1 => own.strides[k],
            _ => 0,
        })
        .collect();
    if strides[r - 1] != 1 && sk > 1 {
        return None;
    }
    let mut view = TensorView { shape, strides, ..own };
    view.offset += zero_rows * view.strides[r - 2];
    view.shape[r - 2] -= zero_rows;
    Some(view)
}

/// The schedule fields.
const FIELDS: &[&str] = &["kv_block", "window_copies", "decode"];

impl AttentionKernel {
    /// Applies one override to `plan`: turning the decode path off (the flash
    /// tiling is then chosen anew), a narrower KV block (a multiple of
    /// `kv_chunk`, at most the chosen block, which is what the score banks
    /// hold), or the window copies (flash path only).
    fn set(&self, plan: &mut AttentionPlan, f: &Field, t: &Target) -> Result<(), String> {
        let number = || f.value.parse::<u64>().map_err(|_| format!("`{}` is not a number", f.value));
        if plan.decode && f.name != "decode" && FIELDS.contains(&f.name.as_str()) {
            return Err("applies to the flash path only; set `decode = false` first".into());
        }
        match f.name.as_str() {
            "decode" => match f.value.as_str() {
                "false" if plan.decode => *plan = self.p.flash_plan(t)?,
                "false" => {}
                "true" if plan.decode => {}
                "true" => return Err("the decode path does not apply to this attention (or does not fit)".into()),
                v => return Err(format!("is `true` or `false`, not `{v}`")),
            },
            "kv_block" => {
                let b = number()?;
                let chosen = self.p.flash_plan(t)?.kv_block;
                if b == 0 || b % plan.kv_chunk != 0 || b > chosen {
                    return Err(format!("must be a multiple of kv_chunk = {} up to {chosen}", plan.kv_chunk));
                }
                if plan.window < self.p.sk {
                    plan.window = b;
                }
                plan.kv_block = b;
            }
            "window_copies" => {
                let c = number()?;
                if !(2..=3).contains(&c) {
                    return Err("must be 2 or 3".into());
                }
                plan.window_copies = c as u32;
            }
            other => return Err(format!("unknown field `{other}` (fields: {})", FIELDS.join(", "))),
        }
        let need = if plan.decode { 0 } else { sram_bytes(&flash_buffers(&self.p, plan)) };
        if need > t.sram.partition_bytes as u64 {
            return Err(format!(
                "the tiles need {need} bytes per SRAM partition; {} has {}",
                t.name, t.sram.partition_bytes
            ));
        }
        Ok(())
    }
}

impl Kernel for AttentionKernel {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn rounded_probabilities(&self) -> Option<(&str, DType)> {
        Some((&self.p.v.tensor, self.p.dtype))
    }

    fn kind(&self) -> &'static str {
        "attention"
    }

    fn output(&self) -> &str {
        &self.p.out.tensor
    }

    fn nodes(&self) -> &[usize] {
        &self.p.nodes
    }

    fn span(&self) -> Span {
        self.p.span.clone()
    }

    fn statement(&self) -> String {
        self.p.text.join("; ")
    }

    fn schedule_fields(&self) -> &'static [&'static str] {
        FIELDS
    }

    /// Overrides, then the prelude: streamed windows would transpose K once per
    /// query tile, so one transpose kernel into HBM scratch serves them all.
    fn schedule(&mut self, t: &Target, overrides: &[Field]) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
        // `decode = false` first: the other fields apply to the flash tiling.
        let mut plan = self.plan;
        let (decode, rest): (Vec<&Field>, Vec<&Field>) = overrides.iter().partition(|f| f.name == "decode");
        for f in decode.into_iter().chain(rest) {
            self.set(&mut plan, f, t).map_err(|why| self.field_error(f, why))?;
        }
        self.plan = plan;
        let p = &mut self.p;
        // K^T comes from a whole tensor of K's own; a view of one is transposed per window.
        if self.plan.resident(p) || self.plan.decode || !p.k.is_plain() {
            return Ok(Vec::new());
        }
        let k_t = format!("{}__k_t", p.out.tensor);
        let transpose =
            TransposeProblem::scratch(&p.k.tensor, &p.k.shape, p.dtype, &k_t, (&p.text[0], p.nodes[0], &p.span));
        p.k_transposed = Some(k_t);
        Ok(vec![Box::new(transpose)])
    }

    fn describe(&self, _: &Target) -> String {
        let (a, plan) = (&self.p, &self.plan);
        format!(
            "{}\n  batch {}, {} query heads / {} kv heads, seq {} x {}, head dim {} / {}, {}{} -> {}\n  schedule: {plan}{}\n",
            a.text.join("; "),
            a.batch,
            a.hq,
            a.hk,
            a.sq,
            a.sk,
            a.d,
            a.dv,
            a.dtype,
            if a.causal { ", causal" } else { "" },
            a.out_dtype,
            if plan.resident(a) { " (K/V resident per kv head)" } else { " (K/V streamed per block)" }
        ) + &a.views_text()
            + &if a.zero_rows > 0 { format!("  {} rows per head see no key: stored as zeros\n", a.zero_rows) } else { String::new() }
    }

    fn tile_ops(&self, _: &Target) -> u64 {
        let (p, plan) = (&self.p, &self.plan);
        let d_chunks = p.d.div_ceil(plan.d_chunk) + p.dv.div_ceil(plan.d_chunk);
        let zero_stores = (p.batch * p.hq).saturating_mul(p.zero_rows.div_ceil(plan.q_tile));
        if plan.decode {
            let nc = p.sk.div_ceil(plan.kv_chunk);
            return (p.batch * p.hk).saturating_mul(nc * (d_chunks + 4) + 30).saturating_add(zero_stores);
        }
        let tiles = p.batch * p.hq * p.sq.div_ceil(plan.q_tile) / plan.heads_per_tile.max(1);
        let mut blocks = p.sk.div_ceil(plan.kv_block);
        if p.causal && blocks > 1 {
            blocks = blocks.div_ceil(2) + 1;
        }
        let chunks = plan.kv_block.min(p.sk).div_ceil(plan.kv_chunk);
        // Per block: the scores' matmuls per head-dim chunk, the PV matmuls per
        // KV chunk, about ten softmax passes; per tile its loads and store.
        tiles.max(1).saturating_mul(blocks.saturating_mul(chunks + d_chunks + 8) + 4).saturating_add(zero_stores)
    }

    fn work(&self) -> Work {
        // Only the pairs the mask leaves visible count: q . k and p . v.
        let pairs = self.p.visible_pairs();
        let flops = Work::flops(self.p.dtype, 2u64.saturating_mul(self.p.d + self.p.dv).saturating_mul(pairs));
        flops.plus(Work { transcendentals: pairs, ..Work::default() })
    }

    fn lower(&self, t: &Target) -> TileProgram {
        lower(&self.p, &self.plan, t)
    }

    fn partition(&self, _: &Target, cores: u32) -> String {
        match shares(&self.p, &self.plan, cores).as_slice() {
            [] | [_] => "core 0".into(),
            all @ [Share::Tiles(_, false), ..] => format!(
                "{} cores, each a run of query tiles balanced by the KV blocks they visit (a KV group split between cores loads its K/V on each)",
                all.len()
            ),
            all => format!("{} cores, each a run of whole KV groups (a group's query heads stay on one core)", all.len()),
        }
    }

    fn lower_cores(&self, t: &Target, cores: u32) -> TileProgram {
        let shares = shares(&self.p, &self.plan, cores);
        if shares.len() <= 1 {
            return lower(&self.p, &self.plan, t);
        }
        let parts = shares.into_iter().enumerate().map(|(c, share)| lower_share(&self.p, &self.plan, t, share, c));
        crate::tiles::merge_cores(parts.collect())
    }
}

/// One core's share of the kernel: KV groups (the decode path), or a run of
/// the flash path's query tiles (true: whole KV groups).
enum Share {
    Groups(std::ops::Range<u64>),
    Tiles(std::ops::Range<usize>, bool),
}

/// How the kernel spreads over `cores` cores. The decode path: runs of KV
/// groups ([`group_ranges`]). The flash path: runs of whole KV groups, unless
/// runs of query tiles balanced by the KV blocks they visit leave the busiest
/// core an eighth less work (fewer groups than cores, or groups that do not
/// divide evenly): a group split between cores reads its K/V on each.
fn shares(p: &AttentionProblem, plan: &AttentionPlan, cores: u32) -> Vec<Share> {
    let groups = group_ranges(p, plan, cores);
    if plan.decode {
        return groups.into_iter().map(Share::Groups).collect();
    }
    let work = flash::tile_work(p, plan);
    let tiles_of =
        |g: &std::ops::Range<u64>| work.partition_point(|w| w.0 < g.start)..work.partition_point(|w| w.0 < g.end);
    let by_group: Vec<_> = groups.iter().map(tiles_of).collect();
    let by_tile = balanced(&work, cores);
    let busiest =
        |runs: &[std::ops::Range<usize>]| runs.iter().map(|r| work[r.clone()].iter().map(|w| w.1).sum::<u64>()).max();
    if busiest(&by_tile).unwrap_or(0) * 8 < busiest(&by_group).unwrap_or(0) * 7 {
        by_tile.into_iter().map(|r| Share::Tiles(r, false)).collect()
    } else {
        by_group.into_iter().map(|r| Share::Tiles(r, true)).collect()
    }
}

/// Runs of `work`'s items (their weight second) over at most `cores` cores,
/// each run's end the first item whose prefix reaches its share of the total.
fn balanced(work: &[(u64, u64)], cores: u32) -> Vec<std::ops::Range<usize>> {
    let total: u64 = work.iter().map(|w| w.1).sum();
    let n = (cores as u64).min(work.len() as u64).max(1);
    let mut ends = Vec::new();
    let mut prefix = 0;
    for (i, w) in work.iter().enumerate() {
        prefix += w.1;
        let reached = (ends.len() as u64 + 1) * total;
        if prefix * n >= reached && (ends.len() as u64) < n - 1 {
            ends.push(i + 1);
        }
    }
    ends.push(work.len());
    let mut start = 0;
    let runs = ends.into_iter().map(|end| std::mem::replace(&mut start, end)..end);
    runs.filter(|r| !r.is_empty()).collect()
}

/// How the KV groups (batch index x KV head) spread over `cores` cores: runs
/// of whole units (the groups that share a window's K^T), as even as can be.
fn group_ranges(p: &AttentionProblem, plan: &AttentionPlan, cores: u32) -> Vec<std::ops::Range<u64>> {
    let groups = p.batch * p.hk;
    let unit = if plan.decode { 1 } else { plan.kt_heads.max(1) };
    if cores <= 1 || groups == 0 || !groups.is_multiple_of(unit) {
        return std::iter::once(0..groups).collect();
    }
    let units = groups / unit;
    let n = (cores as u64).min(units);
    (0..n).map(|c| (c * units / n * unit)..((c + 1) * units / n * unit)).collect()
}

/// The kernel's tiling for a target (printed by `--emit kernels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionPlan {
    /// KV rows per chunk (PE contraction, V and K^T chunk).
    pub kv_chunk: u64,
    /// Head-dim rows per chunk of the `Q . K^T` contraction.
    pub d_chunk: u64,
    /// Query rows per tile (partitions).
    pub q_tile: u64,
    /// Heads packed in one query tile.
    pub heads_per_tile: u64,
    /// Score columns per PSUM bank.
    pub bank_cols: u64,
    /// KV columns per block (one or two banks).
    pub kv_block: u64,
    /// KV rows resident per window (the whole sequence, or one block).
    pub window: u64,
    /// Copies of the window buffers.
    pub window_copies: u32,
    /// Copies of the O accumulator (PSUM banks).
    pub o_copies: u32,
    /// Copies of the score block (PSUM banks).
    pub score_copies: u32,
    /// The decode path (transposed scores; see `lower_decode`).
    pub decode: bool,
    /// A mask shared by every query row is added on the PE: each distinct mask
    /// row is prepared once (`mask / scale` split into bf16 high and low parts)
    /// and accumulated into the scores by two one-row matmuls, so the softmax
    /// runs as without a mask.
    pub mask_on_pe: bool,
    /// KV heads whose K rows share one window, one PE transpose per key chunk
    /// and one evacuation (short resident sequences whose head dims, with the
    /// mask's two columns, fit the contraction together): each head's query
    /// tile holds its head dim in its own columns and zeros in the others, so
    /// `Q . K^T` over the packed contraction is that head's scores.
    pub kt_heads: u64,
}

impl AttentionPlan {
    /// True when each group's K and V are read from HBM once.
    pub fn resident(&self, p: &AttentionProblem) -> bool {
        self.window >= p.sk
    }
}

impl std::fmt::Display for AttentionPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "q_tile = {}, heads_per_tile = {}, kv_block = {} x{}, kv_chunk = {}, d_chunk = {}, window = {} x{}",
            self.q_tile,
            self.heads_per_tile,
            self.kv_block,
            self.score_copies,
            self.kv_chunk,
            self.d_chunk,
            self.window,
            self.window_copies
        )?;
        if self.decode {
            write!(f, ", decode (transposed scores)")?;
        }
        if self.mask_on_pe {
            write!(f, ", mask on the PE")?;
        }
        if self.kt_heads > 1 {
            write!(f, ", K^T of {} heads per transpose", self.kt_heads)?;
        }
        Ok(())
    }
}

impl AttentionPlan {
    /// Switches to the decode path when it applies: the group's query rows (one
    /// per head, or a few without a causal mask) packed in one tile, transposed
    /// scores of every key in one PSUM bank, K and V of a group resident twice.
    fn with_decode(mut self, p: &AttentionProblem, t: &Target) -> AttentionPlan {
        let mq = p.group() * p.sq;
        let cols = p.sk.div_ceil(self.kv_chunk) * mq;
        let psum_banks = t.psum.banks.unwrap_or(1) as u64;
        self.decode = p.sq <= 16
            && mq <= self.q_tile
            && p.packs()
            && cols <= self.bank_cols
            && p.dv.div_ceil(self.d_chunk) * mq <= self.bank_cols
            && psum_banks >= 3
            && p.mask.is_none()
            && sram_bytes(&decode_buffers(p, &self)) <= t.sram.partition_bytes as u64;
        if self.decode {
            self.heads_per_tile = p.group();
            self.window = p.sk;
            self.window_copies = 2;
        }
        self
    }
}

impl AttentionProblem {
    /// The first query head (over batch x heads) of KV group `g` (over batch x KV heads).
    pub fn first_head(&self, g: u64) -> u64 {
        g / self.hk * self.hq + g % self.hk * self.group()
    }

    /// Whether every group's query rows, and its result rows, are evenly
    /// spaced in HBM (so that one box holds a tile of the group's heads packed).
    pub fn packs(&self) -> bool {
        let group = self.group();
        (0..self.batch * self.hk).all(|g| {
            let first = self.first_head(g);
            even_rows(&self.q, first, group, self.sq).is_some() && even_rows(&self.out, first, group, self.sq).is_some()
        })
    }

    /// `--emit kernels` lines for the operands read, and the result written,
    /// through a view of another tensor.
    fn views_text(&self) -> String {
        let views = [("q", &self.q), ("k", &self.k), ("v", &self.v), ("out", &self.out)];
        let mask = self
            .mask
            .iter()
            .map(|m| format!("  mask: %{} read as {:?} strides {:?}\n", m.view.tensor, m.view.shape, m.view.strides));
        views
            .iter()
            .filter(|(_, v)| !v.describe().is_empty())
            .map(|(what, v)| format!("  {what} in place: {}\n", v.describe()))
            .chain(mask)
            .collect()
    }

    /// Query heads per KV head.
    pub fn group(&self) -> u64 {
        self.hq / self.hk
    }

    /// (query, key) pairs the mask leaves visible, over every head and batch.
    pub fn visible_pairs(&self) -> u64 {
        let per_head: u64 = if self.causal {
            (0..self.sq).map(|i| (i + self.sk).saturating_sub(self.sq).saturating_add(1).min(self.sk)).sum()
        } else {
            self.sq * self.sk
        };
        per_head * self.hq * self.batch
    }

    /// Chooses the tiling, or says which limit the problem breaks.
    pub fn plan(&self, t: &Target) -> Result<AttentionPlan, String> {
        Ok(self.flash_plan(t)?.with_decode(self, t))
    }

    /// The flash tiling (no decode path): with the mask on the PE when the mask
    /// qualifies and the tiling stays the same.
    pub fn flash_plan(&self, t: &Target) -> Result<AttentionPlan, String> {
        let plain = self.flash_plan_with(t, false)?;
        if !self.mask_rows_shared(plain.q_tile) {
            return Ok(plain);
        }
        Ok(match self.flash_plan_with(t, true) {
            Ok(pe) if pe.kv_block == plain.kv_block && pe.window == plain.window && pe.resident(self) => pe,
            _ => plain,
        })
    }

    /// True when the mask is the same for every query row and every head of a
    /// KV group, and changes at most once per four query tiles (a key-padding
    /// mask `[B, 1, 1, S]`): preparing each row once then costs less than adding
    /// it per block.
    fn mask_rows_shared(&self, q_tile: u64) -> bool {
        let Some(mask) = &self.mask else { return false };
        let view = &mask.view;
        let group = self.group();
        let row = |h: u64| view.row_start(h, 0);
        let heads = self.batch * self.hq;
        let per_group = (0..heads).all(|h| row(h) == row(h - h % group));
        let changes = (0..heads).filter(|&h| h == 0 || row(h) != row(h - 1)).count() as u64;
        view.row_stride() == 0 && per_group && changes * 4 <= heads * self.sq.div_ceil(q_tile)
    }

    fn flash_plan_with(&self, t: &Target, mask_on_pe: bool) -> Result<AttentionPlan, String> {
        let parts = t.sram.partitions as u64;
        let kv_chunk = (t.pe.rows as u64).min(parts);
        let d_chunk = (t.pe.rows as u64).min(t.pe.cols as u64);
        let q_tile = (t.pe.cols as u64).min(parts);
        let bank_cols = (t.pe.max_moving_free as u64).min(t.psum_bank_bytes() as u64 / 4);
        if self.dv > bank_cols {
            return Err(format!(
                "the value head dim {} is wider than a PSUM bank's {bank_cols} f32 columns on {}",
                self.dv, t.name
            ));
        }
        if self.dv > t.pe.max_moving_free as u64 {
            return Err(format!("the value head dim {} exceeds the PE's moving width on {}", self.dv, t.name));
        }
        let banks = t.psum.banks.unwrap_or(1) as u64;
        // Banks: scores (`score_copies` blocks of `block_banks` banks: three
        // copies let the PE run two blocks ahead of the softmax; two-bank blocks
        // halve the per-block fixed costs of the VE and ACT), O accumulators (2
        // copies, or 1: then a tile's first PV waits for the previous tile's
        // output), K^T transposes (1 bank).
        const K_T_BANKS: u64 = 1;
        let whole_banks = bank_cols * 4 == t.psum_bank_bytes() as u64;
        let (block_banks, score_copies, o_copies) = [(2u64, 3u32, 1u32), (1, 3, 2), (1, 2, 2), (1, 2, 1)]
            .into_iter()
            .filter(|&(b, _, _)| b == 1 || whole_banks)
            .find(|&(b, s, o)| b * s as u64 + o as u64 + K_T_BANKS <= banks)
            .ok_or_else(|| format!("attention needs 4 PSUM banks; {} has {banks}", t.name))?;
        let group = self.group();
        let packs = group > 1
            && group * self.sq <= q_tile
            && (!self.causal || self.sq == 1)
            && self.mask.is_none()
            && self.packs();
        let heads_per_tile = if packs { group } else { 1 };
        let cap = t.sram.partition_bytes as u64;
        let mut plan = AttentionPlan {
            kv_chunk,
            d_chunk,
            q_tile,
            heads_per_tile,
            bank_cols,
            kv_block: block_banks * bank_cols,
            window: self.sk,
            window_copies: 2,
            o_copies,
            score_copies,
            decode: false,
            mask_on_pe,
            kt_heads: 1,
        };
        // The whole sequence resident (K/V read once per group), else streamed
        // blocks: as wide as the score banks, or narrower (down to one chunk)
        // when SRAM is small; three window copies when they fit.
        let fits = |plan: &AttentionPlan| sram_bytes(&flash_buffers(self, plan)) <= cap;
        if !fits(&plan) {
            let mut found = None;
            let mut kv_block = plan.kv_block;
            while found.is_none() && kv_block >= kv_chunk {
                found = [3, 2]
                    .into_iter()
                    .map(|c| AttentionPlan { kv_block, window: kv_block, window_copies: c, ..plan })
                    .find(|candidate| fits(candidate));
                kv_block /= 2;
            }
            plan = found.ok_or_else(|| {
                format!(
                    "attention tiles for head dim {} do not fit one SRAM partition of {} ({cap} bytes)",
                    self.d, t.name
                )
            })?;
        } else if self.group() * self.sq.div_ceil(q_tile) <= 2 && fits(&AttentionPlan { window_copies: 3, ..plan }) {
            // A third resident window lets the next groups' K^T be prepared
            // while this one computes (short sequences: one tile per window).
            plan.window_copies = 3;
        }
        plan.kt_heads = self.packed_kt_heads(&plan, cap);
        plan.o_copies = more_o_copies(self, &plan, t);
        Ok(plan)
    }

    /// How many KV heads share a window's K^T (see [`AttentionPlan::kt_heads`]):
    /// as many as the contraction holds, when every head is one query tile of a
    /// resident window, and (with the mask on the PE) every head of a pack
    /// reads the same mask row.
    fn packed_kt_heads(&self, plan: &AttentionPlan, cap: u64) -> u64 {
        let simple = plan.resident(self)
            && plan.heads_per_tile == 1
            && self.group() == 1
            && self.sq <= plan.q_tile
            && self.zero_rows == 0
            && self.k_transposed.is_none();
        let extra = if plan.mask_on_pe { 2 } else { 0 };
        if !simple || self.d + extra > plan.d_chunk {
            return 1;
        }
        let heads = self.batch * self.hk;
        let same_row = |kt: u64| match (&self.mask, plan.mask_on_pe) {
            (Some(m), true) => (0..heads).all(|h| m.view.row_start(h, 0) == m.view.row_start(h - h % kt, 0)),
            _ => true,
        };
        let mut kt = ((plan.d_chunk - extra) / self.d).min(heads);
        // Whole packs only: every column of a packed K^T is loaded.
        while kt > 1
            && !(heads.is_multiple_of(kt)
                && same_row(kt)
                && sram_bytes(&flash_buffers(self, &AttentionPlan { kt_heads: kt, ..*plan })) <= cap)
        {
            kt -= 1;
        }
        kt
    }
}

/// Lowers an attention kernel by the path its plan chose.
pub fn lower(p: &AttentionProblem, plan: &AttentionPlan, t: &Target) -> TileProgram {
    let share = match plan.decode {
        true => Share::Groups(0..p.batch * p.hk),
        false => Share::Tiles(0..flash::tile_work(p, plan).len(), true),
    };
    lower_share(p, plan, t, share, 0)
}

/// The tile program of `share` on core `core`; core 0 also stores the rows
/// that see no key.
fn lower_share(p: &AttentionProblem, plan: &AttentionPlan, t: &Target, share: Share, core: usize) -> TileProgram {
    let mut program = match share {
        Share::Groups(groups) => decode::lower(p, plan, groups),
        Share::Tiles(tiles, _) => flash::lower(p, plan, t, (tiles, core)),
    };
    if core == 0 && p.zero_rows > 0 {
        let zeros = program.buffers.len() - 1;
        let parts = p.zero_rows.min(plan.q_tile);
        program.ops.push((TileOp::Memset { dst: slice(zeros, 0, parts, 0, p.dv), value: 0.0 }, 0));
        for head in 0..p.batch * p.hq {
            for r0 in (0..p.zero_rows).step_by(parts as usize) {
                let rows = parts.min(p.zero_rows - r0);
                let mut dst = rows_box(&p.out, TO, (head, 1), 0, rows);
                dst.start -= (p.zero_rows - r0) * p.out.row_stride();
                program.ops.push((TileOp::Store { dst, src: slice(zeros, 0, rows, 0, p.dv) }, 0));
            }
        }
    }
    program
}

/// The zeroed tile the rows that see no key are stored from (none when every row sees one).
fn zero_buffer(p: &AttentionProblem, plan: &AttentionPlan) -> Option<Buffer> {
    (p.zero_rows > 0).then(|| buffer("zero_rows", Space::Sram, p.out_dtype, p.zero_rows.min(plan.q_tile), p.dv, 1))
}

/// The stride between the rows `0..rows` of heads `head..head + heads` of
/// `view`, packed head after head, when they are evenly spaced.
fn even_rows(view: &TensorView, head: u64, heads: u64, rows: u64) -> Option<u64> {
    let starts = (head..head + heads).flat_map(|h| (0..rows).map(move |r| view.row_start(h, r)));
    let mut stride = None;
    let mut prev: Option<u64> = None;
    for at in starts {
        if let Some(p) = prev {
            let step = at.checked_sub(p)?;
            if *stride.get_or_insert(step) != step {
                return None;
            }
        }
        prev = Some(at);
    }
    Some(stride.unwrap_or(view.row_stride()))
}

/// The box of `tensor` (whose view is `view`) holding `rows` rows from row `r0`
/// of head `head` (`heads` heads packed from row 0 when more than one), `cols`
/// columns each.
pub(super) fn rows_box(view: &TensorView, tensor: usize, (head, heads): (u64, u64), r0: u64, rows: u64) -> HbmBox {
    let cols = view.shape.last().copied().unwrap_or(1) as u32;
    let row_stride = if heads > 1 {
        even_rows(view, head, heads, rows / heads).unwrap_or(view.row_stride())
    } else {
        view.row_stride()
    };
    HbmBox { tensor, start: view.row_start(head, r0), rows: rows as u32, row_stride, cols }
}

/// The tensors of both paths: q, k, v, the output.
fn tensors(p: &AttentionProblem) -> Vec<HbmTensor> {
    vec![
        HbmTensor { name: p.q.tensor.clone(), dtype: p.dtype, shape: p.q.tensor_shape.clone(), role: Role::Input },
        HbmTensor { name: p.k.tensor.clone(), dtype: p.dtype, shape: p.k.tensor_shape.clone(), role: Role::Input },
        HbmTensor { name: p.v.tensor.clone(), dtype: p.dtype, shape: p.v.tensor_shape.clone(), role: Role::Input },
        HbmTensor {
            name: p.out.tensor.clone(),
            dtype: p.out_dtype,
            shape: p.out.tensor_shape.clone(),
            role: Role::Output,
        },
    ]
}

/// Tensors of both paths: q, k, v, the output (then K^T, if in HBM).
pub(super) const TQ: usize = 0;
pub(super) const TK: usize = 1;
pub(super) const TV: usize = 2;
pub(super) const TO: usize = 3;

/// A slice of copy `copy` of buffer `buf`.
pub(super) fn slice(buf: usize, copy: usize, parts: u64, offset: u64, len: u64) -> BufSlice {
    BufSlice { buf, copy: copy as u32, parts: parts as u32, offset: offset as u32, len: len as u32 }
}

pub(super) fn buffer(name: &str, space: Space, dtype: DType, parts: u64, free: u64, copies: u32) -> Buffer {
    Buffer::new(name, space, dtype, parts as u32, free as u32, copies)
}

/// SRAM bytes per partition the buffers take (each copy padded to 64 bytes, as
/// the allocator places them, all live at once).
/// O accumulator copies: up to [`MAX_O_COPIES`] when short score blocks leave
/// PSUM room (a tile's PV then never waits for the previous tile's output to be
/// read), else the plan's bank budget.
fn more_o_copies(p: &AttentionProblem, plan: &AttentionPlan, t: &Target) -> u32 {
    if flash::block_cols(p, plan) == plan.kv_block {
        return plan.o_copies;
    }
    let (bank, banks) = (t.psum_bank_bytes() as u64, t.psum.banks.unwrap_or(1) as u64);
    let fits = |o_copies| psum_bytes(&flash_buffers(p, &AttentionPlan { o_copies, ..*plan }), bank) <= bank * banks;
    (plan.o_copies..=MAX_O_COPIES).rev().find(|&c| fits(c)).unwrap_or(plan.o_copies)
}

/// The most O accumulator copies a plan takes.
const MAX_O_COPIES: u32 = 4;

/// PSUM bytes per partition of the buffers as the backend places them: a copy
/// of at most a bank in a power-of-two block, a larger one in whole banks.
fn psum_bytes(buffers: &[Buffer], bank: u64) -> u64 {
    let block = |bytes: u64| if bytes <= bank { bytes.next_power_of_two() } else { bytes.div_ceil(bank) * bank };
    buffers
        .iter()
        .filter(|b| b.space == Space::Psum)
        .map(|b| b.copies as u64 * block(b.free as u64 * b.dtype.size_bytes() as u64))
        .sum()
}

pub(super) fn sram_bytes(buffers: &[Buffer]) -> u64 {
    buffers
        .iter()
        .filter(|b| b.space == Space::Sram)
        .map(|b| b.copies as u64 * (b.free as u64 * b.dtype.size_bytes() as u64).div_ceil(64) * 64)
        .sum()
}
