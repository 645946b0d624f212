//! Matmul on the host's SIMD units: the helper the compiled engine calls for
//! every float `matmul` whose result is an f32 PSUM tile, the way a JIT calls a
//! runtime helper. The operands are read by the interpreter's own code
//! ([`crate::semantics::read_tile`]); the products accumulate straight into
//! PSUM.
//!
//! The result is bit-identical to [`crate::semantics::float_matmul`]: every
//! output element still sums its products in increasing k order from its PSUM
//! value (or +0.0), rounding after every multiply and every add, and a NaN is
//! stored as the canonical NaN; blocking only changes which elements are
//! computed together. A fused multiply-add rounds once where the interpreter
//! rounds twice, so it is used only when every product is exact in f32 (both
//! operands of at most 11 significant bits, every operand finite, the products'
//! magnitudes inside f32's normal range): rounding an exact product does
//! nothing, and the two orders agree whatever the accumulator holds. Otherwise
//! the kernel multiplies and adds separately.
//!
//! Large products split their output rows between the caller and helper
//! threads; each element is computed by one thread in the same order, so the
//! bits do not depend on the thread count.

use jpu_isa::DType;

/// Threads split the output at multiples of this many rows (the widest
/// kernel's block height), so no block is cut.
const SPLIT_ROWS: usize = 8;

/// Multiply-accumulates below this size run on the calling thread.
const PARALLEL_MACS: usize = 1 << 18;

/// The quiet NaN every NaN result is stored as.
const CANONICAL_NAN: u32 = crate::semantics::CANONICAL_NAN.to_bits();

/// The output: `m` rows of `n` little-endian f32 values, row `i` at byte
/// `i * stride` of `bytes`.
pub struct Rows<'a> {
    pub bytes: &'a mut [u8],
    pub stride: usize,
    /// Start from the values held (`accumulate`) or from +0.0.
    pub accumulate: bool,
}

/// The stationary operand as `a[k][m]`: element (k, i) at `k * k_step + i *
/// m_step` of `values` (a transposed stationary is read in place).
#[derive(Clone, Copy)]
pub struct Stationary<'a> {
    pub values: &'a [f32],
    pub k_step: usize,
    pub m_step: usize,
}

impl Stationary<'_> {
    fn at(&self, k: usize, i: usize) -> f32 {
        self.values[k * self.k_step + i * self.m_step]
    }

    /// Whether rows `..rows` of every k are inside `values`.
    fn holds(&self, k: usize, rows: usize) -> bool {
        k == 0 || rows == 0 || (k - 1) * self.k_step + (rows - 1) * self.m_step < self.values.len()
    }
}

/// `out[m][n] (+)= a[k][m] * b[k][n]`, bit-identical to the interpreter's
/// matmul; `operands` are the stationary and moving dtypes.
pub fn matmul(
    a: Stationary<'_>,
    b_kn: &[f32],
    out: Rows<'_>,
    (k, m, n): (usize, usize, usize),
    operands: (DType, DType),
    pool: Option<&rayon::ThreadPool>,
) {
    assert!(m == 0 || (m - 1) * out.stride + 4 * n <= out.bytes.len(), "matmul output outside its memory");
    assert!(a.holds(k, m) && b_kn.len() >= k * n, "matmul operands too short");
    let kernel = Kernel::detect();
    let fused = exact_products(operands) && kernel.fusable(a.values, b_kn);
    run_kernel(kernel, (a, b_kn), out, (k, m, n), fused, pool);
}

fn run_kernel(
    kernel: Kernel,
    (a, b): (Stationary<'_>, &[f32]),
    out: Rows<'_>,
    (k, m, n): (usize, usize, usize),
    fused: bool,
    pool: Option<&rayon::ThreadPool>,
) {
    let (stride, accumulate) = (out.stride, out.accumulate);
    let rows = |m0: usize, bytes: &mut [u8]| {
        let rows = Rows { bytes, stride, accumulate };
        kernel.run(a, b, rows, (k, m, n), m0, fused)
    };
    let Some(pool) = pool.filter(|_| k * m * n >= PARALLEL_MACS && m >= 2 * SPLIT_ROWS && n > 0) else {
        return rows(0, out.bytes);
    };
    // The caller takes the first share, the pool the others.
    let shares = pool.current_num_threads() + 1;
    let per = m.div_ceil(shares).next_multiple_of(SPLIT_ROWS);
    let mut parts = out.bytes.chunks_mut(per * stride).enumerate().take(m.div_ceil(per));
    let (_, first) = parts.next().expect("m > 0");
    pool.in_place_scope(|s| {
        for (i, part) in parts {
            s.spawn(move |_| rows(i * per, part));
        }
        rows(0, first);
    });
}

/// Whether every product of two values of these dtypes has at most 24
/// significant bits (11 + 11 at most for the 16- and 8-bit floats).
fn exact_products((a, b): (DType, DType)) -> bool {
    let narrow = |d: DType| matches!(d, DType::Bf16 | DType::F16 | DType::F8E4M3 | DType::F8E5M2);
    narrow(a) && narrow(b)
}

/// Whether the operands are finite and their nonzero products inside f32's
/// normal range (then every product of narrow operands is exact).
fn fusable(a: &[f32], b: &[f32], magnitudes: impl Fn(&[f32]) -> Option<(f64, f64)>) -> bool {
    let (Some((a_min, a_max)), Some((b_min, b_max))) = (magnitudes(a), magnitudes(b)) else { return false };
    let in_range = |x: f64| ((f32::MIN_POSITIVE as f64)..=(f32::MAX as f64)).contains(&x);
    a_max == 0.0 || b_max == 0.0 || (in_range(a_min * b_min) && in_range(a_max * b_max))
}

/// The smallest nonzero and the largest magnitude of `v` (zeros when all are
/// zero), or `None` when a value is not finite. On the bits, so it vectorizes:
/// a finite float's magnitude orders as its bits without the sign.
#[inline(always)]
fn magnitudes(v: &[f32]) -> Option<(f64, f64)> {
    let (mut min, mut max) = (u32::MAX, 0u32);
    for x in v {
        let m = x.to_bits() & 0x7fff_ffff;
        max = max.max(m);
        min = min.min(if m == 0 { u32::MAX } else { m });
    }
    let value = |bits: u32| f32::from_bits(bits) as f64;
    match max {
        0 => Some((0.0, 0.0)),
        m if m >= f32::INFINITY.to_bits() => None,
        m => Some((value(min), value(m))),
    }
}

/// The widest micro-kernel the host runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        Kernel::available()[0]
    }

    /// The kernels this host runs, widest first.
    fn available() -> Vec<Kernel> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                all.push(Kernel::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Kernel::Avx2);
            }
        }
        all.push(Kernel::Portable);
        all
    }

    /// [`fusable`], with the host's vectors.
    fn fusable(self, a: &[f32], b: &[f32]) -> bool {
        match self {
            // SAFETY: the host has the features (`available`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx2 => fusable(a, b, |v| unsafe { magnitudes_avx2(v) }),
            Kernel::Portable => fusable(a, b, magnitudes),
        }
    }

    /// Output rows `m0..` (the rows of `out`) of the product.
    fn run(self, a: Stationary<'_>, b: &[f32], out: Rows<'_>, shape: (usize, usize, usize), m0: usize, fused: bool) {
        match self {
            // SAFETY: the host has the features (`available`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { rows_avx512(a, b, out, shape, m0, fused) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { rows_avx2(a, b, out, shape, m0, fused) },
            // Unfused: without known hardware FMA, `mul_add` could be a software call.
            Kernel::Portable => rows::<1, 1>(a, b, out, shape, m0, |_, _, _| {}),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn magnitudes_avx2(v: &[f32]) -> Option<(f64, f64)> {
    magnitudes(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn rows_avx512(a: Stationary<'_>, b: &[f32], out: Rows<'_>, shape: (usize, usize, usize), m0: usize, fused: bool) {
    rows::<8, 32>(a, b, out, shape, m0, |out, at, col| {
        if fused {
            x86::block_avx512::<true>(a, b, out, shape, at, col)
        } else {
            x86::block_avx512::<false>(a, b, out, shape, at, col)
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2(a: Stationary<'_>, b: &[f32], out: Rows<'_>, shape: (usize, usize, usize), m0: usize, fused: bool) {
    rows::<4, 16>(a, b, out, shape, m0, |out, at, col| {
        if fused {
            x86::block_avx2::<true>(a, b, out, shape, at, col)
        } else {
            x86::block_avx2::<false>(a, b, out, shape, at, col)
        }
    })
}

/// The output rows of `out` (global rows `m0..`): `MR x NR` blocks by
/// `block(out, (global row, local row), column)`, the ragged edges (all of
/// it with `MR = NR = 1`) element by element.
#[inline(always)]
fn rows<const MR: usize, const NR: usize>(
    a: Stationary<'_>,
    b: &[f32],
    mut out: Rows<'_>,
    (k, m, n): (usize, usize, usize),
    m0: usize,
    mut block: impl FnMut(&mut Rows<'_>, (usize, usize), usize),
) {
    let count = out.bytes.len().div_ceil(out.stride).min(m - m0);
    let (full_rows, full_cols) = if MR * NR == 1 { (0, 0) } else { (count - count % MR, n - n % NR) };
    // Columns outermost: one column panel of `b` stays in L1 across the rows.
    for c in (0..full_cols).step_by(NR) {
        for r in (0..full_rows).step_by(MR) {
            block(&mut out, (m0 + r, r), c);
        }
    }
    for r in 0..count {
        let cols = if r < full_rows { full_cols..n } else { 0..n };
        for c in cols {
            let at = r * out.stride + 4 * c;
            let cell: &mut [u8; 4] = (&mut out.bytes[at..at + 4]).try_into().expect("4 bytes");
            let mut x = if out.accumulate { f32::from_le_bytes(*cell) } else { 0.0 };
            for kk in 0..k {
                x += a.at(kk, m0 + r) * b[kk * n + c];
            }
            let bits = if x.is_nan() { CANONICAL_NAN } else { x.to_bits() };
            *cell = bits.to_le_bytes();
        }
    }
}

/// The blocks with explicit vectors: the compiler's own vectorization of such
/// loops is not reliable.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Rows, Stationary, CANONICAL_NAN};

    /// Asserts that an `mr x nr` block at (`row`, `local`), `col` is inside the
    /// operands and the output, so the loops below may go unchecked.
    fn check(
        a: Stationary<'_>,
        b: &[f32],
        out: &Rows<'_>,
        (k, n): (usize, usize),
        at: (usize, usize),
        col: usize,
        (mr, nr): (usize, usize),
    ) {
        let (row, local) = at;
        assert!(a.holds(k, row + mr) && (k == 0 || (k - 1) * n + col + nr <= b.len()));
        assert!((local + mr - 1) * out.stride + 4 * (col + nr) <= out.bytes.len());
    }

    /// An 8 x 32 block: 16 accumulators of 16 lanes.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn block_avx512<const FUSED: bool>(
        a: Stationary<'_>,
        b: &[f32],
        out: &mut Rows<'_>,
        (k, _, n): (usize, usize, usize),
        (row, local): (usize, usize),
        col: usize,
    ) {
        check(a, b, out, (k, n), (row, local), col, (8, 32));
        // SAFETY: every access below is inside the slices (`check`).
        unsafe {
            let o = out.bytes.as_mut_ptr().add(local * out.stride + 4 * col);
            let cell = |i: usize, half: usize| o.add(i * out.stride + 64 * half) as *mut f32;
            let mut c = [_mm512_setzero_ps(); 16];
            if out.accumulate {
                for i in 0..8 {
                    c[2 * i] = _mm512_loadu_ps(cell(i, 0));
                    c[2 * i + 1] = _mm512_loadu_ps(cell(i, 1));
                }
            }
            for kk in 0..k {
                let bk = b.as_ptr().add(kk * n + col);
                let (b0, b1) = (_mm512_loadu_ps(bk), _mm512_loadu_ps(bk.add(16)));
                let ak = a.values.as_ptr().add(kk * a.k_step + row * a.m_step);
                for i in 0..8 {
                    let x = _mm512_set1_ps(*ak.add(i * a.m_step));
                    if FUSED {
                        c[2 * i] = _mm512_fmadd_ps(x, b0, c[2 * i]);
                        c[2 * i + 1] = _mm512_fmadd_ps(x, b1, c[2 * i + 1]);
                    } else {
                        c[2 * i] = _mm512_add_ps(c[2 * i], _mm512_mul_ps(x, b0));
                        c[2 * i + 1] = _mm512_add_ps(c[2 * i + 1], _mm512_mul_ps(x, b1));
                    }
                }
            }
            let nan = _mm512_castsi512_ps(_mm512_set1_epi32(CANONICAL_NAN as i32));
            for (j, v) in c.into_iter().enumerate() {
                let v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v), v, nan);
                _mm512_storeu_ps(cell(j / 2, j % 2), v);
            }
        }
    }

    /// A 4 x 16 block: 8 accumulators of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn block_avx2<const FUSED: bool>(
        a: Stationary<'_>,
        b: &[f32],
        out: &mut Rows<'_>,
        (k, _, n): (usize, usize, usize),
        (row, local): (usize, usize),
        col: usize,
    ) {
        check(a, b, out, (k, n), (row, local), col, (4, 16));
        // SAFETY: every access below is inside the slices (`check`).
        unsafe {
            let o = out.bytes.as_mut_ptr().add(local * out.stride + 4 * col);
            let cell = |i: usize, half: usize| o.add(i * out.stride + 32 * half) as *mut f32;
            let mut c = [_mm256_setzero_ps(); 8];
            if out.accumulate {
                for i in 0..4 {
                    c[2 * i] = _mm256_loadu_ps(cell(i, 0));
                    c[2 * i + 1] = _mm256_loadu_ps(cell(i, 1));
                }
            }
            for kk in 0..k {
                let bk = b.as_ptr().add(kk * n + col);
                let (b0, b1) = (_mm256_loadu_ps(bk), _mm256_loadu_ps(bk.add(8)));
                let ak = a.values.as_ptr().add(kk * a.k_step + row * a.m_step);
                for i in 0..4 {
                    let x = _mm256_set1_ps(*ak.add(i * a.m_step));
                    if FUSED {
                        c[2 * i] = _mm256_fmadd_ps(x, b0, c[2 * i]);
                        c[2 * i + 1] = _mm256_fmadd_ps(x, b1, c[2 * i + 1]);
                    } else {
                        c[2 * i] = _mm256_add_ps(c[2 * i], _mm256_mul_ps(x, b0));
                        c[2 * i + 1] = _mm256_add_ps(c[2 * i + 1], _mm256_mul_ps(x, b1));
                    }
                }
            }
            let nan = _mm256_castsi256_ps(_mm256_set1_epi32(CANONICAL_NAN as i32));
            for (j, v) in c.into_iter().enumerate() {
                let v = _mm256_blendv_ps(v, nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                _mm256_storeu_ps(cell(j / 2, j % 2), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantics::matmul_f32;

    fn values(seed: u64, len: usize, special: bool) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let x = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0;
                match (special, i % 97) {
                    (true, 3) => f32::NAN,
                    (true, 5) => f32::INFINITY,
                    (true, 7) => 3.0e38,
                    (true, 11) => 1.0e-39,
                    _ => f32::from_bits(x.to_bits() & 0xffff_0000),
                }
            })
            .collect()
    }

    /// Rows of `n` f32 values `stride` bytes apart.
    fn to_bytes(v: &[f32], n: usize, stride: usize) -> Vec<u8> {
        let mut out = vec![0xa5; v.len() / n * stride];
        for (r, row) in v.chunks(n).enumerate() {
            for (c, x) in row.iter().enumerate() {
                out[r * stride + 4 * c..][..4].copy_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn every_kernel_and_thread_count_matches_the_interpreter() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let shapes = [(1, (128, 128, 512)), (2, (37, 13, 70)), (3, (5, 9, 33)), (4, (128, 40, 17)), (5, (64, 24, 96))];
        for (seed, (k, m, n)) in shapes {
            for (special, accumulate) in [(false, true), (true, true), (false, false)] {
                let a = values(seed, k * m, special);
                let a_mk: Vec<f32> = (0..m * k).map(|i| a[(i % k) * m + i / k]).collect();
                let b = values(seed + 10, k * n, false);
                let start = values(seed + 20, m * n, special);
                let mut want = if accumulate { start.clone() } else { vec![0.0; m * n] };
                matmul_f32(&a, &b, &mut want, k, m, n);
                want.iter_mut().filter(|x| x.is_nan()).for_each(|x| *x = crate::semantics::CANONICAL_NAN);
                let stride = 4 * n + 12;
                let want = to_bytes(&want, n, stride);
                for kernel in Kernel::available() {
                    for fused in [false, exact_products((DType::Bf16, DType::Bf16)) && fusable(&a, &b, magnitudes)] {
                        for pool in [None, Some(&pool)] {
                            let mut got = to_bytes(&start, n, stride);
                            let len = (m - 1) * stride + 4 * n;
                            let rows = Rows { bytes: &mut got[..len], stride, accumulate };
                            // Odd shapes read the stationary transposed (`m x k`), in place.
                            let stationary = match seed % 2 {
                                0 => Stationary { values: &a, k_step: m, m_step: 1 },
                                _ => Stationary { values: &a_mk, k_step: 1, m_step: k },
                            };
                            run_kernel(kernel, (stationary, &b), rows, (k, m, n), fused, pool);
                            let context = format!("{kernel:?} {k}x{m}x{n} special={special} fused={fused}");
                            for r in 0..m {
                                assert_eq!(
                                    got[r * stride..][..4 * n],
                                    want[r * stride..][..4 * n],
                                    "{context} row {r}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn products_outside_the_normal_range_are_not_fused() {
        assert!(fusable(&[1.0, -2.0, 0.0], &[3.0, 0.5], magnitudes));
        assert!(!fusable(&[1e30], &[1e10], magnitudes));
        assert!(!fusable(&[1e-30], &[1e-10], magnitudes));
        assert!(!fusable(&[1.0], &[f32::NAN], magnitudes));
        assert!(!fusable(&[f32::INFINITY], &[1.0], magnitudes));
        assert!(fusable(&[0.0], &[1e-45], magnitudes));
        assert!(!exact_products((DType::F32, DType::Bf16)));
    }
}
