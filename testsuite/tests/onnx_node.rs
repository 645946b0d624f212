//! The ONNX backend node tests of the ops the importer covers (docs/onnx.md),
//! from the onnx 1.22.0 wheel (fetched by `testsuite/models/fetch.py`; this test
//! fails, never skips, without them): each model imported in f32 at its test
//! inputs' shapes, compiled for jpu-tiny, simulated with race checking, and
//! compared with the expected outputs (floats within 1e-7 + 1e-3 |expected|,
//! the backend tests' own tolerance; integers and booleans exactly). The
//! outcome of every test is in `testsuite/cases/onnx-node/manifest.txt` (pass,
//! or fail with the reason); this test fails when reality drifts from it.
//! `JPU_BLESS=1` rewrites the manifest.

use std::path::{Path, PathBuf};

use jalc::front::onnx::host::HostTensor;
use jalc::front::onnx::proto::{ModelProto, TensorProto};
use jalc::front::onnx::{self, ImportOptions, Precision};
use prost::Message;

/// The op types of the list: a node test belongs to the suite when
/// every op of its model is one of these.
const LISTED: &[&str] = &[
    "MatMul",
    "Gemm",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Neg",
    "Exp",
    "Log",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Relu",
    "Gelu",
    "Softmax",
    "LayerNormalization",
    "RMSNormalization",
    "Attention",
    "RotaryEmbedding",
    "Reshape",
    "Transpose",
    "Slice",
    "Concat",
    "Split",
    "Squeeze",
    "Unsqueeze",
    "Gather",
    "Expand",
    "Where",
    "Equal",
    "Greater",
    "Less",
    "And",
    "Or",
    "Not",
    "IsNaN",
    "Cast",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "Clip",
    "Min",
    "Max",
    "Identity",
    "Constant",
    "ConstantOfShape",
    "Shape",
    "Range",
    "Trilu",
];

fn root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/onnx-node");
    assert!(dir.join(".complete").exists(), "{} is missing: run `python3 testsuite/models/fetch.py`", dir.display());
    dir
}

fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/onnx-node/manifest.txt")
}

fn tensor(path: &Path) -> Result<HostTensor, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let t = TensorProto::decode(&bytes[..]).map_err(|_| "an input or output is not a tensor".to_string())?;
    if t.data_type.unwrap_or(0) == 0 {
        return Err("an input or output is not a tensor".into());
    }
    HostTensor::from_proto(&t)
}

/// Operands that are shape arguments (axes, shapes, slice bounds, split sizes,
/// range bounds, the Trilu diagonal): the chip compiles fixed shapes, so a test
/// that passes one as a graph input has it bound to its test value (as an
/// initializer), as a model exported for inference would have it.
const SHAPE_ARGS: &[(&str, &[usize])] = &[
    ("Reshape", &[1]),
    ("Expand", &[1]),
    ("Slice", &[1, 2, 3, 4]),
    ("Split", &[1]),
    ("Squeeze", &[1]),
    ("Unsqueeze", &[1]),
    ("ReduceSum", &[1]),
    ("ReduceMean", &[1]),
    ("ReduceMax", &[1]),
    ("Trilu", &[1]),
    ("Range", &[0, 1, 2]),
    ("ConstantOfShape", &[0]),
];

/// Runs one node test: `Ok(())` when it passes, else why not.
fn run_case(dir: &Path) -> Result<(), String> {
    let mut model = onnx::read(&dir.join("model.onnx")).map_err(|e| e.message)?;
    let data = dir.join("test_data_set_0");
    let graph = model.graph();
    let initialized: Vec<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let all: Vec<String> =
        graph.input.iter().filter_map(|i| i.name.clone()).filter(|n| !initialized.contains(&n.as_str())).collect();
    let is_shape_arg = |name: &str| {
        graph.node.iter().any(|n| {
            SHAPE_ARGS.iter().any(|(op, at)| {
                n.op_type.as_deref() == Some(op) && at.iter().any(|&i| n.input.get(i).is_some_and(|x| x == name))
            })
        })
    };
    let bound: Vec<bool> = all.iter().map(|n| is_shape_arg(n)).collect();
    let (mut names, mut inputs) = (Vec::new(), Vec::new());
    for (k, name) in all.iter().enumerate() {
        let path = data.join(format!("input_{k}.pb"));
        if bound[k] {
            let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
            let mut t = TensorProto::decode(&bytes[..]).map_err(|_| "an input is not a tensor".to_string())?;
            t.name = Some(name.clone());
            model.proto.graph.as_mut().expect("read checks").initializer.push(t);
        } else {
            names.push(name.clone());
            inputs.push(tensor(&path)?);
        }
    }
    let input_shapes = names.iter().cloned().zip(inputs.iter().map(|t| t.shape.clone())).collect();
    let opts = ImportOptions { input_shapes, precision: Precision::F32, ..Default::default() };
    let m = onnx::import(&model, "model.onnx", &opts).map_err(|e| e.message)?;
    let values: Vec<Vec<f64>> = inputs.into_iter().map(|t| t.data).collect();
    let got = jpu_testsuite::onnx::try_run(&m, "jpu-tiny", 2, &values)?;
    for (k, (io, g)) in m.outputs.iter().zip(&got).enumerate() {
        let want = tensor(&data.join(format!("output_{k}.pb")))?;
        if g.ty.shape != want.shape {
            return Err(format!("output `{}` has shape {:?}, expected {:?}", io.onnx, g.ty.shape, want.shape));
        }
        let float = onnx::host::is_float(want.elem);
        for (i, (&a, &b)) in g.data.iter().zip(&want.data).enumerate() {
            let close = a == b || (float && ((a - b).abs() <= 1e-7 + 1e-3 * b.abs() || (a.is_nan() && b.is_nan())));
            if !close {
                return Err(format!("output `{}` element {i}: got {a}, expected {b}", io.onnx));
            }
        }
    }
    Ok(())
}

/// The suite's tests: node tests whose models use only listed ops.
fn suite(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("node test folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .filter(|p| {
            let Ok(bytes) = std::fs::read(p.join("model.onnx")) else { return false };
            let Ok(m) = ModelProto::decode(&bytes[..]) else { return false };
            let nodes = m.graph.map(|g| g.node).unwrap_or_default();
            !nodes.is_empty() && nodes.iter().all(|n| LISTED.contains(&n.op_type.as_deref().unwrap_or("")))
        })
        .collect();
    dirs.sort();
    dirs
}

/// One line: the first line of the reason, without numbers that vary run to run.
fn outcome(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "pass".into(),
        Err(e) => {
            let line = e.lines().next().unwrap_or("").trim();
            let short: String = line.chars().take(160).collect();
            format!("fail: {short}")
        }
    }
}

#[test]
fn node_tests_match_their_manifest() {
    let root = root();
    let mut lines = Vec::new();
    let (mut passed, mut total) = (0, 0);
    for dir in suite(&root) {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let r = std::panic::catch_unwind(|| run_case(&dir)).unwrap_or_else(|_| Err("panic".into()));
        total += 1;
        passed += usize::from(r.is_ok());
        lines.push(format!("{name}: {}", outcome(&r)));
    }
    let text = format!(
        "# ONNX node tests of the listed ops (testsuite/tests/onnx_node.rs): {passed} of {total} pass ({:.1}%)\n{}\n",
        100.0 * passed as f64 / total.max(1) as f64,
        lines.join("\n")
    );
    eprintln!("{passed} of {total} node tests pass");
    let path = manifest_path();
    if std::env::var_os("JPU_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if want != text {
        let old: std::collections::BTreeSet<&str> = want.lines().collect();
        let new: std::collections::BTreeSet<&str> = text.lines().collect();
        let gone: Vec<&&str> = old.difference(&new).take(10).collect();
        let came: Vec<&&str> = new.difference(&old).take(10).collect();
        panic!(
            "the node tests drifted from the manifest (JPU_BLESS=1 rewrites it)\nno longer: {gone:#?}\nnow: {came:#?}"
        );
    }
}
