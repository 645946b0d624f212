//! The bytes each instruction reads and writes, for race and initialisation checks.

use jpu_isa::operand::{Column, HbmRows, Scalar, Space, Tile};
use jpu_isa::{Op, Target};

use crate::memory::{dma_runs, tile_addresses};
use crate::sim::dma_space;

/// A set of byte runs one instruction reads or writes in one memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// SRAM or PSUM, or `None` for HBM.
    pub space: Option<Space>,
    /// Whose SRAM or PSUM: `None` for the instruction's own core, `Some(c)` for
    /// core `c` (a core-to-core DMA's destination).
    pub core: Option<usize>,
    /// A write (else a read).
    pub write: bool,
    /// `(flat address, length)` runs; SRAM/PSUM addresses are `partition * partition_bytes + offset`.
    pub runs: Vec<(u64, u64)>,
}

fn partition_bytes(t: &Target, space: Space) -> usize {
    match space {
        Space::Sram => t.sram.partition_bytes as usize,
        Space::Psum => t.psum.partition_bytes as usize,
    }
}

fn push_run(runs: &mut Vec<(u64, u64)>, addr: u64, len: u64) {
    match runs.last_mut() {
        Some((a, l)) if *a + *l == addr => *l += len,
        _ => runs.push((addr, len)),
    }
}

fn tile(t: &Target, tile: &Tile, write: bool) -> Access {
    let size = tile.dtype.size_bytes() as u64;
    let pb = partition_bytes(t, tile.space) as u64;
    if tile.is_contiguous() {
        // One run per partition.
        let len = tile.free_elems() * size;
        let runs = (tile.part_start as u64..(tile.part_start + tile.part_count) as u64)
            .map(|p| (p * pb + tile.offset as u64, len))
            .collect();
        return Access { space: Some(tile.space), core: None, write, runs };
    }
    let mut runs = Vec::new();
    for a in tile_addresses(tile, pb as usize) {
        push_run(&mut runs, a as u64, size);
    }
    Access { space: Some(tile.space), core: None, write, runs }
}

fn column(t: &Target, col: &Column, part_start: u16, count: u16, write: bool) -> Access {
    let pb = partition_bytes(t, col.space) as u64;
    let size = col.dtype.size_bytes() as u64;
    let runs = (part_start as u64..(part_start + count) as u64).map(|p| (p * pb + col.offset as u64, size)).collect();
    Access { space: Some(col.space), core: None, write, runs }
}

fn scalar(t: &Target, s: &Scalar, part_start: u16, count: u16, out: &mut Vec<Access>) {
    if let Scalar::Col(c) = s {
        out.push(column(t, c, part_start, count, false));
    }
}

/// Reads first, then writes, of one instruction.
pub fn footprint(op: &Op, t: &Target) -> Vec<Access> {
    let mut out = Vec::new();
    match op {
        Op::Matmul { dst, stationary, moving, accumulate, .. } => {
            out.push(tile(t, stationary, false));
            out.push(tile(t, moving, false));
            if *accumulate {
                out.push(tile(t, dst, false));
            }
            out.push(tile(t, dst, true));
        }
        Op::Transpose { dst, src }
        | Op::Copy { dst, src }
        | Op::Reduce { dst, src, .. }
        | Op::Select { dst, src, .. } => {
            out.push(tile(t, src, false));
            out.push(tile(t, dst, true));
        }
        Op::TensorTensor { dst, a, b, .. } => {
            out.push(tile(t, a, false));
            out.push(tile(t, b, false));
            out.push(tile(t, dst, true));
        }
        Op::FillPredicated { dst, cond, value, .. } => {
            out.push(tile(t, cond, false));
            scalar(t, value, dst.part_start, dst.part_count, &mut out);
            out.push(tile(t, dst, false));
            out.push(tile(t, dst, true));
        }
        Op::CopyPredicated { dst, src, cond, .. } => {
            // `dst` is read too: it keeps its value where the condition fails.
            for read in [src, cond, dst] {
                out.push(tile(t, read, false));
            }
            out.push(tile(t, dst, true));
        }
        Op::TensorScalar { dst, src, scalar: s, .. } => {
            out.push(tile(t, src, false));
            scalar(t, s, src.part_start, src.part_count, &mut out);
            out.push(tile(t, dst, true));
        }
        Op::Memset { dst, .. } | Op::Iota { dst, .. } => out.push(tile(t, dst, true)),
        Op::Activate { dst, src, scale, bias, accum, .. } => {
            out.push(tile(t, src, false));
            scalar(t, scale, src.part_start, src.part_count, &mut out);
            scalar(t, bias, src.part_start, src.part_count, &mut out);
            out.push(tile(t, dst, true));
            if let Some(c) = accum {
                out.push(column(t, c, dst.part_start, dst.part_count, true));
            }
        }
        Op::Dma { xfer } => {
            let e = xfer.elem_bytes as u64;
            out.push(Access {
                space: dma_space(xfer.src.space),
                core: None,
                write: false,
                runs: dma_runs(&xfer.src, e),
            });
            let runs = dma_runs(&xfer.dst, e);
            if xfer.is_fabric() {
                for c in xfer.dst.core_list() {
                    out.push(Access { space: Some(Space::Sram), core: Some(c), write: true, runs: runs.clone() });
                }
            } else {
                out.push(Access { space: dma_space(xfer.dst.space), core: None, write: true, runs });
            }
        }
        Op::DmaGather { dst, idx, table } => {
            out.push(column(t, idx, dst.part_start, dst.part_count, false));
            out.push(Access { space: None, core: None, write: false, runs: vec![gather_span(dst, table)] });
            out.push(tile(t, dst, true));
        }
        Op::Nop {} | Op::Halt {} => {}
    }
    out
}

/// Every byte a `dma_gather` may read: its table from the first row to the end
/// of the last (which rows it reads depends on data; a functional run narrows
/// this to them, [`gather_footprint`]).
fn gather_span(dst: &Tile, table: &HbmRows) -> (u64, u64) {
    let row = dst.free_elems() * dst.dtype.size_bytes() as u64;
    (table.addr, (table.rows as u64 - 1) * table.stride + row)
}

/// The accesses of a `dma_gather` that reads table rows `rows` (one per
/// partition of `dst`).
pub fn gather_footprint(t: &Target, dst: &Tile, idx: &Column, table: &HbmRows, rows: &[u64]) -> Vec<Access> {
    let row = dst.free_elems() * dst.dtype.size_bytes() as u64;
    let mut runs: Vec<(u64, u64)> = rows.iter().map(|r| (table.addr + r * table.stride, row)).collect();
    runs.sort_unstable();
    vec![
        column(t, idx, dst.part_start, dst.part_count, false),
        Access { space: None, core: None, write: false, runs },
        tile(t, dst, true),
    ]
}
