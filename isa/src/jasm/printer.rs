//! The `.jasm` printer (disassembler): a [`Program`] to canonical text.
//!
//! The output is the canonical form: assembling it gives back the same program,
//! and so the same `.jbin` bytes. Layout: `.target`, tensors in table order,
//! external names, semaphores by id, `.roofline`, then every core with its non-empty streams in
//! engine order. Instructions are indented four spaces; a `;` comment after each
//! `.stream` line gives the stream's instruction count.

use std::fmt::Write as _;

use super::lexer::escape;
use super::parser::ROOFLINE_FIELDS;
use crate::inst::{Engine, Inst};
use crate::operand::PrintCtx;
use crate::program::Program;

/// Prints a program as canonical `.jasm`.
pub fn disassemble(p: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(out, ".target {}", escape(&p.target));
    for t in &p.tensors {
        let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let _ = write!(out, ".tensor {}: {}[{}] {} @ 0x{:x}", t.name, t.dtype, dims.join(", "), t.role.name(), t.addr);
        if !t.data.is_empty() || t.role == crate::program::Role::Const {
            out.push_str(" = \"");
            for b in &t.data {
                let _ = write!(out, "{b:02x}");
            }
            out.push('"');
        }
        out.push('\n');
    }
    for x in &p.external {
        let tensor = p.tensors.get(x.tensor as usize).map_or("?", |t| t.name.as_str());
        let _ = writeln!(out, ".extern {tensor} {} {}", escape(&x.name), x.elem.name());
    }
    for s in &p.semaphores {
        let _ = writeln!(out, ".sem {} = {}", s.name, s.id);
    }
    if let Some(r) = &p.roofline {
        let values = [r.flops_f32, r.flops_16bit, r.flops_8bit, r.input_bytes, r.output_bytes, r.transcendentals];
        let fields: Vec<String> = ROOFLINE_FIELDS.iter().zip(values).map(|(n, v)| format!("{n}={v}")).collect();
        let _ = writeln!(out, ".roofline {}", fields.join(", "));
    }
    let ctx = PrintCtx { tensors: &p.tensors };
    for (c, core) in p.cores.iter().enumerate() {
        let _ = writeln!(out, "\n.core {c}");
        for (e, stream) in core.iter().enumerate() {
            if stream.is_empty() {
                continue;
            }
            let _ = writeln!(out, ".stream {}  ; {} instructions", Engine(e as u8).name(), stream.len());
            for inst in stream {
                out.push_str("    ");
                print_inst(&mut out, p, inst, &ctx);
                out.push('\n');
            }
        }
    }
    out
}

/// Prints one instruction (without indentation or newline).
pub fn print_inst(out: &mut String, p: &Program, inst: &Inst, ctx: &PrintCtx<'_>) {
    out.push_str(inst.op.opcode().mnemonic());
    let start = out.len();
    out.push(' ');
    inst.op.print_operands(out, ctx);
    if out.len() == start + 1 {
        out.truncate(start);
    }
    let sem = |id: u8| p.sem_name(id).map_or(format!("#{id}"), str::to_string);
    if let Some(w) = inst.wait {
        let _ = write!(out, " wait {}>={}", sem(w.sem), w.value);
    }
    if let Some(s) = inst.signal {
        match s.core {
            Some(c) => {
                let _ = write!(out, " signal core{c}.{}", sem(s.sem));
            }
            None => {
                let _ = write!(out, " signal {}", sem(s.sem));
            }
        }
    }
    if let Some(d) = inst.debug {
        if let Some(text) = p.debug_ops.get(d as usize) {
            let _ = write!(out, " !{}", escape(text));
        }
    }
}

/// The text of one instruction, for diagnostics and traces.
pub fn inst_text(p: &Program, inst: &Inst) -> String {
    let mut s = String::new();
    print_inst(&mut s, p, inst, &PrintCtx { tensors: &p.tensors });
    s
}
