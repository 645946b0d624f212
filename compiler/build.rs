//! Generates the `.tir` parser from `src/front/tir/grammar.lalrpop`, and the
//! ONNX protobuf types from `proto/onnx.proto` (ONNX 1.22's schema, Apache-2.0)
//! in pure Rust: `protox` parses the schema, `prost-build` writes the types; no
//! `protoc`, no C++ toolchain.
fn main() {
    lalrpop::process_src().expect("the .tir grammar compiles");
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto"]).expect("proto/onnx.proto parses");
    prost_build::Config::new().compile_fds(fds).expect("the ONNX types generate");
}
