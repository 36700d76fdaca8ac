#!/usr/bin/env python3
"""One PixArt-Sigma-sized diffusers BasicTransformerBlock (dim 1152, 16 heads of 72, cross-attention
to 1152-wide text tokens, GELU feed-forward 4608) in fp32 torch, then with its 10 linears swapped for
loraq layers on the quantized kernels (backend="kernel") and on torch fake quantization
(backend="fake_quant"), all timed in the same process: medians of --repeat forwards after a warm-up.
Attention, norms and the rest of the block stay fp32 torch in every case.

The layers are data-free SVD + quantized residual (method svd_lowrank): the kernels' speed depends on
the formats and the rank, not on how the branch was found, and LoRaQ's optimization would take
minutes here. Default W4A8: sint4 residual with mxint8 activations, mxint8 branch at rank 62 with
mxint8 activations.

  ~/.cache/loraq/venv/bin/python bench/bench_torch_block.py [--tokens 1024] [--repeat 5] [--device cuda]

With --device cuda the block and its inputs live on the GPU: the fp32 block runs cuBLAS, "kernel"
runs loraq's CUDA kernels from device memory (QuantizedLinear's GPU path) and "fake_quant" quantizes
activations on the device (loraq._torch_codec); each timed forward ends with a synchronization.
"""
import argparse
import pathlib
import statistics
import tempfile
import time

import torch
from diffusers.models.attention import BasicTransformerBlock

import loraq.torch as lt


class Blocks(torch.nn.Module):
    """quantize_module's pixart-sigma preset matches layers under transformer_blocks.N."""

    def __init__(self):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([BasicTransformerBlock(
            1152, num_attention_heads=16, attention_head_dim=72, cross_attention_dim=1152,
            activation_fn="gelu-approximate", norm_type="layer_norm")])

    def forward(self, x, context):
        return self.transformer_blocks[0](x, encoder_hidden_states=context)


def median_seconds(model, x, context, repeat):
    def sync():
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    with torch.no_grad():
        model(x, context)  # warm-up: per-thread buffers, lazy init, the GPU kernels' construction
        sync()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            out = model(x, context)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="image tokens (1024: a 512 px PixArt latent)")
    parser.add_argument("--context", type=int, default=120, help="text tokens")
    parser.add_argument("--rank", type=int, default=62)
    parser.add_argument("--residual-activations", default="mxint8", help="mxint8 (W4A8) or sint4 (W4A4)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the block, its inputs and the layers)")
    args = parser.parse_args()

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, args.tokens, 1152, generator=g)
    context = torch.randn(1, args.context, 1152, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = pathlib.Path(tmp) / "block.yaml"
        recipe.write_text(
            "name: block\nmethod: svd_lowrank\nresidual: {format: sint4}\n"
            f"branch: {{format: mxint8, rank: {args.rank}}}\n"
            f"activations: {{residual: {args.residual_activations}, branch: mxint8}}\n"
            "layers: {preset: pixart-sigma}\n")
        models = {"fp32": Blocks().eval()}
        for backend in ("kernel", "fake_quant"):
            model = Blocks().eval()
            model.load_state_dict(models["fp32"].state_dict())
            lt.quantize_module(model, recipe, backend=backend)
            models[backend] = model
    models = {name: model.to(args.device) for name, model in models.items()}
    x, context = x.to(args.device), context.to(args.device)

    where = torch.cuda.get_device_name(x.device) if x.device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{where}, tokens {args.tokens}, context {args.context}, rank {args.rank}, "
          f"residual activations {args.residual_activations}")
    layer = next(m for m in models["kernel"].modules() if isinstance(m, lt.QuantizedLinear))
    print(f"first layer: {layer!r}")
    seconds, outputs = {}, {}
    for name, model in models.items():
        seconds[name], outputs[name] = median_seconds(model, x, context, args.repeat)
    for name in models:
        print(f"{name:>10}: {seconds[name] * 1e3:8.1f} ms   fp32 / this = {seconds['fp32'] / seconds[name]:.2f}")
    fallbacks = {m.gpu_fallback for m in models["kernel"].modules() if isinstance(m, lt.QuantizedLinear)} - {None}
    if fallbacks:
        print(f"layers that ran on the CPU kernels: {sorted(fallbacks)}")
    diff = float((outputs["kernel"] - outputs["fake_quant"]).norm() / outputs["fake_quant"].norm())
    err = float((outputs["kernel"] - outputs["fp32"]).norm() / outputs["fp32"].norm())
    print(f"kernel vs fake_quant output: {diff:.2e} relative; quantized vs fp32 block: {err:.2e} relative")


if __name__ == "__main__":
    main()
