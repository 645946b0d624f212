//! The compiler's errors after the front end: typed values that keep the source
//! span of the statement they concern, at every optimization level, and render
//! as `file:line:col` diagnostics ([`crate::diagnostic`]).
//!
//! The front end reports its own [`crate::diagnostic::Diagnostic`]s (syntax and
//! type errors); everything later is a [`CompileError`]: a statement the compiler
//! cannot compile yet, a resource limit a kernel exceeds, a schedule override
//! that names no kernel or breaks a limit, or an internal error (a bug). Tools
//! such as the refusal census read the variants, never the text.

use crate::diagnostic::Diagnostic;
use crate::ir::Span;

/// What this compiler version compiles, for refusals.
pub const SUPPORTED: &str = "this compiler version compiles matmuls, elementwise ops on floats and integers (binary, activation-engine functions, casts, comparisons, selects, iotas, const splats), elementwise operands broadcast in any way, softmax, rmsnorm and layernorm over any axis, sum/max reductions over any axes, attention, concat, slice, gather, reshapes and transposes, over parameters and earlier results";

/// Why a checked function does not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    /// A statement this compiler version cannot compile (yet).
    #[error("`%{value} = {op}` {reason}")]
    Unsupported {
        /// The value the statement defines.
        value: String,
        /// Its op.
        op: String,
        /// Why.
        reason: String,
        /// The statement.
        span: Span,
    },
    /// A kernel needs more of a resource than the target or a budget allows.
    #[error("`{kernel}`: {what}")]
    LimitExceeded {
        /// The kernel (its statement).
        kernel: String,
        /// The resource, how much is needed, and the limit.
        what: String,
        /// The statement.
        span: Span,
    },
    /// A schedule override that does not parse for its kernel, or breaks a limit.
    #[error("schedule for `{kernel}`: {reason}")]
    InvalidSchedule {
        /// The kernel the override names.
        kernel: String,
        /// The field.
        field: String,
        /// What is wrong, naming the field and the limit it breaks.
        reason: String,
        /// The kernel's statement (empty when it names no kernel).
        span: Span,
    },
    /// A schedule file that does not parse.
    #[error("line {line}: {message}")]
    ScheduleSyntax {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
        /// The bytes of the schedule file at fault.
        span: Span,
    },
    /// A bug in the compiler: a stage produced something a later check rejects.
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
        /// The statement being compiled, if known.
        span: Span,
    },
}

impl CompileError {
    /// A refusal of node `value = op` at `span`.
    pub fn unsupported(value: &str, op: &str, reason: impl Into<String>, span: Span) -> CompileError {
        CompileError::Unsupported { value: value.into(), op: op.into(), reason: reason.into(), span }
    }

    /// A limit the kernel of statement `kernel` exceeds.
    pub fn limit(kernel: &str, what: impl Into<String>, span: Span) -> CompileError {
        CompileError::LimitExceeded { kernel: kernel.into(), what: what.into(), span }
    }

    /// An internal error (a bug).
    pub fn internal(message: impl Into<String>) -> CompileError {
        CompileError::Internal { message: message.into(), span: 0..0 }
    }

    /// The variant's name, for tools that count errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            CompileError::Unsupported { .. } => "unsupported",
            CompileError::LimitExceeded { .. } => "limit exceeded",
            CompileError::InvalidSchedule { .. } => "invalid schedule",
            CompileError::ScheduleSyntax { .. } => "schedule syntax",
            CompileError::Internal { .. } => "internal",
        }
    }

    /// The source span the error concerns (in the schedule file for
    /// [`CompileError::ScheduleSyntax`]).
    pub fn span(&self) -> Span {
        match self {
            CompileError::Unsupported { span, .. }
            | CompileError::LimitExceeded { span, .. }
            | CompileError::InvalidSchedule { span, .. }
            | CompileError::ScheduleSyntax { span, .. }
            | CompileError::Internal { span, .. } => span.clone(),
        }
    }

    /// The error as a diagnostic at its span, with what helps the user act on it.
    pub fn diagnostic(&self) -> Diagnostic {
        let d = Diagnostic::new(self.span(), self.to_string());
        match self {
            CompileError::Unsupported { .. } => d.with_note(SUPPORTED),
            CompileError::Internal { .. } => {
                d.with_note("this is a bug in the compiler; please report it with the input that triggers it")
            }
            _ => d,
        }
    }

    /// Renders the error against the source it concerns (`file`, `src`): the
    /// program for every variant but [`CompileError::ScheduleSyntax`], whose
    /// source is the schedule file.
    pub fn render(&self, file: &str, src: &str) -> String {
        crate::diagnostic::render(file, src, &[self.diagnostic()])
    }
}
