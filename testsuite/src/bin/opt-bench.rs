//! Optimizer benchmark: one program per rule family, its estimated cost (the
//! optimizer's cost model) at -O0 and after optimization, and simulated cycles on
//! jpu1 at -O0 (no rewriting, no fusion: every op a kernel) and -O2; then the
//! compile time of elementwise chains of growing length (linear in program size:
//! the e-graph runs region by region). Prints the tables of docs/performance.md.
//!
//! `cargo run --release -p jpu-testsuite --bin opt-bench`

use jalc::opt::{optimize, Limits};
use jpu_isa::Target;
use jpu_runtime::{run, RunOptions};

fn simulate(f: &jalc::ir::Func, t: &Target, level: u8) -> String {
    match jalc::driver::compile(f, t, &jalc::driver::Options::at(level)) {
        Ok(c) => {
            let r = run(&c.program, t, &[], &RunOptions { timing_only: true, ..RunOptions::default() })
                .expect("runs")
                .report;
            format!("{} ({:.1}%)", r.cycles, 100.0 * r.roofline_fraction)
        }
        Err(jalc::error::CompileError::Unsupported { value, op, .. }) => {
            format!("not compiled yet (`%{value} = {op}` needs its own kernel)")
        }
        Err(e) => format!("refused: {e}"),
    }
}

fn main() {
    let t = Target::builtin("jpu1").unwrap();
    let families = [
        (
            "transpose folding (transposed weight)",
            "func @f(%x: bf16[1024, 4096], %w: bf16[4096, 4096]) -> bf16[1024, 4096] {\n  %wt = transpose(%w) {perm = [1, 0]}\n  %y = matmul(%x, %wt) : f32[1024, 4096]\n  %o = cast(%y) {to = bf16}\n  return %o\n}\n",
        ),
        (
            "scale folding (scaled query)",
            "func @f(%q: bf16[8, 128, 64], %k: bf16[8, 64, 2048]) -> f32[8, 128, 2048] {\n  %qs = mul(%q, 0.125)\n  %s = matmul(%qs, %k) : f32[8, 128, 2048]\n  return %s\n}\n",
        ),
        (
            "reassociation (low-rank chain)",
            "func @f(%x: f32[2048, 4096], %a: f32[4096, 64], %b: f32[64, 4096]) -> f32[2048, 4096] {\n  %ab = matmul(%a, %b)\n  %y = matmul(%x, %ab)\n  return %y\n}\n",
        ),
        (
            "horizontal fusion (Q/K/V projections, GQA)",
            "func @f(%x: bf16[256, 2048], %wq: bf16[2048, 2048], %wk: bf16[2048, 512], %wv: bf16[2048, 512]) -> (bf16[256, 2048], bf16[256, 512], bf16[256, 512]) {\n  %q = matmul(%x, %wq) : bf16[256, 2048]\n  %k = matmul(%x, %wk) : bf16[256, 512]\n  %v = matmul(%x, %wv) : bf16[256, 512]\n  return %q, %k, %v\n}\n",
        ),
        (
            "epilogue fusion (bias + GELU + residual)",
            "func @f(%x: bf16[1024, 4096], %w: bf16[4096, 4096], %b: bf16[4096], %r: bf16[1024, 4096]) -> bf16[1024, 4096] {\n  %y = matmul(%x, %w) : bf16[1024, 4096]\n  %z = add(%y, %b)\n  %g = gelu(%z) {approx = \"tanh\"}\n  %o = add(%g, %r)\n  return %o\n}\n",
        ),
        (
            "attention fusion (written out, 8 heads, seq 1024, d 128)",
            "func @f(%q: bf16[8, 1024, 128], %k: bf16[8, 1024, 128], %v: bf16[8, 1024, 128]) -> bf16[8, 1024, 128] {\n  %kt = transpose(%k) {perm = [0, 2, 1]}\n  %s = matmul(%q, %kt) : f32[8, 1024, 1024]\n  %z = mul(%s, 0.08838834764831845)\n  %p = softmax(%z) {axis = -1}\n  %pb = cast(%p) {to = bf16}\n  %o = matmul(%pb, %v)\n  return %o\n}\n",
        ),
    ];
    println!(
        "| rule family | estimated cycles -O0 | estimated cycles -O2 | simulated -O0 | simulated -O2 | optimize time |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, src) in families {
        let f = jalc::front::tir::parse_and_check(src).expect("benchmark source checks");
        let start = std::time::Instant::now();
        let o = optimize(&f, &t, Limits::default()).expect("optimizes");
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "| {name} | {:.0} | {:.0} | {} | {} | {ms:.1} ms |",
            o.cost_before,
            o.cost_after,
            simulate(&f, &t, 0),
            simulate(&f, &t, 2)
        );
    }
    println!();
    compile_time_by_size();
}

/// An elementwise chain of `n` statements (exp, tanh, sigmoid, neg in turn).
fn chain(n: usize) -> String {
    let ops = ["exp", "tanh", "sigmoid", "neg"];
    let mut src = String::from("func @f(%x0: f32[4, 8]) -> f32[4, 8] {\n");
    for i in 1..=n {
        src.push_str(&format!("  %x{i} = {}(%x{})\n", ops[i % ops.len()], i - 1));
    }
    src.push_str(&format!("  return %x{n}\n}}\n"));
    src
}

/// Median wall time of three compilations, in seconds.
fn median_compile_seconds(f: &jalc::ir::Func, t: &Target, level: u8) -> f64 {
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            jalc::driver::compile(f, t, &jalc::driver::Options::at(level)).expect("the chain compiles");
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[1]
}

fn compile_time_by_size() {
    let t = Target::builtin("jpu-tiny").unwrap();
    println!("| elementwise chain (jpu-tiny) | compile -O0 | compile -O2 | -O2 per 1000 statements | optimizer stop |");
    println!("|---|---|---|---|---|");
    for n in [1_000, 5_000, 10_000, 20_000] {
        let f = jalc::front::tir::parse_and_check(&chain(n)).expect("the chain checks");
        let stop = optimize(&f, &t, Limits::default()).expect("optimizes").stop;
        let (o0, o2) = (median_compile_seconds(&f, &t, 0), median_compile_seconds(&f, &t, 2));
        println!("| {n} statements | {o0:.2} s | {o2:.2} s | {:.3} s | {stop} |", o2 * 1000.0 / n as f64);
    }
}
