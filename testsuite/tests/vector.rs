//! Vector-side kernels end to end: softmax, norms and reductions (row kernels),
//! compiled for jpu-tiny and jpu1, simulated with race checking and strict
//! initialisation, and compared with the reference evaluator.

use jalc::front::tir;
use jpu_isa::Target;

fn check(src: &str) -> jalc::ir::Func {
    tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)))
}

/// Row kernels repeat the evaluator's f32 steps one for one: bit-exact.
#[test]
fn row_kernels_verify_bit_exactly_on_both_targets() {
    let programs = [
        // Rows that do not fill the partitions, more rows than partitions, odd widths.
        "func @sm(%x: f32[300, 77], %y: bf16[3, 5, 130]) -> (f32[300, 77], bf16[3, 5, 130]) {
           %a = softmax(%x) {axis = -1}
           %b = softmax(%y) {axis = 2}
           return %a, %b
         }",
        // A cast of an f32 softmax is the kernel's store dtype.
        "func @smc(%x: f32[2, 129, 64]) -> bf16[2, 129, 64] {
           %p = softmax(%x) {axis = -1}
           %c = cast(%p) {to = bf16}
           return %c
         }",
        "func @rms(%x: bf16[200, 96], %g: bf16[96], %z: f32[7, 300], %h: f32[300]) -> (bf16[200, 96], f32[7, 300]) {
           %y = rmsnorm(%x, %g) {axis = -1, eps = 1e-5}
           %w = rmsnorm(%z, %h) {axis = 1, eps = 1e-6}
           return %y, %w
         }",
        "func @ln(%x: f32[130, 64], %g: f32[64], %b: f32[64], %u: bf16[3, 40, 33], %ug: bf16[33], %ub: bf16[33]) -> (f32[130, 64], bf16[3, 40, 33]) {
           %y = layernorm(%x, %g, %b) {axis = 1, eps = 1e-5}
           %v = layernorm(%u, %ug, %ub) {axis = -1}
           return %y, %v
         }",
        "func @red(%x: bf16[3, 50, 40], %y: f32[260, 9]) -> (f32[3], bf16[3, 50, 1], f32[260], f32[1]) {
           %s = reduce_sum(%x) {axes = [1, 2]} : bf16[3]
           %sf = cast(%s) {to = f32}
           %m = reduce_max(%x) {axes = [2], keepdims = true}
           %t = reduce_sum(%y) {axes = [1]}
           %all = reduce_max(%y) {axes = [0, 1]} : f32[]
           %one = reshape(%all) {shape = [1]}
           return %sf, %m, %t, %one
         }",
        // Over the second-to-last axis: transposed in (and back out) around the row kernel.
        "func @axis(%x: f32[3, 50, 40], %y: bf16[70, 33], %g: bf16[70], %b: bf16[70]) -> (f32[3, 50, 40], bf16[70, 33], f32[3, 40], bf16[1, 33], bf16[70, 33]) {
           %s = softmax(%x) {axis = 1}
           %l = layernorm(%y, %g, %b) {axis = 0}
           %r = reduce_sum(%x) {axes = [1]}
           %m = reduce_max(%y) {axes = [0], keepdims = true}
           %n = rmsnorm(%y, %g) {axis = 0}
           return %s, %l, %r, %m, %n
         }",
        // Row kernels between GEMMs (attention written out: unfused at -O0).
        "func @chain(%q: bf16[2, 40, 32], %k: bf16[2, 50, 32], %v: bf16[2, 50, 24], %g: bf16[24]) -> bf16[2, 40, 24] {
           %kt = transpose(%k) {perm = [0, 2, 1]}
           %s = matmul(%q, %kt) : f32[2, 40, 50]
           %z = mul(%s, 0.125)
           %p = softmax(%z) {axis = -1}
           %pb = cast(%p) {to = bf16}
           %o = matmul(%pb, %v)
           %n = rmsnorm(%o, %g) {axis = -1, eps = 1e-5}
           return %n
         }",
    ];
    for src in programs {
        let f = check(src);
        for target in ["jpu-tiny", "jpu1"] {
            let t = Target::builtin(target).unwrap();
            for level in [0, 2] {
                let v = jalc::verify::verify_with(&f, &t, 5, &jalc::driver::Options::at(level))
                    .unwrap_or_else(|e| panic!("{e:?}\n{src}"));
                // At -O2 the written-out attention of @chain is fused (within the
                // attention tolerance, not bit-exact).
                let fused_attention = level > 0 && src.contains("@chain");
                assert!(
                    v.passed && (v.max_abs_error == 0.0 || fused_attention),
                    "{target} -O{level}: {:?} ({})\n{src}",
                    v.first_mismatch,
                    v.max_abs_error
                );
            }
        }
    }
}

/// Integer elementwise ops, reductions, comparisons and selects stay exact where
/// f32 would not (values beyond 2^24), and i1 values cross HBM as i8.
#[test]
fn integer_and_boolean_programs_are_exact() {
    let src = "func @f(%x: i32[8, 16], %flag: i1[16]) -> (i32[8], i32[8, 16], i1[8, 16], f32[8, 16]) {
  %b = mul(%x, 4194304)
  %c = add(%b, %x)
  %s = reduce_sum(%c) {axes = [1]}
  %big = compare(%c, 16777216) {kind = gt}
  %k = select(%flag, %c, neg(%x))
  %keep = select(%big, %k, -1)
  %h = cast(%c) {to = f32}
  %z = select(%flag, %h, -inf)
  return %s, %keep, %big, %z
}";
    let src = src.replace("neg(%x)", "%x");
    let f = check(&src);
    assert_eq!(jpu_testsuite::verify_everywhere(&f, &src, 3), 0.0);
    // Integer division truncates toward zero, and x / 0 is 0 (chip and evaluator).
    let div = "func @d(%x: i32[4, 16], %y: i32[16], %z: i8[4, 16]) -> (i32[4, 16], i8[4, 16]) {
  %q = div(%x, %y)
  %r = div(%z, -3)
  return %q, %r
}";
    let f = check(div);
    assert_eq!(jpu_testsuite::verify_everywhere(&f, div, 4), 0.0);
    let values = jalc::eval::eval(
        &f,
        &[
            jalc::eval::Tensor::from_values(f.node(jalc::ir::ValueId(0)).ty.clone(), &[-7.0; 64]),
            jalc::eval::Tensor::from_values(f.node(jalc::ir::ValueId(1)).ty.clone(), &[2.0, 0.0, -2.0, 7.0].repeat(4)),
            jalc::eval::Tensor::from_values(f.node(jalc::ir::ValueId(2)).ty.clone(), &[-128.0; 64]),
        ],
    )
    .unwrap();
    assert_eq!(values[0].data[..4], [-3.0, 0.0, 3.0, -1.0]);
    assert_eq!(values[1].data[0], 42.0);
}

/// What the row kernels do not cover is refused with the op and the reason.
#[test]
fn row_ops_beyond_the_kernels_say_what_and_why() {
    let cases = [(
        "func @f(%x: f32[2, 20000]) -> f32[2, 20000] {\n  %y = softmax(%x) {axis = 1}\n  return %y\n}",
        "rows of 20000 elements do not fit one SRAM partition",
    )];
    let t = Target::builtin("jpu1").unwrap();
    for (src, want) in cases {
        let f = check(src);
        let err = match jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()) {
            Ok(_) => panic!("compiled:\n{src}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{err}\nwanted: {want}");
    }
}

/// `attention(q, k, v)` over `[hq, sq, d]` queries and `[hk, sk, d]` keys/values.
fn attention_src(dtype: &str, hq: u64, hk: u64, sq: u64, sk: u64, d: u64, causal: bool) -> String {
    format!(
        "func @attn(%q: {dtype}[{hq}, {sq}, {d}], %k: {dtype}[{hk}, {sk}, {d}], %v: {dtype}[{hk}, {sk}, {d}]) -> {dtype}[{hq}, {sq}, {d}] {{
           %o = attention(%q, %k, %v) {{causal = {causal}}}
           return %o
         }}"
    )
}

fn verify_attention(target: &str, src: &str) -> jalc::verify::Verification {
    let f = check(src);
    let t = Target::builtin(target).unwrap();
    let v = jalc::verify::verify(&f, &t, 7).unwrap_or_else(|e| panic!("{target}: {e:?}\n{src}"));
    assert!(v.passed, "{target}: {:?} (max abs {})\n{src}", v.first_mismatch, v.max_abs_error);
    v
}

/// The fused attention kernel against the reference: causal and not, head dims 64
/// and 128, sequences that are not multiples of the tile, grouped-query ratios 1,
/// 4 and 8, on both targets. f32 operands leave only f32 rounding (so a wrong
/// mask or rescale cannot hide in the tolerance); bf16 ones use the attention
/// tolerance of docs/testing.md.
#[test]
fn attention_kernel_verifies_on_both_targets() {
    for target in ["jpu-tiny", "jpu1"] {
        for (hq, hk) in [(1, 1), (4, 1), (8, 1), (8, 2)] {
            for d in [64, 128] {
                for causal in [false, true] {
                    let v = verify_attention(target, &attention_src("f32", hq, hk, 77, 77, d, causal));
                    assert!(v.max_abs_error < 1e-5, "{target} {hq}/{hk} d {d}: {}", v.max_abs_error);
                    verify_attention(target, &attention_src("bf16", hq, hk, 77, 77, d, causal));
                }
            }
        }
        // Long keys: streamed (jpu-tiny) or resident (jpu1); decode rows; causal with
        // more keys than queries; more keys than one jpu1 block (online softmax
        // across 1024-key blocks).
        for (hq, hk, sq, sk, d) in
            [(4, 1, 1000, 1000, 64), (8, 1, 1, 1000, 128), (4, 4, 5, 1000, 128), (2, 1, 130, 2100, 128)]
        {
            for causal in [false, true] {
                let v = verify_attention(target, &attention_src("f32", hq, hk, sq, sk, d, causal));
                assert!(v.max_abs_error < 1e-5, "{target} {hq}/{hk} {sq}x{sk}: {}", v.max_abs_error);
                verify_attention(target, &attention_src("bf16", hq, hk, sq, sk, d, causal));
            }
        }
    }
}

/// Attention written out as frameworks export it: `q [.., Hq, S, D]`, `k` and `v`
/// `[.., Hk, S, D]` (a KV head dim of 1 broadcasts: grouped-query heads), scores
/// in f32, a scale, optionally the causal mask from iotas, softmax, cast, PV.
fn written_out(q_dims: &[u64], kv_heads: u64, scale: f64, causal: bool) -> String {
    let r = q_dims.len();
    let s = q_dims[r - 2];
    let list = |v: &[u64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
    let mut kv = q_dims.to_vec();
    kv[r - 3] = kv_heads;
    let mut scores = q_dims.to_vec();
    scores[r - 1] = s;
    let perm: Vec<u64> = (0..r as u64 - 2).chain([r as u64 - 1, r as u64 - 2]).collect();
    let (mask, probs_of) = if causal {
        (
            format!(
                "%i = iota() {{axis = 0}} : i32[{s}, {s}]\n  %j = iota() {{axis = 1}} : i32[{s}, {s}]\n  %keep = compare(%j, %i) {{kind = le}}\n  %zm = select(%keep, %z, -inf)"
            ),
            "%zm",
        )
    } else {
        (String::new(), "%z")
    };
    let (q, kv, scores, perm) = (list(q_dims), list(&kv), list(&scores), list(&perm));
    format!(
        "func @attn(%q: bf16[{q}], %k: bf16[{kv}], %v: bf16[{kv}]) -> bf16[{q}] {{
  %kt = transpose(%k) {{perm = [{perm}]}}
  %sc = matmul(%q, %kt) : f32[{scores}]
  %z = mul(%sc, {scale:?})
  {mask}
  %p = softmax({probs_of}) {{axis = -1}}
  %pb = cast(%p) {{to = bf16}}
  %o = matmul(%pb, %v)
  return %o
}}"
    )
}

/// Attention written out (as frameworks export it, and causal through iota/compare/
/// select) compiles to the one fused kernel, verifies against the written-out
/// reference, and runs in exactly the cycles of the explicit `attention` op.
#[test]
fn written_out_attention_compiles_to_the_fused_kernel() {
    let composite = |causal: bool| written_out(&[4, 77, 64], 4, 0.125, causal);
    let explicit = |causal: bool| {
        format!(
            "func @attn(%q: bf16[4, 77, 64], %k: bf16[4, 77, 64], %v: bf16[4, 77, 64]) -> bf16[4, 77, 64] {{
               %o = attention(%q, %k, %v) {{causal = {causal}, scale = 0.125}}
               return %o
             }}"
        )
    };
    for target in ["jpu-tiny", "jpu1"] {
        let t = Target::builtin(target).unwrap();
        for causal in [false, true] {
            let written = check(&composite(causal));
            let c = jalc::driver::compile(&written, &t, &jalc::driver::Options::o2()).unwrap();
            let kinds: Vec<&str> = c.kernels.iter().map(|k| k.kind()).collect();
            assert_eq!(kinds, ["attention"], "{target} causal {causal}");
            let a = verify_attention(target, &composite(causal));
            let b = verify_attention(target, &explicit(causal));
            assert_eq!(a.report.cycles, b.report.cycles, "{target} causal {causal}");
        }
    }
}

/// Keys that do not fit SRAM stream through in blocks; K is transposed once into
/// HBM scratch by a kernel of its own and every query tile loads K^T blocks.
#[test]
fn streamed_attention_loads_k_transposed_once() {
    let t = Target::builtin("jpu-tiny").unwrap();
    for (dtype, causal) in [("f32", true), ("bf16", false)] {
        let src = attention_src(dtype, 4, 2, 300, 1000, 64, causal);
        let c = jalc::driver::compile(&check(&src), &t, &jalc::driver::Options::o2()).unwrap();
        let kinds: Vec<&str> = c.kernels.iter().map(|k| k.kind()).collect();
        assert_eq!(kinds, ["transpose", "attention"]);
        assert!(jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[]).contains("(K/V streamed per block)"));
        assert!(!c.tiles.to_string().contains("transpose k2."), "no per-window K transposes");
        let v = verify_attention("jpu-tiny", &src);
        if dtype == "f32" {
            assert!(v.max_abs_error < 1e-5, "{}", v.max_abs_error);
        }
    }
}

/// The decode path (transposed scores, grouped heads in one tile) is chosen for
/// up to 16 query rows per head and verifies: causal or not, keys that are not a
/// multiple of the chunk (the causal limit inside the last, partial chunk),
/// ratios 1, 4, 8.
#[test]
fn decode_path_is_chosen_and_verifies() {
    let cases: [(&str, u64, u64, u64, u64, u64, bool); 8] = [
        ("jpu-tiny", 8, 2, 1, 70, 32, true),
        ("jpu-tiny", 4, 4, 3, 77, 64, false),
        ("jpu-tiny", 4, 1, 5, 77, 32, true),
        ("jpu1", 8, 2, 16, 300, 128, true),
        ("jpu1", 8, 1, 1, 1000, 128, true),
        ("jpu1", 32, 8, 1, 300, 64, false),
        ("jpu1", 4, 4, 5, 1000, 128, false),
        ("jpu1", 16, 2, 2, 129, 128, false),
    ];
    for (target, hq, hk, sq, sk, d, causal) in cases {
        let t = Target::builtin(target).unwrap();
        for dtype in ["f32", "bf16"] {
            let src = attention_src(dtype, hq, hk, sq, sk, d, causal);
            let c = jalc::driver::compile(&check(&src), &t, &jalc::driver::Options::o2()).unwrap();
            let listing = jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[]);
            assert!(listing.contains("decode (transposed scores)"), "{target}:\n{listing}");
            let v = verify_attention(target, &src);
            if dtype == "f32" {
                assert!(v.max_abs_error < 1e-5, "{target} {hq}/{hk} {sq}x{sk}: {}", v.max_abs_error);
            }
        }
    }
}

/// Masks built from iotas are affine selects inside the kernel that owns the
/// select: in a GEMM epilogue, in an elementwise chain whose row blocks stop at
/// matrix boundaries (50 rows per matrix against 32 and 128 partitions), with
/// the kept value on either side; bit-exact at -O0 (written-out attention
/// unfused) and verified at -O2 (fused).
#[test]
fn iota_masks_are_affine_selects() {
    let src = "func @f(%q: bf16[2, 40, 32], %k: bf16[2, 40, 32], %v: bf16[2, 40, 24], %x: f32[3, 50, 70]) -> (bf16[2, 40, 24], f32[3, 50, 70]) {
      %kt = transpose(%k) {perm = [0, 2, 1]}
      %s = matmul(%q, %kt) : f32[2, 40, 40]
      %z = mul(%s, 0.125)
      %i = iota() {axis = 0} : i32[40, 40]
      %j = iota() {axis = 1} : i32[40, 40]
      %keep = compare(%j, %i) {kind = le}
      %zm = select(%keep, %z, -inf)
      %p = softmax(%zm) {axis = -1}
      %pb = cast(%p) {to = bf16}
      %o = matmul(%pb, %v)
      %a = iota() {axis = 1} : i32[1, 50, 70]
      %b = iota() {axis = 2} : i32[1, 50, 70]
      %c = compare(%a, %b) {kind = gt}
      %y = exp(%x)
      %w = select(%c, 0.5, %y)
      %e = compare(%b, 33) {kind = eq}
      %w2 = select(%e, %w, 7.0)
      return %o, %w2
    }";
    let f = check(src);
    for target in ["jpu-tiny", "jpu1"] {
        let t = Target::builtin(target).unwrap();
        for level in [0, 2] {
            let v = jalc::verify::verify_with(&f, &t, 9, &jalc::driver::Options::at(level))
                .unwrap_or_else(|e| panic!("{target}: {e:?}"));
            assert!(v.passed, "{target} -O{level}: {:?}", v.first_mismatch);
            if level == 0 {
                assert_eq!(v.max_abs_error, 0.0, "{target}");
            }
        }
    }
    // In a GEMM's epilogue: a lower-triangular product.
    let tri = check(
        "func @t(%a: bf16[70, 64], %b: bf16[64, 90]) -> f32[70, 90] {
           %c = matmul(%a, %b) : f32[70, 90]
           %i = iota() {axis = 0} : i32[70, 90]
           %j = iota() {axis = 1} : i32[70, 90]
           %keep = compare(%i, %j) {kind = ge}
           %m = select(%keep, %c, 0.0)
           return %m
         }",
    );
    for target in ["jpu-tiny", "jpu1"] {
        let t = Target::builtin(target).unwrap();
        let c = jalc::driver::compile(&tri, &t, &jalc::driver::Options::o2()).unwrap();
        assert_eq!(c.kernels.iter().map(|k| k.kind()).collect::<Vec<_>>(), ["gemm"]);
        let v = jalc::verify::verify(&tri, &t, 1).unwrap();
        assert!(v.passed && v.max_abs_error == 0.0, "{target}: {:?}", v.first_mismatch);
    }
    // Selects that are not affine masks materialise their condition (an i1
    // stored as i8) and select by it on the VE, bit-exactly.
    for body in [
        "%c = compare(%x, %y) {kind = lt}\n  %s = select(%c, %x, 0.0)",
        "%i = iota() {axis = 0} : i32[8, 16]\n  %c = compare(%i, 3) {kind = lt}\n  %s = select(%c, %x, %y)",
    ] {
        let src = format!("func @f(%x: f32[8, 16], %y: f32[8, 16]) -> f32[8, 16] {{\n  {body}\n  return %s\n}}");
        assert_eq!(jpu_testsuite::verify_everywhere(&check(&src), &src, 4), 0.0, "{src}");
    }
}

/// An attention mask or bias operand: a key-padding mask built the BERT way
/// from an i1 tensor, and a per-head bias with causal masking and grouped
/// heads, over several KV blocks; the written-out form (scores plus mask) fuses
/// into the op. Verified on both targets at -O0 and -O2.
#[test]
fn attention_masks_are_added_in_the_kernel() {
    let src = "func @masked(%q: bf16[2, 4, 150, 32], %k: bf16[2, 2, 300, 32], %v: bf16[2, 2, 300, 32], %keep: i1[2, 1, 1, 300], %bias: f32[4, 150, 300]) -> (bf16[2, 4, 150, 32], bf16[2, 4, 150, 32]) {
  %kf = cast(%keep) {to = f32}
  %inv = sub(1.0, %kf)
  %m = mul(%inv, -10000.0)
  %o = attention(%q, %k, %v, %m)
  %c = attention(%q, %k, %v, %bias) {causal = true}
  return %o, %c
}";
    let f = check(src);
    jpu_testsuite::verify_everywhere(&f, src, 2);
    // The key-padding mask is added on the PE; the per-query bias on the VE.
    let t = Target::builtin("jpu1").unwrap();
    let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).unwrap();
    let plans: Vec<String> = c.kernels.iter().filter(|k| k.kind() == "attention").map(|k| k.describe(&t)).collect();
    assert_eq!(plans.iter().filter(|d| d.contains("mask on the PE")).count(), 1, "{plans:#?}");
    let written = "func @f(%q: bf16[2, 4, 64, 32], %k: bf16[2, 4, 64, 32], %v: bf16[2, 4, 64, 32], %mask: f32[2, 1, 1, 64]) -> bf16[2, 4, 64, 32] {
  %kt = transpose(%k) {perm = [0, 1, 3, 2]}
  %s = matmul(%q, %kt) : f32[2, 4, 64, 64]
  %z = mul(%s, 0.125)
  %zm = add(%z, %mask)
  %p = softmax(%zm) {axis = -1}
  %pb = cast(%p) {to = bf16}
  %o = matmul(%pb, %v)
  return %o
}";
    let f = check(written);
    jpu_testsuite::verify_everywhere(&f, written, 2);
    let c = jalc::driver::compile(&f, &Target::builtin("jpu1").unwrap(), &jalc::driver::Options::o2()).unwrap();
    assert_eq!(c.kernels.iter().map(|k| k.kind()).collect::<Vec<_>>(), ["attention"]);
    // A mask added before the scale is not the fused op's (it adds after).
    let before =
        written.replace("%z = mul(%s, 0.125)\n  %zm = add(%z, %mask)", "%z = add(%s, %mask)\n  %zm = mul(%z, 0.125)");
    let c = jalc::driver::compile(&check(&before), &Target::builtin("jpu1").unwrap(), &jalc::driver::Options::o2())
        .unwrap();
    assert!(!c.kernels.iter().any(|k| k.kind() == "attention"), "{before}");
}

/// Short heads whose head dims fit the `Q . K^T` contraction together share one
/// K^T transpose and evacuation per window: 6 heads of 16 per pack without a
/// mask on jpu1 (12 heads, so not 8 or 7: only whole packs), and with a
/// key-padding mask 4, so that no pack straddles two batches' mask rows. Both
/// verify race-checked and strict on both targets (jpu-tiny packs 2 and 1).
#[test]
fn short_heads_share_a_k_transpose() {
    let plain =
        "func @f(%q: bf16[3, 4, 20, 16], %k: bf16[3, 4, 20, 16], %v: bf16[3, 4, 20, 16]) -> bf16[3, 4, 20, 16] {
  %o = attention(%q, %k, %v)
  return %o
}";
    let masked = "func @f(%q: bf16[3, 4, 20, 16], %k: bf16[3, 4, 20, 16], %v: bf16[3, 4, 20, 16], %keep: i1[3, 1, 1, 20]) -> bf16[3, 4, 20, 16] {
  %kf = cast(%keep) {to = f32}
  %inv = sub(1.0, %kf)
  %m = mul(%inv, -10000.0)
  %o = attention(%q, %k, %v, %m)
  return %o
}";
    let t = Target::builtin("jpu1").unwrap();
    for (src, packed) in [(plain, "K^T of 6 heads per transpose"), (masked, "K^T of 4 heads per transpose")] {
        let f = check(src);
        jpu_testsuite::verify_everywhere(&f, src, 5);
        let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).unwrap();
        let plans: Vec<String> = c.kernels.iter().filter(|k| k.kind() == "attention").map(|k| k.describe(&t)).collect();
        assert!(plans.len() == 1 && plans[0].contains(packed), "{plans:#?}");
    }
}

/// Masks built from the most negative f32 (as frameworks do) stay finite in the
/// kernel: masked keys get no weight, and a row whose keys are all masked
/// averages them, as the reference does (no NaN, no inf). Batch 0 keeps its
/// first 30 keys, batch 1 none.
#[test]
fn extreme_key_padding_masks_stay_finite() {
    let src = "func @f(%q: bf16[2, 4, 40, 32], %k: bf16[2, 4, 40, 32], %v: bf16[2, 4, 40, 32]) -> bf16[2, 4, 40, 32] {
  %b = iota() {axis = 0} : i32[2, 1, 1, 40]
  %key = iota() {axis = 3} : i32[2, 1, 1, 40]
  %late = compare(%key, 30) {kind = ge}
  %second = compare(%b, 1) {kind = eq}
  %lf = cast(%late) {to = f32}
  %m = mul(%lf, -3.4028235e38)
  %mb = select(%second, -3.4028235e38, %m)
  %o = attention(%q, %k, %v, %mb)
  return %o
}";
    let f = check(src);
    for target in ["jpu-tiny", "jpu1"] {
        let t = Target::builtin(target).unwrap();
        let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).unwrap();
        assert!(c.kernels.iter().any(|k| k.describe(&t).contains("mask on the PE")), "{target}");
    }
    jpu_testsuite::verify_everywhere(&f, src, 5);
    // With -inf instead, the fully masked batch is NaN, as in the reference.
    let inf = src
        .replace("%m = mul(%lf, -3.4028235e38)", "%zero = mul(%lf, 0.0)\n  %m = select(%late, -inf, %zero)")
        .replace("%mb = select(%second, -3.4028235e38, %m)", "%mb = select(%second, -inf, %m)");
    jpu_testsuite::verify_everywhere(&check(&inf), &inf, 5);
}

/// What the attention kernel does not cover is refused with the op and the reason.
#[test]
fn attention_beyond_the_kernel_says_what_and_why() {
    let t = Target::builtin("jpu1").unwrap();
    let cases = [
        (
            "func @f(%q: bf16[1, 9, 64], %k: bf16[1, 9, 64], %v: bf16[1, 9, 64]) -> bf16[1, 9, 64] {\n  %o = attention(%q, %k, %v) {scale = -0.5}\n  return %o\n}",
            "needs a positive scale",
        ),
        (
            "func @f(%q: f8e4m3[1, 9, 64], %k: f8e4m3[1, 9, 64], %v: f8e4m3[1, 9, 64]) -> f8e4m3[1, 9, 64] {\n  %o = attention(%q, %k, %v)\n  return %o\n}",
            "on f8e4m3 operands is not supported yet",
        ),
        (
            "func @f(%q: bf16[1, 9, 64], %k: bf16[1, 9, 64], %v: bf16[1, 9, 1024]) -> bf16[1, 9, 1024] {\n  %o = attention(%q, %k, %v)\n  return %o\n}",
            "the value head dim 1024 is wider than a PSUM bank",
        ),
    ];
    for (src, want) in cases {
        let err =
            jalc::driver::compile(&check(src), &t, &jalc::driver::Options::o2()).err().expect("refused").to_string();
        assert!(err.contains(want), "{err}\nwanted: {want}");
    }
}

/// Grouped-query attention written out with a broadcast KV head (ratios 4 and 8,
/// causal by an iota mask or not, head dims 64 and 128) fuses and verifies
/// against the written-out reference on both targets.
#[test]
fn written_out_grouped_query_attention_verifies() {
    for (target, g, s, d, causal) in [
        ("jpu-tiny", 4, 77, 64, true),
        ("jpu-tiny", 8, 77, 128, false),
        ("jpu1", 4, 300, 128, true),
        ("jpu1", 8, 77, 64, false),
    ] {
        let src = written_out(&[2, g, s, d], 1, 1.0 / (d as f64).sqrt(), causal);
        let t = Target::builtin(target).unwrap();
        let c = jalc::driver::compile(&check(&src), &t, &jalc::driver::Options::o2()).unwrap();
        let kinds: Vec<&str> = c.kernels.iter().map(|k| k.kind()).collect();
        assert_eq!(kinds, ["attention"], "{target}\n{src}");
        verify_attention(target, &src);
    }
}

/// `const` splats are elementwise kernels that set their blocks instead of
/// loading them (and feed the chain that follows, e.g. an additive causal mask);
/// a `[M, N]` operand broadcast over batch dims (a position bias shared by heads)
/// is an epilogue or chain operand read per matrix. Bit-exact at -O0; the
/// additive-mask attention fuses at -O2.
#[test]
fn const_splats_and_matrix_operands() {
    let src = "func @f(%q: bf16[2, 40, 32], %k: bf16[2, 40, 32], %v: bf16[2, 40, 24], %x: f32[3, 5], %bias: f32[50, 70], %y: f32[2, 3, 50, 70], %a: bf16[2, 3, 50, 16], %b: bf16[16, 70]) -> (bf16[2, 40, 24], f32[3, 5], bf16[4, 6], f32[2, 3, 50, 70], f32[2, 3, 50, 70]) {
      %kt = transpose(%k) {perm = [0, 2, 1]}
      %s = matmul(%q, %kt) : f32[2, 40, 40]
      %i = iota() {axis = 0} : i32[40, 40]
      %j = iota() {axis = 1} : i32[40, 40]
      %keep = compare(%i, %j) {kind = ge}
      %zero = const() {value = 0.0} : f32[40, 40]
      %mask = select(%keep, %zero, -inf)
      %sm = add(%s, %mask)
      %z = mul(%sm, 0.125)
      %p = softmax(%z) {axis = -1}
      %pb = cast(%p) {to = bf16}
      %o = matmul(%pb, %v)
      %c = const() {value = 2.5} : f32[3, 5]
      %xc = add(%x, %c)
      %h = const() {value = 0.1} : bf16[4, 6]
      %yb = add(%y, %bias)
      %m = matmul(%a, %b) : f32[2, 3, 50, 70]
      %mb = sub(%bias, %m)
      return %o, %xc, %h, %yb, %mb
    }";
    let f = check(src);
    for target in ["jpu-tiny", "jpu1"] {
        let t = Target::builtin(target).unwrap();
        for level in [0, 2] {
            let v = jalc::verify::verify_with(&f, &t, 6, &jalc::driver::Options::at(level))
                .unwrap_or_else(|e| panic!("{target}: {e:?}"));
            assert!(v.passed, "{target} -O{level}: {:?}", v.first_mismatch);
            if level == 0 {
                assert_eq!(v.max_abs_error, 0.0, "{target}");
            }
        }
        let fused = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).unwrap();
        assert!(fused.kernels.iter().any(|k| k.kind() == "attention"), "{target}");
    }
}

/// A chain computed at a small shape (a key-padding mask from an integer
/// input) feeding an op that broadcasts it to a larger one (the scores) ends
/// there and stores; the broadcasting op starts the next kernel (found by the
/// ONNX importer: exported BERT masks in bf16 are this program).
#[test]
fn a_chain_ends_where_its_value_is_broadcast() {
    let src = "func @f(%q: bf16[2, 4, 24, 8], %k: bf16[2, 4, 8, 24], %keep: i32[2, 1, 1, 24]) -> bf16[2, 4, 24, 24] {
  %kf = cast(%keep) {to = bf16}
  %inv = sub(1.0, %kf)
  %m = mul(%inv, -3.3895313892515355e38)
  %s = matmul(%q, %k)
  %z = div(%s, 2.8284271247461903)
  %a = add(%z, %m)
  %p = softmax(%a) {axis = 3}
  return %p
}";
    jpu_testsuite::verify_everywhere(&check(src), src, 3);
}
