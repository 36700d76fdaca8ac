"""loraq: post-training quantization of transformer weights.

    import numpy as np, loraq
    w = np.random.default_rng(0).standard_normal((256, 1152)).astype(np.float32)
    q = loraq.fake_quant(w, "mxfp4")                         # the values w quantizes to
    p = loraq.pack(w, "mxfp4")                               # codes and scales; loraq.unpack(p) == q
    r = loraq.quantize_weight(w, "loraq", residual="sint4", branch="mxfp6_e2m3", rank=32)
    r.residual, r.down, r.up, r.metrics["relative_error"]

Formats (loraq.formats), methods (loraq.methods) and whole checkpoints (loraq.checkpoint) are thin
wrappers over the C++ library; its errors arrive as loraq.Error, a ValueError that carries the C++
message (which names the format, method, parameter, file or tensor at fault).

loraq.LinearKernel runs a quantized layer on the CPU kernels (integer dot products from the packed
codes). With PyTorch: loraq.torch (QuantizedLinear, quantize_module, load_quantized) and loraq.capture
(capture_activations, save_activations); `import loraq` does not import them (docs/python.md).
"""
from ._blas import choose_openblas_kernels

choose_openblas_kernels()  # before _core loads OpenBLAS, which reads the choice once
from ._core import Error, LinearKernel, PackedMatrix, QuantizedWeight, __version__, openblas_kernels  # noqa: E402
from .checkpoint import evaluate, export_dequantized, load_recipe, quantize_model
from .formats import fake_quant, format_info, formats, pack, unpack
from .methods import method_info, methods, quantize_weight

__all__ = [
    "Error",
    "LinearKernel",
    "PackedMatrix",
    "QuantizedWeight",
    "__version__",
    "evaluate",
    "export_dequantized",
    "fake_quant",
    "format_info",
    "formats",
    "load_recipe",
    "method_info",
    "methods",
    "openblas_kernels",
    "pack",
    "quantize_model",
    "quantize_weight",
    "unpack",
]
