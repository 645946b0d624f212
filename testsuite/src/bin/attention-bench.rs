//! Attention and vector-kernel benchmark: prints the attention table of
//! docs/performance.md.
//!
//! `cargo run --release -p jpu-testsuite --bin attention-bench` compiles each
//! program for jpu1, simulates it in timing-only mode, and prints simulated cycles
//! (exact), roofline cycles (causal attention counts only the unmasked FLOPs), the
//! fraction, the goal of the attention issue, and the median compile time (wall
//! clock, noisy).

use jpu_isa::Target;
use jpu_testsuite::programs::attention;

/// Attention written out op by op as frameworks export it (docs/optimizer.md's
/// attention fusion; no grouping: one KV head per query head).
fn written_out(h: u64, s: u64, d: u64) -> String {
    let scale = 1.0 / (d as f64).sqrt();
    format!(
        "func @written(%q: bf16[{h}, {s}, {d}], %k: bf16[{h}, {s}, {d}], %v: bf16[{h}, {s}, {d}]) -> bf16[{h}, {s}, {d}] {{
  %kt = transpose(%k) {{perm = [0, 2, 1]}}
  %s = matmul(%q, %kt) : f32[{h}, {s}, {s}]
  %z = mul(%s, {scale:?})
  %p = softmax(%z) {{axis = -1}}
  %pb = cast(%p) {{to = bf16}}
  %o = matmul(%pb, %v)
  return %o
}}\n"
    )
}

fn main() {
    let t = Target::builtin("jpu1").unwrap();
    let rows: Vec<(&str, String, f64)> = vec![
        ("prefill causal, 32 q / 8 kv heads, seq 2048, d 128", attention("prefill", 32, 8, 2048, 2048, 128, true), 0.75),
        ("prefill, 32 q / 8 kv heads, seq 1024, d 128", attention("prefill", 32, 8, 1024, 1024, 128, false), 0.80),
        ("decode, 32 q / 8 kv heads, 1 row, kv 4096, d 128", attention("decode", 32, 8, 1, 4096, 128, true), 0.80),
        ("attention op, 8 heads, seq 1024, d 128", attention("explicit", 8, 8, 1024, 1024, 128, false), 0.0),
        (
            "long context: causal, 8 q / 2 kv heads, seq 16384, d 128 (K/V streamed)",
            attention("long", 8, 2, 16384, 16384, 128, true),
            0.0,
        ),
        ("written out, 8 heads, seq 1024, d 128", written_out(8, 1024, 128), 0.0),
        (
            "softmax f32 [4096, 4096]",
            "func @sm(%x: f32[4096, 4096]) -> f32[4096, 4096] {\n  %y = softmax(%x) {axis = -1}\n  return %y\n}\n".into(),
            0.80,
        ),
        (
            "rmsnorm bf16 [4096, 4096]",
            "func @rms(%x: bf16[4096, 4096], %g: bf16[4096]) -> bf16[4096, 4096] {\n  %y = rmsnorm(%x, %g) {axis = -1, eps = 1e-5}\n  return %y\n}\n".into(),
            0.80,
        ),
        (
            "layernorm bf16 [4096, 4096]",
            "func @ln(%x: bf16[4096, 4096], %g: bf16[4096], %b: bf16[4096]) -> bf16[4096, 4096] {\n  %y = layernorm(%x, %g, %b) {axis = -1, eps = 1e-5}\n  return %y\n}\n".into(),
            0.0,
        ),
    ];
    println!("| program | kernels | cycles | roofline cycles | bound | % of roofline | goal | compile (median of 5) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, src, goal) in rows {
        let m = jpu_testsuite::bench::measure(&src, &t, 5);
        let kinds: Vec<&str> = m.compiled.kernels.iter().map(|k| k.kind()).collect();
        let r = &m.report;
        let mark = jpu_testsuite::bench::goal_mark(r.roofline_fraction, goal);
        println!(
            "| {name} | {} | {} | {} | {} | {:.1}% | {mark} | {:.1} ms |",
            kinds.join(", "),
            r.cycles,
            r.roofline_cycles,
            r.roofline.bound_by,
            100.0 * r.roofline_fraction,
            m.compile_ms
        );
    }
}
