"""Generates the ONNX reader's test models (run from this folder; needs the
`onnx` 1.22 wheel). tiny-external.onnx: y = relu(x @ w + b) with w (4 x 3,
values 0.5 * i - 2) stored as external data in tiny-external.bin at offset 64;
opset12.onnx: the same graph declaring opset 12 (refused)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

w = (np.arange(12, dtype=np.float32) * 0.5 - 2.0).reshape(4, 3)
b = np.array([0.25, -0.5, 1.0], dtype=np.float32)
nodes = [
    helper.make_node("MatMul", ["x", "w"], ["xw"], name="proj"),
    helper.make_node("Add", ["xw", "b"], ["z"], name="bias"),
    helper.make_node("Relu", ["z"], ["y"], name="act"),
]
graph = helper.make_graph(
    nodes,
    "tiny",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
)
for name, opset in [("tiny-external", 17), ("opset12", 12)]:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if name == "tiny-external":
        with open("tiny-external.bin", "wb") as f:
            f.write(b"\0" * 64 + w.tobytes())
        t = model.graph.initializer[0]
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in [("location", "tiny-external.bin"), ("offset", "64"), ("length", str(w.nbytes))]:
            e = t.external_data.add()
            e.key, e.value = k, v
    onnx.save(model, f"{name}.onnx")
