//! Compile errors (`testsuite/cases/compile-errors/*.tir`, `// test: compile-error`):
//! programs that check but do not compile, at the level (`// level:`), target
//! (`// target:`) and schedule file (`// schedule:` lines) the case names. The
//! snapshot is the error's kind and its rendered diagnostic: at the statement it
//! concerns in the program (at -O0 and -O2 alike), or at the line of the
//! schedule file for a schedule's own errors.

use jalc::driver::{compile, Options};
use jalc::error::CompileError;
use jalc::front::tir;
use jalc::schedule::Schedule;
use jpu_isa::Target;
use jpu_testsuite::{case_kind, case_name};

fn header<'a>(src: &'a str, key: &str) -> impl Iterator<Item = &'a str> {
    let prefix = format!("// {key}:");
    src.lines().filter_map(move |l| l.strip_prefix(prefix.as_str()).map(|v| v.strip_prefix(' ').unwrap_or(v)))
}

#[test]
fn compile_error_cases() {
    insta::glob!("../cases/compile-errors", "*.tir", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = case_name(path);
        assert_eq!(case_kind(&src), Some("compile-error"), "{name}");
        let t = Target::builtin(header(&src, "target").next().expect("a `// target:` line")).unwrap();
        let level = header(&src, "level").next().expect("a `// level:` line").parse().unwrap();
        let schedule_text: String = header(&src, "schedule").map(|l| format!("{l}\n")).collect();
        let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render(&name, &src, &d)));
        let e = match Schedule::parse(&schedule_text) {
            Ok(schedule) => compile(&f, &t, &Options::with(level, schedule)).err().expect("the case compiles"),
            Err(e) => e,
        };
        assert!(!matches!(e, CompileError::Internal { .. }), "{name}: {e:?}");
        let rendered = match e {
            CompileError::ScheduleSyntax { .. } => e.render("case.schedule", &schedule_text),
            _ => e.render(&name, &src),
        };
        insta::assert_snapshot!(format!("{}\n{rendered}", e.kind()));
    });
}

/// An internal error renders at its span with a note asking for a report.
#[test]
fn internal_errors_render_with_their_span_and_a_note() {
    let src = "func @f(%x: f32[4]) -> f32[4] {\n  %y = exp(%x)\n  return %y\n}\n";
    let e = CompileError::Internal { message: "the tile program is invalid".into(), span: 34..46 };
    let text = e.render("f.tir", src);
    assert!(text.contains("error: internal error: the tile program is invalid"), "{text}");
    assert!(text.contains("f.tir:2:3"), "{text}");
    assert!(text.contains("this is a bug in the compiler"), "{text}");
}
