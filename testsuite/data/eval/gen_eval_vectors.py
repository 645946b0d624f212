"""Generates the evaluator's reference vectors (committed; the tests read only the
.npy files). Reference values are computed in float64 by numpy.
Run: python3 gen_eval_vectors.py"""
import math
import numpy as np

rng = np.random.default_rng(20261127)
f32 = lambda a: a.astype(np.float32)

a = f32(rng.standard_normal((16, 33)))
b = f32(rng.standard_normal((33, 20)))
np.save("matmul_a.npy", a)
np.save("matmul_b.npy", b)
np.save("matmul_out.npy", a.astype(np.float64) @ b.astype(np.float64))

x = f32(rng.standard_normal((8, 50)) * 3)
e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
np.save("softmax_x.npy", x)
np.save("softmax_out.npy", e / e.sum(axis=-1, keepdims=True))

x = f32(rng.standard_normal((6, 40)) * 2 + 1)
g = f32(rng.standard_normal(40))
bb = f32(rng.standard_normal(40))
xd = x.astype(np.float64)
mean = xd.mean(axis=-1, keepdims=True)
var = ((xd - mean) ** 2).mean(axis=-1, keepdims=True)
np.save("norm_x.npy", x)
np.save("norm_g.npy", g)
np.save("norm_b.npy", bb)
np.save("layernorm_out.npy", (xd - mean) / np.sqrt(var + 1e-5) * g + bb)
ms = (xd ** 2).mean(axis=-1, keepdims=True)
np.save("rmsnorm_out.npy", xd / np.sqrt(ms + 1e-6) * g)

x = f32(np.linspace(-6, 6, 201))
xd = x.astype(np.float64)
np.save("gelu_x.npy", x)
np.save("gelu_erf_out.npy", 0.5 * xd * (1 + np.vectorize(math.erf)(xd / math.sqrt(2))))
np.save("gelu_tanh_out.npy", 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3))))
