//! Bounds-checked little-endian reading for the binary formats.
//!
//! Every read either returns a value or a [`DecodeError`] naming the field and the
//! absolute byte offset; nothing here panics or allocates from an unchecked length.

use std::fmt;

/// A rejected byte string: which field, at which absolute byte offset, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Absolute byte offset in the input where the offending field starts.
    pub offset: usize,
    /// Dotted path of the field, e.g. `code.core0.pe[3].dst.dtype`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl DecodeError {
    /// A new error.
    pub fn new(offset: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        DecodeError { offset, field: field.into(), message: message.into() }
    }

    /// Prefixes the field path with an enclosing field's name.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_string()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte offset {} (0x{:x}), field `{}`: {}", self.offset, self.offset, self.field, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over a byte slice that knows its absolute position in the file.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    /// Reads `data`, which starts at absolute offset `base` of the file.
    pub fn new(data: &'a [u8], base: usize) -> Self {
        Reader { data, pos: 0, base }
    }

    /// Absolute offset of the next byte.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// An error at the current offset.
    pub fn error(&self, field: &str, message: impl Into<String>) -> DecodeError {
        DecodeError::new(self.offset(), field, message)
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.error(field, format!("needs {n} bytes but only {} remain", self.remaining())));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    /// Reads a little-endian `u16`.
    pub fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian `u32`.
    pub fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian `i32`.
    pub fn i32(&mut self, field: &str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian `u64`.
    pub fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian `i64`.
    pub fn i64(&mut self, field: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    /// Reads `n` bytes that must all be zero (reserved space keeps encodings canonical).
    pub fn zeros(&mut self, n: usize, field: &str) -> Result<(), DecodeError> {
        let at = self.offset();
        let bytes = self.take(n, field)?;
        if let Some(i) = bytes.iter().position(|&b| b != 0) {
            return Err(DecodeError::new(at + i, field, "reserved byte is not zero"));
        }
        Ok(())
    }

    /// Reads a `u8` that must be 0 or 1.
    pub fn bool(&mut self, field: &str) -> Result<bool, DecodeError> {
        let at = self.offset();
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::new(at, field, format!("boolean must be 0 or 1, found {v}"))),
        }
    }
}

/// Little-endian writing helpers on `Vec<u8>`.
pub trait WriteLe {
    /// Appends a `u8`.
    fn put_u8(&mut self, v: u8);
    /// Appends a `u16`.
    fn put_u16(&mut self, v: u16);
    /// Appends a `u32`.
    fn put_u32(&mut self, v: u32);
    /// Appends an `i32`.
    fn put_i32(&mut self, v: i32);
    /// Appends a `u64`.
    fn put_u64(&mut self, v: u64);
    /// Appends an `i64`.
    fn put_i64(&mut self, v: i64);
    /// Appends `n` zero bytes.
    fn put_zeros(&mut self, n: usize);
}

impl WriteLe for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}

/// Reads a whole file of at most `limit` bytes. A regular file's size is checked
/// before reading; anything else (a pipe, `/dev/zero`) is read up to `limit + 1`
/// bytes and refused if it has more, so no input makes a reader allocate without
/// bound. The error (without the path, which the caller adds) names the limit.
pub fn read_file_limited(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let too_big = |what: String| format!("{what}; the limit is {limit} bytes");
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if meta.is_file() && meta.len() > limit {
        return Err(too_big(format!("{} bytes", meta.len())));
    }
    let mut bytes = Vec::with_capacity(if meta.is_file() { meta.len() as usize } else { 0 });
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(too_big("the file is longer".into()));
    }
    Ok(bytes)
}
