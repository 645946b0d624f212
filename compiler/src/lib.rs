//! The Jalapeño kernel compiler.
//!
//! | stage | module | printable form (`jalc compile --emit`) |
//! |---|---|---|
//! | the tensor IR: types, the op table, the checker and `Builder`, the printer | [`ir`] | |
//! | front end: `.tir` text -> checked IR | [`front::tir`] | `parsed` |
//! | e-graph optimization and DAG-aware extraction | [`opt`] | `opt` |
//! | kernel selection and schedules (with [`schedule`] file overrides) | [`kernels`] | `kernels` |
//! | lowering to tile programs, linking, validation | [`kernels`], [`tiles`] | `tiles` |
//! | allocation, instruction DAG, scheduling, semaphores, emission | [`backend`] | `asm` |
//! | reference evaluator (the oracle every compiled program is checked against) | [`eval`] | |
//!
//! [`driver`] runs the stages, each once; [`verify`] compiles, simulates and
//! compares. Errors after the front end are [`error::CompileError`]s, rendered
//! at source spans by [`diagnostic`]. docs/architecture.md has the module graph
//! and the recipes for adding an op, a kernel kind, an instruction and a rule.

#![deny(missing_docs)]

pub mod backend;
pub mod diagnostic;
pub mod driver;
pub mod error;
pub mod eval;
pub mod front;
pub mod ir;
pub mod kernels;
pub mod opt;
pub mod schedule;
pub mod tiles;
pub mod verify;
pub mod weights;
