"""Fashion-MNIST from Debian's dataset-fashion-mnist package (scripts/install-deps.sh installs it),
read from its IDX files with numpy: no download."""
import gzip
import os
import pathlib

import numpy as np

DATA = pathlib.Path(os.environ.get("LORAQ_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _idx(path: pathlib.Path, magic: int) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"{path}: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist, "
                                "or set LORAQ_FASHION_MNIST to a folder holding the IDX files)")
    raw = gzip.decompress(path.read_bytes())
    header = np.frombuffer(raw[:4], dtype=">u4")[0]
    if header != magic:
        raise ValueError(f"{path}: not an IDX file of the expected kind (magic {header:#x}, expected {magic:#x})")
    dims = int(raw[3])
    shape = tuple(int(d) for d in np.frombuffer(raw[4:4 + 4 * dims], dtype=">u4"))
    return np.frombuffer(raw[4 + 4 * dims:], dtype=np.uint8).reshape(shape)


def load(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images [n, 28, 28] uint8 and labels [n] uint8; split "train" (60 000) or "test" (10 000)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _idx(DATA / f"{prefix}-images-idx3-ubyte.gz", 0x803)
    labels = _idx(DATA / f"{prefix}-labels-idx1-ubyte.gz", 0x801)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{DATA}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split")
    return images, labels
