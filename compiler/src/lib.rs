//! The Jalapeño kernel compiler.
//!
//! | stage | module | printable form (`jalc compile --emit`) |
//! |---|---|---|
//! | front end: `.tir` text -> typed, checked IR | [`tir`] | `parsed` |
//! | e-graph optimization and DAG-aware extraction | [`opt`] | `opt` |
//! | kernel selection and schedules | [`lower`] | `kernels` |
//! | tile programs | [`lower`] | `tiles` |
//! | allocation, instruction DAG, scheduling, semaphores, emission | [`backend`] | `asm` |
//! | reference evaluator (the oracle every compiled program is checked against) | [`eval`] | |
//!
//! [`driver`] runs the stages; [`verify`] compiles, simulates and compares.

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
