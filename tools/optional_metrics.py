"""torchmetrics' LPIPS and FID for text-to-image evaluations, used only when their networks' weights
are already on this machine: these machines cannot download them, and an evaluation must never hang
on a download. Each loader returns (compute(images, reference) -> float, None) or (None, why not).
Images are float arrays [n, h, w, 3] in [0, 1]."""
import pathlib

import numpy as np
import torch


def _hub_checkpoint(pattern: str) -> pathlib.Path | None:
    found = sorted((pathlib.Path(torch.hub.get_dir()) / "checkpoints").glob(pattern))
    return found[0] if found else None


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)


def lpips(batch: int = 16):
    """LPIPS (AlexNet) of each image against its reference, averaged; lower is closer."""
    try:
        import torchvision
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except ImportError as e:
        return None, f"needs the Python package {e.name}"
    name = pathlib.Path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name
    if _hub_checkpoint(name) is None:
        return None, f"AlexNet's weights are not in {pathlib.Path(torch.hub.get_dir()) / 'checkpoints' / name}"
    try:
        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    except Exception as e:  # noqa: BLE001  (any failure to build it makes the column unavailable)
        return None, f"torchmetrics' LPIPS failed to load: {e}"

    def compute(images: np.ndarray, reference: np.ndarray) -> float:
        metric.reset()
        for i in range(0, len(images), batch):
            metric.update(_nchw(images[i:i + batch]), _nchw(reference[i:i + batch]))
        return float(metric.compute())
    return compute, None


def fid(weights: str | None = None, batch: int = 16):
    """FID (Inception-v3 pool features, 2048-d) of the images against the reference images."""
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' FID runs on it)
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:
        return None, f"needs the Python package {e.name}"
    path = pathlib.Path(weights) if weights else _hub_checkpoint("weights-inception-2015-12-05-*.pth")
    if path is None or not path.exists():
        return None, (f"the Inception weights are not at {path}" if path else
                      "the Inception weights (weights-inception-2015-12-05-*.pth) are not in "
                      f"{pathlib.Path(torch.hub.get_dir()) / 'checkpoints'}; --fid-weights names them")
    try:
        metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))
    except Exception as e:  # noqa: BLE001
        return None, f"torchmetrics' FID failed to load: {e}"

    def compute(images: np.ndarray, reference: np.ndarray) -> float:
        metric.reset()
        for i in range(0, len(images), batch):
            metric.update(_nchw(reference[i:i + batch]), real=True)
            metric.update(_nchw(images[i:i + batch]), real=False)
        return float(metric.compute())
    return compute, None
