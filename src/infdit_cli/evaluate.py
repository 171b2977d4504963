"""Measuring an upscaler against bicubic on HR photographs: PSNR, SSIM and gradient energy.

Each HR image is cropped to a multiple of 4, downscaled ×4 (antialiased bicubic, quantised to
8 bits like a real file), upscaled by the model and by bicubic, and compared with the HR in
[0, 255] with a 4-px border shaved. Gradient energy makes "sharper than bicubic" measurable:
PSNR rewards blur, so a good generative upscaler can lose PSNR yet gain detail.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from infdit_cli.preprocess import bicubic_resize

SCALE = 4
SHAVE = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class UpscalerLike(Protocol):
    """What `evaluate` needs: pipeline.Upscaler, or any stand-in with the same method."""

    def upscale(self, image: Tensor, options: Any) -> Any: ...  # result has .image [1,3,H,W] in [0,1]


@dataclass
class ImageScore:
    name: str
    size: tuple[int, int]  # HR (w, h) after cropping
    psnr: float
    ssim: float
    psnr_bicubic: float
    ssim_bicubic: float
    grad_model: float
    grad_bicubic: float
    grad_truth: float
    seconds: float = 0.0


@dataclass
class EvalReport:
    images: list[ImageScore] = field(default_factory=list)

    def mean(self) -> dict[str, float]:
        """Mean of every numeric field over the images (empty dict when there are none)."""
        if not self.images:
            return {}
        keys = [k for k, v in asdict(self.images[0]).items() if isinstance(v, float)]
        return {k: float(np.mean([getattr(s, k) for s in self.images])) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {"images": [asdict(s) for s in self.images], "mean": self.mean()}


# -- metrics (inputs: [1, 3, H, W] float in [0, 255]) ----------------------------------------------
def shave(x: Tensor, border: int = SHAVE) -> Tensor:
    return x[..., border: x.shape[-2] - border, border: x.shape[-1] - border] if border else x


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB over all channels, peak 255; inf for identical images."""
    mse = (a.double() - b.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    g = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: Tensor, b: Tensor) -> float:
    """SSIM (Wang et al. 2004): Gaussian 11×11, σ 1.5, valid window, per channel then averaged."""
    a, b = a.double(), b.double()
    ch = a.shape[1]
    w = _gaussian_window().expand(ch, 1, 11, 11)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, w, groups=ch)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(0, 2, 3)).mean().item()


def gradient_energy(x: Tensor) -> float:
    """Mean squared finite-difference gradient (dx² + dy²), averaged over channels: higher = sharper."""
    x = x.double()
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return (dx[..., :-1, :].square() + dy[..., :, :-1].square()).mean().item()


# -- data ----------------------------------------------------------------------------------------
def list_images(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_hr(path: Path, max_side: int | None = None) -> Tensor:
    """[1, 3, H, W] float in [0, 1]; optionally shrunk (Lanczos) so the long side ≤ max_side; cropped to ×4."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if max_side and max(im.size) > max_side:
            s = max_side / max(im.size)
            im = im.resize((max(SCALE, round(im.size[0] * s)), max(SCALE, round(im.size[1] * s))),
                           Image.Resampling.LANCZOS)
        arr = np.asarray(im, dtype=np.uint8)
    h, w = arr.shape[0] // SCALE * SCALE, arr.shape[1] // SCALE * SCALE
    return torch.from_numpy(arr[:h, :w].copy()).permute(2, 0, 1)[None].float() / 255


def quantise(x: Tensor) -> Tensor:
    """[0, 1] -> [0, 255] rounded, as an 8-bit file would hold it."""
    return (x.float().clamp(0, 1) * 255).round()


def downscale(hr: Tensor) -> Tensor:
    """The LR input: antialiased bicubic ÷4, quantised to 8 bits, back in [0, 1]."""
    h, w = hr.shape[-2:]
    return quantise(bicubic_resize(hr, (h // SCALE, w // SCALE))) / 255


def bicubic_upscale(lr: Tensor) -> Tensor:
    h, w = lr.shape[-2:]
    return bicubic_resize(lr, (h * SCALE, w * SCALE)).clamp(0, 1)


def score_image(name: str, hr: Tensor, sr: Tensor, bic: Tensor, seconds: float = 0.0) -> ImageScore:
    t, s, b = (shave(quantise(x)) for x in (hr, sr, bic))
    return ImageScore(name, (hr.shape[-1], hr.shape[-2]), psnr(s, t), ssim(s, t), psnr(b, t), ssim(b, t),
                      gradient_energy(s), gradient_energy(b), gradient_energy(t), seconds)


def evaluate(
    upscaler: UpscalerLike, folder: str | Path, options: Any, limit: int | None = None,
    max_side: int | None = None, on_image: Any = None,
) -> EvalReport:
    """Per-image and mean PSNR/SSIM/gradient energy of `upscaler` and of bicubic on `folder`.

    `options` is passed to `upscaler.upscale` unchanged (a pipeline.UpscaleOptions, scale 4).
    on_image(score) is called after each image, for progress output.
    """
    import time

    files = list_images(folder)[: limit or None]
    if not files:
        raise ValueError(f"{folder}: no images to evaluate")
    report = EvalReport()
    for path in files:
        hr = load_hr(path, max_side)
        if min(hr.shape[-2:]) < 2 * SHAVE + 11:
            continue  # too small for the shaved SSIM window
        lr = downscale(hr)
        start = time.perf_counter()
        sr = upscaler.upscale(lr, options).image.float().cpu()
        score = score_image(path.name, hr, sr, bicubic_upscale(lr), time.perf_counter() - start)
        report.images.append(score)
        if on_image:
            on_image(score)
    return report
