"""`--denoise`: auto reads a JPEG's quality (PNG: 0), a given strength reaches the model, bad values
and models without the input get one line; pre-flight and --json say the strength used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from infdit_cli.cli import app
from infdit_cli.degrade import auto_strength
from infdit_cli.model import InfDiT
from infdit_cli.weights import save_model
from tests.models import small_block, write_tiny_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("calibrate_once")
FAST = ["--steps", "1", "--quiet", "--json"]


@pytest.fixture(scope="module")
def denoise_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "denoise"
    save_model(InfDiT(small_block(denoise_cond=True)).init_random(0), folder)
    return folder


def photo(path: Path, quality: int | None = None) -> Path:
    yy, xx = np.mgrid[0:40, 0:48]
    arr = (127 + 90 * np.sin(xx / 4.0) * np.cos(yy / 5.0))[..., None].repeat(3, -1).astype(np.uint8)
    Image.fromarray(arr).save(path, **({"quality": quality} if quality else {}))
    return path


def upscale(*args: str) -> object:
    return runner.invoke(app, ["upscale", *args])


def test_auto_strength_from_the_file_and_a_given_one(denoise_model, tmp_path):
    jpg, png = photo(tmp_path / "a.jpg", 50), photo(tmp_path / "b.png")
    res = upscale(str(jpg), str(png), "--model", str(denoise_model), "-o", str(tmp_path / "auto"), *FAST)
    assert res.exit_code == 0, res.output
    got = {Path(r["input"]).name: r["denoise"] for r in json.loads(res.stdout)["outputs"]}
    assert got == {"a.jpg": pytest.approx(auto_strength(jpg), abs=1e-4), "b.png": 0.0} and got["a.jpg"] > 0.5
    res = upscale(str(png), "--model", str(denoise_model), "-o", str(tmp_path / "given"), "--denoise", "0.7", *FAST)
    assert json.loads(res.stdout)["outputs"][0]["denoise"] == 0.7
    # the knob reaches the network: the same PNG at strength 0 (auto) and 0.7 gives two images
    a = np.asarray(Image.open(tmp_path / "auto" / "b_x4.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "given" / "b_x4.png"), dtype=np.int16)
    assert np.abs(a - b).max() > 0


def test_preflight_line_names_the_strength(denoise_model, tmp_path):
    jpg = photo(tmp_path / "a.jpg", 75)
    res = upscale(str(jpg), "--model", str(denoise_model), "-o", str(tmp_path / "o.png"), "--steps", "1")
    assert res.exit_code == 0, res.output
    assert "denoise 0.31 (auto: JPEG quality ~75)" in res.stderr


@pytest.mark.parametrize("value", ["2", "-0.1", "much"])
def test_bad_strength_is_one_line(denoise_model, tmp_path, value):
    res = upscale(str(photo(tmp_path / "a.png")), "--model", str(denoise_model), "--denoise", value)
    assert res.exit_code != 0 and "--denoise" in res.stderr and "Traceback" not in res.output
    assert not list(tmp_path.glob("a_x4*"))


def test_a_model_without_the_input_refuses_a_given_strength(tmp_path):
    model = write_tiny_model(tmp_path / "plain")
    res = upscale(str(photo(tmp_path / "a.png")), "--model", str(model), "--denoise", "0.5")
    assert res.exit_code != 0 and "no denoise input" in res.stderr
    ok = upscale(str(photo(tmp_path / "b.png")), "--model", str(model), *FAST)  # auto: silently nothing to set
    assert ok.exit_code == 0 and "denoise" not in json.loads(ok.stdout)["outputs"][0]
