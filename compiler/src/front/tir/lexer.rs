//! Tokens of the `.tir` language (a logos lexer feeding the lalrpop grammar).
//!
//! Whitespace and newlines are insignificant; `//` starts a comment.

use logos::Logos;

/// A lexical error: the offending text's span is carried by the parser.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LexError {
    /// A character that starts no token.
    #[default]
    Unexpected,
    /// An integer literal past 64 bits.
    IntTooLarge,
}

/// A `.tir` token.
#[derive(Logos, Debug, Clone, PartialEq)]
#[logos(error = LexError)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
pub enum Token<'s> {
    /// `func`
    #[token("func")]
    Func,
    /// `return`
    #[token("return")]
    Return,
    /// `true`
    #[token("true")]
    True,
    /// `false`
    #[token("false")]
    False,
    /// `inf`
    #[token("inf")]
    Inf,
    /// `@name`
    #[regex(r"@[A-Za-z_][A-Za-z0-9_.]*", |lex| &lex.slice()[1..])]
    FuncName(&'s str),
    /// `%name`
    #[regex(r"%[A-Za-z0-9_.]+", |lex| &lex.slice()[1..])]
    ValueName(&'s str),
    /// An identifier: op, dtype or attribute name.
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident(&'s str),
    /// An unsigned integer.
    #[regex(r"[0-9]+", |lex| lex.slice().parse::<u64>().map_err(|_| LexError::IntTooLarge))]
    Int(u64),
    /// A float with a fraction or an exponent.
    #[regex(r"[0-9]+\.[0-9]*([eE][+-]?[0-9]+)?", |lex| lex.slice().parse::<f64>().map_err(|_| LexError::Unexpected))]
    #[regex(r"[0-9]+[eE][+-]?[0-9]+", |lex| lex.slice().parse::<f64>().map_err(|_| LexError::Unexpected))]
    Float(f64),
    /// A double-quoted string without escapes.
    #[regex(r#""[^"\n]*""#, |lex| { let s = lex.slice(); &s[1..s.len() - 1] })]
    Str(&'s str),
    /// `->`
    #[token("->")]
    Arrow,
    /// `-`
    #[token("-")]
    Minus,
    /// `(`
    #[token("(")]
    LParen,
    /// `)`
    #[token(")")]
    RParen,
    /// `{`
    #[token("{")]
    LBrace,
    /// `}`
    #[token("}")]
    RBrace,
    /// `[`
    #[token("[")]
    LBracket,
    /// `]`
    #[token("]")]
    RBracket,
    /// `,`
    #[token(",")]
    Comma,
    /// `:`
    #[token(":")]
    Colon,
    /// `=`
    #[token("=")]
    Eq,
}

/// A lexical error with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct LexicalError {
    /// What is wrong.
    pub kind: LexError,
    /// Where.
    pub span: std::ops::Range<usize>,
}

/// `(start, token, end)` triples for the parser.
pub fn tokens(src: &str) -> impl Iterator<Item = Result<(usize, Token<'_>, usize), LexicalError>> + '_ {
    Token::lexer(src).spanned().map(|(t, span)| match t {
        Ok(t) => Ok((span.start, t, span.end)),
        Err(kind) => Err(LexicalError { kind, span }),
    })
}
