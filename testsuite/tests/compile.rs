//! The compiler end to end: a sweep of GEMM shapes compiled for jpu-tiny and jpu1,
//! simulated on seeded random inputs with race checking and strict
//! initialisation on, and compared with the reference evaluator (`jalc verify`).

use jalc::front::tir;
use jpu_isa::Target;
use jpu_testsuite::{gemm, scheduled};

/// `a: A[dims] x b: B[dims] -> (matmul [: acc]) [-> cast]`; dims are written as
/// stored (a `[.., K, M]` with `ta`, b `[.., N, K]` with `tb`).
struct Case {
    ta: bool,
    tb: bool,
    target: &'static str,
    a: &'static str,
    b: &'static str,
    dtype: &'static str,
    acc: Option<&'static str>,
    cast: Option<&'static str>,
}

fn source(c: &Case) -> String {
    let parse = |s: &str| s.split('x').map(|d| d.parse::<u64>().unwrap()).collect::<Vec<_>>();
    let (a, b) = (parse(c.a), parse(c.b));
    let m = if c.ta { a[a.len() - 1] } else { a[a.len() - 2] };
    let n = if c.tb { b[b.len() - 2] } else { b[b.len() - 1] };
    let (ra, rb) = (a.len(), b.len());
    let batch_len = (ra - 2).max(rb - 2);
    let mut batch = vec![1u64; batch_len];
    for (i, d) in a[..ra - 2].iter().rev().enumerate() {
        batch[batch_len - 1 - i] = batch[batch_len - 1 - i].max(*d);
    }
    for (i, d) in b[..rb - 2].iter().rev().enumerate() {
        batch[batch_len - 1 - i] = batch[batch_len - 1 - i].max(*d);
    }
    let mut out = batch.clone();
    out.extend([m, n]);
    let ty = |d: &str, s: &[u64]| format!("{d}[{}]", s.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "));
    let mm_ty = ty(c.acc.unwrap_or(c.dtype), &out);
    let flags =
        if c.ta || c.tb { format!(" {{transpose_a = {}, transpose_b = {}}}", c.ta, c.tb) } else { String::new() };
    let ann = flags + &c.acc.map_or(String::new(), |_| format!(" : {mm_ty}"));
    let (body, ret) = match c.cast {
        Some(to) => (format!("  %c = matmul(%a, %b){ann}\n  %y = cast(%c) {{to = {to}}}\n  return %y"), ty(to, &out)),
        None => (format!("  %c = matmul(%a, %b){ann}\n  return %c"), mm_ty.clone()),
    };
    format!("func @gemm(%a: {}, %b: {}) -> {ret} {{\n{body}\n}}\n", ty(c.dtype, &a), ty(c.dtype, &b))
}

fn case(target: &'static str, a: &'static str, b: &'static str, dtype: &'static str) -> Case {
    Case { ta: false, tb: false, target, a, b, dtype, acc: Some(if dtype == "i8" { "i32" } else { "f32" }), cast: None }
}

fn transposed(target: &'static str, a: &'static str, b: &'static str, dtype: &'static str, ta: bool, tb: bool) -> Case {
    Case { ta, tb, ..case(target, a, b, dtype) }
}

#[test]
fn gemm_sweep_verifies_on_both_targets() {
    let mut cases = vec![
        case("jpu-tiny", "1x1", "1x1", "bf16"),
        case("jpu-tiny", "7x7", "7x7", "bf16"),
        case("jpu-tiny", "1x100", "100x1", "bf16"),
        case("jpu-tiny", "100x1", "1x100", "bf16"),
        case("jpu-tiny", "33x65", "65x129", "bf16"),
        case("jpu-tiny", "64x64", "64x64", "bf16"),
        case("jpu-tiny", "129x7", "7x100", "bf16"),
        case("jpu-tiny", "1000x7", "7x16", "bf16"),
        case("jpu-tiny", "16x1000", "1000x16", "bf16"),
        case("jpu-tiny", "3x17x9", "3x9x11", "bf16"),
        case("jpu-tiny", "2x1x8x16", "3x16x8", "bf16"),
        case("jpu-tiny", "5x8x16", "16x8", "bf16"),
        case("jpu-tiny", "40x50", "50x60", "f16"),
        case("jpu-tiny", "40x50", "50x60", "f8e4m3"),
        case("jpu-tiny", "40x50", "50x60", "f8e5m2"),
        case("jpu-tiny", "40x50", "50x60", "i8"),
        case("jpu-tiny", "40x50", "50x60", "f32"),
        Case { ta: false, tb: false, target: "jpu-tiny", a: "40x50", b: "50x60", dtype: "bf16", acc: None, cast: None },
        Case {
            ta: false,
            tb: false,
            target: "jpu-tiny",
            a: "40x50",
            b: "50x60",
            dtype: "f8e4m3",
            acc: Some("f32"),
            cast: Some("bf16"),
        },
        Case {
            ta: false,
            tb: false,
            target: "jpu-tiny",
            a: "2x33x40",
            b: "2x40x70",
            dtype: "bf16",
            acc: Some("f32"),
            cast: Some("bf16"),
        },
        transposed("jpu-tiny", "50x40", "50x60", "bf16", true, false),
        transposed("jpu-tiny", "40x50", "60x50", "bf16", false, true),
        transposed("jpu-tiny", "50x40", "130x50", "bf16", true, true),
        transposed("jpu-tiny", "3x20x7", "3x33x20", "i8", true, true),
        transposed("jpu-tiny", "40x50", "60x50", "f8e5m2", false, true),
        case("jpu1", "130x200", "200x520", "bf16"),
        case("jpu1", "1x1", "1x1", "bf16"),
        case("jpu1", "257x129", "129x513", "bf16"),
        case("jpu1", "64x512", "512x512", "bf16"),
        case("jpu1", "4x64x128", "4x128x96", "bf16"),
        case("jpu1", "7x1000", "1000x7", "bf16"),
        case("jpu1", "100x100", "100x100", "i8"),
        case("jpu1", "128x256", "256x512", "f8e4m3"),
        case("jpu1", "300x70", "70x40", "f16"),
        case("jpu1", "65x130", "130x33", "f32"),
        case("jpu1", "1x32x64", "3x64x32", "bf16"),
        case("jpu1", "1000x32", "32x100", "bf16"),
        Case {
            ta: false,
            tb: false,
            target: "jpu1",
            a: "100x1000",
            b: "1000x100",
            dtype: "bf16",
            acc: Some("f32"),
            cast: Some("bf16"),
        },
        transposed("jpu1", "200x130", "520x200", "bf16", true, true),
        transposed("jpu1", "64x256", "300x256", "f32", false, true),
    ];
    assert!(cases.len() >= 30);
    for c in cases.drain(..) {
        let src = source(&c);
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render("case", &src, &d)));
        let t = Target::builtin(c.target).unwrap();
        for seed in [0, 1] {
            let v = jalc::verify::verify(&f, &t, seed).unwrap_or_else(|e| panic!("{}: {e:?}\n{src}", c.target));
            assert!(v.passed, "{} seed {seed}: {:?}\n{src}", c.target, v.first_mismatch);
            assert!(v.report.roofline_fraction > 0.0);
        }
        // Every core of the target, and 4 cores of jpu-tiny's 4-core variant.
        let wide = if c.target == "jpu-tiny" {
            vec![(t.clone(), 2), (jpu_testsuite::jpu_tiny_4(), 4)]
        } else {
            vec![(t.clone(), 8)]
        };
        for (t, cores) in wide {
            let opts = jalc::driver::Options { cores, ..jalc::driver::Options::o2() };
            let v =
                jalc::verify::verify_with(&f, &t, 0, &opts).unwrap_or_else(|e| panic!("{cores} cores: {e:?}\n{src}"));
            assert!(v.passed, "{} on {cores} cores: {:?}\n{src}", t.name, v.first_mismatch);
        }
    }
}

#[test]
fn illegal_schedules_say_which_limit_they_break() {
    let src = "func @g(%a: bf16[64, 64], %b: bf16[64, 64]) -> f32[64, 64] {\n  %c = matmul(%a, %b) : f32[64, 64]\n  return %c\n}\n";
    let f = tir::parse_and_check(src).unwrap();
    let t = Target::builtin("jpu-tiny").unwrap();
    let bad = |text: &str| {
        let e = jalc::driver::compile(&f, &t, &scheduled(&format!("[%c]\n{text}"), 2)).err().unwrap();
        assert!(matches!(e, jalc::error::CompileError::InvalidSchedule { .. }), "{e:?}");
        e.to_string()
    };
    assert!(bad("tile_m = 33").contains("tile_m = 33 must be in 1..=32 (the PE's columns)"));
    assert!(bad("tile_k = 0").contains("tile_k = 0 must be in 1..=32"));
    assert!(bad("tile_n = 200").contains("tile_n = 200 must be in 1..=128"));
    assert!(bad("psum_banks = 5").contains("psum_banks = 5 must be in 1..=4"));
    assert!(bad("a_buffers = 200").contains("bytes per SRAM partition"));
    assert!(bad("a_queue = 1").contains("a_queue = 1 must be in 0..=0 (queue 1 carries stores)"));
    assert!(bad("b_queue = fast").contains("`auto` or a queue number"));
    assert!(bad("tile_q = 3").contains("unknown field `tile_q`"));
    // A legal override is honoured and still verifies.
    let opts = scheduled("[%c]\ntile_n = 48  # narrower panels\npsum_banks = 1\nout_buffers = 1", 2);
    let c = jalc::driver::compile(&f, &t, &opts).unwrap();
    assert_eq!(gemm(&c.kernels).unwrap().s.tile_n, 48);
    let v = jalc::verify::verify_with(&f, &t, 3, &opts).unwrap();
    assert!(v.passed);
}

/// Fused epilogues: every elementwise step runs on the output tile between PSUM
/// evacuation and the store, with the IR's rounding after each step, so the
/// simulated result matches the evaluator bit for bit.
#[test]
fn epilogue_sweep_verifies_bit_exactly_on_both_targets() {
    // (target, schedule override, source)
    let cases: &[(&str, Option<&str>, &str)] = &[
        (
            "jpu-tiny",
            None,
            "func @mlp(%x: bf16[100, 129], %w: bf16[129, 300], %bias: bf16[300], %res: bf16[100, 300]) -> bf16[100, 300] {
               %y = matmul(%x, %w) : bf16[100, 300]
               %z = add(%y, %bias)
               %g = gelu(%z) {approx = \"tanh\"}
               %s = mul(%g, 0.5)
               %o = add(%res, %s)
               return %o
             }",
        ),
        (
            // Reversed operands, a [1, N] row, batched residual, a scalar max and a cast;
            // one output copy makes the next residual load wait for the store.
            "jpu-tiny",
            Some("out_buffers = 1"),
            "func @f(%x: f16[3, 70, 40], %w: f16[40, 100], %b: f16[1, 100], %r: f16[3, 70, 100]) -> bf16[3, 70, 100] {
               %y = matmul(%x, %w) : f16[3, 70, 100]
               %z = sub(%b, %y)
               %a = relu(%z)
               %q = div(%r, %a)
               %m = max(%q, -1.5)
               %c = cast(%m) {to = bf16}
               return %c
             }",
        ),
        (
            "jpu-tiny",
            None,
            "func @f(%x: f8e4m3[33, 65], %w: f8e4m3[65, 40]) -> f32[33, 40] {
               %y = matmul(%x, %w) : f32[33, 40]
               %s = sigmoid(%y)
               %t = tanh(%s)
               %e = exp(%t)
               %r = erf(%e)
               %q = silu(%r)
               %n = sub(1.0, %q)
               return %n
             }",
        ),
        (
            "jpu-tiny",
            None,
            "func @f(%x: bf16[50, 40], %w: bf16[60, 40], %b: f32[60]) -> f32[50, 60] {
               %y = matmul(%x, %w) {transpose_b = true} : f32[50, 60]
               %z = add(%y, %b)
               %m = min(%z, %b)
               %s = mul(%m, %m)
               return %s
             }",
        ),
        (
            // Row scales: one value per row ([.., M, 1]) on either side, a column
            // max, then a bias.
            "jpu-tiny",
            Some("out_buffers = 1"),
            "func @f(%x: bf16[2, 70, 40], %w: bf16[40, 100], %s: f32[2, 70, 1], %b: f32[100]) -> f32[2, 70, 100] {
               %y = matmul(%x, %w) : f32[2, 70, 100]
               %a = mul(%y, %s)
               %d = div(%s, %a)
               %m = max(%d, %s)
               %z = add(%m, %b)
               return %z
             }",
        ),
        (
            "jpu1",
            None,
            "func @f(%x: bf16[200, 64], %w: bf16[64, 700], %s: bf16[200, 1]) -> bf16[200, 700] {
               %y = matmul(%x, %w) : bf16[200, 700]
               %a = sub(%s, %y)
               return %a
             }",
        ),
        (
            "jpu1",
            None,
            "func @ffn(%x: bf16[2, 200, 300], %w: bf16[300, 1000], %b: bf16[1000], %r: bf16[2, 200, 1000]) -> bf16[2, 200, 1000] {
               %y = matmul(%x, %w) : bf16[2, 200, 1000]
               %z = add(%y, %b)
               %g = gelu(%z) {approx = \"tanh\"}
               %o = add(%g, %r)
               return %o
             }",
        ),
        (
            "jpu1",
            Some("out_buffers = 1\ntile_n = 256"),
            "func @f(%x: bf16[130, 64], %w: bf16[64, 700], %b: f32[700], %r: f32[130, 700]) -> bf16[130, 700] {
               %y = matmul(%x, %w) : f32[130, 700]
               %z = add(%y, %b)
               %a = relu(%z)
               %o = add(%r, %a)
               %c = cast(%o) {to = bf16}
               return %c
             }",
        ),
    ];
    for (target, schedule, src) in cases {
        let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)));
        let t = Target::builtin(target).unwrap();
        let opts = scheduled(&schedule.map_or(String::new(), |text| format!("[k1]\n{text}")), 2);
        for seed in [0, 1] {
            let v = jalc::verify::verify_with(&f, &t, seed, &opts).unwrap_or_else(|e| panic!("{target}: {e:?}\n{src}"));
            assert!(
                v.passed && v.max_abs_error == 0.0,
                "{target} seed {seed}: {:?} ({})\n{src}",
                v.first_mismatch,
                v.max_abs_error
            );
        }
    }
}

#[test]
fn epilogues_beyond_the_kernel_say_what_and_why() {
    let why = |body: &str| {
        let src = format!(
            "func @f(%x: bf16[64, 64], %w: bf16[64, 64], %odd: bf16[2, 64, 64], %i: i8[64, 64]) -> bf16[64, 64] {{\n  %y = matmul(%x, %w) : bf16[64, 64]\n{body}\n}}"
        );
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render("case", &src, &d)));
        let t = Target::builtin("jpu-tiny").unwrap();
        match jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()) {
            Ok(c) => format!("compiles to {:?}", c.kernels.iter().map(|k| k.kind()).collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        }
    };
    // A GEMM result broadcast to a larger shape ends the GEMM's chain (the add is a kernel of its own).
    assert_eq!(
        why("  %z = add(%y, %odd)\n  %r = reduce_sum(%z) {axes = [0]}\n  return %r"),
        r#"compiles to ["gemm", "map", "copy", "rows"]"#
    );
    // A comparison outside a mask is materialised (i1 as i8) and selected by.
    assert_eq!(
        why("  %c = compare(%odd, 0.5) {kind = gt}\n  %m = select(%c, %odd, 0.0)\n  %r = reduce_sum(%m) {axes = [0]}\n  %a = add(%y, %r)\n  return %a"),
        r#"compiles to ["gemm", "map", "map", "copy", "rows", "map"]"#
    );
    // A row op over N after a GEMM whose tiles hold whole rows runs on them;
    // when the GEMM's result has another use, the GEMM stores it and a row
    // kernel follows.
    assert_eq!(why("  %r = softmax(%y) {axis = -1}\n  return %r"), r#"compiles to ["gemm"]"#);
    assert_eq!(
        why("  %r = softmax(%y) {axis = -1}\n  %a = add(%r, %y)\n  return %a"),
        r#"compiles to ["gemm", "rows", "map"]"#
    );
}

/// A random GEMM with a random fusable epilogue (from `seed`): 0 to 5 steps drawn
/// from bias-row, residual, scalar and self operands (either side) of every binary
/// op, and every activation-engine function; maybe a final cast.
fn random_epilogue(seed: u64) -> String {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (m, k, n) = (rng.random_range(1..=70u64), rng.random_range(1..=50u64), rng.random_range(1..=150u64));
    let (operand, result) = [("bf16", "f32"), ("bf16", "bf16"), ("f16", "f16"), ("f8e4m3", "f32"), ("f32", "f32")]
        [rng.random_range(0..5usize)];
    let batch = if rng.random_bool(0.3) { "2, " } else { "" };
    let mut params = vec![format!("%x: {operand}[{batch}{m}, {k}]"), format!("%w: {operand}[{k}, {n}]")];
    let mut body = vec![format!("  %v0 = matmul(%x, %w) : {result}[{batch}{m}, {n}]")];
    let steps = rng.random_range(0..=5usize);
    for i in 1..=steps {
        let prev = format!("%v{}", i - 1);
        let stmt = if rng.random_bool(0.35) {
            let f = ["exp", "tanh", "erf", "sigmoid", "silu", "relu", "rsqrt", "recip", "sqrt", "neg", "gelu"];
            match rng.random_range(0..12usize) {
                11 => format!("gelu({prev}) {{approx = \"tanh\"}}"),
                j => format!("{}({prev})", f[j]),
            }
        } else {
            let op = ["add", "sub", "mul", "div", "max", "min"][rng.random_range(0..6usize)];
            let other = match rng.random_range(0..5u32) {
                0 => {
                    params.push(format!("%b{i}: {result}[{n}]"));
                    format!("%b{i}")
                }
                1 => {
                    params.push(format!("%r{i}: {result}[{batch}{m}, {n}]"));
                    format!("%r{i}")
                }
                2 => format!("{:.3}", rng.random_range(-3.0..3.0f64)),
                3 => {
                    params.push(format!("%c{i}: {result}[{batch}{m}, 1]"));
                    format!("%c{i}")
                }
                _ => prev.clone(),
            };
            if rng.random_bool(0.5) {
                format!("{op}({prev}, {other})")
            } else {
                format!("{op}({other}, {prev})")
            }
        };
        body.push(format!("  %v{i} = {stmt}"));
    }
    let (last, ty) = if rng.random_bool(0.3) && result != "bf16" {
        body.push(format!("  %c = cast(%v{steps}) {{to = bf16}}"));
        ("%c".to_string(), "bf16")
    } else {
        (format!("%v{steps}"), result)
    };
    format!("func @f({}) -> {ty}[{batch}{m}, {n}] {{\n{}\n  return {last}\n}}\n", params.join(", "), body.join("\n"))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

    /// Every random fusable epilogue compiles for jpu-tiny and matches the evaluator
    /// bit for bit (NaN for NaN, infinity for infinity), race-checked.
    #[test]
    fn random_epilogues_verify_bit_exactly(seed in proptest::prelude::any::<u64>()) {
        let src = random_epilogue(seed);
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render("case", &src, &d)));
        let t = Target::builtin("jpu-tiny").unwrap();
        let v = jalc::verify::verify(&f, &t, seed).unwrap_or_else(|e| panic!("{e:?}\n{src}"));
        proptest::prop_assert!(v.passed && v.max_abs_error == 0.0, "{:?} ({})\n{}", v.first_mismatch, v.max_abs_error, src);
    }
}

/// Several kernels in one program: chains through HBM scratch, shared inputs,
/// several results, a kernel output reused as a later epilogue's residual; each
/// at -O0 and at the default level (the optimizer may reassociate chains).
#[test]
fn kernel_chains_verify_on_both_targets() {
    let cases: &[(&str, &str)] = &[
        (
            "jpu-tiny",
            "func @lowrank(%x: bf16[40, 96], %a: bf16[96, 8], %b: bf16[8, 96]) -> bf16[40, 96] {
               %ab = matmul(%a, %b) : bf16[96, 96]
               %y = matmul(%x, %ab) : bf16[40, 96]
               return %y
             }",
        ),
        (
            // Reassociated at -O2 into (x . a) . b.
            "jpu-tiny",
            "func @lowrank32(%x: f32[40, 96], %a: f32[96, 8], %b: f32[8, 96]) -> f32[40, 96] {
               %ab = matmul(%a, %b) : f32[96, 96]
               %y = matmul(%x, %ab) : f32[40, 96]
               return %y
             }",
        ),
        (
            "jpu-tiny",
            "func @qk(%x: bf16[2, 33, 48], %wq: bf16[48, 40], %wk: bf16[48, 40]) -> (bf16[2, 33, 40], f32[2, 33, 40]) {
               %q = matmul(%x, %wq) : bf16[2, 33, 40]
               %k = matmul(%x, %wk) : f32[2, 33, 40]
               return %q, %k
             }",
        ),
        (
            "jpu-tiny",
            "func @block(%x: bf16[50, 64], %w1: bf16[64, 64], %w2: bf16[64, 64], %b: bf16[64]) -> bf16[50, 64] {
               %h = matmul(%x, %w1) : bf16[50, 64]
               %a = relu(%h)
               %o = matmul(%a, %w2) : bf16[50, 64]
               %z = add(%o, %b)
               %r = add(%z, %a)
               return %r
             }",
        ),
        (
            "jpu1",
            "func @mlp(%x: bf16[130, 256], %w1: bf16[256, 700], %b1: bf16[700], %w2: bf16[700, 256]) -> bf16[130, 256] {
               %h = matmul(%x, %w1) : bf16[130, 700]
               %z = add(%h, %b1)
               %g = gelu(%z) {approx = \"tanh\"}
               %o = matmul(%g, %w2) : bf16[130, 256]
               %r = add(%o, %x)
               return %r
             }",
        ),
    ];
    for (target, src) in cases {
        let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)));
        let t = Target::builtin(target).unwrap();
        for level in [0, 2] {
            let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::at(level))
                .unwrap_or_else(|e| panic!("{e}\n{src}"));
            assert!(c.kernels.len() >= 2, "{src}");
            let v = jalc::verify::verify_with(&f, &t, 5, &jalc::driver::Options::at(level))
                .unwrap_or_else(|e| panic!("{e:?}\n{src}"));
            assert!(v.passed, "{target} -O{level}: {:?}\n{src}", v.first_mismatch);
        }
    }
}

#[test]
fn kernels_that_run_apart_share_sram() {
    // Each kernel alone needs most of a jpu-tiny partition (A rows hold all of K):
    // statically they would not fit together; by live range they do.
    let src =
        "func @f(%x: bf16[32, 3000], %w: bf16[3000, 32], %x2: bf16[32, 3000], %w2: bf16[3000, 32]) -> bf16[32, 32] {
         %h = matmul(%x, %w) : bf16[32, 32]
         %o = matmul(%x2, %w2) : bf16[32, 32]
         %r = add(%o, %h)
         return %r
       }";
    let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)));
    let t = Target::builtin("jpu-tiny").unwrap();
    let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).unwrap();
    let gemms = c.kernels.iter().filter_map(|k| k.as_any().downcast_ref::<jalc::kernels::gemm::GemmKernel>());
    let need: Vec<u64> = gemms.map(|k| k.p.sram_bytes(&k.s, &t)).collect();
    assert!(need.iter().sum::<u64>() > t.sram.partition_bytes as u64, "{need:?}");
    let v = jalc::verify::verify(&f, &t, 1).unwrap();
    assert!(v.passed, "{:?}", v.first_mismatch);
}

/// Kernels for ops no GEMM absorbs: transposes of the last two dims (PE
/// transposes, every dtype, odd and batched shapes) and elementwise chains
/// (broadcast rows, scalars, casts, functions), alone and feeding GEMMs; all
/// bit-exact on both targets at -O0 (as written).
#[test]
fn standalone_transpose_and_elementwise_kernels_verify_bit_exactly() {
    let cases: &[(&str, &str)] = &[
        (
            "jpu-tiny",
            "func @t(%x: bf16[2, 70, 45], %y: i8[1, 33], %z: f32[40, 7], %w: f8e5m2[3, 5, 129]) -> (bf16[2, 45, 70], i8[33, 1], f32[7, 40], f8e5m2[3, 129, 5]) {
               %a = transpose(%x) {perm = [0, 2, 1]}
               %b = transpose(%y) {perm = [1, 0]}
               %c = transpose(%z) {perm = [1, 0]}
               %d = transpose(%w) {perm = [0, 2, 1]}
               return %a, %b, %c, %d
             }",
        ),
        (
            "jpu-tiny",
            "func @m(%q: f32[3, 70, 600], %b: f32[600], %r: f32[3, 70, 600], %h: bf16[5, 9], %col: f32[3, 70, 1]) -> (bf16[3, 70, 600], f32[5, 9]) {
               %s = mul(%q, 0.125)
               %e = exp(%s)
               %a = add(%b, %e)
               %m = max(%a, %r)
               %k = mul(%m, %col)
               %c = cast(%k) {to = bf16}
               %hr = reshape(%h) {shape = [9, 5]}
               %hb = reshape(%hr) {shape = [5, 9]}
               %hc = cast(%hb) {to = f32}
               %g = gelu(%hc) {approx = \"tanh\"}
               %sq = mul(%g, %g)
               return %c, %sq
             }",
        ),
        (
            "jpu1",
            "func @mix(%x: bf16[3, 70, 200], %w: bf16[1000, 200], %q: f32[3, 70, 1000], %b: f32[1000]) -> (bf16[3, 200, 70], bf16[3, 70, 1000]) {
               %t = transpose(%x) {perm = [0, 2, 1]}
               %s = mul(%q, 0.125)
               %e = exp(%s)
               %a = add(%e, %b)
               %c = cast(%a) {to = bf16}
               %wt = transpose(%w) {perm = [1, 0]}
               %y = matmul(%x, %wt) : bf16[3, 70, 1000]
               %z = add(%y, %c)
               %tt = transpose(%t) {perm = [0, 2, 1]}
               %u = mul(%tt, %tt)
               %ut = transpose(%u) {perm = [0, 2, 1]}
               return %ut, %z
             }",
        ),
    ];
    for (target, src) in cases {
        let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)));
        let t = Target::builtin(target).unwrap();
        for level in [0, 2] {
            let v = jalc::verify::verify_with(&f, &t, 3, &jalc::driver::Options::at(level))
                .unwrap_or_else(|e| panic!("{e:?}\n{src}"));
            assert!(
                v.passed && v.max_abs_error == 0.0,
                "{target} -O{level}: {:?} ({})\n{src}",
                v.first_mismatch,
                v.max_abs_error
            );
        }
    }
}

/// -O0 is the unoptimized baseline: no rewriting and no fusion, every op a kernel
/// of its own; the default fuses the chain into the GEMM. Both verify.
#[test]
fn o0_runs_every_op_as_its_own_kernel() {
    let src = "func @ffn(%x: bf16[40, 24], %w: bf16[24, 48], %b: bf16[48], %r: bf16[40, 48]) -> bf16[40, 48] {
         %y = matmul(%x, %w) : bf16[40, 48]
         %z = add(%y, %b)
         %g = gelu(%z) {approx = \"tanh\"}
         %o = add(%g, %r)
         return %o
       }";
    let f = tir::parse_and_check(src).unwrap();
    let t = Target::builtin("jpu-tiny").unwrap();
    let kinds = |level| {
        let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::at(level)).unwrap();
        c.kernels.iter().map(|k| k.kind()).collect::<Vec<_>>()
    };
    assert_eq!(kinds(0), ["gemm", "map", "map", "map"]);
    assert_eq!(kinds(2), ["gemm"]);
    for level in [0, 2] {
        let v = jalc::verify::verify_with(&f, &t, 2, &jalc::driver::Options::at(level)).unwrap();
        assert!(v.passed && v.max_abs_error == 0.0, "-O{level}: {:?}", v.first_mismatch);
    }
}

/// `loop_order = m_outer` visits every N-panel of an M-tile before the next
/// M-tile: each A tile is loaded once and reused, B panels are reloaded. Both
/// orders verify (race-checked) for plain, transposed, batched and fused kernels,
/// and they are really different programs.
#[test]
fn both_loop_orders_verify() {
    let t = Target::builtin("jpu-tiny").unwrap();
    let sources = [
        "func @f(%a: bf16[100, 80], %b: bf16[80, 300]) -> f32[100, 300] {\n  %c = matmul(%a, %b) : f32[100, 300]\n  return %c\n}",
        "func @f(%a: bf16[2, 70, 40], %b: bf16[130, 40], %r: f32[2, 70, 130]) -> f32[2, 70, 130] {\n  %c = matmul(%a, %b) {transpose_b = true} : f32[2, 70, 130]\n  %o = add(%c, %r)\n  return %o\n}",
        "func @f(%a: bf16[40, 100], %b: bf16[40, 200]) -> bf16[100, 200] {\n  %c = matmul(%a, %b) {transpose_a = true} : f32[100, 200]\n  %y = cast(%c) {to = bf16}\n  return %y\n}",
    ];
    for src in sources {
        let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)));
        let mut loads = Vec::new();
        for order in ["n_outer", "m_outer"] {
            let opts = scheduled(&format!("[k1]\nloop_order = {order}\na_buffers = 1"), 2);
            let c = jalc::driver::compile(&f, &t, &opts).unwrap();
            loads.push(c.tiles.ops.iter().filter(|(op, _)| matches!(op, jalc::tiles::TileOp::Load { .. })).count());
            let v = jalc::verify::verify_with(&f, &t, 6, &opts).unwrap();
            assert!(v.passed && v.max_abs_error == 0.0, "{order}: {:?}\n{src}", v.first_mismatch);
        }
        assert_ne!(loads[0], loads[1], "{src}");
    }
    let f = tir::parse_and_check(sources[0]).unwrap();
    let e = jalc::driver::compile(&f, &t, &scheduled("[k1]\nloop_order = k_outer", 2)).err().unwrap();
    assert!(e.to_string().contains("`n_outer` or `m_outer`"), "{e}");
}

/// In M-outer order with a B copy per N-panel, every panel stays resident: B is
/// loaded once per B batch index (a shared B once, a batched B once per batch),
/// not once per M-tile, and the program verifies (race-checked).
#[test]
fn m_outer_keeps_b_resident_when_every_panel_has_a_copy() {
    let t = Target::builtin("jpu-tiny").unwrap();
    let sources = [
        ("func @f(%a: bf16[100, 80], %b: bf16[80, 300]) -> f32[100, 300] {\n  %c = matmul(%a, %b) : f32[100, 300]\n  return %c\n}", 1),
        ("func @f(%a: bf16[2, 70, 40], %b: bf16[2, 40, 300]) -> f32[2, 70, 300] {\n  %c = matmul(%a, %b) : f32[2, 70, 300]\n  return %c\n}", 2),
    ];
    for (src, b_batches) in sources {
        let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)));
        let b_loads = |schedule: &str| {
            let opts = scheduled(schedule, 2);
            let c = jalc::driver::compile(&f, &t, &opts).unwrap();
            let b = c.tiles.buffers.iter().position(|b| b.name == "b_panel").unwrap();
            let v = jalc::verify::verify_with(&f, &t, 3, &opts).unwrap();
            assert!(v.passed && v.max_abs_error == 0.0, "{schedule}: {:?}\n{src}", v.first_mismatch);
            let loads = c
                .tiles
                .ops
                .iter()
                .filter(|(op, _)| matches!(op, jalc::tiles::TileOp::Load { dst, .. } if dst.buf == b));
            (loads.count(), c.tiles.buffers[b].free)
        };
        let (once, panel) = b_loads("[k1]\nloop_order = m_outer\ntile_n = 128\nb_buffers = 3");
        let (reloaded, _) = b_loads("[k1]\nloop_order = m_outer\ntile_n = 128\nb_buffers = 2");
        // One load per k-tile (a panel holds every k-tile's 128 columns) of
        // each of the 3 panels, per B batch index.
        assert_eq!(once, 3 * (panel / 128) as usize * b_batches, "{src}");
        assert!(reloaded > once, "{src}: {reloaded} B loads with two copies");
    }
}

/// Softmax, rmsnorm and layernorm over N after a GEMM (with a bias and a
/// residual) run on the GEMM's tiles when a tile holds whole rows: one kernel
/// at -O2, bit-exact against the evaluator (race-checked) on both targets; a
/// row kernel at -O0, or when N is wider than a PSUM bank; and a schedule that
/// would split the rows is refused, naming the row op.
#[test]
fn row_ops_after_a_gemm_run_on_its_tiles() {
    let program = |n: u64, row: &str| {
        format!(
            "func @f(%x: bf16[2, 40, 24], %w: bf16[24, {n}], %b: bf16[{n}], %r: bf16[2, 40, {n}], %g: bf16[{n}], %be: bf16[{n}]) -> bf16[2, 40, {n}] {{
  %y = matmul(%x, %w)
  %z = add(%y, %b)
  %h = add(%z, %r)
  %o = {row}
  return %o
}}"
        )
    };
    let rows = [
        "softmax(%h) {axis = -1}",
        "rmsnorm(%h, %g) {axis = -1, eps = 1e-6}",
        "layernorm(%h, %g, %be) {axis = -1, eps = 1e-5}",
    ];
    for (target, row) in ["jpu-tiny", "jpu1"].into_iter().flat_map(|t| rows.map(|r| (t, r))) {
        let t = Target::builtin(target).unwrap();
        let src = program(96, row);
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render("case", &src, &d)));
        for level in [0, 2] {
            let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::at(level)).unwrap();
            let kinds: Vec<&str> = c.kernels.iter().map(|k| k.kind()).collect();
            assert_eq!(kinds.contains(&"rows"), level == 0, "{target} -O{level}: {kinds:?}\n{src}");
            let v = jalc::verify::verify_with(&f, &t, 5, &jalc::driver::Options::at(level)).unwrap();
            assert!(v.passed && v.max_abs_error == 0.0, "{target} -O{level}: {:?}\n{src}", v.first_mismatch);
        }
        let e = jalc::driver::compile(&f, &t, &scheduled("[k1]\ntile_n = 32", 2)).err().unwrap().to_string();
        assert!(e.contains("tile_n = 32 must be N = 96") && e.contains("whole rows"), "{e}");
    }
    // Wider than a PSUM bank (512 f32 on jpu1): the GEMM stores and a row kernel follows.
    let src = program(600, rows[2]);
    let f = tir::parse_and_check(&src).unwrap();
    let c = jalc::driver::compile(&f, &Target::builtin("jpu1").unwrap(), &jalc::driver::Options::o2()).unwrap();
    assert_eq!(c.kernels.iter().map(|k| k.kind()).collect::<Vec<_>>(), ["gemm", "rows"]);
}

/// An RMSNorm of one row that splits evenly over the partitions sums on one
/// partition and scales spread over all of them (`wide_row`), bit-exact on
/// several seeds, with an f32 input and a fused cast, on both targets and at
/// several lengths; a row that does not split evenly, or a part shorter than a
/// DMA run, keeps the plain form and verifies too.
#[test]
fn one_row_rmsnorms_spread_their_scaling_over_the_partitions() {
    let cases = [
        ("jpu-tiny", "bf16", 1024, true),
        ("jpu-tiny", "f32", 2048, true),
        ("jpu-tiny", "bf16", 1000, false),
        ("jpu-tiny", "bf16", 512, false),
        ("jpu1", "bf16", 4096, true),
    ];
    for (target, dtype, n, spread) in cases {
        let t = Target::builtin(target).unwrap();
        let cast = if dtype == "f32" { "\n  %o = cast(%h) {to = bf16}" } else { "\n  %o = add(%h, %h)" };
        let src = format!(
            "func @f(%x: {dtype}[1, {n}], %g: {dtype}[{n}]) -> bf16[1, {n}] {{\n  %h = rmsnorm(%x, %g) {{axis = -1, eps = 1e-6}}{cast}\n  return %o\n}}"
        );
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render("case", &src, &d)));
        let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).unwrap();
        let listing = jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[]);
        assert_eq!(listing.contains("its sum on one partition, then spread"), spread, "{target}, {n}: {listing}");
        for seed in [1, 2, 3] {
            let v = jalc::verify::verify_compiled(&c, &f, &t, seed).unwrap();
            assert!(v.passed && v.max_abs_error == 0.0, "{target}, {n}, seed {seed}: {:?}\n{src}", v.first_mismatch);
        }
    }
}

/// The default GEMM schedule takes the PSUM copies that keep the PE busy (two
/// when an item's matmuls outlast an evacuation, more when K is one short
/// k-tile), and with several N-panels keeps B resident in M-outer order when
/// it fits, else A in N-outer order.
#[test]
fn default_gemm_schedules_take_the_psum_and_residency_they_need() {
    let t = Target::builtin("jpu1").unwrap();
    let schedule = |m: u64, k: u64, n: u64| {
        let src = format!("func @f(%a: bf16[{m}, {k}], %b: bf16[{k}, {n}]) -> bf16[{m}, {n}] {{\n  %c = matmul(%a, %b)\n  return %c\n}}");
        let f = tir::parse_and_check(&src).unwrap();
        let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).unwrap();
        c.kernels[0].as_any().downcast_ref::<jalc::kernels::gemm::GemmKernel>().unwrap().s
    };
    // K = 384: 3 matmuls of 512 columns (1536 cycles) against a 640-cycle evacuation.
    let s = schedule(1024, 384, 1536);
    assert_eq!((s.psum_banks, s.loop_order, s.b_buffers), (2, jalc::kernels::gemm::LoopOrder::MOuter, 3));
    // K = 64: one matmul of 512 columns against the same evacuation.
    assert_eq!(schedule(256, 64, 1024).psum_banks, 3);
    // B of 8192 x 8192 does not fit half a partition; 32 M-tiles of A x 8192 neither: plain N-outer.
    let s = schedule(4096, 8192, 8192);
    assert_eq!((s.loop_order, s.a_buffers, s.b_buffers), (jalc::kernels::gemm::LoopOrder::NOuter, 2, 2));
    // B of 4096 x 8192 does not fit either; A's two M-tiles fit its two default
    // copies, so A is resident in N-outer order.
    let s = schedule(256, 4096, 8192);
    assert_eq!((s.loop_order, s.a_buffers), (jalc::kernels::gemm::LoopOrder::NOuter, 2));
}

/// DMA queues as schedule data: A's and B's loads go where the schedule says
/// (jpu1 has three load queues and one for stores), and the program verifies.
#[test]
fn schedules_assign_dma_queues() {
    let src = "func @g(%a: bf16[200, 256], %b: bf16[256, 600]) -> f32[200, 600] {\n  %c = matmul(%a, %b) : f32[200, 600]\n  return %c\n}\n";
    let f = tir::parse_and_check(src).unwrap();
    let t = Target::builtin("jpu1").unwrap();
    let opts = scheduled("[%c]\na_queue = 2\nb_queue = 0", 2);
    let c = jalc::driver::compile(&f, &t, &opts).unwrap();
    let tiles = c.tiles.to_string();
    assert!(tiles.lines().filter(|l| l.contains("<- a[")).all(|l| l.contains(" on dma2")), "{tiles}");
    assert!(tiles.lines().filter(|l| l.contains("<- b[")).all(|l| l.contains(" on dma0")), "{tiles}");
    let asm = jpu_isa::jasm::disassemble(&c.program);
    let dma2 = asm.split(".stream dma2").nth(1).unwrap().split(".stream").next().unwrap();
    assert!(dma2.contains("hbm[a") && !dma2.contains("hbm[b"), "{dma2}");
    let v = jalc::verify::verify_with(&f, &t, 1, &opts).unwrap();
    assert!(v.passed, "{:?}", v.first_mismatch);
    let bad = jalc::driver::compile(&f, &t, &scheduled("[%c]\na_queue = 2\nb_queue = 3", 2)).err().unwrap();
    assert!(bad.to_string().contains("b_queue = 3 must be in 0..=2 (queue 3 carries stores)"), "{bad}");
}

/// `concat` and `slice` are HBM-to-HBM DMA boxes: along every axis, ranks 1 to 4,
/// every dtype, a repeated input, empty pieces, feeding and fed by other kernels;
/// bit-exact on both targets at -O0 and -O2.
#[test]
fn concat_and_slice_are_dma_copies() {
    let src = "func @c(%a: bf16[2, 3, 5], %b: bf16[2, 4, 5], %x: f32[4, 6, 7], %y: i8[10], %z: f8e4m3[3, 2, 4, 6], %w: bf16[5, 8]) -> (bf16[2, 7, 5], f32[2, 3, 4], bf16[2, 3, 10], i8[3], f8e4m3[1, 2, 2, 3], f32[4, 6, 14], bf16[4, 2, 5], f32[5, 5], i8[0]) {
      %c = concat(%a, %b) {axis = 1}
      %s = slice(%x) {start = [1, 2, 3], stop = [3, 5, 7]}
      %d = concat(%a, %a) {axis = 2}
      %t = slice(%y) {start = [4], stop = [7]}
      %u = slice(%z) {start = [2, 0, 1, 3], stop = [3, 2, 3, 6]}
      %e = exp(%x)
      %g = concat(%x, %e) {axis = 2}
      %h = concat(%a, %a, %a) {axis = 0}
      %hs = slice(%h) {start = [1, 1, 0], stop = [5, 3, 5]}
      %ws = slice(%w) {start = [0, 2], stop = [5, 5]}
      %wt = concat(%ws, %ws) {axis = 1}
      %wtf = cast(%wt) {to = f32}
      %m = matmul(%wtf, %wtf) {transpose_b = true} : f32[5, 5]
      %none = slice(%y) {start = [3], stop = [3]}
      return %c, %s, %d, %t, %u, %g, %hs, %m, %none
    }";
    let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)));
    for target in ["jpu-tiny", "jpu1"] {
        let t = Target::builtin(target).unwrap();
        for level in [0, 2] {
            let v = jalc::verify::verify_with(&f, &t, 4, &jalc::driver::Options::at(level))
                .unwrap_or_else(|e| panic!("{target}: {e:?}"));
            assert!(v.passed && v.max_abs_error == 0.0, "{target} -O{level}: {:?}", v.first_mismatch);
        }
    }
}

/// Every permutation up to rank 4 (and some of rank 5 and 8), every dtype
/// width: a swap of the last two dims is the PE transpose, any other
/// permutation a DMA copy kernel, bit-exact on both targets at -O0 and -O2; the
/// head split `[S, H, D] -> [H, S, D]` is one box per head.
#[test]
fn transposes_by_any_permutation_are_exact() {
    fn perms(r: usize) -> Vec<Vec<usize>> {
        if r == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in perms(r - 1) {
            for at in 0..=p.len() {
                let mut q = p.clone();
                q.insert(at, r - 1);
                out.push(q);
            }
        }
        out
    }
    let dims = [3u64, 2, 4, 5, 2, 1, 2, 3];
    let mut cases: Vec<(Vec<u64>, Vec<usize>)> = Vec::new();
    for r in 1..=4 {
        cases.extend(perms(r).into_iter().map(|p| (dims[..r].to_vec(), p)));
    }
    cases.push((dims[..5].to_vec(), vec![4, 2, 0, 3, 1]));
    cases.push((dims[..5].to_vec(), vec![1, 0, 2, 4, 3]));
    cases.push((dims.to_vec(), vec![7, 6, 5, 4, 3, 2, 1, 0]));
    for (k, (shape, perm)) in cases.iter().enumerate() {
        let dtype = ["bf16", "f32", "i8"][k % 3];
        let out: Vec<u64> = perm.iter().map(|&a| shape[a]).collect();
        let ty = |s: &[u64]| format!("{dtype}[{}]", s.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
        let list = perm.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
        let src = format!(
            "func @t(%x: {}) -> {} {{\n  %y = transpose(%x) {{perm = [{list}]}}\n  return %y\n}}\n",
            ty(shape),
            ty(&out)
        );
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render("case", &src, &d)));
        for target in ["jpu-tiny", "jpu1"] {
            let t = Target::builtin(target).unwrap();
            for level in [0, 2] {
                let v = jalc::verify::verify_with(&f, &t, 5, &jalc::driver::Options::at(level))
                    .unwrap_or_else(|e| panic!("{target} -O{level}: {e}\n{src}"));
                assert!(v.passed && v.max_abs_error == 0.0, "{target} -O{level}: {:?}\n{src}", v.first_mismatch);
            }
        }
    }
    let heads = "func @h(%x: bf16[128, 8, 64]) -> bf16[8, 128, 64] {\n  %y = transpose(%x) {perm = [1, 0, 2]}\n  return %y\n}\n";
    let f = tir::parse_and_check(heads).unwrap();
    let c = jalc::driver::compile(&f, &Target::builtin("jpu1").unwrap(), &jalc::driver::Options::o2()).unwrap();
    let copy = c.kernels[0].as_any().downcast_ref::<jalc::kernels::copy::CopyProblem>().expect("a copy kernel");
    assert_eq!(copy.boxes.len(), 8);
}

/// Schedule overrides are per kernel: each section changes only the kernel it
/// names (by a value it computes), unnamed fields keep the chosen values, and
/// the same file works at -O0 (every op a kernel) and -O2 (fused); a field that
/// does not belong to the kernel the value ends up in is refused.
#[test]
fn schedule_overrides_apply_per_kernel_at_every_level() {
    let src = "func @f(%x: bf16[100, 64], %w1: bf16[64, 200], %w2: bf16[200, 96]) -> f32[100, 96] {
      %h = matmul(%x, %w1) : bf16[100, 200]
      %a = relu(%h)
      %o = matmul(%a, %w2) : f32[100, 96]
      return %o
    }";
    let f = tir::parse_and_check(src).unwrap();
    let t = Target::builtin("jpu-tiny").unwrap();
    let schedule = "[%h]\ntile_n = 64\nout_buffers = 1\n\n[%o]\nloop_order = m_outer\ntile_m = 16\n";
    let chosen = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).unwrap();
    let default = gemm(&chosen.kernels).unwrap().s;
    for level in [0, 2] {
        let opts = scheduled(schedule, level);
        let c = jalc::driver::compile(&f, &t, &opts).unwrap();
        let gemms: Vec<&jalc::kernels::gemm::GemmKernel> =
            c.kernels.iter().filter_map(|k| k.as_any().downcast_ref()).collect();
        assert_eq!(gemms.len(), 2, "-O{level}");
        let (h, o) = (gemms[0].s, gemms[1].s);
        assert_eq!((h.tile_n, h.out_buffers, h.loop_order), (64, 1, default.loop_order), "-O{level}");
        assert_eq!((h.tile_m, h.tile_k, h.psum_banks), (default.tile_m, default.tile_k, default.psum_banks));
        assert_eq!((o.tile_m, o.loop_order, o.tile_n), (16, jalc::kernels::gemm::LoopOrder::MOuter, 96), "-O{level}");
        let v = jalc::verify::verify_with(&f, &t, 2, &opts).unwrap();
        assert!(v.passed && v.max_abs_error == 0.0, "-O{level}: {:?}", v.first_mismatch);
    }
    // `%a` is a map kernel of its own at -O0 and part of the first GEMM at -O2.
    let width = scheduled("[%a]\nwidth = 32\n", 0);
    let c = jalc::driver::compile(&f, &t, &width).unwrap();
    assert!(jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[]).contains("kernel map k2: %a = relu(%h)"));
    assert!(jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[]).contains("blocks of 32 columns"));
    assert!(jalc::verify::verify_with(&f, &t, 2, &width).unwrap().passed);
    let e = jalc::driver::compile(&f, &t, &scheduled("[%a]\nwidth = 32\n", 2)).err().unwrap();
    assert!(e.to_string().contains("width = 32 (line 2): unknown field `width`"), "{e}");
}
