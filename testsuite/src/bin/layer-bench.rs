//! Whole-layer benchmark: prints the layer tables of docs/performance.md.
//!
//! `cargo run --release -p jpu-testsuite --bin layer-bench` compiles a
//! Llama-style decoder layer as frameworks export it (the shape of
//! `testsuite/cases/layers/llama-decoder.tir`) for jpu1, simulates it in
//! timing-only mode and prints simulated cycles (exact), roofline cycles, the
//! fraction, the goal of the model-graphs issue and the median compile time
//! (wall clock, noisy); then the compile time of 1, 4 and 32 stacked layers.

use jpu_isa::Target;

use jpu_testsuite::programs::{bert, llama, llama_decode, Shape};

fn main() {
    let t = Target::builtin("jpu1").unwrap();
    let llama3_8b = Shape { seq: 2048, hidden: 4096, heads: 32, kv_heads: 8, head_dim: 128, ffn: 14336 };
    println!("| layer | kernels | cycles | roofline cycles | bound | % of roofline | goal | compile (median of 3) |");
    println!("|---|---|---|---|---|---|---|---|");
    let rows = [
        ("Llama-3-8B layer, prefill 2048 tokens", llama(llama3_8b, 1), 0.85),
        ("Llama-3-8B layer, decode step at KV length 4096", llama_decode(llama3_8b, 4095), 0.80),
        ("BERT-base-like layer (hidden 384, 12 heads, FFN 1536), batch 8 x seq 128", bert(8, 128, 384, 12, 1536), 0.70),
    ];
    // `--kernels` also prints each layer's per-kernel table.
    let per_kernel = std::env::args().any(|a| a == "--kernels");
    let mut tables = Vec::new();
    // `--only TEXT` keeps the rows whose name contains TEXT.
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    for (name, src, goal) in rows {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let m = jpu_testsuite::bench::measure(&src, &t, 3);
        if per_kernel {
            tables.push((name, jpu_testsuite::bench::per_kernel(&m, &t)));
        }
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for k in &m.compiled.kernels {
            match kinds.iter_mut().find(|(kind, _)| *kind == k.kind()) {
                Some((_, n)) => *n += 1,
                None => kinds.push((k.kind(), 1)),
            }
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let r = &m.report;
        println!(
            "| {name} | {} | {} | {} | {} | {:.1}% | {} | {:.0} ms |",
            kinds.join(", "),
            r.cycles,
            r.roofline_cycles,
            r.roofline.bound_by,
            100.0 * r.roofline_fraction,
            jpu_testsuite::bench::goal_mark(r.roofline_fraction, goal),
            m.compile_ms
        );
    }
    if only.as_ref().is_none_or(|o| "MiniLM".contains(o.as_str())) {
        minilm_row(&t);
    }
    for (name, rows) in &tables {
        jpu_testsuite::bench::print_per_kernel(&format!("Per kernel: {name}"), rows);
    }
    if only.is_some() {
        return;
    }
    println!();
    println!("| stacked layers (seq 256, hidden 512, 8 q / 2 kv heads of 64, FFN 1408) | statements | kernels | compile (median of 3) |");
    println!("|---|---|---|---|");
    let small = Shape { seq: 256, hidden: 512, heads: 8, kv_heads: 2, head_dim: 64, ffn: 1408 };
    for layers in [1, 4, 32] {
        let src = llama(small, layers);
        let f = jalc::front::tir::parse_and_check(&src).expect("checks");
        let mut times = Vec::new();
        let mut kernels = 0;
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::o2()).expect("compiles");
            times.push(start.elapsed().as_secs_f64());
            kernels = c.kernels.len();
        }
        times.sort_by(f64::total_cmp);
        println!("| {layers} | {} | {kernels} | {:.0} ms |", f.nodes.len() - f.num_params, times[1] * 1e3);
    }
}

/// paraphrase-MiniLM-L3-v2 from its ONNX file (`testsuite/models/fetch.py`) at
/// batch 8 x seq 128 in bf16: the compile column is import + compile.
fn minilm_row(t: &Target) {
    use jalc::front::onnx;
    let name = "MiniLM-L3 (ONNX, 3 layers), batch 8 x seq 128, bf16";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/paraphrase-MiniLM-L3-v2.onnx");
    if !path.exists() {
        println!("| {name} | model not fetched: python3 testsuite/models/fetch.py | | | | | | |");
        return;
    }
    let shape = vec![8, 128];
    let opts = onnx::ImportOptions {
        input_shapes: vec![("input_ids".into(), shape.clone()), ("attention_mask".into(), shape)],
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut compiled = None;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let m = onnx::import(&onnx::read(&path).expect("reads"), "minilm", &opts).expect("imports");
        let c_opts = jalc::driver::Options { weights: std::sync::Arc::new(m.weights), ..jalc::driver::Options::o2() };
        compiled = Some(jalc::driver::compile(&m.func, t, &c_opts).expect("compiles"));
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let compiled = compiled.expect("compiled");
    let opts = jpu_runtime::RunOptions { timing_only: true, ..Default::default() };
    let r = jpu_runtime::run(&compiled.program, t, &[], &opts).expect("runs").report;
    println!(
        "| {name} | {} kernels | {} | {} | {} | {:.1}% | {} | {:.0} ms (import + compile) |",
        compiled.kernels.len(),
        r.cycles,
        r.roofline_cycles,
        r.roofline.bound_by,
        100.0 * r.roofline_fraction,
        jpu_testsuite::bench::goal_mark(r.roofline_fraction, 0.60),
        times[1] * 1e3
    );
}
