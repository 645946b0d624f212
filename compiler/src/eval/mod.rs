//! The reference evaluator: the oracle every compiled program is checked against.
//!
//! It evaluates the IR directly, simply, and deterministically: every float op is
//! computed in f32 (through `jpu_isa::numerics`, the same portable math the chip
//! uses) and rounded once into the node's declared dtype; integer ops are exact
//! (i32 wraps, narrower results saturate). Reductions, softmax, norms and matmul
//! accumulate in f32 in row-major order of the reduced index, starting from the
//! first element (matmul and attention's products from +0.0, k ascending), the
//! order the chip's PSUM and VE use. docs/tir.md states each op's formula.
//!
//! Values are stored as f64, which holds every value of every IR dtype exactly.

use jpu_isa::numerics;

use crate::ir::types::{ScalarType, TensorType};
use crate::ir::*;

/// A tensor value: its type and its elements in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Type.
    pub ty: TensorType,
    /// Elements, each exactly a value of `ty.dtype`.
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor from values, each rounded into `ty.dtype` (one rounding).
    pub fn from_values(ty: TensorType, values: &[f64]) -> Tensor {
        Tensor::rounded(ty, values.iter().copied())
    }

    /// [`Tensor::from_values`] of values produced one at a time (no copy of
    /// a large input first).
    pub fn rounded(ty: TensorType, values: impl IntoIterator<Item = f64>) -> Tensor {
        let data = values.into_iter().map(|v| round(ty.dtype, v)).collect();
        Tensor { ty, data }
    }
}

/// Rounds an exact value into `dtype` (round to nearest even; integers saturate;
/// i1 is 1 for any nonzero value, NaN included). Chip dtypes round through
/// [`numerics::round_f64`], the one implementation of the chip's conversions.
pub fn round(dtype: ScalarType, v: f64) -> f64 {
    match dtype.chip() {
        Some(chip) => numerics::round_f64(chip, v),
        // NaN is not zero (as numpy's `astype(bool)`).
        None => (v != 0.0) as u8 as f64,
    }
}

/// Why evaluation could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

fn strides(shape: &[u64]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1] as usize;
    }
    s
}

/// For each element of `out` (row-major), the index of the element of `input`
/// that broadcasting maps to it.
fn broadcast_index(out: &[u64], input: &[u64]) -> Vec<usize> {
    let n: u64 = out.iter().product();
    let in_strides = strides(input);
    let offset = out.len() - input.len();
    let mut idx = vec![0u64; out.len()];
    let mut result = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut flat = 0;
        for (k, &d) in input.iter().enumerate() {
            if d != 1 {
                flat += idx[offset + k] as usize * in_strides[k];
            }
        }
        result.push(flat);
        advance(&mut idx, |k| out[k]);
    }
    result
}

fn f32s(t: &Tensor) -> impl Iterator<Item = f32> + '_ {
    t.data.iter().map(|&v| v as f32)
}

/// Evaluates `f` on `inputs` (one per parameter, in order, of the declared types).
pub fn eval(f: &Func, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
    let values = eval_values(f, inputs)?;
    Ok(f.results.iter().map(|r| values[r.0 as usize].clone()).collect())
}

/// Every value of `f` (parameters first), evaluated on `inputs`.
pub fn eval_values(f: &Func, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
    eval_keeping(f, inputs, |_| true)
}

/// [`eval_values`], where a value that `keep` refuses (by node index) and
/// that is not a result has its data emptied once its last user is evaluated,
/// so a large program holds its live values only.
pub fn eval_keeping(f: &Func, inputs: &[Tensor], keep: impl Fn(usize) -> bool) -> Result<Vec<Tensor>, EvalError> {
    let mut last_use = vec![usize::MAX; f.nodes.len()];
    for (i, node) in f.nodes.iter().enumerate() {
        for o in &node.operands {
            if let Operand::Value(v) = o {
                last_use[v.0 as usize] = i;
            }
        }
    }
    for r in &f.results {
        last_use[r.0 as usize] = usize::MAX;
    }
    let mut dead_after: Vec<Vec<usize>> = vec![Vec::new(); f.nodes.len()];
    for (v, &at) in last_use.iter().enumerate() {
        if at != usize::MAX && !keep(v) {
            dead_after[at].push(v);
        }
    }
    eval_freeing(f, inputs, &dead_after)
}

fn eval_freeing(f: &Func, inputs: &[Tensor], dead_after: &[Vec<usize>]) -> Result<Vec<Tensor>, EvalError> {
    if inputs.len() != f.num_params {
        return Err(EvalError(format!("@{} takes {} inputs, given {}", f.name, f.num_params, inputs.len())));
    }
    let mut values: Vec<Tensor> = Vec::with_capacity(f.nodes.len());
    for (i, node) in f.nodes.iter().enumerate() {
        let t = if i < f.num_params {
            let input = &inputs[i];
            if input.ty != node.ty {
                return Err(EvalError(format!(
                    "input `%{}` is {}, but the function declares {}",
                    node.name, input.ty, node.ty
                )));
            }
            input.clone()
        } else {
            gather_out_of_range(node, &values)?;
            eval_node(node, &values)
        };
        values.push(t);
        for &v in &dead_after[i] {
            values[v].data = Vec::new();
        }
    }
    Ok(values)
}

fn operand<'a>(values: &'a [Tensor], node: &Node, i: usize) -> std::borrow::Cow<'a, Tensor> {
    match node.operands[i] {
        Operand::Value(v) => std::borrow::Cow::Borrowed(&values[v.0 as usize]),
        Operand::Scalar(x) => {
            // A literal takes the dtype of the node's data operands: for `select`
            // that is the result's (operand 0 is the i1 condition); otherwise the
            // value operands' (for `compare`, not its i1 result's).
            let dtype = match node.op {
                Op::Select => node.ty.dtype,
                _ => node
                    .operands
                    .iter()
                    .find_map(|o| match o {
                        Operand::Value(v) => Some(values[v.0 as usize].ty.dtype),
                        Operand::Scalar(_) => None,
                    })
                    .unwrap_or(node.ty.dtype),
            };
            std::borrow::Cow::Owned(Tensor::from_values(TensorType::new(dtype, vec![]), &[x]))
        }
    }
}

/// A tensor of type `ty` whose element at output index `idx` is `x`'s element at
/// flat position `sum over k of offset(k, idx[k])` (transposes and slices).
fn gather(ty: TensorType, x: &Tensor, offset: impl Fn(usize, u64) -> usize) -> Tensor {
    let n = ty.elems() as usize;
    let mut idx = vec![0u64; ty.rank()];
    let mut data = Vec::with_capacity(n);
    for _ in 0..n {
        let flat: usize = idx.iter().enumerate().map(|(k, &i)| offset(k, i)).sum();
        data.push(x.data[flat]);
        advance(&mut idx, |k| ty.shape[k]);
    }
    Tensor { ty, data }
}

// The element index addresses one broadcast map per operand.
#[allow(clippy::needless_range_loop)]
fn map_elementwise(node: &Node, args: &[&Tensor], f: impl Fn(&[f64]) -> f64) -> Tensor {
    let out = &node.ty.shape;
    // An operand of the output's shape is read in place (no index map).
    let maps: Vec<Option<Vec<usize>>> =
        args.iter().map(|a| (a.ty.shape != *out).then(|| broadcast_index(out, &a.ty.shape))).collect();
    let n: u64 = out.iter().product();
    let mut data = Vec::with_capacity(n as usize);
    let mut buf = vec![0.0; args.len()];
    for i in 0..n as usize {
        for (k, a) in args.iter().enumerate() {
            buf[k] = a.data[maps[k].as_ref().map_or(i, |m| m[i])];
        }
        data.push(round(node.ty.dtype, f(&buf)));
    }
    Tensor { ty: node.ty.clone(), data }
}

/// Splits `shape` around `axis`: (outer count, axis size, inner count).
fn around(shape: &[u64], axis: usize) -> (usize, usize, usize) {
    let outer: u64 = shape[..axis].iter().product();
    let inner: u64 = shape[axis + 1..].iter().product();
    (outer as usize, shape[axis] as usize, inner as usize)
}

/// The value of one statement, given every earlier value.
pub fn eval_node(node: &Node, values: &[Tensor]) -> Tensor {
    let ty = node.ty.clone();
    let arg = |i: usize| operand(values, node, i);
    match &node.op {
        Op::Param => unreachable!("parameters are inputs"),
        Op::Matmul { transpose_a, transpose_b } => {
            // A transposed operand is read through a transposed copy (exact).
            let (a, b) = (arg(0), arg(1));
            let a = if *transpose_a { std::borrow::Cow::Owned(swap_last_two(&a)) } else { a };
            let b = if *transpose_b { std::borrow::Cow::Owned(swap_last_two(&b)) } else { b };
            matmul(&a, &b, ty)
        }
        Op::Transpose { perm } => {
            let x = arg(0);
            let in_strides = strides(&x.ty.shape);
            gather(ty, &x, |k, i| i as usize * in_strides[perm[k]])
        }
        Op::Reshape { .. } => Tensor { ty, data: arg(0).data.clone() },
        Op::Binary(b) => map_elementwise(node, &[&arg(0), &arg(1)], |v| binary(*b, ty.dtype, v[0], v[1])),
        Op::Unary(u) => map_elementwise(node, &[&arg(0)], |v| unary(*u, ty.dtype, v[0])),
        Op::Gelu { approx } => map_elementwise(node, &[&arg(0)], |v| match approx {
            GeluApprox::Tanh => numerics::gelu_tanh(v[0] as f32) as f64,
            GeluApprox::None => numerics::gelu_erf(v[0] as f32) as f64,
        }),
        Op::Reduce { kind, axes, .. } => reduce(&arg(0), *kind, axes, ty),
        Op::Softmax { axis } => softmax(&arg(0), *axis, ty),
        Op::Cast { to } => Tensor { data: arg(0).data.iter().map(|&v| round(*to, v)).collect(), ty },
        Op::Const { value } => Tensor::from_values(ty.clone(), &vec![*value; ty.elems() as usize]),
        Op::Iota { axis } => iota(*axis, ty),
        Op::Compare { kind } => map_elementwise(node, &[&arg(0), &arg(1)], |v| compare(*kind, v[0], v[1])),
        Op::Select => map_elementwise(node, &[&arg(0), &arg(1), &arg(2)], |v| if v[0] != 0.0 { v[1] } else { v[2] }),
        Op::Gather { axis } => take(&arg(0), &arg(1), *axis, ty),
        Op::Concat { axis } => {
            let parts: Vec<_> = (0..node.operands.len()).map(arg).collect();
            concat(&parts, *axis, ty)
        }
        Op::Slice { start, .. } => {
            let x = arg(0);
            let in_strides = strides(&x.ty.shape);
            gather(ty, &x, |k, i| (start[k] + i) as usize * in_strides[k])
        }
        Op::LayerNorm { axis, eps } => norm(&arg(0), &arg(1), Some(&arg(2)), *axis, *eps, ty),
        Op::RmsNorm { axis, eps } => norm(&arg(0), &arg(1), None, *axis, *eps, ty),
        Op::Attention { causal, scale } => {
            let mask = (node.operands.len() == 4).then(|| arg(3));
            attention(&arg(0), &arg(1), &arg(2), mask.as_deref(), *causal, *scale, ty)
        }
    }
}

/// One element of a binary op: integers wrap (i32) or are exact, floats are f32.
fn binary(op: BinaryOp, dt: ScalarType, a: f64, b: f64) -> f64 {
    if !dt.is_float() {
        let (x, y) = (a as i64, b as i64);
        let r = match op {
            BinaryOp::Add => x.wrapping_add(y),
            BinaryOp::Sub => x.wrapping_sub(y),
            BinaryOp::Mul => x.wrapping_mul(y),
            BinaryOp::Max => x.max(y),
            BinaryOp::Min => x.min(y),
            // Truncating (as C and the VE); a division by zero gives 0.
            BinaryOp::Div => x.checked_div(y).unwrap_or(0),
        };
        return (if dt == ScalarType::I32 { r as i32 as i64 } else { r }) as f64;
    }
    let (x, y) = (a as f32, b as f32);
    let r = match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Max => numerics::max_num(x, y),
        BinaryOp::Min => numerics::min_num(x, y),
    };
    r as f64
}

/// One element of a unary op in f32 (integer `neg` wraps in i32).
fn unary(op: UnaryOp, dt: ScalarType, v: f64) -> f64 {
    if op == UnaryOp::Neg && !dt.is_float() {
        return ((v as i64).wrapping_neg() as i32) as f64;
    }
    let x = v as f32;
    let r = match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => libm::expf(x),
        UnaryOp::Tanh => libm::tanhf(x),
        UnaryOp::Erf => libm::erff(x),
        UnaryOp::Sigmoid => numerics::sigmoid(x),
        UnaryOp::Rsqrt => 1.0 / libm::sqrtf(x),
        UnaryOp::Sqrt => libm::sqrtf(x),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Relu => numerics::activation(jpu_isa::operand::ActFunc::Relu, x),
        UnaryOp::Silu => x * numerics::sigmoid(x),
        UnaryOp::Log => libm::logf(x),
    };
    r as f64
}

/// One element of a comparison: 1 or 0.
fn compare(kind: CompareKind, a: f64, b: f64) -> f64 {
    let r = match kind {
        CompareKind::Lt => a < b,
        CompareKind::Le => a <= b,
        CompareKind::Gt => a > b,
        CompareKind::Ge => a >= b,
        CompareKind::Eq => a == b,
    };
    r as u8 as f64
}

/// Steps a row-major multi-index `idx` over `dims` (the last fastest).
fn advance(idx: &mut [u64], dims: impl Fn(usize) -> u64) {
    for k in (0..idx.len()).rev() {
        idx[k] += 1;
        if idx[k] < dims(k) {
            return;
        }
        idx[k] = 0;
    }
}

/// Sum or max over `axes`, in row-major order of the reduced index from the
/// first element: f32 for floats, wrapping i32 for integers.
fn reduce(x: &Tensor, kind: ReduceKind, axes: &[usize], ty: TensorType) -> Tensor {
    let dt = ty.dtype;
    let kept: Vec<usize> = (0..x.ty.rank()).filter(|a| !axes.contains(a)).collect();
    let in_strides = strides(&x.ty.shape);
    let out_n: u64 = kept.iter().map(|&a| x.ty.shape[a]).product();
    let red_n: u64 = axes.iter().map(|&a| x.ty.shape[a]).product();
    let offset = |dims: &[usize], idx: &[u64]| -> usize {
        dims.iter().zip(idx).map(|(&a, &i)| i as usize * in_strides[a]).sum()
    };
    let mut data = Vec::with_capacity(out_n as usize);
    let mut kidx = vec![0u64; kept.len()];
    for _ in 0..out_n {
        let base = offset(&kept, &kidx);
        let mut ridx = vec![0u64; axes.len()];
        let mut acc_f: Option<f32> = None;
        let mut acc_i: Option<i64> = None;
        for _ in 0..red_n {
            let v = x.data[base + offset(axes, &ridx)];
            if dt.is_float() {
                let v = v as f32;
                acc_f = Some(match (acc_f, kind) {
                    (None, _) => v,
                    (Some(a), ReduceKind::Sum) => a + v,
                    (Some(a), ReduceKind::Max) => numerics::max_num(a, v),
                });
            } else {
                let v = v as i64;
                acc_i = Some(match (acc_i, kind) {
                    (None, _) => v,
                    (Some(a), ReduceKind::Sum) => a.wrapping_add(v),
                    (Some(a), ReduceKind::Max) => a.max(v),
                });
            }
            advance(&mut ridx, |k| x.ty.shape[axes[k]]);
        }
        let v = match (dt.is_float(), kind) {
            (_, ReduceKind::Max) if red_n == 0 => empty_max(dt),
            (true, _) => acc_f.unwrap_or(0.0) as f64,
            (false, _) => acc_i.unwrap_or(0) as i32 as f64,
        };
        data.push(round(dt, v));
        advance(&mut kidx, |k| x.ty.shape[kept[k]]);
    }
    Tensor { ty, data }
}

/// The maximum over no elements: the identity of `max` (`-inf` for floats, the
/// least i32 for integers, saturated into the dtype).
pub fn empty_max(dtype: ScalarType) -> f64 {
    if dtype.is_float() {
        f64::NEG_INFINITY
    } else {
        i32::MIN as f64
    }
}

/// Softmax along `axis`: max, exp(x - max), sum, divide, all f32.
fn softmax(x: &Tensor, axis: usize, ty: TensorType) -> Tensor {
    let (outer, n, inner) = around(&x.ty.shape, axis);
    let mut data = vec![0.0; x.data.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * n * inner + j * inner + i;
            let m = (1..n).fold(x.data[at(0)] as f32, |a, j| numerics::max_num(a, x.data[at(j)] as f32));
            let e: Vec<f32> = (0..n).map(|j| libm::expf(x.data[at(j)] as f32 - m)).collect();
            let s = e[1..].iter().fold(e[0], |a, &v| a + v);
            for j in 0..n {
                data[at(j)] = round(ty.dtype, (e[j] / s) as f64);
            }
        }
    }
    Tensor { ty, data }
}

/// Each element's index along `axis`.
fn iota(axis: usize, ty: TensorType) -> Tensor {
    let (outer, n, inner) = around(&ty.shape, axis);
    let mut vals = Vec::with_capacity(outer * n * inner);
    for _ in 0..outer {
        for j in 0..n {
            vals.extend(std::iter::repeat_n(j as f64, inner));
        }
    }
    Tensor::from_values(ty, &vals)
}

/// `parts` joined along `axis`.
fn concat(parts: &[std::borrow::Cow<'_, Tensor>], axis: usize, ty: TensorType) -> Tensor {
    let (outer, _, inner) = around(&ty.shape, axis);
    let mut data = Vec::with_capacity(ty.elems() as usize);
    for o in 0..outer {
        for p in parts {
            let n = p.ty.shape[axis] as usize;
            data.extend_from_slice(&p.data[o * n * inner..(o + 1) * n * inner]);
        }
    }
    Tensor { ty, data }
}

/// `gather(table, indices) {axis}`: for each outer index, each index, each inner
/// index, the table's element at that index along `axis` (indices checked in
/// range by [`gather_out_of_range`]).
fn take(table: &Tensor, indices: &Tensor, axis: usize, ty: TensorType) -> Tensor {
    let (outer, n, inner) = around(&table.ty.shape, axis);
    let mut data = Vec::with_capacity(ty.elems() as usize);
    for o in 0..outer {
        for &i in &indices.data {
            let at = (o * n + i as usize) * inner;
            data.extend_from_slice(&table.data[at..at + inner]);
        }
    }
    Tensor { ty, data }
}

/// The first index of a gather outside its table's axis, as an error naming the
/// statement, the index's position and the valid range.
fn gather_out_of_range(node: &Node, values: &[Tensor]) -> Result<(), EvalError> {
    let (Op::Gather { axis }, [Operand::Value(t), Operand::Value(i)]) = (&node.op, node.operands.as_slice()) else {
        return Ok(());
    };
    let (table, indices) = (&values[t.0 as usize], &values[i.0 as usize]);
    let n = table.ty.shape[*axis] as f64;
    match indices.data.iter().position(|&x| !(0.0..n).contains(&x)) {
        None => Ok(()),
        Some(k) => Err(EvalError(format!(
            "`%{} = gather`: index {} (element {k} of the indices) is outside [0, {n})",
            node.name, indices.data[k]
        ))),
    }
}

/// Layer norm (with `beta`) or RMS norm (without) along `axis`, in f32.
fn norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, axis: usize, eps: f64, ty: TensorType) -> Tensor {
    let (outer, n, inner) = around(&x.ty.shape, axis);
    let (eps, nf) = (eps as f32, n as f32);
    let mut data = vec![0.0; x.data.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * n * inner + j * inner + i;
            let v: Vec<f32> = (0..n).map(|j| x.data[at(j)] as f32).collect();
            let row: Vec<f32> = match beta {
                Some(beta) => {
                    let mean = v[1..].iter().fold(v[0], |a, &x| a + x) / nf;
                    let d: Vec<f32> = v.iter().map(|&x| x - mean).collect();
                    let var = d[1..].iter().fold(d[0] * d[0], |a, &x| a + x * x) / nf;
                    let rstd = 1.0 / libm::sqrtf(var + eps);
                    (0..n).map(|j| d[j] * rstd * gamma.data[j] as f32 + beta.data[j] as f32).collect()
                }
                None => {
                    let ms = v[1..].iter().fold(v[0] * v[0], |a, &x| a + x * x) / nf;
                    let rstd = 1.0 / libm::sqrtf(ms + eps);
                    (0..n).map(|j| v[j] * rstd * gamma.data[j] as f32).collect()
                }
            };
            for (j, y) in row.into_iter().enumerate() {
                data[at(j)] = round(ty.dtype, y as f64);
            }
        }
    }
    Tensor { ty, data }
}

/// The tensor with its last two dims swapped.
fn swap_last_two(t: &Tensor) -> Tensor {
    let r = t.ty.rank();
    let (rows, cols) = (t.ty.shape[r - 2] as usize, t.ty.shape[r - 1] as usize);
    let mut shape = t.ty.shape.clone();
    shape.swap(r - 2, r - 1);
    let mut data = Vec::with_capacity(t.data.len());
    for block in t.data.chunks(rows * cols) {
        for c in 0..cols {
            for rr in 0..rows {
                data.push(block[rr * cols + c]);
            }
        }
    }
    Tensor { ty: TensorType::new(t.ty.dtype, shape), data }
}

/// `acc[j] += x * y[j]`, an f32 rounding after the multiply and after the add
/// (Rust never fuses them). On hosts with AVX2 the same loop is compiled for
/// eight lanes: the lanes are independent elements, so the result is the same.
fn multiply_add(acc: &mut [f32], x: f32, y: &[f32]) {
    fn lanes(acc: &mut [f32], x: f32, y: &[f32]) {
        for (r, &v) in acc.iter_mut().zip(y) {
            *r += x * v;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn wide(acc: &mut [f32], x: f32, y: &[f32]) {
            lanes(acc, x, y)
        }
        // SAFETY: the host has AVX2.
        return unsafe { wide(acc, x, y) };
    }
    lanes(acc, x, y)
}

fn matmul(a: &Tensor, b: &Tensor, ty: TensorType) -> Tensor {
    let (ra, rb) = (a.ty.rank(), b.ty.rank());
    let (m, k, n) = (a.ty.shape[ra - 2] as usize, a.ty.shape[ra - 1] as usize, b.ty.shape[rb - 1] as usize);
    let batch: Vec<u64> = ty.shape[..ty.rank() - 2].to_vec();
    let a_batch = broadcast_index(&batch, &a.ty.shape[..ra - 2]);
    let b_batch = broadcast_index(&batch, &b.ty.shape[..rb - 2]);
    let int = a.ty.dtype.is_int();
    let mut data = Vec::with_capacity(ty.elems() as usize);
    for (ab, bb) in a_batch.iter().zip(&b_batch) {
        let (ao, bo) = (ab * m * k, bb * k * n);
        if int {
            for i in 0..m {
                let mut acc = vec![0i32; n];
                for kk in 0..k {
                    let x = a.data[ao + i * k + kk] as i32;
                    for (j, r) in acc.iter_mut().enumerate() {
                        *r = r.wrapping_add(x.wrapping_mul(b.data[bo + kk * n + j] as i32));
                    }
                }
                data.extend(acc.iter().map(|&v| round(ty.dtype, v as f64)));
            }
        } else {
            let bf: Vec<f32> = b.data[bo..bo + k * n].iter().map(|&v| v as f32).collect();
            for i in 0..m {
                // k ascending per output, from +0.0, an f32 rounding per multiply and add.
                let mut acc = vec![0.0f32; n];
                for kk in 0..k {
                    let x = a.data[ao + i * k + kk] as f32;
                    multiply_add(&mut acc, x, &bf[kk * n..(kk + 1) * n]);
                }
                data.extend(acc.iter().map(|&v| round(ty.dtype, v as f64)));
            }
        }
    }
    Tensor { ty, data }
}

fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
    ty: TensorType,
) -> Tensor {
    let r = q.ty.rank();
    // The mask broadcast to the scores, [.., Hq, Sq, Sk], row-major.
    let mut scores_shape = q.ty.shape.clone();
    scores_shape[r - 1] = k.ty.shape[r - 2];
    let mask: Option<Vec<f32>> =
        mask.map(|m| broadcast_index(&scores_shape, &m.ty.shape).into_iter().map(|i| m.data[i] as f32).collect());
    let (hq, sq, d) = (q.ty.shape[r - 3] as usize, q.ty.shape[r - 2] as usize, q.ty.shape[r - 1] as usize);
    let (hk, sk) = (k.ty.shape[r - 3] as usize, k.ty.shape[r - 2] as usize);
    let dv = v.ty.shape[r - 1] as usize;
    let batch: usize = q.ty.shape[..r - 3].iter().product::<u64>() as usize;
    let group = hq / hk;
    let scale = scale as f32;
    let (qf, kf, vf): (Vec<f32>, Vec<f32>, Vec<f32>) = (f32s(q).collect(), f32s(k).collect(), f32s(v).collect());
    let mut data = Vec::with_capacity(ty.elems() as usize);
    for bi in 0..batch {
        for h in 0..hq {
            let kh = h / group;
            let qb = (bi * hq + h) * sq * d;
            let kb = (bi * hk + kh) * sk * d;
            let vb = (bi * hk + kh) * sk * dv;
            for i in 0..sq {
                let visible = |j: usize| !causal || (j as i64) <= i as i64 + sk as i64 - sq as i64;
                let s: Vec<f32> = (0..sk)
                    .map(|j| {
                        if !visible(j) {
                            return f32::NEG_INFINITY;
                        }
                        let dot = (0..d).fold(0.0f32, |a, t| a + qf[qb + i * d + t] * kf[kb + j * d + t]);
                        match &mask {
                            Some(m) => dot * scale + m[((bi * hq + h) * sq + i) * sk + j],
                            None => dot * scale,
                        }
                    })
                    .collect();
                if !(0..sk).any(visible) {
                    // A query row that sees no key (q_seq > kv_seq, causal) is zero.
                    data.extend(std::iter::repeat_n(0.0, dv));
                    continue;
                }
                let m = s[1..].iter().fold(s[0], |a, &x| numerics::max_num(a, x));
                let e: Vec<f32> = s.iter().map(|&x| libm::expf(x - m)).collect();
                let sum = e[1..].iter().fold(e[0], |a, &x| a + x);
                for t in 0..dv {
                    let o = (0..sk).fold(0.0f32, |a, j| a + (e[j] / sum) * vf[vb + j * dv + t]);
                    data.push(round(ty.dtype, o as f64));
                }
            }
        }
    }
    Tensor { ty, data }
}
