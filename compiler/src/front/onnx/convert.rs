//! Runtime ops: each ONNX op whose inputs are not all known at import time
//! becomes one or a few IR statements with the op's ONNX semantics (opset 13
//! and later: broadcasting, attributes and their defaults). The first
//! statement of a node takes the node's output name; helpers take `name__k`.
//! This module also owns the list of supported ops and the one error that
//! lists every unsupported op of a model.

use std::collections::BTreeMap;

use super::fold::{attr_float, attr_int, attr_ints, attr_str, axis, host_input, known_ints, reshape_shape, slice_spec};
use super::host::{self, product, HostTensor};
use super::import::{Importer, POperand, Ref, Val};
use super::proto::tensor_proto::DataType;
use super::proto::NodeProto;
use crate::ir::ops::Attr;
use crate::ir::TensorType;

const BOOL: i32 = DataType::Bool as i32;
const INT32: i32 = DataType::Int32 as i32;

/// Every op type the importer takes (folded, converted, or both).
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "Attention",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Div",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gelu",
    "Gemm",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "IsNaN",
    "LayerNormalization",
    "Less",
    "LessOrEqual",
    "Log",
    "MatMul",
    "Max",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "RMSNormalization",
    "Range",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "RotaryEmbedding",
    "Shape",
    "Sigmoid",
    "Size",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// One error listing every unsupported op of `nodes`, with counts and node names.
pub fn check_supported<'a>(nodes: impl Iterator<Item = &'a NodeProto>) -> Result<(), String> {
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in nodes {
        let op = n.op_type.as_deref().unwrap_or("");
        let domain = n.domain.as_deref().unwrap_or("");
        let key = match domain {
            "" | "ai.onnx" if SUPPORTED.contains(&op) => continue,
            "" | "ai.onnx" => op.to_string(),
            d => format!("{d}.{op}"),
        };
        missing.entry(key).or_default().push(n.name.clone().unwrap_or_default());
    }
    if missing.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|(op, names)| {
            let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
            let more = if names.len() > 3 { format!(", and {} more", names.len() - 3) } else { String::new() };
            format!("  {op} x{} ({}{more})", names.len(), shown.join(", "))
        })
        .collect();
    Err(format!("the model uses {} unsupported op type(s):\n{}", missing.len(), lines.join("\n")))
}

/// The permutation of a `Transpose` (default: dims reversed).
pub fn perm(n: &NodeProto, rank: usize) -> Result<Vec<usize>, String> {
    let p: Vec<usize> = match attr_ints(n, "perm") {
        Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    for &a in &p {
        if std::mem::replace(&mut seen[a], true) {
            return Err(format!("perm {p:?} repeats a dim"));
        }
    }
    if p.len() != rank {
        return Err(format!("perm {p:?} does not have {rank} entries"));
    }
    Ok(p)
}

/// The output shape of Reshape, Unsqueeze, Squeeze or Flatten of `shape`.
pub fn reshaped(im: &Importer, n: &NodeProto, op: &str, shape: &[u64]) -> Result<Vec<u64>, String> {
    match op {
        "Reshape" => {
            let spec = known_ints(im, n, 1, "shape")?.ok_or("no shape input")?;
            reshape_shape(shape, &spec, attr_int(n, "allowzero", 0) != 0)
        }
        "Unsqueeze" => {
            let axes = known_ints(im, n, 1, "axes")?.ok_or("no axes input")?;
            let r = shape.len() + axes.len();
            let mut at: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?;
            at.sort_unstable();
            let mut out = shape.to_vec();
            for a in at {
                out.insert(a, 1);
            }
            Ok(out)
        }
        "Squeeze" => {
            let axes = match known_ints(im, n, 1, "axes")? {
                Some(a) => a.iter().map(|&a| axis(a, shape.len())).collect::<Result<Vec<_>, _>>()?,
                None => (0..shape.len()).filter(|&k| shape[k] == 1).collect(),
            };
            if let Some(&a) = axes.iter().find(|&&a| shape[a] != 1) {
                return Err(format!("dim {a} of {shape:?} is not 1 and cannot be squeezed"));
            }
            Ok(shape.iter().enumerate().filter(|(k, _)| !axes.contains(k)).map(|(_, &d)| d).collect())
        }
        _ => {
            let a = attr_int(n, "axis", 1);
            let a = if a == shape.len() as i64 { shape.len() } else { axis(a, shape.len())? };
            Ok(vec![product(&shape[..a]), product(&shape[a..])])
        }
    }
}

/// A reduction's axes (from its input, or its attribute before opset 18) and keepdims.
pub fn reduce_axes(im: &Importer, n: &NodeProto, rank: usize) -> Result<(Vec<usize>, bool), String> {
    let keep = attr_int(n, "keepdims", 1) != 0;
    let given = match known_ints(im, n, 1, "axes")? {
        Some(a) => Some(a),
        None => attr_ints(n, "axes"),
    };
    let axes = match given {
        Some(a) if !a.is_empty() => a.iter().map(|&a| axis(a, rank)).collect::<Result<Vec<_>, _>>()?,
        _ if attr_int(n, "noop_with_empty_axes", 0) != 0 => Vec::new(),
        _ => (0..rank).collect(),
    };
    Ok((axes, keep))
}

/// The sizes of a `Split`'s outputs.
pub fn split_sizes(im: &Importer, n: &NodeProto, shape: &[u64]) -> Result<Vec<u64>, String> {
    let a = axis(attr_int(n, "axis", 0), shape.len())?;
    let outputs = n.output.len() as u64;
    let sizes = match known_ints(im, n, 1, "split")? {
        Some(s) => {
            s.iter().map(|&d| u64::try_from(d).map_err(|_| format!("split size {d}"))).collect::<Result<Vec<_>, _>>()?
        }
        None => {
            let parts = u64::try_from(attr_int(n, "num_outputs", outputs as i64)).unwrap_or(0).max(1);
            let each = shape[a].div_ceil(parts);
            (0..parts).map(|k| each.min(shape[a].saturating_sub(k * each))).collect()
        }
    };
    if sizes.iter().fold(0u64, |n, &d| n.saturating_add(d)) != shape[a] || sizes.len() as u64 != outputs {
        return Err(format!("split sizes {sizes:?} do not cover dim {a} of {shape:?} in {outputs} outputs"));
    }
    Ok(sizes)
}

/// The node's first output name.
fn out(n: &NodeProto) -> String {
    n.output.first().cloned().unwrap_or_default()
}

fn input(n: &NodeProto, i: usize) -> Result<&str, String> {
    n.input.get(i).map(String::as_str).filter(|s| !s.is_empty()).ok_or_else(|| format!("input {i} is missing"))
}

fn ints(v: &[u64]) -> Attr {
    Attr::List(v.iter().map(|&d| Attr::Int(d as i64)).collect())
}

fn iints(v: &[i64]) -> Attr {
    Attr::List(v.iter().map(|&d| Attr::Int(d)).collect())
}

/// Converts runtime node `n`; returns its outputs' values.
pub fn convert(im: &mut Importer, n: &NodeProto) -> Result<Vec<Val>, String> {
    let op = n.op_type.clone().unwrap_or_default();
    let name = out(n);
    let ir = |r: Ref, elem: i32| Ok(vec![Val::Ir { r, elem }]);
    match op.as_str() {
        "Identity" => Ok(vec![im.val(input(n, 0)?)?.clone()]),
        "Add" | "Sub" | "Mul" | "Div" => {
            let (mut a, ea) = im.operand(input(n, 0)?)?;
            let (mut b, _) = im.operand(input(n, 1)?)?;
            if im.is_wide(&name) {
                a = im.widened(a, &format!("{name}__a"))?;
                b = im.widened(b, &format!("{name}__b"))?;
            }
            let r = im.push(&name, &op.to_lowercase(), &[a, b], &[], None)?;
            ir(r, ea)
        }
        "Max" | "Min" => {
            let (mut acc, elem) = im.operand(input(n, 0)?)?;
            for (k, i) in n.input.iter().enumerate().skip(1).filter(|(_, i)| !i.is_empty()) {
                let (b, _) = im.operand(i)?;
                let last = k + 1 == n.input.len();
                let nm = if last { name.clone() } else { format!("{name}__{k}") };
                acc = POperand::Value(im.push(&nm, &op.to_lowercase(), &[acc, b], &[], None)?);
            }
            match acc {
                POperand::Value(r) => ir(r, elem),
                POperand::Scalar(_) => Err("every input is a literal".into()),
            }
        }
        "Neg" | "Sqrt" | "Reciprocal" | "Exp" | "Log" | "Erf" | "Tanh" | "Sigmoid" | "Relu" => {
            let (x, elem) = im.ir(input(n, 0)?)?;
            let irop = if op == "Reciprocal" { "recip".to_string() } else { op.to_lowercase() };
            ir(im.push(&name, &irop, &[POperand::Value(x)], &[], None)?, elem)
        }
        "Gelu" => {
            let (x, elem) = im.ir(input(n, 0)?)?;
            let approx = attr_str(n, "approximate", "none");
            ir(im.push(&name, "gelu", &[POperand::Value(x)], &[("approx", Attr::Str(approx))], None)?, elem)
        }
        "Pow" => pow(im, n, &name),
        "Clip" => clip(im, n, &name),
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
            let kind = match op.as_str() {
                "Equal" => "eq",
                "Less" => "lt",
                "LessOrEqual" => "le",
                "Greater" => "gt",
                _ => "ge",
            };
            let (a, _) = im.operand(input(n, 0)?)?;
            let (b, _) = im.operand(input(n, 1)?)?;
            ir(im.push(&name, "compare", &[a, b], &[("kind", Attr::Word(kind.into()))], None)?, BOOL)
        }
        "Not" => {
            let (x, _) = im.ir(input(n, 0)?)?;
            let kind = ("kind", Attr::Word("eq".into()));
            ir(im.push(&name, "compare", &[POperand::Value(x), POperand::Scalar(0.0)], &[kind], None)?, BOOL)
        }
        "And" | "Or" => {
            let (a, _) = im.ir(input(n, 0)?)?;
            let (b, _) = im.ir(input(n, 1)?)?;
            let (t, f) = if op == "And" {
                (POperand::Value(b), POperand::Scalar(0.0))
            } else {
                (POperand::Scalar(1.0), POperand::Value(b))
            };
            ir(im.push(&name, "select", &[POperand::Value(a), t, f], &[], None)?, BOOL)
        }
        "IsNaN" => {
            let (x, _) = im.ir(input(n, 0)?)?;
            let eq = im.push(
                &format!("{name}__eq"),
                "compare",
                &[POperand::Value(x), POperand::Value(x)],
                &[("kind", Attr::Word("eq".into()))],
                None,
            )?;
            let kind = ("kind", Attr::Word("eq".into()));
            ir(im.push(&name, "compare", &[POperand::Value(eq), POperand::Scalar(0.0)], &[kind], None)?, BOOL)
        }
        "Where" => select(im, n, &name),
        "Cast" => super::cast::cast(im, n, &name),
        "MatMul" => matmul(im, n, &name),
        "Gemm" => gemm(im, n, &name),
        "Softmax" => softmax(im, n, &name),
        "LayerNormalization" | "RMSNormalization" => norm(im, n, &name, op == "LayerNormalization"),
        "Transpose" => {
            let (x, elem) = im.ir(input(n, 0)?)?;
            let p = perm(n, im.ty(x).shape.len())?;
            let p: Vec<u64> = p.iter().map(|&a| a as u64).collect();
            ir(im.push(&name, "transpose", &[POperand::Value(x)], &[("perm", ints(&p))], None)?, elem)
        }
        "Reshape" | "Unsqueeze" | "Squeeze" | "Flatten" => {
            let (x, elem) = im.ir(input(n, 0)?)?;
            let shape = reshaped(im, n, &op, &im.ty(x).shape.clone())?;
            ir(reshape(im, x, &shape, &name)?, elem)
        }
        "Concat" => concat(im, n, &name),
        "Slice" => slice_node(im, n, &name),
        "Split" => split(im, n),
        "Gather" => gather(im, n, &name),
        "Expand" => expand(im, n, &name),
        "ReduceSum" | "ReduceMean" | "ReduceMax" => reduce(im, n, &name, &op),
        "Attention" => attention(im, n, &name),
        "Trilu" => trilu(im, n, &name),
        "RotaryEmbedding" => rotary(im, n, &name),
        _ => Err(format!("`{op}` of values computed at run time is not supported")),
    }
}

/// Softmax; a wide scores chain computes it in f32 and stores its result narrower.
fn softmax(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let ir = |r: Ref, elem: i32| Ok(vec![Val::Ir { r, elem }]);
    let (x, elem) = im.ir(input(n, 0)?)?;
    let a = attr_int(n, "axis", -1);
    let axis = [("axis", Attr::Int(a))];
    let storage = im.ir_dtype(elem)?;
    if im.ty(x).dtype == storage {
        return ir(im.push(name, "softmax", &[POperand::Value(x)], &axis, None)?, elem);
    }
    // A wide scores chain: the softmax in f32, its result stored narrower.
    let p = im.push(&format!("{name}__f32"), "softmax", &[POperand::Value(x)], &axis, None)?;
    let to = ("to", Attr::Word(storage.name().into()));
    ir(im.push(name, "cast", &[POperand::Value(p)], &[to], None)?, elem)
}

/// Concat of the non-empty inputs.
fn concat(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let ir = |r: Ref, elem: i32| Ok(vec![Val::Ir { r, elem }]);
    let mut parts = Vec::new();
    let mut elem = 0;
    for i in n.input.iter().filter(|i| !i.is_empty()) {
        if im.shape_of(im.val(i)?).contains(&0) {
            continue;
        }
        let (r, e) = im.ir(i)?;
        parts.push(POperand::Value(r));
        elem = e;
    }
    let rank = match parts.first() {
        Some(POperand::Value(r)) => im.ty(*r).shape.len(),
        _ => return Err("every input is empty".into()),
    };
    let a = axis(attr_int(n, "axis", 0), rank)? as i64;
    ir(im.push(name, "concat", &parts, &[("axis", Attr::Int(a))], None)?, elem)
}

/// Slice: unit steps as one slice, positive steps by [`strided_slice`], negative
/// steps by [`reversed_slice`].
fn slice_node(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let ir = |r: Ref, elem: i32| Ok(vec![Val::Ir { r, elem }]);
    let (x, elem) = im.ir(input(n, 0)?)?;
    let shape = im.ty(x).shape.clone();
    let (first, step, len) = slice_spec(im, n, &shape)?;
    if step.iter().any(|&s| s < 1) {
        return reversed_slice(im, x, elem, (&first, &step, &len), name);
    }
    // Unit-step dims in one slice; each strided dim after it.
    let unit_first: Vec<i64> = first.iter().zip(&step).map(|(&f, &k)| if k == 1 { f } else { 0 }).collect();
    let unit_len: Vec<u64> = (0..shape.len()).map(|a| if step[a] == 1 { len[a] } else { shape[a] }).collect();
    let strided = step.iter().any(|&k| k > 1);
    let mut r =
        slice(im, x, &unit_first, &unit_len, &if strided { format!("{name}__unit") } else { name.to_string() })?;
    for a in (0..shape.len()).filter(|&a| step[a] > 1) {
        r = strided_slice(im, r, a, (first[a] as u64, step[a] as u64, len[a]), &format!("{name}__s{a}"))?;
    }
    if strided {
        let out = im.ty(r).shape.clone();
        r = im.push(name, "reshape", &[POperand::Value(r)], &[("shape", ints(&out))], None)?;
    }
    ir(r, elem)
}

/// Split into slices along the axis.
fn split(im: &mut Importer, n: &NodeProto) -> Result<Vec<Val>, String> {
    let (x, elem) = im.ir(input(n, 0)?)?;
    let shape = im.ty(x).shape.clone();
    let a = axis(attr_int(n, "axis", 0), shape.len())?;
    let mut at = 0i64;
    let mut outs = Vec::new();
    for (k, len) in split_sizes(im, n, &shape)?.into_iter().enumerate() {
        let mut first = vec![0i64; shape.len()];
        first[a] = at;
        at += len as i64;
        let mut lens = shape.clone();
        lens[a] = len;
        let nm = n.output.get(k).cloned().unwrap_or_default();
        outs.push(Val::Ir { r: slice(im, x, &first, &lens, &nm)?, elem });
    }
    Ok(outs)
}

/// `%name = reshape(x)` (or `x` itself when the shape is unchanged).
fn reshape(im: &mut Importer, x: Ref, shape: &[u64], name: &str) -> Result<Ref, String> {
    if im.ty(x).shape == shape {
        return Ok(x);
    }
    im.push(name, "reshape", &[POperand::Value(x)], &[("shape", ints(shape))], None)
}

fn slice(im: &mut Importer, x: Ref, first: &[i64], len: &[u64], name: &str) -> Result<Ref, String> {
    if im.ty(x).shape == len && first.iter().all(|&f| f == 0) {
        return Ok(x);
    }
    let stop: Vec<i64> = first.iter().zip(len).map(|(&f, &l)| f + l as i64).collect();
    im.push(name, "slice", &[POperand::Value(x)], &[("start", iints(first)), ("stop", iints(&stop))], None)
}

/// Elements `first, first + step, ...` (`len` of them) along dim `a` of `x`:
/// the region they span, reshaped so that the step is a dim of its own, and
/// that dim's first index (a last, incomplete group is sliced on its own).
fn strided_slice(
    im: &mut Importer,
    x: Ref,
    a: usize,
    (first, step, len): (u64, u64, u64),
    name: &str,
) -> Result<Ref, String> {
    let shape = im.ty(x).shape.clone();
    let full = if first + step * len <= shape[a] { len } else { len.saturating_sub(1) };
    let mut parts = Vec::new();
    if full > 0 {
        let mut at = vec![0i64; shape.len()];
        at[a] = first as i64;
        let mut span = shape.clone();
        span[a] = step * full;
        let region = slice(im, x, &at, &span, &format!("{name}__region"))?;
        let mut grouped = shape[..a].to_vec();
        grouped.extend([full, step]);
        grouped.extend(&shape[a + 1..]);
        let g = reshape(im, region, &grouped, &format!("{name}__groups"))?;
        let mut pick = grouped.clone();
        pick[a + 1] = 1;
        let picked = slice(im, g, &vec![0; grouped.len()], &pick, &format!("{name}__pick"))?;
        let mut back = shape.clone();
        back[a] = full;
        parts.push(POperand::Value(reshape(im, picked, &back, &format!("{name}__full"))?));
    }
    if full < len {
        let mut at = vec![0i64; shape.len()];
        at[a] = (first + step * full) as i64;
        let mut one = shape.clone();
        one[a] = 1;
        parts.push(POperand::Value(slice(im, x, &at, &one, &format!("{name}__last"))?));
    }
    match parts[..] {
        [POperand::Value(r)] => Ok(r),
        _ => im.push(name, "concat", &parts, &[("axis", Attr::Int(a as i64))], None),
    }
}

/// Pow: the known exponents 0.5, 1, 2, 3, -0.5 and -1 exactly (sqrt, mul,
/// rsqrt, recip); any other exponent as `exp(y * log(x))` (x > 0; a negative
/// base gives NaN, as `powf` does for non-integer exponents).
fn pow(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (x, elem) = im.ir(input(n, 0)?)?;
    if !im.ty(x).dtype.is_float() {
        return Err("a Pow of integers is not supported".into());
    }
    let known = host_input(im, n, 1)?.filter(|h| h.data.len() == 1).map(|h| h.data[0]);
    let v = POperand::Value(x);
    let r = match known {
        Some(1.0) => x,
        Some(2.0) => im.push(name, "mul", &[v, v], &[], None)?,
        Some(3.0) => {
            let sq = im.push(&format!("{name}__sq"), "mul", &[v, v], &[], None)?;
            im.push(name, "mul", &[POperand::Value(sq), v], &[], None)?
        }
        Some(0.5) => im.push(name, "sqrt", &[v], &[], None)?,
        Some(-0.5) => im.push(name, "rsqrt", &[v], &[], None)?,
        Some(-1.0) => im.push(name, "recip", &[v], &[], None)?,
        Some(e) => {
            let ln = im.push(&format!("{name}__ln"), "log", &[v], &[], None)?;
            let p = im.push(&format!("{name}__p"), "mul", &[POperand::Value(ln), POperand::Scalar(e)], &[], None)?;
            im.push(name, "exp", &[POperand::Value(p)], &[], None)?
        }
        None => {
            let (y, _) = im.ir(input(n, 1)?)?;
            let dtype = im.ty(x).dtype;
            let y = if im.ty(y).dtype == dtype {
                y
            } else {
                let to = ("to", Attr::Word(dtype.name().into()));
                im.push(&format!("{name}__y"), "cast", &[POperand::Value(y)], &[to], None)?
            };
            let ln = im.push(&format!("{name}__ln"), "log", &[v], &[], None)?;
            let p = im.push(&format!("{name}__p"), "mul", &[POperand::Value(ln), POperand::Value(y)], &[], None)?;
            im.push(name, "exp", &[POperand::Value(p)], &[], None)?
        }
    };
    Ok(vec![Val::Ir { r, elem }])
}

fn clip(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (x, elem) = im.ir(input(n, 0)?)?;
    let mut acc = x;
    for (i, op) in [(1, "max"), (2, "min")] {
        if n.input.get(i).is_some_and(|s| !s.is_empty()) {
            let (b, _) = im.operand(&n.input[i])?;
            let last = i == 2 || n.input.get(2).is_none_or(|s| s.is_empty());
            let nm = if last { name.to_string() } else { format!("{name}__lo") };
            acc = im.push(&nm, op, &[POperand::Value(acc), b], &[], None)?;
        }
    }
    Ok(vec![Val::Ir { r: acc, elem }])
}

fn select(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (c, _) = im.ir(input(n, 0)?)?;
    let (a, elem) = im.operand(input(n, 1)?)?;
    let (mut b, _) = im.operand(input(n, 2)?)?;
    if let (POperand::Scalar(_), POperand::Scalar(v)) = (a, b) {
        // Two literals: the second becomes a splat of the condition's shape.
        let ty = TensorType::new(im.ir_dtype(elem)?, im.ty(c).shape.clone());
        b = POperand::Value(im.push(
            &format!("{name}__else"),
            "const",
            &[],
            &[("value", Attr::Float(v))],
            Some(&ty),
        )?);
    }
    Ok(vec![Val::Ir { r: im.push(name, "select", &[POperand::Value(c), a, b], &[], None)?, elem }])
}

fn matmul(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (a, elem) = im.ir(input(n, 0)?)?;
    let (b, _) = im.ir(input(n, 1)?)?;
    let (sa, sb) = (im.ty(a).shape.clone(), im.ty(b).shape.clone());
    if sa.is_empty() || sb.is_empty() {
        return Err("a MatMul of a scalar".into());
    }
    // 1-D operands are promoted to matrices and the added dim removed after.
    let a2 = if sa.len() == 1 { reshape(im, a, &[1, sa[0]], &format!("{name}__a"))? } else { a };
    let b2 = if sb.len() == 1 { reshape(im, b, &[sb[0], 1], &format!("{name}__b"))? } else { b };
    if sa.len() > 1 && sb.len() > 1 {
        let operands = [POperand::Value(a2), POperand::Value(b2)];
        // Scores of a wide chain: an f32 result (f32 accumulation either way).
        let wide = match im.is_wide(name) {
            true => Some(TensorType::new(crate::ir::ScalarType::F32, im.infer("matmul", &operands, &[])?.shape)),
            false => None,
        };
        return Ok(vec![Val::Ir { r: im.push(name, "matmul", &operands, &[], wide.as_ref())?, elem }]);
    }
    let m = im.push(&format!("{name}__mm"), "matmul", &[POperand::Value(a2), POperand::Value(b2)], &[], None)?;
    let mut shape = im.ty(m).shape.clone();
    if sb.len() == 1 {
        shape.pop();
    }
    if sa.len() == 1 {
        // The promoted row: the last dim left when b was a vector, else the second to last.
        let at = shape.len() - if sb.len() == 1 { 1 } else { 2 };
        shape.remove(at);
    }
    Ok(vec![Val::Ir { r: reshape(im, m, &shape, name)?, elem }])
}

fn gemm(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (a, elem) = im.ir(input(n, 0)?)?;
    let (b, _) = im.ir(input(n, 1)?)?;
    let (alpha, beta) = (attr_float(n, "alpha", 1.0) as f64, attr_float(n, "beta", 1.0) as f64);
    let t = |k: &str| Attr::Bool(attr_int(n, k, 0) != 0);
    let has_c = n.input.get(2).is_some_and(|s| !s.is_empty());
    let scaled = alpha != 1.0 || has_c;
    let mm_name = if scaled { format!("{name}__mm") } else { name.to_string() };
    let attrs = [("transpose_a", t("transA")), ("transpose_b", t("transB"))];
    let mut y = im.push(&mm_name, "matmul", &[POperand::Value(a), POperand::Value(b)], &attrs, None)?;
    if alpha != 1.0 {
        let nm = if has_c { format!("{name}__alpha") } else { name.to_string() };
        y = im.push(&nm, "mul", &[POperand::Value(y), POperand::Scalar(alpha)], &[], None)?;
    }
    if has_c {
        let c_name = n.input[2].clone();
        let c = match (host_input(im, n, 2)?.cloned(), beta) {
            (Some(h), beta) if beta != 1.0 => {
                let scaled = host::elementwise(&[&h], h.elem, |v| v[0] * beta)?;
                POperand::Value(im.materialize(&format!("{c_name}__beta"), &scaled)?)
            }
            (_, 1.0) => im.operand(&c_name)?.0,
            _ => {
                let (c, _) = im.ir(&c_name)?;
                POperand::Value(im.push(
                    &format!("{name}__c"),
                    "mul",
                    &[POperand::Value(c), POperand::Scalar(beta)],
                    &[],
                    None,
                )?)
            }
        };
        y = im.push(name, "add", &[POperand::Value(y), c], &[], None)?;
    }
    Ok(vec![Val::Ir { r: y, elem }])
}

/// LayerNormalization / RMSNormalization over dims `axis..`: merged into one
/// last dim when they are several, scale and bias as `[size]` weights.
fn norm(im: &mut Importer, n: &NodeProto, name: &str, layer: bool) -> Result<Vec<Val>, String> {
    if !layer && n.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err("only the normalized output is supported".into());
    }
    let (x, elem) = im.ir(input(n, 0)?)?;
    let shape = im.ty(x).shape.clone();
    let a = axis(attr_int(n, "axis", -1), shape.len())?;
    let size: u64 = product(&shape[a..]);
    let mut merged = shape[..a].to_vec();
    merged.push(size);
    let xm = reshape(im, x, &merged, &format!("{name}__in"))?;
    let param = |im: &mut Importer, i: usize, fill: f64| -> Result<POperand, String> {
        let h = match n.input.get(i).filter(|s| !s.is_empty()) {
            None => HostTensor::new(DataType::Float as i32, vec![size], vec![fill; host::elems(&[size])? as usize]),
            Some(s) => match im.val(s)? {
                Val::Host(h) => host::expand(h, &shape[a..])?,
                Val::Ir { .. } => {
                    let (r, _) = im.ir(s)?;
                    return Ok(POperand::Value(reshape(im, r, &[size], &format!("{name}__p{i}"))?));
                }
            },
        };
        let flat = HostTensor { shape: vec![size], ..h };
        let key = format!("{}__{}", n.input.get(i).cloned().unwrap_or_else(|| format!("{name}_p{i}")), size);
        Ok(POperand::Value(im.materialize(&key, &flat)?))
    };
    let gamma = param(im, 1, 1.0)?;
    let eps = ("eps", Attr::Float(attr_float(n, "epsilon", 1e-5) as f64));
    let ax = ("axis", Attr::Int(-1));
    let same = merged == shape;
    let nm = if same { name.to_string() } else { format!("{name}__out") };
    let y = if layer {
        let beta = param(im, 2, 0.0)?;
        im.push(&nm, "layernorm", &[POperand::Value(xm), gamma, beta], &[ax, eps], None)?
    } else {
        im.push(&nm, "rmsnorm", &[POperand::Value(xm), gamma], &[ax, eps], None)?
    };
    let mut outs = vec![Val::Ir { r: reshape(im, y, &shape, name)?, elem }];
    if n.output.iter().skip(1).any(|o| !o.is_empty()) {
        let eps = attr_float(n, "epsilon", 1e-5) as f64;
        let (mean, inv) = layer_stats(im, xm, eps, name)?;
        // Both keep the normalized dims as 1s.
        let mut kept = shape[..a].to_vec();
        kept.extend(std::iter::repeat_n(1, shape.len() - a));
        let names = [n.output.get(1).cloned().unwrap_or_default(), n.output.get(2).cloned().unwrap_or_default()];
        for (v, out) in [mean, inv].into_iter().zip(names) {
            let r = reshape(im, v, &kept, if out.is_empty() { name } else { &out })?;
            outs.push(Val::Ir { r, elem });
        }
    }
    Ok(outs)
}

/// LayerNormalization's Mean and InvStdDev outputs over the last dim of `x`
/// (the IR layernorm's own steps: `mean = sum / n`, `var = sum((x - mean)^2) / n`,
/// `1 / sqrt(var + eps)`), kept as a size-1 last dim.
fn layer_stats(im: &mut Importer, x: Ref, eps: f64, name: &str) -> Result<(Ref, Ref), String> {
    let last = im.ty(x).shape.len() as u64 - 1;
    let n = im.ty(x).shape[last as usize] as f64;
    let sum_attrs = [("axes", ints(&[last])), ("keepdims", Attr::Bool(true))];
    let sum = im.push(&format!("{name}__sum"), "reduce_sum", &[POperand::Value(x)], &sum_attrs, None)?;
    let mean = im.push(&format!("{name}__mean"), "div", &[POperand::Value(sum), POperand::Scalar(n)], &[], None)?;
    let d = im.push(&format!("{name}__d"), "sub", &[POperand::Value(x), POperand::Value(mean)], &[], None)?;
    let sq = im.push(&format!("{name}__sq"), "mul", &[POperand::Value(d), POperand::Value(d)], &[], None)?;
    let ssum = im.push(&format!("{name}__ssum"), "reduce_sum", &[POperand::Value(sq)], &sum_attrs, None)?;
    let var = im.push(&format!("{name}__var"), "div", &[POperand::Value(ssum), POperand::Scalar(n)], &[], None)?;
    let shifted =
        im.push(&format!("{name}__veps"), "add", &[POperand::Value(var), POperand::Scalar(eps)], &[], None)?;
    let inv = im.push(&format!("{name}__inv"), "rsqrt", &[POperand::Value(shifted)], &[], None)?;
    Ok((mean, inv))
}

fn gather(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (table, elem) = im.ir(input(n, 0)?)?;
    let shape = im.ty(table).shape.clone();
    let a = axis(attr_int(n, "axis", 0), shape.len())?;
    let dim = shape[a] as i64;
    if let Some(idx) = host_input(im, n, 1)?.cloned() {
        let rows: Vec<i64> = idx.as_ints().iter().map(|&i| if i < 0 { i + dim } else { i }).collect();
        if let Some(bad) = idx.as_ints().iter().zip(&rows).find(|(_, &r)| !(0..dim).contains(&r)) {
            return Err(format!("index {} is out of range for dim {a} of size {dim}", bad.0));
        }
        // Consecutive rows are a slice (a scalar index also drops the dim).
        if !rows.is_empty() && rows.windows(2).all(|w| w[1] == w[0] + 1) {
            let mut first = vec![0i64; shape.len()];
            first[a] = rows[0];
            let mut len = shape.clone();
            len[a] = rows.len() as u64;
            let mut out: Vec<u64> = shape[..a].to_vec();
            out.extend(&idx.shape);
            out.extend(&shape[a + 1..]);
            let s = slice(im, table, &first, &len, &format!("{name}__rows"))?;
            return Ok(vec![Val::Ir { r: reshape(im, s, &out, name)?, elem }]);
        }
        let fixed = HostTensor::new(INT32, idx.shape.clone(), rows.iter().map(|&r| r as f64).collect());
        let i = im.materialize(&format!("{}__rows", n.input[1]), &fixed)?;
        return Ok(vec![Val::Ir { r: gather_rows(im, table, i, a, name)?, elem }]);
    }
    // Negative indices count from the end (ONNX): `i < 0 ? i + dim : i`.
    let (idx, _) = im.ir(input(n, 1)?)?;
    let v = POperand::Value;
    let lt = [("kind", Attr::Word("lt".into()))];
    let neg = im.push(&format!("{name}__neg"), "compare", &[v(idx), POperand::Scalar(0.0)], &lt, None)?;
    let wrapped = im.push(&format!("{name}__wrap"), "add", &[v(idx), POperand::Scalar(dim as f64)], &[], None)?;
    let idx = im.push(&format!("{name}__idx"), "select", &[v(neg), v(wrapped), v(idx)], &[], None)?;
    Ok(vec![Val::Ir { r: gather_rows(im, table, idx, a, name)?, elem }])
}

/// A Slice with negative steps: along each such dim, a gather of the
/// elements it selects (known indices, a weight); positive steps as usual.
fn reversed_slice(
    im: &mut Importer,
    x: Ref,
    elem: i32,
    (first, step, len): (&[i64], &[i64], &[u64]),
    name: &str,
) -> Result<Vec<Val>, String> {
    let mut r = x;
    for a in 0..first.len() {
        let (f, k, l) = (first[a], step[a], len[a]);
        if k == 1 && f == 0 && l == im.ty(r).shape[a] {
            continue;
        }
        let rows: Vec<f64> = (0..l as i64).map(|i| (f + i * k) as f64).collect();
        let idx = HostTensor::new(INT32, vec![l], rows);
        let i = im.materialize(&format!("{name}__idx{a}"), &idx)?;
        r = gather_rows(im, r, i, a, &format!("{name}__g{a}"))?;
    }
    Ok(vec![Val::Ir { r, elem }])
}

/// `%name = gather(table, idx) {axis = a}`.
fn gather_rows(im: &mut Importer, table: Ref, idx: Ref, a: usize, name: &str) -> Result<Ref, String> {
    let operands = [POperand::Value(table), POperand::Value(idx)];
    im.push(name, "gather", &operands, &[("axis", Attr::Int(a as i64))], None)
}

fn expand(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (x, elem) = im.ir(input(n, 0)?)?;
    let spec: Vec<u64> =
        known_ints(im, n, 1, "shape")?.ok_or("no shape input")?.iter().map(|&d| d.max(0) as u64).collect();
    let ty = im.ty(x).clone();
    let shape =
        host::broadcast(&ty.shape, &spec).ok_or_else(|| format!("{:?} does not expand to {spec:?}", ty.shape))?;
    if shape == ty.shape {
        return Ok(vec![Val::Ir { r: x, elem }]);
    }
    // x * 1 (floats) or x + 0 (integers) against a splat of the target shape.
    let (op, unit) = if ty.dtype.is_float() { ("mul", 1.0) } else { ("add", 0.0) };
    if elem == BOOL {
        return Err("an Expand of booleans computed at run time is not supported".into());
    }
    let splat_ty = TensorType::new(ty.dtype, shape);
    let splat = im.push(&format!("{name}__ones"), "const", &[], &[("value", Attr::Float(unit))], Some(&splat_ty))?;
    Ok(vec![Val::Ir { r: im.push(name, op, &[POperand::Value(x), POperand::Value(splat)], &[], None)?, elem }])
}

fn reduce(im: &mut Importer, n: &NodeProto, name: &str, op: &str) -> Result<Vec<Val>, String> {
    let (x, elem) = im.ir(input(n, 0)?)?;
    let shape = im.ty(x).shape.clone();
    let (axes, keep) = reduce_axes(im, n, shape.len())?;
    if axes.is_empty() {
        return Ok(vec![Val::Ir { r: x, elem }]);
    }
    let irop = if op == "ReduceMax" { "reduce_max" } else { "reduce_sum" };
    if irop == "reduce_max" && im.ty(x).dtype == crate::ir::ScalarType::I1 {
        // Any true: the max of 0/1 in i32, then nonzero.
        let to = |t: &str| [("to", Attr::Word(t.into()))];
        let wide = im.push(&format!("{name}__i32"), "cast", &[POperand::Value(x)], &to("i32"), None)?;
        let list: Vec<u64> = axes.iter().map(|&a| a as u64).collect();
        let attrs = [("axes", ints(&list)), ("keepdims", Attr::Bool(keep))];
        let m = im.push(&format!("{name}__max"), "reduce_max", &[POperand::Value(wide)], &attrs, None)?;
        let r = im.push(name, "cast", &[POperand::Value(m)], &to("i1"), None)?;
        return Ok(vec![Val::Ir { r, elem }]);
    }
    let list: Vec<u64> = axes.iter().map(|&a| a as u64).collect();
    let mean = op == "ReduceMean";
    let nm = if mean { format!("{name}__sum") } else { name.to_string() };
    let attrs = [("axes", ints(&list)), ("keepdims", Attr::Bool(keep))];
    let rank = shape.len();
    let mut r = if irop == "reduce_sum" && axes == [rank.saturating_sub(2)] && im.ty(x).dtype.is_float() && rank >= 2 {
        sum_on_pe(im, x, keep, &nm)?
    } else {
        im.push(&nm, irop, &[POperand::Value(x)], &attrs, None)?
    };
    if mean {
        let count: u64 = axes.iter().fold(1u64, |n, &a| n.saturating_mul(shape[a]));
        r = im.push(name, "div", &[POperand::Value(r), POperand::Scalar(count as f64)], &[], None)?;
    }
    Ok(vec![Val::Ir { r, elem }])
}

/// A float sum over the second-to-last dim as a matmul by a ones row: the PE
/// adds the products (each exact: 1 * x) in increasing order with f32 steps,
/// which is `reduce_sum`'s own order, and no transpose kernel is needed (the
/// row kernels reduce the last dim).
fn sum_on_pe(im: &mut Importer, x: Ref, keep: bool, name: &str) -> Result<Ref, String> {
    let shape = im.ty(x).shape.clone();
    let rank = shape.len();
    let mut ones_shape = shape[..rank - 2].to_vec();
    ones_shape.extend([1, shape[rank - 2]]);
    let ty = TensorType::new(im.ty(x).dtype, ones_shape);
    let ones = im.push(&format!("{name}__ones"), "const", &[], &[("value", Attr::Float(1.0))], Some(&ty))?;
    let summed = im.push(&format!("{name}__mm"), "matmul", &[POperand::Value(ones), POperand::Value(x)], &[], None)?;
    let mut out = shape[..rank - 2].to_vec();
    if keep {
        out.push(1);
    }
    out.push(shape[rank - 1]);
    im.push(name, "reshape", &[POperand::Value(summed)], &[("shape", ints(&out))], None)
}

/// Attention (opset 23): Q, K, V as `[B, H, S, D]`, or `[B, S, H * D]` with
/// `q_num_heads` / `kv_num_heads`; past keys and values concatenated in front
/// (the grown caches are outputs 1 and 2); a boolean mask (true takes part) or
/// an additive float mask, padded with -inf past its last key; `is_causal`
/// (query i sees keys up to i + the past length); `scale`. Without `softcap`
/// and `qk_matmul_output` this is the IR's fused attention; with them it is
/// written out ([`attention_written_out`]).
fn attention(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (q, elem) = im.ir(input(n, 0)?)?;
    let three_d = im.ty(q).shape.len() == 3;
    let heads = |im: &mut Importer, i: usize, attr: &str| -> Result<Ref, String> {
        let (x, _) = im.ir(input(n, i)?)?;
        let shape = im.ty(x).shape.clone();
        match shape[..] {
            [_, _, _, _] => Ok(x),
            [b, s, hd] if three_d => {
                let h = u64::try_from(attr_int(n, attr, 0)).ok().filter(|&h| h > 0 && hd % h == 0);
                let h = h.ok_or_else(|| format!("3-D inputs need `{attr}` dividing {hd}"))?;
                let split = reshape(im, x, &[b, s, h, hd / h], &format!("{name}__{i}h"))?;
                im.push(
                    &format!("{name}__{i}t"),
                    "transpose",
                    &[POperand::Value(split)],
                    &[("perm", ints(&[0, 2, 1, 3]))],
                    None,
                )
            }
            _ => Err(format!("input {i} of shape {shape:?}: Q, K and V are all 3-D or all 4-D")),
        }
    };
    let (qh, mut kh, mut vh) =
        (heads(im, 0, "q_num_heads")?, heads(im, 1, "kv_num_heads")?, heads(im, 2, "kv_num_heads")?);
    let mut past = 0;
    let mut outs = vec![];
    for (i, x) in [(4, &mut kh), (5, &mut vh)] {
        if let Some(p) = n.input.get(i).filter(|s| !s.is_empty()) {
            let (p, _) = im.ir(p)?;
            past = im.ty(p).shape[2];
            let out =
                n.output.get(i - 3).cloned().filter(|o| !o.is_empty()).unwrap_or_else(|| format!("{name}__present{i}"));
            *x =
                im.push(&out, "concat", &[POperand::Value(p), POperand::Value(*x)], &[("axis", Attr::Int(2))], None)?;
        }
        outs.push(Val::Ir { r: *x, elem });
    }
    let (sq, sk, d) = (im.ty(qh).shape[2], im.ty(kh).shape[2], im.ty(qh).shape[3]);
    let causal = attr_int(n, "is_causal", 0) != 0;
    // The IR's causal lets query i see keys up to i + sk - sq: ONNX's when that is the past length.
    let ir_causal = causal && sk == sq + past;
    let bias = attention_bias(im, n, elem, (sq, sk), causal && !ir_causal, past, name)?;
    let scale = match attr_float(n, "scale", 0.0) {
        0.0 => 1.0 / (d as f64).sqrt(),
        s => s as f64,
    };
    let softcap = attr_float(n, "softcap", 0.0) as f64;
    let qk_out = n.output.get(3).filter(|o| !o.is_empty()).cloned();
    let (y, qk) = if softcap == 0.0 && qk_out.is_none() {
        let mut operands = vec![POperand::Value(qh), POperand::Value(kh), POperand::Value(vh)];
        operands.extend(bias.map(POperand::Value));
        let attrs = [("causal", Attr::Bool(ir_causal)), ("scale", Attr::Float(scale))];
        let y_name = if three_d { format!("{name}__y") } else { name.to_string() };
        (im.push(&y_name, "attention", &operands, &attrs, None)?, None)
    } else {
        let mode = attr_int(n, "qk_matmul_output_mode", 0);
        let bias = match (ir_causal, bias) {
            (true, b) => attention_bias_with_causal(im, elem, (sq, sk), past, b, name)?,
            (false, b) => b,
        };
        let (y, qk) = attention_written_out(im, (qh, kh, vh), bias, (scale, softcap, mode), name)?;
        (y, Some(qk))
    };
    let y = if three_d {
        let shape = im.ty(y).shape.clone();
        let merged =
            im.push(&format!("{name}__m"), "transpose", &[POperand::Value(y)], &[("perm", ints(&[0, 2, 1, 3]))], None)?;
        reshape(im, merged, &[shape[0], shape[2], shape[1] * shape[3]], name)?
    } else if qk.is_some() {
        // The written-out result takes the node's name.
        let shape = im.ty(y).shape.clone();
        im.push(name, "reshape", &[POperand::Value(y)], &[("shape", ints(&shape))], None)?
    } else {
        y
    };
    let mut all = vec![Val::Ir { r: y, elem }];
    all.extend(outs);
    if let (Some(qk), Some(out)) = (qk, qk_out) {
        let shape = im.ty(qk).shape.clone();
        all.push(Val::Ir {
            r: im.push(&out, "reshape", &[POperand::Value(qk)], &[("shape", ints(&shape))], None)?,
            elem,
        });
    }
    Ok(all)
}

/// The additive bias of an Attention: its mask (booleans as 0 / -inf, padded
/// with -inf past its last key) plus, with `causal`, the explicit causal mask.
fn attention_bias(
    im: &mut Importer,
    n: &NodeProto,
    elem: i32,
    (sq, sk): (u64, u64),
    causal: bool,
    past: u64,
    name: &str,
) -> Result<Option<Ref>, String> {
    let mut mask = match n.input.get(3).filter(|s| !s.is_empty()) {
        None => None,
        Some(m) => {
            let (mask, mask_elem) = im.ir(m)?;
            let mut m = if mask_elem == BOOL { additive(im, mask, elem, &format!("{name}__mask"))? } else { mask };
            let shape = im.ty(m).shape.clone();
            let last = *shape.last().unwrap_or(&sk);
            if last < sk {
                let mut pad = shape.clone();
                *pad.last_mut().expect("a mask has dims") = sk - last;
                let ty = TensorType::new(im.ty(m).dtype, pad);
                let inf = im.push(
                    &format!("{name}__pad"),
                    "const",
                    &[],
                    &[("value", Attr::Float(f64::NEG_INFINITY))],
                    Some(&ty),
                )?;
                let axis = ("axis", Attr::Int(shape.len() as i64 - 1));
                m = im.push(
                    &format!("{name}__padded"),
                    "concat",
                    &[POperand::Value(m), POperand::Value(inf)],
                    &[axis],
                    None,
                )?;
            }
            Some(m)
        }
    };
    if causal {
        mask = attention_bias_with_causal(im, elem, (sq, sk), past, mask, name)?;
    }
    // nonpad_kv_seqlen (opset 24): batch b sees its first `len[b]` keys.
    if let Some(lens) = n.input.get(6).filter(|s| !s.is_empty()) {
        let (lens, _) = im.ir(lens)?;
        let batch = im.ty(lens).shape.first().copied().unwrap_or(1);
        let l4 = reshape(im, lens, &[batch, 1, 1, 1], &format!("{name}__lens"))?;
        let ty = TensorType::new(crate::ir::ScalarType::I32, vec![batch, 1, 1, sk]);
        let key = im.push(&format!("{name}__key"), "iota", &[], &[("axis", Attr::Int(3))], Some(&ty))?;
        let lt = [("kind", Attr::Word("lt".into()))];
        let keep =
            im.push(&format!("{name}__nonpad"), "compare", &[POperand::Value(key), POperand::Value(l4)], &lt, None)?;
        let pad = additive(im, keep, elem, &format!("{name}__padmask"))?;
        mask = Some(match mask {
            Some(m) => {
                im.push(&format!("{name}__allmasks"), "add", &[POperand::Value(m), POperand::Value(pad)], &[], None)?
            }
            None => pad,
        });
    }
    Ok(mask)
}

/// `mask` plus the causal mask `[sq, sk]`: query i sees keys `j <= i + past`.
fn attention_bias_with_causal(
    im: &mut Importer,
    elem: i32,
    (sq, sk): (u64, u64),
    past: u64,
    mask: Option<Ref>,
    name: &str,
) -> Result<Option<Ref>, String> {
    let ty = TensorType::new(crate::ir::ScalarType::I32, vec![sq, sk]);
    let row = im.push(&format!("{name}__row"), "iota", &[], &[("axis", Attr::Int(0))], Some(&ty))?;
    let col = im.push(&format!("{name}__col"), "iota", &[], &[("axis", Attr::Int(1))], Some(&ty))?;
    let limit =
        im.push(&format!("{name}__limit"), "add", &[POperand::Value(row), POperand::Scalar(past as f64)], &[], None)?;
    let le = [("kind", Attr::Word("le".into()))];
    let keep =
        im.push(&format!("{name}__causal"), "compare", &[POperand::Value(col), POperand::Value(limit)], &le, None)?;
    let c = additive(im, keep, elem, &format!("{name}__cmask"))?;
    Ok(Some(match mask {
        Some(m) => im.push(&format!("{name}__masks"), "add", &[POperand::Value(m), POperand::Value(c)], &[], None)?,
        None => c,
    }))
}

/// Attention written out (ONNX's reference order): `s = Q K^T * scale`, then
/// `softcap * tanh(s / softcap)`, plus the bias, softmax, times V; grouped KV
/// heads by a 5-D view. Returns Y and the `qk_matmul_output` of `mode` (0 and 1:
/// the scores after the softcap, 2: after the bias, 3: the probabilities).
fn attention_written_out(
    im: &mut Importer,
    (q, k, v): (Ref, Ref, Ref),
    bias: Option<Ref>,
    (scale, softcap, mode): (f64, f64, i64),
    name: &str,
) -> Result<(Ref, Ref), String> {
    let (qs, vs) = (im.ty(q).shape.clone(), im.ty(v).shape.clone());
    let (b, hq, sq, d, hk, sk, dv) = (qs[0], qs[1], qs[2], qs[3], vs[1], vs[2], vs[3]);
    if hk == 0 || hq % hk != 0 {
        return Err(format!("{hq} query heads over {hk} key/value heads"));
    }
    let g = hq / hk;
    let val = POperand::Value;
    let q5 = reshape(im, q, &[b, hk, g, sq, d], &format!("{name}__q5"))?;
    let k5 = reshape(im, k, &[b, hk, 1, sk, d], &format!("{name}__k5"))?;
    let wide = TensorType::new(crate::ir::ScalarType::F32, vec![b, hk, g, sq, sk]);
    let tb = [("transpose_b", Attr::Bool(true))];
    let s5 = im.push(&format!("{name}__qk"), "matmul", &[val(q5), val(k5)], &tb, Some(&wide))?;
    let s = reshape(im, s5, &[b, hq, sq, sk], &format!("{name}__qk4"))?;
    let mut s = im.push(&format!("{name}__scaled"), "mul", &[val(s), POperand::Scalar(scale)], &[], None)?;
    if softcap > 0.0 {
        let t = im.push(&format!("{name}__capin"), "div", &[val(s), POperand::Scalar(softcap)], &[], None)?;
        let t = im.push(&format!("{name}__tanh"), "tanh", &[val(t)], &[], None)?;
        s = im.push(&format!("{name}__capped"), "mul", &[val(t), POperand::Scalar(softcap)], &[], None)?;
    }
    let capped = s;
    let biased = match bias {
        Some(m) => {
            let m = im.widened(val(m), &format!("{name}__bias"))?;
            im.push(&format!("{name}__biased"), "add", &[val(s), m], &[], None)?
        }
        None => s,
    };
    let p = im.push(&format!("{name}__p"), "softmax", &[val(biased)], &[("axis", Attr::Int(-1))], None)?;
    let storage = im.ty(v).dtype;
    let pv = if storage == im.ty(p).dtype {
        p
    } else {
        im.push(&format!("{name}__pv"), "cast", &[val(p)], &[("to", Attr::Word(storage.name().into()))], None)?
    };
    let p5 = reshape(im, pv, &[b, hk, g, sq, sk], &format!("{name}__p5"))?;
    let v5 = reshape(im, v, &[b, hk, 1, sk, dv], &format!("{name}__v5"))?;
    let y5 = im.push(&format!("{name}__y5"), "matmul", &[val(p5), val(v5)], &[], None)?;
    let y = reshape(im, y5, &[b, hq, sq, dv], &format!("{name}__y"))?;
    let qk = match mode {
        2 => biased,
        3 => p,
        _ => capped,
    };
    Ok((y, qk))
}

/// A boolean mask (true takes part) as an additive one: 0 or -inf.
fn additive(im: &mut Importer, keep: Ref, elem: i32, name: &str) -> Result<Ref, String> {
    let ty = TensorType::new(im.ir_dtype(elem)?, im.ty(keep).shape.clone());
    let zeros = im.push(&format!("{name}__zero"), "const", &[], &[("value", Attr::Float(0.0))], Some(&ty))?;
    let ops = [POperand::Value(keep), POperand::Value(zeros), POperand::Scalar(f64::NEG_INFINITY)];
    im.push(name, "select", &ops, &[], None)
}

/// Trilu: elements with `col - row >= k` kept (upper) or `col - row <= k`
/// (lower), the rest zero, over the last two dims.
fn trilu(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let (x, elem) = im.ir(input(n, 0)?)?;
    let shape = im.ty(x).shape.clone();
    if shape.len() < 2 {
        return Err(format!("Trilu needs at least 2 dims, not {shape:?}"));
    }
    let k = known_ints(im, n, 1, "k")?.and_then(|k| k.first().copied()).unwrap_or(0);
    let ty = TensorType::new(crate::ir::ScalarType::I32, shape[shape.len() - 2..].to_vec());
    let row = im.push(&format!("{name}__row"), "iota", &[], &[("axis", Attr::Int(0))], Some(&ty))?;
    let col = im.push(&format!("{name}__col"), "iota", &[], &[("axis", Attr::Int(1))], Some(&ty))?;
    let shifted =
        im.push(&format!("{name}__diag"), "add", &[POperand::Value(row), POperand::Scalar(k as f64)], &[], None)?;
    let kind = if attr_int(n, "upper", 1) != 0 { "ge" } else { "le" };
    let keep = im.push(
        &format!("{name}__keep"),
        "compare",
        &[POperand::Value(col), POperand::Value(shifted)],
        &[("kind", Attr::Word(kind.into()))],
        None,
    )?;
    let r = im.push(name, "select", &[POperand::Value(keep), POperand::Value(x), POperand::Scalar(0.0)], &[], None)?;
    Ok(vec![Val::Ir { r, elem }])
}

/// RotaryEmbedding (opset 23), halves or interleaved: X as `[B, H, S, D]`, or
/// `[B, S, H * D]` with `num_heads`; the first `rotary_embedding_dim` (default
/// D) features rotate by the cos/sin caches (rows picked by `position_ids`, or
/// given per batch and position): `x1 cos - x2 sin`, `x2 cos + x1 sin`; the rest
/// pass through.
fn rotary(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let interleaved = attr_int(n, "interleaved", 0) != 0;
    let (x, elem) = im.ir(input(n, 0)?)?;
    let shape = im.ty(x).shape.clone();
    // Work in [B, S, H, D] (the op's own layout) and go back at the end.
    let x4 = match shape[..] {
        [_, _, _, _] => im.push(
            &format!("{name}__bshd"),
            "transpose",
            &[POperand::Value(x)],
            &[("perm", ints(&[0, 2, 1, 3]))],
            None,
        )?,
        [b, s, hd] => {
            let h = u64::try_from(attr_int(n, "num_heads", 0)).ok().filter(|&h| h > 0 && hd % h == 0);
            let h = h.ok_or_else(|| format!("3-D input needs `num_heads` dividing {hd}"))?;
            reshape(im, x, &[b, s, h, hd / h], &format!("{name}__bshd"))?
        }
        _ => return Err(format!("input of shape {shape:?}: 3-D or 4-D")),
    };
    let [b, s, h, d] = im.ty(x4).shape[..] else { return Err("rank".into()) };
    let rd = match attr_int(n, "rotary_embedding_dim", 0) {
        0 => d,
        r => u64::try_from(r)
            .ok()
            .filter(|&r| r <= d && r % 2 == 0)
            .ok_or(format!("rotary_embedding_dim {r} for head size {d}"))?,
    };
    let half = rd / 2;
    // cos/sin as [B, S, 1, rd/2].
    let cache = |im: &mut Importer, i: usize| -> Result<Ref, String> {
        let (c, _) = im.ir(input(n, i)?)?;
        let rows = match n.input.get(3).filter(|p| !p.is_empty()) {
            Some(p) => {
                let (ids, _) = im.ir(p)?;
                im.push(
                    &format!("{name}__rows{i}"),
                    "gather",
                    &[POperand::Value(c), POperand::Value(ids)],
                    &[("axis", Attr::Int(0))],
                    None,
                )?
            }
            None => c,
        };
        let rows = slice(im, rows, &[0, 0, 0], &[b, s, half], &format!("{name}__c{i}"))?;
        reshape(im, rows, &[b, s, 1, half], &format!("{name}__b{i}"))
    };
    let (cos, sin) = (cache(im, 1)?, cache(im, 2)?);
    let part = |im: &mut Importer, from: u64, len: u64, tag: &str| {
        slice(im, x4, &[0, 0, 0, from as i64], &[b, s, h, len], &format!("{name}__{tag}"))
    };
    // Halves, or with `interleaved` the even and odd features.
    let (x1, x2) = if interleaved {
        (
            strided_slice(im, x4, 3, (0, 2, half), &format!("{name}__x1"))?,
            strided_slice(im, x4, 3, (1, 2, half), &format!("{name}__x2"))?,
        )
    } else {
        (part(im, 0, half, "x1")?, part(im, half, half, "x2")?)
    };
    let v = POperand::Value;
    let mul = |im: &mut Importer, a: Ref, c: Ref, tag: &str| {
        im.push(&format!("{name}__{tag}"), "mul", &[v(a), v(c)], &[], None)
    };
    let (x1c, x2s, x2c, x1s) =
        (mul(im, x1, cos, "x1c")?, mul(im, x2, sin, "x2s")?, mul(im, x2, cos, "x2c")?, mul(im, x1, sin, "x1s")?);
    let o1 = im.push(&format!("{name}__o1"), "sub", &[v(x1c), v(x2s)], &[], None)?;
    let o2 = im.push(&format!("{name}__o2"), "add", &[v(x2c), v(x1s)], &[], None)?;
    let mut parts = if interleaved {
        // Back to even/odd order: [.., half, 2] flattened.
        let pair =
            |im: &mut Importer, o: Ref, tag: &str| reshape(im, o, &[b, s, h, half, 1], &format!("{name}__{tag}"));
        let (p1, p2) = (pair(im, o1, "p1")?, pair(im, o2, "p2")?);
        let z = im.push(&format!("{name}__zip"), "concat", &[v(p1), v(p2)], &[("axis", Attr::Int(4))], None)?;
        vec![v(reshape(im, z, &[b, s, h, rd], &format!("{name}__zipped"))?)]
    } else {
        vec![v(o1), v(o2)]
    };
    if rd < d {
        parts.push(v(part(im, rd, d - rd, "pass")?));
    }
    let joined = im.push(&format!("{name}__rot"), "concat", &parts, &[("axis", Attr::Int(3))], None)?;
    let r = match shape[..] {
        [_, _, _, _] => im.push(name, "transpose", &[v(joined)], &[("perm", ints(&[0, 2, 1, 3]))], None)?,
        _ => reshape(im, joined, &shape, name)?,
    };
    Ok(vec![Val::Ir { r, elem }])
}
