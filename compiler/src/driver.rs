//! The compiler driver: a table of stages, each run once, in order.
//!
//! | stage | module | output | `--emit` | checked by |
//! |---|---|---|---|---|
//! | parse, check | [`crate::front::tir`] | [`Func`] | `parsed` | the IR checker |
//! | optimize | [`crate::opt`] | [`Func`] | `opt` | rebuilt through the IR checker |
//! | select | [`crate::kernels::select()`] | kernels with their chosen schedules | | each kind's limits |
//! | schedule | [`crate::kernels::Kernel::schedule`] | overrides applied, preludes added | `kernels` | each kind's limits |
//! | lower, link | [`crate::kernels::Kernel::lower`], [`crate::tiles::link`] | [`TileProgram`] | `tiles` | [`TileProgram::validate`] |
//! | allocate, schedule engines, emit | [`crate::backend`] | [`Program`] | `asm` | [`Program::validate`] |
//!
//! A [`Compilation`] holds every stage's output; [`Compilation::run_to`] runs the
//! stages a requested output needs (each once), and [`Compilation::print`] prints
//! any stage that has run. [`compile`] runs them all.

use std::collections::HashMap;

use jpu_isa::program::RooflineInputs;
use jpu_isa::{Program, Target};

use crate::error::CompileError;
use crate::ir::{Func, Op, Operand};
use crate::kernels::{Field, Kernel, Work};
use crate::schedule::{KernelRef, Schedule};
use crate::tiles::TileProgram;

/// A stage whose output `--emit` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The checked input.
    Parsed,
    /// After the optimizer.
    Opt,
    /// The kernels and their schedules.
    Kernels,
    /// The linked tile program.
    Tiles,
    /// The chip program.
    Asm,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 5] = [Stage::Parsed, Stage::Opt, Stage::Kernels, Stage::Tiles, Stage::Asm];

    /// The `--emit` name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Parsed => "parsed",
            Stage::Opt => "opt",
            Stage::Kernels => "kernels",
            Stage::Tiles => "tiles",
            Stage::Asm => "asm",
        }
    }

    /// The stage called `name`.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Optimization level: 0 skips the e-graph and fusion (every op a kernel of its
/// own), anything else runs both.
pub type OptLevel = u8;

/// How to compile.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Optimization level.
    pub level: OptLevel,
    /// Schedule overrides.
    pub schedule: Schedule,
    /// The most tile operations (about one instruction each) a program may
    /// lower to; checked against the kernels' estimates before lowering.
    pub max_tile_ops: u64,
    /// The values of weight parameters ([`crate::weights::load`]): they become
    /// constant tensors of the binary. A weight without one stays an input.
    pub weights: std::sync::Arc<crate::weights::Weights>,
    /// Model-file names of inputs and outputs, recorded in the binary.
    pub external: External,
    /// Cores the kernels may spread over (1 to the target's; kernels that do
    /// not partition use core 0).
    pub cores: u32,
}

/// The names and types a model file gives a program's inputs and outputs
/// (ONNX import): `jalc run` reads and writes them by these.
#[derive(Debug, Clone, Default)]
pub struct External {
    /// Parameter name, model name, model type.
    pub inputs: Vec<(String, String, jpu_isa::program::ExternalType)>,
    /// Result position, model name, model type.
    pub outputs: Vec<(usize, String, jpu_isa::program::ExternalType)>,
}

/// Default of [`Options::max_tile_ops`]: about 2 GB of compiler memory.
pub const MAX_TILE_OPS: u64 = 2_000_000;

impl Options {
    /// The default level (2) without overrides.
    pub fn o2() -> Options {
        Options::at(2)
    }

    /// Level `level` without overrides.
    pub fn at(level: OptLevel) -> Options {
        Options::with(level, Schedule::default())
    }

    /// Level `level` with `schedule`'s overrides.
    pub fn with(level: OptLevel, schedule: Schedule) -> Options {
        Options {
            level,
            schedule,
            max_tile_ops: MAX_TILE_OPS,
            weights: Default::default(),
            external: Default::default(),
            cores: 1,
        }
    }
}

/// Every stage's output, as far as the stages have run.
pub struct Compilation<'t> {
    t: &'t Target,
    opts: Options,
    /// The checked input.
    pub parsed: Func,
    /// The optimized function (the input at `-O0`).
    pub optimized: Option<Func>,
    /// The kernels in execution order, scheduled.
    pub kernels: Option<Vec<Box<dyn Kernel>>>,
    /// Each kernel's name (`k1`, `k2`, and `kN.0` for a prelude of `kN`).
    pub names: Vec<String>,
    /// The linked, validated tile program.
    pub tiles: Option<TileProgram>,
    /// The chip program.
    pub program: Option<Program>,
    /// The kernel each tile op of `tiles` belongs to.
    op_kernel: Vec<usize>,
    /// Each kernel's cores: a schedule file's `cores = N`, else every core
    /// of [`Options::cores`].
    kernel_cores: Vec<u32>,
    /// The kernel each instruction of `program` belongs to, per lane (engine
    /// `e` of core `c` is lane `c * engines per core + e`; `None`: the final
    /// `halt` or a message to another core).
    pub inst_kernel: Vec<Vec<Option<usize>>>,
}

/// Every stage's output of a complete compilation.
pub struct Compiled {
    /// The checked input.
    pub parsed: Func,
    /// The optimized function.
    pub optimized: Func,
    /// The kernels in execution order.
    pub kernels: Vec<Box<dyn Kernel>>,
    /// Their names.
    pub names: Vec<String>,
    /// The tile program.
    pub tiles: TileProgram,
    /// The chip program.
    pub program: Program,
    /// The weight values baked into it.
    pub weights: std::sync::Arc<crate::weights::Weights>,
    /// The kernel each instruction belongs to, per lane (see [`Compilation::inst_kernel`]).
    pub inst_kernel: Vec<Vec<Option<usize>>>,
}

/// The bytes of parameter `name` the program must read when only gathers read
/// it (as tables): the rows they select, which is their results' size. `None`
/// when anything else reads it (then all of it counts).
fn gathered_bytes(f: &Func, name: &str) -> Option<u64> {
    let p = f.params().find(|p| f.node(*p).name == name)?;
    let reads = |n: &&crate::ir::Node| n.operands.iter().any(|o| matches!(o, Operand::Value(v) if *v == p));
    let users: Vec<&crate::ir::Node> = f.nodes.iter().filter(reads).collect();
    let only_tables = users.iter().all(|n| {
        matches!((&n.op, n.operands.as_slice()), (Op::Gather { .. }, [Operand::Value(t), Operand::Value(i)]) if *t == p && *i != p)
    });
    let is_result = f.results.contains(&p);
    (!users.is_empty() && only_tables && !is_result)
        .then(|| users.iter().map(|n| n.ty.elems().saturating_mul(n.ty.dtype.storage().size_bytes() as u64)).sum())
}

/// Compiles a checked function for `t` through every stage.
pub fn compile(f: &Func, t: &Target, opts: &Options) -> Result<Compiled, CompileError> {
    let mut c = Compilation::new(f.clone(), t, opts.clone());
    c.run_to(Stage::Asm)?;
    let missing = || CompileError::internal("a stage produced no output");
    Ok(Compiled {
        parsed: c.parsed,
        optimized: c.optimized.ok_or_else(missing)?,
        kernels: c.kernels.ok_or_else(missing)?,
        names: c.names,
        tiles: c.tiles.ok_or_else(missing)?,
        program: c.program.ok_or_else(missing)?,
        weights: opts.weights.clone(),
        inst_kernel: c.inst_kernel,
    })
}

impl<'t> Compilation<'t> {
    /// A compilation of `f` (checked) for `t`; no stage has run yet.
    pub fn new(f: Func, t: &'t Target, opts: Options) -> Compilation<'t> {
        Compilation {
            t,
            opts,
            parsed: f,
            optimized: None,
            kernels: None,
            names: Vec::new(),
            tiles: None,
            program: None,
            op_kernel: Vec::new(),
            kernel_cores: Vec::new(),
            inst_kernel: Vec::new(),
        }
    }

    /// Runs every stage up to the one whose output `stage` prints (each once).
    pub fn run_to(&mut self, stage: Stage) -> Result<(), CompileError> {
        if stage >= Stage::Opt && self.optimized.is_none() {
            self.optimized = Some(self.optimize()?);
        }
        if stage >= Stage::Kernels && self.kernels.is_none() {
            let kernels = self.select_and_schedule()?;
            self.kernels = Some(kernels);
        }
        if stage >= Stage::Tiles && self.tiles.is_none() {
            let (tiles, op_kernel) = self.lower_and_link()?;
            (self.tiles, self.op_kernel) = (Some(tiles), op_kernel);
        }
        if stage >= Stage::Asm && self.program.is_none() {
            let (program, origins) = self.emit()?;
            self.inst_kernel = origins
                .iter()
                .map(|e| e.iter().map(|o| o.and_then(|op| self.op_kernel.get(op).copied())).collect())
                .collect();
            self.program = Some(program);
        }
        Ok(())
    }

    /// The printed form of `stage` (`None` until it has run).
    pub fn print(&self, stage: Stage) -> Option<String> {
        match stage {
            Stage::Parsed => Some(crate::ir::printer::print(&self.parsed)),
            Stage::Opt => self.optimized.as_ref().map(crate::ir::printer::print),
            Stage::Kernels => self.kernels.as_ref().map(|k| kernels_text(k, &self.names, self.t, &self.kernel_cores)),
            Stage::Tiles => self.tiles.as_ref().map(|t| t.to_string()),
            Stage::Asm => self.program.as_ref().map(jpu_isa::jasm::disassemble),
        }
    }

    /// The cores kernels spread over: [`Options::cores`] within the target's.
    fn cores(&self) -> u32 {
        self.opts.cores.clamp(1, self.t.cores)
    }

    /// Stage `optimize`: the e-graph optimizer (skipped at `-O0`).
    fn optimize(&self) -> Result<Func, CompileError> {
        let f = if self.opts.level == 0 {
            self.parsed.clone()
        } else {
            crate::opt::optimize(&self.parsed, self.t, crate::opt::Limits::default())?.func
        };
        let mut f = f.with_parameter_results_copied();
        f.weights = self.parsed.weights.clone();
        Ok(f)
    }

    /// Stages `select` and `schedule`: the kernels with their chosen schedules,
    /// then each section of the schedule file applied to the kernel it names,
    /// and each kernel's prelude inserted before it.
    fn select_and_schedule(&mut self) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
        let f = self.optimized.as_ref().ok_or_else(|| CompileError::internal("select before optimize"))?;
        let selected = crate::kernels::select(f, self.t, self.opts.level > 0)?;
        let mut overrides = vec![Vec::new(); selected.len()];
        for s in &self.opts.schedule.sections {
            let found = match &s.kernel {
                KernelRef::Index(n) => (*n <= selected.len()).then(|| n - 1),
                KernelRef::Value(v) => selected.iter().position(|k| k.nodes().iter().any(|&i| f.nodes[i].name == *v)),
            };
            let Some(k) = found else {
                let list: Vec<String> = selected
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("k{} ({} {})", i + 1, k.kind(), k.output()))
                    .collect();
                let message =
                    format!("`[{}]` names no kernel of this program; its kernels: {}", s.kernel, list.join(", "));
                return Err(CompileError::ScheduleSyntax { line: s.line, message, span: s.span.clone() });
            };
            overrides[k].extend(s.fields.iter().cloned());
        }
        let mut kernels: Vec<Box<dyn Kernel>> = Vec::with_capacity(selected.len());
        self.names.clear();
        self.kernel_cores.clear();
        for (i, (mut k, fields)) in selected.into_iter().zip(overrides).enumerate() {
            let (cores, fields): (Vec<Field>, Vec<Field>) = fields.into_iter().partition(|f| f.name == "cores");
            let limit = match cores.last() {
                Some(f) => self.core_override(k.as_ref(), f)?,
                None => self.cores(),
            };
            for (j, pre) in k.schedule(self.t, &fields)?.into_iter().enumerate() {
                self.names.push(format!("k{}.{j}", i + 1));
                self.kernel_cores.push(limit);
                kernels.push(pre);
            }
            self.names.push(format!("k{}", i + 1));
            self.kernel_cores.push(limit);
            kernels.push(k);
        }
        Ok(kernels)
    }

    /// A schedule file's `cores = N` for kernel `k`: 1 to the program's cores.
    fn core_override(&self, k: &dyn Kernel, f: &Field) -> Result<u32, CompileError> {
        let most = self.cores();
        match f.value.parse::<u32>() {
            Ok(n) if (1..=most).contains(&n) => Ok(n),
            _ => Err(k.field_error(f, format!("cores must be 1 to {most} (the program's cores)"))),
        }
    }

    /// Stages `lower` and `link`: each kernel's tile program, linked into one
    /// and validated.
    fn lower_and_link(&self) -> Result<(TileProgram, Vec<usize>), CompileError> {
        let (f, kernels) = match (&self.optimized, &self.kernels) {
            (Some(f), Some(k)) => (f, k),
            _ => return Err(CompileError::internal("lower before select")),
        };
        self.check_budgets(f, kernels)?;
        let params: Vec<&str> = f.params().map(|p| f.node(p).name.as_str()).collect();
        let results: Vec<&str> = f.results.iter().map(|r| f.node(*r).name.as_str()).collect();
        let parts: Vec<TileProgram> =
            kernels.iter().zip(&self.kernel_cores).map(|(k, &cores)| k.lower_cores(self.t, cores)).collect();
        let op_kernel = parts.iter().enumerate().flat_map(|(k, p)| std::iter::repeat_n(k, p.ops.len())).collect();
        let mut tiles = crate::tiles::link(&params, &results, &self.names, parts);
        // A kernel that reads a view declares the tensor under the view's
        // shape; the tensor keeps the shape of the value it is named after.
        let shapes: HashMap<&str, &[u64]> = f.nodes.iter().map(|n| (n.name.as_str(), n.ty.shape.as_slice())).collect();
        for t in &mut tiles.tensors {
            if let Some(shape) = shapes.get(t.name.as_str()) {
                t.shape = shape.to_vec();
            }
        }
        tiles.validate(self.t).map_err(|e| CompileError::internal(format!("the tile program is invalid: {e}")))?;
        Ok((tiles, op_kernel))
    }

    /// Stages `allocate`, `schedule engines` and `emit`: the backend.
    fn emit(&self) -> Result<(Program, crate::backend::Origins), CompileError> {
        let (Some(tiles), Some(kernels)) = (&self.tiles, &self.kernels) else {
            return Err(CompileError::internal("emit before lower"));
        };
        let work = kernels.iter().fold(Work::default(), |w, k| w.plus(k.work()));
        let bytes = |role| {
            tiles
                .tensors
                .iter()
                .filter(|t| t.role == role)
                .map(|t| {
                    let size = t.shape.iter().product::<u64>().saturating_mul(t.dtype.size_bytes() as u64);
                    let gathered = self.optimized.as_ref().and_then(|f| gathered_bytes(f, &t.name));
                    gathered.map_or(size, |g| g.min(size))
                })
                .fold(0u64, u64::saturating_add)
        };
        let roof = RooflineInputs {
            input_bytes: bytes(jpu_isa::program::Role::Input),
            output_bytes: bytes(jpu_isa::program::Role::Output),
            flops_8bit: work.flops_8bit,
            flops_16bit: work.flops_16bit,
            flops_f32: work.flops_f32,
            transcendentals: work.transcendentals,
        };
        let scheduled =
            crate::backend::compile(tiles, &self.op_kernel, self.t, roof).map_err(|e| self.attribute(e, tiles))?;
        let mut program = scheduled.program;
        self.bake_weights(&mut program, tiles);
        self.name_external(&mut program, tiles);
        Ok((program, scheduled.origins))
    }

    /// Records [`Options::external`] in the binary: parameters by name, results
    /// by position (through the optimized program, whose result a rewrite may
    /// have renamed).
    fn name_external(&self, program: &mut Program, tiles: &TileProgram) {
        let ext = &self.opts.external;
        let Some(opt) = self.optimized.as_ref().filter(|_| !ext.inputs.is_empty() || !ext.outputs.is_empty()) else {
            return;
        };
        let binary: HashMap<&str, String> =
            tiles.tensors.iter().map(|t| t.name.as_str()).zip(crate::tiles::binary_names(&tiles.tensors)).collect();
        let index = |ir: &str| {
            let name = binary.get(ir).cloned().unwrap_or_else(|| ir.to_string());
            program.tensors.iter().position(|t| t.name == name && t.role != jpu_isa::program::Role::Const)
        };
        let inputs = ext.inputs.iter().map(|(param, name, elem)| (index(param), name, elem));
        let outputs = ext
            .outputs
            .iter()
            .map(|(k, name, elem)| (opt.results.get(*k).and_then(|r| index(&opt.node(*r).name)), name, elem));
        let external: Vec<jpu_isa::program::ExternalName> = inputs
            .chain(outputs)
            .filter_map(|(i, name, &elem)| {
                Some(jpu_isa::program::ExternalName { tensor: i? as u32, name: name.clone(), elem })
            })
            .collect();
        program.external = external;
    }

    /// Makes each weight parameter with a loaded value a constant tensor of the
    /// binary holding it (the roofline still counts it as read from HBM).
    fn bake_weights(&self, program: &mut Program, tiles: &TileProgram) {
        if self.opts.weights.is_empty() {
            return;
        }
        let bytes = crate::weights::bytes(&self.opts.weights);
        let binary: HashMap<String, &str> = crate::tiles::binary_names(&tiles.tensors)
            .into_iter()
            .zip(tiles.tensors.iter().map(|t| t.name.as_str()))
            .collect();
        for t in &mut program.tensors {
            let data = binary.get(&t.name).and_then(|ir| bytes.get(*ir));
            if let (jpu_isa::program::Role::Input, Some(data)) = (t.role, data) {
                t.role = jpu_isa::program::Role::Const;
                t.data = data.clone();
            }
        }
    }

    /// Refuses, before lowering, a program whose tensors exceed the target's HBM
    /// or whose kernels would lower to more tile ops than the budget, naming the
    /// largest tensor's or kernel's statement.
    fn check_budgets(&self, f: &Func, kernels: &[Box<dyn Kernel>]) -> Result<(), CompileError> {
        let ops: Vec<u64> = kernels.iter().map(|k| k.tile_ops(self.t)).collect();
        let total = ops.iter().fold(0u64, |a, &b| a.saturating_add(b));
        if total > self.opts.max_tile_ops {
            let (i, most) = ops.iter().enumerate().max_by_key(|(_, n)| **n).map(|(i, n)| (i, *n)).unwrap_or((0, 0));
            let k = &kernels[i];
            let what = format!(
                "the program lowers to about {total} tile operations ({most} in this kernel); the limit is {} (--max-tile-ops)",
                self.opts.max_tile_ops
            );
            return Err(CompileError::limit(&k.statement(), what, k.span()));
        }
        // Every value in HBM (parameters and kernel outputs), 4 KiB aligned as
        // the backend places them.
        let bytes = |i: usize| f.nodes[i].ty.elems().saturating_mul(f.nodes[i].ty.dtype.storage().size_bytes() as u64);
        let index: HashMap<&str, usize> = f.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        let in_hbm: Vec<usize> =
            (0..f.num_params).chain(kernels.iter().filter_map(|k| index.get(k.output()).copied())).collect();
        let total = in_hbm.iter().fold(0u64, |a, &i| a.saturating_add(bytes(i).div_ceil(4096).saturating_mul(4096)));
        if total > self.t.hbm.size_bytes {
            let largest = in_hbm.iter().copied().max_by_key(|&i| bytes(i)).unwrap_or(0);
            let n = &f.nodes[largest];
            let what = format!(
                "the program's tensors take {total} bytes of HBM; {} has {} (the largest, `%{}`, {} bytes)",
                self.t.name,
                self.t.hbm.size_bytes,
                n.name,
                bytes(largest)
            );
            return Err(CompileError::limit(&crate::kernels::statement(f, largest), what, n.span.clone()));
        }
        Ok(())
    }

    /// A backend error as a compile error at the statement of the kernel that
    /// owns the buffer (or of the value that is the tensor) it names.
    fn attribute(&self, e: crate::backend::BackendError, tiles: &TileProgram) -> CompileError {
        use crate::backend::BackendError as B;
        let (kernels, f) = match (&self.kernels, &self.optimized) {
            (Some(k), Some(f)) => (k, f),
            _ => return CompileError::internal(e.to_string()),
        };
        let owner = match &e {
            B::Sram { buffer, .. } | B::Psum { buffer, .. } => {
                let name = &tiles.buffers[*buffer].name;
                let k = self.names.iter().position(|n| name.starts_with(&format!("{n}."))).unwrap_or(0);
                kernels.get(k).map(|k| (k.statement(), k.span()))
            }
            B::Hbm { largest, .. } => {
                let name = &tiles.tensors[*largest].name;
                f.nodes.iter().find(|n| &n.name == name).map(|n| (format!("%{}", n.name), n.span.clone()))
            }
            B::Semaphores { .. } => None,
            B::Internal(m) => return CompileError::internal(m.clone()),
        };
        let (kernel, span) = owner.unwrap_or_else(|| ("the program".into(), 0..0));
        CompileError::LimitExceeded { kernel, what: e.to_string(), span }
    }
}

/// The `kernels` listing: `kernel <kind> <name>: `, each kernel's description
/// and, where it may use several cores (`cores[i]` for kernel i; none given:
/// one), its partition.
pub fn kernels_text(kernels: &[Box<dyn Kernel>], names: &[String], t: &Target, cores: &[u32]) -> String {
    let partition = |k: &dyn Kernel, cores: u32| {
        if cores > 1 {
            format!("  cores: {}\n", k.partition(t, cores))
        } else {
            String::new()
        }
    };
    kernels
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (k, n))| {
            let cores = cores.get(i).copied().unwrap_or(1);
            format!("kernel {} {n}: {}{}", k.kind(), k.describe(t), partition(k.as_ref(), cores))
        })
        .collect()
}
