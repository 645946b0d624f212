//! Layouts: `reshape`, `transpose` and `slice` between kernels move no data
//! where the kernels can read (or write) through them, and are copied where
//! they cannot. Every program is verified race-checked on both targets at -O0
//! and -O2 against the reference evaluator.

use jalc::driver::{compile, Compiled, Options};
use jalc::front::tir;
use jalc::kernels::attention::AttentionKernel;
use jpu_isa::Target;

fn parse(src: &str) -> jalc::ir::Func {
    tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)))
}

/// Verifies `src` everywhere (bit-exact when `exact`); returns its -O2 compile for jpu1.
fn verified(src: &str, exact: bool) -> Compiled {
    let f = parse(src);
    let max_abs = jpu_testsuite::verify_everywhere(&f, src, 7);
    assert!(!exact || max_abs == 0.0, "not exact ({max_abs})\n{src}");
    compile(&f, &Target::builtin("jpu1").unwrap(), &Options::o2()).unwrap()
}

fn kinds(c: &Compiled) -> Vec<&'static str> {
    c.kernels.iter().map(|k| k.kind()).collect()
}

fn attention(c: &Compiled) -> &AttentionKernel {
    c.kernels.iter().find_map(|k| k.as_any().downcast_ref::<AttentionKernel>()).expect("an attention kernel")
}

/// A Llama-style attention block as frameworks export it: projections,
/// reshape to heads, `transpose {perm = [0, 2, 1, 3]}`, grouped-query causal
/// attention, transpose back, reshape, output projection. The head split and
/// merge are read and written in place: no copy kernel, no transpose kernel.
#[test]
fn head_split_and_merge_fold_into_attention() {
    let src = "func @block(%x: bf16[2, 40, 64], %wq: bf16[64, 64], %wkv: bf16[64, 64], %wo: bf16[64, 64]) -> bf16[2, 40, 64] {
  %q = matmul(%x, %wq)
  %q4 = reshape(%q) {shape = [2, 40, 4, 16]}
  %qh = transpose(%q4) {perm = [0, 2, 1, 3]}
  %kv = matmul(%x, %wkv)
  %k = slice(%kv) {start = [0, 0, 0], stop = [2, 40, 32]}
  %v = slice(%kv) {start = [0, 0, 32], stop = [2, 40, 64]}
  %k4 = reshape(%k) {shape = [2, 40, 2, 16]}
  %v4 = reshape(%v) {shape = [2, 40, 2, 16]}
  %kh = transpose(%k4) {perm = [0, 2, 1, 3]}
  %vh = transpose(%v4) {perm = [0, 2, 1, 3]}
  %o = attention(%qh, %kh, %vh) {causal = true, scale = 0.25}
  %om = transpose(%o) {perm = [0, 2, 1, 3]}
  %o2 = reshape(%om) {shape = [2, 40, 64]}
  %y = matmul(%o2, %wo)
  return %y
}
";
    let c = verified(src, false);
    assert_eq!(kinds(&c), ["gemm", "gemm", "attention", "gemm"]);
    let a = &attention(&c).p;
    assert_eq!((a.q.tensor.as_str(), a.q.strides.as_slice()), ("q", &[2560, 16, 64, 1][..]));
    assert_eq!((a.k.tensor.as_str(), a.k.offset, a.v.offset), ("kv", 0, 32));
    assert_eq!((a.out.tensor.as_str(), a.out.strides.as_slice()), ("om", &[2560, 16, 64, 1][..]));
    // The merged heads are the output projection's operand as they are.
    let gemm = jpu_testsuite::gemm(&c.kernels[3..]).unwrap();
    assert_eq!(gemm.p.names[0], "om");
}

/// A decode step: one new token's query `[B, 1, H, D]` against a cache in
/// `[B, S, H_kv, D]`; the packed query heads of each group are one evenly
/// spaced box, so the decode path still applies.
#[test]
fn decode_reads_heads_in_place() {
    let src = "func @step(%q: f32[2, 1, 8, 16], %kc: f32[2, 48, 2, 16], %vc: f32[2, 48, 2, 16]) -> f32[2, 1, 8, 16] {
  %qh = transpose(%q) {perm = [0, 2, 1, 3]}
  %kh = transpose(%kc) {perm = [0, 2, 1, 3]}
  %vh = transpose(%vc) {perm = [0, 2, 1, 3]}
  %o = attention(%qh, %kh, %vh) {scale = 0.25}
  %om = transpose(%o) {perm = [0, 2, 1, 3]}
  return %om
}
";
    let c = verified(src, false);
    assert_eq!(kinds(&c), ["attention"]);
    let a = attention(&c);
    assert!(a.plan.decode, "{}", a.plan);
    assert_eq!(a.p.out.tensor, "om");
}

/// What kernels cannot read through is materialised by one copy kernel, and
/// only that: each case gives the number of copy kernels expected.
#[test]
fn views_kernels_cannot_read_are_copied() {
    let cases = [
        // A reshape of a transpose is not a strided view: the transpose is copied.
        (
            "%t = transpose(%x) {perm = [1, 0, 2]}\n  %r = reshape(%t) {shape = [4, 48]}\n  %y = neg(%r)",
            "f32[4, 48]",
            1,
        ),
        // Elementwise kernels read whole tensors: a slice at an offset is copied ...
        ("%s = slice(%x) {start = [1, 0, 0], stop = [3, 4, 8]}\n  %y = exp(%s)", "f32[2, 4, 8]", 1),
        // ... one from the start is the same bytes.
        ("%s = slice(%x) {start = [0, 0, 0], stop = [3, 4, 8]}\n  %y = exp(%s)", "f32[3, 4, 8]", 0),
        // A transpose and its inverse read the tensor as it is.
        (
            "%t = transpose(%x) {perm = [2, 0, 1]}\n  %u = transpose(%t) {perm = [1, 2, 0]}\n  %y = exp(%u)",
            "f32[6, 4, 8]",
            0,
        ),
        // A reshape of a kernel's result that is returned takes the result's name.
        ("%h = exp(%x)\n  %y = reshape(%h) {shape = [24, 8]}", "f32[24, 8]", 0),
        // A parameter's view that is returned is copied into the result.
        ("%y = reshape(%x) {shape = [48, 4]}", "f32[48, 4]", 1),
        // A strided view that is returned is copied.
        ("%h = exp(%x)\n  %y = transpose(%h) {perm = [2, 1, 0]}", "f32[8, 4, 6]", 1),
    ];
    for (body, out, copies) in cases {
        let src = format!("func @f(%x: f32[6, 4, 8]) -> {out} {{\n  {body}\n  return %y\n}}\n");
        let c = verified(&src, true);
        let n = kinds(&c).iter().filter(|k| **k == "copy").count();
        assert_eq!(n, copies, "{src}{}", c.kernels.iter().map(|k| k.statement() + "\n").collect::<String>());
        assert!(c.program.tensors.iter().any(|t| t.name == "y"), "the result keeps its name\n{src}");
    }
    // Two results that alias one kernel output: the first takes it, the second is a copy.
    let two = "func @f(%x: f32[6, 4, 8]) -> (f32[24, 8], f32[192]) {\n  %h = exp(%x)\n  %a = reshape(%h) {shape = [24, 8]}\n  %b = reshape(%h) {shape = [192]}\n  return %a, %b\n}\n";
    assert_eq!(kinds(&verified(two, true)), ["map", "copy"]);
}

/// Random chains of reshapes, transposes and slices, read by an elementwise
/// kernel, by another view, or returned: every one is exact.
#[test]
fn random_view_chains_are_exact() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n.max(1)
    };
    for case in 0..24 {
        let mut shape = vec![4u64, 6, 2, 4];
        shape.truncate(2 + next(3) as usize);
        let ty = |s: &[u64]| format!("bf16[{}]", s.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
        let mut body = String::new();
        let mut prev = "x".to_string();
        let input = ty(&shape);
        for step in 0..1 + next(3) {
            let name = format!("v{step}");
            let r = shape.len();
            let stmt = match next(3) {
                0 => {
                    let mut perm: Vec<usize> = (0..r).collect();
                    for k in (1..r).rev() {
                        perm.swap(k, next(k as u64 + 1) as usize);
                    }
                    shape = perm.iter().map(|&a| shape[a]).collect();
                    format!("transpose(%{prev}) {{perm = {perm:?}}}")
                }
                1 => {
                    let (start, stop): (Vec<u64>, Vec<u64>) = shape
                        .iter()
                        .map(|&d| {
                            let a = next(d.div_ceil(2));
                            (a, a + 1 + next(d - a))
                        })
                        .unzip();
                    shape = start.iter().zip(&stop).map(|(a, b)| b - a).collect();
                    format!("slice(%{prev}) {{start = {start:?}, stop = {stop:?}}}")
                }
                _ => {
                    // Merge two neighbours, or split a dim by one of its factors.
                    let k = next(r as u64) as usize;
                    if k + 1 < r && next(2) == 0 {
                        let d = shape.remove(k + 1);
                        shape[k] *= d;
                    } else if let Some(f) = (2..shape[k]).find(|f| shape[k] % f == 0) {
                        shape[k] /= f;
                        shape.insert(k, f);
                    }
                    format!("reshape(%{prev}) {{shape = {shape:?}}}")
                }
            };
            body += &format!("  %{name} = {stmt}\n");
            prev = name;
        }
        let n: u64 = shape.iter().product();
        let reversed: Vec<u64> = shape.iter().rev().copied().collect();
        let (tail, out) = match case % 3 {
            0 => (format!("neg(%{prev})"), shape.clone()),
            1 => (format!("reshape(%{prev}) {{shape = [{n}]}}"), vec![n]),
            _ => {
                let perm: Vec<usize> = (0..shape.len()).rev().collect();
                (format!("transpose(%{prev}) {{perm = {perm:?}}}"), reversed)
            }
        };
        let src = format!("func @f(%x: {input}) -> {} {{\n{body}  %y = {tail}\n  return %y\n}}\n", ty(&out));
        verified(&src, true);
    }
}

/// A parameter returned as it is becomes an output of its own, `%x_out` (a
/// binary's output is never one of its inputs), once however often it is
/// returned; verified exactly at -O0 and -O2.
#[test]
fn parameters_returned_as_they_are_are_outputs_of_their_own() {
    let src =
        "func @f(%x: f32[3, 4], %y: bf16[2], %x_out: f32[1]) -> (f32[3, 4], f32[3, 4], bf16[2], f32[3, 4], f32[1]) {
  %e = exp(%x)
  return %x, %e, %y, %x, %x_out
}
";
    let c = verified(src, true);
    let outputs: Vec<&str> = c
        .program
        .tensors
        .iter()
        .filter(|t| t.role == jpu_isa::program::Role::Output)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(outputs, ["e", "x_out_2", "y_out", "x_out_out"]);
}

/// Causal attention with more query rows than keys: the first rows of each
/// head see no key and are zero (docs/tir.md); the kernel computes the others
/// through views shifted past them and stores the zero rows from one zeroed
/// tile, on the flash path and the decode path, in place of a head split.
#[test]
fn causal_attention_with_more_queries_than_keys() {
    let src = "func @attn(%q: bf16[2, 4, 70, 32], %k: bf16[2, 2, 33, 32], %v: bf16[2, 2, 33, 16], %q2: f32[5, 4, 16], %k2: f32[2, 4, 16]) -> (bf16[2, 4, 70, 16], f32[5, 4, 16]) {
  %o = attention(%q, %k, %v) {causal = true}
  %qh = transpose(%q2) {perm = [1, 0, 2]}
  %kh = transpose(%k2) {perm = [1, 0, 2]}
  %o2 = attention(%qh, %kh, %kh) {causal = true, scale = 0.25}
  %om = transpose(%o2) {perm = [1, 0, 2]}
  return %o, %om
}
";
    let c = verified(src, false);
    assert_eq!(kinds(&c), ["attention", "attention"]);
    let at = |k: usize| &c.kernels[k].as_any().downcast_ref::<AttentionKernel>().unwrap().p;
    assert_eq!((at(0).zero_rows, at(0).sq), (37, 33));
    assert_eq!((at(1).zero_rows, at(1).sq), (3, 2));
    let decode = c.kernels[1].as_any().downcast_ref::<AttentionKernel>().unwrap();
    assert!(decode.plan.decode, "{}", decode.plan);
}

/// Reductions over any set of axes (with and without keepdims), softmax and
/// norms over any axis: the axes are moved last by a copy kernel into scratch
/// (and moved back after a softmax or norm); exact on both targets at -O0 and -O2.
#[test]
fn row_ops_run_over_any_axes() {
    let shape = [3u64, 4, 5, 2];
    let axes_sets: [&[usize]; 6] = [&[0], &[1], &[0, 2], &[0, 1], &[1, 3], &[0, 1, 3]];
    for (n, axes) in axes_sets.iter().enumerate() {
        let keep = n % 2 == 0;
        let out: Vec<u64> = (0..4)
            .filter_map(|a| match (axes.contains(&a), keep) {
                (true, true) => Some(1),
                (true, false) => None,
                _ => Some(shape[a]),
            })
            .collect();
        let axis = axes[0];
        let src = format!(
            "func @r(%x: f32[3, 4, 5, 2], %g: f32[{}]) -> (f32{out:?}, f32[3, 4, 5, 2], f32[3, 4, 5, 2]) {{
  %s = {}(%x) {{axes = {axes:?}, keepdims = {keep}}}
  %m = softmax(%x) {{axis = {axis}}}
  %l = layernorm(%x, %g, %g) {{axis = {axis}}}
  return %s, %m, %l
}}
",
            shape[axis],
            ["reduce_sum", "reduce_max"][n % 2]
        );
        verified(&src, true);
    }
}

/// Elementwise operands broadcast in ways no epilogue reads (`[S, 1, D]`
/// against `[S, H, D]`, rank 0, `[H, 1]` against `[B, H, D]`) are expanded by a
/// copy kernel with stride-0 dims, in GEMM epilogues and elementwise chains
/// alike; exact.
#[test]
fn broadcast_operands_are_expanded() {
    let src = "func @b(%x: f32[6, 4, 8], %t: f32[6, 1, 8], %s: f32[], %c: f32[4, 1], %w: f32[8, 8]) -> (f32[6, 4, 8], f32[6, 4, 8]) {
  %a = mul(%x, %t)
  %b = sub(%a, %s)
  %y = max(%b, %c)
  %m = matmul(%x, %w)
  %z = add(%m, %t)
  return %y, %z
}
";
    let c = verified(src, false);
    assert_eq!(kinds(&c).iter().filter(|k| **k == "copy").count(), 4);
}
