//! The Jalapeño kernel compiler.
//!
//! | stage | module | printable form (`jalc compile --emit`) |
//! |---|---|---|
//! | front end: `.tir` text -> typed, checked IR | [`tir`] | `parsed` |
//! | reference evaluator (the oracle every compiled program is checked against) | [`eval`] | |
//!
//! Optimisation, lowering, scheduling and emission stages follow (see the issues).

#![deny(missing_docs)]

pub mod eval;
pub mod tir;
