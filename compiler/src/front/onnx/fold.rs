//! Folding: a node whose inputs are all known at import time (or that reads
//! only a shape) is evaluated on the host with its ONNX semantics, so shape
//! arithmetic, constant masks and dequantized weights never reach the chip.
//! Also the attribute readers every converter shares.

use super::host::{self, product, HostTensor};
use super::import::{Importer, Val};
use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::DataType;
use super::proto::{AttributeProto, NodeProto};

const INT64: i32 = DataType::Int64 as i32;
const BOOL: i32 = DataType::Bool as i32;
const FLOAT: i32 = DataType::Float as i32;

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

/// Integer attribute `name`, or `default`.
pub fn attr_int(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).and_then(|a| a.i).unwrap_or(default)
}

/// Float attribute `name`, or `default`.
pub fn attr_float(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).and_then(|a| a.f).unwrap_or(default)
}

/// Integer list attribute `name`, if given.
pub fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

/// String attribute `name`, or `default`.
pub fn attr_str(n: &NodeProto, name: &str, default: &str) -> String {
    attr(n, name).and_then(|a| a.s.as_ref()).map_or(default.into(), |s| String::from_utf8_lossy(s).into_owned())
}

/// Tensor attribute `name`, if given.
pub fn attr_tensor(n: &NodeProto, name: &str) -> Result<Option<HostTensor>, String> {
    attr(n, name).and_then(|a| a.t.as_ref()).map(HostTensor::from_proto).transpose()
}

/// `axis` (negative counts from the end) as an index into `rank` dims.
pub fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let k = if a < 0 { a + r } else { a };
    if (0..r).contains(&k) {
        Ok(k as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

/// Input `i` of `n` as a host value, if it is one (`None` when absent or runtime).
pub fn host_input<'a>(im: &'a Importer, n: &NodeProto, i: usize) -> Result<Option<&'a HostTensor>, String> {
    match n.input.get(i).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(name) => match im.val(name)? {
            Val::Host(h) => Ok(Some(h)),
            Val::Ir { .. } => Ok(None),
        },
    }
}

/// Input `i` as known integers (shape arguments must be known at import time).
pub fn known_ints(im: &Importer, n: &NodeProto, i: usize, what: &str) -> Result<Option<Vec<i64>>, String> {
    match n.input.get(i).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(name) => match im.val(name)? {
            Val::Host(h) => Ok(Some(h.as_ints())),
            Val::Ir { .. } => {
                Err(format!("its {what} (`{name}`) is computed at run time; it must be known at import time"))
            }
        },
    }
}

/// The output shape of `Reshape` of `from` to `spec` (0 copies a dim unless
/// `allowzero`, one -1 is inferred).
pub fn reshape_shape(from: &[u64], spec: &[i64], allowzero: bool) -> Result<Vec<u64>, String> {
    let total: u64 = product(from);
    let mut out = Vec::new();
    let mut infer_at = None;
    for (k, &d) in spec.iter().enumerate() {
        out.push(match d {
            0 if !allowzero => {
                *from.get(k).ok_or_else(|| format!("shape {spec:?} copies dim {k}, which {from:?} lacks"))?
            }
            -1 if infer_at.is_none() => {
                infer_at = Some(k);
                1
            }
            d if d >= 0 => d as u64,
            _ => return Err(format!("shape {spec:?} is not a valid reshape target")),
        });
    }
    let known: u64 = product(&out);
    if total == u64::MAX || known == u64::MAX {
        return Err(format!("reshape of {from:?} to {spec:?}: too many elements"));
    }
    if let Some(k) = infer_at {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {from:?} to {spec:?}"));
        }
        out[k] = total / known;
    }
    if product(&out) != total {
        return Err(format!("cannot reshape {from:?} ({total} elements) to {spec:?}"));
    }
    Ok(out)
}

/// ONNX `Slice` bounds along one dim of size `d`: (first index, step, length).
pub fn slice_bounds(d: u64, start: i64, end: i64, step: i64) -> Result<(i64, i64, u64), String> {
    if step == 0 {
        return Err("a slice step of 0".into());
    }
    let d = d as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = if step > 0 {
        (norm(start).clamp(0, d), norm(end).clamp(0, d))
    } else {
        (norm(start).clamp(-1, d - 1), norm(end).clamp(-1, d - 1))
    };
    let len = if step > 0 { (e - s + step - 1).max(0) / step } else { (s - e - step - 1).max(0) / -step };
    Ok((s, step, len as u64))
}

/// A slice per dim: first index, step, length.
pub type SliceSpec = (Vec<i64>, Vec<i64>, Vec<u64>);

/// Per-dim slice of a tensor of `shape` from a `Slice` node's inputs.
pub fn slice_spec(im: &Importer, n: &NodeProto, shape: &[u64]) -> Result<SliceSpec, String> {
    let starts = known_ints(im, n, 1, "starts")?.unwrap_or_default();
    let ends = known_ints(im, n, 2, "ends")?.unwrap_or_default();
    if starts.len() != ends.len() {
        return Err(format!("{} starts and {} ends", starts.len(), ends.len()));
    }
    let axes = known_ints(im, n, 3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = known_ints(im, n, 4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    let (mut first, mut step, mut len): (Vec<i64>, Vec<i64>, Vec<u64>) =
        (vec![0; shape.len()], vec![1; shape.len()], shape.to_vec());
    for k in 0..starts.len() {
        let a = axis(*axes.get(k).ok_or("fewer axes than starts")?, shape.len())?;
        let (s, st, l) = slice_bounds(shape[a], starts[k], ends[k], *steps.get(k).ok_or("fewer steps than starts")?)?;
        (first[a], step[a], len[a]) = (s, st, l);
    }
    Ok((first, step, len))
}

/// Folds `n` when it can be: `Ok(None)` leaves it to the converter.
pub fn fold(im: &Importer, n: &NodeProto) -> Result<Option<Vec<HostTensor>>, String> {
    let op = n.op_type.as_deref().unwrap_or("");
    // Ops that read only shapes or attributes.
    match op {
        "Constant" => return constant(n).map(|t| Some(vec![t])),
        "Shape" => {
            let shape = im.shape_of(im.val(n.input.first().ok_or("no input")?)?);
            let r = shape.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (clampi(attr_int(n, "start", 0)), clampi(attr_int(n, "end", r)));
            let dims: Vec<i64> = shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
            return Ok(Some(vec![HostTensor::ints(&dims)]));
        }
        "Size" => {
            let shape = im.shape_of(im.val(n.input.first().ok_or("no input")?)?);
            let t = HostTensor::new(INT64, vec![], vec![product(&shape) as f64]);
            return Ok(Some(vec![t]));
        }
        _ => {}
    }
    let mut ins: Vec<Option<&HostTensor>> = Vec::new();
    for i in 0..n.input.len() {
        let present = !n.input[i].is_empty();
        match host_input(im, n, i)? {
            Some(h) => ins.push(Some(h)),
            None if present => return Ok(None),
            None => ins.push(None),
        }
    }
    if ins.is_empty() || !(FOLDS.contains(&op) || unary(op, 0.0).is_some() && ins.len() == 1) {
        return Ok(None);
    }
    fold_known(im, n, op, &ins).map(Some)
}

pub(super) fn constant(n: &NodeProto) -> Result<HostTensor, String> {
    if let Some(t) = attr_tensor(n, "value")? {
        return Ok(t);
    }
    let a = n.attribute.first().ok_or("a Constant without a value")?;
    let is = |t: AttributeType| a.r#type == Some(t as i32);
    match a.name.as_deref().unwrap_or("") {
        "value_float" if is(AttributeType::Float) => {
            Ok(HostTensor::new(FLOAT, vec![], vec![a.f.unwrap_or(0.0) as f64]))
        }
        "value_floats" => {
            Ok(HostTensor::new(FLOAT, vec![a.floats.len() as u64], a.floats.iter().map(|&v| v as f64).collect()))
        }
        "value_int" => Ok(HostTensor::new(INT64, vec![], vec![a.i.unwrap_or(0) as f64])),
        "value_ints" => Ok(HostTensor::ints(&a.ints)),
        other => Err(format!("a Constant's `{other}` attribute is not supported")),
    }
}

/// The one element of `t` (`what` names it in the error).
fn scalar(t: &HostTensor, what: &str) -> Result<f64, String> {
    match t.data[..] {
        [v] => Ok(v),
        _ => Err(format!("{what} must hold one element, not {}", t.data.len())),
    }
}

/// Ops evaluated on the host when their inputs are known (besides [`unary`]'s).
const FOLDS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Max",
    "Min",
    "Where",
    "Clip",
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Flatten",
    "Concat",
    "Gather",
    "Slice",
    "Transpose",
    "Expand",
    "ConstantOfShape",
    "Range",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "Split",
    "Trilu",
];

fn binary(op: &str, a: f64, b: f64, float: bool) -> f64 {
    match op {
        "Add" => a + b,
        "Sub" => a - b,
        "Mul" => a * b,
        "Div" if float => a / b,
        // Integer division truncates (onnxruntime); by zero gives 0 rather than trapping.
        "Div" => {
            if b == 0.0 {
                0.0
            } else {
                (a / b).trunc()
            }
        }
        "Pow" => a.powf(b),
        "Max" => a.max(b),
        "Min" => a.min(b),
        "Equal" => (a == b) as u8 as f64,
        "Less" => (a < b) as u8 as f64,
        "LessOrEqual" => (a <= b) as u8 as f64,
        "Greater" => (a > b) as u8 as f64,
        "GreaterOrEqual" => (a >= b) as u8 as f64,
        "And" => ((a != 0.0) && (b != 0.0)) as u8 as f64,
        "Or" => ((a != 0.0) || (b != 0.0)) as u8 as f64,
        "Xor" => ((a != 0.0) != (b != 0.0)) as u8 as f64,
        _ => f64::NAN,
    }
}

fn unary(op: &str, x: f64) -> Option<f64> {
    Some(match op {
        "Neg" => -x,
        "Abs" => x.abs(),
        "Sqrt" => x.sqrt(),
        "Reciprocal" => 1.0 / x,
        "Exp" => x.exp(),
        "Log" => x.ln(),
        "Floor" => x.floor(),
        "Ceil" => x.ceil(),
        "Relu" => x.max(0.0),
        "Not" => (x == 0.0) as u8 as f64,
        "IsNaN" => x.is_nan() as u8 as f64,
        "Identity" => x,
        _ => return None,
    })
}

fn fold_known(im: &Importer, n: &NodeProto, op: &str, ins: &[Option<&HostTensor>]) -> Result<Vec<HostTensor>, String> {
    let x = |i: usize| ins.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"));
    let one = |t: Result<HostTensor, String>| t.map(|t| vec![t]);
    match op {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" => {
            let (a, b) = (x(0)?, x(1)?);
            let float = host::is_float(a.elem);
            one(host::elementwise(&[a, b], a.elem, |v| binary(op, v[0], v[1], float)))
        }
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            one(host::elementwise(&[x(0)?, x(1)?], BOOL, |v| binary(op, v[0], v[1], true)))
        }
        "Max" | "Min" => {
            let mut acc = x(0)?.clone();
            for t in ins.iter().skip(1).flatten() {
                acc = host::elementwise(&[&acc, t], acc.elem, |v| binary(op, v[0], v[1], true))?;
            }
            Ok(vec![acc])
        }
        "Where" => {
            one(host::elementwise(&[x(0)?, x(1)?, x(2)?], x(1)?.elem, |v| if v[0] != 0.0 { v[1] } else { v[2] }))
        }
        "Clip" => {
            let bound = |i: usize, none: f64| match ins.get(i).copied().flatten() {
                None => Ok(none),
                Some(t) => scalar(t, "a Clip bound"),
            };
            let (lo, hi) = (bound(1, f64::NEG_INFINITY)?, bound(2, f64::INFINITY)?);
            let t = x(0)?;
            one(host::elementwise(&[t], t.elem, |v| v[0].max(lo).min(hi)))
        }
        "Cast" => {
            let to = attr_int(n, "to", 0) as i32;
            im.ir_dtype(to)?;
            let t = x(0)?;
            let (saturate, e4m3) = (attr_int(n, "saturate", 1) != 0, to == DataType::Float8e4m3fnuz as i32);
            if !saturate && (e4m3 || to == DataType::Float8e5m2fnuz as i32) {
                let data = t.data.iter().map(|&v| host::round_fnuz(v, e4m3, false)).collect();
                return Ok(vec![HostTensor { elem: to, shape: t.shape.clone(), data }]);
            }
            if to == DataType::Float8e8m0 as i32 && attr_str(n, "round_mode", "up") != "up" {
                return Err("a Cast to float8e8m0 rounds up only (round_mode = \"up\")".into());
            }
            Ok(vec![HostTensor::new(to, t.shape.clone(), t.data.clone())])
        }
        "Unsqueeze" | "Squeeze" | "Reshape" | "Flatten" => {
            let t = x(0)?;
            let shape = super::convert::reshaped(im, n, op, &t.shape)?;
            Ok(vec![HostTensor { shape, ..t.clone() }])
        }
        "Concat" => {
            let parts: Vec<&HostTensor> = ins.iter().flatten().copied().collect();
            let first = parts.first().ok_or("no inputs")?;
            let a = axis(attr_int(n, "axis", 0), first.shape.len())?;
            let agrees = |p: &&HostTensor| {
                p.shape.len() == first.shape.len() && (0..p.shape.len()).all(|k| k == a || p.shape[k] == first.shape[k])
            };
            if !parts.iter().all(agrees) {
                return Err(format!(
                    "inputs of shapes {:?} do not concatenate along axis {a}",
                    parts.iter().map(|p| &p.shape).collect::<Vec<_>>()
                ));
            }
            let outer: u64 = product(&first.shape[..a]);
            let mut shape = first.shape.clone();
            shape[a] = parts.iter().map(|p| p.shape.get(a).copied().unwrap_or(0)).sum();
            let mut data = Vec::new();
            for o in 0..outer as usize {
                for p in &parts {
                    let chunk = (p.data.len() as u64 / outer.max(1)) as usize;
                    data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
                }
            }
            host::elems(&shape)?;
            Ok(vec![HostTensor { elem: first.elem, shape, data }])
        }
        "Gather" => {
            let t = x(0)?;
            let a = axis(attr_int(n, "axis", 0), t.shape.len())?;
            one(host::gather(t, x(1)?, a))
        }
        "Slice" => {
            let t = x(0)?;
            let (first, step, len) = slice_spec(im, n, &t.shape)?;
            one(host::slice(t, &first, &step, &len))
        }
        "Transpose" => {
            let t = x(0)?;
            let perm = super::convert::perm(n, t.shape.len())?;
            Ok(vec![host::transpose(t, &perm)])
        }
        "Expand" => {
            let shape: Vec<u64> = x(1)?.as_ints().iter().map(|&d| d.max(0) as u64).collect();
            one(host::expand(x(0)?, &shape))
        }
        "ConstantOfShape" => {
            let shape: Vec<u64> = x(0)?.as_ints().iter().map(|&d| d.max(0) as u64).collect();
            let value = attr_tensor(n, "value")?.unwrap_or_else(|| HostTensor::new(FLOAT, vec![1], vec![0.0]));
            let count = host::elems(&shape)? as usize;
            Ok(vec![HostTensor::new(value.elem, shape, vec![value.data.first().copied().unwrap_or(0.0); count])])
        }
        "Range" => {
            let (s, l, d) = (scalar(x(0)?, "start")?, scalar(x(1)?, "limit")?, scalar(x(2)?, "delta")?);
            let count = ((l - s) / d).ceil().max(0.0);
            let count = host::elems(&[count as u64])?;
            let data = (0..count).map(|i| s + i as f64 * d).collect();
            Ok(vec![HostTensor::new(x(0)?.elem, vec![count], data)])
        }
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" => {
            let t = x(0)?;
            let (axes, keep) = super::convert::reduce_axes(im, n, t.shape.len())?;
            let (f, init): (fn(f64, f64) -> f64, f64) = match op {
                "ReduceMax" => (f64::max, f64::NEG_INFINITY),
                "ReduceMin" => (f64::min, f64::INFINITY),
                "ReduceProd" => (|a, b| a * b, 1.0),
                _ => (|a, b| a + b, 0.0),
            };
            let mut r = host::reduce(t, &axes, keep, f, init);
            if op == "ReduceMean" {
                let count: u64 = axes.iter().fold(1u64, |n, &a| n.saturating_mul(t.shape[a]));
                r = HostTensor::new(r.elem, r.shape.clone(), r.data.iter().map(|v| v / count.max(1) as f64).collect());
            }
            Ok(vec![r])
        }
        "Trilu" => {
            let t = x(0)?;
            let r = t.shape.len();
            if r < 2 {
                return Err(format!("Trilu needs at least 2 dims, not {:?}", t.shape));
            }
            let k = ins.get(1).copied().flatten().map_or(Ok(0.0), |k| scalar(k, "k"))? as i64;
            let (rows, cols) = (t.shape[r - 2], t.shape[r - 1]);
            let upper = attr_int(n, "upper", 1) != 0;
            let data = t
                .data
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let (row, col) = ((i as u64 / cols % rows) as i64, (i as u64 % cols) as i64);
                    let keep = if upper { col - row >= k } else { col - row <= k };
                    if keep {
                        v
                    } else {
                        0.0
                    }
                })
                .collect();
            Ok(vec![HostTensor { data, ..t.clone() }])
        }
        "Split" => {
            let t = x(0)?;
            let pieces = super::convert::split_sizes(im, n, &t.shape)?;
            let a = axis(attr_int(n, "axis", 0), t.shape.len())?;
            let mut at = 0i64;
            pieces
                .iter()
                .map(|&len| {
                    let mut first = vec![0i64; t.shape.len()];
                    first[a] = at;
                    at += len as i64;
                    let mut shape = t.shape.clone();
                    shape[a] = len;
                    host::slice(t, &first, &vec![1; t.shape.len()], &shape)
                })
                .collect()
        }
        _ => {
            let t = x(0)?;
            let elem = if matches!(op, "Not" | "IsNaN") { BOOL } else { t.elem };
            one(host::elementwise(&[t], elem, |v| unary(op, v[0]).unwrap_or(f64::NAN)))
        }
    }
}
