//! File-driven test harness for the Jalapeño toolchain.
//!
//! Test cases are files under `testsuite/cases/`. The first line of each names its
//! kind, `; test: KIND` (or `// test: KIND` for `.tir`); one runner per kind turns the
//! file into text, and an insta snapshot pins that text. docs/testing.md says how to
//! add a case and review snapshots.

pub mod bench;
pub mod fuzz_checks;
pub mod kernels;
pub mod programs;
pub mod tir_gen;

/// Compile options at `level` with the schedule file `text` (which must parse).
pub fn scheduled(text: &str, level: u8) -> jalc::driver::Options {
    let schedule = jalc::schedule::Schedule::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    jalc::driver::Options::with(level, schedule)
}

/// The GEMM kernel among `kernels`, if there is one.
pub fn gemm(kernels: &[Box<dyn jalc::kernels::Kernel>]) -> Option<&jalc::kernels::gemm::GemmKernel> {
    kernels.iter().find_map(|k| k.as_any().downcast_ref())
}

/// Verifies `f` (written as `src`, for messages) race-checked on jpu-tiny and
/// jpu1 at -O0 and -O2, and at -O2 spread over jpu-tiny's 2 cores and the 4
/// of [`jpu_tiny_4`], with inputs from `seed`, panicking on any failure;
/// returns the largest absolute error seen.
pub fn verify_everywhere(f: &jalc::ir::Func, src: &str, seed: u64) -> f64 {
    let mut max_abs: f64 = 0.0;
    let tiny = jpu_isa::Target::builtin("jpu-tiny").unwrap();
    let runs = [
        (tiny.clone(), 0, 1),
        (tiny.clone(), 2, 1),
        (jpu_isa::Target::builtin("jpu1").unwrap(), 0, 1),
        (jpu_isa::Target::builtin("jpu1").unwrap(), 2, 1),
        (tiny, 2, 2),
        (jpu_tiny_4(), 2, 4),
    ];
    for (t, level, cores) in runs {
        let opts = jalc::driver::Options { cores, ..jalc::driver::Options::at(level) };
        let what = format!("{} -O{level} on {cores} cores", t.name);
        let v = jalc::verify::verify_with(f, &t, seed, &opts).unwrap_or_else(|e| panic!("{what}: {e}\n{src}"));
        assert!(v.passed, "{what}: {:?}\n{src}", v.first_mismatch);
        max_abs = max_abs.max(v.max_abs_error);
    }
    max_abs
}

/// jpu-tiny with 4 cores (`testsuite/data/jpu-tiny-4.toml`): the 4-core
/// verification target.
pub fn jpu_tiny_4() -> jpu_isa::Target {
    static TARGET: std::sync::OnceLock<jpu_isa::Target> = std::sync::OnceLock::new();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/jpu-tiny-4.toml");
    TARGET.get_or_init(|| jpu_isa::Target::resolve(path).unwrap_or_else(|e| panic!("{e}"))).clone()
}

/// Runs `program` on both engines with `opts` (the engine field is set for
/// each run) and returns the interpreter's result after checking that the
/// compiled engine agrees: the same output bytes, report and cycles, or the
/// same fault (kind, cycle, instruction and message). Panics on a difference.
pub fn run_on_both_engines(
    program: &jpu_isa::Program,
    t: &jpu_isa::Target,
    inputs: &[(String, Vec<u8>)],
    opts: &jpu_runtime::RunOptions,
    what: &str,
) -> Result<jpu_runtime::Outcome, jpu_runtime::Fault> {
    use jpu_runtime::ExecEngine;
    let on = |engine| jpu_runtime::run(program, t, inputs, &jpu_runtime::RunOptions { engine, ..opts.clone() });
    let interp = on(ExecEngine::Interp);
    let jit = on(ExecEngine::Jit);
    match (&interp, &jit) {
        (Ok(a), Ok(b)) => {
            assert!(a.outputs == b.outputs, "{what}: the engines' outputs differ");
            assert_eq!(a.report, b.report, "{what}: the engines' reports differ");
            assert_eq!(a.held_bytes, b.held_bytes, "{what}: the engines held different bytes");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "{what}: the engines' faults differ"),
        (Ok(_), Err(f)) => panic!("{what}: only the compiled engine faults: {f}"),
        (Err(f), Ok(_)) => panic!("{what}: only the interpreter faults: {f}"),
    }
    interp
}

/// The kind a case file declares on its first line, if any.
pub fn case_kind(src: &str) -> Option<&str> {
    let first = src.lines().next()?;
    let rest = first.strip_prefix(';').or_else(|| first.strip_prefix("//"))?;
    rest.trim().strip_prefix("test:").map(str::trim)
}

/// The path of a case relative to the testsuite directory, with `/` separators
/// (stable across machines, so it can appear in snapshots).
pub fn case_name(path: &std::path::Path) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_read_from_the_first_line() {
        assert_eq!(case_kind("; test: disasm\n.target"), Some("disasm"));
        assert_eq!(case_kind("// test: parse\n"), Some("parse"));
        assert_eq!(case_kind(".target \"jpu1\"\n; test: disasm"), None);
    }
}

/// `count` copies of `bytes`, each with 4 bytes set to pseudo-random values
/// (xorshift from `seed`): corruptions for the never-panic tests.
pub fn mutations(bytes: &[u8], seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut state = seed;
    (0..count).map(move |_| {
        let mut b = bytes.to_vec();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % b.len().max(1) as u64) as usize;
            if let Some(x) = b.get_mut(at) {
                *x = (state >> 40) as u8;
            }
        }
        b
    })
}

/// Running imported ONNX models and comparing with onnxruntime's outputs.
pub mod onnx {
    use jalc::eval::Tensor;
    use jalc::front::onnx::Imported;
    use jpu_isa::Target;

    /// Compiles `im` for `target` at `level` and runs it on `inputs` (by ONNX input order).
    pub fn run(im: &Imported, target: &str, level: u8, inputs: &[Vec<f64>]) -> Vec<Tensor> {
        try_run(im, target, level, inputs).unwrap_or_else(|e| panic!("{target} -O{level}: {e}"))
    }

    /// [`run`], with a compile error or a fault as the reason (`compile: ...`, `simulate: ...`).
    pub fn try_run(im: &Imported, target: &str, level: u8, inputs: &[Vec<f64>]) -> Result<Vec<Tensor>, String> {
        let t = Target::builtin(target).map_err(|e| e.to_string())?;
        let opts = jalc::driver::Options {
            weights: std::sync::Arc::new(im.weights.clone()),
            ..jalc::driver::Options::at(level)
        };
        let compiled = jalc::driver::compile(&im.func, &t, &opts).map_err(|e| format!("compile: {e}"))?;
        let f = &im.func;
        let tensors: Vec<Tensor> = f
            .params()
            .map(|p| {
                let node = f.node(p);
                let k = im.inputs.iter().position(|io| io.ir == node.name);
                let values = k.map_or_else(|| vec![0.0; node.ty.elems() as usize], |k| inputs[k].clone());
                Tensor::from_values(node.ty.clone(), &values)
            })
            .collect();
        jalc::verify::simulate(&compiled, f, &t, &tensors).map_err(|e| format!("simulate: {e:?}"))
    }

    pub fn max_abs(v: &[f64]) -> f64 {
        v.iter().fold(0.0, |a, x| a.max(x.abs()))
    }

    /// Largest |got - want| over `max|want|`.
    pub fn relative_error(got: &[f64], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max) / max_abs(want)
    }

    /// The smallest cosine similarity of rows of `width` elements, over the rows `keep` selects.
    pub fn min_cosine(got: &[f64], want: &[f64], width: usize, keep: impl Fn(usize) -> bool) -> f64 {
        let rows = got.chunks(width).zip(want.chunks(width)).enumerate().filter(|(i, _)| keep(*i));
        rows.map(|(_, (g, w))| {
            let dot: f64 = g.iter().zip(w).map(|(a, b)| a * b).sum();
            let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
            dot / (norm(g) * norm(w))
        })
        .fold(1.0, f64::min)
    }
}

/// Seeded inputs for `f` (as `jalc verify` draws them from `seed`), as bytes in
/// the dtypes program `p` declares, named as `f` names its parameters.
pub fn chip_inputs(f: &jalc::ir::Func, p: &jpu_isa::Program, seed: u64) -> Vec<(String, Vec<u8>)> {
    let values = jalc::verify::random_inputs(f, seed);
    f.params()
        .zip(values)
        .filter_map(|(param, tensor)| {
            let name = f.node(param).name.clone();
            let dtype = p.tensors.iter().find(|t| t.name == name)?.dtype;
            let size = dtype.size_bytes() as usize;
            let mut bytes = vec![0u8; tensor.data.len() * size];
            for (i, &v) in tensor.data.iter().enumerate() {
                jpu_isa::numerics::store_f64(dtype, v, &mut bytes[i * size..]);
            }
            Some((name, bytes))
        })
        .collect()
}
