//! The compiled functional engine (`--engine jit`): compute instructions
//! prepared once per program, so running one is a call with no decoding. The
//! interpreter ([`crate::semantics`]) is the specification: an instruction this
//! engine does not cover runs there, and the differential tests compare the two
//! bit for bit. The simulator's event loop (timing, semaphores, race and bounds
//! checks) is the same for both engines.
//!
//! Two kinds of code:
//! - generated ([`codegen`]): Cranelift compiles each covered elementwise
//!   instruction into a function specialised on its operands' placement, dtypes
//!   and op;
//! - helpers: float matmuls call a host-SIMD micro-kernel chosen by runtime
//!   feature detection, split over threads when large ([`matmul`]);
//!   `activate` and `reduce` on contiguous rows call row loops with a
//!   sixteen-lane `exp`, and on AVX-512 hosts f32 `tensor_scalar` sub and div
//!   run sixteen lanes ([`rows`]).

mod codegen;
mod matmul;
mod rows;

use std::collections::HashMap;

use cranelift_codegen::ir::{types, AbiParam, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use jpu_isa::inst::Op;
use jpu_isa::operand::{Space, Tile};
use jpu_isa::{DType, Program, Target};

use crate::memory::CoreMemory;
use crate::semantics::{give_buffer, read_tile};
use codegen::{Kernel, Memory};

/// Generated code: called with the core's SRAM and PSUM base pointers.
type Native = unsafe extern "C" fn(*mut u8, *mut u8);

/// An instruction's (core, engine, index in the engine's stream).
type Key = (usize, usize, usize);

/// What runs one covered instruction.
enum Compiled {
    Native(Native),
    Matmul { dst: Tile, stationary: Tile, moving: Tile, accumulate: bool, transposed: bool },
    Row(rows::RowOp),
}

/// A program's covered instructions, ready to run.
pub struct Jit {
    /// Keeps the generated code alive.
    _module: JITModule,
    code: HashMap<Key, Compiled>,
    /// Helpers for the caller on large instructions (one thread fewer than
    /// asked); `None` runs everything on the caller.
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Jit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jit({} instructions compiled)", self.code.len())
    }
}

impl Jit {
    /// Prepares every covered compute instruction of `p` for `t`'s memories,
    /// with `threads` host threads for large instructions (0: one per host core).
    pub fn compile(p: &Program, t: &Target, threads: usize) -> Result<Jit, String> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
        let isa = cranelift_native::builder()
            .map_err(|e| format!("this host is not supported by the compiled engine: {e}"))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| e.to_string())?;
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let memory = Memory::of_target(t);
        let mut generated = Vec::new();
        let mut code = HashMap::new();
        let mut functions = HashMap::new();
        for (core, engines) in p.cores.iter().enumerate() {
            for (engine, stream) in engines.iter().enumerate() {
                for (index, inst) in stream.iter().enumerate() {
                    let key = (core, engine, index);
                    if let Some(helper) = helper(&inst.op, &memory) {
                        code.insert(key, helper);
                        continue;
                    }
                    // Identical operations (a loop's tiles reused) share one function.
                    if let Some(&id) = functions.get(&inst.op) {
                        generated.push((key, id));
                        continue;
                    }
                    let Some(kernel) = Kernel::of(&inst.op, &memory) else { continue };
                    let mut sig = module.make_signature();
                    sig.params.extend([AbiParam::new(types::I64), AbiParam::new(types::I64)]);
                    let id = module
                        .declare_function(&format!("i{core}_{engine}_{index}"), Linkage::Local, &sig)
                        .map_err(|e| e.to_string())?;
                    ctx.func.signature = sig;
                    ctx.func.name = UserFuncName::user(0, id.as_u32());
                    kernel.build(FunctionBuilder::new(&mut ctx.func, &mut fctx), &memory);
                    module.define_function(id, &mut ctx).map_err(|e| format!("{e:?}"))?;
                    module.clear_context(&mut ctx);
                    functions.insert(inst.op.clone(), id);
                    generated.push((key, id));
                }
            }
        }
        module.finalize_definitions().map_err(|e| e.to_string())?;
        for (key, id) in generated {
            // SAFETY: defined above with exactly this signature.
            let f = unsafe { std::mem::transmute::<*const u8, Native>(module.get_finalized_function(id)) };
            code.insert(key, Compiled::Native(f));
        }
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = (threads > 1)
            .then(|| rayon::ThreadPoolBuilder::new().num_threads(threads - 1).build())
            .transpose()
            .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
        Ok(Jit { _module: module, code, pool })
    }

    /// How many instructions are covered.
    pub fn compiled(&self) -> usize {
        self.code.len()
    }

    /// How many of them call a helper rather than generated code.
    pub fn helpers(&self) -> usize {
        self.code.values().filter(|c| !matches!(c, Compiled::Native(_))).count()
    }

    /// Runs instruction `key` on `mem`; false when it is not covered (the
    /// interpreter runs it).
    pub fn run(&self, key: Key, mem: &mut CoreMemory) -> bool {
        match self.code.get(&key) {
            None => return false,
            // SAFETY: the code was generated for memories of exactly these
            // sizes (`Memory`), and every access was checked against them then.
            Some(Compiled::Native(f)) => unsafe { f(mem.sram.as_mut_ptr(), mem.psum.as_mut_ptr()) },
            Some(Compiled::Matmul { dst, stationary, moving, accumulate, transposed }) => {
                let (k, m, n) = (moving.part_count as usize, dst.part_count as usize, moving.free_elems() as usize);
                let a = read_tile(mem, stationary);
                // A transposed stationary is `m x k`: read in place.
                let (k_step, m_step) = if *transposed { (1, k) } else { (m, 1) };
                let b = read_tile(mem, moving);
                let stride = mem.psum_partition_bytes;
                let start = dst.part_start as usize * stride + dst.offset as usize;
                let bytes = &mut mem.psum[start..start + (m - 1) * stride + 4 * n];
                let rows = matmul::Rows { bytes, stride, accumulate: *accumulate };
                let operands = (stationary.dtype, moving.dtype);
                let stationary = matmul::Stationary { values: &a, k_step, m_step };
                matmul::matmul(stationary, &b, rows, (k, m, n), operands, self.pool.as_ref());
                give_buffer(a);
                give_buffer(b);
            }
            Some(Compiled::Row(op)) => op.run(mem),
        }
        true
    }
}

/// The helper that runs `op`, when one does: float matmuls into a contiguous
/// f32 PSUM tile, row instructions ([`rows::RowOp`]).
fn helper(op: &Op, memory: &Memory) -> Option<Compiled> {
    match *op {
        Op::Matmul { dst, stationary, moving, accumulate, transposed }
            if !moving.dtype.is_int()
                && dst.dtype == DType::F32
                && dst.space == Space::Psum
                && dst.is_contiguous()
                && memory.holds(&dst) =>
        {
            Some(Compiled::Matmul { dst, stationary, moving, accumulate, transposed })
        }
        _ => rows::RowOp::of(op, memory).map(Compiled::Row),
    }
}
