//! Subgraphs the importer turns into one IR op under bf16 storage.
//!
//! Exporters write the exact GELU out as `x * (1 + erf(x / sqrt 2)) * 0.5` (or
//! `(x * 0.5) * (1 + erf(x / sqrt 2))`, or with `x * (1 / sqrt 2)`). With bf16
//! storage every step of that chain would round to bf16; one `gelu` computes it
//! in f32 and rounds once, which is closer to the model's f32 numerics and lets
//! a GEMM epilogue apply it on the ACT. Under f32 storage the chain is imported
//! as written (the model's own roundings).
//!
//! Guarantees: a pattern is fused only when its constants (initializers or
//! `Constant` nodes) hold the expected values and every inner value has no
//! reader outside the pattern; otherwise every node converts as usual.

use std::collections::{HashMap, HashSet};

use super::fold::constant;
use super::host::HostTensor;
use super::proto::{GraphProto, NodeProto};

/// An exact GELU written out: its input, the constants it needs (value name and
/// expected value), and the inner values it replaces.
#[derive(Debug, Clone)]
pub struct ErfGelu {
    /// The ONNX value the GELU applies to.
    pub x: String,
    /// (ONNX value, the value it must hold).
    pub constants: Vec<(String, f64)>,
    /// Inner values, read only inside the pattern.
    pub inner: Vec<String>,
}

/// The written-out exact GELUs among `live` (graph `g`'s live nodes in order),
/// by the name of each one's final output.
pub fn erf_gelus(g: &GraphProto, live: &[&NodeProto]) -> HashMap<String, ErfGelu> {
    let outputs: HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let producer: HashMap<&str, &NodeProto> =
        live.iter().flat_map(|&n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    // A one-element constant: an initializer or a `Constant` node's value.
    let scalar = |v: &str| -> Option<f64> {
        let t = match g.initializer.iter().find(|t| t.name.as_deref() == Some(v)) {
            Some(t) => HostTensor::from_proto(t).ok()?,
            None => {
                producer.get(v).filter(|n| n.op_type.as_deref() == Some("Constant")).and_then(|n| constant(n).ok())?
            }
        };
        (t.data.len() == 1).then(|| t.data[0])
    };
    let holds = |(v, want): &(String, f64)| scalar(v).is_some_and(|c| (c - want).abs() <= 1e-6 * want.abs());
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in live {
        for i in &n.input {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    let only_here = |v: &str| readers.get(v).copied() == Some(1) && !outputs.contains(v);
    let mut found = HashMap::new();
    for &n in live {
        let Some(out) = n.output.first() else { continue };
        if let Some(gelu) = match_final(n, &producer) {
            if gelu.inner.iter().all(|v| only_here(v)) && gelu.constants.iter().all(holds) {
                found.insert(out.clone(), gelu);
            }
        }
    }
    found
}

/// The node computing `v`, if it is a `op` node with two inputs.
fn binary<'a>(producer: &HashMap<&str, &'a NodeProto>, v: &str, op: &str) -> Option<(&'a str, &'a str)> {
    let n = producer.get(v)?;
    (n.op_type.as_deref() == Some(op) && n.input.len() == 2).then(|| (n.input[0].as_str(), n.input[1].as_str()))
}

/// Either order of a commutative operation's inputs where `pick` accepts the first.
fn either<'a, T>(a: &'a str, b: &'a str, pick: impl Fn(&'a str, &'a str) -> Option<T>) -> Option<T> {
    pick(a, b).or_else(|| pick(b, a))
}

/// `1 + erf(x / sqrt 2)` (or `x * (1 / sqrt 2)`) computed as `v`, for `x`
/// given: its constants and inner values.
fn one_plus_erf(producer: &HashMap<&str, &NodeProto>, v: &str, x: &str) -> Option<ErfGelu> {
    let (a, b) = binary(producer, v, "Add")?;
    either(a, b, |e, one| {
        let erf = producer.get(e).filter(|n| n.op_type.as_deref() == Some("Erf") && n.input.len() == 1)?;
        let arg = erf.input[0].as_str();
        let scaled = binary(producer, arg, "Div")
            .filter(|&(num, _)| num == x)
            .map(|(_, c)| (c, std::f64::consts::SQRT_2))
            .or_else(|| {
                let (p, q) = binary(producer, arg, "Mul")?;
                either(p, q, |num, c| (num == x).then_some((c, std::f64::consts::FRAC_1_SQRT_2)))
            })?;
        let constants = vec![(one.to_string(), 1.0), (scaled.0.to_string(), scaled.1)];
        Some(ErfGelu { x: x.to_string(), constants, inner: vec![arg.to_string(), e.to_string(), v.to_string()] })
    })
}

/// The final `Mul` of an exact GELU: `(x * (1 + erf)) * 0.5` or
/// `(x * 0.5) * (1 + erf)`, in any operand order.
fn match_final(n: &NodeProto, producer: &HashMap<&str, &NodeProto>) -> Option<ErfGelu> {
    if n.op_type.as_deref() != Some("Mul") || n.input.len() != 2 {
        return None;
    }
    let (a, b) = (n.input[0].as_str(), n.input[1].as_str());
    // The 0.5 and the inner product it joins.
    let finish = |mut gelu: ErfGelu, half: &str, product: &str| {
        gelu.constants.push((half.to_string(), 0.5));
        gelu.inner.push(product.to_string());
        gelu
    };
    let half_last = either(a, b, |m, half| {
        let (p, q) = binary(producer, m, "Mul")?;
        either(p, q, |x, s| Some(finish(one_plus_erf(producer, s, x)?, half, m)))
    });
    half_last.or_else(|| {
        either(a, b, |h, s| {
            let (p, q) = binary(producer, h, "Mul")?;
            either(p, q, |x, half| Some(finish(one_plus_erf(producer, s, x)?, half, h)))
        })
    })
}
