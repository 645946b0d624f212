//! Runners for `.jasm` cases (`testsuite/cases/jasm/**.jasm`).
//!
//! - `; test: disasm`: the file assembles; the snapshot is its canonical
//!   disassembly; the canonical text and the binary both round-trip exactly.
//! - `; test: error`: the file does not assemble; the snapshot is every rendered
//!   diagnostic (file:line:col, the source line, a caret and the message).

use jpu_isa::{jasm, jbin};
use jpu_testsuite::{case_kind, case_name};

fn run_disasm(name: &str, src: &str) -> String {
    let program = jasm::assemble(src).unwrap_or_else(|errs| panic!("{}", jasm::render_errors(name, src, &errs)));
    let text = jasm::disassemble(&program);
    let bytes = jbin::write(&program);
    assert_eq!(jbin::read(&bytes).expect("binary reads back"), program, "{name}: binary round trip");
    let again = jasm::assemble(&text).unwrap_or_else(|errs| panic!("{}", jasm::render_errors(name, &text, &errs)));
    assert_eq!(jbin::write(&again), bytes, "{name}: asm -> bin -> asm -> bin changed bytes");
    assert_eq!(jasm::disassemble(&again), text, "{name}: canonical text is not a fixed point");
    text
}

fn run_error(name: &str, src: &str) -> String {
    match jasm::assemble(src) {
        Ok(_) => panic!("{name}: expected an assembler error"),
        Err(errs) => jasm::render_errors(name, src, &errs),
    }
}

#[test]
fn jasm_cases() {
    insta::glob!("../cases/jasm", "**/*.jasm", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = case_name(path);
        let out = match case_kind(&src) {
            Some("disasm") => run_disasm(&name, &src),
            Some("error") => run_error(&name, &src),
            other => panic!("{name}: unknown test kind {other:?} (expected `; test: disasm` or `; test: error`)"),
        };
        insta::assert_snapshot!(out);
    });
}

#[test]
fn shipped_example_disassembly() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/gemm-tiny.jasm");
    let src = std::fs::read_to_string(path).unwrap();
    insta::assert_snapshot!(run_disasm("examples/gemm-tiny.jasm", &src));
}
