//! Every instruction's semantics against a naive reference, on hand-written
//! `.jasm` programs run by the simulator end to end (constants -> DMA -> the
//! instruction -> DMA -> outputs), including rounding edge cases for every dtype
//! conversion. The reference uses `jpu_isa::numerics` only for the final rounding
//! into a dtype, which is itself tested against ml_dtypes.

use std::fmt::Write as _;

use jpu_isa::numerics::{self, round_to};
use jpu_isa::{jasm, DType, Target};
use jpu_runtime::{run, ExecEngine, RunOptions};

/// A `[parts, elems]` operand placed in SRAM at `offset` of partitions `0..parts`.
struct Operand {
    dtype: DType,
    parts: usize,
    elems: usize,
    offset: u32,
    values: Vec<f32>,
}

fn operand(dtype: DType, parts: usize, elems: usize, offset: u32, values: Vec<f32>) -> Operand {
    assert_eq!(values.len(), parts * elems);
    Operand { dtype, parts, elems, offset, values }
}

fn bytes_of(dtype: DType, values: &[f32]) -> Vec<u8> {
    let size = dtype.size_bytes() as usize;
    let mut out = vec![0u8; values.len() * size];
    for (i, &v) in values.iter().enumerate() {
        numerics::store_f32(dtype, v, &mut out[i * size..]);
    }
    out
}

/// Runs `body` (instructions on `engine`) after loading `inputs`, then reads back
/// `outputs` (dtype, parts, elems, offset); returns the outputs as f32.
fn run_case(
    engine: &str,
    inputs: &[Operand],
    body: &[String],
    outputs: &[(DType, usize, usize, u32)],
) -> Vec<Vec<f32>> {
    let t = Target::builtin("jpu-tiny").unwrap();
    let pb = t.sram.partition_bytes;
    let mut src = String::from(".target \"jpu-tiny\"\n");
    let mut addr = 0u64;
    for (i, op) in inputs.iter().enumerate() {
        let hex: String = bytes_of(op.dtype, &op.values).iter().map(|b| format!("{b:02x}")).collect();
        writeln!(src, ".tensor in{i}: {}[{}, {}] const @ 0x{addr:x} = \"{hex}\"", op.dtype, op.parts, op.elems)
            .unwrap();
        addr = (addr + (op.values.len() * op.dtype.size_bytes() as usize) as u64).next_multiple_of(64);
    }
    for (i, (dtype, parts, elems, _)) in outputs.iter().enumerate() {
        writeln!(src, ".tensor out{i}: {dtype}[{parts}, {elems}] output @ 0x{addr:x}").unwrap();
        addr = (addr + (parts * elems * dtype.size_bytes() as usize) as u64).next_multiple_of(64);
    }
    src.push_str(".sem loaded = 0\n.sem computed = 1\n.core 0\n.stream dma0\n");
    for (i, op) in inputs.iter().enumerate() {
        let (size, elems) = (op.dtype.size_bytes(), op.elems);
        let row = elems * size as usize;
        writeln!(
            src,
            "    dma xfer=hbm[in{i}] [{} x {row}, {elems} x {size}] -> sram[0x{:x}] [{} x {pb}, {elems} x {size}] elem {size} signal loaded",
            op.parts, op.offset, op.parts
        )
        .unwrap();
    }
    for (i, (dtype, parts, elems, offset)) in outputs.iter().enumerate() {
        let size = dtype.size_bytes();
        let row = elems * size as usize;
        let wait = if i == 0 { " wait computed>=1" } else { "" };
        writeln!(src, "    dma xfer=sram[0x{offset:x}] [{parts} x {pb}, {elems} x {size}] -> hbm[out{i}] [{parts} x {row}, {elems} x {size}] elem {size}{wait}")
            .unwrap();
    }
    writeln!(src, "    halt\n.stream {engine}").unwrap();
    for (i, line) in body.iter().enumerate() {
        let wait = if i == 0 { format!(" wait loaded>={}", inputs.len()) } else { String::new() };
        let signal = if i + 1 == body.len() { " signal computed" } else { "" };
        writeln!(src, "    {line}{wait}{signal}").unwrap();
    }
    src.push_str("    halt\n");
    let program = jasm::assemble(&src).unwrap_or_else(|e| panic!("{}\n{src}", jasm::render_errors("case", &src, &e)));
    let opts = RunOptions { strict_uninit: true, ..RunOptions::default() };
    let out = run(&program, &t, &[], &opts).unwrap_or_else(|f| panic!("{f}\n{src}"));
    out.outputs
        .iter()
        .zip(outputs)
        .map(|((_, bytes), (dtype, ..))| jpu_runtime::io::decode_f32(*dtype, bytes))
        .collect()
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "{what}: element {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})", g.to_bits(), w.to_bits());
    }
}

/// Edge values for conversions: ties, subnormals, overflow, NaN, signed zeros.
fn edge_values() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        2.5,
        3.5,
        -2.5,
        1.0 + 2f32.powi(-8), // bf16 ties at 1 + 2^-8, 1 + 3 x 2^-8, f16 tie at 1 + 2^-11
        1.0 + 3.0 * 2f32.powi(-8),
        1.0 + 2f32.powi(-11),
        65504.0,
        65520.0,
        1e6,
        -1e6,
        448.0,
        464.0,
        465.0,
        57344.0,
        61440.0, // f16 tie, f16/fp8 overflow
        1e-8,
        6e-8,
        2f32.powi(-9),
        2f32.powi(-10),
        3.0 * 2f32.powi(-11),
        2f32.powi(-16),
        2f32.powi(-17),
        1e-40,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        127.5,
        -128.5,
        200.0,
        3e9,
        -3e9,
    ]
}

#[test]
fn copy_converts_to_every_dtype_with_the_documented_rounding() {
    let vals = edge_values();
    let n = vals.len();
    for dst in DType::ALL {
        let size = dst.size_bytes();
        let out = run_case(
            "ve",
            &[operand(DType::F32, 1, n, 0, vals.clone())],
            &[format!("copy dst=sram.{dst}[0:1, 0x400, [{n} x 1]], src=sram.f32[0:1, 0x0, [{n} x 1]]")],
            &[(dst, 1, n, 0x400)],
        );
        let want: Vec<f32> = vals.iter().map(|&v| round_to(dst, v)).collect();
        assert_bits_eq(&out[0], &want, &format!("copy f32 -> {dst} ({size} bytes)"));
    }
    // Widening and integer copies are exact; i32 -> i8 saturates.
    let ints: Vec<f32> = vec![0.0, 1.0, -1.0, 127.0, -128.0, 300.0, -300.0, 16_777_217.0];
    let out = run_case(
        "ve",
        &[operand(DType::I32, 1, 8, 0, ints.clone())],
        &["copy dst=sram.i8[0:1, 0x100, [8 x 1]], src=sram.i32[0:1, 0x0, [8 x 1]]".into()],
        &[(DType::I8, 1, 8, 0x100)],
    );
    assert_bits_eq(&out[0], &[0.0, 1.0, -1.0, 127.0, -128.0, 127.0, -128.0, 127.0], "copy i32 -> i8");
}

#[test]
fn tensor_tensor_every_alu_op_with_strided_and_reversed_patterns() {
    let a: Vec<f32> = (0..32).map(|i| (i as f32 - 10.5) * 0.37).collect();
    let mut b: Vec<f32> = (0..32).map(|i| (i as f32 * 1.3 - 7.0).sin() * 5.0).collect();
    b[3] = f32::NAN;
    b[5] = 0.0;
    for (op, f) in [
        ("add", (|x: f32, y: f32| x + y) as fn(f32, f32) -> f32),
        ("sub", |x, y| x - y),
        ("mul", |x, y| x * y),
        ("div", |x, y| x / y),
        ("max", |x: f32, y: f32| x.max(y)),
        ("min", |x: f32, y: f32| x.min(y)),
    ] {
        // b is read backwards: element i of the pattern is b[partition][7 - i].
        let out = run_case(
            "ve",
            &[operand(DType::F32, 4, 8, 0, a.clone()), operand(DType::Bf16, 4, 8, 0x40, b.clone())],
            &[format!(
                "tensor_tensor op={op}, dst=sram.f16[0:4, 0x80, [2 x 4, 4 x 1]], a=sram.f32[0:4, 0x0, [8 x 1]], b=sram.bf16[0:4, 0x4e, [8 x -1]]"
            )],
            &[(DType::F16, 4, 8, 0x80)],
        );
        let want: Vec<f32> = (0..32)
            .map(|i| {
                let (p, e) = (i / 8, i % 8);
                round_to(DType::F16, f(a[i], round_to(DType::Bf16, b[p * 8 + 7 - e])))
            })
            .collect();
        assert_bits_eq(&out[0], &want, &format!("tensor_tensor {op}"));
    }
}

#[test]
fn tensor_scalar_with_immediates_columns_and_reverse() {
    let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.75 - 6.0).collect();
    let col = vec![2.0f32, -0.5, 3.0];
    let out = run_case(
        "ve",
        &[operand(DType::F32, 3, 8, 0, x.clone()), operand(DType::F32, 3, 1, 0x100, col.clone())],
        &[
            "tensor_scalar op=sub, reverse=true, dst=sram.f32[0:3, 0x200, [8 x 1]], src=sram.f32[0:3, 0x0, [8 x 1]], scalar=sram.f32[*, 0x100]".into(),
            "tensor_scalar op=div, reverse=false, dst=sram.bf16[0:3, 0x300, [8 x 1]], src=sram.f32[0:3, 0x200, [8 x 1]], scalar=3.0".into(),
        ],
        &[(DType::F32, 3, 8, 0x200), (DType::Bf16, 3, 8, 0x300)],
    );
    let first: Vec<f32> = (0..24).map(|i| col[i / 8] - x[i]).collect();
    assert_bits_eq(&out[0], &first, "scalar - x (column, reverse)");
    let second: Vec<f32> = first.iter().map(|&v| round_to(DType::Bf16, v / 3.0)).collect();
    assert_bits_eq(&out[1], &second, "x / 3 (immediate)");
}

#[test]
fn reductions_fold_in_pattern_order() {
    let mut x: Vec<f32> = (0..40).map(|i| ((i * 7919) % 23) as f32 * 0.1 - 1.0).collect();
    x[17] = f32::NAN; // partition 1: max ignores a NaN operand, sum propagates it
    x[0] = 1e8;
    x[1] = 1.0; // order matters: 1e8 + 1 rounds away
    let out = run_case(
        "ve",
        &[operand(DType::F32, 4, 10, 0, x.clone())],
        &[
            "reduce op=sum, dst=sram.f32[0:4, 0x100, [1 x 1]], src=sram.f32[0:4, 0x0, [10 x 1]]".into(),
            "reduce op=max, dst=sram.f32[0:4, 0x104, [1 x 1]], src=sram.f32[0:4, 0x0, [2 x 1, 5 x 2]]".into(),
        ],
        &[(DType::F32, 4, 1, 0x100), (DType::F32, 4, 1, 0x104)],
    );
    let sums: Vec<f32> = x.chunks(10).map(|r| r[1..].iter().fold(r[0], |a, &v| a + v)).collect();
    assert_bits_eq(&out[0], &sums, "sum");
    let maxes: Vec<f32> = x
        .chunks(10)
        .map(|r| {
            let order: Vec<f32> = (0..2).flat_map(|i| (0..5).map(move |j| i + 2 * j)).map(|k| r[k]).collect();
            order[1..].iter().fold(order[0], |a, &v| a.max(v))
        })
        .collect();
    assert_bits_eq(&out[1], &maxes, "max over a 2-dim pattern");
}

#[test]
fn memset_iota_and_the_causal_select() {
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let out = run_case(
        "ve",
        &[operand(DType::F32, 8, 8, 0, x.clone())],
        &[
            "memset dst=sram.f8e4m3[0:8, 0x100, [8 x 1]], value=500.0".into(),
            "iota dst=sram.i32[0:8, 0x200, [8 x 1]], base=-3, partition_step=8, free_step=1".into(),
            "iota dst=sram.bf16[0:8, 0x300, [8 x 1]], base=255, partition_step=2, free_step=1".into(),
            // Causal mask: keep x[p][i] where p - i >= 0, else -inf.
            "select cmp=ge, dst=sram.f32[0:8, 0x400, [8 x 1]], src=sram.f32[0:8, 0x0, [8 x 1]], partition_step=1, free_step=-1, base=0, fill=-inf".into(),
        ],
        &[(DType::F8E4M3, 8, 8, 0x100), (DType::I32, 8, 8, 0x200), (DType::Bf16, 8, 8, 0x300), (DType::F32, 8, 8, 0x400)],
    );
    assert!(out[0].iter().all(|v| v.is_nan()), "500 does not fit f8e4m3: NaN");
    let iota: Vec<f32> = (0..64).map(|i| (-3 + 8 * (i / 8) + i % 8) as f32).collect();
    assert_bits_eq(&out[1], &iota, "iota i32");
    let iota_bf16: Vec<f32> = (0..64).map(|i| round_to(DType::Bf16, (255 + 2 * (i / 8) + i % 8) as f32)).collect();
    assert_bits_eq(&out[2], &iota_bf16, "iota bf16 (rounds 257 to 256)");
    let causal: Vec<f32> = (0..64).map(|i| if i / 8 >= i % 8 { x[i] } else { f32::NEG_INFINITY }).collect();
    assert_bits_eq(&out[3], &causal, "select");
}

#[test]
fn activate_every_function_with_columns_and_row_sums() {
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.0) * 0.21).collect();
    let scale = [1.0f32, 0.5, -2.0, 0.125];
    let bias = [0.0f32, 1.0, -0.25, 3.0];
    for func in jpu_isa::operand::ActFunc::ALL {
        let name = func.name();
        let out = run_case(
            "act",
            &[operand(DType::F32, 4, 8, 0, x.clone()), operand(DType::F32, 4, 2, 0x100, scale.iter().zip(&bias).flat_map(|(&s, &b)| [s, b]).collect())],
            &[format!(
                "activate func={name}, dst=sram.bf16[0:4, 0x200, [8 x 1]], src=sram.f32[0:4, 0x0, [8 x 1]], scale=sram.f32[*, 0x100], bias=sram.f32[*, 0x104], accum=sram.f32[*, 0x300]"
            )],
            &[(DType::Bf16, 4, 8, 0x200), (DType::F32, 4, 1, 0x300)],
        );
        let y: Vec<f32> = (0..32).map(|i| numerics::activation(*func, x[i] * scale[i / 8] + bias[i / 8])).collect();
        let want: Vec<f32> = y.iter().map(|&v| round_to(DType::Bf16, v)).collect();
        assert_bits_eq(&out[0], &want, &format!("activate {name}"));
        let sums: Vec<f32> = y.chunks(8).map(|r| r.iter().fold(0.0, |a, &v| a + v)).collect();
        assert_bits_eq(&out[1], &sums, &format!("activate {name} row sums"));
    }
    // Spot-check the portable math against known values.
    assert_eq!(numerics::activation(jpu_isa::operand::ActFunc::Exp, 0.0), 1.0);
    assert_eq!(numerics::activation(jpu_isa::operand::ActFunc::Relu, -0.0), 0.0);
    assert!((numerics::gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
    let ln = |x| numerics::activation(jpu_isa::operand::ActFunc::Ln, x);
    assert_eq!((ln(1.0), ln(0.0), ln(std::f32::consts::E)), (0.0, f32::NEG_INFINITY, 1.0));
    assert!(ln(-1.0).is_nan());
}

/// Naive matmul: acc[m][n] += a[k][m] * b[k][n], k ascending, f32 steps.
fn naive_matmul(a_km: &[f32], b_kn: &[f32], init: &[f32], k: usize, m: usize, n: usize) -> Vec<f32> {
    let mut out = init.to_vec();
    for mi in 0..m {
        for ni in 0..n {
            let mut acc = out[mi * n + ni];
            for ki in 0..k {
                acc += a_km[ki * m + mi] * b_kn[ki * n + ni];
            }
            out[mi * n + ni] = acc;
        }
    }
    out
}

#[test]
fn matmul_every_operand_dtype_transposed_and_accumulating() {
    let (k, m, n) = (32usize, 12usize, 20usize);
    for dtype in [DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2, DType::I8, DType::F32] {
        let scale = if dtype.is_int() { 1.0 } else { 0.37 };
        let raw_a: Vec<f32> = (0..k * m).map(|i| ((i * 37 % 29) as f32 - 14.0) * scale).collect();
        let raw_b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 31) as f32 - 15.0) * scale).collect();
        let a: Vec<f32> = raw_a.iter().map(|&v| round_to(dtype, v)).collect();
        let b: Vec<f32> = raw_b.iter().map(|&v| round_to(dtype, v)).collect();
        let product = run_matmul_and_read(dtype, k, m, n, &a, &b);
        let once = naive_matmul(&a, &b, &vec![0.0; m * n], k, m, n);
        let want = if dtype.is_int() {
            // Exact integer arithmetic (small values: no wrap).
            once.iter().map(|v| v * 2.0).collect::<Vec<f32>>()
        } else {
            naive_matmul(&a, &b, &once, k, m, n)
        };
        assert_bits_eq(&product, &want, &format!("matmul {dtype}"));
    }
}

/// Runs two matmuls (plain, then transposed-stationary accumulate) and copies
/// PSUM out through the VE; returns the [m, n] result.
fn run_matmul_and_read(dtype: DType, k: usize, m: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let a_t: Vec<f32> = (0..m * k).map(|i| a[(i % k) * m + i / k]).collect();
    let acc = dtype.accumulator();
    let t = Target::builtin("jpu-tiny").unwrap();
    let pb = t.sram.partition_bytes;
    let hex = |d: DType, v: &[f32]| -> String { bytes_of(d, v).iter().map(|b| format!("{b:02x}")).collect() };
    let s = dtype.size_bytes() as usize;
    let src = format!(
        ".target \"jpu-tiny\"
.tensor a: {dtype}[{k}, {m}] const @ 0x0 = \"{}\"
.tensor at: {dtype}[{m}, {k}] const @ 0x4000 = \"{}\"
.tensor b: {dtype}[{k}, {n}] const @ 0x8000 = \"{}\"
.tensor c: {acc}[{m}, {n}] output @ 0xc000
.sem loaded = 0
.sem multiplied = 1
.sem copied = 2
.core 0
.stream dma0
    dma xfer=hbm[a] [{k} x {ra}, {m} x {s}] -> sram[0x0] [{k} x {pb}, {m} x {s}] elem {s} signal loaded
    dma xfer=hbm[at] [{m} x {rat}, {k} x {s}] -> sram[0x200] [{m} x {pb}, {k} x {s}] elem {s} signal loaded
    dma xfer=hbm[b] [{k} x {rb}, {n} x {s}] -> sram[0x400] [{k} x {pb}, {n} x {s}] elem {s} signal loaded
    dma xfer=sram[0x800] [{m} x {pb}, {n} x 4] -> hbm[c] [{m} x {rc}, {n} x 4] elem 4 wait copied>=1
    halt
.stream pe
    matmul dst=psum.{acc}[0:{m}, 0x0, [{n} x 1]], stationary=sram.{dtype}[0:{k}, 0x0, [{m} x 1]], moving=sram.{dtype}[0:{k}, 0x400, [{n} x 1]], accumulate=false, transposed=false wait loaded>=3
    matmul dst=psum.{acc}[0:{m}, 0x0, [{n} x 1]], stationary=sram.{dtype}[0:{m}, 0x200, [{k} x 1]], moving=sram.{dtype}[0:{k}, 0x400, [{n} x 1]], accumulate=true, transposed=true signal multiplied
    halt
.stream ve
    copy dst=sram.{acc}[0:{m}, 0x800, [{n} x 1]], src=psum.{acc}[0:{m}, 0x0, [{n} x 1]] wait multiplied>=1 signal copied
    halt
",
        hex(dtype, a),
        hex(dtype, &a_t),
        hex(dtype, b),
        ra = m * s,
        rat = k * s,
        rb = n * s,
        rc = n * 4,
    );
    let program = jasm::assemble(&src).unwrap_or_else(|e| panic!("{}", jasm::render_errors("matmul", &src, &e)));
    let opts = RunOptions { strict_uninit: true, ..RunOptions::default() };
    let out = run(&program, &t, &[], &opts).unwrap_or_else(|f| panic!("{f}"));
    jpu_runtime::io::decode_f32(acc, &out.outputs[0].1)
}

#[test]
fn transpose_is_exact() {
    let (p, f) = (12usize, 20usize);
    let x: Vec<f32> = (0..p * f).map(|i| round_to(DType::Bf16, (i as f32).sqrt() - 3.3)).collect();
    let t = Target::builtin("jpu-tiny").unwrap();
    let pb = t.sram.partition_bytes;
    let hex: String = bytes_of(DType::Bf16, &x).iter().map(|b| format!("{b:02x}")).collect();
    let src = format!(
        ".target \"jpu-tiny\"
.tensor x: bf16[{p}, {f}] const @ 0x0 = \"{hex}\"
.tensor y: f32[{f}, {p}] output @ 0x1000
.core 0
.stream dma0
    dma xfer=hbm[x] [{p} x {rx}, {f} x 2] -> sram[0x0] [{p} x {pb}, {f} x 2] elem 2 signal #0
    dma xfer=sram[0x100] [{f} x {pb}, {p} x 4] -> hbm[y] [{f} x {ry}, {p} x 4] elem 4 wait #2>=1
    halt
.stream pe
    transpose dst=psum.f32[0:{f}, 0x0, [{p} x 1]], src=sram.bf16[0:{p}, 0x0, [{f} x 1]] wait #0>=1 signal #1
    halt
.stream ve
    copy dst=sram.f32[0:{f}, 0x100, [{p} x 1]], src=psum.f32[0:{f}, 0x0, [{p} x 1]] wait #1>=1 signal #2
    halt
",
        rx = f * 2,
        ry = p * 4
    );
    let program = jasm::assemble(&src).unwrap_or_else(|e| panic!("{}", jasm::render_errors("t", &src, &e)));
    let out = run(&program, &t, &[], &RunOptions::default()).unwrap();
    let y = jpu_runtime::io::decode_f32(DType::F32, &out.outputs[0].1);
    let want: Vec<f32> = (0..f * p).map(|i| x[(i % p) * f + i / p]).collect();
    assert_bits_eq(&y, &want, "transpose");
}

#[test]
fn dma_moves_bytes_through_strided_reversed_and_hbm_to_hbm_patterns() {
    let src = ".target \"jpu-tiny\"
.tensor x: i8[2, 6] const @ 0x0 = \"000102030405060708090a0b\"
.tensor rev: i8[12] output @ 0x100
.tensor cols: i8[6, 2] output @ 0x200
.core 0
.stream dma0
    dma xfer=hbm[x + 0xb] [12 x -1] -> hbm[rev] [12 x 1] elem 1
    dma xfer=hbm[x] [6 x 1, 2 x 6] -> sram[0x10] [2 x 16384, 6 x 1] elem 1 signal #0
    halt
.stream dma1
    dma xfer=sram[0x10] [2 x 16384, 6 x 1] -> hbm[cols] [6 x 1, 2 x 6] elem 1 wait #0>=1
    halt
";
    let t = Target::builtin("jpu-tiny").unwrap();
    let program = jasm::assemble(src).unwrap_or_else(|e| panic!("{}", jasm::render_errors("dma", src, &e)));
    let out = run(&program, &t, &[], &RunOptions { strict_uninit: true, ..RunOptions::default() }).unwrap();
    assert_eq!(out.outputs[0].1, (0..12u8).rev().collect::<Vec<_>>());
    // Read column-major into SRAM (partition 0 holds 0,6,1,7,2,8), then written back
    // column-major: the round trip restores the original order.
    assert_eq!(out.outputs[1].1, (0..12u8).collect::<Vec<_>>());
}

/// Core 0 multicasts a strided SRAM tile to itself and core 1 (the source
/// range overlaps core 0's destination: every byte is read first), core 1
/// forwards what it got back to core 0; each core writes its copy to HBM once
/// the remote signals say the bytes arrived.
#[test]
fn core_to_core_dma_multicasts_and_orders_by_remote_signals() {
    let src = ".target \"jpu-tiny\"
.tensor x: i8[2, 8] const @ 0x0 = \"000102030405060708090a0b0c0d0e0f\"
.tensor from0: i8[2, 8] output @ 0x100
.tensor from1: i8[2, 8] output @ 0x200
.tensor back: i8[2, 8] output @ 0x300
.sem loaded = 0
.sem arrived = 1
.sem returned = 2
.core 0
.stream dma0
    dma xfer=hbm[x] [2 x 8, 8 x 1] -> sram[0x10] [2 x 16384, 8 x 1] elem 1 signal loaded
    dma xfer=sram[0x10] [2 x 16384, 8 x 1] -> cores[0, 1].sram[0x14] [2 x 16384, 8 x -1] elem 1 wait loaded>=1 signal core1.arrived
    halt
.stream dma1
    dma xfer=sram[0x14] [2 x 16384, 8 x -1] -> hbm[from0] [16 x 1] elem 1 wait returned>=1
    dma xfer=sram[0x40] [2 x 16384, 8 x 1] -> hbm[back] [16 x 1] elem 1 wait returned>=1
    halt
.core 1
.stream dma0
    dma xfer=sram[0x14] [2 x 16384, 8 x -1] -> hbm[from1] [16 x 1] elem 1 wait arrived>=1
    dma xfer=sram[0xd] [2 x 16384, 8 x 1] -> core0.sram[0x40] [2 x 16384, 8 x 1] elem 1 wait arrived>=1 signal core0.returned
    halt
";
    let t = Target::builtin("jpu-tiny").unwrap();
    let program = jasm::assemble(src).unwrap_or_else(|e| panic!("{}", jasm::render_errors("fabric", src, &e)));
    for engine in [ExecEngine::Interp, ExecEngine::Jit] {
        let opts = RunOptions { strict_uninit: true, engine, ..RunOptions::default() };
        let out = run(&program, &t, &[], &opts).unwrap_or_else(|f| panic!("{f}"));
        let x: Vec<u8> = (0..16).collect();
        assert_eq!(out.outputs[0].1, x, "core 0's own copy");
        assert_eq!(out.outputs[1].1, x, "core 1's copy");
        // Core 1 sent its partitions' bytes 0xd..0x15 (the copy reversed, at 0xd..0x14).
        let want: Vec<u8> = (0..2u8).flat_map(|p| (0..8).rev().map(move |i| 8 * p + i)).collect();
        assert_eq!(out.outputs[2].1, want, "returned to core 0");
        let r = &out.report;
        assert_eq!(r.work.fabric_bytes, 32, "the multicast is counted once");
        assert_eq!((r.cores[0].fabric_bytes, r.cores[1].fabric_bytes), (16, 16));
        assert_eq!((r.cores[0].dma_bytes, r.cores[1].dma_bytes), (48, 16));
    }
}

#[test]
fn comparisons_give_one_or_zero_and_nan_compares_unequal() {
    let a: Vec<f32> = vec![1.0, 2.0, -0.0, f32::NAN, f32::INFINITY, -3.5, 7.0, 0.0];
    let b: Vec<f32> = vec![2.0, 2.0, 0.0, 1.0, f32::INFINITY, -4.0, f32::NAN, 0.0];
    for (op, f) in [
        ("is_lt", (|x: f32, y: f32| x < y) as fn(f32, f32) -> bool),
        ("is_le", |x, y| x <= y),
        ("is_gt", |x, y| x > y),
        ("is_ge", |x, y| x >= y),
        ("is_eq", |x, y| x == y),
        ("is_ne", |x, y| x != y),
    ] {
        // Floats in, booleans out as i8 (how the compiler stores i1).
        let out = run_case(
            "ve",
            &[operand(DType::F32, 1, 8, 0, a.clone()), operand(DType::F32, 1, 8, 0x40, b.clone())],
            &[format!(
                "tensor_tensor op={op}, dst=sram.i8[0:1, 0x80, [8 x 1]], a=sram.f32[0:1, 0x0, [8 x 1]], b=sram.f32[0:1, 0x40, [8 x 1]]"
            )],
            &[(DType::I8, 1, 8, 0x80)],
        );
        let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| f(x, y) as u8 as f32).collect();
        assert_bits_eq(&out[0], &want, &format!("tensor_tensor {op}"));
    }
}

#[test]
fn integer_tiles_compute_exactly_wrap_and_saturate() {
    let big = 16_777_216.0f32; // 2^24: 2^24 + 1 has no f32
    let a = vec![big, 1073741824.0, -7.0, 7.0, 100.0, -128.0, 5.0, -2147483648.0];
    let b = vec![1.0, 1073741824.0, 2.0, -2.0, 100.0, 0.0, 0.0, -1.0];
    let tt = |op: &str, dst: &str, at: u32| {
        format!("tensor_tensor op={op}, dst=sram.{dst}[0:1, 0x{at:x}, [8 x 1]], a=sram.i32[0:1, 0x0, [8 x 1]], b=sram.i32[0:1, 0x40, [8 x 1]]")
    };
    let out = run_case(
        "ve",
        &[operand(DType::I32, 1, 8, 0, a.clone()), operand(DType::I32, 1, 8, 0x40, b.clone())],
        &[
            tt("add", "i32", 0x100),
            // (2^24 + 1) - 2^24 is 1 only when the sum was exact.
            "tensor_tensor op=sub, dst=sram.i32[0:1, 0x200, [8 x 1]], a=sram.i32[0:1, 0x100, [8 x 1]], b=sram.i32[0:1, 0x0, [8 x 1]]".into(),
            tt("div", "i32", 0x300),
            tt("mul", "i8", 0x400),
            "tensor_scalar op=is_gt, reverse=false, dst=sram.i8[0:1, 0x480, [8 x 1]], src=sram.i32[0:1, 0x100, [8 x 1]], scalar=16777216.0".into(),
        ],
        &[(DType::I32, 1, 8, 0x100), (DType::I32, 1, 8, 0x200), (DType::I32, 1, 8, 0x300), (DType::I8, 1, 8, 0x400), (DType::I8, 1, 8, 0x480)],
    );
    let ints = |v: &[f32]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
    let (ai, bi) = (ints(&a), ints(&b));
    let sums: Vec<i32> = ai.iter().zip(&bi).map(|(x, y)| x.wrapping_add(*y)).collect();
    assert_eq!(sums[1], i32::MIN, "2^30 + 2^30 wraps");
    assert_bits_eq(&out[0], &sums.iter().map(|&x| x as f32).collect::<Vec<_>>(), "add (wrapping)");
    let diffs: Vec<f32> = sums.iter().zip(&ai).map(|(s, x)| s.wrapping_sub(*x) as f32).collect();
    assert_eq!(diffs[0], 1.0);
    assert_bits_eq(&out[1], &diffs, "sub of an exact sum");
    // Truncating division; x / 0 is 0; i32::MIN / -1 wraps.
    assert_bits_eq(&out[2], &[16777216.0, 1.0, -3.0, -3.0, 1.0, 0.0, 0.0, -2147483648.0], "div");
    let prods: Vec<f32> = ai.iter().zip(&bi).map(|(x, y)| x.wrapping_mul(*y).clamp(-128, 127) as f32).collect();
    assert_bits_eq(&out[3], &prods, "mul into i8 saturates");
    let gt: Vec<f32> = sums.iter().map(|&s| (s > 16_777_216) as u8 as f32).collect();
    assert_eq!(gt[0], 1.0);
    assert_bits_eq(&out[4], &gt, "is_gt against an immediate, exactly");
}

#[test]
fn integer_reductions_are_exact() {
    // 2^24 + 1 + 1: an f32 fold would lose both ones.
    let x = vec![16_777_216.0f32, 1.0, 1.0, -5.0, 100.0, -100.0, 7.0, 2.0];
    let out = run_case(
        "ve",
        &[operand(DType::I32, 2, 4, 0, x.clone())],
        &[
            "reduce op=sum, dst=sram.i32[0:2, 0x100, [1 x 1]], src=sram.i32[0:2, 0x0, [4 x 1]]".into(),
            "reduce op=max, dst=sram.i8[0:2, 0x104, [1 x 1]], src=sram.i32[0:2, 0x0, [4 x 1]]".into(),
        ],
        &[(DType::I32, 2, 1, 0x100), (DType::I8, 2, 1, 0x104)],
    );
    let sums: Vec<i32> = x.chunks(4).map(|r| r.iter().map(|&v| v as i32).sum()).collect();
    assert_eq!(sums[0], 16_777_213);
    assert_bits_eq(&out[0], &sums.iter().map(|&v| v as f32).collect::<Vec<_>>(), "integer sum");
    assert_bits_eq(&out[1], &[127.0, 100.0], "integer max saturated into i8");
}

#[test]
fn copy_predicated_keeps_or_replaces_each_element() {
    let dst: Vec<f32> = (0..8).map(|i| 100.0 + i as f32).collect();
    let src: Vec<f32> = (0..8).map(|i| -(i as f32) - 0.25).collect();
    let cond: Vec<f32> = vec![1.0, 0.0, -0.0, f32::NAN, 2.0, 0.0, 1.0, 0.0];
    let out = run_case(
        "ve",
        &[
            operand(DType::I32, 1, 8, 0, dst.clone()),
            operand(DType::F32, 1, 8, 0x40, src.clone()),
            operand(DType::F32, 1, 8, 0x80, cond.clone()),
            operand(DType::Bf16, 1, 8, 0xc0, dst.clone()),
        ],
        &[
            "copy_predicated dst=sram.i32[0:1, 0x0, [8 x 1]], src=sram.f32[0:1, 0x40, [8 x 1]], cond=sram.f32[0:1, 0x80, [8 x 1]], negate=false".into(),
            "copy_predicated dst=sram.bf16[0:1, 0xc0, [8 x 1]], src=sram.f32[0:1, 0x40, [8 x 1]], cond=sram.f32[0:1, 0x80, [8 x 1]], negate=true".into(),
        ],
        &[(DType::I32, 1, 8, 0), (DType::Bf16, 1, 8, 0xc0)],
    );
    // NaN and -0.0: NaN counts as nonzero, -0.0 as zero.
    let holds = |c: f32| c != 0.0;
    let want: Vec<f32> = (0..8).map(|i| if holds(cond[i]) { src[i].round_ties_even() + 0.0 } else { dst[i] }).collect();
    assert_bits_eq(&out[0], &want, "copy_predicated into i32");
    let want: Vec<f32> = (0..8).map(|i| round_to(DType::Bf16, if holds(cond[i]) { dst[i] } else { src[i] })).collect();
    assert_bits_eq(&out[1], &want, "copy_predicated with negate into bf16");
}

#[test]
fn integers_convert_to_floats_with_one_rounding() {
    // 2^25 + 2^17 + 1 rounds to 2^25 + 2^17 in f32, a bf16 tie that rounds to even
    // (2^25); rounded once it is above the tie: 2^25 + 2^18.
    let v: i32 = (1 << 25) + (1 << 17) + 1;
    let hex: String = v.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let src = format!(
        ".target \"jpu-tiny\"\n.tensor x: i32[1, 1] const @ 0x0 = \"{hex}\"\n.tensor y: bf16[1, 1] output @ 0x40\n.sem s = 0\n.core 0\n.stream dma0\n    dma xfer=hbm[x] [1 x 4] -> sram[0x0] [1 x 4] elem 4 signal s\n    dma xfer=sram[0x10] [1 x 2] -> hbm[y] [1 x 2] elem 2 wait s>=2\n    halt\n.stream ve\n    copy dst=sram.bf16[0:1, 0x10, [1 x 1]], src=sram.i32[0:1, 0x0, [1 x 1]] wait s>=1 signal s\n    halt\n"
    );
    let program = jasm::assemble(&src).unwrap_or_else(|e| panic!("{}", jasm::render_errors("case", &src, &e)));
    let t = Target::builtin("jpu-tiny").unwrap();
    let out = run(&program, &t, &[], &RunOptions::default()).unwrap();
    let got = jpu_runtime::io::decode_f32(DType::Bf16, &out.outputs[0].1)[0];
    assert_eq!(got, ((1 << 25) + (1 << 18)) as f32);
}

#[test]
fn fill_predicated_writes_immediates_and_columns_where_the_condition_holds() {
    let dst: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
    let cond: Vec<f32> = vec![1.0, 0.0, 0.0, 1.0, f32::NAN, -0.0, 3.0, 0.0];
    let col = vec![-7.0f32, 9.0];
    let out = run_case(
        "ve",
        &[
            operand(DType::F32, 2, 4, 0, dst.clone()),
            operand(DType::I8, 2, 4, 0x40, cond.clone().iter().map(|&c| if c.is_nan() { 1.0 } else { c }).collect()),
            operand(DType::F32, 2, 1, 0x80, col.clone()),
            operand(DType::I32, 2, 4, 0xc0, dst.iter().map(|x| x.floor()).collect()),
            operand(DType::F32, 2, 4, 0x100, cond.clone()),
        ],
        &[
            "fill_predicated dst=sram.f32[0:2, 0x0, [4 x 1]], cond=sram.i8[0:2, 0x40, [4 x 1]], value=-inf, negate=false".into(),
            "fill_predicated dst=sram.i32[0:2, 0xc0, [4 x 1]], cond=sram.f32[0:2, 0x100, [4 x 1]], value=sram.f32[*, 0x80], negate=true".into(),
        ],
        &[(DType::F32, 2, 4, 0), (DType::I32, 2, 4, 0xc0)],
    );
    let holds = |c: f32| c != 0.0;
    let want: Vec<f32> = (0..8).map(|i| if holds(cond[i]) { f32::NEG_INFINITY } else { dst[i] }).collect();
    assert_bits_eq(&out[0], &want, "fill_predicated immediate");
    let want: Vec<f32> = (0..8).map(|i| if !holds(cond[i]) { col[i / 4] } else { dst[i].floor() }).collect();
    assert_bits_eq(&out[1], &want, "fill_predicated column, negated, into i32");
}

#[test]
fn dma_gather_copies_the_indexed_rows_into_partitions() {
    // A 5 x 3 f32 table in rows of stride 16 bytes (one padding element), and
    // indices 4, 0, 2, 2 (repeats allowed).
    let table: Vec<f32> = (0..20).map(|i| i as f32 * 1.5 - 3.0).collect();
    let ids = [4i32, 0, 2, 2];
    let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let src = format!(
        ".target \"jpu-tiny\"
.tensor table: f32[5, 4] const @ 0x0 = \"{}\"
.tensor ids: i32[4] const @ 0x80 = \"{}\"
.tensor y: f32[4, 3] output @ 0xc0
.sem s = 0
.core 0
.stream dma0
    dma xfer=hbm[ids] [4 x 4] -> sram[0x0] [4 x 16384] elem 4 signal s
    dma_gather dst=sram.f32[0:4, 0x20, [3 x 1]], idx=sram.i32[*, 0x0], table=hbm[table] [5 x 16] wait s>=1 signal s
    dma xfer=sram[0x20] [4 x 16384, 3 x 4] -> hbm[y] [12 x 4] elem 4 wait s>=2
    halt
",
        hex(table.iter().flat_map(|v| v.to_le_bytes()).collect()),
        hex(ids.iter().flat_map(|v| v.to_le_bytes()).collect())
    );
    let program = jasm::assemble(&src).unwrap_or_else(|e| panic!("{}", jasm::render_errors("case", &src, &e)));
    let t = Target::builtin("jpu-tiny").unwrap();
    let opts = RunOptions { strict_uninit: true, ..RunOptions::default() };
    let out = run(&program, &t, &[], &opts).unwrap_or_else(|f| panic!("{f}"));
    let got = jpu_runtime::io::decode_f32(DType::F32, &out.outputs[0].1);
    let want: Vec<f32> =
        ids.iter().flat_map(|&r| (0..3).map(|c| table[r as usize * 4 + c]).collect::<Vec<_>>()).collect();
    assert_bits_eq(&got, &want, "gathered rows");
}
