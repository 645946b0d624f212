//! Programs compiled for several cores (`--cores N`): kernels spread over the
//! cores, dependencies across cores carried by remote signals, every run
//! race-checked and exact against the reference evaluator.

use jalc::driver::{compile, Options};
use jpu_isa::{Op, Program, Target};
use jpu_runtime::{run, FaultKind, RunOptions};
use jpu_testsuite::jpu_tiny_4;

fn check(src: &str) -> jalc::ir::Func {
    jalc::front::tir::parse_and_check(src).unwrap_or_else(|e| panic!("{e:?}\n{src}"))
}

fn on_cores(cores: u32) -> Options {
    Options { cores, ..Options::o2() }
}

const GEMM: &str = "func @g(%a: bf16[200, 96], %b: bf16[96, 160]) -> bf16[200, 160] {
  %c = matmul(%a, %b) : f32[200, 160]
  %y = cast(%c) {to = bf16}
  return %y
}";

/// A GEMM whose result a softmax (a kernel that stays on core 0) reads: the
/// softmax waits for every core's stores through messages.
const GEMM_THEN_SOFTMAX: &str = "func @g(%a: bf16[64, 96], %b: bf16[96, 256]) -> f32[64, 256] {
  %c = matmul(%a, %b) : f32[64, 256]
  %s = softmax(%c) {axis = -1}
  return %s
}";

fn pe_cores(p: &Program) -> usize {
    p.cores.iter().filter(|c| c[0].iter().any(|i| matches!(i.op, Op::Matmul { .. }))).count()
}

#[test]
fn a_gemm_spreads_over_every_core_and_verifies() {
    let f = check(GEMM);
    for (t, cores) in [(Target::builtin("jpu-tiny").unwrap(), 2), (jpu_tiny_4(), 4)] {
        let c = compile(&f, &t, &on_cores(cores)).unwrap();
        assert_eq!(c.program.cores.len(), cores as usize);
        assert_eq!(pe_cores(&c.program), cores as usize, "every core multiplies");
        let v = jalc::verify::verify_compiled(&c, &f, &t, 3).unwrap();
        assert!(v.passed && v.max_abs_error == 0.0, "{:?}", v.first_mismatch);
        // Each core reads its own share of A and B.
        assert!(v.report.cores.iter().all(|r| r.dma_bytes > 0), "{:?}", v.report.cores);
        // The same input gives the same binary.
        let again = compile(&f, &t, &on_cores(cores)).unwrap();
        assert_eq!(jpu_isa::jbin::write(&c.program), jpu_isa::jbin::write(&again.program));
    }
}

#[test]
fn more_cores_make_a_large_gemm_faster() {
    let f = check(
        "func @g(%a: bf16[512, 256], %b: bf16[256, 512]) -> bf16[512, 512] {
  %c = matmul(%a, %b) : f32[512, 512]
  %y = cast(%c) {to = bf16}
  return %y
}",
    );
    let t = jpu_tiny_4();
    let cycles = |cores| {
        let c = compile(&f, &t, &on_cores(cores)).unwrap();
        let opts = RunOptions { timing_only: true, ..RunOptions::default() };
        run(&c.program, &t, &[], &opts).unwrap().report.cycles
    };
    let (one, four) = (cycles(1), cycles(4));
    assert!(four * 3 < one, "4 cores: {four} cycles; 1 core: {one}");
}

/// Removing the waits on the mailboxes leaves the softmax's loads unordered
/// with the other cores' stores: the race checker reports it.
#[test]
fn messages_order_kernels_across_cores_and_the_race_checker_sees_them_missing() {
    let f = check(GEMM_THEN_SOFTMAX);
    let t = Target::builtin("jpu-tiny").unwrap();
    let c = compile(&f, &t, &on_cores(2)).unwrap();
    let remote = c.program.instructions().filter(|(_, _, _, i)| i.signal.is_some_and(|s| s.core.is_some())).count();
    assert!(remote > 0, "core 1's stores are sent to core 0");
    let v = jalc::verify::verify_compiled(&c, &f, &t, 5).unwrap();
    assert!(v.passed, "{:?}", v.first_mismatch);

    let fault = race_without_mailbox_waits(&c.program, &t);
    assert!(fault.message.contains("core 1"), "{fault}");
}

/// The fault of a run of `p` with every wait on a mailbox (a message from
/// another core) removed: it must be a race.
fn race_without_mailbox_waits(p: &Program, t: &Target) -> jpu_runtime::Fault {
    let mailboxes: Vec<u8> = p.semaphores.iter().filter(|s| s.name.starts_with("from_core")).map(|s| s.id).collect();
    let mut cut = p.clone();
    for core in &mut cut.cores {
        for stream in core {
            for inst in stream {
                if inst.wait.is_some_and(|w| mailboxes.contains(&w.sem)) {
                    inst.wait = None;
                }
            }
        }
    }
    let inputs: Vec<(String, Vec<u8>)> = cut
        .tensors
        .iter()
        .filter(|t| t.role == jpu_isa::program::Role::Input)
        .map(|t| (t.name.clone(), vec![0; t.size_bytes() as usize]))
        .collect();
    let fault = run(&cut, t, &inputs, &RunOptions::default()).unwrap_err();
    assert!(matches!(fault.kind, FaultKind::Race { .. }), "{fault}");
    fault
}

#[test]
fn core_counts_beyond_the_target_are_clamped_by_the_driver_and_refused_by_jalc() {
    // The library clamps; the command line refuses (compiler/tests/cli.rs).
    let f = check(GEMM);
    let t = Target::builtin("jpu-tiny").unwrap();
    let c = compile(&f, &t, &on_cores(9)).unwrap();
    assert_eq!(c.program.cores.len(), 2);
}

/// A schedule file's `cores = N` keeps a kernel on fewer cores than the
/// program's; a count beyond them is an invalid schedule naming the limit.
#[test]
fn a_schedule_file_overrides_a_kernels_cores() {
    let f = check(GEMM_THEN_SOFTMAX);
    let t = jpu_tiny_4();
    let with = |text: &str| Options { cores: 4, ..jpu_testsuite::scheduled(text, 2) };
    let c = compile(&f, &t, &with("[%c]\ncores = 1")).unwrap();
    // The softmax's 64 rows are two blocks of 32: two cores of its four.
    let listing = jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[1, 4]);
    assert_eq!(listing.matches("cores:").count(), 1, "{listing}");
    assert!(listing.contains("cores: 2 cores, each a run of blocks of rows"), "{listing}");
    assert_eq!(pe_cores(&c.program), 1, "the GEMM stays on core 0");
    let v = jalc::verify::verify_compiled(&c, &f, &t, 2).unwrap();
    assert!(v.passed, "{:?}", v.first_mismatch);
    let e = compile(&f, &t, &with("[%c]\ncores = 5")).err().unwrap();
    assert!(e.to_string().contains("cores must be 1 to 4"), "{e}");
    let mut c = jalc::driver::Compilation::new(f.clone(), &t, with("[%c]\ncores = 2"));
    c.run_to(jalc::driver::Stage::Kernels).unwrap();
    let text = c.print(jalc::driver::Stage::Kernels).unwrap();
    assert!(text.contains("cores: 2 cores, a grid of"), "{text}");
}

/// One row of A per batch index takes the transposed path (B stationary),
/// with its elementwise epilogue, on one core and spread over all of jpu1's,
/// bit-exact against the evaluator; its PE time is a fraction of the general
/// path's.
#[test]
fn one_row_gemms_run_transposed_and_verify() {
    let src = "func @g(%a: bf16[2, 1, 1024], %b: bf16[2, 1024, 2048], %bias: bf16[2048], %r: bf16[2, 1, 2048]) -> bf16[2, 1, 2048] {
  %c = matmul(%a, %b) : bf16[2, 1, 2048]
  %z = add(%c, %bias)
  %g = gelu(%z) {approx = \"tanh\"}
  %y = add(%g, %r)
  return %y
}";
    let f = check(src);
    let t = Target::builtin("jpu1").unwrap();
    for cores in [1, 8] {
        let c = compile(&f, &t, &on_cores(cores)).unwrap();
        let listing = jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[cores]);
        assert!(listing.contains("one row: C^T = B^T . A^T"), "{listing}");
        let v = jalc::verify::verify_compiled(&c, &f, &t, 4).unwrap();
        assert!(v.passed && v.max_abs_error == 0.0, "{cores} cores: {:?}", v.first_mismatch);
        assert_eq!(pe_cores(&c.program), cores as usize);
        if cores == 1 {
            // 2 batches x 16 blocks x 8 k-chunks of minimum-length matmuls.
            assert_eq!(v.report.busy("pe"), 2 * 16 * 8 * 64);
        }
        // A's row (which would wait for its producer) and B's blocks load on
        // queues of their own: B never waits behind A in an in-order queue.
        let (a_queues, b_queues) = (streams_reading(&c.program, "a"), streams_reading(&c.program, "b"));
        assert!(!a_queues.is_empty() && !b_queues.is_empty());
        assert!(a_queues.iter().all(|q| !b_queues.contains(q)), "A on {a_queues:?}, B on {b_queues:?}");
    }
}

/// The (core, stream) pairs whose DMAs read HBM tensor `name`.
fn streams_reading(p: &Program, name: &str) -> Vec<(usize, usize)> {
    let t = p.tensors.iter().find(|t| t.name == name).unwrap();
    let inside = |addr: u64| addr >= t.addr && addr < t.addr + t.size_bytes();
    let mut out = Vec::new();
    for (c, core) in p.cores.iter().enumerate() {
        for (e, stream) in core.iter().enumerate() {
            let reads = |i: &jpu_isa::Inst| matches!(&i.op, Op::Dma { xfer } if xfer.src.space == jpu_isa::operand::DmaSpace::Hbm && inside(xfer.src.addr));
            if stream.iter().any(reads) {
                out.push((c, e));
            }
        }
    }
    out
}

/// The 4-core jpu-tiny with one line of its description replaced (validated).
fn jpu_tiny_4_with(line: &str, by: &str) -> Target {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/jpu-tiny-4.toml")).unwrap();
    assert!(text.contains(line), "jpu-tiny-4.toml has no `{line}`");
    Target::from_toml(&text.replace(line, by)).unwrap()
}

/// Runs the one-core and the `cores`-core programs of `f` on the same inputs,
/// strict about uninitialised reads (and race-checked), and asserts their
/// outputs are the same bytes.
fn same_bytes_as_one_core(
    f: &jalc::ir::Func,
    t: &Target,
    (one, many): (&jalc::driver::Compiled, &jalc::driver::Compiled),
    cores: u64,
) -> (jpu_runtime::Outcome, jpu_runtime::Outcome) {
    let opts = RunOptions { strict_uninit: true, ..RunOptions::default() };
    let outcome =
        |c: &jalc::driver::Compiled| run(&c.program, t, &jpu_testsuite::chip_inputs(f, &c.program, 5), &opts).unwrap();
    let (a, b) = (outcome(one), outcome(many));
    assert_eq!(a.outputs, b.outputs, "{cores} cores");
    (a, b)
}

/// A target with too few semaphores for a mailbox per core refuses the core
/// count with a limit, not an internal error.
#[test]
fn too_few_semaphores_for_the_cores_is_a_limit() {
    let t = jpu_tiny_4_with("semaphores = 32", "semaphores = 8");
    let f = check(GEMM);
    assert_eq!(compile(&f, &t, &on_cores(2)).unwrap().program.cores.len(), 2);
    let e = compile(&f, &t, &on_cores(4)).err().unwrap();
    assert!(matches!(e, jalc::error::CompileError::LimitExceeded { .. }), "{e:?}");
    assert!(e.to_string().contains("4 cores need 9 semaphores per core"), "{e}");
}

/// An attention with one KV group, fewer groups than cores, spreads its query
/// tiles over the cores (runs balanced by the KV blocks each tile visits under
/// the causal mask): faster, race-checked, and the same bytes as on one core.
#[test]
fn one_kv_group_spreads_by_query_tiles() {
    let f = check(
        "func @a(%q: bf16[1, 4, 256, 64], %k: bf16[1, 1, 256, 64], %v: bf16[1, 1, 256, 64]) -> bf16[1, 4, 256, 64] {
  %o = attention(%q, %k, %v) {causal = true}
  return %o
}",
    );
    for (t, cores) in [(Target::builtin("jpu-tiny").unwrap(), 2), (jpu_tiny_4(), 4)] {
        let (one, many) = (compile(&f, &t, &on_cores(1)).unwrap(), compile(&f, &t, &on_cores(cores)).unwrap());
        let listing = jalc::driver::kernels_text(&many.kernels, &many.names, &t, &[cores]);
        assert!(listing.contains("each a run of query tiles"), "{listing}");
        let v = jalc::verify::verify_compiled(&many, &f, &t, 5).unwrap();
        assert!(v.passed, "{cores} cores: {:?}", v.first_mismatch);
        let (a, b) = same_bytes_as_one_core(&f, &t, (&one, &many), cores as u64);
        assert!(b.report.cores.iter().all(|r| r.dma_bytes > 0), "{:?}", b.report.cores);
        assert!(
            b.report.cycles * 10 < a.report.cycles * 7,
            "{cores} cores: {} cycles; 1 core: {}",
            b.report.cycles,
            a.report.cycles
        );
    }
}

/// A short GEMM's every core reads all of A: each loads a run of its
/// k-slices instead and multicasts it to the others (core-to-core DMA). The
/// run is race-checked with strict initialisation (a matmul reading a slice
/// before its share lands would fault), exact, and bit-identical to one core's;
/// each core reads only its share of A from HBM.
#[test]
fn a_short_gemm_multicasts_a_over_the_fabric() {
    // 32 rows multiply in the plain form, 16 (half the PE's columns) in the short one.
    for m in [32, 16] {
        short_gemm_multicasts_a(m);
    }
}

/// A GEMM of `m` rows by 1024 x 512 whose result is cast to bf16.
fn skinny_gemm(m: u64) -> jalc::ir::Func {
    check(&format!(
        "func @g(%a: bf16[{m}, 1024], %b: bf16[1024, 512]) -> bf16[{m}, 512] {{
  %c = matmul(%a, %b) : f32[{m}, 512]
  %y = cast(%c) {{to = bf16}}
  return %y
}}"
    ))
}

/// Multicast DMAs in `p` (transfers into other cores' SRAM).
fn multicasts(p: &Program) -> usize {
    p.instructions().filter(|(_, _, _, i)| matches!(&i.op, Op::Dma { xfer } if xfer.dst.cores != 0)).count()
}

/// A schedule file's `form` and `share_a` override the GEMM's choices: every
/// form that can run a GEMM gives the same bytes race-checked, sharing turns
/// off where the cost model takes it and on where it does not, and a form
/// that cannot run the GEMM is refused naming the field.
#[test]
fn a_schedule_file_chooses_the_gemm_form_and_sharing() {
    let t = jpu_tiny_4();
    let with = |cores: u32, text: &str| Options { cores, ..jpu_testsuite::scheduled(text, 2) };
    let listing =
        |c: &jalc::driver::Compiled, cores: u32| jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[cores]);
    // 16 rows: the cost model takes the short form, shared over 4 cores.
    let f = skinny_gemm(16);
    let one = compile(&f, &t, &on_cores(1)).unwrap();
    let auto = compile(&f, &t, &on_cores(4)).unwrap();
    assert!(listing(&auto, 4).contains("short: C^T") && multicasts(&auto.program) > 0, "{}", listing(&auto, 4));
    let plain = compile(&f, &t, &with(4, "[%c]\nform = plain\nshare_a = false")).unwrap();
    let text = listing(&plain, 4);
    assert!(text.contains("form = plain, share_a = false") && !text.contains("short: C^T"), "{text}");
    assert!(!text.contains("A read once") && multicasts(&plain.program) == 0, "{text}");
    let (_, auto_run) = same_bytes_as_one_core(&f, &t, (&one, &auto), 4);
    let (_, plain_run) = same_bytes_as_one_core(&f, &t, (&one, &plain), 4);
    assert!(plain_run.report.busy("pe") > auto_run.report.busy("pe"), "the plain form's matmuls are longer");
    // 32 rows on 2 cores: plain and shared by the cost model; forced short
    // (with tiles of half the PE's columns) and unshared.
    let f = skinny_gemm(32);
    let one = compile(&f, &t, &on_cores(1)).unwrap();
    let auto = compile(&f, &t, &on_cores(2)).unwrap();
    let text = listing(&auto, 2);
    assert!(!text.contains("short: C^T") && text.contains("A read once"), "{text}");
    let forced = compile(&f, &t, &with(2, "[%c]\ntile_m = 16\nform = short\nshare_a = false")).unwrap();
    let text = listing(&forced, 2);
    assert!(text.contains("short: C^T") && !text.contains("A read once"), "{text}");
    assert_eq!(multicasts(&forced.program), 0, "{text}");
    same_bytes_as_one_core(&f, &t, (&one, &forced), 2);
    let v = jalc::verify::verify_compiled(&forced, &f, &t, 3).unwrap();
    assert!(v.passed && v.max_abs_error == 0.0, "{:?}", v.first_mismatch);
    // JPU-1's 128 x 4096 x 4096 on 2 cores is bound by its matmuls, which
    // would wait for A's shared slices, so the cost model does not share A
    // there; `share_a = true` does (compiled only).
    let jpu1 = Target::builtin("jpu1").unwrap();
    let f = check(
        "func @g(%a: bf16[128, 4096], %b: bf16[4096, 4096]) -> bf16[128, 4096] {\n  %c = matmul(%a, %b)\n  return %c\n}",
    );
    for (text, shared) in [("", false), ("[%c]\nshare_a = true", true)] {
        let c = compile(&f, &jpu1, &Options { cores: 2, ..jpu_testsuite::scheduled(text, 2) }).unwrap();
        let text = jalc::driver::kernels_text(&c.kernels, &c.names, &jpu1, &[2]);
        assert_eq!(text.contains("A read once"), shared, "{text}");
        assert_eq!(multicasts(&c.program) > 0, shared, "{text}");
    }
    // One row: every form forced, the same bytes as the cost model's choice.
    let f = skinny_gemm(1);
    let one = compile(&f, &t, &on_cores(1)).unwrap();
    for form in ["plain", "short", "one_row"] {
        let c = compile(&f, &t, &with(2, &format!("[%c]\nform = {form}"))).unwrap();
        assert_eq!(listing(&c, 2).contains("one row: C^T"), form == "one_row", "{}", listing(&c, 2));
        assert_eq!(listing(&c, 2).contains("short: C^T"), form == "short", "{}", listing(&c, 2));
        same_bytes_as_one_core(&f, &t, (&one, &c), 2);
    }
    // Forms that cannot run the GEMM, and sharing that cannot apply.
    let refused = |f: &jalc::ir::Func, text: &str| compile(f, &t, &with(2, text)).err().unwrap().to_string();
    let e = refused(&skinny_gemm(32), "[%c]\nform = short");
    assert!(e.contains("form = short needs 16-bit operands, A stored plainly, tile_m <= 16"), "{e}");
    let e = refused(&skinny_gemm(16), "[%c]\nform = one_row");
    assert!(e.contains("form = one_row needs M = 1") && e.contains("(this GEMM: M = 16)"), "{e}");
    let e = refused(&skinny_gemm(1), "[%c]\nform = one_row\nshare_a = true");
    assert!(e.contains("share_a = true does not apply to the one-row form"), "{e}");
    let e = refused(&skinny_gemm(64), "[%c]\na_buffers = 1\nshare_a = true");
    assert!(e.contains("share_a = true needs A resident: a_buffers >= 2 (A's tiles), not 1"), "{e}");
    let e = refused(&skinny_gemm(16), "[%c]\nform = wide");
    assert!(e.contains("is `auto`, `plain`, `short` or `one_row`, not `wide`"), "{e}");
}

/// On JPU-1 a short GEMM (one row of output blocks over the cores, A
/// resident) streams B on `dma0` and A on `dma1` on every core, and shares A
/// over the fabric where a long HBM stream hides the wait for other cores'
/// slices: not where its matmuls bind it, nor where its stream is short, nor
/// with fewer of A's k-slices than cores (the listing says what the program
/// does; compiled only, `cores-bench --sharing` measures them).
#[test]
fn short_gemms_share_a_where_a_long_hbm_stream_hides_it() {
    let t = Target::builtin("jpu1").unwrap();
    // (M, K, N, cores, shares): bound by HBM; by its matmuls; a short stream;
    // 4 k-slices for 8 cores.
    let cases =
        [(16, 2048, 2048, 4, true), (128, 4096, 4096, 2, false), (64, 1024, 1024, 8, false), (64, 512, 8192, 8, false)];
    for (m, k, n, cores, shares) in cases {
        let f = check(&format!(
            "func @g(%a: bf16[{m}, {k}], %b: bf16[{k}, {n}]) -> bf16[{m}, {n}] {{\n  %c = matmul(%a, %b)\n  return %c\n}}"
        ));
        let c = compile(&f, &t, &on_cores(cores)).unwrap();
        let text = jalc::driver::kernels_text(&c.kernels, &c.names, &t, &[cores]);
        assert_eq!(text.contains("A read once"), shares, "{m} x {k} x {n} on {cores}: {text}");
        assert_eq!(multicasts(&c.program) > 0, shares, "{m} x {k} x {n} on {cores}");
        let every_core = |queue: usize| (0..cores as usize).map(|c| (c, 3 + queue)).collect::<Vec<_>>();
        assert_eq!(streams_reading(&c.program, "b"), every_core(0), "{m} x {k} x {n}: B on dma0");
        assert_eq!(streams_reading(&c.program, "a"), every_core(1), "{m} x {k} x {n}: A on dma1");
    }
}

fn short_gemm_multicasts_a(m: u64) {
    let (k, n) = (1024u64, 512u64);
    let f = skinny_gemm(m);
    let four_queues = jpu_tiny_4_with("queues = 2", "queues = 4");
    for (t, cores) in [(Target::builtin("jpu-tiny").unwrap(), 2u64), (jpu_tiny_4(), 4), (four_queues, 4)] {
        let (one, many) = (compile(&f, &t, &on_cores(1)).unwrap(), compile(&f, &t, &on_cores(cores as u32)).unwrap());
        let listing = jalc::driver::kernels_text(&many.kernels, &many.names, &t, &[cores as u32]);
        assert!(listing.contains("multicasts it to the others over the fabric"), "{listing}");
        if t.dma.queues >= 3 {
            // B streams on a queue of its own, A's loads and shares on another.
            let (a_queues, b_queues) = (streams_reading(&many.program, "a"), streams_reading(&many.program, "b"));
            assert_eq!(b_queues.len(), cores as usize, "one B queue per core: {b_queues:?}");
            assert!(a_queues.iter().all(|q| !b_queues.contains(q)), "A on {a_queues:?}, B on {b_queues:?}");
        }
        let multicasts = many
            .program
            .instructions()
            .filter(|(_, _, _, i)| matches!(&i.op, Op::Dma { xfer } if xfer.dst.cores.count_ones() as u64 == cores - 1))
            .count();
        assert!(multicasts >= cores as usize, "{cores} cores: {multicasts} multicasts");
        let v = jalc::verify::verify_compiled(&many, &f, &t, 5).unwrap();
        assert!(v.passed && v.max_abs_error == 0.0, "{cores} cores: {:?}", v.first_mismatch);
        let (_, b) = same_bytes_as_one_core(&f, &t, (&one, &many), cores);
        // Every core sends its run of A (m x k/cores) over the fabric once, and
        // reads from HBM its B columns, its run of A and its outputs' bytes.
        let (a_bytes, b_bytes, c_bytes) = (m * k * 2, k * n * 2, m * n * 2);
        for r in &b.report.cores {
            assert_eq!(r.fabric_bytes, a_bytes / cores, "{:?}", b.report.cores);
            assert_eq!(r.dma_bytes, (a_bytes + b_bytes + c_bytes) / cores, "{:?}", b.report.cores);
        }
        // Without the messages, a matmul reads A before another core's share lands.
        let fault = race_without_mailbox_waits(&many.program, &t);
        assert!(fault.message.contains("core"), "{fault}");
    }
}

/// A GEMM's schedule as `--emit kernels` prints it, written back as a
/// schedule file, gives the same program: every field's printed value
/// (`auto` included) reads back as itself, in each form and spread over cores.
#[test]
fn printed_gemm_schedules_read_back_to_the_same_program() {
    let t = jpu_tiny_4();
    for (m, cores) in [(1, 1), (16, 4), (32, 2), (200, 4)] {
        let f = skinny_gemm(m);
        let c = compile(&f, &t, &on_cores(cores)).unwrap();
        let s = jpu_testsuite::gemm(&c.kernels).unwrap().s;
        let file = format!("[%c]\n{}\n", s.to_string().replace(", ", "\n"));
        let again = compile(&f, &t, &Options { cores, ..jpu_testsuite::scheduled(&file, 2) }).unwrap();
        assert_eq!(jpu_testsuite::gemm(&again.kernels).unwrap().s, s, "{file}");
        assert!(again.program == c.program, "M = {m} on {cores} cores: another program from\n{file}");
    }
}

/// A short GEMM of random shape, operand type and layout (A stored `[K, M]`
/// and transposed in the program when `transpose_a`), its result cast to bf16.
fn random_short_gemm(m: u64, k: u64, n: u64, fp8: bool, transpose_a: bool) -> jalc::ir::Func {
    let dt = if fp8 { "f8e4m3" } else { "bf16" };
    let (a_ty, a) = if transpose_a {
        (format!("{dt}[{k}, {m}]"), "  %at = transpose(%a) {perm = [1, 0]}\n  %c = matmul(%at, %b) : f32")
    } else {
        (format!("{dt}[{m}, {k}]"), "  %c = matmul(%a, %b) : f32")
    };
    check(&format!(
        "func @g(%a: {a_ty}, %b: {dt}[{k}, {n}]) -> bf16[{m}, {n}] {{\n{a}[{m}, {n}]\n  %y = cast(%c) {{to = bf16}}\n  return %y\n}}"
    ))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Any `form`, `share_a`, `tile_m` and `a_buffers` a schedule file names
    /// for a short GEMM either compiles to a program that verifies bit-exact,
    /// race-checked with strict initialisation, on 1, 2 or 4 cores, or is
    /// refused as an invalid schedule naming one of those fields: never
    /// another error, never a wrong result.
    #[test]
    fn forced_gemm_forms_verify_or_are_refused(
        m in proptest::prop_oneof![proptest::strategy::Just(1u64), 1u64..=40], k in 1u64..=6, n in 1u64..=5, fp8 in proptest::bool::weighted(0.2),
        transpose_a in proptest::bool::weighted(0.2), form in 0usize..4, share in 0usize..3,
        tile_m in proptest::option::of(proptest::sample::select(vec![1u32, 8, 16, 32])),
        a_buffers in proptest::option::of(1u32..=3), cores in proptest::sample::select(vec![1u32, 2, 4]),
        seed in proptest::prelude::any::<u64>(),
    ) {
        let (k, n) = (k * 40, n * 56);
        let f = random_short_gemm(m, k, n, fp8, transpose_a);
        let mut file = format!(
            "[%c]\nform = {}\nshare_a = {}\n",
            ["auto", "plain", "short", "one_row"][form],
            ["auto", "true", "false"][share]
        );
        if let Some(tile_m) = tile_m {
            file += &format!("tile_m = {tile_m}\n");
        }
        if let Some(a_buffers) = a_buffers {
            file += &format!("a_buffers = {a_buffers}\n");
        }
        let t = jpu_tiny_4();
        match compile(&f, &t, &Options { cores, ..jpu_testsuite::scheduled(&file, 2) }) {
            Ok(c) => {
                let v = jalc::verify::verify_compiled(&c, &f, &t, seed).unwrap_or_else(|e| panic!("{e}\n{file}"));
                proptest::prop_assert!(v.passed && v.max_abs_error == 0.0, "{:?}\n{file}", v.first_mismatch);
            }
            Err(jalc::error::CompileError::InvalidSchedule { field, .. }) => {
                proptest::prop_assert!(["form", "share_a", "tile_m", "psum_banks", "buffers"].contains(&field.as_str()), "{field}\n{file}");
            }
            Err(e) => proptest::prop_assert!(false, "{e}\n{file}"),
        }
    }
}
