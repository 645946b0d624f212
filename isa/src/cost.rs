//! Execution cost of each instruction, from the target's timing rules.
//!
//! Compute instructions have a fixed duration ([`compute_cycles`]); a DMA's
//! duration depends on what else moves data at the same time, so it is described by
//! its latency, charged bytes and channel (HBM share or fabric egress,
//! [`DmaCost`]) and timed by the simulator.

use crate::dtype::DType;
use crate::inst::Op;
use crate::operand::{DmaTransfer, Tile};
use crate::target::Target;

/// What a DMA costs before bandwidth sharing is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaCost {
    /// Cycles from issue until data may start moving.
    pub latency_cycles: u64,
    /// Bytes charged against bandwidth (short contiguous runs round up).
    pub charged_bytes: u64,
    /// Charged against the issuing core's fabric egress (a core-to-core
    /// transfer, once however many cores it writes) instead of its HBM share.
    pub fabric: bool,
}

/// The DMA cost of a transfer.
pub fn dma_cost(x: &DmaTransfer, t: &Target) -> DmaCost {
    DmaCost {
        latency_cycles: t.timing.dma.latency_cycles,
        charged_bytes: x.charged_bytes(t.timing.dma.min_run_bytes),
        fabric: x.is_fabric(),
    }
}

/// The DMA cost of a `dma_gather` into `dst`: one run per row.
pub fn gather_cost(dst: &Tile, t: &Target) -> DmaCost {
    let row = dst.free_elems() * dst.dtype.size_bytes() as u64;
    let charged = dst.part_count as u64 * row.max(t.timing.dma.min_run_bytes);
    DmaCost {
        latency_cycles: t.timing.dma.latency_cycles,
        charged_bytes: if row == 0 { 0 } else { charged },
        fabric: false,
    }
}

/// The DMA cost of a DMA-queue op (`None` for other ops).
pub fn transfer_cost(op: &Op, t: &Target) -> Option<DmaCost> {
    match op {
        Op::Dma { xfer } => Some(dma_cost(xfer, t)),
        Op::DmaGather { dst, .. } => Some(gather_cost(dst, t)),
        _ => None,
    }
}

/// Bytes a DMA-queue op moves and is charged for (`(0, 0)` for other ops).
pub fn transfer_bytes(op: &Op, t: &Target) -> (u64, u64) {
    match op {
        Op::Dma { xfer } => (xfer.bytes(), xfer.charged_bytes(t.timing.dma.min_run_bytes)),
        Op::DmaGather { dst, .. } => (
            dst.part_count as u64 * dst.free_elems() * dst.dtype.size_bytes() as u64,
            gather_cost(dst, t).charged_bytes,
        ),
        _ => (0, 0),
    }
}

/// Cycles a matmul takes for `n` moving columns of `dtype` operands.
pub fn matmul_cycles(dtype: DType, n: u64, t: &Target) -> u64 {
    let pe = &t.timing.pe;
    match dtype.size_bytes() {
        1 => n.div_ceil(pe.matmul_8bit_columns_per_cycle).max(pe.matmul_min_cycles_8bit),
        2 => n.max(pe.matmul_min_cycles_16bit),
        _ => pe.matmul_f32_factor * n.max(pe.matmul_min_cycles_16bit),
    }
}

/// Cycles a compute or sync instruction occupies its engine; `None` for DMA.
pub fn compute_cycles(op: &Op, t: &Target) -> Option<u64> {
    let ve = |elems: u64| t.timing.ve.fixed_cycles + elems;
    Some(match op {
        Op::Matmul { moving, .. } => matmul_cycles(moving.dtype, moving.free_elems(), t),
        Op::Transpose { src, .. } => (src.part_count as u64).max(t.timing.pe.transpose_min_cycles),
        Op::TensorTensor { dst, a, b, .. } => ve(dst.free_elems().max(a.free_elems()).max(b.free_elems())),
        Op::TensorScalar { dst, src, .. } | Op::Copy { dst, src } | Op::Select { dst, src, .. } => {
            ve(dst.free_elems().max(src.free_elems()))
        }
        Op::FillPredicated { dst, cond, .. } => ve(dst.free_elems().max(cond.free_elems())),
        Op::CopyPredicated { dst, src, cond, .. } => ve(dst.free_elems().max(src.free_elems()).max(cond.free_elems())),
        Op::Reduce { src, .. } => ve(src.free_elems()),
        Op::Memset { dst, .. } | Op::Iota { dst, .. } => ve(dst.free_elems()),
        Op::Activate { dst, src, .. } => t.timing.act.fixed_cycles + dst.free_elems().max(src.free_elems()),
        Op::Dma { .. } | Op::DmaGather { .. } => return None,
        Op::Nop {} | Op::Halt {} => 0,
    })
}

/// FLOPs a PE instruction performs (2 per multiply-add); 0 for everything else.
pub fn pe_flops(op: &Op) -> u64 {
    match op {
        Op::Matmul { stationary, moving, transposed, .. } => {
            let k = moving.part_count as u64;
            let m = if *transposed { stationary.part_count as u64 } else { stationary.free_elems() };
            2 * k * m * moving.free_elems()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operand::{Space, Tile};

    fn mm(dtype: DType, k: u16, m: u16, n: u16) -> Op {
        Op::Matmul {
            dst: Tile::contiguous(Space::Psum, dtype.accumulator(), 0, m, 0, n),
            stationary: Tile::contiguous(Space::Sram, dtype, 0, k, 0, m),
            moving: Tile::contiguous(Space::Sram, dtype, 0, k, 0x1000, n),
            accumulate: false,
            transposed: false,
        }
    }

    #[test]
    fn machine_md_timing_table() {
        let t = Target::builtin("jpu1").unwrap();
        assert_eq!(compute_cycles(&mm(DType::Bf16, 128, 128, 512), &t), Some(512));
        assert_eq!(compute_cycles(&mm(DType::Bf16, 128, 128, 10), &t), Some(64));
        assert_eq!(compute_cycles(&mm(DType::F8E4M3, 128, 128, 512), &t), Some(256));
        assert_eq!(compute_cycles(&mm(DType::I8, 128, 128, 63), &t), Some(32));
        assert_eq!(compute_cycles(&mm(DType::I8, 128, 128, 101), &t), Some(51));
        assert_eq!(compute_cycles(&mm(DType::F32, 128, 128, 100), &t), Some(400));
        assert_eq!(pe_flops(&mm(DType::Bf16, 128, 128, 512)), 2 * 128 * 128 * 512);
        let act = Op::Activate {
            func: crate::operand::ActFunc::Exp,
            dst: Tile::contiguous(Space::Sram, DType::Bf16, 0, 128, 0, 300),
            src: Tile::contiguous(Space::Psum, DType::F32, 0, 128, 0, 300),
            scale: crate::operand::Scalar::Imm(crate::operand::Imm(1.0)),
            bias: crate::operand::Scalar::Imm(crate::operand::Imm(0.0)),
            accum: None,
        };
        assert_eq!(compute_cycles(&act, &t), Some(428));
        let red = Op::Reduce {
            op: crate::operand::ReduceOp::Max,
            dst: Tile::contiguous(Space::Sram, DType::F32, 0, 128, 0, 1),
            src: Tile::contiguous(Space::Sram, DType::F32, 0, 128, 64, 512),
        };
        assert_eq!(compute_cycles(&red, &t), Some(576));
    }
}
