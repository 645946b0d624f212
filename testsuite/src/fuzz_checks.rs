//! What each fuzz target checks (`fuzz/fuzz_targets/*.rs` call these), so the
//! crashes a fuzzer finds are replayed by `cargo test` from
//! `fuzz/regressions/TARGET/` (`testsuite/tests/fuzz_regressions.rs`).
//! Every check panics on a violation: that is what the fuzzer reports.

use jalc::driver::Options;
use jalc::error::CompileError;
use jalc::verify::VerifyError;
use jpu_isa::{jbin, Target};
use jpu_runtime::RunOptions;

/// A fuzz target's check: panics on a violation.
pub type Check = fn(&[u8]);

/// Each fuzz target: a name (its folder under `fuzz/regressions/`) and its check.
pub const TARGETS: &[(&str, Check)] =
    &[("jbin_read", jbin_read), ("sim_run", sim_run), ("compile_verify", compile_verify), ("onnx_read", onnx_read)];

/// Any byte string decodes as an ONNX model (external data from a folder with
/// nothing in it) or is an error naming what is wrong; a model it accepts has
/// a graph and a supported opset, and imports (every input with a dynamic dim
/// given 2 x 3) to a program or an error.
pub fn onnx_read(data: &[u8]) {
    let dir = std::env::temp_dir().join("jpu-fuzz-onnx-empty");
    let m = match jalc::front::onnx::decode(data, &dir, "fuzz.onnx") {
        Ok(m) => m,
        Err(e) => return assert!(!e.message.is_empty()),
    };
    assert!(m.proto.graph.is_some() && jalc::front::onnx::OPSETS.contains(&m.opset));
    let input_shapes = m.graph().input.iter().map(|i| (i.name.clone().unwrap_or_default(), vec![2, 3])).collect();
    let opts = jalc::front::onnx::ImportOptions { input_shapes, ..Default::default() };
    if let Err(e) = jalc::front::onnx::import(&m, "fuzz.onnx", &opts) {
        assert!(!e.message.is_empty());
    }
}

/// Any byte string, with its length and checksum made right so mutations reach
/// the structure and the program's rules: the reader loads a program that
/// re-encodes to exactly these bytes, or returns an error.
pub fn jbin_read(data: &[u8]) {
    let mut bytes = data.to_vec();
    jbin::reseal(&mut bytes);
    if let Ok(program) = jbin::read(&bytes) {
        assert_eq!(jbin::write(&program), bytes, "an accepted binary does not re-encode to its bytes");
    }
}

/// Any byte string (resealed) that loads runs in the simulator, timing-only and
/// functional with race checks, within limits, to an outcome or a fault; the
/// interpreter and the compiled engine give the same outcome or fault.
pub fn sim_run(data: &[u8]) {
    let mut bytes = data.to_vec();
    jbin::reseal(&mut bytes);
    let Ok(program) = jbin::read(&bytes) else { return };
    let Ok(target) = Target::builtin(&program.target) else { return };
    let limits = RunOptions { max_instructions: Some(100_000), max_cycles: Some(100_000_000), ..Default::default() };
    let timing = RunOptions { timing_only: true, ..limits.clone() };
    let _ = jpu_runtime::run(&program, &target, &[], &timing);
    let _ = crate::run_on_both_engines(&program, &target, &[], &limits, "fuzzed binary");
}

/// Any byte string steers the program generator to a valid `.tir` program,
/// which compiles for jpu-tiny at -O0 and -O2 and verifies against the
/// evaluator (race-checked), or is refused as unsupported or over a limit at a
/// source span; -O2 never refuses what -O0 compiles.
pub fn compile_verify(data: &[u8]) {
    let src = crate::tir_gen::tir_from_bytes(data);
    let f = jalc::front::tir::parse_and_check(&src).unwrap_or_else(|d| panic!("generated program: {d:?}\n{src}"));
    let t = Target::builtin("jpu-tiny").expect("built-in target");
    let mut o0_compiles = false;
    for level in [0, 2] {
        match jalc::verify::verify_with(&f, &t, 1, &Options::at(level)) {
            Ok(v) => {
                assert!(v.passed, "-O{level} computes a wrong result: {:?}\n{src}", v.first_mismatch);
                o0_compiles |= level == 0;
                // What compiles on one core compiles and verifies on both.
                let both = Options { cores: 2, ..Options::at(level) };
                let v = jalc::verify::verify_with(&f, &t, 1, &both).unwrap_or_else(|e| panic!("2 cores: {e}\n{src}"));
                assert!(v.passed, "-O{level} on 2 cores: {:?}\n{src}", v.first_mismatch);
            }
            Err(VerifyError::Compile(e)) => {
                let clear = matches!(e, CompileError::Unsupported { .. } | CompileError::LimitExceeded { .. });
                assert!(clear && !e.span().is_empty(), "-O{level}: {e:?}\n{src}");
                assert!(!o0_compiles, "-O2 refuses what -O0 compiles: {e}\n{src}");
            }
            Err(e) => panic!("-O{level}: {e}\n{src}"),
        }
    }
}
