//! `jalc verify`: compile, simulate on seeded random inputs (race checking and
//! strict initialisation on), and compare with the reference evaluator.
//!
//! Inputs: floats uniform in [-1, 1), integers uniform in [-8, 8], each rounded
//! into the parameter's dtype; the same seed gives the same inputs.
//!
//! Tolerance (docs/testing.md): an output element passes when
//! `|got - ref| <= ulp(dtype) * |ref| + 2^-20 * K * max|ref|`, with `ulp` one unit
//! in the last place of the output dtype at 1 (f32 2^-23, bf16 2^-7, f16 2^-10,
//! f8e4m3 2^-3, f8e5m2 2^-2) and K the reduction length; integer outputs must be
//! exact. NaN must meet NaN. Programs with fused attention add `2 u max|v|` (u
//! the operand dtype's unit roundoff, half its ulp) for the rounding of the
//! probabilities (see `attention_tolerance`). The compiler's GEMM accumulates in the evaluator's
//! order, so today's programs match exactly; the tolerance allows for kernels that
//! split reductions differently.

use std::collections::HashMap;

use jpu_isa::{DType, Target};
use jpu_runtime::{run, ExecEngine, RunOptions};

use crate::driver::{self, Options};
use crate::error::CompileError;
use crate::eval::{eval_keeping, eval_values, Tensor};
use crate::ir::{Func, Op, Operand, ScalarType};

/// The outcome of a verification.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Every element within tolerance.
    pub passed: bool,
    /// Largest |got - ref|.
    pub max_abs_error: f64,
    /// Largest |got - ref| / |ref| over elements with ref != 0.
    pub max_rel_error: f64,
    /// Elements out of tolerance.
    pub mismatches: u64,
    /// The first mismatch, described.
    pub first_mismatch: Option<String>,
    /// Set when the results are out of tolerance but every kernel is within it
    /// on the chip's own inputs (the error was amplified downstream, e.g. by a
    /// division by a small rounded value): the first end-to-end mismatch. Such a
    /// run passes.
    pub amplified: Option<String>,
    /// The simulator's report.
    pub report: jpu_runtime::Report,
}

/// Why verification could not run: bad input (exit 2) or a fault (exit 1).
#[derive(Debug, Clone)]
pub enum VerifyError {
    /// The function does not compile.
    Compile(CompileError),
    /// The inputs cannot be evaluated or handed to the simulator.
    Input(String),
    /// The compiled program faulted.
    Fault(String),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Compile(e) => e.fmt(f),
            VerifyError::Input(m) | VerifyError::Fault(m) => f.write_str(m),
        }
    }
}

fn ulp(d: DType) -> f64 {
    match d {
        DType::F32 => 2f64.powi(-23),
        DType::Bf16 => 2f64.powi(-7),
        DType::F16 => 2f64.powi(-10),
        DType::F8E4M3 => 2f64.powi(-3),
        DType::F8E5M2 => 2f64.powi(-2),
        DType::I8 | DType::I32 => 0.0,
    }
}

/// The extra absolute tolerance of fused attention: its probabilities reach the PV
/// matmul rounded to the operand dtype (relative error at most u, the unit
/// roundoff), so each output moves by at most `u * max|v|`; a written-out
/// attention's reference rounds its normalised probabilities too, so the bound is
/// doubled: `2 u max|v|` (bf16: `2^-7 max|v|`).
fn attention_tolerance(
    compiled: &driver::Compiled,
    f: &Func,
    values: &[Tensor],
    inputs: &[Tensor],
) -> Result<f64, VerifyError> {
    let mut tol = 0.0f64;
    // Values the optimizer created (names absent from the program as written)
    // need the optimized program evaluated; that is done at most once.
    let mut optimized_values: Option<Vec<Tensor>> = None;
    for (v_name, dtype) in compiled.kernels.iter().filter_map(|k| k.rounded_probabilities()) {
        let v = match f.nodes.iter().position(|n| n.name == v_name) {
            Some(i) => &values[i],
            None => {
                let opt = &compiled.optimized;
                let Some(i) = opt.nodes.iter().position(|n| n.name == v_name) else { continue };
                if optimized_values.is_none() {
                    let all = eval_values(opt, inputs).map_err(|e| VerifyError::Input(e.to_string()))?;
                    optimized_values = Some(all);
                }
                match &optimized_values {
                    Some(all) => &all[i],
                    None => continue,
                }
            }
        };
        let max_v = v.data.iter().filter(|x| x.is_finite()).fold(0.0f64, |a, x| a.max(x.abs()));
        tol = tol.max(ulp(dtype) * max_v);
    }
    Ok(tol)
}

/// Seeded inputs for every parameter.
pub fn random_inputs(f: &Func, seed: u64) -> Vec<Tensor> {
    inputs_with(f, seed, &Default::default())
}

/// Every parameter's input: its stored value when `weights` holds one, else
/// seeded random values.
fn inputs_with(f: &Func, seed: u64, weights: &crate::weights::Weights) -> Vec<Tensor> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let bounds = index_bounds(f);
    f.params()
        .map(|p| {
            if let Some(w) = weights.get(&f.node(p).name) {
                return w.clone();
            }
            let ty = f.node(p).ty.clone();
            let vals: Vec<f64> = (0..ty.elems())
                .map(|_| match (ty.dtype, bounds[p.0 as usize]) {
                    // Gather indices are drawn from their tables' rows.
                    (_, Some(rows)) => (next() * rows as f64).floor(),
                    (ScalarType::I1, _) => (next() < 0.5) as u8 as f64,
                    (d, _) if d.is_float() => next() * 2.0 - 1.0,
                    _ => (next() * 17.0).floor() - 8.0,
                })
                .collect();
            Tensor::from_values(ty, &vals)
        })
        .collect()
}

/// For each value used as gather indices, the fewest rows among the tables it
/// indexes (so random indices stay in range).
fn index_bounds(f: &Func) -> Vec<Option<u64>> {
    let mut bounds: Vec<Option<u64>> = vec![None; f.nodes.len()];
    for n in &f.nodes {
        if let (Op::Gather { axis }, [Operand::Value(t), Operand::Value(i)]) = (&n.op, n.operands.as_slice()) {
            let rows = f.node(*t).ty.shape[*axis];
            let b = &mut bounds[i.0 as usize];
            *b = Some(b.map_or(rows, |r| r.min(rows)));
        }
    }
    bounds
}

/// Compiles `f` for `t` at `-O2`, runs it on seeded inputs and compares with the evaluator.
pub fn verify(f: &Func, t: &Target, seed: u64) -> Result<Verification, VerifyError> {
    verify_with(f, t, seed, &Options::o2())
}

/// [`verify`] with compile options (the evaluator always runs the original).
pub fn verify_with(f: &Func, t: &Target, seed: u64, opts: &Options) -> Result<Verification, VerifyError> {
    let compiled = driver::compile(f, t, opts).map_err(VerifyError::Compile)?;
    verify_compiled(&compiled, f, t, seed)
}

/// Runs a compiled program on seeded inputs and compares with the evaluator's
/// results for `f` (the function as written).
pub fn verify_compiled(
    compiled: &driver::Compiled,
    f: &Func,
    t: &Target,
    seed: u64,
) -> Result<Verification, VerifyError> {
    verify_compiled_on(compiled, f, t, seed, ExecEngine::default())
}

/// [`verify_compiled`] with the simulator's data computed by `engine`.
pub fn verify_compiled_on(
    compiled: &driver::Compiled,
    f: &Func,
    t: &Target,
    seed: u64,
    engine: ExecEngine,
) -> Result<Verification, VerifyError> {
    // Weight parameters hold their stored values (constants of the binary).
    let inputs = inputs_with(f, seed, &compiled.weights);
    // Every value of the program as written (the results are the reference, and
    // attention's tolerance reads its V from them), computed while the chip runs:
    // the two are independent, and each takes one host core.
    // `attention_tolerance` reads the V operands: they are kept.
    let attention_v: Vec<&str> =
        compiled.kernels.iter().filter_map(|k| k.rounded_probabilities()).map(|(v, _)| v).collect();
    let (values, on_chip) = std::thread::scope(|s| {
        let reference = s.spawn(|| eval_keeping(f, &inputs, |v| attention_v.contains(&f.nodes[v].name.as_str())));
        let on_chip = run_on_chip(compiled, f, t, &inputs, engine);
        (reference.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), on_chip)
    });
    let values = values.map_err(|e| VerifyError::Input(e.to_string()))?;
    let reference: Vec<&Tensor> = f.results.iter().map(|r| &values[r.0 as usize]).collect();
    let (outcome, binary_name) = on_chip?;
    let chip: HashMap<&str, &[u8]> = outcome.outputs.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    // A chain of kernels accumulates each one's rounding: the contraction lengths add.
    let k = compiled.kernels.iter().map(|k| k.contraction()).fold(0u64, u64::saturating_add).max(1) as f64;
    let tolerance = Tolerance { k, attention: attention_tolerance(compiled, f, &values, &inputs)? };
    let mut total = Comparison::default();
    // Results pair by position: rewriting may merge a result into another value,
    // whose name the program's output then carries.
    let opt = &compiled.optimized;
    for ((r, compiled_r), want) in f.results.iter().zip(&opt.results).zip(&reference) {
        let name = &f.node(*r).name;
        let output = binary_name(&opt.node(*compiled_r).name);
        let bytes = chip.get(output.as_str()).ok_or_else(|| {
            VerifyError::Compile(CompileError::internal(format!("result `%{name}` is not an output of the program")))
        })?;
        total.add(tolerance.compare(name, bytes, want)?);
    }
    // Past the end-to-end tolerance, the error may be amplified (a division by
    // a small, slightly rounded value): every kernel is then checked on the
    // chip's own inputs, and only a kernel out of tolerance there fails.
    let amplified = match total.first.clone() {
        Some(first) if kernel_by_kernel(f, &inputs, &chip, &binary_name, &tolerance)?.is_none() => Some(first),
        _ => None,
    };
    Ok(Verification {
        passed: total.mismatches == 0 || amplified.is_some(),
        max_abs_error: total.max_abs,
        max_rel_error: total.max_rel,
        mismatches: total.mismatches,
        first_mismatch: total.first,
        amplified,
        report: outcome.report,
    })
}

/// A name map from the program's tensor names to the binary's.
type BinaryNames = HashMap<String, String>;

/// Simulates `compiled` (race checking and strict initialisation on) with
/// `inputs` for `f`'s parameters (weights excepted: they are in the binary);
/// returns the outcome and the map to binary names.
fn run_on_chip(
    compiled: &driver::Compiled,
    f: &Func,
    t: &Target,
    inputs: &[Tensor],
    engine: ExecEngine,
) -> Result<(jpu_runtime::Outcome, impl Fn(&str) -> String), VerifyError> {
    // The binary's names of the program's tensors (IR names that are not
    // identifiers are renamed; `tiles::binary_names`).
    let binary: BinaryNames = compiled
        .tiles
        .tensors
        .iter()
        .map(|t| t.name.clone())
        .zip(crate::tiles::binary_names(&compiled.tiles.tensors))
        .collect();
    let binary_name = move |ir: &str| binary.get(ir).cloned().unwrap_or_else(|| ir.to_string());
    let mut sim_inputs = Vec::new();
    for (p, tensor) in f.params().zip(inputs).filter(|(p, _)| !compiled.weights.contains_key(&f.node(*p).name)) {
        let dtype = tensor.ty.dtype.storage();
        let size = dtype.size_bytes() as usize;
        let mut bytes = vec![0u8; tensor.data.len() * size];
        for (i, &v) in tensor.data.iter().enumerate() {
            jpu_isa::numerics::store_f64(dtype, v, &mut bytes[i * size..]);
        }
        sim_inputs.push((binary_name(&f.node(p).name), bytes));
    }
    let opts = RunOptions { strict_uninit: true, read_scratch: true, engine, ..RunOptions::default() };
    let outcome = run(&compiled.program, t, &sim_inputs, &opts).map_err(|fault| VerifyError::Fault(fault.message))?;
    Ok((outcome, binary_name))
}

/// Runs `compiled` on the chip with `inputs` (one per parameter of `f`, the
/// function as written; weight parameters' entries are ignored) and returns
/// `f`'s results in order, decoded exactly from their storage dtypes.
pub fn simulate(
    compiled: &driver::Compiled,
    f: &Func,
    t: &Target,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, VerifyError> {
    let (outcome, binary_name) = run_on_chip(compiled, f, t, inputs, ExecEngine::default())?;
    let chip: HashMap<&str, &[u8]> = outcome.outputs.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let opt = &compiled.optimized;
    f.results
        .iter()
        .zip(&opt.results)
        .map(|(r, compiled_r)| {
            let ty = f.node(*r).ty.clone();
            let output = binary_name(&opt.node(*compiled_r).name);
            let bytes = chip.get(output.as_str()).ok_or_else(|| {
                VerifyError::Compile(CompileError::internal(format!("result `%{}` is not an output", f.node(*r).name)))
            })?;
            let dtype = ty.dtype.storage();
            let data = bytes
                .chunks_exact(dtype.size_bytes() as usize)
                .map(|c| jpu_isa::numerics::load_f64(dtype, c))
                .collect();
            Ok(Tensor { ty, data })
        })
        .collect()
}

/// The verification tolerance (docs/testing.md): `ulp(dtype) |ref| + 2^-20 k
/// max|ref| + attention`.
struct Tolerance {
    /// Summed contraction lengths of the program's kernels.
    k: f64,
    /// Fused attention's term for rounded probabilities.
    attention: f64,
}

/// Errors of compared elements.
#[derive(Default)]
struct Comparison {
    max_abs: f64,
    max_rel: f64,
    mismatches: u64,
    first: Option<String>,
}

impl Comparison {
    fn add(&mut self, o: Comparison) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.max_rel = self.max_rel.max(o.max_rel);
        self.mismatches += o.mismatches;
        if self.first.is_none() {
            self.first = o.first;
        }
    }
}

impl Tolerance {
    /// Compares the chip's bytes of value `%name` with the reference `want`.
    fn compare(&self, name: &str, bytes: &[u8], want: &Tensor) -> Result<Comparison, VerifyError> {
        let dtype = want.ty.dtype.storage();
        let got = chip_values(dtype, bytes);
        let scale = want.data.iter().filter(|v| v.is_finite()).fold(0.0f64, |a, v| a.max(v.abs()));
        let mut c = Comparison::default();
        for (i, (&g, &w)) in got.iter().zip(&want.data).enumerate() {
            let err = (g - w).abs();
            let ok = if w.is_nan() || g.is_nan() {
                w.is_nan() && g.is_nan()
            } else if w.is_infinite() || g.is_infinite() {
                g == w
            } else if dtype.is_int() {
                // Integers (and i1) are exact everywhere.
                err == 0.0
            } else {
                err <= ulp(dtype) * w.abs() + 2f64.powi(-20) * self.k * scale + self.attention
            };
            if err.is_finite() {
                c.max_abs = c.max_abs.max(err);
                if w != 0.0 {
                    c.max_rel = c.max_rel.max(err / w.abs());
                }
            }
            if !ok {
                c.mismatches += 1;
                c.first.get_or_insert_with(|| format!("%{name}[{i}]: got {g}, expected {w}"));
            }
        }
        Ok(c)
    }
}

fn chip_values(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    bytes.chunks_exact(dtype.size_bytes() as usize).map(|c| jpu_isa::numerics::load_f64(dtype, c)).collect()
}

/// The program as written, evaluated statement by statement with every value
/// the chip kept in HBM (a kernel's output) compared with the reference
/// computed from the chip's own earlier values, then used in its place; the
/// first value out of tolerance, if any.
fn kernel_by_kernel(
    f: &Func,
    inputs: &[Tensor],
    chip: &HashMap<&str, &[u8]>,
    binary_name: &dyn Fn(&str) -> String,
    tolerance: &Tolerance,
) -> Result<Option<String>, VerifyError> {
    let mut values: Vec<Tensor> = inputs.to_vec();
    for node in &f.nodes[f.num_params..] {
        let mut value = crate::eval::eval_node(node, &values);
        let kept = chip.get(binary_name(&node.name).as_str()).map(|b| (node.ty.dtype.storage(), *b));
        if let Some((dtype, bytes)) = kept.filter(|(d, b)| b.len() as u64 == node.ty.elems() * d.size_bytes() as u64) {
            let c = tolerance.compare(&node.name, bytes, &value)?;
            if c.mismatches > 0 {
                return Ok(c.first);
            }
            value = Tensor::from_values(node.ty.clone(), &chip_values(dtype, bytes));
        }
        values.push(value);
    }
    Ok(None)
}
