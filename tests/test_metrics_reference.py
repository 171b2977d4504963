"""Our PSNR and SSIM (infdit_cli.evaluate) agree with scikit-image's, the usual reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infdit_cli.evaluate import psnr, ssim

metrics = pytest.importorskip("skimage.metrics")


def _pair(seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:64]
    base = np.stack([128 + 100 * np.sin(xx / (5 + c)) * np.cos(yy / 7) for c in range(3)], axis=-1)
    a = np.clip(base, 0, 255).round()
    b = np.clip(a + rng.normal(0, noise, a.shape), 0, 255).round()
    return a, b


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(2, 0, 1)[None]


@pytest.mark.parametrize(("seed", "noise"), [(0, 2.0), (1, 12.0), (2, 40.0)])
def test_psnr_and_ssim_match_scikit_image(seed: int, noise: float) -> None:
    a, b = _pair(seed, noise)
    assert psnr(_t(b), _t(a)) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    reference = metrics.structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False)
    assert ssim(_t(a), _t(b)) == pytest.approx(reference, abs=1e-6)
    assert ssim(_t(a), _t(a)) == pytest.approx(1.0) and psnr(_t(a), _t(a)) == float("inf")
