//! The same input always gives the same binary: compilation depends on no clock
//! and no machine load (the optimizer stops at node and iteration limits only,
//! and every iteration order is fixed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use jalc::driver::{compile, Options};
use jalc::front::tir;
use jpu_isa::Target;

fn binaries(sources: &[String], t: &Target) -> Vec<Vec<u8>> {
    sources
        .iter()
        .map(|src| {
            let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("case", src, &d)));
            jpu_isa::jbin::write(&compile(&f, t, &Options::o2()).unwrap().program)
        })
        .collect()
}

/// A chain of `n` elementwise steps: enough e-graph work to take real time.
fn chain(n: usize) -> String {
    let mut body = String::new();
    let mut prev = "x".to_string();
    for i in 0..n {
        let op = if i % 2 == 0 { format!("mul(%{prev}, 0.5)") } else { format!("add(%{prev}, %y)") };
        body += &format!("  %v{i} = {op}\n");
        prev = format!("v{i}");
    }
    format!("func @c(%x: f32[64, 64], %y: f32[64, 64]) -> f32[64, 64] {{\n{body}  return %{prev}\n}}\n")
}

#[test]
fn the_same_programs_compile_to_identical_binaries_under_load() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut sources: Vec<String> = ["attention.tir", "ffn.tir", "gemm.tir"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("{examples}/{f}")).unwrap())
        .collect();
    sources.push(chain(300));
    let t = Target::builtin("jpu-tiny").unwrap();
    let quiet = binaries(&sources, &t);
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let loaded = binaries(&sources, &t);
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    for (i, (a, b)) in quiet.iter().zip(&loaded).enumerate() {
        assert!(a == b, "program {i} compiled to different binaries with and without load");
    }
}

/// The optimizer's limits are counts: a large program stops at the node or
/// iteration limit, never at a time limit.
#[test]
fn the_optimizer_stops_at_count_limits_only() {
    let f = tir::parse_and_check(&chain(2000)).unwrap();
    let t = Target::builtin("jpu-tiny").unwrap();
    let o = jalc::opt::optimize(&f, &t, jalc::opt::Limits::default()).unwrap();
    assert!(!o.stop.contains("Time"), "{}", o.stop);
}
