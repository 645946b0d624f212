//! A real model end to end: paraphrase-MiniLM-L3-v2 (BERT, 3 layers, 17.2 M
//! parameters, 354 ONNX nodes), fetched by `testsuite/models/fetch.py` (CI runs
//! it first; this test fails, never skips, without it), imported at batch 1 and
//! batch 4 (rows padded) x seq 128, compiled for jpu1, simulated with race
//! checking and compared with onnxruntime's outputs (`testsuite/cases/minilm/`):
//! in bf16 every valid token's embedding and every sentence embedding has
//! cosine similarity >= 0.999; in f32 the error is <= 1e-4 x max|ref|; nothing
//! is NaN, padded rows included.

use std::path::{Path, PathBuf};

use jalc::front::onnx::{self, ImportOptions, Precision};
use jpu_testsuite::onnx::{min_cosine, relative_error, run};

fn model() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/paraphrase-MiniLM-L3-v2.onnx");
    assert!(path.exists(), "{} is missing: run `python3 testsuite/models/fetch.py`", path.display());
    path
}

fn npy(name: &str) -> Vec<f64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/minilm").join(name);
    jpu_runtime::io::read_npy_f64(&path, 1 << 24).unwrap().1
}

fn check(case: &str, batch: u64, precision: Precision) {
    let shape = vec![batch, 128];
    let opts = ImportOptions {
        input_shapes: vec![("input_ids".into(), shape.clone()), ("attention_mask".into(), shape)],
        precision,
        weights_file: "minilm.safetensors".into(),
    };
    let m = onnx::import(&onnx::read(&model()).unwrap(), "minilm", &opts).unwrap();
    let (ids, mask) = (npy(&format!("{case}-ids.npy")), npy(&format!("{case}-mask.npy")));
    let (tokens, sentences) = (npy(&format!("{case}-tokens.npy")), npy(&format!("{case}-sentence.npy")));
    let out = run(&m, "jpu1", 2, &[ids.clone(), mask.clone()]);
    // Outputs: input_ids, attention_mask (passed through), token embeddings, sentence embedding.
    assert_eq!(out[0].data, ids, "input_ids passed through exactly");
    assert_eq!(out[1].data, mask, "attention_mask passed through exactly");
    let what = format!("{case} {precision:?}");
    assert!(out.iter().all(|t| t.data.iter().all(|x| x.is_finite())), "{what}: NaN or inf");
    if precision == Precision::F32 {
        let (e_tok, e_sen) = (relative_error(&out[2].data, &tokens), relative_error(&out[3].data, &sentences));
        eprintln!("{what}: max error / max|ref|: tokens {e_tok:.2e}, sentences {e_sen:.2e}");
        assert!(e_tok <= 1e-4 && e_sen <= 1e-4, "{what}: errors {e_tok:e} {e_sen:e}");
    } else {
        let c_tok = min_cosine(&out[2].data, &tokens, 384, |row| mask[row] != 0.0);
        let c_sen = min_cosine(&out[3].data, &sentences, 384, |_| true);
        eprintln!("{what}: smallest cosine: valid tokens {c_tok:.6}, sentences {c_sen:.6}");
        assert!(c_tok >= 0.999 && c_sen >= 0.999, "{what}: cosines {c_tok} {c_sen}");
    }
}

#[test]
fn minilm_batch_1_bf16_matches_onnxruntime() {
    check("b1", 1, Precision::Bf16);
}

#[test]
fn minilm_batch_4_padded_bf16_matches_onnxruntime() {
    check("b4", 4, Precision::Bf16);
}

#[test]
fn minilm_batch_4_padded_f32_matches_onnxruntime() {
    check("b4", 4, Precision::F32);
}
