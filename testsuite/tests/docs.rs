//! Every `tir` code block in docs/tir.md checks, and its canonical form is a
//! fixed point; the diagnostic quoted in the docs is the one the case produces.

use jalc::front::tir;
use jalc::ir::printer;

#[test]
fn tir_md_examples_check() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tir.md")).unwrap();
    let mut blocks = 0;
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```tir\n") {
        let body = &rest[start + 7..];
        let end = body.find("```").expect("closed code block");
        let src = &body[..end];
        let f = tir::parse_and_check(src).unwrap_or_else(|d| panic!("{}", tir::render("docs/tir.md", src, &d)));
        let text = printer::print(&f);
        assert_eq!(printer::print(&tir::parse_and_check(&text).unwrap()), text);
        blocks += 1;
        rest = &body[end..];
    }
    assert!(blocks >= 4, "found {blocks} tir blocks");
    let snapshot = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/snapshots/tir__tir_cases@errors__matmul-contraction-mismatch.tir.snap"
    ))
    .unwrap();
    let quoted = doc.split("```text\nerror: `matmul` contraction").nth(1).expect("the docs quote a diagnostic");
    let first_line = quoted.lines().next().unwrap();
    assert!(snapshot.contains(first_line), "docs/tir.md quotes an outdated diagnostic");
}

/// docs/tir.md's op reference is generated from the op table
/// (`jalc::ir::ops::OPS`); `JPU_BLESS=1` rewrites it after changing an op.
#[test]
fn tir_md_op_reference_is_current() {
    use jalc::ir::ops;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tir.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let updated = ops::splice(&doc, &ops::reference()).expect("docs/tir.md has the generated-section markers");
    if std::env::var_os("JPU_BLESS").is_some() {
        std::fs::write(path, &updated).unwrap();
        return;
    }
    assert!(
        updated == doc,
        "docs/tir.md is out of date with the op table: run `JPU_BLESS=1 cargo test -p jpu-testsuite --test docs`"
    );
}

/// docs/machine.md's parameter table names every field of jpu1's description.
#[test]
fn machine_md_names_every_target_parameter() {
    fn fields(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                // An exact fraction `{ num, den }` is one parameter.
                toml::Value::Table(t) if !t.contains_key("num") => fields(&name, t, out),
                _ => out.push(name),
            }
        }
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let doc = std::fs::read_to_string(format!("{root}/docs/machine.md")).unwrap();
    let jpu1: toml::Table = std::fs::read_to_string(format!("{root}/isa/targets/jpu1.toml")).unwrap().parse().unwrap();
    let mut names = Vec::new();
    fields("", &jpu1, &mut names);
    assert!(names.len() > 20, "read {} fields", names.len());
    let missing: Vec<&String> = names.iter().filter(|n| !doc.contains(&format!("| `{n}` |"))).collect();
    assert!(missing.is_empty(), "docs/machine.md's parameter table misses {missing:?}");
}
