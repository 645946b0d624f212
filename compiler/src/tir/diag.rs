//! Diagnostics of the front end, rendered with codespan-reporting.

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;
use lalrpop_util::ParseError;

use super::ast::Span;
use super::lexer::{LexError, LexicalError, Token};

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

fn describe(t: &Token<'_>) -> String {
    match t {
        Token::FuncName(n) => format!("`@{n}`"),
        Token::ValueName(n) => format!("`%{n}`"),
        Token::Ident(n) => format!("`{n}`"),
        Token::Int(v) => format!("integer `{v}`"),
        Token::Float(v) => format!("number `{v}`"),
        Token::Str(s) => format!("string \"{s}\""),
        other => {
            let s = match other {
                Token::Func => "func",
                Token::Return => "return",
                Token::True => "true",
                Token::False => "false",
                Token::Inf => "inf",
                Token::Arrow => "->",
                Token::Minus => "-",
                Token::LParen => "(",
                Token::RParen => ")",
                Token::LBrace => "{",
                Token::RBrace => "}",
                Token::LBracket => "[",
                Token::RBracket => "]",
                Token::Comma => ",",
                Token::Colon => ":",
                _ => "=",
            };
            format!("`{s}`")
        }
    }
}

fn expected(list: &[String]) -> String {
    let mut names: Vec<String> = list
        .iter()
        .map(|e| {
            let e = e.trim_matches('"');
            match e {
                "@name" => "a function name `@name`".to_string(),
                "%name" => "a value `%name`".to_string(),
                "identifier" | "integer" => format!("an {e}"),
                "float" | "string" => format!("a {e}"),
                other => format!("`{other}`"),
            }
        })
        .collect();
    names.dedup();
    match names.len() {
        0 => String::new(),
        1 => format!("; expected {}", names[0]),
        _ => format!("; expected one of {}", names.join(", ")),
    }
}

/// Turns a parser error into a diagnostic.
pub fn from_parse_error(e: ParseError<usize, Token<'_>, LexicalError>, src: &str) -> Diagnostic {
    match e {
        ParseError::InvalidToken { location } => Diagnostic::new(location..location + 1, "invalid token"),
        ParseError::UnrecognizedEof { location, expected: exp } => {
            Diagnostic::new(location..location, format!("unexpected end of file{}", expected(&exp)))
        }
        ParseError::UnrecognizedToken { token: (l, t, r), expected: exp } => {
            Diagnostic::new(l..r, format!("unexpected {}{}", describe(&t), expected(&exp)))
        }
        ParseError::ExtraToken { token: (l, t, r) } => {
            Diagnostic::new(l..r, format!("unexpected {} after the function", describe(&t)))
        }
        ParseError::User { error } => {
            let text = src.get(error.span.clone()).unwrap_or("");
            let message = match error.kind {
                LexError::IntTooLarge => format!("integer `{text}` does not fit 64 bits"),
                LexError::Unexpected if text.starts_with('"') => {
                    "unterminated string (strings end on their line)".to_string()
                }
                LexError::Unexpected => {
                    format!("unexpected character `{}`", text.chars().next().unwrap_or(' ').escape_debug())
                }
            };
            Diagnostic::new(error.span, message)
        }
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
