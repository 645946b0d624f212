//! Hand-scheduled kernels built directly as programs, for simulator tests and
//! benchmarks (the compiler's own lowering comes later; these fix a baseline).
//!
//! [`gemm`] computes `C[M, N] (f32) = A[M, K] . B[K, N]` with every operand
//! resident in SRAM: A row-per-partition (used as the transposed stationary
//! operand), B k-tile by k-tile, output tiles accumulated in PSUM banks used
//! round-robin, evacuated by the VE into a per-tile SRAM slot and stored by the DMA
//! queues. Semaphores: `loaded` (every load), `computed` (last matmul of a tile),
//! `evacuated` (the VE copy of a tile); the PE waits for a bank's previous tile to
//! be evacuated before reusing it. Race-free by construction.

use jpu_isa::inst::Wait;
use jpu_isa::operand::{Dim, DmaDim, DmaSide, DmaSpace, DmaTransfer, Space, Tile};
use jpu_isa::program::{Role, RooflineInputs, SemDecl, TensorDecl};
use jpu_isa::{DType, Engine, Inst, Op, Program, Target};

/// A GEMM problem.
#[derive(Debug, Clone, Copy)]
pub struct GemmSpec {
    /// Rows of A and C.
    pub m: usize,
    /// Contraction dim.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Operand dtype (C is f32, or i32 for i8).
    pub dtype: DType,
}

const LOADED: u8 = 0;
const COMPUTED: u8 = 1;
const EVACUATED: u8 = 2;

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn inst(op: Op, wait: Option<(u8, u32)>, signal: Option<u8>) -> Inst {
    Inst {
        op,
        wait: wait.map(|(sem, value)| Wait { sem, value }),
        signal: signal.map(jpu_isa::Signal::local),
        debug: None,
    }
}

/// A DMA of `elem`-byte elements between two row patterns made by [`side`].
fn dma(elem: u64, mut src: DmaSide, mut dst: DmaSide) -> Op {
    for side in [&mut src, &mut dst] {
        side.dims[1] = DmaDim { count: side.dims[1].count / elem as u32, stride: elem as i64 };
    }
    Op::Dma { xfer: DmaTransfer { elem_bytes: elem as u8, src, dst } }
}

/// `rows` rows of `row_bytes` contiguous bytes, `row_stride` apart.
fn side(space: DmaSpace, addr: u64, rows: u64, row_stride: i64, row_bytes: u64) -> DmaSide {
    DmaSide::new(
        space,
        addr,
        &[DmaDim { count: rows as u32, stride: row_stride }, DmaDim { count: row_bytes as u32, stride: 1 }],
    )
}

/// Builds the GEMM program, or says why the problem does not fit the target.
pub fn gemm(t: &Target, s: GemmSpec) -> Result<Program, String> {
    let esize = s.dtype.size_bytes() as u64;
    let acc = s.dtype.accumulator();
    let (p_rows, k_rows) = (t.pe.cols as usize, t.pe.rows as usize);
    let nw_max = (t.pe.max_moving_free as usize).min(t.psum_bank_bytes() as usize / 4);
    let (mt, kt, nt) = (s.m.div_ceil(p_rows), s.k.div_ceil(k_rows), s.n.div_ceil(nw_max));
    let pb = t.sram.partition_bytes as u64;
    // SRAM layout per partition: A rows of every m-tile, B rows of every k-tile, C slots.
    let a_off = 0u64;
    let b_off = align(a_off + (mt * s.k) as u64 * esize, 64);
    let c_off = align(b_off + (kt * s.n) as u64 * esize, 64);
    let sram_end = c_off + (mt * s.n * 4) as u64;
    if sram_end > pb {
        return Err(format!("needs {sram_end} bytes per SRAM partition; {} has {pb}", t.name));
    }
    // HBM layout.
    let a_addr = 0u64;
    let b_addr = align((s.m * s.k) as u64 * esize, 4096);
    let c_addr = align(b_addr + (s.k * s.n) as u64 * esize, 4096);
    let mut p = Program::new(t);
    let tensor = |name: &str, dtype, shape: Vec<u64>, addr, role| TensorDecl {
        name: name.into(),
        dtype,
        shape,
        addr,
        role,
        data: Vec::new(),
    };
    p.tensors = vec![
        tensor("a", s.dtype, vec![s.m as u64, s.k as u64], a_addr, Role::Input),
        tensor("b", s.dtype, vec![s.k as u64, s.n as u64], b_addr, Role::Input),
        tensor("c", acc, vec![s.m as u64, s.n as u64], c_addr, Role::Output),
    ];
    p.semaphores = vec![
        SemDecl { id: LOADED, name: "loaded".into() },
        SemDecl { id: COMPUTED, name: "computed".into() },
        SemDecl { id: EVACUATED, name: "evacuated".into() },
    ];
    let queues = t.dma.queues as usize;
    let mut dma_streams: Vec<Vec<Inst>> = vec![Vec::new(); queues];
    let mut loads = 0u32;
    for mi in 0..mt {
        let rows = (s.m - mi * p_rows).min(p_rows) as u64;
        let row = s.k as u64 * esize;
        let src = side(DmaSpace::Hbm, a_addr + (mi * p_rows) as u64 * row, rows, row as i64, row);
        let dst = side(DmaSpace::Sram, a_off + mi as u64 * row, rows, pb as i64, row);
        dma_streams[loads as usize % queues].push(inst(dma(esize, src, dst), None, Some(LOADED)));
        loads += 1;
    }
    for kc in 0..kt {
        let rows = (s.k - kc * k_rows).min(k_rows) as u64;
        let row = s.n as u64 * esize;
        let src = side(DmaSpace::Hbm, b_addr + (kc * k_rows) as u64 * row, rows, row as i64, row);
        let dst = side(DmaSpace::Sram, b_off + kc as u64 * row, rows, pb as i64, row);
        dma_streams[loads as usize % queues].push(inst(dma(esize, src, dst), None, Some(LOADED)));
        loads += 1;
    }
    let banks = t.psum.banks.unwrap_or(1) as usize;
    let bank_bytes = t.psum_bank_bytes();
    let (mut pe, mut ve) = (Vec::new(), Vec::new());
    let mut tile_index = 0usize;
    for mi in 0..mt {
        let mrows = (s.m - mi * p_rows).min(p_rows);
        for ni in 0..nt {
            let nw = (s.n - ni * nw_max).min(nw_max);
            let bank = (tile_index % banks) as u32;
            let psum = Tile::contiguous(Space::Psum, acc, 0, mrows as u16, bank * bank_bytes, nw as u16);
            for kc in 0..kt {
                let kr = (s.k - kc * k_rows).min(k_rows);
                let stationary = Tile::with_dims(
                    Space::Sram,
                    s.dtype,
                    0,
                    mrows as u16,
                    (a_off + (mi * s.k + kc * k_rows) as u64 * esize) as u32,
                    &[Dim { count: kr as u16, stride: 1 }],
                );
                let moving = Tile::contiguous(
                    Space::Sram,
                    s.dtype,
                    0,
                    kr as u16,
                    (b_off + (kc * s.n + ni * nw_max) as u64 * esize) as u32,
                    nw as u16,
                );
                let wait = if tile_index == 0 && kc == 0 {
                    Some((LOADED, loads))
                } else if tile_index >= banks && kc == 0 {
                    Some((EVACUATED, (tile_index - banks + 1) as u32))
                } else {
                    None
                };
                let signal = (kc + 1 == kt).then_some(COMPUTED);
                let op = Op::Matmul { dst: psum, stationary, moving, accumulate: kc > 0, transposed: true };
                pe.push(inst(op, wait, signal));
            }
            let slot = (c_off + (mi * s.n + ni * nw_max) as u64 * 4) as u32;
            let staged = Tile::contiguous(Space::Sram, acc, 0, mrows as u16, slot, nw as u16);
            ve.push(inst(
                Op::Copy { dst: staged, src: psum },
                Some((COMPUTED, tile_index as u32 + 1)),
                Some(EVACUATED),
            ));
            let row = (nw * 4) as u64;
            let src = side(DmaSpace::Sram, slot as u64, mrows as u64, pb as i64, row);
            let dst = side(
                DmaSpace::Hbm,
                c_addr + ((mi * p_rows * s.n + ni * nw_max) * 4) as u64,
                mrows as u64,
                (s.n * 4) as i64,
                row,
            );
            dma_streams[tile_index % queues].push(inst(
                dma(4, src, dst),
                Some((EVACUATED, tile_index as u32 + 1)),
                None,
            ));
            tile_index += 1;
        }
    }
    let halt = || Inst::new(Op::Halt {});
    pe.push(halt());
    ve.push(halt());
    let core = &mut p.cores[0];
    core[Engine::PE.0 as usize] = pe;
    core[Engine::VE.0 as usize] = ve;
    for (q, mut stream) in dma_streams.into_iter().enumerate() {
        if !stream.is_empty() {
            stream.push(halt());
            core[Engine::dma(q as u8).0 as usize] = stream;
        }
    }
    let flops = 2 * (s.m * s.k * s.n) as u64;
    let mut roof = RooflineInputs {
        input_bytes: ((s.m * s.k + s.k * s.n) as u64) * esize,
        output_bytes: (s.m * s.n * 4) as u64,
        ..RooflineInputs::default()
    };
    match esize {
        1 => roof.flops_8bit = flops,
        2 => roof.flops_16bit = flops,
        _ => roof.flops_f32 = flops,
    }
    p.roofline = Some(roof);
    p.validate(t).map_err(|e| format!("generated GEMM is invalid: {e}"))?;
    Ok(p)
}

/// A synthetic pipeline of `stages` rounds of load -> matmul -> evacuate ->
/// activate -> store, chained by semaphores: `5 x stages + 7` instructions, for
/// timing-only throughput measurements.
pub fn pipeline(t: &Target, stages: u32) -> Program {
    let mut p = Program::new(t);
    let pb = t.sram.partition_bytes as i64;
    let rows = t.pe.rows.min(t.sram.partitions) as u64;
    let n = (t.pe.max_moving_free as u64).min(t.psum_bank_bytes() as u64 / 4);
    let tensor = |name: &str, shape: Vec<u64>, addr: u64, role: Role| TensorDecl {
        name: name.into(),
        dtype: DType::Bf16,
        shape,
        addr,
        role,
        data: Vec::new(),
    };
    p.tensors = vec![tensor("x", vec![128, 512], 0, Role::Input), tensor("y", vec![rows, n], 0x100000, Role::Output)];
    let load = dma(2, side(DmaSpace::Hbm, 0, rows, (n * 2) as i64, n * 2), side(DmaSpace::Sram, 0, rows, pb, n * 2));
    let store = dma(
        2,
        side(DmaSpace::Sram, 0x4000 % (pb as u64 / 2), rows, pb, n * 2),
        side(DmaSpace::Hbm, 0x100000, rows, (n * 2) as i64, n * 2),
    );
    let mm = Op::Matmul {
        dst: Tile::contiguous(Space::Psum, DType::F32, 0, rows as u16, 0, n as u16),
        stationary: Tile::contiguous(Space::Sram, DType::Bf16, 0, rows as u16, 0, rows as u16),
        moving: Tile::contiguous(Space::Sram, DType::Bf16, 0, rows as u16, 0, n as u16),
        accumulate: false,
        transposed: false,
    };
    let evac = Op::Copy {
        dst: Tile::contiguous(Space::Sram, DType::F32, 0, rows as u16, 0, n as u16),
        src: Tile::contiguous(Space::Psum, DType::F32, 0, rows as u16, 0, n as u16),
    };
    let act = Op::Activate {
        func: jpu_isa::operand::ActFunc::Exp,
        dst: Tile::contiguous(Space::Sram, DType::Bf16, 0, rows as u16, 0, n as u16),
        src: Tile::contiguous(Space::Sram, DType::F32, 0, rows as u16, 0, n as u16),
        scale: jpu_isa::operand::Scalar::Imm(jpu_isa::operand::Imm(1.0)),
        bias: jpu_isa::operand::Scalar::Imm(jpu_isa::operand::Imm(0.0)),
        accum: None,
    };
    let queues = t.dma.queues as usize;
    let core = &mut p.cores[0];
    for i in 0..stages {
        let q = 3 + (i as usize % queues);
        core[q].push(inst(load.clone(), None, Some(0)));
        core[0].push(inst(mm.clone(), Some((0, i + 1)), Some(1)));
        core[1].push(inst(evac.clone(), Some((1, i + 1)), Some(2)));
        core[2].push(inst(act.clone(), Some((2, i + 1)), Some(3)));
        let sq = 3 + ((i as usize + 1) % queues);
        core[sq].push(inst(store.clone(), Some((3, i + 1)), None));
    }
    for stream in core.iter_mut() {
        stream.push(Inst::new(Op::Halt {}));
    }
    p
}
