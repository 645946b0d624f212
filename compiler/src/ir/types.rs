//! Element and tensor types of the tensor IR.

use std::fmt;

/// An element type of the IR: the chip's dtypes plus `i1` (booleans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// OCP FP8 E4M3 (fn).
    F8E4M3,
    /// OCP FP8 E5M2.
    F8E5M2,
    /// 8-bit integer.
    I8,
    /// 32-bit integer.
    I32,
    /// Boolean (comparison results, select conditions).
    I1,
}

impl ScalarType {
    /// Every type, in the order docs list them.
    pub const ALL: [ScalarType; 8] = [
        ScalarType::F32,
        ScalarType::F16,
        ScalarType::Bf16,
        ScalarType::F8E4M3,
        ScalarType::F8E5M2,
        ScalarType::I8,
        ScalarType::I32,
        ScalarType::I1,
    ];

    /// Name as written.
    pub fn name(self) -> &'static str {
        match self {
            ScalarType::F32 => "f32",
            ScalarType::F16 => "f16",
            ScalarType::Bf16 => "bf16",
            ScalarType::F8E4M3 => "f8e4m3",
            ScalarType::F8E5M2 => "f8e5m2",
            ScalarType::I8 => "i8",
            ScalarType::I32 => "i32",
            ScalarType::I1 => "i1",
        }
    }

    /// Inverse of [`ScalarType::name`].
    pub fn from_name(s: &str) -> Option<ScalarType> {
        ScalarType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// True for the float types.
    pub fn is_float(self) -> bool {
        matches!(self, ScalarType::F32 | ScalarType::F16 | ScalarType::Bf16 | ScalarType::F8E4M3 | ScalarType::F8E5M2)
    }

    /// True for i8 and i32 (not i1).
    pub fn is_int(self) -> bool {
        matches!(self, ScalarType::I8 | ScalarType::I32)
    }

    /// The chip dtype values of this type are stored in: i1 as an i8 0 or 1.
    pub fn storage(self) -> jpu_isa::DType {
        self.chip().unwrap_or(jpu_isa::DType::I8)
    }

    /// The chip dtype with the same values (none for i1).
    pub fn chip(self) -> Option<jpu_isa::DType> {
        use jpu_isa::DType as D;
        Some(match self {
            ScalarType::F32 => D::F32,
            ScalarType::F16 => D::F16,
            ScalarType::Bf16 => D::Bf16,
            ScalarType::F8E4M3 => D::F8E4M3,
            ScalarType::F8E5M2 => D::F8E5M2,
            ScalarType::I8 => D::I8,
            ScalarType::I32 => D::I32,
            ScalarType::I1 => return None,
        })
    }

    /// The IR type with the values of a chip dtype.
    pub fn from_chip(d: jpu_isa::DType) -> Option<ScalarType> {
        ScalarType::ALL.into_iter().find(|t| t.chip() == Some(d))
    }
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor type: element type and shape (empty for a scalar).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: ScalarType,
    /// Dims, outermost first.
    pub shape: Vec<u64>,
}

/// Most dims a tensor may have.
pub const MAX_RANK: usize = 8;
/// Most elements a tensor may have (2^40).
pub const MAX_ELEMS: u64 = 1 << 40;

impl TensorType {
    /// A tensor type.
    pub fn new(dtype: ScalarType, shape: Vec<u64>) -> TensorType {
        TensorType { dtype, shape }
    }

    /// A tensor type within the IR's limits ([`MAX_RANK`], [`MAX_ELEMS`]), or why not.
    pub fn checked(dtype: ScalarType, shape: Vec<u64>) -> Result<TensorType, String> {
        if shape.len() > MAX_RANK {
            return Err(format!("{} dims; at most {MAX_RANK} are supported", shape.len()));
        }
        if shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_ELEMS) {
            return Err("tensor has more than 2^40 elements".into());
        }
        Ok(TensorType { dtype, shape })
    }

    /// Elements.
    pub fn elems(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(", "))
    }
}
