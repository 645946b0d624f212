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

/// The BERT post-norm encoder layer: the written-out attention (scores in f32,
/// divided by sqrt(d), plus the extended key-padding mask) fuses into one
/// attention kernel that reads the `[B, 1, 1, S]` mask in place (stride 0 over
/// heads and query rows: never expanded in HBM), K's `[0, 2, 3, 1]` transpose
/// folds into the kernel's loads, and no data moves through a copy kernel.
#[test]
fn bert_encoder_layer_verifies() {
    let (src, f) = layer("bert-encoder.tir");
    jpu_testsuite::verify_everywhere(&f, &src, 3);
    let c = compile(&f, &Target::builtin("jpu1").unwrap(), &Options::o2()).unwrap();
    let kinds: Vec<&str> = c.kernels.iter().map(|k| k.kind()).collect();
    assert!(!kinds.contains(&"copy"), "{kinds:?}");
    let attention: Vec<&jalc::kernels::attention::AttentionKernel> =
        c.kernels.iter().filter_map(|k| k.as_any().downcast_ref()).collect();
    assert_eq!(attention.len(), 1, "{kinds:?}");
    let mask = &attention[0].p.mask.as_ref().expect("the mask is the fused op's operand").view;
    assert_eq!((mask.shape.clone(), mask.strides.clone()), (vec![2, 4, 24, 24], vec![24, 0, 0, 1]));
    let tensor = c.tiles.tensors.iter().find(|t| t.name == mask.tensor).unwrap();
    assert_eq!(tensor.shape, [2, 1, 1, 24], "the mask stays [B, 1, 1, S] in HBM");
}

/// Every projection of the BERT layer multiplies all batch rows by one weight:
/// each GEMM runs over `batch x seq` rows and reads its weight once; GEMMs with
/// a VE epilogue evacuate PSUM on the ACT; attention heads share K^T transposes;
/// and the kernels' instructions are
/// interleaved on the engines (some stream runs a later kernel's instruction
/// before an earlier kernel's), still race-free (verified above and here).
#[test]
fn bert_layer_folds_batches_and_interleaves_kernels() {
    let (src, f) = layer("bert-encoder.tir");
    let t = Target::builtin("jpu1").unwrap();
    let c = compile(&f, &t, &Options::o2()).unwrap();
    let gemms: Vec<&jalc::kernels::gemm::GemmKernel> =
        c.kernels.iter().filter_map(|k| k.as_any().downcast_ref()).collect();
    assert_eq!(gemms.len(), 6, "{src}");
    for g in &gemms {
        assert!(g.p.batch.is_empty() && g.p.m == 48, "{}: M = {}, batch {:?}", g.p.text, g.p.m, g.p.batch);
    }
    // Each weight is loaded once, element for element.
    for (name, elems) in [("wq", 64 * 64), ("w1", 64 * 128), ("w2", 128 * 64)] {
        let tensor = c.tiles.tensors.iter().position(|x| x.name == name).unwrap();
        let loaded: u64 = c
            .tiles
            .ops
            .iter()
            .filter_map(|(op, _)| match op {
                jalc::tiles::TileOp::Load { src, .. } if src.tensor == tensor => {
                    Some(src.rows as u64 * src.cols as u64)
                }
                _ => None,
            })
            .sum();
        assert_eq!(loaded, elems, "{name}");
    }
    let identity_evacuations = c
        .tiles
        .ops
        .iter()
        .filter(|(op, _)| {
            matches!(op, jalc::tiles::TileOp::Activate { func: jpu_isa::operand::ActFunc::Identity, src, .. }
                if c.tiles.buffers[src.buf].space == jpu_isa::operand::Space::Psum)
        })
        .count();
    assert!(identity_evacuations > 0);
    let interleaved = c.inst_kernel.iter().any(|stream| {
        let kernels: Vec<usize> = stream.iter().flatten().copied().collect();
        kernels.windows(2).any(|w| w[1] < w[0])
    });
    assert!(interleaved, "no engine runs kernels out of order");
    // Both layernorms run on the tiles of the GEMM before them (no row kernel),
    // and every GEMM leaves PSUM to its neighbours.
    assert!(c.kernels.iter().all(|k| k.kind() != "rows"), "{src}");
    assert_eq!(gemms.iter().filter(|g| g.p.row.is_some()).count(), 2);
    assert!(gemms.iter().all(|g| g.s.psum_banks < t.psum.banks.unwrap_or(1)));
    // 8 heads of 16 with the mask on the PE: 4 heads share each K^T transpose.
    let attention: Vec<String> = c.kernels.iter().filter(|k| k.kind() == "attention").map(|k| k.describe(&t)).collect();
    assert!(attention[0].contains("K^T of 4 heads per transpose"), "{attention:#?}");
    let v = jalc::verify::verify_with(&f, &t, 11, &Options::o2()).unwrap();
    assert!(v.passed, "{:?}", v.first_mismatch);
}
