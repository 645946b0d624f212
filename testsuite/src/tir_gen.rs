//! Random valid `.tir` programs, for round-trip tests now and differential testing
//! of the whole compiler later (compile, simulate, compare with the evaluator).
//!
//! [`random_tir`] builds, from a seed, source text that must check: every op of
//! the language appears across seeds, with random dtypes, shapes, attributes,
//! scalar literals (including infinities), broadcasting and multiple results.
//! [`tir_from_bytes`] makes the same choices from a byte string, so a fuzzer's
//! mutations steer the generator (`fuzz/`, target `compile_verify`).

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

const FLOATS: [&str; 5] = ["f32", "f16", "bf16", "f8e4m3", "f8e5m2"];
const INTS: [&str; 2] = ["i8", "i32"];

#[derive(Clone)]
struct Val {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
}

struct Gen<R> {
    rng: R,
    params: Vec<Val>,
    values: Vec<Val>,
    body: Vec<String>,
    next: usize,
}

fn ty(dtype: &str, shape: &[u64]) -> String {
    format!("{dtype}[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

impl<R: Rng> Gen<R> {
    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("v{}", self.next)
    }

    fn param(&mut self, dtype: &'static str, shape: Vec<u64>) -> Val {
        let v = Val { name: format!("p{}", self.params.len()), dtype, shape };
        self.params.push(v.clone());
        self.values.push(v.clone());
        v
    }

    fn shape(&mut self, rank: usize) -> Vec<u64> {
        (0..rank).map(|_| self.rng.random_range(1..5)).collect()
    }

    fn pick_float(&mut self) -> Val {
        // Rank 0 values (full reductions) stay results; operands have rank >= 1.
        let floats: Vec<Val> =
            self.values.iter().filter(|v| FLOATS.contains(&v.dtype) && !v.shape.is_empty()).cloned().collect();
        if floats.is_empty() {
            let dt = FLOATS[self.rng.random_range(0..FLOATS.len())];
            let rank = self.rng.random_range(1..4);
            let s = self.shape(rank);
            return self.param(dt, s);
        }
        floats[self.rng.random_range(0..floats.len())].clone()
    }

    /// An integer value (i8 or i32) of rank >= 1, made a parameter when none exists.
    fn pick_int(&mut self) -> Val {
        let ints: Vec<Val> =
            self.values.iter().filter(|v| INTS.contains(&v.dtype) && !v.shape.is_empty()).cloned().collect();
        if ints.is_empty() || self.rng.random_bool(0.2) {
            let dt = INTS[self.rng.random_range(0..INTS.len())];
            let rank = self.rng.random_range(1..4);
            let s = self.shape(rank);
            return self.param(dt, s);
        }
        ints[self.rng.random_range(0..ints.len())].clone()
    }

    /// A shape `shape` broadcasts to: some dims set to 1, maybe leading dims dropped
    /// (down to rank 0).
    fn broadcast_of(&mut self, shape: &[u64]) -> Vec<u64> {
        let drop = self.rng.random_range(0..=shape.len());
        shape[drop..].iter().map(|&d| if self.rng.random_bool(0.3) { 1 } else { d }).collect()
    }

    /// `v` and a partner of its dtype (a literal, or a parameter that broadcasts
    /// to it), in either order.
    fn with_partner(&mut self, v: &Val) -> (String, String) {
        let other = if self.rng.random_bool(0.5) {
            self.literal_for(v.dtype)
        } else {
            let s = self.broadcast_of(&v.shape);
            format!("%{}", self.param(v.dtype, s).name)
        };
        if self.rng.random_bool(0.5) {
            (format!("%{}", v.name), other)
        } else {
            (other, format!("%{}", v.name))
        }
    }

    /// An i1 value of a shape that broadcasts to `v`'s (with `full`, of its shape):
    /// a comparison of `v` with a partner or a literal, an i1 parameter, or a cast.
    fn condition(&mut self, v: &Val, full: bool) -> String {
        let kinds = ["lt", "le", "gt", "ge", "eq"];
        let k = kinds[self.rng.random_range(0..kinds.len())];
        let c = self.fresh();
        match self.rng.random_range(0..4) {
            0 => {
                let s = if full { v.shape.clone() } else { self.broadcast_of(&v.shape) };
                return format!("%{}", self.param("i1", s).name);
            }
            1 => {
                let s = self.broadcast_of(&v.shape);
                let other = self.param(v.dtype, s);
                self.body.push(format!("  %{c} = compare(%{}, %{}) {{kind = {k}}}", v.name, other.name));
            }
            2 => self.body.push(format!("  %{c} = cast(%{}) {{to = i1}}", v.name)),
            _ => {
                let lit = self.literal_for(v.dtype);
                self.body.push(format!("  %{c} = compare({lit}, %{}) {{kind = {k}}}", v.name));
            }
        }
        self.values.push(Val { name: c.clone(), dtype: "i1", shape: v.shape.clone() });
        format!("%{c}")
    }

    /// Integer elementwise ops, int <-> float casts, tensor selects and iotas of
    /// any rank and axis.
    fn integer_or_boolean_step(&mut self, annotate: bool) {
        match self.rng.random_range(0..5) {
            0 => {
                let v = self.pick_int();
                let ops = ["add", "sub", "mul", "max", "min", "div"];
                let op = ops[self.rng.random_range(0..ops.len())];
                let (a, b) = self.with_partner(&v);
                if self.rng.random_bool(0.2) {
                    // An integer reduction over the last axis or all of them.
                    let r = v.shape.len();
                    let kind = if self.rng.random_bool(0.5) { "reduce_sum" } else { "reduce_max" };
                    let (axes, shape) = if self.rng.random_bool(0.5) {
                        ((r - 1).to_string(), v.shape[..r - 1].to_vec())
                    } else {
                        ((0..r).map(|a| a.to_string()).collect::<Vec<_>>().join(", "), Vec::new())
                    };
                    self.emit(format!("{kind}(%{}) {{axes = [{axes}]}}", v.name), v.dtype, shape, annotate);
                    return;
                }
                let rhs =
                    if self.rng.random_bool(0.2) { format!("neg(%{})", v.name) } else { format!("{op}({a}, {b})") };
                self.emit(rhs, v.dtype, v.shape, annotate);
            }
            1 => {
                // Int <-> float, either way.
                let (v, to) = if self.rng.random_bool(0.5) {
                    (self.pick_int(), FLOATS[self.rng.random_range(0..FLOATS.len())])
                } else {
                    (self.pick_float(), INTS[self.rng.random_range(0..INTS.len())])
                };
                self.emit(format!("cast(%{}) {{to = {to}}}", v.name), to, v.shape, annotate);
            }
            2 => {
                // select(cond, a, b) with tensors or literals on either side.
                let v = if self.rng.random_bool(0.7) { self.pick_float() } else { self.pick_int() };
                let c = self.condition(&v, false);
                let (a, b) = self.with_partner(&v);
                self.emit(format!("select({c}, {a}, {b})"), v.dtype, v.shape, annotate);
            }
            3 => {
                // A comparison kept as a value (returned, or cast back to a number).
                let v = if self.rng.random_bool(0.7) { self.pick_float() } else { self.pick_int() };
                let c = self.condition(&v, true);
                let to = ["f32", "bf16", "i8", "i32"][self.rng.random_range(0..4)];
                self.emit(format!("cast({c}) {{to = {to}}}"), to, v.shape, annotate);
            }
            _ => {
                let rank = self.rng.random_range(1..5);
                let shape = self.shape(rank);
                let dt = ["i32", "i8", "f32", "bf16"][self.rng.random_range(0..4)];
                let axis =
                    self.rng.random_range(0..rank) as i64 - if self.rng.random_bool(0.3) { rank as i64 } else { 0 };
                self.emit(format!("iota() {{axis = {axis}}}"), dt, shape, true);
            }
        }
    }

    /// A literal that fits `dtype`: integers for i8/i32, any float otherwise.
    fn literal_for(&mut self, dtype: &str) -> String {
        match dtype {
            "i8" => self.rng.random_range(-128..128).to_string(),
            "i32" => [self.rng.random_range(-300..300), self.rng.random_range(-(1 << 20)..(1 << 20))]
                [self.rng.random_range(0..2)]
            .to_string(),
            _ => self.literal(),
        }
    }

    fn literal(&mut self) -> String {
        match self.rng.random_range(0..6) {
            0 => "inf".into(),
            1 => "-inf".into(),
            2 => "2".into(),
            _ => format!("{:?}", (self.rng.random::<f64>() - 0.5) * 8.0),
        }
    }

    fn emit(&mut self, rhs: String, dtype: &'static str, shape: Vec<u64>, annotate: bool) {
        let name = self.fresh();
        let ann = if annotate { format!(" : {}", ty(dtype, &shape)) } else { String::new() };
        self.body.push(format!("  %{name} = {rhs}{ann}"));
        self.values.push(Val { name, dtype, shape });
    }

    fn step(&mut self) {
        let v = self.pick_float();
        let r = v.shape.len();
        let annotate = self.rng.random_bool(0.3);
        match self.rng.random_range(0..20) {
            16..=18 => self.integer_or_boolean_step(annotate),
            19 => {
                // An embedding-style lookup along a random axis of a float or integer table.
                let dt = ["f32", "bf16", "f8e4m3", "i8", "i32"][self.rng.random_range(0..5)];
                let rank = self.rng.random_range(1..4);
                let table_shape = self.shape(rank);
                let table = self.param(dt, table_shape.clone());
                let idx_rank = self.rng.random_range(0..3);
                let idx_shape = self.shape(idx_rank);
                let ids = self.param("i32", idx_shape.clone());
                let axis = self.rng.random_range(0..rank);
                let shape: Vec<u64> =
                    table_shape[..axis].iter().chain(&idx_shape).chain(&table_shape[axis + 1..]).copied().collect();
                let written = if self.rng.random_bool(0.3) { axis as i64 - rank as i64 } else { axis as i64 };
                let attr = if axis == 0 && self.rng.random_bool(0.5) {
                    String::new()
                } else {
                    format!(" {{axis = {written}}}")
                };
                self.emit(format!("gather(%{}, %{}){attr}", table.name, ids.name), dt, shape, annotate);
            }
            0 => {
                let ops = ["neg", "exp", "tanh", "erf", "sigmoid", "rsqrt", "sqrt", "recip", "relu", "silu", "log"];
                let op = ops[self.rng.random_range(0..ops.len())];
                self.emit(format!("{op}(%{})", v.name), v.dtype, v.shape, annotate);
            }
            1 | 2 => {
                let ops = ["add", "sub", "mul", "div", "max", "min"];
                let op = ops[self.rng.random_range(0..ops.len())];
                let other = if self.rng.random_bool(0.5) {
                    self.literal()
                } else {
                    // A broadcastable partner: the same shape with some dims set to 1, maybe fewer dims.
                    let drop = self.rng.random_range(0..=r);
                    let s: Vec<u64> =
                        v.shape[drop..].iter().map(|&d| if self.rng.random_bool(0.3) { 1 } else { d }).collect();
                    format!("%{}", self.param(v.dtype, s).name)
                };
                let (a, b) = if self.rng.random_bool(0.5) {
                    (format!("%{}", v.name), other)
                } else {
                    (other, format!("%{}", v.name))
                };
                self.emit(format!("{op}({a}, {b})"), v.dtype, v.shape, annotate);
            }
            3 => {
                let mut perm: Vec<usize> = (0..r).collect();
                for i in (1..r).rev() {
                    let j = self.rng.random_range(0..=i);
                    perm.swap(i, j);
                }
                let shape = perm.iter().map(|&i| v.shape[i]).collect();
                let p = perm.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
                self.emit(format!("transpose(%{}) {{perm = [{p}]}}", v.name), v.dtype, shape, annotate);
            }
            4 => {
                let n: u64 = v.shape.iter().product();
                let shape = if self.rng.random_bool(0.5) { vec![n] } else { v.shape.iter().rev().copied().collect() };
                let s = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
                self.emit(format!("reshape(%{}) {{shape = [{s}]}}", v.name), v.dtype, shape, annotate);
            }
            5 => {
                let axes: Vec<usize> = (0..r).filter(|_| self.rng.random_bool(0.5)).collect();
                let axes = if axes.is_empty() { vec![r - 1] } else { axes };
                let keep = self.rng.random_bool(0.5);
                let shape = (0..r)
                    .filter_map(|i| if axes.contains(&i) { keep.then_some(1) } else { Some(v.shape[i]) })
                    .collect();
                let kind = if self.rng.random_bool(0.5) { "reduce_sum" } else { "reduce_max" };
                let a = axes.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
                self.emit(format!("{kind}(%{}) {{axes = [{a}], keepdims = {keep}}}", v.name), v.dtype, shape, annotate);
            }
            6 => {
                let axis = self.rng.random_range(0..r) as i64 - if self.rng.random_bool(0.5) { r as i64 } else { 0 };
                self.emit(format!("softmax(%{}) {{axis = {axis}}}", v.name), v.dtype, v.shape, annotate);
            }
            7 => {
                let to = FLOATS[self.rng.random_range(0..FLOATS.len())];
                self.emit(format!("cast(%{}) {{to = {to}}}", v.name), to, v.shape, annotate);
            }
            8 => {
                let (m, k) = if r >= 2 { (v.shape[r - 2], v.shape[r - 1]) } else { (1, v.shape[0]) };
                let a = if r >= 2 { v.clone() } else { self.param(v.dtype, vec![m, k]) };
                let n = self.rng.random_range(1..5);
                let b = self.param(a.dtype, vec![k, n]);
                let mut shape = a.shape.clone();
                let last = shape.len() - 1;
                shape[last] = n;
                let widen = self.rng.random_bool(0.5);
                let (dt, ann) = if widen { ("f32", true) } else { (a.dtype, annotate) };
                // Sometimes the same product with a stored-transposed operand.
                let (b, flags) = if self.rng.random_bool(0.3) {
                    (self.param(a.dtype, vec![n, k]), " {transpose_a = false, transpose_b = true}")
                } else {
                    (b, "")
                };
                self.emit(format!("matmul(%{}, %{}){flags}", a.name, b.name), dt, shape, ann);
            }
            9 => {
                let start: Vec<u64> = v.shape.iter().map(|&d| self.rng.random_range(0..d)).collect();
                let stop: Vec<u64> =
                    v.shape.iter().zip(&start).map(|(&d, &s)| self.rng.random_range(s + 1..=d)).collect();
                let shape = start.iter().zip(&stop).map(|(a, b)| b - a).collect();
                let f = |x: &[u64]| x.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
                self.emit(
                    format!("slice(%{}) {{start = [{}], stop = [{}]}}", v.name, f(&start), f(&stop)),
                    v.dtype,
                    shape,
                    annotate,
                );
            }
            10 => {
                let axis = self.rng.random_range(0..r);
                let mut shape = v.shape.clone();
                shape[axis] *= 2;
                self.emit(format!("concat(%{}, %{}) {{axis = {axis}}}", v.name, v.name), v.dtype, shape, annotate);
            }
            11 => {
                let kinds = ["lt", "le", "gt", "ge", "eq"];
                let k = kinds[self.rng.random_range(0..kinds.len())];
                let lit = self.literal();
                let c = self.fresh();
                self.body.push(format!("  %{c} = compare(%{}, {lit}) {{kind = {k}}}", v.name));
                let lit2 = self.literal();
                self.emit(format!("select(%{c}, %{}, {lit2})", v.name), v.dtype, v.shape, annotate);
            }
            12 => {
                let axis = self.rng.random_range(0..r);
                let n = v.shape[axis];
                let g = self.param(v.dtype, vec![n]);
                if self.rng.random_bool(0.5) {
                    let b = self.param(v.dtype, vec![n]);
                    self.emit(
                        format!("layernorm(%{}, %{}, %{}) {{axis = {axis}}}", v.name, g.name, b.name),
                        v.dtype,
                        v.shape,
                        annotate,
                    );
                } else {
                    self.emit(
                        format!("rmsnorm(%{}, %{}) {{axis = {axis}, eps = 1e-6}}", v.name, g.name),
                        v.dtype,
                        v.shape,
                        annotate,
                    );
                }
            }
            13 => {
                let approx = if self.rng.random_bool(0.5) { "tanh" } else { "none" };
                self.emit(format!("gelu(%{}) {{approx = \"{approx}\"}}", v.name), v.dtype, v.shape, annotate);
            }
            14 => {
                let shape = self.shape(2);
                let dt = ["i32", "f32", "bf16"][self.rng.random_range(0..3)];
                let axis = self.rng.random_range(0..2);
                self.emit(format!("iota() {{axis = {axis}}}"), dt, shape.clone(), true);
                let c = self.rng.random_range(-3..4);
                self.emit(format!("const() {{value = {c}}}"), dt, shape, true);
            }
            _ => {
                let dt = FLOATS[self.rng.random_range(0..3)];
                let (hk, group, sq, sk, d) = (
                    self.rng.random_range(1..3),
                    self.rng.random_range(1..3),
                    self.rng.random_range(1..4),
                    self.rng.random_range(1..4),
                    self.rng.random_range(1..4),
                );
                // Sometimes a batch dim, a value head dim of its own, a scale.
                let batch: Vec<u64> =
                    if self.rng.random_bool(0.3) { vec![self.rng.random_range(1..3)] } else { vec![] };
                let dv = if self.rng.random_bool(0.3) { self.rng.random_range(1..4) } else { d };
                let dims = |h: u64, s: u64, e: u64| batch.iter().copied().chain([h, s, e]).collect::<Vec<u64>>();
                let q = self.param(dt, dims(hk * group, sq, d));
                let k = self.param(dt, dims(hk, sk, d));
                let vv = self.param(dt, dims(hk, sk, dv));
                let causal = self.rng.random_bool(0.5);
                // An additive mask broadcasting to the scores (never along the keys).
                let mask = if self.rng.random_bool(0.4) {
                    let scores = dims(hk * group, sq, sk);
                    let r = scores.len();
                    let drop = self.rng.random_range(0..r);
                    let shape: Vec<u64> =
                        (drop..r).map(|i| if i + 1 < r && self.rng.random_bool(0.5) { 1 } else { scores[i] }).collect();
                    let mdt = if self.rng.random_bool(0.5) { "f32" } else { dt };
                    format!(", %{}", self.param(mdt, shape).name)
                } else {
                    String::new()
                };
                let scale = if self.rng.random_bool(0.3) { ", scale = 0.5" } else { "" };
                let mut out = q.shape.clone();
                *out.last_mut().expect("rank 3 or 4") = dv;
                self.emit(
                    format!("attention(%{}, %{}, %{}{mask}) {{causal = {causal}{scale}}}", q.name, k.name, vv.name),
                    dt,
                    out,
                    annotate,
                );
            }
        }
    }
}

/// A random valid `.tir` function, determined by `seed`.
pub fn random_tir(seed: u64) -> String {
    generate(StdRng::seed_from_u64(seed), &format!("seed {seed}"))
}

/// A valid `.tir` function whose every choice is read from `data` (then from a
/// fixed stream once `data` runs out): any byte string gives a program that
/// checks, and similar byte strings give similar programs.
pub fn tir_from_bytes(data: &[u8]) -> String {
    generate(ByteRng { data, at: 0, tail: data.len() as u64 }, &format!("{} bytes", data.len()))
}

fn generate<R: Rng>(rng: R, origin: &str) -> String {
    let mut g = Gen { rng, params: Vec::new(), values: Vec::new(), body: Vec::new(), next: 0 };
    for _ in 0..g.rng.random_range(1..3) {
        let dt = FLOATS[g.rng.random_range(0..FLOATS.len())];
        let rank = g.rng.random_range(1..4);
        let s = g.shape(rank);
        g.param(dt, s);
    }
    for _ in 0..g.rng.random_range(1..8) {
        g.step();
    }
    let count = g.rng.random_range(1..3).min(g.values.len());
    let results: Vec<Val> = g.values[g.values.len() - count..].to_vec();
    let params: Vec<String> = g.params.iter().map(|p| format!("%{}: {}", p.name, ty(p.dtype, &p.shape))).collect();
    let rets: Vec<String> = results.iter().map(|v| ty(v.dtype, &v.shape)).collect();
    let rets = if rets.len() == 1 { rets[0].clone() } else { format!("({})", rets.join(", ")) };
    let names: Vec<String> = results.iter().map(|v| format!("%{}", v.name)).collect();
    format!(
        "// generated ({origin})\nfunc @random({}) -> {} {{\n{}\n  return {}\n}}\n",
        params.join(", "),
        rets,
        g.body.join("\n"),
        names.join(", ")
    )
}

/// Random words read from a byte string, then from a splitmix64 stream (so
/// rejection sampling always ends).
struct ByteRng<'a> {
    data: &'a [u8],
    at: usize,
    tail: u64,
}

impl rand::TryRng for ByteRng<'_> {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        if self.at < self.data.len() {
            let mut word = [0u8; 8];
            let n = (self.data.len() - self.at).min(8);
            word[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            return Ok(u64::from_le_bytes(word));
        }
        self.tail = self.tail.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.tail;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let word = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}
