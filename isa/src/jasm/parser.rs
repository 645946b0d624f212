//! The `.jasm` assembler: text to a validated [`Program`].
//!
//! Line-oriented recursive descent over logos tokens. An error ends the line it is
//! on and parsing resumes on the next, so one run reports every independent error.
//! Each instruction is checked against the target as soon as it is read, and a
//! broken constraint is reported at the span of the operand that breaks it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use logos::Logos;

use super::lexer::{unescape, Tok};
use crate::check::check_inst;
use crate::dtype::DType;
use crate::inst::{Engine, Inst, Op, Opcode, Signal, Wait};
use crate::program::{
    is_identifier, ExternalName, ExternalType, Program, ProgramError, Role, RooflineInputs, SemDecl, TensorDecl,
};
use crate::target::Target;

/// Byte range in the source.
pub type Span = Range<usize>;

/// One assembler diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsmError {
    /// Where in the source.
    pub span: Span,
    /// What is wrong.
    pub message: String,
}

/// Token cursor plus the declarations seen so far (operands resolve names through it).
pub struct Parser<'s> {
    toks: Vec<(Tok<'s>, Span)>,
    pos: usize,
    tensors: Vec<TensorDecl>,
    tensor_spans: Vec<Span>,
    /// Non-empty tensors by address: start -> (end, index), disjoint.
    tensor_ranges: BTreeMap<u64, (u64, usize)>,
    sems: HashMap<&'s str, u8>,
    field_spans: Vec<(&'static str, Span)>,
}

impl<'s> Parser<'s> {
    /// The current token.
    pub fn peek(&self) -> &Tok<'s> {
        &self.toks[self.pos].0
    }

    /// The current token's span.
    pub fn span(&self) -> Span {
        self.toks[self.pos].1.clone()
    }

    /// Consumes the current token (the final `Eof` is never consumed).
    pub fn bump(&mut self) -> (Tok<'s>, Span) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    /// An error at `span`.
    pub fn err(&self, span: Span, message: impl Into<String>) -> AsmError {
        AsmError { span, message: message.into() }
    }

    fn unexpected(&self, what: &str) -> AsmError {
        self.err(self.span(), format!("expected {what}, found {}", self.peek().describe()))
    }

    /// Consumes `tok` if it is next.
    pub fn eat(&mut self, tok: &Tok<'_>) -> bool {
        if self.peek() == tok {
            self.bump();
            true
        } else {
            false
        }
    }

    /// Consumes `tok` or reports that `what` was expected.
    pub fn expect(&mut self, tok: &Tok<'_>, what: &str) -> Result<Span, AsmError> {
        if self.peek() == tok {
            Ok(self.bump().1)
        } else {
            Err(self.unexpected(what))
        }
    }

    /// Consumes an identifier.
    pub fn ident(&mut self, what: &str) -> Result<(&'s str, Span), AsmError> {
        match *self.peek() {
            Tok::Ident(s) => {
                let span = self.bump().1;
                Ok((s, span))
            }
            _ => Err(self.unexpected(what)),
        }
    }

    /// Consumes an unsigned integer.
    pub fn uint(&mut self, what: &str) -> Result<(u64, Span), AsmError> {
        match *self.peek() {
            Tok::Int(v) => {
                let span = self.bump().1;
                Ok((v, span))
            }
            _ => Err(self.unexpected(what)),
        }
    }

    /// Consumes an integer with an optional `-`.
    pub fn sint(&mut self, what: &str) -> Result<(i64, Span), AsmError> {
        let start = self.span();
        let neg = self.eat(&Tok::Minus);
        let (v, span) = self.uint(what)?;
        let full = start.start..span.end;
        let v = if neg { i128::from(v).checked_neg() } else { Some(i128::from(v)) };
        let v = v
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| self.err(full.clone(), "integer does not fit 64 bits"))?;
        Ok((v, full))
    }

    /// Consumes an f32 literal: decimal, `inf`, `-inf` or `nan:0xBITS`.
    pub fn float(&mut self, what: &str) -> Result<f32, AsmError> {
        let neg = self.eat(&Tok::Minus);
        let span = self.span();
        let v = match *self.peek() {
            Tok::Float(s) => {
                self.bump();
                s.parse::<f32>().map_err(|_| self.err(span.clone(), "malformed number"))?
            }
            Tok::Int(v) => {
                self.bump();
                // Integer-to-float `as` rounds to nearest, ties to even.
                v as f32
            }
            Tok::Ident("inf") => {
                self.bump();
                f32::INFINITY
            }
            Tok::Ident("nan") if !neg => {
                self.bump();
                self.expect(&Tok::Colon, "`:` and the NaN's bits (`nan:0x7fc00000`)")?;
                let (bits, bspan) = self.uint("the NaN's bits")?;
                let v = u32::try_from(bits).ok().map(f32::from_bits).filter(|v| v.is_nan());
                v.ok_or_else(|| self.err(bspan, "bits are not a 32-bit NaN pattern"))?
            }
            _ => return Err(self.unexpected(what)),
        };
        Ok(if neg { -v } else { v })
    }

    /// Consumes a dtype name.
    pub fn dtype(&mut self) -> Result<DType, AsmError> {
        let (name, span) = self.ident("a dtype (f32, bf16, f16, f8e4m3, f8e5m2, i8, i32)")?;
        DType::from_name(name).ok_or_else(|| {
            self.err(span, format!("unknown dtype `{name}` (expected f32, bf16, f16, f8e4m3, f8e5m2, i8 or i32)"))
        })
    }

    /// Consumes `name=` and returns where the field starts.
    pub fn field_key(&mut self, name: &'static str) -> Result<usize, AsmError> {
        let start = self.span().start;
        match *self.peek() {
            Tok::Ident(found) if found == name => {
                self.bump();
                self.expect(&Tok::Eq, &format!("`=` after `{name}`"))?;
                Ok(start)
            }
            _ => Err(self.unexpected(&format!("operand `{name}=`"))),
        }
    }

    /// Records that field `name` spanned from `start` to the last consumed token.
    pub fn record_field(&mut self, name: &'static str, start: usize) {
        let end = self.toks[self.pos.saturating_sub(1)].1.end.max(start);
        self.field_spans.push((name, start..end));
    }

    /// HBM address of a declared tensor.
    pub fn tensor_addr(&self, name: &str) -> Option<u64> {
        self.tensors.iter().find(|t| t.name == name).map(|t| t.addr)
    }

    fn at_line_end(&self) -> bool {
        matches!(self.peek(), Tok::Newline | Tok::Eof)
    }

    fn end_line(&mut self) -> Result<(), AsmError> {
        if self.at_line_end() {
            self.eat(&Tok::Newline);
            Ok(())
        } else {
            Err(self.unexpected("end of line"))
        }
    }

    fn skip_line(&mut self) {
        while !self.at_line_end() {
            self.bump();
        }
        self.eat(&Tok::Newline);
    }

    /// Consumes a core prefix, `coreN.` or `cores[A, B, ...].`, if one is next,
    /// giving its core set (bit `c`: core `c`) and span. Whether the cores
    /// exist is the target's to check.
    pub fn core_prefix(&mut self) -> Result<Option<(u32, Span)>, AsmError> {
        let start = self.span();
        let next = self.toks.get(self.pos + 1).map(|t| &t.0);
        let mask = match (self.peek(), next) {
            (Tok::Ident("cores"), Some(Tok::LBracket)) => {
                self.bump();
                self.bump();
                let mut mask = 0u32;
                loop {
                    mask |= self.core_bit()?;
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.expect(&Tok::RBracket, "`]` closing the core list")?;
                mask
            }
            (Tok::Ident(name), Some(Tok::Dot)) if name.strip_prefix("core").is_some_and(is_decimal) => {
                let n: u64 = name[4..].parse().unwrap_or(u64::MAX);
                if n >= 32 {
                    return Err(self.err(start, format!("core {n} does not exist (a chip has at most 32 cores)")));
                }
                self.bump();
                1 << n
            }
            _ => return Ok(None),
        };
        let end = self.expect(&Tok::Dot, "`.` after the core")?;
        Ok(Some((mask, start.start..end.end)))
    }

    fn core_bit(&mut self) -> Result<u32, AsmError> {
        let (n, span) = self.uint("a core number")?;
        if n >= 32 {
            return Err(self.err(span, format!("core {n} does not exist (a chip has at most 32 cores)")));
        }
        Ok(1 << n)
    }

    fn semaphore(&mut self) -> Result<(u8, Span), AsmError> {
        let span = self.span();
        match *self.peek() {
            Tok::SemId(id) => {
                self.bump();
                let id = u8::try_from(id).map_err(|_| self.err(span.clone(), "semaphore number must be below 255"))?;
                Ok((id, span))
            }
            Tok::Ident(name) => {
                self.bump();
                let id = *self.sems.get(name).ok_or_else(|| {
                    self.err(
                        span.clone(),
                        format!("undeclared semaphore `{name}` (declare it with `.sem {name} = N` or write `#N`)"),
                    )
                })?;
                Ok((id, span))
            }
            _ => Err(self.unexpected("a semaphore (a `.sem` name or `#N`)")),
        }
    }
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A parsed instruction with what diagnostics need.
struct ParsedInst {
    inst: Inst,
    debug: Option<String>,
    span: Span,
}

struct State<'s> {
    target: Target,
    cores: Vec<Vec<Vec<ParsedInst>>>,
    seen_streams: HashMap<(usize, u8), Span>,
    seen_cores: HashMap<usize, Span>,
    core: Option<usize>,
    stream: Option<Engine>,
    /// Set when a `.core`/`.stream` directive failed: its instructions are skipped
    /// silently rather than reported again as misplaced.
    skipping_stream: bool,
    roofline: Option<RooflineInputs>,
    sem_decls: Vec<(SemDecl, Span)>,
    external: Vec<ExternalName>,
    _src: &'s str,
}

fn lex(src: &str) -> (Vec<(Tok<'_>, Span)>, Vec<AsmError>) {
    let mut toks = Vec::new();
    let mut errors = Vec::new();
    let mut line_has_error = false;
    let mut line: Vec<(Tok<'_>, Span)> = Vec::new();
    for (tok, span) in Tok::lexer(src).spanned() {
        match tok {
            Ok(Tok::Newline) => {
                if !line_has_error {
                    toks.append(&mut line);
                }
                line.clear();
                line_has_error = false;
                toks.push((Tok::Newline, span));
            }
            Ok(t) => line.push((t, span)),
            Err(()) => {
                let text = &src[span.clone()];
                let message = if text.starts_with(|c: char| c.is_ascii_digit()) || text.starts_with('#') {
                    format!("number `{text}` is too large")
                } else if text.starts_with('"') {
                    "unterminated string (strings end on the same line; escapes are `\\\"` and `\\\\`)".to_string()
                } else {
                    format!("unexpected character `{}`", text.chars().next().unwrap_or(' ').escape_debug())
                };
                errors.push(AsmError { span, message });
                line_has_error = true;
            }
        }
    }
    if !line_has_error {
        toks.append(&mut line);
    }
    toks.push((Tok::Eof, src.len()..src.len()));
    (toks, errors)
}

/// Assembles `.jasm` source into a validated program, or returns every error found.
pub fn assemble(src: &str) -> Result<Program, Vec<AsmError>> {
    assemble_with(src, None)
}

/// [`assemble`], where `.target` may also name `custom` (a target description
/// read from a file) besides the built-in targets.
pub fn assemble_with(src: &str, custom: Option<&Target>) -> Result<Program, Vec<AsmError>> {
    let (toks, mut errors) = lex(src);
    let mut p = Parser {
        toks,
        pos: 0,
        tensors: Vec::new(),
        tensor_spans: Vec::new(),
        tensor_ranges: BTreeMap::new(),
        sems: HashMap::new(),
        field_spans: Vec::new(),
    };

    // The first directive names the target; nothing can be checked without it.
    while p.eat(&Tok::Newline) {}
    let target = match parse_target(&mut p, custom) {
        Ok(t) => t,
        Err(e) => {
            errors.push(e);
            return Err(errors);
        }
    };
    let engines = target.engines_per_core() as usize;
    let mut st = State {
        cores: vec![empty_core(engines)],
        target,
        seen_streams: HashMap::new(),
        seen_cores: HashMap::new(),
        core: None,
        stream: None,
        skipping_stream: false,
        roofline: None,
        sem_decls: Vec::new(),
        external: Vec::new(),
        _src: src,
    };
    while *p.peek() != Tok::Eof {
        if p.eat(&Tok::Newline) {
            continue;
        }
        if let Err(e) = parse_line(&mut p, &mut st) {
            errors.push(e);
            p.skip_line();
        }
    }
    check_stream_ends(&st, &mut errors);
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.span.start);
        return Err(errors);
    }
    let program = build(p.tensors, &p.tensor_spans, st);
    program.map_err(|e| vec![e])
}

fn empty_core(engines: usize) -> Vec<Vec<ParsedInst>> {
    (0..engines).map(|_| Vec::new()).collect()
}

fn parse_target(p: &mut Parser<'_>, custom: Option<&Target>) -> Result<Target, AsmError> {
    let start = p.span();
    if !(p.eat(&Tok::Dot) && matches!(p.peek(), Tok::Ident("target"))) {
        return Err(p.err(start, "a .jasm file starts with `.target \"NAME\"` (e.g. `.target \"jpu1\"`)"));
    }
    p.bump();
    let span = p.span();
    let name = match *p.peek() {
        Tok::Str(s) => {
            p.bump();
            unescape(s)
        }
        _ => return Err(p.unexpected("the target name as a string, e.g. \"jpu-tiny\"")),
    };
    let target = match custom {
        Some(t) if t.name == name => t.clone(),
        _ => Target::builtin(&name).map_err(|e| p.err(span, e.to_string()))?,
    };
    p.end_line()?;
    Ok(target)
}

fn parse_line<'s>(p: &mut Parser<'s>, st: &mut State<'s>) -> Result<(), AsmError> {
    if p.eat(&Tok::Dot) {
        let (name, span) = p.ident("a directive name")?;
        return match name {
            "target" => Err(p.err(span, "`.target` may appear only once, on the first line")),
            "tensor" => parse_tensor(p, st),
            "sem" => parse_sem(p, st),
            "roofline" => parse_roofline(p, st, span),
            "extern" => parse_extern(p, st),
            "core" | "stream" => {
                st.stream = None;
                let result = if name == "core" { parse_core(p, st) } else { parse_stream(p, st) };
                st.skipping_stream = result.is_err();
                result
            }
            other => Err(p.err(
                span,
                format!("unknown directive `.{other}` (expected .tensor, .sem, .roofline, .extern, .core or .stream)"),
            )),
        };
    }
    parse_instruction(p, st)
}

fn parse_tensor(p: &mut Parser<'_>, st: &mut State<'_>) -> Result<(), AsmError> {
    let (name, name_span) = p.ident("the tensor's name")?;
    if p.tensor_addr(name).is_some() {
        return Err(p.err(name_span, format!("tensor `{name}` is already declared")));
    }
    p.expect(&Tok::Colon, "`:` and the tensor's type")?;
    let dtype = p.dtype()?;
    p.expect(&Tok::LBracket, "`[` and the tensor's dims")?;
    let mut shape = Vec::new();
    if !p.eat(&Tok::RBracket) {
        loop {
            shape.push(p.uint("a dim size")?.0);
            if !p.eat(&Tok::Comma) {
                break;
            }
        }
        p.expect(&Tok::RBracket, "`]` closing the dims")?;
    }
    let type_end = p.toks[p.pos - 1].1.end;
    let (role_name, role_span) = p.ident("the tensor's role (input, output, const or scratch)")?;
    let role = Role::from_name(role_name).ok_or_else(|| {
        p.err(role_span.clone(), format!("unknown role `{role_name}` (expected input, output, const or scratch)"))
    })?;
    p.expect(&Tok::At, "`@` and the tensor's HBM address")?;
    let (addr, addr_span) = p.uint("the HBM byte address")?;
    let mut t = TensorDecl { name: name.to_string(), dtype, shape, addr, role, data: Vec::new() };
    if t.shape.len() > 8 {
        return Err(
            p.err(name_span.start..type_end, format!("tensor has {} dims; at most 8 are allowed", t.shape.len()))
        );
    }
    let size = t.shape.iter().try_fold(dtype.size_bytes() as u64, |a, &d| a.checked_mul(d));
    let hbm = st.target.hbm.size_bytes;
    let end = size.and_then(|s| addr.checked_add(s)).filter(|&e| e <= hbm);
    let Some(end) = end else {
        return Err(
            p.err(addr_span, format!("tensor bytes at 0x{addr:x} exceed {}'s HBM of 0x{hbm:x} bytes", st.target.name))
        );
    };
    let size = end - addr;
    if p.eat(&Tok::Eq) {
        let span = p.span();
        let Tok::Str(s) = *p.peek() else {
            return Err(p.unexpected("the constant's bytes as a hex string"));
        };
        p.bump();
        if role != Role::Const {
            return Err(p.err(span, "only `const` tensors carry data"));
        }
        let hex = unescape(s);
        if hex.len() as u64 != size * 2 {
            return Err(
                p.err(span, format!("constant data has {} hex digits; {size} bytes need {}", hex.len(), size * 2))
            );
        }
        t.data = decode_hex(&hex).ok_or_else(|| p.err(span.clone(), "constant data must be hex digits"))?;
    } else if role == Role::Const {
        return Err(p.err(role_span, "a `const` tensor needs its bytes: `= \"00ff...\"`"));
    }
    // The declared tensors are disjoint: only the last one starting before
    // `end` can overlap.
    let before = p.tensor_ranges.range(..end).next_back().map(|(_, &(e, i))| (e, i));
    if let Some((_, i)) = before.filter(|&(e, _)| size > 0 && e > addr) {
        let (other, line) = (&p.tensors[i], line_of(p, p.tensor_spans[i].start));
        return Err(p.err(
            addr_span,
            format!("tensor `{name}` overlaps tensor `{}` (declared on line {line}) in HBM", other.name),
        ));
    }
    p.end_line()?;
    if size > 0 {
        p.tensor_ranges.insert(addr, (end, p.tensors.len()));
    }
    p.tensors.push(t);
    p.tensor_spans.push(name_span);
    Ok(())
}

/// The source span of what a program-level rule names: an instruction
/// (`core C ENGINE[I]`) or a tensor (``tensor `NAME` ``); else the file's start.
fn program_error_span(e: &ProgramError, program: &Program, tensor_spans: &[Span], inst: &[Vec<Vec<Span>>]) -> Span {
    let instruction = || {
        let (core, rest) = e.location.strip_prefix("core ")?.split_once(' ')?;
        let (engine, index) = rest.strip_suffix(']')?.split_once('[')?;
        let e = Engine::from_name(engine)?;
        inst.get(core.parse::<usize>().ok()?)?.get(e.0 as usize)?.get(index.parse::<usize>().ok()?).cloned()
    };
    let tensor = || {
        let name = e.location.strip_prefix("tensor `")?.strip_suffix('`')?;
        tensor_spans.get(program.tensors.iter().position(|t| t.name == name)?).cloned()
    };
    instruction().or_else(tensor).unwrap_or(0..0)
}

fn line_of(p: &Parser<'_>, offset: usize) -> usize {
    1 + p.toks.iter().take_while(|(_, s)| s.start < offset).filter(|(t, _)| *t == Tok::Newline).count()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    (0..b.len() / 2)
        .map(|i| std::str::from_utf8(&b[2 * i..2 * i + 2]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

fn parse_sem<'s>(p: &mut Parser<'s>, st: &mut State<'s>) -> Result<(), AsmError> {
    let (name, span) = p.ident("the semaphore's name")?;
    if p.sems.contains_key(name) {
        return Err(p.err(span, format!("semaphore `{name}` is already declared")));
    }
    p.expect(&Tok::Eq, "`=` and the semaphore's number")?;
    let (id, id_span) = p.uint("the semaphore's number")?;
    if id >= st.target.sync.semaphores as u64 {
        return Err(p.err(
            id_span,
            format!("semaphore {id} does not exist ({} has {})", st.target.name, st.target.sync.semaphores),
        ));
    }
    if let Some((other, _)) = st.sem_decls.iter().find(|(d, _)| d.id as u64 == id) {
        return Err(p.err(id_span, format!("semaphore {id} is already named `{}`", other.name)));
    }
    p.end_line()?;
    p.sems.insert(name, id as u8);
    st.sem_decls.push((SemDecl { id: id as u8, name: name.to_string() }, span));
    Ok(())
}

/// Field names of `.roofline`, in order.
pub const ROOFLINE_FIELDS: [&str; 6] =
    ["flops_f32", "flops_16bit", "flops_8bit", "input_bytes", "output_bytes", "transcendentals"];

fn parse_roofline(p: &mut Parser<'_>, st: &mut State<'_>, span: Span) -> Result<(), AsmError> {
    if st.roofline.is_some() {
        return Err(p.err(span, "`.roofline` may appear only once"));
    }
    let mut v = [0u64; 6];
    for (i, name) in ROOFLINE_FIELDS.iter().enumerate() {
        if i > 0 {
            p.expect(&Tok::Comma, "`,` between roofline fields")?;
        }
        p.field_key(name)?;
        v[i] = p.uint("a count")?.0;
    }
    p.end_line()?;
    st.roofline = Some(RooflineInputs {
        flops_f32: v[0],
        flops_16bit: v[1],
        flops_8bit: v[2],
        input_bytes: v[3],
        output_bytes: v[4],
        transcendentals: v[5],
    });
    Ok(())
}

/// `.extern TENSOR "model name" TYPE`: the name and element type a model file
/// gives an input or output (after the tensor's `.tensor`).
fn parse_extern(p: &mut Parser<'_>, st: &mut State<'_>) -> Result<(), AsmError> {
    let (tensor, span) = p.ident("the tensor's name")?;
    let index = p.tensors.iter().position(|t| t.name == tensor);
    let index = index.ok_or_else(|| p.err(span.clone(), format!("tensor `{tensor}` is not declared (yet)")))?;
    let Tok::Str(s) = *p.peek() else {
        return Err(p.unexpected("the model's name for the tensor, as a string"));
    };
    p.bump();
    let name = unescape(s);
    let (ty, ty_span) = p.ident("the model's element type (float32, int64, ...)")?;
    let elem = ExternalType::from_name(ty).ok_or_else(|| {
        let names: Vec<&str> = ExternalType::ALL.iter().map(|t| t.name()).collect();
        p.err(ty_span, format!("unknown element type `{ty}` (expected one of {})", names.join(", ")))
    })?;
    p.end_line()?;
    st.external.push(ExternalName { tensor: index as u32, name, elem });
    Ok(())
}

fn parse_core(p: &mut Parser<'_>, st: &mut State<'_>) -> Result<(), AsmError> {
    let (n, span) = p.uint("the core number")?;
    if n >= st.target.cores as u64 {
        return Err(p.err(span, format!("core {n} does not exist ({} has {} cores)", st.target.name, st.target.cores)));
    }
    let n = n as usize;
    if let Some(prev) = st.seen_cores.get(&n) {
        let line = line_of(p, prev.start);
        return Err(p.err(span, format!("core {n} was already started on line {line}")));
    }
    p.end_line()?;
    st.seen_cores.insert(n, span);
    let engines = st.target.engines_per_core() as usize;
    while st.cores.len() <= n {
        st.cores.push(empty_core(engines));
    }
    st.core = Some(n);
    st.stream = None;
    Ok(())
}

fn parse_stream(p: &mut Parser<'_>, st: &mut State<'_>) -> Result<(), AsmError> {
    let (name, span) = p.ident("an engine name (pe, ve, act, dma0, ...)")?;
    let Some(core) = st.core else {
        return Err(p.err(span, "`.stream` must follow a `.core N` directive"));
    };
    let engine = Engine::from_name(name).filter(|e| (e.0 as u32) < st.target.engines_per_core()).ok_or_else(|| {
        p.err(
            span.clone(),
            format!(
                "unknown engine `{name}` ({} has pe, ve, act and dma0..dma{})",
                st.target.name,
                st.target.dma.queues - 1
            ),
        )
    })?;
    if let Some(prev) = st.seen_streams.get(&(core, engine.0)) {
        let line = line_of(p, prev.start);
        return Err(p.err(span, format!("stream `{name}` of core {core} was already started on line {line}")));
    }
    p.end_line()?;
    st.seen_streams.insert((core, engine.0), span);
    st.stream = Some(engine);
    Ok(())
}

fn parse_instruction(p: &mut Parser<'_>, st: &mut State<'_>) -> Result<(), AsmError> {
    let (mnemonic, mspan) = p.ident("an instruction or a directive")?;
    let opcode = Opcode::from_mnemonic(mnemonic).ok_or_else(|| {
        let all: Vec<&str> = Opcode::ALL.iter().map(|o| o.mnemonic()).collect();
        p.err(mspan.clone(), format!("unknown instruction `{mnemonic}` (instructions: {})", all.join(", ")))
    })?;
    let (Some(core), Some(engine)) = (st.core, st.stream) else {
        if st.skipping_stream {
            p.skip_line();
            return Ok(());
        }
        return Err(p.err(mspan, "instructions go inside a stream: `.core N` then `.stream ENGINE`"));
    };
    p.field_spans.clear();
    let op = Op::parse_operands(opcode, p)?;
    let mut inst = Inst::new(op);
    let mut debug = None;
    if matches!(p.peek(), Tok::Ident("wait")) {
        let start = p.bump().1.start;
        let (sem, _) = p.semaphore()?;
        p.expect(&Tok::Ge, "`>=` and the value to wait for")?;
        let (value, vspan) = p.uint("the value to wait for")?;
        let value = u32::try_from(value).map_err(|_| p.err(vspan.clone(), "wait value does not fit 32 bits"))?;
        inst.wait = Some(Wait { sem, value });
        p.field_spans.push(("wait", start..vspan.end));
    }
    if matches!(p.peek(), Tok::Ident("signal")) {
        let start = p.bump().1.start;
        let core = match p.core_prefix()? {
            Some((mask, _)) if mask.count_ones() == 1 => Some(mask.trailing_zeros() as u8),
            Some((_, span)) => return Err(p.err(span, "a signal increments one core's semaphore")),
            None => None,
        };
        let (sem, sspan) = p.semaphore()?;
        inst.signal = Some(Signal { sem, core });
        p.field_spans.push(("signal", start..sspan.end));
    }
    if p.eat(&Tok::Bang) {
        let span = p.span();
        let Tok::Str(s) = *p.peek() else {
            return Err(p.unexpected("the debug op as a string after `!`"));
        };
        p.bump();
        let text = unescape(s);
        if text.chars().any(char::is_control) {
            return Err(p.err(span, "debug strings may not contain control characters"));
        }
        debug = Some(text);
    }
    let line_end = p.toks[p.pos.saturating_sub(1)].1.end;
    if !p.at_line_end() {
        return Err(p.unexpected("end of line"));
    }
    let span = mspan.start..line_end;
    if let Err(ce) = check_inst(&inst, engine, &st.target) {
        let at = if ce.operand == "engine" {
            mspan.clone()
        } else {
            p.field_spans.iter().find(|(n, _)| *n == ce.operand).map_or(span.clone(), |(_, s)| s.clone())
        };
        let message = if ce.operand == "engine" { ce.message } else { format!("`{mnemonic}`: {ce}") };
        return Err(p.err(at, message));
    }
    let stream = &mut st.cores[core][engine.0 as usize];
    if let Some(last) = stream.last() {
        if matches!(last.inst.op, Op::Halt {}) {
            return Err(p.err(mspan, format!("instruction after `halt`: `halt` must end stream `{}`", engine.name())));
        }
    }
    stream.push(ParsedInst { inst, debug, span });
    p.end_line()
}

fn check_stream_ends(st: &State<'_>, errors: &mut Vec<AsmError>) {
    for (c, core) in st.cores.iter().enumerate() {
        for (e, stream) in core.iter().enumerate() {
            if let Some(last) = stream.last() {
                if !matches!(last.inst.op, Op::Halt {}) {
                    errors.push(AsmError {
                        span: last.span.clone(),
                        message: format!("stream `{}` of core {c} must end with `halt`", Engine(e as u8).name()),
                    });
                }
            }
        }
    }
}

fn build(tensors: Vec<TensorDecl>, tensor_spans: &[Span], st: State<'_>) -> Result<Program, AsmError> {
    let inst_spans: Vec<Vec<Vec<Span>>> = st
        .cores
        .iter()
        .map(|core| core.iter().map(|s| s.iter().map(|pi| pi.span.clone()).collect()).collect())
        .collect();
    let mut debug_ops: Vec<String> = Vec::new();
    let mut index: HashMap<String, u32> = HashMap::new();
    let cores = st
        .cores
        .into_iter()
        .map(|core| {
            core.into_iter()
                .map(|stream| {
                    stream
                        .into_iter()
                        .map(|pi| {
                            let mut inst = pi.inst;
                            inst.debug = pi.debug.map(|s| {
                                *index.entry(s.clone()).or_insert_with(|| {
                                    debug_ops.push(s);
                                    debug_ops.len() as u32 - 1
                                })
                            });
                            inst
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut semaphores: Vec<SemDecl> = st.sem_decls.into_iter().map(|(d, _)| d).collect();
    semaphores.sort_by_key(|s| s.id);
    let program = Program {
        target: st.target.name.clone(),
        target_hash: st.target.hash(),
        tensors,
        semaphores,
        debug_ops,
        cores,
        roofline: st.roofline,
        external: st.external,
    };
    if let Err(e) = program.validate(&st.target) {
        let span = program_error_span(&e, &program, tensor_spans, &inst_spans);
        return Err(AsmError { span, message: e.to_string() });
    }
    debug_assert!(program.tensors.iter().all(|t| is_identifier(&t.name)));
    Ok(program)
}
