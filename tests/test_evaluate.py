"""Evaluation metrics on known cases, and an end-to-end run with a tiny random model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from infdit_cli.config import preset
from infdit_cli.evaluate import evaluate, gradient_energy, psnr, ssim
from infdit_cli.model import InfDiT
from infdit_cli.pipeline import UpscaleOptions, Upscaler


@dataclass
class _Result:
    image: torch.Tensor


class NearestPlus:
    """A stand-in upscaler: nearest ×4 of the LR, brightened by `offset` grey levels."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def upscale(self, image: torch.Tensor, options: object) -> _Result:
        return _Result(F.interpolate(image, scale_factor=4, mode="nearest") + self.offset / 255)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def test_metric_known_values():
    a = torch.full((1, 3, 32, 32), 100.0)
    assert math.isclose(psnr(a + 5, a), 10 * math.log10(255**2 / 25))
    assert psnr(a, a) == math.inf
    x = torch.rand(1, 3, 40, 40) * 255
    assert math.isclose(ssim(x, x), 1.0, abs_tol=1e-12) and ssim(x, torch.rand(1, 3, 40, 40) * 255) < 0.2
    ramp = torch.arange(16.0).expand(1, 3, 16, 16)  # slope 1 along x, flat along y
    assert math.isclose(gradient_energy(ramp), 1.0)


def test_known_case_constant_image(tmp_path):
    """HR constant 100 -> LR 100 exactly; the stand-in returns 110, so PSNR = 10·log10(255²/10²)."""
    save(tmp_path / "flat.png", np.full((37, 45, 3), 100))  # cropped to 36 × 44
    report = evaluate(NearestPlus(10), tmp_path, None)
    (score,) = report.images
    assert score.size == (44, 36)
    assert math.isclose(score.psnr, 10 * math.log10(255**2 / 100), rel_tol=1e-9)
    assert score.psnr_bicubic == math.inf and math.isclose(score.ssim_bicubic, 1.0)
    assert score.grad_model == 0 and score.grad_truth == 0
    assert report.mean()["psnr"] == score.psnr


def test_evaluate_tiny_model_is_finite(tmp_path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:160]
    img = 127 + 90 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None] + rng.normal(0, 10, (128, 160, 3))
    save(tmp_path / "a" / "wave.png", img.clip(0, 255))
    model = InfDiT(preset("tiny")).init_random(0).eval()
    report = evaluate(Upscaler(model), tmp_path, UpscaleOptions(steps=2), max_side=128)
    (score,) = report.images
    assert score.size == (128, 100)  # long side shrunk to 128, then cropped to a multiple of 4
    values = [score.psnr, score.ssim, score.psnr_bicubic, score.ssim_bicubic, score.grad_model]
    assert all(math.isfinite(v) for v in values)
    assert score.psnr_bicubic > 15 and score.grad_truth > score.grad_bicubic  # bicubic is blurrier than HR
    assert set(report.to_dict()) == {"images", "mean"}
