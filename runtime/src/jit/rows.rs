//! Row helpers: `activate` and `reduce` on tiles whose rows are contiguous f32
//! or bf16, and f32 `tensor_scalar` sub and div on AVX-512 hosts, called by
//! the compiled engine like [`super::matmul`]. f32 rows are computed where
//! they are stored. All give the interpreter's bits by construction:
//! - every element goes through the same function of the shared numerics
//!   ([`activation`]), except `exp`, which on hosts with AVX-512 runs sixteen
//!   lanes of the same algorithm as `libm::expf` (FreeBSD's: the same f32
//!   operations in the same order, each rounded the same way), with lanes
//!   outside its main path (|x| >= 87.34, |x| <= 2^-14, NaN) computed by
//!   `libm::expf` itself; `exp16_matches_libm_expf` checks it against every
//!   f32 value;
//! - sums add in the interpreter's order (one chain per row; eight rows' chains
//!   interleave so the adds overlap);
//! - a `max` is taken sixteen lanes at a time and kept when the row has no NaN
//!   and its maximum is not zero (then every order gives the same bits); other
//!   rows are folded in order by [`max_num`];
//! - `tensor_scalar` is one IEEE operation per element (any lane width gives
//!   the same bits), its column scalars all read before any write.

use jpu_isa::numerics::{activation, alu, max_num, store_f32};
use jpu_isa::operand::{ActFunc, AluOp, Column, ReduceOp, Scalar, Space, Tile};
use jpu_isa::{DType, Op};

use super::codegen::{same_or_apart, Memory};
use crate::memory::CoreMemory;
use crate::semantics::{extend_f32, read_column, store_contiguous};

/// Rows whose chains of adds interleave.
const GROUP: usize = 8;

/// A covered row instruction: `activate` and `reduce` on f32 or bf16 rows,
/// and f32 `tensor_scalar` sub and div (the slow ones) on hosts whose vectors
/// are wider than the generated code's f32x4 (AVX-512).
pub(super) struct RowOp(Op);

/// f32 or bf16 rows, contiguous, inside their space.
fn row_tile(t: &Tile, m: &Memory) -> bool {
    matches!(t.dtype, DType::F32 | DType::Bf16) && t.is_contiguous() && m.holds(t)
}

fn float_scalar(s: &Scalar) -> bool {
    match s {
        Scalar::Imm(_) => true,
        Scalar::Col(c) => !c.dtype.is_int(),
    }
}

/// Whether column `c`, read or written for partitions of `t`, shares no byte
/// with `t`.
fn column_apart(c: &Column, t: &Tile) -> bool {
    let bytes = t.free_elems() * t.dtype.size_bytes() as u64;
    let (start, end) = (c.offset as u64, c.offset as u64 + c.dtype.size_bytes() as u64);
    c.space != t.space || end <= t.offset as u64 || t.offset as u64 + bytes <= start
}

impl RowOp {
    pub(super) fn of(op: &Op, m: &Memory) -> Option<RowOp> {
        let rows = |dst: &Tile, src: &Tile| {
            row_tile(dst, m) && row_tile(src, m) && dst.part_count == src.part_count && same_or_apart(dst, src)
        };
        let covered = match op {
            Op::Activate { dst, src, scale, bias, accum, .. } => {
                rows(dst, src)
                    && dst.free_elems() == src.free_elems()
                    && float_scalar(scale)
                    && float_scalar(bias)
                    && accum.is_none_or(|c| !c.dtype.is_int() && column_apart(&c, dst))
            }
            Op::Reduce { dst, src, .. } => rows(dst, src) && dst.free_elems() == 1 && src.free_elems() > 0,
            Op::TensorScalar { op, dst, src, scalar, .. } => {
                wide_host()
                    // Not add or mul: the host compiler may swap their
                    // operands, and with two NaNs that changes the payload.
                    && matches!(op, AluOp::Sub | AluOp::Div)
                    && rows(dst, src)
                    && (dst.dtype, src.dtype) == (DType::F32, DType::F32)
                    && dst.free_elems() == src.free_elems()
                    && float_scalar(scalar)
            }
            _ => false,
        };
        covered.then(|| RowOp(op.clone()))
    }

    pub(super) fn run(&self, mem: &mut CoreMemory) {
        match &self.0 {
            Op::Activate { func, dst, src, scale, bias, accum } => {
                activate(mem, (*func, dst, src), (scale, bias), accum.as_ref())
            }
            Op::Reduce { op, dst, src } => reduce(mem, *op, dst, src),
            Op::TensorScalar { op, reverse, dst, src, scalar } => tensor_scalar(mem, (*op, *reverse), dst, src, scalar),
            op => unreachable!("RowOp::of admits no {op:?}"),
        }
    }
}

/// Whether the host's vectors are wider than f32x4 (AVX-512).
fn wide_host() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `tensor_scalar`: every element `x op s` (or `s op x`), `s` the row's scalar
/// (every scalar read before any element is written, as in the interpreter).
fn tensor_scalar(mem: &mut CoreMemory, (op, reverse): (AluOp, bool), dst: &Tile, src: &Tile, scalar: &Scalar) {
    let s = scalars(mem, scalar, src);
    let first_pass = |p: usize, from: Option<&[f32]>, row: &mut [f32]| alu_row(op, reverse, from, row, s[p]);
    if each_group_in_place(mem, (src, dst), first_pass, |_, _| {}) {
        return;
    }
    each_group(mem, src, |mem, first, group| {
        for (r, row) in group.iter_mut().enumerate() {
            first_pass(first + r, None, row);
            store_row(mem, dst, first + r, row);
        }
    });
}

/// `x op s` (or `s op x`) for every `x` of `row`, in f32 as the interpreter's
/// `alu` computes it (one IEEE operation per element: any lane width gives
/// the same bits).
/// Reads `from` (none: `row` itself) and writes `row`.
fn alu_row(op: AluOp, reverse: bool, from: Option<&[f32]>, row: &mut [f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the host has the feature.
        return unsafe { x86::alu_row_avx512(op, reverse, from, row, s) };
    }
    alu_row_portable(op, reverse, from, row, s)
}

#[inline(always)]
fn alu_row_portable(op: AluOp, reverse: bool, from: Option<&[f32]>, row: &mut [f32], s: f32) {
    // One loop per case, so each is a plain loop the compiler vectorises.
    match (op, reverse) {
        (AluOp::Div, false) => map_row(from, row, |x| x / s),
        (AluOp::Div, true) => map_row(from, row, |x| s / x),
        (op, false) => map_row(from, row, |x| alu(op, x, s)),
        (op, true) => map_row(from, row, |x| alu(op, s, x)),
    }
}

/// `row[i] = g(from[i])`, or `g(row[i])` when there is no `from`.
#[inline(always)]
fn map_row(from: Option<&[f32]>, row: &mut [f32], g: impl Fn(f32) -> f32) {
    match from {
        Some(from) => row.iter_mut().zip(from).for_each(|(y, &x)| *y = g(x)),
        None => row.iter_mut().for_each(|x| *x = g(*x)),
    }
}

/// The bytes of row `p` (from the tile's first partition) of `t`.
fn row_range(t: &Tile, p: usize, partition_bytes: usize) -> std::ops::Range<usize> {
    let start = (t.part_start as usize + p) * partition_bytes + t.offset as usize;
    start..start + t.free_elems() as usize * t.dtype.size_bytes() as usize
}

/// Row `p` of `t` as f32, into `out`.
fn load_row(mem: &CoreMemory, t: &Tile, p: usize, out: &mut Vec<f32>) {
    let (buf, pb) = mem.space(t.space);
    out.clear();
    extend_f32(out, &buf[row_range(t, p, pb)], t.dtype);
}

/// Stores f32 `vals` into row `p` of `t`, rounded as the interpreter rounds.
fn store_row(mem: &mut CoreMemory, t: &Tile, p: usize, vals: &[f32]) {
    let (buf, pb) = mem.space_mut(t.space);
    store_contiguous(&mut buf[row_range(t, p, pb)], t.dtype, vals);
}

/// Calls `f(mem, first, rows)` for each group of up to [`GROUP`] rows of
/// `src`, loaded as f32, `first` the group's first row.
fn each_group(mem: &mut CoreMemory, src: &Tile, mut f: impl FnMut(&mut CoreMemory, usize, &mut [Vec<f32>])) {
    let parts = src.part_count as usize;
    let mut rows: Vec<Vec<f32>> = (0..GROUP.min(parts)).map(|_| Vec::new()).collect();
    for first in (0..parts).step_by(GROUP) {
        let group = &mut rows[..GROUP.min(parts - first)];
        for (r, row) in group.iter_mut().enumerate() {
            load_row(mem, src, first + r, row);
        }
        f(mem, first, group);
    }
}

fn scalars(mem: &CoreMemory, s: &Scalar, t: &Tile) -> Vec<f32> {
    match s {
        Scalar::Imm(v) => vec![v.0; t.part_count as usize],
        Scalar::Col(c) => read_column(mem, c, t.part_start, t.part_count),
    }
}

/// `activate`: `func(x * scale + bias)` per element; the row sums (of the f32
/// results, from +0.0, in order) into `accum`.
fn activate(
    mem: &mut CoreMemory,
    (func, dst, src): (ActFunc, &Tile, &Tile),
    (scale, bias): (&Scalar, &Scalar),
    accum: Option<&Column>,
) {
    let (sc, bi) = (scalars(mem, scale, src), scalars(mem, bias, src));
    let mut sums = vec![0.0f32; src.part_count as usize];
    let apply = |p: usize, row: &mut [f32]| {
        for x in row.iter_mut() {
            *x = *x * sc[p] + bi[p];
        }
        match func {
            ActFunc::Exp => exp_in_place(row),
            f => row.iter_mut().for_each(|x| *x = activation(f, *x)),
        }
    };
    let copy = |_, from: Option<&[f32]>, row: &mut [f32]| {
        if let Some(from) = from {
            row.copy_from_slice(from);
        }
    };
    // f32 results stored as f32 are themselves: compute them where they are
    // stored and sum them from there.
    let in_place = src.dtype == DType::F32
        && dst.dtype == DType::F32
        && each_group_in_place(mem, (src, dst), copy, |first, group| {
            for (r, row) in group.iter_mut().enumerate() {
                apply(first + r, row);
            }
            if accum.is_some() {
                sum_rows(group, 0, &mut sums[first..first + group.len()]);
            }
        });
    if in_place {
        return store_sums(mem, dst, accum, &sums);
    }
    each_group(mem, src, |mem, first, group| {
        for (r, row) in group.iter_mut().enumerate() {
            apply(first + r, row);
        }
        if accum.is_some() {
            sum_rows(group, 0, &mut sums[first..first + group.len()]);
        }
        for (r, row) in group.iter().enumerate() {
            store_row(mem, dst, first + r, row);
        }
    });
    store_sums(mem, dst, accum, &sums);
}

/// For each group of up to [`GROUP`] rows of the f32 tile `dst` (`first` the
/// group's first row): `row_pass(r, from, row)` on each row `r`, `row` the
/// destination's row in memory and `from` the same row of `src` (same shape
/// and dtype; none when the tiles are identical, else they are disjoint),
/// then `group_pass(first, rows)`. False, and nothing done, when the host
/// memory is not aligned for f32 slices.
fn each_group_in_place(
    mem: &mut CoreMemory,
    (src, dst): (&Tile, &Tile),
    mut row_pass: impl FnMut(usize, Option<&[f32]>, &mut [f32]),
    mut group_pass: impl FnMut(usize, &mut [&mut [f32]]),
) -> bool {
    if !f32_aligned(mem, src) || !f32_aligned(mem, dst) {
        return false;
    }
    let parts = dst.part_count as usize;
    for first in (0..parts).step_by(GROUP) {
        let rows = first..parts.min(first + GROUP);
        for r in rows.clone() {
            let (from, row) = row_pair(mem, src, dst, r);
            row_pass(r, from.map(bytemuck::cast_slice), bytemuck::cast_slice_mut(row));
        }
        let group = Tile { part_start: dst.part_start + first as u16, part_count: rows.len() as u16, ..*dst };
        let (buf, pb) = mem.space_mut(dst.space);
        let mut group = f32_rows_mut(buf, pb, &group).expect("aligned as the whole tile");
        group_pass(first, &mut group);
    }
    true
}

/// The bytes of row `r` of `src` (none when they are `dst`'s) and of `dst`
/// (tiles of the same bytes or of disjoint ones).
fn row_pair<'m>(mem: &'m mut CoreMemory, src: &Tile, dst: &Tile, r: usize) -> (Option<&'m [u8]>, &'m mut [u8]) {
    let from = row_range(src, r, mem.space(src.space).1);
    let to = row_range(dst, r, mem.space(dst.space).1);
    // The same bytes (tiles may spell one run with different dims).
    if src.space == dst.space && from == to {
        return (None, &mut mem.space_mut(dst.space).0[to]);
    }
    let CoreMemory { sram, psum, .. } = mem;
    match (src.space, dst.space) {
        (Space::Sram, Space::Psum) => (Some(&sram[from]), &mut psum[to]),
        (Space::Psum, Space::Sram) => (Some(&psum[from]), &mut sram[to]),
        (space, _) => {
            let buf = if space == Space::Sram { sram } else { psum };
            // Disjoint tiles have disjoint rows.
            if from.end <= to.start {
                let (low, high) = buf.split_at_mut(to.start);
                (Some(&low[from]), &mut high[..to.len()])
            } else {
                let (low, high) = buf.split_at_mut(from.start);
                (Some(&high[..from.len()]), &mut low[to])
            }
        }
    }
}

/// Whether every row of `t` starts f32-aligned in host memory.
fn f32_aligned(mem: &CoreMemory, t: &Tile) -> bool {
    let (buf, pb) = mem.space(t.space);
    (buf.as_ptr() as usize + t.offset as usize).is_multiple_of(4) && pb.is_multiple_of(4)
}

/// The rows of an f32 tile as f32 slices of the partition-major `buf`, when
/// the host buffer is aligned for them.
fn f32_rows_mut<'b>(buf: &'b mut [u8], pb: usize, t: &Tile) -> Option<Vec<&'b mut [f32]>> {
    let (off, len) = (t.offset as usize, t.free_elems() as usize * 4);
    let parts = buf.chunks_exact_mut(pb).skip(t.part_start as usize).take(t.part_count as usize);
    parts.map(|part| bytemuck::try_cast_slice_mut(&mut part[off..off + len]).ok()).collect()
}

/// [`f32_rows_mut`], to read.
fn f32_rows<'b>(buf: &'b [u8], pb: usize, t: &Tile) -> Option<Vec<&'b [f32]>> {
    let (off, len) = (t.offset as usize, t.free_elems() as usize * 4);
    let parts = buf.chunks_exact(pb).skip(t.part_start as usize).take(t.part_count as usize);
    parts.map(|part| bytemuck::try_cast_slice(&part[off..off + len]).ok()).collect()
}

/// Writes an `activate`'s row sums into its `accum` column, if it has one.
fn store_sums(mem: &mut CoreMemory, dst: &Tile, accum: Option<&Column>, sums: &[f32]) {
    if let Some(col) = accum {
        let (buf, pb) = mem.space_mut(col.space);
        let size = col.dtype.size_bytes() as usize;
        for (i, &s) in sums.iter().enumerate() {
            let at = (dst.part_start as usize + i) * pb + col.offset as usize;
            store_f32(col.dtype, s, &mut buf[at..at + size]);
        }
    }
}

/// `sums[r] += rows[r][from..]` in element order, the rows' chains interleaved.
fn sum_rows<R: AsRef<[f32]>>(rows: &[R], from: usize, sums: &mut [f32]) {
    let len = rows.first().map_or(0, |r| r.as_ref().len());
    if rows.len() == GROUP {
        // Sixteen elements of each row at a time: one bounds check per piece,
        // and the rows' independent chains overlap in the core's window.
        const PIECE: usize = 16;
        let mut acc = [0.0f32; GROUP];
        acc.copy_from_slice(sums);
        let whole = from + (len - from) / PIECE * PIECE;
        for j in (from..whole).step_by(PIECE) {
            for (a, row) in acc.iter_mut().zip(rows) {
                for &x in &row.as_ref()[j..j + PIECE] {
                    *a += x;
                }
            }
        }
        for (a, row) in acc.iter_mut().zip(rows) {
            *a = row.as_ref()[whole..len].iter().fold(*a, |s, &x| s + x);
        }
        sums.copy_from_slice(&acc);
    } else {
        for (s, row) in sums.iter_mut().zip(rows) {
            *s = row.as_ref()[from..].iter().fold(*s, |a, &x| a + x);
        }
    }
}

/// `reduce`: each row folded from its first element.
fn reduce(mem: &mut CoreMemory, op: ReduceOp, dst: &Tile, src: &Tile) {
    let mut out = vec![0.0f32; src.part_count as usize];
    let (buf, pb) = mem.space(src.space);
    // f32 rows are read where they are.
    match f32_rows(buf, pb, src).filter(|_| src.dtype == DType::F32) {
        Some(rows) => rows.chunks(GROUP).enumerate().for_each(|(g, group)| fold_rows(op, group, &mut out[g * GROUP..])),
        None => each_group(mem, src, |_, first, group| fold_rows(op, group, &mut out[first..])),
    }
    for (p, v) in out.iter().enumerate() {
        store_row(mem, dst, p, std::slice::from_ref(v));
    }
}

/// Each row of `group` folded by `op` from its first element into `out`.
fn fold_rows<R: AsRef<[f32]>>(op: ReduceOp, group: &[R], out: &mut [f32]) {
    let out = &mut out[..group.len()];
    match op {
        ReduceOp::Sum => {
            for (o, row) in out.iter_mut().zip(group) {
                *o = row.as_ref()[0];
            }
            sum_rows(group, 1, out);
        }
        ReduceOp::Max => {
            for (o, row) in out.iter_mut().zip(group) {
                *o = row_max(row.as_ref());
            }
        }
    }
}

/// The interpreter's `max` fold of a row: sixteen lanes when that is exact.
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut nan = false;
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            nan |= x.is_nan();
            *l = if x > *l { x } else { *l };
        }
    }
    for (l, &x) in lanes.iter_mut().zip(tail) {
        nan |= x.is_nan();
        *l = if x > *l { x } else { *l };
    }
    let m = lanes.iter().fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    if nan || m == 0.0 {
        row[1..].iter().fold(row[0], |acc, &x| max_num(acc, x))
    } else {
        m
    }
}

/// `libm::expf` of every element.
fn exp_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the host has the feature.
        return unsafe { x86::exp_in_place_avx512(v) };
    }
    v.iter_mut().for_each(|x| *x = activation(ActFunc::Exp, *x));
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use jpu_isa::operand::AluOp;

    #[target_feature(enable = "avx512f")]
    pub(super) fn alu_row_avx512(op: AluOp, reverse: bool, from: Option<&[f32]>, row: &mut [f32], s: f32) {
        super::alu_row_portable(op, reverse, from, row, s)
    }

    use jpu_isa::numerics::activation;
    use jpu_isa::operand::ActFunc;

    #[target_feature(enable = "avx512f")]
    pub(super) fn exp_in_place_avx512(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(16);
        for chunk in &mut chunks {
            // SAFETY: the chunk holds 16 values.
            unsafe {
                let x = _mm512_loadu_ps(chunk.as_ptr());
                match exp16(x) {
                    Some(y) => _mm512_storeu_ps(chunk.as_mut_ptr(), y),
                    None => chunk.iter_mut().for_each(|x| *x = activation(ActFunc::Exp, *x)),
                }
            }
        }
        chunks.into_remainder().iter_mut().for_each(|x| *x = activation(ActFunc::Exp, *x));
    }

    /// `libm::expf` (FreeBSD's `e_expf.c`) of sixteen lanes, or `None` when a
    /// lane leaves its main path (|x| >= 87.34 or NaN, |x| <= 2^-14).
    #[target_feature(enable = "avx512f")]
    pub(super) fn exp16(x: __m512) -> Option<__m512> {
        const LN2_HI: f32 = 6.931_457_5e-1;
        const LN2_LO: f32 = 1.428_606_8e-6;
        const INV_LN2: f32 = f32::from_bits(0x3fb8_aa3b); // libm's 1.4426950216
        const P1: f32 = 1.666_662_5e-1;
        const P2: f32 = -2.766_733_3e-3;
        let bits = _mm512_castps_si512(x);
        let hx = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fff_ffff));
        let special = _mm512_cmpge_epi32_mask(hx, _mm512_set1_epi32(0x42ae_ac50))
            | _mm512_cmple_epi32_mask(hx, _mm512_set1_epi32(0x3900_0000));
        if special != 0 {
            return None;
        }
        let negative = _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512());
        // k: |x| > 1.5 ln2: trunc(x / ln2 +- 0.5); |x| > 0.5 ln2: +-1; else 0.
        let half = _mm512_mask_blend_ps(negative, _mm512_set1_ps(0.5), _mm512_set1_ps(-0.5));
        let far = _mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(INV_LN2), x), half));
        let near = _mm512_mask_blend_epi32(negative, _mm512_set1_epi32(1), _mm512_set1_epi32(-1));
        let is_far = _mm512_cmpgt_epi32_mask(hx, _mm512_set1_epi32(0x3f85_1592));
        let is_near = _mm512_cmpgt_epi32_mask(hx, _mm512_set1_epi32(0x3eb1_7218));
        let k = _mm512_mask_blend_epi32(is_far, _mm512_mask_blend_epi32(is_near, _mm512_setzero_si512(), near), far);
        // With k = 0, hi = x - 0 = x, lo = 0 and x - lo = x: the small path.
        let kf = _mm512_cvtepi32_ps(k);
        let hi = _mm512_sub_ps(x, _mm512_mul_ps(kf, _mm512_set1_ps(LN2_HI)));
        let lo = _mm512_mul_ps(kf, _mm512_set1_ps(LN2_LO));
        let r = _mm512_sub_ps(hi, lo);
        let rr = _mm512_mul_ps(r, r);
        let poly = _mm512_add_ps(_mm512_set1_ps(P1), _mm512_mul_ps(rr, _mm512_set1_ps(P2)));
        let c = _mm512_sub_ps(r, _mm512_mul_ps(rr, poly));
        let q = _mm512_div_ps(_mm512_mul_ps(r, c), _mm512_sub_ps(_mm512_set1_ps(2.0), c));
        let y = _mm512_add_ps(_mm512_set1_ps(1.0), _mm512_add_ps(_mm512_sub_ps(q, lo), hi));
        // scalbnf(y, k) for k in [-126, 126] is one multiply by 2^k.
        let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(k, _mm512_set1_epi32(0x7f)));
        Some(_mm512_mul_ps(y, _mm512_castsi512_ps(scale)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `step`-th f32 bit pattern from `start`: `exp_in_place` against
    /// `libm::expf`.
    fn check_exp(start: u64, step: u64) {
        let mut v = Vec::with_capacity(1 << 16);
        let mut bits = start;
        while bits <= u32::MAX as u64 {
            v.clear();
            while v.len() < 1 << 16 && bits <= u32::MAX as u64 {
                v.push(f32::from_bits(bits as u32));
                bits += step;
            }
            let mut got = v.clone();
            exp_in_place(&mut got);
            for (x, y) in v.iter().zip(&got) {
                let want = activation(ActFunc::Exp, *x);
                assert!(
                    want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()),
                    "exp({x:e}) = {y:e}, libm {want:e}"
                );
            }
        }
    }

    #[test]
    fn exp16_matches_libm_expf_on_a_sample() {
        check_exp(0, 4099);
        // Densely around the thresholds and the reduction's boundaries.
        for centre in [0x3900_0000u32, 0x3eb1_7218, 0x3f85_1592, 0x42ae_ac50] {
            for sign in [0, 0x8000_0000] {
                let v: Vec<f32> = (centre - 5000..centre + 5000).map(|b| f32::from_bits(b | sign)).collect();
                let mut got = v.clone();
                exp_in_place(&mut got);
                for (x, y) in v.iter().zip(&got) {
                    assert_eq!(y.to_bits(), activation(ActFunc::Exp, *x).to_bits(), "exp({x:e})");
                }
            }
        }
    }

    /// Every f32 value (about a minute in release mode):
    /// `cargo test --release -p jpu-runtime exp16_matches -- --ignored`.
    #[test]
    #[ignore]
    fn exp16_matches_libm_expf_on_every_f32() {
        check_exp(0, 1);
    }

    #[test]
    fn row_max_keeps_the_interpreters_bits() {
        let fold = |r: &[f32]| r[1..].iter().fold(r[0], |a, &x| max_num(a, x));
        let rows: [Vec<f32>; 5] = [
            (0..40).map(|i| (i as f32 * 0.37).sin()).collect(),
            vec![-0.0, 0.0, -1.0, -0.0],
            vec![f32::NAN, 1.0, 2.0],
            vec![f32::NAN; 3],
            (0..33).map(|i| -(i as f32)).collect(),
        ];
        for row in &rows {
            let (got, want) = (row_max(row), fold(row));
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{row:?}");
        }
    }

    /// Every row helper, on f32 and bf16 tiles in place, disjoint, across
    /// spaces and with column scalars (one inside the destination), gives the
    /// interpreter's bytes, NaN payloads included.
    #[test]
    fn row_helpers_give_the_interpreters_bytes() {
        use jpu_isa::operand::{Imm, Space};
        let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
        let memory = super::super::codegen::Memory::of_target(&t);
        let mut fresh = CoreMemory::new(&t);
        let mut seed = 0x9e37_79b9u32;
        for b in fresh.sram.chunks_exact_mut(4).chain(fresh.psum.chunks_exact_mut(4)) {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            // Mostly moderate values, some NaNs with payloads and infinities.
            let v = match seed % 61 {
                0 => f32::from_bits(0x7fc0_1234 | (seed & 0x8000_0000)),
                1 => f32::INFINITY,
                _ => (seed % 2001) as f32 / 100.0 - 10.0,
            };
            b.copy_from_slice(&v.to_le_bytes());
        }
        let tile = |space, dtype, offset| Tile::contiguous(space, dtype, 2, 12, offset, 37);
        let col = |offset| Scalar::Col(Column { space: Space::Sram, dtype: DType::F32, offset });
        let (a, b) = (tile(Space::Sram, DType::F32, 0), tile(Space::Sram, DType::F32, 512));
        let (p, h) = (tile(Space::Psum, DType::F32, 64), tile(Space::Sram, DType::Bf16, 1024));
        let accum = Some(Column { space: Space::Sram, dtype: DType::F32, offset: 2048 });
        let mut ops = vec![
            Op::Reduce { op: ReduceOp::Max, dst: Tile::contiguous(Space::Sram, DType::F32, 2, 12, 3000, 1), src: a },
            Op::Reduce { op: ReduceOp::Sum, dst: Tile::contiguous(Space::Sram, DType::F32, 2, 12, 3000, 1), src: h },
        ];
        // Disjoint by partitions, the same offsets.
        let q = Tile::contiguous(Space::Sram, DType::F32, 16, 12, 0, 37);
        // The bytes of `a` spelled with two dims: the same bytes, not a copy.
        let dims = [jpu_isa::operand::Dim { count: 1, stride: 37 }, jpu_isa::operand::Dim { count: 37, stride: 1 }];
        let a2 = Tile::with_dims(Space::Sram, DType::F32, 2, 12, 0, &dims);
        for (dst, src) in [(a, a), (a2, a), (a, a2), (b, a), (a, b), (q, a), (a, q), (b, p), (h, a), (p, b)] {
            let (scale, bias) = (Scalar::Imm(Imm(0.5)), col(3000));
            ops.push(Op::Activate { func: ActFunc::Exp, dst, src, scale, bias, accum });
            ops.push(Op::Activate { func: ActFunc::Tanh, dst, src, scale: col(8), bias: Scalar::Imm(Imm(1.0)), accum });
            for (op, reverse) in [(AluOp::Div, false), (AluOp::Div, true), (AluOp::Sub, true), (AluOp::Mul, false)] {
                ops.push(Op::TensorScalar { op, reverse, dst, src, scalar: col(3000) });
                // The column inside the destination's rows: read before any write.
                ops.push(Op::TensorScalar { op, reverse, dst, src, scalar: col(dst.offset + 8) });
                ops.push(Op::TensorScalar { op, reverse, dst, src, scalar: Scalar::Imm(Imm(-3.0)) });
            }
        }
        let mut helped = 0;
        for op in &ops {
            let (mut want, mut got) = (fresh.clone(), fresh.clone());
            crate::semantics::execute_compute(op, &mut want);
            match RowOp::of(op, &memory) {
                Some(row) => {
                    row.run(&mut got);
                    helped += 1;
                }
                None => continue,
            }
            let word = |m: &CoreMemory, i: usize| u32::from_le_bytes(m.sram[i..i + 4].try_into().unwrap());
            let differs = (0..want.sram.len()).step_by(4).find(|&i| word(&want, i) != word(&got, i));
            let at = differs.map(|i| format!("sram byte {i}: {:#x}, interpreter {:#x}", word(&got, i), word(&want, i)));
            assert!(want.sram == got.sram && want.psum == got.psum, "{op:?}: {at:?}");
        }
        assert!(helped >= 20, "only {helped} of {} instructions ran in helpers", ops.len());
    }
}
