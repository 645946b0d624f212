//! Values the importer knows at import time: initializers, `Constant` nodes,
//! the shapes of runtime values, and everything computed from them alone
//! (shape arithmetic, masks built from constants, dequantized weights). This
//! module owns their representation and the host evaluation of the ops that
//! fold: integers exactly in i64, floats rounded to the ONNX dtype (f32, or
//! f64 for `double`) after every op, as onnxruntime computes them.

use super::proto::tensor_proto::DataType;
use super::proto::TensorProto;

/// Most elements a folded tensor may have (a constant subgraph larger than this
/// is refused rather than evaluated on the host).
pub const MAX_HOST_ELEMS: u64 = 1 << 24;

/// A tensor known at import time.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// ONNX element type (`TensorProto.DataType`).
    pub elem: i32,
    /// Dims, outermost first.
    pub shape: Vec<u64>,
    /// Elements in row-major order: integers and booleans exactly, floats
    /// rounded to `elem`.
    pub data: Vec<f64>,
}

/// True for the ONNX float element types.
pub fn is_float(elem: i32) -> bool {
    [
        DataType::Float,
        DataType::Float16,
        DataType::Double,
        DataType::Bfloat16,
        DataType::Float8e4m3fn,
        DataType::Float8e5m2,
        DataType::Float8e4m3fnuz,
        DataType::Float8e5m2fnuz,
        DataType::Float4e2m1,
        DataType::Float8e8m0,
    ]
    .iter()
    .any(|&d| d as i32 == elem)
}

/// The width and signedness of ONNX's sub-byte integer types (int4, uint4,
/// int2, uint2); `None` for other types.
pub fn narrow_int(elem: i32) -> Option<(u32, bool)> {
    match DataType::try_from(elem).ok()? {
        DataType::Int4 => Some((4, true)),
        DataType::Uint4 => Some((4, false)),
        DataType::Int2 => Some((2, true)),
        DataType::Uint2 => Some((2, false)),
        _ => None,
    }
}

/// `v` (an integer) wrapped into a `bits`-wide integer, as a cast to it does.
pub fn wrap_int(v: f64, bits: u32, signed: bool) -> f64 {
    let m = 1i64 << bits;
    let lo = if signed { -(m / 2) } else { 0 };
    ((v as i64 - lo).rem_euclid(m) + lo) as f64
}

/// `v` rounded to float4e2m1 (grid 0, 0.5, 1, 1.5, 2, 3, 4, 6; nearest even;
/// saturating at 6; NaN to 0, which has no NaN).
pub fn round_e2m1(v: f64) -> f64 {
    if v.is_nan() {
        return 0.0;
    }
    let a = v.abs().min(6.0);
    let step = if a < 2.0 {
        0.5
    } else if a < 4.0 {
        1.0
    } else {
        2.0
    };
    ((a / step).round_ties_even() * step).copysign(v)
}

/// `v` rounded to an 8-bit "fnuz" float (`e4m3`: max 240; else `e5m2`: max
/// 57344): twice the range's values of the OCP format scaled by one half,
/// nearest even; out of range saturates (or is NaN without `saturate`).
pub fn round_fnuz(v: f64, e4m3: bool, saturate: bool) -> f64 {
    use jpu_isa::numerics::round_f64;
    let (max, beyond) = if e4m3 { (240.0, 248.0) } else { (57344.0, 61440.0) };
    let a = v.abs();
    if v.is_nan() || (!saturate && a >= beyond) {
        return f64::NAN;
    }
    let r = if e4m3 {
        match a {
            _ if a > 232.0 => max,
            _ if a > 224.0 => 224.0,
            _ => 0.5 * round_f64(jpu_isa::DType::F8E4M3, 2.0 * a),
        }
    } else if a <= 28672.0 {
        0.5 * round_f64(jpu_isa::DType::F8E5M2, 2.0 * a)
    } else {
        let step = if a < 32768.0 { 4096.0 } else { 8192.0 };
        ((a / step).round_ties_even() * step).min(max)
    };
    // No negative zero.
    if r == 0.0 {
        0.0
    } else {
        r.copysign(v)
    }
}

/// `v` rounded up to a power of two in float8e8m0 (2^-127 to 2^127; NaN kept).
pub fn round_e8m0(v: f64) -> f64 {
    if v.is_nan() {
        return f64::NAN;
    }
    let e = if v <= 0.0 { -127 } else { v.log2().ceil().clamp(-127.0, 127.0) as i32 };
    2f64.powi(e)
}

/// The chip dtype holding ONNX float type `elem` exactly (f64 rounds to f32).
pub fn chip_float(elem: i32) -> Option<jpu_isa::DType> {
    use jpu_isa::DType as D;
    Some(match DataType::try_from(elem).ok()? {
        DataType::Float | DataType::Double => D::F32,
        DataType::Float16 => D::F16,
        DataType::Bfloat16 => D::Bf16,
        DataType::Float8e4m3fn => D::F8E4M3,
        DataType::Float8e5m2 => D::F8E5M2,
        _ => return None,
    })
}

/// The ONNX name of an element type, for messages.
pub fn elem_name(elem: i32) -> String {
    DataType::try_from(elem).map_or_else(|_| format!("type {elem}"), |d| d.as_str_name().to_lowercase())
}

/// `v` rounded to ONNX element type `elem` (integers wrap as their width does).
pub fn round_to(elem: i32, v: f64) -> f64 {
    match DataType::try_from(elem) {
        Ok(DataType::Float) => v as f32 as f64,
        Ok(DataType::Float16) => half::f16::from_f64(v).to_f64(),
        Ok(DataType::Bfloat16) => half::bf16::from_f64(v).to_f64(),
        Ok(DataType::Float8e4m3fn) => jpu_isa::numerics::round_f64(jpu_isa::DType::F8E4M3, v),
        Ok(DataType::Float8e5m2) => jpu_isa::numerics::round_f64(jpu_isa::DType::F8E5M2, v),
        Ok(DataType::Bool) => (v != 0.0) as u8 as f64,
        Ok(DataType::Int64) => v.trunc().clamp(i64::MIN as f64, i64::MAX as f64),
        Ok(DataType::Int32) => v.trunc() as i64 as i32 as f64,
        Ok(DataType::Int16) => v.trunc() as i64 as i16 as f64,
        Ok(DataType::Int8) => v.trunc() as i64 as i8 as f64,
        Ok(DataType::Uint8) => v.trunc() as i64 as u8 as f64,
        Ok(DataType::Uint16) => v.trunc() as i64 as u16 as f64,
        Ok(DataType::Uint32) => v.trunc() as i64 as u32 as f64,
        Ok(DataType::Uint64) => v.trunc().clamp(0.0, u64::MAX as f64),
        Ok(DataType::Float8e4m3fnuz) => round_fnuz(v, true, true),
        Ok(DataType::Float8e5m2fnuz) => round_fnuz(v, false, true),
        Ok(DataType::Float4e2m1) => round_e2m1(v),
        Ok(DataType::Float8e8m0) => round_e8m0(v),
        _ => match narrow_int(elem) {
            Some((bits, signed)) => wrap_int(v.trunc(), bits, signed),
            None => v,
        },
    }
}

/// Elements of a shape, or an error past [`MAX_HOST_ELEMS`].
pub fn elems(shape: &[u64]) -> Result<u64, String> {
    let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    match n {
        Some(n) if n <= MAX_HOST_ELEMS => Ok(n),
        _ => Err(format!("a constant of shape {shape:?} is too large to fold (at most {MAX_HOST_ELEMS} elements)")),
    }
}

impl HostTensor {
    /// A tensor from its parts (`data` rounded into `elem`).
    pub fn new(elem: i32, shape: Vec<u64>, data: Vec<f64>) -> HostTensor {
        let data = data.into_iter().map(|v| round_to(elem, v)).collect();
        HostTensor { elem, shape, data }
    }

    /// A 1-D i64 tensor.
    pub fn ints(values: &[i64]) -> HostTensor {
        HostTensor::new(DataType::Int64 as i32, vec![values.len() as u64], values.iter().map(|&v| v as f64).collect())
    }

    /// Its elements as i64 (shape arithmetic).
    pub fn as_ints(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }

    /// Reads an initializer or a `Constant`'s tensor.
    pub fn from_proto(t: &TensorProto) -> Result<HostTensor, String> {
        let name = t.name.clone().unwrap_or_default();
        let elem = t.data_type.unwrap_or(0);
        let shape: Vec<u64> = t
            .dims
            .iter()
            .map(|&d| u64::try_from(d).map_err(|_| format!("tensor `{name}` has a negative dim {d}")))
            .collect::<Result<_, _>>()?;
        let n = elems(&shape).map_err(|e| format!("tensor `{name}`: {e}"))? as usize;
        let data = match &t.raw_data {
            Some(raw) if !raw.is_empty() || n == 0 => from_raw(elem, raw, n),
            _ => from_fields(t, elem),
        }
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
        if data.len() != n {
            return Err(format!("tensor `{name}` holds {} elements, its dims {shape:?} need {n}", data.len()));
        }
        Ok(HostTensor { elem, shape, data })
    }
}

/// Bits per element of the packed sub-byte types (4 or 2), else `None`.
fn packed_bits(elem: i32) -> Option<usize> {
    match DataType::try_from(elem).ok()? {
        DataType::Int4 | DataType::Uint4 | DataType::Float4e2m1 => Some(4),
        DataType::Int2 | DataType::Uint2 => Some(2),
        _ => None,
    }
}

/// Element `k` of packed bytes (lowest bits first), decoded.
fn unpack(elem: i32, bytes: &[u8], k: usize, bits: usize) -> f64 {
    let per = 8 / bits;
    let code = (bytes[k / per] >> ((k % per) * bits)) & ((1u8 << bits) - 1);
    match narrow_int(elem) {
        Some((b, true)) => (((code << (8 - b)) as i8) >> (8 - b)) as f64,
        Some((_, false)) => code as f64,
        // float4e2m1: sign, two exponent bits (bias 1), one mantissa bit.
        None => {
            let (e, m) = ((code >> 1) & 3, (code & 1) as f64);
            let mag = if e == 0 { m * 0.5 } else { (1.0 + m / 2.0) * 2f64.powi(e as i32 - 1) };
            if code & 8 != 0 {
                -mag
            } else {
                mag
            }
        }
    }
}

/// One byte of a "fnuz" 8-bit float (`e4m3`: bias 8, else e5m2 with bias 16;
/// 0x80 is NaN, there is no -0 or infinity) or of float8e8m0 (`2^(b - 127)`).
fn byte_float(elem: i32, b: u8) -> f64 {
    let (mant_bits, bias) = match DataType::try_from(elem) {
        Ok(DataType::Float8e4m3fnuz) => (3, 8),
        Ok(DataType::Float8e5m2fnuz) => (2, 16),
        _ => return if b == 0xFF { f64::NAN } else { 2f64.powi(b as i32 - 127) },
    };
    if b == 0x80 {
        return f64::NAN;
    }
    let e = ((b & 0x7F) >> mant_bits) as i32;
    let m = (b & ((1 << mant_bits) - 1)) as f64 / (1 << mant_bits) as f64;
    let mag = if e == 0 { m * 2f64.powi(1 - bias) } else { (1.0 + m) * 2f64.powi(e - bias) };
    if b & 0x80 != 0 {
        -mag
    } else {
        mag
    }
}

/// Packed or byte-coded elements the chip has no type for.
fn from_bytes(elem: i32, bytes: &[u8], n: usize) -> Option<Result<Vec<f64>, String>> {
    if let Some(bits) = packed_bits(elem) {
        let need = (n * bits).div_ceil(8);
        if bytes.len() != need {
            return Some(Err(format!("{} bytes, {n} elements of {} need {need}", bytes.len(), elem_name(elem))));
        }
        return Some(Ok((0..n).map(|k| unpack(elem, bytes, k, bits)).collect()));
    }
    match DataType::try_from(elem).ok()? {
        DataType::Float8e4m3fnuz | DataType::Float8e5m2fnuz | DataType::Float8e8m0 => {
            if bytes.len() != n {
                return Some(Err(format!("{} bytes, {n} elements of {} need {n}", bytes.len(), elem_name(elem))));
            }
            Some(Ok(bytes.iter().map(|&b| byte_float(elem, b)).collect()))
        }
        _ => None,
    }
}

fn from_raw(elem: i32, raw: &[u8], n: usize) -> Result<Vec<f64>, String> {
    if let Some(decoded) = from_bytes(elem, raw, n) {
        return decoded;
    }
    let size = match DataType::try_from(elem) {
        Ok(DataType::Float | DataType::Int32 | DataType::Uint32) => 4,
        Ok(DataType::Double | DataType::Int64 | DataType::Uint64) => 8,
        Ok(DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16) => 2,
        Ok(DataType::Bool | DataType::Int8 | DataType::Uint8 | DataType::Float8e4m3fn | DataType::Float8e5m2) => 1,
        _ => return Err(format!("element type {} is not supported", elem_name(elem))),
    };
    if raw.len() != n * size {
        return Err(format!("{} raw bytes, {n} elements of {} need {}", raw.len(), elem_name(elem), n * size));
    }
    let b = |c: &[u8], k: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..k].copy_from_slice(&c[..k]);
        a
    };
    Ok(raw
        .chunks_exact(size)
        .map(|c| match DataType::try_from(elem) {
            Ok(DataType::Float) => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            Ok(DataType::Double) => f64::from_le_bytes(b(c, 8)),
            Ok(DataType::Float16) => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
            Ok(DataType::Bfloat16) => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
            Ok(DataType::Int64) => i64::from_le_bytes(b(c, 8)) as f64,
            Ok(DataType::Int32) => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            Ok(DataType::Int16) => i16::from_le_bytes([c[0], c[1]]) as f64,
            Ok(DataType::Uint16) => u16::from_le_bytes([c[0], c[1]]) as f64,
            Ok(DataType::Uint32) => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            Ok(DataType::Uint64) => u64::from_le_bytes(b(c, 8)) as f64,
            Ok(DataType::Int8) => c[0] as i8 as f64,
            Ok(DataType::Float8e4m3fn) => jpu_isa::numerics::load_f64(jpu_isa::DType::F8E4M3, c),
            Ok(DataType::Float8e5m2) => jpu_isa::numerics::load_f64(jpu_isa::DType::F8E5M2, c),
            _ => c[0] as f64,
        })
        .map(|v| round_to(elem, v))
        .collect())
}

fn from_fields(t: &TensorProto, elem: i32) -> Result<Vec<f64>, String> {
    // Sub-byte and fnuz/e8m0 codes keep one byte per int32.
    let bytes: Vec<u8> = t.int32_data.iter().map(|&v| v as u8).collect();
    let packed_n = |bits: usize| bytes.len() * 8 / bits;
    let n = packed_bits(elem).map_or(bytes.len(), packed_n);
    let n = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?)).unwrap_or(n).min(n);
    if let Some(decoded) = from_bytes(elem, &bytes, n) {
        return decoded;
    }
    Ok(match DataType::try_from(elem) {
        Ok(DataType::Float) => t.float_data.iter().map(|&v| v as f64).collect(),
        Ok(DataType::Double) => t.double_data.clone(),
        Ok(DataType::Int64) => t.int64_data.iter().map(|&v| v as f64).collect(),
        Ok(DataType::Uint32 | DataType::Uint64) => t.uint64_data.iter().map(|&v| v as f64).collect(),
        Ok(DataType::Uint16) => t.int32_data.iter().map(|&v| v as u16 as f64).collect(),
        Ok(DataType::Float8e4m3fn | DataType::Float8e5m2) => {
            let d = chip_float(elem).unwrap_or(jpu_isa::DType::F8E4M3);
            t.int32_data.iter().map(|&v| jpu_isa::numerics::load_f64(d, &[v as u8])).collect()
        }
        // Float16 and bfloat16 keep their bits in int32_data.
        Ok(DataType::Float16) => t.int32_data.iter().map(|&v| half::f16::from_bits(v as u16).to_f64()).collect(),
        Ok(DataType::Bfloat16) => t.int32_data.iter().map(|&v| half::bf16::from_bits(v as u16).to_f64()).collect(),
        Ok(DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint8 | DataType::Bool) => {
            t.int32_data.iter().map(|&v| round_to(elem, v as f64)).collect()
        }
        _ => return Err(format!("element type {} is not supported", elem_name(elem))),
    })
}

/// The product of `dims`, saturating (a shape's element count; overflow
/// shows as `u64::MAX`, which every limit refuses).
pub fn product(dims: &[u64]) -> u64 {
    dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The numpy broadcast of two shapes.
pub fn broadcast(a: &[u64], b: &[u64]) -> Option<Vec<u64>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// The flat index into a tensor of shape `from` (broadcast to `to`) of the
/// element at flat index `i` of `to`.
fn source_index(i: u64, to: &[u64], to_strides: &[u64], from: &[u64], from_strides: &[u64]) -> usize {
    let off = to.len() - from.len();
    let mut at = 0;
    for k in 0..from.len() {
        let coord = i / to_strides[k + off] % to[k + off];
        if from[k] != 1 {
            at += coord * from_strides[k];
        }
    }
    at as usize
}

/// Every operand broadcast to their common shape, then `f` per element; the
/// result has element type `elem`.
pub fn elementwise(operands: &[&HostTensor], elem: i32, f: impl Fn(&[f64]) -> f64) -> Result<HostTensor, String> {
    let mut shape: Vec<u64> = Vec::new();
    for o in operands {
        shape = broadcast(&shape, &o.shape)
            .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", shape, o.shape))?;
    }
    let n = elems(&shape)?;
    let st = strides(&shape);
    let src: Vec<Vec<u64>> = operands.iter().map(|o| strides(&o.shape)).collect();
    let mut args = vec![0.0; operands.len()];
    let data = (0..n)
        .map(|i| {
            for (k, o) in operands.iter().enumerate() {
                args[k] = o.data[source_index(i, &shape, &st, &o.shape, &src[k])];
            }
            f(&args)
        })
        .collect();
    Ok(HostTensor::new(elem, shape, data))
}

/// `x` broadcast to `shape` (ONNX `Expand`: the result is the broadcast of both).
pub fn expand(x: &HostTensor, shape: &[u64]) -> Result<HostTensor, String> {
    let target = HostTensor { elem: x.elem, shape: shape.to_vec(), data: Vec::new() };
    let full = broadcast(&x.shape, &target.shape)
        .ok_or_else(|| format!("shape {:?} does not expand to {shape:?}", x.shape))?;
    let n = elems(&full)?;
    let (st, xs) = (strides(&full), strides(&x.shape));
    let data = (0..n).map(|i| x.data[source_index(i, &full, &st, &x.shape, &xs)]).collect();
    Ok(HostTensor { elem: x.elem, shape: full, data })
}

/// `x` with its dims permuted (`perm[i]` is the source dim of dim i).
pub fn transpose(x: &HostTensor, perm: &[usize]) -> HostTensor {
    let shape: Vec<u64> = perm.iter().map(|&p| x.shape[p]).collect();
    let (st, xs) = (strides(&shape), strides(&x.shape));
    let n: u64 = product(&shape);
    let data = (0..n)
        .map(|i| {
            let at: u64 = perm.iter().enumerate().map(|(k, &p)| i / st[k] % shape[k] * xs[p]).sum();
            x.data[at as usize]
        })
        .collect();
    HostTensor { elem: x.elem, shape, data }
}

/// Elements `start[k] .. start[k] + step[k] * len[k]` along each dim.
pub fn slice(x: &HostTensor, start: &[i64], step: &[i64], len: &[u64]) -> Result<HostTensor, String> {
    let n = elems(len)?;
    let (st, xs) = (strides(len), strides(&x.shape));
    let data = (0..n)
        .map(|i| {
            let at: i64 =
                (0..len.len()).map(|k| (start[k] + step[k] * (i / st[k] % len[k]) as i64) * xs[k] as i64).sum();
            x.data[at as usize]
        })
        .collect();
    Ok(HostTensor { elem: x.elem, shape: len.to_vec(), data })
}

/// Rows of `x` along `axis` picked by `idx` (ONNX `Gather`; negative indices
/// count from the end).
pub fn gather(x: &HostTensor, idx: &HostTensor, axis: usize) -> Result<HostTensor, String> {
    let dim = x.shape[axis];
    let rows: Vec<u64> = idx
        .as_ints()
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + dim as i64 } else { i };
            u64::try_from(j).ok().filter(|&j| j < dim).ok_or_else(|| format!("index {i} is out of range for {dim}"))
        })
        .collect::<Result<_, _>>()?;
    let outer: u64 = product(&x.shape[..axis]);
    let inner: u64 = product(&x.shape[axis + 1..]);
    let shape: Vec<u64> = x.shape[..axis].iter().chain(&idx.shape).chain(&x.shape[axis + 1..]).copied().collect();
    elems(&shape)?;
    let mut data = Vec::new();
    for o in 0..outer {
        for &r in &rows {
            let base = ((o * dim + r) * inner) as usize;
            data.extend_from_slice(&x.data[base..base + inner as usize]);
        }
    }
    Ok(HostTensor { elem: x.elem, shape, data })
}

/// Sum, max or min over `axes` (kept as 1 when `keep`).
pub fn reduce(x: &HostTensor, axes: &[usize], keep: bool, op: fn(f64, f64) -> f64, init: f64) -> HostTensor {
    let kept: Vec<u64> = x.shape.iter().enumerate().map(|(k, &d)| if axes.contains(&k) { 1 } else { d }).collect();
    let (ks, xs) = (strides(&kept), strides(&x.shape));
    let mut out = vec![init; product(&kept) as usize];
    for (i, &v) in x.data.iter().enumerate() {
        let at: u64 = (0..x.shape.len()).map(|k| (i as u64 / xs[k] % x.shape[k]) % kept[k] * ks[k]).sum();
        out[at as usize] = op(out[at as usize], v);
    }
    let shape = if keep {
        kept
    } else {
        x.shape.iter().enumerate().filter(|(k, _)| !axes.contains(k)).map(|(_, &d)| d).collect()
    };
    HostTensor::new(x.elem, shape, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[u64], v: &[f64]) -> HostTensor {
        HostTensor::new(DataType::Float as i32, shape.to_vec(), v.to_vec())
    }

    #[test]
    fn broadcasting_ops_follow_numpy() {
        let a = f32s(&[2, 1], &[1.0, 2.0]);
        let b = f32s(&[3], &[10.0, 20.0, 30.0]);
        let s = elementwise(&[&a, &b], a.elem, |x| x[0] + x[1]).unwrap();
        assert_eq!(s.shape, [2, 3]);
        assert_eq!(s.data, [11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
        assert!(elementwise(&[&f32s(&[2], &[0.0; 2]), &b], a.elem, |x| x[0]).is_err());
        assert_eq!(expand(&a, &[2, 2]).unwrap().data, [1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn data_movement_matches_its_definition() {
        let x = f32s(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(transpose(&x, &[1, 0]).data, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(slice(&x, &[1, 2], &[1, -1], &[1, 2]).unwrap().data, [5.0, 4.0]);
        let g = gather(&x, &HostTensor::ints(&[-1, 0]), 1).unwrap();
        assert_eq!((g.shape.clone(), g.data), (vec![2, 2], vec![2.0, 0.0, 5.0, 3.0]));
        assert!(gather(&x, &HostTensor::ints(&[3]), 1).is_err());
        let r = reduce(&x, &[1], false, |a, b| a + b, 0.0);
        assert_eq!((r.shape, r.data), (vec![2], vec![3.0, 12.0]));
    }

    #[test]
    fn floats_round_to_their_onnx_type() {
        assert_eq!(round_to(DataType::Float as i32, 0.1), 0.1f32 as f64);
        assert_eq!(round_to(DataType::Int32 as i32, 2.0f64.powi(31)), -(2.0f64.powi(31)));
        assert_eq!(round_to(DataType::Bool as i32, f64::NAN), 1.0);
    }

    /// The types the chip has no storage for: decoded from their packed codes
    /// and rounded as ONNX (and ml_dtypes) do, edges included.
    #[test]
    fn sub_byte_and_fnuz_types_decode_and_round() {
        let int4 = DataType::Int4 as i32;
        // Packed low nibble first: 0x8F is 15 then 8, i.e. -1 then -8 as int4.
        assert_eq!(from_raw(int4, &[0x8F], 2).unwrap(), vec![-1.0, -8.0]);
        assert_eq!(from_raw(DataType::Uint4 as i32, &[0x8F], 2).unwrap(), vec![15.0, 8.0]);
        assert_eq!(from_raw(DataType::Int2 as i32, &[0b1110_0100], 4).unwrap(), vec![0.0, 1.0, -2.0, -1.0]);
        assert!(from_raw(int4, &[0x8F], 3).is_err(), "3 nibbles need 2 bytes");
        // e2m1 codes 0..=7 and a negative one.
        let grid: Vec<f64> = (0u8..8).map(|c| unpack(DataType::Float4e2m1 as i32, &[c], 0, 4)).collect();
        assert_eq!(grid, vec![0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(unpack(DataType::Float4e2m1 as i32, &[0x0F], 0, 4), -6.0);
        let (e4, e5) = (DataType::Float8e4m3fnuz as i32, DataType::Float8e5m2fnuz as i32);
        assert!(byte_float(e4, 0x80).is_nan());
        assert_eq!(
            (byte_float(e4, 0x7F), byte_float(e5, 0x7F), byte_float(e4, 0x01)),
            (240.0, 57344.0, 2f64.powi(-10))
        );
        assert_eq!(byte_float(DataType::Float8e8m0 as i32, 127), 1.0);
        // Rounding: ties to even on the grid, saturation, wrapping.
        assert_eq!([0.25, 0.75, 2.5, 3.5, 5.0, 7.0, -100.0].map(round_e2m1), [0.0, 1.0, 2.0, 4.0, 4.0, 6.0, -6.0]);
        assert_eq!(round_e2m1(f64::NAN), 0.0);
        assert_eq!([232.0, 233.0, 1e9].map(|v| round_fnuz(v, true, true)), [224.0, 240.0, 240.0]);
        assert!(round_fnuz(248.0, true, false).is_nan() && round_fnuz(247.0, true, false) == 240.0);
        assert_eq!([30720.0, 61439.0].map(|v| round_fnuz(v, false, true)), [32768.0, 57344.0]);
        assert_eq!(round_fnuz(-1e-9, true, true).to_bits(), 0.0f64.to_bits(), "no negative zero");
        assert_eq!([-9.0, 8.0].map(|v| wrap_int(v, 4, true)), [7.0, -8.0]);
        assert_eq!(wrap_int(-1.0, 2, false), 3.0);
        assert_eq!([0.0, 0.124, 1.1, 1e300].map(round_e8m0), [2f64.powi(-127), 0.125, 2.0, 2f64.powi(127)]);
    }
}
