//! ONNX import (`jalc::front::onnx::import`) end to end: models from
//! `testsuite/cases/onnx/models.py` imported at fixed shapes, compiled,
//! simulated (race checking on) and compared with onnxruntime's outputs
//! committed beside them: f32 within 1e-4 x max|ref|, bf16 with cosine
//! similarity >= 0.999 per row; the imported program's printed form; its
//! `.tir` + safetensors round trip; and the import's errors.

use std::path::{Path, PathBuf};

use jalc::front::onnx::{self, ImportOptions, Imported, Precision};
use jpu_testsuite::onnx::{min_cosine, relative_error, run};

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/onnx").join(name)
}

fn npy(name: &str) -> (Vec<u64>, Vec<f64>) {
    jpu_runtime::io::read_npy_f64(&case(name), 1 << 24).unwrap()
}

fn import(model: &str, shapes: &[(&str, &[u64])], precision: Precision) -> Imported {
    let opts = ImportOptions {
        input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect(),
        precision,
        weights_file: "weights.safetensors".into(),
    };
    let m = onnx::read(&case(model)).unwrap();
    onnx::import(&m, model, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that each output of `m` has the shape of `<prefix>-ref-<name>.npy`
/// and is within `1e-5 x max|ref|` of it (`what` names the run).
fn assert_matches_refs(m: &Imported, out: &[jalc::eval::Tensor], prefix: &str, what: &str) {
    for (io, got) in m.outputs.iter().zip(out) {
        let (shape, want) = npy(&format!("{prefix}-ref-{}.npy", io.onnx));
        assert_eq!(got.ty.shape, shape, "{what} {}", io.onnx);
        let e = relative_error(&got.data, &want);
        assert!(e <= 1e-5, "{what} {}: relative error {e:e}", io.onnx);
    }
}

const BERT_SHAPES: &[(&str, &[u64])] = &[("input_ids", &[2, 24]), ("attention_mask", &[2, 24])];

/// A one-layer BERT as exporters write it (shape arithmetic, embeddings, the
/// f32::MIN key-padding mask, heads by Reshape + Transpose, erf-GELU, mean
/// pooling) matches onnxruntime: in f32 within 1e-4 x max|ref| on both targets
/// at -O0 and -O2, in bf16 with cosine >= 0.999 for every valid token and
/// sentence; nothing is NaN, padded rows included.
#[test]
fn bert_tiny_matches_onnxruntime() {
    let (ids, mask) = (npy("bert-tiny-ids.npy").1, npy("bert-tiny-mask.npy").1);
    let (tokens, sentences) = (npy("bert-tiny-ref-tokens.npy").1, npy("bert-tiny-ref-sentence.npy").1);
    let f32_model = import("bert-tiny.onnx", BERT_SHAPES, Precision::F32);
    for (target, level) in [("jpu-tiny", 0), ("jpu-tiny", 2), ("jpu1", 2)] {
        let out = run(&f32_model, target, level, &[ids.clone(), mask.clone()]);
        let (e_tok, e_sen) = (relative_error(&out[0].data, &tokens), relative_error(&out[1].data, &sentences));
        assert!(e_tok <= 1e-4 && e_sen <= 1e-4, "{target} -O{level}: errors {e_tok:e} {e_sen:e}");
    }
    let bf16_model = import("bert-tiny.onnx", BERT_SHAPES, Precision::Bf16);
    let out = run(&bf16_model, "jpu-tiny", 2, &[ids, mask.clone()]);
    assert!(out.iter().all(|t| t.data.iter().all(|x| x.is_finite())), "NaN or inf in bf16");
    let valid = |row: usize| mask[row] != 0.0;
    let (c_tok, c_sen) =
        (min_cosine(&out[0].data, &tokens, 32, valid), min_cosine(&out[1].data, &sentences, 32, |_| true));
    assert!(c_tok >= 0.999 && c_sen >= 0.999, "bf16 cosines {c_tok} {c_sen}");
}

/// Every op of `ops23.onnx` (opset 23) matches onnxruntime in f32 on jpu-tiny.
#[test]
fn opset_23_ops_match_onnxruntime() {
    let m = import("ops23.onnx", &[], Precision::F32);
    let x = npy("ops23-x.npy").1;
    for level in [0, 2] {
        let out = run(&m, "jpu-tiny", level, std::slice::from_ref(&x));
        assert_matches_refs(&m, &out, "ops23", &format!("-O{level}"));
    }
}

/// The imported program's printed form: every shape computation folded away,
/// names from the ONNX graph, the f32::MIN mask constant saturated into bf16's
/// range (so it stays finite).
#[test]
fn the_imported_program_prints_folded_and_named() {
    let m = import("bert-tiny.onnx", BERT_SHAPES, Precision::Bf16);
    let text = jalc::ir::printer::print(&m.func);
    insta::assert_snapshot!("bert_tiny_imported", text);
    // Left on the chip: the embeddings, the mask, the layer and the pooling
    // (its Expand is a splat, and its two sums over the sequence are matmuls
    // by a ones row); no shape arithmetic.
    let count = |op: &str| m.func.nodes.iter().filter(|n| n.op.name() == op).count();
    assert_eq!((count("iota"), count("const"), count("concat"), count("slice")), (0, 3, 0, 0), "{text}");
    assert_eq!(count("reduce_sum"), 0, "{text}");
    assert!(text.contains("-3.3895313892515355e38"), "the mask constant is not saturated into bf16:\n{text}");
}

/// `jalc import`'s two files read back as the same program and values.
#[test]
fn imported_tir_and_safetensors_round_trip() {
    let m = import("bert-tiny.onnx", BERT_SHAPES, Precision::Bf16);
    let dir = std::env::temp_dir().join(format!("jalc-import-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = jalc::ir::printer::print(&m.func);
    let bytes = jalc::weights::serialize(&m.weights, &m.func.weights).unwrap();
    std::fs::write(dir.join("weights.safetensors"), bytes).unwrap();
    let f = jalc::front::tir::parse_and_check(&text).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(jalc::ir::printer::print(&f), text);
    let loaded = jalc::weights::load(&f, &dir).unwrap();
    assert_eq!(loaded, m.weights);
    std::fs::remove_dir_all(&dir).ok();
}

/// Import errors name the model, the node or input, and what is wrong.
#[test]
fn import_errors_say_what_and_where() {
    let err = |model: &str, shapes: &[(&str, &[u64])]| {
        let opts = ImportOptions {
            input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect(),
            ..Default::default()
        };
        onnx::import(&onnx::read(&case(model)).unwrap(), model, &opts).unwrap_err().to_string()
    };
    let e = err("unsupported.onnx", &[]);
    for want in
        ["3 unsupported op type(s)", "Conv x2 (/layer/Conv_2, /layer/Conv_4)", "Mod x1", "com.microsoft.FastGelu x1"]
    {
        assert!(e.contains(want), "{e}\nwanted: {want}");
    }
    let e = err("bert-tiny.onnx", &[]);
    assert!(
        e.contains("input `input_ids` has dynamic dims [?, ?]: give its shape with --input-shape input_ids=D0xD1..."),
        "{e}"
    );
    let e = err("bert-tiny.onnx", &[("input_ids", &[2, 24]), ("attention_mask", &[2, 24]), ("tokens", &[1])]);
    assert!(e.contains("--input-shape names `tokens`, which is not an input of the model"), "{e}");
    let e = err("ops23.onnx", &[("x", &[4, 7])]);
    assert!(e.contains("--input-shape x=4x7 does not match its declared dims [4, 6]"), "{e}");
    // A shape the graph's own arithmetic refuses is located at its node.
    let e = err("bert-tiny.onnx", &[("input_ids", &[2, 100]), ("attention_mask", &[2, 100])]);
    assert!(e.contains("node `/layer/Gather_") || e.contains("node `/layer/Add_"), "{e}");
}

/// Import never panics on damaged models: every 7th truncation and 2,000
/// random 4-byte corruptions of `bert-tiny.onnx` that still decode import to
/// a program or an error; programs that import also compile or fail cleanly.
#[test]
fn damaged_models_import_or_fail_cleanly() {
    let bytes = std::fs::read(case("bert-tiny.onnx")).unwrap();
    let opts = ImportOptions {
        input_shapes: BERT_SHAPES.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect(),
        ..Default::default()
    };
    let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
    let attempt = |b: &[u8]| {
        let Ok(m) = onnx::decode(b, &case(""), "damaged.onnx") else { return };
        if let Ok(im) = onnx::import(&m, "damaged.onnx", &opts) {
            let c = jalc::driver::Options { weights: std::sync::Arc::new(im.weights), ..jalc::driver::Options::at(2) };
            let _ = jalc::driver::compile(&im.func, &t, &c);
        }
    };
    for cut in (0..bytes.len()).step_by(7) {
        attempt(&bytes[..cut]);
    }
    for b in jpu_testsuite::mutations(&bytes, 0x9e37_79b9_7f4a_7c15u64, 2000) {
        attempt(&b);
    }
}

/// Attention (opset 23: grouped KV heads with a boolean mask and a scale;
/// causal over 3-D inputs with head counts) and Trilu (runtime and folded)
/// match onnxruntime in f32 on jpu-tiny; the attentions become the fused kernel.
#[test]
fn opset_23_attention_and_trilu_match_onnxruntime() {
    let m = import("attention23.onnx", &[], Precision::F32);
    let inputs: Vec<Vec<f64>> = m.inputs.iter().map(|io| npy(&format!("attention23-{}.npy", io.onnx)).1).collect();
    let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
    let opts = jalc::driver::Options { weights: std::sync::Arc::new(m.weights.clone()), ..jalc::driver::Options::o2() };
    let kinds: Vec<&str> =
        jalc::driver::compile(&m.func, &t, &opts).unwrap().kernels.iter().map(|k| k.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "attention").count(), 2, "{kinds:?}");
    for level in [0, 2] {
        let out = run(&m, "jpu-tiny", level, &inputs);
        assert_matches_refs(&m, &out, "attention23", &format!("-O{level}"));
    }
}

/// Exact GELUs written out (three operand orders, by `/ sqrt 2` and by
/// `* (1 / sqrt 2)`) import as one `gelu` under bf16 storage and as written
/// under f32; a wrong constant, or an inner value the graph also returns, keeps
/// the chain. Both modes match onnxruntime (f32 within 1e-5 x max|ref|, bf16 with
/// cosine >= 0.9999 per row).
#[test]
fn written_out_gelus_fuse_under_bf16() {
    let x = npy("gelu-forms-x.npy").1;
    let bf16 = import("gelu-forms.onnx", &[], Precision::Bf16);
    assert_eq!(bf16.text.matches(" = gelu(").count(), 3, "{}", bf16.text);
    assert_eq!(bf16.text.matches(" = erf(").count(), 2, "{}", bf16.text);
    let f32_model = import("gelu-forms.onnx", &[], Precision::F32);
    assert!(!f32_model.text.contains(" = gelu("), "{}", f32_model.text);
    let out = run(&f32_model, "jpu-tiny", 2, std::slice::from_ref(&x));
    assert_matches_refs(&f32_model, &out, "gelu-forms", "f32");
    let out = run(&bf16, "jpu-tiny", 2, std::slice::from_ref(&x));
    for (io, got) in bf16.outputs.iter().zip(&out) {
        let want = npy(&format!("gelu-forms-ref-{}.npy", io.onnx)).1;
        let c = min_cosine(&got.data, &want, 16, |_| true);
        assert!(c >= 0.9999, "bf16 {}: cosine {c}", io.onnx);
    }
}

/// Cast from float to integers at run time truncates toward zero, as ONNX
/// says (the chip's cast rounds to nearest; the importer corrects by one), on
/// to int32, int8 and int4 (kept in i32), exactly as the reference evaluator:
/// from f32 and from bf16 storage (the inputs are chosen so that rounding them
/// to bf16 keeps their truncation).
#[test]
fn float_to_int_casts_truncate() {
    let x = npy("cast-trunc-x.npy").1;
    for precision in [Precision::F32, Precision::Bf16] {
        let m = import("cast-trunc.onnx", &[], precision);
        for target in ["jpu-tiny", "jpu1"] {
            let out = run(&m, target, 2, std::slice::from_ref(&x));
            for (io, got) in m.outputs.iter().zip(&out) {
                let want = npy(&format!("cast-trunc-ref-{}.npy", io.onnx)).1;
                assert_eq!(got.data, want, "{precision:?} {target} {}", io.onnx);
            }
        }
    }
}
