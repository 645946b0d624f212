//! The canonical text of the IR: what `jalc compile --emit parsed` prints.
//!
//! Canonical means: every attribute written (defaults included) in a fixed order,
//! axes non-negative, every result type annotated, two-space indentation. Parsing
//! the output gives the same IR, and printing that gives the same text.

use std::fmt::Write as _;

use super::ir::*;

fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "inf".into()
    } else if v == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{v:?}")
    }
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
}

fn attrs(op: &Op) -> String {
    let a = match op {
        Op::Transpose { perm } => format!("perm = {}", list(perm)),
        Op::Reshape { shape } => format!("shape = {}", list(shape)),
        Op::Gelu { approx } => format!("approx = \"{}\"", if *approx == GeluApprox::Tanh { "tanh" } else { "none" }),
        Op::Reduce { axes, keepdims, .. } => format!("axes = {}, keepdims = {keepdims}", list(axes)),
        Op::Softmax { axis } | Op::Iota { axis } | Op::Concat { axis } => format!("axis = {axis}"),
        Op::Cast { to } => format!("to = {to}"),
        Op::Const { value } => format!("value = {}", number(*value)),
        Op::Compare { kind } => format!("kind = {}", kind.name()),
        Op::Slice { start, stop } => format!("start = {}, stop = {}", list(start), list(stop)),
        Op::LayerNorm { axis, eps } | Op::RmsNorm { axis, eps } => format!("axis = {axis}, eps = {}", number(*eps)),
        Op::Attention { causal, scale } => format!("causal = {causal}, scale = {}", number(*scale)),
        Op::Matmul { transpose_a, transpose_b } => format!("transpose_a = {transpose_a}, transpose_b = {transpose_b}"),
        Op::Param | Op::Binary(_) | Op::Unary(_) | Op::Select => return String::new(),
    };
    format!(" {{{a}}}")
}

/// An op's name and attributes as the canonical form writes them (`softmax {axis = 2}`).
pub fn op_text(op: &Op) -> String {
    format!("{}{}", op.name(), attrs(op))
}

/// A scalar literal as the canonical form writes it.
pub fn literal(v: f64) -> String {
    number(v)
}

/// Prints a function in canonical form.
pub fn print(f: &Func) -> String {
    let mut out = String::new();
    let params: Vec<String> = f.params().map(|p| format!("%{}: {}", f.node(p).name, f.node(p).ty)).collect();
    let results: Vec<String> = f.results.iter().map(|&r| f.node(r).ty.to_string()).collect();
    let results = if results.len() == 1 { results[0].clone() } else { format!("({})", results.join(", ")) };
    let _ = writeln!(out, "func @{}({}) -> {} {{", f.name, params.join(", "), results);
    for n in &f.nodes[f.num_params..] {
        let operands: Vec<String> = n
            .operands
            .iter()
            .map(|o| match o {
                Operand::Value(v) => format!("%{}", f.node(*v).name),
                Operand::Scalar(x) => number(*x),
            })
            .collect();
        let _ = writeln!(out, "  %{} = {}({}){} : {}", n.name, n.op.name(), operands.join(", "), attrs(&n.op), n.ty);
    }
    let rets: Vec<String> = f.results.iter().map(|&r| format!("%{}", f.node(r).name)).collect();
    let _ = writeln!(out, "  return {}\n}}", rets.join(", "));
    out
}
