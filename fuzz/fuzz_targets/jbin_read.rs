//! Any byte string, resealed (length and checksum made right): the `.jbin`
//! reader loads a program that re-encodes to the same bytes, or returns an error.
//! The check is `jpu_testsuite::fuzz_checks::jbin_read` (replayed by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jpu_testsuite::fuzz_checks::jbin_read(data));
