//! Layouts: which values are views of another value's HBM tensor, so that
//! `reshape`, `transpose` and `slice` move no data.
//!
//! Every value that lives in HBM has a [`Place`]: a tensor (named after the node
//! that owns it) and an affine map from the value's indices to the tensor's
//! elements (an offset and one stride per dim). A kernel's output and a
//! parameter own their tensor, row-major from element 0 (*plain*). A `reshape`
//! of a contiguous place, any `transpose` and any `slice` derive their place
//! from their operand's and need no kernel (*folded*) when every consumer can
//! read through it:
//!
//! - any kernel reads a plain place (the same bytes under another shape);
//! - attention reads Q, K and V through any place whose last dim is contiguous
//!   (the head split `[S, H, D] -> [H, S, D]` is a row stride of `H * D`);
//! - a view op reads any place its own place derives from.
//!
//! Otherwise the view op is *materialised*: a copy kernel writes it, plain, into
//! its own tensor. A view op that is a function result is folded only when it is
//! a plain alias of a kernel's output that no other result claims: that tensor
//! then takes the result's name. The decision is a fixpoint: materialising a
//! value changes the places derived from it.
//!
//! Stores fold too: an attention whose only consumer is a transpose that keeps
//! the last dim last writes its result straight into the transpose's tensor
//! with the permuted strides (the head merge `[H, S, D] -> [S, H, D]`), and the
//! transpose needs no kernel.
//!
//! Invariant the verifier relies on: a tensor named after node `n` holds `n`'s
//! value in row-major order.

use std::collections::HashMap;

use crate::ir::{Func, Op, Operand};

/// Where a value's elements are: index `idx` is element `offset + Σ idx[k] *
/// strides[k]` of node `tensor`'s HBM tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The node that owns the tensor.
    pub tensor: usize,
    /// Element of index 0.
    pub offset: u64,
    /// Elements between neighbours along each dim.
    pub strides: Vec<u64>,
}

/// Row-major strides (in elements) of a tensor shaped `s`.
pub fn row_major(s: &[u64]) -> Vec<u64> {
    let mut v = vec![1u64; s.len()];
    for k in (0..s.len().saturating_sub(1)).rev() {
        v[k] = v[k + 1].saturating_mul(s[k + 1]);
    }
    v
}

/// The strides of a reshape into `to` of a value shaped `from` with `strides`,
/// without moving it: dims group into runs of equal products, and the old dims
/// of each run must be contiguous with each other (a split always is, a merge
/// of strided dims is not). Size-1 dims take any stride.
fn reshape_strides(from: &[u64], strides: &[u64], to: &[u64]) -> Option<Vec<u64>> {
    let old: Vec<(u64, u64)> = from.iter().zip(strides).filter(|(&d, _)| d != 1).map(|(&d, &s)| (d, s)).collect();
    let new: Vec<usize> = (0..to.len()).filter(|&k| to[k] != 1).collect();
    let mut out = vec![0u64; to.len()];
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < new.len() {
        let (i0, j0) = (i, j);
        let (mut po, mut pn) = (old[i].0, to[new[j]]);
        (i, j) = (i + 1, j + 1);
        while po != pn {
            if po < pn {
                po = po.checked_mul(old.get(i)?.0)?;
                i += 1;
            } else {
                pn = pn.checked_mul(to[*new.get(j)?])?;
                j += 1;
            }
        }
        if (i0..i - 1).any(|k| old[k].1 != old[k + 1].1.saturating_mul(old[k + 1].0)) {
            return None;
        }
        let mut stride = old[i - 1].1;
        for &k in new[j0..j].iter().rev() {
            out[k] = stride;
            stride = stride.saturating_mul(to[k]);
        }
    }
    if i != old.len() || j != new.len() {
        return None;
    }
    for k in (0..to.len()).rev().filter(|&k| to[k] == 1) {
        out[k] = out.get(k + 1).map_or(1, |s| s.saturating_mul(to[k + 1]));
    }
    Some(out)
}

impl Place {
    /// Node `i`'s own tensor, row-major.
    pub fn own(i: usize, shape: &[u64]) -> Place {
        Place { tensor: i, offset: 0, strides: row_major(shape) }
    }

    /// Contiguous and row-major for `shape` (strides of size-1 dims do not matter).
    pub fn is_contiguous(&self, shape: &[u64]) -> bool {
        let want = row_major(shape);
        shape.iter().zip(self.strides.iter().zip(&want)).all(|(&d, (s, w))| d == 1 || s == w)
    }

    /// Contiguous from element 0: readable by any kernel as a tensor of its own.
    pub fn is_plain(&self, shape: &[u64]) -> bool {
        self.offset == 0 && self.is_contiguous(shape)
    }

    /// Whether a reshape of the value at `self` shaped `from` into `to` reads it in place.
    pub fn reshapes(&self, from: &[u64], to: &[u64]) -> bool {
        reshape_strides(from, &self.strides, to).is_some()
    }

    /// The place of `op` applied to a value at `self` shaped `from`, giving a
    /// value shaped `to`; `None` for a reshape of a non-contiguous place.
    pub fn derive(&self, op: &Op, from: &[u64], to: &[u64]) -> Option<Place> {
        let tensor = self.tensor;
        match op {
            Op::Reshape { .. } => {
                Some(Place { tensor, offset: self.offset, strides: reshape_strides(from, &self.strides, to)? })
            }
            Op::Transpose { perm } => {
                Some(Place { tensor, offset: self.offset, strides: perm.iter().map(|&a| self.strides[a]).collect() })
            }
            Op::Slice { start, .. } => {
                let skip: u64 = start.iter().zip(&self.strides).map(|(a, s)| a * s).sum();
                Some(Place { tensor, offset: self.offset + skip, strides: self.strides.clone() })
            }
            _ => None,
        }
    }
}

/// The layout decision for a function.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Where each value is (meaningful for values in HBM).
    pub place: Vec<Place>,
    /// Nodes that get no kernel of their own: folded views, and transposes
    /// their producer writes in place.
    pub folded: Vec<bool>,
    /// A transpose written in place, by the node whose kernel writes it.
    pub written_by: HashMap<usize, usize>,
    /// The name of the tensor each node owns (its own, or the result's that aliases it).
    pub names: Vec<String>,
    /// Other nodes whose place is in each node's tensor.
    pub dependents: Vec<Vec<usize>>,
}

/// Whether node `i` is a view op that could fold: a live reshape, transpose or
/// slice of a value, with elements.
fn is_view(f: &Func, live: &[bool], i: usize) -> bool {
    let n = &f.nodes[i];
    live[i]
        && i >= f.num_params
        && matches!(n.op, Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. })
        && matches!(n.operands.first(), Some(Operand::Value(_)))
        && n.ty.elems() > 0
}

/// Consumer `c` reading its operand `k` through `place` (of a value shaped `shape`).
fn reads(f: &Func, mat: &[bool], views: &[bool], (c, k): (usize, usize), place: &Place, shape: &[u64]) -> bool {
    if place.is_plain(shape) {
        return true;
    }
    match &f.nodes[c].op {
        Op::Transpose { perm } if views[c] && mat[c] => !crate::ir::swaps_last_two(perm),
        Op::Reshape { .. } if views[c] => place.reshapes(shape, &f.nodes[c].ty.shape),
        Op::Transpose { .. } | Op::Slice { .. } if views[c] => true,
        Op::Attention { .. } => k < 3 && place.strides.last() == Some(&1),
        _ => false,
    }
}

/// Decides the layout of `f`'s live values.
pub fn plan(f: &Func, live: &[bool]) -> Layout {
    let n = f.nodes.len();
    let views: Vec<bool> = (0..n).map(|i| is_view(f, live, i)).collect();
    let mut consumers: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (c, node) in f.nodes.iter().enumerate().filter(|(c, _)| live[*c]) {
        for (k, o) in node.operands.iter().enumerate() {
            if let Operand::Value(v) = o {
                consumers[v.0 as usize].push((c, k));
            }
        }
    }
    let is_result: Vec<bool> = (0..n).map(|i| f.results.iter().any(|r| r.0 as usize == i)).collect();
    let mut mat = vec![false; n];
    let (place, names) = loop {
        let place = match places(f, &views, &mat) {
            Ok(p) => p,
            Err(operands) => {
                for a in operands {
                    mat[a] = true;
                }
                continue;
            }
        };
        let mut names: Vec<String> = f.nodes.iter().map(|x| x.name.clone()).collect();
        let mut claimed = vec![false; n];
        let mut changed = false;
        for i in 0..n {
            if !views[i] || mat[i] {
                continue;
            }
            let shape = &f.nodes[i].ty.shape;
            let mut ok = consumers[i].iter().all(|&c| reads(f, &mat, &views, c, &place[i], shape));
            if ok && is_result[i] {
                let root = place[i].tensor;
                let whole = f.nodes[root].ty.elems() == f.nodes[i].ty.elems();
                ok = place[i].is_plain(shape) && whole && root >= f.num_params && !is_result[root] && !claimed[root];
                if ok {
                    claimed[root] = true;
                    names[root] = f.nodes[i].name.clone();
                }
            }
            if !ok {
                mat[i] = true;
                changed = true;
            }
        }
        if !changed {
            break (place, names);
        }
    };
    let mut layout = Layout {
        folded: (0..n).map(|i| views[i] && !mat[i]).collect(),
        place,
        written_by: HashMap::new(),
        names,
        dependents: vec![Vec::new(); n],
    };
    fold_stores(f, &consumers, &is_result, &mut layout);
    for i in 0..n {
        let root = layout.place[i].tensor;
        if root != i {
            layout.dependents[root].push(i);
        }
    }
    layout
}

/// Every node's place given which view ops are materialised; `Err` with the
/// operands that reshapes cannot read in place (they must be materialised).
fn places(f: &Func, views: &[bool], mat: &[bool]) -> Result<Vec<Place>, Vec<usize>> {
    let mut place: Vec<Place> = Vec::with_capacity(f.nodes.len());
    let mut unreadable = Vec::new();
    for (i, node) in f.nodes.iter().enumerate() {
        let p = match node.operands.first() {
            Some(Operand::Value(a)) if views[i] && !mat[i] => {
                let a = a.0 as usize;
                place[a].derive(&node.op, &f.nodes[a].ty.shape, &node.ty.shape).unwrap_or_else(|| {
                    unreadable.push(a);
                    Place::own(i, &node.ty.shape)
                })
            }
            _ => Place::own(i, &node.ty.shape),
        };
        place.push(p);
    }
    if unreadable.is_empty() {
        Ok(place)
    } else {
        Err(unreadable)
    }
}

/// Attention results whose only consumer is a materialised transpose that keeps
/// the last dim last are written into the transpose's tensor.
fn fold_stores(f: &Func, consumers: &[Vec<(usize, usize)>], is_result: &[bool], layout: &mut Layout) {
    for (x, node) in f.nodes.iter().enumerate() {
        if !matches!(node.op, Op::Attention { .. }) || is_result[x] || node.ty.elems() == 0 {
            continue;
        }
        let [(t, 0)] = consumers[x][..] else { continue };
        let Op::Transpose { perm } = &f.nodes[t].op else { continue };
        let r = perm.len();
        if layout.folded[t] || r == 0 || perm[r - 1] != r - 1 || layout.place[t].tensor != t {
            continue;
        }
        let own = row_major(&f.nodes[t].ty.shape);
        let mut strides = vec![0u64; r];
        for (k, &a) in perm.iter().enumerate() {
            strides[a] = own[k];
        }
        layout.place[x] = Place { tensor: t, offset: 0, strides };
        layout.folded[t] = true;
        layout.written_by.insert(t, x);
    }
}

/// A kernel operand or result as it sits in HBM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorView {
    /// The tensor's name.
    pub tensor: String,
    /// The tensor's shape.
    pub tensor_shape: Vec<u64>,
    /// The value's shape.
    pub shape: Vec<u64>,
    /// Element of index 0.
    pub offset: u64,
    /// Elements between neighbours along each dim.
    pub strides: Vec<u64>,
}

impl TensorView {
    /// The whole of tensor `name` shaped `shape`, row-major.
    pub fn plain(name: &str, shape: &[u64]) -> TensorView {
        TensorView {
            tensor: name.to_string(),
            tensor_shape: shape.to_vec(),
            shape: shape.to_vec(),
            offset: 0,
            strides: row_major(shape),
        }
    }

    /// Row-major from element 0.
    pub fn is_plain(&self) -> bool {
        Place { tensor: 0, offset: self.offset, strides: self.strides.clone() }.is_plain(&self.shape)
    }

    /// The element of row `row` (second-to-last dim) of matrix `lead` (the
    /// index over the dims before the last two, row-major).
    pub fn row_start(&self, lead: u64, row: u64) -> u64 {
        let r = self.shape.len();
        let mut rest = lead;
        let mut at = self.offset + row * self.row_stride();
        for k in (0..r.saturating_sub(2)).rev() {
            at += (rest % self.shape[k].max(1)) * self.strides[k];
            rest /= self.shape[k].max(1);
        }
        at
    }

    /// Elements between rows (the second-to-last dim).
    pub fn row_stride(&self) -> u64 {
        let r = self.shape.len();
        if r >= 2 {
            self.strides[r - 2]
        } else {
            self.shape.last().copied().unwrap_or(1)
        }
    }

    /// `name[shape] at offset strides [..]`, for `--emit kernels` (empty when plain).
    pub fn describe(&self) -> String {
        if self.is_plain() && self.shape == self.tensor_shape {
            return String::new();
        }
        format!("%{} {:?} at {} strides {:?}", self.tensor, self.tensor_shape, self.offset, self.strides)
    }
}
