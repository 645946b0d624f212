//! Chrome Trace Event JSON of a run (opens in Perfetto and chrome://tracing).
//!
//! One process per core, one thread (track) per engine and DMA queue, one complete
//! slice per instruction named by its opcode and IR op. Timestamps are
//! microseconds at the target clock; each slice's args hold its cycles, stream
//! index and `.jasm` text. A DMA slice spans its data phase; its issue cycle is in
//! the args. A remote signal is a flow arrow from the signalling instruction's
//! slice to a one-cycle slice on the signalled core's `signals` track, when the
//! increment becomes visible there.

use jpu_isa::{Program, Target};
use serde_json::json;

use crate::sim::{SignalArrival, TraceSlice};

/// Builds the trace document.
pub fn chrome_trace(p: &Program, t: &Target, slices: &[TraceSlice], signals: &[SignalArrival]) -> serde_json::Value {
    let us_per_cycle = 1.0 / (t.clock_ghz * 1000.0);
    let mut events = Vec::new();
    for c in 0..p.cores.len() {
        events.push(
            json!({"ph": "M", "name": "process_name", "pid": c, "tid": 0, "args": {"name": format!("core {c}")}}),
        );
        for e in 0..t.engines_per_core() {
            let name = jpu_isa::Engine(e as u8).name();
            events.push(json!({"ph": "M", "name": "thread_name", "pid": c, "tid": e, "args": {"name": name}}));
            events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": c, "tid": e, "args": {"sort_index": e}}));
        }
    }
    for s in slices {
        let inst = &p.cores[s.inst.core][s.inst.engine.0 as usize][s.inst.index];
        let mnemonic = inst.op.opcode().mnemonic();
        let op = inst.debug.and_then(|d| p.debug_ops.get(d as usize));
        let name = match op {
            Some(op) => format!("{mnemonic} {op}"),
            None => mnemonic.to_string(),
        };
        let mut args = json!({
            "index": s.inst.index,
            "start_cycle": s.start,
            "end_cycle": s.end,
            "asm": jpu_isa::jasm::inst_text(p, inst),
        });
        if let Some(issue) = s.issue {
            args["issue_cycle"] = json!(issue);
        }
        events.push(json!({
            "ph": "X",
            "name": name,
            "cat": s.inst.engine.name(),
            "pid": s.inst.core,
            "tid": s.inst.engine.0,
            "ts": s.start as f64 * us_per_cycle,
            "dur": (s.end - s.start) as f64 * us_per_cycle,
            "args": args,
        }));
    }
    remote_signals(p, t, signals, &mut events);
    json!({ "traceEvents": events, "displayTimeUnit": "ns", "otherData": { "target": t.name, "clock_ghz": t.clock_ghz } })
}

/// Each remote signal: a slice on its core's `signals` track (after the
/// engines) and a flow from the signalling instruction, which ends at `sent`.
fn remote_signals(p: &Program, t: &Target, signals: &[SignalArrival], events: &mut Vec<serde_json::Value>) {
    let us_per_cycle = 1.0 / (t.clock_ghz * 1000.0);
    let track = t.engines_per_core();
    let mut named = vec![false; p.cores.len()];
    for (id, s) in signals.iter().enumerate() {
        if !std::mem::replace(&mut named[s.core], true) {
            events.push(
                json!({"ph": "M", "name": "thread_name", "pid": s.core, "tid": track, "args": {"name": "signals"}}),
            );
        }
        let sem = p.sem_name(s.sem).map_or(format!("#{}", s.sem), str::to_string);
        let name = format!("{sem} from core {}", s.from.core);
        let (from_ts, to_ts) = (s.sent as f64 * us_per_cycle, s.arrived as f64 * us_per_cycle);
        events.push(json!({
            "ph": "X", "name": name, "cat": "signal", "pid": s.core, "tid": track, "ts": to_ts, "dur": us_per_cycle,
            "args": { "from": format!("core {} {}[{}]", s.from.core, s.from.engine.name(), s.from.index), "sent_cycle": s.sent, "arrived_cycle": s.arrived },
        }));
        let flow = |ph: &str, pid: usize, tid: u32, ts: f64| json!({"ph": ph, "name": "remote signal", "cat": "signal", "id": id, "pid": pid, "tid": tid, "ts": ts, "bp": "e"});
        events.push(flow("s", s.from.core, s.from.engine.0 as u32, from_ts));
        events.push(flow("f", s.core, track, to_ts));
    }
}
