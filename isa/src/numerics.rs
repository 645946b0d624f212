//! The chip's numerics: dtype conversions and the portable math of VE and ACT.
//!
//! docs/isa.md ("Numerics") is the specification; this module is its one
//! implementation, shared by the simulator and the reference evaluator so the two
//! agree bit for bit. Conversions to narrower floats round to nearest even;
//! transcendentals use the `libm` crate, never the host's C library.

use crate::dtype::DType;
use crate::operand::{ActFunc, AluOp};

/// f32 -> bf16 bits: round to nearest even, overflow to inf, NaN to the canonical
/// quiet NaN of its sign.
#[inline]
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    // Adding 0x7fff plus the kept low bit rounds the dropped half to nearest
    // even (a carry into the exponent is the correct rounding up, to inf on
    // overflow); no branch, so loops over rows vectorize.
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) as u16 & 0x8000) | 0x7fc0;
    if v.is_nan() {
        nan
    } else {
        rounded
    }
}

/// f32 -> f16 bits: round to nearest even, overflow to inf, NaN canonical.
pub fn f32_to_f16(v: f32) -> u16 {
    if v.is_nan() {
        return if v.is_sign_negative() { 0xfe00 } else { 0x7e00 };
    }
    half::f16::from_f32(v).to_bits()
}

/// Parameters of an 8-bit float format.
struct Fp8 {
    mant_bits: u32,
    bias: i32,
    /// OCP "fn" formats have no infinities; the all-ones pattern is NaN.
    finite_only: bool,
}

const E4M3: Fp8 = Fp8 { mant_bits: 3, bias: 7, finite_only: true };
const E5M2: Fp8 = Fp8 { mant_bits: 2, bias: 15, finite_only: false };

impl Fp8 {
    fn nan(&self, negative: bool) -> u8 {
        let sign = if negative { 0x80 } else { 0 };
        if self.finite_only {
            sign | 0x7f
        } else {
            sign | 0x7e
        }
    }

    fn encode(&self, v: f32) -> u8 {
        let negative = v.is_sign_negative();
        let sign: u8 = if negative { 0x80 } else { 0 };
        if v.is_nan() {
            return self.nan(negative);
        }
        let exp_bits = 7 - self.mant_bits;
        let max_exp_field = (1u32 << exp_bits) - 1;
        if v.is_infinite() {
            return if self.finite_only {
                self.nan(negative)
            } else {
                sign | ((max_exp_field as u8) << self.mant_bits)
            };
        }
        let a = v.abs() as f64;
        if a == 0.0 {
            return sign;
        }
        // Quantum of the binade holding `a` (or of the subnormal range), then round
        // the significand to an integer number of quanta, ties to even. f64 holds
        // every f32 and every quotient here exactly.
        let min_normal_exp = 1 - self.bias;
        let exp = a.log2().floor() as i32;
        let exp = if 2f64.powi(exp) > a {
            exp - 1
        } else if 2f64.powi(exp + 1) <= a {
            exp + 1
        } else {
            exp
        };
        let quantum_exp = exp.max(min_normal_exp) - self.mant_bits as i32;
        let q = (a / 2f64.powi(quantum_exp)).round_ties_even() as u64;
        // Re-derive exponent and mantissa fields from the rounded value.
        let implicit = 1u64 << self.mant_bits;
        let (exp_field, mant) = if exp < min_normal_exp {
            if q >= implicit {
                (1u32, q - implicit) // rounded up into the smallest normal
            } else {
                (0u32, q)
            }
        } else if q >= 2 * implicit {
            ((exp + 1 + self.bias) as u32, q / 2 - implicit)
        } else {
            ((exp + self.bias) as u32, q - implicit)
        };
        let max_mant = implicit - 1;
        let overflow = if self.finite_only {
            exp_field > max_exp_field || (exp_field == max_exp_field && mant == max_mant)
        } else {
            exp_field >= max_exp_field
        };
        if overflow {
            return if self.finite_only {
                self.nan(negative)
            } else {
                sign | ((max_exp_field as u8) << self.mant_bits)
            };
        }
        sign | ((exp_field as u8) << self.mant_bits) | mant as u8
    }

    fn decode(&self, bits: u8) -> f32 {
        let negative = bits & 0x80 != 0;
        let exp_bits = 7 - self.mant_bits;
        let max_exp_field = (1u32 << exp_bits) - 1;
        let exp_field = ((bits >> self.mant_bits) as u32) & max_exp_field;
        let mant = (bits as u32) & ((1 << self.mant_bits) - 1);
        let magnitude = if self.finite_only && exp_field == max_exp_field && mant == (1 << self.mant_bits) - 1 {
            f32::NAN
        } else if !self.finite_only && exp_field == max_exp_field {
            if mant == 0 {
                f32::INFINITY
            } else {
                f32::NAN
            }
        } else if exp_field == 0 {
            mant as f32 * 2f32.powi(1 - self.bias - self.mant_bits as i32)
        } else {
            (((1 << self.mant_bits) + mant) as f32) * 2f32.powi(exp_field as i32 - self.bias - self.mant_bits as i32)
        };
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }
}

/// f32 -> f8e4m3 (OCP fn) bits: ties to even; a value rounding past 448, an
/// infinity or a NaN gives NaN (`0x7f`, `0xff`).
pub fn f32_to_f8e4m3(v: f32) -> u8 {
    E4M3.encode(v)
}

/// f32 -> f8e5m2 bits: ties to even; overflow to inf; NaN to `0x7e`/`0xfe`.
pub fn f32_to_f8e5m2(v: f32) -> u8 {
    E5M2.encode(v)
}

/// f8e4m3 bits -> f32 (exact).
pub fn f8e4m3_to_f32(bits: u8) -> f32 {
    E4M3.decode(bits)
}

/// f8e5m2 bits -> f32 (exact).
pub fn f8e5m2_to_f32(bits: u8) -> f32 {
    E5M2.decode(bits)
}

/// f32 -> i8: round to nearest even, saturate, NaN to 0.
pub fn f32_to_i8(v: f32) -> i8 {
    // `as i32` saturates and maps NaN to 0.
    (v.round_ties_even() as i32).clamp(i8::MIN as i32, i8::MAX as i32) as i8
}

/// f32 -> i32: round to nearest even, saturate, NaN to 0.
pub fn f32_to_i32(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Reads one element of `dtype` from the start of `bytes` as f32.
#[inline]
pub fn load_f32(dtype: DType, bytes: &[u8]) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        DType::Bf16 => half::bf16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32(),
        DType::F16 => half::f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32(),
        DType::F8E4M3 => f8_tables().e4m3[bytes[0] as usize],
        DType::F8E5M2 => f8_tables().e5m2[bytes[0] as usize],
        DType::I8 => bytes[0] as i8 as f32,
        DType::I32 => i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f32,
    }
}

/// Reads one element of `dtype` from the start of `bytes` exactly (an i32 above
/// 2^24 has no f32).
#[inline]
pub fn load_f64(dtype: DType, bytes: &[u8]) -> f64 {
    match dtype {
        DType::I32 => i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f64,
        _ => load_f32(dtype, bytes) as f64,
    }
}

/// Writes `v` as one element of `dtype` at the start of `out` (converting per the rules above).
#[inline]
pub fn store_f32(dtype: DType, v: f32, out: &mut [u8]) {
    match dtype {
        DType::F32 => out[..4].copy_from_slice(&v.to_le_bytes()),
        DType::Bf16 => out[..2].copy_from_slice(&f32_to_bf16(v).to_le_bytes()),
        DType::F16 => out[..2].copy_from_slice(&f32_to_f16(v).to_le_bytes()),
        DType::F8E4M3 => out[0] = f32_to_f8e4m3(v),
        DType::F8E5M2 => out[0] = f32_to_f8e5m2(v),
        DType::I8 => out[0] = f32_to_i8(v) as u8,
        DType::I32 => out[..4].copy_from_slice(&f32_to_i32(v).to_le_bytes()),
    }
}

/// Converts an f32 to the value it has after a round trip through `dtype`.
pub fn round_to(dtype: DType, v: f32) -> f32 {
    let mut b = [0u8; 4];
    store_f32(dtype, v, &mut b);
    load_f32(dtype, &b)
}

/// Rounds an f64 to f32 with round-to-odd, so that a second rounding to a format
/// with at least two fewer significand bits equals one direct rounding.
fn f64_to_f32_odd(v: f64) -> f32 {
    let r = v as f32;
    if v.is_nan() || r as f64 == v {
        return r;
    }
    // Truncate toward zero, then make the last bit odd to mark inexactness.
    let mut t = r;
    if (t as f64).abs() > v.abs() {
        t = f32::from_bits(t.to_bits() - 1);
    }
    f32::from_bits(t.to_bits() | 1)
}

/// Stores a value given as f64 into one element of `dtype` with one rounding
/// (round to nearest even; integers saturate, NaN to 0).
#[inline]
pub fn store_f64(dtype: DType, v: f64, out: &mut [u8]) {
    match dtype {
        DType::F32 => out[..4].copy_from_slice(&(v as f32).to_le_bytes()),
        DType::I8 => out[0] = if v.is_nan() { 0 } else { v.round_ties_even().clamp(-128.0, 127.0) as i8 as u8 },
        DType::I32 => {
            let x = if v.is_nan() { 0 } else { v.round_ties_even().clamp(i32::MIN as f64, i32::MAX as f64) as i32 };
            out[..4].copy_from_slice(&x.to_le_bytes());
        }
        _ => store_f32(dtype, f64_to_f32_odd(v), out),
    }
}

/// The value an f64 becomes when stored into `dtype` ([`store_f64`]'s one
/// rounding), as f64. This is the rounding at every dtype boundary: the
/// reference evaluator, the compiler's literals and the simulator's inputs use it.
#[inline]
pub fn round_f64(dtype: DType, v: f64) -> f64 {
    let mut b = [0u8; 4];
    store_f64(dtype, v, &mut b);
    match dtype {
        // Read back exactly: an i32 above 2^24 has no f32.
        DType::I32 => i32::from_le_bytes(b) as f64,
        _ => load_f32(dtype, &b) as f64,
    }
}

struct F8Tables {
    e4m3: [f32; 256],
    e5m2: [f32; 256],
}

fn f8_tables() -> &'static F8Tables {
    static TABLES: std::sync::OnceLock<F8Tables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = F8Tables { e4m3: [0.0; 256], e5m2: [0.0; 256] };
        for b in 0..256 {
            t.e4m3[b] = E4M3.decode(b as u8);
            t.e5m2[b] = E5M2.decode(b as u8);
        }
        t
    })
}

/// The f32 value of every byte of an 8-bit float `dtype` (what [`load_f32`]
/// reads), for loops that convert many; `None` for other dtypes.
pub fn fp8_values(dtype: DType) -> Option<&'static [f32; 256]> {
    match dtype {
        DType::F8E4M3 => Some(&f8_tables().e4m3),
        DType::F8E5M2 => Some(&f8_tables().e5m2),
        _ => None,
    }
}

/// IEEE maxNum-style maximum: a NaN operand gives the other; both NaN give NaN.
#[inline]
pub fn max_num(a: f32, b: f32) -> f32 {
    a.max(b)
}

/// IEEE minNum-style minimum.
#[inline]
pub fn min_num(a: f32, b: f32) -> f32 {
    a.min(b)
}

/// A VE ALU operation in f32.
#[inline]
pub fn alu(op: AluOp, a: f32, b: f32) -> f32 {
    match op {
        AluOp::Add => a + b,
        AluOp::Sub => a - b,
        AluOp::Mul => a * b,
        AluOp::Div => a / b,
        AluOp::Max => max_num(a, b),
        AluOp::Min => min_num(a, b),
        AluOp::IsLt => (a < b) as u8 as f32,
        AluOp::IsLe => (a <= b) as u8 as f32,
        AluOp::IsGt => (a > b) as u8 as f32,
        AluOp::IsGe => (a >= b) as u8 as f32,
        AluOp::IsEq => (a == b) as u8 as f32,
        AluOp::IsNe => (a != b) as u8 as f32,
    }
}

/// A VE ALU operation in integer mode (every operand and the result integer):
/// exact, wrapping to 32 bits. Division truncates toward zero; `x / 0` is 0.
#[inline]
pub fn alu_int(op: AluOp, a: i32, b: i32) -> i32 {
    match op {
        AluOp::Add => a.wrapping_add(b),
        AluOp::Sub => a.wrapping_sub(b),
        AluOp::Mul => a.wrapping_mul(b),
        AluOp::Div => a.checked_div(b).unwrap_or(if b == 0 { 0 } else { a.wrapping_div(b) }),
        AluOp::Max => a.max(b),
        AluOp::Min => a.min(b),
        AluOp::IsLt => (a < b) as i32,
        AluOp::IsLe => (a <= b) as i32,
        AluOp::IsGt => (a > b) as i32,
        AluOp::IsGe => (a >= b) as i32,
        AluOp::IsEq => (a == b) as i32,
        AluOp::IsNe => (a != b) as i32,
    }
}

/// The largest finite value of a float dtype (`i32::MAX`/`i8::MAX` for the integers).
pub fn max_finite(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f32::MAX as f64,
        DType::Bf16 => f32::from_bits(0x7f7f_0000) as f64,
        DType::F16 => 65504.0,
        DType::F8E4M3 => 448.0,
        DType::F8E5M2 => 57344.0,
        DType::I8 => 127.0,
        DType::I32 => i32::MAX as f64,
    }
}

/// An ACT function in f32 (portable `libm` math, each step rounded to f32).
pub fn activation(func: ActFunc, x: f32) -> f32 {
    match func {
        ActFunc::Identity => x,
        ActFunc::Exp => libm::expf(x),
        ActFunc::Tanh => libm::tanhf(x),
        ActFunc::Sigmoid => sigmoid(x),
        ActFunc::GeluTanh => gelu_tanh(x),
        ActFunc::Erf => libm::erff(x),
        ActFunc::Silu => x * sigmoid(x),
        ActFunc::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        ActFunc::Rsqrt => 1.0 / libm::sqrtf(x),
        ActFunc::Reciprocal => 1.0 / x,
        ActFunc::Square => x * x,
        ActFunc::Sqrt => libm::sqrtf(x),
        ActFunc::Gelu => gelu_erf(x),
        ActFunc::Ln => libm::logf(x),
    }
}

/// `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// `0.5 x (1 + tanh(0.7978846 (x + 0.044715 x^3)))`, each step rounded to f32.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let cube = x * x * x;
    let inner = SQRT_2_OVER_PI * (x + 0.044715 * cube);
    0.5 * x * (1.0 + libm::tanhf(inner))
}

/// `0.5 x (1 + erf(x / sqrt(2)))`, the exact GELU, each step rounded to f32.
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_decode_encode_round_trips_every_code() {
        for b in 0..=255u8 {
            for (enc, dec) in
                [(f32_to_f8e4m3 as fn(f32) -> u8, f8e4m3_to_f32 as fn(u8) -> f32), (f32_to_f8e5m2, f8e5m2_to_f32)]
            {
                let v = dec(b);
                if v.is_nan() {
                    assert!(dec(enc(v)).is_nan());
                } else {
                    assert_eq!(enc(v), b, "code {b:#04x} = {v}");
                }
            }
        }
        assert_eq!(f8e4m3_to_f32(0x7e), 448.0);
        assert_eq!(f8e5m2_to_f32(0x7b), 57344.0);
        assert_eq!(f8e4m3_to_f32(0x01), 2f32.powi(-9));
    }

    #[test]
    fn documented_edge_cases() {
        assert_eq!(f32_to_f8e4m3(464.0), 0x7e, "the tie at 464 rounds to even (448)");
        assert_eq!(f32_to_f8e4m3(464.1), 0x7f, "past the tie is NaN");
        assert_eq!(f32_to_f8e4m3(f32::NEG_INFINITY), 0xff);
        assert_eq!(f32_to_f8e5m2(61440.0), 0x7c, "the tie at 61440 rounds to inf");
        assert_eq!(f32_to_bf16(f32::from_bits(0xffc1_2345)), 0xffc0);
        assert_eq!(f32_to_f16(f32::from_bits(0x7f80_0001)), 0x7e00);
        assert_eq!(f32_to_i8(2.5), 2);
        assert_eq!(f32_to_i8(3.5), 4);
        assert_eq!(f32_to_i8(-1000.0), -128);
        assert_eq!(f32_to_i8(f32::NAN), 0);
        assert_eq!(f32_to_i32(3e9), i32::MAX);
        assert_eq!(f32_to_i32(-2.5), -2);
        assert_eq!(load_f32(DType::I32, &16_777_217i32.to_le_bytes()), 16_777_216.0);
    }

    #[test]
    fn f64_rounds_once_to_narrow_formats() {
        // 1 + 2^-8 + 2^-30 lies just above the bf16 tie between 1 and 1 + 2^-7: one
        // rounding goes up; rounding to f32 first (which drops 2^-30) would make it a
        // tie and round down to even.
        let v = 1.0 + 2f64.powi(-8) + 2f64.powi(-30);
        let mut b = [0u8; 2];
        store_f64(DType::Bf16, v, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3f81);
        store_f64(DType::Bf16, 1.0 + 2f64.powi(-8), &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3f80, "an exact tie rounds to even");
        let mut i = [0u8; 4];
        store_f64(DType::I32, 2.5, &mut i);
        assert_eq!(i32::from_le_bytes(i), 2);
        store_f64(DType::I32, 1e12, &mut i);
        assert_eq!(i32::from_le_bytes(i), i32::MAX);
        assert_eq!(round_f64(DType::Bf16, v), 1.0 + 2f64.powi(-7));
        assert_eq!(round_f64(DType::I8, -300.0), -128.0);
        assert!(round_f64(DType::F8E4M3, 1000.0).is_nan(), "e4m3fn overflow is NaN (docs/isa.md)");
        assert_eq!(round_f64(DType::F8E4M3, 464.0), 448.0, "the tie rounds to even");
    }
}
