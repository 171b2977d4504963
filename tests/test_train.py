"""Training: the loss goes down, resume is exact, the data pipeline follows the recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from infdit_cli.config import preset
from infdit_cli.model import InfDiT
from infdit_cli.preprocess import upsample_lr
from infdit_cli.train import (
    CropSource,
    TrainConfig,
    TrainError,
    edm_loss,
    learning_rate,
    make_lr,
    psnr_gain,
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


SMALL_BLOCKS = {"block_size": 32}  # 64 tokens per block: every feature, a fraction of the time


def tiny_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(data=str(write_images(tmp_path / "data")), out=str(tmp_path / "out"), preset="tiny", steps=4,
                batch_size=2, crop=64, lr=2e-3, ema=0.9, val_every=0, val_images=1, seed=3,
                overrides=dict(SMALL_BLOCKS))
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
    assert config == preset("tiny", **SMALL_BLOCKS) and meta["train_steps"] == "8" and meta["preset"] == "tiny"
    assert json.loads(meta["objective"]) == {"kind": "edm", "p_mean": -1.0, "p_std": 1.4}
    assert "sampling" not in meta  # an EDM model samples with whatever the user picks
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
        train(tiny_config(tmp_path, steps=2, resume=True, overrides={**SMALL_BLOCKS, "num_layers": 3}))


def test_crop_must_be_block_multiple(tmp_path):
    with pytest.raises(TrainError):
        train(tiny_config(tmp_path, crop=80))


def test_split_and_crops(tmp_path):
    cfg = tiny_config(tmp_path, val_images=1)
    train_files, val_files = split_files(cfg)
    assert len(train_files) == 3 and len(val_files) == 1 and not set(train_files) & set(val_files)
    source = CropSource(train_files, 64)
    a = random_crop(source, step_generator(0, 5), 0.3, True)
    b = random_crop(source, step_generator(0, 5), 0.3, True)
    assert a.shape == (3, 64, 64) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    lr = make_lr(a[None], 4)
    assert lr.shape == (1, 3, 16, 16) and lr.min() >= -1 and lr.max() <= 1
    assert torch.allclose((lr + 1) * 127.5, ((lr + 1) * 127.5).round(), atol=1e-4)  # 8-bit levels


def test_edm_loss_weighting_matches_definition():
    """With a zero network, D = c_skip·x, so the loss has a closed form."""
    net = InfDiT(preset("tiny", **SMALL_BLOCKS))
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    hr = torch.rand(1, 3, 64, 64) * 2 - 1
    noise = torch.randn_like(hr)
    sigma = torch.tensor([0.7])
    loss = edm_loss(net, hr, make_lr(hr, 4), sigma, noise)
    sd = 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    expected = weight * (c_skip * (hr + sigma * noise) - hr).square().mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    # One-step: the start is bicubic(LR) + σn, not HR + σn.
    lr = make_lr(hr, 4)
    one = edm_loss(net, hr, lr, sigma, noise, objective="one-step")
    start = upsample_lr(lr, 4) + sigma * noise
    assert torch.allclose(one, weight * (c_skip * start - hr).square().mean(), rtol=1e-5)
    assert not torch.allclose(one, loss)


def test_initialize_weights_starts_as_identity():
    """DiT-style init: F ≡ 0, so one call at a tiny σ returns the bicubic start (up to c_skip)."""
    net = InfDiT(preset("tiny", **SMALL_BLOCKS)).initialize_weights(0)
    hr = torch.rand(1, 3, 64, 64) * 2 - 1
    lr = make_lr(hr, 4)
    x = upsample_lr(lr, 4)
    out = net(torch.cat([x, x], 1), torch.zeros(1), lr=lr)
    assert torch.equal(out, torch.zeros_like(out))
    # ...while the other paths are live (a zero network would also pass the line above).
    assert net.blocks[0].qkv.weight.abs().sum() > 0 and net.patch_embed.weight.abs().sum() > 0
    rnd = InfDiT(preset("tiny", **SMALL_BLOCKS)).init_random(0)
    assert rnd(torch.cat([x, x], 1), torch.zeros(1), lr=lr).abs().max() > 0


def one_step_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(objective="one-step", sigma=0.004, sample_sigma=0.003, lr=3e-3, warmup=2, cosine=True,
                batch_size=4, p_resize=0.0)
    base.update(kw)
    return tiny_config(tmp_path, **base)


def write_rectangles(folder: Path, size: int = 64) -> Path:
    """Sharp-edged colour rectangles: where bicubic ×4 is clearly wrong, so the residual is learnable."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = np.zeros((size, size, 3), np.uint8)
    for _ in range(12):
        (y, x), (h, w) = rng.integers(0, size - 8, 2), rng.integers(4, 24, 2)
        img[y: y + h, x: x + w] = rng.integers(0, 256, 3)
    Image.fromarray(img).save(folder / "rects.png")
    return folder


def test_one_step_objective_learns_and_records_its_sampling(tmp_path):
    data = write_rectangles(tmp_path / "rects")
    cfg = one_step_config(tmp_path, data=str(data), steps=40, val_images=0, ema=0.8, lr=1e-2, cosine=False,
                          batch_size=2)
    result = train(cfg)
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.8 * first  # measured: 3684 -> 2303
    model = load_model(result.model_path)
    crop = torch.from_numpy(np.array(Image.open(data / "rects.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert psnr_gain(model, crop, 0.003) > 0.3  # the EMA model beats bicubic on what it saw
    assert psnr_gain(InfDiT(model.config).initialize_weights(0), crop, 0.003) == pytest.approx(0, abs=0.05)
    _, meta = read_config(result.model_path)
    assert json.loads(meta["objective"]) == {"kind": "one-step", "sigma": 0.004}
    assert json.loads(meta["sampling"]) == {"sampler": "euler", "steps": 1, "sigma_max": 0.003, "sigma_min": 0.0015}


def test_one_step_model_warns_when_sampled_otherwise(tmp_path):
    from infdit_cli.pipeline import UpscaleOptions, load_upscaler

    result = train(one_step_config(tmp_path, steps=1))
    upscaler = load_upscaler(str(result.model_path), torch.device("cpu"))
    own = upscaler.options()
    assert (own.sampler, own.steps, own.sigma_max) == ("euler", 1, 0.003)
    assert upscaler.sampling_warning(own) is None
    # One step from the same σ is the same image whatever the sampler, σ_min or ρ: no warning.
    same = UpscaleOptions(sampler="heun-edm", steps=1, sigma_min=0.001, rho=3.0)
    assert upscaler.sampling_warning(same) is None
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(upscaler.upscale(image, same).image, upscaler.upscale(image, own).image, atol=1e-6)
    warning = upscaler.sampling_warning(UpscaleOptions(steps=20, sampler="heun-edm"))
    assert warning and "one euler step" in warning and "\n" not in warning
    assert upscaler.sampling_warning(UpscaleOptions(sigma_max=0.5)) is not None


class Killed(Exception):
    pass


def test_resume_is_exact_with_one_step_options(tmp_path):
    """Interrupted after step 2 of 4 and rerun: the same run (the cosine schedule spans all 4 steps)."""
    straight = train(one_step_config(tmp_path / "a", steps=4))

    def kill_at_2(p) -> None:
        if p.step == 2:
            raise Killed

    with pytest.raises(Killed):
        train(one_step_config(tmp_path / "b", steps=4, save_every=1), kill_at_2)
    resumed = train(one_step_config(tmp_path / "b", steps=4, save_every=1, resume=True))
    assert resumed.losses == straight.losses[2:]
    a, b = load_file(str(straight.model_path)), load_file(str(resumed.model_path))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_reads_a_training_state_from_before_the_averaged_model(tmp_path):
    """States written before the EMA became a torch AveragedModel have no EMA count: resume derives it
    from the step and continues the same run (a count of 1 would restart the decay ramp)."""
    from safetensors.torch import save_file

    straight = train(one_step_config(tmp_path / "a", steps=4))
    with pytest.raises(Killed):
        train(one_step_config(tmp_path / "b", steps=4, save_every=1),
              lambda p: (_ for _ in ()).throw(Killed()) if p.step == 2 else None)
    state_file = tmp_path / "b" / "out" / "train_state.safetensors"
    tensors = load_file(str(state_file))
    assert int(tensors.pop("ema.n_averaged")) == 3  # the copy, then one average per step
    save_file(tensors, str(state_file), {"format": "infdit-train-state"})  # the old layout
    resumed = train(one_step_config(tmp_path / "b", steps=4, save_every=1, resume=True))
    assert resumed.losses == straight.losses[2:]
    a, b = load_file(str(straight.model_path)), load_file(str(resumed.model_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_schedule():
    cfg = TrainConfig(data="d", out="o", lr=1.0, warmup=10, cosine=True, steps=110)
    rates = [learning_rate(cfg, s) for s in range(110)]
    assert rates[0] == pytest.approx(0.1)
    assert rates[9] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 9 / 110)))
    assert max(rates) <= 1.0 and rates[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))  # decays monotonically after warm-up


def test_one_step_needs_a_fixed_sigma(tmp_path):
    with pytest.raises(TrainError, match="sigma"):
        train(tiny_config(tmp_path, objective="one-step"))
    with pytest.raises(TrainError, match="objective"):
        train(tiny_config(tmp_path, objective="flow"))


def test_cli_train_then_eval(tmp_path):
    import typer
    from typer.testing import CliRunner

    from infdit_cli.cli_train import eval_command, train_command

    app = typer.Typer()
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    data = write_images(tmp_path / "data", n=2, size=128)
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(data), "--preset", "tiny", "--set", "block_size=32", "-o",
                              str(tmp_path / "run"), "--max-steps", "1", "--objective", "one-step", "--sigma", "0.004",
                              "--batch-size", "1", "--crop", "64", "--val-images", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    model = tmp_path / "run" / "model.safetensors"
    assert model.is_file()
    res = runner.invoke(app, ["eval", str(data / "im0.png"), "--model", str(model), "--max-side", "64", "--json",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert len(report["images"]) == 1 and report["images"][0]["size"] == [64, 64]
    # The model's own sampling (one Euler step at its σ), not the generic 20-step default.
    assert report["sampling"]["sampler"] == "euler" and report["sampling"]["steps"] == 1
    assert report["sampling"]["sigma_max"] == 0.004
    # One step from bicubic with an all-but-untrained model stays within a hair of bicubic.
    assert abs(report["mean"]["psnr"] - report["mean"]["psnr_bicubic"]) < 1.0


def test_denoise_model_starts_from_an_older_model_exactly_and_trains_on_degraded_lr(tmp_path):
    """--init-from a model without the strength input: the new input starts without effect (the same
    outputs at every strength); after degraded training the strength changes the output and resume is exact."""
    old = train(one_step_config(tmp_path / "old", steps=2))
    kw = dict(overrides={**SMALL_BLOCKS, "denoise_cond": True}, init_from=str(old.model_path), degrade=True,
              p_clean=0.3, loss="charbonnier")
    start = train(one_step_config(tmp_path / "start", steps=0, **kw))
    before, after = load_model(old.model_path), load_model(start.model_path)
    x, lr = torch.rand(1, 6, 64, 64) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    c = torch.full((1,), -1.3)
    with torch.no_grad():
        ref = before(x, c, lr=lr)
        assert torch.equal(after(x, c, lr=lr), ref) and torch.equal(after(x, c, torch.ones(1, 1), lr), ref)
    straight = train(one_step_config(tmp_path / "a", steps=4, lr=1e-2, **kw))
    with pytest.raises(Killed):
        train(one_step_config(tmp_path / "b", steps=4, save_every=1, lr=1e-2, **kw),
              lambda p: (_ for _ in ()).throw(Killed()) if p.step == 2 else None)
    resumed = train(one_step_config(tmp_path / "b", steps=4, save_every=1, lr=1e-2, resume=True, **kw))
    assert resumed.losses == straight.losses[2:]
    trained = load_model(straight.model_path)
    with torch.no_grad():
        clean = trained(x, c, torch.zeros(1, 1), lr)
        assert not torch.equal(clean, trained(x, c, torch.ones(1, 1), lr))
        assert torch.equal(trained(x, c, lr=lr), clean)  # no strength given = a clean input


def test_init_from_rejects_another_architecture(tmp_path):
    other = train(tiny_config(tmp_path / "other", steps=1))
    with pytest.raises(TrainError, match="does not fit"):
        train(one_step_config(tmp_path / "x", steps=1, init_from=str(other.model_path),
                              overrides={**SMALL_BLOCKS, "hidden_size": 32}))


def test_a_block_offset_model_trains_on_pairs_cut_at_its_offset(tmp_path):
    """Crops are drawn one block larger and cut 4 LR pixels in; the run records the offset in its model."""
    cfg = one_step_config(tmp_path, steps=2, degrade=True, overrides={**SMALL_BLOCKS, "block_offset": 4})
    result = train(cfg)
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    assert read_config(result.model_path)[0].block_offset == 4


def test_seam_error_sees_steps_across_block_edges_only():
    from infdit_cli.train.objective import seam_error

    flat = torch.zeros(2, 3, 96, 96)
    ramp = flat + torch.arange(96.0) + torch.arange(96.0)[:, None]  # the same step everywhere, none extra at edges
    assert torch.allclose(seam_error(ramp, 32), torch.ones(2))
    seamed = flat.clone()
    seamed[1, :, :, 32:] += 0.5  # sample 1 steps at column 32 (one of the 4 edge lines: columns and rows 32, 64)
    assert torch.equal(seam_error(seamed, 32), torch.tensor([0.0, 0.25 / 4]))
    inside = flat.clone()
    inside[..., 40:] += 0.5  # a step inside blocks is the plain loss's business
    assert torch.equal(seam_error(inside, 32), torch.zeros(2))


def test_seam_weight_adds_the_edge_term_to_the_loss(tmp_path):
    plain = train(one_step_config(tmp_path / "a", steps=1))
    seams = train(one_step_config(tmp_path / "b", steps=1, seam_weight=5.0))
    assert seams.losses[0] > plain.losses[0]  # the same step, the same draws: the extra term alone differs
    with pytest.raises(TrainError, match="seam weight"):
        train(one_step_config(tmp_path / "c", steps=1, seam_weight=-1.0))
