//! Weights by name: a parameter declared `%w: bf16[64, 64] = "model.safetensors"["q.weight"]`
//! takes its value from a tensor of a safetensors file beside the program, so
//! no caller passes it. This module owns finding and reading those tensors:
//! the path rules (relative to the program's folder, never outside it), the
//! shape check, and the one conversion into the declared dtype (as `.npy`
//! inputs are converted). `jalc compile` puts them into the binary's constant
//! data; `jalc verify` and `jalc eval` use them as the parameters' values.

use std::collections::HashMap;
use std::path::{Component, Path};

use safetensors::tensor::{Dtype, SafeTensors};

use crate::eval::{round, Tensor};
use crate::ir::Func;

/// Largest safetensors file read (the chip's HBM holds 96 GiB; a host reading
/// more than this for one program is a mistake).
pub const MAX_FILE_BYTES: u64 = 64 << 30;

/// The loaded weights: each weight parameter's value, by parameter name.
pub type Weights = HashMap<String, Tensor>;

/// Refuses a weight path that could leave the program's folder.
pub fn check_path(file: &str) -> Result<(), String> {
    let p = Path::new(file);
    if file.is_empty() {
        return Err("a weight file name is empty".into());
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!(
            "weight file \"{file}\" must be a relative path inside the program's folder (no `..`, no root)"
        ));
    }
    Ok(())
}

/// Reads every weight of `f` from the files beside it (`dir`: the program's
/// folder); each file is read and its header parsed once.
pub fn load(f: &Func, dir: &Path) -> Result<Weights, String> {
    let mut by_file: std::collections::BTreeMap<&str, Vec<&crate::ir::Node>> = Default::default();
    for p in f.params() {
        let node = f.node(p);
        if let Some(w) = f.weights.get(&node.name) {
            check_path(&w.file)?;
            by_file.entry(&w.file).or_default().push(node);
        }
    }
    let mut out = Weights::new();
    for (file, nodes) in by_file {
        let bytes = read_limited(&dir.join(file))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{file}: not a valid safetensors file: {e}"))?;
        for node in nodes {
            let tensor = &f.weights[&node.name].tensor;
            out.insert(node.name.clone(), weight(&st, node, file, tensor)?);
        }
    }
    Ok(out)
}

/// Parameter `node`'s value: tensor `tensor` of `st` (file `file`), checked
/// against the declared shape and rounded into the declared dtype.
fn weight(st: &SafeTensors<'_>, node: &crate::ir::Node, file: &str, tensor: &str) -> Result<Tensor, String> {
    let at = || format!("weight `%{}` (\"{file}\"[\"{tensor}\"])", node.name);
    let view = st.tensor(tensor).map_err(|_| {
        let mut names = st.names();
        names.sort_unstable();
        let shown: Vec<&str> = names.iter().take(8).copied().collect();
        let more = if names.len() > 8 { ", ..." } else { "" };
        format!("{}: the file has no tensor \"{tensor}\" (it has {}: {}{more})", at(), names.len(), shown.join(", "))
    })?;
    let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
    if shape != node.ty.shape {
        return Err(format!("{}: the stored tensor has shape {shape:?}, but the program declares {}", at(), node.ty));
    }
    let values = decode(view.dtype(), view.data())
        .ok_or_else(|| format!("{}: stored dtype {:?} is not supported", at(), view.dtype()))?;
    let data = values.iter().map(|&v| round(node.ty.dtype, v)).collect();
    Ok(Tensor { ty: node.ty.clone(), data })
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read the weight file: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{shown}: {} bytes; weight files of more than {MAX_FILE_BYTES} bytes are refused",
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{shown}: cannot read the weight file: {e}"))
}

/// The exact values of little-endian elements of `dtype`.
fn decode(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f64>> {
    use jpu_isa::numerics::load_f64;
    use jpu_isa::DType as D;
    let chip = |d: D| bytes.chunks_exact(d.size_bytes() as usize).map(|c| load_f64(d, c)).collect();
    let le = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        Dtype::F32 => chip(D::F32),
        Dtype::BF16 => chip(D::Bf16),
        Dtype::F16 => chip(D::F16),
        Dtype::F8_E4M3 => chip(D::F8E4M3),
        Dtype::F8_E5M2 => chip(D::F8E5M2),
        Dtype::I8 => chip(D::I8),
        Dtype::I32 => chip(D::I32),
        Dtype::F64 => le(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        Dtype::I64 => le(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64).collect(),
        Dtype::I16 => le(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f64).collect(),
        Dtype::U8 | Dtype::BOOL => bytes.iter().map(|&b| b as f64).collect(),
        _ => return None,
    })
}

/// Each weight's bytes in its chip dtype, by parameter name (the binary's
/// constant data).
pub fn bytes(weights: &Weights) -> HashMap<String, Vec<u8>> {
    weights
        .iter()
        .map(|(name, t)| {
            let dtype = t.ty.dtype.storage();
            let size = dtype.size_bytes() as usize;
            let mut out = vec![0u8; t.data.len() * size];
            for (i, &v) in t.data.iter().enumerate() {
                jpu_isa::numerics::store_f64(dtype, v, &mut out[i * size..]);
            }
            (name.clone(), out)
        })
        .collect()
}

/// The weights as a safetensors file: each parameter's value in its chip
/// dtype, under the tensor name `refs` gives it (what [`load`] reads back).
pub fn serialize(
    weights: &Weights,
    refs: &std::collections::BTreeMap<String, crate::ir::WeightRef>,
) -> Result<Vec<u8>, String> {
    use jpu_isa::DType as D;
    let data = bytes(weights);
    let mut views = Vec::new();
    for (param, r) in refs {
        let (Some(t), Some(raw)) = (weights.get(param), data.get(param)) else {
            return Err(format!("weight `%{param}` has no value"));
        };
        let dtype = match t.ty.dtype.storage() {
            D::F32 => Dtype::F32,
            D::Bf16 => Dtype::BF16,
            D::F16 => Dtype::F16,
            D::F8E4M3 => Dtype::F8_E4M3,
            D::F8E5M2 => Dtype::F8_E5M2,
            D::I8 => Dtype::I8,
            D::I32 => Dtype::I32,
        };
        let shape: Vec<usize> = t.ty.shape.iter().map(|&d| d as usize).collect();
        let view = safetensors::tensor::TensorView::new(dtype, shape, raw).map_err(|e| format!("`%{param}`: {e}"))?;
        views.push((r.tensor.clone(), view));
    }
    safetensors::tensor::serialize(views, None).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn func(decl: &str) -> Func {
        let dtype = decl.split('[').next().unwrap_or("f32");
        let src = format!("func @f(%w: {decl}) -> {dtype}[2, 3] {{\n  %y = add(%w, 1.0)\n  return %y\n}}\n");
        crate::front::tir::parse_and_check(&src).expect("checks")
    }

    fn file(dir: &Path) -> Vec<u8> {
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 1.5).to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![2, 3], &data).unwrap();
        let bytes = safetensors::serialize([("w", view)], None).unwrap();
        std::fs::write(dir.join("m.safetensors"), &bytes).unwrap();
        bytes
    }

    #[test]
    fn loads_converts_and_refuses_what_does_not_match() {
        let dir = std::env::temp_dir().join(format!("jalc-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        file(&dir);
        let w = load(&func("f32[2, 3] = \"m.safetensors\"[\"w\"]"), &dir).unwrap();
        assert_eq!(w["w"].data, [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]);
        // One rounding into the declared dtype.
        let w = load(&func("bf16[2, 3] = \"m.safetensors\"[\"w\"]"), &dir).unwrap();
        assert_eq!(w["w"].ty.dtype, crate::ir::ScalarType::Bf16);
        let err = load(&func("f32[2, 3] = \"m.safetensors\"[\"v\"]"), &dir).unwrap_err();
        assert!(err.contains("has no tensor \"v\" (it has 1: w)"), "{err}");
        assert!(check_path("../x.safetensors").is_err() && check_path("/x").is_err() && check_path("a/b.st").is_ok());
    }

    /// Truncated and corrupted files are errors, never panics.
    #[test]
    fn truncated_and_mutated_files_never_panic() {
        let dir = std::env::temp_dir().join(format!("jalc-weights-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = file(&dir);
        let f = func("f32[2, 3] = \"m.safetensors\"[\"w\"]");
        for cut in 0..good.len() {
            std::fs::write(dir.join("m.safetensors"), &good[..cut]).unwrap();
            assert!(load(&f, &dir).is_err(), "a file cut at {cut} loaded");
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut bytes = good.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % bytes.len() as u64) as usize;
                bytes[at] = (state >> 32) as u8;
            }
            std::fs::write(dir.join("m.safetensors"), &bytes).unwrap();
            let _ = load(&f, &dir);
        }
    }
}
