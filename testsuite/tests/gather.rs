//! `gather` (embedding lookups) end to end: compiled to `dma_gather`, verified
//! bit-exactly on both targets at -O0 and -O2 along every axis, with the table
//! read only where indexed (the roofline counts the gathered rows), and an index
//! out of range refused at run time by the evaluator and faulted by the chip
//! with the instruction, partition and index.

use jalc::driver::{compile, Options};
use jalc::front::tir;
use jpu_isa::Target;
use jpu_runtime::{run, FaultKind, RunOptions};

fn check(src: &str) -> jalc::ir::Func {
    tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)))
}

#[test]
fn gathers_along_every_axis_are_exact() {
    let src = "func @g(%emb: bf16[300, 40], %ids: i32[3, 50], %t: f32[3, 9, 5], %j: i32[2, 2], %w: bf16[40, 16]) -> (bf16[3, 50, 40], f32[3, 50, 16], f32[3, 2, 2, 5], f32[3, 9, 2, 2], i8[2, 2, 9, 5]) {
  %e = gather(%emb, %ids) {axis = 0}
  %h = matmul(%e, %w) : f32[3, 50, 16]
  %a = gather(%t, %j) {axis = 1}
  %b = gather(%t, %j) {axis = -1}
  %c = cast(%t) {to = i8}
  %d = gather(%c, %j)
  return %e, %h, %a, %b, %d
}";
    assert_eq!(jpu_testsuite::verify_everywhere(&check(src), src, 5), 0.0);
}

#[test]
fn a_lookup_is_one_gather_kernel_and_its_roofline_counts_the_rows_read() {
    let src = "func @e(%emb: bf16[4096, 256], %ids: i32[200]) -> bf16[200, 256] {
  %e = gather(%emb, %ids) {axis = 0}
  return %e
}";
    let t = Target::builtin("jpu1").unwrap();
    let c = compile(&check(src), &t, &Options::o2()).unwrap();
    assert_eq!(c.kernels.iter().map(|k| k.kind()).collect::<Vec<_>>(), ["gather"]);
    let r = c.program.roofline.expect("recorded roofline");
    // 200 rows of 512 bytes and 800 bytes of indices read; not the 2 MiB table.
    assert_eq!(r.input_bytes, 200 * 512 + 800);
    assert_eq!(r.output_bytes, 200 * 512);
    let gathers = c.program.instructions().filter(|(_, _, _, i)| matches!(i.op, jpu_isa::Op::DmaGather { .. })).count();
    assert_eq!(gathers, 2, "two blocks of up to 128 indices, each row in one gather");
}

#[test]
fn an_index_out_of_range_is_an_evaluator_error_and_a_chip_fault() {
    let src = "func @e(%emb: f32[10, 8], %ids: i32[6]) -> f32[6, 8] {
  %e = gather(%emb, %ids) {axis = 0}
  return %e
}";
    let f = check(src);
    let ids = [3.0, 9.0, 0.0, 10.0, 1.0, 2.0];
    let inputs = vec![
        jalc::eval::Tensor::from_values(f.node(f.params().next().unwrap()).ty.clone(), &[0.5; 80]),
        jalc::eval::Tensor::from_values(f.node(f.params().nth(1).unwrap()).ty.clone(), &ids),
    ];
    let err = jalc::eval::eval(&f, &inputs).unwrap_err().to_string();
    assert!(err.contains("index 10 (element 3 of the indices) is outside [0, 10)"), "{err}");
    let t = Target::builtin("jpu-tiny").unwrap();
    let c = compile(&f, &t, &Options::o2()).unwrap();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let idx: Vec<u8> = ids.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
    let fault = run(&c.program, &t, &[("emb".into(), bytes(&[0.5; 80])), ("ids".into(), idx)], &RunOptions::default())
        .unwrap_err();
    assert!(matches!(fault.kind, FaultKind::GatherIndex { partition: 3, index: 10, rows: 10 }), "{fault:?}");
    assert!(fault.message.contains("dma_gather"), "{}", fault.message);
    assert!(fault.message.contains("(op: %e = gather(%emb, %ids))"), "{}", fault.message);
    assert!(fault.message.contains("reads index 10 at partition 3; the table has 10 rows"), "{}", fault.message);
}
