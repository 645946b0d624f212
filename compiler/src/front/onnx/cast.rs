//! `Cast` of values computed at run time, with ONNX's semantics.
//!
//! - To a float type narrower than the storage (bf16, f16, fp8 in f32 mode):
//!   the value rounds through that type and is stored wider; fp8 saturates by
//!   default (`saturate`).
//! - Float to integer truncates toward zero (the IR's cast rounds to nearest:
//!   the truncation is a correction of one toward zero), then wraps or
//!   saturates as the IR's integers do.
//! - To types the chip has no storage for, the value is rounded to the type's
//!   value set and kept in a wider type that holds it exactly: int4, uint4,
//!   int2 and uint2 wrap (in i32); float4e2m1 rounds to nearest even on its
//!   grid and saturates at 6 (NaN becomes 0); float8e4m3fnuz and
//!   float8e5m2fnuz round as the OCP formats do one binade down, saturating at
//!   240 and 57344 (or NaN without `saturate`). All of it in f32, with
//!   `(x + 1.5 * 2^(23 + k)) - 1.5 * 2^(23 + k)` rounding to a multiple of 2^k
//!   where no chip format has the grid. float8e8m0 is only read and folded.
//!
//! The same roundings fold on the host (`host::round_to`); the node tests hold
//! both to onnxruntime's reference outputs.

use super::fold::attr_int;
use super::host;
use super::import::{Importer, POperand, Ref, Val};
use super::proto::tensor_proto::DataType;
use super::proto::NodeProto;
use crate::ir::ops::Attr;
use crate::ir::ScalarType;

/// Converts a runtime `Cast` node.
pub fn cast(im: &mut Importer, n: &NodeProto, name: &str) -> Result<Vec<Val>, String> {
    let first = n.input.first().map(String::as_str).filter(|s| !s.is_empty()).ok_or("input 0 is missing")?;
    let (x, _) = im.ir(first)?;
    let to = attr_int(n, "to", 0) as i32;
    let saturate = attr_int(n, "saturate", 1) != 0;
    let dtype = im.ir_dtype(to)?;
    let done = |r: Ref| Ok(vec![Val::Ir { r, elem: to }]);
    if let Some((bits, signed)) = host::narrow_int(to) {
        let int = to_int(im, x, &format!("{name}__int"))?;
        return done(wrapped(im, int, bits, signed, name)?);
    }
    match DataType::try_from(to) {
        Ok(DataType::Float4e2m1) => return done(e2m1(im, x, dtype, name)?),
        Ok(DataType::Float8e4m3fnuz) => return done(fnuz(im, x, true, saturate, dtype, name)?),
        Ok(DataType::Float8e5m2fnuz) => return done(fnuz(im, x, false, saturate, dtype, name)?),
        Ok(DataType::Float8e8m0) => {
            return Err("a Cast to float8e8m0 of values computed at run time is not supported".into())
        }
        _ => {}
    }
    let chip = host::chip_float(to);
    let exact = chip.and_then(ScalarType::from_chip).filter(|&e| e != dtype && e != ScalarType::F32);
    if let (Some(exact), Some(chip)) = (exact, chip) {
        let fp8 = matches!(exact, ScalarType::F8E4M3 | ScalarType::F8E5M2);
        let mut x = x;
        if fp8 && saturate && im.ty(x).dtype != exact {
            x = saturated(im, x, jpu_isa::numerics::max_finite(chip), name)?;
        }
        if im.ty(x).dtype != exact {
            x = cast_to(im, x, exact, &format!("{name}__{}", exact.name()))?;
        }
        return done(cast_to(im, x, dtype, name)?);
    }
    if im.ty(x).dtype == dtype {
        return done(x);
    }
    if im.ty(x).dtype.is_float() && dtype.is_int() {
        return done(to_int(im, x, name)?);
    }
    done(cast_to(im, x, dtype, name)?)
}

fn cast_to(im: &mut Importer, x: Ref, t: ScalarType, name: &str) -> Result<Ref, String> {
    im.push(name, "cast", &[POperand::Value(x)], &[("to", Attr::Word(t.name().into()))], None)
}

fn op(im: &mut Importer, name: &str, what: &str, operands: &[POperand]) -> Result<Ref, String> {
    im.push(name, what, operands, &[], None)
}

fn compare(im: &mut Importer, name: &str, kind: &str, a: POperand, b: POperand) -> Result<Ref, String> {
    im.push(name, "compare", &[a, b], &[("kind", Attr::Word(kind.into()))], None)
}

fn select(im: &mut Importer, name: &str, cond: Ref, a: POperand, b: POperand) -> Result<Ref, String> {
    im.push(name, "select", &[POperand::Value(cond), a, b], &[], None)
}

/// `x` clamped to `[-max, max]`, NaN kept (max and min return the other operand).
pub fn saturated(im: &mut Importer, x: Ref, max: f64, name: &str) -> Result<Ref, String> {
    let v = POperand::Value;
    let lo = op(im, &format!("{name}__lo"), "max", &[v(x), POperand::Scalar(-max)])?;
    let hi = op(im, &format!("{name}__hi"), "min", &[v(lo), POperand::Scalar(max)])?;
    let num = compare(im, &format!("{name}__num"), "eq", v(x), v(x))?;
    select(im, &format!("{name}__sat"), num, v(hi), v(x))
}

/// `x` as i32, truncated toward zero: the IR's nearest-even cast, moved one
/// toward zero where it went past `x` (saturating; NaN gives 0).
fn to_int(im: &mut Importer, x: Ref, name: &str) -> Result<Ref, String> {
    let v = POperand::Value;
    if im.ty(x).dtype.is_int() {
        return Ok(x);
    }
    // Compared in x's own dtype, which holds every integer near an x it holds.
    let near = cast_to(im, x, ScalarType::I32, &format!("{name}__near"))?;
    let back = cast_to(im, near, im.ty(x).dtype, &format!("{name}__back"))?;
    let above = compare(im, &format!("{name}__above"), "gt", v(back), v(x))?;
    let below = compare(im, &format!("{name}__below"), "lt", v(back), v(x))?;
    let positive = compare(im, &format!("{name}__pos"), "gt", v(x), POperand::Scalar(0.0))?;
    let less = op(im, &format!("{name}__dec"), "sub", &[v(near), POperand::Scalar(1.0)])?;
    let more = op(im, &format!("{name}__inc"), "add", &[v(near), POperand::Scalar(1.0)])?;
    let down = select(im, &format!("{name}__down"), above, v(less), v(near))?;
    let up = select(im, &format!("{name}__up"), below, v(more), v(near))?;
    select(im, name, positive, v(down), v(up))
}

/// Integer `x` wrapped into a `bits`-wide integer (stored in i32).
fn wrapped(im: &mut Importer, x: Ref, bits: u32, signed: bool, name: &str) -> Result<Ref, String> {
    let (v, s) = (POperand::Value, POperand::Scalar);
    let m = (1i64 << bits) as f64;
    let lo = if signed { -m / 2.0 } else { 0.0 };
    // r = (x - lo) mod m in [0, m), with a truncating division.
    let shifted = op(im, &format!("{name}__shift"), "sub", &[v(x), s(lo)])?;
    let q = op(im, &format!("{name}__q"), "div", &[v(shifted), s(m)])?;
    let qm = op(im, &format!("{name}__qm"), "mul", &[v(q), s(m)])?;
    let rem = op(im, &format!("{name}__rem"), "sub", &[v(shifted), v(qm)])?;
    let negative = compare(im, &format!("{name}__neg"), "lt", v(rem), s(0.0))?;
    let lifted = op(im, &format!("{name}__lift"), "add", &[v(rem), s(m)])?;
    let r = select(im, &format!("{name}__mod"), negative, v(lifted), v(rem))?;
    op(im, name, "add", &[v(r), s(lo)])
}

/// `x` as f32 (a cast when it is stored otherwise).
fn f32_of(im: &mut Importer, x: Ref, name: &str) -> Result<Ref, String> {
    if im.ty(x).dtype == ScalarType::F32 {
        return Ok(x);
    }
    cast_to(im, x, ScalarType::F32, &format!("{name}__f32"))
}

/// f32 `x` rounded to a multiple of `2^k`, nearest even (|x| < 2^(22 + k)).
fn to_multiple(im: &mut Importer, x: Ref, k: i32, name: &str) -> Result<Ref, String> {
    let magic = 1.5 * 2f64.powi(23 + k);
    let tag = if k < 0 { format!("n{}", -k) } else { k.to_string() };
    let up = op(im, &format!("{name}__m{tag}"), "add", &[POperand::Value(x), POperand::Scalar(magic)])?;
    op(im, &format!("{name}__r{tag}"), "sub", &[POperand::Value(up), POperand::Scalar(magic)])
}

/// `|x|` of f32 `x`.
fn magnitude(im: &mut Importer, x: Ref, name: &str) -> Result<Ref, String> {
    let neg = op(im, &format!("{name}__negx"), "neg", &[POperand::Value(x)])?;
    op(im, &format!("{name}__abs"), "max", &[POperand::Value(x), POperand::Value(neg)])
}

/// The f32 result stored as `dtype` (`y` itself in f32).
fn stored(im: &mut Importer, y: Ref, dtype: ScalarType, name: &str) -> Result<Ref, String> {
    if dtype == ScalarType::F32 {
        return Ok(y);
    }
    cast_to(im, y, dtype, name)
}

/// `x` rounded to float4e2m1, stored as `dtype` (which holds it exactly).
fn e2m1(im: &mut Importer, x: Ref, dtype: ScalarType, name: &str) -> Result<Ref, String> {
    let (v, s) = (POperand::Value, POperand::Scalar);
    let x = f32_of(im, x, name)?;
    let c = saturated(im, x, 6.0, name)?;
    let a = magnitude(im, c, name)?;
    let (half, one, two) = (to_multiple(im, c, -1, name)?, to_multiple(im, c, 0, name)?, to_multiple(im, c, 1, name)?);
    let small = compare(im, &format!("{name}__lt2"), "lt", v(a), s(2.0))?;
    let middle = compare(im, &format!("{name}__lt4"), "lt", v(a), s(4.0))?;
    let upper = select(im, &format!("{name}__upper"), middle, v(one), v(two))?;
    let y = select(im, &format!("{name}__grid"), small, v(half), v(upper))?;
    let num = compare(im, &format!("{name}__isnum"), "eq", v(x), v(x))?;
    let y = select(im, &format!("{name}__nan0"), num, v(y), s(0.0))?;
    stored(im, y, dtype, name)
}

/// `x` rounded to float8e4m3fnuz (`e4m3`) or float8e5m2fnuz, stored as `dtype`.
fn fnuz(im: &mut Importer, x: Ref, e4m3: bool, saturate: bool, dtype: ScalarType, name: &str) -> Result<Ref, String> {
    let (v, s) = (POperand::Value, POperand::Scalar);
    let x = f32_of(im, x, name)?;
    let a = magnitude(im, x, name)?;
    // Where twice the value is inside the OCP format: half its rounding of 2x.
    let (ocp, inside) = if e4m3 { (ScalarType::F8E4M3, 224.0) } else { (ScalarType::F8E5M2, 28672.0) };
    let c = saturated(im, x, inside, &format!("{name}__in"))?;
    let twice = op(im, &format!("{name}__twice"), "mul", &[v(c), s(2.0)])?;
    let narrow = cast_to(im, twice, ocp, &format!("{name}__{}", ocp.name()))?;
    let wide = cast_to(im, narrow, ScalarType::F32, &format!("{name}__wide"))?;
    let base = op(im, &format!("{name}__base"), "mul", &[v(wide), s(0.5)])?;
    // Above it: e4m3fnuz's top value 240 (past 232, the tie with 224); e5m2fnuz's
    // grid of 4096 below 32768 and 8192 above.
    let high = if e4m3 {
        // +-240 by the sign of x: x scaled far past the range, then clamped.
        let far = op(im, &format!("{name}__far"), "mul", &[v(x), s(2f64.powi(100))])?;
        saturated(im, far, 240.0, &format!("{name}__pm240"))?
    } else {
        let top = saturated(im, x, 57344.0, &format!("{name}__top"))?;
        let (r12, r13) = (to_multiple(im, top, 12, name)?, to_multiple(im, top, 13, name)?);
        let lower = compare(im, &format!("{name}__lt32k"), "lt", v(a), s(32768.0))?;
        select(im, &format!("{name}__high"), lower, v(r12), v(r13))?
    };
    let split = if e4m3 { 232.0 } else { 28672.0 };
    let above = compare(im, &format!("{name}__above"), "gt", v(a), s(split))?;
    let mut y = select(im, &format!("{name}__y"), above, v(high), v(base))?;
    if !saturate {
        // Past the top's rounding range: NaN (the format has no infinity).
        let beyond = if e4m3 { 248.0 } else { 61440.0 };
        let out = compare(im, &format!("{name}__out"), "ge", v(a), s(beyond))?;
        // NaN, as (a - a) * inf (no NaN literal).
        let zero = op(im, &format!("{name}__zero"), "sub", &[v(a), v(a)])?;
        let nan = op(im, &format!("{name}__nan"), "mul", &[v(zero), s(f64::INFINITY)])?;
        y = select(im, &format!("{name}__ovf"), out, v(nan), v(y))?;
    }
    stored(im, y, dtype, name)
}
