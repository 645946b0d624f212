//! Masks as affine selects: `select(compare(a, b), x, fill)` where `a` and `b` are
//! iotas over the last two dims (or integer literals) is the VE's affine select
//! `keep x where row_coef * row + col_coef * col + constant <cmp> 0`, with `row`
//! and `col` the element's indices within its matrix (the last two dims). The
//! iotas and the comparison (whose `i1` result cannot live in HBM) are absorbed
//! into the kernel of the select; no tensor is built.

use jpu_isa::operand::CmpOp;

use crate::ir::{CompareKind, Func, Node, Op, Operand, ValueId};

/// `row * row_index + col * col_index + constant <cmp> 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffineCondition {
    /// Coefficient of the row index (second-to-last dim).
    pub row: i32,
    /// Coefficient of the column index (last dim).
    pub col: i32,
    /// Constant term.
    pub constant: i32,
    /// Comparison against zero.
    pub cmp: CmpOp,
}

impl AffineCondition {
    /// The condition that holds exactly where this one does not.
    pub fn negated(self) -> AffineCondition {
        let cmp = match self.cmp {
            CmpOp::Ge => CmpOp::Lt,
            CmpOp::Gt => CmpOp::Le,
            CmpOp::Le => CmpOp::Gt,
            CmpOp::Lt => CmpOp::Ge,
            CmpOp::Eq => CmpOp::Ne,
            CmpOp::Ne => CmpOp::Eq,
        };
        AffineCondition { cmp, ..self }
    }
}

/// `(row coefficient, col coefficient, constant)` of an iota or an integer literal,
/// for a mask over values of shape `shape`.
fn affine_term(f: &Func, o: &Operand, shape: &[u64]) -> Option<(i32, i32, i32)> {
    match o {
        Operand::Scalar(x) => (x.fract() == 0.0 && x.abs() < 1e9).then_some((0, 0, *x as i32)),
        Operand::Value(v) => {
            let n = f.node(*v);
            let Op::Iota { axis } = n.op else { return None };
            let (r, rank) = (n.ty.rank(), shape.len());
            // The iota's last two dims must be the masked values' last two dims
            // (its leading dims broadcast).
            if r < 2
                || rank < 2
                || n.ty.shape[r - 2..] != shape[rank - 2..]
                || n.ty.shape[..r - 2].iter().any(|&d| d != 1)
            {
                return None;
            }
            if axis + 2 == r {
                Some((1, 0, 0))
            } else if axis + 1 == r {
                Some((0, 1, 0))
            } else {
                None
            }
        }
    }
}

/// The affine condition of `cond` (a `compare` of iotas and literals) for values
/// of shape `shape`.
pub fn condition(f: &Func, cond: ValueId, shape: &[u64]) -> Option<AffineCondition> {
    let n = f.node(cond);
    let (Op::Compare { kind }, [a, b]) = (&n.op, n.operands.as_slice()) else { return None };
    let (ra, ca, ka) = affine_term(f, a, shape)?;
    let (rb, cb, kb) = affine_term(f, b, shape)?;
    let cmp = match kind {
        CompareKind::Lt => CmpOp::Lt,
        CompareKind::Le => CmpOp::Le,
        CompareKind::Gt => CmpOp::Gt,
        CompareKind::Ge => CmpOp::Ge,
        CompareKind::Eq => CmpOp::Eq,
    };
    Some(AffineCondition { row: ra - rb, col: ca - cb, constant: ka - kb, cmp })
}

/// Whether select node `n` is a mask select: its condition is affine
/// ([`condition`]) and it keeps one tensor and fills a literal.
pub fn is_mask_select(f: &Func, n: &Node) -> bool {
    match (&n.op, n.operands.as_slice()) {
        (Op::Select, [Operand::Value(c), a, b]) => {
            let one_literal =
                matches!((a, b), (Operand::Value(_), Operand::Scalar(_)) | (Operand::Scalar(_), Operand::Value(_)));
            one_literal && condition(f, *c, &n.ty.shape).is_some()
        }
        _ => false,
    }
}

/// Nodes absorbed into mask selects: every live `compare` whose live uses are
/// all mask selects (and that is not returned), and the iotas only such
/// comparisons read. They get no kernel of their own.
pub fn absorbed(f: &Func, live: &[bool]) -> Vec<bool> {
    let n = f.nodes.len();
    // Live users of each value, and whether it is returned.
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (u, node) in f.nodes.iter().enumerate().filter(|(u, _)| live[*u]) {
        for o in &node.operands {
            if let Operand::Value(v) = o {
                users[v.0 as usize].push(u);
            }
        }
    }
    let mut returned = vec![false; n];
    for r in &f.results {
        returned[r.0 as usize] = true;
    }
    let mut out = vec![false; n];
    for c in (0..n).filter(|&c| live[c] && !returned[c] && matches!(f.nodes[c].op, Op::Compare { .. })) {
        let as_condition = |&u: &usize| {
            let node = &f.nodes[u];
            is_mask_select(f, node) && matches!(node.operands[0], Operand::Value(x) if x.0 as usize == c)
        };
        out[c] = !users[c].is_empty() && users[c].iter().all(as_condition);
    }
    for i in (0..n).filter(|&i| live[i] && !returned[i] && matches!(f.nodes[i].op, Op::Iota { .. })) {
        out[i] = users[i].iter().all(|&u| out[u]);
    }
    out
}
