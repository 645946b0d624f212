//! Shared pieces of the benchmark binaries (`src/bin/*-bench.rs`): compile a
//! program several times for the median compile time, simulate it in
//! timing-only mode, and mark a roofline goal.

use std::time::Instant;

use jpu_isa::Target;
use jpu_runtime::{run, Report, RunOptions};

/// A benchmarked program: its compilation, its timing-only report, and the
/// median wall-clock compile time over `repeats` compilations (milliseconds).
pub struct Measured {
    /// The last compilation.
    pub compiled: jalc::driver::Compiled,
    /// The simulator's report (exact cycles).
    pub report: Report,
    /// Median compile time, ms.
    pub compile_ms: f64,
}

/// Compiles `src` for `t` `repeats` times and simulates it once (timing only).
pub fn measure(src: &str, t: &Target, repeats: usize) -> Measured {
    let f = jalc::front::tir::parse_and_check(src).expect("benchmark source checks");
    let mut times = Vec::new();
    let mut compiled = None;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        compiled = Some(jalc::driver::compile(&f, t, &jalc::driver::Options::o2()).expect("benchmark compiles"));
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let compiled = compiled.expect("compiled at least once");
    let report = run(&compiled.program, t, &[], &RunOptions { timing_only: true, ..RunOptions::default() })
        .expect("benchmark runs")
        .report;
    Measured { compiled, report, compile_ms: times[times.len() / 2] * 1e3 }
}

/// `>= G% met`, `>= G% NOT met`, or `-` without a goal (0).
pub fn goal_mark(fraction: f64, goal: f64) -> String {
    if goal == 0.0 {
        "-".to_string()
    } else if fraction >= goal {
        format!(">= {:.0}% met", goal * 100.0)
    } else {
        format!(">= {:.0}% NOT met", goal * 100.0)
    }
}
