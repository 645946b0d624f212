//! Stage snapshots (`testsuite/cases/compile/*.tir`, `// test: compile`): what each
//! compiler stage prints for small GEMMs on the target named by `// target:`:
//! `--emit parsed`, `opt`, `kernels`, `tiles` and `asm`, on one core or the
//! `// cores:` a case names. Every program is also verified
//! (simulated with race checking, compared with the evaluator).

use jalc::driver;
use jalc::front::tir;
use jpu_isa::Target;
use jpu_testsuite::{case_kind, case_name};

#[test]
fn compile_stage_snapshots() {
    insta::glob!("../cases/compile", "*.tir", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = case_name(path);
        assert_eq!(case_kind(&src), Some("compile"), "{name}");
        let target =
            src.lines().find_map(|l| l.strip_prefix("// target:")).map(str::trim).expect("a `// target:` line");
        let t = Target::builtin(target).unwrap();
        // `// cores: N` spreads the kernels over N cores (default 1).
        let cores: u32 = src.lines().find_map(|l| l.strip_prefix("// cores:")).map_or(1, |n| n.trim().parse().unwrap());
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render(&name, &src, &d)));
        let c = driver::compile(&f, &t, &driver::Options { cores, ..driver::Options::o2() }).unwrap();
        let v = jalc::verify::verify_compiled(&c, &f, &t, 0).unwrap();
        let listed_cores: Vec<u32> = if cores > 1 { vec![cores] } else { Vec::new() };
        assert!(v.passed, "{name}: {:?}", v.first_mismatch);
        let out = format!(
            "== parsed\n{}\n== opt\n{}\n== kernels\n{}\n== tiles\n{}\n== asm\n{}\n== verify\ncycles {}, roofline {} ({:.1}%)\n",
            jalc::ir::printer::print(&f),
            jalc::ir::printer::print(&c.optimized),
            driver::kernels_text(&c.kernels, &c.names, &t, &listed_cores),
            c.tiles,
            jpu_isa::jasm::disassemble(&c.program),
            v.report.cycles,
            v.report.roofline_cycles,
            100.0 * v.report.roofline_fraction
        );
        insta::assert_snapshot!(out);
    });
}
