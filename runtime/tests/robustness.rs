//! No program makes the simulator panic, and illegal programs fault at the
//! instruction: random valid programs (which often deadlock or race, since their
//! waits and accesses are random) run to an outcome or a fault; a program that
//! bypasses validation with an out-of-bounds tile is reported, not executed.

use jpu_isa::operand::{Space, Tile};
use jpu_isa::random::random_program;
use jpu_isa::{DType, Inst, Op, Program, Target};
use jpu_runtime::{run, FaultKind, RunOptions};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_programs_run_or_fault_without_panicking(seed in any::<u64>()) {
        let t = Target::builtin("jpu-tiny").unwrap();
        let p = random_program(seed, &t);
        let opts = RunOptions { max_instructions: Some(10_000), max_cycles: Some(10_000_000), ..RunOptions::default() };
        let full = run(&p, &t, &[], &opts);
        let timing = run(&p, &t, &[], &RunOptions { timing_only: true, ..opts.clone() });
        match (&full, &timing) {
            // Both finish: same cycles.
            (Ok(a), Ok(b)) => prop_assert_eq!(a.report.cycles, b.report.cycles),
            // A race or uninitialised read is found only with data; timing alone finishes.
            (Err(f), Ok(_)) => {
                let data_fault = matches!(
                    f.kind,
                    FaultKind::Race { .. } | FaultKind::UninitializedRead { .. } | FaultKind::GatherIndex { .. }
                );
                prop_assert!(data_fault, "{}", f);
            }
            // Deadlocks and limits are found in both modes.
            (Err(_), Err(g)) => {
                let timing_fault = matches!(g.kind, FaultKind::Deadlock { .. } | FaultKind::CycleLimit(_) | FaultKind::InstructionLimit(_));
                prop_assert!(timing_fault, "{}", g);
            }
            (Ok(_), Err(g)) => prop_assert!(false, "timing-only faulted alone: {}", g),
        }
        if let Err(f) = full {
            prop_assert!(!f.message.is_empty());
        }
        // Without race checks the data path runs every instruction a deadlock-free
        // program has, on random operands (NaN payloads, negative strides, every dtype).
        let unchecked = run(&p, &t, &[], &RunOptions { check_races: false, ..opts });
        // (A gather index out of range is a fault of the data, checked or not.)
        let gather_fault = matches!(&unchecked, Err(f) if matches!(f.kind, FaultKind::GatherIndex { .. }));
        if !gather_fault {
            prop_assert_eq!(unchecked.is_ok(), timing.is_ok());
        }
    }
}

#[test]
fn out_of_bounds_tiles_are_reported_not_executed() {
    let t = Target::builtin("jpu-tiny").unwrap();
    let mut p = Program::new(&t);
    p.debug_ops = vec!["%y = exp(%x)".into()];
    let mut bad = Inst::new(Op::Memset {
        dst: Tile::contiguous(Space::Sram, DType::F32, 0, 32, 16380, 4),
        value: jpu_isa::operand::Imm(0.0),
    });
    bad.debug = Some(0);
    p.cores[0][1] = vec![Inst::new(Op::Nop {}), bad, Inst::new(Op::Halt {})];
    let err = run(&p, &t, &[], &RunOptions::default()).unwrap_err();
    assert!(matches!(err.kind, FaultKind::IllegalInstruction { .. }));
    insta::assert_snapshot!(err.message, @"illegal instruction: core 0 ve[1] `memset dst=sram.f32[0:32, 0x3ffc, [4 x 1]], value=0.0` (op: %y = exp(%x)): operand `dst`: access pattern reaches byte 0x400c of each partition; sram partitions hold 16384 (0x4000) bytes");
}

/// One strided DMA whose HBM side spans 17 GB (262,144 elements 64 KiB apart),
/// written and read back with race checking on: the simulator holds state for
/// the bytes accessed only (it once allocated per 64 KiB page touched, 24 GB).
#[test]
fn a_transfer_spanning_17_gb_holds_only_the_bytes_it_touches() {
    let src = r#"
.target "jpu1"
.tensor big: f32[4294967296] scratch @ 0x0
.sem done = 0
.core 0
.stream ve
    memset dst=sram.f32[0:128, 0x0, [2048 x 1]], value=1.0 signal done
    halt
.stream dma0
    dma xfer=sram[0x0] [128 x 196608, 2048 x 4] -> hbm[big] [262144 x 65536] elem 4 wait done>=1 signal done
    dma xfer=hbm[big] [262144 x 65536] -> sram[0x0] [128 x 196608, 2048 x 4] elem 4 wait done>=2
    halt
"#;
    let t = Target::builtin("jpu1").unwrap();
    let p = jpu_isa::jasm::assemble(src).unwrap_or_else(|d| panic!("{d:?}"));
    let out = run(&p, &t, &[], &RunOptions { strict_uninit: true, ..RunOptions::default() }).unwrap();
    assert!(out.held_bytes < 64 << 20, "held {} bytes", out.held_bytes);
}
