"""numpy's single-thread times for the shapes of sim-bench's "against numpy"
table: f32 matmuls and a row softmax, medians of 5 (OPENBLAS_NUM_THREADS=1).
Prints one JSON object {row name: seconds}; sim-bench runs it in the same run
as the simulator, so the ratio is measured on the same machine state."""
import json
import os
import sys
import time

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
import numpy as np  # noqa: E402 (the thread count must be set first)


def median(f, reps=5):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(q, k, v, scale):
    return softmax((q @ k.transpose(0, 2, 1)) * scale) @ v


def main():
    rng = np.random.default_rng(0)
    out = {}
    for arg in sys.argv[1:]:
        kind, dims = arg.split(":")
        d = [int(x) for x in dims.split("x")]
        if kind == "matmul":
            a = rng.standard_normal((d[0], d[1]), dtype=np.float32)
            b = rng.standard_normal((d[1], d[2]), dtype=np.float32)
            out[arg] = median(lambda: a @ b)
        elif kind == "softmax":
            x = rng.standard_normal((d[0], d[1]), dtype=np.float32)
            out[arg] = median(lambda: softmax(x))
        elif kind == "attention":
            h, s, dh = d
            q, k, v = (rng.standard_normal((h, s, dh), dtype=np.float32) for _ in range(3))
            out[arg] = median(lambda: attention(q, k, v, dh**-0.5))
    print(json.dumps(out))


main()
