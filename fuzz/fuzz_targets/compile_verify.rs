//! Any byte string steers the `.tir` program generator; the program compiles
//! and verifies at -O0 and -O2 on jpu-tiny, or is refused clearly.
//! The check is `jpu_testsuite::fuzz_checks::compile_verify` (replayed by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jpu_testsuite::fuzz_checks::compile_verify(data));
