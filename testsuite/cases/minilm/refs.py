"""onnxruntime (CPU) references for paraphrase-MiniLM-L3-v2 (fetched by
testsuite/models/fetch.py; run from this folder; needs onnxruntime and numpy).
b1: batch 1, seq 128, every token valid. b4: batch 4, seq 128, rows holding
128, 90, 37 and 5 valid tokens (the rest padded: id 0, mask 0). Token ids are
[CLS] (101), random word ids, [SEP] (102). Writes <case>-ids.npy,
<case>-mask.npy, <case>-tokens.npy (the token embeddings) and
<case>-sentence.npy (the mean-pooled sentence embedding)."""
import numpy as np
import onnxruntime as ort

MODEL = "../../models/paraphrase-MiniLM-L3-v2.onnx"
rng = np.random.default_rng(2026)
session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
for case, lengths in [("b1", [128]), ("b4", [128, 90, 37, 5])]:
    ids = np.zeros((len(lengths), 128), np.int64)
    mask = np.zeros((len(lengths), 128), np.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(1000, 30000, n)
        ids[b, 0], ids[b, n - 1] = 101, 102
        mask[b, :n] = 1
    _, _, tokens, sentence = session.run(None, {"input_ids": ids, "attention_mask": mask})
    for name, v in [("ids", ids), ("mask", mask), ("tokens", tokens), ("sentence", sentence)]:
        np.save(f"{case}-{name}.npy", v)
