//! The JPU-1 simulator: executes `.jbin` programs bit-exactly, with the machine's
//! timing model, race, bounds and uninitialised-read checking, and traces.
//!
//! | module | owns |
//! |---|---|
//! | [`sim`] | the event-driven engine model, semaphores, DMA bandwidth sharing, faults |
//! | [`semantics`] | what every instruction computes (one function per operation) |
//! | [`jit`] | the compiled engine: covered instructions as native code, bit-identical to [`semantics`] |
//! | [`memory`] | SRAM, PSUM and sparse HBM |
//! | [`footprint`] | the bytes each instruction touches |
//! | [`race`] | vector clocks and shadow memory for race and initialisation checks |
//! | [`report`] | cycles, utilisation and the roofline |
//! | [`trace`] | Chrome Trace Event JSON (opens in Perfetto) |
//! | [`io`] | program inputs and outputs as `.npy` |
//!
//! Guarantees: the same program and inputs give the same outputs and cycles on
//! every run; `timing_only` runs give the same cycles as full runs; no program or
//! input makes the simulator panic (bad input is an [`io::IoError`], a bad program
//! a [`sim::Fault`]).

#![deny(missing_docs)]

pub mod footprint;
mod hugepages;
pub mod io;
pub mod jit;
pub mod memory;
pub mod race;
pub mod report;
pub mod semantics;
pub mod sim;
pub mod trace;

pub use jpu_isa as isa;
pub use report::Report;
pub use sim::{run, ExecEngine, Fault, FaultKind, InstRef, Outcome, RunOptions, SignalArrival, TraceSlice};
