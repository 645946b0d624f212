"""Generates the importer's test models and their onnxruntime references (run
from this folder; needs onnx 1.22, onnxruntime and numpy). The committed files
are what the tests read:

- bert-tiny.onnx (opset 17, dynamic batch and sequence): a one-layer BERT
  encoder written as exporters write it: shape arithmetic
  (Shape/Gather/Unsqueeze/Concat/Reshape/ConstantOfShape/Equal/Where/Expand),
  word, position and token-type embeddings, the extended key-padding mask
  (1 - mask) * f32::MIN, heads split by Reshape + Transpose, scaled
  QK^T + mask, Softmax, LayerNormalization, the erf-GELU MLP, and mean pooling
  (ReduceSum / Clip / Div). Inputs bert-tiny-ids.npy, bert-tiny-mask.npy
  (batch 2, seq 24, the second row padded after 9 tokens); outputs
  bert-tiny-ref-tokens.npy and bert-tiny-ref-sentence.npy.
- ops23.onnx (opset 23): Gemm, Pow, ReduceMean with axes as input, Split,
  Slice, Where/Equal, Clip, Min/Max, unary ops, Concat, Squeeze/Unsqueeze,
  Flatten, Transpose, RMSNormalization, Softmax, ReduceMax, Not/And/Or,
  Greater/Less, Cast (bool -> int -> float), Gather of constant rows, Expand. Input ops23-x.npy,
  outputs ops23-ref-<name>.npy.
- attention23.onnx (opset 23): Attention with grouped KV heads, a boolean
  mask and a scale (4-D), and causal with 3-D inputs and head counts; Trilu
  upper and lower on a runtime value and on a constant. Inputs
  attention23-<name>.npy, outputs attention23-ref-<name>.npy.
- unsupported.onnx: two Conv, one Mod and a com.microsoft op (one error lists them).
- cast-trunc.onnx (opset 21): Cast of floats to int32, int8 and int4 at run
  time (ONNX truncates toward zero). Input cast-trunc-x.npy, outputs
  cast-trunc-ref-<name>.npy from onnx's reference evaluator (onnxruntime
  returns no int4 to numpy).
- gelu-forms.onnx (opset 17): the exact GELU written out three ways (y1-y3:
  `x * (1 + erf(x / sqrt 2)) * 0.5`, `(x * 0.5) * (1 + erf(x * (1 / sqrt 2)))`,
  operands swapped), one with a wrong constant (y4) and one whose erf value is
  also an output (e5, y5). Input gelu-forms-x.npy, outputs
  gelu-forms-ref-<name>.npy.
"""
import numpy as np
import onnx
import onnx.reference
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)
F = TensorProto.FLOAT
I64 = TensorProto.INT64


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, value, dtype=np.float32):
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op, inputs, n_out=1, **attrs):
        self.count += 1
        outs = [f"/{op.lower()}_{self.count}_out{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"/layer/{op}_{self.count}", **attrs))
        return outs[0] if n_out == 1 else outs

    def constant(self, value):
        self.count += 1
        out = f"/Constant_{self.count}_output_0"
        t = numpy_helper.from_array(np.asarray(value), f"t{self.count}")
        self.nodes.append(helper.make_node("Constant", [], [out], value=t))
        return out


def save(g, name, inputs, outputs, opset):
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8 if opset < 21 else 10)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, f"{name}.onnx")
    return ort.InferenceSession(f"{name}.onnx", providers=["CPUExecutionProvider"])


def name_outputs(g, outs):
    """Renames each value of `outs` (name -> value) to its name in every node."""
    for k, v in outs.items():
        for n in g.nodes:
            n.output[:] = [k if o == v else o for o in n.output]
            n.input[:] = [k if i == v else i for i in n.input]


def save_refs(name, sess, feeds):
    """Saves onnxruntime's outputs for `feeds` as `<name>-ref-<output>.npy`."""
    for o, v in zip(sess.get_outputs(), sess.run(None, feeds)):
        np.save(f"{name}-ref-{o.name}.npy", v)


def bert_tiny():
    vocab, hidden, heads, ffn, max_pos = 50, 32, 4, 64, 64
    d = hidden // heads
    g = Graph()
    w = lambda *s: g.const(rng.normal(0, 0.2, s))
    ids, mask = "input_ids", "attention_mask"
    # seq = Gather(Shape(ids), 1); position ids = Slice(arange(max_pos), 0, seq)
    seq = g.op("Gather", [g.op("Shape", [ids]), g.constant(np.int64(1))], axis=0)
    seq1 = g.op("Unsqueeze", [seq, g.constant(np.array([0], np.int64))])
    pos = g.op("Slice", [g.const(np.arange(max_pos)[None], np.int64), g.constant(np.array([0], np.int64)), seq1,
                         g.constant(np.array([1], np.int64))])
    # token type ids: zeros expanded to ids' shape (ConstantOfShape / Where / Expand chain)
    shape = g.op("Shape", [ids])
    ones = g.op("ConstantOfShape", [g.op("Shape", [shape])], value=numpy_helper.from_array(np.array([1], np.int64)))
    eq = g.op("Equal", [shape, g.op("Mul", [ones, g.constant(np.int64(-1))])])
    tshape = g.op("Where", [eq, ones, shape])
    types = g.op("Expand", [g.const(np.zeros((1, 1)), np.int64), tshape])
    emb = g.op("Add", [g.op("Gather", [w(vocab, hidden), ids]), g.op("Gather", [w(2, hidden), types])])
    emb = g.op("Add", [emb, g.op("Gather", [w(max_pos, hidden), pos])])
    x = g.op("LayerNormalization", [emb, g.const(1 + rng.normal(0, 0.1, hidden)), w(hidden)], axis=-1, epsilon=1e-12)
    # extended mask: (1 - mask[:, None, None, :]) * f32::MIN
    m = g.op("Unsqueeze", [g.op("Unsqueeze", [mask, g.constant(np.array([1], np.int64))]), g.constant(np.array([2], np.int64))])
    m = g.op("Mul", [g.op("Sub", [g.constant(np.float32(1)), g.op("Cast", [m], to=F)]), g.constant(np.float32(np.finfo(np.float32).min))])

    def heads_of(t):
        b = g.op("Gather", [g.op("Shape", [t]), g.constant(np.int64(0))], axis=0)
        s = g.op("Gather", [g.op("Shape", [t]), g.constant(np.int64(1))], axis=0)
        un = lambda v: g.op("Unsqueeze", [v, g.constant(np.array([0], np.int64))])
        shp = g.op("Concat", [un(b), un(s), g.constant(np.array([heads], np.int64)), g.constant(np.array([d], np.int64))], axis=0)
        return g.op("Transpose", [g.op("Reshape", [t, shp])], perm=[0, 2, 1, 3])

    q, k, v = (heads_of(g.op("Add", [w(hidden), g.op("MatMul", [x, w(hidden, hidden)])])) for _ in range(3))
    s = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), g.constant(np.float32(np.sqrt(d)))])
    p = g.op("Softmax", [g.op("Add", [s, m])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.constant(np.array([0, 0, hidden], np.int64))])
    a = g.op("Add", [g.op("Add", [g.op("MatMul", [ctx, w(hidden, hidden)]), w(hidden)]), x])
    h = g.op("LayerNormalization", [a, g.const(1 + rng.normal(0, 0.1, hidden)), w(hidden)], axis=-1, epsilon=1e-12)
    f = g.op("Add", [g.op("MatMul", [h, w(hidden, ffn)]), w(ffn)])
    gelu = g.op("Mul", [g.op("Mul", [f, g.op("Add", [g.op("Erf", [g.op("Div", [f, g.constant(np.float32(np.sqrt(2)))])]),
                                                     g.constant(np.float32(1))])]), g.constant(np.float32(0.5))])
    o = g.op("Add", [g.op("Add", [g.op("MatMul", [gelu, w(ffn, hidden)]), w(hidden)]), h])
    tokens = g.op("LayerNormalization", [o, g.const(1 + rng.normal(0, 0.1, hidden)), w(hidden)], axis=-1, epsilon=1e-12)
    g.nodes[-1].output[0] = "last_hidden_state"
    # mean pooling over valid tokens
    mf = g.op("Cast", [g.op("Expand", [g.op("Unsqueeze", [mask, g.constant(np.array([-1], np.int64))]),
                                       g.op("Shape", ["last_hidden_state"])])], to=F)
    summed = g.op("ReduceSum", [g.op("Mul", ["last_hidden_state", mf]), g.constant(np.array([1], np.int64))], keepdims=0)
    count = g.op("Clip", [g.op("ReduceSum", [mf, g.constant(np.array([1], np.int64))], keepdims=0), g.constant(np.float32(1e-9))])
    g.op("Div", [summed, count])
    g.nodes[-1].output[0] = "sentence_embedding"
    sess = save(g, "bert-tiny",
                [helper.make_tensor_value_info(ids, I64, ["batch", "seq"]),
                 helper.make_tensor_value_info(mask, I64, ["batch", "seq"])],
                [helper.make_tensor_value_info("last_hidden_state", F, ["batch", "seq", hidden]),
                 helper.make_tensor_value_info("sentence_embedding", F, ["batch", hidden])], 17)
    ids_v = rng.integers(1, vocab, (2, 24)).astype(np.int64)
    mask_v = np.ones((2, 24), np.int64)
    mask_v[1, 9:] = 0
    ids_v[1, 9:] = 0
    tok, sen = sess.run(None, {ids: ids_v, mask: mask_v})
    for n, v in [("ids", ids_v), ("mask", mask_v), ("ref-tokens", tok), ("ref-sentence", sen)]:
        np.save(f"bert-tiny-{n}.npy", v)


def ops23():
    g = Graph()
    x = "x"  # [4, 6]
    outs = {}
    gemm = g.op("Gemm", [x, g.const(rng.normal(0, 0.5, (5, 6))), g.const(rng.normal(0, 0.5, 5))], alpha=0.5, beta=2.0, transB=1)
    outs["gemm"] = gemm
    sq = g.op("Pow", [x, g.constant(np.float32(2))])
    outs["mean_sq"] = g.op("ReduceMean", [sq, g.constant(np.array([-1], np.int64))], keepdims=1)
    outs["rsqrt"] = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [outs["mean_sq"], g.constant(np.float32(1))])])])
    a, b = g.op("Split", [x], n_out=2, axis=1, num_outputs=2)
    outs["split"] = g.op("Concat", [b, a], axis=0)
    outs["slice"] = g.op("Slice", [x, g.constant(np.array([1, -4], np.int64)), g.constant(np.array([3, 100], np.int64)),
                                   g.constant(np.array([0, 1], np.int64))])
    pos = g.op("Greater", [x, g.constant(np.float32(0))])
    small = g.op("Less", [x, g.constant(np.float32(0.5))])
    both = g.op("And", [pos, small])
    either = g.op("Or", [g.op("Not", [pos]), both])
    outs["where"] = g.op("Where", [either, g.op("Neg", [x]), g.op("Exp", [x])])
    outs["clip"] = g.op("Clip", [g.op("Max", [x, g.op("Min", [x, g.constant(np.float32(0.25))])]),
                                  g.constant(np.float32(-0.5)), g.constant(np.float32(0.75))])
    outs["act"] = g.op("Add", [g.op("Sigmoid", [x]), g.op("Mul", [g.op("Tanh", [x]), g.op("Relu", [x])])])
    un = g.op("Unsqueeze", [x, g.constant(np.array([0, 3], np.int64))])  # [1, 4, 6, 1]
    outs["squeeze_t"] = g.op("Transpose", [g.op("Squeeze", [un, g.constant(np.array([3], np.int64))])], perm=[0, 2, 1])
    outs["flatten"] = g.op("Flatten", [un], axis=2)
    outs["rms"] = g.op("RMSNormalization", [x, g.const(1 + rng.normal(0, 0.1, 6))], axis=-1, epsilon=1e-5)
    outs["softmax"] = g.op("Softmax", [x], axis=0)
    outs["max"] = g.op("ReduceMax", [x, g.constant(np.array([0], np.int64))], keepdims=0)
    outs["rows"] = g.op("Gather", [x, g.constant(np.array([3, 0, 3], np.int64))], axis=0)
    outs["expand"] = g.op("Expand", [g.op("ReduceSum", [x, g.constant(np.array([1], np.int64))], keepdims=1),
                                     g.constant(np.array([2, 4, 3], np.int64))])
    big = g.op("Cast", [g.op("Greater", [x, g.constant(np.float32(0.3))])], to=I64)
    outs["mask"] = g.op("Cast", [g.op("Equal", [big, g.constant(np.int64(0))])], to=F)
    name_outputs(g, outs)
    # Output shapes from onnx's own inference of a copy without them.
    probe = helper.make_model(helper.make_graph(g.nodes, "probe", [helper.make_tensor_value_info(x, F, [4, 6])],
                                                [helper.make_tensor_value_info(k, F, None) for k in outs], initializer=g.inits),
                              opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    ig = onnx.shape_inference.infer_shapes(probe).graph
    inferred = list(ig.value_info) + list(ig.output)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred if v.name in outs}
    sess = save(g, "ops23", [helper.make_tensor_value_info(x, F, [4, 6])],
                [helper.make_tensor_value_info(k, F, shapes[k]) for k in outs], 23)
    x_v = rng.normal(0, 1, (4, 6)).astype(np.float32)
    np.save("ops23-x.npy", x_v)
    save_refs("ops23", sess, {x: x_v})


def unsupported():
    g = Graph()
    y = g.op("Conv", ["x", g.const(rng.normal(0, 1, (1, 1, 3, 3)))])
    y = g.op("Conv", [y, g.const(rng.normal(0, 1, (1, 1, 3, 3)))])
    y = g.op("Mod", [y, g.constant(np.float32(2))], fmod=1)
    g.nodes.append(helper.make_node("FastGelu", [y], ["y"], name="/ms/FastGelu", domain="com.microsoft"))
    graph = helper.make_graph(g.nodes, "unsupported", [helper.make_tensor_value_info("x", F, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", F, [1, 1, 4, 4])], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    onnx.save(model, "unsupported.onnx")


def attention23():
    g = Graph()
    outs = {}
    outs["y4"] = g.op("Attention", ["q4", "k4", "v4", "mask4"], scale=0.3)
    outs["y3"] = g.op("Attention", ["q3", "k3", "v3"], is_causal=1, q_num_heads=4, kv_num_heads=2)
    outs["upper"] = g.op("Trilu", ["x", g.constant(np.int64(1))], upper=1)
    outs["lower"] = g.op("Add", ["x", g.op("Trilu", [g.const(rng.normal(0, 1, (4, 6))), g.constant(np.int64(-1))], upper=0)])
    name_outputs(g, outs)
    shapes = {"q4": [2, 4, 6, 8], "k4": [2, 2, 10, 8], "v4": [2, 2, 10, 8], "q3": [2, 5, 16], "k3": [2, 5, 8],
              "v3": [2, 5, 8], "x": [4, 6]}
    inputs = [helper.make_tensor_value_info(n, F, s) for n, s in shapes.items()]
    inputs.append(helper.make_tensor_value_info("mask4", TensorProto.BOOL, [6, 10]))
    out_shapes = {"y4": [2, 4, 6, 8], "y3": [2, 5, 16], "upper": [4, 6], "lower": [4, 6]}
    sess = save(g, "attention23", inputs, [helper.make_tensor_value_info(k, F, out_shapes[k]) for k in outs], 23)
    feeds = {n: rng.normal(0, 1, s).astype(np.float32) for n, s in shapes.items()}
    mask = rng.random((6, 10)) < 0.7
    mask[:, 0] = True
    feeds["mask4"] = mask
    for n, v in feeds.items():
        np.save(f"attention23-{n}.npy", v)
    save_refs("attention23", sess, feeds)


def gelu_forms():
    g = Graph()
    x = "x"  # [4, 16]
    sqrt2, half, one = np.float32(np.sqrt(2)), np.float32(0.5), np.float32(1)
    erf_plus_one = lambda v: g.op("Add", [g.op("Erf", [v]), g.constant(one)])
    outs = {}
    outs["y1"] = g.op("Mul", [g.op("Mul", [x, erf_plus_one(g.op("Div", [x, g.constant(sqrt2)]))]), g.constant(half)])
    outs["y2"] = g.op("Mul", [g.op("Mul", [x, g.const(half)]),
                              erf_plus_one(g.op("Mul", [x, g.const(np.float32(1 / np.sqrt(2)))]))])
    outs["y3"] = g.op("Mul", [g.constant(half), g.op("Mul", [erf_plus_one(g.op("Div", [x, g.constant(sqrt2)])), x])])
    outs["y4"] = g.op("Mul", [g.op("Mul", [x, erf_plus_one(g.op("Div", [x, g.constant(np.float32(1.5))]))]), g.constant(half)])
    e5 = g.op("Erf", [g.op("Div", [x, g.constant(sqrt2)])])
    outs["e5"] = e5
    outs["y5"] = g.op("Mul", [g.op("Mul", [x, g.op("Add", [e5, g.constant(one)])]), g.constant(half)])
    name_outputs(g, outs)
    sess = save(g, "gelu-forms", [helper.make_tensor_value_info(x, F, [4, 16])],
                [helper.make_tensor_value_info(k, F, [4, 16]) for k in outs], 17)
    x_v = np.random.default_rng(11).normal(0, 2, (4, 16)).astype(np.float32)
    np.save("gelu-forms-x.npy", x_v)
    save_refs("gelu-forms", sess, {x: x_v})


def cast_trunc():
    g = Graph()
    outs = {"i32": g.op("Cast", ["x"], to=TensorProto.INT32), "i8": g.op("Cast", ["x"], to=TensorProto.INT8),
            "i4": g.op("Cast", ["x"], to=TensorProto.INT4)}
    types = {"i32": TensorProto.INT32, "i8": TensorProto.INT8, "i4": TensorProto.INT4}
    name_outputs(g, outs)
    sess = save(g, "cast-trunc", [helper.make_tensor_value_info("x", F, [12])],
                [helper.make_tensor_value_info(k, types[k], [12]) for k in outs], 21)
    # In range of every output type (out of range, ONNX leaves int4 undefined).
    x_v = np.array([-7.75, -2.7, -2.5, -1.5, -0.5, -0.0, 0.5, 1.5, 2.5, 3.99, 6.5, 7.25], np.float32)
    np.save("cast-trunc-x.npy", x_v)
    # onnxruntime returns no int4 to numpy: the reference evaluator does.
    ref = onnx.reference.ReferenceEvaluator("cast-trunc.onnx")
    for name, v in zip(outs, ref.run(None, {"x": x_v})):
        np.save(f"cast-trunc-ref-{name}.npy", np.asarray(v).astype(np.int64))


bert_tiny()
ops23()
attention23()
unsupported()
gelu_forms()
cast_trunc()
