//! Programs the benchmarks compile (shared by `src/bin/*-bench.rs`): Llama-
//! and BERT-style layers written the way frameworks export them, and attention.

/// The shapes of a Llama-style layer.
#[derive(Clone, Copy)]
pub struct Shape {
    /// Tokens (prefill) or 1 (decode).
    pub seq: u64,
    /// Model width.
    pub hidden: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads (grouped-query attention when fewer).
    pub kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// Feed-forward width.
    pub ffn: u64,
}

/// `layers` stacked decoder layers (each with its own weights; RoPE tables shared).
pub fn llama(s: Shape, layers: usize) -> String {
    let Shape { seq, hidden, heads: h, kv_heads: kv, head_dim: d, ffn } = s;
    let half = d / 2;
    let mut params = vec![
        format!("%x0: bf16[{seq}, {hidden}]"),
        format!("%cos: bf16[{seq}, 1, {d}]"),
        format!("%sin: bf16[{seq}, 1, {d}]"),
    ];
    let mut body = String::new();
    for l in 0..layers {
        let w = |name: &str, a: u64, b: u64| format!("%{name}{l}: bf16[{a}, {b}]");
        params.extend([
            format!("%g1_{l}: bf16[{hidden}]"),
            w("wq", hidden, h * d),
            w("wk", hidden, kv * d),
            w("wv", hidden, kv * d),
            w("wo", h * d, hidden),
            format!("%g2_{l}: bf16[{hidden}]"),
            w("wg", hidden, ffn),
            w("wu", hidden, ffn),
            w("wd", ffn, hidden),
        ]);
        let rope = |x: &str, n: u64| {
            format!(
                "  %{x}a{l} = slice(%{x}3_{l}) {{start = [0, 0, 0], stop = [{seq}, {n}, {half}]}}
  %{x}b{l} = slice(%{x}3_{l}) {{start = [0, 0, {half}], stop = [{seq}, {n}, {d}]}}
  %{x}n{l} = neg(%{x}b{l})
  %{x}r{l} = concat(%{x}n{l}, %{x}a{l}) {{axis = 2}}
  %{x}c{l} = mul(%{x}3_{l}, %cos)
  %{x}s{l} = mul(%{x}r{l}, %sin)
  %{x}p{l} = add(%{x}c{l}, %{x}s{l})
  %{x}h{l} = transpose(%{x}p{l}) {{perm = [1, 0, 2]}}
"
            )
        };
        body += &format!(
            "  %h{l} = rmsnorm(%x{l}, %g1_{l}) {{axis = -1, eps = 1e-5}}
  %q{l} = matmul(%h{l}, %wq{l})
  %k{l} = matmul(%h{l}, %wk{l})
  %v{l} = matmul(%h{l}, %wv{l})
  %q3_{l} = reshape(%q{l}) {{shape = [{seq}, {h}, {d}]}}
  %k3_{l} = reshape(%k{l}) {{shape = [{seq}, {kv}, {d}]}}
  %v3_{l} = reshape(%v{l}) {{shape = [{seq}, {kv}, {d}]}}
{}{}  %vh{l} = transpose(%v3_{l}) {{perm = [1, 0, 2]}}
  %o{l} = attention(%qh{l}, %kh{l}, %vh{l}) {{causal = true}}
  %om{l} = transpose(%o{l}) {{perm = [1, 0, 2]}}
  %o2_{l} = reshape(%om{l}) {{shape = [{seq}, {}]}}
  %a{l} = matmul(%o2_{l}, %wo{l})
  %r{l} = add(%x{l}, %a{l})
  %n{l} = rmsnorm(%r{l}, %g2_{l}) {{axis = -1, eps = 1e-5}}
  %gt{l} = matmul(%n{l}, %wg{l})
  %up{l} = matmul(%n{l}, %wu{l})
  %sg{l} = silu(%gt{l})
  %m{l} = mul(%sg{l}, %up{l})
  %d{l} = matmul(%m{l}, %wd{l})
  %x{} = add(%r{l}, %d{l})
",
            rope("q", h),
            rope("k", kv),
            h * d,
            l + 1
        );
    }
    format!("func @layers({}) -> bf16[{seq}, {hidden}] {{\n{body}  return %x{layers}\n}}\n", params.join(", "))
}

/// The decode step of a Llama-style layer: one token against a KV cache of
/// `cache` tokens, grown by a concat and returned (the shape of
/// `testsuite/cases/layers/llama-decode-step.tir`).
pub fn llama_decode(s: Shape, cache: u64) -> String {
    let Shape { hidden, heads: h, kv_heads: kv, head_dim: d, ffn, .. } = s;
    let (half, all) = (d / 2, cache + 1);
    format!(
        "func @step(%x: bf16[1, {hidden}], %g1: bf16[{hidden}], %wq: bf16[{hidden}, {hq}], %wk: bf16[{hidden}, {hk}], %wv: bf16[{hidden}, {hk}], %kc: bf16[{cache}, {kv}, {d}], %vc: bf16[{cache}, {kv}, {d}], %cos: bf16[1, 1, {d}], %sin: bf16[1, 1, {d}], %wo: bf16[{hq}, {hidden}], %g2: bf16[{hidden}], %wg: bf16[{hidden}, {ffn}], %wu: bf16[{hidden}, {ffn}], %wd: bf16[{ffn}, {hidden}]) -> (bf16[1, {hidden}], bf16[{all}, {kv}, {d}], bf16[{all}, {kv}, {d}]) {{
  %h = rmsnorm(%x, %g1) {{axis = -1, eps = 1e-5}}
  %q = matmul(%h, %wq)
  %k = matmul(%h, %wk)
  %v = matmul(%h, %wv)
  %q3 = reshape(%q) {{shape = [1, {h}, {d}]}}
  %k3 = reshape(%k) {{shape = [1, {kv}, {d}]}}
  %v3 = reshape(%v) {{shape = [1, {kv}, {d}]}}
  %q1 = slice(%q3) {{start = [0, 0, 0], stop = [1, {h}, {half}]}}
  %q2 = slice(%q3) {{start = [0, 0, {half}], stop = [1, {h}, {d}]}}
  %nq2 = neg(%q2)
  %qr = concat(%nq2, %q1) {{axis = 2}}
  %qc = mul(%q3, %cos)
  %qs = mul(%qr, %sin)
  %qp = add(%qc, %qs)
  %k1 = slice(%k3) {{start = [0, 0, 0], stop = [1, {kv}, {half}]}}
  %k2 = slice(%k3) {{start = [0, 0, {half}], stop = [1, {kv}, {d}]}}
  %nk2 = neg(%k2)
  %kr = concat(%nk2, %k1) {{axis = 2}}
  %kcs = mul(%k3, %cos)
  %ks = mul(%kr, %sin)
  %kp = add(%kcs, %ks)
  %kall = concat(%kc, %kp) {{axis = 0}}
  %vall = concat(%vc, %v3) {{axis = 0}}
  %qh = transpose(%qp) {{perm = [1, 0, 2]}}
  %kh = transpose(%kall) {{perm = [1, 0, 2]}}
  %vh = transpose(%vall) {{perm = [1, 0, 2]}}
  %o = attention(%qh, %kh, %vh) {{causal = true}}
  %om = transpose(%o) {{perm = [1, 0, 2]}}
  %o2 = reshape(%om) {{shape = [1, {hq}]}}
  %a = matmul(%o2, %wo)
  %r = add(%x, %a)
  %h2 = rmsnorm(%r, %g2) {{axis = -1, eps = 1e-5}}
  %gt = matmul(%h2, %wg)
  %up = matmul(%h2, %wu)
  %sg = silu(%gt)
  %m = mul(%sg, %up)
  %d = matmul(%m, %wd)
  %y = add(%r, %d)
  return %y, %kall, %vall
}}
",
        hq = h * d,
        hk = kv * d,
    )
}

/// A BERT post-norm encoder layer (the shape of
/// `testsuite/cases/layers/bert-encoder.tir`): batch `b`, `seq` tokens.
pub fn bert(b: u64, seq: u64, hidden: u64, heads: u64, ffn: u64) -> String {
    let d = hidden / heads;
    let scale = (d as f64).sqrt();
    let w = |name: &str, a: u64, c: u64| format!("%{name}: bf16[{a}, {c}]");
    let v = |name: &str, n: u64| format!("%{name}: bf16[{n}]");
    let params = [
        format!("%x: bf16[{b}, {seq}, {hidden}]"),
        format!("%keep: i1[{b}, 1, 1, {seq}]"),
        w("wq", hidden, hidden),
        v("bq", hidden),
        w("wk", hidden, hidden),
        v("bk", hidden),
        w("wv", hidden, hidden),
        v("bv", hidden),
        w("wo", hidden, hidden),
        v("bo", hidden),
        v("g1", hidden),
        v("b1", hidden),
        w("w1", hidden, ffn),
        v("bf1", ffn),
        w("w2", ffn, hidden),
        v("bf2", hidden),
        v("g2", hidden),
        v("b2", hidden),
    ];
    let split = |x: &str| {
        format!(
            "  %{x}0 = matmul(%x, %w{x})\n  %{x}1 = add(%{x}0, %b{x})\n  %{x}2 = reshape(%{x}1) {{shape = [{b}, {seq}, {heads}, {d}]}}\n"
        )
    };
    format!(
        "func @bert_layer({}) -> bf16[{b}, {seq}, {hidden}] {{
  %kf = cast(%keep) {{to = f32}}
  %inv = sub(1.0, %kf)
  %mask = mul(%inv, -10000.0)
{}  %q = transpose(%q2) {{perm = [0, 2, 1, 3]}}
{}  %kt = transpose(%k2) {{perm = [0, 2, 3, 1]}}
{}  %v = transpose(%v2) {{perm = [0, 2, 1, 3]}}
  %s = matmul(%q, %kt) : f32[{b}, {heads}, {seq}, {seq}]
  %z = div(%s, {scale:?})
  %zm = add(%z, %mask)
  %p = softmax(%zm) {{axis = -1}}
  %pb = cast(%p) {{to = bf16}}
  %ctx = matmul(%pb, %v)
  %ct = transpose(%ctx) {{perm = [0, 2, 1, 3]}}
  %c = reshape(%ct) {{shape = [{b}, {seq}, {hidden}]}}
  %a0 = matmul(%c, %wo)
  %a1 = add(%a0, %bo)
  %r1 = add(%a1, %x)
  %h1 = layernorm(%r1, %g1, %b1) {{axis = -1, eps = 1e-12}}
  %f0 = matmul(%h1, %w1)
  %f1 = add(%f0, %bf1)
  %f2 = gelu(%f1)
  %f3 = matmul(%f2, %w2)
  %f4 = add(%f3, %bf2)
  %r2 = add(%f4, %h1)
  %y = layernorm(%r2, %g2, %b2) {{axis = -1, eps = 1e-12}}
  return %y
}}
",
        params.join(", "),
        split("q"),
        split("k"),
        split("v")
    )
}

/// One attention op: `hq` query heads over `hk` KV heads, `sq` queries, `sk`
/// keys, head dim `d`.
pub fn attention(name: &str, hq: u64, hk: u64, sq: u64, sk: u64, d: u64, causal: bool) -> String {
    format!(
        "func @{name}(%q: bf16[{hq}, {sq}, {d}], %k: bf16[{hk}, {sk}, {d}], %v: bf16[{hk}, {sk}, {d}]) -> bf16[{hq}, {sq}, {d}] {{\n  %o = attention(%q, %k, %v) {{causal = {causal}}}\n  return %o\n}}\n"
    )
}

/// `C = cast(A . B : f32, bf16)` for `[m, k] x [k, n]` bf16 operands.
pub fn gemm(m: u64, k: u64, n: u64) -> String {
    format!(
        "func @gemm(%a: bf16[{m}, {k}], %b: bf16[{k}, {n}]) -> bf16[{m}, {n}] {{\n  %c = matmul(%a, %b) : f32[{m}, {n}]\n  %y = cast(%c) {{to = bf16}}\n  return %y\n}}\n"
    )
}
