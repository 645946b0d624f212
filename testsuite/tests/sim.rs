//! Runners for simulator cases (`testsuite/cases/sim/**.jasm`).
//!
//! - `; test: fault`: the program assembles and faults when run; the snapshot is
//!   the fault message. A `; options:` line sets `strict`, `max_cycles=N`,
//!   `max_instructions=N`.
//! - `; test: timing`: the program runs; `; expect: cycles=N ENGINE=BUSY ...` lines
//!   (computed by hand from the machine model; `ENGINE` is core 0's, `coreC.ENGINE`
//!   another core's) must hold exactly, a timing-only
//!   run must give the same cycles, and the snapshot is the report.

use jpu_isa::{jasm, Target};
use jpu_runtime::{run, RunOptions};
use jpu_testsuite::{case_kind, case_name};

fn directive<'a>(src: &'a str, key: &str) -> Vec<&'a str> {
    src.lines().filter_map(|l| l.strip_prefix(&format!("; {key}:"))).flat_map(|rest| rest.split_whitespace()).collect()
}

fn options(src: &str) -> RunOptions {
    let mut o = RunOptions::default();
    for opt in directive(src, "options") {
        match opt.split_once('=') {
            None if opt == "strict" => o.strict_uninit = true,
            Some(("max_cycles", v)) => o.max_cycles = Some(v.parse().unwrap()),
            Some(("max_instructions", v)) => o.max_instructions = Some(v.parse().unwrap()),
            _ => panic!("unknown option `{opt}`"),
        }
    }
    o
}

fn load(name: &str, src: &str) -> (jpu_isa::Program, Target) {
    let p = jasm::assemble(src).unwrap_or_else(|e| panic!("{}", jasm::render_errors(name, src, &e)));
    let t = Target::builtin(&p.target).unwrap();
    (p, t)
}

fn run_fault(name: &str, src: &str) -> String {
    let (p, t) = load(name, src);
    match run(&p, &t, &[], &options(src)) {
        Ok(o) => panic!("{name}: expected a fault, ran in {} cycles", o.report.cycles),
        Err(f) => format!("{f}\n"),
    }
}

fn run_timing(name: &str, src: &str) -> String {
    let (p, t) = load(name, src);
    let full = run(&p, &t, &[], &options(src)).unwrap_or_else(|f| panic!("{name}: {f}"));
    let timing = run(&p, &t, &[], &RunOptions { timing_only: true, ..options(src) }).unwrap();
    let r = &full.report;
    assert_eq!(timing.report.cycles, r.cycles, "{name}: timing-only cycles differ");
    assert_eq!(timing.report.engines, r.engines, "{name}: timing-only busy cycles differ");
    let expects = directive(src, "expect");
    assert!(!expects.is_empty(), "{name}: a timing case states `; expect: cycles=N ...`");
    for e in expects {
        let (key, value) = e.split_once('=').unwrap();
        let value: u64 = value.parse().unwrap();
        let got = match key.split_once('.') {
            _ if key == "cycles" => r.cycles,
            Some((core, engine)) => {
                let core: usize = core.strip_prefix("core").and_then(|c| c.parse().ok()).expect("`coreN.ENGINE`");
                r.engines.iter().find(|e| e.core == core && e.engine == engine).map_or(0, |e| e.busy_cycles)
            }
            None => r.busy(key),
        };
        assert_eq!(got, value, "{name}: {key}");
    }
    let mut out = format!("cycles: {}\nroofline: {} ({})\n", r.cycles, r.roofline_cycles, r.roofline.bound_by);
    for e in r.engines.iter().filter(|e| e.instructions > 0) {
        out.push_str(&format!(
            "core{}.{}: busy {} of {} instructions\n",
            e.core, e.engine, e.busy_cycles, e.instructions
        ));
    }
    out
}

#[test]
fn sim_cases() {
    insta::glob!("../cases/sim", "**/*.jasm", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = case_name(path);
        let out = match case_kind(&src) {
            Some("fault") => run_fault(&name, &src),
            Some("timing") => run_timing(&name, &src),
            other => panic!("{name}: unknown test kind {other:?}"),
        };
        insta::assert_snapshot!(out);
    });
}
