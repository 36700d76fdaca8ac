"""Block formats: the format table, fake quantization, and packing to the documented byte layout.

Every function works along the last axis of a 1-D or 2-D float32 array (a 1-D array is one row):
that is the reduction dimension of the matmul a weight [out, in] takes part in. The results are bit
for bit those of `loraq cast` (docs/formats.md), on every code path (scalar, AVX2, AVX-512) and for
any thread count.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._arrays import float32_array
from ._core import PackedMatrix

__all__ = ["PackedMatrix", "fake_quant", "format_info", "formats", "pack", "unpack"]


def formats(row_length: Optional[int] = None) -> list[dict[str, Any]]:
    """Every block format as a dict with the keys of `loraq formats --json`: name, element,
    element_bits, block_size, scale, scale_bytes, tensor_scale, bits_per_value (element bits + scale
    bits / block size), element_max, description; with row_length, also bits_per_value_at_row_length
    (a partial last block pays a whole scale)."""
    return _core.formats(row_length)


def format_info(name: str, row_length: Optional[int] = None) -> dict[str, Any]:
    """One format's dict (see formats()). Accepts the aliases docs/formats.md gives (mxfp4_e2m1);
    raises loraq.Error listing the known names for an unknown one."""
    return _core.format_info(name, row_length)


def fake_quant(x: Any, format: str, rounding: str = "nearest_even", *, out: Optional[NDArray[np.float32]] = None,
               threads: int = 0, isa: Optional[str] = None) -> NDArray[np.float32]:
    """The values `x` quantizes to in `format`, blocks along the last axis.

    x: float32, 1-D or 2-D (read without a copy when C-contiguous; see _arrays.float32_array for
    other inputs). rounding: "nearest_even" (IEEE, ml_dtypes, torchao) or "nearest_away" (ties away
    from zero). out: a float32 C-contiguous array of x's shape to write into (x itself for in place);
    returned. threads: 0 = every core. isa: "scalar", "avx2" or "avx512" forces a code path (the
    values never change). Non-finite values are refused (loraq.Error naming the [row, col])."""
    x = float32_array(x, "fake_quant")
    if out is None:
        result = _core.fake_quant(x, format, rounding, None, threads, isa)
        assert result is not None
        return result
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise TypeError("fake_quant: out= must be a writable C-contiguous float32 numpy array")
    _core.fake_quant(x, format, rounding, out, threads, isa)
    return out


def pack(x: Any, format: str, rounding: str = "nearest_even", *, threads: int = 0,
         isa: Optional[str] = None) -> PackedMatrix:
    """Element codes and scales of `x` in `format` (docs/formats.md "Packed storage"): a
    PackedMatrix with format, rows, cols, codes (uint8 [rows, packed row bytes]), scales (uint8
    [rows, blocks x scale bytes]) and tensor_scale (nvfp4). A 1-D array packs as one row."""
    return _core.pack(float32_array(x, "pack"), format, rounding, threads, isa)


def unpack(packed: PackedMatrix, *, threads: int = 0, isa: Optional[str] = None) -> NDArray[np.float32]:
    """The float32 values [rows, cols] of a PackedMatrix: unpack(pack(x)) == fake_quant(x) bit for bit."""
    if not isinstance(packed, PackedMatrix):
        raise TypeError(f"unpack: expected a loraq.PackedMatrix, got {type(packed).__name__}")
    return _core.unpack(packed, threads, isa)
