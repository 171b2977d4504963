"""The shipped default model does its main job: better than bicubic on a photo it never saw, and
flat colours stay flat (a grainy or colour-shifting upscaler fails both)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from infdit_cli.evaluate import bicubic_upscale, downscale, psnr, quantise, sharpness_ratio, shave
from infdit_cli.pipeline import UpscaleOptions, load_upscaler
from infdit_cli.weights import default_model_path

pytestmark = pytest.mark.usefixtures("calibrate_once")


@pytest.fixture(scope="module")
def upscaler():
    path = default_model_path()
    if path is None:
        pytest.skip("this build ships no default model")
    return load_upscaler(str(path), torch.device("cpu"))


@pytest.mark.parametrize("colour", [(128, 128, 128), (200, 30, 30), (12, 12, 12), (245, 245, 245)])
def test_constant_colour_stays_constant(upscaler, colour):
    lr = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 24, 40) / 255
    out = quantise(upscaler.upscale(lr, UpscaleOptions(scale=4)).image)
    assert out.shape == (1, 3, 96, 160)
    deviation = (out - torch.tensor(colour).view(1, 3, 1, 1)).abs()
    assert deviation.max() <= 2, f"max deviation {deviation.max():.0f} levels"


def test_beats_bicubic_on_a_held_out_photo(upscaler):
    """examples/cups.png is from the validation wallpapers (never trained on)."""
    hr = _cups()
    lr = downscale(hr)
    sr = upscaler.upscale(lr, UpscaleOptions(scale=4)).image.float()
    truth, model, bic = (shave(quantise(x)) for x in (hr, sr, bicubic_upscale(lr)))
    gain = psnr(model, truth) - psnr(bic, truth)
    assert gain > 0.3, f"{gain:+.2f} dB over bicubic"
    # Sharper than bicubic, not over-sharpened: closer to the original's |∇|.
    assert abs(1 - sharpness_ratio(model, truth)) < abs(1 - sharpness_ratio(bic, truth))


def test_upscale_warns_once_when_a_one_step_model_is_sampled_otherwise(tmp_path):
    from typer.testing import CliRunner

    from infdit_cli.cli import app

    src = tmp_path / "flat.png"
    Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(src)
    runner = CliRunner()
    own = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "own.png")])
    assert own.exit_code == 0, own.output
    assert "warning" not in own.stderr
    other = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "other.png"), "--steps", "2",
                                "--sampler", "heun-edm", "--sigma-max", "1"])
    assert other.exit_code == 0, other.output  # it still runs
    warnings = [line for line in other.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "one euler step" in warnings[0], other.stderr
    assert (tmp_path / "other.png").is_file()


def _cups() -> torch.Tensor:
    """examples/cups.png (a held-out validation photo) in [0, 1]; skips where examples/ is not installed."""
    root = default_model_path().parent
    example = next((p / "examples" / "cups.png" for p in root.parents if (p / "examples" / "cups.png").is_file()),
                   None)
    if example is None:
        pytest.skip("examples/ is not beside this install")
    arr = np.asarray(Image.open(example).convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255


def test_jpeg_input_with_auto_strength_beats_bicubic(upscaler):
    """A JPEG-75 LR, the strength `auto` reads from its tables: above bicubic, and a weaker 32-px grid
    than the same model told the input is clean and than bicubic's (its blocks start mid-JPEG-block)."""
    from infdit_cli.degrade import parse_degradation
    from infdit_cli.evaluate import degrade_input, grid_ratio

    hr = _cups()
    lr, auto = degrade_input(downscale(hr), parse_degradation("jpeg:75"))
    assert 0.2 < auto < 0.4
    truth = shave(quantise(hr))
    auto_out = quantise(upscaler.upscale(lr, UpscaleOptions(scale=4, denoise=auto)).image)
    clean_out = quantise(upscaler.upscale(lr, UpscaleOptions(scale=4, denoise=0.0)).image)
    gain = psnr(shave(auto_out), truth) - psnr(shave(quantise(bicubic_upscale(lr))), truth)
    assert gain > 0.5, f"{gain:+.2f} dB over bicubic"
    assert grid_ratio(auto_out) < grid_ratio(clean_out)
    assert grid_ratio(auto_out) < grid_ratio(quantise(bicubic_upscale(lr)))


def test_denoise_knob_changes_the_output_monotonically(upscaler):
    """More strength: less high-frequency content and a steadily larger change from strength 0."""
    from infdit_cli.degrade import parse_degradation
    from infdit_cli.evaluate import degrade_input, mean_abs_gradient

    lr, _ = degrade_input(downscale(_cups()), parse_degradation("jpeg:50"))
    outs = [quantise(upscaler.upscale(lr, UpscaleOptions(scale=4, denoise=d)).image) for d in (0, 0.25, 0.5, 0.75, 1)]
    detail = [mean_abs_gradient(o) for o in outs]
    change = [(o - outs[0]).abs().mean().item() for o in outs]
    assert detail == sorted(detail, reverse=True) and len(set(detail)) == 5, detail
    assert change == sorted(change) and len(set(change)) == 5, change
