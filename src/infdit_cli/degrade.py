"""Real-world degradations of a low-resolution image, and the strength scale they share.

Training draws them (blur, one of several resize kernels, Gaussian or Poisson noise, JPEG at
quality 30–95 with 4:2:0 chroma, a share left clean: a one-stage version of Real-ESRGAN's recipe)
and labels each LR with a strength in [0, 1]; inference gives the model that strength as the
`--denoise` knob, estimated for a JPEG from its own quantisation tables. Evaluation uses the same
JPEG codec and noise (`--degrade jpeg:75`, `noise:5`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from infdit_cli.errors import InfditError
from infdit_cli.preprocess import bicubic_resize

JPEG_CLEAN_QUALITY = 95  # strength 0: at or above it JPEG artefacts are below 8-bit noise
JPEG_HEAVY_QUALITY = 30  # strength 1
NOISE_HEAVY_LEVELS = 12.0  # Gaussian σ (of 255) that counts as strength 1

# The IJG standard luminance table (natural order; the sum is all the estimate uses).
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)


class DegradeError(InfditError):
    """A degradation spec that cannot be parsed (one line for the user)."""


def strength_for_quality(quality: float) -> float:
    """JPEG quality -> strength: 95 and above is clean (0), 30 and below is heavy (1), linear between."""
    span = JPEG_CLEAN_QUALITY - JPEG_HEAVY_QUALITY
    return float(min(1.0, max(0.0, (JPEG_CLEAN_QUALITY - quality) / span)))


def strength_for_noise(sigma_levels: float) -> float:
    """Gaussian noise σ in 8-bit levels -> strength (12 levels and more: 1)."""
    return float(min(1.0, max(0.0, sigma_levels / NOISE_HEAVY_LEVELS)))


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255)


def estimate_jpeg_quality(luma_table: list[int] | np.ndarray) -> int:
    """The IJG quality (1–100) whose scaled standard luminance table is closest to this one.

    Compared by the table's sum, which does not depend on the order Pillow lists it in; encoders
    with their own tables (not IJG-scaled) get the quality of the same overall coarseness.
    """
    total = float(np.sum(luma_table))
    return int(min(range(1, 101), key=lambda q: abs(_ijg_table(q).sum() - total)))


def file_jpeg_quality(im: Image.Image) -> int | None:
    """The quality an opened JPEG was written at, from its first (luminance) table; None: not a JPEG."""
    tables = getattr(im, "quantization", None) if im.format == "JPEG" else None
    return estimate_jpeg_quality(tables[min(tables)]) if tables else None


def auto_strength(path: str | Path) -> float:
    """`--denoise auto`: a JPEG's strength from its quantisation tables; any other format is clean (0)."""
    return resolve_strength(None, path)[0]


def resolve_strength(setting: float | None, path: str | Path | None) -> tuple[float, str]:
    """The strength to use for one input and why: a given value, or `auto` (None) from the file."""
    if setting is not None:
        return setting, "given"
    if path is None:
        return 0.0, "auto: no file"
    with Image.open(path) as im:
        quality = file_jpeg_quality(im)
    if quality is None:
        return 0.0, "auto: lossless input"
    return strength_for_quality(quality), f"auto: JPEG quality ~{quality}"


def to_u8(x: Tensor) -> np.ndarray:
    """[1, 3, h, w] in [-1, 1] -> uint8 HWC."""
    return ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def from_u8(arr: np.ndarray) -> Tensor:
    """uint8 HWC -> [1, 3, h, w] in [-1, 1]."""
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)[None].float() / 127.5 - 1


def jpeg_bytes(arr: np.ndarray, quality: int) -> bytes:
    """Encode uint8 HWC as a baseline JPEG with 4:2:0 chroma, as cameras and browsers write it."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality), subsampling="4:2:0")
    return buf.getvalue()


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """[1, 3, h, w] in [-1, 1] through a real JPEG file at `quality` and back."""
    with Image.open(io.BytesIO(jpeg_bytes(to_u8(x), quality))) as im:
        return from_u8(np.asarray(im.convert("RGB")))


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _blur(x: Tensor, sigma: float) -> Tensor:
    import torchvision.transforms.v2.functional as TF

    radius = max(1, int(np.ceil(3 * sigma)))
    return TF.gaussian_blur(x, [2 * radius + 1] * 2, [sigma, sigma])


@dataclass(frozen=True)
class Recipe:
    """The degradation drawn for one training LR (probabilities and ranges)."""

    p_clean: float = 0.3  # share of LRs made only by bicubic ÷ scale (strength 0)
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.2, 1.2)  # HR pixels, before downscaling
    p_noise: float = 0.4
    noise_levels: tuple[float, float] = (1.0, 12.0)  # Gaussian σ in 8-bit levels
    p_poisson: float = 0.3  # of the noisy ones: Poisson (signal-dependent) instead of Gaussian
    p_gray_noise: float = 0.4
    p_jpeg: float = 0.75
    jpeg_quality: tuple[int, int] = (JPEG_HEAVY_QUALITY, JPEG_CLEAN_QUALITY)


RESIZE_MODES = ("bicubic", "bilinear", "area")


def clean_lr(hr: Tensor, scale: int) -> Tensor:
    """HR [B, 3, H, W] in [-1, 1] -> LR [B, 3, H/s, W/s]: antialiased bicubic ÷ scale, quantised to 8 bits
    like a real file (validation, and the clean share of training)."""
    h, w = hr.shape[-2:]
    y = bicubic_resize(hr, (h // scale, w // scale)).clamp(-1, 1)
    return ((y + 1) * 127.5).round() / 127.5 - 1


def degrade_lr(hr: Tensor, scale: int, gen: torch.Generator, recipe: Recipe = Recipe()) -> tuple[Tensor, float]:
    """HR [1, 3, H, W] in [-1, 1] -> (8-bit LR [1, 3, H/s, W/s] in [-1, 1], its strength label).

    Order as in Real-ESRGAN: blur, resize, noise, JPEG. The strength is the JPEG's plus the
    noise's (each on its own scale, capped at 1); blur and resize kernels do not count: every
    strength should sharpen them.
    """
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    if float(torch.rand((), generator=gen)) < recipe.p_clean:
        return clean_lr(hr, scale), 0.0
    x = hr
    if float(torch.rand((), generator=gen)) < recipe.p_blur:
        x = _blur(x, _uniform(gen, *recipe.blur_sigma))
    mode = RESIZE_MODES[int(torch.randint(len(RESIZE_MODES), (1,), generator=gen))]
    if mode == "bicubic":
        lr = bicubic_resize(x, (h, w))
    else:
        lr = F.interpolate(x, size=(h, w), mode=mode, **({"antialias": True} if mode == "bilinear" else {}))
    lr = lr.clamp(-1, 1)
    strength = 0.0
    if float(torch.rand((), generator=gen)) < recipe.p_noise:
        levels = _uniform(gen, *recipe.noise_levels)
        gray = float(torch.rand((), generator=gen)) < recipe.p_gray_noise
        shape = (1, 1, h, w) if gray else lr.shape
        if float(torch.rand((), generator=gen)) < recipe.p_poisson:
            # Photon counts whose σ at mid-grey equals `levels`: peak = 0.5 / (levels/255)².
            peak = 0.5 / (levels / 255) ** 2
            img01 = ((lr + 1) / 2).clamp(0, 1)
            counts = torch.poisson((img01.mean(1, keepdim=True) if gray else img01) * peak, generator=gen)
            noise = counts / peak - (img01.mean(1, keepdim=True) if gray else img01)
            lr = lr + 2 * noise
        else:
            lr = lr + (2 * levels / 255) * torch.randn(shape, generator=gen)
        lr = lr.clamp(-1, 1)
        strength += strength_for_noise(levels)
    if float(torch.rand((), generator=gen)) < recipe.p_jpeg:
        quality = int(torch.randint(recipe.jpeg_quality[0], recipe.jpeg_quality[1] + 1, (1,), generator=gen))
        lr = jpeg_roundtrip(lr, quality)
        strength += strength_for_quality(quality)
    return from_u8(to_u8(lr)), min(1.0, strength)


@dataclass(frozen=True)
class EvalDegradation:
    """One fixed degradation for evaluation: `jpeg:Q` (a real JPEG file) or `noise:S` (σ in levels)."""

    kind: str
    amount: float

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.amount:g}"


def parse_degradation(spec: str) -> EvalDegradation:
    """'jpeg:75' or 'noise:5' -> EvalDegradation (one line for the user otherwise)."""
    kind, _, value = spec.partition(":")
    bad = DegradeError(f"bad degradation {spec!r}: use jpeg:QUALITY (1-100) or noise:SIGMA (8-bit levels)")
    try:
        amount = float(value)
    except ValueError:
        raise bad from None
    if (kind == "jpeg" and 1 <= amount <= 100 and amount == int(amount)) or (kind == "noise" and 0 <= amount <= 255):
        return EvalDegradation(kind, amount)
    raise bad
