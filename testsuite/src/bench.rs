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
    /// The run's per-instruction slices (for [`per_kernel`]).
    pub trace: Vec<jpu_runtime::TraceSlice>,
    /// The run's remote signals (for traces).
    pub signals: Vec<jpu_runtime::SignalArrival>,
}

/// Compiles `src` for `t` `repeats` times and simulates it once (timing only).
pub fn measure(src: &str, t: &Target, repeats: usize) -> Measured {
    measure_on(src, t, 1, repeats)
}

/// [`measure`], with the kernels spread over `cores` cores.
pub fn measure_on(src: &str, t: &Target, cores: u32, repeats: usize) -> Measured {
    measure_scheduled(src, t, cores, "", repeats)
}

/// [`measure_on`], with the schedule file `schedule` (text) applied.
pub fn measure_scheduled(src: &str, t: &Target, cores: u32, schedule: &str, repeats: usize) -> Measured {
    let f = jalc::front::tir::parse_and_check(src).expect("benchmark source checks");
    let opts = jalc::driver::Options { cores, ..crate::scheduled(schedule, 2) };
    let mut times = Vec::new();
    let mut compiled = None;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        compiled = Some(jalc::driver::compile(&f, t, &opts).expect("benchmark compiles"));
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let compiled = compiled.expect("compiled at least once");
    let opts = RunOptions { timing_only: true, trace: true, ..RunOptions::default() };
    let outcome = run(&compiled.program, t, &[], &opts).expect("benchmark runs");
    let (trace, signals) = (outcome.trace, outcome.signals);
    Measured { compiled, report: outcome.report, compile_ms: times[times.len() / 2] * 1e3, trace, signals }
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

/// One kernel's share of a run: when its instructions ran and how busy they
/// kept each engine class, beside the kernel's own roofline.
pub struct KernelTime {
    /// `kN kind: statement` (shortened).
    pub name: String,
    /// Cycles from its first instruction's start to its last one's end
    /// (kernels overlap, so spans may add up to more than the run).
    pub span: u64,
    /// Busy cycles of its instructions on the PE, VE, ACT and DMA queues.
    pub busy: [u64; 4],
    /// Its own roofline: its matmul FLOPs, exponentials and the bytes of the
    /// HBM tensors it reads and writes, at the target's peaks (of every core
    /// the program runs on).
    pub roofline: u64,
    /// Which resource bounds that roofline.
    pub bound: &'static str,
    /// The cycle its first instruction started (DMA: issued).
    pub first: u64,
}

/// Per-kernel cycles of `m`'s program, from its run's trace.
pub fn per_kernel(m: &Measured, t: &Target) -> Vec<KernelTime> {
    let (c, trace) = (&m.compiled, &m.trace);
    let mut out: Vec<KernelTime> = c
        .kernels
        .iter()
        .zip(&c.names)
        .map(|(k, name)| {
            let (roofline, bound) = kernel_roofline(k.as_ref(), t);
            let roofline = roofline.div_ceil(c.program.cores.len() as u64);
            let mut text = format!("{name} {}: {}", k.kind(), k.statement());
            if text.len() > 70 {
                text = format!("{}...", text.chars().take(67).collect::<String>());
            }
            KernelTime { name: text, span: 0, busy: [0; 4], roofline, bound, first: 0 }
        })
        .collect();
    let mut first = vec![u64::MAX; out.len()];
    let mut last = vec![0u64; out.len()];
    for s in trace {
        let lane = s.inst.core * c.program.cores[0].len() + s.inst.engine.0 as usize;
        let Some(Some(k)) = c.inst_kernel.get(lane).and_then(|v| v.get(s.inst.index)) else { continue };
        let class = match s.inst.engine.class() {
            jpu_isa::inst::EngineClass::Pe => 0,
            jpu_isa::inst::EngineClass::Ve => 1,
            jpu_isa::inst::EngineClass::Act => 2,
            _ => 3,
        };
        out[*k].busy[class] += s.end - s.start;
        first[*k] = first[*k].min(s.issue.unwrap_or(s.start));
        last[*k] = last[*k].max(s.end);
    }
    for (k, kt) in out.iter_mut().enumerate() {
        kt.span = last[k].saturating_sub(first[k].min(last[k]));
        kt.first = first[k].min(last[k]);
    }
    out
}

/// A kernel's own roofline (docs/machine.md's definition applied to it alone).
fn kernel_roofline(k: &dyn jalc::kernels::Kernel, t: &Target) -> (u64, &'static str) {
    let w = k.work();
    let tiles = k.lower(t);
    let size = |x: &jalc::tiles::HbmTensor| x.shape.iter().product::<u64>().saturating_mul(x.dtype.size_bytes() as u64);
    // A copy moves its boxes' bytes once (an HBM-to-HBM DMA is charged once;
    // its sources are declared whole: a slice's, a broadcast's small one).
    let copied = |op: &jalc::tiles::TileOp| match op {
        jalc::tiles::TileOp::HbmCopy { dst, .. } => {
            dst.rows as u64 * dst.cols as u64 * tiles.tensors[dst.tensor].dtype.size_bytes() as u64
        }
        _ => 0,
    };
    let bytes: u64 = match k.kind() {
        "copy" => tiles.ops.iter().map(|(op, _)| copied(op)).sum(),
        _ => tiles.tensors.iter().map(size).sum(),
    };
    let peak16 = t.pe_flops_per_cycle_16bit() as f64;
    let pe = w.flops_16bit as f64 / peak16 + w.flops_8bit as f64 / (2.0 * peak16) + w.flops_f32 as f64 / (peak16 / 4.0);
    let hbm = bytes as f64 / t.hbm.bytes_per_cycle.as_f64();
    let act = w.transcendentals as f64 / t.act.lanes as f64;
    let (max, bound) =
        [(pe, "pe"), (hbm, "hbm"), (act, "act")].into_iter().fold((0.0, "pe"), |b, x| if x.0 > b.0 { x } else { b });
    (max.ceil() as u64, bound)
}

/// Prints [`per_kernel`] as a markdown table.
pub fn print_per_kernel(title: &str, rows: &[KernelTime]) {
    println!("\n{title}\n");
    println!("| kernel | cycles (first .. last) | span cycles | PE / VE / ACT / DMA busy | own roofline | bound | % |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let pct = if r.span == 0 { 0.0 } else { 100.0 * r.roofline as f64 / r.span as f64 };
        let [pe, ve, act, dma] = r.busy;
        println!(
            "| `{}` | {} .. {} | {} | {pe} / {ve} / {act} / {dma} | {} | {} | {pct:.1}% |",
            r.name,
            r.first,
            r.first + r.span,
            r.span,
            r.roofline,
            r.bound
        );
    }
}
