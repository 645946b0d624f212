//! End-to-end: hand-scheduled GEMM kernels simulated with race checking and strict
//! initialisation checks, compared bit for bit with a naive sequential-k reference.

use jpu_isa::numerics::{round_to, store_f32};
use jpu_isa::{DType, Target};
use jpu_runtime::{run, RunOptions};
use jpu_testsuite::kernels::{gemm, pipeline, GemmSpec};

fn values(n: usize, seed: u64, dtype: DType) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = ((x >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0;
            round_to(dtype, if dtype.is_int() { v * 16.0 } else { v })
        })
        .collect()
}

fn bytes(dtype: DType, v: &[f32]) -> Vec<u8> {
    let s = dtype.size_bytes() as usize;
    let mut out = vec![0u8; v.len() * s];
    for (i, &x) in v.iter().enumerate() {
        store_f32(dtype, x, &mut out[i * s..]);
    }
    out
}

fn check_gemm(target: &str, spec: GemmSpec) {
    let t = Target::builtin(target).unwrap();
    let p = gemm(&t, spec).unwrap();
    let (m, k, n) = (spec.m, spec.k, spec.n);
    let a = values(m * k, 1, spec.dtype);
    let b = values(k * n, 2, spec.dtype);
    let inputs = vec![("a".to_string(), bytes(spec.dtype, &a)), ("b".to_string(), bytes(spec.dtype, &b))];
    let opts = RunOptions { strict_uninit: true, ..RunOptions::default() };
    let out = run(&p, &t, &inputs, &opts).unwrap_or_else(|f| panic!("{spec:?}: {f}"));
    let acc = spec.dtype.accumulator();
    let c = jpu_runtime::io::decode_f32(acc, &out.outputs[0].1);
    for i in 0..m {
        for j in 0..n {
            let want = if spec.dtype.is_int() {
                (0..k).map(|x| a[i * k + x] as i64 * b[x * n + j] as i64).sum::<i64>() as f32
            } else {
                (0..k).fold(0.0f32, |s, x| s + a[i * k + x] * b[x * n + j])
            };
            assert_eq!(c[i * n + j].to_bits(), want.to_bits(), "{spec:?}: c[{i}][{j}] = {} want {want}", c[i * n + j]);
        }
    }
    // The same cycles without data.
    let timing = run(&p, &t, &inputs, &RunOptions { timing_only: true, ..opts }).unwrap();
    assert_eq!(timing.report.cycles, out.report.cycles);
    assert_eq!(
        out.report.work.flops_16bit + out.report.work.flops_8bit + out.report.work.flops_f32,
        2 * (m * k * n) as u64
    );
}

#[test]
fn gemm_kernels_are_bit_exact_on_jpu_tiny() {
    // Ragged tiles in every dim (32-row PE, 128-column banks on jpu-tiny).
    for (m, k, n) in [(1, 1, 1), (7, 33, 5), (48, 70, 150), (64, 96, 256), (100, 7, 129)] {
        check_gemm("jpu-tiny", GemmSpec { m, k, n, dtype: DType::Bf16 });
    }
    for dtype in [DType::F16, DType::F8E4M3, DType::F8E5M2, DType::I8, DType::F32] {
        check_gemm("jpu-tiny", GemmSpec { m: 40, k: 50, n: 60, dtype });
    }
}

#[test]
fn gemm_kernel_on_jpu1() {
    check_gemm("jpu1", GemmSpec { m: 130, k: 200, n: 520, dtype: DType::Bf16 });
}

#[test]
fn pipeline_program_is_valid_and_deterministic() {
    let t = Target::builtin("jpu-tiny").unwrap();
    let p = pipeline(&t, 50);
    p.validate(&t).unwrap();
    let opts = RunOptions { timing_only: true, ..RunOptions::default() };
    let a = run(&p, &t, &[], &opts).unwrap().report.cycles;
    let b = run(&p, &t, &[], &opts).unwrap().report.cycles;
    assert_eq!(a, b);
    // 50 stages of a 128 + 64-cycle... at least 50 ACT instructions of 128 + 128 cycles.
    assert!(a >= 50 * 256, "{a}");
}
