"""Writes data/demo-weights/demo.safetensors: the embedded default the main job quantizes until the
trained diffusion transformer arrives (issue 6). Deterministic (seeded), small, shaped like one
PixArt-Sigma block's linear layers scaled down 1152 -> 288 (MLP 4x), with what makes real weights
hard to quantize: heavy tails (Student-t), a few outlier input channels, per-row scale spread.

    python tools/make_demo_weights.py   # needs numpy, ml_dtypes, safetensors (requirements-test.txt)
"""
import pathlib

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

HIDDEN = 288
rng = np.random.default_rng(20261123)


def weight(out_features, in_features):
    w = rng.standard_t(df=4, size=(out_features, in_features)) / np.sqrt(in_features)
    w *= np.exp(rng.normal(0.0, 0.3, size=(out_features, 1)))  # rows of different scale
    outliers = rng.choice(in_features, size=max(1, in_features // 64), replace=False)
    w[:, outliers] *= 8.0  # outlier input channels, as LLM.int8() and SmoothQuant report
    return w.astype(ml_dtypes.bfloat16)


tensors = {}
for name in ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"]:
    tensors[f"transformer_blocks.0.{name}.weight"] = weight(HIDDEN, HIDDEN)
tensors["transformer_blocks.0.ff.net.0.proj.weight"] = weight(4 * HIDDEN, HIDDEN)
tensors["transformer_blocks.0.ff.net.2.weight"] = weight(HIDDEN, 4 * HIDDEN)
tensors["transformer_blocks.0.norm1.weight"] = np.ones(HIDDEN, dtype=ml_dtypes.bfloat16)

out = pathlib.Path(__file__).resolve().parents[1] / "data" / "demo-weights" / "demo.safetensors"
out.parent.mkdir(parents=True, exist_ok=True)
save_file(tensors, str(out), metadata={"generator": "tools/make_demo_weights.py", "seed": "20261123"})
print(out, sum(t.size for t in tensors.values()), "values")
