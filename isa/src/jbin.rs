//! The `.jbin` chip binary: writing and validating reading.
//!
//! Layout (all integers little-endian; docs/binary-format.md is the reference):
//!
//! ```text
//! header (64 bytes)
//!   magic "\x89JBIN\r\n\x1a", version major u16, minor u16, flags u32 (0),
//!   target name [16] (NUL-padded), target hash [8], cores u16,
//!   engines per core u16, section count u32 (7), total length u64, reserved [8]
//! sections, in this order, each: tag [4], reserved u32 (0), payload length u64, payload
//!   TENS tensor table   CNST constant data   SEMS semaphore names
//!   DESC DMA descriptors   CODE instruction streams   DBUG debug info   ROOF roofline inputs
//!   EXTN model-file names of inputs and outputs (format 1.1 and later)
//! trailer: CRC-32 (IEEE) of every preceding byte, u32
//! ```
//!
//! [`read`] accepts exactly the byte strings [`write`] produces for valid programs:
//! any other input is rejected with a [`JbinError`] naming the field and byte
//! offset. Every length is checked against the bytes that remain before anything
//! is allocated, so no input can make the reader allocate more than its own size.

use std::fmt;

use crate::bytes::{DecodeError, Reader, WriteLe};
use crate::dtype::DType;
use crate::inst::{Inst, INST_SIZE};
use crate::operand::{DecodeCtx, DmaTransfer, EncodeCtx, DESC_SIZE};
use crate::program::{ExternalName, ExternalType, Program, ProgramError, Role, RooflineInputs, SemDecl, TensorDecl};
use crate::target::{Target, TargetError};

/// File magic.
pub const MAGIC: [u8; 8] = *b"\x89JBIN\r\n\x1a";
/// Format major version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// Newest format minor version this crate reads and writes: 1 adds the EXTN
/// section, 2 remote signals and core-to-core DMA. A program is written in the
/// oldest version that holds it (1.0 without external names or fabric use).
pub const VERSION_MINOR: u16 = 2;
/// Bytes of the fixed header.
pub const HEADER_SIZE: usize = 64;
/// Section tags, in file order (EXTN only in format 1.1).
pub const SECTIONS: [&[u8; 4]; 8] = [b"TENS", b"CNST", b"SEMS", b"DESC", b"CODE", b"DBUG", b"ROOF", b"EXTN"];

/// Why a byte string is not a valid `.jbin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JbinError {
    /// The bytes do not follow the format.
    Decode(DecodeError),
    /// The header names a target this build does not know.
    Target(TargetError),
    /// The bytes decode but the program breaks a rule of the target or format.
    Program(ProgramError),
}

impl fmt::Display for JbinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JbinError::Decode(e) => write!(f, "invalid .jbin: {e}"),
            JbinError::Target(e) => write!(f, "invalid .jbin: {e}"),
            JbinError::Program(e) => write!(f, "invalid .jbin program: {e}"),
        }
    }
}

impl std::error::Error for JbinError {}

impl From<DecodeError> for JbinError {
    fn from(e: DecodeError) -> Self {
        JbinError::Decode(e)
    }
}

fn section(out: &mut Vec<u8>, tag: &[u8; 4], payload: &[u8]) {
    out.extend_from_slice(tag);
    out.put_u32(0);
    out.put_u64(payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Encodes a program. The program should have passed [`Program::validate`]; the
/// bytes of an invalid program are rejected by [`read`].
pub fn write(p: &Program) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    let minor = if p.uses_fabric() { 2 } else { u16::from(!p.external.is_empty()) };
    let sections = section_count(minor);
    out.put_u16(VERSION_MAJOR);
    out.put_u16(minor);
    out.put_u32(0);
    let mut name = [0u8; 16];
    let n = p.target.len().min(16);
    name[..n].copy_from_slice(&p.target.as_bytes()[..n]);
    out.extend_from_slice(&name);
    out.extend_from_slice(&p.target_hash);
    out.put_u16(p.cores.len() as u16);
    out.put_u16(p.cores.first().map_or(0, |c| c.len()) as u16);
    out.put_u32(sections as u32);
    let total_at = out.len();
    out.put_u64(0);
    out.put_zeros(8);

    let mut tens = Vec::new();
    let mut cnst = Vec::new();
    tens.put_u32(p.tensors.len() as u32);
    for t in &p.tensors {
        tens.put_u16(t.name.len() as u16);
        tens.extend_from_slice(t.name.as_bytes());
        tens.put_u8(t.dtype.code());
        tens.put_u8(t.role as u8);
        tens.put_u8(t.shape.len() as u8);
        tens.put_u8(0);
        tens.put_u64(t.addr);
        for &d in &t.shape {
            tens.put_u64(d);
        }
        cnst.extend_from_slice(&t.data);
    }

    let mut sems = Vec::new();
    sems.put_u32(p.semaphores.len() as u32);
    for s in &p.semaphores {
        sems.put_u8(s.id);
        sems.put_u8(s.name.len() as u8);
        sems.extend_from_slice(s.name.as_bytes());
    }

    let mut code = Vec::new();
    let mut ctx = EncodeCtx::default();
    for core in &p.cores {
        for stream in core {
            code.put_u32(stream.len() as u32);
            for inst in stream {
                inst.encode(&mut code, &mut ctx);
            }
        }
    }
    let mut desc = Vec::new();
    desc.put_u32(ctx.descs.len() as u32);
    for d in &ctx.descs {
        d.encode_desc(&mut desc);
    }

    let mut dbug = Vec::new();
    dbug.put_u32(p.debug_ops.len() as u32);
    for s in &p.debug_ops {
        dbug.put_u32(s.len() as u32);
        dbug.extend_from_slice(s.as_bytes());
    }
    for (_, _, _, inst) in p.instructions() {
        dbug.put_u32(inst.debug.unwrap_or(u32::MAX));
    }

    let mut roof = Vec::new();
    let r = p.roofline.unwrap_or_default();
    roof.put_u8(p.roofline.is_some() as u8);
    roof.put_zeros(7);
    for v in [r.flops_f32, r.flops_16bit, r.flops_8bit, r.input_bytes, r.output_bytes, r.transcendentals] {
        roof.put_u64(v);
    }

    let mut extn = Vec::new();
    extn.put_u32(p.external.len() as u32);
    for x in &p.external {
        extn.put_u32(x.tensor);
        extn.put_u16(x.name.len() as u16);
        extn.extend_from_slice(x.name.as_bytes());
        extn.put_u8(x.elem.code());
    }

    let payloads = [&tens, &cnst, &sems, &desc, &code, &dbug, &roof, &extn];
    for (tag, payload) in SECTIONS.iter().zip(payloads).take(sections) {
        section(&mut out, tag, payload);
    }
    let total = (out.len() + 4) as u64;
    out[total_at..total_at + 8].copy_from_slice(&total.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.put_u32(crc);
    out
}

/// Reads and validates a `.jbin` against the built-in target its header names.
pub fn read(bytes: &[u8]) -> Result<Program, JbinError> {
    let name = header_target_name(bytes)?;
    let target = Target::builtin(&name).map_err(JbinError::Target)?;
    read_for_target(bytes, &target)
}

/// The target name in a `.jbin` header (after checking magic, version and checksum).
pub fn header_target_name(bytes: &[u8]) -> Result<String, JbinError> {
    check_envelope(bytes)?;
    let raw = &bytes[16..32];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(16);
    if raw[end..].iter().any(|&b| b != 0) {
        return Err(DecodeError::new(16 + end, "header.target_name", "name must be NUL-padded").into());
    }
    let name = std::str::from_utf8(&raw[..end])
        .ok()
        .filter(|s| !s.is_empty() && s.is_ascii())
        .ok_or_else(|| DecodeError::new(16, "header.target_name", "must be 1 to 16 ASCII bytes"))?;
    Ok(name.to_string())
}

/// Magic, version, declared length and checksum: the checks that need no target.
fn check_envelope(bytes: &[u8]) -> Result<(), JbinError> {
    if bytes.len() < HEADER_SIZE + 4 {
        return Err(DecodeError::new(
            0,
            "header",
            format!("file has {} bytes; a .jbin has at least {}", bytes.len(), HEADER_SIZE + 4),
        )
        .into());
    }
    if bytes[..8] != MAGIC {
        return Err(DecodeError::new(0, "header.magic", "not a .jbin file (bad magic)").into());
    }
    let mut r = Reader::new(&bytes[8..HEADER_SIZE], 8);
    let major = r.u16("header.version_major")?;
    if major != VERSION_MAJOR {
        return Err(DecodeError::new(
            8,
            "header.version_major",
            format!("format version {major} is not supported (this build reads {VERSION_MAJOR})"),
        )
        .into());
    }
    let total_at = 48;
    let total = u64::from_le_bytes(bytes[total_at..total_at + 8].try_into().expect("8 bytes"));
    if total != bytes.len() as u64 {
        return Err(DecodeError::new(
            total_at,
            "header.total_length",
            format!("header says {total} bytes but the file has {}", bytes.len()),
        )
        .into());
    }
    let crc_at = bytes.len() - 4;
    let stored = u32::from_le_bytes(bytes[crc_at..].try_into().expect("4 bytes"));
    let actual = crc32fast::hash(&bytes[..crc_at]);
    if stored != actual {
        return Err(DecodeError::new(
            crc_at,
            "checksum",
            format!("CRC-32 is 0x{stored:08x} but the content hashes to 0x{actual:08x} (file corrupt)"),
        )
        .into());
    }
    Ok(())
}

/// Writes the header's total length and the trailing checksum of `bytes` (a
/// `.jbin` at least a header and a trailer long; shorter input is left alone),
/// so an edited binary gets past the envelope checks to the structure and the
/// program's rules. For fuzzing and for tests that forge binaries.
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_SIZE + 4 {
        return;
    }
    let len = bytes.len() as u64;
    bytes[48..56].copy_from_slice(&len.to_le_bytes());
    let crc_at = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..crc_at]);
    bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
}

/// Reads and validates a `.jbin` against `target`.
pub fn read_for_target(bytes: &[u8], target: &Target) -> Result<Program, JbinError> {
    check_envelope(bytes)?;
    let body = &bytes[..bytes.len() - 4];
    let mut r = Reader::new(body, 0);
    r.take(8, "header.magic")?;
    r.u16("header.version_major")?;
    let at = r.offset();
    let minor = r.u16("header.version_minor")?;
    if minor > VERSION_MINOR {
        return Err(DecodeError::new(
            at,
            "header.version_minor",
            format!(
                "format version {VERSION_MAJOR}.{minor} is newer than this build's {VERSION_MAJOR}.{VERSION_MINOR}"
            ),
        )
        .into());
    }
    r.zeros(4, "header.flags")?;
    let name = header_target_name(bytes)?;
    r.take(16, "header.target_name")?;
    if name != target.name {
        return Err(DecodeError::new(
            16,
            "header.target_name",
            format!("program is for `{name}`, not `{}`", target.name),
        )
        .into());
    }
    let mut target_hash = [0u8; 8];
    target_hash.copy_from_slice(r.take(8, "header.target_hash")?);
    if target_hash != target.hash() {
        return Err(DecodeError::new(
            32,
            "header.target_hash",
            format!("program was built for a different description of `{name}`"),
        )
        .into());
    }
    let at = r.offset();
    let cores = r.u16("header.cores")? as usize;
    if cores == 0 || cores > target.cores as usize {
        return Err(DecodeError::new(
            at,
            "header.cores",
            format!("{cores} cores; {} has 1 to {}", target.name, target.cores),
        )
        .into());
    }
    let at = r.offset();
    let engines = r.u16("header.engines")? as usize;
    if engines != target.engines_per_core() as usize {
        return Err(DecodeError::new(
            at,
            "header.engines",
            format!("{engines} engines per core; {} has {}", target.name, target.engines_per_core()),
        )
        .into());
    }
    let at = r.offset();
    let nsections = r.u32("header.section_count")?;
    let sections = section_count(minor);
    if nsections as usize != sections {
        return Err(DecodeError::new(
            at,
            "header.section_count",
            format!("must be {sections} in format {VERSION_MAJOR}.{minor}, found {nsections}"),
        )
        .into());
    }
    r.u64("header.total_length")?;
    r.zeros(8, "header.reserved")?;

    let mut payloads: Vec<(usize, &[u8])> = Vec::with_capacity(sections);
    for &tag in &SECTIONS[..sections] {
        let tag_name = std::str::from_utf8(tag).expect("ASCII tag");
        let at = r.offset();
        let found = r.take(4, "section.tag")?;
        if found != tag {
            return Err(DecodeError::new(
                at,
                "section.tag",
                format!("expected section {tag_name}, found {:?}", String::from_utf8_lossy(found)),
            )
            .into());
        }
        r.zeros(4, &format!("{tag_name}.reserved"))?;
        let at = r.offset();
        let len = r.u64(&format!("{tag_name}.length"))?;
        if len > r.remaining() as u64 {
            return Err(DecodeError::new(
                at,
                format!("{tag_name}.length"),
                format!("{len} bytes but only {} remain", r.remaining()),
            )
            .into());
        }
        let start = r.offset();
        payloads.push((start, r.take(len as usize, tag_name)?));
    }
    if r.remaining() != 0 {
        return Err(r.error("trailer", format!("{} unexpected bytes after the last section", r.remaining())).into());
    }

    let mut tensors = read_tensors(payloads[0])?;
    read_constants(payloads[1], &mut tensors)?;
    let semaphores = read_semaphores(payloads[2])?;
    let descs = read_descriptors(payloads[3])?;
    let mut program_cores = read_code(payloads[4], cores, engines, &descs)?;
    let debug_ops = read_debug(payloads[5], &mut program_cores)?;
    let roofline = read_roofline(payloads[6])?;
    let external = match payloads.get(7) {
        Some(&p) => read_external(p)?,
        None => Vec::new(),
    };

    let program =
        Program { target: name, target_hash, tensors, semaphores, debug_ops, cores: program_cores, roofline, external };
    program.validate(target).map_err(JbinError::Program)?;
    if minor < 2 && program.uses_fabric() {
        let message = format!("remote signals and core-to-core DMA need format 1.2, not {VERSION_MAJOR}.{minor}");
        return Err(DecodeError::new(4, "header.version_minor", message).into());
    }
    Ok(program)
}

/// Sections in format 1.`minor`: EXTN from 1.1 on.
fn section_count(minor: u16) -> usize {
    7 + usize::from(minor >= 1)
}

/// Reads a `u32` count of items at least `min_item` bytes each, rejecting counts
/// the remaining bytes cannot hold.
fn count(r: &mut Reader<'_>, field: &str, min_item: usize) -> Result<usize, DecodeError> {
    let at = r.offset();
    let n = r.u32(field)? as usize;
    if n.saturating_mul(min_item) > r.remaining() {
        return Err(DecodeError::new(
            at,
            field,
            format!("{n} entries cannot fit in the {} bytes that remain", r.remaining()),
        ));
    }
    Ok(n)
}

fn end_of_section(r: &Reader<'_>, tag: &str) -> Result<(), DecodeError> {
    if r.remaining() != 0 {
        return Err(r.error(tag, format!("{} unexpected bytes at the end of the section", r.remaining())));
    }
    Ok(())
}

fn read_name<'a>(r: &mut Reader<'a>, len: usize, field: &str) -> Result<&'a str, DecodeError> {
    let at = r.offset();
    let raw = r.take(len, field)?;
    std::str::from_utf8(raw).map_err(|_| DecodeError::new(at, field, "is not UTF-8"))
}

fn read_tensors((base, data): (usize, &[u8])) -> Result<Vec<TensorDecl>, DecodeError> {
    let mut r = Reader::new(data, base);
    let n = count(&mut r, "TENS.count", 14)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let field = |f: &str| format!("TENS[{i}].{f}");
        let len = r.u16(&field("name_length"))? as usize;
        let name = read_name(&mut r, len, &field("name"))?.to_string();
        let at = r.offset();
        let code = r.u8(&field("dtype"))?;
        let dtype = DType::from_code(code)
            .ok_or_else(|| DecodeError::new(at, field("dtype"), format!("unknown dtype code {code}")))?;
        let at = r.offset();
        let role_code = r.u8(&field("role"))?;
        let role = *Role::ALL
            .get(role_code as usize)
            .ok_or_else(|| DecodeError::new(at, field("role"), format!("unknown role code {role_code}")))?;
        let at = r.offset();
        let rank = r.u8(&field("rank"))? as usize;
        if rank > 8 {
            return Err(DecodeError::new(at, field("rank"), format!("{rank} dims; at most 8 are allowed")));
        }
        r.zeros(1, &field("reserved"))?;
        let addr = r.u64(&field("addr"))?;
        let mut shape = Vec::with_capacity(rank);
        for d in 0..rank {
            shape.push(r.u64(&field(&format!("shape[{d}]")))?);
        }
        out.push(TensorDecl { name, dtype, shape, addr, role, data: Vec::new() });
    }
    end_of_section(&r, "TENS")?;
    Ok(out)
}

fn read_constants((base, data): (usize, &[u8]), tensors: &mut [TensorDecl]) -> Result<(), DecodeError> {
    let mut r = Reader::new(data, base);
    for (i, t) in tensors.iter_mut().enumerate().filter(|(_, t)| t.role == Role::Const) {
        let size = t.shape.iter().try_fold(t.dtype.size_bytes() as u64, |a, &d| a.checked_mul(d));
        let size = size.filter(|&s| s <= r.remaining() as u64).ok_or_else(|| {
            r.error(
                &format!("CNST[{i}]"),
                format!("constant `{}` needs more bytes than the {} that remain", t.name, r.remaining()),
            )
        })?;
        t.data = r.take(size as usize, "CNST")?.to_vec();
    }
    end_of_section(&r, "CNST")
}

fn read_semaphores((base, data): (usize, &[u8])) -> Result<Vec<SemDecl>, DecodeError> {
    let mut r = Reader::new(data, base);
    let n = count(&mut r, "SEMS.count", 2)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = r.u8(&format!("SEMS[{i}].id"))?;
        let len = r.u8(&format!("SEMS[{i}].name_length"))? as usize;
        let name = read_name(&mut r, len, &format!("SEMS[{i}].name"))?.to_string();
        out.push(SemDecl { id, name });
    }
    end_of_section(&r, "SEMS")?;
    Ok(out)
}

fn read_descriptors((base, data): (usize, &[u8])) -> Result<Vec<DmaTransfer>, DecodeError> {
    let mut r = Reader::new(data, base);
    let n = count(&mut r, "DESC.count", DESC_SIZE)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(DmaTransfer::decode_desc(&mut r).map_err(|e| e.within(&format!("DESC[{i}]")))?);
    }
    end_of_section(&r, "DESC")?;
    Ok(out)
}

fn read_code(
    (base, data): (usize, &[u8]),
    cores: usize,
    engines: usize,
    descs: &[DmaTransfer],
) -> Result<Vec<Vec<Vec<Inst>>>, DecodeError> {
    let mut r = Reader::new(data, base);
    let mut ctx = DecodeCtx { descs, next_desc: 0 };
    let mut out = Vec::with_capacity(cores);
    for c in 0..cores {
        let mut core = Vec::with_capacity(engines);
        for e in 0..engines {
            let engine = crate::inst::Engine(e as u8).name();
            let n = count(&mut r, &format!("CODE.core{c}.{engine}.count"), INST_SIZE)?;
            let mut stream = Vec::with_capacity(n);
            for i in 0..n {
                let inst =
                    Inst::decode(&mut r, &mut ctx).map_err(|e| e.within(&format!("CODE.core{c}.{engine}[{i}]")))?;
                stream.push(inst);
            }
            core.push(stream);
        }
        out.push(core);
    }
    end_of_section(&r, "CODE")?;
    if ctx.next_desc as usize != descs.len() {
        return Err(DecodeError::new(
            base,
            "DESC",
            format!("{} descriptors but DMA instructions use {}", descs.len(), ctx.next_desc),
        ));
    }
    Ok(out)
}

fn read_debug((base, data): (usize, &[u8]), cores: &mut [Vec<Vec<Inst>>]) -> Result<Vec<String>, DecodeError> {
    let mut r = Reader::new(data, base);
    let n = count(&mut r, "DBUG.count", 4)?;
    let mut strings = Vec::with_capacity(n);
    for i in 0..n {
        let len = r.u32(&format!("DBUG[{i}].length"))? as usize;
        strings.push(read_name(&mut r, len, &format!("DBUG[{i}]"))?.to_string());
    }
    for core in cores.iter_mut() {
        for stream in core.iter_mut() {
            for inst in stream.iter_mut() {
                let at = r.offset();
                let d = r.u32("DBUG.inst_op")?;
                if d != u32::MAX {
                    if d as usize >= strings.len() {
                        return Err(DecodeError::new(
                            at,
                            "DBUG.inst_op",
                            format!("debug op {d} is past the {} strings", strings.len()),
                        ));
                    }
                    inst.debug = Some(d);
                }
            }
        }
    }
    end_of_section(&r, "DBUG")?;
    Ok(strings)
}

fn read_roofline((base, data): (usize, &[u8])) -> Result<Option<RooflineInputs>, DecodeError> {
    let mut r = Reader::new(data, base);
    let present = r.bool("ROOF.present")?;
    r.zeros(7, "ROOF.reserved")?;
    let mut v = [0u64; 6];
    let names = ["flops_f32", "flops_16bit", "flops_8bit", "input_bytes", "output_bytes", "transcendentals"];
    for (slot, name) in v.iter_mut().zip(names) {
        *slot = r.u64(&format!("ROOF.{name}"))?;
    }
    end_of_section(&r, "ROOF")?;
    if !present {
        if v.iter().any(|&x| x != 0) {
            return Err(DecodeError::new(base + 8, "ROOF", "values must be zero when roofline inputs are absent"));
        }
        return Ok(None);
    }
    Ok(Some(RooflineInputs {
        flops_f32: v[0],
        flops_16bit: v[1],
        flops_8bit: v[2],
        input_bytes: v[3],
        output_bytes: v[4],
        transcendentals: v[5],
    }))
}

fn read_external((base, data): (usize, &[u8])) -> Result<Vec<ExternalName>, DecodeError> {
    let mut r = Reader::new(data, base);
    let count = r.u32("EXTN.count")?;
    // Each entry takes at least 8 bytes: a count beyond the payload is refused before allocating.
    if count as usize > r.remaining() / 8 {
        return Err(r.error("EXTN.count", format!("{count} entries cannot fit in {} bytes", r.remaining())));
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let tensor = r.u32("EXTN.tensor")?;
        let len = r.u16("EXTN.name_length")? as usize;
        let at = r.offset();
        let name = std::str::from_utf8(r.take(len, "EXTN.name")?)
            .map_err(|_| DecodeError::new(at, "EXTN.name", "not UTF-8"))?
            .to_string();
        let at = r.offset();
        let code = r.u8("EXTN.elem")?;
        let elem = ExternalType::from_code(code)
            .ok_or_else(|| DecodeError::new(at, "EXTN.elem", format!("unknown element type code {code}")))?;
        out.push(ExternalName { tensor, name, elem });
    }
    end_of_section(&r, "EXTN")?;
    Ok(out)
}
