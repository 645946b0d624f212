//! The optimizer's cost model: estimated cycles of each e-node as a kernel of its
//! own on the target (docs/machine.md's rates), so extraction minimises the program's
//! estimated time.
//!
//! - matmul: `max(PE cycles, HBM cycles)` for its FLOPs and its operand and result
//!   bytes; a stored-transposed B adds its PE transposes (one `max(P, 64)`-cycle
//!   transpose per `rows x cols` block).
//! - a standalone transpose: its bytes read and written through HBM.
//! - `mul`/`add` of a matmul's result: fused into its epilogue (the lowering does
//!   this for single-use chains), so only a tensor operand's bytes; other
//!   elementwise, reshapes and other ops: their input and output bytes through HBM.
//! - fused attention: the larger of its PE time (q . k^T and p . v, half when
//!   causal), its exponentials on the ACT and q, k, v, o through HBM.
//! - every kernel: a fixed launch cost of one DMA latency.
//! - parameters, dtype leaves and literals: free.

use egg::{EGraph, Language};
use jpu_isa::Target;

use super::{matmul_type, Shapes, TLang};
use crate::ir::types::{ScalarType, TensorType};
use crate::ir::Op;

fn is_matmul(eg: &EGraph<TLang, Shapes>, class: egg::Id) -> bool {
    eg[class].nodes.iter().any(|n| matches!(n, TLang::Mm(_) | TLang::MmTa(_) | TLang::MmTb(_) | TLang::MmTab(_)))
}

/// Rates of one target.
pub struct Model {
    flops16: f64,
    bytes_per_cycle: f64,
    fixed: f64,
    block: f64,
    transpose: f64,
    act_lanes: f64,
}

fn size(d: ScalarType) -> f64 {
    d.chip().map_or(1.0, |c| c.size_bytes() as f64)
}

fn bytes(t: &TensorType) -> f64 {
    t.elems() as f64 * size(t.dtype)
}

impl Model {
    /// The model of `t`.
    pub fn new(t: &Target) -> Model {
        Model {
            flops16: t.pe_flops_per_cycle_16bit() as f64,
            bytes_per_cycle: t.hbm.bytes_per_cycle.as_f64(),
            fixed: t.timing.dma.latency_cycles as f64,
            block: (t.pe.rows * t.pe.cols) as f64,
            transpose: (t.pe.rows as f64).max(t.timing.pe.transpose_min_cycles as f64),
            act_lanes: t.act.lanes as f64,
        }
    }

    /// Estimated cycles of one e-node.
    pub fn node_cost(&self, eg: &EGraph<TLang, Shapes>, node: &TLang) -> f64 {
        let ty = |id: &egg::Id| eg[*id].data.clone();
        let io = |out: Option<TensorType>, node: &TLang| -> f64 {
            let inputs: f64 = node.children().iter().filter_map(&ty).map(|t| bytes(&t)).sum();
            self.fixed + (inputs + out.as_ref().map_or(0.0, bytes)) / self.bytes_per_cycle
        };
        match node {
            TLang::Mm([d, a, b]) | TLang::MmTa([d, a, b]) | TLang::MmTb([d, a, b]) | TLang::MmTab([d, a, b]) => {
                let (Some(at), Some(bt)) = (ty(a), ty(b)) else { return f64::INFINITY };
                let dtype = eg[*d].nodes.iter().find_map(|n| match n {
                    TLang::Leaf(s) => ScalarType::from_name(s.as_str()),
                    _ => None,
                });
                let (ta, tb) = super::layout(node);
                let Some(out) = dtype.and_then(|d| matmul_type(d, &at, &bt, ta, tb)) else { return f64::INFINITY };
                let k = if ta { at.shape[at.rank() - 2] } else { at.shape[at.rank() - 1] } as f64;
                let flops = 2.0 * out.elems() as f64 * k;
                let peak = self.flops16 * 2.0 / size(at.dtype);
                let pe = flops / peak;
                let hbm = (bytes(&at) + bytes(&bt) + bytes(&out)) / self.bytes_per_cycle;
                let transposes = if tb { bytes(&bt) / size(bt.dtype) / self.block * self.transpose } else { 0.0 };
                self.fixed + pe.max(hbm) + transposes
            }
            TLang::T(_) => {
                let out = eg.lookup(node.clone()).and_then(|c| eg[c].data.clone());
                self.fixed + 2.0 * out.as_ref().map_or(0.0, bytes) / self.bytes_per_cycle
            }
            TLang::Mul([a, b]) | TLang::Add([a, b]) if is_matmul(eg, *a) || is_matmul(eg, *b) => {
                // Fused into the matmul's epilogue: the VE works on tiles already on
                // chip while the PE computes; only a tensor operand adds HBM bytes.
                let other = if is_matmul(eg, *a) { b } else { a };
                ty(other).map_or(0.0, |t| bytes(&t)) / self.bytes_per_cycle
            }
            TLang::Other(sym, c) if matches!(eg.analysis.op(*sym), Some(Op::Attention { .. })) => {
                // Fused: PE work of q . k^T and p . v (half of it when causal),
                // its exponentials on the ACT, q, k, v and o through HBM once.
                let (Some(q), Some(k), Some(v)) = (ty(&c[0]), ty(&c[1]), ty(&c[2])) else { return f64::INFINITY };
                let r = q.rank();
                let (sk, d, dv) = (k.shape[r - 2] as f64, q.shape[r - 1] as f64, v.shape[r - 1] as f64);
                let rows = (q.elems() as f64 / d).max(1.0);
                let causal =
                    if matches!(eg.analysis.op(*sym), Some(Op::Attention { causal: true, .. })) { 0.5 } else { 1.0 };
                let pairs = rows * sk * causal;
                let pe = 2.0 * pairs * (d + dv) / (self.flops16 * 2.0 / size(q.dtype));
                let act = pairs / self.act_lanes;
                let out = bytes(&q) / d * dv;
                // A mask is read per query tile (the shared rows of a key-padding
                // mask once per row of the tile): about the scores' size when it
                // has rows of its own, `rows x sk` elements either way.
                let mask = c.get(3).and_then(ty).map_or(0.0, |m| rows * sk * size(m.dtype));
                let hbm = (bytes(&q) + bytes(&k) + bytes(&v) + out + mask) / self.bytes_per_cycle;
                self.fixed + pe.max(act).max(hbm)
            }
            TLang::Mul(_) | TLang::Add(_) | TLang::Reshape(_) | TLang::Other(..) => {
                let out = eg.lookup(node.clone()).and_then(|c| eg[c].data.clone());
                io(out, node)
            }
            TLang::Scalar(_) | TLang::Leaf(_) => 0.0,
        }
    }
}
