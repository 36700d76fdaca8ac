"""Image metrics of the end-to-end evaluation, in numpy/torch (tests/python/test_image_metrics.py
checks them against scikit-image and scipy): PSNR and SSIM of a quantized model's images against the
16-bit model's, and the Frechet distance between two feature sets."""
import numpy as np
import torch


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """Per-image PSNR in dB of images [n, h, w] (values in [-1, 1]: range 2); inf where equal."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range ** 2 / mse)


def mean_psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """The mean per-image PSNR, identical images counted as 99 dB (so that the mean stays finite)."""
    return float(np.mean(np.minimum(psnr(a, b, data_range), 99.0)))


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g /= g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) of images [n, h, w]: an 11 x 11 Gaussian window (sigma 1.5,
    as in the paper), K1 = 0.01, K2 = 0.03, sample covariances, the mean over the valid region, as
    scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=True)
    computes it (the valid region is where the window stays inside the image)."""
    x = torch.from_numpy(a.astype(np.float64))[:, None]
    y = torch.from_numpy(b.astype(np.float64))[:, None]
    w = _gaussian_window(window, sigma)
    conv = lambda t: torch.nn.functional.conv2d(t, w)  # noqa: E731  (valid region only)
    n = window * window
    cov_norm = n / (n - 1)  # sample covariance
    ux, uy = conv(x), conv(y)
    vx = cov_norm * (conv(x * x) - ux * ux)
    vy = cov_norm * (conv(y * y) - uy * uy)
    vxy = cov_norm * (conv(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of feature sets [n, d], in float64. The
    trace of the matrix square root is the sum of the square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2), which is symmetric positive semi-definite (no complex round-off)."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    values, vectors = np.linalg.eigh(s1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ s2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_root)
