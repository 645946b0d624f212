//! Runners for `.tir` cases (`testsuite/cases/tir/**.tir`).
//!
//! - `// test: parsed`: the file checks; the snapshot is the canonical IR
//!   (`jalc compile --emit parsed`), and printing is a fixed point.
//! - `// test: error`: the file does not check; the snapshot is every rendered
//!   diagnostic.

use jalc::front::tir;
use jalc::ir::printer;
use jpu_testsuite::{case_kind, case_name};

fn run_parsed(name: &str, src: &str) -> String {
    let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render(name, src, &d)));
    let text = printer::print(&f);
    let again = tir::parse_and_check(&text).unwrap_or_else(|d| panic!("{}\n{text}", tir::render(name, &text, &d)));
    assert_eq!(printer::print(&again), text, "{name}: printing is not a fixed point");
    text
}

fn run_error(name: &str, src: &str) -> String {
    match tir::parse_and_check(src) {
        Ok(_) => panic!("{name}: expected diagnostics"),
        Err(d) => tir::render(name, src, &d),
    }
}

#[test]
fn tir_cases() {
    insta::glob!("../cases/tir", "**/*.tir", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = case_name(path);
        let out = match case_kind(&src) {
            Some("parsed") => run_parsed(&name, &src),
            Some("error") => run_error(&name, &src),
            other => panic!("{name}: unknown test kind {other:?}"),
        };
        insta::assert_snapshot!(out);
    });
}
