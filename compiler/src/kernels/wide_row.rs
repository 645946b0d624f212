//! An RMSNorm of one long row (a decode step's): the row kernel's plain form
//! puts the row on one partition, so each of its passes takes the row's whole
//! length. Here only the sum of squares stays there, as one ACT pass: the sum
//! must run in the reference's order, element after element. The row is loaded
//! a second time spread over every partition (`[P, len / P]`, gamma alike),
//! `r = rsqrt(sum / n + eps)` is broadcast to every partition by an exact PE
//! transpose, and `y = x * r * gamma` runs on the spread row, each product
//! rounded as in the reference (f32, then the output dtype).

use jpu_isa::operand::{ActFunc, AluOp, Space};
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::rows::{RowKind, RowProblem};
use crate::tiles::{BufSlice, Buffer, HbmBox, HbmTensor, TileOp, TileProgram, TileScalar};

/// Whether `p` takes this form: an RMSNorm of one row that splits evenly over
/// the partitions, each part at least a DMA run's charge, on a PE that can
/// transpose a row of the partitions' length, its buffers within a partition
/// (the row twice, on one partition; it needs no f32 copy of the row, so it
/// holds rows the plain form cannot).
pub fn applies(p: &RowProblem, t: &Target) -> bool {
    let parts = t.sram.partitions as u64;
    let size = |d: DType| d.size_bytes() as u64;
    let fits = matches!(p.kind, RowKind::RmsNorm { .. })
        && p.rows == 1
        && p.len.is_multiple_of(parts)
        && p.len / parts * size(p.dtype).min(size(p.out_dtype)) >= t.timing.dma.min_run_bytes
        && parts <= t.pe.rows as u64
        && parts <= t.pe.cols as u64
        && p.params.len() == 1;
    // SRAM bytes per partition, each buffer 64-byte aligned as placed.
    let sram = || {
        buffers(p, t)
            .iter()
            .filter(|b| b.space == Space::Sram)
            .map(|b| (b.copies as u64 * b.free as u64 * size(b.dtype)).div_ceil(64) * 64)
            .sum::<u64>()
    };
    fits && sram() <= t.sram.partition_bytes as u64
}

/// Buffer indices.
const X_ROW: usize = 0;
const SQUARES: usize = 1;
const SUM: usize = 2;
const R_ROW: usize = 3;
const R_PSUM: usize = 4;
const X: usize = 5;
const GAMMA: usize = 6;
const WORK: usize = 7;
const Y: usize = 8;

/// The tile program (one core: the row is one block).
pub fn lower(p: &RowProblem, t: &Target) -> TileProgram {
    let RowKind::RmsNorm { eps } = p.kind else { unreachable!("applies() admits RMSNorm only") };
    let (n, parts) = (p.len as u32, t.sram.partitions);
    let per = n / parts;
    let (tensors, buffers) = (tensors(p), buffers(p, t));
    let whole = |buf, parts, len| BufSlice { buf, copy: 0, parts, offset: 0, len };
    let spread = |tensor| HbmBox { tensor, start: 0, rows: parts, row_stride: per as u64, cols: per };
    let (sum, r_row, r_col) = (whole(SUM, 1, 1), whole(R_ROW, 1, parts), whole(R_PSUM, parts, 1));
    let imm =
        |dst: BufSlice, op, v: f32| TileOp::Scalar { op, dst, src: dst, scalar: TileScalar::Imm(v), reverse: false };
    let ops = vec![
        (
            TileOp::Load {
                dst: whole(X_ROW, 1, n),
                src: HbmBox { tensor: 0, start: 0, rows: 1, row_stride: n as u64, cols: n },
                queue: None,
            },
            0,
        ),
        (TileOp::Load { dst: whole(X, parts, per), src: spread(0), queue: None }, 0),
        (TileOp::Load { dst: whole(GAMMA, parts, per), src: spread(1), queue: None }, 0),
        // The sum of squares, in the reference's order (the squares are not kept).
        (square_sum(whole(SQUARES, 1, n), whole(X_ROW, 1, n), sum), 0),
        (imm(sum, AluOp::Div, n as f32), 0),
        (imm(sum, AluOp::Add, eps), 0),
        (TileOp::activate(ActFunc::Rsqrt, sum, sum), 0),
        // r on every partition: a row of r (0 + r is r), transposed exactly.
        (TileOp::Memset { dst: r_row, value: 0.0 }, 0),
        (TileOp::Scalar { op: AluOp::Add, dst: r_row, src: r_row, scalar: TileScalar::Column(sum), reverse: false }, 0),
        (TileOp::Transpose { dst: r_col, src: r_row }, 0),
        (
            TileOp::Scalar {
                op: AluOp::Mul,
                dst: whole(WORK, parts, per),
                src: whole(X, parts, per),
                scalar: TileScalar::Column(r_col),
                reverse: false,
            },
            0,
        ),
        (
            TileOp::Binary {
                op: AluOp::Mul,
                dst: whole(Y, parts, per),
                a: whole(WORK, parts, per),
                b: whole(GAMMA, parts, per),
            },
            0,
        ),
        (TileOp::Store { dst: spread(2), src: whole(Y, parts, per) }, p.text.len() as u32 - 1),
    ];
    TileProgram { tensors, buffers, ops, debug_ops: p.text.clone() }
}

/// The input row, gamma and the output.
fn tensors(p: &RowProblem) -> Vec<HbmTensor> {
    let (gamma_name, gamma_dtype) = p.params[0].clone();
    vec![
        HbmTensor { name: p.input.clone(), dtype: p.dtype, shape: p.input_shape.clone(), role: Role::Input },
        HbmTensor { name: gamma_name, dtype: gamma_dtype, shape: vec![p.len], role: Role::Input },
        HbmTensor { name: p.output.clone(), dtype: p.out_dtype, shape: p.output_shape.clone(), role: Role::Output },
    ]
}

/// The buffers, at the indices `X_ROW` .. `Y`.
fn buffers(p: &RowProblem, t: &Target) -> Vec<Buffer> {
    let (n, parts) = (p.len as u32, t.sram.partitions);
    let per = n / parts;
    let sram = |name: &str, dtype, parts, free| Buffer::new(name, Space::Sram, dtype, parts, free, 1);
    vec![
        sram("x_row", p.dtype, 1, n),
        sram("squares", p.out_dtype, 1, n),
        sram("row_sum", DType::F32, 1, 1),
        sram("r_row", DType::F32, 1, parts),
        Buffer::new("r_psum", Space::Psum, DType::F32, parts, 1, 1),
        sram("x_spread", p.dtype, parts, per),
        sram("gamma_spread", p.params[0].1, parts, per),
        sram("f32_spread", DType::F32, parts, per),
        sram("y_spread", p.out_dtype, parts, per),
    ]
}

/// `dst = x * x` on the ACT with the f32 row sum of the products in `sum`.
fn square_sum(dst: BufSlice, x: BufSlice, sum: BufSlice) -> TileOp {
    let (scale, bias) = (TileScalar::Imm(1.0), TileScalar::Imm(-0.0));
    TileOp::Activate { func: ActFunc::Square, dst, src: x, scale, bias, accum: Some(sum) }
}
