//! The canonical text of the IR: what `jalc compile --emit parsed` prints.
//!
//! Canonical means: every attribute written (defaults included) in a fixed order,
//! axes non-negative, every result type annotated, two-space indentation. Parsing
//! the output gives the same IR, and printing that gives the same text.

use std::fmt::Write as _;

use super::ops::{Attr, AttrKind};
use super::{Func, Op, Operand};

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

fn attr_value(kind: AttrKind, v: &Attr) -> String {
    match v {
        Attr::Int(i) => i.to_string(),
        Attr::Float(x) => number(*x),
        Attr::Bool(b) => b.to_string(),
        Attr::Word(w) | Attr::Str(w) if matches!(kind, AttrKind::Choice { quoted: true, .. }) => format!("\"{w}\""),
        Attr::Word(w) | Attr::Str(w) => w.clone(),
        Attr::List(items) => list(&items.iter().map(|i| attr_value(kind, i)).collect::<Vec<_>>()),
    }
}

/// Every attribute in the op table's order, defaults included.
fn attrs(op: &Op) -> String {
    let Some(def) = op.def() else { return String::new() };
    if def.attrs.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> =
        def.attrs.iter().zip(op.attrs()).map(|(a, v)| format!("{} = {}", a.name, attr_value(a.kind, &v))).collect();
    format!(" {{{}}}", pairs.join(", "))
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
    let params: Vec<String> = f
        .params()
        .map(|p| {
            let n = f.node(p);
            match f.weights.get(&n.name) {
                Some(w) => format!("%{}: {} = \"{}\"[\"{}\"]", n.name, n.ty, w.file, w.tensor),
                None => format!("%{}: {}", n.name, n.ty),
            }
        })
        .collect();
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
