//! Regions: a long function is optimized as consecutive slices of its
//! statements, so the e-graph's size, its limits and the extraction's cost grow
//! with the slice, never with the whole program (a 10,000-statement chain would
//! otherwise spend seconds in quadratic extraction and starve every rule at the
//! node limit).
//!
//! A region is a function of its own: its parameters are the values it reads
//! from outside (in first-use order), its results the values read after it or
//! returned (returned values first, so they keep their names). Cuts fall where
//! the fewest values cross, within the second half of each slice, which keeps
//! short patterns (attention written out, a matmul chain) inside one region.

use std::collections::HashMap;

use crate::error::CompileError;
use crate::ir::{Builder, Func, Operand, ValueId};

/// Most statements in one region, by default.
pub const REGION_STATEMENTS: usize = 400;

/// One region of a function.
pub struct Region {
    /// The region as a function.
    pub func: Func,
    /// The original value behind each of its parameters.
    pub inputs: Vec<ValueId>,
    /// The original value behind each of its results.
    pub outputs: Vec<ValueId>,
}

/// The statement ranges (indices into `f.nodes`, past the parameters) of the
/// regions of `f`, each at most `size` statements long.
pub fn cuts(f: &Func, size: usize) -> Vec<std::ops::Range<usize>> {
    let (start, end) = (f.num_params, f.nodes.len());
    let crossing = crossing_counts(f);
    let mut ranges = Vec::new();
    let mut at = start;
    while end - at > size {
        // The narrowest cut in the second half of the slice; the later on a tie.
        let cut = (at + size / 2..=at + size).min_by_key(|&c| (crossing[c], std::cmp::Reverse(c))).unwrap_or(at + size);
        ranges.push(at..cut);
        at = cut;
    }
    ranges.push(at..end);
    ranges
}

/// For each cut position c (a region boundary before statement c): how many
/// values defined before c are read at or after it.
fn crossing_counts(f: &Func) -> Vec<usize> {
    let n = f.nodes.len();
    let mut last_use = vec![0usize; n];
    for (i, node) in f.nodes.iter().enumerate() {
        for o in &node.operands {
            if let Operand::Value(v) = o {
                last_use[v.0 as usize] = i;
            }
        }
    }
    for r in &f.results {
        last_use[r.0 as usize] = n;
    }
    // Value v crosses every cut in (v, last_use[v]].
    let mut delta = vec![0isize; n + 2];
    for (v, &u) in last_use.iter().enumerate() {
        if u > v {
            delta[v + 1] += 1;
            delta[u + 1] -= 1;
        }
    }
    let mut counts = Vec::with_capacity(n + 1);
    let mut running = 0isize;
    for d in delta.iter().take(n + 1) {
        running += d;
        counts.push(running.max(0) as usize);
    }
    counts
}

/// The region of `f` made of the statements in `range`.
pub fn region(f: &Func, range: std::ops::Range<usize>) -> Result<Region, CompileError> {
    let mut builder = Builder::new(&f.name);
    let mut local: HashMap<u32, ValueId> = HashMap::new();
    let mut inputs = Vec::new();
    for node in &f.nodes[range.clone()] {
        for o in &node.operands {
            if let Operand::Value(v) = o {
                if (v.0 as usize) < range.start && !local.contains_key(&v.0) {
                    let outside = f.node(*v);
                    let p = builder.param(&outside.name, outside.ty.clone(), outside.span.clone()).map_err(internal)?;
                    local.insert(v.0, p);
                    inputs.push(*v);
                }
            }
        }
    }
    for (i, node) in f.nodes.iter().enumerate().take(range.end).skip(range.start) {
        let args: Vec<Operand> = node.operands.iter().map(|o| remap(o, &local)).collect();
        let id = builder.push_op(&node.name, &node.op, &args, Some(&node.ty), node.span.clone()).map_err(internal)?;
        local.insert(i as u32, id);
    }
    let outputs = outputs(f, range);
    let results = outputs.iter().map(|v| local[&v.0]).collect();
    Ok(Region { func: builder.finish(results), inputs, outputs })
}

/// The values of `range` that are returned (first, in result order) or read
/// after it.
fn outputs(f: &Func, range: std::ops::Range<usize>) -> Vec<ValueId> {
    let inside = |v: &ValueId| range.contains(&(v.0 as usize));
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<ValueId> = f.results.iter().filter(|v| inside(v)).filter(|v| seen.insert(v.0)).copied().collect();
    for node in &f.nodes[range.end..] {
        for o in &node.operands {
            if let Operand::Value(v) = o {
                if inside(v) && seen.insert(v.0) {
                    out.push(*v);
                }
            }
        }
    }
    out
}

/// An operand with its value renumbered.
pub fn remap(o: &Operand, map: &HashMap<u32, ValueId>) -> Operand {
    match o {
        Operand::Value(v) => Operand::Value(map[&v.0]),
        Operand::Scalar(x) => Operand::Scalar(*x),
    }
}

fn internal(e: crate::ir::check::BuildError) -> CompileError {
    CompileError::internal(format!("a region does not check: {e}"))
}
