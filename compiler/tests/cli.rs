//! The `jalc` command-line contract: outputs and exit codes (docs/cli.md).

use std::path::PathBuf;
use std::process::{Command, Output};

fn jalc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jalc")).args(args).output().expect("jalc runs")
}

fn example(name: &str) -> String {
    format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jalc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn asm_then_disasm_reproduces_canonical_text() {
    let bin = temp("gemm.jbin");
    let out = jalc(&["asm", &example("gemm-tiny.jasm"), "-o", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dis = jalc(&["disasm", bin.to_str().unwrap()]);
    assert_eq!(dis.status.code(), Some(0));
    let text = String::from_utf8(dis.stdout).unwrap();
    assert!(text.starts_with(".target \"jpu-tiny\"\n"));
    // Assembling the disassembly gives the same bytes.
    let jasm = temp("gemm-again.jasm");
    std::fs::write(&jasm, &text).unwrap();
    let bin2 = temp("gemm-again.jbin");
    assert_eq!(jalc(&["asm", jasm.to_str().unwrap(), "-o", bin2.to_str().unwrap()]).status.code(), Some(0));
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&bin2).unwrap());
    // -o writes the same text to a file.
    let out_txt = temp("gemm.txt");
    assert_eq!(jalc(&["disasm", bin.to_str().unwrap(), "-o", out_txt.to_str().unwrap()]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(out_txt).unwrap(), text);
}

#[test]
fn assembler_errors_exit_2_with_file_line_col() {
    let src = temp("bad.jasm");
    std::fs::write(&src, ".target \"jpu-tiny\"\n.core 0\n.stream pe\n    matmull\n").unwrap();
    let out = jalc(&["asm", src.to_str().unwrap(), "-o", temp("bad.jbin").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad.jasm:4:5"), "{err}");
    assert!(err.contains("unknown instruction `matmull`"), "{err}");
}

#[test]
fn corrupt_and_missing_binaries_exit_2() {
    let bin = temp("corrupt.jbin");
    assert_eq!(jalc(&["asm", &example("gemm-tiny.jasm"), "-o", bin.to_str().unwrap()]).status.code(), Some(0));
    let mut bytes = std::fs::read(&bin).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&bin, &bytes).unwrap();
    let out = jalc(&["disasm", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));

    let out = jalc(&["disasm", temp("does-not-exist.jbin").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    let not_utf8 = temp("binary.jasm");
    std::fs::write(&not_utf8, [0xff, 0xfe, 0x00]).unwrap();
    let out = jalc(&["asm", not_utf8.to_str().unwrap(), "-o", temp("x.jbin").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not UTF-8"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(jalc(&[]).status.code(), Some(2));
    assert_eq!(jalc(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(jalc(&["asm", "x.jasm"]).status.code(), Some(2), "missing -o");
    assert_eq!(jalc(&["--help"]).status.code(), Some(0));
}
