//! A row op fused after a GEMM: softmax, rmsnorm or layernorm over the last
//! axis of a GEMM's result, as its elementwise epilogue leaves it, when one
//! output tile holds whole rows (N fits one PSUM bank). The GEMM's staged output
//! tile is the row op's input, so the value between them never goes to HBM (a
//! post-norm Transformer's `layernorm(x + attention)` is one kernel). Each
//! tile's rows are normalised right after its epilogue, with the row kernel's
//! own ops ([`super::rows::InPlace`]): the results are the same bits, and each
//! row block leaves as soon as its tile is done.
//!
//! The fusion applies when the row op is the only use of that value and the
//! value is not returned; otherwise the GEMM stores it and a row kernel follows.

use jpu_isa::{DType, Target};

use super::rows::{InPlace, RowKind};
use super::{statement, Ctx};
use crate::ir::{Op, Operand, ValueId};

/// The row op a GEMM runs on its output tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct RowEpilogue {
    /// What it computes.
    pub rows: InPlace,
    /// gamma (and beta): HBM tensor and dtype, each one row of N elements.
    pub params: Vec<(String, DType)>,
    /// The dtype it stores.
    pub out_dtype: DType,
    /// Its IR statement.
    pub text: String,
    /// Its IR node (the value the GEMM kernel then writes).
    pub node: usize,
}

/// The row op that may run on the output tiles of a GEMM of `n` columns whose
/// epilogue ends at value `last`: over `last`'s last axis, its only use, with
/// gamma and beta in HBM, a float result, and `n` within one PSUM bank.
pub fn select(cx: &Ctx<'_>, last: ValueId, n: u64, t: &Target) -> Option<RowEpilogue> {
    let f = cx.f;
    let at = last.0 as usize;
    if !cx.fuse || cx.uses[at] != 1 || f.results.contains(&last) {
        return None;
    }
    let reads_last = |o: &Operand| matches!(o, Operand::Value(v) if *v == last);
    let (node_index, node) =
        f.nodes.iter().enumerate().skip(at + 1).find(|(_, n)| n.operands.iter().any(reads_last))?;
    let last_axis = |axis: usize| axis + 1 == node.ty.rank();
    let kind = match node.op {
        Op::Softmax { axis } if last_axis(axis) => RowKind::Softmax,
        Op::RmsNorm { axis, eps } if last_axis(axis) => RowKind::RmsNorm { eps: eps as f32 },
        Op::LayerNorm { axis, eps } if last_axis(axis) => RowKind::LayerNorm { eps: eps as f32 },
        _ => return None,
    };
    let bank_cols = (t.pe.max_moving_free as u64).min(t.psum_bank_bytes() as u64 / 4);
    let [x, params @ ..] = node.operands.as_slice() else { return None };
    if !reads_last(x) || params.iter().any(reads_last) || n > bank_cols || !node.ty.dtype.is_float() {
        return None;
    }
    let params = params
        .iter()
        .map(|o| match o {
            Operand::Value(v) if cx.in_hbm[v.0 as usize] && f.node(*v).ty.shape.iter().product::<u64>() == n => {
                Some((cx.tensor(*v), f.node(*v).ty.dtype.storage()))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RowEpilogue {
        rows: InPlace { kind, len: n },
        params,
        out_dtype: node.ty.dtype.storage(),
        text: statement(f, node_index),
        node: node_index,
    })
}

impl RowEpilogue {
    /// SRAM bytes per partition of its working buffers and parameter rows.
    pub fn sram_bytes(&self) -> u64 {
        let pad = |bytes: u64| bytes.div_ceil(64) * 64;
        let work: u64 = self
            .rows
            .buffers(self.out_dtype)
            .iter()
            .map(|(_, dtype, elems, copies)| *copies as u64 * pad(elems * dtype.size_bytes() as u64))
            .sum();
        let params: u64 = self.params.iter().map(|(_, d)| pad(self.rows.len * d.size_bytes() as u64)).sum();
        work + params
    }
}
