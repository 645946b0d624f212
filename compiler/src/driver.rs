//! The compiler driver: runs the stages in order and prints any of them.
//!
//! | stage (`--emit`) | produced by | form |
//! |---|---|---|
//! | `parsed` | [`crate::tir`] | canonical `.tir` |
//! | `opt` | [`crate::opt`] | canonical `.tir` after e-graph rewriting (`-O0`: unchanged) |
//! | `kernels` | [`crate::lower::gemm::choose`] | each kernel and its schedule |
//! | `tiles` | [`crate::lower::gemm::lower`] | the tile program |
//! | `asm` | [`crate::backend::compile`] | canonical `.jasm` of the chip program |
//!

use jpu_isa::program::RooflineInputs;
use jpu_isa::{Program, Target};

use crate::backend;
use crate::ir::Func;
use crate::lower::attention::{AttentionPlan, AttentionProblem};
use crate::lower::gemm::{self, GemmProblem, GemmSchedule};
use crate::lower::map::MapProblem;
use crate::lower::rows::{RowProblem, RowSchedule};
use crate::lower::transpose::TransposeProblem;
use crate::lower::{KernelProblem, TileProgram};

/// One kernel as compiled; a GEMM carries its schedule.
pub enum Kernel {
    /// A matmul (with its fused chain) and its schedule.
    Gemm(GemmProblem, GemmSchedule),
    /// An elementwise chain or reshape.
    Map(MapProblem),
    /// A swap of the last two dims.
    Transpose(TransposeProblem),
    /// Softmax, a norm or a reduction, with its pipeline.
    Rows(RowProblem, RowSchedule),
    /// Fused attention and its tiling.
    Attention(AttentionProblem, AttentionPlan),
    /// Concat or slice (HBM-to-HBM copies).
    Copy(crate::lower::copy::CopyProblem),
}

impl Kernel {
    /// The GEMM and its schedule, if this kernel is one.
    pub fn gemm(&self) -> Option<(&GemmProblem, &GemmSchedule)> {
        match self {
            Kernel::Gemm(p, s) => Some((p, s)),
            _ => None,
        }
    }

    /// The kernel's kind, as `--emit kernels` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Kernel::Gemm(..) => "gemm",
            Kernel::Map(_) => "map",
            Kernel::Transpose(_) => "transpose",
            Kernel::Rows(..) => "rows",
            Kernel::Attention(..) => "attention",
            Kernel::Copy(_) => "copy",
        }
    }

    /// Its tile program.
    pub fn tiles(&self, t: &Target) -> TileProgram {
        match self {
            Kernel::Gemm(p, s) => gemm::lower(p, s),
            Kernel::Map(p) => crate::lower::map::lower(p, t),
            Kernel::Transpose(p) => crate::lower::transpose::lower(p, t),
            Kernel::Rows(p, sched) => crate::lower::rows::lower(p, t, sched),
            Kernel::Attention(p, plan) => crate::lower::attention::lower(p, plan),
            Kernel::Copy(p) => crate::lower::copy::lower(p),
        }
    }

    /// Transcendental function evaluations (ACT work the roofline counts).
    fn transcendentals(&self) -> u64 {
        let (steps, elems) = match self {
            Kernel::Gemm(p, _) => (&p.epilogue, p.batch_map.len() as u64 * p.m * p.n),
            Kernel::Map(p) => (&p.steps, p.shape.iter().product()),
            Kernel::Transpose(_) | Kernel::Copy(_) => return 0,
            Kernel::Rows(p, _) => return p.rows * p.kind.transcendentals(p.len),
            Kernel::Attention(p, _) => return p.visible_pairs(),
        };
        let per_element =
            steps.iter().filter(|(s, _)| matches!(s, gemm::EpilogueStep::Activate(f) if f.is_transcendental())).count()
                as u64;
        per_element * elems
    }
}

/// Every stage's result.
pub struct Compiled {
    /// The function after optimization (the input at `-O0`).
    pub optimized: Func,
    /// The kernels, in execution order.
    pub kernels: Vec<Kernel>,
    /// The tile program (every kernel's, linked).
    pub tiles: TileProgram,
    /// The chip program.
    pub program: Program,
}

/// Optimization level: 0 skips the e-graph and fusion (every op a kernel of its
/// own), anything else runs both.
pub type OptLevel = u8;

/// Runs the optimizer (unless `level` is 0).
pub fn optimize(f: &Func, t: &Target, level: OptLevel) -> Result<Func, String> {
    if level == 0 {
        return Ok(f.clone());
    }
    crate::opt::optimize(f, t, crate::opt::Limits::default()).map(|o| o.func).map_err(|e| e.to_string())
}

/// Compiles a checked function for `target`, with an optional schedule override.
pub fn compile(f: &Func, t: &Target, schedule: Option<GemmSchedule>) -> Result<Compiled, String> {
    compile_at(f, t, schedule, 2)
}

/// Links kernels' tile programs into one: HBM tensors are shared by name
/// (parameters are inputs, returned values outputs, other kernel outputs scratch);
/// buffers stay per kernel (the allocator lets kernels that do not overlap in time
/// share memory), named `kN.` when there are several kernels.
pub fn link(f: &Func, parts: Vec<TileProgram>) -> TileProgram {
    use jpu_isa::program::Role;
    let mut out = TileProgram { tensors: Vec::new(), buffers: Vec::new(), ops: Vec::new(), debug_ops: Vec::new() };
    let several = parts.len() > 1;
    let params: Vec<&str> = f.params().map(|p| f.node(p).name.as_str()).collect();
    let results: Vec<&str> = f.results.iter().map(|r| f.node(*r).name.as_str()).collect();
    for (k, part) in parts.into_iter().enumerate() {
        let tensor_map: Vec<usize> = part
            .tensors
            .into_iter()
            .map(|mut t| {
                if let Some(i) = out.tensors.iter().position(|o| o.name == t.name) {
                    return i;
                }
                t.role = if params.contains(&t.name.as_str()) {
                    Role::Input
                } else if results.contains(&t.name.as_str()) {
                    Role::Output
                } else {
                    Role::Scratch
                };
                out.tensors.push(t);
                out.tensors.len() - 1
            })
            .collect();
        let (buf_base, debug_base) = (out.buffers.len(), out.debug_ops.len() as u32);
        out.buffers.extend(part.buffers.into_iter().map(|mut b| {
            if several {
                b.name = format!("k{}.{}", k + 1, b.name);
            }
            b
        }));
        out.debug_ops.extend(part.debug_ops);
        out.ops.extend(part.ops.into_iter().map(|(mut op, d)| {
            op.remap(|b| b + buf_base, |t| tensor_map[t]);
            (op, d + debug_base)
        }));
    }
    out
}

/// Compiles at an optimization level. A schedule override applies to every GEMM kernel.
pub fn compile_at(f: &Func, t: &Target, schedule: Option<GemmSchedule>, level: OptLevel) -> Result<Compiled, String> {
    let optimized = optimize(f, t, level)?;
    let f = &optimized;
    let mut kernels = Vec::new();
    for problem in crate::lower::plan_with(f, level > 0).map_err(|e| e.0)? {
        let kernel = match problem {
            KernelProblem::Gemm(p) => {
                let s = match schedule {
                    Some(s) => {
                        gemm::check(&p, &s, t).map_err(|e| format!("illegal schedule: {}", e.0))?;
                        s
                    }
                    None => gemm::choose(&p, t).map_err(|e| e.0)?,
                };
                Kernel::Gemm(p, s)
            }
            KernelProblem::Map(p) => Kernel::Map(p),
            KernelProblem::Transpose(p) => Kernel::Transpose(p),
            KernelProblem::Rows(p) => {
                let sched = p.schedule(t).ok_or_else(|| {
                    format!(
                        "`{}`: rows of {} elements do not fit one SRAM partition of {} ({} bytes) with the kernel's working tiles",
                        p.text[0], p.len, t.name, t.sram.partition_bytes
                    )
                })?;
                Kernel::Rows(p, sched)
            }
            KernelProblem::Copy(p) => Kernel::Copy(p),
            KernelProblem::Attention(mut p) => {
                let plan = p.plan(t).map_err(|e| format!("`{}`: {e}", p.text[0]))?;
                if !plan.resident(&p) && !plan.decode {
                    // Streamed windows would transpose K once per query tile; one
                    // transpose kernel into HBM scratch serves them all.
                    let k_t = format!("{}__k_t", p.output);
                    kernels.push(Kernel::Transpose(TransposeProblem::scratch(
                        &p.k,
                        &p.shapes[1],
                        p.dtype,
                        &k_t,
                        &p.text[0],
                        p.nodes[0],
                    )));
                    p.k_transposed = Some(k_t);
                }
                Kernel::Attention(p, plan)
            }
        };
        kernels.push(kernel);
    }
    let tiles = link(f, kernels.iter().map(|k| k.tiles(t)).collect());
    let bytes = |role| {
        tiles
            .tensors
            .iter()
            .filter(|t| t.role == role)
            .map(|t| t.shape.iter().product::<u64>() * t.dtype.size_bytes() as u64)
            .sum()
    };
    let mut roof = RooflineInputs {
        input_bytes: bytes(jpu_isa::program::Role::Input),
        output_bytes: bytes(jpu_isa::program::Role::Output),
        ..RooflineInputs::default()
    };
    for k in &kernels {
        roof.transcendentals += k.transcendentals();
        if let Kernel::Attention(p, _) = k {
            // Only the pairs the mask leaves visible count: q . k and p . v.
            let flops = 2 * (p.d + p.dv) * p.visible_pairs();
            match p.dtype.size_bytes() {
                2 => roof.flops_16bit += flops,
                _ => roof.flops_f32 += flops,
            }
        }
        let Some((p, _)) = k.gemm() else { continue };
        let flops = 2 * p.batch_map.len() as u64 * p.m * p.k * p.n;
        match p.operand.size_bytes() {
            1 => roof.flops_8bit += flops,
            2 => roof.flops_16bit += flops,
            _ => roof.flops_f32 += flops,
        }
    }
    let program = backend::compile(&tiles, t, roof).map_err(|e| e.0)?.program;
    Ok(Compiled { optimized, kernels, tiles, program })
}

/// The `kernels` listing.
pub fn kernels_text(c: &Compiled, t: &Target) -> String {
    let mut out = String::new();
    for k in &c.kernels {
        let (p, schedule) = match k {
            Kernel::Gemm(p, s) => (p, s),
            Kernel::Map(m) => {
                let reshape = (m.input_shape != m.shape).then(|| format!("reshape to {:?}", m.shape));
                let steps: Vec<&str> = reshape
                    .iter()
                    .map(String::as_str)
                    .chain(m.steps.iter().map(|(_, t)| t.as_str()))
                    .chain(m.cast.as_ref().map(|c| c.1.as_str()))
                    .collect();
                let over = match m.splat {
                    Some(v) => format!("a splat of {v}"),
                    None => format!("%{}", m.input),
                };
                out += &format!(
                    "kernel map: {} over {over} {:?} {}\n  blocks of {} columns\n",
                    steps.join("; "),
                    m.input_shape,
                    m.dtype,
                    m.width(t)
                );
                continue;
            }
            Kernel::Transpose(tp) => {
                out += &format!("kernel transpose: {} {:?} {}\n", tp.text, tp.shape, tp.dtype);
                continue;
            }
            Kernel::Copy(c) => {
                out += &format!(
                    "kernel copy: {} {:?} {}\n  {} HBM-to-HBM boxes\n",
                    c.text,
                    c.shape,
                    c.dtype,
                    c.boxes.len()
                );
                continue;
            }
            Kernel::Attention(a, plan) => {
                out += &format!(
                    "kernel attention: {}\n  batch {}, {} query heads / {} kv heads, seq {} x {}, head dim {} / {}, {}{} -> {}\n  schedule: {plan}{}\n",
                    a.text.join("; "),
                    a.batch,
                    a.hq,
                    a.hk,
                    a.sq,
                    a.sk,
                    a.d,
                    a.dv,
                    a.dtype,
                    if a.causal { ", causal" } else { "" },
                    a.out_dtype,
                    if plan.resident(a) { " (K/V resident per kv head)" } else { " (K/V streamed per block)" }
                );
                continue;
            }
            Kernel::Rows(r, sched) => {
                let copies: Vec<String> = sched.copies.iter().map(|c| c.to_string()).collect();
                out += &format!(
                    "kernel rows: {}\n  {} rows of {} {} -> {}, blocks of {} rows, copies {}\n",
                    r.text.join("; "),
                    r.rows,
                    r.len,
                    r.dtype,
                    r.out_dtype,
                    r.rows.min(t.sram.partitions as u64),
                    copies.join("/")
                );
                continue;
            }
        };
        let batch = if p.batch.is_empty() { String::new() } else { format!(" batch = {:?},", p.batch) };
        let cast = p.cast.as_ref().map_or(String::new(), |c| format!(" then cast to {}", c.0));
        let epilogue = if p.epilogue.is_empty() {
            String::new()
        } else {
            let steps: Vec<&str> = p.epilogue.iter().map(|(_, text)| text.as_str()).collect();
            format!("  epilogue: {}\n", steps.join("; "))
        };
        out += &format!(
            "kernel gemm: {}\n  M = {}, N = {}, K = {},{batch} operands {}, result {}{cast}\n{epilogue}  schedule: {}\n",
            p.text, p.m, p.n, p.k, p.operand, p.result, schedule
        );
    }
    out
}

/// Parses a `--schedule` file: `key = value` lines (`#` comments) naming any of
/// the [`GemmSchedule`] fields; unnamed fields keep the chosen values.
pub fn parse_schedule(text: &str, base: GemmSchedule) -> Result<GemmSchedule, String> {
    let mut s = base;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) =
            line.split_once('=').ok_or_else(|| format!("line {}: expected `key = value`, found `{line}`", n + 1))?;
        if matches!(key.trim(), "a_queue" | "b_queue") {
            let q =
                match value.trim() {
                    "auto" => None,
                    v => Some(v.parse::<u8>().map_err(|_| {
                        format!("line {}: {} is `auto` or a queue number, not `{v}`", n + 1, key.trim())
                    })?),
                };
            if key.trim() == "a_queue" {
                s.a_queue = q;
            } else {
                s.b_queue = q;
            }
            continue;
        }
        if key.trim() == "loop_order" {
            s.loop_order = match value.trim() {
                "n_outer" => gemm::LoopOrder::NOuter,
                "m_outer" => gemm::LoopOrder::MOuter,
                other => return Err(format!("line {}: loop_order is `n_outer` or `m_outer`, not `{other}`", n + 1)),
            };
            continue;
        }
        let value: u32 =
            value.trim().parse().map_err(|_| format!("line {}: `{}` is not a number", n + 1, value.trim()))?;
        let slot = match key.trim() {
            "tile_m" => &mut s.tile_m,
            "tile_n" => &mut s.tile_n,
            "tile_k" => &mut s.tile_k,
            "a_buffers" => &mut s.a_buffers,
            "b_buffers" => &mut s.b_buffers,
            "out_buffers" => &mut s.out_buffers,
            "psum_banks" => &mut s.psum_banks,
            other => {
                return Err(format!(
                    "line {}: unknown schedule field `{other}` (fields: tile_m, tile_n, tile_k, a_buffers, b_buffers, out_buffers, psum_banks, loop_order, a_queue, b_queue)",
                    n + 1
                ))
            }
        };
        *slot = value;
    }
    Ok(s)
}
