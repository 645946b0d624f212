//! Any byte string that loads as a program runs in the simulator (timing-only and
//! functional, with limits) to an outcome or a fault, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(program) = jpu_isa::jbin::read(data) else { return };
    let Ok(target) = jpu_isa::Target::builtin(&program.target) else { return };
    let opts = jpu_runtime::RunOptions { max_instructions: Some(100_000), max_cycles: Some(100_000_000), ..Default::default() };
    let _ = jpu_runtime::run(&program, &target, &[], &jpu_runtime::RunOptions { timing_only: true, ..opts.clone() });
    let _ = jpu_runtime::run(&program, &target, &[], &opts);
});
