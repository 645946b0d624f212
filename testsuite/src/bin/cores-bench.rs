//! Multi-core benchmark: prints the cores table of docs/performance.md.
//!
//! `cargo run --release -p jpu-testsuite --bin cores-bench` compiles each
//! program for jpu1 with its kernels spread over 1, 2, 4 and 8 cores
//! (`--cores N`), simulates it in timing-only mode, and prints simulated cycles
//! (exact), the speedup over one core, the fraction of the N-core roofline
//! (every bound divided by N) and the goal of the multi-core issue.
//! `--only TEXT` keeps the rows whose name contains TEXT; `--kernels` also
//! prints each program's per-kernel table on 8 cores; `--trace-dir DIR` writes
//! each run's Perfetto trace there. `--sharing` prints the table of short
//! GEMMs (one row of output blocks over the cores) instead: cycles with A's
//! sharing over the fabric as the cost model chooses it, forced on and forced
//! off (the schedule field `share_a`).

use jpu_isa::Target;
use jpu_testsuite::programs::{attention, bert, gemm, llama, llama_decode, Shape};

fn main() {
    let t = Target::builtin("jpu1").unwrap();
    let llama3_8b = Shape { seq: 2048, hidden: 4096, heads: 32, kv_heads: 8, head_dim: 128, ffn: 14336 };
    // (name, program, the 8-core speedup goal; none for rows shown without one)
    let rows: Vec<(&str, String, Option<f64>)> = vec![
        ("GEMM bf16 4096 x 4096 x 4096", gemm(4096, 4096, 4096), Some(7.5)),
        ("GEMM bf16 8192 x 8192 x 8192", gemm(8192, 8192, 8192), Some(7.5)),
        ("GEMM bf16 64 x 4096 x 4096 (decode-like)", gemm(64, 4096, 4096), Some(6.0)),
        (
            "attention prefill causal, 32 q / 8 kv heads, seq 2048, d 128",
            attention("p", 32, 8, 2048, 2048, 128, true),
            Some(7.0),
        ),
        ("Llama-3-8B layer, decode step at KV length 4096", llama_decode(llama3_8b, 4095), Some(6.0)),
        ("Llama-3-8B layer, prefill 2048 tokens", llama(llama3_8b, 1), Some(7.0)),
        ("BERT-base-like layer (hidden 384, 12 heads, FFN 1536), batch 8 x seq 128", bert(8, 128, 384, 12, 1536), None),
    ];
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--sharing") {
        return sharing_table(&t);
    }
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let mut tables = Vec::new();
    println!("| program | cores | cycles | speedup | % of N-core roofline | goal (8 cores) |");
    println!("|---|---|---|---|---|---|");
    for (name, src, goal) in rows {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let mut one = 0u64;
        for cores in [1u32, 2, 4, 8] {
            let measured = jpu_testsuite::bench::measure_on(&src, &t, cores, 1);
            if cores == 8 && args.iter().any(|a| a == "--kernels") {
                tables.push((name, jpu_testsuite::bench::per_kernel(&measured, &t)));
            }
            if let Some(dir) = args.iter().position(|a| a == "--trace-dir").and_then(|i| args.get(i + 1)) {
                let doc = jpu_runtime::trace::chrome_trace(
                    &measured.compiled.program,
                    &t,
                    &measured.trace,
                    &measured.signals,
                );
                let file = format!("{dir}/{}-{cores}.json", name.split_whitespace().next().unwrap_or("program"));
                std::fs::write(&file, doc.to_string()).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
            let r = measured.report;
            if cores == 1 {
                one = r.cycles;
            }
            let speedup = one as f64 / r.cycles as f64;
            let mark = match goal {
                Some(goal) if cores == 8 && speedup >= goal => format!(">= {goal}x met"),
                Some(goal) if cores == 8 => format!(">= {goal}x NOT met"),
                _ => "-".to_string(),
            };
            println!(
                "| {name} | {cores} | {} | {speedup:.2}x | {:.1}% | {mark} |",
                r.cycles,
                100.0 * r.roofline_fraction
            );
        }
    }
    for (name, rows) in tables {
        jpu_testsuite::bench::print_per_kernel(&format!("{name}, 8 cores"), &rows);
    }
}

/// The `--sharing` table: each short GEMM on 2, 4 and 8 cores with the
/// default schedule, `share_a = true` and `share_a = false`; whether the
/// default shares, and how far it is from the better of the two.
fn sharing_table(t: &Target) {
    println!("| GEMM bf16 (M x K x N) | cores | default | share_a = true | share_a = false | default shares | default vs best |");
    println!("|---|---|---|---|---|---|---|");
    let shapes =
        [(16, 2048, 2048), (32, 4096, 14336), (64, 1024, 1024), (64, 4096, 4096), (128, 1024, 4096), (128, 4096, 4096)];
    for (m, k, n) in shapes {
        let src = gemm(m, k, n);
        for cores in [2u32, 4, 8] {
            let run = |schedule: &str| jpu_testsuite::bench::measure_scheduled(&src, t, cores, schedule, 1);
            let default = run("");
            let (on, off) = (run("[%c]\nshare_a = true").report.cycles, run("[%c]\nshare_a = false").report.cycles);
            let shares = default
                .compiled
                .program
                .instructions()
                .any(|(_, _, _, i)| matches!(&i.op, jpu_isa::Op::Dma { xfer } if xfer.dst.cores != 0));
            let best = on.min(off);
            let cycles = default.report.cycles;
            let vs = format!("{:+.1}%", 100.0 * (cycles as f64 / best as f64 - 1.0));
            println!(
                "| {m} x {k} x {n} | {cores} | {cycles} | {on} | {off} | {} | {vs} |",
                if shares { "yes" } else { "no" }
            );
        }
    }
}
