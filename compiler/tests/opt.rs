//! The optimizer: each rule family from a start program to its goal (the
//! optimized program's canonical text), the power-of-two guard, DAG-aware
//! extraction, and the limits that bound compile time.

use jalc::front::tir;
use jalc::ir::printer;
use jalc::opt::{self, Limits};
use jpu_isa::Target;

fn optimize(src: &str) -> String {
    let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("t.tir", src, &d)));
    let t = Target::builtin("jpu1").unwrap();
    let o = opt::optimize(&f, &t, Limits::default()).unwrap();
    assert!(
        o.cost_after <= o.cost_before + 1e-6,
        "extraction made the program dearer: {} -> {}",
        o.cost_before,
        o.cost_after
    );
    printer::print(&o.func)
}

fn body(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("  ")).map(str::trim).collect()
}

#[test]
fn transpose_folding_turns_transposes_into_layouts() {
    let out = optimize(
        "func @f(%x: bf16[64, 256], %w: bf16[128, 256]) -> f32[64, 128] {
           %wt = transpose(%w) {perm = [1, 0]}
           %y = matmul(%x, %wt) : f32[64, 128]
           return %y
         }",
    );
    assert_eq!(
        body(&out),
        ["%y = matmul(%x, %w) {transpose_a = false, transpose_b = true} : f32[64, 128]", "return %y"]
    );
    let out = optimize(
        "func @f(%a: f32[2, 32, 16], %b: f32[2, 8, 32]) -> f32[2, 16, 8] {
           %at = transpose(%a) {perm = [0, 2, 1]}
           %bt = transpose(%b) {perm = [0, 2, 1]}
           %y = matmul(%at, %bt)
           return %y
         }",
    );
    assert_eq!(
        body(&out),
        ["%y = matmul(%a, %b) {transpose_a = true, transpose_b = true} : f32[2, 16, 8]", "return %y"]
    );
}

#[test]
fn reshapes_compose_and_cancel() {
    // [4, 6] -> [24] -> [4, 6] is the tensor itself; [2, 12] -> [24] -> [3, 8] is one reshape.
    let out = optimize(
        "func @f(%x: bf16[4, 6], %w: bf16[6, 8], %z: f32[2, 12]) -> (f32[4, 8], f32[3, 8]) {
           %flat = reshape(%x) {shape = [24]}
           %back = reshape(%flat) {shape = [4, 6]}
           %y = matmul(%back, %w) : f32[4, 8]
           %zf = reshape(%z) {shape = [24]}
           %zr = reshape(%zf) {shape = [3, 8]}
           return %y, %zr
         }",
    );
    assert_eq!(
        body(&out),
        [
            "%y = matmul(%x, %w) {transpose_a = false, transpose_b = false} : f32[4, 8]",
            "%zr = reshape(%z) {shape = [3, 8]} : f32[3, 8]",
            "return %y, %zr"
        ]
    );
}

#[test]
fn double_transposes_cancel() {
    let out = optimize(
        "func @f(%x: f32[8, 4], %y: f32[4, 8]) -> f32[8, 8] {
           %a = transpose(%x) {perm = [1, 0]}
           %b = transpose(%a) {perm = [1, 0]}
           %c = matmul(%b, %y)
           return %c
         }",
    );
    assert_eq!(body(&out), ["%c = matmul(%x, %y) {transpose_a = false, transpose_b = false} : f32[8, 8]", "return %c"]);
}

#[test]
fn power_of_two_scales_move_into_the_matmul_epilogue_and_others_stay() {
    // A scaled operand needs an elementwise pass of its own; the same power-of-two
    // scale on the product fuses into the GEMM's epilogue (exact: scaling by 2^k
    // commutes with rounding barring overflow).
    let src = |scale: &str| {
        format!(
            "func @f(%q: bf16[8, 128, 64], %k: bf16[8, 64, 256]) -> f32[8, 128, 256] {{
               %qs = mul(%q, {scale})
               %s = matmul(%qs, %k) : f32[8, 128, 256]
               return %s
             }}"
        )
    };
    let out = optimize(&src("0.125"));
    assert_eq!(
        body(&out),
        [
            "%o1 = matmul(%q, %k) {transpose_a = false, transpose_b = false} : f32[8, 128, 256]",
            "%s = mul(%o1, 0.125) : f32[8, 128, 256]",
            "return %s"
        ]
    );
    // 0.1 is not exact in bf16: moving it would change the result, so it stays.
    let out = optimize(&src("0.1"));
    assert!(out.contains("%qs = mul(%q, 0.1)"), "{out}");
    // A scale already on the product stays there.
    let out = optimize(
        "func @f(%q: bf16[8, 128, 64], %k: bf16[8, 64, 256]) -> f32[8, 128, 256] {
           %s = matmul(%q, %k) : f32[8, 128, 256]
           %z = mul(%s, 0.125)
           return %z
         }",
    );
    assert!(out.contains("%z = mul(%s, 0.125)"), "{out}");
}

#[test]
fn low_rank_chains_reassociate() {
    // x . (A . B) with rank-16 A, B: 2*64*1024*1024 + ... against (x . A) . B.
    let out = optimize(
        "func @f(%x: f32[64, 1024], %a: f32[1024, 16], %b: f32[16, 1024]) -> f32[64, 1024] {
           %ab = matmul(%a, %b)
           %y = matmul(%x, %ab)
           return %y
         }",
    );
    assert_eq!(
        body(&out),
        [
            "%o1 = matmul(%x, %a) {transpose_a = false, transpose_b = false} : f32[64, 16]",
            "%y = matmul(%o1, %b) {transpose_a = false, transpose_b = false} : f32[64, 1024]",
            "return %y"
        ]
    );
    // A bf16 chain keeps its order: reassociating would round a different bf16
    // intermediate and move results far beyond the verification tolerance.
    let bf16 = optimize(
        "func @f(%x: bf16[64, 1024], %a: bf16[1024, 16], %b: bf16[16, 1024]) -> bf16[64, 1024] {
           %ab = matmul(%a, %b)
           %y = matmul(%x, %ab)
           return %y
         }",
    );
    assert!(bf16.contains("%y = matmul(%x, %ab)"), "{bf16}");
}

#[test]
fn reassociation_keeps_operand_dtypes_equal() {
    // The low-rank product accumulates to f32 from bf16 operands; (x . A) . B
    // would be far cheaper but would feed f32 x beside bf16 A into one matmul,
    // which does not type-check, so the chain stays as written.
    let src = "func @f(%x: f32[64, 1024], %a: bf16[1024, 16], %b: bf16[16, 1024]) -> f32[64, 1024] {
           %ab = matmul(%a, %b) : f32[1024, 1024]
           %y = matmul(%x, %ab) : f32[64, 1024]
           return %y
         }";
    let out = optimize(src);
    tir::parse_and_check(&out).unwrap_or_else(|d| panic!("{}", tir::render("opt.tir", &out, &d)));
    assert_eq!(
        body(&out),
        [
            "%ab = matmul(%a, %b) {transpose_a = false, transpose_b = false} : f32[1024, 1024]",
            "%y = matmul(%x, %ab) {transpose_a = false, transpose_b = false} : f32[64, 1024]",
            "return %y"
        ]
    );
}

#[test]
fn extraction_counts_shared_subterms_once() {
    // The transposed weight is a result anyway, so the matmul reuses it (a tree
    // extractor would count it twice and pick the layout variant with PE transposes).
    let out = optimize(
        "func @f(%x: bf16[128, 512], %w: bf16[512, 512]) -> (f32[128, 512], bf16[512, 512]) {
           %wt = transpose(%w) {perm = [1, 0]}
           %y = matmul(%x, %wt) : f32[128, 512]
           return %y, %wt
         }",
    );
    assert_eq!(
        body(&out),
        [
            "%wt = transpose(%w) {perm = [1, 0]} : bf16[512, 512]",
            "%y = matmul(%x, %wt) {transpose_a = false, transpose_b = false} : f32[128, 512]",
            "return %y, %wt"
        ]
    );
}

#[test]
fn other_ops_pass_through_and_limits_bound_the_search() {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../testsuite/cases/tir/norms.tir")).unwrap();
    let f = tir::parse_and_check(&src).unwrap();
    let t = Target::builtin("jpu1").unwrap();
    let o = opt::optimize(&f, &t, Limits::default()).unwrap();
    assert_eq!(printer::print(&o.func), printer::print(&f), "nothing to rewrite: unchanged");
    let tight = Limits { nodes: 10, iterations: 1, ..Limits::default() };
    let big = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/attention.tir")).unwrap();
    let f = tir::parse_and_check(&big).unwrap();
    let o = opt::optimize(&f, &t, tight).unwrap();
    assert!(o.stop.contains("Limit") || o.stop.contains("Saturated"), "{}", o.stop);
}

/// Attention in the spellings frameworks use becomes the fused op; the tail after
/// `->` is the expected statement.
#[test]
fn attention_is_recognised_in_its_common_spellings() {
    let fused = |causal: bool, scale: &str, ty: &str| {
        vec![format!("%o = attention(%q, %k, %v) {{causal = {causal}, scale = {scale}}} : {ty}"), "return %o".into()]
    };
    let head = "func @f(%q: bf16[2, 64, 32], %k: bf16[2, 64, 32], %v: bf16[2, 64, 16]) -> bf16[2, 64, 16] {";
    let cases: Vec<(String, Vec<String>)> = vec![
        // As frameworks export it: transpose, f32 scores, mul by a literal, softmax op, cast.
        (
            format!(
                "{head}
               %kt = transpose(%k) {{perm = [0, 2, 1]}}
               %s = matmul(%q, %kt) : f32[2, 64, 64]
               %z = mul(%s, 0.125)
               %p = softmax(%z) {{axis = -1}}
               %pb = cast(%p) {{to = bf16}}
               %o = matmul(%pb, %v)
               return %o
             }}"
            ),
            fused(false, "0.125", "bf16[2, 64, 16]"),
        ),
        // Division by sqrt(d) on the left of nothing: div(scores, 5.656854...).
        (
            format!(
                "{head}
               %kt = transpose(%k) {{perm = [0, 2, 1]}}
               %s = matmul(%q, %kt) : f32[2, 64, 64]
               %z = div(%s, 4.0)
               %p = softmax(%z) {{axis = 2}}
               %pb = cast(%p) {{to = bf16}}
               %o = matmul(%pb, %v)
               return %o
             }}"
            ),
            fused(false, "0.25", "bf16[2, 64, 16]"),
        ),
        // Softmax spelled out; the literal on the left.
        (
            format!(
                "{head}
               %kt = transpose(%k) {{perm = [0, 2, 1]}}
               %s = matmul(%q, %kt) : f32[2, 64, 64]
               %z = mul(0.1, %s)
               %m = reduce_max(%z) {{axes = [2], keepdims = true}}
               %d = sub(%z, %m)
               %e = exp(%d)
               %t = reduce_sum(%e) {{axes = [2], keepdims = true}}
               %p = div(%e, %t)
               %pb = cast(%p) {{to = bf16}}
               %o = matmul(%pb, %v)
               return %o
             }}"
            ),
            fused(false, "0.1", "bf16[2, 64, 16]"),
        ),
        // Causal through iota/compare/select, masked after scaling.
        (
            format!(
                "{head}
               %kt = transpose(%k) {{perm = [0, 2, 1]}}
               %s = matmul(%q, %kt) : f32[2, 64, 64]
               %z = mul(%s, 0.125)
               %i = iota() {{axis = 0}} : i32[64, 64]
               %j = iota() {{axis = 1}} : i32[64, 64]
               %keep = compare(%j, %i) {{kind = le}}
               %zm = select(%keep, %z, -inf)
               %p = softmax(%zm) {{axis = -1}}
               %pb = cast(%p) {{to = bf16}}
               %o = matmul(%pb, %v)
               return %o
             }}"
            ),
            fused(true, "0.125", "bf16[2, 64, 16]"),
        ),
        // An added -inf mask, applied before the scale.
        (
            format!(
                "{head}
               %kt = transpose(%k) {{perm = [0, 2, 1]}}
               %s = matmul(%q, %kt) : f32[2, 64, 64]
               %i = iota() {{axis = 0}} : i32[64, 64]
               %j = iota() {{axis = 1}} : i32[64, 64]
               %keep = compare(%i, %j) {{kind = ge}}
               %zero = const() {{value = 0.0}} : f32[64, 64]
               %mask = select(%keep, %zero, -inf)
               %sm = add(%s, %mask)
               %z = mul(%sm, 0.125)
               %p = softmax(%z) {{axis = -1}}
               %pb = cast(%p) {{to = bf16}}
               %o = matmul(%pb, %v)
               return %o
             }}"
            ),
            fused(true, "0.125", "bf16[2, 64, 16]"),
        ),
    ];
    for (src, want) in &cases {
        let out = optimize(src);
        assert_eq!(body(&out), *want, "{src}");
    }
    // Grouped-query heads by broadcasting: 4 query heads per KV head.
    let out = optimize(
        "func @f(%q: bf16[2, 4, 16, 32], %k: bf16[2, 1, 40, 32], %v: bf16[2, 1, 40, 32]) -> bf16[2, 4, 16, 32] {
           %kt = transpose(%k) {perm = [0, 1, 3, 2]}
           %s = matmul(%q, %kt) : f32[2, 4, 16, 40]
           %z = mul(%s, 0.125)
           %p = softmax(%z) {axis = -1}
           %pb = cast(%p) {to = bf16}
           %o = matmul(%pb, %v)
           return %o
         }",
    );
    assert_eq!(body(&out), fused(false, "0.125", "bf16[2, 4, 16, 32]"));
}

/// What the fused op cannot express is left alone: bf16 scores (rounded before
/// the softmax), softmax over another axis, a negative scale (a power-of-two one
/// would fold into q exactly and fuse). An explicit mask tensor added to the
/// scores is the op's fourth operand.
#[test]
fn attention_lookalikes_are_not_fused() {
    let body_of = |scores: &str, mid: &str| {
        format!(
            "func @f(%q: bf16[2, 64, 32], %k: bf16[2, 64, 32], %v: bf16[2, 64, 16], %mask: f32[64, 64]) -> bf16[2, 64, 16] {{
               %kt = transpose(%k) {{perm = [0, 2, 1]}}
               %s = matmul(%q, %kt) : {scores}[2, 64, 64]
               {mid}
               %pb = cast(%p) {{to = bf16}}
               %o = matmul(%pb, %v)
               return %o
             }}"
        )
    };
    let masked = optimize(&body_of("f32", "%z = add(%s, %mask)\n %p = softmax(%z) {axis = -1}"));
    assert!(masked.contains("%o = attention(%q, %k, %v, %mask) {causal = false, scale = 1.0}"), "{masked}");
    let cases = [
        body_of("f32", "%z = mul(%s, -0.1)\n %p = softmax(%z) {axis = -1}"),
        body_of("f32", "%z = mul(%s, 0.125)\n %p = softmax(%z) {axis = 1}"),
        body_of("bf16", "%z = mul(%s, 0.125)\n %zf = cast(%z) {to = f32}\n %p = softmax(%zf) {axis = -1}"),
    ];
    for src in &cases {
        let out = optimize(src);
        assert!(!out.contains("attention("), "fused:\n{out}\nfrom:\n{src}");
    }
}

/// A scale applied to q before the scores: a power of two moves into the fused
/// op's scale exactly; any other stays a scaling of q (rounded where the program
/// rounds it) and the fused op scales by 1.
#[test]
fn attention_with_a_scaled_query() {
    let src = |c: &str| {
        format!(
            "func @f(%q: bf16[2, 64, 32], %k: bf16[2, 64, 32], %v: bf16[2, 64, 16]) -> bf16[2, 64, 16] {{
               %qs = mul(%q, {c})
               %kt = transpose(%k) {{perm = [0, 2, 1]}}
               %s = matmul(%qs, %kt) : f32[2, 64, 64]
               %p = softmax(%s) {{axis = -1}}
               %pb = cast(%p) {{to = bf16}}
               %o = matmul(%pb, %v)
               return %o
             }}"
        )
    };
    assert_eq!(
        body(&optimize(&src("0.125"))),
        ["%o = attention(%q, %k, %v) {causal = false, scale = 0.125} : bf16[2, 64, 16]", "return %o"]
    );
    assert_eq!(
        body(&optimize(&src("0.1"))),
        [
            "%qs = mul(%q, 0.1) : bf16[2, 64, 32]",
            "%o = attention(%qs, %k, %v) {causal = false, scale = 1.0} : bf16[2, 64, 16]",
            "return %o"
        ]
    );
}

/// Two literal scales merge when one is a power of two (exact), so written-out
/// attention scaled twice folds both into the fused op's scale; two scales
/// neither of which is a power of two stay apart.
#[test]
fn scales_merge_when_exact() {
    let out = optimize(
        "func @f(%x: f32[4, 8]) -> (f32[4, 8], f32[4, 8]) {
           %a = mul(%x, 0.1)
           %b = mul(%a, 2.0)
           %c = mul(%x, 0.1)
           %d = mul(%c, 0.3)
           return %b, %d
         }",
    );
    let lines = body(&out);
    assert!(lines.contains(&"%b = mul(%x, 0.2) : f32[4, 8]"), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("%d = mul(") && l.contains("0.3")), "{out}");
    let out = optimize(
        "func @f(%q: bf16[2, 64, 32], %k: bf16[2, 64, 32], %v: bf16[2, 64, 16]) -> bf16[2, 64, 16] {
           %kt = transpose(%k) {perm = [0, 2, 1]}
           %s = matmul(%q, %kt) : f32[2, 64, 64]
           %z = mul(%s, 0.25)
           %t = mul(%z, 0.5)
           %p = softmax(%t) {axis = -1}
           %pb = cast(%p) {to = bf16}
           %o = matmul(%pb, %v)
           return %o
         }",
    );
    assert_eq!(
        body(&out),
        ["%o = attention(%q, %k, %v) {causal = false, scale = 0.125} : bf16[2, 64, 16]", "return %o"]
    );
}

/// A long function is optimized region by region: each transposed-weight matmul
/// still folds (cuts fall where the fewest values cross, not inside a pattern),
/// names survive, a reshape round trip across a cut stays a value under its own
/// name, and every region saturates instead of hitting the node limit.
#[test]
fn long_programs_are_optimized_region_by_region() {
    let mut src = String::from("func @f(%x: f32[8, 16], %w: f32[16, 16]) -> (f32[8, 16], f32[8, 16]) {\n");
    let mut prev = "x".to_string();
    for i in 0..12 {
        src.push_str(&format!("  %wt{i} = transpose(%w) {{perm = [1, 0]}}\n"));
        src.push_str(&format!("  %m{i} = matmul(%{prev}, %wt{i})\n"));
        src.push_str(&format!("  %y{i} = tanh(%m{i})\n"));
        prev = format!("y{i}");
    }
    src.push_str("  %flat = reshape(%y0) {shape = [128]}\n  %back = reshape(%flat) {shape = [8, 16]}\n");
    src.push_str(&format!("  return %{prev}, %back\n}}\n"));
    let f = tir::parse_and_check(&src).unwrap();
    let t = Target::builtin("jpu1").unwrap();
    let limits = Limits { region_statements: 8, ..Limits::default() };
    let o = opt::optimize(&f, &t, limits).unwrap();
    assert_eq!(o.stop, "by region: Saturated x5");
    let text = printer::print(&o.func);
    for i in 0..12 {
        assert!(text.contains(&format!("%m{i} = matmul(")) && !text.contains(&format!("%wt{i} =")), "{text}");
    }
    assert_eq!(text.matches("transpose_b = true").count(), 12, "{text}");
    assert!(text.contains("%back = reshape(%y0) {shape = [8, 16]}"), "{text}");
    assert!(text.contains("return %y11, %back"), "{text}");
    assert!(o.cost_after < o.cost_before, "{} -> {}", o.cost_before, o.cost_after);
}
