//! The optimizer: equality saturation (egg) over the tensor IR, and DAG-aware
//! extraction under a cost model derived from the target (`--emit opt`).
//!
//! The IR becomes an e-graph in [`TLang`]: matmul (with its result dtype as a
//! leaf, and one variant per operand layout), last-two-dims transpose `t`, `mul`,
//! `add`, scalar literals, and an opaque node for every other op. An opaque
//! node's symbol is a key into the analysis's table of typed ops ([`Shapes`]),
//! where rules that create ops (attention fusion) register them too. Rules are
//! grouped by topic ([`rules`]); each has a start => goal test. Extraction picks,
//! per e-class, the node minimising the cost of the whole sub-DAG it needs,
//! counting shared subterms once ([`extract`]), and rebuilds the function through
//! the IR's [`crate::ir::Builder`], so the result is checked and every value keeps
//! the source span of the statement it came from.
//!
//! Compilation is deterministic: the runner stops at node and iteration limits
//! only (no wall-clock limit), and every iteration order is fixed.

pub mod attention;
pub mod cost;

use std::collections::{BTreeMap, HashMap};

use egg::{rewrite as rw, Analysis, DidMerge, EGraph, Id, Language, RecExpr, Rewrite, Runner, Symbol};

use crate::ir::types::{ScalarType, TensorType};
use crate::ir::{BinaryOp, Func, Op, Operand};

/// A scalar literal, compared and hashed by its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lit(pub u64);

impl Lit {
    /// The value.
    pub fn value(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl std::str::FromStr for Lit {
    type Err = ();
    fn from_str(s: &str) -> Result<Lit, ()> {
        // Only numbers: dtype and parameter leaves never parse.
        if s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') || s == "inf" {
            s.parse::<f64>().map(|v| Lit(v.to_bits())).map_err(|_| ())
        } else {
            Err(())
        }
    }
}

impl std::fmt::Display for Lit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.value())
    }
}

pub use lang::TLang;

/// The e-graph language. `matmul*` take `(dtype, a, b)`: `_ta`/`_tb`/`_tab` read
/// A and/or B stored transposed; `t` transposes the last two dims; `mul`/`add` are
/// elementwise; `reshape` takes `(dims, x)` with a `dims:d0,d1,..` leaf; `Scalar` is
/// a literal; `Leaf` a parameter (`%name`, typed in [`Shapes::params`]), a dtype
/// or a dims list; `Other` any other op (a key of [`Shapes::ops`], its operands as
/// children).
#[allow(missing_docs)]
mod lang {
    use super::Lit;
    use egg::{define_language, Id, Symbol};

    define_language! {
        pub enum TLang {
            "matmul" = Mm([Id; 3]),
            "matmul_ta" = MmTa([Id; 3]),
            "matmul_tb" = MmTb([Id; 3]),
            "matmul_tab" = MmTab([Id; 3]),
            "t" = T(Id),
            "reshape" = Reshape([Id; 2]),
            "mul" = Mul([Id; 2]),
            "add" = Add([Id; 2]),
            Scalar(Lit),
            Leaf(Symbol),
            Other(Symbol, Vec<Id>),
        }
    }
}

/// Shape-and-dtype analysis: the tensor type of every e-class (none for dtype
/// leaves and scalar literals), and the typed meaning of the symbols of
/// parameters and opaque ops.
#[derive(Default)]
pub struct Shapes {
    /// Opaque op symbol -> the op and its result type.
    pub ops: HashMap<Symbol, (Op, TensorType)>,
    /// Parameter symbol (`%name`) -> its type.
    pub params: HashMap<Symbol, TensorType>,
}

impl Shapes {
    /// The symbol of `op` with result type `ty`, registered: equal ops share it,
    /// so the e-graph's hash-consing sees them as equal.
    pub fn intern(&mut self, op: &Op, ty: &TensorType) -> Symbol {
        let sym = Symbol::from(format!("{}|{ty}", crate::ir::printer::op_text(op)));
        self.ops.entry(sym).or_insert_with(|| (op.clone(), ty.clone()));
        sym
    }

    /// The typed op behind an opaque symbol.
    pub fn op(&self, sym: Symbol) -> Option<&Op> {
        self.ops.get(&sym).map(|(op, _)| op)
    }
}

fn broadcast(a: &[u64], b: &[u64]) -> Vec<u64> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            da.max(db)
        })
        .collect()
}

/// The type of a matmul with the given layouts.
pub fn matmul_type(dtype: ScalarType, a: &TensorType, b: &TensorType, ta: bool, tb: bool) -> Option<TensorType> {
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return None;
    }
    let m = if ta { a.shape[ra - 1] } else { a.shape[ra - 2] };
    let n = if tb { b.shape[rb - 2] } else { b.shape[rb - 1] };
    let mut shape = broadcast(&a.shape[..ra - 2], &b.shape[..rb - 2]);
    shape.extend([m, n]);
    Some(TensorType::new(dtype, shape))
}

impl Analysis<TLang> for Shapes {
    type Data = Option<TensorType>;

    fn make(egraph: &mut EGraph<TLang, Self>, enode: &TLang, _id: Id) -> Self::Data {
        let ty = |id: &Id| egraph[*id].data.clone();
        let leaf = |id: &Id| -> Option<ScalarType> {
            egraph[*id].nodes.iter().find_map(|n| match n {
                TLang::Leaf(s) => ScalarType::from_name(s.as_str()),
                _ => None,
            })
        };
        match enode {
            TLang::Mm([d, a, b]) | TLang::MmTa([d, a, b]) | TLang::MmTb([d, a, b]) | TLang::MmTab([d, a, b]) => {
                let (ta, tb) = layout(enode);
                matmul_type(leaf(d)?, &ty(a)?, &ty(b)?, ta, tb)
            }
            TLang::T(x) => {
                let mut t = ty(x)?;
                let r = t.rank();
                if r < 2 {
                    return None;
                }
                t.shape.swap(r - 2, r - 1);
                Some(t)
            }
            TLang::Mul([a, b]) | TLang::Add([a, b]) => match (ty(a), ty(b)) {
                (Some(x), Some(y)) => Some(TensorType::new(x.dtype, broadcast(&x.shape, &y.shape))),
                (Some(x), None) | (None, Some(x)) => Some(x),
                (None, None) => None,
            },
            TLang::Reshape([d, x]) => {
                let dims = egraph[*d].nodes.iter().find_map(|n| match n {
                    TLang::Leaf(s) => reshape_dims(s.as_str()),
                    _ => None,
                })?;
                Some(TensorType::new(ty(x)?.dtype, dims))
            }
            TLang::Scalar(_) => None,
            TLang::Leaf(s) => egraph.analysis.params.get(s).cloned(),
            TLang::Other(s, _) => egraph.analysis.ops.get(s).map(|(_, t)| t.clone()),
        }
    }

    fn merge(&mut self, to: &mut Self::Data, from: Self::Data) -> DidMerge {
        if to.is_none() && from.is_some() {
            *to = from;
            DidMerge(true, false)
        } else {
            DidMerge(false, to.is_none() && from.is_some())
        }
    }
}

fn layout(n: &TLang) -> (bool, bool) {
    match n {
        TLang::MmTa(_) => (true, false),
        TLang::MmTb(_) => (false, true),
        TLang::MmTab(_) => (true, true),
        _ => (false, false),
    }
}

/// The scalar literal in class `id`, if it holds one.
pub(crate) fn class_literal(egraph: &EGraph<TLang, Shapes>, id: Id) -> Option<f64> {
    egraph[id].nodes.iter().find_map(|n| match n {
        TLang::Scalar(l) => Some(l.value()),
        _ => None,
    })
}

/// A power of two (either sign) well inside f32's normal range, so scaling by it
/// is exact and commutes with rounding.
fn is_pow2(v: f64) -> bool {
    let v = v.abs();
    v.is_normal() && v.log2().fract() == 0.0 && v.log2().abs() <= 60.0
}

fn is_pow2_scalar(var: &str) -> impl Fn(&mut EGraph<TLang, Shapes>, Id, &egg::Subst) -> bool {
    let var: egg::Var = var.parse().expect("pattern variable");
    move |egraph, _, subst| class_literal(egraph, subst[var]).is_some_and(is_pow2)
}

/// True when the `d` leaf names f32 and every listed class is an f32 tensor:
/// reassociation moves operands between matmuls, and a matmul takes operands of
/// one dtype, so operands and results must agree; and it changes which
/// intermediate is rounded, which only f32 keeps within the verification
/// tolerance (a bf16 intermediate would move results by about 2^-8 relative).
fn operands_have_dtype(d: &str, vars: &[&str]) -> impl Fn(&mut EGraph<TLang, Shapes>, Id, &egg::Subst) -> bool {
    let d: egg::Var = d.parse().expect("pattern variable");
    let vars: Vec<egg::Var> = vars.iter().map(|v| v.parse().expect("pattern variable")).collect();
    move |egraph, _, subst| {
        let Some(dtype) = egraph[subst[d]].nodes.iter().find_map(|n| match n {
            TLang::Leaf(s) => ScalarType::from_name(s.as_str()),
            _ => None,
        }) else {
            return false;
        };
        dtype == ScalarType::F32
            && vars.iter().all(|v| egraph[subst[*v]].data.as_ref().is_some_and(|t| t.dtype == dtype))
    }
}

/// `(x * a) * b => x * (a b)` for literals `a`, `b` of which one is a power of
/// two and whose product is a normal number: scaling by a power of two commutes
/// with rounding, so the two forms agree bit for bit (barring overflow and
/// underflow), and one pass over x disappears.
struct MergeScales;

impl egg::Applier<TLang, Shapes> for MergeScales {
    fn apply_one(
        &self,
        egraph: &mut EGraph<TLang, Shapes>,
        matched: Id,
        subst: &egg::Subst,
        _: Option<&egg::PatternAst<TLang>>,
        _: Symbol,
    ) -> Vec<Id> {
        let var = |v: &str| subst[v.parse::<egg::Var>().expect("pattern variable")];
        let (Some(a), Some(b)) = (class_literal(egraph, var("?a")), class_literal(egraph, var("?b"))) else {
            return vec![];
        };
        let product = a * b;
        if !(is_pow2(a) || is_pow2(b)) || !product.is_normal() || product.abs() > 1e30 || product.abs() < 1e-30 {
            return vec![];
        }
        let lit = egraph.add(TLang::Scalar(Lit(product.to_bits())));
        let merged = egraph.add(TLang::Mul([var("?x"), lit]));
        if egraph.union(matched, merged) {
            vec![merged]
        } else {
            vec![]
        }
    }
}

/// `matmul(a, transpose(x, perm))` where the permutation sends x's last dim to
/// the second-to-last place (`[0, 2, 3, 1]`: heads split and K transposed at
/// once) is `matmul_tb(a, transpose(x, perm'))`, perm' keeping the last dim
/// last (the head split alone, which layouts fold into loads). Exact: the
/// same elements in the same order.
struct SplitPermutation;

impl egg::Applier<TLang, Shapes> for SplitPermutation {
    fn apply_one(
        &self,
        egraph: &mut EGraph<TLang, Shapes>,
        matched: Id,
        subst: &egg::Subst,
        _: Option<&egg::PatternAst<TLang>>,
        _: Symbol,
    ) -> Vec<Id> {
        let var = |v: &str| subst[v.parse::<egg::Var>().expect("pattern variable")];
        let (d, a, b) = (var("?d"), var("?a"), var("?b"));
        let splits: Vec<(Vec<usize>, Id)> = egraph[b]
            .nodes
            .iter()
            .filter_map(|n| match n {
                TLang::Other(sym, c) if c.len() == 1 => match egraph.analysis.op(*sym) {
                    Some(Op::Transpose { perm }) if perm.len() >= 2 && perm[perm.len() - 2] == perm.len() - 1 => {
                        let mut inner = perm.clone();
                        let r = inner.len();
                        inner.swap(r - 2, r - 1);
                        (!crate::ir::swaps_last_two(perm)).then_some((inner, c[0]))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let mut added = Vec::new();
        for (perm, x) in splits {
            let Some(xt) = egraph[x].data.clone() else { continue };
            let shape = perm.iter().map(|&k| xt.shape[k]).collect();
            let inner = if perm.iter().enumerate().all(|(i, &k)| i == k) {
                x
            } else {
                let sym = egraph.analysis.intern(&Op::Transpose { perm }, &TensorType::new(xt.dtype, shape));
                egraph.add(TLang::Other(sym, vec![x]))
            };
            let folded = egraph.add(TLang::MmTb([d, a, inner]));
            if egraph.union(matched, folded) {
                added.push(folded);
            }
        }
        added
    }
}

/// Rule sets, by topic.
pub mod rules {
    use super::*;

    /// A transpose of a matmul operand becomes the operand's layout flag (also
    /// when it is the swap after another permutation), and two transposes cancel.
    pub fn transpose_folding() -> Vec<Rewrite<TLang, Shapes>> {
        vec![
            rw!("fold-transpose-a"; "(matmul ?d (t ?a) ?b)" => "(matmul_ta ?d ?a ?b)"),
            rw!("fold-transpose-b"; "(matmul ?d ?a (t ?b))" => "(matmul_tb ?d ?a ?b)"),
            rw!("fold-transpose-a-of-tb"; "(matmul_tb ?d (t ?a) ?b)" => "(matmul_tab ?d ?a ?b)"),
            rw!("fold-transpose-b-of-ta"; "(matmul_ta ?d ?a (t ?b))" => "(matmul_tab ?d ?a ?b)"),
            rw!("cancel-transposes"; "(t (t ?x))" => "?x"),
            Rewrite::new(
                "split-permutation-b",
                "(matmul ?d ?a ?b)".parse::<egg::Pattern<TLang>>().expect("pattern"),
                SplitPermutation,
            )
            .expect("valid rewrite"),
        ]
    }

    /// Reshapes compose, and a reshape to the shape a tensor already has is the
    /// tensor (exact: a reshape moves no element).
    pub fn reshape_cancellation() -> Vec<Rewrite<TLang, Shapes>> {
        vec![
            rw!("reshape-of-reshape"; "(reshape ?d2 (reshape ?d1 ?x))" => "(reshape ?d2 ?x)"),
            rw!("reshape-to-own-shape"; "(reshape ?d ?x)" => "?x" if reshape_is_identity("?d", "?x")),
        ]
    }

    /// A power-of-two scale moves between a matmul's result and its operands
    /// (exact, barring overflow), so the cheaper place wins.
    pub fn scale_folding() -> Vec<Rewrite<TLang, Shapes>> {
        vec![
            rw!("scale-into-a"; "(mul (matmul ?d ?a ?b) ?s)" => "(matmul ?d (mul ?a ?s) ?b)" if is_pow2_scalar("?s")),
            rw!("scale-into-b"; "(mul (matmul ?d ?a ?b) ?s)" => "(matmul ?d ?a (mul ?b ?s))" if is_pow2_scalar("?s")),
            rw!("scale-out-of-a"; "(matmul ?d (mul ?a ?s) ?b)" => "(mul (matmul ?d ?a ?b) ?s)" if is_pow2_scalar("?s")),
            Rewrite::new(
                "merge-scales",
                "(mul (mul ?x ?a) ?b)".parse::<egg::Pattern<TLang>>().expect("pattern"),
                MergeScales,
            )
            .expect("valid rewrite"),
        ]
    }

    /// Matmul chains reassociate (x . (A . B) with low-rank A, B is cheaper as
    /// (x . A) . B); only for f32 chains: the rewrite feeds an intermediate result
    /// to a matmul beside an original operand (one dtype), and rounds a different
    /// intermediate (only f32 keeps that within the verification tolerance).
    pub fn reassociation() -> Vec<Rewrite<TLang, Shapes>> {
        vec![
            rw!("reassociate-left"; "(matmul ?d ?x (matmul ?d ?a ?b))" => "(matmul ?d (matmul ?d ?x ?a) ?b)"
                if operands_have_dtype("?d", &["?x", "?a", "?b"])),
            rw!("reassociate-right"; "(matmul ?d (matmul ?d ?x ?a) ?b)" => "(matmul ?d ?x (matmul ?d ?a ?b))"
                if operands_have_dtype("?d", &["?x", "?a", "?b"])),
        ]
    }

    /// Attention written out becomes the fused op (see [`super::attention`]).
    pub fn attention_fusion() -> Vec<Rewrite<TLang, Shapes>> {
        super::attention::rules()
    }

    /// Every rule.
    pub fn all() -> Vec<Rewrite<TLang, Shapes>> {
        let mut r = transpose_folding();
        r.extend(reshape_cancellation());
        r.extend(scale_folding());
        r.extend(reassociation());
        r.extend(attention_fusion());
        r
    }
}

/// An IR function as an e-graph expression: the expression, the root of each
/// result, the class of each original value, and the analysis that types its
/// symbols.
pub struct Converted {
    /// The expression.
    pub expr: RecExpr<TLang>,
    /// Root of each result.
    pub roots: Vec<Id>,
    /// Expression id of each original value (parameters included).
    pub values: Vec<Id>,
    /// The typed symbols of parameters and opaque ops.
    pub analysis: Shapes,
}

/// The dims of a `dims:d0,d1,..` leaf.
fn reshape_dims(s: &str) -> Option<Vec<u64>> {
    let list = s.strip_prefix("dims:")?;
    if list.is_empty() {
        return Some(Vec::new());
    }
    list.split(',').map(|d| d.parse().ok()).collect()
}

/// True when `x` already has the shape the `dims` leaf names.
fn reshape_is_identity(d: &str, x: &str) -> impl Fn(&mut EGraph<TLang, Shapes>, Id, &egg::Subst) -> bool {
    let (d, x): (egg::Var, egg::Var) = (d.parse().expect("pattern variable"), x.parse().expect("pattern variable"));
    move |egraph, _, subst| {
        let dims = egraph[subst[d]].nodes.iter().find_map(|n| match n {
            TLang::Leaf(s) => reshape_dims(s.as_str()),
            _ => None,
        });
        matches!((dims, egraph[subst[x]].data.as_ref()), (Some(dims), Some(t)) if t.shape == dims)
    }
}

/// Converts a checked function.
pub fn to_egraph_expr(f: &Func) -> Converted {
    let mut expr = RecExpr::default();
    let mut values = Vec::with_capacity(f.nodes.len());
    let mut analysis = Shapes::default();
    let operand = |expr: &mut RecExpr<TLang>, values: &Vec<Id>, o: &Operand| match o {
        Operand::Value(v) => values[v.0 as usize],
        Operand::Scalar(x) => expr.add(TLang::Scalar(Lit(x.to_bits()))),
    };
    for n in &f.nodes {
        let args: Vec<Id> = n.operands.iter().map(|o| operand(&mut expr, &values, o)).collect();
        let id = match (&n.op, args.as_slice()) {
            (Op::Param, _) => {
                let sym = Symbol::from(format!("%{}", n.name));
                analysis.params.insert(sym, n.ty.clone());
                expr.add(TLang::Leaf(sym))
            }
            (Op::Matmul { transpose_a, transpose_b }, [a, b]) => {
                let d = expr.add(TLang::Leaf(Symbol::from(n.ty.dtype.name())));
                match (transpose_a, transpose_b) {
                    (false, false) => expr.add(TLang::Mm([d, *a, *b])),
                    (true, false) => expr.add(TLang::MmTa([d, *a, *b])),
                    (false, true) => expr.add(TLang::MmTb([d, *a, *b])),
                    (true, true) => expr.add(TLang::MmTab([d, *a, *b])),
                }
            }
            (Op::Transpose { perm }, [x]) if crate::ir::swaps_last_two(perm) => expr.add(TLang::T(*x)),
            (Op::Reshape { .. }, [x]) => {
                let dims: Vec<String> = n.ty.shape.iter().map(|d| d.to_string()).collect();
                let d = expr.add(TLang::Leaf(Symbol::from(format!("dims:{}", dims.join(",")))));
                expr.add(TLang::Reshape([d, *x]))
            }
            (Op::Binary(BinaryOp::Mul), [a, b]) => expr.add(TLang::Mul([*a, *b])),
            (Op::Binary(BinaryOp::Add), [a, b]) => expr.add(TLang::Add([*a, *b])),
            (op, args) => {
                let sym = analysis.intern(op, &n.ty);
                expr.add(TLang::Other(sym, args.to_vec()))
            }
        };
        values.push(id);
    }
    let roots = f.results.iter().map(|r| values[r.0 as usize]).collect();
    Converted { expr, roots, values, analysis }
}

pub mod extract;
pub mod region;

/// Optimisation limits: counts only, so the result never depends on the
/// machine's speed or load.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most e-nodes.
    pub nodes: usize,
    /// Most iterations.
    pub iterations: usize,
    /// Most statements optimized as one e-graph (longer functions go region by
    /// region, see [`region`]); the node and iteration limits apply per region.
    pub region_statements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { nodes: 20_000, iterations: 16, region_statements: region::REGION_STATEMENTS }
    }
}

/// What the optimizer did.
pub struct Optimized {
    /// The optimized function (checked by the IR's builder).
    pub func: Func,
    /// Estimated cycles before and after.
    pub cost_before: f64,
    /// Estimated cycles of the extracted program.
    pub cost_after: f64,
    /// Why the runner stopped (`Saturated`, `NodeLimit(..)`, ..; per region as
    /// `by region: Saturated xN, ..`).
    pub stop: String,
}

/// Optimises `f` for `target` with every rule.
pub fn optimize(f: &Func, target: &jpu_isa::Target, limits: Limits) -> Result<Optimized, crate::error::CompileError> {
    optimize_with(f, target, limits, &rules::all())
}

/// Optimises `f` for `target` with the given rules: as one e-graph, or region by
/// region when it is longer than `limits.region_statements` (so time and
/// memory grow linearly with the program, and the limits apply per region).
pub fn optimize_with(
    f: &Func,
    target: &jpu_isa::Target,
    limits: Limits,
    rules: &[Rewrite<TLang, Shapes>],
) -> Result<Optimized, crate::error::CompileError> {
    let ranges = region::cuts(f, limits.region_statements.max(2));
    if ranges.len() == 1 {
        let names = f.nodes.iter().map(|n| n.name.clone()).collect();
        return optimize_one(f, target, limits, rules, &names, true);
    }
    let mut stitch = Stitch::new(f)?;
    let mut stops: BTreeMap<String, usize> = BTreeMap::new();
    let (mut cost_before, mut cost_after) = (0.0, 0.0);
    for range in ranges {
        let r = region::region(f, range)?;
        let o = optimize_one(&r.func, target, limits, rules, &stitch.used, false)?;
        stitch.append(&r, &o.func)?;
        *stops.entry(o.stop).or_default() += 1;
        cost_before += o.cost_before;
        cost_after += o.cost_after;
    }
    let stops: Vec<String> = stops.iter().map(|(s, n)| format!("{s} x{n}")).collect();
    let stop = format!("by region: {}", stops.join(", "));
    Ok(Optimized { func: stitch.finish(f)?, cost_before, cost_after, stop })
}

/// Optimises one function as one e-graph. `names` are the names fresh values
/// must avoid; `own_results` makes a result that rewriting reduced to a
/// parameter a copy of its own (a region's results may alias its parameters).
fn optimize_one(
    f: &Func,
    target: &jpu_isa::Target,
    limits: Limits,
    rules: &[Rewrite<TLang, Shapes>],
    names: &std::collections::HashSet<String>,
    own_results: bool,
) -> Result<Optimized, crate::error::CompileError> {
    let conv = to_egraph_expr(f);
    let runner = Runner::<TLang, Shapes>::new(conv.analysis)
        .with_node_limit(limits.nodes)
        .with_iter_limit(limits.iterations)
        // egg's default stops after 5 s of wall time; the limits above bound the work.
        .with_time_limit(std::time::Duration::MAX)
        .with_expr(&conv.expr)
        .run(rules);
    let stop = runner.stop_reason.as_ref().map_or("not run".to_string(), |r| format!("{r:?}"));
    let egraph = &runner.egraph;
    let model = cost::Model::new(target);
    let ids = expr_classes(egraph, &conv.expr);
    let result_classes: Vec<Id> = conv.roots.iter().map(|r| ids[usize::from(*r)]).collect();
    let greedy = extract::dag_extract(egraph, &model);
    let original = extract::original_choice(egraph, &conv.expr, &ids);
    let cost_before = extract::total(egraph, &model, &original, &result_classes);
    // Start from the cheaper of the greedy and the original choice (completed by
    // the greedy one), then improve globally.
    let mut from_original = greedy.clone();
    from_original.extend(original.iter().map(|(k, v)| (*k, *v)));
    let start = if extract::total(egraph, &model, &from_original, &result_classes)
        < extract::total(egraph, &model, &greedy, &result_classes)
    {
        from_original
    } else {
        greedy
    };
    let choice = extract::improve(egraph, &model, start, &result_classes);
    let cost_after = extract::total(egraph, &model, &choice, &result_classes);
    let value_classes: Vec<Id> = conv.values.iter().map(|v| ids[usize::from(*v)]).collect();
    let rebuild = extract::Rebuilt { choice: &choice, results: &result_classes, value_classes: &value_classes };
    let func = extract::to_func(f, egraph, rebuild, names, own_results)?;
    Ok(Optimized { func, cost_before, cost_after, stop })
}

/// Optimized regions joined back into one function.
struct Stitch {
    builder: crate::ir::Builder,
    /// Original value -> its value in the joined function.
    values: HashMap<u32, crate::ir::ValueId>,
    /// Every original name and every fresh name given so far.
    used: std::collections::HashSet<String>,
}

impl Stitch {
    /// The joined function's parameters: the original ones.
    fn new(f: &Func) -> Result<Stitch, crate::error::CompileError> {
        let mut builder = crate::ir::Builder::new(&f.name);
        let mut values = HashMap::new();
        for p in f.params() {
            let n = f.node(p);
            values.insert(p.0, builder.param(&n.name, n.ty.clone(), n.span.clone()).map_err(extract::internal)?);
        }
        Ok(Stitch { builder, values, used: f.nodes.iter().map(|n| n.name.clone()).collect() })
    }

    /// Appends the optimized form `g` of region `r`.
    fn append(&mut self, r: &region::Region, g: &Func) -> Result<(), crate::error::CompileError> {
        let mut local = HashMap::new();
        for (i, p) in g.params().enumerate() {
            local.insert(p.0, self.values[&r.inputs[i].0]);
        }
        for (i, node) in g.nodes.iter().enumerate().skip(g.num_params) {
            let args: Vec<Operand> = node.operands.iter().map(|o| region::remap(o, &local)).collect();
            let id = self.builder.push_op(&node.name, &node.op, &args, Some(&node.ty), node.span.clone());
            local.insert(i as u32, id.map_err(extract::internal)?);
            self.used.insert(node.name.clone());
        }
        for (k, res) in g.results.iter().enumerate() {
            self.values.insert(r.outputs[k].0, local[&res.0]);
        }
        Ok(())
    }

    /// The joined function; a result whose value lost its name (rewriting
    /// made it another value) is a copy under its name.
    fn finish(mut self, f: &Func) -> Result<Func, crate::error::CompileError> {
        let mut rets = Vec::new();
        let mut copies = HashMap::new();
        for r in &f.results {
            let (id, n) = (self.values[&r.0], f.node(*r));
            if self.builder.name(id) == n.name {
                rets.push(id);
            } else if let Some(copy) = copies.get(&r.0) {
                rets.push(*copy);
            } else {
                let copy = extract::push_copy(&mut self.builder, n, id)?;
                copies.insert(r.0, copy);
                rets.push(copy);
            }
        }
        Ok(self.builder.finish(rets))
    }
}

/// The e-class of each node of `expr` in `egraph` (which contains it).
fn expr_classes(egraph: &EGraph<TLang, Shapes>, expr: &RecExpr<TLang>) -> Vec<Id> {
    let mut ids: Vec<Id> = Vec::with_capacity(expr.len());
    for node in expr.iter() {
        let n = node.clone().map_children(|c| ids[usize::from(c)]);
        ids.push(egraph.lookup(n).expect("the runner's e-graph contains its start expression"));
    }
    ids
}

/// Canonical e-class ids keyed for deterministic iteration.
pub type Choice = BTreeMap<Id, usize>;
