//! Tokens of the `.jasm` assembly language (a logos lexer).
//!
//! Newlines are tokens: one instruction or directive per line. `;` starts a comment
//! that runs to the end of the line.

use logos::Logos;

/// A `.jasm` token.
#[derive(Logos, Debug, Clone, PartialEq)]
#[logos(skip r"[ \t\r]+")]
#[logos(skip(r";[^\n]*", allow_greedy = true))]
pub enum Tok<'s> {
    /// End of a line.
    #[token("\n")]
    Newline,
    /// Identifier: mnemonic, field name, keyword, dtype, tensor or semaphore name.
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident(&'s str),
    /// Unsigned integer, decimal or `0x` hex.
    #[regex(r"[0-9]+", |lex| lex.slice().parse::<u64>().ok())]
    #[regex(r"0x[0-9a-fA-F]+", |lex| u64::from_str_radix(&lex.slice()[2..], 16).ok())]
    Int(u64),
    /// Decimal float with a fraction or exponent (sign is a separate token).
    #[regex(r"[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?")]
    #[regex(r"[0-9]+[eE][+-]?[0-9]+")]
    Float(&'s str),
    /// Double-quoted string; `\"` and `\\` are the only escapes.
    #[regex(r#""([^"\\\n]|\\["\\])*""#)]
    Str(&'s str),
    /// A semaphore by number: `#5`.
    #[regex(r"#[0-9]+", |lex| lex.slice()[1..].parse::<u32>().ok())]
    SemId(u32),
    /// `.`
    #[token(".")]
    Dot,
    /// `,`
    #[token(",")]
    Comma,
    /// `:`
    #[token(":")]
    Colon,
    /// `=`
    #[token("=")]
    Eq,
    /// `[`
    #[token("[")]
    LBracket,
    /// `]`
    #[token("]")]
    RBracket,
    /// `+`
    #[token("+")]
    Plus,
    /// `-`
    #[token("-")]
    Minus,
    /// `->`
    #[token("->")]
    Arrow,
    /// `>=`
    #[token(">=")]
    Ge,
    /// `!`
    #[token("!")]
    Bang,
    /// `*`
    #[token("*")]
    Star,
    /// `@`
    #[token("@")]
    At,
    /// End of input (never produced by the lexer; the parser appends it).
    Eof,
}

impl Tok<'_> {
    /// How the token reads in a diagnostic.
    pub fn describe(&self) -> String {
        match self {
            Tok::Newline => "end of line".into(),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(v) => format!("integer `{v}`"),
            Tok::Float(s) => format!("number `{s}`"),
            Tok::Str(s) => format!("string {s}"),
            Tok::SemId(v) => format!("`#{v}`"),
            Tok::Eof => "end of file".into(),
            Tok::Dot => "`.`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Eq => "`=`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Plus => "`+`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Arrow => "`->`".into(),
            Tok::Ge => "`>=`".into(),
            Tok::Bang => "`!`".into(),
            Tok::Star => "`*`".into(),
            Tok::At => "`@`".into(),
        }
    }
}

/// Unescapes the body of a string token (without its quotes).
pub fn unescape(quoted: &str) -> String {
    let body = &quoted[1..quoted.len() - 1];
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Quotes a string for `.jasm` (inverse of [`unescape`]).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
