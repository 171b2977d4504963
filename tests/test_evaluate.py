"""Evaluation metrics on known cases, and an end-to-end run with a tiny random model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from infdit_cli.config import preset
from infdit_cli.evaluate import EvalError, evaluate, find_samples, gradient_energy, psnr, sharpness_ratio, ssim
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
    assert math.isclose(sharpness_ratio(2 * ramp, ramp), 2.0) and math.isclose(sharpness_ratio(x, x), 1.0)
    blurred = F.avg_pool2d(x, 3, 1, 1)
    assert sharpness_ratio(blurred, x) < 0.7


def test_known_case_constant_image(tmp_path):
    """HR constant 100 -> LR 100 exactly; the stand-in returns 110, so PSNR = 10·log10(255²/10²)."""
    save(tmp_path / "flat.png", np.full((37, 45, 3), 100))  # cropped to 36 × 44
    report = evaluate(NearestPlus(10), tmp_path, None)
    (score,) = report.images
    assert score.size == (44, 36)
    assert math.isclose(score.psnr, 10 * math.log10(255**2 / 100), rel_tol=1e-9)
    assert score.psnr_bicubic == math.inf and math.isclose(score.ssim_bicubic, 1.0)
    assert math.isnan(score.sharpness)  # a flat original has no sharpness to compare with
    assert report.mean()["psnr"] == score.psnr


def test_evaluate_tiny_model_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:160]
    img = 127 + 90 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None] + rng.normal(0, 10, (128, 160, 3))
    save(tmp_path / "a" / "wave.png", img.clip(0, 255))
    model = InfDiT(preset("tiny", block_size=32)).init_random(0).eval()
    report = evaluate(Upscaler(model), tmp_path, UpscaleOptions(steps=2), max_side=128)
    (score,) = report.images
    assert score.size == (128, 100)  # long side shrunk to 128, then cropped to a multiple of 4
    assert 0 < score.ssim < 1 and 0 < score.ssim_bicubic < 1 and score.psnr < score.psnr_bicubic  # random weights
    assert score.psnr_bicubic > 15 and 0 < score.sharpness_bicubic < 1  # bicubic is blurrier than the HR
    assert set(report.to_dict()) == {"images", "mean"}


def test_ready_made_pairs_in_one_folder(tmp_path):
    """NAME_lr / NAME_hr pairs: the given LR is used (not a downscale of the HR)."""
    hr = np.full((40, 48, 3), 100)
    save(tmp_path / "a_hr.png", hr)
    save(tmp_path / "a_lr.png", np.full((10, 12, 3), 90))  # a darker LR than the HR's own downscale
    save(tmp_path / "b_hr.png", np.full((41, 50, 3), 100))  # 1–2 px over 4× the LR: cropped
    save(tmp_path / "b_lr.png", np.full((10, 12, 3), 100))
    assert [(s.name, s.lr.name) for s in find_samples(tmp_path)] == [("a", "a_lr.png"), ("b", "b_lr.png")]
    report = evaluate(NearestPlus(0), tmp_path, None)
    a, b = report.images
    assert a.size == (48, 40) and math.isclose(a.psnr, 10 * math.log10(255**2 / 100), rel_tol=1e-9)
    assert b.size == (48, 40) and b.psnr == math.inf


def test_ready_made_pairs_in_two_folders(tmp_path):
    save(tmp_path / "hr" / "x" / "p.png", np.full((32, 32, 3), 50))
    save(tmp_path / "lr" / "x" / "p.png", np.full((8, 8, 3), 60))
    (sample,) = find_samples(tmp_path / "hr", tmp_path / "lr")
    assert sample.name == "x/p" and sample.lr == tmp_path / "lr" / "x" / "p.png"
    (score,) = evaluate(NearestPlus(0), tmp_path / "hr", None, lr_folder=tmp_path / "lr").images
    assert math.isclose(score.psnr, 10 * math.log10(255**2 / 100), rel_tol=1e-9)


def test_a_folder_of_hr_files_alone_is_photos_and_the_mode_forces_either_reading(tmp_path):
    save(tmp_path / "a_hr.png", np.full((40, 40, 3), 1))
    save(tmp_path / "b_hr.png", np.full((40, 40, 3), 2))
    assert [(s.name, s.lr) for s in find_samples(tmp_path)] == [("a_hr.png", None), ("b_hr.png", None)]
    assert [s.size for s in evaluate(NearestPlus(0), tmp_path, None).images] == [(40, 40), (40, 40)]
    with pytest.raises(EvalError, match="^a: no matching LR image"):
        find_samples(tmp_path, mode="pairs")
    save(tmp_path / "a_lr.png", np.full((10, 10, 3), 1))
    with pytest.raises(EvalError, match="^b: no matching LR image"):  # one NAME_lr: pairs, all of them
        find_samples(tmp_path)
    assert len(find_samples(tmp_path, mode="photos")) == 3


def test_bad_pairs_are_one_line_errors(tmp_path):
    save(tmp_path / "a_hr.png", np.full((40, 40, 3), 1))
    with pytest.raises(EvalError, match="^a: no matching LR image"):
        find_samples(tmp_path, mode="pairs")
    save(tmp_path / "a_lr.png", np.full((12, 10, 3), 1))
    with pytest.raises(EvalError, match="is not 4x the LR"):
        evaluate(NearestPlus(0), tmp_path, None)


def test_grid_ratio_sees_block_edges_every_32_pixels():
    from infdit_cli.evaluate import grid_ratio

    ramp = torch.arange(96.0).expand(1, 3, 96, 96) + torch.arange(96.0)[:, None]
    assert math.isclose(grid_ratio(ramp), 1.0)
    blocky = ramp + 20 * (torch.arange(96) // 32).float()  # a step at columns 32 and 64
    assert grid_ratio(blocky) > 10


def test_seam_ratio_sees_a_models_block_edges_not_the_lr_pixel_pattern():
    """Nearest ×4 of a smooth image steps at every 4th column; only an extra step where the blocks of a model
    with a block offset meet (columns 16, 48, 80: 32k − 4·4) raises the seam ratio."""
    from infdit_cli.config import preset
    from infdit_cli.evaluate import block_seams, seam_ratio

    lr = torch.arange(24.0).expand(1, 3, 24, 24) + torch.arange(24.0)[:, None]
    nearest = lr.repeat_interleave(4, -1).repeat_interleave(4, -2)
    seams = block_seams(preset("tiny", block_size=32, block_offset=4))
    assert seams == (32, 16) and block_seams(None) == (32, 0)
    assert math.isclose(seam_ratio(nearest, *seams), 1.0)
    seamed = nearest + 5 * ((torch.arange(96) + 16) // 32).float()
    assert seam_ratio(seamed, *seams) > 3 and seam_ratio(seamed, 32, 0) < 1  # at the JPEG grid: no seams


class StrengthEcho(NearestPlus):
    """A stand-in with a denoise input: records the strength each image was given."""

    config = preset("tiny", denoise_cond=True)

    def __init__(self) -> None:
        super().__init__(0)
        self.given: list[float] = []

    def upscale(self, image: torch.Tensor, options: UpscaleOptions) -> _Result:
        self.given.append(options.denoise)
        return super().upscale(image, options)


def test_degraded_inputs_are_scored_with_the_strength_auto_reads(tmp_path):
    from infdit_cli.degrade import parse_degradation, strength_for_quality

    yy, xx = np.mgrid[0:64, 0:64]
    save(tmp_path / "wave.png", (127 + 90 * np.sin(xx / 6.0) * np.cos(yy / 9.0))[..., None].repeat(3, -1))
    echo = StrengthEcho()
    clean = evaluate(echo, tmp_path, UpscaleOptions()).images[0]
    jpeg = evaluate(echo, tmp_path, UpscaleOptions(), degradation=parse_degradation("jpeg:50")).images[0]
    noisy = evaluate(echo, tmp_path, UpscaleOptions(), degradation=parse_degradation("noise:20")).images[0]
    given = evaluate(echo, tmp_path, UpscaleOptions(), degradation=parse_degradation("jpeg:50"), denoise=0.2)
    assert echo.given == [0.0, pytest.approx(strength_for_quality(50), abs=0.02), 0.0, 0.2]
    assert jpeg.psnr_bicubic < clean.psnr_bicubic - 0.5 and noisy.psnr_bicubic < clean.psnr_bicubic - 0.5
    assert jpeg.denoise == echo.given[1] and given.images[0].denoise == 0.2
    assert evaluate(NearestPlus(0), tmp_path, UpscaleOptions()).images[0].denoise is None


def test_cli_eval_bad_degradation_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from infdit_cli.cli import app

    save(tmp_path / "a.png", np.zeros((64, 64, 3)))
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--degrade", "blur:2"])
    assert result.exit_code != 0 and "bad degradation 'blur:2'" in result.output
    assert "Traceback" not in result.output
