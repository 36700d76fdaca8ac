"""Sampling the Fashion-MNIST DiT (tools/train_dit.py) and picturing the results: DDIM with
classifier-free guidance from fixed seeds (the same noise for every model compared), PNG grids,
and an SVG loss curve."""
import pathlib

import numpy as np
import torch

NULL_CLASS = 10  # diffusers' label embedding keeps index num_classes for "no class"


@torch.no_grad()
def sample(model, labels: torch.Tensor, seed: int, steps: int = 50, guidance: float = 2.0,
           scheduler_config: dict | None = None, batch: int = 256) -> torch.Tensor:
    """Images [n, 1, 28, 28] in [-1, 1] for class `labels` [n]. Sample i's noise depends only on
    (seed, i), so every model (16-bit or quantized) starts from the same noise."""
    from diffusers import DDIMScheduler

    import train_dit  # noqa: PLC0415  (the schedule the model was trained with)
    config = scheduler_config or train_dit.SCHEDULER
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(labels), batch):
        y = labels[start:start + batch].to(device)
        noise = torch.stack([torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(seed * 1_000_003 + start + i))
                             for i in range(len(y))]).to(device)
        scheduler = DDIMScheduler(**config)
        scheduler.set_timesteps(steps)
        x = noise
        for t in scheduler.timesteps:
            tt = torch.full((len(y),), int(t), device=device, dtype=torch.long)
            both = model(torch.cat([x, x]), timestep=torch.cat([tt, tt]),
                         class_labels=torch.cat([y, torch.full_like(y, NULL_CLASS)])).sample
            cond, uncond = both.chunk(2)
            eps = uncond + guidance * (cond - uncond)
            x = scheduler.step(eps, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.squeeze(1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def save_grid(images: torch.Tensor, path: pathlib.Path, columns: int, pad: int = 2, labels: list[str] | None = None):
    """A grid PNG of images [n, 1, 28, 28] in [-1, 1], `columns` per row (row labels on the left when given)."""
    import image_grid  # noqa: PLC0415
    image_grid.save_grid(to_uint8(images), path, columns, pad, labels)


def save_loss_curve(losses: np.ndarray, path: pathlib.Path):
    """losses [[step, loss], ...] as an SVG polyline on a log-scale loss axis."""
    w, h, m = 640, 360, 50
    steps, values = losses[:, 0], np.log10(losses[:, 1])
    lo, hi = values.min(), values.max()
    xs = m + (steps - steps.min()) / max(1, steps.max() - steps.min()) * (w - 2 * m)
    ys = h - m - (values - lo) / max(1e-9, hi - lo) * (h - 2 * m)
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/><polyline fill="none" stroke="#1f77b4" points="{points}"/>'
        f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">step (0 to {int(steps.max())})</text>'
        f'<text x="{m}" y="{m - 10}">training loss, log scale: {10 ** hi:.3f} to {10 ** lo:.4f}</text></svg>\n')
