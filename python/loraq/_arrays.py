"""How arrays enter loraq: float32 and C-contiguous, checked here so that errors name the problem."""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def float32_array(x: Any, what: str) -> NDArray[np.float32]:
    """`x` as a C-contiguous float32 numpy array, without a copy when it already is one.

    A numpy array of another dtype is refused (TypeError naming the dtype): converting it silently
    would hide a copy and, for float64, a rounding. Other array-likes (lists, CPU torch tensors) go
    through np.asarray(x, dtype=np.float32). A float32 array that is not C-contiguous is copied.
    """
    if isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            raise TypeError(f"{what}: expected a float32 array, got dtype {x.dtype} "
                            f"(convert it first, e.g. x.astype(np.float32))")
    else:
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}: expected a float32 array or an array-like, got {type(x).__name__}: {e}") from None
    return np.ascontiguousarray(x)
