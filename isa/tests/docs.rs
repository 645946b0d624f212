//! docs/isa.md's instruction reference is generated from the instruction table.
//! Run with `JPU_BLESS=1` to rewrite it after changing an instruction.

use jpu_isa::docgen;

#[test]
fn isa_md_instruction_reference_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/isa.md");
    let doc = std::fs::read_to_string(path).expect("docs/isa.md exists");
    let generated = docgen::instruction_reference();
    let updated = docgen::splice(&doc, &generated).expect("docs/isa.md has the generated-section markers");
    if std::env::var_os("JPU_BLESS").is_some() {
        std::fs::write(path, &updated).unwrap();
        return;
    }
    assert!(
        updated == doc,
        "docs/isa.md is out of date with the instruction table: run `JPU_BLESS=1 cargo test -p jpu-isa --test docs`"
    );
}
