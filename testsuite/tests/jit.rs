//! The compiled engine against the interpreter: every compiled program of the
//! stage cases, the whole layers and a program of NaNs, infinities and bf16
//! roundings, at -O0 and -O2, run by both engines on the same seeded inputs
//! with race checks on, gives the same output bytes and the same cycles on one
//! host thread or several, and the compiled engine really covers instructions
//! of them (generated code and helpers); so do the 1000 generated programs of
//! the compile floor and a corpus of random valid binaries.

use jalc::front::tir;
use jpu_isa::Target;
use jpu_runtime::RunOptions;

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

/// The edge program with rows of 96 (whole f32x4 lanes) and of 37 (a tail of one).
fn edges() -> [(String, String); 2] {
    [("edges".into(), EDGES.into()), ("edges, rows of 37".into(), EDGES.replace("96", "37"))]
}

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
        for ((path, src), level) in programs.chain(edges()).flat_map(|c| [(c.clone(), 0), (c, 2)]) {
            let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render("case", &src, &d)));
            let Ok(c) = jalc::driver::compile(&f, &t, &jalc::driver::Options::at(level)) else { continue };
            let inputs = jpu_testsuite::chip_inputs(&f, &c.program, 3);
            // One thread, and helpers splitting large instructions.
            for threads in [1, 3] {
                let opts = RunOptions { threads, strict_uninit: true, ..RunOptions::default() };
                let what = format!("{path} -O{level} on {target}, {threads} threads");
                jpu_testsuite::run_on_both_engines(&c.program, &t, &inputs, &opts, &what)
                    .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            }
            let jit = jpu_runtime::jit::Jit::compile(&c.program, &t, 1).unwrap();
            covered += jit.compiled();
            helped += jit.helpers();
            // Every core of the target, at -O2.
            if level == 2 {
                let every = jalc::driver::Options { cores: t.cores, ..jalc::driver::Options::at(2) };
                let c = jalc::driver::compile(&f, &t, &every).unwrap_or_else(|e| panic!("{path} on every core: {e}"));
                let inputs = jpu_testsuite::chip_inputs(&f, &c.program, 3);
                let opts = RunOptions { strict_uninit: true, ..RunOptions::default() };
                let what = format!("{path} -O2 on every core of {target}");
                jpu_testsuite::run_on_both_engines(&c.program, &t, &inputs, &opts, &what)
                    .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            }
        }
    }
    assert!(covered > 100, "only {covered} instructions compiled");
    assert!(helped > 100, "only {helped} instructions run by helpers");
}

/// The compile floor's 1000 generated programs (`tir_gen`), compiled for
/// jpu-tiny at -O0 and -O2, give the same bytes, report and cycles on both
/// engines, race-checked with uninitialised reads refused.
#[test]
fn a_thousand_generated_programs_agree_on_both_engines() {
    let t = Target::builtin("jpu-tiny").unwrap();
    let mut covered = 0;
    for seed in 0..1000u64 {
        let src = jpu_testsuite::tir_gen::random_tir(seed);
        let f = tir::parse_and_check(&src).unwrap();
        for level in [0, 2] {
            let c = jalc::driver::compile(&f, &t, &jalc::driver::Options::at(level))
                .unwrap_or_else(|e| panic!("seed {seed} -O{level}: {e}\n{src}"));
            let inputs = jpu_testsuite::chip_inputs(&f, &c.program, seed);
            let opts = RunOptions { strict_uninit: true, ..RunOptions::default() };
            let what = format!("seed {seed} -O{level}\n{src}");
            jpu_testsuite::run_on_both_engines(&c.program, &t, &inputs, &opts, &what)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            covered += jpu_runtime::jit::Jit::compile(&c.program, &t, 1).unwrap().compiled();
        }
    }
    assert!(covered > 3000, "only {covered} instructions compiled");
}

/// A corpus of random valid binaries from the ISA's generator (every
/// instruction kind, NaN payloads, negative strides, random waits that often
/// deadlock or race), written to .jbin and read back, runs to the same outcome
/// or the same fault on both engines, with race checks and without.
#[test]
fn random_binaries_agree_on_both_engines() {
    let (mut covered, mut helped) = (0, 0);
    for target in ["jpu-tiny", "jpu1"] {
        let t = Target::builtin(target).unwrap();
        for seed in 0..300u64 {
            let bytes = jpu_isa::jbin::write(&jpu_isa::random::random_program(seed, &t));
            let p = jpu_isa::jbin::read(&bytes).unwrap();
            let limits =
                RunOptions { max_instructions: Some(10_000), max_cycles: Some(10_000_000), ..RunOptions::default() };
            for check_races in [true, false] {
                let opts = RunOptions { check_races, ..limits.clone() };
                let what = format!("random program {seed} on {target}, race checks {check_races}");
                let _ = jpu_testsuite::run_on_both_engines(&p, &t, &[], &opts, &what);
            }
            let jit = jpu_runtime::jit::Jit::compile(&p, &t, 1).unwrap();
            covered += jit.compiled();
            helped += jit.helpers();
        }
    }
    assert!(covered > 500, "only {covered} instructions compiled");
    assert!(helped > 500, "only {helped} instructions run by helpers");
}
