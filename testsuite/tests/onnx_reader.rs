//! The ONNX reader (`jalc::front::onnx`): models decoded in pure Rust with
//! their external data, the opset range, and errors (never panics) for
//! truncated or corrupted bytes and for external data outside the model's
//! folder. The models come from `testsuite/cases/onnx/gen.py`.

use std::path::{Path, PathBuf};

use jalc::front::onnx;

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/onnx").join(name)
}

#[test]
fn a_model_with_external_data_reads_completely() {
    let m = onnx::read(&case("tiny-external.onnx")).unwrap();
    assert_eq!(m.opset, 17);
    let g = m.graph();
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_deref().unwrap_or("")).collect();
    assert_eq!(ops, ["MatMul", "Add", "Relu"]);
    let w = g.initializer.iter().find(|t| t.name.as_deref() == Some("w")).unwrap();
    assert_eq!(w.dims, [4, 3]);
    let raw = w.raw_data.as_ref().expect("external data loaded into raw_data");
    let values: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let want: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
    assert_eq!(values, want, "bytes 64.. of tiny-external.bin");
}

#[test]
fn unsupported_opsets_and_escaping_locations_are_refused() {
    let e = onnx::read(&case("opset12.onnx")).unwrap_err();
    assert!(e.message.contains("opset 12 of the default domain is not supported (supported: 13 to 27)"), "{e}");
    // The same model pointing its external data outside the folder.
    let bytes = std::fs::read(case("tiny-external.onnx")).unwrap();
    let escaped = replace(&bytes, b"tiny-external.bin", b"../escaped.bin.xy");
    let e = onnx::decode(&escaped, &case(""), "escaped.onnx").unwrap_err();
    assert!(e.message.contains("must be a relative path inside the model's folder"), "{e}");
    let missing = onnx::read(Path::new("/nonexistent/model.onnx")).unwrap_err();
    assert!(missing.message.contains("cannot read"), "{missing}");
}

/// Every truncation and 3,000 random corruptions of a real model decode to a
/// model or an error; none panics.
#[test]
fn truncated_and_mutated_models_never_panic() {
    let bytes = std::fs::read(case("tiny-external.onnx")).unwrap();
    let dir = case("");
    for cut in 0..bytes.len() {
        let _ = onnx::decode(&bytes[..cut], &dir, "cut.onnx");
    }
    for b in jpu_testsuite::mutations(&bytes, 0x2545_f491_4f6c_dd1du64, 3000) {
        let _ = onnx::decode(&b, &dir, "mutated.onnx");
    }
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "same length keeps the protobuf valid");
    let at = hay.windows(from.len()).position(|w| w == from).expect("present");
    let mut out = hay.to_vec();
    out[at..at + from.len()].copy_from_slice(to);
    out
}
