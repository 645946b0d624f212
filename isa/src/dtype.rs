//! Element types the chip stores and moves.
//!
//! The binary code of each dtype is part of the `.jbin` format and never changes.

use std::fmt;

/// An element type held in HBM, SRAM or PSUM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    Bf16,
    /// IEEE binary16.
    F16,
    /// OCP FP8 E4M3 "fn" (no infinities, max 448).
    F8E4M3,
    /// OCP FP8 E5M2 (IEEE-like, with infinities).
    F8E5M2,
    /// Signed 8-bit integer.
    I8,
    /// Signed 32-bit integer.
    I32,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 7] =
        [DType::F32, DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2, DType::I8, DType::I32];

    /// Binary code used in `.jbin`.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Inverse of [`DType::code`].
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.get(code as usize).copied()
    }

    /// Text name used in `.jasm` and `.tir`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::I8 => "i8",
            DType::I32 => "i32",
        }
    }

    /// Inverse of [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> u32 {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::Bf16 | DType::F16 => 2,
            DType::F8E4M3 | DType::F8E5M2 | DType::I8 => 1,
        }
    }

    /// True for the integer dtypes.
    pub fn is_int(self) -> bool {
        matches!(self, DType::I8 | DType::I32)
    }

    /// True for the dtypes the PE accepts as matmul operands.
    pub fn is_pe_operand(self) -> bool {
        !matches!(self, DType::I32)
    }

    /// The PSUM dtype a matmul or transpose with these operands produces.
    pub fn accumulator(self) -> DType {
        if self.is_int() {
            DType::I32
        } else {
            DType::F32
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_code(7), None);
        assert_eq!(DType::from_name("f64"), None);
    }
}
