//! The JPU-1 instruction set architecture.
//!
//! This crate owns everything the compiler and the simulator must agree on:
//!
//! | module | owns |
//! |---|---|
//! | [`target`] | target descriptions (`isa/targets/*.toml`): every machine number |
//! | [`dtype`] | element types and their binary codes |
//! | [`operand`] | operand types (tiles, columns, DMA transfers) and their binary and text forms |
//! | [`inst`] | the instruction table: opcodes, fields, docs; encoder/decoder/printer/parser derived from it |
//! | [`check`] | every static constraint of every instruction, against a target |
//! | [`cost`] | instruction timing from the target's rules |
//! | [`numerics`] | dtype conversions and the portable math of VE and ACT (bit-exact) |
//! | [`program`] | a whole program (tensors, semaphores, streams) and its validation |
//! | [`accesses`] | what DMAs may do to tensors: containment, element size, roles |
//! | [`jbin`] | the `.jbin` binary container |
//! | [`jasm`] | the `.jasm` assembly text |
//! | [`docgen`] | the generated instruction reference of docs/isa.md |
//!
//! Invariants: every byte string either reads as a valid [`program::Program`] or is
//! rejected with an error naming the field and byte offset; reading never panics;
//! `jbin::write` and `jasm::disassemble` are inverse to `jbin::read` and
//! `jasm::assemble` on valid programs.

#![deny(missing_docs)]

pub mod accesses;
pub mod bytes;
pub mod check;
pub mod cost;
pub mod docgen;
pub mod dtype;
pub mod inst;
pub mod jasm;
pub mod jbin;
pub mod numerics;
pub mod operand;
pub mod program;
#[cfg(feature = "random")]
pub mod random;
pub mod target;

pub use dtype::DType;
pub use inst::{Engine, Inst, Op, Opcode, Signal};
pub use program::Program;
pub use target::Target;
