"""PNG grids of generated images: one row per configuration, the same seeds in every column."""
import pathlib

import numpy as np


def save_grid(pixels: np.ndarray, path: pathlib.Path, columns: int, pad: int = 2, labels: list[str] | None = None):
    """`pixels` uint8 [n, h, w] (grey) or [n, h, w, 3] (RGB), `columns` per row, with each row's label
    written on the left when given."""
    from PIL import Image, ImageDraw

    n, h, w = pixels.shape[:3]
    mode = "RGB" if pixels.ndim == 4 else "L"
    white = (255, 255, 255) if mode == "RGB" else 255
    rows = (n + columns - 1) // columns
    left = 110 if labels else 0
    grid = Image.new(mode, (left + columns * (w + pad) + pad, rows * (h + pad) + pad), white)
    for i, img in enumerate(pixels):
        r, c = divmod(i, columns)
        grid.paste(Image.fromarray(img, mode), (left + pad + c * (w + pad), pad + r * (h + pad)))
    if labels:
        draw = ImageDraw.Draw(grid)
        for r, text in enumerate(labels):
            draw.text((4, pad + r * (h + pad) + h // 2 - 6), text[:18], fill=0 if mode == "L" else (0, 0, 0))
    grid.save(path)
