//! Diagnostics: an error at a source span with labels and notes, rendered with
//! codespan-reporting as `file:line:col` reports. Every stage reports through it:
//! the front end's syntax and type errors, and the compiler's refusals
//! ([`crate::error::CompileError`]) at the span of the statement they concern.

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;

use crate::ir::Span;

/// One error: a span, a message, optional secondary labels and notes.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Where.
    pub span: Span,
    /// What is wrong.
    pub message: String,
    /// Other places that explain it (e.g. the earlier definition).
    pub secondary: Vec<(Span, String)>,
    /// Extra lines (e.g. the allowed values).
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { span, message: message.into(), secondary: Vec::new(), notes: Vec::new() }
    }

    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.secondary.push((span, text.into()));
        self
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
}

/// Renders diagnostics as `file:line:col` reports with the source line and a caret.
pub fn render(file_name: &str, src: &str, diags: &[Diagnostic]) -> String {
    let file = SimpleFile::new(file_name, src);
    let config = term::Config::default();
    let mut out = String::new();
    for d in diags {
        let clamp = |s: &Span| s.start.min(src.len())..s.end.min(src.len()).max(s.start.min(src.len()));
        let mut labels = vec![Label::primary((), clamp(&d.span))];
        labels.extend(d.secondary.iter().map(|(s, t)| Label::secondary((), clamp(s)).with_message(t)));
        let report = Report::error().with_message(&d.message).with_labels(labels).with_notes(d.notes.clone());
        match term::emit_into_string(&config, &file, &report) {
            Ok(s) => out.push_str(&s),
            Err(_) => out.push_str(&format!("error: {}\n", d.message)),
        }
    }
    out
}
