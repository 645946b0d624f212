//! Reading ONNX models in pure Rust: the protobuf types ([`proto`]) are
//! generated from ONNX 1.22's schema (`compiler/proto/onnx.proto`) by `protox`
//! and `prost-build` in `tools/onnx-proto-gen` and committed; no `protoc`, and
//! the compiler's build carries neither generator. This module owns turning a file into a checked
//! [`Model`]: the size limit, the protobuf decoding, the opset range the
//! importer knows, and tensors stored as external data (`location`, `offset`,
//! `length`, the path confined to the model's folder) read into the model.
//! Every failure is an [`OnnxError`] naming the file and what is wrong; no input
//! makes it panic.

use std::path::{Component, Path};

use prost::Message;

/// The ONNX protobuf types (package `onnx`), generated from ONNX 1.22's
/// schema by `tools/onnx-proto-gen` (then `cargo fmt`).
#[allow(missing_docs, clippy::all)]
pub mod proto;

mod cast;
mod convert;
mod fold;
pub mod host;
pub mod import;
mod patterns;

pub use import::{import, ImportOptions, Imported, Io, Precision};

/// Opsets of the default domain the importer accepts: 13 to the newest the
/// `onnx` 1.22 wheel defines.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=27;

/// Largest model file read, and largest total of external data.
pub const MAX_BYTES: u64 = 64 << 30;

/// Why a model could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct OnnxError {
    /// The file concerned (the model, or an external data file).
    pub file: String,
    /// What is wrong with it.
    pub message: String,
}

/// A decoded model whose external data is loaded.
#[derive(Debug, Clone)]
pub struct Model {
    /// The protobuf model.
    pub proto: proto::ModelProto,
    /// The default domain's opset version.
    pub opset: i64,
}

impl Model {
    /// The main graph.
    pub fn graph(&self) -> &proto::GraphProto {
        self.proto.graph.as_ref().expect("checked when read")
    }
}

/// Reads the model at `path` (external data from its folder).
pub fn read(path: &Path) -> Result<Model, OnnxError> {
    let err = |m: String| OnnxError { file: path.display().to_string(), message: m };
    let len = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?.len();
    if len > MAX_BYTES {
        return Err(err(format!("{len} bytes; models of more than {MAX_BYTES} bytes are refused")));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    decode(&bytes, path.parent().unwrap_or(Path::new(".")), &path.display().to_string())
}

/// Decodes model bytes named `file`, reading external data relative to `dir`.
pub fn decode(bytes: &[u8], dir: &Path, file: &str) -> Result<Model, OnnxError> {
    let err = |m: String| OnnxError { file: file.to_string(), message: m };
    let mut proto = proto::ModelProto::decode(bytes).map_err(|e| err(format!("not a valid ONNX model: {e}")))?;
    let default_opsets: Vec<i64> = proto
        .opset_import
        .iter()
        .filter(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .map(|o| o.version.unwrap_or(0))
        .collect();
    let opset = match default_opsets[..] {
        [v] if OPSETS.contains(&v) => v,
        [v] => {
            return Err(err(format!(
                "opset {v} of the default domain is not supported (supported: {} to {})",
                OPSETS.start(),
                OPSETS.end()
            )))
        }
        [] => return Err(err("the model imports no opset of the default domain".into())),
        _ => return Err(err("the model imports the default domain more than once".into())),
    };
    let Some(graph) = proto.graph.as_mut() else { return Err(err("the model has no graph".into())) };
    let mut loaded = 0u64;
    for t in &mut graph.initializer {
        load_external(t, dir, &mut loaded).map_err(err)?;
    }
    Ok(Model { proto, opset })
}

/// Reads an initializer's external data into `raw_data`.
fn load_external(t: &mut proto::TensorProto, dir: &Path, loaded: &mut u64) -> Result<(), String> {
    const EXTERNAL: i32 = proto::tensor_proto::DataLocation::External as i32;
    if t.data_location != Some(EXTERNAL) {
        return Ok(());
    }
    let name = t.name.clone().unwrap_or_default();
    let entry =
        |key: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(key)).and_then(|e| e.value.clone());
    let location = entry("location").ok_or_else(|| format!("tensor `{name}` is external but names no location"))?;
    let number = |key: &str| -> Result<Option<u64>, String> {
        entry(key)
            .map(|v| v.parse::<u64>().map_err(|_| format!("tensor `{name}`: {key} `{v}` is not a number")))
            .transpose()
    };
    let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
    let rel = Path::new(&location);
    if location.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!(
            "tensor `{name}`: external data location \"{location}\" must be a relative path inside the model's folder"
        ));
    }
    let path = dir.join(rel);
    let size =
        std::fs::metadata(&path).map_err(|e| format!("tensor `{name}`: cannot read {}: {e}", path.display()))?.len();
    let length = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "tensor `{name}`: bytes {offset}..+{length} run past the end of {} ({size} bytes)",
            path.display()
        ));
    }
    *loaded = loaded.saturating_add(length);
    if *loaded > MAX_BYTES {
        return Err(format!("external data beyond {MAX_BYTES} bytes is refused"));
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(&path).map_err(|e| format!("tensor `{name}`: cannot read {}: {e}", path.display()))?;
    let mut data = vec![0u8; length as usize];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut data))
        .map_err(|e| format!("tensor `{name}`: cannot read {}: {e}", path.display()))?;
    t.raw_data = Some(data);
    t.data_location = Some(proto::tensor_proto::DataLocation::Default as i32);
    t.external_data.clear();
    Ok(())
}
