//! The JPU-1 instruction set, defined once as data.
//!
//! [`define_instructions!`] takes one table (opcode, mnemonic, engine class, doc
//! text and typed fields) and derives from it the typed [`Op`] enum, the
//! [`Opcode`] metadata (used by docs and tests), and the encoder, decoder, printer
//! and parser of every instruction. Operand types carry their own forms
//! ([`crate::operand::Operand`]); constraints live in [`crate::check`] and costs in
//! [`crate::cost`], each one `match` over [`Op`].
//!
//! Binary form: every instruction is [`INST_SIZE`] bytes: an 8-byte header
//! (opcode, wait semaphore, signal semaphore, signal core, wait value) followed by
//! the operands in table order, then zero padding. The signal core byte is 0 for
//! the instruction's own core and `c + 1` for a remote signal of core `c`.

use crate::bytes::{DecodeError, Reader, WriteLe};
use crate::jasm::lexer::Tok;
use crate::jasm::parser::{AsmError, Parser};
use crate::operand::{
    ActFunc, AluOp, CmpOp, Column, DecodeCtx, DmaTransfer, EncodeCtx, HbmRows, Imm, Operand, PrintCtx, ReduceOp,
    Scalar, Tile,
};

/// Bytes per encoded instruction.
pub const INST_SIZE: usize = 128;
/// Bytes of the instruction header.
pub const HEADER_SIZE: usize = 8;
/// Semaphore field value meaning "none".
pub const NO_SEM: u8 = 0xff;

/// Which kind of engine executes an opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineClass {
    /// The tensor engine.
    Pe,
    /// The vector engine.
    Ve,
    /// The activation engine.
    Act,
    /// Any DMA queue.
    Dma,
    /// Every engine (sync and control).
    Any,
}

impl EngineClass {
    /// Text name for docs and diagnostics.
    pub fn name(self) -> &'static str {
        match self {
            EngineClass::Pe => "PE",
            EngineClass::Ve => "VE",
            EngineClass::Act => "ACT",
            EngineClass::Dma => "DMA",
            EngineClass::Any => "any",
        }
    }
}

/// One engine of a core: 0 = PE, 1 = VE, 2 = ACT, 3.. = DMA queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Engine(pub u8);

impl Engine {
    /// The tensor engine.
    pub const PE: Engine = Engine(0);
    /// The vector engine.
    pub const VE: Engine = Engine(1);
    /// The activation engine.
    pub const ACT: Engine = Engine(2);

    /// DMA queue `q`.
    pub fn dma(q: u8) -> Engine {
        Engine(3 + q)
    }

    /// The class of this engine.
    pub fn class(self) -> EngineClass {
        match self.0 {
            0 => EngineClass::Pe,
            1 => EngineClass::Ve,
            2 => EngineClass::Act,
            _ => EngineClass::Dma,
        }
    }

    /// Text name: `pe`, `ve`, `act`, `dma0`, `dma1`, ...
    pub fn name(self) -> String {
        match self.0 {
            0 => "pe".into(),
            1 => "ve".into(),
            2 => "act".into(),
            q => format!("dma{}", q - 3),
        }
    }

    /// Inverse of [`Engine::name`] (without checking the target's queue count).
    pub fn from_name(name: &str) -> Option<Engine> {
        match name {
            "pe" => Some(Engine::PE),
            "ve" => Some(Engine::VE),
            "act" => Some(Engine::ACT),
            _ => {
                let q: u8 = name.strip_prefix("dma")?.parse().ok()?;
                if name != format!("dma{q}") || q > 200 {
                    return None;
                }
                Some(Engine::dma(q))
            }
        }
    }

    /// True when `opcode` may run on this engine.
    pub fn accepts(self, opcode: Opcode) -> bool {
        let class = opcode.engine_class();
        class == EngineClass::Any || class == self.class()
    }
}

/// A semaphore wait: the instruction starts once semaphore `sem` has reached `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wait {
    /// Semaphore index.
    pub sem: u8,
    /// Value it must have reached.
    pub value: u32,
}

/// A completion signal: semaphore `sem` is incremented by one when the
/// instruction completes; on another core (`core`), the increment is visible
/// there the fabric's signal latency later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal {
    /// Semaphore index.
    pub sem: u8,
    /// The core whose semaphore it is; `None`: the instruction's own core.
    pub core: Option<u8>,
}

impl Signal {
    /// A signal of the instruction's own core.
    pub fn local(sem: u8) -> Signal {
        Signal { sem, core: None }
    }

    /// A signal of semaphore `sem` of core `core`.
    pub fn remote(core: u8, sem: u8) -> Signal {
        Signal { sem, core: Some(core) }
    }

    /// The core incremented when the signalling instruction runs on `own`.
    pub fn target_core(self, own: usize) -> usize {
        self.core.map_or(own, usize::from)
    }
}

/// One instruction: an operation plus its synchronisation and debug link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Inst {
    /// What it does.
    pub op: Op,
    /// Optional semaphore wait before it starts.
    pub wait: Option<Wait>,
    /// Optional semaphore incremented (by one) when it completes.
    pub signal: Option<Signal>,
    /// Index into the program's debug-op strings (the IR op that produced it).
    pub debug: Option<u32>,
}

impl Inst {
    /// An instruction with no synchronisation or debug info.
    pub fn new(op: Op) -> Inst {
        Inst { op, wait: None, signal: None, debug: None }
    }

    /// Appends the [`INST_SIZE`]-byte encoding.
    pub fn encode(&self, out: &mut Vec<u8>, ctx: &mut EncodeCtx) {
        let start = out.len();
        out.put_u8(self.op.opcode() as u8);
        out.put_u8(self.wait.map_or(NO_SEM, |w| w.sem));
        out.put_u8(self.signal.map_or(NO_SEM, |s| s.sem));
        out.put_u8(self.signal.and_then(|s| s.core).map_or(0, |c| c + 1));
        out.put_u32(self.wait.map_or(0, |w| w.value));
        self.op.encode_operands(out, ctx);
        let used = out.len() - start;
        out.put_zeros(INST_SIZE - used);
    }

    /// Decodes one instruction from exactly [`INST_SIZE`] bytes.
    pub fn decode(r: &mut Reader<'_>, ctx: &mut DecodeCtx<'_>) -> Result<Inst, DecodeError> {
        let start = r.offset();
        let code = r.u8("opcode")?;
        let opcode = Opcode::from_code(code)
            .ok_or_else(|| DecodeError::new(start, "opcode", format!("unknown opcode 0x{code:02x}")))?;
        let wait_sem = r.u8("wait_sem")?;
        let signal_sem = r.u8("signal_sem")?;
        let at = r.offset();
        let signal_core = r.u8("signal_core")?;
        let signal = match (signal_sem, signal_core) {
            (NO_SEM, 0) => None,
            (NO_SEM, _) => return Err(DecodeError::new(at, "signal_core", "must be zero when there is no signal")),
            (sem, 0) => Some(Signal::local(sem)),
            (sem, c) => Some(Signal::remote(c - 1, sem)),
        };
        let at = r.offset();
        let value = r.u32("wait_value")?;
        let wait = if wait_sem == NO_SEM {
            if value != 0 {
                return Err(DecodeError::new(at, "wait_value", "must be zero when there is no wait"));
            }
            None
        } else {
            Some(Wait { sem: wait_sem, value })
        };
        let op = Op::decode_operands(opcode, r, ctx).map_err(|e| e.within(opcode.mnemonic()))?;
        let used = r.offset() - start;
        r.zeros(INST_SIZE - used, "padding")?;
        Ok(Inst { op, wait, signal, debug: None })
    }
}

/// Name, kind and doc of one instruction field.
#[derive(Debug, Clone, Copy)]
pub struct FieldInfo {
    /// Field name as written in `.jasm`.
    pub name: &'static str,
    /// Operand kind.
    pub kind: &'static str,
    /// Encoded bytes.
    pub size: usize,
    /// What the field means.
    pub doc: &'static str,
}

macro_rules! define_instructions {
    ($(
        $(#[doc = $doc:literal])*
        $code:literal $variant:ident $mnemonic:literal on $engine:ident {
            $( $(#[doc = $fdoc:literal])* $field:ident : $fty:ty ),* $(,)?
        }
    )+) => {
        /// An operation with its operands.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Op {
            $( $(#[doc = $doc])* $variant { $( $(#[doc = $fdoc])* $field: $fty ),* } ),+
        }

        /// The opcode of each operation (its first encoded byte).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Opcode { $( $(#[doc = $doc])* $variant = $code ),+ }

        impl Opcode {
            /// Every opcode, in table order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$variant),+];

            /// Inverse of `opcode as u8`.
            pub fn from_code(code: u8) -> Option<Opcode> {
                match code { $($code => Some(Opcode::$variant),)+ _ => None }
            }

            /// Assembly mnemonic.
            pub fn mnemonic(self) -> &'static str {
                match self { $(Opcode::$variant => $mnemonic),+ }
            }

            /// Inverse of [`Opcode::mnemonic`].
            pub fn from_mnemonic(m: &str) -> Option<Opcode> {
                match m { $($mnemonic => Some(Opcode::$variant),)+ _ => None }
            }

            /// The engine class that executes it.
            pub fn engine_class(self) -> EngineClass {
                match self { $(Opcode::$variant => EngineClass::$engine),+ }
            }

            /// Documentation (semantics, in Markdown).
            pub fn doc(self) -> &'static str {
                match self { $(Opcode::$variant => concat!($($doc, "\n"),*)),+ }
            }

            /// Operand fields, in encoding and text order.
            pub fn fields(self) -> &'static [FieldInfo] {
                match self {
                    $(Opcode::$variant => &[$(FieldInfo {
                        name: stringify!($field),
                        kind: <$fty as Operand>::KIND,
                        size: <$fty as Operand>::SIZE,
                        doc: concat!($($fdoc),*),
                    }),*]),+
                }
            }
        }

        impl Op {
            /// The opcode.
            pub fn opcode(&self) -> Opcode {
                match self { $(Op::$variant { .. } => Opcode::$variant),+ }
            }

            fn encode_operands(&self, out: &mut Vec<u8>, ctx: &mut EncodeCtx) {
                let _ = (&out, &ctx);
                match self {
                    $(Op::$variant { $($field),* } => { $( Operand::encode($field, out, ctx); )* }),+
                }
            }

            fn decode_operands(opcode: Opcode, r: &mut Reader<'_>, ctx: &mut DecodeCtx<'_>) -> Result<Op, DecodeError> {
                let _ = (&r, &ctx);
                Ok(match opcode {
                    $(Opcode::$variant => Op::$variant {
                        $( $field: <$fty as Operand>::decode(r, ctx).map_err(|e| e.within(stringify!($field)))? ),*
                    }),+
                })
            }

            /// Appends `name=value, ...` for every operand.
            pub fn print_operands(&self, out: &mut String, ctx: &PrintCtx<'_>) {
                let _ = (&out, &ctx);
                match self {
                    $(Op::$variant { $($field),* } => {
                        #[allow(unused_mut)]
                        let mut sep = "";
                        $(
                            out.push_str(sep);
                            out.push_str(concat!(stringify!($field), "="));
                            Operand::print($field, out, ctx);
                            sep = ", ";
                        )*
                        let _ = sep;
                    }),+
                }
            }

            /// Parses `name=value, ...` for every operand of `opcode`, in table order,
            /// recording each operand's span in the parser (for constraint diagnostics).
            pub fn parse_operands(opcode: Opcode, p: &mut Parser<'_>) -> Result<Op, AsmError> {
                let _ = &p;
                Ok(match opcode {
                    $(Opcode::$variant => {
                        #[allow(unused_mut)]
                        let mut first = true;
                        $(
                            let $field = {
                                if !first {
                                    p.expect(&Tok::Comma, concat!("`,` before `", stringify!($field), "=`"))?;
                                }
                                first = false;
                                let start = p.field_key(stringify!($field))?;
                                let value = <$fty as Operand>::parse(p)?;
                                p.record_field(stringify!($field), start);
                                value
                            };
                        )*
                        let _ = first;
                        Op::$variant { $($field),* }
                    }),+
                })
            }
        }

        const _: () = {
            // Every instruction's operands fit the fixed width.
            $( assert!(HEADER_SIZE $(+ <$fty as Operand>::SIZE)* <= INST_SIZE); )+
        };
    };
}

define_instructions! {
    /// `psum[M, N] (=|+=) stationary[K, M]^T . moving[K, N]` on the systolic array.
    ///
    /// K is the partition (contraction) dim of both SRAM operands and at most `pe.rows`;
    /// M is the stationary free size (at most `pe.cols`), N the moving free size (at most
    /// `pe.max_moving_free`). With `transposed`, the stationary operand is stored as
    /// [M partitions, K free] and the weight-load path transposes it at no cost.
    /// Operands share one dtype (bf16, f16, f8e4m3, f8e5m2, i8 or f32); products of 8- and
    /// 16-bit operands are exact in f32 (f32 products are rounded to f32), and PSUM
    /// accumulates them in increasing k order, rounding to f32 after each add (exact
    /// wrapping i32 arithmetic for i8). `dst` is f32 (i32 for i8),
    /// M partitions by N contiguous elements inside one PSUM bank.
    ///
    /// Timing: `max(N, 64)` cycles with 16-bit operands, `max(ceil(N / 2), 32)` with 8-bit,
    /// `4 x max(N, 64)` with f32 (jpu1 numbers; `[timing.pe]` of the target).
    0x01 Matmul "matmul" on Pe {
        /// PSUM accumulator tile [M, N].
        dst: Tile,
        /// Stationary (weights) operand [K, M], or [M, K] when `transposed`.
        stationary: Tile,
        /// Moving operand [K, N].
        moving: Tile,
        /// Add into `dst` instead of overwriting it.
        accumulate: bool,
        /// The stationary operand is stored [M partitions, K free].
        transposed: bool,
    }

    /// `psum[F, P] = src[P, F]^T`: an identity matmul (exact for every dtype).
    ///
    /// P is at most `pe.rows`, F at most `pe.cols`; `dst` is f32 (i32 for i8 sources),
    /// F partitions by P contiguous elements inside one PSUM bank.
    ///
    /// Timing: `max(P, 64)` cycles (`timing.pe.transpose_min_cycles`).
    0x02 Transpose "transpose" on Pe {
        /// PSUM tile [F, P].
        dst: Tile,
        /// SRAM tile [P, F].
        src: Tile,
    }

    /// `dst = a <op> b`, elementwise in f32, rounded once into `dst`'s dtype. When all
    /// three tiles are integer (i8, i32) the op runs in integer mode: exact, wrapping to
    /// 32 bits, then saturated into an i8 `dst` (division truncates, `x / 0` is 0).
    /// Comparisons (`is_lt` ..) give 1 or 0.
    ///
    /// All three tiles have the same partition count and free size; element i of each
    /// is the i-th element of its access pattern.
    ///
    /// Timing: `64 + E` cycles, E the elements per partition of the largest operand.
    0x10 TensorTensor "tensor_tensor" on Ve {
        /// Operation.
        op: AluOp,
        /// Result.
        dst: Tile,
        /// Left operand.
        a: Tile,
        /// Right operand.
        b: Tile,
    }

    /// `dst = src <op> scalar` (or `scalar <op> src` with `reverse`), in f32; in
    /// integer mode (as `tensor_tensor`) when `src`, `dst` and a column scalar are
    /// integer, an immediate then rounding to the nearest integer.
    ///
    /// Timing: `64 + E` cycles.
    0x11 TensorScalar "tensor_scalar" on Ve {
        /// Operation.
        op: AluOp,
        /// Swap the operands (`scalar - src`, `scalar / src`).
        reverse: bool,
        /// Result.
        dst: Tile,
        /// Tensor operand.
        src: Tile,
        /// Immediate or per-partition column.
        scalar: Scalar,
    }

    /// `dst[p, 0] = reduce(src[p, :])` over the whole free pattern, in f32: a fold in
    /// access-pattern order starting from the first element. Integer `src` and `dst`
    /// fold exactly in integer mode (as `tensor_tensor`: the sum wraps to 32 bits,
    /// then saturates into an i8 `dst`).
    ///
    /// Timing: `64 + E` cycles, E the source elements per partition.
    0x12 Reduce "reduce" on Ve {
        /// Reduction.
        op: ReduceOp,
        /// Result tile with one element per partition.
        dst: Tile,
        /// Source.
        src: Tile,
    }

    /// `dst = src`, converted into `dst`'s dtype (a cast when dtypes differ): between
    /// integers exactly (into i8 saturating), from an integer to a float with one
    /// rounding, otherwise through f32.
    ///
    /// Timing: `64 + E` cycles.
    0x13 Copy "copy" on Ve {
        /// Result.
        dst: Tile,
        /// Source.
        src: Tile,
    }

    /// `dst = value` (rounded into `dst`'s dtype).
    ///
    /// Timing: `64 + E` cycles.
    0x14 Memset "memset" on Ve {
        /// Result.
        dst: Tile,
        /// Value.
        value: Imm,
    }

    /// `dst[p, i] = base + partition_step * p + free_step * i` (exact integer
    /// arithmetic, then converted into `dst`'s dtype); p and i are relative to the
    /// tile (i is the element's position in the access pattern).
    ///
    /// Timing: `64 + E` cycles.
    0x15 Iota "iota" on Ve {
        /// Result.
        dst: Tile,
        /// Value at p = 0, i = 0.
        base: i32,
        /// Added per partition.
        partition_step: i32,
        /// Added per free element.
        free_step: i32,
    }

    /// Affine select: `dst[p, i] = src[p, i]` where
    /// `partition_step * p + free_step * i + base <cmp> 0`, else `fill`. The causal mask.
    /// Integer `src` and `dst` keep values exactly (the fill rounded to an integer).
    ///
    /// Timing: `64 + E` cycles.
    0x16 Select "select" on Ve {
        /// Comparison against zero.
        cmp: CmpOp,
        /// Result.
        dst: Tile,
        /// Source.
        src: Tile,
        /// Coefficient of the partition index.
        partition_step: i32,
        /// Coefficient of the free index.
        free_step: i32,
        /// Constant term.
        base: i32,
        /// Value written where the condition is false.
        fill: Imm,
    }

    /// Predicated copy: `dst[p, i] = src[p, i]` where `cond[p, i] != 0` (with `negate`:
    /// where it is 0), else `dst[p, i]` keeps its value. A NaN condition counts as
    /// nonzero. The value is converted into `dst`'s dtype as `copy` converts it. With a
    /// copy or memset before it, this is the tensor-condition select.
    ///
    /// Timing: `64 + E` cycles, E the elements per partition of the largest operand.
    0x17 CopyPredicated "copy_predicated" on Ve {
        /// Result (read where the condition fails).
        dst: Tile,
        /// Values copied where the condition holds.
        src: Tile,
        /// Condition (any dtype).
        cond: Tile,
        /// Copy where the condition is 0 instead.
        negate: bool,
    }

    /// Predicated fill: `dst[p, i] = value` (an immediate, or the column's value for
    /// partition p) where `cond[p, i] != 0` (with `negate`: where it is 0), else
    /// `dst[p, i]` keeps its value. The value is rounded into `dst`'s dtype (exactly
    /// from an integer column into an integer `dst`).
    ///
    /// Timing: `64 + E` cycles.
    0x18 FillPredicated "fill_predicated" on Ve {
        /// Result (read where the condition fails).
        dst: Tile,
        /// Condition (any dtype).
        cond: Tile,
        /// Immediate or per-partition column.
        value: Scalar,
        /// Fill where the condition is 0 instead.
        negate: bool,
    }

    /// `dst = func(src * scale + bias)` in f32, rounded once into `dst`'s dtype; with
    /// `accum`, also the f32 row sum of the results (before rounding), per partition.
    ///
    /// Timing: `128 + E` cycles, E the elements per partition.
    0x20 Activate "activate" on Act {
        /// Function.
        func: ActFunc,
        /// Result.
        dst: Tile,
        /// Source.
        src: Tile,
        /// Multiplier: immediate or per-partition column.
        scale: Scalar,
        /// Addend: immediate or per-partition column.
        bias: Scalar,
        /// Optional f32 column receiving each partition's sum of results.
        accum: Option<Column>,
    }

    /// Moves bytes between two access patterns (HBM or SRAM on each side, no dtype
    /// change). The binary holds a descriptor-table index; text shows the transfer.
    ///
    /// Timing: data may start `timing.dma.latency_cycles` (1,000) after issue; data phases of one
    /// queue run in order; queues moving data at once share the core's HBM bandwidth evenly;
    /// each run contiguous on both sides is charged at least `timing.dma.min_run_bytes` (64).
    0x30 Dma "dma" on Dma {
        /// `src [pattern] -> dst [pattern] elem BYTES`; strides in bytes.
        xfer: DmaTransfer,
    }

    /// Indirect DMA: partition p of `dst` receives row `idx[p]` of `table` (the row's
    /// bytes are `dst`'s bytes per partition, contiguous on both sides). An index
    /// outside `[0, rows)` is a fault naming the instruction, the partition and the
    /// index. Embedding lookups (and paged KV caches) reach the chip this way.
    ///
    /// Timing: as a `dma` descriptor whose runs are the rows: data may start
    /// `timing.dma.latency_cycles` after issue, and each row is charged at least
    /// `timing.dma.min_run_bytes`.
    0x31 DmaGather "dma_gather" on Dma {
        /// SRAM destination, one row per partition (contiguous).
        dst: Tile,
        /// SRAM column of i32 row indices, one per partition of `dst`.
        idx: Column,
        /// The HBM table's rows.
        table: HbmRows,
    }

    /// Does nothing; carries a wait and/or a signal (zero cycles).
    ///
    /// Timing: 0 cycles beyond its wait.
    0x40 Nop "nop" on Any {}

    /// Ends the engine's stream; must be its last instruction.
    ///
    /// Timing: 0 cycles beyond its wait.
    0x41 Halt "halt" on Any {}
}

impl Op {
    /// Whether the op runs on a DMA queue (timed by bandwidth, not a fixed cost).
    pub fn is_dma(&self) -> bool {
        matches!(self, Op::Dma { .. } | Op::DmaGather { .. })
    }

    /// The destination tile, for instructions that write one.
    pub fn dst_tile(&self) -> Option<&Tile> {
        match self {
            Op::Matmul { dst, .. }
            | Op::Transpose { dst, .. }
            | Op::TensorTensor { dst, .. }
            | Op::TensorScalar { dst, .. }
            | Op::Reduce { dst, .. }
            | Op::Copy { dst, .. }
            | Op::Memset { dst, .. }
            | Op::Iota { dst, .. }
            | Op::Select { dst, .. }
            | Op::CopyPredicated { dst, .. }
            | Op::FillPredicated { dst, .. }
            | Op::DmaGather { dst, .. }
            | Op::Activate { dst, .. } => Some(dst),
            Op::Dma { .. } | Op::Nop {} | Op::Halt {} => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for &op in Opcode::ALL {
            assert!(seen.insert(op as u8), "duplicate code for {op:?}");
            assert_eq!(Opcode::from_code(op as u8), Some(op));
            assert_eq!(Opcode::from_mnemonic(op.mnemonic()), Some(op));
            assert!(!op.doc().trim().is_empty(), "{op:?} has no doc");
            for f in op.fields() {
                assert!(!f.doc.is_empty(), "{op:?}.{} has no doc", f.name);
            }
            let size: usize = HEADER_SIZE + op.fields().iter().map(|f| f.size).sum::<usize>();
            assert!(size <= INST_SIZE);
        }
        assert_eq!(Opcode::from_code(0), None);
    }

    #[test]
    fn engine_names_round_trip() {
        for e in [Engine::PE, Engine::VE, Engine::ACT, Engine::dma(0), Engine::dma(3), Engine::dma(15)] {
            assert_eq!(Engine::from_name(&e.name()), Some(e));
        }
        assert_eq!(Engine::from_name("dma01"), None);
        assert_eq!(Engine::from_name("gpu"), None);
    }
}
