//! Round trips of random valid programs and instructions through `.jbin` and
//! `.jasm`, and corruption of valid binaries.

use jpu_isa::inst::{Engine, EngineClass};
use jpu_isa::jbin::{self, JbinError};
use jpu_isa::operand::{DecodeCtx, EncodeCtx};
use jpu_isa::random::{random_op, random_program};
use jpu_isa::{bytes::Reader, jasm, Inst, Program, Target};
use proptest::prelude::*;

fn targets() -> [Target; 2] {
    [Target::builtin("jpu-tiny").unwrap(), Target::builtin("jpu1").unwrap()]
}

fn assert_round_trips(p: &Program, t: &Target) {
    let bytes = jbin::write(p);
    let read = jbin::read_for_target(&bytes, t).unwrap_or_else(|e| panic!("written program does not read back: {e}"));
    assert_eq!(&read, p, "bin -> program");
    let text = jasm::disassemble(p);
    let assembled =
        jasm::assemble(&text).unwrap_or_else(|errs| panic!("{}\n{text}", jasm::render_errors("printed", &text, &errs)));
    assert_eq!(&assembled, p, "asm -> program");
    assert_eq!(jbin::write(&assembled), bytes, "bin -> asm -> bin changed bytes");
    assert_eq!(jasm::disassemble(&assembled), text, "asm -> bin -> asm changed text");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_programs_round_trip(seed in any::<u64>()) {
        for t in targets() {
            let p = random_program(seed, &t);
            prop_assert!(p.validate(&t).is_ok());
            assert_round_trips(&p, &t);
        }
    }

    #[test]
    fn random_instructions_round_trip(seed in any::<u64>(), class in 0usize..4, wait in proptest::option::of((0u8..32, any::<u32>())), signal in proptest::option::of((0u8..32, proptest::option::of(0u8..1)))) {
        let class = [EngineClass::Pe, EngineClass::Ve, EngineClass::Act, EngineClass::Dma][class];
        for t in targets() {
            let op = random_op(seed, &t, class);
            let inst = Inst { op, wait: wait.map(|(sem, value)| jpu_isa::inst::Wait { sem, value }), signal: signal.map(|(sem, core)| jpu_isa::Signal { sem, core }), debug: None };
            // Binary.
            let mut bytes = Vec::new();
            let mut ectx = EncodeCtx::default();
            inst.encode(&mut bytes, &mut ectx);
            prop_assert_eq!(bytes.len(), jpu_isa::inst::INST_SIZE);
            let mut dctx = DecodeCtx { descs: &ectx.descs, next_desc: 0 };
            let decoded = Inst::decode(&mut Reader::new(&bytes, 0), &mut dctx).unwrap();
            prop_assert_eq!(&decoded, &inst);
            // Text, inside a one-instruction program on an engine of the right class.
            let engine = match class { EngineClass::Pe => Engine::PE, EngineClass::Ve => Engine::VE, EngineClass::Act => Engine::ACT, _ => Engine::dma(0) };
            let mut p = Program::new(&t);
            // A scratch tensor over all of HBM, of the DMA's element size, holds any side.
            let elem = match &inst.op {
                jpu_isa::Op::Dma { xfer } => xfer.elem_bytes,
                jpu_isa::Op::DmaGather { dst, .. } => dst.dtype.size_bytes() as u8,
                _ => 1,
            };
            let heap = jpu_isa::program::TensorDecl {
                name: "heap".into(),
                dtype: jpu_isa::random::dma_dtype(elem),
                shape: vec![t.hbm.size_bytes / elem as u64],
                addr: 0,
                role: jpu_isa::program::Role::Scratch,
                data: Vec::new(),
            };
            p.tensors.push(heap);
            p.cores[0][engine.0 as usize] = vec![inst, Inst::new(jpu_isa::Op::Halt {})];
            prop_assert!(p.validate(&t).is_ok(), "{:?}", p.validate(&t));
            assert_round_trips(&p, &t);
        }
    }
}

/// The shipped hand-written example, as bytes.
fn example_binary() -> Vec<u8> {
    let src = include_str!("../../examples/gemm-tiny.jasm");
    jbin::write(&jasm::assemble(src).expect("example assembles"))
}

/// Reads a corrupted binary: it must not panic, and must either be rejected with a
/// documented error or be a canonical encoding of a valid program.
fn read_corrupt(bytes: &[u8], errors: &mut std::collections::BTreeMap<String, usize>) {
    match jbin::read(bytes) {
        Ok(p) => assert_eq!(jbin::write(&p), bytes, "a non-canonical byte string was accepted"),
        Err(e) => {
            let kind = match &e {
                JbinError::Decode(d) => {
                    assert!(d.offset <= bytes.len(), "error offset past the input: {e}");
                    assert!(e.to_string().contains("byte offset"), "{e}");
                    format!("decode:{}", d.field.split(['.', '[']).next().unwrap_or(""))
                }
                JbinError::Target(_) => "target".to_string(),
                JbinError::Program(_) => "program".to_string(),
            };
            *errors.entry(kind).or_default() += 1;
        }
    }
}

#[test]
fn corrupted_binaries_never_panic() {
    let mut rng = proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha);
    let tiny = Target::builtin("jpu-tiny").unwrap();
    let mut seeds = vec![example_binary()];
    seeds.extend((0..8).map(|s| jbin::write(&random_program(s, &tiny))));
    let mut errors = std::collections::BTreeMap::new();
    let mut cases = 0;
    for base in &seeds {
        for i in 0..1000 {
            let mut bytes = base.clone();
            match i % 5 {
                0 => bytes.truncate(rng.random_range(0..bytes.len())),
                1 => {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= 1u8 << rng.random_range(0..8u32);
                }
                2 => {
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                }
                3 => {
                    let at = rng.random_range(0..bytes.len());
                    let n = rng.random_range(1..16);
                    bytes.splice(at..at, (0..n).map(|_| rng.random::<u8>()));
                }
                _ => {
                    let at = rng.random_range(0..bytes.len());
                    let end = (at + rng.random_range(1..9)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
            // Half the cases keep a consistent length and checksum, so that the
            // structural checks behind the envelope are exercised too.
            if i % 2 == 0 {
                jbin::reseal(&mut bytes);
            }
            read_corrupt(&bytes, &mut errors);
            cases += 1;
        }
    }
    eprintln!("{cases} corrupted binaries, outcomes: {errors:?}");
    assert!(cases >= 9000);
    // Corruption must reach the checks behind the envelope, not only the checksum.
    for kind in ["decode:checksum", "decode:CODE", "decode:header"] {
        assert!(errors.get(kind).copied().unwrap_or(0) > 0, "no `{kind}` errors in {errors:?}");
    }
    assert!(errors.len() >= 8, "too few distinct error kinds: {errors:?}");
}

#[test]
fn wrong_target_and_version_are_rejected() {
    let bytes = example_binary();
    let jpu1 = Target::builtin("jpu1").unwrap();
    let err = jbin::read_for_target(&bytes, &jpu1).unwrap_err();
    assert!(err.to_string().contains("program is for `jpu-tiny`, not `jpu1`"), "{err}");
    let mut newer = bytes.clone();
    newer[8] = 2;
    jbin::reseal(&mut newer);
    assert!(jbin::read(&newer).unwrap_err().to_string().contains("format version 2"));
    let mut other_target = bytes.clone();
    other_target[16..32].copy_from_slice(b"jpu9\0\0\0\0\0\0\0\0\0\0\0\0");
    jbin::reseal(&mut other_target);
    assert!(matches!(jbin::read(&other_target), Err(JbinError::Target(_))));
    let mut bad_hash = bytes.clone();
    bad_hash[32] ^= 1;
    jbin::reseal(&mut bad_hash);
    assert!(jbin::read(&bad_hash).unwrap_err().to_string().contains("different description"));
}

/// External names (format 1.1): written only when present, read back, printed
/// as `.extern` and reassembled; a format-1.0 file still reads; broken EXTN
/// entries are refused with their field.
#[test]
fn external_names_round_trip_and_are_checked() {
    use jpu_isa::program::{ExternalName, ExternalType, Role};
    let plain = example_binary();
    assert_eq!(u16::from_le_bytes([plain[10], plain[11]]), 0, "no external names: format 1.0");
    let mut p = jbin::read(&plain).unwrap();
    let t = Target::builtin(&p.target).unwrap();
    let input = p.tensors.iter().position(|t| t.role == Role::Input).unwrap();
    let output = p.tensors.iter().position(|t| t.role == Role::Output).unwrap();
    p.external.push(ExternalName { tensor: input as u32, name: "input_ids".into(), elem: ExternalType::I64 });
    p.external.push(ExternalName {
        tensor: output as u32,
        name: "onnx::Shape_422 \"x\"".into(),
        elem: ExternalType::F32,
    });
    assert_round_trips(&p, &t);
    let bytes = jbin::write(&p);
    assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]), 1);
    assert!(jasm::disassemble(&p).contains(".extern "), "{}", jasm::disassemble(&p));
    // A second name for one tensor, a scratch tensor, a duplicate name.
    let mut twice = p.clone();
    twice.external.push(ExternalName { tensor: input as u32, name: "again".into(), elem: ExternalType::I64 });
    assert!(twice.validate(&t).unwrap_err().message.contains("second external name"));
    let mut dup = p.clone();
    dup.external[1].name = "input_ids".into();
    assert!(dup.validate(&t).unwrap_err().message.contains("names two tensors"));
    // An unknown element type code in the bytes: the last byte before the trailer.
    let mut bad = bytes.clone();
    let at = bad.len() - 5;
    bad[at] = 200;
    jbin::reseal(&mut bad);
    let e = jbin::read(&bad).unwrap_err().to_string();
    assert!(e.contains("EXTN.elem") && e.contains("unknown element type code 200"), "{e}");
}
