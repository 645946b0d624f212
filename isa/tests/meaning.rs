//! Binaries whose envelope and checksum are valid but whose content is
//! inconsistent are refused at load, naming what and where: every rule of
//! `jpu_isa::accesses`, each starting from the shipped example with one field
//! changed, written with `jbin::write` (which does not validate) and read back.

use jpu_isa::jbin::{self, JbinError};
use jpu_isa::operand::DmaDim;
use jpu_isa::program::Role;
use jpu_isa::{jasm, DType, Op, Program};

fn example() -> Program {
    jasm::assemble(include_str!("../../examples/gemm-tiny.jasm")).expect("example assembles")
}

/// The error reading `p` back from its bytes.
fn refusal(p: &Program) -> String {
    match jbin::read(&jbin::write(p)) {
        Err(JbinError::Program(e)) => e.to_string(),
        other => panic!("expected a program error, got {other:?}"),
    }
}

fn dma(p: &mut Program, stream: usize, i: usize) -> &mut jpu_isa::operand::DmaTransfer {
    match &mut p.cores[0][stream][i].op {
        Op::Dma { xfer } => xfer,
        op => panic!("not a DMA: {op:?}"),
    }
}

const DMA0: usize = 3;

#[test]
fn the_example_is_consistent() {
    let p = example();
    assert_eq!(jbin::read(&jbin::write(&p)).unwrap(), p);
}

#[test]
fn an_unaligned_tensor_is_refused() {
    let mut p = example();
    p.tensors[2].addr += 2;
    assert_eq!(refusal(&p), "tensor `c`: address 0x2002 is not a multiple of 64 bytes");
}

#[test]
fn a_dtype_that_disagrees_with_its_dmas_is_refused() {
    // `c` (f32) is written as 4-byte elements; as bf16 (same bytes) it disagrees.
    let mut p = example();
    p.tensors[2].dtype = DType::Bf16;
    p.tensors[2].shape = vec![32, 64];
    let want = "core 0 dma0[1]: moves 4-byte elements through tensor `c`, whose bf16 elements are 2 bytes";
    assert!(refusal(&p).starts_with(want), "{}", refusal(&p));
    // A byte copy of an f32 row would not split elements, but it does not
    // agree with the dtype either.
    let mut p = example();
    let x = dma(&mut p, DMA0, 1);
    x.elem_bytes = 1;
    x.src.dims[1] = DmaDim { count: 128, stride: 1 };
    x.dst.dims[1] = DmaDim { count: 128, stride: 1 };
    assert!(refusal(&p).starts_with("core 0 dma0[1]: moves 1-byte elements through tensor `c`"), "{}", refusal(&p));
    // Elements that start off the tensor's element boundaries.
    let mut p = example();
    dma(&mut p, DMA0, 1).dst.addr += 2;
    dma(&mut p, DMA0, 1).dst.dims[0].count = 31;
    dma(&mut p, DMA0, 1).src.dims[0].count = 31;
    assert!(refusal(&p).ends_with("(or starts one off an element boundary)"), "{}", refusal(&p));
}

#[test]
fn an_output_smaller_than_the_dma_that_writes_it_is_refused() {
    let mut p = example();
    p.tensors[2].shape = vec![16, 32];
    assert_eq!(refusal(&p), "core 0 dma0[1]: HBM bytes 0x2000..0x3000 run past the end of tensor `c` (0x2000..0x2800)");
}

#[test]
fn an_access_outside_every_tensor_is_refused() {
    let mut p = example();
    dma(&mut p, DMA0, 0).src.addr = 0x8000;
    assert_eq!(refusal(&p), "core 0 dma0[0]: HBM bytes 0x8000..0x9000 start outside every tensor");
}

#[test]
fn roles_agree_with_the_streams() {
    // Writing an input.
    let mut p = example();
    p.tensors[2].role = Role::Input;
    assert_eq!(refusal(&p), "core 0 dma0[1]: writes input tensor `c`, which the program may only read");
    // An output nobody writes.
    let mut p = example();
    p.tensors[1].role = Role::Output;
    assert_eq!(refusal(&p), "tensor `b`: is an output but no DMA writes it");
}

#[test]
fn recorded_roofline_bytes_must_fit_in_hbm() {
    let mut p = example();
    p.roofline.as_mut().unwrap().input_bytes = u64::MAX;
    assert!(refusal(&p).starts_with("roofline: records 18446744073709551615 input"), "{}", refusal(&p));
}
