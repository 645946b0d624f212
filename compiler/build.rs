//! Generates the `.tir` parser from `src/tir/grammar.lalrpop`.
fn main() {
    lalrpop::process_src().expect("the .tir grammar compiles");
}
