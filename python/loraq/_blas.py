"""OpenBLAS's kernels for this process, chosen before loraq._core loads the library.

OpenBLAS's DYNAMIC_ARCH builds (Debian's) choose their kernels once, when the library loads, from the
CPU model, and give a CPU newer than the library its generic SSE3 ("Prescott") kernels: on Emerald
Rapids, Debian 12's 0.3.21 ran SGEMM about 4x slower that way (docs/performance.md). The choice can
only be made through the environment variable OPENBLAS_CORETYPE, read at load time. The `loraq`
command makes the same choice in C++ (linalg::wanted_blas_core): the widest kernels the CPU runs,
unless the variable is already set, so that the command and this package compute with the same
kernels and so give the same bits.
"""
from __future__ import annotations

import os

# The CPU flags of loraq's Isa::avx2 and Isa::avx512 (src/core/isa.cpp).
_AVX2 = {"avx2", "fma", "f16c", "bmi2"}
_AVX512 = _AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}


def wanted_openblas_kernels(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The OPENBLAS_CORETYPE loraq asks for: "" when the variable is set or the CPU is unknown."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return ""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    have = set(flags)
    if _AVX512 <= have:
        return "SkylakeX"
    if _AVX2 <= have:
        return "Haswell"
    return ""


def choose_openblas_kernels() -> None:
    """Sets OPENBLAS_CORETYPE for this process when loraq has a better choice than OpenBLAS's own.

    No effect on an OpenBLAS this process has already loaded (numpy's own copy, for instance, is a
    separate library with its own detection)."""
    wanted = wanted_openblas_kernels()
    if wanted:
        os.environ["OPENBLAS_CORETYPE"] = wanted
