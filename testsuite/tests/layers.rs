//! Whole Transformer layers as frameworks export them (`testsuite/cases/layers/`),
//! small shapes: each compiles and verifies race-checked at -O0 and -O2 on both
//! targets against the reference evaluator.

use jalc::driver::{compile, Options};
use jalc::front::tir;
use jpu_isa::Target;

fn layer(name: &str) -> (String, jalc::ir::Func) {
    let path = format!("{}/cases/layers/{name}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap();
    let f = tir::parse_and_check(&src).unwrap_or_else(|d| panic!("{}", tir::render(&path, &src, &d)));
    (src, f)
}

/// The Llama-style decoder layer: the head split and merge fold into the
/// attention kernel (no copy of Q, K, V or the attention result), only RoPE's
/// halves, its concat and the expanded cos/sin tables are copies.
#[test]
fn llama_decoder_layer_verifies() {
    let (src, f) = layer("llama-decoder.tir");
    jpu_testsuite::verify_everywhere(&f, &src, 3);
    let c = compile(&f, &Target::builtin("jpu1").unwrap(), &Options::o2()).unwrap();
    let copies: Vec<String> = c.kernels.iter().filter(|k| k.kind() == "copy").map(|k| k.statement()).collect();
    assert_eq!(copies.len(), 10, "{copies:#?}\n{src}");
    assert!(copies.iter().all(|s| !s.contains("transpose") && !s.contains("%v =")), "{copies:#?}");
    assert_eq!(c.kernels.iter().filter(|k| k.kind() == "attention").count(), 1);
}

/// The decode step: one token against a KV cache that is grown by a concat and
/// returned; attention reads the grown cache in place on the decode path, and
/// no transpose is a kernel.
#[test]
fn llama_decode_step_verifies() {
    let (src, f) = layer("llama-decode-step.tir");
    jpu_testsuite::verify_everywhere(&f, &src, 3);
    let c = compile(&f, &Target::builtin("jpu1").unwrap(), &Options::o2()).unwrap();
    let attention = c
        .kernels
        .iter()
        .find_map(|k| k.as_any().downcast_ref::<jalc::kernels::attention::AttentionKernel>())
        .expect("one attention kernel");
    assert!(attention.plan.decode, "{}", attention.plan);
    assert_eq!((attention.p.k.tensor.as_str(), attention.p.v.tensor.as_str()), ("kall", "vall"));
    assert!(c.kernels.iter().all(|k| k.kind() != "transpose" && !k.statement().contains("transpose")));
}
