//! Resolving a `.tir` syntax tree into the typed IR, or every error found.
//!
//! This module owns what is particular to the text: names (defined before use,
//! not redefined), spans, types as written, `return`, and one function per file.
//! Each statement is typed by the IR's checker ([`crate::ir::check`]), whose
//! errors this module points at the right span. A statement with an error still
//! defines its name (as "poisoned"), so later uses do not repeat the error; all
//! errors of a file are reported together.

use std::collections::HashMap;

use super::ast::{self, AttrValue, OperandExpr, Span, Spanned, Stmt, TypeExpr};
use crate::diagnostic::Diagnostic;
use crate::ir::check::{At, BuildError, CheckError};
use crate::ir::ops::Attr;
use crate::ir::{Builder, Func, Operand, ScalarType, TensorType, ValueId, WeightRef};

type R<T> = Result<T, Diagnostic>;

enum Binding {
    Value(ValueId, Span),
    /// Defined by a statement with an error: uses are silently skipped.
    Poisoned,
}

struct Cx {
    builder: Builder,
    names: HashMap<String, Binding>,
    diags: Vec<Diagnostic>,
}

/// Resolves the one function of a module.
pub fn resolve(m: &ast::Module) -> Result<Func, Vec<Diagnostic>> {
    let Some(f) = m.funcs.first() else {
        return Err(vec![Diagnostic::new(
            0..0,
            "the file defines no function (expected `func @name(...) -> type { ... }`)",
        )]);
    };
    let mut cx = Cx { builder: Builder::new(&f.name.node), names: HashMap::new(), diags: Vec::new() };
    for extra in &m.funcs[1..] {
        cx.diags.push(
            Diagnostic::new(extra.head.clone(), "only one function per file is supported")
                .with_label(f.head.clone(), "the first function is here"),
        );
    }
    let mut weights = std::collections::BTreeMap::new();
    for p in &f.params {
        cx.param(&p.name, &p.ty);
        if let Some((file, tensor)) = &p.weight {
            match crate::weights::check_path(&file.node) {
                Ok(()) => {
                    weights.insert(
                        p.name.node.clone(),
                        WeightRef { file: file.node.clone(), tensor: tensor.node.clone() },
                    );
                }
                Err(why) => cx.diags.push(Diagnostic::new(file.span.clone(), why)),
            }
        }
    }
    let declared: Vec<Option<TensorType>> = f.results.iter().map(|t| cx.ok(lower_type(t))).collect();
    let mut results = None;
    for stmt in &f.body {
        match stmt {
            Stmt::Error => {}
            Stmt::Let { span, .. } if results.is_some() => {
                cx.diags.push(Diagnostic::new(span.clone(), "statement after `return` (return ends the function)"));
            }
            Stmt::Let { name, op, operands, attrs, ty, span } => {
                cx.let_stmt(name, op, operands, attrs, ty.as_ref(), span)
            }
            Stmt::Return { values, span } => {
                if results.is_some() {
                    cx.diags.push(Diagnostic::new(span.clone(), "a function has one `return`"));
                    continue;
                }
                results = Some(cx.return_stmt(values, span, &declared, &f.results));
            }
        }
    }
    let Some(results) = results else {
        cx.diags.push(Diagnostic::new(f.end.clone(), "the function ends without `return`"));
        return Err(cx.diags);
    };
    if !cx.diags.is_empty() {
        cx.diags.sort_by_key(|d| d.span.start);
        return Err(cx.diags);
    }
    let mut func = cx.builder.finish(results);
    func.weights = weights;
    Ok(func)
}

/// A written type as an IR type (a known dtype, within the IR's limits).
fn lower_type(te: &TypeExpr) -> R<TensorType> {
    let dtype = ScalarType::from_name(&te.dtype.node).ok_or_else(|| {
        Diagnostic::new(te.dtype.span.clone(), format!("unknown dtype `{}`", te.dtype.node))
            .with_note("dtypes: f32, f16, bf16, f8e4m3, f8e5m2, i8, i32, i1")
    })?;
    let shape: Vec<u64> = te.dims.iter().map(|d| d.node).collect();
    TensorType::checked(dtype, shape).map_err(|m| Diagnostic::new(te.span.clone(), m))
}

/// An attribute value as the IR's checker takes it.
fn attr(v: &AttrValue) -> Attr {
    match v {
        AttrValue::Int(i) => Attr::Int(*i),
        AttrValue::Float(f) => Attr::Float(*f),
        AttrValue::Bool(b) => Attr::Bool(*b),
        AttrValue::Str(s) => Attr::Str(s.clone()),
        AttrValue::Ident(s) => Attr::Word(s.clone()),
        AttrValue::List(items) => Attr::List(items.iter().map(|i| attr(&i.node)).collect()),
    }
}

/// The spans a statement's [`At`] positions refer to.
struct StmtSpans<'a> {
    op: &'a Span,
    operands: Vec<Span>,
    attrs: &'a [(Spanned<String>, Spanned<AttrValue>)],
    annotation: Option<&'a TypeExpr>,
    stmt: &'a Span,
}

impl StmtSpans<'_> {
    fn span(&self, at: At) -> Span {
        match at {
            At::Op => self.op.clone(),
            At::Operand(i) => self.operands.get(i).unwrap_or(self.op).clone(),
            At::AttrName(i) => self.attrs.get(i).map_or(self.stmt, |a| &a.0.span).clone(),
            At::AttrValue(i) => self.attrs.get(i).map_or(self.stmt, |a| &a.1.span).clone(),
            At::Annotation => self.annotation.map_or(self.stmt, |t| &t.span).clone(),
            At::Statement => self.stmt.clone(),
        }
    }

    fn diagnostic(&self, e: CheckError) -> Diagnostic {
        let mut d = Diagnostic::new(self.span(e.at), e.message);
        for (at, text) in e.labels {
            d = d.with_label(self.span(at), text);
        }
        for n in e.notes {
            d = d.with_note(n);
        }
        d
    }
}

impl Cx {
    fn ok<T>(&mut self, r: R<T>) -> Option<T> {
        r.map_err(|d| self.diags.push(d)).ok()
    }

    fn define(&self, name: &Spanned<String>) -> R<()> {
        if let Some(b) = self.names.get(&name.node) {
            let mut d = Diagnostic::new(name.span.clone(), format!("`%{}` is already defined", name.node));
            if let Binding::Value(_, prev) = b {
                d = d.with_label(prev.clone(), "first defined here");
            }
            return Err(d);
        }
        Ok(())
    }

    fn lookup(&self, name: &Spanned<String>) -> R<Option<ValueId>> {
        match self.names.get(&name.node) {
            Some(Binding::Value(id, _)) => Ok(Some(*id)),
            Some(Binding::Poisoned) => Ok(None),
            None => Err(Diagnostic::new(name.span.clone(), format!("undefined value `%{}`", name.node))),
        }
    }

    fn bind(&mut self, name: &Spanned<String>, value: Option<ValueId>) {
        let binding = value.map_or(Binding::Poisoned, |id| Binding::Value(id, name.span.clone()));
        self.names.insert(name.node.clone(), binding);
    }

    fn param(&mut self, name: &Spanned<String>, te: &TypeExpr) {
        let Some(ty) = self.ok(lower_type(te)) else {
            self.names.insert(name.node.clone(), Binding::Poisoned);
            return;
        };
        if self.ok(self.define(name)).is_none() {
            return;
        }
        let id = self.builder.param(&name.node, ty, name.span.clone());
        let id = self.ok(id.map_err(|e| Diagnostic::new(name.span.clone(), e.to_string())));
        self.bind(name, id);
    }

    fn let_stmt(
        &mut self,
        name: &Spanned<String>,
        op: &Spanned<String>,
        operands: &[OperandExpr],
        attrs: &[(Spanned<String>, Spanned<AttrValue>)],
        annotation: Option<&TypeExpr>,
        span: &Span,
    ) {
        let outcome = self.statement(name, op, operands, attrs, annotation, span);
        if self.ok(self.define(name)).is_none() {
            return;
        }
        let value = self.ok(outcome).flatten();
        self.bind(name, value);
    }

    /// Checks one statement and adds its value; `Ok(None)` when an operand is poisoned.
    fn statement(
        &mut self,
        name: &Spanned<String>,
        op: &Spanned<String>,
        operands: &[OperandExpr],
        attrs: &[(Spanned<String>, Spanned<AttrValue>)],
        annotation: Option<&TypeExpr>,
        span: &Span,
    ) -> R<Option<ValueId>> {
        let mut args = Vec::new();
        let mut spans = StmtSpans { op: &op.span, operands: Vec::new(), attrs, annotation, stmt: span };
        for o in operands {
            match o {
                OperandExpr::Value(v) => match self.lookup(v)? {
                    Some(id) => args.push(Operand::Value(id)),
                    None => return Ok(None),
                },
                OperandExpr::Literal(l) => args.push(Operand::Scalar(l.node)),
            }
            spans.operands.push(match o {
                OperandExpr::Value(v) => v.span.clone(),
                OperandExpr::Literal(l) => l.span.clone(),
            });
        }
        let annotated = annotation.map(lower_type).transpose()?;
        let attrs: Vec<(String, Attr)> = attrs.iter().map(|(n, v)| (n.node.clone(), attr(&v.node))).collect();
        match self.builder.push(&name.node, &op.node, &args, &attrs, annotated.as_ref(), span.clone()) {
            Ok(id) => Ok(Some(id)),
            Err(BuildError::Check(e)) => Err(spans.diagnostic(e)),
            Err(e) => Err(Diagnostic::new(name.span.clone(), e.to_string())),
        }
    }

    fn return_stmt(
        &mut self,
        values: &[Spanned<String>],
        span: &Span,
        declared: &[Option<TensorType>],
        written: &[TypeExpr],
    ) -> Vec<ValueId> {
        let mut ids = Vec::new();
        let mut ok = true;
        for v in values {
            match self.lookup(v) {
                Ok(Some(id)) => ids.push((id, v.span.clone())),
                Ok(None) => ok = false,
                Err(d) => {
                    self.diags.push(d);
                    ok = false;
                }
            }
        }
        let results = ids.iter().map(|(id, _)| *id).collect();
        if !ok {
            return results;
        }
        if ids.len() != declared.len() {
            let s = |n: usize| if n == 1 { "" } else { "s" };
            let msg = format!(
                "`return` gives {} value{} but the function declares {} result{}",
                ids.len(),
                s(ids.len()),
                declared.len(),
                s(declared.len())
            );
            self.diags.push(Diagnostic::new(span.clone(), msg));
            return results;
        }
        for ((id, vspan), (want, te)) in ids.iter().zip(declared.iter().zip(written)) {
            let got = self.builder.ty(*id);
            if let Some(want) = want.as_ref().filter(|w| *w != got) {
                let d = Diagnostic::new(vspan.clone(), format!("returns {got}, but the function declares {want}"))
                    .with_label(te.span.clone(), "declared here");
                self.diags.push(d);
            }
        }
        results
    }
}
