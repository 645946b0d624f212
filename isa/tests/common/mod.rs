//! Helpers shared by the ISA integration tests.

use jpu_isa::inst::Engine;
use jpu_isa::{jasm, Inst, Program};

/// Declarations every single-instruction test program starts with.
pub const PRELUDE: &str = ".target \"jpu-tiny\"
.tensor x: bf16[32, 64] input @ 0x0
.tensor y: f32[32, 32] scratch @ 0x1000
.tensor heap: f32[16384] scratch @ 0x2000
.sem ready = 0
.sem done = 3
";

/// Assembles one instruction line on `engine` (core 0) and returns the program and the instruction.
pub fn assemble_line(engine: &str, line: &str) -> (Program, Inst) {
    let halt = if line == "halt" { "" } else { "    halt\n" };
    let src = format!("{PRELUDE}.core 0\n.stream {engine}\n    {line}\n{halt}");
    let program = jasm::assemble(&src).unwrap_or_else(|errs| panic!("{}", jasm::render_errors("line", &src, &errs)));
    let e = Engine::from_name(engine).unwrap();
    let inst = program.cores[0][e.0 as usize][0].clone();
    (program, inst)
}

/// Lowercase hex of bytes with trailing zero bytes trimmed (instructions are zero-padded).
pub fn trimmed_hex(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].iter().map(|b| format!("{b:02x}")).collect()
}
