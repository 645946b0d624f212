//! Writes `compiler/src/front/onnx/proto.rs` from `compiler/proto/onnx.proto`
//! (ONNX 1.22's schema): `protox` parses the schema, `prost-build` generates the
//! types. Run from anywhere: paths are relative to this crate.
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("compiler/proto");
    let out_dir = std::env::temp_dir().join("onnx-proto-gen");
    std::fs::create_dir_all(&out_dir).expect("a temporary folder");
    let fds = protox::compile(["onnx.proto"], [&proto_dir]).expect("compiler/proto/onnx.proto parses");
    prost_build::Config::new().out_dir(&out_dir).compile_fds(fds).expect("the ONNX types generate");
    let generated = std::fs::read_to_string(out_dir.join("onnx.rs")).expect("prost-build wrote onnx.rs");
    let header = "// Generated from compiler/proto/onnx.proto by tools/onnx-proto-gen\n// (`cargo run --manifest-path tools/onnx-proto-gen/Cargo.toml`); do not edit.\n";
    let target = root.join("compiler/src/front/onnx/proto.rs");
    std::fs::write(&target, format!("{header}{generated}")).expect("write proto.rs");
    println!("wrote {}", target.display());
}
