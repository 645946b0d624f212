//! Why random programs are refused: compiles the .tir generator's programs for
//! fixed seeds (0..200, as `a_fair_share_of_random_programs_compiles` does) for
//! jpu-tiny at -O0 and counts the refusals by op and reason, most common first.
//!
//! `cargo run --release -p jpu-testsuite --bin refusal-census` (docs/testing.md).

use std::collections::BTreeMap;

fn main() {
    let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    let mut compiled = 0;
    for seed in 0..200u64 {
        let f = jalc::front::tir::parse_and_check(&jpu_testsuite::tir_gen::random_tir(seed))
            .expect("generated programs check");
        match jalc::driver::compile_at(&f, &t, None, 0) {
            Ok(_) => compiled += 1,
            Err(e) => {
                // "`%x = op` reason: what this version compiles" -> "op | reason"
                let head = e.split(": this compiler version").next().unwrap_or(&e);
                let key = match head.split('`').nth(1).and_then(|s| s.split(" = ").nth(1)) {
                    Some(op) => format!("{op} | {}", head.rsplit('`').next().unwrap_or("").trim()),
                    None => head.to_string(),
                };
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
