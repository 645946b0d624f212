//! The event-driven simulator: timing, semaphores, functional execution, checks.
//!
//! Time advances from event to event (an instruction finishing, a DMA's latency
//! elapsing, a transfer draining), so the cost of a run grows with its
//! instructions, not its cycles. Each engine runs its stream in order:
//!
//! - PE, VE and ACT start an instruction when the previous one has finished and
//!   its wait holds; it takes [`jpu_isa::cost::compute_cycles`] cycles.
//! - A DMA queue *issues* its next transfer as soon as the wait holds (issue takes
//!   no time, so latencies of one queue overlap); a transfer's data phase starts
//!   `latency` cycles after issue and after the previous transfer of the queue has
//!   drained; the data phases active on a core share its HBM bandwidth evenly,
//!   and its core-to-core (fabric) transfers share its fabric egress the same
//!   way, apart from HBM. A `nop` or `halt` on a queue completes once every
//!   earlier transfer has.
//! - A signal of another core's semaphore is applied there the fabric's signal
//!   latency after the signalling instruction completes, carrying that
//!   instruction's vector clock, so a wait on it orders accesses across cores.
//!
//! Bandwidth is tracked exactly in integer units of a byte (the product of the
//! HBM and fabric rates' denominators and 720720 = lcm(1..=16), which divides
//! any share count), so cycle counts are exact and deterministic. Effects are
//! applied when an instruction completes, in time order (ties by core and
//! engine); a program whose accesses are ordered by semaphores therefore
//! computes the same data under any timing.

use std::borrow::Cow;
use std::collections::VecDeque;

use jpu_isa::check::check_inst;
use jpu_isa::cost::{compute_cycles, pe_flops, transfer_bytes, transfer_cost};
use jpu_isa::operand::{Column, DmaSpace, HbmRows, Space, Tile};
use jpu_isa::program::Role;
use jpu_isa::{Engine, Inst, Op, Program, Target};

use crate::footprint::{footprint, gather_footprint, Access};
use crate::jit::Jit;
use crate::memory::{CoreMemory, Hbm};
use crate::race::{epoch, epoch_clock, epoch_engine, Conflict, Mem, Shadow, MAX_CLOCK};
use crate::report::{CoreReport, EngineReport, ExecutedWork, Report};
use crate::semantics::{execute_compute, execute_dma, execute_fabric, execute_gather, gather_rows};

/// How to run a program.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Model time only: no data, no race or uninitialised-read checks; same cycles.
    pub timing_only: bool,
    /// Check for races between unordered engines, and count reads of never-written
    /// memory (functional runs only; costs about as much as the arithmetic).
    pub check_races: bool,
    /// Treat a read of never-written memory as a fault (else it reads NaN and is counted).
    pub strict_uninit: bool,
    /// Stop with a fault past this many cycles.
    pub max_cycles: Option<u64>,
    /// Stop with a fault past this many started instructions.
    pub max_instructions: Option<u64>,
    /// Record a trace slice per instruction.
    pub trace: bool,
    /// Read back scratch tensors too (into [`Outcome::outputs`], after the
    /// outputs), so a verifier can check every intermediate a program keeps.
    pub read_scratch: bool,
    /// Which engine computes instructions' results (functional runs only).
    pub engine: ExecEngine,
    /// Host threads the compiled engine may split a large instruction over (0:
    /// one per host core; default 1, see docs/simulator.md). Results do not
    /// depend on it.
    pub threads: usize,
}

/// What computes instructions' results; timing and checks are the same.
/// The default is [`ExecEngine::Jit`] on x86_64 and aarch64 hosts (Cranelift's
/// native targets), [`ExecEngine::Interp`] elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEngine {
    /// The interpreter ([`crate::semantics`]), the specification.
    Interp,
    /// Native code compiled per program ([`crate::jit`]) where it covers an
    /// instruction, the interpreter elsewhere.
    Jit,
}

impl Default for ExecEngine {
    fn default() -> Self {
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            ExecEngine::Jit
        } else {
            ExecEngine::Interp
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timing_only: false,
            check_races: true,
            strict_uninit: false,
            max_cycles: None,
            max_instructions: None,
            trace: false,
            read_scratch: false,
            engine: ExecEngine::default(),
            threads: 1,
        }
    }
}

/// Identifies one instruction of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstRef {
    /// Core.
    pub core: usize,
    /// Engine.
    pub engine: Engine,
    /// Position in the engine's stream.
    pub index: usize,
}

/// One instruction's time on its engine, for traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSlice {
    /// The instruction.
    pub inst: InstRef,
    /// Start cycle (for DMA: the start of the data phase).
    pub start: u64,
    /// End cycle.
    pub end: u64,
    /// For DMA: the issue cycle.
    pub issue: Option<u64>,
}

/// A remote signal's arrival, for traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalArrival {
    /// The signalling instruction.
    pub from: InstRef,
    /// When it completed.
    pub sent: u64,
    /// When the increment became visible on `core`.
    pub arrived: u64,
    /// The signalled core.
    pub core: usize,
    /// Its semaphore.
    pub sem: u8,
}

/// What went wrong during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// An instruction breaks a constraint of the target (bounds, shapes, engine).
    IllegalInstruction {
        /// Which operand and limit.
        message: String,
    },
    /// Two accesses to the same bytes, at least one a write, with no semaphore chain between them.
    Race {
        /// The earlier access.
        earlier: InstRef,
        /// What the two accesses were.
        conflict: Conflict,
        /// Memory and first byte.
        mem: Mem,
        /// First conflicting byte.
        addr: u64,
    },
    /// A read of memory that no instruction and no input wrote (strict mode).
    UninitializedRead {
        /// Memory.
        mem: Mem,
        /// First such byte.
        addr: u64,
    },
    /// Every unfinished engine waits for a semaphore that can no longer change.
    Deadlock {
        /// Each blocked engine: its next instruction, the semaphore, the awaited and current values.
        waits: Vec<(InstRef, u8, u32, u32)>,
    },
    /// A `dma_gather` index outside its table.
    GatherIndex {
        /// The partition whose index is out of range.
        partition: u16,
        /// The index.
        index: i64,
        /// The table's rows (valid indices are `0..rows`).
        rows: u32,
    },
    /// The run passed the cycle limit.
    CycleLimit(u64),
    /// The run passed the instruction limit.
    InstructionLimit(u64),
}

/// A fault, with the instruction it concerns and a rendered message that names the
/// core, engine, index, the instruction's `.jasm` text and its debug op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The faulting instruction (for deadlocks and limits: the first blocked or running one).
    pub inst: Option<InstRef>,
    /// Cycle at which the fault was found.
    pub cycle: u64,
    /// What happened.
    pub kind: FaultKind,
    /// Human-readable description.
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fault {}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Output tensors' bytes in their declared dtypes (empty in timing-only runs).
    pub outputs: Vec<(String, Vec<u8>)>,
    /// Cycles, utilisation, roofline.
    pub report: Report,
    /// Per-instruction slices, when requested.
    pub trace: Vec<TraceSlice>,
    /// Remote signals' arrivals, when a trace is requested.
    pub signals: Vec<SignalArrival>,
    /// Bytes of HBM data and of race-checking state the run held at the end
    /// (both grow with the bytes accessed, not with the span of a pattern).
    pub held_bytes: u64,
    /// Wall time spent preparing the compiled engine (zero for the interpreter).
    pub jit_compile: std::time::Duration,
}

const SHARE_LCM: u128 = 720_720;

/// Outputs up to this size get their buffer when the run starts
/// ([`Hbm::adopt`]); a larger one is allocated only when the run completes, so
/// a run that faults early never holds it.
const ADOPTED_OUTPUT_MAX: u64 = 1 << 30;

struct Running {
    index: usize,
    start: u64,
    end: u64,
    vc: Vec<u32>,
}

struct Transfer {
    index: usize,
    /// Over the fabric (else the core's HBM share).
    fabric: bool,
    issue: u64,
    ready_at: u64,
    remaining: u128,
    started: Option<u64>,
    vc: Vec<u32>,
}

struct EngineState<'p> {
    core: usize,
    engine: Engine,
    stream: &'p [Inst],
    pc: usize,
    running: Option<Running>,
    inflight: VecDeque<Transfer>,
    busy: u64,
    vc: Vec<u32>,
}

impl EngineState<'_> {
    fn is_dma(&self) -> bool {
        self.engine.0 >= 3
    }
    fn finished(&self) -> bool {
        self.pc >= self.stream.len() && self.running.is_none() && self.inflight.is_empty()
    }
}

/// A remote signal on its way: applied to `core`'s semaphore `sem` at cycle `at`.
struct PendingSignal {
    at: u64,
    core: usize,
    sem: u8,
    vc: Vec<u32>,
    from: InstRef,
    sent: u64,
}

struct CoreState {
    mem: Option<CoreMemory>,
    /// When its last instruction completed.
    finished_at: u64,
    /// Bytes its DMA queues moved over HBM (and within its SRAM), and over the fabric.
    dma_bytes: u64,
    fabric_bytes: u64,
    sems: Vec<u32>,
    /// `history[s][k]`: join of the clocks of the first k+1 signals of semaphore s.
    history: Vec<Vec<Vec<u32>>>,
}

/// Runs `program` on `target` with `inputs` (raw bytes in each input's declared
/// dtype, by tensor name).
pub fn run(
    program: &Program,
    target: &Target,
    inputs: &[(String, Vec<u8>)],
    opts: &RunOptions,
) -> Result<Outcome, Fault> {
    Sim::new(program, target, opts)?.run(inputs)
}

struct Sim<'p> {
    p: &'p Program,
    t: &'p Target,
    opts: &'p RunOptions,
    engines: Vec<EngineState<'p>>,
    cores: Vec<CoreState>,
    hbm: Hbm<'p>,
    shadow: Option<Shadow>,
    jit: Option<Jit>,
    jit_compile: std::time::Duration,
    now: u64,
    started: u64,
    trace: Vec<TraceSlice>,
    signals: Vec<SignalArrival>,
    work: ExecutedWork,
    uninit_reads: u64,
    first_uninit: Option<(InstRef, Mem, u64)>,
    epe: usize,
    /// Remote signals in flight, in arrival order (one latency for all).
    pending: VecDeque<PendingSignal>,
    /// Units per cycle of a core's HBM share and of its fabric egress.
    hbm_rate: u128,
    fabric_rate: u128,
    units_per_byte: u128,
}

impl<'p> Sim<'p> {
    fn new(p: &'p Program, t: &'p Target, opts: &'p RunOptions) -> Result<Sim<'p>, Fault> {
        let epe = t.engines_per_core() as usize;
        // Illegal instructions are reported as faults at the instruction (a program
        // read from a .jbin has already passed these checks).
        for (c, e, i, inst) in p.instructions() {
            if let Err(ce) = check_inst(inst, e, t) {
                let r = InstRef { core: c, engine: e, index: i };
                let message = format!("illegal instruction: {}: {ce}", describe(p, r));
                return Err(Fault {
                    inst: Some(r),
                    cycle: 0,
                    kind: FaultKind::IllegalInstruction { message: ce.to_string() },
                    message,
                });
            }
        }
        let functional = !opts.timing_only;
        let g_total = p.cores.len() * epe;
        let mut engines = Vec::with_capacity(g_total);
        for (c, core) in p.cores.iter().enumerate() {
            for (e, stream) in core.iter().enumerate().take(epe) {
                engines.push(EngineState {
                    core: c,
                    engine: Engine(e as u8),
                    stream,
                    pc: 0,
                    running: None,
                    inflight: VecDeque::new(),
                    busy: 0,
                    vc: if functional && opts.check_races { vec![0; g_total] } else { Vec::new() },
                });
            }
        }
        let sems = t.sync.semaphores as usize;
        let cores = p
            .cores
            .iter()
            .map(|_| CoreState {
                mem: functional.then(|| CoreMemory::new(t)),
                finished_at: 0,
                dma_bytes: 0,
                fabric_bytes: 0,
                sems: vec![0; sems],
                history: vec![Vec::new(); sems],
            })
            .collect();
        let shadow = (functional && (opts.check_races || opts.strict_uninit)).then(|| {
            Shadow::new(
                (t.sram.partitions * t.sram.partition_bytes) as usize,
                (t.psum.partitions * t.psum.partition_bytes) as usize,
            )
        });
        let (hbm, fabric) = (t.hbm.bytes_per_cycle, t.fabric.bytes_per_cycle);
        let jit_start = std::time::Instant::now();
        let jit = match (functional, opts.engine) {
            (true, ExecEngine::Jit) => {
                let message = |e: String| format!("the compiled engine failed: {e}");
                let kind = |e: &str| FaultKind::IllegalInstruction { message: e.to_string() };
                Some(Jit::compile(p, t, opts.threads).map_err(|e| Fault {
                    inst: None,
                    cycle: 0,
                    kind: kind(&e),
                    message: message(e),
                })?)
            }
            _ => None,
        };
        Ok(Sim {
            p,
            t,
            opts,
            engines,
            cores,
            hbm: Hbm::default(),
            shadow,
            jit,
            jit_compile: jit_start.elapsed(),
            now: 0,
            started: 0,
            trace: Vec::new(),
            signals: Vec::new(),
            work: ExecutedWork::default(),
            uninit_reads: 0,
            first_uninit: None,
            epe,
            pending: VecDeque::new(),
            hbm_rate: (hbm.num * fabric.den) as u128 * SHARE_LCM,
            fabric_rate: (fabric.num * hbm.den) as u128 * SHARE_LCM,
            units_per_byte: (hbm.den * fabric.den) as u128 * SHARE_LCM,
        })
    }

    fn fault(&self, inst: Option<InstRef>, kind: FaultKind, message: String) -> Fault {
        Fault { inst, cycle: self.now, kind, message }
    }

    fn run(mut self, inputs: &'p [(String, Vec<u8>)]) -> Result<Outcome, Fault> {
        if !self.opts.timing_only {
            self.load(inputs);
        }
        loop {
            self.start_ready()?;
            // A signal still in flight when every engine is done changes nothing.
            if self.engines.iter().all(EngineState::finished) {
                break;
            }
            let Some(next) = self.next_event() else {
                return Err(self.deadlock());
            };
            if let Some(limit) = self.opts.max_cycles {
                if next > limit {
                    let msg = format!("cycle limit of {limit} exceeded\n{}", self.positions());
                    return Err(self.fault(None, FaultKind::CycleLimit(limit), msg));
                }
            }
            self.advance_transfers(next);
            self.now = next;
            self.deliver_signals();
            self.complete_due()?;
        }
        let outputs = if self.opts.timing_only {
            Vec::new()
        } else {
            self.p
                .tensors
                .iter()
                .filter(|t| t.role == Role::Output)
                .chain(self.p.tensors.iter().filter(|t| self.opts.read_scratch && t.role == Role::Scratch))
                .map(|t| {
                    let len = t.size_bytes() as usize;
                    let buf = self.hbm.take(t.addr, len).unwrap_or_else(|| {
                        let mut buf = crate::hugepages::filled(len, 0);
                        self.hbm.read(t.addr, &mut buf);
                        buf
                    });
                    (t.name.clone(), buf)
                })
                .collect()
        };
        let engines = self
            .engines
            .iter()
            .map(|e| EngineReport {
                core: e.core,
                engine: e.engine.name(),
                busy_cycles: e.busy,
                instructions: e.stream.len() as u64,
            })
            .collect();
        let first_uninit = self.first_uninit.map(|(r, mem, addr)| {
            format!("{}: reads never-written {}", describe(self.p, r), where_(self.p, self.t, mem, addr))
        });
        let cores = self
            .cores
            .iter()
            .enumerate()
            .map(|(core, c)| CoreReport {
                core,
                finished_at: c.finished_at,
                dma_bytes: c.dma_bytes,
                fabric_bytes: c.fabric_bytes,
            })
            .collect();
        let mut report = Report::new(self.p, self.t, self.now, engines, cores, self.work);
        report.uninitialized_reads = self.uninit_reads;
        report.first_uninitialized_read = first_uninit;
        let held_bytes = self.hbm.resident_bytes() + self.shadow.as_ref().map_or(0, Shadow::footprint_bytes);
        Ok(Outcome {
            outputs,
            report,
            trace: self.trace,
            signals: self.signals,
            held_bytes,
            jit_compile: self.jit_compile,
        })
    }

    /// Puts the constants and `inputs` in HBM, held where they are, and gives
    /// each output a buffer of its own to be handed back ([`Hbm::adopt`]).
    fn load(&mut self, inputs: &'p [(String, Vec<u8>)]) {
        for t in &self.p.tensors {
            let data = match t.role {
                Role::Const => Some(&t.data),
                Role::Input => inputs.iter().find(|(n, _)| n == &t.name).map(|(_, d)| d),
                Role::Output if t.size_bytes() <= ADOPTED_OUTPUT_MAX => {
                    self.hbm.adopt_fresh(t.addr, t.size_bytes() as usize);
                    None
                }
                _ => None,
            };
            if let Some(d) = data {
                let exact = d.len() as u64 == t.size_bytes();
                if !(exact && self.hbm.adopt(t.addr, Cow::Borrowed(d))) {
                    self.hbm.write(t.addr, d);
                }
                if let Some(s) = &mut self.shadow {
                    s.host_write(Mem::Hbm, t.addr, d.len() as u64);
                }
            }
        }
    }

    fn sem_ready(&self, core: usize, inst: &Inst) -> bool {
        inst.wait.is_none_or(|w| self.cores[core].sems[w.sem as usize] >= w.value)
    }

    /// Starts (or issues) every instruction that can start at `now`, until nothing changes.
    fn start_ready(&mut self) -> Result<(), Fault> {
        loop {
            let mut progressed = false;
            for g in 0..self.engines.len() {
                while self.try_start(g)? {
                    progressed = true;
                }
            }
            // Data phases whose latency has elapsed start now.
            for g in 0..self.engines.len() {
                let now = self.now;
                if let Some(head) = self.engines[g].inflight.front_mut() {
                    if head.started.is_none() && head.ready_at <= now {
                        head.started = Some(now);
                    }
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn tick_clock(&mut self, g: usize, core: usize, inst: &Inst) -> Vec<u32> {
        let e = &mut self.engines[g];
        if e.vc.is_empty() {
            return Vec::new();
        }
        if let Some(w) = inst.wait {
            if w.value > 0 {
                if let Some(h) = self.cores[core].history[w.sem as usize].get(w.value as usize - 1) {
                    for (a, b) in e.vc.iter_mut().zip(h) {
                        *a = (*a).max(*b);
                    }
                }
            }
        }
        e.vc[g] = (e.vc[g] + 1).min(MAX_CLOCK);
        e.vc.clone()
    }

    fn try_start(&mut self, g: usize) -> Result<bool, Fault> {
        let (core, stream, pc) = {
            let e = &self.engines[g];
            (e.core, e.stream, e.pc)
        };
        if pc >= stream.len() || self.engines[g].running.is_some() {
            return Ok(false);
        }
        let inst = &stream[pc];
        if !self.sem_ready(core, inst) {
            return Ok(false);
        }
        let is_dma_op = inst.op.is_dma();
        if self.engines[g].is_dma() && !is_dma_op && !self.engines[g].inflight.is_empty() {
            return Ok(false); // nop/halt on a queue waits for its transfers
        }
        if let Some(limit) = self.opts.max_instructions {
            if self.started >= limit {
                let r = InstRef { core, engine: self.engines[g].engine, index: pc };
                let msg = format!("instruction limit of {limit} exceeded at {}", describe(self.p, r));
                return Err(self.fault(Some(r), FaultKind::InstructionLimit(limit), msg));
            }
        }
        self.started += 1;
        let vc = self.tick_clock(g, core, inst);
        self.engines[g].pc += 1;
        if let Some(cost) = transfer_cost(&inst.op, self.t) {
            let now = self.now;
            self.engines[g].inflight.push_back(Transfer {
                index: pc,
                fabric: cost.fabric,
                issue: now,
                ready_at: now + cost.latency_cycles,
                remaining: cost.charged_bytes as u128 * self.units_per_byte,
                started: None,
                vc,
            });
            return Ok(true);
        }
        let cycles = compute_cycles(&inst.op, self.t).unwrap_or(0);
        let run = Running { index: pc, start: self.now, end: self.now + cycles, vc };
        if cycles == 0 {
            self.complete(g, run.index, run.start, run.end, None, &run.vc)?;
        } else {
            self.engines[g].running = Some(run);
        }
        Ok(true)
    }

    /// Bandwidth units per cycle for each active transfer of `core` on one
    /// channel (its fabric egress, or its HBM share).
    fn share(&self, core: usize, fabric: bool) -> u128 {
        let active = self.engines[core * self.epe..(core + 1) * self.epe]
            .iter()
            .filter(|e| e.inflight.front().is_some_and(|t| t.started.is_some() && t.fabric == fabric))
            .count() as u128;
        let rate = if fabric { self.fabric_rate } else { self.hbm_rate };
        rate.checked_div(active).unwrap_or(0)
    }

    fn next_event(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        for (g, e) in self.engines.iter().enumerate() {
            if let Some(r) = &e.running {
                consider(r.end);
            }
            if let Some(head) = e.inflight.front() {
                match head.started {
                    None => consider(head.ready_at.max(self.now)),
                    Some(_) => {
                        let rate = self.share(g / self.epe, head.fabric);
                        consider(self.now + head.remaining.div_ceil(rate) as u64);
                    }
                }
            }
        }
        if let Some(s) = self.pending.front() {
            consider(s.at);
        }
        next
    }

    fn advance_transfers(&mut self, to: u64) {
        let dt = (to - self.now) as u128;
        if dt == 0 {
            return;
        }
        let shares: Vec<[u128; 2]> =
            (0..self.cores.len()).map(|c| [self.share(c, false), self.share(c, true)]).collect();
        for e in &mut self.engines {
            if let Some(head) = e.inflight.front_mut() {
                let rate = shares[e.core][usize::from(head.fabric)];
                if head.started.is_some() {
                    head.remaining = head.remaining.saturating_sub(dt * rate);
                }
            }
        }
    }

    fn complete_due(&mut self) -> Result<(), Fault> {
        let now = self.now;
        for g in 0..self.engines.len() {
            if self.engines[g].running.as_ref().is_some_and(|r| r.end == now) {
                let r = self.engines[g].running.take().expect("checked above");
                self.complete(g, r.index, r.start, r.end, None, &r.vc)?;
            }
            let drained = self.engines[g].inflight.front().is_some_and(|t| t.started.is_some() && t.remaining == 0);
            if drained {
                let t = self.engines[g].inflight.pop_front().expect("checked above");
                let start = t.started.expect("checked above");
                self.complete(g, t.index, start, now, Some(t.issue), &t.vc)?;
            }
        }
        Ok(())
    }

    /// Applies an instruction's effects and signal.
    fn complete(
        &mut self,
        g: usize,
        index: usize,
        start: u64,
        end: u64,
        issue: Option<u64>,
        vc: &[u32],
    ) -> Result<(), Fault> {
        let (core, engine, stream) = (self.engines[g].core, self.engines[g].engine, self.engines[g].stream);
        let inst = &stream[index];
        let r = InstRef { core, engine, index };
        self.engines[g].busy += end - start;
        self.count_work(core, &inst.op);
        if !self.opts.timing_only {
            let gathered = match &inst.op {
                Op::DmaGather { dst, idx, table } => Some(self.gathered_rows(r, dst, idx, table)?),
                _ => None,
            };
            let accesses = match (&inst.op, &gathered) {
                (Op::DmaGather { dst, idx, table }, Some(rows)) => gather_footprint(self.t, dst, idx, table, rows),
                (op, _) => footprint(op, self.t),
            };
            self.check_accesses(g, r, accesses, vc)?;
            match (&inst.op, gathered) {
                (Op::Dma { xfer }, _) if xfer.is_fabric() => {
                    let mut mems: Vec<&mut CoreMemory> = self.cores.iter_mut().map(memory).collect();
                    execute_fabric(xfer, core, &mut mems);
                }
                (Op::Dma { xfer }, _) => execute_dma(xfer, memory(&mut self.cores[core]), &mut self.hbm),
                (Op::DmaGather { dst, table, .. }, Some(rows)) => {
                    execute_gather(dst, table, &rows, memory(&mut self.cores[core]), &self.hbm)
                }
                (op, _) => {
                    let (key, mem) = ((core, engine.0 as usize, index), memory(&mut self.cores[core]));
                    if !self.jit.as_ref().is_some_and(|j| j.run(key, mem)) {
                        execute_compute(op, mem)
                    }
                }
            }
        }
        self.cores[core].finished_at = end;
        if let Some(s) = inst.signal {
            let to = s.target_core(core);
            if to == core {
                self.signal(core, s.sem, vc);
            } else {
                let at = end + self.t.fabric.signal_latency_cycles;
                self.pending.push_back(PendingSignal { at, core: to, sem: s.sem, vc: vc.to_vec(), from: r, sent: end });
            }
        }
        if self.opts.trace {
            self.trace.push(TraceSlice { inst: r, start, end, issue });
        }
        Ok(())
    }

    /// Increments semaphore `sem` of `core`, recording the signaller's clock.
    fn signal(&mut self, core: usize, sem: u8, vc: &[u32]) {
        let cs = &mut self.cores[core];
        cs.sems[sem as usize] += 1;
        if !vc.is_empty() {
            let h = &mut cs.history[sem as usize];
            let joined = match h.last() {
                Some(prev) => prev.iter().zip(vc).map(|(a, b)| *a.max(b)).collect(),
                None => vc.to_vec(),
            };
            h.push(joined);
        }
    }

    /// Applies the remote signals that arrive by now.
    fn deliver_signals(&mut self) {
        while self.pending.front().is_some_and(|s| s.at <= self.now) {
            let s = self.pending.pop_front().expect("checked above");
            self.signal(s.core, s.sem, &s.vc);
            if self.opts.trace {
                let arrival = SignalArrival { from: s.from, sent: s.sent, arrived: s.at, core: s.core, sem: s.sem };
                self.signals.push(arrival);
            }
        }
    }

    fn count_work(&mut self, core: usize, op: &Op) {
        match op {
            Op::Matmul { moving, .. } => match moving.dtype.size_bytes() {
                1 => self.work.flops_8bit += pe_flops(op),
                2 => self.work.flops_16bit += pe_flops(op),
                _ => self.work.flops_f32 += pe_flops(op),
            },
            Op::Activate { func, src, .. } if func.is_transcendental() => {
                self.work.transcendentals += src.part_count as u64 * src.free_elems();
            }
            Op::Dma { .. } | Op::DmaGather { .. } => {
                let (bytes, charged) = transfer_bytes(op, self.t);
                self.work.dma_bytes += bytes;
                self.work.dma_charged_bytes += charged;
                if matches!(op, Op::Dma { xfer } if xfer.is_fabric()) {
                    self.work.fabric_bytes += bytes;
                    self.cores[core].fabric_bytes += bytes;
                } else {
                    self.cores[core].dma_bytes += bytes;
                }
            }
            _ => {}
        }
    }

    /// The table rows a `dma_gather` reads, or the fault of its first index out
    /// of range.
    fn gathered_rows(&self, r: InstRef, dst: &Tile, idx: &Column, table: &HbmRows) -> Result<Vec<u64>, Fault> {
        let mem = self.cores[r.core].mem.as_ref().expect("functional runs have memories");
        gather_rows(mem, dst, idx, table).map_err(|(i, index)| {
            let partition = dst.part_start + i;
            let msg = format!(
                "gather index out of range at cycle {}: {} reads index {index} at partition {partition}; the table has {} rows",
                self.now,
                describe(self.p, r),
                table.rows
            );
            self.fault(Some(r), FaultKind::GatherIndex { partition, index, rows: table.rows }, msg)
        })
    }

    fn check_accesses(&mut self, g: usize, r: InstRef, accesses: Vec<Access>, vc: &[u32]) -> Result<(), Fault> {
        let Some(shadow) = self.shadow.as_mut() else { return Ok(()) };
        // With race checking off (empty clock), accesses still track initialisation,
        // as the host, which is ordered with everything.
        let me = if vc.is_empty() { crate::race::HOST } else { epoch(g, vc[g]) };
        for Access { space, core, write, runs } in accesses {
            let core = core.unwrap_or(r.core);
            let mem = match space {
                None => Mem::Hbm,
                Some(Space::Sram) => Mem::Sram(core),
                Some(Space::Psum) => Mem::Psum(core),
            };
            for (addr, len) in runs {
                let (race, uninit) = if write {
                    (shadow.write(mem, addr, len, me, vc), None)
                } else {
                    shadow.read(mem, addr, len, me, vc)
                };
                if let Some(u) = uninit {
                    self.uninit_reads += 1;
                    if self.first_uninit.is_none() {
                        self.first_uninit = Some((r, u.mem, u.addr));
                    }
                    if self.opts.strict_uninit {
                        let msg = format!(
                            "uninitialized read at cycle {}: {} reads {}, which no instruction or input wrote",
                            self.now,
                            describe(self.p, r),
                            where_(self.p, self.t, u.mem, u.addr)
                        );
                        return Err(Fault {
                            inst: Some(r),
                            cycle: self.now,
                            kind: FaultKind::UninitializedRead { mem: u.mem, addr: u.addr },
                            message: msg,
                        });
                    }
                }
                if let Some(race) = race {
                    let eg = epoch_engine(race.earlier);
                    let earlier = InstRef {
                        core: eg / self.epe,
                        engine: Engine((eg % self.epe) as u8),
                        index: epoch_clock(race.earlier) as usize - 1,
                    };
                    let what = match race.conflict {
                        Conflict::ReadAfterWrite => "reads bytes written by",
                        Conflict::WriteAfterRead => "writes bytes read by",
                        Conflict::WriteAfterWrite => "writes bytes also written by",
                    };
                    let msg = format!(
                        "race at cycle {}: {} {what} {}, and no semaphore chain orders the two (first byte: {})",
                        self.now,
                        describe(self.p, r),
                        describe(self.p, earlier),
                        where_(self.p, self.t, race.mem, race.addr)
                    );
                    return Err(Fault {
                        inst: Some(r),
                        cycle: self.now,
                        kind: FaultKind::Race { earlier, conflict: race.conflict, mem: race.mem, addr: race.addr },
                        message: msg,
                    });
                }
            }
        }
        Ok(())
    }

    /// Where every unfinished engine is: its running or next instruction.
    fn positions(&self) -> String {
        let mut lines = Vec::new();
        for e in self.engines.iter().filter(|e| !e.finished()) {
            let (index, state) = if let Some(r) = &e.running {
                (r.index, format!("running since cycle {}", r.start))
            } else if let Some(t) = e.inflight.front() {
                (t.index, format!("transferring since cycle {}", t.started.unwrap_or(t.issue)))
            } else {
                (e.pc, "waiting".to_string())
            };
            let r = InstRef { core: e.core, engine: e.engine, index };
            lines.push(format!("  {} is {state}", describe(self.p, r)));
        }
        lines.join("\n")
    }

    fn deadlock(&self) -> Fault {
        let mut waits = Vec::new();
        let mut lines = Vec::new();
        for e in &self.engines {
            if e.finished() {
                continue;
            }
            let r = InstRef { core: e.core, engine: e.engine, index: e.pc };
            if let Some(w) = e.stream.get(e.pc).and_then(|i| i.wait) {
                let current = self.cores[e.core].sems[w.sem as usize];
                let name = self.p.sem_name(w.sem).map_or(format!("#{}", w.sem), str::to_string);
                lines.push(format!("  {} waits for {name} >= {} (it is {current})", describe(self.p, r), w.value));
                waits.push((r, w.sem, w.value, current));
            }
        }
        let message = format!(
            "deadlock at cycle {}: every unfinished engine waits on a semaphore\n{}",
            self.now,
            lines.join("\n")
        );
        Fault { inst: waits.first().map(|w| w.0), cycle: self.now, kind: FaultKind::Deadlock { waits }, message }
    }
}

/// A core's memories (functional runs have them).
fn memory(c: &mut CoreState) -> &mut CoreMemory {
    c.mem.as_mut().expect("functional runs have memories")
}

/// `core 0 pe[3] `matmul ...` (op: %c = matmul(%a, %b))`.
pub fn describe(p: &Program, r: InstRef) -> String {
    let Some(inst) = p.cores.get(r.core).and_then(|c| c.get(r.engine.0 as usize)).and_then(|s| s.get(r.index)) else {
        return format!("core {} {}[{}]", r.core, r.engine.name(), r.index);
    };
    let mut text = jpu_isa::jasm::inst_text(p, inst);
    let op = inst.debug.and_then(|d| p.debug_ops.get(d as usize));
    if let Some(cut) = text.find(" !\"") {
        text.truncate(cut);
    }
    match op {
        Some(op) => format!("core {} {}[{}] `{}` (op: {})", r.core, r.engine.name(), r.index, text, op),
        None => format!("core {} {}[{}] `{}`", r.core, r.engine.name(), r.index, text),
    }
}

/// `sram partition 3 byte 0x40` / `psum ...` / `hbm address 0x1000`; SRAM and
/// PSUM name their core when the program runs on several.
pub fn where_(p: &Program, t: &Target, mem: Mem, addr: u64) -> String {
    let core = |c: usize| if p.cores.len() > 1 { format!("core {c} ") } else { String::new() };
    match mem {
        Mem::Sram(c) => {
            let pb = t.sram.partition_bytes as u64;
            format!("{}sram partition {} byte 0x{:x}", core(c), addr / pb, addr % pb)
        }
        Mem::Psum(c) => {
            let pb = t.psum.partition_bytes as u64;
            format!("{}psum partition {} byte 0x{:x}", core(c), addr / pb, addr % pb)
        }
        Mem::Hbm => format!("hbm address 0x{addr:x}"),
    }
}

/// Where a DMA side lives, for footprints.
pub fn dma_space(space: DmaSpace) -> Option<Space> {
    match space {
        DmaSpace::Hbm => None,
        DmaSpace::Sram => Some(Space::Sram),
    }
}
