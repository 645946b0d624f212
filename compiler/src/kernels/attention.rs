//! The flash-attention kernel: `softmax(q . k^T * scale [+ causal mask]) . v` with
//! grouped-query heads, never writing the score matrix to HBM.
//!
//! Per KV head (a *group*: the query heads that read it), K and V rows are loaded
//! into a *window*: the whole sequence when it fits SRAM (then K and V are read
//! from HBM once and serve every query head and query tile of the group), else one
//! KV block at a time (re-read per query tile). K is transposed once per window on
//! the PE (into `[head dim, kv]`, the moving operand of `Q . K^T`).
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

use jpu_isa::operand::{ActFunc, AluOp, ReduceOp, Space};
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::transpose::TransposeProblem;
use super::{chip, statement, unsupported, Ctx, Field, Kernel, Work};
use crate::error::CompileError;
use crate::ir::{Op, Span};
use crate::tiles::{BufSlice, Buffer, HbmBox, HbmTensor, TileOp, TileProgram, TileScalar};

/// Copies of the per-block statistics columns.
const STAT_COPIES: usize = 3;
/// Copies of the probabilities tile.
const PROB_COPIES: usize = 3;
/// Copies of the query tile.
const Q_COPIES: usize = 3;

/// An attention kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionProblem {
    /// Query, key and value tensors (names).
    pub q: String,
    /// Keys.
    pub k: String,
    /// Values.
    pub v: String,
    /// Their shapes (`[.., heads, seq, dim]`).
    pub shapes: [Vec<u64>; 3],
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
    /// Multiplies the scores (positive).
    pub scale: f32,
    /// The result's name.
    pub output: String,
    /// Its shape.
    pub out_shape: Vec<u64>,
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
    let [q, k, v] = cx.hbm_values(node)?[..] else { return Err(unsupported(node, "is malformed")) };
    let (qn, kn, vn) = (cx.f.node(q), cx.f.node(k), cx.f.node(v));
    let dtype = chip(qn.ty.dtype, "a query", node)?;
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
    if causal && sq > sk {
        return Err(unsupported(
            node,
            &format!(
            "is causal with more query rows ({sq}) than keys ({sk}), which leaves rows with no key; not supported yet"
        ),
        ));
    }
    let p = AttentionProblem {
        q: qn.name.clone(),
        k: kn.name.clone(),
        v: vn.name.clone(),
        shapes: [qn.ty.shape.clone(), kn.ty.shape.clone(), vn.ty.shape.clone()],
        dtype,
        batch: qn.ty.shape[..r - 3].iter().product(),
        hq,
        hk,
        sq,
        sk,
        d,
        dv,
        causal,
        scale: scale as f32,
        output: node.name.clone(),
        out_shape: node.ty.shape.clone(),
        out_dtype: chip(node.ty.dtype, "a result", node)?,
        text: vec![format!("{} {{causal = {causal}, scale = {scale}}}", statement(cx.f, i))],
        nodes: vec![i],
        k_transposed: None,
        span: node.span.clone(),
    };
    let plan = p.plan(t).map_err(|why| CompileError::limit(&p.text[0], why, p.span.clone()))?;
    Ok(AttentionKernel { p, plan })
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
        Some((&self.p.v, self.p.dtype))
    }

    fn kind(&self) -> &'static str {
        "attention"
    }

    fn output(&self) -> &str {
        &self.p.output
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
        if self.plan.resident(p) || self.plan.decode {
            return Ok(Vec::new());
        }
        let k_t = format!("{}__k_t", p.output);
        let transpose = TransposeProblem::scratch(&p.k, &p.shapes[1], p.dtype, &k_t, (&p.text[0], p.nodes[0], &p.span));
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
        )
    }

    fn work(&self) -> Work {
        // Only the pairs the mask leaves visible count: q . k and p . v.
        let pairs = self.p.visible_pairs();
        let flops = Work::flops(self.p.dtype, 2u64.saturating_mul(self.p.d + self.p.dv).saturating_mul(pairs));
        flops.plus(Work { transcendentals: pairs, ..Work::default() })
    }

    fn lower(&self, _: &Target) -> TileProgram {
        lower(&self.p, &self.plan)
    }
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
            && cols <= self.bank_cols
            && p.dv.div_ceil(self.d_chunk) * mq <= self.bank_cols
            && psum_banks >= 3
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

    /// The flash tiling (no decode path).
    pub fn flash_plan(&self, t: &Target) -> Result<AttentionPlan, String> {
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
        let heads_per_tile =
            if group > 1 && group * self.sq <= q_tile && (!self.causal || self.sq == 1) { group } else { 1 };
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
        }
        Ok(plan)
    }
}

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

/// A window of K/V rows `a .. b` of a group.
#[derive(Debug, Clone, Copy)]
struct Window {
    group: u64,
    a: u64,
    b: u64,
}

/// Lowers an attention kernel.
pub fn lower(p: &AttentionProblem, plan: &AttentionPlan) -> TileProgram {
    if plan.decode {
        return lower_decode(p, plan);
    }
    let AttentionPlan { kv_chunk, d_chunk, heads_per_tile, bank_cols, kv_block, window, window_copies, .. } = *plan;
    let (d, dv, sq, sk) = (p.d, p.dv, p.sq, p.sk);
    let group = p.group();
    let d_chunks = d.div_ceil(d_chunk);
    let win_pad = window.div_ceil(kv_chunk) * kv_chunk;
    let off = sk as i64 - sq as i64;

    // Tiles, blocks and windows in execution order.
    let mut tiles = Vec::new();
    for g in 0..p.batch * p.hk {
        let (b, kvh) = (g / p.hk, g % p.hk);
        let first_head = b * p.hq + kvh * group;
        if heads_per_tile > 1 {
            tiles.push(QTile { group: g, head: first_head, heads: group, r0: 0, rows: sq });
        } else {
            for h in first_head..first_head + group {
                for r0 in (0..sq).step_by(plan.q_tile as usize) {
                    tiles.push(QTile { group: g, head: h, heads: 1, r0, rows: plan.q_tile.min(sq - r0) });
                }
            }
        }
    }
    let mut windows: Vec<Window> = Vec::new();
    let mut blocks = Vec::new();
    for (ti, tile) in tiles.iter().enumerate() {
        // Keys past the last row's limit are masked for every row of the tile.
        let end = if p.causal { ((tile.r0 + tile.rows) as i64 + off).clamp(0, sk as i64) as u64 } else { sk };
        let mut c0 = 0;
        while c0 < end {
            let c1 = end.min(c0 + kv_block);
            let a = c0 / window * window;
            let fresh = windows.last().is_none_or(|w| w.group != tile.group || w.a != a);
            if fresh {
                windows.push(Window { group: tile.group, a, b: sk.min(a + window) });
            }
            blocks.push(Block { tile: ti, c0, c1, first: c0 == 0, last: c1 == end, window: windows.len() - 1 });
            c0 = c1;
        }
    }

    let mut tensors = vec![
        HbmTensor { name: p.q.clone(), dtype: p.dtype, shape: p.shapes[0].clone(), role: Role::Input },
        HbmTensor { name: p.k.clone(), dtype: p.dtype, shape: p.shapes[1].clone(), role: Role::Input },
        HbmTensor { name: p.v.clone(), dtype: p.dtype, shape: p.shapes[2].clone(), role: Role::Input },
        HbmTensor { name: p.output.clone(), dtype: p.out_dtype, shape: p.out_shape.clone(), role: Role::Output },
    ];
    let (tq, tk, tv, to) = (0, 1, 2, 3);
    // With K^T in HBM, a window's K^T is loaded, not transposed.
    let tkt = p.k_transposed.as_ref().map(|name| {
        let mut shape = p.shapes[1].clone();
        let r = shape.len();
        shape.swap(r - 2, r - 1);
        tensors.push(HbmTensor { name: name.clone(), dtype: p.dtype, shape, role: Role::Input });
        tensors.len() - 1
    });
    let buffers = flash_buffers(p, plan);
    let (k_rows, v_rows, k_t, k_t_psum, q_tile, scores, probs, o_acc, o_tile) = (0, 1, 2, 3, 4, 5, 6, 7, 8);
    let (row_max, neg_max, block_sum, rescale, row_sum) = (9, 10, 11, 12, 13);
    let slice = |buf, copy: usize, parts: u64, offset: u64, len: u64| BufSlice {
        buf,
        copy: copy as u32,
        parts: parts as u32,
        offset: offset as u32,
        len: len as u32,
    };

    let mut ops: Vec<(TileOp, u32)> = Vec::new();
    let wc = window_copies as usize;
    let load_window = |ops: &mut Vec<(TileOp, u32)>, wi: usize| {
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
                let dst = slice(k_t, copy, dk, dc * win_pad, w.b - w.a);
                ops.push((TileOp::Load { dst, src, queue: None }, 0));
            }
        }
        for c in 0..(w.b - w.a).div_ceil(kv_chunk) {
            let r = w.a + c * kv_chunk;
            let kk = kv_chunk.min(w.b - r);
            if tkt.is_none() {
                let k_src = HbmBox {
                    tensor: tk,
                    start: (w.group * sk + r) * d,
                    rows: kk as u32,
                    row_stride: d,
                    cols: d as u32,
                };
                ops.push((TileOp::Load { dst: slice(k_rows, copy, kk, c * d, d), src: k_src, queue: None }, 0));
            }
            let v_src =
                HbmBox { tensor: tv, start: (w.group * sk + r) * dv, rows: kk as u32, row_stride: dv, cols: dv as u32 };
            ops.push((TileOp::Load { dst: slice(v_rows, copy, kk, c * dv, dv), src: v_src, queue: None }, 0));
        }
    };
    let transpose_window = |ops: &mut Vec<(TileOp, u32)>, wi: usize| {
        if tkt.is_some() {
            return;
        }
        let w = windows[wi];
        let copy = wi % wc;
        let chunks = (w.b - w.a).div_ceil(kv_chunk);
        let per_bank = bank_cols / kv_chunk;
        for dc in 0..d_chunks {
            let dk = d_chunk.min(d - dc * d_chunk);
            let mut c = 0;
            while c < chunks {
                let group_end = chunks.min(c + per_bank);
                let mut width = 0;
                for ci in c..group_end {
                    let kk = kv_chunk.min(w.b - w.a - ci * kv_chunk);
                    let dst = slice(k_t_psum, 0, dk, (ci - c) * kv_chunk, kk);
                    let src = slice(k_rows, copy, kk, ci * d + dc * d_chunk, dk);
                    ops.push((TileOp::Transpose { dst, src }, 0));
                    width = (ci - c) * kv_chunk + kk;
                }
                let dst = slice(k_t, copy, dk, dc * win_pad + c * kv_chunk, width);
                ops.push((TileOp::Copy { dst, src: slice(k_t_psum, 0, dk, 0, width) }, 0));
                c = group_end;
            }
        }
    };
    let load_q = |ops: &mut Vec<(TileOp, u32)>, ti: usize| {
        let t = tiles[ti];
        let src =
            HbmBox { tensor: tq, start: (t.head * sq + t.r0) * d, rows: t.parts(), row_stride: d, cols: d as u32 };
        ops.push((TileOp::Load { dst: slice(q_tile, ti % Q_COPIES, t.parts() as u64, 0, d), src, queue: None }, 0));
    };
    let scores_of = |ops: &mut Vec<(TileOp, u32)>, bi: usize| {
        let blk = blocks[bi];
        let t = tiles[blk.tile];
        let w = windows[blk.window];
        let mq = t.parts() as u64;
        let mut col = 0;
        while col < blk.c1 - blk.c0 {
            let n = bank_cols.min(blk.c1 - blk.c0 - col);
            for dc in 0..d_chunks {
                let dk = d_chunk.min(d - dc * d_chunk);
                ops.push((
                    TileOp::Matmul {
                        dst: slice(scores, bi % plan.score_copies as usize, mq, col, n),
                        stationary: slice(q_tile, blk.tile % Q_COPIES, mq, dc * d_chunk, dk),
                        moving: slice(k_t, blk.window % wc, dk, dc * win_pad + blk.c0 - w.a + col, n),
                        accumulate: dc > 0,
                        transposed: true,
                    },
                    0,
                ));
            }
            col += n;
        }
    };
    let nsc = plan.score_copies as usize;
    // Stage A of block i: mask, running max, exponentials with their row sum, and
    // (after the first block) the rescale factor and the running sum.
    let stage_a = |ops: &mut Vec<(TileOp, u32)>, bi: usize| {
        let blk = blocks[bi];
        let t = tiles[blk.tile];
        let (mq, width) = (t.parts() as u64, blk.c1 - blk.c0);
        let (cur, prev, tc) = (bi % STAT_COPIES, (bi + STAT_COPIES - 1) % STAT_COPIES, blk.tile % 2);
        let s = slice(scores, bi % nsc, mq, 0, width);
        let col = |b, copy| slice(b, copy, mq, 0, 1);
        if p.causal && t.heads == 1 {
            // Row r (query r0 + r) keeps keys c0 + f <= r0 + r + off.
            let first_masked = (t.r0 as i64 + off + 1 - blk.c0 as i64).max(0) as u64;
            if first_masked < width {
                let sub = slice(scores, bi % nsc, mq, first_masked, width - first_masked);
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
        let m = col(row_max, cur);
        ops.push((TileOp::Reduce { op: ReduceOp::Max, dst: m, src: s }, 0));
        if !blk.first {
            ops.push((TileOp::Binary { op: AluOp::Max, dst: m, a: m, b: col(row_max, prev) }, 0));
        }
        let nb = col(neg_max, cur);
        ops.push((
            TileOp::Scalar { op: AluOp::Mul, dst: nb, src: m, scalar: TileScalar::Imm(-p.scale), reverse: false },
            0,
        ));
        let l = col(row_sum, tc);
        let sum_to = if blk.first { l } else { col(block_sum, cur) };
        ops.push((
            TileOp::Activate {
                func: ActFunc::Exp,
                dst: slice(probs, bi % PROB_COPIES, mq, 0, width),
                src: s,
                scale: TileScalar::Imm(p.scale),
                bias: TileScalar::Column(nb),
                accum: Some(sum_to),
            },
            0,
        ));
        if !blk.first {
            let alpha = col(rescale, cur);
            ops.push((
                TileOp::Activate {
                    func: ActFunc::Exp,
                    dst: alpha,
                    src: col(row_max, prev),
                    scale: TileScalar::Imm(p.scale),
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
    };
    // Stage B of block i: rescale O, O += P . V, and after the last block O / l.
    let stage_b = |ops: &mut Vec<(TileOp, u32)>, bi: usize| {
        let blk = blocks[bi];
        let t = tiles[blk.tile];
        let w = windows[blk.window];
        let mq = t.parts() as u64;
        let o = slice(o_acc, blk.tile % plan.o_copies as usize, mq, 0, dv);
        if !blk.first {
            let alpha = slice(rescale, bi % STAT_COPIES, mq, 0, 1);
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
                    stationary: slice(probs, bi % PROB_COPIES, mq, k0 - blk.c0, kk),
                    moving: slice(v_rows, blk.window % wc, kk, chunk * dv, dv),
                    accumulate: !(blk.first && s_i == 0),
                    transposed: true,
                },
                0,
            ));
        }
        if blk.last {
            let tc = blk.tile % 2;
            let out = slice(o_tile, tc, mq, 0, dv);
            let l = slice(row_sum, tc, mq, 0, 1);
            ops.push((
                TileOp::Scalar { op: AluOp::Div, dst: out, src: o, scalar: TileScalar::Column(l), reverse: false },
                0,
            ));
            let dst = HbmBox {
                tensor: to,
                start: (t.head * sq + t.r0) * dv,
                rows: mq as u32,
                row_stride: dv,
                cols: dv as u32,
            };
            ops.push((TileOp::Store { dst, src: out }, 0));
        }
    };

    // Emission order (each engine runs its ops in this order). Iteration i issues
    // the scores of block i + L (L = score copies - 1), stage A of block i + a
    // (a = 1 when L >= 2, so ACT and VE work on the next block while the PE
    // finishes this one), then stage B of block i. A window's loads are issued
    // when the window `copies - 1` back starts, its transposes just before its
    // first scores; a tile's Q load when the tile two back starts.
    let lookahead = nsc - 1;
    let lag_a = usize::from(lookahead >= 2);
    let (mut windows_loaded, mut windows_transposed, mut tiles_loaded) = (0usize, 0usize, 0usize);
    let mut scores_issued = 0usize;
    // `oldest`: the first block whose stage B is not yet issued; windows up to
    // `copies - 1` past its window may be loaded (a load before a PV in program
    // order would overwrite what that PV reads).
    let mut issue_scores = |ops: &mut Vec<(TileOp, u32)>, upto: usize, oldest: usize| {
        let window_limit = blocks.get(oldest).map_or(0, |b| b.window) + wc;
        while scores_issued <= upto && scores_issued < blocks.len() {
            let blk = blocks[scores_issued];
            if blk.window >= window_limit {
                break;
            }
            // Loads: windows up to the limit; this tile and the next.
            while windows_loaded < windows.len() && windows_loaded < window_limit {
                load_window(ops, windows_loaded);
                windows_loaded += 1;
            }
            while tiles_loaded < tiles.len() && tiles_loaded < blk.tile + Q_COPIES - 1 {
                load_q(ops, tiles_loaded);
                tiles_loaded += 1;
            }
            if blk.window >= windows_transposed {
                transpose_window(ops, blk.window);
                windows_transposed = blk.window + 1;
            }
            scores_of(ops, scores_issued);
            scores_issued += 1;
        }
    };
    issue_scores(&mut ops, lookahead.saturating_sub(1), 0);
    for bi in 0..lag_a.min(blocks.len()) {
        stage_a(&mut ops, bi);
    }
    for bi in 0..blocks.len() {
        issue_scores(&mut ops, bi + lookahead, bi);
        if bi + lag_a < blocks.len() {
            stage_a(&mut ops, bi + lag_a);
        }
        stage_b(&mut ops, bi);
    }
    TileProgram { tensors, buffers, ops, debug_ops: p.text.clone() }
}

fn buffer(name: &str, space: Space, dtype: DType, parts: u64, free: u64, copies: u32) -> Buffer {
    Buffer { name: name.into(), space, dtype, parts: parts as u32, free: free as u32, copies }
}

/// SRAM bytes per partition the buffers take (each copy padded to 64 bytes, as
/// the allocator places them, all live at once).
fn sram_bytes(buffers: &[Buffer]) -> u64 {
    buffers
        .iter()
        .filter(|b| b.space == Space::Sram)
        .map(|b| b.copies as u64 * (b.free as u64 * b.dtype.size_bytes() as u64).div_ceil(64) * 64)
        .sum()
}

/// The buffers of the flash path, indexed as [`lower`] uses them.
fn flash_buffers(p: &AttentionProblem, plan: &AttentionPlan) -> Vec<Buffer> {
    let (kc, dc, qt) = (plan.kv_chunk, plan.d_chunk, plan.q_tile);
    let win_pad = plan.window.div_ceil(kc) * kc;
    let (win_chunks, d_chunks) = (win_pad / kc, p.d.div_ceil(dc));
    let (wc, sram, psum, f32) = (plan.window_copies, Space::Sram, Space::Psum, DType::F32);
    vec![
        buffer("k_rows", sram, p.dtype, kc, win_chunks * p.d, wc),
        buffer("v_rows", sram, p.dtype, kc, win_chunks * p.dv, wc),
        buffer("k_t", sram, p.dtype, dc, d_chunks * win_pad, wc),
        buffer("k_t_psum", psum, f32, dc, plan.bank_cols, 1),
        buffer("q_tile", sram, p.dtype, qt, p.d, Q_COPIES as u32),
        buffer("scores", psum, f32, qt, plan.kv_block, plan.score_copies),
        buffer("probs", sram, p.dtype, qt, plan.kv_block, PROB_COPIES as u32),
        buffer("o_acc", psum, f32, qt, p.dv, plan.o_copies),
        buffer("o_tile", sram, p.out_dtype, qt, p.dv, 2),
        buffer("row_max", sram, f32, qt, 1, STAT_COPIES as u32),
        buffer("neg_max", sram, f32, qt, 1, STAT_COPIES as u32),
        buffer("block_sum", sram, f32, qt, 1, STAT_COPIES as u32),
        buffer("rescale", sram, f32, qt, 1, STAT_COPIES as u32),
        buffer("row_sum", sram, f32, qt, 1, 2),
    ]
}

/// The buffers of the decode path, indexed as [`lower_decode`] uses them.
fn decode_buffers(p: &AttentionProblem, plan: &AttentionPlan) -> Vec<Buffer> {
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
}

/// The decode path: few query rows (the packed heads of a group), K and V of the
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
fn lower_decode(p: &AttentionProblem, plan: &AttentionPlan) -> TileProgram {
    let AttentionPlan { kv_chunk: kc, d_chunk: dc, .. } = *plan;
    let (d, dv, sq, sk) = (p.d, p.dv, p.sq, p.sk);
    let group = p.group();
    let mq = group * sq;
    let nd = d.div_ceil(dc);
    let nvc = dv.div_ceil(dc);
    let nc = sk.div_ceil(kc);
    let cols = nc * mq;
    let last_rows = sk - (nc - 1) * kc;
    let tensors = vec![
        HbmTensor { name: p.q.clone(), dtype: p.dtype, shape: p.shapes[0].clone(), role: Role::Input },
        HbmTensor { name: p.k.clone(), dtype: p.dtype, shape: p.shapes[1].clone(), role: Role::Input },
        HbmTensor { name: p.v.clone(), dtype: p.dtype, shape: p.shapes[2].clone(), role: Role::Input },
        HbmTensor { name: p.output.clone(), dtype: p.out_dtype, shape: p.out_shape.clone(), role: Role::Output },
    ];
    let (tq, tk, tv, to) = (0, 1, 2, 3);
    let buffers = decode_buffers(p, plan);
    let (k_rows, v_rows, q_tile, q_t, st_psum, bcast, small) = (0, 1, 2, 3, 4, 5, 6);
    let (st, key_max, row_max, max_row, ones_row, ones_col, probs_t) = (7, 8, 9, 10, 11, 12, 13);
    let (sums, row_sum, o_t, o_tile) = (14, 15, 16, 17);
    let slice = |buf, copy: usize, parts: u64, offset: u64, len: u64| BufSlice {
        buf,
        copy: copy as u32,
        parts: parts as u32,
        offset: offset as u32,
        len: len as u32,
    };
    let mut ops: Vec<(TileOp, u32)> = Vec::new();
    let mut push = |op: TileOp| ops.push((op, 0));
    push(TileOp::Memset { dst: slice(ones_row, 0, 1, 0, kc), value: 1.0 });
    push(TileOp::Memset { dst: slice(ones_col, 0, kc, 0, 1), value: 1.0 });
    let groups = p.batch * p.hk;
    let loads = |push: &mut dyn FnMut(TileOp), g: u64| {
        let c = (g % 2) as usize;
        for ci in 0..nc {
            let kk = kc.min(sk - ci * kc);
            let row = g * sk + ci * kc;
            let k_src = HbmBox { tensor: tk, start: row * d, rows: kk as u32, row_stride: d, cols: d as u32 };
            push(TileOp::Load { dst: slice(k_rows, c, kk, ci * d, d), src: k_src, queue: None });
            let v_src = HbmBox { tensor: tv, start: row * dv, rows: kk as u32, row_stride: dv, cols: dv as u32 };
            push(TileOp::Load { dst: slice(v_rows, c, kk, ci * dv, dv), src: v_src, queue: None });
        }
        // The group's query heads are consecutive: their rows are one box.
        let (b, kvh) = (g / p.hk, g % p.hk);
        let first_row = (b * p.hq + kvh * group) * sq;
        let q_src = HbmBox { tensor: tq, start: first_row * d, rows: mq as u32, row_stride: d, cols: d as u32 };
        push(TileOp::Load { dst: slice(q_tile, c, mq, 0, d), src: q_src, queue: None });
    };
    // Folds chunks `0..n` of `src` (each `width` wide) into chunk 0 of `dst` with `op`.
    let tree = |push: &mut dyn FnMut(TileOp), op: AluOp, dst: (usize, usize), src: (usize, usize), parts: u64| {
        let mut n = nc;
        let mut from = src;
        while n > 1 {
            let h = n / 2;
            push(TileOp::Binary {
                op,
                dst: slice(dst.0, dst.1, parts, 0, h * mq),
                a: slice(from.0, from.1, parts, 0, h * mq),
                b: slice(from.0, from.1, parts, (n - h) * mq, h * mq),
            });
            if n % 2 == 1 && from != dst {
                // The unpaired middle chunk moves along.
                push(TileOp::Copy {
                    dst: slice(dst.0, dst.1, parts, h * mq, mq),
                    src: slice(from.0, from.1, parts, h * mq, mq),
                });
            }
            from = dst;
            n -= h;
        }
        from
    };
    if groups > 0 {
        loads(&mut push, 0);
    }
    for g in 0..groups {
        if g + 1 < groups {
            loads(&mut push, g + 1);
        }
        let c = (g % 2) as usize;
        // 1. Q^T, then S^T chunk by chunk.
        for dd in 0..nd {
            let dk = dc.min(d - dd * dc);
            push(TileOp::Transpose { dst: slice(small, 0, dk, dd * mq, mq), src: slice(q_tile, c, mq, dd * dc, dk) });
            push(TileOp::Copy { dst: slice(q_t, c, dk, dd * mq, mq), src: slice(small, 0, dk, dd * mq, mq) });
        }
        if last_rows < kc {
            push(TileOp::Memset { dst: slice(st_psum, 0, kc, (nc - 1) * mq, mq), value: f32::NEG_INFINITY });
        }
        for ci in 0..nc {
            let kk = kc.min(sk - ci * kc);
            for dd in 0..nd {
                let dk = dc.min(d - dd * dc);
                push(TileOp::Matmul {
                    dst: slice(st_psum, 0, kk, ci * mq, mq),
                    stationary: slice(k_rows, c, kk, ci * d + dd * dc, dk),
                    moving: slice(q_t, c, dk, dd * mq, mq),
                    accumulate: dd > 0,
                    transposed: true,
                });
            }
        }
        // Causal: query i of each head sees keys j <= i + sk - sq, so only the
        // last chunks hold masked keys; each head's columns get the affine select.
        if p.causal {
            let off = sk as i64 - sq as i64;
            for ci in 0..nc {
                let last_key = (ci * kc + kc.min(sk - ci * kc)) as i64 - 1;
                if last_key <= off {
                    continue;
                }
                for hh in 0..group {
                    let cols_of_head = slice(st_psum, 0, kc, ci * mq + hh * sq, sq);
                    push(TileOp::Select {
                        cmp: jpu_isa::operand::CmpOp::Ge,
                        dst: cols_of_head,
                        src: cols_of_head,
                        partition_step: -1,
                        free_step: 1,
                        base: (off - (ci * kc) as i64) as i32,
                        fill: f32::NEG_INFINITY,
                    });
                }
            }
        }
        // 2. The maximum per query row.
        push(TileOp::Copy { dst: slice(st, c, kc, 0, cols), src: slice(st_psum, 0, kc, 0, cols) });
        let folded = tree(&mut push, AluOp::Max, (key_max, 0), (st, c), kc);
        push(TileOp::Transpose { dst: slice(small, 0, mq, 0, kc), src: slice(folded.0, folded.1, kc, 0, mq) });
        push(TileOp::Reduce { op: ReduceOp::Max, dst: slice(row_max, c, mq, 0, 1), src: slice(small, 0, mq, 0, kc) });
        // 3. Broadcast it to every key partition, subtract, exponentiate.
        push(TileOp::Transpose { dst: slice(small, 0, 1, 0, mq), src: slice(row_max, c, mq, 0, 1) });
        push(TileOp::Copy { dst: slice(max_row, c, 1, 0, mq), src: slice(small, 0, 1, 0, mq) });
        let mut have = 1;
        while have < nc {
            let k = have.min(nc - have);
            push(TileOp::Copy { dst: slice(max_row, c, 1, have * mq, k * mq), src: slice(max_row, c, 1, 0, k * mq) });
            have += k;
        }
        push(TileOp::Matmul {
            dst: slice(bcast, 0, kc, 0, cols),
            stationary: slice(ones_row, 0, 1, 0, kc),
            moving: slice(max_row, c, 1, 0, cols),
            accumulate: false,
            transposed: false,
        });
        let s = slice(st, c, kc, 0, cols);
        push(TileOp::Binary { op: AluOp::Sub, dst: s, a: s, b: slice(bcast, 0, kc, 0, cols) });
        push(TileOp::Activate {
            func: ActFunc::Exp,
            dst: slice(probs_t, c, kc, 0, cols),
            src: s,
            scale: TileScalar::Imm(p.scale),
            bias: TileScalar::Imm(-0.0),
            accum: None,
        });
        // 4. Row sums of the rounded probabilities, as a column.
        push(TileOp::Matmul {
            dst: slice(small, 0, 1, 0, cols),
            stationary: slice(ones_col, 0, kc, 0, 1),
            moving: slice(probs_t, c, kc, 0, cols),
            accumulate: false,
            transposed: false,
        });
        push(TileOp::Copy { dst: slice(sums, c, 1, 0, cols), src: slice(small, 0, 1, 0, cols) });
        let summed = tree(&mut push, AluOp::Add, (sums, c), (sums, c), 1);
        push(TileOp::Transpose { dst: slice(small, 0, mq, 0, 1), src: slice(summed.0, summed.1, 1, 0, mq) });
        push(TileOp::Copy { dst: slice(row_sum, c, mq, 0, 1), src: slice(small, 0, mq, 0, 1) });
        // 5. O^T = sum over chunks of V_c^T . P^T_c (per value-dim chunk of at most
        //    `dc` rows); transpose back, divide, store.
        for vc in 0..nvc {
            let dvk = dc.min(dv - vc * dc);
            for ci in 0..nc {
                let kk = kc.min(sk - ci * kc);
                push(TileOp::Matmul {
                    dst: slice(st_psum, 0, dvk, vc * mq, mq),
                    stationary: slice(v_rows, c, kk, ci * dv + vc * dc, dvk),
                    moving: slice(probs_t, c, kk, ci * mq, mq),
                    accumulate: ci > 0,
                    transposed: false,
                });
            }
            push(TileOp::Copy { dst: slice(o_t, c, dvk, vc * mq, mq), src: slice(st_psum, 0, dvk, vc * mq, mq) });
            push(TileOp::Transpose { dst: slice(bcast, 0, mq, vc * dc, dvk), src: slice(o_t, c, dvk, vc * mq, mq) });
        }
        let out = slice(o_tile, c, mq, 0, dv);
        push(TileOp::Scalar {
            op: AluOp::Div,
            dst: out,
            src: slice(bcast, 0, mq, 0, dv),
            scalar: TileScalar::Column(slice(row_sum, c, mq, 0, 1)),
            reverse: false,
        });
        let (b, kvh) = (g / p.hk, g % p.hk);
        let first_row = (b * p.hq + kvh * group) * sq;
        let dst = HbmBox { tensor: to, start: first_row * dv, rows: mq as u32, row_stride: dv, cols: dv as u32 };
        push(TileOp::Store { dst, src: out });
    }
    TileProgram { tensors, buffers, ops, debug_ops: p.text.clone() }
}
