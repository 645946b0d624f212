//! ONNX graph -> tensor IR at fixed input shapes. This module owns the walk:
//! which nodes are live (reachable from the graph outputs), the value of every
//! ONNX name (known at import time, [`Val::Host`], or computed on the chip,
//! [`Val::Ir`]), the input shapes (`--input-shape` for dynamic dims), the
//! precision (float values stored as bf16 or f32), names (each IR value takes
//! its ONNX name, sanitized and made unique), and the weights (host values an
//! op reads at run time become weight parameters; float values saturate into
//! the storage dtype's finite range, so a `-3.4e38` mask stays finite in
//! bf16). Folding is [`super::fold`]; runtime ops are [`super::convert`].

use std::collections::{BTreeMap, HashMap, HashSet};

use super::host::{self, HostTensor};
use super::proto::tensor_proto::DataType;
use super::proto::{NodeProto, ValueInfoProto};
use super::{Model, OnnxError};
use crate::eval::Tensor;
use crate::ir::check::{infer, Arg, Builder};
use crate::ir::ops::Attr;
use crate::ir::{Func, Operand, ScalarType, TensorType, ValueId, WeightRef};
use crate::weights::Weights;

/// How float values are stored on the chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Weights and activations in bf16; f32 accumulation and statistics.
    #[default]
    Bf16,
    /// The model's own f32 numerics.
    F32,
}

impl Precision {
    /// The IR dtype of a float value.
    pub fn dtype(self) -> ScalarType {
        match self {
            Precision::Bf16 => ScalarType::Bf16,
            Precision::F32 => ScalarType::F32,
        }
    }
}

/// What the import is asked for.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Shapes for inputs (required for every input with a dynamic dim).
    pub input_shapes: Vec<(String, Vec<u64>)>,
    /// Float storage.
    pub precision: Precision,
    /// The safetensors file the weights are named in (beside the `.tir`;
    /// `weights.safetensors` when empty).
    pub weights_file: String,
}

/// One graph input or output: its ONNX name and element type, and the IR value.
#[derive(Debug, Clone, PartialEq)]
pub struct Io {
    /// The ONNX name.
    pub onnx: String,
    /// The IR parameter or result value's name.
    pub ir: String,
    /// The ONNX element type.
    pub elem: i32,
}

/// An imported model.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The program; weight parameters are named in `func.weights`.
    pub func: Func,
    /// Its printed form (what `jalc import` writes; the spans point into it).
    pub text: String,
    /// Each weight parameter's value, by parameter name.
    pub weights: Weights,
    /// The graph inputs, in order.
    pub inputs: Vec<Io>,
    /// The graph outputs, in order.
    pub outputs: Vec<Io>,
}

impl Imported {
    /// The graph's input and output names and types, for the binary.
    pub fn external(&self) -> crate::driver::External {
        let ty = |elem: i32| {
            use jpu_isa::program::ExternalType as E;
            match DataType::try_from(elem) {
                Ok(DataType::Float16) => E::F16,
                Ok(DataType::Bfloat16) => E::Bf16,
                Ok(DataType::Double) => E::F64,
                Ok(DataType::Int64) => E::I64,
                Ok(DataType::Int32) => E::I32,
                Ok(DataType::Int16) => E::I16,
                Ok(DataType::Int8) => E::I8,
                Ok(DataType::Uint8) => E::U8,
                Ok(DataType::Bool) => E::Bool,
                // No numpy type: int4, uint4, int2 and uint2 as int32.
                _ if host::narrow_int(elem).is_some() => E::I32,
                _ => E::F32,
            }
        };
        crate::driver::External {
            inputs: self.inputs.iter().map(|io| (io.ir.clone(), io.onnx.clone(), ty(io.elem))).collect(),
            outputs: self.outputs.iter().enumerate().map(|(k, io)| (k, io.onnx.clone(), ty(io.elem))).collect(),
        }
    }
}

/// A reference to an IR value under construction: a parameter or a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    /// Parameter i (inputs, then weights in order of creation).
    Param(usize),
    /// Statement i.
    Stmt(usize),
}

/// An operand of a pending statement.
#[derive(Debug, Clone, Copy)]
pub enum POperand {
    /// A value.
    Value(Ref),
    /// A literal.
    Scalar(f64),
}

/// The value of an ONNX name.
#[derive(Debug, Clone)]
pub enum Val {
    /// Known at import time.
    Host(HostTensor),
    /// Computed on the chip; `elem` is its ONNX element type.
    Ir {
        /// The IR value.
        r: Ref,
        /// The ONNX element type.
        elem: i32,
    },
}

struct Stmt {
    name: String,
    op: crate::ir::Op,
    operands: Vec<POperand>,
    ty: TensorType,
}

/// The import state.
pub struct Importer {
    pub(super) precision: Precision,
    vals: HashMap<String, Val>,
    params: Vec<(String, TensorType)>,
    stmts: Vec<Stmt>,
    names: HashSet<String>,
    weights: Weights,
    weight_refs: BTreeMap<String, WeightRef>,
    /// Host values already made weight parameters, by ONNX name.
    materialized: HashMap<String, Ref>,
    weights_file: String,
    /// ONNX values computed in f32 although floats are stored in bf16: the
    /// scores chains of softmaxes (see [`score_chains`]).
    wide: HashSet<String>,
    /// Under bf16 storage, written-out exact GELUs by final output, and the
    /// inner values they replace (never imported).
    gelus: HashMap<String, super::patterns::ErfGelu>,
    gelu_inner: HashSet<String>,
}

/// `name` with every character outside `[A-Za-z0-9_.]` made `_`.
pub fn sanitize(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' }).collect();
    if s.is_empty() {
        "v".into()
    } else {
        s
    }
}

/// Imports `model` (read from `file`, for messages).
pub fn import(model: &Model, file: &str, opts: &ImportOptions) -> Result<Imported, OnnxError> {
    let err = |m: String| OnnxError { file: file.to_string(), message: m };
    let g = model.graph();
    let live = live_nodes(g);
    super::convert::check_supported(live.iter().copied()).map_err(err)?;
    let mut im = Importer {
        precision: opts.precision,
        vals: HashMap::new(),
        params: Vec::new(),
        stmts: Vec::new(),
        names: HashSet::new(),
        weights: Weights::new(),
        weight_refs: BTreeMap::new(),
        materialized: HashMap::new(),
        wide: if opts.precision == Precision::Bf16 { score_chains(&live) } else { HashSet::new() },
        gelus: HashMap::new(),
        gelu_inner: HashSet::new(),
        weights_file: if opts.weights_file.is_empty() {
            "weights.safetensors".into()
        } else {
            opts.weights_file.clone()
        },
    };
    if opts.precision == Precision::Bf16 {
        im.gelus = super::patterns::erf_gelus(g, &live);
        im.gelu_inner = im.gelus.values().flat_map(|p| p.inner.iter().cloned()).collect();
    }
    for t in &g.initializer {
        let v = HostTensor::from_proto(t).map_err(err)?;
        im.vals.insert(t.name.clone().unwrap_or_default(), Val::Host(v));
    }
    let initialized: HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let mut inputs = Vec::new();
    for i in g.input.iter().filter(|i| !initialized.contains(i.name.as_deref().unwrap_or(""))) {
        inputs.push(im.input(i, &opts.input_shapes).map_err(err)?);
    }
    if let Some((name, _)) = opts.input_shapes.iter().find(|(n, _)| !inputs.iter().any(|io| &io.onnx == n)) {
        return Err(err(format!("--input-shape names `{name}`, which is not an input of the model")));
    }
    for &n in &live {
        let what = format!("node `{}` ({})", n.name.as_deref().unwrap_or(""), n.op_type.as_deref().unwrap_or(""));
        let outs = im.node(n).map_err(|m| err(format!("{what}: {m}")))?;
        for (name, v) in n.output.iter().zip(outs) {
            if !name.is_empty() {
                im.vals.insert(name.clone(), v);
            }
        }
    }
    let mut outputs = Vec::new();
    let mut results = Vec::new();
    for o in &g.output {
        let name = o.name.clone().unwrap_or_default();
        let v = im.vals.get(&name).cloned().ok_or_else(|| err(format!("output `{name}` is never computed")))?;
        let (r, elem) = match v {
            Val::Ir { r, elem } => (r, elem),
            Val::Host(h) => (im.materialize(&name, &h).map_err(err)?, h.elem),
        };
        outputs.push(Io { onnx: name, ir: im.ref_name(r).to_string(), elem });
        results.push(r);
    }
    let graph_name = g.name.clone().unwrap_or_default();
    im.finish(&graph_name, results, inputs, outputs).map_err(err)
}

/// The nodes whose outputs reach a graph output, in graph order.
fn live_nodes(g: &super::proto::GraphProto) -> Vec<&NodeProto> {
    let mut needed: HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let mut live = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o.as_str())) {
            live[i] = true;
            needed.extend(n.input.iter().map(String::as_str));
        }
    }
    g.node.iter().zip(live).filter(|(_, l)| *l).map(|(n, _)| n).collect()
}

/// The values of each live Softmax's scores chain: back from its input through
/// Add/Sub/Mul/Div (following the operand a MatMul computes) to that MatMul,
/// and the Softmax itself. With bf16 storage they are computed in f32 (the
/// "f32 statistics" of the precision mode): the scores of attention written
/// out, which the optimizer then fuses into one attention kernel.
fn score_chains(live: &[&NodeProto]) -> HashSet<String> {
    let producer: HashMap<&str, &NodeProto> =
        live.iter().flat_map(|&n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let op = |v: &str| producer.get(v).and_then(|n| n.op_type.as_deref()).unwrap_or("");
    let mut wide = HashSet::new();
    for &n in live {
        if n.op_type.as_deref() != Some("Softmax") {
            continue;
        }
        let Some(out) = n.output.first() else { continue };
        let mut chain = vec![out.clone()];
        let mut v = n.input.first().cloned().unwrap_or_default();
        let reaches_matmul = loop {
            match op(&v) {
                "MatMul" => break true,
                "Add" | "Sub" | "Mul" | "Div" if chain.len() < 8 => {
                    chain.push(v.clone());
                    let ins = &producer[v.as_str()].input;
                    let leads = |i: &String| matches!(op(i), "MatMul" | "Add" | "Sub" | "Mul" | "Div");
                    match ins.iter().find(|i| leads(i)) {
                        Some(i) => v = i.clone(),
                        None => break false,
                    }
                }
                _ => break false,
            }
        };
        if reaches_matmul {
            chain.push(v);
            wide.extend(chain);
        }
    }
    wide
}

impl Importer {
    /// True when ONNX value `name` is computed in f32 under bf16 storage.
    pub(super) fn is_wide(&self, name: &str) -> bool {
        self.wide.contains(name)
    }

    /// A value as f32 (a cast when it is stored narrower).
    pub(super) fn widened(&mut self, o: POperand, name: &str) -> Result<POperand, String> {
        match o {
            POperand::Value(r) if self.ty(r).dtype != ScalarType::F32 && self.ty(r).dtype.is_float() => {
                let to = ("to", Attr::Word("f32".into()));
                Ok(POperand::Value(self.push(&format!("{name}__f32"), "cast", &[o], &[to], None)?))
            }
            o => Ok(o),
        }
    }

    /// A graph input: its shape (given or declared) and its parameter.
    fn input(&mut self, i: &ValueInfoProto, given: &[(String, Vec<u64>)]) -> Result<Io, String> {
        let name = i.name.clone().unwrap_or_default();
        let tt = i.r#type.as_ref().and_then(|t| match &t.value {
            Some(super::proto::type_proto::Value::TensorType(tt)) => Some(tt),
            _ => None,
        });
        let tt = tt.ok_or_else(|| format!("input `{name}` is not a tensor"))?;
        let elem = tt.elem_type.unwrap_or(0);
        let declared: Vec<Option<u64>> = tt
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(super::proto::tensor_shape_proto::dimension::Value::DimValue(v)) if v >= 0 => {
                            Some(v as u64)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let shape = match given.iter().find(|(n, _)| n == &name) {
            Some((_, s)) => {
                let agrees =
                    s.len() == declared.len() && s.iter().zip(&declared).all(|(g, d)| d.is_none_or(|d| d == *g));
                if !agrees {
                    return Err(format!(
                        "--input-shape {name}={} does not match its declared dims {}",
                        dims(s),
                        declared_text(&declared)
                    ));
                }
                s.clone()
            }
            None if declared.iter().all(Option::is_some) => declared.iter().map(|d| d.unwrap_or(0)).collect(),
            None => {
                return Err(format!(
                    "input `{name}` has dynamic dims {}: give its shape with --input-shape {name}=D0xD1...",
                    declared_text(&declared)
                ))
            }
        };
        let ty = TensorType::new(self.ir_dtype(elem)?, shape);
        let ir = self.unique(&name);
        self.params.push((ir.clone(), ty));
        let r = Ref::Param(self.params.len() - 1);
        self.vals.insert(name.clone(), Val::Ir { r, elem });
        Ok(Io { onnx: name, ir, elem })
    }

    /// The IR dtype of ONNX element type `elem`.
    pub(super) fn ir_dtype(&self, elem: i32) -> Result<ScalarType, String> {
        match DataType::try_from(elem) {
            _ if host::is_float(elem) => Ok(self.precision.dtype()),
            Ok(DataType::Bool) => Ok(ScalarType::I1),
            Ok(
                DataType::Int64
                | DataType::Int32
                | DataType::Int16
                | DataType::Int8
                | DataType::Uint8
                | DataType::Uint16
                | DataType::Uint32
                | DataType::Uint64
                | DataType::Int4
                | DataType::Uint4
                | DataType::Int2
                | DataType::Uint2,
            ) => Ok(ScalarType::I32),
            _ => Err(format!("element type {} is not supported", host::elem_name(elem))),
        }
    }

    /// A fresh IR name for ONNX name `name`.
    pub(super) fn unique(&mut self, name: &str) -> String {
        let base = sanitize(name);
        let mut n = base.clone();
        let mut k = 1;
        while self.names.contains(&n) {
            n = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(n.clone());
        n
    }

    /// The value of ONNX name `name` (an empty name is a missing optional input).
    pub(super) fn val(&self, name: &str) -> Result<&Val, String> {
        self.vals.get(name).ok_or_else(|| format!("input `{name}` is not defined before the node"))
    }

    /// The type of an IR value.
    pub(super) fn ty(&self, r: Ref) -> &TensorType {
        match r {
            Ref::Param(i) => &self.params[i].1,
            Ref::Stmt(i) => &self.stmts[i].ty,
        }
    }

    fn ref_name(&self, r: Ref) -> &str {
        match r {
            Ref::Param(i) => &self.params[i].0,
            Ref::Stmt(i) => &self.stmts[i].name,
        }
    }

    /// The shape of any value.
    pub(super) fn shape_of(&self, v: &Val) -> Vec<u64> {
        match v {
            Val::Host(h) => h.shape.clone(),
            Val::Ir { r, .. } => self.ty(*r).shape.clone(),
        }
    }

    /// A weight parameter holding host value `h` (once per ONNX name), its
    /// floats saturated into the storage dtype's finite range.
    pub(super) fn materialize(&mut self, onnx: &str, h: &HostTensor) -> Result<Ref, String> {
        if let Some(&r) = self.materialized.get(onnx) {
            return Ok(r);
        }
        let dtype = self.ir_dtype(h.elem)?;
        let ty = TensorType::new(dtype, h.shape.clone());
        // One pass (an embedding table is tens of millions of values).
        let values = h.data.iter().map(|&v| saturate(dtype, v));
        let name = self.unique(onnx);
        self.weights.insert(name.clone(), Tensor::rounded(ty.clone(), values));
        self.weight_refs.insert(name.clone(), WeightRef { file: self.weights_file.clone(), tensor: onnx.to_string() });
        self.params.push((name, ty));
        let r = Ref::Param(self.params.len() - 1);
        self.materialized.insert(onnx.to_string(), r);
        Ok(r)
    }

    /// Input `name` as an IR value (host values become weights).
    pub(super) fn ir(&mut self, name: &str) -> Result<(Ref, i32), String> {
        match self.val(name)?.clone() {
            Val::Ir { r, elem } => Ok((r, elem)),
            Val::Host(h) => Ok((self.materialize(name, &h)?, h.elem)),
        }
    }

    /// Input `name` as an operand where a literal is allowed: a one-element
    /// host value becomes a literal (saturated like a weight).
    pub(super) fn operand(&mut self, name: &str) -> Result<(POperand, i32), String> {
        if let Val::Host(h) = self.val(name)? {
            if h.data.len() == 1 && h.shape.len() <= 1 {
                let dtype = self.ir_dtype(h.elem)?;
                return Ok((POperand::Scalar(saturate(dtype, h.data[0])), h.elem));
            }
        }
        let (r, elem) = self.ir(name)?;
        Ok((POperand::Value(r), elem))
    }

    /// The checker's op and type of `op(operands) {attrs} [: annotation]`.
    fn typed(
        &self,
        op: &str,
        operands: &[POperand],
        attrs: &[(&str, Attr)],
        annotation: Option<&TensorType>,
    ) -> Result<(crate::ir::Op, TensorType), String> {
        let args: Vec<Arg<'_>> = operands
            .iter()
            .map(|o| match o {
                POperand::Value(r) => Arg::Value(self.ty(*r)),
                POperand::Scalar(x) => Arg::Literal(*x),
            })
            .collect();
        let attrs: Vec<(String, Attr)> = attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        infer(op, &args, &attrs, annotation).map_err(|e| e.message)
    }

    /// The type the IR's checker gives `op(operands) {attrs}`.
    pub(super) fn infer(&self, op: &str, operands: &[POperand], attrs: &[(&str, Attr)]) -> Result<TensorType, String> {
        self.typed(op, operands, attrs, None).map(|(_, ty)| ty)
    }

    /// Appends `%name = op(operands) {attrs} [: annotation]`, typed by the IR's checker.
    pub(super) fn push(
        &mut self,
        name: &str,
        op: &str,
        operands: &[POperand],
        attrs: &[(&str, Attr)],
        annotation: Option<&TensorType>,
    ) -> Result<Ref, String> {
        let (op, ty) = self.typed(op, operands, attrs, annotation)?;
        let name = self.unique(name);
        self.stmts.push(Stmt { name, op, operands: operands.to_vec(), ty });
        Ok(Ref::Stmt(self.stmts.len() - 1))
    }

    /// Builds the function: parameters (inputs, then weights), statements, results.
    fn finish(self, name: &str, results: Vec<Ref>, inputs: Vec<Io>, outputs: Vec<Io>) -> Result<Imported, String> {
        let mut b = Builder::new(&sanitize(if name.is_empty() { "model" } else { name }));
        let mut params = Vec::new();
        for (n, ty) in &self.params {
            params.push(b.param(n, ty.clone(), 0..0).map_err(|e| e.to_string())?);
        }
        let mut stmts: Vec<ValueId> = Vec::new();
        let resolve = |r: Ref, stmts: &[ValueId]| match r {
            Ref::Param(i) => params[i],
            Ref::Stmt(i) => stmts[i],
        };
        for s in &self.stmts {
            let operands: Vec<Operand> = s
                .operands
                .iter()
                .map(|o| match *o {
                    POperand::Value(r) => Operand::Value(resolve(r, &stmts)),
                    POperand::Scalar(x) => Operand::Scalar(x),
                })
                .collect();
            let v =
                b.push_op(&s.name, &s.op, &operands, Some(&s.ty), 0..0).map_err(|e| format!("`%{}`: {e}", s.name))?;
            stmts.push(v);
        }
        let results = results.into_iter().map(|r| resolve(r, &stmts)).collect();
        let mut func = b.finish(results);
        func.weights = self.weight_refs;
        // The program as `jalc import` writes it, read back: every statement
        // then has its own span in `text` (diagnostics and kernels locate by it).
        let text = crate::ir::printer::print(&func);
        let func = crate::front::tir::parse_and_check(&text).map_err(|d| {
            format!("the imported program does not re-read: {}", d.first().map_or("", |d| d.message.as_str()))
        })?;
        Ok(Imported { func, text, weights: self.weights, inputs, outputs })
    }

    /// One live node: folded when every input is known, else converted.
    fn node(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let first = n.output.first().map(String::as_str).unwrap_or("");
        if self.gelu_inner.contains(first) {
            // Inside a fused GELU: nothing reads it.
            return Ok(Vec::new());
        }
        if let Some(x) = self.gelus.get(first).map(|p| p.x.clone()) {
            let (x, elem) = self.ir(&x)?;
            let none = ("approx", Attr::Str("none".into()));
            let r = self.push(first, "gelu", &[POperand::Value(x)], &[none], None)?;
            return Ok(vec![Val::Ir { r, elem }]);
        }
        if let Some(folded) = super::fold::fold(self, n)? {
            return Ok(folded.into_iter().map(Val::Host).collect());
        }
        super::convert::convert(self, n)
    }
}

/// `v` clamped into the finite range of float dtype `d` (integers unchanged).
pub fn saturate(d: ScalarType, v: f64) -> f64 {
    match d.chip() {
        Some(c) if d.is_float() && v.is_finite() => {
            let max = jpu_isa::numerics::max_finite(c);
            v.clamp(-max, max)
        }
        _ => v,
    }
}

fn dims(s: &[u64]) -> String {
    s.iter().map(u64::to_string).collect::<Vec<_>>().join("x")
}

fn declared_text(d: &[Option<u64>]) -> String {
    let parts: Vec<String> = d.iter().map(|d| d.map_or("?".into(), |v| v.to_string())).collect();
    format!("[{}]", parts.join(", "))
}
