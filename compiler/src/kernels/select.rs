//! Kernel selection: a checked function as kernels in execution order.
//!
//! Each matmul becomes a GEMM with the elementwise steps that consume its result
//! one after another fused (each step's input used only by the next step and not
//! returned); each remaining elementwise chain or const splat a map kernel; each
//! row op, attention and concat a kernel of its kind. Reshapes, transposes and
//! slices that [`super::layout`] folds get no kernel; the rest are copy kernels
//! (or the PE transpose, for a swap of the last two dims of a whole tensor).
//! Values no result needs are dropped; iotas and comparisons that only shape
//! masks live inside the kernels of their selects.
//! Kernel outputs that the function does not return live in HBM scratch between
//! kernels. Each kernel's schedule is chosen for the target here; the driver's
//! schedule stage applies overrides on top.
//!
//! The `match` in [`select`] is the registration of kernel kinds: the op each
//! kind owns.

use jpu_isa::Target;

use super::{
    attention, chain, copy, gather, gemm, layout, map, mask, rows, statement, transpose, unsupported, Ctx, Kernel,
};
use crate::error::CompileError;
use crate::ir::{Func, Op, Operand, ReduceKind, ValueId};

/// The kernels of `f` for `t`, in execution order. Without `fuse` every op is a
/// kernel of its own (the `-O0` baseline that measures what fusion is worth).
pub fn select(f: &Func, t: &Target, fuse: bool) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
    let live = live_values(f);
    let layout = layout::plan(f, &live);
    let broadcasts = Default::default();
    let mut cx = Ctx { f, uses: live_uses(f, &live), in_hbm: vec![false; f.nodes.len()], fuse, layout, broadcasts };
    for p in 0..f.num_params {
        cx.mark_in_hbm(p);
    }
    let mut done = vec![false; f.nodes.len()];
    let absorbed = mask::absorbed(f, &live);
    let mut kernels: Vec<Box<dyn Kernel>> = Vec::new();
    let mut pending = expansions(f, &live, &absorbed);
    expand_ready(&mut cx, &mut pending, &mut kernels)?;
    for i in f.num_params..f.nodes.len() {
        if done[i] || !live[i] || absorbed[i] || cx.layout.folded[i] {
            continue;
        }
        let (mut selected, out): (Vec<Box<dyn Kernel>>, usize) = match constant_result(f, i)? {
            Some(value) => one(map::select_fill(&cx, i, value, t)?),
            None => by_kind(&cx, i, t)?,
        };
        for k in &selected {
            for &v in k.nodes() {
                done[v] = true;
            }
        }
        cx.mark_in_hbm(out);
        kernels.append(&mut selected);
        expand_ready(&mut cx, &mut pending, &mut kernels)?;
    }
    if let Some(r) = f.results.iter().find(|r| (r.0 as usize) < f.num_params) {
        let node = f.node(*r);
        return Err(unsupported(node, "is returned unchanged (a parameter as a result), which is not supported yet"));
    }
    if let Some(r) = f.results.iter().find(|r| !cx.in_hbm[r.0 as usize]) {
        let why = "is returned, but it is only computed inside the kernels of the selects that use it as a mask";
        return Err(unsupported(f.node(*r), why));
    }
    Ok(kernels)
}

/// The kernels of the kind that owns node `i`'s op (the registration), and
/// the node whose value the last of them leaves in HBM.
fn by_kind(cx: &Ctx<'_>, i: usize, t: &Target) -> Result<(Vec<Box<dyn Kernel>>, usize), CompileError> {
    let node = &cx.f.nodes[i];
    Ok(match &node.op {
        Op::Matmul { .. } => one(gemm::select(cx, i, t)?),
        Op::Transpose { perm }
            if crate::ir::swaps_last_two(perm)
                && operand_is_plain(cx, i)
                && node.ty.dtype.storage().is_pe_operand() =>
        {
            (vec![Box::new(transpose::select(cx, i)?)], i)
        }
        Op::Transpose { .. } | Op::Reshape { .. } | Op::Slice { .. } => (vec![Box::new(copy::select(cx, i)?)], i),
        Op::Cast { .. } | Op::Binary(_) | Op::Unary(_) | Op::Gelu { .. } | Op::Select | Op::Compare { .. } => {
            one(map::select_chain(cx, i, t)?)
        }
        Op::Iota { .. } => map::select_iota(cx, i, t)?,
        Op::Const { .. } => one(map::select_const(cx, i, t)?),
        Op::Softmax { .. } | Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::Reduce { .. } => rows::select(cx, i, t)?,
        Op::Attention { .. } => (vec![Box::new(attention::select(cx, i, t)?)], i),
        Op::Concat { .. } => (vec![Box::new(copy::select(cx, i)?)], i),
        Op::Gather { .. } => gather::select(cx, i, t)?,
        Op::Param => return Err(unsupported(node, "is a parameter after the parameters")),
    })
}

/// Operands of elementwise statements that no epilogue reads as they are
/// (`add(%x: [S, H, D], %cos: [S, 1, D])`), a select's condition of one value
/// per row, and, where no value operand has the result's shape, the first
/// one (the tile the chain runs on): `(statement, operand)` pairs.
fn expansions(f: &Func, live: &[bool], absorbed: &[bool]) -> Vec<(usize, ValueId)> {
    let mut out = Vec::new();
    let elementwise = |n: &crate::ir::Node| matches!(n.op, Op::Binary(_) | Op::Compare { .. } | Op::Select);
    for (i, node) in f.nodes.iter().enumerate().filter(|(i, n)| live[*i] && !absorbed[*i] && elementwise(n)) {
        if node.ty.elems() == 0 || mask::is_mask_select(f, node) {
            continue;
        }
        // A select's condition (operand 0) is never the tile the chain runs on.
        let first_data = usize::from(matches!(node.op, Op::Select));
        let value = |k: usize| match node.operands[k] {
            Operand::Value(v) => Some(v),
            Operand::Scalar(_) => None,
        };
        let full = |v: ValueId| f.node(v).ty.shape == node.ty.shape;
        let data: Vec<ValueId> = (first_data..node.operands.len()).filter_map(value).collect();
        let tile = if data.iter().any(|&v| full(v)) { None } else { data.first().copied() };
        for (k, v) in (0..node.operands.len()).filter_map(|k| Some((k, value(k)?))) {
            let class = chain::broadcast_class(&f.node(v).ty.shape, &node.ty.shape);
            let column_condition = k < first_data && class == Some(chain::Broadcast::Column);
            if (class.is_none() || column_condition || tile == Some(v)) && !out.contains(&(i, v)) {
                out.push((i, v));
            }
        }
    }
    out
}

/// Emits a copy kernel expanding each pending operand that is now in HBM to
/// its statement's shape (stride 0 along the broadcast dims), and records it.
fn expand_ready(
    cx: &mut Ctx<'_>,
    pending: &mut Vec<(usize, ValueId)>,
    kernels: &mut Vec<Box<dyn Kernel>>,
) -> Result<(), CompileError> {
    let (ready, rest): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(_, v)| cx.in_hbm[v.0 as usize]);
    *pending = rest;
    for (i, v) in ready {
        let node = &cx.f.nodes[i];
        let from = cx.view(v);
        let (c, r) = (node.ty.shape.len(), from.shape.len());
        let strides = (0..c)
            .map(|j| match (j + r).checked_sub(c) {
                Some(k) if from.shape[k] != 1 => from.strides[k],
                _ => 0,
            })
            .collect();
        let view = layout::TensorView { shape: node.ty.shape.clone(), strides, ..from };
        if copy::transfers(&view) > 1 << 20 {
            let what =
                format!("expanding `%{}` to {:?} needs more than 2^20 transfers", cx.f.node(v).name, node.ty.shape);
            return Err(CompileError::limit(&statement(cx.f, i), what, node.span.clone()));
        }
        let dtype = cx.f.node(v).ty.dtype.storage();
        let name = format!("{}__to_{}", cx.f.node(v).name, node.name);
        let text = statement(cx.f, i);
        kernels.push(Box::new(copy::CopyProblem::scratch(&view, dtype, &name, (&text, i, &node.span))));
        cx.broadcasts.insert((node.name.clone(), v), name);
    }
    Ok(())
}

/// Whether node `i`'s first operand is a whole tensor of its own, row-major.
fn operand_is_plain(cx: &Ctx<'_>, i: usize) -> bool {
    match cx.f.nodes[i].operands.first() {
        Some(Operand::Value(v)) => cx.view(*v).is_plain(),
        _ => false,
    }
}

/// The value every element of node `i`'s result has when it does not depend on
/// the operands' elements: an empty result (filled with nothing), or an op over
/// empty operands (a matmul with K = 0 and a sum over nothing are 0, a max over
/// nothing -inf, an attention with no keys 0). Refuses what has no such value.
fn constant_result(f: &Func, i: usize) -> Result<Option<f64>, CompileError> {
    let node = &f.nodes[i];
    if node.ty.elems() == 0 {
        return Ok(Some(0.0));
    }
    let shape = |k: usize| match node.operands.get(k) {
        Some(Operand::Value(v)) => f.node(*v).ty.shape.clone(),
        _ => Vec::new(),
    };
    let empty =
        (0..node.operands.len()).any(|k| matches!(node.operands[k], Operand::Value(_)) && shape(k).contains(&0));
    if !empty {
        return Ok(None);
    }
    Ok(match &node.op {
        Op::Matmul { .. } | Op::Reduce { kind: ReduceKind::Sum, .. } => Some(0.0),
        Op::Reduce { kind: ReduceKind::Max, .. } => Some(crate::eval::empty_max(node.ty.dtype)),
        Op::Attention { .. } => {
            let k = shape(1);
            match k[k.len() - 2..] {
                [0, _] => Some(0.0),
                _ => return Err(unsupported(node, "has head dim 0 (every score is 0): not supported")),
            }
        }
        _ => None,
    })
}

fn one<K: Kernel + 'static>((k, out): (K, usize)) -> (Vec<Box<dyn Kernel>>, usize) {
    (vec![Box::new(k)], out)
}

/// Values the results need; the rest is dead code and gets no kernel.
fn live_values(f: &Func) -> Vec<bool> {
    let mut live = vec![false; f.nodes.len()];
    for r in &f.results {
        live[r.0 as usize] = true;
    }
    for i in (0..f.nodes.len()).rev() {
        if live[i] {
            for o in &f.nodes[i].operands {
                if let Operand::Value(v) = o {
                    live[v.0 as usize] = true;
                }
            }
        }
    }
    live
}

/// Live consumers of each value (`mul(%x, %x)` is one).
fn live_uses(f: &Func, live: &[bool]) -> Vec<usize> {
    let mut uses = vec![0usize; f.nodes.len()];
    for node in f.nodes.iter().zip(live).filter(|(_, l)| **l).map(|(node, _)| node) {
        let mut seen: Vec<ValueId> = Vec::new();
        for o in &node.operands {
            if let Operand::Value(v) = o {
                if !seen.contains(v) {
                    seen.push(*v);
                    uses[v.0 as usize] += 1;
                }
            }
        }
    }
    uses
}
