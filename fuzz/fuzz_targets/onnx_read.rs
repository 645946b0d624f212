//! Any byte string decodes as an ONNX model or is a clear error, never a panic.
//! The check is `jpu_testsuite::fuzz_checks::onnx_read` (replayed by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jpu_testsuite::fuzz_checks::onnx_read(data));
