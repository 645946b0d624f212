//! Kernels: the optimized IR as a list of kernels, each with its schedule
//! (`--emit kernels`), each lowered to a tile program (`--emit tiles`).
//!
//! A kernel kind is one type implementing [`Kernel`], in one file: how it is
//! recognised in the IR (its `select` function), its schedule (chosen for the
//! target, with a schedule file's overrides applied), its description, its
//! roofline work and its lowering. [`select::select`] walks the function and
//! dispatches each op to the kind that owns it (the registration); the driver
//! iterates over the resulting `Box<dyn Kernel>`s and never matches on kinds.
//!
//! | kind | file | computes |
//! |---|---|---|
//! | `gemm` | [`gemm`] | a matmul with its fused elementwise epilogue ([`chain`]); one row of A per batch index, transposed on the PE ([`gemv`]) |
//! | `map` | [`map`] | an elementwise chain, a const splat |
//! | `transpose` | [`transpose`] | a swap of the last two dims |
//! | `rows` | [`rows`] | softmax, a norm or a reduction, row by row |
//! | `attention` | [`attention`] | fused flash attention |
//! | `copy` | [`copy`] | concat, and views [`layout`] cannot fold, as HBM-to-HBM copies |
//! | `gather` | [`gather`] | an embedding lookup, as indirect DMA |
//!
//! Each kind may spread over several cores ([`Kernel::lower_cores`]: its work
//! cut into independent shares, one lowering per core, [`split`]).
//!
//! Kernels read the IR (their input) and produce [`crate::tiles`] (their
//! output); nothing here depends on the optimizer, the backend or the driver.

pub mod attention;
pub mod chain;
pub mod copy;
pub mod gather;
pub mod gemm;
pub mod gemv;
pub mod layout;
pub mod map;
pub mod mask;
pub mod row_epilogue;
pub mod rows;
pub mod select;
pub mod share;
pub mod transpose;
pub mod wide_row;

use jpu_isa::{DType, Target};

use crate::error::CompileError;
use crate::ir::{Func, Node, Operand, Span, ValueId};
use crate::tiles::TileProgram;

pub use select::select;

/// The unavoidable work of a kernel, for the program's roofline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Matmul FLOPs on 8-bit operands.
    pub flops_8bit: u64,
    /// Matmul FLOPs on 16-bit operands.
    pub flops_16bit: u64,
    /// Matmul FLOPs on f32 operands.
    pub flops_f32: u64,
    /// Transcendental function evaluations (ACT work).
    pub transcendentals: u64,
}

impl Work {
    /// Matmul FLOPs on operands of `dtype`.
    pub fn flops(dtype: DType, flops: u64) -> Work {
        match dtype.size_bytes() {
            1 => Work { flops_8bit: flops, ..Work::default() },
            2 => Work { flops_16bit: flops, ..Work::default() },
            _ => Work { flops_f32: flops, ..Work::default() },
        }
    }

    /// The sum of two (saturating: a roofline of 2^64 cycles is already absurd).
    pub fn plus(self, o: Work) -> Work {
        Work {
            flops_8bit: self.flops_8bit.saturating_add(o.flops_8bit),
            flops_16bit: self.flops_16bit.saturating_add(o.flops_16bit),
            flops_f32: self.flops_f32.saturating_add(o.flops_f32),
            transcendentals: self.transcendentals.saturating_add(o.transcendentals),
        }
    }
}

/// One field of a schedule override: `name = value`, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field.
    pub name: String,
    /// Its value, as written.
    pub value: String,
    /// 1-based line in the schedule file.
    pub line: usize,
}

/// One kernel of a compiled program.
pub trait Kernel: std::fmt::Debug {
    /// The kind (`gemm`, `attention`, ...), as `--emit kernels` prints it.
    fn kind(&self) -> &'static str;

    /// The HBM tensor the kernel writes (the value it computes).
    fn output(&self) -> &str;

    /// Indices of the IR nodes it computes (a schedule file may name any of them).
    fn nodes(&self) -> &[usize];

    /// The source span of the statement it implements, for diagnostics.
    fn span(&self) -> Span;

    /// The IR statement it implements, for messages.
    fn statement(&self) -> String;

    /// The names of its schedule fields (none for kernels without a schedule).
    fn schedule_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Applies schedule overrides on top of the chosen schedule and checks the
    /// result against `t`; returns the kernels that must run before this one
    /// (e.g. a transpose into HBM scratch that its schedule reads).
    fn schedule(&mut self, t: &Target, overrides: &[Field]) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
        let _ = t;
        match overrides.first() {
            Some(f) => Err(self.field_error(f, format!("`{}` kernels have no schedule fields", self.kind()))),
            None => Ok(Vec::new()),
        }
    }

    /// The `--emit kernels` entry (after the `kernel <kind> <name>: ` prefix).
    fn describe(&self, t: &Target) -> String;

    /// Its unavoidable work.
    fn work(&self) -> Work;

    /// About how many tile ops [`Kernel::lower`] produces (within a small
    /// factor), computed without lowering: the driver refuses a program over its
    /// budget before any allocation that size would need.
    fn tile_ops(&self, t: &Target) -> u64;

    /// Its tile program.
    fn lower(&self, t: &Target) -> TileProgram;

    /// Its tile program spread over up to `cores` cores (each buffer on the
    /// core whose ops use it, [`crate::tiles::merge_cores`]). A kernel that does
    /// not partition runs on core 0.
    fn lower_cores(&self, t: &Target, cores: u32) -> TileProgram {
        let _ = cores;
        self.lower(t)
    }

    /// How [`Kernel::lower_cores`] spreads it over `cores` cores, for
    /// `--emit kernels`.
    fn partition(&self, t: &Target, cores: u32) -> String {
        let _ = (t, cores);
        "core 0".into()
    }

    /// The contraction length whose f32 roundings the verification tolerance
    /// allows for (docs/testing.md); 0 for kernels that reduce in the
    /// evaluator's order or not at all.
    fn contraction(&self) -> u64 {
        0
    }

    /// The tensor (and operand dtype) whose magnitude bounds the effect of
    /// probabilities rounded to the operand dtype (attention's V), if any.
    fn rounded_probabilities(&self) -> Option<(&str, DType)> {
        None
    }

    /// The kernel as `Any`, for tools and tests that inspect a kind's details.
    fn as_any(&self) -> &dyn std::any::Any;

    /// An invalid-schedule error for override `f`.
    fn field_error(&self, f: &Field, reason: String) -> CompileError {
        CompileError::InvalidSchedule {
            kernel: self.statement(),
            field: f.name.clone(),
            reason: format!("{} = {} (line {}): {reason}", f.name, f.value, f.line),
            span: self.span(),
        }
    }
}

/// What selection needs to know about the function: use counts, which values are
/// in HBM so far, and whether fusion is on (`-O0` turns it off).
pub struct Ctx<'a> {
    /// The function.
    pub f: &'a Func,
    /// Live consumers of each value (`mul(%x, %x)` is one).
    pub uses: Vec<usize>,
    /// Values in HBM: parameters, then each kernel's output once it is selected.
    pub in_hbm: Vec<bool>,
    /// Fuse chains into kernels.
    pub fuse: bool,
    /// Which values are views of other values' tensors.
    pub layout: layout::Layout,
    /// Elementwise operands no epilogue reads as they are (`(statement name,
    /// operand)`), expanded to the statement's shape in HBM scratch by a copy
    /// kernel: the scratch tensor's name.
    pub broadcasts: std::collections::HashMap<(String, ValueId), String>,
}

/// Why `node` cannot be compiled.
pub fn unsupported(node: &Node, why: &str) -> CompileError {
    CompileError::unsupported(&node.name, node.op.name(), why, node.span.clone())
}

/// `%y = op(%a, %b)` of node `i`, for listings and debug info.
pub fn statement(f: &Func, i: usize) -> String {
    let n = &f.nodes[i];
    let args: Vec<String> = n
        .operands
        .iter()
        .map(|o| match o {
            Operand::Value(v) => format!("%{}", f.node(*v).name),
            Operand::Scalar(x) => format!("{x}"),
        })
        .collect();
    format!("%{} = {}({})", n.name, n.op.name(), args.join(", "))
}

impl Ctx<'_> {
    /// The name of the HBM tensor holding value `v` (its own name, the name of
    /// the tensor it is a view of, or the result's that aliases it).
    pub fn tensor(&self, v: ValueId) -> String {
        self.layout.names[self.layout.place[v.0 as usize].tensor].clone()
    }

    /// Value `v` as it sits in HBM.
    pub fn view(&self, v: ValueId) -> layout::TensorView {
        let place = &self.layout.place[v.0 as usize];
        layout::TensorView {
            tensor: self.layout.names[place.tensor].clone(),
            tensor_shape: self.f.nodes[place.tensor].ty.shape.clone(),
            shape: self.f.node(v).ty.shape.clone(),
            offset: place.offset,
            strides: place.strides.clone(),
        }
    }

    /// View op `i`'s value read in place from its operand's tensor (what a
    /// copy kernel materialises); `None` when it cannot be.
    pub fn view_through(&self, i: usize) -> Option<layout::TensorView> {
        let node = &self.f.nodes[i];
        let Some(Operand::Value(a)) = node.operands.first() else { return None };
        let from = self.view(*a);
        let place = layout::Place { tensor: 0, offset: from.offset, strides: from.strides.clone() };
        let p = place.derive(&node.op, &from.shape, &node.ty.shape)?;
        Some(layout::TensorView { shape: node.ty.shape.clone(), offset: p.offset, strides: p.strides, ..from })
    }

    /// Marks value `v`'s tensor, and every value placed in it, as in HBM.
    pub fn mark_in_hbm(&mut self, v: usize) {
        let root = self.layout.place[v].tensor;
        self.in_hbm[root] = true;
        self.in_hbm[v] = true;
        for &d in &self.layout.dependents[root] {
            self.in_hbm[d] = true;
        }
    }

    /// The value operands of `node`, each of which must already be in HBM (a
    /// parameter or an earlier kernel's output).
    pub fn hbm_values(&self, node: &Node) -> Result<Vec<ValueId>, CompileError> {
        let values: Vec<ValueId> = node
            .operands
            .iter()
            .filter_map(|o| match o {
                Operand::Value(v) => Some(*v),
                Operand::Scalar(_) => None,
            })
            .collect();
        match values.iter().find(|v| !self.in_hbm[v.0 as usize]) {
            Some(v) => Err(unsupported(
                node,
                &format!("reads `%{}`, which is not a parameter or an earlier kernel's output", self.f.node(*v).name),
            )),
            None => Ok(values),
        }
    }
}

/// `0..n` cut into at most `cores` contiguous runs, as even as can be (no
/// empty run): each core's share of a kernel's independent blocks.
pub fn split(n: u64, cores: u32) -> Vec<std::ops::Range<u64>> {
    let k = (cores as u64).min(n).max(1);
    (0..k).map(|c| (c * n / k)..((c + 1) * n / k)).collect()
}

/// A kernel of `blocks` independent blocks on up to `cores` cores: runs of
/// blocks ([`split`]), each lowered by `lower_blocks` on its core.
pub fn spread(blocks: u64, cores: u32, lower_blocks: impl Fn(std::ops::Range<u64>) -> TileProgram) -> TileProgram {
    let runs = split(blocks, cores);
    if runs.len() <= 1 {
        return lower_blocks(0..blocks);
    }
    crate::tiles::merge_cores(runs.into_iter().map(lower_blocks).collect())
}

/// The `--emit kernels` text of a partition into `runs` runs of `what`.
pub fn split_text(runs: usize, what: &str) -> String {
    match runs {
        0 | 1 => "core 0".into(),
        n => format!("{n} cores, each a run of {what}"),
    }
}
