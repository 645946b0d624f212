//! A whole chip program in memory: what `.jbin` and `.jasm` both describe.
//!
//! [`Program::validate`] is the contract every producer and consumer shares: a
//! program that passes it encodes to a `.jbin` that reads back equal, prints to
//! `.jasm` that assembles back equal, and has only instructions that pass
//! [`crate::check::check_inst`] on the engines they sit on.

use std::fmt;

use crate::check::check_inst;
use crate::dtype::DType;
use crate::inst::{Engine, Inst, Op};
use crate::target::Target;

/// What a tensor in HBM is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Filled by the caller before the run.
    Input,
    /// Read back by the caller after the run.
    Output,
    /// Initialised from the binary's constant data.
    Const,
    /// Working memory of the program.
    Scratch,
}

impl Role {
    /// Every role, in code order.
    pub const ALL: [Role; 4] = [Role::Input, Role::Output, Role::Const, Role::Scratch];

    /// Text name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Output => "output",
            Role::Const => "const",
            Role::Scratch => "scratch",
        }
    }

    /// Inverse of [`Role::name`].
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A named tensor in HBM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    /// Name (an identifier; IR values drop their `%`).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dims, outermost first (empty for a scalar).
    pub shape: Vec<u64>,
    /// Byte address in HBM.
    pub addr: u64,
    /// What it is for.
    pub role: Role,
    /// Initial bytes for [`Role::Const`] tensors (exactly `size_bytes()`); empty otherwise.
    pub data: Vec<u8>,
}

impl TensorDecl {
    /// Elements (saturating; validation rejects overflow).
    pub fn elems(&self) -> u64 {
        self.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Bytes in HBM (saturating; validation rejects overflow).
    pub fn size_bytes(&self) -> u64 {
        self.elems().saturating_mul(self.dtype.size_bytes() as u64)
    }
}

/// A named semaphore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemDecl {
    /// Semaphore index.
    pub id: u8,
    /// Name used in `.jasm`.
    pub name: String,
}

/// The math a program performs, as the compiler counted it for the roofline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RooflineInputs {
    /// matmul FLOPs with f32 operands.
    pub flops_f32: u64,
    /// matmul FLOPs with 16-bit operands.
    pub flops_16bit: u64,
    /// matmul FLOPs with 8-bit operands.
    pub flops_8bit: u64,
    /// Bytes of every program input, read once.
    pub input_bytes: u64,
    /// Bytes of every program output, written once.
    pub output_bytes: u64,
    /// Transcendental elements the math requires.
    pub transcendentals: u64,
}

/// The element type a model file declares for an input or output (what
/// `jalc run` converts `.npy` files from and writes outputs as).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalType {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    Bf16,
    /// float64.
    F64,
    /// int64.
    I64,
    /// int32.
    I32,
    /// int16.
    I16,
    /// int8.
    I8,
    /// uint8.
    U8,
    /// bool.
    Bool,
}

impl ExternalType {
    /// Every type, in code order.
    pub const ALL: [ExternalType; 10] = [
        ExternalType::F32,
        ExternalType::F16,
        ExternalType::Bf16,
        ExternalType::F64,
        ExternalType::I64,
        ExternalType::I32,
        ExternalType::I16,
        ExternalType::I8,
        ExternalType::U8,
        ExternalType::Bool,
    ];

    /// Its code in `.jbin` (position in [`ExternalType::ALL`]).
    pub fn code(self) -> u8 {
        ExternalType::ALL.iter().position(|&t| t == self).unwrap_or(0) as u8
    }

    /// The type of a code.
    pub fn from_code(c: u8) -> Option<ExternalType> {
        ExternalType::ALL.get(c as usize).copied()
    }

    /// Its name in `.jasm` (numpy's).
    pub fn name(self) -> &'static str {
        ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
            [self.code() as usize]
    }

    /// The type of a `.jasm` name.
    pub fn from_name(s: &str) -> Option<ExternalType> {
        ExternalType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// True for the float types.
    pub fn is_float(self) -> bool {
        matches!(self, ExternalType::F32 | ExternalType::F16 | ExternalType::Bf16 | ExternalType::F64)
    }
}

/// The name and type a model file gives one of the program's inputs or
/// outputs (an ONNX graph's names are not identifiers: `onnx::Shape_422`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalName {
    /// Index of the tensor in the table (an input or an output).
    pub tensor: u32,
    /// The model's name: 1 to 1024 bytes of UTF-8 without control characters.
    pub name: String,
    /// The model's element type.
    pub elem: ExternalType,
}

/// A program for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Target name.
    pub target: String,
    /// Hash of the target description it was built for.
    pub target_hash: [u8; 8],
    /// HBM tensors, in declaration order.
    pub tensors: Vec<TensorDecl>,
    /// Named semaphores, sorted by id.
    pub semaphores: Vec<SemDecl>,
    /// Debug-op strings, in order of first use.
    pub debug_ops: Vec<String>,
    /// `cores[c][e]`: the instruction stream of engine `e` of core `c`.
    pub cores: Vec<Vec<Vec<Inst>>>,
    /// Roofline inputs recorded by the compiler (absent for hand-written programs).
    pub roofline: Option<RooflineInputs>,
    /// Model-file names of inputs and outputs (imported models; often empty).
    pub external: Vec<ExternalName>,
}

/// A program that breaks a rule: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramError {
    /// Where: `core 0 pe[3]`, `tensor x`, ...
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::error::Error for ProgramError {}

/// True for names usable in `.jasm` (`[A-Za-z_][A-Za-z0-9_]*`, not a keyword).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 255
}

impl Program {
    /// An empty program (one core, every stream empty) for `target`.
    pub fn new(target: &Target) -> Program {
        Program {
            target: target.name.clone(),
            target_hash: target.hash(),
            tensors: Vec::new(),
            semaphores: Vec::new(),
            debug_ops: Vec::new(),
            cores: vec![vec![Vec::new(); target.engines_per_core() as usize]],
            roofline: None,
            external: Vec::new(),
        }
    }

    /// Every instruction with its core and engine, in canonical order.
    pub fn instructions(&self) -> impl Iterator<Item = (usize, Engine, usize, &Inst)> {
        self.cores.iter().enumerate().flat_map(|(c, engines)| {
            engines.iter().enumerate().flat_map(move |(e, stream)| {
                stream.iter().enumerate().map(move |(i, inst)| (c, Engine(e as u8), i, inst))
            })
        })
    }

    /// The first core an instruction signals or writes over the fabric that
    /// this program does not run.
    fn missing_core(&self, inst: &Inst) -> Option<usize> {
        let n = self.cores.len();
        let signalled = inst.signal.and_then(|s| s.core).map(usize::from).filter(|&c| c >= n);
        let written = match &inst.op {
            Op::Dma { xfer } => xfer.dst.core_list().find(|&c| c >= n),
            _ => None,
        };
        signalled.or(written)
    }

    /// True when some instruction signals another core or writes another
    /// core's SRAM (such programs need `.jbin` format 1.2).
    pub fn uses_fabric(&self) -> bool {
        self.instructions().any(|(_, _, _, inst)| {
            inst.signal.is_some_and(|s| s.core.is_some()) || matches!(&inst.op, Op::Dma { xfer } if xfer.is_fabric())
        })
    }

    /// The semaphore's name, if it has one.
    pub fn sem_name(&self, id: u8) -> Option<&str> {
        self.semaphores.iter().find(|s| s.id == id).map(|s| s.name.as_str())
    }

    /// Checks every rule of the format against `target`.
    pub fn validate(&self, target: &Target) -> Result<(), ProgramError> {
        let err = |location: String, message: String| Err(ProgramError { location, message });
        if self.target != target.name {
            return err("target".into(), format!("program is for `{}`, not `{}`", self.target, target.name));
        }
        if self.target_hash != target.hash() {
            return err(
                "target".into(),
                format!("program was built for a different description of `{}` (target hash mismatch)", self.target),
            );
        }
        if self.cores.is_empty() || self.cores.len() > target.cores as usize {
            return err(
                "cores".into(),
                format!("program has {} cores; {} has 1 to {}", self.cores.len(), target.name, target.cores),
            );
        }
        let engines = target.engines_per_core() as usize;
        for (c, core) in self.cores.iter().enumerate() {
            if core.len() != engines {
                return err(
                    format!("core {c}"),
                    format!("has {} streams; {} has {engines} engines", core.len(), target.name),
                );
            }
            for (e, stream) in core.iter().enumerate() {
                let engine = Engine(e as u8);
                for (i, inst) in stream.iter().enumerate() {
                    let at = || format!("core {c} {}[{i}]", engine.name());
                    if let Err(ce) = check_inst(inst, engine, target) {
                        return err(at(), ce.to_string());
                    }
                    let is_last = i + 1 == stream.len();
                    if matches!(inst.op, Op::Halt {}) != is_last {
                        let msg = if is_last {
                            "a stream must end with `halt`"
                        } else {
                            "`halt` must be the last instruction of its stream"
                        };
                        return err(at(), msg.into());
                    }
                    if let Some(other) = self.missing_core(inst) {
                        let n = self.cores.len();
                        let cores = if n == 1 { "core 0 only".to_string() } else { format!("cores 0 to {}", n - 1) };
                        return err(at(), format!("reaches core {other}, but the program runs on {cores}"));
                    }
                    if let Some(d) = inst.debug {
                        if d as usize >= self.debug_ops.len() {
                            return err(
                                at(),
                                format!("debug op {d} is past the {} debug strings", self.debug_ops.len()),
                            );
                        }
                    }
                }
            }
        }
        self.validate_tensors(target)?;
        crate::accesses::validate_accesses(self, target)?;
        self.validate_semaphores(target)?;
        self.validate_debug_ops()?;
        self.validate_external()
    }

    /// External names: each of an input or output, at most once per tensor,
    /// 1 to 1024 bytes without control characters, all different.
    fn validate_external(&self) -> Result<(), ProgramError> {
        let mut tensors = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for (i, x) in self.external.iter().enumerate() {
            let fail = |message: String| Err(ProgramError { location: format!("external name {i}"), message });
            let Some(t) = self.tensors.get(x.tensor as usize) else {
                return fail(format!("names tensor {} of {}", x.tensor, self.tensors.len()));
            };
            if !matches!(t.role, Role::Input | Role::Output) {
                return fail(format!("names `{}`, which is not an input or an output", t.name));
            }
            if !tensors.insert(x.tensor) {
                return fail(format!("`{}` has a second external name", t.name));
            }
            if x.name.is_empty() || x.name.len() > 1024 || x.name.chars().any(char::is_control) {
                return fail("must be 1 to 1024 bytes without control characters".into());
            }
            if !names.insert(x.name.as_str()) {
                return fail(format!("\"{}\" names two tensors", x.name));
            }
        }
        Ok(())
    }

    fn validate_tensors(&self, target: &Target) -> Result<(), ProgramError> {
        let mut spans: Vec<(u64, u64, &str)> = Vec::new();
        let mut names = std::collections::HashSet::new();
        for t in &self.tensors {
            let at = format!("tensor `{}`", t.name);
            let fail = |message: String| Err(ProgramError { location: at.clone(), message });
            if !is_identifier(&t.name) {
                return fail("name must be an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 255 bytes)".into());
            }
            if !names.insert(t.name.as_str()) {
                return fail("is declared twice".into());
            }
            if t.shape.len() > 8 {
                return fail(format!("has {} dims; at most 8 are allowed", t.shape.len()));
            }
            let size = t
                .shape
                .iter()
                .try_fold(t.dtype.size_bytes() as u64, |a, &d| a.checked_mul(d))
                .filter(|&s| s <= target.hbm.size_bytes);
            let Some(size) = size else {
                return fail(format!("is larger than {}'s HBM", target.name));
            };
            let end = t.addr.checked_add(size).filter(|&e| e <= target.hbm.size_bytes);
            let Some(end) = end else {
                return fail(format!(
                    "bytes 0x{:x}+{size} exceed {}'s HBM of 0x{:x} bytes",
                    t.addr, target.name, target.hbm.size_bytes
                ));
            };
            match (t.role, t.data.len() as u64) {
                (Role::Const, n) if n != size => {
                    return fail(format!("constant data has {n} bytes; the tensor has {size}"))
                }
                (Role::Const, _) | (_, 0) => {}
                (_, _) => return fail("only const tensors carry data".into()),
            }
            if size > 0 {
                spans.push((t.addr, end, &t.name));
            }
        }
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(ProgramError {
                    location: format!("tensor `{}`", w[1].2),
                    message: format!("overlaps tensor `{}` in HBM", w[0].2),
                });
            }
        }
        Ok(())
    }

    fn validate_semaphores(&self, target: &Target) -> Result<(), ProgramError> {
        for (i, s) in self.semaphores.iter().enumerate() {
            let fail = |message: String| Err(ProgramError { location: format!("semaphore `{}`", s.name), message });
            if !is_identifier(&s.name) {
                return fail("name must be an identifier".into());
            }
            if s.id as u32 >= target.sync.semaphores {
                return fail(format!("id {} does not exist ({} has {})", s.id, target.name, target.sync.semaphores));
            }
            if i > 0 && self.semaphores[i - 1].id >= s.id {
                return fail("semaphore names must be sorted by id with one name per id".into());
            }
            if self.semaphores[..i].iter().any(|o| o.name == s.name) {
                return fail("is declared twice".into());
            }
        }
        Ok(())
    }

    fn validate_debug_ops(&self) -> Result<(), ProgramError> {
        // Canonical: strings appear in order of first use, each used, none repeated.
        let mut next = 0u32;
        for (c, e, i, inst) in self.instructions() {
            if let Some(d) = inst.debug {
                if d == next {
                    next += 1;
                } else if d > next {
                    return Err(ProgramError {
                        location: format!("core {c} {}[{i}]", e.name()),
                        message: format!(
                            "debug op {d} is used before debug op {next} (strings must be in order of first use)"
                        ),
                    });
                }
            }
        }
        if next as usize != self.debug_ops.len() {
            return Err(ProgramError {
                location: "debug ops".into(),
                message: format!("{} strings but only {next} are used", self.debug_ops.len()),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.debug_ops.iter().enumerate() {
            if s.chars().any(char::is_control) {
                return Err(ProgramError {
                    location: format!("debug op {i}"),
                    message: "contains a control character".into(),
                });
            }
            if !seen.insert(s.as_str()) {
                return Err(ProgramError {
                    location: format!("debug op {i}"),
                    message: "repeats an earlier string".into(),
                });
            }
        }
        Ok(())
    }

    /// Makes the debug-op table canonical (first-use order, no unused or repeated
    /// strings), renumbering instructions' references. Producers call this last.
    pub fn canonicalize_debug_ops(&mut self) {
        let old = std::mem::take(&mut self.debug_ops);
        let mut new: Vec<String> = Vec::new();
        let mut index: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for core in &mut self.cores {
            for stream in core {
                for inst in stream {
                    if let Some(d) = inst.debug {
                        let s = old[d as usize].as_str();
                        let idx = *index.entry(s).or_insert_with(|| {
                            new.push(s.to_string());
                            new.len() as u32 - 1
                        });
                        inst.debug = Some(idx);
                    }
                }
            }
        }
        self.debug_ops = new;
    }
}
