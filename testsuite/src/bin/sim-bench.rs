//! Simulator benchmarks: prints the Markdown tables of docs/performance.md.
//!
//! `cargo run --release -p jpu-testsuite --bin sim-bench` (add `--quick` for one
//! repetition of smaller shapes). Wall times are medians of repeated runs on this
//! machine and are noisy; simulated cycles are exact.

use std::time::Instant;

use jalc::front::tir;
use jpu_isa::{DType, Target};
use jpu_runtime::{run, ExecEngine, RunOptions};
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
    if std::env::args().any(|a| a == "--against-numpy") {
        return against_numpy(&jpu1, quick);
    }

    println!("### Functional simulation of GEMM kernels (jpu1, one core)\n");
    println!("| kernel | instructions | simulated cycles | % of roofline | engine | race checks | wall (median of {reps}) | GFLOP/s simulated |");
    println!("|---|---|---|---|---|---|---|---|");
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
        for (engine, check_races) in
            [(ExecEngine::Interp, true), (ExecEngine::Interp, false), (ExecEngine::Jit, true), (ExecEngine::Jit, false)]
        {
            let opts = RunOptions { check_races, engine, ..RunOptions::default() };
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
                "| {dtype} {size}x{size}x{size} | {instructions} | {} | {:.1}% | {} | {} | {:.3} s | {:.1} |",
                r.cycles,
                100.0 * r.roofline_fraction,
                if engine == ExecEngine::Jit { "jit" } else { "interp" },
                if check_races { "on" } else { "off" },
                wall,
                flops / wall / 1e9
            );
        }
    }

    against_numpy(&jpu1, quick);

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

/// Compiled programs run functionally, beside numpy's single-thread f32 time for
/// the same shape measured in the same run (`testsuite/bench/numpy_anchor.py`):
/// the anchor of the fast simulation mode's goals.
fn against_numpy(t: &Target, quick: bool) {
    let reps = if quick { 1 } else { 5 };
    let rows: &[(&str, String, &str)] = &[
        ("GEMM bf16 1024x1024x1024", matmul_tir(1024, 1024, 1024), "matmul:1024x1024x1024"),
        ("GEMM bf16 4096x4096x1024", matmul_tir(4096, 4096, 1024), "matmul:4096x4096x1024"),
        (
            "softmax f32 4096x4096",
            "func @s(%x: f32[4096, 4096]) -> f32[4096, 4096] {\n  %y = softmax(%x) {axis = -1}\n  return %y\n}".into(),
            "softmax:4096x4096",
        ),
        (
            "attention prefill, 8 heads, seq 1024, d 128, bf16",
            "func @a(%q: bf16[8, 1024, 128], %k: bf16[8, 1024, 128], %v: bf16[8, 1024, 128]) -> bf16[8, 1024, 128] {\n  %o = attention(%q, %k, %v) {causal = false}\n  return %o\n}".into(),
            "attention:8x1024x128",
        ),
    ];
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let rows: Vec<_> = match &only {
        Some(o) => rows.iter().filter(|r| r.0.contains(o.as_str())).collect(),
        None if quick => rows[..1].iter().collect(),
        None => rows.iter().collect(),
    };
    let numpy = numpy_times(&rows.iter().map(|r| r.2).collect::<Vec<_>>());
    println!("\n### Compiled programs against numpy (functional, jpu1, one core)\n");
    println!("Medians of {reps}; `jit` includes its compile time, also shown alone; numpy is f32 on one thread (median of 5).\n");
    println!("| program | instructions | simulated cycles | interpreter, races checked | interpreter | jit, races checked | jit | jit compile | numpy | interpreter / jit | numpy / jit |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, src, anchor) in rows {
        let f = tir::parse_and_check(src).expect("benchmark program checks");
        let c = jalc::driver::compile(&f, t, &jalc::driver::Options::o2()).expect("benchmark program compiles");
        let inputs = jpu_testsuite::chip_inputs(&f, &c.program, 0);
        let time = |check_races, engine| {
            let opts = RunOptions { check_races, engine, ..RunOptions::default() };
            let (mut walls, mut compiles) = (Vec::new(), Vec::new());
            let mut outcome = None;
            for _ in 0..reps {
                let start = Instant::now();
                let o = run(&c.program, t, &inputs, &opts).expect("program runs");
                walls.push(start.elapsed().as_secs_f64());
                compiles.push(o.jit_compile.as_secs_f64());
                outcome = Some(o);
            }
            (outcome.expect("at least one run"), median(walls), median(compiles))
        };
        let (interp, checked, _) = time(true, ExecEngine::Interp);
        let (_, unchecked, _) = time(false, ExecEngine::Interp);
        let (jit, jit_checked, _) = time(true, ExecEngine::Jit);
        let (_, jit_unchecked, compile) = time(false, ExecEngine::Jit);
        assert_eq!(interp.outputs, jit.outputs, "{name}: the engines' outputs differ");
        assert_eq!(interp.report.cycles, jit.report.cycles, "{name}: the engines' cycles differ");
        let np = numpy.as_ref().and_then(|m| m.get(*anchor).copied());
        let (np_text, ratio) = match np {
            Some(s) => (format!("{s:.3} s"), format!("{:.2}", s / jit_unchecked)),
            None => ("numpy not available".into(), "-".into()),
        };
        let instructions = c.program.instructions().count();
        let cycles = interp.report.cycles;
        println!(
            "| {name} | {instructions} | {cycles} | {checked:.3} s | {unchecked:.3} s | {jit_checked:.3} s | {jit_unchecked:.3} s | {compile:.4} s | {np_text} | {:.1}x | {ratio} |",
            unchecked / jit_unchecked
        );
    }
}

fn matmul_tir(m: u64, k: u64, n: u64) -> String {
    format!("func @g(%a: bf16[{m}, {k}], %b: bf16[{k}, {n}]) -> f32[{m}, {n}] {{\n  %c = matmul(%a, %b) : f32[{m}, {n}]\n  return %c\n}}")
}

/// numpy's times by anchor name, or `None` when python3 with numpy is not there.
fn numpy_times(anchors: &[&str]) -> Option<std::collections::HashMap<String, f64>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/numpy_anchor.py");
    let out = std::process::Command::new("python3").arg(script).args(anchors).output().ok()?;
    if !out.status.success() {
        eprintln!("numpy anchor failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(json.as_object()?.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
}
