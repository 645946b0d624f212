//! Any byte string, resealed, that loads runs in the simulator (timing-only and
//! functional, race-checked, with limits) to an outcome or a fault, the same on
//! the interpreter and the compiled engine.
//! The check is `jpu_testsuite::fuzz_checks::sim_run` (replayed by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jpu_testsuite::fuzz_checks::sim_run(data));
