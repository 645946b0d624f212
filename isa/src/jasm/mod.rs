//! The `.jasm` assembly language: lexer, assembler (parser) and printer.
//!
//! `assemble(disassemble(p)) == p` for every valid program, and
//! `disassemble(assemble(t)) == t` for every canonical text `t`.

pub mod lexer;
pub mod parser;
pub mod printer;

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;

pub use parser::{assemble, assemble_with, AsmError};
pub use printer::{disassemble, inst_text};

/// Renders assembler errors as `file:line:col` diagnostics with the source line and
/// a caret under the span (no colour).
pub fn render_errors(file_name: &str, src: &str, errors: &[AsmError]) -> String {
    let file = SimpleFile::new(file_name, src);
    let config = term::Config::default();
    let mut out = String::new();
    for e in errors {
        let d = Diagnostic::error().with_message(&e.message).with_labels(vec![Label::primary((), e.span.clone())]);
        match term::emit_into_string(&config, &file, &d) {
            Ok(s) => out.push_str(&s),
            Err(_) => out.push_str(&format!("error: {}\n", e.message)),
        }
    }
    out
}
