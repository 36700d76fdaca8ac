"""loraq.fake_quant for torch tensors on their own device (a GPU), bit for bit the C++ codecs' values.

loraq.torch uses it for activations that are not on the CPU, so that a fake-quantized layer on a GPU
never copies its input to the host and back. On the CPU the C++ codecs (vectorized, threaded) stay.

Every element is rounded to the nearest value of its grid, the set of non-negative finite values
that the C++ element table decodes (loraq._core.element_grid), with ties to the even code or away
from zero. That is FORMATS.md's conversion stated as a search rather than as arithmetic, so the tests
(tests/python/test_torch_codec.py, against loraq.fake_quant) check two formulations of one contract.

Why float32 is exact here: grid values have at most 11 significant bits, so the midpoint of two
neighbours is a float32; scaling by a power of two is exact except into float32's subnormals, where
every value lies far below half the smallest grid step and rounds to zero either way; and each
output is one float32 product, rounded once, as the C++ code rounds its exact double product once.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

import torch

from . import _core
from .formats import format_info

__all__ = ["fake_quant"]


class _Grid(NamedTuple):
    values: torch.Tensor  # float32, ascending: the value of code i is values[i]
    emax: int             # the MX shared scale's element exponent (FORMATS.md step 4)
    signed_zero: bool     # whether a negative value that rounds to zero keeps its sign


_grids: Dict[Tuple[str, str], _Grid] = {}


def _grid(element: str, device: torch.device) -> _Grid:
    key = (element, str(device))
    if key not in _grids:
        g = _core.element_grid(element)
        _grids[key] = _Grid(torch.from_numpy(g["values"]).to(device), int(g["emax"]), bool(g["signed_zero"]))
    return _grids[key]


def _round(v: torch.Tensor, grid: _Grid, away: bool) -> torch.Tensor:
    """Each finite float32 value of v rounded to the grid, saturating at its largest value."""
    values = grid.values
    a = v.abs()
    # values[below] <= a; int32 indices: half the memory of int64 on large activations
    below = (torch.searchsorted(values, a, right=True, out_int32=True) - 1).clamp(min=0)
    above = (below + 1).clamp(max=values.numel() - 1)  # at the largest value: saturates
    lo, hi = values[below], values[above]
    mid = lo + (hi - lo) * 0.5  # exact; lo + hi could overflow bf16's grid in float32
    tie_up = torch.ones_like(a, dtype=torch.bool) if away else (below % 2 == 1)  # odd code: go to the even one
    q = torch.where((a > mid) | ((a == mid) & tie_up), hi, lo)
    q = torch.where(torch.signbit(v), -q, q)
    return q if grid.signed_zero else torch.where(q == 0, torch.zeros_like(q), q)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """2.0 ** e as float32 for integer e in [-149, 127], built from its bits (exact on every device)."""
    e = e.to(torch.int32)
    normal = torch.bitwise_left_shift(e.clamp(min=-126) + 127, 23)
    subnormal = torch.bitwise_left_shift(torch.ones_like(e), (e + 149).clamp(min=0, max=22))
    return torch.where(e >= -126, normal, subnormal).view(torch.float32)


def _floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for positive finite float32 a, subnormals included (frexp: a = m 2^e, m in [0.5, 1))."""
    return torch.frexp(a).exponent.to(torch.int32) - 1


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """[rows, cols] as [rows, blocks, size], the last block padded with zeros (which leave amax alone)."""
    rows, cols = x.shape
    pad = -cols % size
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(rows, -1, size)


def _mx(x: torch.Tensor, element: str, away: bool) -> torch.Tensor:
    grid = _grid(element, x.device)
    b = _blocks(x, 32)
    amax = b.abs().amax(dim=-1, keepdim=True)
    shared = (_floor_log2(amax) - grid.emax).clamp(-127, 127)
    q = _round(b * _pow2(-shared), grid, away) * _pow2(shared)
    return torch.where(amax == 0, torch.zeros_like(q), q)  # scale code 0: every element +0


def _scaled_int(b: torch.Tensor, step: torch.Tensor, element: str, away: bool) -> torch.Tensor:
    """value = code * step in float32, code = the element's rounding of b / step; a zero step gives +0."""
    k = _round(b / torch.where(step == 0, torch.ones_like(step), step), _grid(element, b.device), away)
    return torch.where(step == 0, torch.zeros_like(b), k * step)


def _sint4(x: torch.Tensor, away: bool) -> torch.Tensor:
    b = _blocks(x, 64)
    scale = b.abs().amax(dim=-1, keepdim=True) / 7.0                 # float32, then one rounding to fp16,
    step = scale.clamp(max=65504.0).to(torch.float16).to(torch.float32)  # saturating as FP16::encode does
    return _scaled_int(b, step, "int4", away)


def _int8_channel(x: torch.Tensor, away: bool) -> torch.Tensor:
    return _scaled_int(x, x.abs().amax(dim=-1, keepdim=True) / 127.0, "int8", away)


def _nvfp4(x: torch.Tensor, away: bool) -> torch.Tensor:
    tensor_scale = x.abs().amax() / (448.0 * 6.0)
    b = _blocks(x, 16)
    ratio = b.abs().amax(dim=-1, keepdim=True) / 6.0 / tensor_scale  # left to right, as FORMATS.md writes it
    block_scale = _round(torch.nan_to_num(ratio, nan=0.0), _grid("e4m3", x.device), away=False)
    denominator = block_scale * tensor_scale
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    q = _round(b / safe, _grid("e2m1", x.device), away) * block_scale * tensor_scale
    return torch.where(denominator == 0, torch.zeros_like(q), q)


def _require_finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        kind = "NaN" if bool(torch.isnan(x[row, col])) else "Inf"
        raise _core.Error(f"{what} holds {kind} at [{row}, {col}]: loraq refuses non-finite values")


def fake_quant(x: torch.Tensor, format: str, rounding: str = "nearest_even",
               what: str = "fake_quant: the tensor") -> torch.Tensor:
    """The float32 values x [rows, cols] (or one row) quantizes to in `format`, blocks along the last
    axis, computed on x's device: loraq.fake_quant's values bit for bit. Non-finite values raise
    loraq.Error naming the [row, col], as loraq.fake_quant does (the check is the one point where
    the host waits for the device)."""
    if rounding not in ("nearest_even", "nearest_away"):
        raise _core.Error(f"unknown rounding '{rounding}': expected nearest_even or nearest_away")
    info = format_info(format)  # raises loraq.Error for an unknown name
    if x.dim() not in (1, 2):
        raise _core.Error(f"{what}: expected a 1-D or 2-D tensor (blocks along the last axis), got {x.dim()}-D")
    flat = x.detach().to(torch.float32).reshape(-1, x.shape[-1]) if x.dim() == 1 else x.detach().to(torch.float32)
    if flat.numel() == 0:
        return flat.reshape(x.shape).clone()
    _require_finite(flat, what)
    away = rounding == "nearest_away"
    name = info["name"]
    if info["scale"] == "e8m0":
        out = _mx(flat, info["element"], away)
    elif name == "sint4":
        out = _sint4(flat, away)
    elif name == "int8_channel":
        out = _int8_channel(flat, away)
    elif name == "nvfp4":
        out = _nvfp4(flat, away)
    else:  # fp16, bf16: a cast, saturating at the largest finite value
        out = _round(flat, _grid(info["element"], flat.device), away)
    return out.reshape(out.shape[0], -1)[:, :flat.shape[1]].reshape(x.shape)
