//! Any text: the assembler either builds a program whose disassembly assembles
//! back to it, or returns diagnostics. It never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    match jpu_isa::jasm::assemble(src) {
        Ok(program) => {
            let text = jpu_isa::jasm::disassemble(&program);
            assert_eq!(jpu_isa::jasm::assemble(&text).ok().as_ref(), Some(&program));
        }
        Err(errors) => {
            let _ = jpu_isa::jasm::render_errors("fuzz.jasm", src, &errors);
        }
    }
});
