"""The end-to-end evaluation's image metrics (tools/image_metrics.py) against implementations nobody
here wrote: scikit-image's PSNR and SSIM, scipy's matrix square root for the Frechet distance."""
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))
import image_metrics  # noqa: E402

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
scipy_linalg = pytest.importorskip("scipy.linalg", reason="scipy is not installed")


def images(seed, n=6):
    rng = np.random.default_rng(seed)
    a = np.clip(rng.standard_normal((n, 28, 28)) * 0.5, -1, 1)
    b = np.clip(a + rng.standard_normal((n, 28, 28)) * rng.uniform(0.01, 0.3, (n, 1, 1)), -1, 1)
    return a, b


def test_psnr_equals_scikit_image():
    a, b = images(0)
    ours = image_metrics.psnr(a, b)
    for i in range(len(a)):
        assert ours[i] == pytest.approx(skimage_metrics.peak_signal_noise_ratio(a[i], b[i], data_range=2.0), rel=1e-12)
    assert np.isinf(image_metrics.psnr(a, a)).all()


def test_ssim_equals_scikit_image():
    a, b = images(1)
    ours = image_metrics.ssim(a, b)
    for i in range(len(a)):
        ref = skimage_metrics.structural_similarity(a[i], b[i], data_range=2.0, gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=True)
        assert ours[i] == pytest.approx(ref, abs=1e-10)
    assert image_metrics.ssim(a, a) == pytest.approx(np.ones(len(a)))


def test_frechet_distance_equals_scipy_sqrtm():
    rng = np.random.default_rng(2)
    f1 = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    f2 = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16)) + 0.3
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    ref = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert image_metrics.frechet_distance(f1, f2) == pytest.approx(ref, rel=1e-8)
    assert abs(image_metrics.frechet_distance(f1, f1)) < 1e-8
