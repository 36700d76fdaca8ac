"""An independent reader of loraq's quantized checkpoints, written from docs/checkpoint.md and
../shared/FORMATS.md with numpy and ml_dtypes only, so that the tests can check what `loraq` writes
without going through loraq's own decoder."""
import json

import ml_dtypes
import numpy as np

# name -> (element decoder, block size, scale kind)
_FLOAT_ELEMENTS = {
    "e2m1": (ml_dtypes.float4_e2m1fn, 4),
    "e2m3": (ml_dtypes.float6_e2m3fn, 6),
    "e3m2": (ml_dtypes.float6_e3m2fn, 6),
    "e4m3": (ml_dtypes.float8_e4m3fn, 8),
    "e5m2": (ml_dtypes.float8_e5m2, 8),
}
FORMATS = {
    "mxfp8_e4m3": ("e4m3", 32, "e8m0"),
    "mxfp8_e5m2": ("e5m2", 32, "e8m0"),
    "mxfp6_e2m3": ("e2m3", 32, "e8m0"),
    "mxfp6_e3m2": ("e3m2", 32, "e8m0"),
    "mxfp4": ("e2m1", 32, "e8m0"),
    "mxint8": ("int8", 32, "e8m0"),
    "mxint4": ("int4", 32, "e8m0"),
    "sint4": ("sint4", 64, "fp16"),
    "nvfp4": ("e2m1", 16, "e4m3"),
    "int8_channel": ("int8_channel", None, "fp32"),
}


def _element_bits(element):
    if element in _FLOAT_ELEMENTS:
        return _FLOAT_ELEMENTS[element][1]
    return 8 if element in ("int8", "int8_channel") else 4


def _unpack_codes(packed, bits, cols):
    """FORMATS.md "Packed storage": 4-bit codes low nibble first, 6-bit codes as a little-endian
    bit stream of four codes per three bytes, 8-bit codes as bytes."""
    if bits == 8:
        return packed[:, :cols].astype(np.uint8)
    if bits == 4:
        codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
        return codes[:, :cols].astype(np.uint8)
    b = packed.astype(np.uint32).reshape(packed.shape[0], -1, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    codes = np.stack([(word >> (6 * j)) & 0x3F for j in range(4)], axis=-1).reshape(packed.shape[0], -1)
    return codes[:, :cols].astype(np.uint8)


def _element_values(element, codes):
    if element in _FLOAT_ELEMENTS:
        dtype = _FLOAT_ELEMENTS[element][0]
        return codes.view(dtype).astype(np.float32)  # ml_dtypes keeps sub-byte floats one per byte
    signed = codes.astype(np.int16)
    if element in ("int4", "sint4"):
        signed = np.where(signed >= 8, signed - 16, signed)  # two's complement nibble
    else:
        signed = np.where(signed >= 128, signed - 256, signed)
    divisor = {"int8": 64, "int4": 4, "sint4": 1, "int8_channel": 1}[element]
    return signed.astype(np.float32) / np.float32(divisor)


def decode(fmt, tensors, base, rows, cols):
    """The fp32 values of one packed matrix stored under `base` (".qweight", ".wscales",
    ".wscale_global"), or stored as a plain F16/BF16 tensor `base` for a 16-bit branch factor."""
    if fmt in ("fp16", "bf16"):
        if base in tensors:
            return tensors[base].astype(np.float32)
        dtype = np.float16 if fmt == "fp16" else ml_dtypes.bfloat16
        return tensors[base + ".qweight"].view(dtype).reshape(rows, cols).astype(np.float32)
    element, block, scale_kind = FORMATS[fmt]
    codes = _unpack_codes(tensors[base + ".qweight"], _element_bits(element), cols)
    values = _element_values(element, codes)
    raw = tensors[base + ".wscales"]
    if scale_kind == "e8m0":
        exponent = raw.astype(np.int32) - 127
        scale = np.where(raw == 0xFF, np.float32(np.nan), np.ldexp(np.float32(1), exponent).astype(np.float32))
    elif scale_kind == "fp16":
        scale = raw.view(np.float16).astype(np.float32)
    elif scale_kind == "e4m3":
        scale = raw.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    else:
        scale = raw.view(np.float32)
    if block is None:
        scale = np.repeat(scale, cols, axis=1)
    else:
        scale = np.repeat(scale, block, axis=1)[:, :cols]
    out = values * scale
    if fmt == "nvfp4":
        out = (values * scale) * tensors[base + ".wscale_global"].astype(np.float32)[0]  # FORMATS.md's order
    return out.astype(np.float32)


def layer_table(metadata):
    return json.loads(metadata["loraq.layers"])


def effective_weight(layer, tensors):
    """Q1 residual + up @ down, summed rank by rank in fp32 in the order docs/checkpoint.md gives,
    then divided by the smoothing vector: the bits `loraq export --dequantized --dtype F32` writes."""
    name = layer["name"]
    prefix = name[: -len(".weight")] if name.endswith(".weight") else name
    out, inp = layer["shape"][0], layer["shape"][1]  # [out, in] or [out, in, 1, 1]
    w = decode(layer["residual"], tensors, prefix, out, inp)
    if layer["branch"]:
        rank = layer["rank"]
        down = decode(layer["branch"], tensors, prefix + ".lora_down", rank, inp)
        up = decode(layer["branch"], tensors, prefix + ".lora_up", out, rank)
        for k in range(rank):
            w = w + up[:, k : k + 1] * down[k][None, :]
    if layer["smoothed"]:
        w = w / tensors[prefix + ".smooth_factor"][None, :]
    return w
