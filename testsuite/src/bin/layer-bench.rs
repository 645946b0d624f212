//! Whole-layer benchmark: prints the layer tables of docs/performance.md.
//!
//! `cargo run --release -p jpu-testsuite --bin layer-bench` compiles a
//! Llama-style decoder layer as frameworks export it (the shape of
//! `testsuite/cases/layers/llama-decoder.tir`) for jpu1, simulates it in
//! timing-only mode and prints simulated cycles (exact), roofline cycles, the
//! fraction, the goal of the model-graphs issue and the median compile time
//! (wall clock, noisy); then the compile time of 1, 4 and 32 stacked layers.

use jpu_isa::Target;

/// The shapes of a Llama-style layer.
#[derive(Clone, Copy)]
struct Shape {
    seq: u64,
    hidden: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    ffn: u64,
}

/// `layers` stacked decoder layers (each with its own weights; RoPE tables shared).
fn llama(s: Shape, layers: usize) -> String {
    let Shape { seq, hidden, heads: h, kv_heads: kv, head_dim: d, ffn } = s;
    let half = d / 2;
    let mut params = vec![
        format!("%x0: bf16[{seq}, {hidden}]"),
        format!("%cos: bf16[{seq}, 1, {d}]"),
        format!("%sin: bf16[{seq}, 1, {d}]"),
    ];
    let mut body = String::new();
    for l in 0..layers {
        let w = |name: &str, a: u64, b: u64| format!("%{name}{l}: bf16[{a}, {b}]");
        params.extend([
            format!("%g1_{l}: bf16[{hidden}]"),
            w("wq", hidden, h * d),
            w("wk", hidden, kv * d),
            w("wv", hidden, kv * d),
            w("wo", h * d, hidden),
            format!("%g2_{l}: bf16[{hidden}]"),
            w("wg", hidden, ffn),
            w("wu", hidden, ffn),
            w("wd", ffn, hidden),
        ]);
        let rope = |x: &str, n: u64| {
            format!(
                "  %{x}a{l} = slice(%{x}3_{l}) {{start = [0, 0, 0], stop = [{seq}, {n}, {half}]}}
  %{x}b{l} = slice(%{x}3_{l}) {{start = [0, 0, {half}], stop = [{seq}, {n}, {d}]}}
  %{x}n{l} = neg(%{x}b{l})
  %{x}r{l} = concat(%{x}n{l}, %{x}a{l}) {{axis = 2}}
  %{x}c{l} = mul(%{x}3_{l}, %cos)
  %{x}s{l} = mul(%{x}r{l}, %sin)
  %{x}p{l} = add(%{x}c{l}, %{x}s{l})
  %{x}h{l} = transpose(%{x}p{l}) {{perm = [1, 0, 2]}}
"
            )
        };
        body += &format!(
            "  %h{l} = rmsnorm(%x{l}, %g1_{l}) {{axis = -1, eps = 1e-5}}
  %q{l} = matmul(%h{l}, %wq{l})
  %k{l} = matmul(%h{l}, %wk{l})
  %v{l} = matmul(%h{l}, %wv{l})
  %q3_{l} = reshape(%q{l}) {{shape = [{seq}, {h}, {d}]}}
  %k3_{l} = reshape(%k{l}) {{shape = [{seq}, {kv}, {d}]}}
  %v3_{l} = reshape(%v{l}) {{shape = [{seq}, {kv}, {d}]}}
{}{}  %vh{l} = transpose(%v3_{l}) {{perm = [1, 0, 2]}}
  %o{l} = attention(%qh{l}, %kh{l}, %vh{l}) {{causal = true}}
  %om{l} = transpose(%o{l}) {{perm = [1, 0, 2]}}
  %o2_{l} = reshape(%om{l}) {{shape = [{seq}, {}]}}
  %a{l} = matmul(%o2_{l}, %wo{l})
  %r{l} = add(%x{l}, %a{l})
  %n{l} = rmsnorm(%r{l}, %g2_{l}) {{axis = -1, eps = 1e-5}}
  %gt{l} = matmul(%n{l}, %wg{l})
  %up{l} = matmul(%n{l}, %wu{l})
  %sg{l} = silu(%gt{l})
  %m{l} = mul(%sg{l}, %up{l})
  %d{l} = matmul(%m{l}, %wd{l})
  %x{} = add(%r{l}, %d{l})
",
            rope("q", h),
            rope("k", kv),
            h * d,
            l + 1
        );
    }
    format!("func @layers({}) -> bf16[{seq}, {hidden}] {{\n{body}  return %x{layers}\n}}\n", params.join(", "))
}

fn main() {
    let t = Target::builtin("jpu1").unwrap();
    let llama3_8b = Shape { seq: 2048, hidden: 4096, heads: 32, kv_heads: 8, head_dim: 128, ffn: 14336 };
    println!("| layer | kernels | cycles | roofline cycles | bound | % of roofline | goal | compile (median of 3) |");
    println!("|---|---|---|---|---|---|---|---|");
    let rows = [("Llama-3-8B layer, prefill 2048 tokens", llama(llama3_8b, 1), 0.85)];
    for (name, src, goal) in rows {
        let m = jpu_testsuite::bench::measure(&src, &t, 3);
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
