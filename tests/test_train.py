"""Training: the loss goes down, resume is exact, the data pipeline follows the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from infdit_cli.config import preset
from infdit_cli.train import (
    CropSource,
    TrainConfig,
    TrainError,
    edm_loss,
    make_lr,
    random_crop,
    split_files,
    step_generator,
    train,
)
from infdit_cli.weights import load_model, read_config


def write_images(folder: Path, n: int = 4, size: int = 192) -> Path:
    """Smooth colour fields with stripes and edges: learnable structure, no downloads."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        f = rng.uniform(0.02, 0.2, size=3)
        img = np.stack([127 + 100 * np.sin(f[c] * (xx + (c + i) * yy) / 2) for c in range(3)], -1)
        img[size // 3: size // 2, :] = rng.uniform(0, 255, size=3)
        sub = folder / ("sub" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(sub / f"im{i}.png")
    return folder


def tiny_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(data=str(write_images(tmp_path / "data")), out=str(tmp_path / "out"), preset="tiny", steps=4,
                batch_size=2, crop=128, lr=2e-3, ema=0.9, val_every=0, val_images=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_validation_loss_decreases(tmp_path):
    events = []
    result = train(tiny_config(tmp_path, steps=8, val_every=8), events.append)
    vals = [v for _, v in result.val_history]
    assert [s for s, _ in result.val_history] == [0, 8]  # step 0: the untrained baseline
    assert all(np.isfinite(vals)) and vals[-1] < vals[0]
    assert len(events) == 8 and events[-1].val_loss == vals[-1]
    # The saved model is the EMA, in our format, with the training recipe recorded.
    config, meta = read_config(result.model_path)
    assert config == preset("tiny") and meta["train_steps"] == "8" and meta["preset"] == "tiny"
    assert load_model(result.model_path).num_parameters() == result.num_parameters


def test_resume_is_exact(tmp_path):
    straight = train(tiny_config(tmp_path / "a", steps=4))
    cfg = tiny_config(tmp_path / "b", steps=2)
    train(cfg)
    state = json.loads((Path(cfg.out) / "train_state.json").read_text())
    assert state["step"] == 2
    resumed = train(tiny_config(tmp_path / "b", steps=4, resume=True))
    assert resumed.steps == 4 and len(resumed.losses) == 2
    assert resumed.losses == straight.losses[2:]
    for name in ("model.safetensors", "train_state.safetensors"):
        a = load_file(str(Path(straight.model_path).parent / name))
        b = load_file(str(Path(resumed.model_path).parent / name))
        assert a.keys() == b.keys()
        for k in a:
            if k != "rng.torch":
                assert torch.equal(a[k], b[k]), (name, k)


def test_resume_rejects_other_architecture(tmp_path):
    train(tiny_config(tmp_path, steps=1))
    with pytest.raises(TrainError):
        train(tiny_config(tmp_path, steps=2, resume=True, overrides={"num_layers": 3}))


def test_crop_must_be_block_multiple(tmp_path):
    with pytest.raises(TrainError):
        train(tiny_config(tmp_path, crop=96))


def test_split_and_crops(tmp_path):
    cfg = tiny_config(tmp_path, val_images=1)
    train_files, val_files = split_files(cfg)
    assert len(train_files) == 3 and len(val_files) == 1 and not set(train_files) & set(val_files)
    source = CropSource(train_files, 128)
    a = random_crop(source, step_generator(0, 5), 0.3, True)
    b = random_crop(source, step_generator(0, 5), 0.3, True)
    assert a.shape == (3, 128, 128) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    lr = make_lr(a[None], 4, step_generator(0, 5), degrade=True)
    assert lr.shape == (1, 3, 32, 32) and lr.min() >= -1 and lr.max() <= 1
    assert torch.allclose((lr + 1) * 127.5, ((lr + 1) * 127.5).round(), atol=1e-4)  # 8-bit levels


def test_edm_loss_weighting_matches_definition():
    """With a zero network, D = c_skip·x, so the loss has a closed form."""
    model = preset("tiny")
    net = __import__("infdit_cli.model", fromlist=["InfDiT"]).InfDiT(model)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    hr = torch.rand(1, 3, 128, 128) * 2 - 1
    noise = torch.randn_like(hr)
    sigma = torch.tensor([0.7])
    loss = edm_loss(net, hr, make_lr(hr, 4), sigma, noise)
    sd = 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    expected = (sigma**2 + sd**2) / (sigma * sd) ** 2 * (c_skip * (hr + sigma * noise) - hr).square().mean()
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_cli_train_then_eval(tmp_path):
    import typer
    from typer.testing import CliRunner

    from infdit_cli.cli_train import eval_command, train_command

    app = typer.Typer()
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    data = write_images(tmp_path / "data", n=2, size=128)
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(data), "--preset", "tiny", "--out", str(tmp_path / "run"), "--steps", "1",
                              "--batch-size", "1", "--crop", "128", "--val-images", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    model = tmp_path / "run" / "model.safetensors"
    assert model.is_file()
    res = runner.invoke(app, ["eval", str(data / "im0.png"), "--model", str(model), "--steps", "1",
                              "--max-side", "64", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert np.isfinite(report["mean"]["psnr"]) and len(report["images"]) == 1
