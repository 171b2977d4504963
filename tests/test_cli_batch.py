"""Batch semantics, the JSON summary and progress of `infdit upscale` (issue 12)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from infdit_cli import cli_upscale
from infdit_cli.cli import app
from infdit_cli.progress import ImageProgress
from infdit_cli.units import format_duration
from tests.models import write_tiny_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("calibrate_once")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def image(path: Path, w: int = 20, h: int = 12) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_batch_reports_every_bad_input_first_and_writes_the_good_one(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("hello")
    res = runner.invoke(app, ["upscale", "ok.png", "missing.png", "text.png", "-o", "out/", "--model",
                              str(model_dir), "--steps", "1"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert (tmp_path / "out" / "ok_x4.png").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok_x4.png"]
    lines = res.stderr.splitlines()
    missing = next(i for i, ln in enumerate(lines) if "missing.png" in ln and "no such file" in ln)
    text = next(i for i, ln in enumerate(lines) if "text.png" in ln and "not an image" in ln)
    model = next(i for i, ln in enumerate(lines) if ln.startswith("model "))
    assert missing < model and text < model, "bad inputs must be reported before the model loads"
    assert lines[-1].startswith("1 written, 0 skipped, 2 failed of 3 in "), lines[-1]


def test_all_inputs_bad_exits_non_zero_without_loading_a_model(tmp_path):
    (tmp_path / "a.png").write_text("nope")
    res = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                              "--model", str(tmp_path / "no-such-model")])
    assert res.exit_code == 1
    assert "no-such-model" not in res.stderr  # the model is never resolved when there is nothing to do
    assert res.stderr.splitlines()[-1].startswith("0 written, 0 skipped, 2 failed of 2")


def test_skipped_outputs_count_and_exit_zero(model_dir, tmp_path):
    src = image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    (tmp_path / "a_x4.png").write_bytes(b"keep")
    res = runner.invoke(app, ["upscale", str(src), str(tmp_path / "b.png"), "--skip-existing", "--model",
                              str(model_dir), "--steps", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (1, 1, 0)
    assert (tmp_path / "a_x4.png").read_bytes() == b"keep"
    assert res.stderr.splitlines()[-1].startswith("1 written, 1 skipped, 0 failed of 2")


def test_json_names_model_sampler_steps_seed_and_timings(model_dir, tmp_path):
    src = image(tmp_path / "c.png")
    (tmp_path / "bad.png").write_bytes(b"")
    res = runner.invoke(app, ["upscale", str(src), str(tmp_path / "bad.png"), str(tmp_path / "nope.png"),
                              "--model", str(model_dir), "--steps", "2", "--sampler", "euler", "--seed", "5",
                              "--json", "-q"])
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    missing = summary["failures"].pop(0)  # specs that matched nothing come first, named as given
    assert missing == {"input": str(tmp_path / "nope.png"), "error": f"{tmp_path / 'nope.png'}: no such file or folder"}
    assert summary["model"] == str(model_dir) and summary["sampler"] == "euler"
    assert summary["steps"] == 2 and summary["seed"] == 5 and summary["load_s"] >= 0
    assert summary["failures"] == [{"input": str(tmp_path / "bad.png"), "error": f"{tmp_path / 'bad.png'}: "
                                                                                  "empty file (0 bytes)"}]
    (out,) = summary["outputs"]
    assert out["sampler"] == "euler" and out["steps"] == 2 and out["seed"] == 5 and out["network_calls"] == 2
    t = out["timings"]
    assert set(t) == {"decode_s", "upscale_s", "encode_s"} and t["upscale_s"] > 0
    # four figures each rounded to the millisecond: the sum may exceed the whole by up to 2 ms
    assert out["seconds"] >= t["decode_s"] + t["upscale_s"] + t["encode_s"] - 2.5e-3


def test_plain_progress_moves_inside_one_group_and_quiet_silences_it(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_upscale, "PLAIN_PROGRESS_EVERY", 0.0)  # a line on every update
    src = image(tmp_path / "p.png", 24, 24)  # 96 px out: 3x3 blocks of 32 px, one group per call
    res = runner.invoke(app, ["upscale", str(src), "--model", str(model_dir), "--steps", "2", "--sampler",
                              "euler", "--block-batch", "3"])
    assert res.exit_code == 0, res.output
    pcts = [int(ln.split(": ")[1].split("%")[0]) for ln in res.stderr.splitlines()
            if ln.startswith("p.png: ") and "block-calls" in ln]
    # tiny model: 2 layers, 2 calls of one group -> layer ticks at 25% and 75%, group ends at 50% and 100%
    assert pcts == [25, 50, 50, 75, 100, 100], pcts
    assert "left" in res.stderr
    quiet = runner.invoke(app, ["upscale", str(src), "--model", str(model_dir), "--steps", "2", "-q",
                                "--overwrite"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_progress_eta_from_measured_speed() -> None:
    now = [100.0]
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    p = ImageProgress(console, every=5.0, clock=lambda: now[0])
    p.start_image("x.png", 40)
    now[0] = 110.0
    p.blocks_done(10)  # 10 units in 10 s -> 30 left at 1/s
    assert p.eta() == pytest.approx(30.0)
    p.layer_done(10.0)
    assert p.completed == 20 and p.eta() == pytest.approx(10.0)
    assert console.file.getvalue().splitlines() == ["x.png: 25% (10/40 block-calls), 10 s elapsed, ~30 s left"]
    now[0] = 130.0
    p.blocks_done(30)
    assert p.line() == "x.png: 100% (40/40 block-calls), 30 s elapsed"
    assert format_duration(3725) == "1 h 02 min" and format_duration(65) == "1 min 05 s"


def test_text_prompt_on_a_model_without_clip_says_how_to_get_one(model_dir, tmp_path):
    res = runner.invoke(app, ["upscale", str(image(tmp_path / "x.png")), "--model", str(model_dir),
                              "--prompt-pos", "clear", "-q"])
    assert res.exit_code == 1
    assert "infdit convert" in res.stderr and "not conditioned on CLIP" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_terminal_bar_moves_with_layers_and_batch() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with ImageProgress(console, batch_total=2) as p:
        p.start_image("a.png", 8)
        bar = p._rich.tasks[-1]
        p.layer_done(2.0)
        assert (bar.completed, bar.total) == (2, 8)
        p.blocks_done(4)  # exact group end replaces the layer estimate
        assert bar.completed == 4
        p.end_image()
        assert p._rich.tasks[0].completed == 1 and len(p._rich.tasks) == 1


def test_layer_ticks_count_blocks_and_remove_their_hooks() -> None:
    import torch

    from infdit_cli.progress import layer_ticks

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Identity() for _ in range(4)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for b in self.blocks:
                x = b(x)
            return x

    net = Net()
    p = ImageProgress(Console(file=io.StringIO()), every=1e9)
    p.start_image("x", 100)
    with layer_ticks(net, p):
        net(torch.zeros(1, 2, 3, 5, 7))  # [B, X, Y, T, C]: a 2x3 group, 4 layers -> 6 units
    assert p.completed == pytest.approx(6.0)
    assert all(not b._forward_hooks for b in net.blocks)
    net(torch.zeros(1, 2, 3, 5, 7))
    assert p.completed == pytest.approx(6.0)


def test_truncated_png_is_reported_before_the_model_loads(model_dir, tmp_path):
    data = image(tmp_path / "whole.png", 40, 30).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    res = runner.invoke(app, ["upscale", str(tmp_path / "whole.png"), str(tmp_path / "cut.png"), "--model",
                              str(model_dir), "--steps", "1"])
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    cut = next(i for i, ln in enumerate(lines) if "cut.png" in ln and "truncated or corrupt" in ln)
    assert cut < next(i for i, ln in enumerate(lines) if ln.startswith("model "))
    assert (tmp_path / "whole_x4.png").is_file() and not (tmp_path / "cut_x4.png").exists()
