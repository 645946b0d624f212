//! Generates the `.tir` parser from `src/front/tir/grammar.lalrpop`.
fn main() {
    lalrpop::process_src().expect("the .tir grammar compiles");
}
