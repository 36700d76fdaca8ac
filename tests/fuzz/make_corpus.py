"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/), a few KB in all.

Seeds are valid files written by the reference libraries (safetensors, numpy), so the fuzzer starts
from what real readers accept and mutates from there. Run it again after changing the seeds:
    ~/.cache/loraq/venv/bin/python tests/fuzz/make_corpus.py
"""
import io
import json
import pathlib
import shutil

import ml_dtypes
import numpy as np
from safetensors.numpy import save

HERE = pathlib.Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    path = HERE / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def safetensors_seeds():
    rng = np.random.default_rng(0)
    every = {}
    for dtype in [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, ml_dtypes.bfloat16, np.int32,
                  np.uint32, np.float32, np.float64, np.int64, np.uint64, ml_dtypes.float8_e4m3fn,
                  ml_dtypes.float8_e5m2]:
        every[np.dtype(dtype).name] = rng.integers(0, 2, size=2).astype(dtype)
    write("fuzz_safetensors_header", "every_dtype", save(every))
    write("fuzz_safetensors_header", "metadata", save({"w": np.ones((2, 3), np.float32)}, metadata={"format": "pt"}))
    write("fuzz_safetensors_header", "scalar_and_empty",
          save({"s": np.array(1.5, np.float32), "e": np.zeros((3, 0), np.float16)}))
    write("fuzz_safetensors_header", "no_tensors", save({}))


def npy_seeds():
    arrays = {"f32_2x3": np.arange(6, dtype=np.float32).reshape(2, 3), "f16_vector": np.ones(3, np.float16),
              "bf16_scalar": np.array(2, ml_dtypes.bfloat16), "f32_empty": np.zeros((0, 4), np.float32)}
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr)
        write("fuzz_npy_header", name, buf.getvalue())
    for version in [(2, 0), (3, 0)]:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ones((1, 2), np.float32), version=version)
        write("fuzz_npy_header", f"version_{version[0]}", buf.getvalue())


def index_seeds():
    # The shards fuzz_checkpoint_index.cpp writes: a.safetensors holds x (F32 [2]) and y (I8 [3]),
    # b.safetensors holds z (BF16 [1, 2]). Written as huggingface_hub and diffusers write an index.
    full = {"metadata": {"total_size": 8 + 3 + 4}, "weight_map": {"x": "a.safetensors", "y": "a.safetensors",
                                                                  "z": "b.safetensors"}}
    write("fuzz_checkpoint_index", "two_shards", (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
    one = {"weight_map": {"z": "b.safetensors"}}
    write("fuzz_checkpoint_index", "one_shard", json.dumps(one).encode())
    extra = {"metadata": {"total_size": 11, "format": "pt", "nested": {"k": [1, 2]}},
             "weight_map": {"x": "a.safetensors", "y": "a.safetensors"}}
    write("fuzz_checkpoint_index", "extra_metadata", json.dumps(extra).encode())


def layer_table_seeds():
    # The layers whose tensors fuzz_layer_table.cpp holds, as `loraq quantize` writes them in the
    # loraq.layers metadata (docs/checkpoint.md): names, shapes, formats and ranks must match that file.
    def entry(name, shape, residual, branch=None, rank=0, smoothed=False, **extra):
        return {"name": name, "shape": shape, "dtype": "BF16", "method": "loraq" if branch else "rtn",
                "residual": residual, "branch": branch, "rank": rank, "smoothed": smoothed,
                "residual_activation": None, "branch_activation": None, **extra}
    a = entry("a.weight", [8, 40], "sint4")
    b = entry("b.weight", [16, 64], "mxint4", "mxint8", 4, True, residual_activation="mxint8",
              branch_activation="mxint8", intermediate_activation="mxint8")
    c = entry("c.weight", [6, 32, 1, 1], "nvfp4", "fp16", 2)
    d = entry("d", [4, 33], "mxfp6_e2m3", "mxfp4", 3)
    write("fuzz_layer_table", "all_four", json.dumps([a, b, c, d]).encode())
    write("fuzz_layer_table", "quantized_branch", json.dumps([b]).encode())
    write("fuzz_layer_table", "fp16_branch_conv", json.dumps([c, a]).encode())
    write("fuzz_layer_table", "partial_blocks", json.dumps([d]).encode())
    write("fuzz_layer_table", "empty", b"[]")


if __name__ == "__main__":
    shutil.rmtree(HERE, ignore_errors=True)
    safetensors_seeds()
    npy_seeds()
    index_seeds()
    layer_table_seeds()
