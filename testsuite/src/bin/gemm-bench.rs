//! GEMM benchmark: prints the table of docs/performance.md.
//!
//! `cargo run --release -p jpu-testsuite --bin gemm-bench` compiles each shape for
//! jpu1, simulates it in timing-only mode, and prints simulated cycles (exact),
//! roofline cycles, the fraction, the goal of the GEMM issue, and the median
//! compile time (wall clock, noisy).

use jpu_isa::Target;

fn main() {
    let t = Target::builtin("jpu1").unwrap();
    let shapes: [(u64, u64, u64, &str, f64); 10] = [
        (4096, 4096, 4096, "bf16", 0.90),
        (2048, 2048, 2048, "bf16", 0.85),
        (1024, 1024, 1024, "bf16", 0.75),
        (64, 4096, 4096, "bf16", 0.85),
        (4096, 4096, 4096, "f8e4m3", 0.85),
        (512, 512, 512, "bf16", 0.0),
        (4096, 4096, 4096, "bf16 A^T", 0.0),
        (4096, 4096, 4096, "bf16 B^T", 0.0),
        (4096, 4096, 4096, "bf16 +epilogue", 0.0),
        (64, 4096, 4096, "bf16 +epilogue", 0.0),
    ];
    println!("| shape (M x K x N) | dtype | cycles | roofline cycles | bound | % of roofline | goal | compile (median of 5) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (m, k, n, dt, goal) in shapes {
        // "bf16 A^T" / "bf16 B^T": the operand is stored transposed (a linear layer's weight).
        let (dtype, ta, tb) = match dt {
            "bf16 A^T" => ("bf16", true, false),
            "bf16 B^T" => ("bf16", false, true),
            other => (other, false, false),
        };
        let a_shape = if ta { format!("{k}, {m}") } else { format!("{m}, {k}") };
        let b_shape = if tb { format!("{n}, {k}") } else { format!("{k}, {n}") };
        // "+epilogue": a Transformer FFN layer, out = res + gelu_tanh(a . b + bias).
        let src = if dt.ends_with("+epilogue") {
            format!(
                "func @ffn(%a: bf16[{m}, {k}], %b: bf16[{k}, {n}], %bias: bf16[{n}], %res: bf16[{m}, {n}]) -> bf16[{m}, {n}] {{\n  %c = matmul(%a, %b) : bf16[{m}, {n}]\n  %z = add(%c, %bias)\n  %g = gelu(%z) {{approx = \"tanh\"}}\n  %y = add(%g, %res)\n  return %y\n}}\n"
            )
        } else {
            format!(
                "func @gemm(%a: {dtype}[{a_shape}], %b: {dtype}[{b_shape}]) -> bf16[{m}, {n}] {{\n  %c = matmul(%a, %b) {{transpose_a = {ta}, transpose_b = {tb}}} : f32[{m}, {n}]\n  %y = cast(%c) {{to = bf16}}\n  return %y\n}}\n"
            )
        };
        let measured = jpu_testsuite::bench::measure(&src, &t, 5);
        let r = &measured.report;
        let mark = jpu_testsuite::bench::goal_mark(r.roofline_fraction, goal);
        println!(
            "| {m} x {k} x {n} | {dt} | {} | {} | {} | {:.1}% | {mark} | {:.1} ms |",
            r.cycles,
            r.roofline_cycles,
            r.roofline.bound_by,
            100.0 * r.roofline_fraction,
            measured.compile_ms
        );
    }
}
