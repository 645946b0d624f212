//! Front ends: each turns a model or kernel description into the tensor IR
//! ([`crate::ir`]) through its checker, never through another front end's text.
//!
//! - [`tir`]: the `.tir` language.

pub mod tir;
