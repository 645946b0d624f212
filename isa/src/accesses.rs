//! What a program's DMAs may do to its tensors: the rules of
//! [`crate::Program::validate`] that give a binary's tensor table meaning, so a
//! well-formed but inconsistent binary is refused at load instead of running to
//! garbage.
//!
//! - Every tensor starts on a [`TENSOR_ALIGN`]-byte boundary.
//! - Every HBM side of a DMA lies inside one tensor (the box its access pattern
//!   spans) and moves its elements: the DMA's element size is the tensor's
//!   dtype size, and every element starts on one of the tensor's elements.
//! - No DMA writes an input or a const tensor, and every non-empty output tensor
//!   is written by some DMA.
//! - Recorded roofline bytes fit in HBM.

use crate::inst::Op;
use crate::operand::{DmaSide, DmaSpace};
use crate::program::{Program, ProgramError, Role, TensorDecl};
use crate::target::Target;

/// Alignment of every tensor's HBM address, in bytes (one DMA burst).
pub const TENSOR_ALIGN: u64 = 64;

/// Checks the rules above (tensors already validated: inside HBM, disjoint).
pub fn validate_accesses(p: &Program, target: &Target) -> Result<(), ProgramError> {
    for t in &p.tensors {
        if !t.addr.is_multiple_of(TENSOR_ALIGN) {
            return Err(ProgramError {
                location: format!("tensor `{}`", t.name),
                message: format!("address 0x{:x} is not a multiple of {TENSOR_ALIGN} bytes", t.addr),
            });
        }
    }
    // Non-empty tensors by address (disjoint, so a binary search finds the one
    // that holds a byte).
    let mut by_addr: Vec<usize> = (0..p.tensors.len()).filter(|&i| p.tensors[i].size_bytes() > 0).collect();
    by_addr.sort_by_key(|&i| p.tensors[i].addr);
    let mut written = vec![false; p.tensors.len()];
    for (c, e, i, inst) in p.instructions() {
        let sides = match &inst.op {
            Op::Dma { xfer } => vec![(xfer.src, false, xfer.elem_bytes), (xfer.dst, true, xfer.elem_bytes)],
            // A gather may read any row of its table: the whole table is its side.
            Op::DmaGather { dst, table, .. } => {
                let size = dst.dtype.size_bytes() as u64;
                vec![(table.side(dst.free_elems() * size, size), false, size as u8)]
            }
            _ => continue,
        };
        for (side, writes, elem_bytes) in sides {
            if side.space != DmaSpace::Hbm {
                continue;
            }
            let at = || format!("core {c} {}[{i}]", e.name());
            let k = side_tensor(p, &by_addr, &side, elem_bytes)
                .map_err(|message| ProgramError { location: at(), message })?;
            let t = &p.tensors[k];
            if writes && matches!(t.role, Role::Input | Role::Const) {
                let message = format!("writes {} tensor `{}`, which the program may only read", t.role.name(), t.name);
                return Err(ProgramError { location: at(), message });
            }
            written[k] |= writes;
        }
    }
    if let Some(t) = p.tensors.iter().zip(&written).find(|(t, w)| t.role == Role::Output && t.size_bytes() > 0 && !**w)
    {
        let message = "is an output but no DMA writes it".to_string();
        return Err(ProgramError { location: format!("tensor `{}`", t.0.name), message });
    }
    if let Some(r) = &p.roofline {
        let hbm = target.hbm.size_bytes;
        if r.input_bytes > hbm || r.output_bytes > hbm {
            return Err(ProgramError {
                location: "roofline".into(),
                message: format!(
                    "records {} input and {} output bytes; {} holds {hbm} bytes of HBM",
                    r.input_bytes, r.output_bytes, target.name
                ),
            });
        }
    }
    Ok(())
}

/// The tensor an HBM side lies in, or why it lies in none.
fn side_tensor(p: &Program, by_addr: &[usize], side: &DmaSide, elem: u8) -> Result<usize, String> {
    let (lo, hi) = side.byte_extent();
    let first = side.addr as i128 + lo;
    let end = side.addr as i128 + hi + elem as i128;
    let below = by_addr.partition_point(|&i| (p.tensors[i].addr as i128) <= first);
    let holder = below.checked_sub(1).map(|j| by_addr[j]).filter(|&i| first < tensor_end(&p.tensors[i]));
    let Some(k) = holder else {
        return Err(format!("HBM bytes 0x{first:x}..0x{end:x} start outside every tensor"));
    };
    let t = &p.tensors[k];
    if end > tensor_end(t) {
        return Err(format!(
            "HBM bytes 0x{first:x}..0x{end:x} run past the end of tensor `{}` (0x{:x}..0x{:x})",
            t.name,
            t.addr,
            tensor_end(t)
        ));
    }
    if !whole_elements(side, elem as u64, t.dtype.size_bytes() as u64, side.addr - t.addr) {
        return Err(format!(
            "moves {elem}-byte elements through tensor `{}`, whose {} elements are {} bytes (or starts one off an element boundary)",
            t.name,
            t.dtype.name(),
            t.dtype.size_bytes()
        ));
    }
    Ok(k)
}

fn tensor_end(t: &TensorDecl) -> i128 {
    t.addr as i128 + t.size_bytes() as i128
}

/// True when a side `offset` bytes into a tensor of `size`-byte elements moves
/// whole elements of it: DMA elements of the tensor's element size, each
/// starting on one of its elements.
fn whole_elements(side: &DmaSide, elem: u64, size: u64, offset: u64) -> bool {
    let multiple = |x: i128| x.rem_euclid(size as i128) == 0;
    elem == size && multiple(offset as i128) && side.dims().iter().all(|d| d.count == 1 || multiple(d.stride as i128))
}
