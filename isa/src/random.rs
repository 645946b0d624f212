//! Random valid programs, for property tests and differential testing.
//!
//! [`random_program`] builds, from a seed, a program that passes
//! [`Program::validate`] for the given target: every instruction kind, every
//! operand variant (columns and immediates, NaN payloads, negative strides,
//! multi-dim patterns, symbolic and raw addresses), named and unnamed semaphores,
//! debug strings with quotes and non-ASCII text, constants and roofline inputs.
//! The same seed always gives the same program.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::check::check_op;
use crate::dtype::DType;
use crate::inst::{Engine, EngineClass, Inst, Op, Signal, Wait};
use crate::operand::{
    ActFunc, AluOp, CmpOp, Column, Dim, DmaDim, DmaSide, DmaSpace, DmaTransfer, HbmRows, Imm, ReduceOp, Scalar, Space,
    Tile, MAX_DIMS,
};
use crate::program::{ExternalName, ExternalType, Program, Role, RooflineInputs, SemDecl, TensorDecl};
use crate::target::Target;

/// A random valid program for `target`, determined by `seed`.
pub fn random_program(seed: u64, target: &Target) -> Program {
    let mut g = Gen { rng: StdRng::seed_from_u64(seed), t: target.clone(), heaps: true, cores: 1 };
    g.program()
}

/// A random valid operation for an engine of class `class` on `target`.
/// HBM sides may lie anywhere in HBM (a program holding it needs a tensor of
/// [`dma_dtype`] over all of HBM).
pub fn random_op(seed: u64, target: &Target, class: EngineClass) -> Op {
    let mut g = Gen { rng: StdRng::seed_from_u64(seed), t: target.clone(), heaps: false, cores: 1 };
    g.op(class)
}

struct Gen {
    rng: StdRng,
    t: Target,
    /// HBM sides go to the heap of their element size ([`HEAP_BYTES`] each,
    /// [`heap_base`]), so every side lies in a tensor of its element size.
    heaps: bool,
    /// Cores of the program being generated (remote signals and fabric
    /// destinations name one of them).
    cores: usize,
}

/// Bytes of HBM given to the DMA sides of each element size.
const HEAP_BYTES: u64 = 16 << 20;

/// Where the heap of `elem`-byte elements starts: 0, 16 MiB, 32 MiB.
fn heap_base(elem: u64) -> u64 {
    elem.trailing_zeros() as u64 * HEAP_BYTES
}

/// The tensor dtype whose elements a DMA of `elem`-byte elements moves.
pub fn dma_dtype(elem: u8) -> DType {
    match elem {
        1 => DType::I8,
        2 => DType::Bf16,
        _ => DType::F32,
    }
}

const DEBUG_POOL: &[&str] =
    &["%c = matmul(%a, %b)", "%p = softmax(%z) {axis = -1}", "quote \" and backslash \\", "résumé: ÿ ∑ 行列", ""];

impl Gen {
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.random_range(lo..=hi)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    fn f32(&mut self) -> f32 {
        match self.range(0, 5) {
            0 => f32::from_bits(self.rng.random()),
            1 => self.pick(&[0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e-45, f32::MAX]),
            _ => (self.rng.random::<f32>() - 0.5) * 100.0,
        }
    }

    fn program(&mut self) -> Program {
        let mut p = Program::new(&self.t);
        p.debug_ops = DEBUG_POOL.iter().map(|s| s.to_string()).collect();
        let cores = self.range(1, self.t.cores.min(2) as u64) as usize;
        self.cores = cores;
        p.cores = (0..cores)
            .map(|_| {
                (0..self.t.engines_per_core())
                    .map(|e| {
                        let engine = Engine(e as u8);
                        if self.chance(0.3) {
                            return Vec::new();
                        }
                        let mut stream: Vec<Inst> = (0..self.range(0, 5)).map(|_| self.inst(engine)).collect();
                        let mut halt = Inst::new(Op::Halt {});
                        halt.signal = self.chance(0.2).then(|| self.signal(7));
                        stream.push(halt);
                        stream
                    })
                    .collect()
            })
            .collect();
        self.tensors(&mut p);
        for id in 0..self.t.sync.semaphores.min(8) as u8 {
            if self.chance(0.4) {
                p.semaphores.push(SemDecl { id, name: format!("s{id}") });
            }
        }
        if self.chance(0.5) {
            let hbm = self.t.hbm.size_bytes;
            p.roofline = Some(RooflineInputs {
                flops_f32: self.rng.random(),
                flops_16bit: self.rng.random(),
                flops_8bit: self.range(0, 1000),
                input_bytes: self.range(0, hbm),
                output_bytes: self.range(0, hbm.min(1 << 20)),
                transcendentals: 0,
            });
        }
        // Model-file names for some inputs and outputs: quotes, `::` and non-ASCII text.
        if self.chance(0.3) {
            for (i, t) in p.tensors.iter().enumerate() {
                if matches!(t.role, Role::Input | Role::Output) && self.chance(0.5) {
                    let elem = ExternalType::ALL[self.range(0, ExternalType::ALL.len() as u64 - 1) as usize];
                    let name = format!("onnx::{}\"é/{i}", t.name);
                    p.external.push(ExternalName { tensor: i as u32, name, elem });
                }
            }
        }
        p.canonicalize_debug_ops();
        p
    }

    /// The tensors: a scratch heap of each element size under the random DMAs'
    /// HBM sides of that size, then random tensors past them, each non-empty
    /// output written by a DMA put first on a DMA stream (the rules of
    /// [`crate::accesses`]).
    fn tensors(&mut self, p: &mut Program) {
        let mut ends = [0u64; 3];
        for (_, _, _, inst) in p.instructions() {
            let sides = match &inst.op {
                Op::Dma { xfer } => vec![(xfer.src, xfer.elem_bytes), (xfer.dst, xfer.elem_bytes)],
                Op::DmaGather { dst, table, .. } => {
                    let size = dst.dtype.size_bytes() as u64;
                    vec![(table.side(dst.free_elems() * size, size), size as u8)]
                }
                _ => continue,
            };
            for (side, elem_bytes) in sides.into_iter().filter(|(s, _)| s.space == DmaSpace::Hbm) {
                let end = (side.addr as i128 + side.byte_extent().1 + elem_bytes as i128) as u64;
                let k = elem_bytes.trailing_zeros() as usize;
                ends[k] = ends[k].max(end);
            }
        }
        let mut addr = 3 * HEAP_BYTES;
        for (k, end) in ends.into_iter().enumerate().filter(|(_, end)| *end > 0) {
            let (elem, base) = (1u64 << k, heap_base(1 << k));
            let dtype = dma_dtype(elem as u8);
            let shape = vec![(end - base) / elem];
            let name = format!("heap{elem}");
            p.tensors.push(TensorDecl { name, dtype, shape, addr: base, role: Role::Scratch, data: vec![] });
        }
        for i in 0..self.range(0, 4) {
            let dtype = self.pick(&DType::ALL);
            let rank = self.range(0, 3) as usize;
            let shape: Vec<u64> = (0..rank).map(|_| self.range(0, 6)).collect();
            addr = addr.next_multiple_of(64) + self.range(0, 3) * 64;
            let role = self.pick(&Role::ALL);
            let mut t = TensorDecl { name: format!("t{i}"), dtype, shape, addr, role, data: Vec::new() };
            if role == Role::Const {
                t.data = (0..t.size_bytes()).map(|_| self.rng.random()).collect();
            }
            addr += t.size_bytes();
            if role == Role::Output && t.size_bytes() > 0 {
                self.write_output(p, &t);
            }
            p.tensors.push(t);
        }
    }

    /// Puts a DMA that writes all of `t` from SRAM first on the first DMA
    /// stream of core 0 that has one.
    fn write_output(&mut self, p: &mut Program, t: &TensorDecl) {
        let elem = t.dtype.size_bytes() as u64;
        let dims = [DmaDim { count: t.elems() as u32, stride: elem as i64 }];
        let xfer = DmaTransfer {
            elem_bytes: elem as u8,
            src: DmaSide::new(DmaSpace::Sram, 0, &dims),
            dst: DmaSide::new(DmaSpace::Hbm, t.addr, &dims),
        };
        let first_dma = (0..self.t.engines_per_core() as usize).find(|&e| Engine(e as u8).class() == EngineClass::Dma);
        let e = first_dma.expect("every target has a DMA queue");
        let stream = &mut p.cores[0][e];
        if stream.is_empty() {
            stream.push(Inst::new(Op::Halt {}));
        }
        stream.insert(0, Inst::new(Op::Dma { xfer }));
    }

    fn inst(&mut self, engine: Engine) -> Inst {
        let op = if self.chance(0.1) { Op::Nop {} } else { self.op(engine.class()) };
        let sems = self.t.sync.semaphores as u64 - 1;
        Inst {
            op,
            wait: self
                .chance(0.4)
                .then(|| Wait { sem: self.range(0, sems.min(7)) as u8, value: self.range(0, 5) as u32 }),
            signal: self.chance(0.4).then(|| self.signal(sems)),
            debug: self.chance(0.5).then(|| self.range(0, DEBUG_POOL.len() as u64 - 1) as u32),
        }
    }

    /// A signal of a semaphore up to `max_sem`, sometimes of a named (often
    /// another) core.
    fn signal(&mut self, max_sem: u64) -> Signal {
        let sem = self.range(0, max_sem) as u8;
        if self.chance(0.3) {
            Signal::remote(self.range(0, self.cores as u64 - 1) as u8, sem)
        } else {
            Signal::local(sem)
        }
    }

    fn op(&mut self, class: EngineClass) -> Op {
        // Generators aim at valid operands; the few that miss (e.g. an access
        // pattern too long for the partition) are drawn again.
        for _ in 0..1000 {
            let op = match class {
                EngineClass::Pe => self.pe_op(),
                EngineClass::Ve => self.ve_op(),
                EngineClass::Act => self.act_op(),
                EngineClass::Dma => self.dma_op(),
                EngineClass::Any => Op::Nop {},
            };
            if check_op(&op, &self.t).is_ok() {
                return op;
            }
        }
        Op::Nop {}
    }

    fn partitions(&self, space: Space) -> (u64, u64) {
        match space {
            Space::Sram => (self.t.sram.partitions as u64, self.t.sram.partition_bytes as u64),
            Space::Psum => (self.t.psum.partitions as u64, self.t.psum.partition_bytes as u64),
        }
    }

    /// Random counts whose product is `free` (1 to 4 dims).
    fn split(&mut self, free: u64) -> Vec<u16> {
        let mut counts = Vec::new();
        let mut rest = free;
        while counts.len() + 1 < MAX_DIMS && rest > 1 && self.chance(0.4) {
            let divisors: Vec<u64> = (2..=rest).filter(|d| rest.is_multiple_of(*d)).collect();
            let d = self.pick(&divisors);
            counts.push(d as u16);
            rest /= d;
        }
        counts.push(rest as u16);
        counts
    }

    /// A tile of `free` elements per partition in a random 1-4 dim pattern.
    fn split_tile(&mut self, space: Space, dtype: DType, part_count: u64, free: u64) -> Tile {
        let counts = self.split(free);
        self.tile(space, dtype, part_count, &counts)
    }

    /// A tile with the given counts, random strides and a fitting offset.
    fn tile(&mut self, space: Space, dtype: DType, part_count: u64, counts: &[u16]) -> Tile {
        let (parts, part_bytes) = self.partitions(space);
        let part_start = self.range(0, parts - part_count.min(parts));
        let contiguous = self.chance(0.6);
        let mut dims = Vec::new();
        let mut inner = 1i64;
        for &c in counts.iter().rev() {
            let stride = if contiguous { inner } else { self.range(0, 6) as i64 - 2 };
            dims.push(Dim { count: c, stride: stride as i32 });
            inner *= c as i64;
        }
        dims.reverse();
        let mut tile = Tile::with_dims(space, dtype, part_start as u16, part_count as u16, 0, &dims);
        let size = dtype.size_bytes() as i64;
        let (lo, hi) = tile.elem_extent();
        let min_off = -lo * size;
        let max_off = part_bytes as i64 - (hi + 1) * size;
        if max_off >= min_off {
            let steps = ((max_off - min_off) / size).min(64) as u64;
            tile.offset = (min_off + self.range(0, steps) as i64 * size) as u32;
        }
        tile
    }

    fn column(&mut self, dtype: DType) -> Column {
        let space = if self.chance(0.7) { Space::Sram } else { Space::Psum };
        let size = dtype.size_bytes() as u64;
        let (_, part_bytes) = self.partitions(space);
        Column { space, dtype, offset: (self.range(0, part_bytes / size - 1) * size) as u32 }
    }

    fn scalar(&mut self) -> Scalar {
        if self.chance(0.5) {
            Scalar::Imm(Imm(self.f32()))
        } else {
            let d = self.pick(&DType::ALL);
            Scalar::Col(self.column(d))
        }
    }

    fn any_space(&mut self) -> Space {
        if self.chance(0.7) {
            Space::Sram
        } else {
            Space::Psum
        }
    }

    fn pe_op(&mut self) -> Op {
        let dtype = self.pick(&[DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2, DType::I8, DType::F32]);
        let acc = dtype.accumulator();
        let bank_elems = self.t.psum_bank_bytes() as u64 / 4;
        if self.chance(0.25) {
            let p = self.range(1, self.t.pe.rows as u64);
            let f = self.range(1, (self.t.pe.cols as u64).min(16));
            let src = self.split_tile(Space::Sram, dtype, p, f);
            let mut dst = self.tile(Space::Psum, acc, f, &[p as u16]);
            dst.dims[0].stride = 1;
            dst.offset = (self.range(0, self.t.psum.banks.unwrap_or(1) as u64 - 1) * bank_elems * 4) as u32;
            return Op::Transpose { dst, src };
        }
        let k = self.range(1, self.t.pe.rows as u64);
        let m = self.range(1, self.t.pe.cols as u64);
        let n = self.range(1, (self.t.pe.max_moving_free as u64).min(bank_elems));
        let transposed = self.chance(0.5);
        let moving = self.split_tile(Space::Sram, dtype, k, n);
        let mut stationary = if transposed {
            self.split_tile(Space::Sram, dtype, m, k)
        } else {
            let mut s = self.split_tile(Space::Sram, dtype, k, m);
            s.part_start = moving.part_start;
            s
        };
        if !transposed {
            stationary.part_start = moving.part_start;
        }
        let mut dst = self.tile(Space::Psum, acc, m, &[n as u16]);
        dst.dims[0].stride = 1;
        let banks = self.t.psum.banks.unwrap_or(1) as u64;
        let slack = bank_elems - n;
        dst.offset = ((self.range(0, banks - 1) * bank_elems + self.range(0, slack)) * 4) as u32;
        Op::Matmul { dst, stationary, moving, accumulate: self.chance(0.5), transposed }
    }

    fn ve_op(&mut self) -> Op {
        let parts = self.range(1, self.t.sram.partitions as u64);
        let free = self.range(1, 40);
        let dt = |g: &mut Gen| g.pick(&DType::ALL);
        match self.range(0, 7) {
            6 => {
                let tile = |g: &mut Gen| {
                    let (d, s) = (dt(g), g.any_space());
                    g.split_tile(s, d, parts, free)
                };
                if self.chance(0.5) {
                    Op::CopyPredicated { dst: tile(self), src: tile(self), cond: tile(self), negate: self.chance(0.5) }
                } else {
                    Op::FillPredicated {
                        dst: tile(self),
                        cond: tile(self),
                        value: self.scalar(),
                        negate: self.chance(0.5),
                    }
                }
            }
            0 => {
                let (d0, d1, d2, s0, s1, s2) =
                    (dt(self), dt(self), dt(self), self.any_space(), self.any_space(), self.any_space());
                Op::TensorTensor {
                    op: self.pick(AluOp::ALL),
                    dst: self.split_tile(s0, d0, parts, free),
                    a: self.split_tile(s1, d1, parts, free),
                    b: self.split_tile(s2, d2, parts, free),
                }
            }
            1 => {
                let (d0, d1, s0, s1) = (dt(self), dt(self), self.any_space(), self.any_space());
                Op::TensorScalar {
                    op: self.pick(AluOp::ALL),
                    reverse: self.chance(0.5),
                    dst: self.split_tile(s0, d0, parts, free),
                    src: self.split_tile(s1, d1, parts, free),
                    scalar: self.scalar(),
                }
            }
            2 => {
                let (d0, d1, s0, s1) = (dt(self), dt(self), self.any_space(), self.any_space());
                Op::Reduce {
                    op: self.pick(ReduceOp::ALL),
                    dst: self.tile(s0, d0, parts, &[1]),
                    src: self.split_tile(s1, d1, parts, free),
                }
            }
            3 => {
                let (d0, d1, s0, s1) = (dt(self), dt(self), self.any_space(), self.any_space());
                Op::Copy { dst: self.split_tile(s0, d0, parts, free), src: self.split_tile(s1, d1, parts, free) }
            }
            4 => {
                let (d0, s0) = (dt(self), self.any_space());
                if self.chance(0.5) {
                    Op::Memset { dst: self.split_tile(s0, d0, parts, free), value: Imm(self.f32()) }
                } else {
                    Op::Iota {
                        dst: self.split_tile(s0, d0, parts, free),
                        base: self.rng.random::<i16>() as i32,
                        partition_step: self.range(0, 64) as i32 - 32,
                        free_step: self.range(0, 4) as i32 - 2,
                    }
                }
            }
            _ => {
                let (d0, d1, s0, s1) = (dt(self), dt(self), self.any_space(), self.any_space());
                Op::Select {
                    cmp: self.pick(CmpOp::ALL),
                    dst: self.split_tile(s0, d0, parts, free),
                    src: self.split_tile(s1, d1, parts, free),
                    partition_step: self.range(0, 4) as i32 - 2,
                    free_step: self.range(0, 4) as i32 - 2,
                    base: self.range(0, 64) as i32 - 32,
                    fill: Imm(self.f32()),
                }
            }
        }
    }

    fn act_op(&mut self) -> Op {
        let parts = self.range(1, self.t.sram.partitions as u64);
        let free = self.range(1, 40);
        let (d0, d1, s0, s1) = (self.pick(&DType::ALL), self.pick(&DType::ALL), self.any_space(), self.any_space());
        Op::Activate {
            func: self.pick(ActFunc::ALL),
            dst: self.split_tile(s0, d0, parts, free),
            src: self.split_tile(s1, d1, parts, free),
            scale: self.scalar(),
            bias: self.scalar(),
            accum: self.chance(0.5).then(|| self.column(DType::F32)),
        }
    }

    fn dma_side(&mut self, space: DmaSpace, elem: u64, counts: &[u64]) -> DmaSide {
        let limit = match space {
            DmaSpace::Hbm if self.heaps => HEAP_BYTES,
            DmaSpace::Hbm => self.t.hbm.size_bytes,
            DmaSpace::Sram => self.t.sram.partitions as u64 * self.t.sram.partition_bytes as u64,
        };
        let contiguous = self.chance(0.5);
        let mut dims = Vec::new();
        let mut inner = elem as i64;
        for &c in counts.iter().rev() {
            let stride = if contiguous {
                inner
            } else if space == DmaSpace::Sram && self.chance(0.5) {
                self.t.sram.partition_bytes as i64
            } else {
                (self.range(0, 8) as i64 - 2) * elem as i64
            };
            dims.push(DmaDim { count: c as u32, stride });
            inner *= c as i64;
        }
        dims.reverse();
        let mut side = DmaSide::new(space, 0, &dims);
        let (lo, hi) = side.byte_extent();
        let min = (-lo) as u64;
        let max = (limit as i128 - hi - elem as i128).max(min as i128) as u64;
        let span = (max - min) / elem;
        let pick = if self.chance(0.5) { 0 } else { self.range(0, span.min(1 << 20)) };
        side.addr = min + pick * elem;
        if space == DmaSpace::Hbm && self.heaps {
            side.addr += heap_base(elem);
        }
        side
    }

    fn dma_op(&mut self) -> Op {
        if self.chance(0.2) {
            return self.gather_op();
        }
        let elem = self.pick(&[1u64, 2, 4]);
        let n = self.range(1, 64);
        let split = |g: &mut Gen| g.split(n).into_iter().map(u64::from).collect::<Vec<_>>();
        let (cs, cd) = (split(self), split(self));
        let s0 = if self.chance(0.5) { DmaSpace::Hbm } else { DmaSpace::Sram };
        let s1 = if self.chance(0.5) { DmaSpace::Hbm } else { DmaSpace::Sram };
        let src = self.dma_side(s0, elem, &cs);
        let mut dst = self.dma_side(s1, elem, &cd);
        if s0 == DmaSpace::Sram && s1 == DmaSpace::Sram && self.chance(0.5) {
            // Core-to-core: a non-empty set of the program's cores.
            let all = (1u64 << self.cores) - 1;
            dst = dst.on_cores(self.range(1, all) as u32);
        }
        Op::Dma { xfer: DmaTransfer { elem_bytes: elem as u8, src, dst } }
    }
}

impl Gen {
    /// A `dma_gather` of contiguous rows into SRAM from a table in the heap of its
    /// element size (indices as they happen to be in SRAM: a run may fault).
    fn gather_op(&mut self) -> Op {
        let dtype = self.pick(&DType::ALL);
        let size = dtype.size_bytes() as u64;
        let parts = self.range(1, self.t.sram.partitions as u64);
        let free = self.range(1, 16);
        let mut dst = self.tile(Space::Sram, dtype, parts, &[free as u16]);
        dst.dims[0].stride = 1;
        dst.offset = (dst.offset as u64).min(self.t.sram.partition_bytes as u64 - free * size) as u32;
        let mut idx = self.column(DType::I32);
        idx.space = Space::Sram;
        let rows = self.range(1, 40) as u32;
        let stride = (free + self.range(0, 4)) * size;
        let limit = if self.heaps { HEAP_BYTES } else { self.t.hbm.size_bytes };
        let span = (rows as u64 - 1) * stride + free * size;
        let mut addr = self.range(0, (limit - span) / size) * size;
        if self.heaps {
            addr += heap_base(size);
        }
        Op::DmaGather { dst, idx, table: HbmRows { addr, rows, stride } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inst::Opcode;
    use std::collections::HashSet;

    #[test]
    fn programs_are_valid_and_cover_every_opcode() {
        let mut seen = HashSet::new();
        for name in ["jpu-tiny", "jpu1"] {
            let t = Target::builtin(name).unwrap();
            for seed in 0..200 {
                let p = random_program(seed, &t);
                p.validate(&t).unwrap_or_else(|e| panic!("seed {seed} on {name}: {e}"));
                for (_, _, _, inst) in p.instructions() {
                    seen.insert(inst.op.opcode());
                }
            }
        }
        for op in Opcode::ALL {
            assert!(seen.contains(op), "{op:?} never generated");
        }
    }
}
