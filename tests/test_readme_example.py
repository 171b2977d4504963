"""The README's Python example runs as written on the shipped model and writes the CLI's image."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from infdit_cli.cli import app
from infdit_cli.weights import default_model_path

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    matches = [b for b in blocks if "load_upscaler(" in b]
    assert len(matches) == 1, "the README should have one Python example of the library"
    return matches[0]


@pytest.mark.skipif(default_model_path() is None, reason="this build ships no default model")
def test_readme_python_example_gives_the_cli_image(tmp_path, monkeypatch, calibrate_once):
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "cups.png", tmp_path / "examples" / "cups.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_example(), "README.md", "exec"), {})  # as written: relative paths, defaults
    api = np.asarray(Image.open(tmp_path / "out" / "cups_x4.png"))
    res = CliRunner().invoke(app, ["upscale", "examples/cups.png", "-o", "cli.png", "-q"])
    assert res.exit_code == 0, res.output
    cli = np.asarray(Image.open(tmp_path / "cli.png"))
    assert api.shape == (512, 512, 3) and np.array_equal(api, cli)
    bicubic = np.asarray(Image.open(tmp_path / "examples" / "cups.png").resize((512, 512), Image.BICUBIC))
    assert np.abs(api.astype(int) - bicubic.astype(int)).mean() < 8  # an upscale, not noise
