"""`infdit upscale` end to end with tiny models: sizes, files, models, prompts and every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from infdit_cli.cli import app
from tests.models import small_block, write_hub_cache, write_tiny_clip_model, write_tiny_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("calibrate_once")
FAST = ["--steps", "1", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def clip_model_dir(tmp_path_factory) -> Path:
    return write_tiny_clip_model(tmp_path_factory.mktemp("models") / "tiny-clip")


def rgb_image(path: Path, w: int, h: int, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8), mode).save(path)
    return path


def run(*args: str) -> object:
    return runner.invoke(app, ["upscale", *args])


def assert_one_line_error(res, *fragments: str) -> None:
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for frag in fragments:
        assert frag in res.stderr, res.stderr


def no_outputs(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if "_x" in p.name or p.name.startswith(".")]


@pytest.mark.parametrize(("scale", "size"), [(4, (148, 212)), (2, (74, 106))])
def test_exact_output_size_for_odd_inputs(model_dir, tmp_path, scale, size):
    src = rgb_image(tmp_path / "odd.png", 37, 53)
    res = run(str(src), "--model", str(model_dir), "--scale", str(scale), *FAST)
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / f"odd_x{scale}.png") as im:
        assert im.size == size


def test_same_seed_same_image_for_any_block_batch_and_hub_source(model_dir, tmp_path, monkeypatch):
    src = rgb_image(tmp_path / "in.png", 28, 20)  # 112x80 out: 4x3 blocks of 32 px, ragged for n=2
    cache = tmp_path / "hub"
    write_hub_cache(cache, "acme/tiny-infdit", model_dir)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    outs = {}
    for name, extra in {"n1": ["--block-batch", "1"], "n2": ["--block-batch", "2"], "auto": [],
                        "hub": ["--model", "acme/tiny-infdit"]}.items():
        model_args = [] if name == "hub" else ["--model", str(model_dir)]
        res = run(str(src), *model_args, *extra, "--steps", "1", "--seed", "5", "-o", str(tmp_path / name), "-q")
        assert res.exit_code == 0, res.output
        outs[name] = np.asarray(Image.open(tmp_path / name / "in_x4.png"))
    for name in ("n2", "auto", "hub"):
        assert np.array_equal(outs["n1"], outs[name]), name
    res = run(str(src), "--model", str(model_dir), "--steps", "1", "--seed", "6", "-o", str(tmp_path / "s6"), "-q")
    assert not np.array_equal(outs["n1"], np.asarray(Image.open(tmp_path / "s6" / "in_x4.png")))


def test_batch_folder_reports_bad_file_and_processes_the_rest(model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rgb_image(folder / "a.png", 20, 20)
    rgb_image(folder / "b.jpg", 24, 16)
    (folder / "broken.png").write_text("not an image")
    res = run(str(folder), "--model", str(model_dir), "-o", str(tmp_path / "out"), "--json", *FAST)
    assert res.exit_code == 1
    assert "broken.png" in res.stderr and "Traceback" not in res.output
    assert (tmp_path / "out" / "a_x4.png").is_file() and (tmp_path / "out" / "b_x4.jpg").is_file()
    assert not (tmp_path / "out" / "broken_x4.png").exists()
    import json

    summary = json.loads(res.stdout)
    assert summary["failed"] == 1 and len(summary["outputs"]) == 2
    assert summary["outputs"][0]["output_size"] == [80, 80]


def test_existing_outputs_overwrite_and_skip(model_dir, tmp_path):
    src = rgb_image(tmp_path / "p.png", 16, 16)
    target = tmp_path / "p_x4.png"
    target.write_bytes(b"keep me")
    res = run(str(src), "--model", str(model_dir), *FAST)
    assert_one_line_error(res, "already exists")
    assert target.read_bytes() == b"keep me"
    assert run(str(src), "--model", str(model_dir), "--skip-existing", *FAST).exit_code == 0
    assert target.read_bytes() == b"keep me"
    assert run(str(src), "--model", str(model_dir), "--overwrite", *FAST).exit_code == 0
    assert Image.open(target).size == (64, 64)


def test_alpha_and_16_bit_grayscale_round_trip(model_dir, tmp_path):
    rgba = rgb_image(tmp_path / "rgba.png", 20, 12, "RGBA")
    res = run(str(rgba), "--model", str(model_dir), *FAST)
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "rgba_x4.png") as im:
        assert im.mode == "RGBA" and im.size == (80, 48)
    grey = np.random.default_rng(1).integers(0, 65536, (10, 14), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    res = run(str(tmp_path / "g16.png"), "--model", str(model_dir), *FAST)
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "g16_x4.png") as im:
        assert im.mode in ("I;16", "I") and im.size == (56, 40)
        assert np.asarray(im).max() > 255  # really 16-bit values


def test_prompts_edit_the_clip_embedding(clip_model_dir, tmp_path):
    src = rgb_image(tmp_path / "c.png", 32, 32)
    base = run(str(src), "--model", str(clip_model_dir), "-o", str(tmp_path / "plain"), "--steps", "1", "-q")
    assert base.exit_code == 0, base.output
    edited = run(str(src), "--model", str(clip_model_dir), "-o", str(tmp_path / "prompt"), "--steps", "1", "-q",
                 "--prompt-pos", "clear", "--prompt-neg", "blur")
    assert edited.exit_code == 0, edited.output
    a = np.asarray(Image.open(tmp_path / "plain" / "c_x4.png"))
    b = np.asarray(Image.open(tmp_path / "prompt" / "c_x4.png"))
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_prompts_rejected_by_a_model_without_clip(model_dir, tmp_path):
    src = rgb_image(tmp_path / "x.png", 16, 16)
    res = run(str(src), "--model", str(model_dir), "--prompt-pos", "clear", *FAST)
    assert_one_line_error(res, "not conditioned on CLIP")
    assert no_outputs(tmp_path)


def _bad_cases(tmp_path: Path, model_dir: Path) -> dict[str, tuple[list[str], str]]:
    good = rgb_image(tmp_path / "good.png", 16, 16)
    (tmp_path / "empty.png").write_bytes(b"")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "noimages").mkdir()
    (tmp_path / "noimages" / "notes.txt").write_text("x")
    rgb_image(tmp_path / "wide.png", 4100, 1)
    (tmp_path / "afile").write_text("x")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    m = ["--model", str(model_dir)]
    return {
        "missing": ([str(tmp_path / "nope.png"), *m], "nope.png"),
        "no images": ([str(tmp_path / "noimages"), *m], "noimages"),
        "empty": ([str(tmp_path / "empty.png"), *m], "empty.png"),
        "truncated": ([str(tmp_path / "trunc.png"), *m], "trunc.png"),
        "non-image": ([str(tmp_path / "text.jpg"), *m], "text.jpg"),
        "too large for webp": ([str(tmp_path / "wide.png"), "--format", "webp", *m], "too large"),
        "unwritable output": ([str(good), "-o", str(tmp_path / "afile" / "out.png"), *m], "afile"),
        "scale": ([str(good), "--scale", "3", *m], "scale"),
        "zero steps": ([str(good), *m, "--steps", "0"], "steps"),
        "unknown sampler": ([str(good), *m, "--sampler", "nope"], "heun-edm"),
        "missing model": ([str(good), "--model", str(tmp_path / "nomodel")], "nomodel"),
        "corrupt model": ([str(good), "--model", str(corrupt)], "corrupt.safetensors"),
        "bad memory": ([str(good), *m, "--max-memory", "lots"], "memory"),
    }


def test_every_bad_input_is_one_line_and_writes_nothing(model_dir, tmp_path):
    for name, (args, fragment) in _bad_cases(tmp_path, model_dir).items():
        res = run(*args, "--quiet", *([] if "--steps" in args else ["--steps", "1"]))
        assert res.exit_code != 0, name
        assert "Traceback" not in res.output, name
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1, (name, res.stderr)
        assert fragment in res.stderr, (name, res.stderr)
    assert no_outputs(tmp_path)


def test_decompression_bomb_is_refused(model_dir, tmp_path, monkeypatch):
    from PIL import Image as PILImage

    src = rgb_image(tmp_path / "bomb.png", 64, 64)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    res = run(str(src), "--model", str(model_dir), *FAST)
    assert_one_line_error(res, "decompression-bomb")
    assert no_outputs(tmp_path)


def test_ctrl_c_leaves_no_partial_output_and_says_how_to_continue(model_dir, tmp_path):
    first, big = rgb_image(tmp_path / "a.png", 16, 16), rgb_image(tmp_path / "big.png", 96, 96, seed=1)
    ckpt = tmp_path / "ckpt"
    args = ["upscale", str(first), str(big), "--model", str(model_dir), "--steps", "8", "--sampler", "euler",
            "--checkpoint", str(ckpt)]
    proc = subprocess.Popen([sys.executable, "-m", "infdit_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"), text=True)
    # The event: big.png's sampling state saved after its first step, so the run is inside that image.
    deadline = time.monotonic() + 120
    while not list(ckpt.glob("big_x4.png-*/pass0-manifest.json")) and proc.poll() is None:
        assert time.monotonic() < deadline, "big.png's sampling never started"
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert not (tmp_path / "big_x4.png").exists() and (tmp_path / "a_x4.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    lines = stderr.splitlines()
    # the pre-flight's two lines per image (a progress line "big.png: 19% ..." may come between)
    preflight = [line for line in lines
                 if line.startswith("  n=") or (line.startswith(("a.png: ", "big.png: ")) and " -> " in line)]
    assert len(preflight) == 4 and max(map(len, preflight)) <= 80, preflight  # readable in 80 columns
    assert lines[-2].startswith("interrupted: 1 written, 0 skipped, 0 failed of 2 in "), lines[-2:]
    assert lines[-1] == "to continue: infdit " + " ".join([*args, "--skip-existing"])
    # The command it prints continues: a.png is skipped, big.png resumes from its checkpoint (that resuming
    # gives the uninterrupted image is held in test_checkpoint.py and test_distributed.py).
    res = runner.invoke(app, [*args, "--skip-existing", "--json", "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["written"], summary["skipped"]) == (1, 1) and (tmp_path / "big_x4.png").is_file()


def test_model_sampling_defaults_apply_unless_overridden(tmp_path):
    from infdit_cli.model import InfDiT
    from infdit_cli.weights import save_model

    folder = tmp_path / "m"
    save_model(InfDiT(small_block()).init_random(0), folder,
               {"sampling": json.dumps({"sampler": "euler", "steps": 2})})
    src = rgb_image(tmp_path / "d.png", 16, 16)
    res = run(str(src), "--model", str(folder), "--json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outputs"][0]["network_calls"] == 2  # euler, 2 steps
    res = run(str(src), "--model", str(folder), "--json", "-q", "--steps", "3", "--overwrite")
    assert json.loads(res.stdout)["outputs"][0]["network_calls"] == 3
