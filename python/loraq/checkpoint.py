"""Whole checkpoints: `loraq quantize`, `loraq eval` and `loraq export --dequantized` from Python.

Inputs are safetensors checkpoints (one file, a shard index, or a diffusers folder); recipes are
the YAML files of docs/recipes.md; the quantized layout is docs/checkpoint.md. Each report row is
a dict: name, out_features, in_features, method, residual_format, branch_format, rank,
relative_error, branch_quant_error, bits_per_value, seconds, resumed.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

from . import _core

__all__ = ["evaluate", "export_dequantized", "load_recipe", "quantize_model"]

PathLike = Union[str, os.PathLike]


def quantize_model(input: PathLike, recipe: PathLike, output: PathLike, *, threads: int = 0, resume: bool = False,
                   progress: bool = False, layers_in_flight: Optional[int] = None,
                   device: str = "cpu") -> dict[str, Any]:
    """Quantizes the checkpoint `input` with the recipe file `recipe` into `output` (a folder, or a
    .safetensors file), writing the per-layer reports beside it. threads: 0 = every core (the bytes
    never depend on it). resume: continue an interrupted run (on the device it started on).
    device: where LoRaQ's optimization loops run, "cpu", "cuda" or "cuda:N" (`loraq quantize
    --device`). layers_in_flight: layers quantized at once (default 2 on the CPU, 8 on a GPU).
    Returns {"layers": [row dicts], "parameters": quantized parameter count, "seconds", "reports":
    [report paths]}."""
    return _core.quantize_model(input, recipe, output, threads, resume, progress, layers_in_flight, device)


def evaluate(quantized: PathLike, original: PathLike) -> list[dict[str, Any]]:
    """Each quantized layer's relative weight error against the original checkpoint, as row dicts."""
    return _core.evaluate(quantized, original)


def export_dequantized(quantized: PathLike, output: PathLike, dtype: str = "same") -> None:
    """Writes the effective weights under their original names, in their dtype (or `dtype`: "F32",
    "F16", "BF16"), every other tensor as it is: what a diffusers user loads to evaluate."""
    _core.export_dequantized(quantized, output, dtype)


def load_recipe(path: PathLike) -> dict[str, Any]:
    """A recipe file read and checked (loraq.Error "FILE:LINE: KEY: ..." when it is wrong), as the
    canonical dict recorded in quantized checkpoints (every default spelled out)."""
    return json.loads(_core.recipe_json(path))
