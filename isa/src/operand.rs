//! Instruction operands: what they mean, and their binary and text forms.
//!
//! Each operand type implements [`Operand`], which holds its fixed-size binary
//! encoding, its bounds-checked decoding and its `.jasm` text form in one place, so
//! the instruction table in [`crate::inst`] can derive encoder, decoder, printer and
//! parser for every instruction from its list of fields. Decoding accepts exactly
//! the bytes encoding produces (reserved bytes zero, enum codes known), which is what
//! makes binary -> text -> binary an identity.

use std::fmt::Write as _;

use crate::bytes::{DecodeError, Reader, WriteLe};
use crate::dtype::DType;
use crate::jasm::lexer::Tok;
use crate::jasm::parser::{AsmError, Parser};
use crate::program::TensorDecl;

/// Context for encoding an instruction: DMA transfers are placed in the descriptor table.
#[derive(Default)]
pub struct EncodeCtx {
    /// Descriptor table, in the order DMA instructions are encoded.
    pub descs: Vec<DmaTransfer>,
}

/// Context for decoding an instruction.
pub struct DecodeCtx<'a> {
    /// The descriptor table read from the binary.
    pub descs: &'a [DmaTransfer],
    /// Index the next DMA instruction must reference (canonical order).
    pub next_desc: u32,
}

/// Context for printing an instruction: HBM addresses print relative to tensors.
pub struct PrintCtx<'a> {
    /// The program's tensor table.
    pub tensors: &'a [TensorDecl],
}

/// An instruction operand type with binary and text forms.
pub trait Operand: Sized {
    /// Encoded size in bytes.
    const SIZE: usize;
    /// Short description of the operand kind, for docs.
    const KIND: &'static str;
    /// Appends exactly [`Operand::SIZE`] bytes.
    fn encode(&self, out: &mut Vec<u8>, ctx: &mut EncodeCtx);
    /// Reads exactly [`Operand::SIZE`] bytes.
    fn decode(r: &mut Reader<'_>, ctx: &mut DecodeCtx<'_>) -> Result<Self, DecodeError>;
    /// Appends the canonical text form.
    fn print(&self, out: &mut String, ctx: &PrintCtx<'_>);
    /// Parses the text form.
    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError>;
}

/// On-core memory a compute tile lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// The SRAM scratchpad.
    Sram,
    /// The PSUM accumulator.
    Psum,
}

impl Space {
    /// Text name.
    pub fn name(self) -> &'static str {
        match self {
            Space::Sram => "sram",
            Space::Psum => "psum",
        }
    }
}

/// One access-pattern dimension of a compute tile: `count` elements, `stride` elements apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dim {
    /// Number of steps (at least 1).
    pub count: u16,
    /// Distance between steps, in elements of the tile's dtype (may be negative or 0).
    pub stride: i32,
}

/// Maximum access-pattern dims of a tile or DMA side.
pub const MAX_DIMS: usize = 4;

/// A compute tile: partitions `[part_start, part_start + part_count)` times an access
/// pattern over each partition's bytes starting at byte `offset`. Dims are listed
/// outermost first; the free size is the product of the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    /// SRAM or PSUM.
    pub space: Space,
    /// Element type.
    pub dtype: DType,
    /// First partition.
    pub part_start: u16,
    /// Number of partitions.
    pub part_count: u16,
    /// Byte offset of element 0 within each partition.
    pub offset: u32,
    /// Number of valid entries in `dims` (1..=4).
    pub ndims: u8,
    /// Access pattern, outermost first; entries past `ndims` are zero.
    pub dims: [Dim; MAX_DIMS],
}

impl Tile {
    /// A tile with a contiguous free pattern of `free` elements.
    pub fn contiguous(space: Space, dtype: DType, part_start: u16, part_count: u16, offset: u32, free: u16) -> Tile {
        Tile::with_dims(space, dtype, part_start, part_count, offset, &[Dim { count: free, stride: 1 }])
    }

    /// A tile with the given dims (at most 4).
    pub fn with_dims(space: Space, dtype: DType, part_start: u16, part_count: u16, offset: u32, dims: &[Dim]) -> Tile {
        let mut d = [Dim::default(); MAX_DIMS];
        let n = dims.len().min(MAX_DIMS);
        d[..n].copy_from_slice(&dims[..n]);
        Tile { space, dtype, part_start, part_count, offset, ndims: n as u8, dims: d }
    }

    /// The valid dims, outermost first.
    pub fn dims(&self) -> &[Dim] {
        &self.dims[..self.ndims as usize]
    }

    /// Elements per partition (product of the counts).
    pub fn free_elems(&self) -> u64 {
        self.dims().iter().map(|d| d.count as u64).product()
    }

    /// Smallest and largest element index (relative to `offset`) the pattern touches.
    pub fn elem_extent(&self) -> (i64, i64) {
        let (mut lo, mut hi) = (0i64, 0i64);
        for d in self.dims() {
            let span = (d.count as i64 - 1) * d.stride as i64;
            if span < 0 {
                lo += span;
            } else {
                hi += span;
            }
        }
        (lo, hi)
    }

    /// True when the pattern visits elements `0..free_elems()` in order.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1i64;
        for d in self.dims().iter().rev() {
            if d.count > 1 && d.stride as i64 != expect {
                return false;
            }
            expect *= d.count as i64;
        }
        true
    }
}

fn space_dtype_byte(space: Space, dtype: DType) -> u8 {
    (match space {
        Space::Sram => 0,
        Space::Psum => 0x80,
    }) | dtype.code()
}

fn decode_space_dtype(r: &mut Reader<'_>) -> Result<(Space, DType), DecodeError> {
    let at = r.offset();
    let b = r.u8("space")?;
    let space = if b & 0x80 == 0 { Space::Sram } else { Space::Psum };
    let dtype = DType::from_code(b & 0x7f)
        .ok_or_else(|| DecodeError::new(at, "dtype", format!("unknown dtype code {}", b & 0x7f)))?;
    Ok((space, dtype))
}

fn parse_space_dtype(p: &mut Parser<'_>) -> Result<(Space, DType), AsmError> {
    let (name, span) = p.ident("a memory space (`sram` or `psum`)")?;
    let space = match name {
        "sram" => Space::Sram,
        "psum" => Space::Psum,
        other => return Err(p.err(span, format!("expected `sram` or `psum`, found `{other}`"))),
    };
    p.expect(&Tok::Dot, "`.` and a dtype after the memory space")?;
    let dtype = p.dtype()?;
    Ok((space, dtype))
}

impl Operand for Tile {
    const SIZE: usize = 36;
    const KIND: &'static str = "tile";

    fn encode(&self, out: &mut Vec<u8>, _: &mut EncodeCtx) {
        out.put_u8(space_dtype_byte(self.space, self.dtype));
        out.put_u8(self.ndims);
        out.put_u16(self.part_start);
        out.put_u16(self.part_count);
        out.put_zeros(2);
        out.put_u32(self.offset);
        for d in &self.dims {
            out.put_u16(d.count);
            out.put_i32(d.stride);
        }
    }

    fn decode(r: &mut Reader<'_>, _: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        let (space, dtype) = decode_space_dtype(r)?;
        let at = r.offset();
        let ndims = r.u8("ndims")?;
        if !(1..=MAX_DIMS as u8).contains(&ndims) {
            return Err(DecodeError::new(at, "ndims", format!("must be 1..=4, found {ndims}")));
        }
        let part_start = r.u16("part_start")?;
        let part_count = r.u16("part_count")?;
        r.zeros(2, "reserved")?;
        let offset = r.u32("offset")?;
        let mut dims = [Dim::default(); MAX_DIMS];
        for (i, d) in dims.iter_mut().enumerate() {
            let at = r.offset();
            let count = r.u16("count")?;
            let stride = r.i32("stride")?;
            if i < ndims as usize {
                if count == 0 {
                    return Err(DecodeError::new(at, format!("dims[{i}].count"), "must be at least 1"));
                }
            } else if count != 0 || stride != 0 {
                return Err(DecodeError::new(at, format!("dims[{i}]"), "unused dim must be zero"));
            }
            *d = Dim { count, stride };
        }
        Ok(Tile { space, dtype, part_start, part_count, offset, ndims, dims })
    }

    fn print(&self, out: &mut String, _: &PrintCtx<'_>) {
        let end = self.part_start as u32 + self.part_count as u32;
        let _ = write!(out, "{}.{}[{}:{}, 0x{:x}, [", self.space.name(), self.dtype, self.part_start, end, self.offset);
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{} x {}", d.count, d.stride);
        }
        out.push_str("]]");
    }

    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        let (space, dtype) = parse_space_dtype(p)?;
        p.expect(&Tok::LBracket, "`[` opening the tile")?;
        let (start, start_span) = p.uint("the first partition")?;
        p.expect(&Tok::Colon, "`:` in the partition range `start:end`")?;
        let (end, end_span) = p.uint("the partition range end")?;
        if end <= start {
            return Err(p.err(
                start_span.start..end_span.end,
                "partition range must be non-empty (`start:end` with end > start)",
            ));
        }
        if end > u16::MAX as u64 {
            return Err(p.err(end_span, "partition range end is too large"));
        }
        p.expect(&Tok::Comma, "`,` before the byte offset")?;
        let (offset, offset_span) = p.uint("the byte offset within each partition")?;
        let offset = u32::try_from(offset).map_err(|_| p.err(offset_span, "byte offset does not fit 32 bits"))?;
        p.expect(&Tok::Comma, "`,` before the access pattern")?;
        let dims = parse_dims(p, |p, count, stride, span| {
            let count = u16::try_from(count).map_err(|_| p.err(span.clone(), "dim count must be at most 65535"))?;
            let stride = i32::try_from(stride).map_err(|_| p.err(span, "dim stride does not fit 32 bits"))?;
            Ok(Dim { count, stride })
        })?;
        p.expect(&Tok::RBracket, "`]` closing the tile")?;
        Ok(Tile::with_dims(space, dtype, start as u16, (end - start) as u16, offset, &dims))
    }
}

/// Parses `[c x s, ...]` (1 to 4 dims, counts at least 1).
fn parse_dims<D>(
    p: &mut Parser<'_>,
    make: impl Fn(&mut Parser<'_>, u64, i64, std::ops::Range<usize>) -> Result<D, AsmError>,
) -> Result<Vec<D>, AsmError> {
    let open = p.expect(&Tok::LBracket, "`[` opening the access pattern `[count x stride, ...]`")?;
    let mut dims = Vec::new();
    loop {
        let (count, count_span) = p.uint("a dim count")?;
        if count == 0 {
            return Err(p.err(count_span, "dim count must be at least 1"));
        }
        let (x, x_span) = p.ident("`x` between count and stride")?;
        if x != "x" {
            return Err(p.err(x_span, format!("expected `x` between count and stride, found `{x}`")));
        }
        let (stride, stride_span) = p.sint("a dim stride")?;
        dims.push(make(p, count, stride, count_span.start..stride_span.end)?);
        if !p.eat(&Tok::Comma) {
            break;
        }
    }
    let close = p.expect(&Tok::RBracket, "`]` closing the access pattern")?;
    if dims.len() > MAX_DIMS {
        return Err(p.err(
            open.start..close.end,
            format!("access pattern has {} dims; at most {MAX_DIMS} are allowed", dims.len()),
        ));
    }
    Ok(dims)
}

/// A per-partition scalar column `[P, 1]`: one element per partition of the
/// instruction's main operand, at byte `offset` of each of those partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Column {
    /// SRAM or PSUM.
    pub space: Space,
    /// Element type.
    pub dtype: DType,
    /// Byte offset within each partition.
    pub offset: u32,
}

impl Operand for Column {
    const SIZE: usize = 8;
    const KIND: &'static str = "column";

    fn encode(&self, out: &mut Vec<u8>, _: &mut EncodeCtx) {
        out.put_u8(space_dtype_byte(self.space, self.dtype));
        out.put_zeros(3);
        out.put_u32(self.offset);
    }

    fn decode(r: &mut Reader<'_>, _: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        let (space, dtype) = decode_space_dtype(r)?;
        r.zeros(3, "reserved")?;
        let offset = r.u32("offset")?;
        Ok(Column { space, dtype, offset })
    }

    fn print(&self, out: &mut String, _: &PrintCtx<'_>) {
        let _ = write!(out, "{}.{}[*, 0x{:x}]", self.space.name(), self.dtype, self.offset);
    }

    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        let (space, dtype) = parse_space_dtype(p)?;
        p.expect(&Tok::LBracket, "`[` opening the column")?;
        p.expect(&Tok::Star, "`*` (a column spans the instruction's partitions)")?;
        p.expect(&Tok::Comma, "`,` before the byte offset")?;
        let (offset, span) = p.uint("the column's byte offset")?;
        let offset = u32::try_from(offset).map_err(|_| p.err(span, "byte offset does not fit 32 bits"))?;
        p.expect(&Tok::RBracket, "`]` closing the column")?;
        Ok(Column { space, dtype, offset })
    }
}

/// An f32 immediate. Equality and hashing are bitwise, so NaN payloads and the
/// sign of zero are part of a program's identity (as they are of its bytes).
#[derive(Debug, Clone, Copy)]
pub struct Imm(pub f32);

impl PartialEq for Imm {
    fn eq(&self, other: &Imm) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Imm {}

impl std::hash::Hash for Imm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// A scalar operand of VE/ACT: an immediate or a per-partition column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// The same f32 value for every element.
    Imm(Imm),
    /// One value per partition.
    Col(Column),
}

impl Operand for Scalar {
    const SIZE: usize = 9;
    const KIND: &'static str = "f32 immediate or column";

    fn encode(&self, out: &mut Vec<u8>, ctx: &mut EncodeCtx) {
        match self {
            Scalar::Imm(v) => {
                out.put_u8(0);
                out.put_u32(v.0.to_bits());
                out.put_zeros(4);
            }
            Scalar::Col(c) => {
                out.put_u8(1);
                c.encode(out, ctx);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, ctx: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        let at = r.offset();
        match r.u8("kind")? {
            0 => {
                let bits = r.u32("imm")?;
                r.zeros(4, "reserved")?;
                Ok(Scalar::Imm(Imm(f32::from_bits(bits))))
            }
            1 => Ok(Scalar::Col(Column::decode(r, ctx).map_err(|e| e.within("col"))?)),
            v => {
                Err(DecodeError::new(at, "kind", format!("scalar kind must be 0 (immediate) or 1 (column), found {v}")))
            }
        }
    }

    fn print(&self, out: &mut String, ctx: &PrintCtx<'_>) {
        match self {
            Scalar::Imm(v) => out.push_str(&format_f32(v.0)),
            Scalar::Col(c) => c.print(out, ctx),
        }
    }

    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        if matches!(p.peek(), Tok::Ident("sram" | "psum")) {
            Ok(Scalar::Col(Column::parse(p)?))
        } else {
            Ok(Scalar::Imm(Imm(p.float("an f32 immediate or a column")?)))
        }
    }
}

/// The canonical text of an f32: shortest round-tripping decimal, `inf`, `-inf`, or
/// `nan:0xXXXXXXXX` keeping the exact NaN bits.
pub fn format_f32(v: f32) -> String {
    if v.is_nan() {
        format!("nan:0x{:08x}", v.to_bits())
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{v:?}")
    }
}

impl Operand for Option<Column> {
    const SIZE: usize = 9;
    const KIND: &'static str = "column or `none`";

    fn encode(&self, out: &mut Vec<u8>, ctx: &mut EncodeCtx) {
        match self {
            None => out.put_zeros(9),
            Some(c) => {
                out.put_u8(1);
                c.encode(out, ctx);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, ctx: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        let at = r.offset();
        match r.u8("present")? {
            0 => {
                r.zeros(8, "reserved")?;
                Ok(None)
            }
            1 => Ok(Some(Column::decode(r, ctx)?)),
            v => Err(DecodeError::new(at, "present", format!("must be 0 or 1, found {v}"))),
        }
    }

    fn print(&self, out: &mut String, ctx: &PrintCtx<'_>) {
        match self {
            None => out.push_str("none"),
            Some(c) => c.print(out, ctx),
        }
    }

    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        if matches!(p.peek(), Tok::Ident("none")) {
            p.bump();
            Ok(None)
        } else {
            Ok(Some(Column::parse(p)?))
        }
    }
}

impl Operand for bool {
    const SIZE: usize = 1;
    const KIND: &'static str = "bool";

    fn encode(&self, out: &mut Vec<u8>, _: &mut EncodeCtx) {
        out.put_u8(*self as u8);
    }
    fn decode(r: &mut Reader<'_>, _: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        r.bool("flag")
    }
    fn print(&self, out: &mut String, _: &PrintCtx<'_>) {
        out.push_str(if *self { "true" } else { "false" });
    }
    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        let (name, span) = p.ident("`true` or `false`")?;
        match name {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(p.err(span, format!("expected `true` or `false`, found `{other}`"))),
        }
    }
}

impl Operand for i32 {
    const SIZE: usize = 4;
    const KIND: &'static str = "i32 immediate";

    fn encode(&self, out: &mut Vec<u8>, _: &mut EncodeCtx) {
        out.put_i32(*self);
    }
    fn decode(r: &mut Reader<'_>, _: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        r.i32("imm")
    }
    fn print(&self, out: &mut String, _: &PrintCtx<'_>) {
        let _ = write!(out, "{self}");
    }
    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        let (v, span) = p.sint("an integer")?;
        i32::try_from(v).map_err(|_| p.err(span, "integer does not fit 32 bits"))
    }
}

impl Operand for Imm {
    const SIZE: usize = 4;
    const KIND: &'static str = "f32 immediate";

    fn encode(&self, out: &mut Vec<u8>, _: &mut EncodeCtx) {
        out.put_u32(self.0.to_bits());
    }
    fn decode(r: &mut Reader<'_>, _: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        Ok(Imm(f32::from_bits(r.u32("imm")?)))
    }
    fn print(&self, out: &mut String, _: &PrintCtx<'_>) {
        out.push_str(&format_f32(self.0));
    }
    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        Ok(Imm(p.float("an f32 immediate")?))
    }
}

/// Defines a small enum operand encoded as one byte, with its text names and docs.
macro_rules! byte_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[doc = $doc:literal])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[doc = $doc])* $variant),+ }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Text name.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            /// Documentation of the value.
            pub fn doc(self) -> &'static str {
                match self { $($name::$variant => concat!($($doc),*)),+ }
            }
        }

        impl Operand for $name {
            const SIZE: usize = 1;
            const KIND: &'static str = $kind;
            fn encode(&self, out: &mut Vec<u8>, _: &mut EncodeCtx) {
                out.put_u8(*self as u8);
            }
            fn decode(r: &mut Reader<'_>, _: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
                let at = r.offset();
                let code = r.u8(stringify!($name))?;
                $name::ALL.get(code as usize).copied().ok_or_else(|| {
                    DecodeError::new(at, "", format!("unknown {} code {code}", $kind))
                })
            }
            fn print(&self, out: &mut String, _: &PrintCtx<'_>) {
                out.push_str(self.name());
            }
            fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
                let (name, span) = p.ident($kind)?;
                $name::ALL.iter().copied().find(|v| v.name() == name).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.name()).collect();
                    p.err(span, format!("unknown {} `{name}` (expected one of: {})", $kind, names.join(", ")))
                })
            }
        }
    };
}

byte_enum!(
    /// Binary arithmetic of the vector engine.
    AluOp, "ALU op" {
        /// a + b
        Add = "add",
        /// a - b
        Sub = "sub",
        /// a * b
        Mul = "mul",
        /// a / b (IEEE division in f32)
        Div = "div",
        /// IEEE maxNum-style maximum (a NaN operand gives the other operand; both NaN give NaN)
        Max = "max",
        /// IEEE minNum-style minimum
        Min = "min",
        /// 1 where a < b, else 0 (0 when either is NaN)
        IsLt = "is_lt",
        /// 1 where a <= b, else 0 (0 when either is NaN)
        IsLe = "is_le",
        /// 1 where a > b, else 0 (0 when either is NaN)
        IsGt = "is_gt",
        /// 1 where a >= b, else 0 (0 when either is NaN)
        IsGe = "is_ge",
        /// 1 where a == b, else 0 (0 when either is NaN; -0 == +0)
        IsEq = "is_eq",
        /// 1 where a != b, else 0 (1 when either is NaN)
        IsNe = "is_ne",
    }
);

byte_enum!(
    /// Free-axis reductions.
    ReduceOp, "reduction" {
        /// Sum in f32, in access-pattern order.
        Sum = "sum",
        /// Maximum (as `max`).
        Max = "max",
    }
);

byte_enum!(
    /// Comparison of an affine expression against zero.
    CmpOp, "comparison" {
        /// expr >= 0
        Ge = "ge",
        /// expr > 0
        Gt = "gt",
        /// expr <= 0
        Le = "le",
        /// expr < 0
        Lt = "lt",
        /// expr == 0
        Eq = "eq",
        /// expr != 0
        Ne = "ne",
    }
);

byte_enum!(
    /// Functions of the activation engine.
    ActFunc, "activation function" {
        /// x
        Identity = "identity",
        /// e^x
        Exp = "exp",
        /// tanh(x)
        Tanh = "tanh",
        /// 1 / (1 + e^-x)
        Sigmoid = "sigmoid",
        /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        GeluTanh = "gelu_tanh",
        /// erf(x)
        Erf = "erf",
        /// x * sigmoid(x)
        Silu = "silu",
        /// x if x > 0 or x is NaN, else +0
        Relu = "relu",
        /// 1 / sqrt(x)
        Rsqrt = "rsqrt",
        /// 1 / x
        Reciprocal = "reciprocal",
        /// x * x
        Square = "square",
        /// sqrt(x)
        Sqrt = "sqrt",
        /// 0.5 x (1 + erf(x / sqrt 2)), the exact GELU
        Gelu = "gelu",
        /// ln(x) (natural logarithm; -inf at 0, NaN below)
        Ln = "ln",
    }
);

impl ActFunc {
    /// True for functions that count as transcendental work in the roofline.
    pub fn is_transcendental(self) -> bool {
        !matches!(self, ActFunc::Identity | ActFunc::Relu | ActFunc::Square)
    }
}

/// Memory a DMA side addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmaSpace {
    /// HBM, byte addresses from 0.
    Hbm,
    /// The core's SRAM as one flat byte space: `partition * partition_bytes + offset`.
    Sram,
}

impl DmaSpace {
    /// Text name.
    pub fn name(self) -> &'static str {
        match self {
            DmaSpace::Hbm => "hbm",
            DmaSpace::Sram => "sram",
        }
    }
}

/// One DMA access-pattern dim: `count` elements, `stride` bytes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DmaDim {
    /// Number of steps (at least 1).
    pub count: u32,
    /// Distance between steps in bytes (may be negative or 0).
    pub stride: i64,
}

/// One side of a DMA transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmaSide {
    /// HBM or SRAM.
    pub space: DmaSpace,
    /// For a destination in SRAM: the cores whose SRAM it writes (bit `c`: core
    /// `c`; several bits: a multicast) over the fabric; 0: the issuing core's
    /// own memory, the only choice for sources and HBM.
    pub cores: u32,
    /// Byte address of element 0.
    pub addr: u64,
    /// Number of valid dims (1..=4).
    pub ndims: u8,
    /// Access pattern, outermost first; entries past `ndims` are zero.
    pub dims: [DmaDim; MAX_DIMS],
}

impl DmaSide {
    /// A side with the given dims (at most 4).
    pub fn new(space: DmaSpace, addr: u64, dims: &[DmaDim]) -> DmaSide {
        let mut d = [DmaDim::default(); MAX_DIMS];
        let n = dims.len().min(MAX_DIMS);
        d[..n].copy_from_slice(&dims[..n]);
        DmaSide { space, addr, cores: 0, ndims: n as u8, dims: d }
    }

    /// The same side in the SRAM of the cores in `cores` (a bit set).
    pub fn on_cores(self, cores: u32) -> DmaSide {
        DmaSide { cores, ..self }
    }

    /// The cores a fabric side names, ascending.
    pub fn core_list(&self) -> impl Iterator<Item = usize> + '_ {
        (0..32).filter(|c| self.cores >> c & 1 == 1)
    }

    /// The valid dims, outermost first.
    pub fn dims(&self) -> &[DmaDim] {
        &self.dims[..self.ndims as usize]
    }

    /// Number of elements the pattern visits.
    pub fn elems(&self) -> u64 {
        self.dims().iter().map(|d| d.count as u64).product()
    }

    /// Lowest and highest byte offset (relative to `addr`) of an element start.
    pub fn byte_extent(&self) -> (i128, i128) {
        let (mut lo, mut hi) = (0i128, 0i128);
        for d in self.dims() {
            let span = (d.count as i128 - 1) * d.stride as i128;
            if span < 0 {
                lo += span;
            } else {
                hi += span;
            }
        }
        (lo, hi)
    }

    /// Elements per contiguous run: the product of the innermost dims that merge
    /// into one ascending byte range.
    pub fn run_elems(&self, elem_bytes: u64) -> u64 {
        let mut run = 1u64;
        for d in self.dims().iter().rev() {
            if d.count == 1 {
                continue;
            }
            if d.stride as i128 == (run * elem_bytes) as i128 {
                run *= d.count as u64;
            } else {
                break;
            }
        }
        run
    }
}

/// A DMA transfer: both sides visit the same number of `elem_bytes`-byte elements,
/// in order; the i-th element read is the i-th written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmaTransfer {
    /// Element size in bytes (1, 2 or 4).
    pub elem_bytes: u8,
    /// Source.
    pub src: DmaSide,
    /// Destination.
    pub dst: DmaSide,
}

/// Size of one entry of the `.jbin` descriptor table.
pub const DESC_SIZE: usize = 136;

impl DmaTransfer {
    /// Elements moved.
    pub fn elems(&self) -> u64 {
        self.src.elems()
    }

    /// Bytes moved.
    pub fn bytes(&self) -> u64 {
        self.elems() * self.elem_bytes as u64
    }

    /// True for a core-to-core transfer (over the fabric, not HBM).
    pub fn is_fabric(&self) -> bool {
        self.dst.cores != 0
    }

    /// Bytes the transfer is charged for: the data is cut into runs that are
    /// contiguous on both sides, and each run costs at least `min_run_bytes`.
    pub fn charged_bytes(&self, min_run_bytes: u64) -> u64 {
        let e = self.elem_bytes as u64;
        let total = self.elems();
        let ra = self.src.run_elems(e).max(1);
        let rb = self.dst.run_elems(e).max(1);
        // Runs break at every multiple of either side's run length.
        let (small, large) = if ra <= rb { (ra, rb) } else { (rb, ra) };
        if large % small == 0 {
            let runs = total / small;
            let tail = total % small;
            let full = runs * (small * e).max(min_run_bytes);
            return full + if tail > 0 { (tail * e).max(min_run_bytes) } else { 0 };
        }
        // Uneven periods: walk the break points (bounded by the element count).
        let mut charged = 0u64;
        let mut pos = 0u64;
        while pos < total {
            let next_a = (pos / ra + 1) * ra;
            let next_b = (pos / rb + 1) * rb;
            let next = next_a.min(next_b).min(total);
            charged += ((next - pos) * e).max(min_run_bytes);
            pos = next;
        }
        charged
    }

    /// Encodes the descriptor-table entry.
    pub fn encode_desc(&self, out: &mut Vec<u8>) {
        out.put_u8(self.elem_bytes);
        out.put_zeros(7);
        for side in [&self.src, &self.dst] {
            out.put_u8(side.space as u8);
            out.put_u8(side.ndims);
            out.put_u32(side.cores);
            out.put_zeros(2);
            out.put_u64(side.addr);
            for d in &side.dims {
                out.put_u32(d.count);
                out.put_i64(d.stride);
            }
        }
    }

    /// Decodes a descriptor-table entry.
    pub fn decode_desc(r: &mut Reader<'_>) -> Result<DmaTransfer, DecodeError> {
        let at = r.offset();
        let elem_bytes = r.u8("elem_bytes")?;
        if !matches!(elem_bytes, 1 | 2 | 4) {
            return Err(DecodeError::new(at, "elem_bytes", format!("must be 1, 2 or 4, found {elem_bytes}")));
        }
        r.zeros(7, "reserved")?;
        let mut sides = [DmaSide::new(DmaSpace::Hbm, 0, &[]); 2];
        for (s, name) in sides.iter_mut().zip(["src", "dst"]) {
            let decode_side = |r: &mut Reader<'_>| -> Result<DmaSide, DecodeError> {
                let at = r.offset();
                let space = match r.u8("space")? {
                    0 => DmaSpace::Hbm,
                    1 => DmaSpace::Sram,
                    v => {
                        return Err(DecodeError::new(
                            at,
                            "space",
                            format!("DMA space must be 0 (hbm) or 1 (sram), found {v}"),
                        ))
                    }
                };
                let at = r.offset();
                let ndims = r.u8("ndims")?;
                if !(1..=MAX_DIMS as u8).contains(&ndims) {
                    return Err(DecodeError::new(at, "ndims", format!("must be 1..=4, found {ndims}")));
                }
                let cores = r.u32("cores")?;
                r.zeros(2, "reserved")?;
                let addr = r.u64("addr")?;
                let mut dims = [DmaDim::default(); MAX_DIMS];
                for (i, d) in dims.iter_mut().enumerate() {
                    let at = r.offset();
                    let count = r.u32("count")?;
                    let stride = r.i64("stride")?;
                    if i < ndims as usize {
                        if count == 0 {
                            return Err(DecodeError::new(at, format!("dims[{i}].count"), "must be at least 1"));
                        }
                    } else if count != 0 || stride != 0 {
                        return Err(DecodeError::new(at, format!("dims[{i}]"), "unused dim must be zero"));
                    }
                    *d = DmaDim { count, stride };
                }
                Ok(DmaSide { space, addr, cores, ndims, dims })
            };
            *s = decode_side(r).map_err(|e| e.within(name))?;
        }
        Ok(DmaTransfer { elem_bytes, src: sides[0], dst: sides[1] })
    }
}

fn print_dma_side(side: &DmaSide, out: &mut String, ctx: &PrintCtx<'_>) {
    let cores: Vec<String> = side.core_list().map(|c| c.to_string()).collect();
    match cores.len() {
        0 => {}
        1 => {
            let _ = write!(out, "core{}.", cores[0]);
        }
        _ => {
            let _ = write!(out, "cores[{}].", cores.join(", "));
        }
    }
    let _ = write!(out, "{}[", side.space.name());
    let symbol = (side.space == DmaSpace::Hbm)
        .then(|| {
            ctx.tensors.iter().find(|t| side.addr >= t.addr && side.addr < t.addr.saturating_add(t.size_bytes().max(1)))
        })
        .flatten();
    match symbol {
        Some(t) if side.addr == t.addr => out.push_str(&t.name),
        Some(t) => {
            let _ = write!(out, "{} + 0x{:x}", t.name, side.addr - t.addr);
        }
        None => {
            let _ = write!(out, "0x{:x}", side.addr);
        }
    }
    out.push_str("] [");
    for (i, d) in side.dims().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{} x {}", d.count, d.stride);
    }
    out.push(']');
}

fn parse_dma_side(p: &mut Parser<'_>) -> Result<DmaSide, AsmError> {
    let cores = p.core_prefix()?;
    let (name, span) = p.ident("a DMA memory (`hbm` or `sram`)")?;
    if let Some((_, cspan)) = &cores {
        if name != "sram" {
            return Err(
                p.err(cspan.start..span.end, "another core's memory is reachable only in SRAM: `coreN.sram[...]`")
            );
        }
    }
    let space = match name {
        "hbm" => DmaSpace::Hbm,
        "sram" => DmaSpace::Sram,
        "psum" => {
            return Err(p.err(span, "DMA cannot address PSUM; move PSUM data to SRAM with a VE or ACT copy first"))
        }
        other => return Err(p.err(span, format!("expected `hbm` or `sram`, found `{other}`"))),
    };
    p.expect(&Tok::LBracket, "`[` opening the address")?;
    let addr = match p.peek() {
        Tok::Ident(_) => {
            let (tname, tspan) = p.ident("a tensor name")?;
            if space != DmaSpace::Hbm {
                return Err(p.err(tspan, "tensor names address HBM only; SRAM addresses are numbers"));
            }
            let base = p.tensor_addr(tname).ok_or_else(|| {
                p.err(tspan.clone(), format!("undeclared tensor `{tname}` (declare it with `.tensor`)"))
            })?;
            let off = if p.eat(&Tok::Plus) { p.uint("a byte offset")?.0 } else { 0 };
            base.checked_add(off).ok_or_else(|| p.err(tspan, "address overflows 64 bits"))?
        }
        _ => p.uint("a byte address")?.0,
    };
    p.expect(&Tok::RBracket, "`]` closing the address")?;
    let dims = parse_dims(p, |p, count, stride, span| {
        let count = u32::try_from(count).map_err(|_| p.err(span, "DMA dim count must fit 32 bits"))?;
        Ok(DmaDim { count, stride })
    })?;
    Ok(DmaSide::new(space, addr, &dims).on_cores(cores.map_or(0, |c| c.0)))
}

/// The rows of an HBM table a `dma_gather` reads: `rows` rows, `stride` bytes
/// apart, the first at byte `addr`. Text: `hbm[table] [ROWS x STRIDE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HbmRows {
    /// Byte address of row 0.
    pub addr: u64,
    /// Number of rows (valid indices are `0..rows`).
    pub rows: u32,
    /// Distance between rows, in bytes.
    pub stride: u64,
}

impl HbmRows {
    /// The bytes the table spans, as a DMA side whose rows are `row_bytes` long
    /// (in `elem_bytes` elements): what checks and tensor rules see.
    pub fn side(&self, row_bytes: u64, elem_bytes: u64) -> DmaSide {
        let e = elem_bytes.max(1);
        let dims = [
            DmaDim { count: self.rows.max(1), stride: self.stride as i64 },
            DmaDim { count: (row_bytes / e).max(1) as u32, stride: e as i64 },
        ];
        DmaSide::new(DmaSpace::Hbm, self.addr, &dims)
    }
}

impl Operand for HbmRows {
    const SIZE: usize = 24;
    const KIND: &'static str = "HBM table";

    fn encode(&self, out: &mut Vec<u8>, _: &mut EncodeCtx) {
        out.put_u64(self.addr);
        out.put_u32(self.rows);
        out.put_zeros(4);
        out.put_u64(self.stride);
    }

    fn decode(r: &mut Reader<'_>, _: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        let addr = r.u64("addr")?;
        let at = r.offset();
        let rows = r.u32("rows")?;
        if rows == 0 {
            return Err(DecodeError::new(at, "rows", "a table has at least one row"));
        }
        r.zeros(4, "reserved")?;
        let stride = r.u64("stride")?;
        Ok(HbmRows { addr, rows, stride })
    }

    fn print(&self, out: &mut String, ctx: &PrintCtx<'_>) {
        let side = DmaSide::new(DmaSpace::Hbm, self.addr, &[DmaDim { count: self.rows, stride: self.stride as i64 }]);
        print_dma_side(&side, out, ctx);
    }

    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        let start = p.span();
        let side = parse_dma_side(p)?;
        let span = start.start..p.span().start;
        match (side.space, side.dims()) {
            (DmaSpace::Hbm, [d]) if d.stride >= 0 => {
                Ok(HbmRows { addr: side.addr, rows: d.count, stride: d.stride as u64 })
            }
            _ => Err(p.err(span, "a gather table is `hbm[ADDR] [ROWS x STRIDE]`: HBM, one dim, a stride of 0 or more")),
        }
    }
}

impl Operand for DmaTransfer {
    const SIZE: usize = 4;
    const KIND: &'static str = "DMA transfer";

    fn encode(&self, out: &mut Vec<u8>, ctx: &mut EncodeCtx) {
        out.put_u32(ctx.descs.len() as u32);
        ctx.descs.push(*self);
    }

    fn decode(r: &mut Reader<'_>, ctx: &mut DecodeCtx<'_>) -> Result<Self, DecodeError> {
        let at = r.offset();
        let idx = r.u32("desc")?;
        if idx != ctx.next_desc {
            return Err(DecodeError::new(
                at,
                "desc",
                format!(
                    "descriptor index {idx} is not the canonical {} (DMA instructions use the table in order)",
                    ctx.next_desc
                ),
            ));
        }
        let d = *ctx.descs.get(idx as usize).ok_or_else(|| {
            DecodeError::new(
                at,
                "desc",
                format!("descriptor index {idx} is past the table's {} entries", ctx.descs.len()),
            )
        })?;
        ctx.next_desc += 1;
        Ok(d)
    }

    fn print(&self, out: &mut String, ctx: &PrintCtx<'_>) {
        print_dma_side(&self.src, out, ctx);
        out.push_str(" -> ");
        print_dma_side(&self.dst, out, ctx);
        let _ = write!(out, " elem {}", self.elem_bytes);
    }

    fn parse(p: &mut Parser<'_>) -> Result<Self, AsmError> {
        let src = parse_dma_side(p)?;
        p.expect(&Tok::Arrow, "`->` between the DMA source and destination")?;
        let dst = parse_dma_side(p)?;
        let (kw, span) = p.ident("`elem` and the element size in bytes")?;
        if kw != "elem" {
            return Err(p.err(span, format!("expected `elem`, found `{kw}`")));
        }
        let (e, span) = p.uint("the element size in bytes")?;
        if !matches!(e, 1 | 2 | 4) {
            return Err(p.err(span, format!("DMA element size must be 1, 2 or 4 bytes, found {e}")));
        }
        Ok(DmaTransfer { elem_bytes: e as u8, src, dst })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xfer(src: &[DmaDim], dst: &[DmaDim], e: u8) -> DmaTransfer {
        DmaTransfer {
            elem_bytes: e,
            src: DmaSide::new(DmaSpace::Hbm, 0, src),
            dst: DmaSide::new(DmaSpace::Sram, 0, dst),
        }
    }

    #[test]
    fn charged_bytes_follow_the_min_run_rule() {
        // 32 rows of 64 bf16: contiguous in HBM, one row per partition in SRAM.
        let t = xfer(
            &[DmaDim { count: 2048, stride: 2 }],
            &[DmaDim { count: 32, stride: 16384 }, DmaDim { count: 64, stride: 2 }],
            2,
        );
        assert_eq!(t.charged_bytes(64), 4096);
        // 16-byte rows are charged 64 bytes each.
        let t = xfer(
            &[DmaDim { count: 256, stride: 2 }],
            &[DmaDim { count: 32, stride: 16384 }, DmaDim { count: 8, stride: 2 }],
            2,
        );
        assert_eq!(t.bytes(), 512);
        assert_eq!(t.charged_bytes(64), 32 * 64);
        // Element-wise gather: every element is its own run.
        let t = xfer(&[DmaDim { count: 10, stride: 100 }], &[DmaDim { count: 10, stride: 4 }], 4);
        assert_eq!(t.charged_bytes(64), 640);
        // Uneven runs (3 and 2 elements): breaks at 0,2,3,4,6 -> runs 2,1,1,2.
        let t = xfer(
            &[DmaDim { count: 2, stride: 100 }, DmaDim { count: 3, stride: 1 }],
            &[DmaDim { count: 3, stride: 50 }, DmaDim { count: 2, stride: 1 }],
            1,
        );
        assert_eq!(t.charged_bytes(1), 6);
        assert_eq!(t.charged_bytes(64), 4 * 64);
    }

    #[test]
    fn f32_text_is_exact() {
        for v in [0.125f32, -0.0, 1e-45, 3.4028235e38, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0x7fc0_0001)] {
            let s = format_f32(v);
            assert!(!s.is_empty());
        }
        assert_eq!(format_f32(f32::from_bits(0xffc0_0000)), "nan:0xffc00000");
        assert_eq!(format_f32(-0.0), "-0.0");
    }
}
