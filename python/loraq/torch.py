"""loraq in PyTorch: quantized linear layers with per-branch activation formats, built from a recipe
or loaded from a quantized checkpoint.

    import loraq.torch as lt
    report = lt.quantize_module(transformer, "recipes/loraq-mxint4-mxint8-r64.yaml")  # swaps nn.Linear in place
    lt.load_quantized(transformer, "transformer-w4/")          # or: from `loraq quantize` output

A QuantizedLinear computes, for an input X [..., in] (the paper's Figure 1 and section 3.4):

    Xs = X / s                                               # s: smoothing vector, when there is one
    Y  = Qa1(Xs) Q1(P)^T + Qt(Qa2(Xs) Q2(down)^T) Q2(up)^T + bias

P is the residual [out, in], down [rank, in] and up [out, rank] the low-rank branch, all held
dequantized in float32 buffers. Qa1 and Qa2 are the activation formats of the residual and branch
inputs (None: 16-bit, left as they are): dynamic per-token fake quantization, blocks along
in_features, computed by loraq.fake_quant on CPU float32, so bit for bit what the C++ codecs give.
Qt, the format of the branch's intermediate (blocks along the rank), is None (T kept in float32,
the paper's formula) unless the recipe sets activations.intermediate.
On a GPU, Qa runs on the device (torch operations, the C++ codecs' values bit for bit), as do the
matmuls, in float32; the output has the input's dtype. Nothing here computes gradients through Qa.

backend="kernel" runs the layer on loraq's quantized kernels instead (loraq.LinearKernel: integer
dot products straight from the packed codes where the formats are integer, docs/kernels.md). An
input on a GPU runs on the CUDA kernels there (loraq._core.CudaLinearKernel, bit for bit the CPU
integer path), on torch's current stream; a layer they do not take (float formats, a quantized
intermediate) or a package without CUDA sends its inputs to the CPU kernels, with a warning.
Its output equals the fake-quantized computation within fp32 accumulation error.

Importing this module needs torch; `import loraq` alone does not import it.
"""
from __future__ import annotations

import concurrent.futures
import json
import math
import os
import pathlib
import warnings
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("loraq.torch needs PyTorch (pip install torch); the rest of loraq works without it") from e

from . import _core, _torch_codec
from ._core import PackedMatrix
from .formats import fake_quant, unpack
from .methods import quantize_weight

__all__ = ["QuantizedLinear", "fake_quant_activations", "linear_layers", "load_quantized", "quantize_module"]

PathLike = Union[str, os.PathLike]
Shift = Union[None, str, float]


def fake_quant_activations(x: "torch.Tensor", format: Optional[str], rounding: str = "nearest_even") -> "torch.Tensor":
    """x [..., features] quantized per token (each row of the flattened [-1, features]) in `format`,
    blocks along the last axis, as a float32 tensor on x's device. format None returns x as float32.

    The values are loraq.fake_quant's on the float32 input, bit for bit. A CPU tensor goes through the
    C++ codecs; any other (a GPU's) is quantized where it is, by torch operations (loraq._torch_codec),
    without a copy to the host. NaN or Inf raise loraq.Error naming [row, col]."""
    x = x.detach().to(torch.float32)
    if format is None or x.numel() == 0:
        return x
    flat = x.reshape(-1, x.shape[-1])
    if x.device.type != "cpu":
        return _torch_codec.fake_quant(flat, format, rounding, what="fake_quant: the array").reshape(x.shape)
    q = fake_quant(flat.contiguous().numpy(), format, rounding)
    return torch.from_numpy(q).reshape(x.shape)


def _as_float32(t: Any, what: str) -> Optional["torch.Tensor"]:
    if t is None:
        return None
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"QuantizedLinear: {what} must be a torch tensor or numpy array, got {type(t).__name__}")
    return t.detach().to(torch.float32).contiguous()


class QuantizedLinear(nn.Module):
    """Y = Qa1(X/s) Q1(P)^T + Qt(Qa2(X/s) Q2(down)^T) Q2(up)^T + bias (see the module docstring).

    residual [out, in], down [rank, in], up [out, rank] (both or neither), bias [out], smooth [in]:
    the dequantized values (torch tensors or numpy arrays; kept as float32 buffers).
    residual_activation / branch_activation: activation format names of the table (loraq.formats()),
    None for 16-bit inputs. intermediate_activation: Qt, the format of the branch's intermediate
    T = Qa2(X/s) Q2(down)^T (quantized per token, blocks along the rank), None to keep T in float32
    as the paper's formula does. activation_rounding: "nearest_even" or "nearest_away".

    unsigned_shift (SVDQuant's treatment of inputs that follow a non-negative activation, the paper's
    Table 1): None (off), a number c >= 0 (a fixed shift, e.g. 0.171875 after GELU, whose minimum is
    about -0.17), or "token" (per token c_t = max(0, -min_j x_tj), the smallest shift that makes the
    token non-negative). On every branch whose input is quantized, the quantizer sees U = Xs + c
    instead of Xs, and the shift's contribution is taken back through the weight:

        Qa(U) W^T - c (W 1)^T            (W 1: the row sums of the dequantized weight)

    which equals (Qa(U) - c) W^T: for the residual branch W = Q1(P) and the correction is a bias
    (fixed c) or an outer product c_t x rowsum (per token); for the low-rank branch it is applied to
    the down projection's output, (Qa2(U) Q2(down)^T - c (Q2(down) 1)^T) Q2(up)^T, where a kernel
    would fold it. A 16-bit branch input is not shifted (nothing to gain). What this does NOT do:
    SVDQuant pairs the shift with unsigned 4-bit codes (16 levels on [0, max]); loraq's formats are
    all signed and symmetric, so a shifted input uses half of the grid and gains nothing from the
    shift by itself. The option reproduces the computation and its weight-side correction exactly;
    an unsigned element format in the table is what would make it pay.

    backend: "fake_quant" (the computation above in torch) or "kernel" (loraq.LinearKernel on the
    packed parts, CPU; needs packed=(residual, down, up) PackedMatrix objects, down and up None
    without a branch, and no unsigned_shift).
    """

    def __init__(self, residual: Any, down: Any = None, up: Any = None, bias: Any = None, smooth: Any = None, *,
                 residual_activation: Optional[str] = None, branch_activation: Optional[str] = None,
                 intermediate_activation: Optional[str] = None, activation_rounding: str = "nearest_even", unsigned_shift: Shift = None, name: str = "",
                 backend: str = "fake_quant", packed: Optional[tuple] = None) -> None:
        super().__init__()
        residual = _as_float32(residual, "residual")
        down, up = _as_float32(down, "down"), _as_float32(up, "up")
        bias, smooth = _as_float32(bias, "bias"), _as_float32(smooth, "smooth")
        where = f"QuantizedLinear '{name}'" if name else "QuantizedLinear"
        if residual is None or residual.ndim != 2:
            raise ValueError(f"{where}: residual must be 2-D [out, in], got "
                             f"{None if residual is None else tuple(residual.shape)}")
        out_features, in_features = residual.shape
        if (down is None) != (up is None):
            raise ValueError(f"{where}: give both down [rank, in] and up [out, rank], or neither")
        rank = 0
        if down is not None:
            rank = down.shape[0]
            if down.ndim != 2 or down.shape[1] != in_features or up.ndim != 2 or \
                    tuple(up.shape) != (out_features, rank):
                raise ValueError(f"{where}: branch shapes down {tuple(down.shape)} and up {tuple(up.shape)} do not fit "
                                 f"the residual [{out_features}, {in_features}]: expected down [rank, {in_features}] "
                                 f"and up [{out_features}, rank]")
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"{where}: bias has shape {tuple(bias.shape)}, expected ({out_features},)")
        if smooth is not None and tuple(smooth.shape) != (in_features,):
            raise ValueError(f"{where}: smooth has shape {tuple(smooth.shape)}, expected ({in_features},)")
        for fmt in (residual_activation, branch_activation, intermediate_activation):
            if fmt is not None:
                _core.format_info(fmt, None)  # loraq.Error listing the formats for an unknown name
        if unsigned_shift is not None and unsigned_shift != "token":
            if isinstance(unsigned_shift, bool) or not isinstance(unsigned_shift, (int, float)) or \
                    not math.isfinite(unsigned_shift) or unsigned_shift < 0:
                raise ValueError(f"{where}: unsigned_shift must be None, 'token' or a finite number >= 0, "
                                 f"got {unsigned_shift!r}")
            unsigned_shift = float(unsigned_shift)
        if backend not in ("fake_quant", "kernel"):
            raise ValueError(f"{where}: backend must be 'fake_quant' or 'kernel', got {backend!r}")
        self.backend, self._kernel = backend, None
        if backend == "kernel":
            if packed is None:
                raise ValueError(f"{where}: backend='kernel' needs packed=(residual, down, up) PackedMatrix parts")
            if unsigned_shift is not None:
                raise ValueError(f"{where}: backend='kernel' does not take unsigned_shift")
            if activation_rounding != "nearest_even":
                raise ValueError(f"{where}: backend='kernel' quantizes activations with nearest_even rounding")
            np_or_none = lambda t: None if t is None else t.cpu().numpy()  # noqa: E731
            self._kernel = _core.LinearKernel(packed[0], packed[1], packed[2], np_or_none(smooth), np_or_none(bias),
                                              residual_activation, branch_activation, name or "layer",
                                              intermediate_activation)
            # What a GPU's kernels are made from, when an input arrives on one (_gpu_kernel).
            self._gpu_parts = (packed[0], packed[1], packed[2], np_or_none(smooth), np_or_none(bias))
        self._gpu_kernels: dict[int, Any] = {}  # GPU index -> _core.CudaLinearKernel, or None: the CPU's run it
        self.gpu_fallback: Optional[str] = None  # why inputs on a GPU go to the CPU kernels, once one did
        self.name = name
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.residual_activation, self.branch_activation = residual_activation, branch_activation
        self.intermediate_activation = intermediate_activation if rank > 0 else None
        self.activation_rounding = activation_rounding
        self.unsigned_shift = unsigned_shift
        self.register_buffer("residual", residual)
        self.register_buffer("down", down)
        self.register_buffer("up", up)
        self.register_buffer("bias", bias)
        self.register_buffer("smooth", smooth)
        # Row sums of the dequantized weights for the shift's correction (float32, as a kernel keeps them).
        self.register_buffer("residual_rowsum", residual.sum(dim=1), persistent=False)
        self.register_buffer("down_rowsum", None if down is None else down.sum(dim=1), persistent=False)

    @classmethod
    def from_quantized_weight(cls, q: Any, bias: Any = None, **kwargs: Any) -> "QuantizedLinear":
        """From loraq.quantize_weight's result (residual, down, up as float32 arrays)."""
        return cls(q.residual, q.down, q.up, bias, **kwargs)

    def effective_weight(self) -> "torch.Tensor":
        """residual + up @ down (summed rank by rank in float32, docs/checkpoint.md's order), divided
        by smooth per input column: the [out, in] weight the layer stands for without Qa."""
        w = self.residual.clone()
        for k in range(self.rank):
            w += self.up[:, k:k + 1] * self.down[k][None, :]
        return w / self.smooth[None, :] if self.smooth is not None else w

    def _shift(self, h: "torch.Tensor") -> Optional["torch.Tensor"]:
        """c per token, shaped [..., 1], or None without a shift."""
        if self.unsigned_shift is None:
            return None
        if self.unsigned_shift == "token":
            return torch.clamp(-h.amin(dim=-1, keepdim=True), min=0.0)
        return torch.full((*h.shape[:-1], 1), float(self.unsigned_shift), dtype=torch.float32, device=h.device)

    def _quantized_input(self, h: "torch.Tensor", fmt: Optional[str], c: Optional["torch.Tensor"]) -> "torch.Tensor":
        try:
            return fake_quant_activations(h if c is None else h + c, fmt, self.activation_rounding)
        except ValueError as e:
            raise type(e)(f"QuantizedLinear '{self.name}': input activations: {e}") from None

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear '{self.name}': input has {x.shape[-1]} features (shape "
                             f"{tuple(x.shape)}), the layer takes {self.in_features}")
        if self._kernel is not None:
            if x.device.type == "cuda":
                y = self._forward_gpu(x)
                if y is not None:
                    return y
            flat = x.detach().to("cpu", torch.float32).reshape(-1, self.in_features).contiguous()
            y = torch.from_numpy(self._kernel.forward(flat.numpy()))
            return y.reshape(*x.shape[:-1], self.out_features).to(device=x.device, dtype=x.dtype)
        h = x.to(torch.float32)
        if self.smooth is not None:
            h = h / self.smooth
        c = self._shift(h)
        c1 = c if self.residual_activation is not None else None
        y = torch.nn.functional.linear(self._quantized_input(h, self.residual_activation, c1), self.residual)
        if c1 is not None:
            y = y - c1 * self.residual_rowsum
        if self.rank > 0:
            c2 = c if self.branch_activation is not None else None
            t = torch.nn.functional.linear(self._quantized_input(h, self.branch_activation, c2), self.down)
            if c2 is not None:
                t = t - c2 * self.down_rowsum
            if self.intermediate_activation is not None:
                try:
                    t = fake_quant_activations(t, self.intermediate_activation, self.activation_rounding)
                except ValueError as e:
                    raise type(e)(f"QuantizedLinear '{self.name}': branch intermediate: {e}") from None
            y = y + torch.nn.functional.linear(t, self.up)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def _gpu_kernel(self, index: int) -> Any:
        """The GPU kernels for GPU `index`, made at the first input there; None where they do not take
        this layer (then self.gpu_fallback says why, and a warning said it once)."""
        if index not in self._gpu_kernels:
            kernel, why = None, None
            if self.intermediate_activation is not None:
                why = "the GPU kernels keep the branch's intermediate T in fp32, and this layer quantizes it"
            elif self.residual_activation is None:
                why = "the GPU kernels need an activation format, and this layer has none"
            else:
                try:
                    kernel = _core.CudaLinearKernel(*self._gpu_parts, self.residual_activation, self.branch_activation,
                                                    self.name or "layer", index)
                except _core.Error as e:  # formats they do not take, or a package built without CUDA
                    why = str(e)
            if why is not None:
                self.gpu_fallback = why
                warnings.warn(f"QuantizedLinear '{self.name}': inputs on a GPU run on the CPU kernels: {why}",
                              stacklevel=3)
            self._gpu_kernels[index] = kernel
        return self._gpu_kernels[index]

    def _forward_gpu(self, x: "torch.Tensor") -> Optional["torch.Tensor"]:
        """backend='kernel' for an input on a GPU: loraq's CUDA kernels on torch's current stream, the
        tensors never leaving the device (None: this layer runs on the CPU kernels instead)."""
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        kernel = self._gpu_kernel(index)
        if kernel is None:
            return None
        flat = x.detach().to(torch.float32).reshape(-1, self.in_features).contiguous()
        y = torch.empty((flat.shape[0], self.out_features), dtype=torch.float32, device=x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        kernel.forward_device(flat.data_ptr(), flat.shape[0], y.data_ptr(), stream)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        text = f"'{self.name}', in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"residual_activation={self.residual_activation}, branch_activation={self.branch_activation}"
        if self.intermediate_activation is not None:
            text += f", intermediate_activation={self.intermediate_activation}"
        if self.smooth is not None:
            text += ", smoothed"
        if self.unsigned_shift is not None:
            text += f", unsigned_shift={self.unsigned_shift!r}"
        if self._kernel is not None:
            text += f", backend='kernel' ({self._kernel.describe()})"
        return text


class QuantizedPointwiseConv2d(nn.Module):
    """A quantized 1x1 nn.Conv2d: the QuantizedLinear `linear` applied to each pixel's channels of an
    [N, C, H, W] input. quantize_module and load_quantized swap it in for pointwise convolutions."""

    def __init__(self, linear: QuantizedLinear) -> None:
        super().__init__()
        self.linear = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def effective_weight(self) -> "torch.Tensor":
        return self.linear.effective_weight()

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        if x.ndim != 4:
            raise ValueError(f"QuantizedPointwiseConv2d '{self.linear.name}': input has shape {tuple(x.shape)}, "
                             f"expected [N, {self.in_features}, H, W]")
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)


def _quantized_like(target: Any, linear: QuantizedLinear) -> "nn.Module":
    """`linear` as the replacement of `target`: wrapped when target is a pointwise convolution."""
    conv = _is_pointwise_conv(target) or isinstance(target, QuantizedPointwiseConv2d)
    return QuantizedPointwiseConv2d(linear) if conv else linear


# ---- which modules -----------------------------------------------------------------------------------

def _strip_weight(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _is_pointwise_conv(m: Any) -> bool:
    """A 1x1 nn.Conv2d without stride, padding, dilation or groups: a linear layer applied to each
    pixel's channels (SANA's GLUMBConv conv_inverted and conv_point)."""
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 and \
        m.dilation == (1, 1) and m.padding in ((0, 0), "valid")


def _features(m: Any) -> tuple[int, int]:
    """(out, in) of an nn.Linear, a pointwise nn.Conv2d or their quantized forms."""
    if isinstance(m, nn.Conv2d):
        return m.out_channels, m.in_channels
    return m.out_features, m.in_features


def linear_layers(module: "nn.Module") -> dict[str, "nn.Module"]:
    """Every nn.Linear and pointwise (1x1) nn.Conv2d of `module` by module path (the tensor name
    without ".weight")."""
    return {path: m for path, m in module.named_modules() if isinstance(m, nn.Linear) or _is_pointwise_conv(m)}


def _selected_linears(module: "nn.Module", recipe: PathLike, layers: Optional[Iterable[str]],
                      what: str) -> dict[str, "nn.Module"]:
    """The nn.Linear and 1x1 nn.Conv2d modules whose `path.weight` the recipe's selection picks (the
    C++ selection of `loraq quantize`, given their weights only), optionally restricted to `layers`."""
    linears = linear_layers(module)
    tensors = [(f"{p}.weight", list(m.weight.shape), m.weight.is_floating_point()) for p, m in linears.items()]
    selected = [_strip_weight(n) for n in _core.select_layers(os.fspath(recipe), tensors)] if tensors else []
    if layers is not None:
        wanted = [_strip_weight(n) for n in ([layers] if isinstance(layers, str) else layers)]
        for name in wanted:
            if name not in linears:
                hint = f"{len(linears)} linear modules, e.g. {', '.join(list(linears)[:3])}" if linears \
                    else "no nn.Linear or 1x1 nn.Conv2d"
                raise ValueError(f"{what}: layer '{name}' is not an nn.Linear or 1x1 nn.Conv2d of the module "
                                 f"(it has {hint})")
            if name not in selected:
                raise ValueError(f"{what}: layer '{name}' is not selected by the recipe {os.fspath(recipe)} "
                                 f"(layers.preset / include / exclude)")
        selected = [n for n in selected if n in set(wanted)]
    if not selected:
        examples = ", ".join(f"{p}.weight" for p in list(linears)[:3])
        has = f"{len(linears)} nn.Linear / 1x1 nn.Conv2d weights, e.g. {examples}" if linears \
            else "no nn.Linear or 1x1 nn.Conv2d"
        quantized = sum(isinstance(m, QuantizedLinear) for m in module.modules())
        if quantized:
            has += f"; {quantized} layers are QuantizedLinear already"
        raise ValueError(f"{what}: the recipe {os.fspath(recipe)} selects no linear layer of the module ({has}); "
                         f"check layers.preset and layers.include")
    return {n: linears[n] for n in selected}


def _swap(module: "nn.Module", path: str, new: "nn.Module", what: str) -> None:
    if not path:
        raise ValueError(f"{what}: the module itself is an nn.Linear; wrap it in a module to swap it")
    parent, _, child = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child, new)


# ---- captured activations for the report ---------------------------------------------------------------

def _activation_stats(activations: Any) -> Any:
    """A capture (loraq.capture's dict) as given, or an activation file read back."""
    from .capture import load_activations  # noqa: PLC0415

    return load_activations(activations) if isinstance(activations, (str, os.PathLike)) else activations


def _absmax_of(entry: Any) -> Optional[np.ndarray]:
    """A capture entry's per-channel max |x| (LayerActivations.absmax or a dict's input_absmax)."""
    if entry is None:
        return None
    value = entry.absmax if hasattr(entry, "absmax") else entry.get("input_absmax")
    return None if value is None else np.ascontiguousarray(value, dtype=np.float32)


def _activation_rows(stats: Any, names: Iterable[str], what: str) -> dict[str, np.ndarray]:
    """Input rows [n, in] per layer (C-contiguous float32)."""
    rows = {}
    for n in names:
        entry = stats.get(n) if isinstance(stats, Mapping) else None
        if entry is None:
            raise ValueError(f"{what}: the activations hold no rows for layer '{n}' (tensor {n}.input_rows)")
        rows[n] = np.ascontiguousarray(entry.rows if hasattr(entry, "rows") else entry["input_rows"], dtype=np.float32)
    return rows


def _sqnr_db(signal: "torch.Tensor", noise: "torch.Tensor") -> float:
    s, e = float(signal.double().square().sum()), float(noise.double().square().sum())
    return math.inf if e == 0 else 10 * math.log10(s / e) if s > 0 else -math.inf


# ---- from a recipe -----------------------------------------------------------------------------------

def quantize_module(module: "nn.Module", recipe: PathLike, *, activations: Any = None,
                    layers: Optional[Iterable[str]] = None, threads: int = 0,
                    unsigned_shift: Union[Shift, Mapping[str, Shift]] = None,
                    backend: str = "fake_quant", device: str = "cpu",
                    layers_in_flight: Optional[int] = None) -> dict[str, Any]:
    """Quantizes, in place, the nn.Linear and pointwise (1x1) nn.Conv2d modules of `module` whose
    "PATH.weight" the recipe file's layer selection picks (the same C++ selection as `loraq quantize`,
    applied to these weights only), each with loraq.quantize_weight(recipe=..., layer="PATH.weight"),
    and swaps in a QuantizedLinear (a QuantizedPointwiseConv2d around one for a convolution) with
    that layer's activation formats (activations.residual / .branch / .intermediate).

    layers: restrict to these module paths (or weight names); each must be an nn.Linear that the
    recipe selects. activations: a capture (loraq.capture.capture_activations) or an activation file
    (docs/activations.md); with it, each report row adds, over the captured rows X,
    output_sqnr_db = 10 log10(||X W^T||^2 / ||X W^T - Y_q||^2) with Y_q the QuantizedLinear's output
    without bias (activation formats and shift included; what `loraq quantize --activations` reports
    as computed by src/methods/smoothing.cpp's quantized_output), and output_sqnr_db_weights, the
    same with Y_q = X W_eff^T (the weights alone). unsigned_shift: see QuantizedLinear; one value
    for every layer or a {path: value} map. threads: 0 = every core. device: where LoRaQ's
    optimization loops run, "cpu", "cuda" or "cuda:N" (loraq.quantize_weight's device=).
    layers_in_flight: layers quantized at once, each on its own thread (default 1 on the CPU, whose
    cores already share each layer; 8 on a GPU, where each layer's loop waits for its objective every
    step and the others keep the GPU busy, as `loraq quantize --device cuda` does). The results do
    not depend on it.

    Returns {"layers": [rows], "parameters": n}, a row per layer: name (the weight's), out_features,
    in_features, method, residual_format, branch_format, rank, residual_activation,
    branch_activation, intermediate_activation, relative_error, branch_quant_error, bits_per_value,
    seconds. Errors (ValueError, loraq.Error among them) name the recipe, the layer or the tensor; no
    module is swapped unless every selected layer quantized.
    """
    what = "quantize_module"
    selected = _selected_linears(module, recipe, layers, what)
    stats = _activation_stats(activations) if activations is not None else None
    rows = _activation_rows(stats, selected, what) if stats is not None else None
    if rows is not None:
        for n, r in rows.items():
            if r.ndim != 2 or r.shape[1] != _features(selected[n])[1]:
                raise ValueError(f"{what}: activation rows of layer '{n}' have shape {r.shape}, the layer takes "
                                 f"[n, {_features(selected[n])[1]}]")
    if layers_in_flight is None:
        layers_in_flight = 1 if device == "cpu" else _core.DEVICE_LAYERS_IN_FLIGHT
    if isinstance(layers_in_flight, bool) or not isinstance(layers_in_flight, int) or layers_in_flight < 1:
        raise ValueError(f"{what}: layers_in_flight must be an int >= 1, got {layers_in_flight!r}")
    weights = {path: linear.weight.detach().to(torch.float32).reshape(_features(linear))  # [out, in] (1x1 conv too)
               for path, linear in selected.items()}

    def quantize(path: str) -> Any:
        captured = stats.get(path) if isinstance(stats, Mapping) else None
        return quantize_weight(weights[path].to("cpu").contiguous().numpy(), recipe=recipe, layer=f"{path}.weight",
                               threads=threads, device=device, activations=None if captured is None else rows[path],
                               absmax=_absmax_of(captured))

    # The C++ call releases the GIL, so layers in flight overlap; results are taken in layer order.
    if layers_in_flight == 1 or len(selected) == 1:
        quantized = {path: quantize(path) for path in selected}
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=layers_in_flight) as pool:
            quantized = dict(zip(selected, pool.map(quantize, selected)))
    swaps, report = {}, []
    for path, linear in selected.items():
        weight_name, weight, q = f"{path}.weight", weights[path], quantized[path]
        entry = _core.recipe_layer(os.fspath(recipe), weight_name)
        shift = unsigned_shift.get(path) if isinstance(unsigned_shift, Mapping) else unsigned_shift
        new = QuantizedLinear(q.residual, q.down, q.up, linear.bias, q.smooth,
                              residual_activation=entry["residual_activation"],
                              branch_activation=entry["branch_activation"],
                              intermediate_activation=entry["intermediate_activation"], unsigned_shift=shift,
                              name=path, backend=backend,
                              packed=(q.packed_residual, q.packed_down, q.packed_up)).to(linear.weight.device)
        row = {"name": weight_name, "out_features": q.out_features, "in_features": q.in_features, "method": q.method,
               "residual_format": q.residual_format, "branch_format": q.branch_format, "rank": q.rank,
               "residual_activation": entry["residual_activation"], "branch_activation": entry["branch_activation"],
               "intermediate_activation": entry["intermediate_activation"],
               **q.metrics}
        if rows is not None:
            x = torch.from_numpy(rows[path]).to(linear.weight.device)
            with torch.no_grad():
                reference = x @ weight.T
                weight_only = x @ (new.effective_weight() - weight).T
                full = new(x) - (new.bias if new.bias is not None else 0)
            row["output_sqnr_db"] = _sqnr_db(reference, full - reference)
            row["output_sqnr_db_weights"] = _sqnr_db(reference, weight_only)
        swaps[path] = _quantized_like(linear, new)
        report.append(row)
    for path, new in swaps.items():
        _swap(module, path, new, what)
    return {"layers": report, "parameters": sum(r["out_features"] * r["in_features"] for r in report)}


# ---- from a quantized checkpoint ---------------------------------------------------------------------

_CHECKPOINT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                     "model.safetensors", "model.safetensors.index.json")


def _checkpoint_shards(path: pathlib.Path) -> list[pathlib.Path]:
    """The safetensors files of a checkpoint: one file, a shard index, or a diffusers folder."""
    if path.is_dir():
        found = [path / n for n in _CHECKPOINT_FILES if (path / n).exists()]
        if len(found) != 1:
            raise ValueError(f"load_quantized: {path}: expected exactly one of {', '.join(_CHECKPOINT_FILES)}, "
                             f"found {len(found)}")
        path = found[0]
    if not path.exists():
        raise ValueError(f"load_quantized: {path}: no such file or folder")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"load_quantized: {path}: not a shard index ({e})") from None
        return [path.parent / f for f in sorted(set(weight_map.values()))]
    return [path]


class _Tensors:
    """The tensors of every shard, read one at a time (safetensors' torch reader: U8, F16, BF16, F32)."""

    def __init__(self, shards: list[pathlib.Path]) -> None:
        try:
            from safetensors import safe_open  # noqa: PLC0415
        except ImportError as e:
            raise ImportError("load_quantized needs the safetensors library (pip install safetensors)") from e
        self.where: dict[str, pathlib.Path] = {}
        self.metadata: dict[str, str] = {}
        self._open = safe_open
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                self.metadata = self.metadata or dict(f.metadata() or {})
                for key in f.keys():
                    self.where[key] = shard

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def __getitem__(self, name: str) -> "torch.Tensor":
        with self._open(str(self.where[name]), framework="pt") as f:
            return f.get_tensor(name)


def _uint8(t: "torch.Tensor", what: str) -> np.ndarray:
    if t.dtype != torch.uint8:
        raise ValueError(f"load_quantized: {what} has dtype {t.dtype}, expected uint8 codes or scales")
    return np.ascontiguousarray(t.numpy())


def _decode(tensors: _Tensors, fmt: str, base: str, rows: int, cols: int, layer: str) -> tuple:
    """The float32 values of one stored matrix (docs/checkpoint.md), decoded by loraq.unpack, and
    its PackedMatrix (for backend="kernel")."""
    if fmt in ("fp16", "bf16") and base in tensors:  # a 16-bit branch factor, stored as itself
        t = tensors[base]
        if tuple(t.shape) != (rows, cols):
            raise ValueError(f"load_quantized: layer '{layer}': {base} has shape {tuple(t.shape)}, expected "
                             f"({rows}, {cols})")
        values = t.to(torch.float32)  # exact widening
        return values, _core.pack(np.ascontiguousarray(values.numpy()), fmt)  # exact: the values are 16-bit
    if base + ".qweight" not in tensors:
        raise ValueError(f"load_quantized: layer '{layer}': the checkpoint has no tensor {base}.qweight")
    codes = _uint8(tensors[base + ".qweight"], base + ".qweight")
    scales = _uint8(tensors[base + ".wscales"], base + ".wscales") if base + ".wscales" in tensors \
        else np.zeros(0, np.uint8)
    tensor_scale = 1.0
    if base + ".wscale_global" in tensors:
        stored = tensors[base + ".wscale_global"]
        if stored.numel() != 1:
            raise ValueError(f"load_quantized: layer '{layer}': {base}.wscale_global holds {stored.numel()} values, "
                             f"expected 1 (nvfp4's tensor scale)")
        tensor_scale = float(stored.to(torch.float32).reshape(-1)[0])
    try:
        packed = PackedMatrix(fmt, rows, cols, codes, scales, tensor_scale)
    except ValueError as e:
        raise type(e)(f"load_quantized: layer '{layer}': {base}: {e}") from None
    return torch.from_numpy(unpack(packed)), packed


def load_quantized(module: "nn.Module", checkpoint: PathLike, *,
                   unsigned_shift: Union[Shift, Mapping[str, Shift]] = None, backend: str = "fake_quant") -> list[str]:
    """Swaps in a QuantizedLinear for every layer of a quantized checkpoint written by `loraq quantize`
    (a folder, a .safetensors file or a shard index; layout in docs/checkpoint.md), with the layer's
    activation formats from the metadata (loraq.layers: residual_activation, branch_activation and,
    where the recipe set one, intermediate_activation; 16-bit when a file predates them). Codes are decoded by loraq.unpack; a 16-bit branch is read as stored.
    The bias is the checkpoint's P.bias when it has one, else the module's. Other tensors of the
    checkpoint (norms, embedders) are not loaded: the module keeps its own.

    Every layer must be an nn.Linear or 1x1 nn.Conv2d of `module` (or one already swapped) with the
    checkpoint's [out, in]; otherwise ValueError naming the layer, before any module is swapped. Returns the
    module paths swapped."""
    what = "load_quantized"
    tensors = _Tensors(_checkpoint_shards(pathlib.Path(checkpoint)))
    if "loraq.layers" not in tensors.metadata:
        raise ValueError(f"{what}: {checkpoint}: not a quantized checkpoint (no loraq.layers metadata; "
                         f"docs/checkpoint.md)")
    # Checked by the C++ reader `loraq export` uses: a hostile table is a loraq.Error naming the layer.
    table = json.loads(_core.layer_table_json(tensors.metadata["loraq.layers"], f"{what}: {checkpoint}"))
    modules = dict(module.named_modules())
    swaps = {}
    for layer in table:
        name = layer["name"]
        path = _strip_weight(name)
        target = modules.get(path)
        if not (isinstance(target, (nn.Linear, QuantizedLinear, QuantizedPointwiseConv2d)) or _is_pointwise_conv(target)):
            kind = "does not exist in the module" if target is None \
                else f"is a {type(target).__name__}, not an nn.Linear or a 1x1 nn.Conv2d"
            raise ValueError(f"{what}: layer '{name}' of {checkpoint}: module '{path}' {kind}")
        shape = layer["shape"]
        out_features, in_features = int(shape[0]), int(shape[1])
        have = _features(target)
        if have != (out_features, in_features) or (len(shape) == 4 and tuple(shape[2:]) != (1, 1)):
            raise ValueError(f"{what}: layer '{name}': the checkpoint's weight is {list(shape)}, the module's "
                             f"{type(target).__name__} is [{have[0]}, {have[1]}]")
        residual, packed_residual = _decode(tensors, layer["residual"], path, out_features, in_features, name)
        down = up = packed_down = packed_up = None
        if layer.get("branch"):
            rank = int(layer["rank"])
            down, packed_down = _decode(tensors, layer["branch"], path + ".lora_down", rank, in_features, name)
            up, packed_up = _decode(tensors, layer["branch"], path + ".lora_up", out_features, rank, name)
        smooth = None
        if layer.get("smoothed"):
            if path + ".smooth_factor" not in tensors:
                raise ValueError(f"{what}: layer '{name}' is smoothed but the checkpoint has no {path}.smooth_factor")
            smooth = tensors[path + ".smooth_factor"]
        inner = target.linear if isinstance(target, QuantizedPointwiseConv2d) else target
        bias = tensors[path + ".bias"] if path + ".bias" in tensors else inner.bias
        device = inner.residual.device if isinstance(inner, QuantizedLinear) else inner.weight.device
        shift = unsigned_shift.get(path) if isinstance(unsigned_shift, Mapping) else unsigned_shift
        try:
            new = QuantizedLinear(residual, down, up, bias, smooth,
                                  residual_activation=layer.get("residual_activation"),
                                  branch_activation=layer.get("branch_activation"),
                                  intermediate_activation=layer.get("intermediate_activation"),
                                  unsigned_shift=shift, name=path, backend=backend,
                                  packed=(packed_residual, packed_down, packed_up)).to(device)
            swaps[path] = _quantized_like(target, new)
        except ValueError as e:
            raise ValueError(f"{what}: layer '{name}': {e}") from None
    for path, new in swaps.items():
        _swap(module, path, new, what)
    return list(swaps)
