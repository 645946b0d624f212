//! DAG-aware extraction: each e-class takes the node whose whole sub-DAG (each
//! class counted once, however often it is shared) is cheapest. Greedy over
//! cost sets, iterated to a fixed point (the "greedy DAG" extractor); cycles are
//! excluded because a node whose children's sub-DAG contains its own class is
//! never chosen. A second pass ([`improve`]) then changes single classes while the
//! cost of everything the results need drops, which catches sharing between
//! results that the per-class pass cannot see.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;

use egg::{EGraph, Id, Language, RecExpr};

use super::cost::Model;
use super::{Choice, Shapes, TLang};
use crate::ir::{Func, Op};

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

/// Rebuilds a checked function from the chosen nodes: the printed text goes back
/// through the front end, so the result satisfies every IR invariant.
pub fn to_func(
    f: &Func,
    eg: &EGraph<TLang, Shapes>,
    choice: &Choice,
    results: &[Id],
    value_classes: &[Id],
    ops: &HashMap<String, Op>,
) -> Result<Func, String> {
    let mut names: HashMap<Id, String> = HashMap::new();
    // Results keep their names (outputs are found by them), then values in order.
    for r in &f.results {
        names.entry(eg.find(value_classes[r.0 as usize])).or_insert_with(|| f.node(*r).name.clone());
    }
    for (v, c) in value_classes.iter().enumerate() {
        names.entry(eg.find(*c)).or_insert_with(|| f.nodes[v].name.clone());
    }
    let mut r = Rebuild {
        eg,
        choice,
        ops,
        names,
        done: HashMap::new(),
        body: String::new(),
        fresh: 0,
        used: f.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    let mut rets = Vec::new();
    for res in results {
        rets.push(r.visit(*res, 0)?);
    }
    let body = r.body;
    let params: Vec<String> = f.params().map(|p| format!("%{}: {}", f.node(p).name, f.node(p).ty)).collect();
    let result_types: Vec<String> = f.results.iter().map(|r| f.node(*r).ty.to_string()).collect();
    let result_types =
        if result_types.len() == 1 { result_types[0].clone() } else { format!("({})", result_types.join(", ")) };
    // A result that is a parameter (e.g. after cancelling transposes) needs a value of its own.
    let text = format!(
        "func @{}({}) -> {} {{\n{body}  return {}\n}}\n",
        f.name,
        params.join(", "),
        result_types,
        rets.join(", ")
    );
    crate::front::tir::parse_and_check(&text).map_err(|d| {
        format!(
            "internal: the optimized program does not check:\n{}\n{text}",
            crate::front::tir::render("opt.tir", &text, &d)
        )
    })
}

/// Prints chosen e-nodes as `.tir` statements, each e-class once.
struct Rebuild<'a> {
    eg: &'a EGraph<TLang, Shapes>,
    choice: &'a Choice,
    ops: &'a HashMap<String, Op>,
    names: HashMap<Id, String>,
    done: HashMap<Id, String>,
    body: String,
    fresh: usize,
    used: HashSet<String>,
}

impl Rebuild<'_> {
    /// The operand text of class `c` (a value name or a literal), emitting its
    /// statement (and its operands' first) if needed.
    fn visit(&mut self, c: Id, depth: usize) -> Result<String, String> {
        let eg = self.eg;
        let c = eg.find(c);
        if let Some(s) = self.done.get(&c) {
            return Ok(s.clone());
        }
        if depth > 10_000 {
            return Err("internal: extracted program is cyclic".into());
        }
        let i = *self.choice.get(&c).ok_or("internal: no choice for an e-class")?;
        let node = &eg[c].nodes[i];
        let text = match node {
            TLang::Scalar(l) => {
                let s = crate::ir::printer::literal(l.value());
                self.done.insert(c, s.clone());
                return Ok(s);
            }
            TLang::Leaf(s) => {
                let name = s.as_str().split('|').next().unwrap_or("").to_string();
                self.done.insert(c, name.clone());
                return Ok(name);
            }
            TLang::Mm([_, a, b]) | TLang::MmTa([_, a, b]) | TLang::MmTb([_, a, b]) | TLang::MmTab([_, a, b]) => {
                let (ta, tb) = super::layout(node);
                let (a, b) = (self.visit(*a, depth + 1)?, self.visit(*b, depth + 1)?);
                format!("matmul({a}, {b}) {{transpose_a = {ta}, transpose_b = {tb}}}")
            }
            TLang::T(x) => {
                let r = eg[eg.find(*x)].data.as_ref().map_or(2, |t| t.rank());
                let perm: Vec<String> = (0..r)
                    .map(|i| {
                        if i + 2 == r {
                            r - 1
                        } else if i + 1 == r {
                            r - 2
                        } else {
                            i
                        }
                    })
                    .map(|v| v.to_string())
                    .collect();
                format!("transpose({}) {{perm = [{}]}}", self.visit(*x, depth + 1)?, perm.join(", "))
            }
            TLang::Reshape([_, x]) => {
                let dims = eg[c].data.as_ref().map(|t| t.shape.clone()).ok_or("internal: a reshape has no type")?;
                let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                format!("reshape({}) {{shape = [{}]}}", self.visit(*x, depth + 1)?, dims.join(", "))
            }
            TLang::Mul([a, b]) => format!("mul({}, {})", self.visit(*a, depth + 1)?, self.visit(*b, depth + 1)?),
            TLang::Add([a, b]) => format!("add({}, {})", self.visit(*a, depth + 1)?, self.visit(*b, depth + 1)?),
            TLang::Other(sym, children) => {
                let args: Vec<String> = children.iter().map(|x| self.visit(*x, depth + 1)).collect::<Result<_, _>>()?;
                // The symbol is `op text|type`; rules create ops (attention) the
                // input did not have, so the text itself is printed.
                let text = match self.ops.get(sym.as_str()) {
                    Some(op) => crate::ir::printer::op_text(op),
                    None => {
                        sym.as_str().rsplit_once('|').map(|(t, _)| t.to_string()).ok_or("internal: bad opaque op")?
                    }
                };
                let (name, attrs) = text.split_at(text.find(' ').unwrap_or(text.len()));
                format!("{name}({}){attrs}", args.join(", "))
            }
        };
        let name = match self.names.get(&c) {
            Some(n) => format!("%{n}"),
            None => loop {
                self.fresh += 1;
                let n = format!("o{}", self.fresh);
                if self.used.insert(n.clone()) {
                    break format!("%{n}");
                }
            },
        };
        let ty = eg[c].data.clone().ok_or("internal: an extracted value has no type")?;
        let _ = writeln!(self.body, "  {name} = {text} : {ty}");
        self.done.insert(c, name.clone());
        Ok(name)
    }
}
