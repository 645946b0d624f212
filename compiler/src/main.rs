//! `jalc`: the Jalapeño toolchain's command line (contract in docs/cli.md).
//!
//! Exit codes: 0 success; 1 a verification mismatch or simulator fault; 2 bad
//! input or usage. Every failure prints a diagnostic to stderr; nothing panics.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jalc::driver::{Compilation, Options, Stage};
use jalc::error::CompileError;
use jpu_isa::Target;

/// Writes to stdout; a closed stdout (`jalc ... | head`) ends the program
/// quietly instead of panicking, and any other write error is reported (exit 2).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(2);
        }
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {{
        out!($($arg)*);
        out!("\n");
    }};
}

/// A failure with the exit code it maps to.
enum Failure {
    /// Bad input or usage: exit 2.
    Input(String),
    /// A simulator fault or a verification mismatch: exit 1.
    Fault(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        let (msg, code) = match self {
            Failure::Input(msg) => (msg, 2),
            Failure::Fault(msg) => (msg, 1),
        };
        eprint!("{msg}");
        if !msg.ends_with('\n') {
            eprintln!();
        }
        ExitCode::from(code)
    }
}

#[derive(Parser)]
#[command(name = "jalc", version, about = "The Jalapeño kernel compiler and JPU-1 toolchain")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Refuse input files (.tir, .jasm, .jbin, schedules) larger than this many bytes.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = 1 << 30)]
    max_file_bytes: u64,
    /// Refuse (compile, verify) programs that would lower to more tile operations
    /// (about one instruction each) than this.
    #[arg(long, global = true, value_name = "N", default_value_t = jalc::driver::MAX_TILE_OPS)]
    max_tile_ops: u64,
}

/// `--max-tile-ops`, set once at start.
static MAX_TILE_OPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(jalc::driver::MAX_TILE_OPS);

/// `--max-file-bytes`, set once at start.
static MAX_FILE_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 30);

/// How an ONNX model is imported (not for .tir files).
#[derive(clap::Args, Default, Clone)]
struct ModelArgs {
    /// An ONNX input's shape: NAME=D0xD1... (required for inputs with dynamic dims).
    #[arg(long = "input-shape", value_name = "NAME=D0xD1...")]
    input_shapes: Vec<String>,
    /// How an ONNX model's float values are stored: bf16 (f32 accumulation and statistics) or f32.
    #[arg(long, value_parser = ["bf16", "f32"])]
    precision: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a .tir file; diagnostics go to stderr.
    Check {
        /// Tensor IR source.
        file: PathBuf,
    },
    /// Import an ONNX model as .tir (-o OUT.tir) and its weights (OUT.safetensors beside it).
    Import {
        /// ONNX model.
        file: PathBuf,
        /// The .tir to write; the weights go to the same path with `.safetensors`.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Compile a .tir file or an ONNX model to a chip binary (-o) and/or print a stage (--emit).
    Compile {
        /// Tensor IR source, or an ONNX model (.onnx).
        file: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Output binary.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Target: a built-in name (jpu1, jpu-tiny) or a description file (NAME.toml).
        #[arg(long, default_value = "jpu1")]
        target: String,
        /// Print a stage to stdout: parsed, opt, kernels, tiles, asm.
        #[arg(long, value_name = "STAGE", value_parser = parse_stage)]
        emit: Option<Stage>,
        /// Optimization level: -O0 skips the e-graph optimizer and fusion.
        #[arg(short = 'O', value_name = "LEVEL", default_value_t = 2)]
        opt: u8,
        /// Per-kernel schedule overrides (docs/schedules.md).
        #[arg(long, value_name = "FILE")]
        schedule: Option<PathBuf>,
        /// Cores to spread the kernels over, 1 to the target's (default: all of them).
        #[arg(long, value_name = "N")]
        cores: Option<u32>,
    },
    /// Compile, simulate on seeded random inputs, and compare with the reference evaluator.
    Verify {
        /// Tensor IR source, or an ONNX model (.onnx).
        file: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Target: a built-in name (jpu1, jpu-tiny) or a description file (NAME.toml).
        #[arg(long, default_value = "jpu1")]
        target: String,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Schedule overrides (docs/schedules.md).
        #[arg(long, value_name = "FILE")]
        schedule: Option<PathBuf>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Optimization level: -O0 skips the e-graph optimizer.
        #[arg(short = 'O', value_name = "LEVEL", default_value_t = 2)]
        opt: u8,
        /// What computes the simulator's results: `jit` (the default on x86_64
        /// and aarch64) or `interp`; the same results either way.
        #[arg(long, value_enum, default_value_t = EngineArg::host_default())]
        engine: EngineArg,
        /// Cores to spread the kernels over, 1 to the target's (default: all of them).
        #[arg(long, value_name = "N")]
        cores: Option<u32>,
    },
    /// Evaluate a .tir function with the reference evaluator.
    Eval {
        /// Tensor IR source.
        file: PathBuf,
        /// A parameter's value: NAME=FILE.npy (any numpy numeric dtype; converted to the declared type).
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Write each result to DIR/<returned value name>.npy (float32, int32 for integer types).
        #[arg(long, value_name = "DIR")]
        output_dir: PathBuf,
    },
    /// Assemble a .jasm file into a .jbin chip binary.
    Asm {
        /// Assembly source.
        file: PathBuf,
        /// Output binary.
        #[arg(short, long)]
        output: PathBuf,
        /// A target description file the source's `.target` may name (built-in targets need none).
        #[arg(long, value_name = "FILE.toml")]
        target: Option<String>,
    },
    /// Simulate a .jbin chip binary: outputs, cycles, utilisation, roofline.
    Run {
        /// Chip binary.
        file: PathBuf,
        /// The target the binary must be for (default: the built-in target its header names).
        #[arg(long)]
        target: Option<String>,
        /// An input tensor: NAME=FILE.npy (any numpy numeric dtype; converted to the declared dtype).
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Write each output to DIR/<name>.npy (float32, int32 for integer outputs).
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Model time only (no data, no checks): the same cycles as a full run.
        #[arg(long)]
        timing_only: bool,
        /// Print one JSON object on stdout instead of the summary.
        #[arg(long)]
        json: bool,
        /// Write a Chrome Trace Event JSON timeline (open it in Perfetto).
        #[arg(long, value_name = "FILE.json")]
        trace: Option<PathBuf>,
        /// Make reads of never-written memory a fault.
        #[arg(long)]
        strict: bool,
        /// Skip race checking (faster).
        #[arg(long)]
        no_race_check: bool,
        /// What computes results: `jit` (native code where it covers an
        /// instruction, the interpreter elsewhere; the default on x86_64 and
        /// aarch64) or `interp` (the interpreter, the specification). The same
        /// results either way.
        #[arg(long, value_enum, default_value_t = EngineArg::host_default())]
        engine: EngineArg,
        /// Host threads the compiled engine may split a large instruction over
        /// (0: one per host core); results do not depend on it.
        #[arg(long, value_name = "N", default_value_t = 1)]
        threads: usize,
        /// Fault past this many cycles.
        #[arg(long, value_name = "N")]
        max_cycles: Option<u64>,
        /// Fault past this many instructions.
        #[arg(long, value_name = "N")]
        max_instructions: Option<u64>,
    },
    /// Print a .jbin chip binary as canonical .jasm text.
    Disasm {
        /// Chip binary.
        file: PathBuf,
        /// The target the binary must be for (default: the built-in target its header names).
        #[arg(long)]
        target: Option<String>,
        /// Write the text here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn read_file(path: &Path) -> Result<Vec<u8>, Failure> {
    let limit = MAX_FILE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    jpu_isa::bytes::read_file_limited(path, limit)
        .map_err(|e| Failure::Input(format!("error: {}: {e} (--max-file-bytes)", path.display())))
}

fn read_text(file: &Path) -> Result<String, Failure> {
    String::from_utf8(read_file(file)?).map_err(|e| {
        Failure::Input(format!(
            "error: {} is not UTF-8 text (invalid byte at offset {})",
            file.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, bytes).map_err(|e| Failure::Input(format!("error: cannot write {}: {e}", path.display())))
}

fn parse_stage(name: &str) -> Result<Stage, String> {
    Stage::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
        format!("unknown stage `{name}` (stages: {})", names.join(", "))
    })
}

fn target(name_or_file: &str) -> Result<Target, Failure> {
    Target::resolve(name_or_file).map_err(|e| Failure::Input(format!("error: {e}")))
}

fn asm(file: &Path, output: &Path, custom: Option<&str>) -> Result<(), Failure> {
    let src = read_text(file)?;
    let custom = custom.map(target).transpose()?;
    let program = jpu_isa::jasm::assemble_with(&src, custom.as_ref())
        .map_err(|errs| Failure::Input(jpu_isa::jasm::render_errors(&file.display().to_string(), &src, &errs)))?;
    write_file(output, &jpu_isa::jbin::write(&program))
}

fn disasm(file: &Path, target_arg: Option<&str>, output: Option<&Path>) -> Result<(), Failure> {
    let (program, _) = load_binary(file, target_arg)?;
    let text = jpu_isa::jasm::disassemble(&program);
    match output {
        Some(path) => write_file(path, text.as_bytes()),
        None => {
            out!("{text}");
            Ok(())
        }
    }
}

fn read_tir(file: &Path) -> Result<(String, jalc::ir::Func), Failure> {
    let src = read_text(file)?;
    match jalc::front::tir::parse_and_check(&src) {
        Ok(f) => Ok((src, f)),
        Err(diags) => Err(Failure::Input(jalc::front::tir::render(&file.display().to_string(), &src, &diags))),
    }
}

/// The weights a program names, read from the files beside it.
fn load_weights(file: &Path, func: &jalc::ir::Func) -> Result<jalc::weights::Weights, Failure> {
    let dir = file.parent().unwrap_or(Path::new("."));
    jalc::weights::load(func, dir).map_err(|e| Failure::Input(format!("error: {}: {e}", file.display())))
}

/// A program to compile: its text (for diagnostics), function and weights.
struct Loaded {
    src: String,
    func: jalc::ir::Func,
    weights: jalc::weights::Weights,
    external: jalc::driver::External,
}

fn is_onnx(file: &Path) -> bool {
    file.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// `NAME=D0xD1...` as a name and dims.
fn parse_input_shape(arg: &str) -> Result<(String, Vec<u64>), Failure> {
    let bad = || Failure::Input(format!("error: --input-shape `{arg}` is not NAME=D0xD1... (e.g. input_ids=1x128)"));
    let (name, dims) = arg.split_once('=').ok_or_else(bad)?;
    let dims: Vec<u64> =
        dims.split('x').map(|d| d.trim().parse::<u64>().map_err(|_| bad())).collect::<Result<_, _>>()?;
    if name.is_empty() || dims.contains(&0) || dims.len() > jalc::ir::types::MAX_RANK {
        return Err(bad());
    }
    Ok((name.to_string(), dims))
}

/// Imports an ONNX model; its weights are named in `weights_file`.
fn import_model(file: &Path, m: &ModelArgs, weights_file: &str) -> Result<jalc::front::onnx::Imported, Failure> {
    let input_shapes = m.input_shapes.iter().map(|a| parse_input_shape(a)).collect::<Result<_, _>>()?;
    let precision =
        if m.precision.as_deref() == Some("f32") { jalc::front::onnx::Precision::F32 } else { Default::default() };
    let opts = jalc::front::onnx::ImportOptions { input_shapes, precision, weights_file: weights_file.into() };
    let input = |e: jalc::front::onnx::OnnxError| Failure::Input(format!("error: {e}"));
    let model = jalc::front::onnx::read(file).map_err(input)?;
    jalc::front::onnx::import(&model, &file.display().to_string(), &opts).map_err(input)
}

/// A .tir program with the weights it names, or an imported ONNX model.
fn load(file: &Path, m: &ModelArgs) -> Result<Loaded, Failure> {
    if is_onnx(file) {
        let stem = file.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
        let imported = import_model(file, m, &format!("{stem}.safetensors"))?;
        let external = imported.external();
        return Ok(Loaded { src: imported.text, func: imported.func, weights: imported.weights, external });
    }
    if !m.input_shapes.is_empty() || m.precision.is_some() {
        return Err(Failure::Input("error: --input-shape and --precision apply to ONNX models (.onnx)".into()));
    }
    let (src, func) = read_tir(file)?;
    let weights = load_weights(file, &func)?;
    Ok(Loaded { src, func, weights, external: Default::default() })
}

/// `jalc import`: the model as .tir and its weights as safetensors beside it.
fn import(file: &Path, output: &Path, m: &ModelArgs) -> Result<(), Failure> {
    let st = output.with_extension("safetensors");
    let st_name = st.file_name().map_or("weights.safetensors".into(), |s| s.to_string_lossy().into_owned());
    let imported = import_model(file, m, &st_name)?;
    let bytes = jalc::weights::serialize(&imported.weights, &imported.func.weights)
        .map_err(|e| Failure::Input(format!("error: {}: {e}", st.display())))?;
    write_file(&st, &bytes)?;
    write_file(output, imported.text.as_bytes())
}

fn check(file: &Path) -> Result<(), Failure> {
    read_tir(file).map(|_| ())
}

/// A compile error rendered at its span: in the schedule file for its syntax
/// errors, in the program otherwise.
fn compile_failure(e: &CompileError, program: (&Path, &str), schedule: Option<(&Path, &str)>) -> Failure {
    let (file, src) = match (e, schedule) {
        (CompileError::ScheduleSyntax { .. }, Some(s)) => s,
        _ => program,
    };
    Failure::Input(e.render(&file.display().to_string(), src))
}

/// Compile options: the level and the parsed schedule file (with its text).
fn options(
    level: u8,
    schedule: Option<&Path>,
    cores: Option<u32>,
    t: &Target,
) -> Result<(Options, Option<String>), Failure> {
    let cores = cores.unwrap_or(t.cores);
    if !(1..=t.cores).contains(&cores) {
        return Err(Failure::Input(format!("error: --cores {cores}: {} has 1 to {} cores", t.name, t.cores)));
    }
    let max_tile_ops = MAX_TILE_OPS.load(std::sync::atomic::Ordering::Relaxed);
    let Some(path) = schedule else { return Ok((Options { max_tile_ops, cores, ..Options::at(level) }, None)) };
    let text = read_text(path)?;
    let schedule = jalc::schedule::Schedule::parse(&text)
        .map_err(|e| Failure::Input(e.render(&path.display().to_string(), &text)))?;
    Ok((Options { max_tile_ops, cores, ..Options::with(level, schedule) }, Some(text)))
}

struct CompileArgs<'a> {
    file: &'a Path,
    model: &'a ModelArgs,
    output: Option<&'a Path>,
    target: &'a str,
    emit: Option<Stage>,
    schedule: Option<&'a Path>,
    opt: u8,
    cores: Option<u32>,
}

fn compile(a: CompileArgs<'_>) -> Result<(), Failure> {
    let t = target(a.target)?;
    let Loaded { src, func, weights, external } = load(a.file, a.model)?;
    let (mut opts, schedule_text) = options(a.opt, a.schedule, a.cores, &t)?;
    opts.weights = std::sync::Arc::new(weights);
    opts.external = external;
    if a.output.is_none() && a.emit.is_none() {
        return Err(Failure::Input("error: give -o OUT.jbin or --emit STAGE (or both)".into()));
    }
    // Stages run as far as the output needs: a binary needs them all.
    let last = if a.output.is_some() { Stage::Asm } else { a.emit.unwrap_or(Stage::Asm) };
    let mut c = Compilation::new(func, &t, opts);
    let schedule = a.schedule.zip(schedule_text.as_deref());
    c.run_to(last).map_err(|e| compile_failure(&e, (a.file, &src), schedule))?;
    if let Some(text) = a.emit.and_then(|stage| c.print(stage)) {
        out!("{text}");
    }
    if let (Some(out), Some(program)) = (a.output, &c.program) {
        write_file(out, &jpu_isa::jbin::write(program))?;
    }
    Ok(())
}

fn verify(
    file: &Path,
    model: &ModelArgs,
    target_arg: &str,
    seed: u64,
    (schedule, opt, cores): (Option<&Path>, u8, Option<u32>),
    json: bool,
    engine: EngineArg,
) -> Result<(), Failure> {
    let t = target(target_arg)?;
    let Loaded { src, func, weights, .. } = load(file, model)?;
    let (mut opts, schedule_text) = options(opt, schedule, cores, &t)?;
    opts.weights = std::sync::Arc::new(weights);
    let compiled = jalc::driver::compile(&func, &t, &opts)
        .map_err(|e| compile_failure(&e, (file, &src), schedule.zip(schedule_text.as_deref())))?;
    let v = match jalc::verify::verify_compiled_on(&compiled, &func, &t, seed, engine.engine()) {
        Ok(v) => v,
        Err(jalc::verify::VerifyError::Compile(e)) => return Err(compile_failure(&e, (file, &src), None)),
        Err(jalc::verify::VerifyError::Input(e)) => {
            return Err(Failure::Input(format!("error: {}: {e}", file.display())))
        }
        Err(jalc::verify::VerifyError::Fault(e)) => {
            return Err(Failure::Fault(format!("fault: {}: {e}", file.display())))
        }
    };
    report_verification(file, &t, seed, json, &v)
}

fn report_verification(
    file: &Path,
    t: &Target,
    seed: u64,
    json: bool,
    v: &jalc::verify::Verification,
) -> Result<(), Failure> {
    let r = &v.report;
    if json {
        let mut obj = r.to_json();
        obj["passed"] = serde_json::json!(v.passed);
        obj["max_abs_error"] = serde_json::json!(v.max_abs_error);
        obj["max_rel_error"] = serde_json::json!(v.max_rel_error);
        obj["mismatches"] = serde_json::json!(v.mismatches);
        obj["first_mismatch"] = serde_json::json!(v.first_mismatch);
        obj["amplified"] = serde_json::json!(v.amplified);
        obj["target"] = serde_json::json!(t.name);
        obj["seed"] = serde_json::json!(seed);
        outln!("{obj}");
    } else {
        outln!(
            "{}: {} on {} (seed {seed}): max abs error {:.3e}, max rel error {:.3e}; {} cycles, {:.1}% of roofline",
            file.display(),
            if v.passed { "passed" } else { "FAILED" },
            t.name,
            v.max_abs_error,
            v.max_rel_error,
            r.cycles,
            100.0 * r.roofline_fraction
        );
    }
    if let (false, Some(first)) = (json, &v.amplified) {
        outln!("  every kernel is within tolerance on its own inputs; end to end, error amplified ({first})");
    }
    if !v.passed {
        return Err(Failure::Fault(format!(
            "mismatch: {} elements out of tolerance; first: {}",
            v.mismatches,
            v.first_mismatch.as_deref().unwrap_or("?")
        )));
    }
    Ok(())
}

fn eval(file: &Path, inputs: &[String], output_dir: &Path) -> Result<(), Failure> {
    use jalc::eval::{round, Tensor};
    let (_, func) = read_tir(file)?;
    let mut weights = load_weights(file, &func)?;
    let files = parse_inputs(inputs)?;
    let bad = |m: String| Failure::Input(format!("error: {m}"));
    for (name, _) in &files {
        if let Some(w) = func.weights.get(name) {
            return Err(bad(format!("`{name}` is a weight (\"{}\"[\"{}\"]), not an input", w.file, w.tensor)));
        }
        if !func.params().any(|p| &func.node(p).name == name) {
            let names: Vec<String> = func.params().map(|p| func.node(p).name.clone()).collect();
            return Err(bad(format!(
                "@{} has no parameter `{name}` (its parameters: {})",
                func.name,
                names.join(", ")
            )));
        }
    }
    let mut tensors = Vec::new();
    for p in func.params() {
        let node = func.node(p);
        if let Some(w) = weights.remove(&node.name) {
            tensors.push(w);
            continue;
        }
        let matching: Vec<&PathBuf> = files.iter().filter(|(n, _)| n == &node.name).map(|(_, f)| f).collect();
        let path = match matching.as_slice() {
            [path] => *path,
            [] => {
                return Err(bad(format!(
                    "missing input `{}` ({}): pass --input {}=FILE.npy",
                    node.name, node.ty, node.name
                )))
            }
            _ => return Err(bad(format!("input `{}` is given more than once", node.name))),
        };
        let (shape, values) = jpu_runtime::io::read_npy_f64(path, node.ty.elems()).map_err(|e| bad(e.to_string()))?;
        if shape != node.ty.shape {
            return Err(bad(format!(
                "input `{}`: {} has shape {:?}, but the function declares {}",
                node.name,
                path.display(),
                shape,
                node.ty
            )));
        }
        let data = values.iter().map(|&v| round(node.ty.dtype, v)).collect();
        tensors.push(Tensor { ty: node.ty.clone(), data });
    }
    let results = jalc::eval::eval(&func, &tensors).map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(output_dir).map_err(|e| bad(format!("cannot create {}: {e}", output_dir.display())))?;
    for (r, t) in func.results.iter().zip(&results) {
        let path = output_dir.join(format!("{}.npy", func.node(*r).name));
        jpu_runtime::io::write_npy(&path, &t.ty.shape, &t.data, !t.ty.dtype.is_float())
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// A binary and its target: `--target`'s (the binary must name it and match its
/// hash), or the built-in target its header names.
fn load_binary(file: &Path, target_arg: Option<&str>) -> Result<(jpu_isa::Program, Target), Failure> {
    let bytes = read_file(file)?;
    let bad = |e: jpu_isa::jbin::JbinError| Failure::Input(format!("error: {}: {e}", file.display()));
    let t = match target_arg {
        Some(arg) => target(arg)?,
        None => {
            let name = jpu_isa::jbin::header_target_name(&bytes).map_err(bad)?;
            Target::builtin(&name).map_err(|_| {
                Failure::Input(format!(
                    "error: {}: the binary is for target `{name}`, which is not built in: give its description with --target FILE.toml",
                    file.display()
                ))
            })?
        }
    };
    let program = jpu_isa::jbin::read_for_target(&bytes, &t).map_err(bad)?;
    Ok((program, t))
}

fn parse_inputs(args: &[String]) -> Result<Vec<(String, PathBuf)>, Failure> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
            _ => Err(Failure::Input(format!("error: --input `{a}`: expected NAME=FILE.npy"))),
        })
        .collect()
}

struct RunArgs<'a> {
    file: &'a Path,
    target: Option<&'a str>,
    inputs: &'a [String],
    output_dir: Option<&'a Path>,
    timing_only: bool,
    json: bool,
    trace: Option<&'a Path>,
    strict: bool,
    no_race_check: bool,
    engine: EngineArg,
    threads: usize,
    max_cycles: Option<u64>,
    max_instructions: Option<u64>,
}

/// `--engine`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    /// The interpreter.
    Interp,
    /// The compiled engine.
    Jit,
}

impl EngineArg {
    /// The runtime's default engine for this host.
    fn host_default() -> EngineArg {
        match jpu_runtime::ExecEngine::default() {
            jpu_runtime::ExecEngine::Interp => EngineArg::Interp,
            jpu_runtime::ExecEngine::Jit => EngineArg::Jit,
        }
    }

    fn engine(self) -> jpu_runtime::ExecEngine {
        match self {
            EngineArg::Interp => jpu_runtime::ExecEngine::Interp,
            EngineArg::Jit => jpu_runtime::ExecEngine::Jit,
        }
    }
}

fn run(a: RunArgs<'_>) -> Result<(), Failure> {
    let (program, target) = load_binary(a.file, a.target)?;
    let files = parse_inputs(a.inputs)?;
    let inputs = if a.timing_only {
        Vec::new()
    } else {
        jpu_runtime::io::load_inputs(&program, &files).map_err(|e| Failure::Input(format!("error: {e}")))?
    };
    let opts = jpu_runtime::RunOptions {
        timing_only: a.timing_only,
        check_races: !a.no_race_check,
        strict_uninit: a.strict,
        max_cycles: a.max_cycles,
        max_instructions: a.max_instructions,
        trace: a.trace.is_some(),
        read_scratch: false,
        threads: a.threads,
        engine: a.engine.engine(),
    };
    let outcome = jpu_runtime::run(&program, &target, &inputs, &opts)
        .map_err(|f| Failure::Fault(format!("fault: {}: {f}", a.file.display())))?;
    if let Some(path) = a.trace {
        let doc = jpu_runtime::trace::chrome_trace(&program, &target, &outcome.trace, &outcome.signals);
        write_file(path, doc.to_string().as_bytes())?;
    }
    if let Some(dir) = a.output_dir {
        jpu_runtime::io::write_outputs(&program, &outcome.outputs, dir)
            .map_err(|e| Failure::Input(format!("error: {e}")))?;
    }
    let r = &outcome.report;
    if a.json {
        outln!("{}", r.to_json());
    } else {
        outln!(
            "{}: {} cycles ({:.3} us at {} GHz) on {}",
            a.file.display(),
            r.cycles,
            r.time_us,
            r.clock_ghz,
            target.name
        );
        outln!(
            "roofline: {} cycles ({}-bound, from {} counts), {:.1}% of roofline",
            r.roofline_cycles,
            r.roofline.bound_by,
            r.roofline.source,
            100.0 * r.roofline_fraction
        );
        outln!("{:<12} {:>12} {:>8} {:>8}", "engine", "busy cycles", "util", "insts");
        for e in &r.engines {
            if e.instructions == 0 {
                continue;
            }
            let util = if r.cycles == 0 { 0.0 } else { 100.0 * e.busy_cycles as f64 / r.cycles as f64 };
            outln!(
                "{:<12} {:>12} {:>7.1}% {:>8}",
                format!("core{}.{}", e.core, e.engine),
                e.busy_cycles,
                util,
                e.instructions
            );
        }
        if r.cores.len() > 1 {
            outln!("{:<12} {:>12} {:>14} {:>14}", "core", "finished at", "HBM bytes", "fabric bytes");
            for c in &r.cores {
                outln!(
                    "{:<12} {:>12} {:>14} {:>14}",
                    format!("core{}", c.core),
                    c.finished_at,
                    c.dma_bytes,
                    c.fabric_bytes
                );
            }
        }
        if r.uninitialized_reads > 0 {
            outln!(
                "warning: {} reads of never-written memory (they read NaN); first: {}",
                r.uninitialized_reads,
                r.first_uninitialized_read.as_deref().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    MAX_FILE_BYTES.store(cli.max_file_bytes, std::sync::atomic::Ordering::Relaxed);
    MAX_TILE_OPS.store(cli.max_tile_ops, std::sync::atomic::Ordering::Relaxed);
    let result = match &cli.command {
        Command::Check { file } => check(file),
        Command::Import { file, output, model } => import(file, output, model),
        Command::Compile { file, model, output, target, emit, schedule, opt, cores } => compile(CompileArgs {
            file,
            model,
            output: output.as_deref(),
            target,
            emit: *emit,
            schedule: schedule.as_deref(),
            opt: *opt,
            cores: *cores,
        }),
        Command::Eval { file, inputs, output_dir } => eval(file, inputs, output_dir),
        Command::Verify { file, model, target, seed, schedule, json, opt, engine, cores } => {
            verify(file, model, target, *seed, (schedule.as_deref(), *opt, *cores), *json, *engine)
        }
        Command::Asm { file, output, target } => asm(file, output, target.as_deref()),
        Command::Disasm { file, target, output } => disasm(file, target.as_deref(), output.as_deref()),
        Command::Run {
            file,
            target,
            inputs,
            output_dir,
            timing_only,
            json,
            trace,
            strict,
            no_race_check,
            engine,
            threads,
            max_cycles,
            max_instructions,
        } => run(RunArgs {
            file,
            target: target.as_deref(),
            inputs,
            output_dir: output_dir.as_deref(),
            timing_only: *timing_only,
            json: *json,
            trace: trace.as_deref(),
            strict: *strict,
            no_race_check: *no_race_check,
            engine: *engine,
            threads: *threads,
            max_cycles: *max_cycles,
            max_instructions: *max_instructions,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}
