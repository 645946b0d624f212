//! DAG-aware extraction: each e-class takes the node whose whole sub-DAG (each
//! class counted once, however often it is shared) is cheapest. Greedy over
//! cost sets, iterated to a fixed point (the "greedy DAG" extractor); cycles are
//! excluded because a node whose children's sub-DAG contains its own class is
//! never chosen. A second pass ([`improve`]) then changes single classes while the
//! cost of everything the results need drops, which catches sharing between
//! results that the per-class pass cannot see.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use egg::{EGraph, Id, Language, RecExpr};

use super::cost::Model;
use super::{Choice, Shapes, TLang};
use crate::error::CompileError;
use crate::ir::ops::Attr;
use crate::ir::{BinaryOp, Builder, Func, Node, Op, Operand, Span, ValueId};

/// Per class: total cost, chosen node, and the cost of each class its sub-DAG needs.
type Best = HashMap<Id, (f64, usize, Rc<BTreeMap<Id, f64>>)>;

/// Chooses a node for every e-class that has an acyclic choice.
pub fn dag_extract(eg: &EGraph<TLang, Shapes>, model: &Model) -> Choice {
    let mut best: Best = HashMap::new();
    let mut classes: Vec<&egg::EClass<TLang, Option<crate::ir::types::TensorType>>> = eg.classes().collect();
    classes.sort_by_key(|c| c.id);
    loop {
        let mut changed = false;
        for class in &classes {
            for (i, node) in class.nodes.iter().enumerate() {
                let mut set: BTreeMap<Id, f64> = BTreeMap::new();
                let mut ok = true;
                for c in node.children() {
                    let c = eg.find(*c);
                    match best.get(&c) {
                        Some((_, _, s)) if !s.contains_key(&class.id) => set.extend(s.iter().map(|(k, v)| (*k, *v))),
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok {
                    continue;
                }
                set.insert(class.id, model.node_cost(eg, node));
                let total: f64 = set.values().sum();
                if best.get(&class.id).is_none_or(|b| total < b.0 - 1e-6) {
                    best.insert(class.id, (total, i, Rc::new(set)));
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    best.into_iter().map(|(k, (_, i, _))| (k, i)).collect()
}

/// Estimated cycles of the sub-DAG the roots need under `choice` (each class
/// once); infinite when the choice is incomplete or cyclic.
pub fn total(eg: &EGraph<TLang, Shapes>, model: &Model, choice: &Choice, roots: &[Id]) -> f64 {
    // 1 = on the current path, 2 = done.
    let mut state: HashMap<Id, u8> = HashMap::new();
    let mut sum = 0.0;
    fn go(
        c: Id,
        eg: &EGraph<TLang, Shapes>,
        model: &Model,
        choice: &Choice,
        state: &mut HashMap<Id, u8>,
        sum: &mut f64,
    ) -> bool {
        let c = eg.find(c);
        match state.get(&c) {
            Some(2) => return true,
            Some(_) => return false,
            None => {}
        }
        let Some(&i) = choice.get(&c) else { return false };
        state.insert(c, 1);
        let node = &eg[c].nodes[i];
        for x in node.children() {
            if !go(*x, eg, model, choice, state, sum) {
                return false;
            }
        }
        *sum += model.node_cost(eg, node);
        state.insert(c, 2);
        true
    }
    for r in roots {
        if !go(*r, eg, model, choice, &mut state, &mut sum) {
            return f64::INFINITY;
        }
    }
    sum
}

/// Improves a choice globally: single-class changes are kept while they lower the
/// cost of everything the roots need (which the per-class greedy pass cannot see
/// when results share subterms).
pub fn improve(eg: &EGraph<TLang, Shapes>, model: &Model, mut choice: Choice, roots: &[Id]) -> Choice {
    let mut best = total(eg, model, &choice, roots);
    for _ in 0..8 {
        let mut improved = false;
        let classes: Vec<Id> = choice.keys().copied().collect();
        for c in classes {
            for i in 0..eg[c].nodes.len() {
                if choice.get(&c) == Some(&i) {
                    continue;
                }
                let previous = choice.insert(c, i);
                let t = total(eg, model, &choice, roots);
                if t < best - 1e-6 {
                    best = t;
                    improved = true;
                } else if let Some(p) = previous {
                    choice.insert(c, p);
                }
            }
        }
        if !improved {
            break;
        }
    }
    choice
}

/// The choice that reproduces the original expression (for the "before" cost).
pub fn original_choice(eg: &EGraph<TLang, Shapes>, expr: &RecExpr<TLang>, ids: &[Id]) -> Choice {
    let mut choice = Choice::new();
    for (i, node) in expr.iter().enumerate() {
        let class = eg.find(ids[i]);
        let canon = node.clone().map_children(|c| eg.find(ids[usize::from(c)]));
        if let Some(j) = eg[class].nodes.iter().position(|n| n.clone().map_children(|c| eg.find(c)) == canon) {
            choice.entry(class).or_insert(j);
        }
    }
    choice
}

/// What [`to_func`] rebuilds: the chosen node of each class, the class of each
/// result and of each original value.
pub struct Rebuilt<'a> {
    /// The chosen node of each class.
    pub choice: &'a Choice,
    /// The class of each result.
    pub results: &'a [Id],
    /// The class of each original value (parameters included).
    pub value_classes: &'a [Id],
}

/// Rebuilds a checked function from the chosen nodes through the IR's
/// [`Builder`], so the result satisfies every IR invariant. Results keep their
/// names, original values keep theirs and their spans; a value a rule created
/// takes the span of the statement whose class it was found in (fused attention
/// the matmul it replaced) or, when it is new, of the value that reads it, and a
/// fresh name outside `reserved`. With `own_results`, a result that rewriting made
/// another value (a parameter, another result) becomes a copy under its name.
pub fn to_func(
    f: &Func,
    eg: &EGraph<TLang, Shapes>,
    rebuilt: Rebuilt<'_>,
    reserved: &HashSet<String>,
    own_results: bool,
) -> Result<Func, CompileError> {
    let Rebuilt { choice, results, value_classes } = rebuilt;
    let mut names: HashMap<Id, (String, Span)> = HashMap::new();
    for r in &f.results {
        let n = f.node(*r);
        names.entry(eg.find(value_classes[r.0 as usize])).or_insert_with(|| (n.name.clone(), n.span.clone()));
    }
    for (v, c) in value_classes.iter().enumerate() {
        let n = &f.nodes[v];
        names.entry(eg.find(*c)).or_insert_with(|| (n.name.clone(), n.span.clone()));
    }
    let mut builder = Builder::new(&f.name);
    let mut done = HashMap::new();
    for p in f.params() {
        let n = f.node(p);
        let id = builder.param(&n.name, n.ty.clone(), n.span.clone()).map_err(internal)?;
        done.insert(eg.find(value_classes[p.0 as usize]), Operand::Value(id));
    }
    let mut r = Rebuild { eg, choice, names, done, builder, fresh: 0, reserved };
    let mut rets = Vec::new();
    let mut copies = HashMap::new();
    for (res, v) in results.iter().zip(&f.results) {
        match r.visit(*res, &f.node(*v).span, 0)? {
            // A result that rewriting made another value (a reshape round trip
            // to a parameter, or to another result) stays a value of its own:
            // a copy under its name.
            Operand::Value(id) if own_results && r.builder.name(id) != f.node(*v).name => {
                if let Some(copy) = copies.get(v) {
                    rets.push(*copy);
                    continue;
                }
                let copy = push_copy(&mut r.builder, f.node(*v), id)?;
                copies.insert(*v, copy);
                rets.push(copy);
            }
            Operand::Value(id) => rets.push(id),
            Operand::Scalar(_) => return Err(CompileError::internal("a result was extracted as a literal")),
        }
    }
    Ok(r.builder.finish(rets))
}

/// A copy of `value` (a reshape to its own shape) named and placed as `like`.
pub(crate) fn push_copy(builder: &mut Builder, like: &Node, value: ValueId) -> Result<ValueId, CompileError> {
    let dims = Attr::List(like.ty.shape.iter().map(|&d| Attr::Int(d as i64)).collect());
    let attrs = [("shape".to_string(), dims)];
    builder.push(&like.name, "reshape", &[Operand::Value(value)], &attrs, None, like.span.clone()).map_err(internal)
}

pub(crate) fn internal(e: crate::ir::check::BuildError) -> CompileError {
    CompileError::internal(format!("the optimized program does not check: {e}"))
}

/// Adds chosen e-nodes to a [`Builder`], each e-class once.
struct Rebuild<'a> {
    eg: &'a EGraph<TLang, Shapes>,
    choice: &'a Choice,
    names: HashMap<Id, (String, Span)>,
    done: HashMap<Id, Operand>,
    builder: Builder,
    fresh: usize,
    /// Names a fresh value must not take.
    reserved: &'a HashSet<String>,
}

impl Rebuild<'_> {
    /// The operand of class `c` (a value or a literal), adding its statement (and
    /// its operands' first) if needed; `near` is the span of the value reading it.
    fn visit(&mut self, c: Id, near: &Span, depth: usize) -> Result<Operand, CompileError> {
        let eg = self.eg;
        let c = eg.find(c);
        if let Some(o) = self.done.get(&c) {
            return Ok(*o);
        }
        if depth > 10_000 {
            return Err(CompileError::internal("the extracted program is cyclic"));
        }
        let i = *self.choice.get(&c).ok_or_else(|| CompileError::internal("no choice for an e-class"))?;
        let node = &eg[c].nodes[i];
        if let TLang::Scalar(l) = node {
            let o = Operand::Scalar(l.value());
            self.done.insert(c, o);
            return Ok(o);
        }
        let (name, span) = self.name(c, near);
        let mut args = Vec::new();
        for x in node.children() {
            if !is_leaf_class(eg, *x) {
                args.push(self.visit(*x, &span, depth + 1)?);
            }
        }
        let ty = eg[c].data.clone().ok_or_else(|| CompileError::internal("an extracted value has no type"))?;
        let op = match node {
            TLang::Mm(_) | TLang::MmTa(_) | TLang::MmTb(_) | TLang::MmTab(_) => {
                let (transpose_a, transpose_b) = super::layout(node);
                Op::Matmul { transpose_a, transpose_b }
            }
            TLang::T(_) => {
                let r = ty.rank();
                let perm = (0..r)
                    .map(|i| {
                        if i + 2 == r {
                            r - 1
                        } else if i + 1 == r {
                            r - 2
                        } else {
                            i
                        }
                    })
                    .collect();
                Op::Transpose { perm }
            }
            TLang::Reshape(_) => Op::Reshape { shape: ty.shape.clone() },
            TLang::Mul(_) => Op::Binary(BinaryOp::Mul),
            TLang::Add(_) => Op::Binary(BinaryOp::Add),
            TLang::Other(sym, _) => {
                eg.analysis.op(*sym).cloned().ok_or_else(|| CompileError::internal("an unknown opaque op"))?
            }
            TLang::Leaf(_) | TLang::Scalar(_) => return Err(CompileError::internal("a leaf class has no value")),
        };
        // The class's type as the annotation: the checker infers the same (or
        // needs it: a matmul's accumulator, const, iota).
        let id = self.builder.push_op(&name, &op, &args, Some(&ty), span).map_err(internal)?;
        self.done.insert(c, Operand::Value(id));
        Ok(Operand::Value(id))
    }

    /// The name and span of class `c`'s value: an original value's, or a fresh
    /// name with the span of the value that reads it.
    fn name(&mut self, c: Id, near: &Span) -> (String, Span) {
        if let Some(n) = self.names.get(&c) {
            return n.clone();
        }
        loop {
            self.fresh += 1;
            let n = format!("o{}", self.fresh);
            if !self.reserved.contains(&n) {
                return (n, near.clone());
            }
        }
    }
}

/// Dtype and dims leaves are attributes in the IR, not operands.
fn is_leaf_class(eg: &EGraph<TLang, Shapes>, c: Id) -> bool {
    let c = eg.find(c);
    eg[c].data.is_none() && eg[c].nodes.iter().all(|n| matches!(n, TLang::Leaf(_)))
}
