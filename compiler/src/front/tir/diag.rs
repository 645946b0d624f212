//! Syntax errors: lalrpop's parse errors as spanned [`Diagnostic`]s.

use lalrpop_util::ParseError;

use super::lexer::{LexError, LexicalError, Token};
use crate::diagnostic::Diagnostic;

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
