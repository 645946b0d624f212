//! Row helpers: `activate` and `reduce` on tiles whose rows are contiguous f32
//! or bf16, called by the compiled engine like [`super::matmul`]. Both give
//! the interpreter's bits by construction:
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
//!   rows are folded in order by [`max_num`].

use jpu_isa::numerics::{activation, max_num, store_f32};
use jpu_isa::operand::{ActFunc, Column, ReduceOp, Scalar, Tile};
use jpu_isa::{DType, Op};

use super::codegen::{same_or_apart, Memory};
use crate::memory::CoreMemory;
use crate::semantics::{extend_f32, read_column, store_contiguous};

/// Rows whose chains of adds interleave.
const GROUP: usize = 8;

/// A covered row instruction.
pub(super) enum RowOp {
    Activate { func: ActFunc, dst: Tile, src: Tile, scale: Scalar, bias: Scalar, accum: Option<Column> },
    Reduce { op: ReduceOp, dst: Tile, src: Tile },
}

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
        match *op {
            Op::Activate { func, dst, src, scale, bias, accum }
                if rows(&dst, &src)
                    && dst.free_elems() == src.free_elems()
                    && float_scalar(&scale)
                    && float_scalar(&bias)
                    && accum.is_none_or(|c| !c.dtype.is_int() && column_apart(&c, &dst)) =>
            {
                Some(RowOp::Activate { func, dst, src, scale, bias, accum })
            }
            Op::Reduce { op, dst, src } if rows(&dst, &src) && dst.free_elems() == 1 && src.free_elems() > 0 => {
                Some(RowOp::Reduce { op, dst, src })
            }
            _ => None,
        }
    }

    pub(super) fn run(&self, mem: &mut CoreMemory) {
        match self {
            RowOp::Activate { func, dst, src, scale, bias, accum } => {
                activate(mem, (*func, dst, src), (scale, bias), accum.as_ref())
            }
            RowOp::Reduce { op, dst, src } => reduce(mem, *op, dst, src),
        }
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
    each_group(mem, src, |mem, first, group| {
        for (r, row) in group.iter_mut().enumerate() {
            let p = first + r;
            for x in row.iter_mut() {
                *x = *x * sc[p] + bi[p];
            }
            match func {
                ActFunc::Exp => exp_in_place(row),
                f => row.iter_mut().for_each(|x| *x = activation(f, *x)),
            }
        }
        if accum.is_some() {
            sum_rows(group, 0, &mut sums[first..first + group.len()]);
        }
        for (r, row) in group.iter().enumerate() {
            store_row(mem, dst, first + r, row);
        }
    });
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
fn sum_rows(rows: &[Vec<f32>], from: usize, sums: &mut [f32]) {
    let len = rows.first().map_or(0, Vec::len);
    if rows.len() == GROUP {
        // Sixteen elements of each row at a time: one bounds check per piece,
        // and the rows' independent chains overlap in the core's window.
        const PIECE: usize = 16;
        let mut acc = [0.0f32; GROUP];
        acc.copy_from_slice(sums);
        let whole = from + (len - from) / PIECE * PIECE;
        for j in (from..whole).step_by(PIECE) {
            for (a, row) in acc.iter_mut().zip(rows) {
                for &x in &row[j..j + PIECE] {
                    *a += x;
                }
            }
        }
        for (a, row) in acc.iter_mut().zip(rows) {
            *a = row[whole..len].iter().fold(*a, |s, &x| s + x);
        }
        sums.copy_from_slice(&acc);
    } else {
        for (s, row) in sums.iter_mut().zip(rows) {
            *s = row[from..].iter().fold(*s, |a, &x| a + x);
        }
    }
}

/// `reduce`: each row folded from its first element.
fn reduce(mem: &mut CoreMemory, op: ReduceOp, dst: &Tile, src: &Tile) {
    let mut out = vec![0.0f32; src.part_count as usize];
    each_group(mem, src, |_, first, group| {
        let out = &mut out[first..first + group.len()];
        match op {
            ReduceOp::Sum => {
                for (o, row) in out.iter_mut().zip(group.iter()) {
                    *o = row[0];
                }
                sum_rows(group, 1, out);
            }
            ReduceOp::Max => {
                for (o, row) in out.iter_mut().zip(group.iter()) {
                    *o = row_max(row);
                }
            }
        }
    });
    for (p, v) in out.iter().enumerate() {
        store_row(mem, dst, p, std::slice::from_ref(v));
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
}
