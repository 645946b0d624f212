//! Generated documentation: the instruction reference in docs/isa.md is printed
//! from the instruction table, so the docs cannot drift from the encoder.
//!
//! `cargo test -p jpu-isa --test docs` fails when docs/isa.md differs from
//! [`instruction_reference`]; `JPU_BLESS=1` rewrites the generated section.

use std::fmt::Write as _;

use crate::inst::{Opcode, HEADER_SIZE, INST_SIZE};

/// Marker opening the generated section of docs/isa.md.
pub const BEGIN: &str = "<!-- BEGIN GENERATED: instruction reference (jpu_isa::docgen) -->";
/// Marker closing it.
pub const END: &str = "<!-- END GENERATED -->";

/// The instruction reference: one section per opcode with its semantics, timing,
/// syntax and byte layout.
pub fn instruction_reference() -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| opcode | mnemonic | engine | operands |");
    let _ = writeln!(out, "|---|---|---|---|");
    for &op in Opcode::ALL {
        let fields: Vec<&str> = op.fields().iter().map(|f| f.name).collect();
        let _ = writeln!(
            out,
            "| `0x{:02x}` | [`{}`](#{}) | {} | {} |",
            op as u8,
            op.mnemonic(),
            op.mnemonic().replace('_', "-").replace("--", "-"),
            op.engine_class().name(),
            if fields.is_empty() { "none".to_string() } else { fields.join(", ") }
        );
    }
    for &op in Opcode::ALL {
        let _ = writeln!(out, "\n### {}\n", op.mnemonic());
        let _ = writeln!(out, "Opcode `0x{:02x}`, runs on {}.\n", op as u8, op.engine_class().name());
        for line in op.doc().trim_end().lines() {
            out.push_str(line.strip_prefix(' ').unwrap_or(line));
            out.push('\n');
        }
        out.pop();
        out.push_str("\n\nSyntax:\n\n```text\n");
        out.push_str(op.mnemonic());
        let parts: Vec<String> = op.fields().iter().map(|f| format!("{}=<{}>", f.name, f.kind)).collect();
        if !parts.is_empty() {
            out.push(' ');
            out.push_str(&parts.join(", "));
        }
        out.push_str(" [wait SEM>=N] [signal [coreC.]SEM] [!\"debug op\"]\n```\n\n");
        let _ = writeln!(out, "| bytes | field | kind | meaning |");
        let _ = writeln!(out, "|---|---|---|---|");
        let _ = writeln!(
            out,
            "| 0..{HEADER_SIZE} | header | | opcode, wait semaphore, signal semaphore, signal core (0: own; c+1: core c), wait value |"
        );
        let mut at = HEADER_SIZE;
        for f in op.fields() {
            let _ = writeln!(out, "| {at}..{} | `{}` | {} | {} |", at + f.size, f.name, f.kind, f.doc.trim());
            at += f.size;
        }
        if at < INST_SIZE {
            let _ = writeln!(out, "| {at}..{INST_SIZE} | padding | | zero |");
        }
    }
    out
}

/// Replaces the generated section of a document (between [`BEGIN`] and [`END`]).
pub fn splice(doc: &str, generated: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = doc[start..].find(END)? + start;
    Some(format!("{}\n{}{}", &doc[..start], generated, &doc[end..]))
}
