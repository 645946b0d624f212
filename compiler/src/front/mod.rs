//! Front ends: each turns a model or kernel description into the tensor IR
//! ([`crate::ir`]) through its checker, never through another front end's text.
//!
//! - [`tir`]: the `.tir` language.
//! - [`onnx`]: reading ONNX models (protobuf, opsets, external data); the
//!   import to the tensor IR is not built yet.

pub mod onnx;
pub mod tir;
