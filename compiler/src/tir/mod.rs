//! The tensor IR front end: the `.tir` language.
//!
//! | stage | module | output |
//! |---|---|---|
//! | lexing | [`lexer`] | tokens (logos) |
//! | parsing | `grammar.lalrpop` | [`ast::Module`] with spans |
//! | checking and typing | [`lower`] | [`ir::Func`] (validated), or every diagnostic |
//! | printing | [`printer`] | canonical text that parses back to the same IR |
//!
//! [`parse_and_check`] runs them all; a returned [`ir::Func`] has passed every check,
//! so later passes may index and assume shapes without checking again.

pub mod ast;
pub mod diag;
pub mod ir;
pub mod lexer;
pub mod lower;
pub mod printer;
pub mod types;

lalrpop_util::lalrpop_mod!(
    #[allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]
    grammar,
    "/tir/grammar.rs"
);

pub use diag::{render, Diagnostic};

/// Parses and checks a `.tir` source: the one function it defines, or every error.
pub fn parse_and_check(src: &str) -> Result<ir::Func, Vec<Diagnostic>> {
    let module = parse(src)?;
    lower::lower(&module)
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
