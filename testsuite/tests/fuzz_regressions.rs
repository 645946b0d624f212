//! Every input a fuzzer once crashed on (`fuzz/regressions/TARGET/*`) passes its
//! target's check now (`jpu_testsuite::fuzz_checks`). docs/testing.md says how
//! a crash becomes a case here.

use jpu_testsuite::fuzz_checks::TARGETS;

#[test]
fn fuzz_regressions_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut cases = 0;
    for (name, check) in TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{name}: {} fails again", file.display());
            cases += 1;
        }
    }
    assert!(cases > 0, "no regression cases under {}", root.display());
}

/// The generator turns any byte string into a program that checks, and the
/// compile-verify check holds on a spread of them (what the fuzzer starts from).
#[test]
fn byte_driven_programs_check_and_verify() {
    for n in 0..40u8 {
        let data: Vec<u8> = (0..n as usize * 3).map(|i| (i as u8).wrapping_mul(37).wrapping_add(n)).collect();
        jpu_testsuite::fuzz_checks::compile_verify(&data);
    }
}
