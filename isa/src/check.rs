//! Static constraints of every instruction against a target.
//!
//! [`check_inst`] is the single authority on what a legal instruction is: the
//! assembler reports its errors at the offending operand, the `.jbin` reader rejects
//! binaries that break it, and the compiler's emitter asserts it. What cannot be
//! known statically (an SRAM element straddling partitions through a data-dependent
//! pattern, races, uninitialised reads) is the simulator's to check at run time.

use std::fmt;

use crate::dtype::DType;
use crate::inst::{Engine, Inst, Op};
use crate::operand::{Column, DmaSide, DmaSpace, DmaTransfer, HbmRows, Scalar, Space, Tile};
use crate::target::Target;

/// A broken constraint: which operand, and what limit it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintError {
    /// Operand (field) name, or `wait` / `signal` / `engine`.
    pub operand: &'static str,
    /// What is wrong, with the limit.
    pub message: String,
}

impl fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operand `{}`: {}", self.operand, self.message)
    }
}

type Check = Result<(), ConstraintError>;

fn fail(operand: &'static str, message: impl Into<String>) -> Check {
    Err(ConstraintError { operand, message: message.into() })
}

fn partitions_of(t: &Target, space: Space) -> (u32, u32) {
    match space {
        Space::Sram => (t.sram.partitions, t.sram.partition_bytes),
        Space::Psum => (t.psum.partitions, t.psum.partition_bytes),
    }
}

fn check_tile(name: &'static str, tile: &Tile, t: &Target) -> Check {
    let (parts, part_bytes) = partitions_of(t, tile.space);
    let space = tile.space.name();
    if tile.part_count == 0 {
        return fail(name, "covers no partitions");
    }
    let end = tile.part_start as u32 + tile.part_count as u32;
    if end > parts {
        return fail(name, format!("partitions {}:{end} exceed the {parts} partitions of {space}", tile.part_start));
    }
    let size = tile.dtype.size_bytes();
    if !tile.offset.is_multiple_of(size) {
        return fail(name, format!("byte offset 0x{:x} is not aligned to {}'s {size} bytes", tile.offset, tile.dtype));
    }
    let (lo, hi) = tile.elem_extent();
    let first = tile.offset as i64 + lo * size as i64;
    let end_byte = tile.offset as i64 + (hi + 1) * size as i64;
    if first < 0 {
        return fail(name, format!("access pattern reaches byte {first}, before the start of each {space} partition"));
    }
    if end_byte > part_bytes as i64 {
        return fail(
            name,
            format!("access pattern reaches byte 0x{end_byte:x} of each partition; {space} partitions hold {part_bytes} (0x{part_bytes:x}) bytes"),
        );
    }
    Ok(())
}

fn check_column(name: &'static str, col: &Column, t: &Target) -> Check {
    let (_, part_bytes) = partitions_of(t, col.space);
    let size = col.dtype.size_bytes();
    if !col.offset.is_multiple_of(size) {
        return fail(name, format!("byte offset 0x{:x} is not aligned to {}'s {size} bytes", col.offset, col.dtype));
    }
    if col.offset as u64 + size as u64 > part_bytes as u64 {
        return fail(
            name,
            format!(
                "byte offset 0x{:x} is past the {part_bytes} bytes of a {} partition",
                col.offset,
                col.space.name()
            ),
        );
    }
    Ok(())
}

fn check_scalar(name: &'static str, s: &Scalar, t: &Target) -> Check {
    match s {
        Scalar::Imm(_) => Ok(()),
        Scalar::Col(c) => check_column(name, c, t),
    }
}

fn same_shape(name: &'static str, a: &Tile, reference: &Tile, reference_name: &str) -> Check {
    if a.part_count != reference.part_count {
        return fail(
            name,
            format!("covers {} partitions but `{reference_name}` covers {}", a.part_count, reference.part_count),
        );
    }
    if a.free_elems() != reference.free_elems() {
        return fail(
            name,
            format!(
                "has {} elements per partition but `{reference_name}` has {}",
                a.free_elems(),
                reference.free_elems()
            ),
        );
    }
    Ok(())
}

fn in_space(name: &'static str, tile: &Tile, space: Space) -> Check {
    if tile.space != space {
        return fail(name, format!("must be in {}, found {}", space.name(), tile.space.name()));
    }
    Ok(())
}

/// A PE result: contiguous, in one PSUM bank, of the accumulator dtype.
fn check_pe_result(name: &'static str, dst: &Tile, acc: DType, rows: u64, cols: u64, t: &Target) -> Check {
    in_space(name, dst, Space::Psum)?;
    if dst.dtype != acc {
        return fail(name, format!("PE results are {acc} for these operands, found {}", dst.dtype));
    }
    if dst.part_count as u64 != rows {
        return fail(name, format!("must cover {rows} partitions, found {}", dst.part_count));
    }
    if dst.free_elems() != cols {
        return fail(name, format!("must hold {cols} elements per partition, found {}", dst.free_elems()));
    }
    if !dst.is_contiguous() {
        return fail(name, "PE results must be contiguous in PSUM (access pattern `[N x 1]`)");
    }
    let bank = t.psum_bank_bytes();
    let first = dst.offset / bank;
    let last = (dst.offset + (cols as u32 * 4).max(1) - 1) / bank;
    if first != last {
        return fail(
            name,
            format!(
                "bytes 0x{:x}..0x{:x} cross a PSUM bank boundary (banks hold {bank} bytes)",
                dst.offset,
                dst.offset as u64 + cols * 4
            ),
        );
    }
    Ok(())
}

fn check_dma_side(name: &'static str, side: &DmaSide, elem: u8, t: &Target) -> Check {
    if side.ndims as u32 > t.dma.max_dims {
        return fail(name, format!("has {} dims; this target's DMA takes at most {}", side.ndims, t.dma.max_dims));
    }
    let (lo, hi) = side.byte_extent();
    let first = side.addr as i128 + lo;
    let end = side.addr as i128 + hi + elem as i128;
    let (limit, what): (i128, &str) = match side.space {
        DmaSpace::Hbm => (t.hbm.size_bytes as i128, "HBM"),
        DmaSpace::Sram => (t.sram.partitions as i128 * t.sram.partition_bytes as i128, "SRAM"),
    };
    if first < 0 {
        return fail(name, format!("access pattern starts {} bytes before address 0 of {what}", -first));
    }
    if end > limit {
        return fail(name, format!("access pattern reaches byte 0x{end:x}; {what} holds 0x{limit:x} bytes"));
    }
    if side.space == DmaSpace::Sram {
        // Aligned elements never straddle partitions (partition sizes are multiples of 4).
        let e = elem as i64;
        if !side.addr.is_multiple_of(elem as u64) || side.dims().iter().any(|d| d.stride % e != 0) {
            return fail(name, format!("SRAM address and strides must be multiples of the {elem}-byte element"));
        }
    }
    Ok(())
}

fn check_dma(x: &DmaTransfer, t: &Target) -> Check {
    check_dma_side("xfer", &x.src, x.elem_bytes, t)?;
    check_dma_side("xfer", &x.dst, x.elem_bytes, t)?;
    check_fabric(x, t)?;
    if x.src.elems() != x.dst.elems() {
        return fail(
            "xfer",
            format!("source moves {} elements but destination takes {}", x.src.elems(), x.dst.elems()),
        );
    }
    Ok(())
}

/// A core-to-core transfer reads this core's SRAM and writes the same range of
/// the SRAM of one or more existing cores.
fn check_fabric(x: &DmaTransfer, t: &Target) -> Check {
    if x.src.cores != 0 {
        return fail("xfer", "a DMA reads its own core's memory; another core's SRAM can only be a destination");
    }
    if x.dst.cores == 0 {
        return Ok(());
    }
    if x.src.space != DmaSpace::Sram || x.dst.space != DmaSpace::Sram {
        return fail("xfer", "a core-to-core transfer copies this core's SRAM into other cores' SRAM");
    }
    let existing = u32::MAX.checked_shr(32 - t.cores).unwrap_or(0);
    let beyond = x.dst.cores & !existing;
    if beyond != 0 {
        let c = beyond.trailing_zeros();
        return fail("xfer", format!("core {c} does not exist ({} has {} cores)", t.name, t.cores));
    }
    Ok(())
}

/// `dma_gather`: rows land contiguously in SRAM partitions, the indices are an
/// i32 SRAM column, and every row of the table lies in HBM.
fn check_gather(dst: &Tile, idx: &Column, table: &HbmRows, t: &Target) -> Check {
    check_tile("dst", dst, t)?;
    if dst.space != Space::Sram {
        return fail("dst", "a gather writes SRAM, not PSUM");
    }
    if !dst.is_contiguous() {
        return fail("dst", "a gathered row is contiguous in its partition: the access pattern must be `[n x 1]`");
    }
    check_column("idx", idx, t)?;
    if idx.space != Space::Sram || idx.dtype != DType::I32 {
        return fail("idx", format!("indices are an i32 column in SRAM, found {}.{}", idx.space.name(), idx.dtype));
    }
    let e = dst.dtype.size_bytes() as u64;
    check_dma_side("table", &table.side(dst.free_elems() * e, e), e as u8, t)
}

/// Checks one instruction placed on `engine` of a core of `target`.
pub fn check_inst(inst: &Inst, engine: Engine, t: &Target) -> Check {
    let opcode = inst.op.opcode();
    if engine.0 as u32 >= t.engines_per_core() {
        return fail(
            "engine",
            format!("engine {} does not exist on {} ({} DMA queues)", engine.name(), t.name, t.dma.queues),
        );
    }
    if !engine.accepts(opcode) {
        return fail(
            "engine",
            format!("`{}` runs on {}, not on {}", opcode.mnemonic(), opcode.engine_class().name(), engine.name()),
        );
    }
    if let Some(w) = inst.wait {
        if w.sem as u32 >= t.sync.semaphores {
            return fail("wait", format!("semaphore {} does not exist ({} has {})", w.sem, t.name, t.sync.semaphores));
        }
    }
    if let Some(s) = inst.signal {
        if s.sem as u32 >= t.sync.semaphores {
            return fail(
                "signal",
                format!("semaphore {} does not exist ({} has {})", s.sem, t.name, t.sync.semaphores),
            );
        }
        if let Some(c) = s.core.filter(|&c| c as u32 >= t.cores) {
            return fail("signal", format!("core {c} does not exist ({} has {} cores)", t.name, t.cores));
        }
    }
    check_op(&inst.op, t)
}

/// `matmul`: operands in SRAM of one PE dtype, K within the PE's rows, M within
/// its columns, N within the moving limit, and the result a PSUM tile that fits.
fn check_matmul(dst: &Tile, stationary: &Tile, moving: &Tile, transposed: bool, t: &Target) -> Check {
    check_tile("dst", dst, t)?;
    check_tile("stationary", stationary, t)?;
    check_tile("moving", moving, t)?;
    in_space("stationary", stationary, Space::Sram)?;
    in_space("moving", moving, Space::Sram)?;
    if !moving.dtype.is_pe_operand() {
        return fail(
            "moving",
            format!("{} is not a PE operand dtype (bf16, f16, f8e4m3, f8e5m2, i8, f32)", moving.dtype),
        );
    }
    if stationary.dtype != moving.dtype {
        return fail(
            "stationary",
            format!("dtype {} differs from the moving operand's {}", stationary.dtype, moving.dtype),
        );
    }
    let k = moving.part_count as u64;
    if k > t.pe.rows as u64 {
        return fail("moving", format!("contraction dim K = {k} partitions exceeds the PE's {} rows", t.pe.rows));
    }
    let m = if transposed {
        if stationary.free_elems() != k {
            return fail(
                "stationary",
                format!(
                    "transposed stationary must hold K = {k} elements per partition, found {}",
                    stationary.free_elems()
                ),
            );
        }
        stationary.part_count as u64
    } else {
        if stationary.part_count != moving.part_count || stationary.part_start != moving.part_start {
            return fail(
                "stationary",
                format!(
                    "must cover the moving operand's K partitions {}:{} (found {}:{})",
                    moving.part_start,
                    moving.part_start as u32 + k as u32,
                    stationary.part_start,
                    stationary.part_start as u32 + stationary.part_count as u32
                ),
            );
        }
        stationary.free_elems()
    };
    if m > t.pe.cols as u64 {
        return fail("stationary", format!("M = {m} exceeds the PE's {} columns", t.pe.cols));
    }
    let n = moving.free_elems();
    if n > t.pe.max_moving_free as u64 {
        return fail("moving", format!("N = {n} elements per partition exceeds the limit of {}", t.pe.max_moving_free));
    }
    check_pe_result("dst", dst, moving.dtype.accumulator(), m, n, t)
}

/// Checks an operation's operands against `target`.
pub fn check_op(op: &Op, t: &Target) -> Check {
    match op {
        Op::Matmul { dst, stationary, moving, transposed, .. } => check_matmul(dst, stationary, moving, *transposed, t),
        Op::Transpose { dst, src } => {
            check_tile("dst", dst, t)?;
            check_tile("src", src, t)?;
            in_space("src", src, Space::Sram)?;
            if !src.dtype.is_pe_operand() {
                return fail("src", format!("{} is not a PE operand dtype", src.dtype));
            }
            let p = src.part_count as u64;
            let f = src.free_elems();
            if p > t.pe.rows as u64 {
                return fail("src", format!("P = {p} partitions exceeds the PE's {} rows", t.pe.rows));
            }
            if f > t.pe.cols as u64 {
                return fail("src", format!("F = {f} elements per partition exceeds the PE's {} columns", t.pe.cols));
            }
            check_pe_result("dst", dst, src.dtype.accumulator(), f, p, t)
        }
        Op::TensorTensor { dst, a, b, .. } => {
            check_tile("dst", dst, t)?;
            check_tile("a", a, t)?;
            check_tile("b", b, t)?;
            same_shape("a", a, dst, "dst")?;
            same_shape("b", b, dst, "dst")
        }
        Op::TensorScalar { dst, src, scalar, .. } => {
            check_tile("dst", dst, t)?;
            check_tile("src", src, t)?;
            same_shape("src", src, dst, "dst")?;
            check_scalar("scalar", scalar, t)
        }
        Op::Reduce { dst, src, .. } => {
            check_tile("dst", dst, t)?;
            check_tile("src", src, t)?;
            if dst.free_elems() != 1 {
                return fail("dst", format!("a reduction writes 1 element per partition, found {}", dst.free_elems()));
            }
            if dst.part_count != src.part_count {
                return fail(
                    "dst",
                    format!("covers {} partitions but `src` covers {}", dst.part_count, src.part_count),
                );
            }
            Ok(())
        }
        Op::Copy { dst, src } => {
            check_tile("dst", dst, t)?;
            check_tile("src", src, t)?;
            same_shape("src", src, dst, "dst")
        }
        Op::Memset { dst, .. } | Op::Iota { dst, .. } => check_tile("dst", dst, t),
        Op::Select { dst, src, .. } => {
            check_tile("dst", dst, t)?;
            check_tile("src", src, t)?;
            same_shape("src", src, dst, "dst")
        }
        Op::FillPredicated { dst, cond, value, .. } => {
            check_tile("dst", dst, t)?;
            check_tile("cond", cond, t)?;
            same_shape("cond", cond, dst, "dst")?;
            check_scalar("value", value, t)
        }
        Op::CopyPredicated { dst, src, cond, .. } => {
            check_tile("dst", dst, t)?;
            for (name, tile) in [("src", src), ("cond", cond)] {
                check_tile(name, tile, t)?;
                same_shape(name, tile, dst, "dst")?;
            }
            Ok(())
        }
        Op::Activate { dst, src, scale, bias, accum, .. } => {
            check_tile("dst", dst, t)?;
            check_tile("src", src, t)?;
            same_shape("src", src, dst, "dst")?;
            check_scalar("scale", scale, t)?;
            check_scalar("bias", bias, t)?;
            if let Some(c) = accum {
                check_column("accum", c, t)?;
                if c.dtype != DType::F32 {
                    return fail("accum", format!("row sums are f32, found {}", c.dtype));
                }
            }
            Ok(())
        }
        Op::Dma { xfer } => check_dma(xfer, t),
        Op::DmaGather { dst, idx, table } => check_gather(dst, idx, table, t),
        Op::Nop {} | Op::Halt {} => Ok(()),
    }
}
