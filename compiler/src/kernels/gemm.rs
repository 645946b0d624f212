//! The GEMM kernel: `C[batch.., M, N] = A[batch.., M, K] . B[batch.., K, N]`.
//!
//! Loop nest (per batch index, `loop_order = n_outer`; `m_outer` swaps the two
//! loops): for each N-panel of `tile_n` columns, load the B
//! panel (every k-tile, resident for the panel); for each M-tile of `tile_m` rows,
//! load the A rows (every k; used as the PE's transposed stationary operand, so
//! row-major A needs no transpose), accumulate the k-tiles into one PSUM bank,
//! evacuate it through the VE (converting to the matmul's dtype, then to a fused
//! cast's), and store the rows. A tiles, B panels, PSUM banks and output staging
//! rotate through their copies. The tile program is software-pipelined: the loads
//! of the next work item come before the current item's compute, so prefetches
//! overlap compute on in-order engines. When every M-tile fits in the A copies,
//! A stays resident and is loaded once per batch; likewise B, in M-outer order,
//! when every N-panel fits in the B copies.

use std::fmt;

use jpu_isa::operand::{ActFunc, Space};
use jpu_isa::program::Role;
use jpu_isa::{DType, Target};

use super::chain::{chain, Broadcast, Chain, EpilogueInput, EpilogueStep};
use super::row_epilogue::{self, RowEpilogue};
use super::{gemv, unsupported, Ctx, Field, Kernel, Work};
use crate::error::CompileError;
use crate::ir::{Op, Operand, Span, ValueId};
use crate::tiles::{BufSlice, Buffer, BufferId, HbmBox, HbmTensor, TileOp, TileProgram};

/// Copies of the raw (untransposed) B chunk staging when B is stored transposed:
/// loads run `BT_RAW_COPIES - 1` chunks ahead of the transposes, enough to cover
/// the DMA latency with 128-cycle transposes.
const BT_RAW_COPIES: u64 = 16;
/// PSUM banks reserved for transposing B when it is stored transposed.
const BT_PSUM_BANKS: u32 = 2;
/// PSUM banks the short form reserves: one for C^T's blocks (a tile's, two
/// tiles at a time), one for A^T's slices.
const SHORT_PSUM_BANKS: u32 = 2;

/// Tile sizes and buffering of a GEMM (the `--emit kernels` form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmSchedule {
    /// Rows of A (and C) per tile: PSUM partitions (at most `pe.cols`).
    pub tile_m: u32,
    /// Columns of B (and C) per tile (at most `pe.max_moving_free` and one bank).
    pub tile_n: u32,
    /// Contraction per matmul (at most `pe.rows`).
    pub tile_k: u32,
    /// Copies of the A tile.
    pub a_buffers: u32,
    /// Copies of the B panel.
    pub b_buffers: u32,
    /// Copies of the output staging tile.
    pub out_buffers: u32,
    /// PSUM banks used round-robin.
    pub psum_banks: u32,
    /// Which tile loop is outer (per batch index).
    pub loop_order: LoopOrder,
    /// DMA queue for A's loads (`None`: the backend's least-loaded queue).
    pub a_queue: Option<u8>,
    /// DMA queue for B's loads (`None`: the backend's least-loaded queue).
    pub b_queue: Option<u8>,
    /// How the matmuls are laid out (`None`: the fastest form that applies, by
    /// the target's rates).
    pub form: Option<Form>,
    /// Whether, spread over one row of blocks on several cores, each core loads
    /// a run of A and multicasts it to the others (`None`: when that saves time).
    pub share_a: Option<bool>,
}

/// A GEMM's form: which operand is stationary on the PE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A's tiles stationary, B's panels moving.
    Plain,
    /// `C^T = B^T . A^T` per block of `pe.cols` columns (a few rows of A).
    Short,
    /// One row of A per batch index, as a column of `A^T` (`gemv.rs`).
    OneRow,
}

impl Form {
    /// The schedule-file spelling.
    pub fn name(self) -> &'static str {
        match self {
            Form::Plain => "plain",
            Form::Short => "short",
            Form::OneRow => "one_row",
        }
    }
}

/// The order of a GEMM's work items within a batch index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopOrder {
    /// For each N-panel, every M-tile: each B panel is loaded once, A tiles are
    /// reloaded per panel unless every M-tile stays resident.
    NOuter,
    /// For each M-tile, every N-panel: each A tile is loaded once, B panels are
    /// reloaded per M-tile.
    MOuter,
}

impl LoopOrder {
    /// The schedule-file spelling.
    pub fn name(self) -> &'static str {
        match self {
            LoopOrder::NOuter => "n_outer",
            LoopOrder::MOuter => "m_outer",
        }
    }
}

/// The matmul a function computes, as the kernel needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmProblem {
    /// The IR statement (for listings and debug info).
    pub text: String,
    /// Batch dims of C.
    pub batch: Vec<u64>,
    /// For each C batch index, the A and B batch indices (broadcasting).
    pub batch_map: Vec<(u64, u64)>,
    /// Rows of A.
    pub m: u64,
    /// Contraction.
    pub k: u64,
    /// Columns of B.
    pub n: u64,
    /// Operand dtype.
    pub operand: DType,
    /// The matmul's result dtype (rounding after accumulation).
    pub result: DType,
    /// A final cast's dtype and statement, if the chain ends in one.
    pub cast: Option<(DType, String)>,
    /// A is stored `[.., K, M]`.
    pub transpose_a: bool,
    /// B is stored `[.., N, K]`.
    pub transpose_b: bool,
    /// Names of A, B, C.
    pub names: [String; 3],
    /// Shapes of A and B.
    pub shapes: [Vec<u64>; 2],
    /// Elementwise steps applied to each output tile between PSUM evacuation and
    /// the cast, with the IR statement each implements.
    pub epilogue: Vec<(EpilogueStep, String)>,
    /// HBM tensors the epilogue reads (tensor `2 + i` of the tile program).
    pub epilogue_inputs: Vec<EpilogueInput>,
    /// A row op over the epilogue's result, run on the output tiles (each holds
    /// whole rows), whose result the kernel then stores instead.
    pub row: Option<RowEpilogue>,
    /// Indices of the IR nodes the kernel computes: the matmul, then each fused step.
    pub nodes: Vec<usize>,
    /// The matmul's source span.
    pub span: Span,
}

impl fmt::Display for GemmSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tile_m = {}, tile_n = {}, tile_k = {}, a_buffers = {}, b_buffers = {}, out_buffers = {}, psum_banks = {}, loop_order = {}, a_queue = {}, b_queue = {}, form = {}, share_a = {}",
            self.tile_m,
            self.tile_n,
            self.tile_k,
            self.a_buffers,
            self.b_buffers,
            self.out_buffers,
            self.psum_banks,
            self.loop_order.name(),
            self.a_queue.map_or("auto".to_string(), |q| q.to_string()),
            self.b_queue.map_or("auto".to_string(), |q| q.to_string()),
            self.form.map_or("auto", Form::name),
            self.share_a.map_or("auto".to_string(), |b| b.to_string())
        )
    }
}

/// A GEMM kernel: the problem and its schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmKernel {
    /// What it computes.
    pub p: GemmProblem,
    /// How it is tiled and buffered.
    pub s: GemmSchedule,
}

/// The GEMM kernel of the matmul at node `mm_index` (with the chain that follows
/// it fused), with its schedule chosen for `t`; and the node index of its output.
pub fn select(cx: &Ctx<'_>, mm_index: usize, t: &Target) -> Result<(GemmKernel, usize), CompileError> {
    let f = cx.f;
    let mm = &f.nodes[mm_index];
    let (Op::Matmul { transpose_a, transpose_b }, [Operand::Value(a), Operand::Value(b)]) =
        (&mm.op, mm.operands.as_slice())
    else {
        return Err(unsupported(mm, "is malformed"));
    };
    cx.hbm_values(mm)?;
    let result = mm.ty.dtype.storage();
    let Chain { epilogue, epilogue_inputs, cast, mut nodes, last } = chain(cx, ValueId(mm_index as u32), None, &mm.ty)?;
    nodes.insert(0, mm_index);
    let (an, bn) = (f.node(*a), f.node(*b));
    let (ra, rb) = (an.ty.rank(), bn.ty.rank());
    let batch: Vec<u64> = mm.ty.shape[..mm.ty.rank() - 2].to_vec();
    let batch_map = batch_map(&batch, &an.ty.shape[..ra - 2], &bn.ty.shape[..rb - 2]);
    let layout = match (transpose_a, transpose_b) {
        (false, false) => String::new(),
        (ta, tb) => format!(" {{transpose_a = {ta}, transpose_b = {tb}}}"),
    };
    let mut p = GemmProblem {
        text: format!("%{} = matmul(%{}, %{}){layout}", mm.name, an.name, bn.name),
        batch,
        batch_map,
        m: an.ty.shape[if *transpose_a { ra - 1 } else { ra - 2 }],
        k: an.ty.shape[if *transpose_a { ra - 2 } else { ra - 1 }],
        n: bn.ty.shape[if *transpose_b { rb - 2 } else { rb - 1 }],
        transpose_a: *transpose_a,
        transpose_b: *transpose_b,
        operand: an.ty.dtype.storage(),
        result,
        cast,
        names: [cx.tensor(*a), cx.tensor(*b), cx.tensor(last)],
        shapes: [an.ty.shape.clone(), bn.ty.shape.clone()],
        epilogue,
        epilogue_inputs,
        row: None,
        nodes,
        span: mm.span.clone(),
    };
    fold_batch_into_rows(&mut p);
    // A row op after the epilogue runs on the output tiles when they hold whole
    // rows and it fits; else a row kernel follows.
    if let Some(row) = p.cast.is_none().then(|| row_epilogue::select(cx, last, p.n, t)).flatten() {
        let mut fused = p.clone();
        fused.names[2] = cx.tensor(ValueId(row.node as u32));
        fused.nodes.push(row.node);
        let node = row.node;
        fused.row = Some(row);
        if let Ok(s) = choose(&fused, t) {
            return Ok((GemmKernel { p: fused, s }, node));
        }
    }
    let s = choose(&p, t)?;
    Ok((GemmKernel { p, s }, last.0 as usize))
}

/// A batched GEMM whose B is shared by every batch index (a weight) is one GEMM
/// over all rows: row-major `A[batch.., M, K]` is `[batch * M, K]`, and C and
/// every epilogue operand but a per-batch matrix line up the same way. Each B
/// panel is then loaded once instead of once per batch index.
fn fold_batch_into_rows(p: &mut GemmProblem) {
    let shared_b = p.batch_map.iter().all(|&(_, b)| b == 0);
    let own_a = p.batch_map.iter().enumerate().all(|(c, &(a, _))| a == c as u64);
    let no_matrix = p.epilogue_inputs.iter().all(|e| e.broadcast != Broadcast::Matrix);
    if p.batch.is_empty() || p.transpose_a || !shared_b || !own_a || !no_matrix {
        return;
    }
    p.m = p.m.saturating_mul(p.batch.iter().product());
    p.batch.clear();
    p.batch_map = vec![(0, 0)];
}

/// For each batch index of C (row-major over `batch`), the batch indices of A
/// and B (shaped `a`, `b`: numpy broadcasting).
fn batch_map(batch: &[u64], a: &[u64], b: &[u64]) -> Vec<(u64, u64)> {
    let index = |shape: &[u64], c: u64| -> u64 {
        let (mut rem, mut idx, mut stride) = (c, 0u64, 1u64);
        let offset = batch.len() - shape.len();
        for d in (0..batch.len()).rev() {
            let i = rem % batch[d];
            rem /= batch[d];
            if d >= offset {
                let sd = shape[d - offset];
                idx += if sd == 1 { 0 } else { i } * stride;
                stride *= sd;
            }
        }
        idx
    };
    (0..batch.iter().product::<u64>()).map(|c| (index(a, c), index(b, c))).collect()
}

/// The schedule fields, in `--emit kernels` order.
const FIELDS: &[&str] = &[
    "tile_m",
    "tile_n",
    "tile_k",
    "a_buffers",
    "b_buffers",
    "out_buffers",
    "psum_banks",
    "loop_order",
    "a_queue",
    "b_queue",
    "form",
    "share_a",
];

impl GemmSchedule {
    /// Sets one field from its schedule-file text.
    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let number = || value.parse::<u32>().map_err(|_| format!("`{value}` is not a number"));
        let queue = || match value {
            "auto" => Ok(None),
            v => v.parse::<u8>().map(Some).map_err(|_| format!("is `auto` or a queue number, not `{v}`")),
        };
        match name {
            "tile_m" => self.tile_m = number()?,
            "tile_n" => self.tile_n = number()?,
            "tile_k" => self.tile_k = number()?,
            "a_buffers" => self.a_buffers = number()?,
            "b_buffers" => self.b_buffers = number()?,
            "out_buffers" => self.out_buffers = number()?,
            "psum_banks" => self.psum_banks = number()?,
            "a_queue" => self.a_queue = queue()?,
            "b_queue" => self.b_queue = queue()?,
            "form" => {
                self.form = match value {
                    "auto" => None,
                    "plain" => Some(Form::Plain),
                    "short" => Some(Form::Short),
                    "one_row" => Some(Form::OneRow),
                    other => return Err(format!("is `auto`, `plain`, `short` or `one_row`, not `{other}`")),
                }
            }
            "share_a" => {
                self.share_a = match value {
                    "auto" => None,
                    "true" => Some(true),
                    "false" => Some(false),
                    other => return Err(format!("is `auto`, `true` or `false`, not `{other}`")),
                }
            }
            "loop_order" => {
                self.loop_order = match value {
                    "n_outer" => LoopOrder::NOuter,
                    "m_outer" => LoopOrder::MOuter,
                    other => return Err(format!("is `n_outer` or `m_outer`, not `{other}`")),
                }
            }
            other => return Err(format!("unknown field `{other}` (fields: {})", FIELDS.join(", "))),
        }
        Ok(())
    }
}

impl Kernel for GemmKernel {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn contraction(&self) -> u64 {
        self.p.k
    }

    fn kind(&self) -> &'static str {
        "gemm"
    }

    fn output(&self) -> &str {
        &self.p.names[2]
    }

    fn nodes(&self) -> &[usize] {
        &self.p.nodes
    }

    fn span(&self) -> Span {
        self.p.span.clone()
    }

    fn statement(&self) -> String {
        self.p.text.clone()
    }

    fn schedule_fields(&self) -> &'static [&'static str] {
        FIELDS
    }

    fn schedule(&mut self, t: &Target, overrides: &[Field]) -> Result<Vec<Box<dyn Kernel>>, CompileError> {
        for f in overrides {
            let mut s = self.s;
            s.set(&f.name, &f.value).map_err(|why| self.field_error(f, why))?;
            self.s = s;
        }
        check(&self.p, &self.s, t).map_err(|(field, reason)| {
            // Name the schedule line when the file set the field that breaks the limit.
            let reason = match overrides.iter().find(|f| f.name == field) {
                Some(f) => format!("{reason} (set on line {})", f.line),
                None => reason,
            };
            CompileError::InvalidSchedule {
                kernel: self.p.text.clone(),
                field: field.into(),
                reason,
                span: self.p.span.clone(),
            }
        })?;
        Ok(Vec::new())
    }

    fn describe(&self, t: &Target) -> String {
        let p = &self.p;
        let batch = if p.batch.is_empty() { String::new() } else { format!(" batch = {:?},", p.batch) };
        let cast = p.cast.as_ref().map_or(String::new(), |c| format!(" then cast to {}", c.0));
        let epilogue = if p.epilogue.is_empty() {
            String::new()
        } else {
            let steps: Vec<&str> = p.epilogue.iter().map(|(_, text)| text.as_str()).collect();
            format!("  epilogue: {}\n", steps.join("; "))
        };
        let row = p.row.as_ref().map_or(String::new(), |r| format!("  then on each tile of whole rows: {}\n", r.text));
        let row = if gemv::is_one_row(p, &self.s, t) {
            format!("{row}  one row: C^T = B^T . A^T, tile_m columns of B stationary per matmul\n")
        } else if is_short(p, &self.s, t) {
            let block = t.pe.cols.min(self.s.tile_n);
            format!("{row}  short: C^T = B^T . A^T per block of {block} columns (A^T and C back by PE transposes)\n")
        } else {
            row
        };
        format!(
            "{}\n  M = {}, N = {}, K = {},{batch} operands {}, result {}{cast}\n{epilogue}{row}  schedule: {}\n",
            p.text, p.m, p.n, p.k, p.operand, p.result, self.s
        )
    }

    fn tile_ops(&self, _: &Target) -> u64 {
        let (p, s) = (&self.p, &self.s);
        let batch = p.batch.iter().product::<u64>();
        let items = batch * p.m.div_ceil(s.tile_m as u64) * p.n.div_ceil(s.tile_n as u64);
        let kt = p.k.div_ceil(s.tile_k as u64);
        // Per item: a matmul per k-slice, the A and B slices (B^T chunks when
        // B is stored transposed), the epilogue steps, evacuation and store.
        let loads = if p.transpose_b { 3 * kt } else { 2 * kt };
        // A fused row op: up to a dozen passes per tile.
        let row = if p.row.is_some() { 12 } else { 0 };
        items.saturating_mul(kt + loads + p.epilogue.len() as u64 + 4 + row)
    }

    fn work(&self) -> Work {
        let p = &self.p;
        let tiles = (p.batch_map.len() as u64).saturating_mul(p.m).saturating_mul(p.n);
        let transcendental_steps =
            p.epilogue.iter().filter(|(s, _)| matches!(s, EpilogueStep::Activate(f) if f.is_transcendental())).count();
        let flops = Work::flops(p.operand, tiles.saturating_mul(p.k).saturating_mul(2));
        let rows = (p.batch_map.len() as u64).saturating_mul(p.m);
        let row_op = p.row.as_ref().map_or(0, |r| rows.saturating_mul(r.rows.kind.transcendentals(p.n)));
        let transcendentals = tiles.saturating_mul(transcendental_steps as u64).saturating_add(row_op);
        flops.plus(Work { transcendentals, ..Work::default() })
    }

    fn lower(&self, t: &Target) -> TileProgram {
        lower(&self.p, &self.s, t)
    }

    fn partition(&self, t: &Target, cores: u32) -> String {
        if gemv::is_one_row(&self.p, &self.s, t) {
            let runs = super::split(gemv::items(&self.p, t).len() as u64, cores).len();
            return super::split_text(runs, "blocks of columns");
        }
        self.grid_text(t, cores)
    }

    fn lower_cores(&self, t: &Target, cores: u32) -> TileProgram {
        if gemv::is_one_row(&self.p, &self.s, t) {
            let items = gemv::items(&self.p, t).len() as u64;
            return super::spread(items, cores, |r| gemv::lower(&self.p, &self.s, t, r.start as usize..r.end as usize));
        }
        let (mut s, (rows, cols)) = self.core_plan(t, cores);
        if rows * cols <= 1 {
            return lower(&self.p, &self.s, t);
        }
        let share = self.shares_a(t, &s, (rows, cols));
        if self.every_core_holds_a(&s, (rows, cols)) && t.dma.queues >= 3 {
            // B streams in k order on a queue of its own, as the matmuls read it;
            // A's loads (and shares) take the next.
            (s.b_queue, s.a_queue) = (s.b_queue.or(Some(0)), s.a_queue.or(Some(1)));
        }
        let mt = self.p.m.div_ceil(s.tile_m as u64);
        let nt = self.p.n.div_ceil(s.tile_n as u64);
        let all_rows = self.p.batch_map.len() as u64 * mt;
        let parts = (0..rows * cols)
            .map(|c| {
                let (r, k) = (c / cols, c % cols);
                let row_range = (r * all_rows / rows)..((r + 1) * all_rows / rows);
                let col_range = (k * nt / cols)..((k + 1) * nt / cols);
                lower_items(&self.p, &s, t, |ci, ni, mi| {
                    row_range.contains(&(ci as u64 * mt + mi)) && col_range.contains(&ni)
                })
            })
            .collect::<Vec<_>>();
        let per_core = parts[0].buffers.len();
        let mut tp = crate::tiles::merge_cores(parts);
        if share {
            let shared = super::share::share_loads(&mut tp, (rows * cols) as usize, per_core, 0);
            debug_assert!(shared, "shares_a admits only what share_loads can share");
        }
        tp
    }
}

impl GemmKernel {
    /// Whether, on a grid of `grid_rows` x `cores` blocks (schedule `s`),
    /// every core reads all of A and keeps it resident: one row of blocks on
    /// several cores, A's tiles within its copies.
    fn every_core_holds_a(&self, s: &GemmSchedule, (grid_rows, cores): (u64, u64)) -> bool {
        grid_rows == 1 && cores >= 2 && self.p.a_tiles(s) <= s.a_buffers as u64
    }

    /// Whether, where [`Self::every_core_holds_a`], each core should load a
    /// run of A's k-slices and multicast it to the others ([`super::share`]):
    /// when a core's time by the target's rates (the larger of its matmuls and
    /// its HBM bytes) drops by more than what sharing exposes. A slice from
    /// another core arrives later (a fabric transfer's latency and data, and a
    /// remote signal's latency); a core that stays bound by a long HBM stream
    /// (at least twice those latencies) hides that behind the stream, as
    /// measured on JPU-1, while one bound by its matmuls, or by a short
    /// stream, waits for it. Each core takes a run of at least one of A's
    /// loads (a k-slice of an A tile), so there must be as many as cores.
    fn shares_a(&self, t: &Target, s: &GemmSchedule, grid: (u64, u64)) -> bool {
        let (p, cores) = (&self.p, grid.1);
        let a_tiles = p.a_tiles(s);
        if !self.every_core_holds_a(s, grid) || a_tiles * p.k.div_ceil(s.tile_k as u64) < cores {
            return false;
        }
        if let Some(share) = s.share_a {
            return share;
        }
        let size = p.operand.size_bytes() as u64;
        let my_cols = p.n.div_ceil(s.tile_n as u64).div_ceil(cores);
        let pe = a_tiles * my_cols * tile_pe_cycles(p, s, t);
        let (a, b) = (a_tiles * s.tile_m as u64 * p.k * size, my_cols * s.tile_n as u64 * p.k * size);
        let cycles = |bytes: u64, rate: jpu_isa::target::Ratio| (bytes * rate.den).div_ceil(rate.num);
        let hbm = |a_bytes: u64| cycles(a_bytes + b, t.hbm.bytes_per_cycle);
        let latency = t.timing.dma.latency_cycles + t.fabric.signal_latency_cycles;
        let hidden = hbm(a / cores) > pe && hbm(a / cores) >= 2 * latency;
        let exposed = if hidden { 0 } else { latency + cycles(a / cores, t.fabric.bytes_per_cycle) };
        pe.max(hbm(a / cores)) + exposed < pe.max(hbm(a))
    }

    /// The `--emit kernels` text of [`GemmKernel::core_plan`].
    fn grid_text(&self, t: &Target, cores: u32) -> String {
        let (s, grid) = self.core_plan(t, cores);
        let narrower = if s.tile_n < self.s.tile_n {
            format!(", N-panels narrowed to tile_n = {}", s.tile_n)
        } else {
            String::new()
        };
        let shared = if self.shares_a(t, &s, grid) {
            "; A read once: each core loads a run of its k-slices and multicasts it to the others over the fabric"
        } else {
            ""
        };
        match grid {
            (1, 1) => "core 0".into(),
            (r, c) => format!(
                "{} cores, a grid of {r} x {c} blocks of output tiles (rows: batch index and M-tile; columns: N-panel){narrower}{shared}",
                r * c
            ),
        }
    }

    /// The schedule on `cores` cores and its grid of blocks ([`core_grid`]).
    fn core_plan(&self, t: &Target, cores: u32) -> (GemmSchedule, (u64, u64)) {
        let s = self.core_schedule(t, cores);
        (s, core_grid(&self.p, &s, t, cores))
    }

    /// The schedule on `cores` cores: the kernel's, with narrower N-panels when
    /// there are fewer output tiles than cores (a short GEMM's one row of
    /// tiles), down to what a matmul's minimum cycles still cover.
    fn core_schedule(&self, t: &Target, cores: u32) -> GemmSchedule {
        let (p, s) = (&self.p, self.s);
        if cores <= 1 {
            return s;
        }
        let rows = p.batch_map.len() as u64 * p.m.div_ceil(s.tile_m as u64);
        let floor = t.timing.pe.matmul_min_cycles_16bit.max(32);
        let valid = |tile_n: u64| {
            let narrow = GemmSchedule { tile_n: tile_n as u32, ..s };
            (tile_n < s.tile_n as u64 && check(p, &narrow, t).is_ok()).then_some(narrow)
        };
        // Fewer output tiles than cores: panels narrow enough for one each.
        let per_row = (cores as u64).div_ceil(rows);
        if rows * p.n.div_ceil(s.tile_n as u64) < cores as u64 {
            return valid(p.n.div_ceil(per_row).max(floor)).unwrap_or(s);
        }
        // Each block of columns an equal number of panels (the busiest core
        // sets the time): 28 panels of 512 over 8 cores become 32 of 448.
        let (_, cols) = core_grid(p, &s, t, cores);
        let per_core = p.n.div_ceil(cols);
        let panels = per_core.div_ceil(s.tile_n as u64);
        valid(per_core.div_ceil(panels).next_multiple_of(16).max(floor)).unwrap_or(s)
    }
}

/// How a GEMM's output tiles spread over up to `cores` cores: a grid of
/// `rows` x `cols` blocks (rows: batch index and M-tile; cols: N-panels), each
/// block a core's. Of the grids that fit (no more blocks than cores or tiles
/// each way), the one whose busiest core finishes first by the target's
/// rates: its matmuls, or its HBM bytes (its B panels, its A tiles once per
/// panel unless every M-tile stays resident); ties to more cores (whose
/// panels [`GemmKernel::core_schedule`] then balances). `(1, 1)`: one core.
fn core_grid(p: &GemmProblem, s: &GemmSchedule, t: &Target, cores: u32) -> (u64, u64) {
    let (mt, nt) = (p.m.div_ceil(s.tile_m as u64), p.n.div_ceil(s.tile_n as u64));
    let rows = p.batch_map.len() as u64 * mt;
    let size = p.operand.size_bytes() as u64;
    let (a_tile, panel) = (s.tile_m as u64 * p.k * size, s.tile_n as u64 * p.k * size);
    let a_resident = mt <= s.a_buffers as u64;
    let tile_cycles = tile_pe_cycles(p, s, t);
    let rate = t.hbm.bytes_per_cycle;
    let grids = (1..=rows.min(cores as u64)).flat_map(|r| (1..=nt.min(cores as u64 / r)).map(move |c| (r, c)));
    grids
        .min_by_key(|&(r, c)| {
            let (my_rows, my_cols) = (rows.div_ceil(r), nt.div_ceil(c));
            let a = my_rows * a_tile * if a_resident { 1 } else { my_cols };
            let hbm = ((a + my_cols * panel) * rate.den).div_ceil(rate.num);
            (hbm.max(my_rows * my_cols * tile_cycles), std::cmp::Reverse(r * c))
        })
        .unwrap_or((1, 1))
}

impl GemmProblem {
    /// The dtype stored to HBM.
    pub fn output(&self) -> DType {
        match &self.row {
            Some(row) => row.out_dtype,
            None => self.cast.as_ref().map_or(self.result, |c| c.0),
        }
    }

    /// A's tiles under `s`: M-tiles per batch index, over every batch index.
    pub fn a_tiles(&self, s: &GemmSchedule) -> u64 {
        self.batch_map.len() as u64 * self.m.div_ceil(s.tile_m as u64)
    }

    /// Bytes per SRAM partition a schedule needs on `t`.
    pub fn sram_bytes(&self, s: &GemmSchedule, t: &Target) -> u64 {
        let es = self.operand.size_bytes() as u64;
        let kt = self.k.div_ceil(s.tile_k as u64);
        let a = if self.transpose_a {
            s.a_buffers as u64 * kt * s.tile_m as u64 * es
        } else {
            s.a_buffers as u64 * self.k * es
        };
        let b = s.b_buffers as u64 * kt * s.tile_n as u64 * es
            + if self.transpose_b { BT_RAW_COPIES * s.tile_k as u64 * es } else { 0 };
        let stage = s.tile_n as u64 * self.result.size_bytes() as u64;
        let cast = self.cast.as_ref().map_or(0, |c| s.tile_n as u64 * c.0.size_bytes() as u64);
        // Bias rows stay resident (all of N); residual tiles and row-scale columns
        // rotate with the output.
        let epilogue: u64 = self
            .epilogue_inputs
            .iter()
            .map(|e| match e.broadcast {
                Broadcast::Row => self.n * e.dtype.size_bytes() as u64,
                Broadcast::Full | Broadcast::Matrix => {
                    s.out_buffers as u64 * s.tile_n as u64 * e.dtype.size_bytes() as u64
                }
                // One element per partition, each copy padded to 64 bytes.
                Broadcast::Column => s.out_buffers as u64 * 64,
            })
            .sum();
        let row = self.row.as_ref().map_or(0, RowEpilogue::sram_bytes);
        // The short form's A^T (as A's copies) and its C^T blocks (f32, two).
        let short = if is_short(self, s, t) {
            s.a_buffers as u64 * kt * s.tile_m as u64 * es + 2 * 4 * s.tile_m as u64
        } else {
            0
        };
        a + b + s.out_buffers as u64 * (stage + cast) + epilogue + row + short
    }
}

/// Chooses a schedule: full PE tiles, the widest N a bank holds, double buffering,
/// every PSUM bank; narrower or single-buffered only when SRAM requires it.
pub fn choose(p: &GemmProblem, t: &Target) -> Result<GemmSchedule, CompileError> {
    let bank_elems = t.psum_bank_bytes() / 4;
    let mut s = GemmSchedule {
        tile_m: (t.pe.cols as u64).min(p.m) as u32,
        tile_n: (t.pe.max_moving_free.min(bank_elems) as u64).min(p.n) as u32,
        tile_k: (if p.transpose_b { t.pe.rows.min(t.pe.cols) } else { t.pe.rows } as u64).min(p.k) as u32,
        a_buffers: 2,
        b_buffers: 2,
        out_buffers: 3,
        psum_banks: t.psum.banks.unwrap_or(1).saturating_sub(if p.transpose_b { BT_PSUM_BANKS } else { 0 }).max(1),
        // The kernel keeps a B panel resident across M-tiles: B, usually the larger
        // operand, is then read once.
        loop_order: LoopOrder::NOuter,
        // Queue choice is left to the backend's list scheduler, which balances bytes.
        a_queue: None,
        b_queue: None,
        form: None,
        share_a: None,
    };
    let cap = t.sram.partition_bytes as u64;
    while p.sram_bytes(&s, t) > cap {
        if s.out_buffers > 2 {
            s.out_buffers -= 1;
        } else if s.b_buffers > 1 {
            s.b_buffers = 1;
        } else if s.tile_n > 64 && p.row.is_none() {
            // (a fused row op needs whole rows per tile)
            s.tile_n /= 2;
        } else if s.a_buffers > 1 {
            s.a_buffers = 1;
        } else {
            let what = format!(
                "K = {} is too long for one SRAM partition of {} ({} bytes needed, {cap} available); K-splitting is not implemented yet",
                p.k,
                t.name,
                p.sram_bytes(&s, t)
            );
            return Err(CompileError::limit(&p.text, what, p.span.clone()));
        }
    }
    // With several N-panels, one operand resident when it fits beside the rest
    // in half a partition, so each is read once: B (every panel) in M-outer
    // order, which finishes whole row blocks one after another (a kernel that
    // reads them can start on the first); else A (every M-tile), N-outer.
    let (mt, nt) = (p.m.div_ceil(s.tile_m as u64), p.n.div_ceil(s.tile_n as u64));
    if nt > 1 && nt <= u32::MAX as u64 {
        let b_resident = GemmSchedule { b_buffers: nt as u32, loop_order: LoopOrder::MOuter, ..s };
        let a_resident = GemmSchedule { a_buffers: mt.min(u32::MAX as u64) as u32, ..s };
        if p.sram_bytes(&b_resident, t) <= cap / 2 {
            s = b_resident;
        } else if mt > s.a_buffers as u64 && p.sram_bytes(&a_resident, t) <= cap / 2 {
            s = a_resident;
        }
    }
    s.psum_banks = s.psum_banks.min(psum_copies_needed(p, &s, t)).min(psum_banks_left(p, &s, t)).max(1);
    Ok(s)
}

/// Whether the GEMM multiplies in the short form: C^T = B^T . A^T per block
/// of `pe.cols` columns of C, transposed back on the PE. With M-tiles of at
/// most half the PE's columns, the plain form's matmuls (A's rows stationary,
/// `tile_n` columns of B moving) leave half the array idle; here B's block is
/// stationary and A^T's `tile_m` columns move, at the PE's minimum cycles.
/// A^T is built on chip (PE transposes of A's k-slices, exact), and each
/// block of C^T is evacuated and transposed back into the plain form's PSUM
/// tile (exact), so the epilogue, cast and store are the plain form's and the
/// sums are the same, k ascending. 16-bit operands with A stored plainly,
/// and only when the PE time it saves over the whole GEMM exceeds the
/// transposes it adds and what they put on the critical path (a tile's
/// transposes and evacuations, twice).
pub fn is_short(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> bool {
    match s.form {
        Some(form) => return form == Form::Short && short_fits(p, s, t),
        None if !short_fits(p, s, t) => return false,
        None => {}
    }
    let (a_tiles, kt) = (p.a_tiles(s), p.k.div_ceil(s.tile_k as u64));
    let tiles = a_tiles * p.n.div_ceil(s.tile_n as u64);
    let transpose = t.timing.pe.transpose_min_cycles.max(s.tile_m as u64);
    let plain = tiles * plain_tile_pe_cycles(p, s, t);
    let short = tiles * short_tile_pe_cycles(p, s, t) + a_tiles * kt * transpose;
    let latency = 2 * (transpose + t.timing.ve.fixed_cycles + t.pe.cols as u64);
    plain > short + latency
}

/// Whether the short form can run `p` with `s`: 16-bit operands, A stored
/// plainly, tiles of at most half the PE's columns, and PSUM for its transposes.
fn short_fits(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> bool {
    !p.transpose_a
        && p.operand.size_bytes() == 2
        && 2 * s.tile_m <= t.pe.cols
        && s.tile_m <= t.pe.rows
        && t.psum.banks.unwrap_or(1) > reserved_psum_banks(p, true)
}

/// PSUM banks the stored-transposed B's transposes and, in the short form,
/// its transposes reserve.
fn reserved_psum_banks(p: &GemmProblem, short: bool) -> u32 {
    BT_PSUM_BANKS * p.transpose_b as u32 + SHORT_PSUM_BANKS * short as u32
}

/// PSUM banks left for C's tiles.
fn psum_banks_left(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> u32 {
    t.psum.banks.unwrap_or(1).saturating_sub(reserved_psum_banks(p, is_short(p, s, t)))
}

/// PE cycles of one output tile: its matmuls, and in the short form its
/// transposes back (A^T's are once per A tile, left out).
fn tile_pe_cycles(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> u64 {
    if is_short(p, s, t) {
        short_tile_pe_cycles(p, s, t)
    } else {
        plain_tile_pe_cycles(p, s, t)
    }
}

/// [`tile_pe_cycles`] in the plain form.
fn plain_tile_pe_cycles(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> u64 {
    p.k.div_ceil(s.tile_k as u64) * jpu_isa::cost::matmul_cycles(p.operand, s.tile_n as u64, t)
}

/// [`tile_pe_cycles`] in the short form.
fn short_tile_pe_cycles(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> u64 {
    let kt = p.k.div_ceil(s.tile_k as u64);
    let blocks = (s.tile_n as u64).div_ceil(t.pe.cols as u64);
    let back = (t.pe.cols as u64).max(t.timing.pe.transpose_min_cycles);
    blocks * (kt * jpu_isa::cost::matmul_cycles(p.operand, s.tile_m as u64, t) + back)
}

/// PSUM copies that keep the PE busy: the accumulating tile and enough more
/// for the evacuations in flight (an evacuation, about a VE or ACT pass over a
/// tile, against one item's matmuls), at least two. Fewer banks than the
/// target has leave PSUM to the kernels a program overlaps with this one.
fn psum_copies_needed(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> u32 {
    let evacuation = t.timing.ve.fixed_cycles.max(t.timing.act.fixed_cycles) + s.tile_n as u64;
    let item = tile_pe_cycles(p, s, t);
    (1 + evacuation.div_ceil(item.max(1))).max(2) as u32
}

/// Checks a schedule (e.g. one given with `--schedule`) against the target: the
/// field that breaks a limit, and the limit.
pub fn check(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> Result<(), (&'static str, String)> {
    let fail = |field: &'static str, m: String| Err((field, m));
    if s.tile_m == 0 || s.tile_m > t.pe.cols {
        return fail("tile_m", format!("tile_m = {} must be in 1..={} (the PE's columns)", s.tile_m, t.pe.cols));
    }
    if s.tile_k == 0 || s.tile_k > t.pe.rows {
        return fail("tile_k", format!("tile_k = {} must be in 1..={} (the PE's rows)", s.tile_k, t.pe.rows));
    }
    let bank_elems = t.psum_bank_bytes() / 4;
    if s.tile_n == 0 || s.tile_n > t.pe.max_moving_free.min(bank_elems) {
        return fail(
            "tile_n",
            format!(
                "tile_n = {} must be in 1..={} (moving free size and one PSUM bank)",
                s.tile_n,
                t.pe.max_moving_free.min(bank_elems)
            ),
        );
    }
    check_choices(p, s, t)?;
    let banks = psum_banks_left(p, s, t);
    if s.psum_banks == 0 || s.psum_banks > banks {
        let why = match (p.transpose_b, is_short(p, s, t)) {
            (true, _) => format!(" ({BT_PSUM_BANKS} banks transpose the stored-transposed B)"),
            (false, true) => format!(" ({SHORT_PSUM_BANKS} banks hold the short form's transposes)"),
            _ => String::new(),
        };
        return fail("psum_banks", format!("psum_banks = {} must be in 1..={banks}{why}", s.psum_banks));
    }
    if p.transpose_b && (s.tile_k > t.pe.cols || s.tile_k > t.pe.rows) {
        return fail(
            "tile_k",
            format!(
                "tile_k = {} must fit the PE transpose ({}x{}) when B is stored transposed",
                s.tile_k, t.pe.rows, t.pe.cols
            ),
        );
    }
    // The last queue carries stores when there are two or more.
    let load_queues = if t.dma.queues > 1 { t.dma.queues - 1 } else { 1 };
    for (name, q) in [("a_queue", s.a_queue), ("b_queue", s.b_queue)] {
        if let Some(q) = q {
            if q as u32 >= load_queues {
                let why = if t.dma.queues > 1 {
                    format!(" (queue {} carries stores)", t.dma.queues - 1)
                } else {
                    String::new()
                };
                return fail(name, format!("{name} = {q} must be in 0..={}{why}", load_queues - 1));
            }
        }
    }
    if s.a_buffers == 0 || s.b_buffers == 0 || s.out_buffers == 0 {
        let field = if s.a_buffers == 0 {
            "a_buffers"
        } else if s.b_buffers == 0 {
            "b_buffers"
        } else {
            "out_buffers"
        };
        return fail(field, "buffer counts must be at least 1".into());
    }
    if let Some(row) = &p.row {
        if s.tile_n as u64 != p.n {
            let why = format!(
                "tile_n = {} must be N = {}: the fused `{}` needs whole rows per tile",
                s.tile_n, p.n, row.text
            );
            return fail("tile_n", why);
        }
    }
    let need = p.sram_bytes(s, t);
    if need > t.sram.partition_bytes as u64 {
        return fail(
            "buffers",
            format!("the schedule needs {need} bytes per SRAM partition; {} has {}", t.name, t.sram.partition_bytes),
        );
    }
    Ok(())
}

/// Checks the schedule's `form` and `share_a` where it names them: the form must
/// be able to run the GEMM, and a shared A must stay resident.
fn check_choices(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> Result<(), (&'static str, String)> {
    let half = t.pe.cols / 2;
    match s.form {
        Some(Form::Short) if !short_fits(p, s, t) => {
            let banks = reserved_psum_banks(p, true);
            let why = format!(
                "form = short needs 16-bit operands, A stored plainly, tile_m <= {half} (half the PE's columns) and more than {banks} PSUM banks (this GEMM: {} operands, tile_m = {}{})",
                p.operand,
                s.tile_m,
                if p.transpose_a { ", A stored transposed" } else { "" }
            );
            return Err(("form", why));
        }
        Some(Form::OneRow) if !gemv::one_row_fits(p, s, t) => {
            return Err(("form", format!("form = one_row needs {} (this GEMM: M = {})", gemv::ONE_ROW_NEEDS, p.m)));
        }
        _ => {}
    }
    if s.share_a == Some(true) {
        if gemv::is_one_row(p, s, t) {
            return Err((
                "share_a",
                "share_a = true does not apply to the one-row form (each core reads A's row)".into(),
            ));
        }
        let a_tiles = p.a_tiles(s);
        if a_tiles > s.a_buffers as u64 {
            let why =
                format!("share_a = true needs A resident: a_buffers >= {a_tiles} (A's tiles), not {}", s.a_buffers);
            return Err(("share_a", why));
        }
    }
    Ok(())
}

/// Buffer ids of a GEMM's tile program.
struct Buffers {
    a: BufferId,
    b: BufferId,
    psum: BufferId,
    c: BufferId,
    cast: Option<BufferId>,
    /// One per epilogue input.
    epilogue: Vec<BufferId>,
    /// Stored-transposed B: raw chunk staging and its PSUM transposes.
    bt: Option<(BufferId, BufferId)>,
    /// A fused row op's working buffers and parameter rows.
    row: Option<([BufferId; 4], Vec<BufferId>)>,
    /// The short form's ([`is_short`]) A^T, A^T's transposes, C^T blocks and
    /// their evacuation.
    short: Option<Short>,
}

/// The short form's buffers.
#[derive(Debug, Clone, Copy)]
struct Short {
    a_t: BufferId,
    a_t_psum: BufferId,
    c_t_psum: BufferId,
    c_t: BufferId,
    /// Columns of C per block (the PE's columns, at most `tile_n`).
    block: u64,
}

/// Where a work item's operands live: a new B panel?, its B copy, its A copy,
/// and whether A must be loaded.
#[derive(Debug, Clone, Copy)]
struct ItemPlan {
    new_panel: bool,
    b_copy: u32,
    a_copy: u32,
    load_a: bool,
}

/// A GEMM being lowered: its tiling, work items in execution order (C batch
/// index, N-panel, M-tile), and where each item's operands live.
struct Lowering<'a> {
    p: &'a GemmProblem,
    s: &'a GemmSchedule,
    tm: u64,
    tn: u64,
    tk: u64,
    kt: u64,
    bufs: Buffers,
    c_tensor: usize,
    items: Vec<(usize, u64, u64)>,
    plan: Vec<ItemPlan>,
    /// The panel (in order) of each item.
    panel_of: Vec<usize>,
    /// Debug op of each epilogue input: the first step reading it.
    epilogue_debug: Vec<u32>,
    /// Stored-transposed B: raw chunks loaded and transposes issued so far.
    raw_count: u32,
    tp_count: u32,
}

/// Lowers the GEMM to a tile program.
pub fn lower(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> TileProgram {
    if gemv::is_one_row(p, s, t) {
        return gemv::lower(p, s, t, 0..usize::MAX);
    }
    lower_items(p, s, t, |_, _, _| true)
}

/// The tile program of the output tiles `(batch index, N-panel, M-tile)` that
/// `keep` selects (a core's share).
fn lower_items(p: &GemmProblem, s: &GemmSchedule, t: &Target, keep: impl Fn(usize, u64, u64) -> bool) -> TileProgram {
    let (tensors, c_tensor) = tensors(p);
    let (buffers, bufs) = buffers(p, s, t);
    let mut l = Lowering::new(p, s, bufs, c_tensor, keep);
    let ops = l.ops();
    let mut debug_ops = vec![p.text.clone()];
    debug_ops.extend(p.epilogue.iter().map(|(_, text)| text.clone()));
    debug_ops.extend(p.cast.as_ref().map(|c| c.1.clone()));
    debug_ops.extend(p.row.as_ref().map(|r| r.text.clone()));
    TileProgram { tensors, buffers, ops, debug_ops }
}

/// A, B, the epilogue inputs (tensor `2 + i`), a fused row op's parameters,
/// then C; and C's index.
pub(super) fn tensors(p: &GemmProblem) -> (Vec<HbmTensor>, usize) {
    let mut c_shape = p.batch.clone();
    c_shape.extend([p.m, p.n]);
    let mut tensors = vec![
        HbmTensor { name: p.names[0].clone(), dtype: p.operand, shape: p.shapes[0].clone(), role: Role::Input },
        HbmTensor { name: p.names[1].clone(), dtype: p.operand, shape: p.shapes[1].clone(), role: Role::Input },
    ];
    tensors.extend(p.epilogue_inputs.iter().map(EpilogueInput::hbm_tensor));
    // A fused row op's gamma and beta (tensors after the epilogue inputs).
    for (name, dtype) in p.row.iter().flat_map(|r| &r.params) {
        tensors.push(HbmTensor { name: name.clone(), dtype: *dtype, shape: vec![p.n], role: Role::Input });
    }
    let c_tensor = tensors.len();
    tensors.push(HbmTensor { name: p.names[2].clone(), dtype: p.output(), shape: c_shape, role: Role::Output });
    (tensors, c_tensor)
}

/// The kernel's on-chip buffers.
fn buffers(p: &GemmProblem, s: &GemmSchedule, t: &Target) -> (Vec<Buffer>, Buffers) {
    let kt = p.k.div_ceil(s.tile_k as u64);
    let sram = |name: &str, dtype, parts, free, copies| Buffer::new(name, Space::Sram, dtype, parts, free, copies);
    let psum =
        |name: &str, parts, free, copies| Buffer::new(name, Space::Psum, p.operand.accumulator(), parts, free, copies);
    let mut buffers = vec![
        // Row-major A: rows on partitions, all of K free (the transposed stationary
        // operand). Stored-transposed A: k-tiles on partitions, M-tile columns free
        // (the plain stationary operand).
        if p.transpose_a {
            sram("a_tile", p.operand, s.tile_k, (kt * s.tile_m as u64) as u32, s.a_buffers.max(1))
        } else {
            sram("a_tile", p.operand, s.tile_m, p.k as u32, s.a_buffers.max(1))
        },
        sram("b_panel", p.operand, s.tile_k, (kt * s.tile_n as u64) as u32, s.b_buffers),
        psum("psum", s.tile_m, s.tile_n, s.psum_banks),
        sram("c_tile", p.result, s.tile_m, s.tile_n, s.out_buffers),
    ];
    let mut add = |b: Buffer| {
        buffers.push(b);
        buffers.len() - 1
    };
    let cast = p.cast.as_ref().map(|&(c, _)| add(sram("c_cast", c, s.tile_m, s.tile_n, s.out_buffers)));
    // Epilogue inputs: a bias row replicated on every partition (loaded once), or
    // residual tiles rotating with the output staging.
    let epilogue = p
        .epilogue_inputs
        .iter()
        .map(|e| {
            let free = match e.broadcast {
                Broadcast::Row => p.n as u32,
                Broadcast::Full | Broadcast::Matrix => s.tile_n,
                Broadcast::Column => 1,
            };
            let copies = if e.broadcast == Broadcast::Row { 1 } else { s.out_buffers };
            add(sram(&format!("{}_{}", e.broadcast.prefix(), e.name), e.dtype, s.tile_m, free, copies))
        })
        .collect();
    // Stored-transposed B: raw [n, k] chunks are transposed on the PE into the panel.
    let bt = p.transpose_b.then(|| {
        let raw = add(sram("bt_raw", p.operand, s.tile_k, s.tile_k, BT_RAW_COPIES as u32));
        (raw, add(psum("bt_psum", s.tile_k, s.tile_n, BT_PSUM_BANKS)))
    });
    let row = p.row.as_ref().map(|row| {
        let work = row
            .rows
            .buffers(row.out_dtype)
            .map(|(name, dtype, free, copies)| add(sram(name, dtype, s.tile_m, free as u32, copies)));
        let params =
            row.params.iter().map(|(name, dtype)| add(sram(&format!("row_{name}"), *dtype, s.tile_m, p.n as u32, 1)));
        (work, params.collect())
    });
    let short = is_short(p, s, t).then(|| short_buffers(p, s, t, &mut add));
    (buffers, Buffers { a: 0, b: 1, psum: 2, c: 3, cast, epilogue, bt, row, short })
}

/// The short form's buffers (A^T and C^T, and the PSUM of their transposes),
/// each taken by `add`.
fn short_buffers(p: &GemmProblem, s: &GemmSchedule, t: &Target, add: &mut impl FnMut(Buffer) -> usize) -> Short {
    let (acc, block) = (p.operand.accumulator(), (t.pe.cols as u64).min(s.tile_n as u64));
    let blocks = (s.tile_n as u64).div_ceil(block);
    let kt = p.k.div_ceil(s.tile_k as u64);
    let sram = |name: &str, dtype, parts, free, copies| Buffer::new(name, Space::Sram, dtype, parts, free, copies);
    Short {
        a_t: add(sram("a_t", p.operand, s.tile_k, (kt * s.tile_m as u64) as u32, s.a_buffers.max(1))),
        a_t_psum: add(Buffer::new("a_t_psum", Space::Psum, acc, s.tile_k, s.tile_m, 2)),
        c_t_psum: add(Buffer::new("c_t_psum", Space::Psum, acc, block as u32, s.tile_m, 2 * blocks as u32)),
        c_t: add(sram("c_t", acc, block as u32, s.tile_m, 2)),
        block,
    }
}

impl<'a> Lowering<'a> {
    fn new(
        p: &'a GemmProblem,
        s: &'a GemmSchedule,
        bufs: Buffers,
        c_tensor: usize,
        keep: impl Fn(usize, u64, u64) -> bool,
    ) -> Lowering<'a> {
        let (tm, tn, tk) = (s.tile_m as u64, s.tile_n as u64, s.tile_k as u64);
        let (mt, nt, kt) = (p.m.div_ceil(tm), p.n.div_ceil(tn), p.k.div_ceil(tk));
        let items: Vec<(usize, u64, u64)> = match s.loop_order {
            LoopOrder::NOuter => (0..p.batch_map.len())
                .flat_map(|ci| (0..nt).flat_map(move |ni| (0..mt).map(move |mi| (ci, ni, mi))))
                .collect(),
            LoopOrder::MOuter => (0..p.batch_map.len())
                .flat_map(|ci| (0..mt).flat_map(move |mi| (0..nt).map(move |ni| (ci, ni, mi))))
                .collect(),
        };
        let items: Vec<(usize, u64, u64)> = items.into_iter().filter(|&(ci, ni, mi)| keep(ci, ni, mi)).collect();
        let plan = item_plans(p, s, &items, (mt, nt));
        let panel_of = plan
            .iter()
            .scan(0usize, |n, pl| {
                *n += usize::from(pl.new_panel);
                Some(n.saturating_sub(1))
            })
            .collect();
        let epilogue_debug = (0..p.epilogue_inputs.len())
            // Every epilogue input is read by a step (the chain added it for one).
            .map(|e| 1 + p.epilogue.iter().position(|(st, _)| st.reads(e)).unwrap_or(0) as u32)
            .collect();
        Lowering {
            p,
            s,
            tm,
            tn,
            tk,
            kt,
            bufs,
            c_tensor,
            items,
            plan,
            panel_of,
            epilogue_debug,
            raw_count: 0,
            tp_count: 0,
        }
    }

    /// Every tile op, software-pipelined: the loads of item j + 1 go before item
    /// j's compute, except loads into a copy item j still reads, which go after
    /// its matmuls (the tile program's order is its meaning).
    fn ops(&mut self) -> Vec<(TileOp, u32)> {
        let mut ops = self.bias_loads();
        let mut preps = self.panel_preparations();
        if !self.items.is_empty() {
            self.loads(&mut ops, 0);
            ops.extend(preps[0].drain(..));
        }
        for j in 0..self.items.len() {
            self.item(&mut ops, j, &mut preps);
        }
        ops
    }

    /// Bias rows and a fused row op's gamma and beta, loaded once: every
    /// partition reads the same N values (a zero row stride).
    fn bias_loads(&self) -> Vec<(TileOp, u32)> {
        let (p, s) = (self.p, self.s);
        let load = |tensor, buf, debug| {
            let src = HbmBox { tensor, start: 0, rows: s.tile_m, row_stride: 0, cols: p.n as u32 };
            let dst = BufSlice { buf, copy: 0, parts: s.tile_m, offset: 0, len: p.n as u32 };
            (TileOp::Load { dst, src, queue: None }, debug)
        };
        let rows = p.epilogue_inputs.iter().enumerate().filter(|(_, i)| i.broadcast == Broadcast::Row);
        let mut ops: Vec<_> = rows.map(|(e, _)| load(2 + e, self.bufs.epilogue[e], self.epilogue_debug[e])).collect();
        let params = self.bufs.row.iter().flat_map(|(_, params)| params.iter().enumerate());
        ops.extend(params.map(|(k, &buf)| load(2 + p.epilogue_inputs.len() + k, buf, self.row_debug())));
        ops
    }

    /// Work item j: the next item's loads, its matmuls, a share of the next
    /// panel's preparation, then evacuation, epilogue and store.
    fn item(&self, ops: &mut Vec<(TileOp, u32)>, j: usize, preps: &mut [std::collections::VecDeque<(TileOp, u32)>]) {
        let ItemPlan { b_copy, a_copy, .. } = self.plan[j];
        let (bufs, stage) = (&self.bufs, j as u32 % self.s.out_buffers);
        let (mut deferred, mut after_store) = (Vec::new(), Vec::new());
        if j + 1 < self.items.len() {
            let mut next = Vec::new();
            self.loads(&mut next, j + 1);
            for (op, d) in next {
                let TileOp::Load { dst, .. } = &op else { continue };
                if bufs.epilogue.contains(&dst.buf) && dst.copy == stage {
                    after_store.push((op, d));
                } else if (dst.buf == bufs.a && dst.copy == a_copy) || (dst.buf == bufs.b && dst.copy == b_copy) {
                    deferred.push((op, d));
                } else {
                    ops.push((op, d));
                }
            }
        }
        let psum = self.matmuls(ops, j);
        ops.append(&mut deferred);
        self.share_of_next_panel(ops, j, preps);
        self.evacuate_and_store(ops, j, psum);
        ops.append(&mut after_store);
    }

    /// Item j's loads: A and B k-slices in k order (A's chunk before B's, so
    /// matmul kc waits only for what it reads), then epilogue operand tiles.
    fn loads(&self, ops: &mut Vec<(TileOp, u32)>, j: usize) {
        let (p, s) = (self.p, self.s);
        let (tm, tn, tk) = (self.tm, self.tn, self.tk);
        let (ci, ni, mi) = self.items[j];
        let (ab, bb) = p.batch_map[ci];
        let ItemPlan { new_panel, b_copy, a_copy, load_a } = self.plan[j];
        let (nw, mr) = (tn.min(p.n - ni * tn), tm.min(p.m - mi * tm));
        for kc in 0..self.kt {
            let kr = tk.min(p.k - kc * tk);
            if load_a {
                // Stored-transposed A: k rows of M-tile columns; row-major A: M-tile
                // rows of k columns (both land rows on partitions).
                let (start, rows, row_stride, cols, offset) = if p.transpose_a {
                    (kc * tk * p.m + mi * tm, kr, p.m, mr, kc * tm)
                } else {
                    (mi * tm * p.k + kc * tk, mr, p.k, kr, kc * tk)
                };
                let start = ab * p.m * p.k + start;
                let src = HbmBox { tensor: 0, start, rows: rows as u32, row_stride, cols: cols as u32 };
                let dst = BufSlice {
                    buf: self.bufs.a,
                    copy: a_copy,
                    parts: rows as u32,
                    offset: offset as u32,
                    len: cols as u32,
                };
                ops.push((TileOp::Load { dst, src, queue: s.a_queue }, 0));
            }
            if new_panel && !p.transpose_b {
                let start = bb * p.k * p.n + kc * tk * p.n + ni * tn;
                let src = HbmBox { tensor: 1, start, rows: kr as u32, row_stride: p.n, cols: nw as u32 };
                let dst = BufSlice {
                    buf: self.bufs.b,
                    copy: b_copy,
                    parts: kr as u32,
                    offset: (kc * tn) as u32,
                    len: nw as u32,
                };
                ops.push((TileOp::Load { dst, src, queue: s.b_queue }, 0));
            }
        }
        self.epilogue_loads(ops, j);
    }

    /// Item j's residual tiles, matrix tiles and row-scale columns.
    fn epilogue_loads(&self, ops: &mut Vec<(TileOp, u32)>, j: usize) {
        let p = self.p;
        let (ci, ni, mi) = self.items[j];
        let (nw, mr) = (self.tn.min(p.n - ni * self.tn), self.tm.min(p.m - mi * self.tm));
        for (e, input) in p.epilogue_inputs.iter().enumerate().filter(|(_, i)| i.broadcast != Broadcast::Row) {
            let (src, len) = if input.broadcast == Broadcast::Column {
                let start = ci as u64 * p.m + mi * self.tm;
                (HbmBox { tensor: 2 + e, start, rows: mr as u32, row_stride: 1, cols: 1 }, 1)
            } else {
                let batch = if input.broadcast == Broadcast::Matrix { 0 } else { ci as u64 };
                let start = batch * p.m * p.n + mi * self.tm * p.n + ni * self.tn;
                (HbmBox { tensor: 2 + e, start, rows: mr as u32, row_stride: p.n, cols: nw as u32 }, nw as u32)
            };
            let copy = j as u32 % self.s.out_buffers;
            let dst = BufSlice { buf: self.bufs.epilogue[e], copy, parts: mr as u32, offset: 0, len };
            ops.push((TileOp::Load { dst, src, queue: None }, self.epilogue_debug[e]));
        }
    }

    /// Item j's matmuls, accumulating every k-tile into one PSUM bank (returned).
    fn matmuls(&self, ops: &mut Vec<(TileOp, u32)>, j: usize) -> BufSlice {
        let p = self.p;
        let (tm, tn, tk) = (self.tm, self.tn, self.tk);
        let (_, ni, mi) = self.items[j];
        let ItemPlan { b_copy, a_copy, .. } = self.plan[j];
        let (nw, mr) = (tn.min(p.n - ni * tn), tm.min(p.m - mi * tm));
        let bank = j as u32 % self.s.psum_banks;
        let psum = BufSlice { buf: self.bufs.psum, copy: bank, parts: mr as u32, offset: 0, len: nw as u32 };
        if let Some(short) = self.bufs.short {
            self.short_matmuls(ops, j, short, psum);
            return psum;
        }
        for kc in 0..self.kt {
            let kr = tk.min(p.k - kc * tk);
            let (a, b) = (self.bufs.a, self.bufs.b);
            let stationary = if p.transpose_a {
                BufSlice { buf: a, copy: a_copy, parts: kr as u32, offset: (kc * tm) as u32, len: mr as u32 }
            } else {
                BufSlice { buf: a, copy: a_copy, parts: mr as u32, offset: (kc * tk) as u32, len: kr as u32 }
            };
            let moving = BufSlice { buf: b, copy: b_copy, parts: kr as u32, offset: (kc * tn) as u32, len: nw as u32 };
            let transposed = !p.transpose_a;
            ops.push((TileOp::Matmul { dst: psum, stationary, moving, accumulate: kc > 0, transposed }, 0));
        }
        psum
    }

    /// Item j's matmuls in the short form ([`is_short`]) into `psum`: A^T first
    /// when the item's A tile is new, then C^T's matmuls (k outer, a block of
    /// columns inner), then each block's evacuation and transpose back into
    /// `psum`.
    fn short_matmuls(&self, ops: &mut Vec<(TileOp, u32)>, j: usize, short: Short, psum: BufSlice) {
        let p = self.p;
        let (tn, tk, tm) = (self.tn, self.tk, self.tm);
        let ItemPlan { b_copy, a_copy, load_a, .. } = self.plan[j];
        let (mr, nw) = (psum.parts, psum.len as u64);
        let slice = |buf, copy, parts, offset: u64, len: u32| BufSlice { buf, copy, parts, offset: offset as u32, len };
        if load_a {
            for kc in 0..self.kt {
                let kr = tk.min(p.k - kc * tk) as u32;
                let staged = slice(short.a_t_psum, kc as u32 % 2, kr, 0, mr);
                let a = slice(self.bufs.a, a_copy, mr, kc * tk, kr);
                ops.push((TileOp::Transpose { dst: staged, src: a }, 0));
                ops.push((TileOp::Copy { dst: slice(short.a_t, a_copy, kr, kc * tm, mr), src: staged }, 0));
            }
        }
        // k outer, so each of B's k-slices is used as it arrives; a C^T
        // accumulator per block (two sets, item by item).
        let blocks = nw.div_ceil(short.block);
        let width = |nb: u64| short.block.min(nw - nb * short.block) as u32;
        let first = (j as u64 % 2 * self.tn.div_ceil(short.block)) as u32;
        let c_t_psum = |nb: u64| slice(short.c_t_psum, first + nb as u32, width(nb), 0, mr);
        for kc in 0..self.kt {
            let kr = tk.min(p.k - kc * tk) as u32;
            for nb in 0..blocks {
                let stationary = slice(self.bufs.b, b_copy, kr, kc * tn + nb * short.block, width(nb));
                let moving = slice(short.a_t, a_copy, kr, kc * tm, mr);
                let dst = c_t_psum(nb);
                ops.push((TileOp::Matmul { dst, stationary, moving, accumulate: kc > 0, transposed: false }, 0));
            }
        }
        for nb in 0..blocks {
            let c_t = slice(short.c_t, nb as u32 % 2, width(nb), 0, mr);
            ops.push((TileOp::Copy { dst: c_t, src: c_t_psum(nb) }, 0));
            let back = BufSlice { offset: (nb * short.block) as u32, len: width(nb), ..psum };
            ops.push((TileOp::Transpose { dst: back, src: c_t }, 0));
        }
    }

    /// Item j's evacuation of `psum` by the VE, its epilogue steps in place, the
    /// cast, and the store.
    fn evacuate_and_store(&self, ops: &mut Vec<(TileOp, u32)>, j: usize, psum: BufSlice) {
        let (p, s) = (self.p, self.s);
        let (_, ni, mi) = self.items[j];
        let stage = j as u32 % s.out_buffers;
        let (nw, mr) = (self.tn.min(p.n - ni * self.tn), self.tm.min(p.m - mi * self.tm));
        let staged = BufSlice { buf: self.bufs.c, copy: stage, parts: mr as u32, offset: 0, len: nw as u32 };
        ops.push((
            if evacuates_on_act(p, j, self.items.len()) {
                TileOp::activate(ActFunc::Identity, staged, psum)
            } else {
                TileOp::Copy { dst: staged, src: psum }
            },
            0,
        ));
        for (si, (step, _)) in p.epilogue.iter().enumerate() {
            let op = step.tile_op(staged, (mi * self.tm, ni * self.tn), |e| {
                let (copy, offset, len) = match p.epilogue_inputs[e].broadcast {
                    Broadcast::Row => (0, (ni * self.tn) as u32, nw as u32),
                    Broadcast::Full | Broadcast::Matrix => (stage, 0, nw as u32),
                    Broadcast::Column => (stage, 0, 1),
                };
                let slice = BufSlice { buf: self.bufs.epilogue[e], copy, parts: mr as u32, offset, len };
                (slice, p.epilogue_inputs[e].broadcast == Broadcast::Column)
            });
            ops.push((op, 1 + si as u32));
        }
        let last_step = p.epilogue.len() as u32;
        let out = match self.bufs.cast {
            Some(cb) => {
                let cast = BufSlice { buf: cb, copy: stage, parts: mr as u32, offset: 0, len: nw as u32 };
                ops.push((TileOp::Copy { dst: cast, src: staged }, last_step + 1));
                cast
            }
            None => staged,
        };
        if p.row.is_some() {
            // The fused row op reads the tile and stores its own result.
            return self.row_op(ops, j);
        }
        ops.push((TileOp::Store { dst: self.c_box(j), src: out }, last_step + p.cast.is_some() as u32));
    }

    /// Where item j's output tile goes in C.
    fn c_box(&self, j: usize) -> HbmBox {
        let p = self.p;
        let (ci, ni, mi) = self.items[j];
        let (nw, mr) = (self.tn.min(p.n - ni * self.tn), self.tm.min(p.m - mi * self.tm));
        let start = ci as u64 * p.m * p.n + mi * self.tm * p.n + ni * self.tn;
        HbmBox { tensor: self.c_tensor, start, rows: mr as u32, row_stride: p.n, cols: nw as u32 }
    }

    /// The debug op of a fused row op's tile ops (after the epilogue's; a
    /// fused row op excludes a cast).
    fn row_debug(&self) -> u32 {
        1 + self.p.epilogue.len() as u32
    }

    /// Item j's fused row op on its staged tile, and the store of its result.
    fn row_op(&self, ops: &mut Vec<(TileOp, u32)>, j: usize) {
        let (Some(row), Some((work, params))) = (&self.p.row, &self.bufs.row) else { return };
        let debug = self.row_debug();
        let mr = self.tm.min(self.p.m - self.items[j].2 * self.tm) as u32;
        let (block, y) = row.rows.block(j as u64, mr, (self.bufs.c, self.s.out_buffers), *work, params);
        ops.extend(block.into_iter().map(|op| (op, debug)));
        ops.push((TileOp::Store { dst: self.c_box(j), src: y }, debug));
    }

    /// Each panel's preparation (stored-transposed B only), in panel order.
    fn panel_preparations(&mut self) -> Vec<std::collections::VecDeque<(TileOp, u32)>> {
        let mut preps = Vec::new();
        for j in 0..self.plan.len() {
            if self.plan[j].new_panel {
                let mut v = Vec::new();
                self.prepare_panel(&mut v, j);
                preps.push(v.into());
            }
        }
        preps
    }

    /// Spreads the next panel's preparation over this panel's items (it writes
    /// the other B copy); with one B copy it waits for this panel's last item.
    fn share_of_next_panel(
        &self,
        ops: &mut Vec<(TileOp, u32)>,
        j: usize,
        preps: &mut [std::collections::VecDeque<(TileOp, u32)>],
    ) {
        let pi = self.panel_of[j];
        let Some(next) = preps.get_mut(pi + 1) else { return };
        let left = self.panel_of[j..].iter().take_while(|&&q| q == pi).count();
        let share = if self.s.b_buffers > 1 {
            next.len().div_ceil(left)
        } else if left == 1 {
            next.len()
        } else {
            0
        };
        ops.extend(next.drain(..share.min(next.len())));
    }

    /// Preparing a stored-transposed B panel for item j: load `[n, k]` chunks
    /// (BT_RAW_COPIES copies, loads that many less one ahead), transpose each on
    /// the PE into a PSUM staging bank, copy each k-tile into the panel. Emitted
    /// after the previous item's matmuls, so the PE meets these transposes once
    /// its current work is done.
    fn prepare_panel(&mut self, ops: &mut Vec<(TileOp, u32)>, j: usize) {
        let Some((raw_buf, tp_buf)) = self.bufs.bt else { return };
        let (p, s, tn, tk) = (self.p, self.s, self.tn, self.tk);
        let (ci, ni, _) = self.items[j];
        let (_, bb) = p.batch_map[ci];
        let ItemPlan { new_panel, b_copy, .. } = self.plan[j];
        if !new_panel {
            return;
        }
        let nw = tn.min(p.n - ni * tn);
        let chunks: Vec<(u64, u64)> =
            (0..self.kt).flat_map(|kc| (0..nw.div_ceil(tk)).map(move |sb| (kc, sb))).collect();
        let base = self.raw_count;
        self.raw_count += chunks.len() as u32;
        let raw = |c: usize| {
            let (kc, sb) = chunks[c];
            let (kr, ns) = (tk.min(p.k - kc * tk), tk.min(nw - sb * tk));
            let copy = (base + c as u32) % BT_RAW_COPIES as u32;
            BufSlice { buf: raw_buf, copy, parts: ns as u32, offset: 0, len: kr as u32 }
        };
        let load = |ops: &mut Vec<(TileOp, u32)>, c: usize| {
            let (kc, sb) = chunks[c];
            let dst = raw(c);
            let start = bb * p.k * p.n + (ni * tn + sb * tk) * p.k + kc * tk;
            let src = HbmBox { tensor: 1, start, rows: dst.parts, row_stride: p.k, cols: dst.len };
            ops.push((TileOp::Load { dst, src, queue: s.b_queue }, 0));
        };
        let ahead = BT_RAW_COPIES as usize - 1;
        for c in 0..chunks.len().min(ahead) {
            load(ops, c);
        }
        for c in 0..chunks.len() {
            if c + ahead < chunks.len() {
                load(ops, c + ahead);
            }
            let (kc, sb) = chunks[c];
            let (kr, ns) = (tk.min(p.k - kc * tk), tk.min(nw - sb * tk));
            let tcopy = self.tp_count % BT_PSUM_BANKS;
            let dst = BufSlice { buf: tp_buf, copy: tcopy, parts: kr as u32, offset: (sb * tk) as u32, len: ns as u32 };
            ops.push((TileOp::Transpose { dst, src: raw(c) }, 0));
            if c + 1 == chunks.len() || chunks[c + 1].0 != kc {
                let src = BufSlice { buf: tp_buf, copy: tcopy, parts: kr as u32, offset: 0, len: nw as u32 };
                let dst = BufSlice {
                    buf: self.bufs.b,
                    copy: b_copy,
                    parts: kr as u32,
                    offset: (kc * tn) as u32,
                    len: nw as u32,
                };
                ops.push((TileOp::Copy { dst, src }, 0));
                self.tp_count += 1;
            }
        }
    }
}

/// Whether the ACT evacuates item j (of `items`)'s PSUM tile: always when the
/// epilogue keeps the VE busy and gives the ACT nothing to do; every other item
/// when both engines have epilogue steps, to balance them, but not the last
/// (the VE's copy has the shorter fixed cost, and nothing overlaps the last).
/// An identity activation of a float rounds once into the destination,
/// exactly as the VE's copy does.
fn evacuates_on_act(p: &GemmProblem, j: usize, items: usize) -> bool {
    let on_act = |(step, _): &(EpilogueStep, _)| matches!(step, EpilogueStep::Activate(_));
    let (activates, vector) = (p.epilogue.iter().any(on_act), p.epilogue.iter().any(|s| !on_act(s)));
    !p.result.is_int() && vector && (!activates || (j % 2 == 1 && j + 1 < items))
}

/// Which copy holds each item's B panel and A tile, and whether each must be
/// loaded. A tiles stay resident when all M-tiles of a batch fit in the A
/// copies; B panels, in M-outer order, when all N-panels fit in the B copies.
fn item_plans(p: &GemmProblem, s: &GemmSchedule, items: &[(usize, u64, u64)], (mt, nt): (u64, u64)) -> Vec<ItemPlan> {
    let a_resident = mt <= s.a_buffers as u64;
    let b_resident = s.loop_order == LoopOrder::MOuter && nt <= s.b_buffers as u64;
    // With resident B, copy ni holds N-panel ni of the B batch index recorded here.
    let mut b_holds: Vec<Option<u64>> = vec![None; if b_resident { nt as usize } else { 0 }];
    let mut plan = Vec::with_capacity(items.len());
    let (mut panels, mut a_loads) = (0u32, 0u32);
    let mut last_panel = None;
    let mut last_a: Option<(u64, u64)> = None;
    // With resident A, copy mi holds M-tile mi of the batch recorded here.
    let mut a_holds: Vec<Option<u64>> = vec![None; mt as usize];
    for &(ci, ni, mi) in items {
        let (ab, bb) = p.batch_map[ci];
        let (new_panel, b_copy) = if b_resident {
            let load = b_holds[ni as usize] != Some(bb);
            b_holds[ni as usize] = Some(bb);
            (load, ni as u32)
        } else {
            let new_panel = last_panel != Some((ci, ni));
            if new_panel {
                panels += 1;
                last_panel = Some((ci, ni));
            }
            (new_panel, (panels - 1) % s.b_buffers)
        };
        let (a_copy, load_a) = if a_resident {
            let load = a_holds[mi as usize] != Some(ab);
            a_holds[mi as usize] = Some(ab);
            (mi as u32, load)
        } else if last_a == Some((ab, mi)) {
            // The previous item read the same A tile (M-outer order): reuse it.
            ((a_loads - 1) % s.a_buffers, false)
        } else {
            a_loads += 1;
            ((a_loads - 1) % s.a_buffers, true)
        };
        last_a = Some((ab, mi));
        plan.push(ItemPlan { new_panel, b_copy, a_copy, load_a });
    }
    plan
}
