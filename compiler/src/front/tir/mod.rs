//! The `.tir` front end: text to the tensor IR.
//!
//! | step | module | output |
//! |---|---|---|
//! | lexing | [`lexer`] | tokens (logos) |
//! | parsing | `grammar.lalrpop` | [`ast::Module`] with spans |
//! | resolving names, typing by the IR checker | [`resolve`] | [`Func`] (checked), or every diagnostic |
//!
//! [`parse_and_check`] runs them all; a returned [`Func`] has passed every check,
//! so later passes may index and assume shapes without checking again. The
//! canonical text form is [`crate::ir::printer`]'s, which parses back to the same IR.

pub mod ast;
pub mod diag;
pub mod lexer;
pub mod resolve;

lalrpop_util::lalrpop_mod!(
    #[allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]
    grammar,
    "/front/tir/grammar.rs"
);

pub use crate::diagnostic::{render, Diagnostic};
use crate::ir::Func;

/// Parses and checks a `.tir` source: the one function it defines, or every error.
pub fn parse_and_check(src: &str) -> Result<Func, Vec<Diagnostic>> {
    let module = parse(src)?;
    resolve::resolve(&module)
}

/// Parses a `.tir` source into its syntax tree.
pub fn parse(src: &str) -> Result<ast::Module, Vec<Diagnostic>> {
    let mut recovered = Vec::new();
    let result = grammar::ModuleParser::new().parse(&mut recovered, lexer::tokens(src));
    let mut diags: Vec<Diagnostic> = recovered.into_iter().map(|r| diag::from_parse_error(r.error, src)).collect();
    let module = match result {
        Ok(m) => Some(m),
        Err(e) => {
            diags.push(diag::from_parse_error(e, src));
            None
        }
    };
    match module {
        Some(m) if diags.is_empty() => Ok(m),
        _ => {
            // Recovery resumes at the next token that can start a statement, which
            // can be inside the broken line: keep the first error of each line.
            let line = |offset: usize| src[..offset.min(src.len())].matches('\n').count();
            let mut seen = std::collections::HashSet::new();
            diags.retain(|d| seen.insert(line(d.span.start)));
            Err(diags)
        }
    }
}
