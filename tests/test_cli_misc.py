"""Small commands: samplers listing, init-model, version; the example plugin end to end."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

import pytest
from PIL import Image
from typer.testing import CliRunner

from infdit_cli.cli import app
from infdit_cli.weights import load_model
from tests.models import write_tiny_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("calibrate_once")


def test_samplers_lists_builtins_with_package_and_nfe():
    res = runner.invoke(app, ["samplers", "--json", "--steps", "10"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["heun-edm"]["nfe"] == 19 and rows["euler"]["nfe"] == 10
    assert rows["heun-edm"]["package"] == "infdit"
    table = runner.invoke(app, ["samplers"])
    assert table.exit_code == 0 and "heun-edm" in table.stdout


def test_init_model_writes_a_loadable_random_model(tmp_path):
    res = runner.invoke(app, ["init-model", "tiny", "-o", str(tmp_path / "m"), "--seed", "3"])
    assert res.exit_code == 0, res.output
    model = load_model(tmp_path / "m" / "model.safetensors")
    assert model.config.hidden_size == 64
    again = runner.invoke(app, ["init-model", "tiny", "--output", str(tmp_path / "m")])
    assert again.exit_code == 1 and "already exists" in again.stderr
    unknown = runner.invoke(app, ["init-model", "huge", "-o", str(tmp_path / "x")])
    assert unknown.exit_code == 1 and "tiny" in unknown.stderr


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.startswith("infdit ")


def test_example_plugin_listed_and_upscales(tmp_path):
    try:
        version("infdit-dpmpp")
    except PackageNotFoundError:
        pytest.skip("plugins/infdit-dpmpp is not installed (pip install ./plugins/infdit-dpmpp)")
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["samplers", "--json"]).stdout)}
    assert rows["dpmpp-2m"]["package"] == "infdit-dpmpp" and rows["dpmpp-2m"]["error"] is None
    model = write_tiny_model(tmp_path / "m")
    Image.new("RGB", (20, 12), (120, 30, 200)).save(tmp_path / "in.png")
    res = runner.invoke(app, ["upscale", str(tmp_path / "in.png"), "--model", str(model), "--sampler", "dpmpp-2m",
                              "--steps", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "in_x4.png").size == (80, 48)
