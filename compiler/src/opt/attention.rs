//! Recognising attention written out: `matmul(cast(softmax(mask(scale(matmul(q,
//! k^T))))), v)` becomes the fused `attention(q, k, v) {causal, scale}`.
//!
//! The searcher is `(matmul ?d ?p ?v)`; the applier walks down `?p`'s e-class
//! (every spelling the e-graph holds is visible there) and peels, in order:
//!
//! - an optional cast of the probabilities to the operands' dtype;
//! - softmax over the last axis, as the op or spelled
//!   `div(exp(sub(z, reduce_max(z))), reduce_sum(that exp))` (keepdims, last axis);
//! - at most one additive mask or bias `add(z, m)` outside the scale (it becomes
//!   the fused op's fourth operand when `m` broadcasts to the scores), and, in
//!   any order, at most one scale (`mul` by a positive literal, either side, or
//!   `div` by one) and at most one causal mask: `select(compare(iota_j, iota_i)
//!   {kind = le}, z, -inf)` (or `ge` with the iotas swapped), or `add(z, m)` where
//!   `m` is that select of `0` (a literal or a `const`) and `-inf` (square scores
//!   only: the spelled mask has no offset);
//! - the scores `matmul_tb(q, k)` accumulated in f32 (transposes are folded
//!   first, so `matmul(q, transpose(k))` is among the spellings).
//!
//! The fused op is valid when q, k and v share one float dtype, the result has it,
//! shapes are `[.., heads, seq, dim]` with the same leading dims and grouped heads
//! (k's heads divide q's; a broadcast k head of 1 is grouped-query attention),
//! and the scores and softmax are f32. Its reference result differs from the
//! written-out one only by where the probabilities are rounded (docs/testing.md).

use egg::{Applier, EGraph, Id, PatternAst, Rewrite, Subst, Symbol, Var};

use super::{class_literal, Shapes, TLang};
use crate::ir::types::{ScalarType, TensorType};
use crate::ir::{BinaryOp, CompareKind, Op, ReduceKind, UnaryOp};

/// The rule.
pub fn rules() -> Vec<Rewrite<TLang, Shapes>> {
    let searcher: egg::Pattern<TLang> = "(matmul ?d ?p ?v)".parse().expect("pattern");
    let applier =
        FuseAttention { p: "?p".parse().expect("pattern variable"), v: "?v".parse().expect("pattern variable") };
    vec![Rewrite::new("fuse-attention", searcher, applier).expect("valid rewrite")]
}

struct FuseAttention {
    p: Var,
    v: Var,
}

/// The opaque nodes of a class: each typed op and its operands.
fn opaque(eg: &EGraph<TLang, Shapes>, class: Id) -> Vec<(&Op, &[Id])> {
    eg[class]
        .nodes
        .iter()
        .filter_map(|n| match n {
            TLang::Other(sym, children) => Some((eg.analysis.op(*sym)?, children.as_slice())),
            _ => None,
        })
        .collect()
}

fn ty(eg: &EGraph<TLang, Shapes>, class: Id) -> Option<TensorType> {
    eg[eg.find(class)].data.clone()
}

fn same(eg: &EGraph<TLang, Shapes>, a: Id, b: Id) -> bool {
    eg.find(a) == eg.find(b)
}

/// Classes whose value is softmax over the last axis of the returned class.
fn softmax_inputs(eg: &EGraph<TLang, Shapes>, class: Id) -> Vec<Id> {
    let last = ty(eg, class).map_or(0, |t| t.rank()).saturating_sub(1);
    let reduces_last = |op: &Op, kind: ReduceKind| matches!(op, Op::Reduce { kind: k, axes, keepdims: true } if *k == kind && axes[..] == [last]);
    let mut out = Vec::new();
    for (op, children) in opaque(eg, class) {
        match (op, children) {
            (Op::Softmax { axis }, [z]) if *axis == last => out.push(*z),
            // div(e, reduce_sum(e)) with e = exp(sub(z, reduce_max(z))).
            (Op::Binary(BinaryOp::Div), [e, sum]) => {
                let sums_e = opaque(eg, *sum)
                    .iter()
                    .any(|(op, c)| reduces_last(op, ReduceKind::Sum) && matches!(c, [x] if same(eg, *x, *e)));
                if !sums_e {
                    continue;
                }
                for (op, c) in opaque(eg, *e) {
                    let (Op::Unary(UnaryOp::Exp), [diff]) = (op, c) else { continue };
                    for (op, c) in opaque(eg, *diff) {
                        let (Op::Binary(BinaryOp::Sub), [z, mx]) = (op, c) else { continue };
                        let max_of_z = opaque(eg, *mx)
                            .iter()
                            .any(|(op, c)| reduces_last(op, ReduceKind::Max) && matches!(c, [x] if same(eg, *x, *z)));
                        if max_of_z {
                            out.push(*z);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A literal 0 or a `const` splat of 0.
fn is_zero(eg: &EGraph<TLang, Shapes>, class: Id) -> bool {
    class_literal(eg, class) == Some(0.0)
        || opaque(eg, class).iter().any(|(op, _)| matches!(op, Op::Const { value } if *value == 0.0))
}

/// True when `cond` is the causal condition `j <= i` over the last two axes
/// (iota of the key axis compared with iota of the query axis).
fn is_causal_condition(eg: &EGraph<TLang, Shapes>, cond: Id) -> bool {
    let iota_axis = |c: Id| -> Option<(usize, usize)> {
        let rank = ty(eg, c)?.rank();
        opaque(eg, c).iter().find_map(|(op, _)| match op {
            Op::Iota { axis } => Some((*axis, rank)),
            _ => None,
        })
    };
    opaque(eg, cond).iter().any(|(op, c)| {
        let (Op::Compare { kind }, [x, y]) = (op, c) else { return false };
        let (Some((ax, rx)), Some((ay, ry))) = (iota_axis(*x), iota_axis(*y)) else { return false };
        let (key, query) = match kind {
            CompareKind::Le => ((ax, rx), (ay, ry)),
            CompareKind::Ge => ((ay, ry), (ax, rx)),
            _ => return false,
        };
        key.1 >= 2 && key.0 == key.1 - 1 && query.1 >= 2 && query.0 == query.1 - 2
    })
}

/// The unmasked scores under a causal mask on `class`, if it has one.
fn unmasked(eg: &EGraph<TLang, Shapes>, class: Id) -> Vec<Id> {
    let mut out = Vec::new();
    for (op, c) in opaque(eg, class) {
        if let (Op::Select, [cond, z, fill]) = (op, c) {
            if class_literal(eg, *fill) == Some(f64::NEG_INFINITY) && is_causal_condition(eg, *cond) {
                out.push(*z);
            }
        }
    }
    for n in &eg[class].nodes {
        let TLang::Add([a, b]) = n else { continue };
        for (z, m) in [(*a, *b), (*b, *a)] {
            let additive_mask = opaque(eg, m).iter().any(|(op, c)| {
                matches!((op, c), (Op::Select, [cond, zero, fill])
                    if is_zero(eg, *zero)
                        && class_literal(eg, *fill) == Some(f64::NEG_INFINITY)
                        && is_causal_condition(eg, *cond))
            });
            if additive_mask {
                out.push(z);
            }
        }
    }
    out
}

/// The unscaled scores and the scale of `class`, if it is scaled by a literal.
fn unscaled(eg: &EGraph<TLang, Shapes>, class: Id) -> Vec<(Id, f64)> {
    let mut out = Vec::new();
    for n in &eg[class].nodes {
        if let TLang::Mul([a, b]) = n {
            for (z, s) in [(*a, *b), (*b, *a)] {
                if let Some(c) = class_literal(eg, s).filter(|c| *c > 0.0 && c.is_finite()) {
                    out.push((z, c));
                }
            }
        }
    }
    for (op, c) in opaque(eg, class) {
        if let (Op::Binary(BinaryOp::Div), [z, s]) = (op, c) {
            if let Some(c) = class_literal(eg, *s).filter(|c| *c > 0.0 && c.is_finite()) {
                out.push((*z, 1.0 / c));
            }
        }
    }
    out
}

/// Every `(q, k)` of an f32 `q . k^T` in `class`.
fn scores(eg: &EGraph<TLang, Shapes>, class: Id) -> Vec<(Id, Id)> {
    eg[class]
        .nodes
        .iter()
        .filter_map(|n| match n {
            TLang::MmTb([d, q, k]) => {
                let f32_acc = eg[*d].nodes.iter().any(|l| matches!(l, TLang::Leaf(s) if s.as_str() == "f32"));
                f32_acc.then_some((*q, *k))
            }
            _ => None,
        })
        .collect()
}

/// A recognised attention: q, k, causal, scale and the additive mask.
type Found = (Id, Id, bool, f64, Option<Id>);

/// What has been peeled off the scores so far.
#[derive(Clone, Copy)]
struct Peeled {
    causal: bool,
    scale: Option<f64>,
    mask: Option<Id>,
}

/// Every way to peel the causal mask, the scale and an additive mask (each at
/// most once; the additive mask only outside the scale, as the fused op adds
/// it to the scaled scores) down to the scores.
fn peel(eg: &EGraph<TLang, Shapes>, z: Id, done: Peeled, depth: u32, found: &mut Vec<Found>) {
    for (q, k) in scores(eg, z) {
        found.push((q, k, done.causal, done.scale.unwrap_or(1.0), done.mask));
    }
    if depth == 0 {
        return;
    }
    if !done.causal {
        for inner in unmasked(eg, z) {
            peel(eg, inner, Peeled { causal: true, ..done }, depth - 1, found);
        }
    }
    if done.scale.is_none() {
        for (inner, s) in unscaled(eg, z) {
            peel(eg, inner, Peeled { scale: Some(s), ..done }, depth - 1, found);
        }
        if done.mask.is_none() {
            for n in &eg[z].nodes {
                let TLang::Add([a, b]) = n else { continue };
                for (inner, m) in [(*a, *b), (*b, *a)] {
                    peel(eg, inner, Peeled { mask: Some(m), ..done }, depth - 1, found);
                }
            }
        }
    }
}

/// Every reading of the probabilities class as a recognised softmax
/// (extraction picks the cheapest fused form).
fn find(eg: &EGraph<TLang, Shapes>, p: Id, operand: ScalarType) -> Vec<Found> {
    let mut probs = vec![p];
    for (op, c) in opaque(eg, p) {
        if let (Op::Cast { to }, [x]) = (op, c) {
            if *to == operand {
                probs.push(*x);
            }
        }
    }
    let mut found = Vec::new();
    for pc in probs {
        if ty(eg, pc).is_none_or(|t| t.dtype != ScalarType::F32) {
            continue;
        }
        for z in softmax_inputs(eg, pc) {
            peel(eg, z, Peeled { causal: false, scale: None, mask: None }, 3, &mut found);
        }
    }
    found.sort_by_key(|a| (a.0, a.1, a.2, a.3.to_bits(), a.4));
    found.dedup();
    found
}

impl Applier<TLang, Shapes> for FuseAttention {
    fn apply_one(
        &self,
        eg: &mut EGraph<TLang, Shapes>,
        matched: Id,
        subst: &Subst,
        _: Option<&PatternAst<TLang>>,
        _: Symbol,
    ) -> Vec<Id> {
        let (p, v) = (subst[self.p], subst[self.v]);
        let (Some(out), Some(vt)) = (ty(eg, matched), ty(eg, v)) else { return vec![] };
        let mut added = Vec::new();
        for (q, k, causal, scale, mask) in find(eg, p, vt.dtype) {
            let (Some(qt), Some(kt)) = (ty(eg, q), ty(eg, k)) else { continue };
            let r = qt.rank();
            let grouped = r >= 3
                && kt.rank() == r
                && vt.rank() == r
                && qt.dtype.is_float()
                && kt.dtype == qt.dtype
                && vt.dtype == qt.dtype
                && out.dtype == qt.dtype
                && qt.shape[..r - 3] == kt.shape[..r - 3]
                && vt.shape[..r - 2] == kt.shape[..r - 2]
                && qt.shape[r - 1] == kt.shape[r - 1]
                && kt.shape[r - 3] > 0
                && qt.shape[r - 3] % kt.shape[r - 3] == 0
                && (!causal || qt.shape[r - 2] == kt.shape[r - 2]);
            if !grouped {
                continue;
            }
            let mut shape = qt.shape.clone();
            shape[r - 1] = vt.shape[r - 1];
            if shape != out.shape {
                continue;
            }
            // A mask must broadcast to the scores, [.., hq, sq, sk].
            let mut scores_shape = qt.shape.clone();
            scores_shape[r - 1] = kt.shape[r - 2];
            let mask_fits = |m: Id| {
                ty(eg, m).is_some_and(|mt| {
                    mt.dtype.is_float()
                        && mt.rank() <= r
                        && crate::ir::ops::broadcast(&mt.shape, &scores_shape).as_deref() == Some(&scores_shape[..])
                })
            };
            if mask.is_some_and(|m| !mask_fits(m)) {
                continue;
            }
            let sym = eg.analysis.intern(&Op::Attention { causal, scale }, &out);
            let fused = eg.add(TLang::Other(sym, [q, k, v].into_iter().chain(mask).collect()));
            if eg.union(matched, fused) {
                added.push(fused);
            }
        }
        added
    }
}
