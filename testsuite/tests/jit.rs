//! The compiled engine against the interpreter: every compiled program of the
//! stage cases, the whole layers and a program of NaNs, infinities and bf16
//! roundings, at -O0 and -O2, run by both engines on the same seeded inputs
//! with race checks on, gives the same output bytes and the same cycles on one
//! host thread or several, and the compiled engine really covers instructions
//! of them (generated code and helpers).

use jalc::front::tir;
use jpu_isa::Target;
use jpu_runtime::{run, ExecEngine, RunOptions};

/// NaNs of both signs (0 / 0 and its negation), infinities (x / 0), and f32
/// sums rounded to bf16.
const EDGES: &str = "func @edges(%x: f32[40, 96], %y: f32[40, 96]) -> bf16[40, 96] {
  %z = sub(%x, %x)
  %n = div(%z, %z)
  %m = mul(%n, -1.0)
  %i = div(%x, %z)
  %a = add(%n, %i)
  %b = sub(%m, %a)
  %c = add(%x, %y)
  %d = mul(%c, 3.0)
  %e = add(%d, %b)
  %o = cast(%e) {to = bf16}
  return %o
}";

fn cases() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let mut files = Vec::new();
    for dir in ["compile", "layers"] {
        let mut v: Vec<_> = std::fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        v.retain(|p| p.extension().is_some_and(|e| e == "tir"));
        v.sort();
        files.extend(v);
    }
    files
}

#[test]
fn both_engines_give_the_same_bytes_and_cycles() {
    let (mut covered, mut helped) = (0, 0);
    for target in ["jpu-tiny", "jpu1"] {
        let t = Target::builtin(target).unwrap();
        let programs = cases().into_iter().map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()));
        for ((path, src), level) in
            programs.chain([("edges".into(), EDGES.into())]).flat_map(|c| [(c.clone(), 0), (c, 2)])
        {
            let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render("case", &src, &d)));
            let Ok(c) = jalc::driver::compile(&f, &t, &jalc::driver::Options::at(level)) else { continue };
            let inputs = jpu_testsuite::chip_inputs(&f, &c.program, 3);
            let outcome = |engine, threads| {
                let opts = RunOptions { engine, threads, strict_uninit: true, ..RunOptions::default() };
                run(&c.program, &t, &inputs, &opts).unwrap_or_else(|e| panic!("{path} -O{level}: {e:?}"))
            };
            let interp = outcome(ExecEngine::Interp, 1);
            // One thread, and helpers splitting large instructions.
            for threads in [1, 3] {
                let jit = outcome(ExecEngine::Jit, threads);
                assert_eq!(interp.report.cycles, jit.report.cycles, "{path} -O{level} on {target}");
                assert!(
                    interp.outputs == jit.outputs,
                    "{path} -O{level} on {target}, {threads} threads: outputs differ"
                );
            }
            let jit = jpu_runtime::jit::Jit::compile(&c.program, &t, 1).unwrap();
            covered += jit.compiled();
            helped += jit.helpers();
        }
    }
    assert!(covered > 100, "only {covered} instructions compiled");
    assert!(helped > 100, "only {helped} instructions run by helpers");
}
