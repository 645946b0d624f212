//! Any byte string: the `.jbin` reader either loads a program (which must then
//! re-encode to exactly the same bytes) or returns an error. It never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(program) = jpu_isa::jbin::read(data) {
        assert_eq!(jpu_isa::jbin::write(&program), data);
    }
});
