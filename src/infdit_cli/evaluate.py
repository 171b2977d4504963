"""Measuring an upscaler against bicubic: PSNR, SSIM and a sharpness ratio.

Two sources of pairs: HR photographs alone (each cropped to a multiple of 4 and downscaled ×4 by
antialiased bicubic, quantised to 8 bits like a real file), or ready-made LR/HR pairs
(`NAME_lr.*` + `NAME_hr.*` in one folder, or two folders with the same names); a folder of
`NAME_hr.*` alone is photos (`mode` forces either reading). Each LR is
upscaled by the model and by bicubic and compared with the HR in [0, 255] with a 4-px border
shaved. The sharpness ratio (mean |∇| of the output / of the HR) makes "as sharp as the original"
measurable: PSNR rewards blur, so it is read beside PSNR, and closer to 1 is better. The grid
ratio (mean step across every 32nd output pixel / mean step elsewhere) shows JPEG's 8-px LR blocks
sharpened into a grid: about 1 for a natural image, higher where block edges show. The seam ratio
(the step across the model's own block edges over the step across the other LR-pixel edges, JPEG's
block edges left out) shows where the model's blocks meet: compared with bicubic's at the same place,
it is the model's seams alone.

`degradation` (`jpeg:75`: the LR written as a real JPEG file and read back; `noise:5`: Gaussian
noise of σ 5 levels) scores degraded inputs; models with a denoise input get the strength `auto`
reads from that file (JPEG quality), or the one given.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from infdit_cli.degrade import (
    EvalDegradation,
    file_jpeg_quality,
    jpeg_bytes,
    resolve_strength,
    strength_for_quality,
)
from infdit_cli.errors import InfditError
from infdit_cli.inputs import image_extensions
from infdit_cli.preprocess import bicubic_resize

SCALE = 4
SHAVE = 4
IMAGE_SUFFIXES = tuple(sorted(image_extensions()))  # every format Pillow reads here, as `infdit upscale`
MODES = ("auto", "photos", "pairs")


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
    sharpness: float  # mean |∇| of the model's output / of the HR (1 = as sharp as the original)
    sharpness_bicubic: float
    seconds: float = 0.0
    grid: float = math.nan  # step across every 32nd output pixel / step elsewhere (JPEG blocks ×4)
    grid_bicubic: float = math.nan
    seams: float = math.nan  # step across the model's own block edges / across the other LR-pixel edges
    seams_bicubic: float = math.nan
    denoise: float | None = None  # the strength the model was given (models with a denoise input)


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


def mean_abs_gradient(x: Tensor) -> float:
    """Mean |dx| + |dy| (finite differences), averaged over channels: higher = more detail."""
    x = x.double()
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs()[..., :-1, :]
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs()[..., :, :-1]
    return (dx + dy).mean().item()


def sharpness_ratio(output: Tensor, truth: Tensor) -> float:
    """mean |∇| of `output` / that of `truth`; nan when the truth is perfectly flat."""
    g = mean_abs_gradient(truth)
    return mean_abs_gradient(output) / g if g > 0 else math.nan


GRID_PERIOD = 32  # an 8-px JPEG block of the LR, ×4


def _edge_steps(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean |step| into every column, then every row, of [B, C, H, W], and each one's index j (the step
    between pixels j − 1 and j)."""
    x = x.double()
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    return torch.cat([dx, dy]), torch.cat([torch.arange(1, dx.numel() + 1), torch.arange(1, dy.numel() + 1)])


def grid_ratio(x: Tensor, period: int = GRID_PERIOD) -> float:
    """Mean |step| between pixels k·period−1 and k·period (columns and rows) over the mean |step| elsewhere."""
    steps, j = _edge_steps(x)
    on = j % period == 0
    if not on.any() or steps[~on].mean() == 0:
        return math.nan
    return (steps[on].mean() / steps[~on].mean()).item()


def seam_ratio(x: Tensor, period: int, phase: int, scale: int = SCALE) -> float:
    """Mean |step| across output columns and rows j ≡ phase (mod period), where a model's blocks meet, over
    the mean |step| across the other LR-pixel edges (j ≡ 0 mod scale) that are not JPEG block edges either
    (j ≡ 0 mod 32): every ×scale upscale, bicubic included, steps most at LR-pixel edges, and a JPEG's
    block edges step more still (or less, once deblocked), so like is compared with like. 1: no seams."""
    steps, j = _edge_steps(x)
    on = j % period == phase % period
    lr_edge = (j % scale == 0) & ~on & (j % GRID_PERIOD != 0)
    if not on.any() or not lr_edge.any() or steps[lr_edge].mean() == 0:
        return math.nan
    return (steps[on].mean() / steps[lr_edge].mean()).item()


def block_seams(config: Any) -> tuple[int, int]:
    """(period, phase) of the output columns where a model's blocks meet: every block_size pixels, moved by
    the model's block offset (×4); JPEG's grid (32, 0) for anything without a config."""
    if config is None:
        return GRID_PERIOD, 0
    return config.block_size, -config.block_offset * SCALE % config.block_size


def gradient_energy(x: Tensor) -> float:
    """Mean squared finite-difference gradient (dx² + dy²), averaged over channels: higher = sharper."""
    x = x.double()
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return (dx[..., :-1, :].square() + dy[..., :, :-1].square()).mean().item()


# -- data ----------------------------------------------------------------------------------------
class EvalError(InfditError):
    """A folder or pair that cannot be evaluated (one line for the user)."""


@dataclass
class Sample:
    """One evaluation case: an HR image and, for ready-made pairs, its LR file."""

    name: str
    hr: Path
    lr: Path | None = None


def list_images(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pair_key(path: Path, root: Path, tag: str = "") -> str:
    rel = path.relative_to(root).with_suffix("")
    return str(rel)[: -len(tag)] if tag and str(rel).endswith(tag) else str(rel)


def find_samples(folder: str | Path, lr_folder: str | Path | None = None, mode: str = "auto") -> list[Sample]:
    """HR images to downscale, or LR/HR pairs: `NAME_lr.*`/`NAME_hr.*` in `folder`, or the same
    relative names in `folder` (HR) and `lr_folder` (LR). Unmatched files of a pair set are an error.

    `mode` "auto" reads pairs when `lr_folder` is given or some `NAME_lr.*` is there (so a folder of
    `NAME_hr.*` alone is HR photos); "photos" and "pairs" force one reading."""
    if mode not in MODES:
        raise EvalError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    root = Path(folder)
    files = list_images(root)
    if mode == "photos":
        if lr_folder is not None:
            raise EvalError("--lr gives pairs; drop it or --mode photos")
        return [Sample(p.name, p) for p in files]
    if lr_folder is not None:
        lr_root = Path(lr_folder)
        if not lr_root.is_dir():
            raise EvalError(f"{lr_root}: not a folder")
        hr = {_pair_key(p, root): p for p in files}
        lr = {_pair_key(p, lr_root): p for p in list_images(lr_root)}
        tagged = False
    else:
        hr = {_pair_key(p, root, "_hr"): p for p in files if p.stem.endswith("_hr")}
        lr = {_pair_key(p, root, "_lr"): p for p in files if p.stem.endswith("_lr")}
        tagged = True
        if mode == "auto" and not lr:  # HR photos, whatever their names
            return [Sample(p.name, p) for p in files]
        if not hr and not lr:
            raise EvalError(f"{root}: no NAME_lr.* / NAME_hr.* pairs (--mode photos scores HR photos)")
    unmatched = sorted(set(hr) ^ set(lr))
    if unmatched:
        side = "LR" if unmatched[0] in hr else "HR"
        hint = " (files NAME_lr.* / NAME_hr.*)" if tagged else ""
        raise EvalError(f"{unmatched[0]}: no matching {side} image{hint}")
    return [Sample(k, hr[k], lr[k]) for k in sorted(hr)]


def load_rgb01(path: Path, max_side: int | None = None) -> Tensor:
    """[1, 3, H, W] float in [0, 1]; optionally shrunk (Lanczos) so the long side ≤ max_side."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if max_side and max(im.size) > max_side:
                s = max_side / max(im.size)
                im = im.resize((max(SCALE, round(im.size[0] * s)), max(SCALE, round(im.size[1] * s))),
                               Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: cannot read image ({exc})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255


def load_hr(path: Path, max_side: int | None = None) -> Tensor:
    """`load_rgb01`, cropped to a multiple of the scale."""
    x = load_rgb01(path, max_side)
    h, w = x.shape[-2] // SCALE * SCALE, x.shape[-1] // SCALE * SCALE
    return x[..., :h, :w]


def load_pair(sample: Sample) -> tuple[Tensor, Tensor]:
    """(HR, LR) of a ready-made pair; the HR is cropped to exactly SCALE × the LR (≤ SCALE−1 px extra)."""
    assert sample.lr is not None
    hr, lr = load_rgb01(sample.hr), load_rgb01(sample.lr)
    (h, w), (lh, lw) = hr.shape[-2:], lr.shape[-2:]
    if not (0 <= h - SCALE * lh < SCALE and 0 <= w - SCALE * lw < SCALE):
        raise EvalError(f"{sample.name}: HR {w}x{h} is not {SCALE}x the LR {lw}x{lh}")
    return hr[..., : SCALE * lh, : SCALE * lw], lr


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


def score_image(name: str, hr: Tensor, sr: Tensor, bic: Tensor, seconds: float = 0.0,
                seams: tuple[int, int] = (GRID_PERIOD, 0)) -> ImageScore:
    """Every measure of one output; `seams` is where the model's blocks meet (`block_seams`)."""
    t, s, b = (shave(quantise(x)) for x in (hr, sr, bic))
    q_sr, q_bic = quantise(sr), quantise(bic)  # unshaved: the grid is anchored at the image origin
    return ImageScore(name, (hr.shape[-1], hr.shape[-2]), psnr(s, t), ssim(s, t), psnr(b, t), ssim(b, t),
                      sharpness_ratio(s, t), sharpness_ratio(b, t), seconds, grid_ratio(q_sr), grid_ratio(q_bic),
                      seam_ratio(q_sr, *seams), seam_ratio(q_bic, *seams))


def degrade_input(lr: Tensor, degradation: EvalDegradation, seed: int = 0) -> tuple[Tensor, float]:
    """LR [1, 3, h, w] in [0, 1] as a degraded file would give it, and the strength `auto` reads from it."""
    arr = quantise(lr)[0].permute(1, 2, 0).to(torch.uint8).numpy()
    if degradation.kind == "jpeg":
        data = jpeg_bytes(arr, int(degradation.amount))
        with Image.open(io.BytesIO(data)) as im:
            out = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
            quality = file_jpeg_quality(im)
        assert quality is not None  # we just wrote it as a JPEG
        return torch.from_numpy(out).permute(2, 0, 1)[None].float() / 255, strength_for_quality(quality)
    gen = torch.Generator().manual_seed(seed)
    noisy = lr * 255 + degradation.amount * torch.randn(lr.shape, generator=gen)
    return noisy.round().clamp(0, 255) / 255, 0.0  # saved as PNG: lossless, so `auto` reads 0


def evaluate(
    upscaler: UpscalerLike, folder: str | Path, options: Any, limit: int | None = None,
    max_side: int | None = None, on_image: Any = None, lr_folder: str | Path | None = None,
    degradation: EvalDegradation | None = None, denoise: float | None = None, mode: str = "auto",
) -> EvalReport:
    """Per-image and mean PSNR/SSIM/sharpness of `upscaler` and of bicubic on `folder` (see `find_samples`).

    `options` is passed to `upscaler.upscale` unchanged (a pipeline.UpscaleOptions, scale 4).
    `max_side` shrinks HR-only images before downscaling (ready-made pairs are used as they are).
    on_image(score) is called after each image, for progress output. `degradation` is applied to
    every LR; `denoise` is the strength for models with that input (None: `auto`, from the LR file).
    """
    import time

    samples = find_samples(folder, lr_folder, mode)[: limit or None]
    if not samples:
        raise EvalError(f"{folder}: no images to evaluate")
    report = EvalReport()
    for sample in samples:
        if sample.lr is None:
            hr = load_hr(sample.hr, max_side)
            lr = downscale(hr)
        else:
            hr, lr = load_pair(sample)
        if min(hr.shape[-2:]) < 2 * SHAVE + 11:
            continue  # too small for the shaved SSIM window
        auto = resolve_strength(None, sample.lr)[0] if sample.lr is not None else 0.0
        if degradation is not None:
            lr, auto = degrade_input(lr, degradation, getattr(options, "seed", 0))
        strength = auto if denoise is None else denoise
        image_options = replace(options, denoise=strength) if hasattr(options, "denoise") else options
        start = time.perf_counter()
        sr = upscaler.upscale(lr, image_options).image.float().cpu()
        score = score_image(sample.name, hr, sr, bicubic_upscale(lr), time.perf_counter() - start,
                            block_seams(getattr(upscaler, "config", None)))
        if getattr(getattr(upscaler, "config", None), "denoise_cond", False):
            score.denoise = strength
        report.images.append(score)
        if on_image:
            on_image(score)
    return report
