//! Functional semantics of every instruction, in one place.
//!
//! Each operation reads its operands into f32 (or i32) vectors, computes with the
//! rules of docs/isa.md ("Numerics") through [`jpu_isa::numerics`], and writes the
//! results back rounded once into the destination dtype. A later compiled
//! execution mode calls the same per-element functions, so both modes agree bit
//! for bit. Operands must have passed [`jpu_isa::check::check_op`]; out-of-range
//! tiles are the loader's to reject, and indexing here would panic on them.

use jpu_isa::numerics::{activation, alu, alu_int, f32_to_bf16, fp8_values, load_f32, max_num, round_f64, store_f32};
use jpu_isa::operand::{AluOp, CmpOp, Column, DmaSpace, DmaTransfer, HbmRows, ReduceOp, Scalar, Tile};
use jpu_isa::{DType, Op};

use crate::memory::{dma_runs, tile_element_offsets, CoreMemory, Hbm};

thread_local! {
    /// Reusable f32 buffers: large per-instruction vectors would otherwise come
    /// from fresh pages on every matmul.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buffer() -> Vec<f32> {
    POOL.with(|p| p.borrow_mut().pop())
        .map(|mut v| {
            v.clear();
            v
        })
        .unwrap_or_default()
}

pub(crate) fn give_buffer(v: Vec<f32>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 8 {
            p.push(v);
        }
    });
}

/// Reads a tile as f32, partition-major (`P x E`).
pub fn read_tile(mem: &CoreMemory, tile: &Tile) -> Vec<f32> {
    let mut out = take_buffer();
    read_tile_into(mem, tile, &mut out);
    out
}

/// Appends a tile's values as f32, partition-major (`P x E`), to `out`.
pub fn read_tile_into(mem: &CoreMemory, tile: &Tile, out: &mut Vec<f32>) {
    let (buf, pb) = mem.space(tile.space);
    let size = tile.dtype.size_bytes() as usize;
    let parts = tile.part_start as usize..(tile.part_start + tile.part_count) as usize;
    // Contiguous rows are the hot path of matmul operands.
    if tile.is_contiguous() {
        let len = tile.free_elems() as usize * size;
        out.reserve(tile.free_elems() as usize * parts.len());
        for p in parts {
            let s = p * pb + tile.offset as usize;
            extend_f32(out, &buf[s..s + len], tile.dtype);
        }
        return;
    }
    let offsets = tile_element_offsets(tile);
    out.reserve(offsets.len() * parts.len());
    for p in parts {
        let row = (p * pb) as i64 + tile.offset as i64;
        for &o in &offsets {
            let a = (row + o) as usize;
            out.push(load_f32(tile.dtype, &buf[a..a + size]));
        }
    }
}

/// Appends the contiguous elements of `dtype` in `bytes` as f32 (8-bit floats
/// through their table of 256 values).
pub fn extend_f32(out: &mut Vec<f32>, bytes: &[u8], dtype: DType) {
    if let Some(table) = fp8_values(dtype) {
        return out.extend(bytes.iter().map(|&b| table[b as usize]));
    }
    match dtype {
        DType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::Bf16 => {
            out.extend(bytes.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)))
        }
        _ => out.extend(bytes.chunks_exact(dtype.size_bytes() as usize).map(|c| load_f32(dtype, c))),
    }
}

/// Stores `vals` as contiguous elements of `dtype` into `bytes`, each rounded
/// by [`store_f32`].
pub fn store_contiguous(bytes: &mut [u8], dtype: DType, vals: &[f32]) {
    match dtype {
        DType::F32 => bytes.chunks_exact_mut(4).zip(vals).for_each(|(c, v)| c.copy_from_slice(&v.to_le_bytes())),
        DType::Bf16 => {
            bytes.chunks_exact_mut(2).zip(vals).for_each(|(c, &v)| c.copy_from_slice(&f32_to_bf16(v).to_le_bytes()))
        }
        _ => bytes.chunks_exact_mut(dtype.size_bytes() as usize).zip(vals).for_each(|(c, &v)| store_f32(dtype, v, c)),
    }
}

/// Reads an integer tile exactly (i8 or i32 sources of the PE).
fn read_tile_i32(mem: &CoreMemory, tile: &Tile) -> Vec<i32> {
    let (buf, pb) = mem.space(tile.space);
    let offsets = tile_element_offsets(tile);
    let mut out = Vec::with_capacity(offsets.len() * tile.part_count as usize);
    for p in tile.part_start as usize..(tile.part_start + tile.part_count) as usize {
        let row = (p * pb) as i64 + tile.offset as i64;
        for &o in &offsets {
            let a = (row + o) as usize;
            out.push(match tile.dtype {
                DType::I8 => buf[a] as i8 as i32,
                _ => i32::from_le_bytes([buf[a], buf[a + 1], buf[a + 2], buf[a + 3]]),
            });
        }
    }
    out
}

/// Writes `P x E` f32 values into a tile, rounding into its dtype.
pub fn write_tile(mem: &mut CoreMemory, tile: &Tile, vals: &[f32]) {
    let (buf, pb) = mem.space_mut(tile.space);
    let offsets = tile_element_offsets(tile);
    let size = tile.dtype.size_bytes() as usize;
    let mut i = 0;
    for p in tile.part_start as usize..(tile.part_start + tile.part_count) as usize {
        let row = (p * pb) as i64 + tile.offset as i64;
        if tile.is_contiguous() {
            let s = row as usize;
            store_contiguous(&mut buf[s..s + size * offsets.len()], tile.dtype, &vals[i..i + offsets.len()]);
            i += offsets.len();
            continue;
        }
        for &o in &offsets {
            let a = (row + o) as usize;
            store_f32(tile.dtype, vals[i], &mut buf[a..a + size]);
            i += 1;
        }
    }
}

/// Reads a column: one f32 per partition of `[part_start, part_start + count)`.
pub fn read_column(mem: &CoreMemory, col: &Column, part_start: u16, count: u16) -> Vec<f32> {
    let (buf, pb) = mem.space(col.space);
    let size = col.dtype.size_bytes() as usize;
    (part_start as usize..(part_start + count) as usize)
        .map(|p| {
            let a = p * pb + col.offset as usize;
            load_f32(col.dtype, &buf[a..a + size])
        })
        .collect()
}

fn write_column(mem: &mut CoreMemory, col: &Column, part_start: u16, vals: &[f32]) {
    let (buf, pb) = mem.space_mut(col.space);
    let size = col.dtype.size_bytes() as usize;
    for (i, &v) in vals.iter().enumerate() {
        let a = (part_start as usize + i) * pb + col.offset as usize;
        store_f32(col.dtype, v, &mut buf[a..a + size]);
    }
}

fn scalar_values(mem: &CoreMemory, s: &Scalar, part_start: u16, count: u16) -> Vec<f32> {
    match s {
        Scalar::Imm(v) => vec![v.0; count as usize],
        Scalar::Col(c) => read_column(mem, c, part_start, count),
    }
}

/// `acc[m][n] = acc[m][n] + a[k][m] * b[k][n]` for k in increasing order, with f32
/// rounding after every multiply and every add (no fused multiply-add).
pub fn matmul_f32(a_km: &[f32], b_kn: &[f32], acc_mn: &mut [f32], k: usize, m: usize, n: usize) {
    for mi in 0..m {
        let row = &mut acc_mn[mi * n..(mi + 1) * n];
        for ki in 0..k {
            let a = a_km[ki * m + mi];
            let b = &b_kn[ki * n..(ki + 1) * n];
            for (r, &bv) in row.iter_mut().zip(b) {
                *r += a * bv;
            }
        }
    }
}

/// The i32 analogue of [`matmul_f32`] for i8 operands (wrapping arithmetic).
pub fn matmul_i32(a_km: &[i32], b_kn: &[i32], acc_mn: &mut [i32], k: usize, m: usize, n: usize) {
    for mi in 0..m {
        let row = &mut acc_mn[mi * n..(mi + 1) * n];
        for ki in 0..k {
            let a = a_km[ki * m + mi];
            for (r, &bv) in row.iter_mut().zip(&b_kn[ki * n..(ki + 1) * n]) {
                *r = r.wrapping_add(a.wrapping_mul(bv));
            }
        }
    }
}

fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for c in 0..cols {
        for r in 0..rows {
            out.push(v[r * cols + c]);
        }
    }
    out
}

fn compare(cmp: CmpOp, v: i64) -> bool {
    match cmp {
        CmpOp::Ge => v >= 0,
        CmpOp::Gt => v > 0,
        CmpOp::Le => v <= 0,
        CmpOp::Lt => v < 0,
        CmpOp::Eq => v == 0,
        CmpOp::Ne => v != 0,
    }
}

/// Executes one compute instruction on a core's memories.
pub fn execute_compute(op: &Op, mem: &mut CoreMemory) {
    match op {
        Op::Matmul { dst, stationary, moving, accumulate, transposed } => {
            matmul(mem, dst, stationary, moving, *accumulate, *transposed)
        }
        Op::Transpose { dst, src } => {
            let p = src.part_count as usize;
            let f = src.free_elems() as usize;
            if src.dtype.is_int() {
                let v = read_tile_i32(mem, src);
                write_tile_int(mem, dst, &transpose(&v, p, f));
            } else {
                let v = read_tile(mem, src);
                write_tile(mem, dst, &transpose(&v, p, f));
            }
        }
        Op::TensorTensor { op, dst, a, b } if dst.dtype.is_int() && a.dtype.is_int() && b.dtype.is_int() => {
            let (av, bv) = (read_tile_i32(mem, a), read_tile_i32(mem, b));
            let out: Vec<i32> = av.iter().zip(&bv).map(|(&x, &y)| alu_int(*op, x, y)).collect();
            write_tile_int(mem, dst, &out);
        }
        Op::TensorScalar { op, reverse, dst, src, scalar } if is_integer_mode(dst, src, scalar) => {
            let v = read_tile_i32(mem, src);
            let s = scalar_values_i32(mem, scalar, src.part_start, src.part_count);
            let e = src.free_elems() as usize;
            let out: Vec<i32> = v
                .iter()
                .enumerate()
                .map(|(i, &x)| if *reverse { alu_int(*op, s[i / e], x) } else { alu_int(*op, x, s[i / e]) })
                .collect();
            write_tile_int(mem, dst, &out);
        }
        Op::CopyPredicated { dst, src, cond, negate } => copy_predicated(mem, dst, src, cond, *negate),
        Op::FillPredicated { dst, cond, value, negate } => fill_predicated(mem, dst, cond, value, *negate),
        Op::TensorTensor { op, dst, a, b } => {
            let av = read_tile(mem, a);
            let bv = read_tile(mem, b);
            let out: Vec<f32> = av.iter().zip(&bv).map(|(&x, &y)| alu(*op, x, y)).collect();
            write_tile(mem, dst, &out);
        }
        Op::TensorScalar { op, reverse, dst, src, scalar } => {
            let v = read_tile(mem, src);
            let s = scalar_values(mem, scalar, src.part_start, src.part_count);
            let e = src.free_elems() as usize;
            let out: Vec<f32> = v
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let c = s[i / e];
                    if *reverse {
                        alu(*op, c, x)
                    } else {
                        alu(*op, x, c)
                    }
                })
                .collect();
            write_tile(mem, dst, &out);
        }
        Op::Reduce { op, dst, src } if dst.dtype.is_int() && src.dtype.is_int() => {
            let e = src.free_elems() as usize;
            let alu = match op {
                ReduceOp::Sum => AluOp::Add,
                ReduceOp::Max => AluOp::Max,
            };
            let v = read_tile_i32(mem, src);
            let out: Vec<i32> =
                v.chunks(e).map(|row| row[1..].iter().fold(row[0], |acc, &x| alu_int(alu, acc, x))).collect();
            write_tile_int(mem, dst, &out);
        }
        Op::Reduce { op, dst, src } => {
            let v = read_tile(mem, src);
            let e = src.free_elems() as usize;
            let out: Vec<f32> = v
                .chunks(e)
                .map(|row| {
                    let first = row[0];
                    row[1..].iter().fold(first, |acc, &x| match op {
                        ReduceOp::Sum => acc + x,
                        ReduceOp::Max => max_num(acc, x),
                    })
                })
                .collect();
            write_tile(mem, dst, &out);
        }
        Op::Copy { dst, src } => copy(mem, dst, src),
        Op::Memset { dst, value } => {
            let n = dst.part_count as usize * dst.free_elems() as usize;
            write_tile(mem, dst, &vec![value.0; n]);
        }
        Op::Iota { dst, base, partition_step, free_step } => iota(mem, dst, *base, *partition_step, *free_step),
        Op::Select { cmp, dst, src, partition_step, free_step, base, fill } => {
            let e = src.free_elems() as usize;
            // Element (p, i) is kept where `ps * p + fs * i + base <cmp> 0`.
            let keep = |idx: usize| {
                let (p, i) = ((idx / e) as i64, (idx % e) as i64);
                compare(*cmp, *partition_step as i64 * p + *free_step as i64 * i + *base as i64)
            };
            if dst.dtype.is_int() && src.dtype.is_int() {
                let fill = round_f64(DType::I32, fill.0 as f64) as i32;
                let mut v = read_tile_i32(mem, src);
                v.iter_mut().enumerate().filter(|(idx, _)| !keep(*idx)).for_each(|(_, x)| *x = fill);
                write_tile_int(mem, dst, &v);
            } else {
                let mut v = read_tile(mem, src);
                v.iter_mut().enumerate().filter(|(idx, _)| !keep(*idx)).for_each(|(_, x)| *x = fill.0);
                write_tile(mem, dst, &v);
            }
        }
        Op::Activate { func, dst, src, scale, bias, accum } => {
            let v = read_tile(mem, src);
            let sc = scalar_values(mem, scale, src.part_start, src.part_count);
            let bi = scalar_values(mem, bias, src.part_start, src.part_count);
            let e = src.free_elems() as usize;
            let out: Vec<f32> =
                v.iter().enumerate().map(|(i, &x)| activation(*func, x * sc[i / e] + bi[i / e])).collect();
            if let Some(col) = accum {
                let sums: Vec<f32> = out.chunks(e).map(|row| row.iter().fold(0.0f32, |a, &y| a + y)).collect();
                write_column(mem, col, dst.part_start, &sums);
            }
            write_tile(mem, dst, &out);
        }
        Op::Dma { .. } | Op::DmaGather { .. } | Op::Nop {} | Op::Halt {} => {}
    }
}

/// `matmul`: the stationary operand (transposed when asked) times the moving
/// one, written or accumulated into `dst`; integers exactly in i32, floats in f32.
fn matmul(mem: &mut CoreMemory, dst: &Tile, stationary: &Tile, moving: &Tile, accumulate: bool, transposed: bool) {
    let k = moving.part_count as usize;
    let n = moving.free_elems() as usize;
    let m = dst.part_count as usize;
    if moving.dtype.is_int() {
        let s = read_tile_i32(mem, stationary);
        let a = if transposed { transpose(&s, m, k) } else { s };
        let b = read_tile_i32(mem, moving);
        let mut acc = if accumulate { read_tile_i32(mem, dst) } else { vec![0; m * n] };
        matmul_i32(&a, &b, &mut acc, k, m, n);
        write_tile_int(mem, dst, &acc);
    } else {
        float_matmul(mem, (dst, stationary, moving), accumulate, transposed, |a, b, acc, (k, m, n)| {
            matmul_f32(a, b, acc, k, m, n)
        });
    }
}

/// The NaN a float matmul stores for any NaN result.
pub const CANONICAL_NAN: f32 = f32::from_bits(0x7fc0_0000);

/// A float `matmul` with the multiply-accumulate done by `kernel(a_km, b_kn,
/// acc_mn, (k, m, n))`, which must compute what [`matmul_f32`] does: the
/// operands read and the result written as the interpreter does.
pub fn float_matmul(
    mem: &mut CoreMemory,
    (dst, stationary, moving): (&Tile, &Tile, &Tile),
    accumulate: bool,
    transposed: bool,
    kernel: impl FnOnce(&[f32], &[f32], &mut [f32], (usize, usize, usize)),
) {
    let k = moving.part_count as usize;
    let n = moving.free_elems() as usize;
    let m = dst.part_count as usize;
    let s = read_tile(mem, stationary);
    let a = if transposed {
        let t = transpose(&s, m, k);
        give_buffer(s);
        t
    } else {
        s
    };
    let b = read_tile(mem, moving);
    let mut acc = take_buffer();
    if accumulate {
        read_tile_into(mem, dst, &mut acc);
    } else {
        acc.resize(m * n, 0.0);
    }
    kernel(&a, &b, &mut acc, (k, m, n));
    // Which NaN an addition returns is the host's (and the compiler's) choice.
    for x in acc.iter_mut().filter(|x| x.is_nan()) {
        *x = CANONICAL_NAN;
    }
    write_tile(mem, dst, &acc);
    give_buffer(a);
    give_buffer(b);
    give_buffer(acc);
}

/// `copy`: `src` converted to `dst`'s dtype (integer to integer exactly, i32 to
/// i8 saturating; integer to float rounded once; otherwise through f32).
fn copy(mem: &mut CoreMemory, dst: &Tile, src: &Tile) {
    if src.dtype.is_int() {
        let v = read_tile_i32(mem, src);
        if dst.dtype.is_int() {
            write_tile_int(mem, dst, &v);
        } else {
            write_ints_rounded(mem, dst, &v);
        }
    } else {
        let v = read_tile(mem, src);
        write_tile(mem, dst, &v);
    }
}

/// Writes integers into a float tile, each rounded once from its exact value (an
/// i32 above 2^24 would round twice through f32).
fn write_ints_rounded(mem: &mut CoreMemory, dst: &Tile, v: &[i32]) {
    let (buf, pb) = mem.space_mut(dst.space);
    let offsets = tile_element_offsets(dst);
    let size = dst.dtype.size_bytes() as usize;
    let mut i = 0;
    for p in dst.part_start as usize..(dst.part_start + dst.part_count) as usize {
        for &o in &offsets {
            let a = ((p * pb) as i64 + dst.offset as i64 + o) as usize;
            store_f32(dst.dtype, round_f64(dst.dtype, v[i] as f64) as f32, &mut buf[a..a + size]);
            i += 1;
        }
    }
}

/// Writes integers into an integer tile (into i8 saturating).
fn write_tile_int(mem: &mut CoreMemory, dst: &Tile, v: &[i32]) {
    let (buf, pb) = mem.space_mut(dst.space);
    let offsets = tile_element_offsets(dst);
    let mut i = 0;
    for p in dst.part_start as usize..(dst.part_start + dst.part_count) as usize {
        for &o in &offsets {
            let a = ((p * pb) as i64 + dst.offset as i64 + o) as usize;
            match dst.dtype {
                DType::I8 => buf[a] = v[i].clamp(-128, 127) as i8 as u8,
                _ => buf[a..a + 4].copy_from_slice(&v[i].to_le_bytes()),
            }
            i += 1;
        }
    }
}

/// Whether a `tensor_scalar` runs in integer mode: integer source, result and
/// (if a column) scalar.
fn is_integer_mode(dst: &Tile, src: &Tile, scalar: &Scalar) -> bool {
    let scalar_int = match scalar {
        Scalar::Imm(_) => true,
        Scalar::Col(c) => c.dtype.is_int(),
    };
    dst.dtype.is_int() && src.dtype.is_int() && scalar_int
}

/// A scalar operand as integers: a column exactly, an immediate rounded to the
/// nearest (even) integer, saturating.
fn scalar_values_i32(mem: &CoreMemory, s: &Scalar, part_start: u16, count: u16) -> Vec<i32> {
    match s {
        Scalar::Imm(v) => vec![round_f64(DType::I32, v.0 as f64) as i32; count as usize],
        Scalar::Col(c) => {
            let (buf, pb) = mem.space(c.space);
            (part_start as usize..(part_start + count) as usize)
                .map(|p| {
                    let a = p * pb + c.offset as usize;
                    match c.dtype {
                        DType::I8 => buf[a] as i8 as i32,
                        _ => i32::from_le_bytes([buf[a], buf[a + 1], buf[a + 2], buf[a + 3]]),
                    }
                })
                .collect()
        }
    }
}

/// `fill_predicated`: the scalar where the condition holds; the rest of `dst` kept.
fn fill_predicated(mem: &mut CoreMemory, dst: &Tile, cond: &Tile, value: &Scalar, negate: bool) {
    let keep = condition(mem, cond, negate);
    let v: Vec<f64> = match value {
        Scalar::Col(c) if c.dtype.is_int() => {
            scalar_values_i32(mem, value, dst.part_start, dst.part_count).iter().map(|&x| x as f64).collect()
        }
        _ => scalar_values(mem, value, dst.part_start, dst.part_count).iter().map(|&x| x as f64).collect(),
    };
    let e = dst.free_elems() as usize;
    write_where(mem, dst, &keep, |k| v[k / e]);
}

/// `copy_predicated`: `src` copied (as `copy` converts) where the condition
/// holds; the rest of `dst` kept.
fn copy_predicated(mem: &mut CoreMemory, dst: &Tile, src: &Tile, cond: &Tile, negate: bool) {
    let keep = condition(mem, cond, negate);
    let v: Vec<f64> = if src.dtype.is_int() {
        read_tile_i32(mem, src).iter().map(|&x| x as f64).collect()
    } else {
        read_tile(mem, src).iter().map(|&x| x as f64).collect()
    };
    write_where(mem, dst, &keep, |k| v[k]);
}

/// Where a predicated op writes: a condition tile's nonzero elements (NaN
/// included), or its zero ones with `negate`.
fn condition(mem: &CoreMemory, cond: &Tile, negate: bool) -> Vec<bool> {
    read_tile(mem, cond).iter().map(|&c| (c != 0.0) != negate).collect()
}

/// Element k of `dst` becomes `value(k)` (an exact value) rounded once into its
/// dtype where `keep[k]`, and keeps its value elsewhere (integers exactly).
fn write_where(mem: &mut CoreMemory, dst: &Tile, keep: &[bool], value: impl Fn(usize) -> f64) {
    if dst.dtype.is_int() {
        let mut out = read_tile_i32(mem, dst);
        for (k, o) in out.iter_mut().enumerate().filter(|(k, _)| keep[*k]) {
            *o = round_f64(dst.dtype, value(k)) as i32;
        }
        write_tile_int(mem, dst, &out);
    } else {
        let mut out = read_tile(mem, dst);
        for (k, o) in out.iter_mut().enumerate().filter(|(k, _)| keep[*k]) {
            *o = round_f64(dst.dtype, value(k)) as f32;
        }
        write_tile(mem, dst, &out);
    }
}

/// `iota`: element (p, i) is `base + partition_step p + free_step i`.
fn iota(mem: &mut CoreMemory, dst: &Tile, base: i32, partition_step: i32, free_step: i32) {
    let e = dst.free_elems() as i64;
    let vals: Vec<i64> = (0..dst.part_count as i64)
        .flat_map(|p| (0..e).map(move |i| base as i64 + partition_step as i64 * p + free_step as i64 * i))
        .collect();
    if dst.dtype.is_int() {
        let v: Vec<i32> = vals.iter().map(|&x| x.clamp(i32::MIN as i64, i32::MAX as i64) as i32).collect();
        if dst.dtype == DType::I8 {
            let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            write_tile(mem, dst, &f);
        } else {
            write_tile_int(mem, dst, &v);
        }
    } else {
        let f: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
        write_tile(mem, dst, &f);
    }
}

/// The table row each partition of a `dma_gather` reads, or the first partition
/// (relative to `dst`'s first) whose index is outside `[0, rows)`, with the index.
pub fn gather_rows(mem: &CoreMemory, dst: &Tile, idx: &Column, table: &HbmRows) -> Result<Vec<u64>, (u16, i64)> {
    let (buf, pb) = mem.space(idx.space);
    (0..dst.part_count)
        .map(|i| {
            let a = (dst.part_start + i) as usize * pb + idx.offset as usize;
            let row = i32::from_le_bytes([buf[a], buf[a + 1], buf[a + 2], buf[a + 3]]) as i64;
            if (0..table.rows as i64).contains(&row) {
                Ok(row as u64)
            } else {
                Err((i, row))
            }
        })
        .collect()
}

/// Executes a `dma_gather` whose rows [`gather_rows`] found in range.
pub fn execute_gather(dst: &Tile, table: &HbmRows, rows: &[u64], mem: &mut CoreMemory, hbm: &Hbm) {
    let row_bytes = (dst.free_elems() * dst.dtype.size_bytes() as u64) as usize;
    let (buf, pb) = mem.space_mut(dst.space);
    for (i, &row) in rows.iter().enumerate() {
        let at = (dst.part_start as usize + i) * pb + dst.offset as usize;
        hbm.read(table.addr + row * table.stride, &mut buf[at..at + row_bytes]);
    }
}

/// Executes a DMA transfer: the source runs' bytes, in order, into the
/// destination runs. Between HBM and SRAM the bytes move directly; within one
/// memory they go through a staging buffer, since the two sides may overlap.
pub fn execute_dma(x: &DmaTransfer, mem: &mut CoreMemory, hbm: &mut Hbm) {
    let e = x.elem_bytes as u64;
    let (src, dst) = (dma_runs(&x.src, e), dma_runs(&x.dst, e));
    match (x.src.space, x.dst.space) {
        (DmaSpace::Hbm, DmaSpace::Sram) => {
            for_pieces(&src, &dst, |from, to, len| hbm.read(from, &mut mem.sram[to as usize..(to + len) as usize]))
        }
        (DmaSpace::Sram, DmaSpace::Hbm) => {
            for_pieces(&src, &dst, |from, to, len| hbm.write(to, &mem.sram[from as usize..(from + len) as usize]))
        }
        _ => staged(x.src.space, &src, &dst, mem, hbm),
    }
}

/// Calls `f(source address, destination address, length)` for the pieces
/// the two run lists cut the transfer into (both cover the same bytes).
fn for_pieces(src: &[(u64, u64)], dst: &[(u64, u64)], mut f: impl FnMut(u64, u64, u64)) {
    let (mut i, mut j, mut done_src, mut done_dst) = (0, 0, 0, 0);
    while i < src.len() && j < dst.len() {
        let len = (src[i].1 - done_src).min(dst[j].1 - done_dst);
        f(src[i].0 + done_src, dst[j].0 + done_dst, len);
        done_src += len;
        done_dst += len;
        if done_src == src[i].1 {
            (i, done_src) = (i + 1, 0);
        }
        if done_dst == dst[j].1 {
            (j, done_dst) = (j + 1, 0);
        }
    }
}

/// Runs `f` with a kept staging buffer, emptied (a fresh one per transfer
/// would be fresh pages).
fn with_staging<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static STAGING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    STAGING.with(|s| {
        let mut data = s.borrow_mut();
        data.clear();
        let out = f(&mut data);
        if data.capacity() > 1 << 26 {
            *data = Vec::new();
        }
        out
    })
}

/// Appends the bytes of `runs` of a flat memory to `data`.
fn gather_bytes(data: &mut Vec<u8>, mem: &[u8], runs: &[(u64, u64)]) {
    for &(addr, len) in runs {
        data.extend_from_slice(&mem[addr as usize..(addr + len) as usize]);
    }
}

/// Writes `data` over `runs` of a flat memory, in order.
fn scatter_bytes(data: &[u8], mem: &mut [u8], runs: &[(u64, u64)]) {
    let mut at = 0usize;
    for &(addr, len) in runs {
        mem[addr as usize..(addr + len) as usize].copy_from_slice(&data[at..at + len as usize]);
        at += len as usize;
    }
}

/// A transfer within one memory: every byte is read before any is written.
fn staged(space: DmaSpace, src: &[(u64, u64)], dst: &[(u64, u64)], mem: &mut CoreMemory, hbm: &mut Hbm) {
    with_staging(|data| match space {
        DmaSpace::Hbm => {
            for &(addr, len) in src {
                let start = data.len();
                data.resize(start + len as usize, 0);
                hbm.read(addr, &mut data[start..]);
            }
            let mut at = 0usize;
            for &(addr, len) in dst {
                hbm.write(addr, &data[at..at + len as usize]);
                at += len as usize;
            }
        }
        DmaSpace::Sram => {
            gather_bytes(data, &mem.sram, src);
            scatter_bytes(data, &mut mem.sram, dst);
        }
    })
}

/// A core-to-core transfer: `x`'s source in the SRAM of core `from`, written
/// to the same range of the SRAM of every core in `x.dst.cores` (`mems` is
/// indexed by core). Every byte is read before any is written.
pub fn execute_fabric(x: &DmaTransfer, from: usize, mems: &mut [&mut CoreMemory]) {
    let e = x.elem_bytes as u64;
    let (src, dst) = (dma_runs(&x.src, e), dma_runs(&x.dst, e));
    with_staging(|data| {
        gather_bytes(data, &mems[from].sram, &src);
        for c in x.dst.core_list() {
            scatter_bytes(data, &mut mems[c].sram, &dst);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_accumulates_in_increasing_k_order() {
        // With k order 0,1,2: (1e8 + 1) - 1e8 + 1 = 0 + 1 = 1 in f32 (1e8 + 1 rounds to 1e8).
        let a = [1.0f32, 1.0, 1.0];
        let b = [1e8f32, -1e8, 1.0];
        let mut acc = [1.0f32];
        matmul_f32(&a, &b, &mut acc, 3, 1, 1);
        assert_eq!(acc[0], 1.0 + 1e8 - 1e8 + 1.0);
        let mut naive = 1.0f32;
        for (x, y) in a.iter().zip(&b) {
            naive += x * y;
        }
        assert_eq!(acc[0].to_bits(), naive.to_bits());
    }

    /// Every byte of both 8-bit float dtypes reads the same through the
    /// contiguous path (a table) as through the strided one (`load_f32`),
    /// NaN payloads included.
    #[test]
    fn fp8_tiles_read_alike_contiguous_and_strided() {
        use jpu_isa::operand::{Dim, Space};
        let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
        let mut mem = CoreMemory::new(&t);
        for (i, b) in mem.sram[..256].iter_mut().enumerate() {
            *b = i as u8;
        }
        for dtype in [DType::F8E4M3, DType::F8E5M2] {
            let plain = Tile::contiguous(Space::Sram, dtype, 0, 1, 0, 256);
            // Column-major over a 128 x 2 view: element (a, b) is byte a + 128 b.
            let dims = [Dim { count: 128, stride: 1 }, Dim { count: 2, stride: 128 }];
            let strided = Tile::with_dims(Space::Sram, dtype, 0, 1, 0, &dims);
            assert!(!strided.is_contiguous());
            let (plain, strided) = (read_tile(&mem, &plain), read_tile(&mem, &strided));
            for (i, v) in strided.iter().enumerate() {
                assert_eq!(v.to_bits(), plain[i / 2 + 128 * (i % 2)].to_bits(), "{dtype} element {i}");
            }
        }
    }
}
