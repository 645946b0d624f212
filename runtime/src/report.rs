//! Run reports: cycles, engine utilisation, work done, and the roofline.
//!
//! The roofline of a program (docs/machine.md's definition) is the largest of
//! - PE: matmul FLOPs / peak rate per operand width (16-bit: 2 x rows x cols per
//!   cycle; 8-bit: twice that; f32: a quarter of it),
//! - HBM: input bytes (read once) + output bytes (written once) / the core's share
//!   of bandwidth,
//! - ACT: transcendental elements / ACT lanes per cycle,
//!
//! each rate multiplied by the cores the program runs on (every core has its own
//! PE, ACT and HBM share).
//!
//! The inputs come from the roofline record in the binary (the compiler writes one);
//! a hand-written program without one uses its executed matmul FLOPs and
//! transcendental elements and the bytes of its input, const and output tensors.

use jpu_isa::program::Role;
use jpu_isa::{Program, Target};
use serde::Serialize;

/// Work counted while running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExecutedWork {
    /// matmul FLOPs with f32 operands.
    pub flops_f32: u64,
    /// matmul FLOPs with 16-bit operands.
    pub flops_16bit: u64,
    /// matmul FLOPs with 8-bit operands.
    pub flops_8bit: u64,
    /// Elements through transcendental ACT functions.
    pub transcendentals: u64,
    /// Bytes DMA moved.
    pub dma_bytes: u64,
    /// Bytes DMA was charged for (short runs round up).
    pub dma_charged_bytes: u64,
    /// Of `dma_bytes`, those moved core to core over the fabric (a multicast
    /// counted once).
    pub fabric_bytes: u64,
}

/// One core's share of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoreReport {
    /// Core.
    pub core: usize,
    /// Cycle its last instruction completed.
    pub finished_at: u64,
    /// Bytes its DMA queues moved over HBM (and within its SRAM).
    pub dma_bytes: u64,
    /// Bytes its DMA queues sent to other cores over the fabric.
    pub fabric_bytes: u64,
}

/// One engine's share of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineReport {
    /// Core.
    pub core: usize,
    /// Engine name (`pe`, `ve`, `act`, `dma0`, ...).
    pub engine: String,
    /// Cycles it was executing (DMA: moving data).
    pub busy_cycles: u64,
    /// Instructions in its stream.
    pub instructions: u64,
}

/// The roofline bound of a program.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Roofline {
    /// Where the inputs came from: `recorded` (the binary's roofline record) or `executed`.
    pub source: &'static str,
    /// PE-bound cycles.
    pub pe_cycles: f64,
    /// HBM-bound cycles.
    pub hbm_cycles: f64,
    /// ACT-bound cycles.
    pub act_cycles: f64,
    /// The bound: the largest of the three, rounded up.
    pub cycles: u64,
    /// Which resource bounds it: `pe`, `hbm` or `act`.
    pub bound_by: &'static str,
}

/// Everything a run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Total cycles until the last engine finished.
    pub cycles: u64,
    /// Target clock.
    pub clock_ghz: f64,
    /// Wall time on the chip, microseconds.
    pub time_us: f64,
    /// Roofline cycles.
    pub roofline_cycles: u64,
    /// roofline_cycles / cycles.
    pub roofline_fraction: f64,
    /// The roofline's parts.
    pub roofline: Roofline,
    /// Per-engine busy cycles.
    pub engines: Vec<EngineReport>,
    /// Per-core finish time and traffic.
    pub cores: Vec<CoreReport>,
    /// Work executed.
    pub work: ExecutedWork,
    /// Reads of never-written bytes (accesses, not bytes).
    pub uninitialized_reads: u64,
    /// The first such read, described.
    pub first_uninitialized_read: Option<String>,
}

impl Report {
    /// Builds the report of a finished run (no uninitialised reads yet).
    pub fn new(
        p: &Program,
        t: &Target,
        cycles: u64,
        engines: Vec<EngineReport>,
        cores: Vec<CoreReport>,
        work: ExecutedWork,
    ) -> Report {
        let roofline = roofline(p, t, &work);
        let roofline_fraction = if cycles == 0 { 0.0 } else { roofline.cycles as f64 / cycles as f64 };
        Report {
            cycles,
            clock_ghz: t.clock_ghz,
            time_us: cycles as f64 / (t.clock_ghz * 1000.0),
            roofline_cycles: roofline.cycles,
            roofline_fraction,
            roofline,
            engines,
            cores,
            work,
            uninitialized_reads: 0,
            first_uninitialized_read: None,
        }
    }

    /// Busy cycles of an engine of core 0 (for tests and tables).
    pub fn busy(&self, engine: &str) -> u64 {
        self.engines.iter().find(|e| e.core == 0 && e.engine == engine).map_or(0, |e| e.busy_cycles)
    }

    /// The report as one JSON object (the `jalc run --json` format).
    pub fn to_json(&self) -> serde_json::Value {
        let mut engines = serde_json::Map::new();
        for e in &self.engines {
            let util = if self.cycles == 0 { 0.0 } else { e.busy_cycles as f64 / self.cycles as f64 };
            engines.insert(
                format!("core{}.{}", e.core, e.engine),
                serde_json::json!({ "busy_cycles": e.busy_cycles, "utilization": util, "instructions": e.instructions }),
            );
        }
        serde_json::json!({
            "cycles": self.cycles,
            "clock_ghz": self.clock_ghz,
            "time_us": self.time_us,
            "roofline_cycles": self.roofline_cycles,
            "roofline_fraction": self.roofline_fraction,
            "roofline": self.roofline,
            "engines": engines,
            "cores": self.cores,
            "work": self.work,
            "uninitialized_reads": self.uninitialized_reads,
            "first_uninitialized_read": self.first_uninitialized_read,
        })
    }
}

fn roofline(p: &Program, t: &Target, work: &ExecutedWork) -> Roofline {
    let peak16 = t.pe_flops_per_cycle_16bit() as f64;
    let bw = t.hbm.bytes_per_cycle.as_f64();
    let (source, f32f, f16, f8, bytes, trans) = match &p.roofline {
        Some(r) => {
            let io = r.input_bytes.saturating_add(r.output_bytes);
            ("recorded", r.flops_f32, r.flops_16bit, r.flops_8bit, io, r.transcendentals)
        }
        None => {
            let io: u64 = p
                .tensors
                .iter()
                .filter(|x| matches!(x.role, Role::Input | Role::Const | Role::Output))
                .map(|x| x.size_bytes())
                .fold(0, u64::saturating_add);
            ("executed", work.flops_f32, work.flops_16bit, work.flops_8bit, io, work.transcendentals)
        }
    };
    let cores = p.cores.len().max(1) as f64;
    let pe_cycles = (f16 as f64 / peak16 + f8 as f64 / (2.0 * peak16) + f32f as f64 / (peak16 / 4.0)) / cores;
    let hbm_cycles = bytes as f64 / (bw * cores);
    let act_cycles = trans as f64 / (t.act.lanes as f64 * cores);
    let (max, bound_by) = [(pe_cycles, "pe"), (hbm_cycles, "hbm"), (act_cycles, "act")]
        .into_iter()
        .fold((0.0, "pe"), |best, x| if x.0 > best.0 { x } else { best });
    Roofline { source, pe_cycles, hbm_cycles, act_cycles, cycles: max.ceil() as u64, bound_by }
}
