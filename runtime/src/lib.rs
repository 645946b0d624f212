//! The JPU-1 simulator: executes `.jbin` programs (functional semantics, timing,
//! race and bounds checking, traces).
//!
//! Built by the "Simulator" issue on top of [`jpu_isa`]; this crate is the
//! workspace slot it fills.

pub use jpu_isa as isa;
