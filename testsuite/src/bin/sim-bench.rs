//! Simulator benchmarks: prints the Markdown tables of docs/performance.md.
//!
//! `cargo run --release -p jpu-testsuite --bin sim-bench` (add `--quick` for one
//! repetition of smaller shapes). Wall times are medians of repeated runs on this
//! machine and are noisy; simulated cycles are exact.

use std::time::Instant;

use jpu_isa::{DType, Target};
use jpu_runtime::{run, RunOptions};
use jpu_testsuite::kernels::{gemm, pipeline, GemmSpec};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn inputs(spec: GemmSpec) -> Vec<(String, Vec<u8>)> {
    let s = spec.dtype.size_bytes() as usize;
    // Small values in every byte pattern's range: exact and NaN-free for every dtype.
    let fill = |n: usize| {
        (0..n * s)
            .map(|i| {
                if s == 1 {
                    (i % 7) as u8
                } else if i % s == s - 1 {
                    0x3c
                } else {
                    (i % 251) as u8
                }
            })
            .collect()
    };
    vec![("a".into(), fill(spec.m * spec.k)), ("b".into(), fill(spec.k * spec.n))]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 5 };
    let jpu1 = Target::builtin("jpu1").unwrap();

    println!("### Functional simulation of GEMM kernels (jpu1, one core)\n");
    println!("| kernel | instructions | simulated cycles | % of roofline | race checks | wall (median of {reps}) | GFLOP/s simulated |");
    println!("|---|---|---|---|---|---|---|");
    let args: Vec<String> = std::env::args().collect();
    let size_arg =
        args.iter().position(|a| a == "--size").and_then(|i| args.get(i + 1)).and_then(|s| s.parse::<usize>().ok());
    let custom;
    let shapes: &[(usize, DType)] = match size_arg {
        Some(n) => {
            custom = [(n, DType::Bf16)];
            &custom
        }
        None if quick => &[(256, DType::Bf16)],
        None => &[(512, DType::Bf16), (1024, DType::Bf16), (1024, DType::F8E4M3)],
    };
    for &(size, dtype) in shapes {
        let spec = GemmSpec { m: size, k: size, n: size, dtype };
        let p = gemm(&jpu1, spec).expect("fits jpu1");
        let data = inputs(spec);
        let instructions = p.instructions().count();
        for check_races in [true, false] {
            let opts = RunOptions { check_races, ..RunOptions::default() };
            let mut walls = Vec::new();
            let mut last = None;
            for _ in 0..reps {
                let start = Instant::now();
                let out = run(&p, &jpu1, &data, &opts).expect("kernel runs");
                walls.push(start.elapsed().as_secs_f64());
                last = Some(out.report);
            }
            let r = last.expect("at least one repetition");
            let wall = median(walls);
            let flops = 2.0 * (size * size * size) as f64;
            println!(
                "| {dtype} {size}x{size}x{size} | {instructions} | {} | {:.1}% | {} | {:.3} s | {:.1} |",
                r.cycles,
                100.0 * r.roofline_fraction,
                if check_races { "on" } else { "off" },
                wall,
                flops / wall / 1e9
            );
        }
    }

    println!("\n### Timing-only simulation (jpu1, one core)\n");
    println!("| program | instructions | simulated cycles | wall (median of {reps}) | instructions/s |");
    println!("|---|---|---|---|---|");
    let stages = if quick { 20_000 } else { 200_000 };
    let p = pipeline(&jpu1, stages);
    let instructions = p.instructions().count();
    let opts = RunOptions { timing_only: true, ..RunOptions::default() };
    let mut walls = Vec::new();
    let mut cycles = 0;
    for _ in 0..reps {
        let start = Instant::now();
        cycles = run(&p, &jpu1, &[], &opts).expect("pipeline runs").report.cycles;
        walls.push(start.elapsed().as_secs_f64());
    }
    let wall = median(walls);
    println!(
        "| pipeline x{stages} (load, matmul, copy, exp, store) | {instructions} | {cycles} | {wall:.3} s | {:.2e} |",
        instructions as f64 / wall
    );
}
