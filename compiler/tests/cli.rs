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

fn write_npy_f64(path: &std::path::Path, shape: &[u64], values: &[f64]) {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(file).begin_nd().unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn read_npy_f32(path: &std::path::Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

fn gemm_binary(tag: &str) -> PathBuf {
    let bin = temp(&format!("{tag}-gemm.jbin"));
    let out = jalc(&["asm", &example("gemm-tiny.jasm"), "-o", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    bin
}

fn gemm_inputs(tag: &str) -> (PathBuf, PathBuf, Vec<f64>, Vec<f64>) {
    let a: Vec<f64> = (0..32 * 64).map(|i| ((i * 7 % 13) as f64 - 6.0) * 0.3).collect();
    let b: Vec<f64> = (0..64 * 32).map(|i| ((i * 5 % 11) as f64 - 5.0) * 0.7).collect();
    let (pa, pb) = (temp(&format!("{tag}-a.npy")), temp(&format!("{tag}-b.npy")));
    write_npy_f64(&pa, &[32, 64], &a);
    write_npy_f64(&pb, &[64, 32], &b);
    (pa, pb, a, b)
}

#[test]
fn run_writes_outputs_reports_and_traces() {
    let bin = gemm_binary("outputs");
    let (pa, pb, a, b) = gemm_inputs("outputs");
    let dir = temp("run-out");
    let trace = temp("trace.json");
    let ia = format!("a={}", pa.display());
    let ib = format!("b={}", pb.display());
    let out = jalc(&[
        "run",
        bin.to_str().unwrap(),
        "--input",
        &ia,
        "--input",
        &ib,
        "--output-dir",
        dir.to_str().unwrap(),
        "--json",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["cycles", "roofline_cycles", "roofline_fraction", "clock_ghz", "engines"] {
        assert!(report.get(key).is_some(), "missing `{key}` in {report}");
    }
    assert_eq!(report["cycles"], 1328);
    assert_eq!(report["engines"]["core0.pe"]["busy_cycles"], 64);
    // The output equals a reference computed from the bf16-rounded inputs.
    let (shape, c) = read_npy_f32(&dir.join("c.npy"));
    assert_eq!(shape, vec![32, 32]);
    let bf16 = |v: f64| jpu_isa::numerics::round_to(jpu_isa::DType::Bf16, v as f32);
    for i in 0..32 {
        for j in 0..32 {
            let want = (0..64).fold(0.0f32, |s, k| s + bf16(a[i * 64 + k]) * bf16(b[k * 32 + j]));
            assert_eq!(c[i * 32 + j].to_bits(), want.to_bits(), "c[{i}][{j}]");
        }
    }
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let slices = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(slices, 10, "one slice per instruction");
    // Timing-only needs no inputs and gives the same cycles.
    let timing = jalc(&["run", bin.to_str().unwrap(), "--timing-only", "--json"]);
    assert_eq!(timing.status.code(), Some(0), "{}", stderr(&timing));
    let t: serde_json::Value = serde_json::from_slice(&timing.stdout).unwrap();
    assert_eq!(t["cycles"], report["cycles"]);
    // The human summary names the cycles and the roofline.
    let text = jalc(&["run", bin.to_str().unwrap(), "--input", &ia, "--input", &ib]);
    let summary = String::from_utf8(text.stdout).unwrap();
    assert!(summary.contains("1328 cycles") && summary.contains("% of roofline"), "{summary}");
}

#[test]
fn run_rejects_bad_inputs_with_exit_2() {
    let bin = gemm_binary("bad");
    let (pa, pb, ..) = gemm_inputs("bad");
    let ia = format!("a={}", pa.display());
    let ib = format!("b={}", pb.display());
    let bin = bin.to_str().unwrap();
    let expect_2 = |args: &[&str], needle: &str| {
        let out = jalc(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    };
    expect_2(&["run", bin, "--input", &ia], "missing input `b`");
    expect_2(&["run", bin, "--input", &ia, "--input", &ib, "--input", "z=x.npy"], "no input `z`");
    expect_2(&["run", bin, "--input", &ia, "--input", &ib, "--input", "c=x.npy"], "`c` is an output tensor");
    expect_2(&["run", bin, "--input", "a"], "expected NAME=FILE.npy");
    let wrong = temp("wrong-shape.npy");
    write_npy_f64(&wrong, &[64, 32], &vec![0.0; 64 * 32]);
    let iw = format!("a={}", wrong.display());
    expect_2(
        &["run", bin, "--input", &iw, "--input", &ib],
        "has shape [64, 32], but the program declares bf16[32, 64]",
    );
    let junk = temp("junk.npy");
    std::fs::write(&junk, b"not numpy").unwrap();
    let ij = format!("a={}", junk.display());
    expect_2(&["run", bin, "--input", &ij, "--input", &ib], "not a valid .npy file");
    // A binary built for a different description of its target.
    let mut bytes = std::fs::read(bin).unwrap();
    bytes[32] ^= 0xff;
    let n = bytes.len();
    let crc = crc32(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let other = temp("other-target.jbin");
    std::fs::write(&other, &bytes).unwrap();
    expect_2(&["run", other.to_str().unwrap(), "--timing-only"], "different description of `jpu-tiny`");
}

/// CRC-32 (IEEE), bitwise: enough for a test that forges a checksum.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn faults_exit_1_naming_the_instruction() {
    let case = format!("{}/../testsuite/cases/sim/faults/race-read-after-write.jasm", env!("CARGO_MANIFEST_DIR"));
    let bin = temp("race.jbin");
    assert_eq!(jalc(&["asm", &case, "-o", bin.to_str().unwrap()]).status.code(), Some(0));
    let x = temp("x.npy");
    write_npy_f64(&x, &[32, 32], &vec![1.0; 32 * 32]);
    let ix = format!("x={}", x.display());
    let out = jalc(&["run", bin.to_str().unwrap(), "--input", &ix]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("race at cycle"), "{}", stderr(&out));
    assert!(stderr(&out).contains("core 0 ve[0]"), "{}", stderr(&out));
    // Without race checking the same program runs (and reads whatever the PE wrote).
    let out = jalc(&["run", bin.to_str().unwrap(), "--input", &ix, "--no-race-check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let limited = jalc(&["run", bin.to_str().unwrap(), "--timing-only", "--max-cycles", "10"]);
    assert_eq!(limited.status.code(), Some(1));
    assert!(stderr(&limited).contains("cycle limit of 10"), "{}", stderr(&limited));
}

#[test]
fn out_of_bounds_binaries_are_rejected_at_load_with_exit_2() {
    // The writer does not validate, so a tool (or a bug) can produce this binary;
    // the reader must reject it naming the instruction and the operand.
    let src = std::fs::read_to_string(example("gemm-tiny.jasm")).unwrap();
    let mut p = jpu_isa::jasm::assemble(&src).unwrap();
    let ve = jpu_isa::Engine::VE.0 as usize;
    if let jpu_isa::Op::Copy { dst, .. } = &mut p.cores[0][ve][0].op {
        dst.part_count = 40;
    }
    let bin = temp("oob.jbin");
    std::fs::write(&bin, jpu_isa::jbin::write(&p)).unwrap();
    let out = jalc(&["run", bin.to_str().unwrap(), "--timing-only"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("core 0 ve[0]: operand `dst`: partitions 0:40 exceed the 32 partitions of sram"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_compile_and_eval_tensor_ir() {
    let tir = format!("{}/../examples/attention.tir", env!("CARGO_MANIFEST_DIR"));
    assert_eq!(jalc(&["check", &tir]).status.code(), Some(0));
    let parsed = jalc(&["compile", &tir, "--emit", "parsed"]);
    assert_eq!(parsed.status.code(), Some(0), "{}", stderr(&parsed));
    let text = String::from_utf8(parsed.stdout).unwrap();
    assert!(text.contains("%p = softmax(%z) {axis = 2} : f32[8, 256, 256]"), "{text}");
    // The canonical text checks again.
    let canon = temp("canon.tir");
    std::fs::write(&canon, &text).unwrap();
    assert_eq!(jalc(&["check", canon.to_str().unwrap()]).status.code(), Some(0));
    // The optimizer finds the fused attention (docs/optimizer.md); -O0 leaves the
    // program as parsed.
    let opt = jalc(&["compile", &tir, "--emit", "opt"]);
    assert_eq!(opt.status.code(), Some(0), "{}", stderr(&opt));
    let opt_text = String::from_utf8(opt.stdout).unwrap();
    assert!(
        opt_text.contains("%o = attention(%q, %k, %v) {causal = false, scale = 0.125} : bf16[8, 256, 64]")
            && !opt_text.contains("softmax("),
        "{opt_text}"
    );
    let o0 = jalc(&["compile", &tir, "--emit", "opt", "-O0"]);
    assert_eq!(String::from_utf8(o0.stdout).unwrap(), text);
    // Unknown stages and targets are usage errors.
    assert_eq!(jalc(&["compile", &tir, "--emit", "bogus"]).status.code(), Some(2));
    assert_eq!(jalc(&["compile", &tir, "--emit", "parsed", "--target", "jpu9"]).status.code(), Some(2));

    // Diagnostics: file:line:col, exit 2.
    let bad = temp("bad.tir");
    std::fs::write(&bad, "func @f(%x: f32[4]) -> f32[4] {\n  %y = exp(%x, %x)\n  return %y\n}\n").unwrap();
    let out = jalc(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bad.tir:2:8") && stderr(&out).contains("`exp` takes 1 operand, found 2"),
        "{}",
        stderr(&out)
    );

    // eval: inputs by parameter name, converted to the declared dtype; outputs by returned value name.
    let src = temp("affine.tir");
    std::fs::write(&src, "func @f(%x: bf16[2, 3], %w: f32[3, 2]) -> (f32[2, 2], i1[2, 3]) {\n  %xf = cast(%x) {to = f32}\n  %y = matmul(%xf, %w)\n  %pos = compare(%x, 0.0) {kind = gt}\n  return %y, %pos\n}\n").unwrap();
    let (px, pw) = (temp("eval-x.npy"), temp("eval-w.npy"));
    // 1 + 2^-9 rounds to 1 in bf16.
    write_npy_f64(&px, &[2, 3], &[1.0 + 2f64.powi(-9), 2.0, -3.0, 4.0, 5.0, 6.0]);
    write_npy_f64(&pw, &[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let dir = temp("eval-out");
    let (ix, iw) = (format!("x={}", px.display()), format!("w={}", pw.display()));
    let out =
        jalc(&["eval", src.to_str().unwrap(), "--input", &ix, "--input", &iw, "--output-dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (shape, y) = read_npy_f32(&dir.join("y.npy"));
    assert_eq!(shape, vec![2, 2]);
    assert_eq!(y, vec![-2.0, -1.0, 10.0, 11.0]);
    let bytes = std::fs::read(dir.join("pos.npy")).unwrap();
    let pos = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec::<i32>().unwrap();
    assert_eq!(pos, vec![1, 1, 0, 1, 1, 1]);
    // Bad inputs: missing, wrong shape, unknown name.
    let missing = jalc(&["eval", src.to_str().unwrap(), "--input", &ix, "--output-dir", dir.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("missing input `w`"), "{}", stderr(&missing));
    let wrong = jalc(&[
        "eval",
        src.to_str().unwrap(),
        "--input",
        &format!("x={}", pw.display()),
        "--input",
        &iw,
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains("has shape [3, 2], but the function declares bf16[2, 3]"), "{}", stderr(&wrong));
    let unknown = jalc(&[
        "eval",
        src.to_str().unwrap(),
        "--input",
        &ix,
        "--input",
        &iw,
        "--input",
        "q=a.npy",
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no parameter `q`"), "{}", stderr(&unknown));
}

#[test]
fn compile_emits_stages_and_binaries_and_verify_passes() {
    let gemm = format!("{}/../examples/gemm.tir", env!("CARGO_MANIFEST_DIR"));
    for (stage, needle) in
        [("kernels", "schedule: tile_m = 32"), ("tiles", "matmul psum#0"), ("asm", ".target \"jpu-tiny\"")]
    {
        let out = jalc(&["compile", &gemm, "--target", "jpu-tiny", "--emit", stage]);
        assert_eq!(out.status.code(), Some(0), "{stage}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(needle), "{stage}");
    }
    // -o writes a binary the simulator runs.
    let bin = temp("compiled-gemm.jbin");
    assert_eq!(jalc(&["compile", &gemm, "--target", "jpu-tiny", "-o", bin.to_str().unwrap()]).status.code(), Some(0));
    let run = jalc(&["run", bin.to_str().unwrap(), "--timing-only", "--json"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    // verify --json.
    let v = jalc(&["verify", &gemm, "--target", "jpu-tiny", "--seed", "7", "--json"]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    for key in
        ["passed", "max_abs_error", "max_rel_error", "cycles", "roofline_cycles", "roofline_fraction", "clock_ghz"]
    {
        assert!(j.get(key).is_some(), "missing `{key}`");
    }
    assert_eq!(j["passed"], true);
    assert_eq!(j["seed"], 7);
    let t: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(t["cycles"], j["cycles"], "verify and run report the same cycles");
    // A schedule override, legal and illegal.
    let sched = temp("narrow.schedule");
    std::fs::write(&sched, "[k1]\ntile_n = 64 # narrower\n").unwrap();
    let ok = jalc(&["verify", &gemm, "--target", "jpu-tiny", "--schedule", sched.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    std::fs::write(&sched, "[k1]\ntile_m = 33\n").unwrap();
    let bad =
        jalc(&["compile", &gemm, "--target", "jpu-tiny", "--schedule", sched.to_str().unwrap(), "--emit", "kernels"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("schedule for `%c = matmul(%a, %b)`: tile_m = 33 must be in 1..=32"),
        "{}",
        stderr(&bad)
    );
    // The fused-epilogue example verifies, and its kernel lists the fused steps.
    let ffn = format!("{}/../examples/ffn.tir", env!("CARGO_MANIFEST_DIR"));
    let v = jalc(&["verify", &ffn, "--target", "jpu-tiny"]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("max abs error 0.000e0"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let k = jalc(&["compile", &ffn, "--emit", "kernels"]);
    assert!(
        String::from_utf8_lossy(&k.stdout).contains("epilogue: %z = add(%y, %bias); %g = gelu(%z); %o = add(%res, %g)"),
        "{}",
        String::from_utf8_lossy(&k.stdout)
    );
    // A GEMM field for a map kernel, a section naming no kernel, and a field
    // outside any section are refused, naming the kernel, field and line.
    let map_only = temp("map-only.tir");
    std::fs::write(&map_only, "func @m(%x: f32[4, 8]) -> f32[4, 8] {\n  %y = exp(%x)\n  return %y\n}\n").unwrap();
    for (text, want) in [
        (
            "[%y]\ntile_n = 64\n",
            "schedule for `%y = exp(%x)`: tile_n = 64 (line 2): unknown field `tile_n` (fields: width)",
        ),
        ("[k2]\ntile_n = 64\n", "`[k2]` names no kernel of this program; its kernels: k1 (map y)"),
        ("tile_n = 64\n", "line 1: `tile_n = 64` comes before any `[kernel]` section"),
    ] {
        std::fs::write(&sched, text).unwrap();
        let m = map_only.to_str().unwrap();
        let none = jalc(&["verify", m, "--target", "jpu-tiny", "--schedule", sched.to_str().unwrap()]);
        assert_eq!(none.status.code(), Some(2));
        assert!(stderr(&none).contains(want), "{}", stderr(&none));
    }
    let plain = jalc(&["verify", map_only.to_str().unwrap(), "--target", "jpu-tiny"]);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    // Functions beyond the compiler's current scope, and missing outputs, exit 2:
    // an integer literal the VE's f32 immediates cannot hold.
    let beyond = temp("beyond.tir");
    std::fs::write(&beyond, "func @p(%x: i32[2, 4, 8]) -> i32[2, 4, 8] {\n  %z = add(%x, 16777217)\n  return %z\n}\n")
        .unwrap();
    let beyond = beyond.to_str().unwrap();
    let unsupported = jalc(&["compile", beyond, "-o", temp("beyond.jbin").to_str().unwrap()]);
    assert_eq!(unsupported.status.code(), Some(2));
    assert!(stderr(&unsupported).contains("no exact f32 immediate"), "{}", stderr(&unsupported));
    assert_eq!(jalc(&["verify", beyond]).status.code(), Some(2));
    let attn = format!("{}/../examples/attention.tir", env!("CARGO_MANIFEST_DIR"));
    let written_out = jalc(&["verify", &attn, "--target", "jpu-tiny"]);
    assert_eq!(written_out.status.code(), Some(0), "{}", stderr(&written_out));
    let nothing = jalc(&["compile", &gemm]);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(stderr(&nothing).contains("give -o OUT.jbin or --emit STAGE"));
}

/// A reader that stops early (`jalc ... | head`) ends jalc quietly: no panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    use std::io::Read as _;
    use std::process::Stdio;
    // Enough text to fill the pipe: every tile op of a multi-head attention.
    let tir = temp("wide.tir");
    std::fs::write(
        &tir,
        "func @f(%q: bf16[8, 512, 64], %k: bf16[8, 512, 64], %v: bf16[8, 512, 64]) -> bf16[8, 512, 64] {\n  %o = attention(%q, %k, %v)\n  return %o\n}\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_jalc"))
        .args(["compile", tir.to_str().unwrap(), "--emit", "asm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jalc runs");
    let mut first = [0u8; 16];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
}

/// Targets are data: `--target FILE.toml` works wherever a target is named; the
/// binary records the target's name and hash; `jalc run` refuses a binary for
/// another target (exit 2, naming both) or for another description of the same
/// name; the assembler round-trips a custom target's program.
#[test]
fn target_files_compile_run_and_refuse_mismatches() {
    let tiny = std::fs::read_to_string(format!("{}/../isa/targets/jpu-tiny.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let chip = temp("my-chip.toml");
    std::fs::write(&chip, tiny.replace("name = \"jpu-tiny\"", "name = \"my-chip\"")).unwrap();
    let chip = chip.to_str().unwrap();
    let bin = temp("my-chip.jbin");
    let bin = bin.to_str().unwrap();
    let gemm = example("gemm.tir");
    let c = jalc(&["compile", &gemm, "--target", chip, "-o", bin]);
    assert_eq!(c.status.code(), Some(0), "{}", stderr(&c));
    let v = jalc(&["verify", &gemm, "--target", chip]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    assert!(String::from_utf8_lossy(&v.stdout).contains("passed on my-chip"), "{}", String::from_utf8_lossy(&v.stdout));
    let ok = jalc(&["run", bin, "--target", chip, "--timing-only"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("on my-chip"));
    // Without --target: not a built-in target.
    let unknown = jalc(&["run", bin, "--timing-only"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("is for target `my-chip`, which is not built in"), "{}", stderr(&unknown));
    // Another target, named: both names in the message.
    let other = jalc(&["run", bin, "--target", "jpu-tiny", "--timing-only"]);
    assert_eq!(other.status.code(), Some(2));
    assert!(stderr(&other).contains("program is for `my-chip`, not `jpu-tiny`"), "{}", stderr(&other));
    // The same name with other parameters: the hash tells them apart.
    let changed = temp("my-chip-faster.toml");
    std::fs::write(
        &changed,
        tiny.replace("name = \"jpu-tiny\"", "name = \"my-chip\"").replace("clock_ghz = 1.5", "clock_ghz = 2.0"),
    )
    .unwrap();
    let hash = jalc(&["run", bin, "--target", changed.to_str().unwrap(), "--timing-only"]);
    assert_eq!(hash.status.code(), Some(2));
    assert!(stderr(&hash).contains("built for a different description of `my-chip`"), "{}", stderr(&hash));
    // disasm and asm with the file: the same bytes again.
    let dis = jalc(&["disasm", bin, "--target", chip]);
    assert_eq!(dis.status.code(), Some(0), "{}", stderr(&dis));
    let jasm = temp("my-chip.jasm");
    std::fs::write(&jasm, &dis.stdout).unwrap();
    let again = temp("my-chip-again.jbin");
    let asm = jalc(&["asm", jasm.to_str().unwrap(), "--target", chip, "-o", again.to_str().unwrap()]);
    assert_eq!(asm.status.code(), Some(0), "{}", stderr(&asm));
    assert_eq!(std::fs::read(bin).unwrap(), std::fs::read(&again).unwrap());
    // A bad description names the field; a missing file and an unknown name exit 2.
    let bad = temp("bad-chip.toml");
    std::fs::write(&bad, tiny.replace("banks = 4", "banks = 3")).unwrap();
    let e = jalc(&["compile", &gemm, "--target", bad.to_str().unwrap(), "--emit", "parsed"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(stderr(&e).contains("`psum.banks`"), "{}", stderr(&e));
    for t in ["missing.toml", "jpu9"] {
        let e = jalc(&["compile", &gemm, "--target", t, "--emit", "parsed"]);
        assert_eq!(e.status.code(), Some(2), "{t}");
    }
}

/// `-o` and `--emit` together write the binary and print the stage, for every stage.
#[test]
fn output_and_emit_together_do_both() {
    for stage in ["parsed", "opt", "kernels", "tiles", "asm"] {
        let bin = temp(&format!("both-{stage}.jbin"));
        let _ = std::fs::remove_file(&bin);
        let o = jalc(&[
            "compile",
            &example("gemm.tir"),
            "--target",
            "jpu-tiny",
            "--emit",
            stage,
            "-o",
            bin.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{stage}: {}", stderr(&o));
        assert!(!o.stdout.is_empty(), "{stage}");
        assert!(bin.exists(), "{stage}: no binary written");
    }
    let bad = jalc(&["compile", &example("gemm.tir"), "--emit", "llvm"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("unknown stage `llvm` (stages: parsed, opt, kernels, tiles, asm)"),
        "{}",
        stderr(&bad)
    );
}

/// Inputs are read up to a limit (checked before reading a regular file; a
/// stream such as /dev/zero is cut off at the limit), and compilation has a
/// budget of tile operations; both are flags, and both refuse with exit 2.
#[test]
fn inputs_and_compilation_are_bounded() {
    let gemm = example("gemm.tir");
    for args in [
        vec!["check", "/dev/zero", "--max-file-bytes", "4096"],
        vec!["run", "/dev/zero", "--max-file-bytes", "4096"],
        vec!["compile", &gemm, "--emit", "parsed", "--max-file-bytes", "100"],
        vec!["compile", &gemm, "-o", "/dev/null", "--schedule", "/dev/zero", "--max-file-bytes", "4096"],
    ] {
        let o = jalc(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("the limit is") && stderr(&o).contains("--max-file-bytes"), "{}", stderr(&o));
    }
    let bin = gemm_binary("bounded");
    let o = jalc(&["run", bin.to_str().unwrap(), "--input", "a=/dev/zero", "--input", "b=/dev/zero"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("the limit is"), "{}", stderr(&o));
    let o = jalc(&["compile", &gemm, "-o", temp("budget.jbin").to_str().unwrap(), "--max-tile-ops", "5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("the limit is 5 (--max-tile-ops)"), "{}", stderr(&o));
    assert!(jalc(&["compile", &gemm, "-o", temp("budget.jbin").to_str().unwrap()]).status.success());
}

/// Weights by name: parameters declared `= "file"["tensor"]` are read from a
/// safetensors file beside the program by `compile` (constants of the binary:
/// `run` needs only the other inputs), `verify` and `eval`; the printed program
/// keeps the declaration; a missing tensor, a wrong shape, a path leaving the
/// folder and a missing file exit 2 naming what and where.
#[test]
fn weights_by_name_compile_verify_eval_and_run() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = temp("weights");
    std::fs::create_dir_all(&dir).unwrap();
    let w: Vec<f32> = (0..16 * 8).map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.125).collect();
    let b: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 2.0).collect();
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (wb, bb) = (le(&w), le(&b));
    let tensors = vec![
        ("proj.weight", TensorView::new(Dtype::F32, vec![16, 8], &wb).unwrap()),
        ("proj.bias", TensorView::new(Dtype::F32, vec![8], &bb).unwrap()),
    ];
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(tensors, None).unwrap()).unwrap();
    let program = |w_decl: &str| {
        format!(
            "func @proj(%x: f32[4, 16], %w: {w_decl}, %b: bf16[8] = \"model.safetensors\"[\"proj.bias\"]) -> f32[4, 8] {{\n  %y = matmul(%x, %w)\n  %bf = cast(%b) {{to = f32}}\n  %z = add(%y, %bf)\n  return %z\n}}\n"
        )
    };
    let tir = dir.join("proj.tir");
    std::fs::write(&tir, program("f32[16, 8] = \"model.safetensors\"[\"proj.weight\"]")).unwrap();
    let tir_s = tir.to_str().unwrap();
    let printed = jalc(&["compile", tir_s, "--emit", "parsed"]);
    assert!(
        String::from_utf8_lossy(&printed.stdout).contains("%w: f32[16, 8] = \"model.safetensors\"[\"proj.weight\"]")
    );
    let verified = jalc(&["verify", tir_s, "--target", "jpu-tiny"]);
    assert_eq!(verified.status.code(), Some(0), "{}", stderr(&verified));
    let bin = dir.join("proj.jbin");
    let compiled = jalc(&["compile", tir_s, "--target", "jpu-tiny", "-o", bin.to_str().unwrap()]);
    assert_eq!(compiled.status.code(), Some(0), "{}", stderr(&compiled));
    let x: Vec<f64> = (0..64).map(|i| (i % 7) as f64 * 0.25 - 0.75).collect();
    let xp = dir.join("x.npy");
    write_npy_f64(&xp, &[4, 16], &x);
    let x_arg = format!("x={}", xp.display());
    let (run_dir, eval_dir) = (dir.join("run"), dir.join("eval"));
    let ran = jalc(&["run", bin.to_str().unwrap(), "--input", &x_arg, "--output-dir", run_dir.to_str().unwrap()]);
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    let evaluated = jalc(&["eval", tir_s, "--input", &x_arg, "--output-dir", eval_dir.to_str().unwrap()]);
    assert_eq!(evaluated.status.code(), Some(0), "{}", stderr(&evaluated));
    let (got, want) = (read_npy_f32(&run_dir.join("z.npy")), read_npy_f32(&eval_dir.join("z.npy")));
    assert_eq!(got, want, "the chip with baked weights equals the evaluator");
    let by_hand: f32 = (0..16).map(|k| x[k] as f32 * w[k * 8]).sum::<f32>() + b[0];
    assert!((want.1[0] - by_hand).abs() < 1e-5, "{} vs {by_hand}", want.1[0]);
    // Passing a weight as an input is refused.
    let w_arg = format!("w={}", xp.display());
    let twice =
        jalc(&["eval", tir_s, "--input", &x_arg, "--input", &w_arg, "--output-dir", eval_dir.to_str().unwrap()]);
    assert_eq!(twice.status.code(), Some(2));
    assert!(stderr(&twice).contains("`w` is a weight"), "{}", stderr(&twice));
    // Bad references exit 2 naming the parameter, the file and the tensor.
    for (decl, want) in [
        ("f32[16, 8] = \"model.safetensors\"[\"nope\"]", "has no tensor \"nope\" (it has 2: proj.bias, proj.weight)"),
        ("f32[16, 8] = \"model.safetensors\"[\"proj.bias\"]", "has shape [8], but the program declares f32[16, 8]"),
        (
            "f32[16, 8] = \"../model.safetensors\"[\"proj.weight\"]",
            "must be a relative path inside the program's folder",
        ),
        ("f32[16, 8] = \"missing.safetensors\"[\"proj.weight\"]", "cannot read the weight file"),
    ] {
        let bad = dir.join("bad.tir");
        std::fs::write(&bad, program(decl)).unwrap();
        let out = jalc(&["compile", bad.to_str().unwrap(), "-o", dir.join("bad.jbin").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{decl}");
        assert!(stderr(&out).contains(want), "{decl}: {}", stderr(&out));
    }
}

/// ONNX models on the command line: `jalc import` writes the `.tir` and its
/// weights beside it (and they compile and verify as a `.tir`); `compile` and
/// `verify` take the model directly; usage and model errors exit 2.
#[test]
fn onnx_models_import_compile_and_verify() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../testsuite/cases/onnx/bert-tiny.onnx");
    let shapes = ["--input-shape", "input_ids=2x24", "--input-shape", "attention_mask=2x24"];
    let dir = temp("onnx-import");
    std::fs::create_dir_all(&dir).unwrap();
    let tir = dir.join("bert.tir");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        a.extend(shapes.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| jalc(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let imported = run(args(&["import", model, "-o", tir.to_str().unwrap(), "--precision", "f32"]));
    assert_eq!(imported.status.code(), Some(0), "{}", stderr(&imported));
    assert!(dir.join("bert.safetensors").exists());
    let text = std::fs::read_to_string(&tir).unwrap();
    assert!(text.contains("= \"bert.safetensors\"["), "{text}");
    let verified = jalc(&["verify", tir.to_str().unwrap(), "--target", "jpu-tiny"]);
    assert_eq!(verified.status.code(), Some(0), "{}", stderr(&verified));
    let bin = dir.join("bert.jbin");
    let compiled = run(args(&["compile", model, "--target", "jpu-tiny", "-o", bin.to_str().unwrap()]));
    assert_eq!(compiled.status.code(), Some(0), "{}", stderr(&compiled));
    let verified = run(args(&["verify", model, "--target", "jpu-tiny", "--precision", "f32"]));
    assert_eq!(verified.status.code(), Some(0), "{}", stderr(&verified));
    // `jalc run` by the model's names: int64 inputs, outputs in the model's types.
    let (ids, mask) = (dir.join("ids.npy"), dir.join("mask.npy"));
    let ids_values: Vec<i64> = (0..48).map(|i| (i * 7 % 50) as i64).collect();
    write_npy_i64(&ids, &[2, 24], &ids_values);
    write_npy_i64(&mask, &[2, 24], &[1; 48]);
    let out = dir.join("out");
    let inputs = [format!("input_ids={}", ids.display()), format!("attention_mask={}", mask.display())];
    let ran = jalc(&[
        "run",
        bin.to_str().unwrap(),
        "--input",
        &inputs[0],
        "--input",
        &inputs[1],
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    let (shape, values) = read_npy_f32(&out.join("sentence_embedding.npy"));
    assert_eq!((shape, values.iter().all(|v| v.is_finite())), (vec![2, 32], true));
    assert!(out.join("last_hidden_state.npy").exists());
    write_npy_i64(&ids, &[2, 24], &[1 << 40; 48]);
    let too_big = jalc(&["run", bin.to_str().unwrap(), "--input", &inputs[0], "--input", &inputs[1]]);
    assert_eq!(too_big.status.code(), Some(2));
    assert!(stderr(&too_big).contains("outside the range of i32"), "{}", stderr(&too_big));
    // Errors: a dynamic dim without a shape, a malformed shape, ONNX options on a .tir, unsupported ops.
    let missing = jalc(&["compile", model, "-o", bin.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("has dynamic dims"), "{}", stderr(&missing));
    let malformed = jalc(&["compile", model, "--input-shape", "input_ids=2by24", "-o", bin.to_str().unwrap()]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(stderr(&malformed).contains("is not NAME=D0xD1..."), "{}", stderr(&malformed));
    let on_tir = jalc(&["verify", tir.to_str().unwrap(), "--precision", "f32"]);
    assert_eq!(on_tir.status.code(), Some(2));
    assert!(stderr(&on_tir).contains("apply to ONNX models"), "{}", stderr(&on_tir));
    let unsupported = concat!(env!("CARGO_MANIFEST_DIR"), "/../testsuite/cases/onnx/unsupported.onnx");
    let refused = jalc(&["compile", unsupported, "-o", bin.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("Conv x2"), "{}", stderr(&refused));
    std::fs::remove_dir_all(&dir).ok();
}

fn write_npy_i64(path: &std::path::Path, shape: &[u64], values: &[i64]) {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(file).begin_nd().unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
}

#[test]
fn cores_spread_a_gemm_and_out_of_range_counts_exit_2() {
    let gemm = example("gemm.tir");
    let bin = temp("cores-gemm.jbin");
    let out = jalc(&["compile", &gemm, "--target", "jpu-tiny", "--cores", "2", "-o", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = jalc(&["run", bin.to_str().unwrap(), "--timing-only"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let text = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(text.contains("core1.pe") && text.contains("fabric bytes"), "{text}");
    let verify = jalc(&["verify", &gemm, "--target", "jpu-tiny", "--cores", "2"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    for bad in ["0", "3"] {
        let out = jalc(&["compile", &gemm, "--target", "jpu-tiny", "--cores", bad, "--emit", "asm"]);
        assert_eq!(out.status.code(), Some(2), "--cores {bad}");
        assert!(stderr(&out).contains("jpu-tiny has 1 to 2 cores"), "{}", stderr(&out));
    }
}

/// A remote signal is a flow arrow in the trace, from the signalling slice on
/// core 0 to the `signals` track of core 1, when it arrives (cycles by hand in
/// the case's comments: sent at 284, visible at 334).
#[test]
fn traces_draw_remote_signals_between_cores() {
    let case = format!("{}/../testsuite/cases/sim/timing/remote-signal-orders-hbm.jasm", env!("CARGO_MANIFEST_DIR"));
    let (bin, trace) = (temp("remote-signal.jbin"), temp("remote-signal-trace.json"));
    assert_eq!(jalc(&["asm", &case, "-o", bin.to_str().unwrap()]).status.code(), Some(0));
    let out = jalc(&["run", bin.to_str().unwrap(), "--timing-only", "--trace", trace.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let signal = events.iter().find(|e| e["ph"] == "X" && e["cat"] == "signal").expect("a signal slice");
    assert_eq!((signal["pid"].as_u64(), signal["args"]["sent_cycle"].as_u64()), (Some(1), Some(284)));
    assert_eq!(signal["args"]["arrived_cycle"].as_u64(), Some(334));
    assert_eq!(signal["name"], "ready from core 0");
    let flow = |ph: &str| events.iter().find(|e| e["ph"] == ph && e["cat"] == "signal").expect("a flow event").clone();
    assert_eq!((flow("s")["pid"].as_u64(), flow("f")["pid"].as_u64()), (Some(0), Some(1)));
    assert_eq!(flow("s")["id"], flow("f")["id"]);
}
