"""Quantization methods: the method table, and one weight quantized as a recipe would quantize it.

    r = loraq.quantize_weight(w, "svd_lowrank", residual="sint4", branch="fp16", rank=32)
    r = loraq.quantize_weight(w, "loraq", residual="mxfp4", branch="mxfp6_e2m3", budget=512, steps=200)
    r = loraq.quantize_weight(w, recipe="recipes/loraq-w4.yaml", layer="transformer_blocks.0.attn1.to_q.weight")

The keyword arguments are the recipe keys of docs/recipes.md (method, residual format, branch
format with rank or budget, rounding, seed, and the method's params); they are checked against
the method table as a recipe file is.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

from . import _core
from ._arrays import float32_array
from ._core import QuantizedWeight

__all__ = ["QuantizedWeight", "method_info", "methods", "quantize_weight"]


def methods() -> list[dict[str, Any]]:
    """Every method of the table: name, description, uses_branch, needs_activations and params
    ({name: {type, default, min, max, description}})."""
    return _core.methods()


def method_info(name: str) -> dict[str, Any]:
    """One method's dict (see methods()); raises loraq.Error listing the known methods."""
    return _core.method_info(name)


def quantize_weight(weight: Any, method: str = "loraq", *, residual: str = "sint4", branch: Optional[str] = None,
                    rank: Optional[int] = None, budget: Optional[float] = None, seed: int = 0,
                    rounding: str = "nearest_even", recipe: Optional[Union[str, os.PathLike]] = None,
                    layer: str = "weight", threads: int = 0, activations: Any = None, absmax: Any = None,
                    device: str = "cpu", **params: Any) -> QuantizedWeight:
    """Quantizes one linear weight [out_features, in_features] (float32, 2-D).

    method: a name from methods(). residual: Q1's format. branch: Q2's format for methods with a
    low-rank branch (default "fp16"); give rank, or budget (branch bits per input channel: rank =
    floor(budget / bits per value of Q2)). seed: for the methods that draw random numbers.
    **params: the method's parameters (e.g. steps=200 for loraq), checked for name, type and range.
    activations, absmax: captured input rows [n, in] and per-channel max |x| [in] (float32;
    docs/activations.md): recipes with `smoothing` need them, and with rows the metrics add
    output_sqnr_db (activation formats and smoothing included); .smooth is then the vector s.
    recipe: a recipe file instead of the keywords above; the entry for the tensor name `layer` (its
    last matching override, else the defaults) is used. layer also names the weight in errors.
    device: where LoRaQ's optimization loops run: "cpu", "cuda" or "cuda:N" (`loraq quantize
    --device`; docs/cuda.md: a GPU needs a package built with CUDA, which `pip install .` does where
    nvcc is found). The SVD start, the packing and the residual stay on the CPU; the other methods
    ignore it. A GPU's result is not the CPU's bit for bit (cuBLAS sums in another order) but
    within the tolerances docs/cuda.md states; the same GPU gives the same bytes run after run.

    Returns a QuantizedWeight: residual, down, up (float32 arrays; down and up are None without a
    branch), packed_residual, packed_down, packed_up (PackedMatrix), effective_weight(), metrics
    {relative_error, branch_quant_error, bits_per_value, seconds}. NaN or Inf weights, unknown
    names and bad shapes raise loraq.Error (a ValueError) naming them; a dtype other than float32
    raises TypeError.
    """
    w = float32_array(weight, "quantize_weight")
    rows = None if activations is None else float32_array(activations, "quantize_weight: activations")
    stats = None if absmax is None else float32_array(absmax, "quantize_weight: absmax")
    if recipe is not None:
        given = [name for name, value, default in (
            ("method", method, "loraq"), ("residual", residual, "sint4"), ("branch", branch, None),
            ("rank", rank, None), ("budget", budget, None), ("seed", seed, 0), ("rounding", rounding, "nearest_even"))
            if value != default] + sorted(params)
        if given:
            raise ValueError(f"quantize_weight: recipe= takes every setting from {os.fspath(recipe)}; "
                             f"drop {', '.join(given)}")
        return _core.quantize_weight_recipe(w, recipe, layer, threads, rows, stats, device)
    return _core.quantize_weight(w, method, residual, branch, rank, budget, seed, params, rounding, threads, layer,
                                 rows, stats, device)
