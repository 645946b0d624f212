//! Properties of the front end over random programs and corrupted sources.

use jalc::eval::{eval, Tensor};
use jalc::front::tir;
use jalc::ir::printer;
use jpu_testsuite::tir_gen::random_tir;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// print(parse(print(p))) == print(p), and the evaluator runs every program.
    #[test]
    fn random_programs_round_trip_and_evaluate(seed in any::<u64>()) {
        let src = random_tir(seed);
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}\n{src}", tir::render("gen.tir", &src, &d)));
        let text = printer::print(&f);
        let again = tir::parse_and_check(&text).unwrap_or_else(|d| panic!("{}\n{text}", tir::render("printed.tir", &text, &d)));
        prop_assert_eq!(printer::print(&again), text);
        // Seeded inputs (gather indices within their tables).
        let inputs: Vec<Tensor> = jalc::verify::random_inputs(&f, seed);
        let out = eval(&f, &inputs).unwrap();
        for (r, t) in f.results.iter().zip(&out) {
            prop_assert_eq!(&t.ty, &f.node(*r).ty);
            prop_assert_eq!(t.data.len() as u64, t.ty.elems());
        }
    }
}

#[test]
fn generator_covers_every_op() {
    let mut seen = std::collections::HashSet::new();
    for seed in 0..400 {
        let f = tir::parse_and_check(&random_tir(seed)).unwrap();
        for n in &f.nodes {
            seen.insert(n.op.name());
        }
    }
    for op in jalc::ir::ops::names() {
        assert!(seen.contains(op), "the generator never produces `{op}`");
    }
}

#[test]
fn truncations_and_mutations_never_panic() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/cases/tir");
    let mut files = Vec::new();
    for dir in [root.to_string(), format!("{root}/errors")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "tir") {
                files.push(std::fs::read_to_string(p).unwrap());
            }
        }
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const ALPHABET: &[u8] = b" \n,.:=[]{}()-%@\"0123456789afimx_;/\xc3\xa9";
    let check = |s: &str| match tir::parse_and_check(s) {
        Ok(f) => {
            let _ = printer::print(&f);
        }
        Err(d) => {
            assert!(!d.is_empty());
            let _ = tir::render("m.tir", s, &d);
        }
    };
    let mut cases = 0;
    for src in &files {
        let b = src.as_bytes();
        for cut in (0..b.len()).step_by(5) {
            if let Ok(s) = std::str::from_utf8(&b[..cut]) {
                check(s);
                cases += 1;
            }
        }
        for _ in 0..120 {
            let mut m = b.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() % m.len().max(1) as u64) as usize;
                let c = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
                match next() % 3 {
                    0 if at < m.len() => m[at] = c,
                    1 if at < m.len() => {
                        m.remove(at);
                    }
                    _ => m.insert(at.min(m.len()), c),
                }
            }
            check(&String::from_utf8_lossy(&m));
            cases += 1;
        }
    }
    assert!(cases > 5000, "{cases}");
}

#[test]
#[ignore = "prints a generated program"]
fn show_one() {
    println!("{}", random_tir(7));
    println!("{}", random_tir(12345));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The optimizer succeeds on every program and keeps its signature; with the
    /// exact rule families (transpose folding, reshape cancellation, power-of-two
    /// scale folding) the optimized program computes bit for bit what the original
    /// does, optimized whole or region by region, and its results keep their names.
    #[test]
    fn optimizer_keeps_meaning(seed in any::<u64>()) {
        use jalc::opt::{optimize, optimize_with, rules, Limits};
        let src = random_tir(seed);
        let f = tir::parse_and_check(&src).unwrap();
        let t = jpu_isa::Target::builtin("jpu1").unwrap();
        let all = optimize(&f, &t, Limits::default()).unwrap_or_else(|e| panic!("{e}\n{src}"));
        prop_assert_eq!(all.func.num_params, f.num_params);
        let types = |g: &jalc::ir::Func| g.results.iter().map(|r| g.node(*r).ty.clone()).collect::<Vec<_>>();
        prop_assert_eq!(types(&all.func), types(&f));
        let mut exact = rules::transpose_folding();
        exact.extend(rules::reshape_cancellation());
        exact.extend(rules::scale_folding());
        let o = optimize_with(&f, &t, Limits::default(), &exact).unwrap();
        let inputs: Vec<Tensor> = jalc::verify::random_inputs(&f, seed);
        // Region by region (three statements each), too.
        let small = Limits { region_statements: 3, ..Limits::default() };
        let regions = optimize_with(&f, &t, small, &exact).unwrap_or_else(|e| panic!("{e}\n{src}"));
        let a = eval(&f, &inputs).unwrap();
        for g in [&o.func, &regions.func] {
            prop_assert_eq!(types(g), types(&f));
            let names = |g: &jalc::ir::Func| g.results.iter().map(|r| g.node(*r).name.clone()).collect::<Vec<_>>();
            prop_assert_eq!(names(g), names(&f));
            let b = eval(g, &inputs).unwrap();
            for (x, y) in a.iter().zip(&b) {
                let same = x.data.iter().zip(&y.data).all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()));
                prop_assert!(same, "optimized program differs\n{}\n{}", src, printer::print(g));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Every random program either compiles for jpu-tiny and verifies against the
    /// evaluator (race-checked), or is refused as unsupported or over a limit, at
    /// a source span; at -O0 and at the default level. Never a panic, never an
    /// internal error, never a wrong result.
    #[test]
    fn random_programs_compile_and_verify_or_are_refused(seed in any::<u64>()) {
        let src = random_tir(seed);
        let f = tir::parse_and_check(&src).unwrap();
        let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
        let mut o0_compiles = false;
        for level in [0, 2] {
            match jalc::verify::verify_with(&f, &t, seed, &jalc::driver::Options::at(level)) {
                Ok(v) => {
                    prop_assert!(v.passed, "-O{level}: {:?}\n{src}", v.first_mismatch);
                    o0_compiles |= level == 0;
                }
                Err(jalc::verify::VerifyError::Compile(e)) => {
                    use jalc::error::CompileError as E;
                    let clear = matches!(e, E::Unsupported { .. } | E::LimitExceeded { .. });
                    prop_assert!(clear && !e.span().is_empty(), "-O{level}: {e:?}\n{src}");
                    prop_assert!(!o0_compiles, "-O2 refuses what -O0 compiles: {e}\n{src}");
                }
                Err(e) => prop_assert!(false, "-O{level}: {e:?}\n{src}"),
            }
        }
    }
}

/// The compile floor: every program of 1000 fixed seeds compiles for jpu-tiny
/// and verifies against the evaluator (race-checked, uninitialised reads
/// refused) at -O0 and -O2, and at -O2 on both of its cores.
#[test]
fn every_random_program_of_a_thousand_seeds_compiles_and_verifies() {
    let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
    let runs = [(0, 1), (2, 1), (2, 2)];
    for seed in 0..1000u64 {
        let src = random_tir(seed);
        let f = tir::parse_and_check(&src).unwrap();
        for (level, cores) in runs {
            let opts = jalc::driver::Options { cores, ..jalc::driver::Options::at(level) };
            let v = jalc::verify::verify_with(&f, &t, seed, &opts)
                .unwrap_or_else(|e| panic!("seed {seed} -O{level} on {cores} cores: {e}\n{src}"));
            assert!(v.passed, "seed {seed} -O{level} on {cores} cores: {:?}\n{src}", v.first_mismatch);
        }
    }
}
