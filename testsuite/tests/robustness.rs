//! Hostile and degenerate inputs: the compiler either produces a program that
//! verifies or refuses with a typed error; it never panics.

use jalc::driver::Options;
use jalc::front::tir;
use jpu_isa::Target;

/// Verifies `src` on jpu-tiny at -O0 and -O2; panics with the source on failure.
fn verifies(src: &str) {
    let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case.tir", src, &d)));
    let t = Target::builtin("jpu-tiny").unwrap();
    for level in [0, 2] {
        let v = jalc::verify::verify_with(&f, &t, 3, &Options::at(level))
            .unwrap_or_else(|e| panic!("-O{level}: {e:?}\n{src}"));
        assert!(v.passed, "-O{level}: {:?}\n{src}", v.first_mismatch);
    }
}

/// Zero-size dims: empty results are empty programs, and results over empty
/// operands hold the op's identity (a matmul with K = 0 and a sum over nothing
/// are 0, a max over nothing -inf, an attention with no keys 0).
#[test]
fn zero_size_dims_verify() {
    let cases = [
        // matmul with M, N, K or a batch dim of 0, alone and with an epilogue.
        "func @f(%a: bf16[0, 16], %b: bf16[16, 8]) -> f32[0, 8] {\n  %c = matmul(%a, %b) : f32[0, 8]\n  return %c\n}\n",
        "func @f(%a: bf16[4, 16], %b: bf16[16, 0]) -> bf16[4, 0] {\n  %c = matmul(%a, %b)\n  return %c\n}\n",
        "func @f(%a: bf16[4, 0], %b: bf16[0, 8]) -> f32[4, 8] {\n  %c = matmul(%a, %b) : f32[4, 8]\n  return %c\n}\n",
        "func @f(%a: bf16[4, 0], %b: bf16[0, 8], %r: f32[4, 8]) -> f32[4, 8] {\n  %c = matmul(%a, %b) : f32[4, 8]\n  %y = add(%c, %r)\n  return %y\n}\n",
        "func @f(%a: i8[0, 3, 5], %b: i8[0, 5, 7]) -> i32[0, 3, 7] {\n  %c = matmul(%a, %b) : i32[0, 3, 7]\n  return %c\n}\n",
        // reductions over nothing, norms and softmax of empty rows.
        "func @f(%x: f32[4, 0]) -> (f32[4], bf16[4], i32[3]) {\n  %s = reduce_sum(%x) {axes = [1]}\n  %m = reduce_max(%x) {axes = [1]}\n  %b = cast(%m) {to = bf16}\n  %z = const() {value = 1} : i32[3, 0]\n  %i = reduce_max(%z) {axes = [1]}\n  return %s, %b, %i\n}\n",
        "func @f(%x: bf16[0, 8], %g: bf16[8], %h: bf16[8]) -> (bf16[0, 8], bf16[0, 8], bf16[0, 8]) {\n  %s = softmax(%x) {axis = -1}\n  %r = rmsnorm(%x, %g) {axis = -1}\n  %l = layernorm(%x, %g, %h) {axis = -1}\n  return %s, %r, %l\n}\n",
        // attention with no queries, no keys, an empty value dim.
        "func @f(%q: bf16[2, 0, 8], %k: bf16[2, 5, 8], %v: bf16[2, 5, 8]) -> bf16[2, 0, 8] {\n  %o = attention(%q, %k, %v)\n  return %o\n}\n",
        "func @f(%q: bf16[2, 3, 8], %k: bf16[2, 0, 8], %v: bf16[2, 0, 8]) -> bf16[2, 3, 8] {\n  %o = attention(%q, %k, %v)\n  return %o\n}\n",
        // transposes, elementwise chains, casts, reshapes, concat and slice.
        "func @f(%x: bf16[0, 8], %y: bf16[8, 0]) -> (bf16[8, 0], f32[0, 8]) {\n  %t = transpose(%x) {perm = [1, 0]}\n  %e = exp(%x)\n  %c = cast(%e) {to = f32}\n  return %t, %c\n}\n",
        "func @f(%x: bf16[4, 0], %y: bf16[4, 6]) -> (bf16[4, 6], bf16[0, 6], bf16[0]) {\n  %c = concat(%x, %y) {axis = 1}\n  %s = slice(%y) {start = [2, 0], stop = [2, 6]}\n  %r = reshape(%x) {shape = [0]}\n  return %c, %s, %r\n}\n",
    ];
    for src in cases {
        verifies(src);
    }
}

/// Attention with a head dim of 0 has no sensible kernel: refused, naming why.
#[test]
fn zero_head_dim_attention_is_refused() {
    let src = "func @f(%q: bf16[2, 3, 0], %k: bf16[2, 5, 0], %v: bf16[2, 5, 4]) -> bf16[2, 3, 4] {\n  %o = attention(%q, %k, %v)\n  return %o\n}\n";
    let f = tir::parse_and_check(src).unwrap();
    let t = Target::builtin("jpu-tiny").unwrap();
    for level in [0, 2] {
        let e = jalc::driver::compile(&f, &t, &Options::at(level)).err().expect("refused");
        assert!(e.to_string().contains("head dim 0"), "{e}");
    }
}

/// A reshape round trip that the optimizer reduces to the parameter itself
/// still compiles at -O2 (as a copy under the result's name), as at -O0.
#[test]
fn results_rewritten_to_a_parameter_compile_at_every_level() {
    verifies("func @f(%x: f32[4, 6]) -> (f32[4, 6], f32[4, 6]) {\n  %a = reshape(%x) {shape = [2, 12]}\n  %b = reshape(%a) {shape = [4, 6]}\n  %c = reshape(%b) {shape = [24]}\n  %d = reshape(%c) {shape = [4, 6]}\n  return %b, %d\n}\n");
}

/// Every `.tir` name has a binary name: `%0.x` and names over 255 bytes are
/// renamed (sanitised, unique even against a name the sanitising produces),
/// and the program verifies at every level.
#[test]
fn every_value_name_maps_to_a_binary_name() {
    let long = "a".repeat(300);
    let src = format!(
        "func @f(%0.x: f32[4, 8], %{long}: f32[4, 8]) -> (f32[4, 8], f32[4, 8]) {{\n  %1.y = add(%0.x, %{long})\n  %{long}2 = exp(%1.y)\n  %v0_x = mul(%0.x, 2.0)\n  return %{long}2, %v0_x\n}}\n"
    );
    verifies(&src);
    let f = tir::parse_and_check(&src).unwrap();
    let t = Target::builtin("jpu-tiny").unwrap();
    let compiled = jalc::driver::compile(&f, &t, &Options::at(0)).unwrap();
    let names: Vec<&str> = compiled.program.tensors.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"v0_x") && names.contains(&"v0_x_2"), "{names:?}");
    assert!(names.iter().all(|n| jpu_isa::program::is_identifier(n)), "{names:?}");
}

/// Each kernel's tile-op estimate (what the compile budget is checked against
/// before lowering) is within a factor of 3 of what it lowers to, on every
/// compile case (jpu-tiny) and on large shapes (jpu1).
#[test]
fn tile_op_estimates_track_the_lowering() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/cases/compile");
    let mut programs: Vec<(String, &str)> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| (std::fs::read_to_string(e.unwrap().path()).unwrap(), "jpu-tiny"))
        .collect();
    let gemm = "func @f(%a: bf16[1024, 1024], %b: bf16[1024, 1024]) -> bf16[1024, 1024] {\n  %c = matmul(%a, %b)\n  return %c\n}\n";
    let bt = "func @f(%a: bf16[512, 1024], %b: bf16[768, 1024]) -> bf16[512, 768] {\n  %c = matmul(%a, %b) {transpose_b = true}\n  return %c\n}\n";
    let prefill = "func @f(%q: bf16[8, 1024, 128], %k: bf16[2, 1024, 128], %v: bf16[2, 1024, 128]) -> bf16[8, 1024, 128] {\n  %o = attention(%q, %k, %v) {causal = true}\n  return %o\n}\n";
    let decode = "func @f(%q: bf16[8, 1, 128], %k: bf16[2, 4096, 128], %v: bf16[2, 4096, 128]) -> bf16[8, 1, 128] {\n  %o = attention(%q, %k, %v)\n  return %o\n}\n";
    let rows = "func @f(%x: bf16[4096, 1024], %g: bf16[1024]) -> (bf16[4096, 1024], bf16[1024, 4096]) {\n  %s = softmax(%x) {axis = -1}\n  %r = rmsnorm(%s, %g) {axis = -1}\n  %t = transpose(%r) {perm = [1, 0]}\n  return %s, %t\n}\n";
    for src in [gemm, bt, prefill, decode, rows] {
        programs.push((src.to_string(), "jpu1"));
    }
    for (src, target) in &programs {
        let t = Target::builtin(target).unwrap();
        let f = tir::parse_and_check(src).unwrap();
        for level in [0, 2] {
            let Ok(c) = jalc::driver::compile(&f, &t, &Options::at(level)) else { continue };
            for k in &c.kernels {
                let (estimate, actual) = (k.tile_ops(&t), k.lower(&t).ops.len() as u64);
                let close = estimate <= 3 * actual.max(1) && actual <= 3 * estimate.max(1);
                assert!(close, "{} estimates {estimate} tile ops, lowers to {actual}\n{src}", k.statement());
            }
        }
    }
}

/// Programs over the compile budget or the target's HBM are refused before
/// lowering, naming the kernel and the limit (they once allocated gigabytes).
#[test]
fn budgets_are_checked_before_lowering() {
    let t = Target::builtin("jpu1").unwrap();
    let refused = |src: &str, opts: &Options| -> String {
        let f = tir::parse_and_check(src).unwrap();
        let e = jalc::driver::compile(&f, &t, opts).err().expect("refused");
        assert_eq!(e.kind(), "limit exceeded", "{e}");
        assert!(!e.span().is_empty());
        e.to_string()
    };
    // 1x1x1 tiles on a 256^3 GEMM: 16.7M matmuls.
    let gemm =
        "func @f(%a: bf16[256, 256], %b: bf16[256, 256]) -> bf16[256, 256] {\n  %c = matmul(%a, %b)\n  return %c\n}\n";
    let tiny_tiles = jpu_testsuite::scheduled("[k1]\ntile_m = 1\ntile_n = 1\ntile_k = 1\n", 2);
    assert!(refused(gemm, &tiny_tiles).contains("--max-tile-ops"));
    let small_budget = Options { max_tile_ops: 10, ..Options::o2() };
    assert!(refused(gemm, &small_budget).contains("the limit is 10"));
    // 3 x 64 GiB of tensors on a 96 GiB chip.
    let huge = "func @f(%a: f32[131072, 131072], %b: f32[131072, 131072]) -> f32[131072, 131072] {\n  %c = add(%a, %b)\n  return %c\n}\n";
    assert!(refused(huge, &Options::o2()).contains("bytes of HBM"));
}

/// Found by the `compile_verify` fuzzer: attention's few-ulp rounding, divided
/// into a small value, moves the result past the end-to-end tolerance. Every
/// kernel is within tolerance on the chip's own inputs, so the run passes as
/// amplified; a kernel that computes the wrong thing still fails.
#[test]
fn amplified_error_passes_kernel_by_kernel_and_a_wrong_kernel_fails() {
    let src = concat!(
        "func @random(%p0: f32[4], %p1: bf16[2, 2, 2], %p2: bf16[2, 3, 2], %p3: bf16[2, 3, 2], %p4: bf16[2, 2], %p5: f16[4, 2, 3], %p6: f16[2, 1, 3], %p7: f16[2, 1, 3]) -> bf16[2, 2, 1] {\n",
        "  %v1 = attention(%p1, %p2, %p3) {causal = true}\n",
        "  %v2 = concat(%p1, %p1) {axis = 0}\n",
        "  %v3 = concat(%p1, %p1) {axis = 2}\n",
        "  %v4 = div(%p4, %v1) : bf16[2, 2, 2]\n",
        "  %v5 = attention(%p5, %p6, %p7) {causal = false} : f16[4, 2, 3]\n",
        "  %v6 = slice(%p3) {start = [0, 2, 0], stop = [1, 3, 2]}\n",
        "  %v7 = reduce_max(%v4) {axes = [2], keepdims = true}\n",
        "  return %v7\n",
        "}\n",
    );
    let f = tir::parse_and_check(src).unwrap();
    let t = Target::builtin("jpu-tiny").unwrap();
    for level in [0, 2] {
        let mut c = jalc::driver::compile(&f, &t, &Options::at(level)).unwrap();
        let v = jalc::verify::verify_compiled(&c, &f, &t, 1).unwrap();
        assert!(v.passed && v.mismatches > 0 && v.amplified.is_some(), "-O{level}: {:?}", v.first_mismatch);
        // The same program with its divisions turned into multiplications.
        for stream in c.program.cores.iter_mut().flatten() {
            for inst in stream {
                if let jpu_isa::Op::TensorTensor { op, .. } = &mut inst.op {
                    if *op == jpu_isa::operand::AluOp::Div {
                        *op = jpu_isa::operand::AluOp::Mul;
                    }
                }
            }
        }
        let v = jalc::verify::verify_compiled(&c, &f, &t, 1).unwrap();
        assert!(!v.passed && v.amplified.is_none(), "-O{level}: a wrong division passed");
    }
}
