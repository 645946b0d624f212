//! Why random programs are refused: compiles the .tir generator's programs for
//! fixed seeds (0..200, as `a_fair_share_of_random_programs_compiles` does) for
//! jpu-tiny at -O0 and counts the refusals by error kind, op and reason, most
//! common first (read from the compiler's typed errors).
//!
//! `cargo run --release -p jpu-testsuite --bin refusal-census` (docs/testing.md).

use std::collections::BTreeMap;

fn main() {
    let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    let mut compiled = 0;
    // `--seeds` also lists which seeds each refusal comes from.
    let show = std::env::args().any(|a| a == "--seeds");
    // `--print N` prints seed N's program and stops.
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = args.iter().position(|a| a == "--print").and_then(|i| args.get(i + 1)?.parse::<u64>().ok()) {
        print!("{}", jpu_testsuite::tir_gen::random_tir(n));
        return;
    }
    for seed in 0..200u64 {
        let f = jalc::front::tir::parse_and_check(&jpu_testsuite::tir_gen::random_tir(seed))
            .expect("generated programs check");
        match jalc::driver::compile(&f, &t, &jalc::driver::Options::at(0)) {
            Ok(_) => compiled += 1,
            Err(e) => {
                let key = match &e {
                    jalc::error::CompileError::Unsupported { op, reason, .. } => {
                        format!("unsupported | {op} | {reason}")
                    }
                    other => format!("{} | {other}", other.kind()),
                };
                if show {
                    println!("seed {seed}: {key}");
                }
                *why.entry(key).or_default() += 1;
            }
        }
    }
    println!("{compiled} of 200 compile");
    let mut rows: Vec<(String, usize)> = why.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (k, n) in rows {
        println!("{n:4}  {k}");
    }
}
