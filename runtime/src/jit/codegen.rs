//! Cranelift code for the elementwise instructions: `tensor_tensor` and
//! `tensor_scalar` with add, sub, mul and div (immediate or per-partition column
//! scalars, either operand order) and `copy`, on f32 and bf16 tiles whose free
//! pattern is one contiguous run, four elements at a time in f32x4 lanes. A
//! destination that overlaps a source other than exactly (the same bytes) is
//! not covered, since the interpreter reads every source before it writes.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlags, Value};
use cranelift_frontend::FunctionBuilder;
use jpu_isa::inst::Op;
use jpu_isa::operand::{AluOp, Column, Scalar, Space, Tile};
use jpu_isa::{DType, Target};

/// Per space: bytes per partition and in all.
pub(super) struct Memory {
    sram: (i64, i64),
    psum: (i64, i64),
}

impl Memory {
    pub(super) fn of_target(t: &Target) -> Memory {
        Memory {
            sram: (t.sram.partition_bytes as i64, (t.sram.partition_bytes * t.sram.partitions) as i64),
            psum: (t.psum.partition_bytes as i64, (t.psum.partition_bytes * t.psum.partitions) as i64),
        }
    }

    fn of(&self, space: Space) -> (i64, i64) {
        match space {
            Space::Sram => self.sram,
            Space::Psum => self.psum,
        }
    }

    /// Whether every byte `tile` touches is inside its space.
    pub(super) fn holds(&self, tile: &Tile) -> bool {
        let (pb, total) = self.of(tile.space);
        let last = (tile.part_start as i64 + tile.part_count as i64 - 1) * pb
            + tile.offset as i64
            + tile.free_elems() as i64 * tile.dtype.size_bytes() as i64;
        tile.part_count > 0 && last <= total && (tile.offset as i64) < pb
    }
}

/// What one covered instruction computes.
pub(super) enum Kernel {
    Binary { op: AluOp, dst: Tile, a: Tile, b: Tile },
    Scalar { op: AluOp, reverse: bool, dst: Tile, src: Tile, scalar: Scalar },
    Copy { dst: Tile, src: Tile },
}

/// Float dtypes the engine loads and stores.
fn covered(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::Bf16)
}

/// A contiguous float tile inside its space.
fn plain(t: &Tile, m: &Memory) -> bool {
    covered(t.dtype) && t.is_contiguous() && m.holds(t)
}

/// The same bytes, or none in common.
pub(super) fn same_or_apart(a: &Tile, b: &Tile) -> bool {
    let same = a.space == b.space
        && a.part_start == b.part_start
        && a.part_count == b.part_count
        && a.offset == b.offset
        && a.dtype == b.dtype;
    let bytes = |t: &Tile| (t.offset as u64, t.offset as u64 + t.free_elems() * t.dtype.size_bytes() as u64);
    let parts = |t: &Tile| (t.part_start as u32, t.part_start as u32 + t.part_count as u32);
    let ((a0, a1), (b0, b1)) = (bytes(a), bytes(b));
    let ((p0, p1), (q0, q1)) = (parts(a), parts(b));
    same || a.space != b.space || a1 <= b0 || b1 <= a0 || p1 <= q0 || q1 <= p0
}

impl Kernel {
    /// The kernel of `op`, when the engine covers it.
    pub(super) fn of(op: &Op, m: &Memory) -> Option<Kernel> {
        let arithmetic = |op: &AluOp| matches!(op, AluOp::Add | AluOp::Sub | AluOp::Mul | AluOp::Div);
        let shaped = |dst: &Tile, src: &Tile| {
            plain(dst, m) && plain(src, m) && dst.part_count == src.part_count && dst.free_elems() == src.free_elems()
        };
        match op {
            Op::TensorTensor { op, dst, a, b } if arithmetic(op) && shaped(dst, a) && shaped(dst, b) => {
                (same_or_apart(dst, a) && same_or_apart(dst, b)).then_some(Kernel::Binary {
                    op: *op,
                    dst: *dst,
                    a: *a,
                    b: *b,
                })
            }
            Op::TensorScalar { op, reverse, dst, src, scalar } if arithmetic(op) && shaped(dst, src) => {
                let column = match scalar {
                    Scalar::Imm(_) => true,
                    Scalar::Col(c) => covered(c.dtype) && column_fits(c, src, m),
                };
                (column && same_or_apart(dst, src)).then_some(Kernel::Scalar {
                    op: *op,
                    reverse: *reverse,
                    dst: *dst,
                    src: *src,
                    scalar: *scalar,
                })
            }
            Op::Copy { dst, src } if shaped(dst, src) && same_or_apart(dst, src) => {
                Some(Kernel::Copy { dst: *dst, src: *src })
            }
            _ => None,
        }
    }

    /// Emits the kernel: for each partition, [`LANES`] elements at a time
    /// (f32x4: every op is per element, so lanes compute exactly what single
    /// elements do), then the row's remaining elements one by one.
    pub(super) fn build(&self, mut b: FunctionBuilder<'_>, m: &Memory) {
        let (dst, parts, elems) = match self {
            Kernel::Binary { dst, .. } | Kernel::Scalar { dst, .. } | Kernel::Copy { dst, .. } => {
                (*dst, dst.part_count as i64, dst.free_elems() as i64)
            }
        };
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        let [outer, wide, wide_body, tail, tail_body, next, exit] = [(); 7].map(|_| b.create_block());
        b.append_block_param(outer, types::I64);
        for block in [wide, tail] {
            b.append_block_param(block, types::I64);
            b.append_block_param(block, types::I64);
        }
        b.append_block_param(next, types::I64);
        b.switch_to_block(entry);
        let bases = [b.block_params(entry)[0], b.block_params(entry)[1]];
        let zero = b.ins().iconst(types::I64, 0);
        b.ins().jump(outer, &[zero.into()]);
        // outer(p): while p < parts, run the row.
        b.switch_to_block(outer);
        let p = b.block_params(outer)[0];
        let more = b.ins().icmp_imm(IntCC::SignedLessThan, p, parts);
        b.ins().brif(more, wide, &[p.into(), zero.into()], exit, &[]);
        // wide(p, k): while k + LANES <= elems, LANES elements.
        b.switch_to_block(wide);
        let (p, k) = (b.block_params(wide)[0], b.block_params(wide)[1]);
        let more = b.ins().icmp_imm(IntCC::SignedLessThanOrEqual, k, elems - LANES);
        b.ins().brif(more, wide_body, &[], tail, &[p.into(), k.into()]);
        b.switch_to_block(wide_body);
        let at = Element { bases, p, k, lanes: LANES };
        let value = self.value(&mut b, &at, m);
        store(&mut b, &at, &dst, m, value);
        let k4 = b.ins().iadd_imm(k, LANES);
        b.ins().jump(wide, &[p.into(), k4.into()]);
        // tail(p, k): while k < elems, one element.
        b.switch_to_block(tail);
        let (p, k) = (b.block_params(tail)[0], b.block_params(tail)[1]);
        let more = b.ins().icmp_imm(IntCC::SignedLessThan, k, elems);
        b.ins().brif(more, tail_body, &[], next, &[p.into()]);
        b.switch_to_block(tail_body);
        let at = Element { bases, p, k, lanes: 1 };
        let value = self.value(&mut b, &at, m);
        store(&mut b, &at, &dst, m, value);
        let k1 = b.ins().iadd_imm(k, 1);
        b.ins().jump(tail, &[p.into(), k1.into()]);
        b.switch_to_block(next);
        let p = b.block_params(next)[0];
        let p1 = b.ins().iadd_imm(p, 1);
        b.ins().jump(outer, &[p1.into()]);
        b.switch_to_block(exit);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize();
    }

    /// The f32 value the kernel stores at element `at`.
    fn value(&self, b: &mut FunctionBuilder<'_>, at: &Element, m: &Memory) -> Value {
        match self {
            Kernel::Binary { op, a, b: rhs, .. } => {
                let x = load(b, at, a, m);
                let y = load(b, at, rhs, m);
                alu(b, *op, x, y)
            }
            Kernel::Scalar { op, reverse, src, scalar, .. } => {
                let x = load(b, at, src, m);
                let s = match scalar {
                    Scalar::Imm(v) => b.ins().f32const(v.0),
                    Scalar::Col(c) => load_column(b, at, c, src, m),
                };
                let s = if at.lanes == 1 { s } else { b.ins().splat(types::F32X4, s) };
                if *reverse {
                    alu(b, *op, s, x)
                } else {
                    alu(b, *op, x, s)
                }
            }
            Kernel::Copy { src, .. } => load(b, at, src, m),
        }
    }
}

/// Whether a column read for every partition of `src` fits its space.
fn column_fits(c: &Column, src: &Tile, m: &Memory) -> bool {
    let (pb, total) = m.of(c.space);
    let last = (src.part_start as i64 + src.part_count as i64 - 1) * pb + c.offset as i64 + c.dtype.size_bytes() as i64;
    last <= total && (c.offset as i64) < pb
}

/// Elements of a row computed together (f32x4).
const LANES: i64 = 4;

/// The position of one element, or of [`LANES`] from it: the memories' bases,
/// the partition (relative to each tile's first), the element index within the
/// row, and how many elements (1 or [`LANES`]).
struct Element {
    bases: [Value; 2],
    p: Value,
    k: Value,
    lanes: i64,
}

/// The address of element `at` of a tile placed at (`space`, `part_start`,
/// `offset`) with elements of `size` bytes.
fn address(
    b: &mut FunctionBuilder<'_>,
    at: &Element,
    (space, part_start, offset, size): (Space, i64, i64, i64),
    m: &Memory,
) -> Value {
    let (pb, _) = m.of(space);
    let base = at.bases[usize::from(space == Space::Psum)];
    let row = b.ins().iadd_imm(at.p, part_start);
    let row = b.ins().imul_imm(row, pb);
    let elem = b.ins().imul_imm(at.k, size);
    let off = b.ins().iadd(row, elem);
    let off = b.ins().iadd_imm(off, offset);
    b.ins().iadd(base, off)
}

fn tile_address(b: &mut FunctionBuilder<'_>, at: &Element, t: &Tile, m: &Memory) -> Value {
    address(b, at, (t.space, t.part_start as i64, t.offset as i64, t.dtype.size_bytes() as i64), m)
}

/// Loads element `at` of `t` as f32, or its [`LANES`] elements as f32x4
/// (bf16 widens exactly).
fn load(b: &mut FunctionBuilder<'_>, at: &Element, t: &Tile, m: &Memory) -> Value {
    let addr = tile_address(b, at, t, m);
    if at.lanes == 1 {
        return load_at(b, addr, t.dtype);
    }
    // Rows need not be 16-byte aligned: no `aligned` flag on vector accesses.
    let flags = MemFlags::new().with_notrap();
    match t.dtype {
        DType::Bf16 => {
            let bits = b.ins().uload16x4(flags, addr, 0);
            let bits = b.ins().ishl_imm(bits, 16);
            b.ins().bitcast(types::F32X4, lanes_flags(), bits)
        }
        _ => b.ins().load(types::F32X4, flags, addr, 0),
    }
}

/// Flags of a bitcast between vector types (little-endian lane order).
fn lanes_flags() -> MemFlags {
    MemFlags::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

fn load_at(b: &mut FunctionBuilder<'_>, addr: Value, dtype: DType) -> Value {
    let flags = MemFlags::trusted();
    match dtype {
        DType::Bf16 => {
            let bits = b.ins().uload16(types::I32, flags, addr, 0);
            let bits = b.ins().ishl_imm(bits, 16);
            b.ins().bitcast(types::F32, MemFlags::new(), bits)
        }
        _ => b.ins().load(types::F32, flags, addr, 0),
    }
}

/// Loads partition `at.p`'s value of column `c` (read for `src`'s partitions).
fn load_column(b: &mut FunctionBuilder<'_>, at: &Element, c: &Column, src: &Tile, m: &Memory) -> Value {
    let zero = b.ins().iconst(types::I64, 0);
    let row = Element { bases: at.bases, p: at.p, k: zero, lanes: 1 };
    let addr = address(b, &row, (c.space, src.part_start as i64, c.offset as i64, 0), m);
    load_at(b, addr, c.dtype)
}

/// Stores f32 `v` into element `at` of `t`, rounding as the interpreter does
/// (bf16: to nearest even, NaN canonical with its sign kept).
fn store(b: &mut FunctionBuilder<'_>, at: &Element, t: &Tile, m: &Memory, v: Value) {
    let addr = tile_address(b, at, t, m);
    if at.lanes != 1 {
        return store_lanes(b, addr, t.dtype, v);
    }
    let flags = MemFlags::trusted();
    match t.dtype {
        DType::Bf16 => {
            let bits = b.ins().bitcast(types::I32, MemFlags::new(), v);
            let high = b.ins().ushr_imm(bits, 16);
            let lsb = b.ins().band_imm(high, 1);
            let biased = b.ins().iadd_imm(bits, 0x7fff);
            let biased = b.ins().iadd(biased, lsb);
            let rounded = b.ins().ushr_imm(biased, 16);
            let sign = b.ins().band_imm(high, 0x8000);
            let nan = b.ins().bor_imm(sign, 0x7fc0);
            let is_nan = b.ins().fcmp(FloatCC::Unordered, v, v);
            let out = b.ins().select(is_nan, nan, rounded);
            b.ins().istore16(flags, out, addr, 0);
        }
        _ => {
            b.ins().store(flags, v, addr, 0);
        }
    }
}

/// [`store`] of an f32x4: the same rounding in every lane.
fn store_lanes(b: &mut FunctionBuilder<'_>, addr: Value, dtype: DType, v: Value) {
    let flags = MemFlags::new().with_notrap();
    if dtype != DType::Bf16 {
        b.ins().store(flags, v, addr, 0);
        return;
    }
    let splat = |b: &mut FunctionBuilder<'_>, x: i64| {
        let x = b.ins().iconst(types::I32, x);
        b.ins().splat(types::I32X4, x)
    };
    let bits = b.ins().bitcast(types::I32X4, lanes_flags(), v);
    let high = b.ins().ushr_imm(bits, 16);
    let (one, round, sign_mask, quiet) = (splat(b, 1), splat(b, 0x7fff), splat(b, 0x8000), splat(b, 0x7fc0));
    let lsb = b.ins().band(high, one);
    let biased = b.ins().iadd(bits, round);
    let biased = b.ins().iadd(biased, lsb);
    let rounded = b.ins().ushr_imm(biased, 16);
    let sign = b.ins().band(high, sign_mask);
    let nan = b.ins().bor(sign, quiet);
    let is_nan = b.ins().fcmp(FloatCC::Unordered, v, v);
    let is_nan = b.ins().bitcast(types::I32X4, lanes_flags(), is_nan);
    let out = b.ins().bitselect(is_nan, nan, rounded);
    // Every lane holds 16 bits: narrowing is exact; the low 8 bytes are the row's.
    let halves = b.ins().unarrow(out, out);
    let halves = b.ins().bitcast(types::I64X2, lanes_flags(), halves);
    let low = b.ins().extractlane(halves, 0);
    b.ins().store(flags, low, addr, 0);
}

/// An arithmetic ALU op in f32 (IEEE, as the interpreter's `alu`).
fn alu(b: &mut FunctionBuilder<'_>, op: AluOp, x: Value, y: Value) -> Value {
    match op {
        AluOp::Add => b.ins().fadd(x, y),
        AluOp::Sub => b.ins().fsub(x, y),
        AluOp::Mul => b.ins().fmul(x, y),
        _ => b.ins().fdiv(x, y),
    }
}
