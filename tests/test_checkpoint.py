"""Resume inside one image: a run stopped after any call and resumed equals the uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from infdit_cli.distributed.checkpoint import Checkpoint, CheckpointError, uses_state
from infdit_cli.engine.noise import block_noise
from infdit_cli.samplers import BaseSampler, SamplerOptions, check_num_steps, get_sampler, karras_sigmas


class Stop(Exception):
    """Stands in for the process being killed."""


class TwoStep(BaseSampler):
    """A multistep sampler with hidden state (the previous denoised estimate), like DPM-Solver++(2M)."""

    name = "two-step"

    def nfe(self, num_steps: int) -> int:
        return check_num_steps(num_steps)

    def sample(self, denoiser, x, sigmas, noise, callback=None):
        run = self.start(denoiser, x, sigmas, callback)
        x, previous = run.x, None
        for i in range(run.num_steps):
            d = run.denoise(x, run.sigmas[i], i)
            target = d if previous is None else 1.5 * d - 0.5 * previous
            x = x + (run.sigmas[i + 1] - run.sigmas[i]) * (x - target) / run.sigmas[i] + 0.01 * noise(i)
            previous = d
        return run.finish(x)


def _denoiser(limit: int | None = None):
    calls = [0]

    def d(x, sigma):
        calls[0] += 1
        if limit is not None and calls[0] > limit:
            raise Stop
        return torch.tanh(x * 0.7) / (1 + float(sigma)) + 0.1 * torch.sin(3 * x)

    d.calls = calls  # type: ignore[attr-defined]
    return d


def _problem(steps: int = 5):
    sigmas = karras_sigmas(steps, 0.01, 10.0)
    shape = (1, 3, 16, 32)

    def noise(step: int):
        return block_noise(3, step + 1, shape, 16)

    return sigmas[0] * block_noise(3, 0, shape, 16), sigmas, noise


SAMPLERS = [
    ("heun-edm", SamplerOptions(), "state"),
    ("euler", SamplerOptions(arithmetic_dtype=torch.bfloat16), "state"),
    ("heun-edm", SamplerOptions(s_churn=2.0), "log"),  # churn: the first call of a step does not see x
    ("two-step", SamplerOptions(), "log"),
]


@pytest.mark.parametrize(("name", "options", "mode"), SAMPLERS, ids=[f"{s[0]}-{s[2]}" for s in SAMPLERS])
def test_stopped_after_any_call_and_resumed_equals_uninterrupted(tmp_path, name, options, mode, one_thread):
    sampler = TwoStep(options) if name == "two-step" else get_sampler(name, options)
    assert uses_state(sampler) == (mode == "state")
    x0, sigmas, noise = _problem()
    reference = sampler.sample(_denoiser(), x0, sigmas, noise)
    nfe = sampler.nfe(len(sigmas) - 1)
    for stop_after in sorted({1, 2, 3, nfe - 2, nfe - 1}):  # inside the first steps, mid-run, the last call
        folder = tmp_path / f"ck{stop_after}"
        with pytest.raises(Stop):
            Checkpoint(folder, "m").sample(sampler, _denoiser(stop_after), x0, sigmas, noise, 0)
        again = Checkpoint(folder, "m")
        resumed_calls = _denoiser()
        out = again.sample(sampler, resumed_calls, x0, sigmas, noise, 0)
        assert torch.equal(out.float(), reference.float()), f"stopped after call {stop_after}"
        if again.resumed_from[0] > 0:
            assert resumed_calls.calls[0] < nfe  # work was really saved, not redone
        assert again.resumed_from[0] > 0 or stop_after < nfe - 1
    # A finished pass is answered from its checkpoint without a single call.
    done = _denoiser(limit=0)
    assert torch.equal(Checkpoint(tmp_path / f"ck{nfe - 1}", "m").sample(sampler, done, x0, sigmas, noise, 0).float(),
                       reference.float())


def test_state_mode_keeps_two_states_only(tmp_path):
    sampler = get_sampler("heun-edm")
    x0, sigmas, noise = _problem(6)
    with pytest.raises(Stop):  # calls 7 and 8 are step 3: states x_1, x_2, x_3 were seen, the last two kept
        Checkpoint(tmp_path, "m").sample(sampler, _denoiser(8), x0, sigmas, noise, 0)
    assert sorted(p.name for p in tmp_path.glob("pass0-step*")) == ["pass0-step2.safetensors",
                                                                    "pass0-step3.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_mismatched_run_refuses_with_one_line(tmp_path):
    sampler = get_sampler("euler")
    x0, sigmas, noise = _problem()
    with pytest.raises(Stop):
        Checkpoint(tmp_path, "model-a").sample(sampler, _denoiser(2), x0, sigmas, noise, 0)
    cases = {
        "model": (Checkpoint(tmp_path, "model-b"), sampler, x0, sigmas),
        "input image, seed and scale": (Checkpoint(tmp_path, "model-a"), sampler, x0 + 1, sigmas),
        "sampler": (Checkpoint(tmp_path, "model-a"), get_sampler("heun-edm"), x0, sigmas),
        "schedule": (Checkpoint(tmp_path, "model-a"), sampler, x0, karras_sigmas(6, 0.01, 10.0)),
        "number of ranks": (Checkpoint(tmp_path, "model-a", rank=0, world=2), sampler, x0, sigmas),
    }
    for what, (ck, s, x, sig) in cases.items():
        with pytest.raises(CheckpointError, match=what.split()[0]) as info:
            ck.sample(s, _denoiser(), x, sig, noise, 0)
        assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_ranks_resume_from_the_step_they_all_have(tmp_path):
    """Rank files that stopped a step apart resume from the newest step both hold."""
    sampler = get_sampler("euler")
    x0, sigmas, noise = _problem(6)
    reference = sampler.sample(_denoiser(), x0, sigmas, noise)
    for rank, stop in ((0, 4), (1, 3)):
        with pytest.raises(Stop):
            Checkpoint(tmp_path, "m", rank, 2).sample(sampler, _denoiser(stop), x0, sigmas, noise, 0)
    held = {r: sorted(int(p.name.split("step")[1].split(".")[0]) for p in tmp_path.glob(f"pass0-step*.rank{r}.*"))
            for r in (0, 1)}
    assert held == {0: [2, 3], 1: [1, 2]}
    common = [2]

    def agree(mine: list[int]) -> int:
        return max(set(mine) & {0, *held[0]} & {0, *held[1]})

    ck = Checkpoint(tmp_path, "m", 0, 2, agree)
    out = ck.sample(sampler, _denoiser(), x0, sigmas, noise, 0)
    assert ck.resumed_from[0] == common[0] and torch.equal(out, reference)
    assert math.isfinite(out.abs().max().item())


def test_cli_interrupted_then_resumed_writes_the_uninterrupted_png(tmp_path, monkeypatch, one_thread):
    """Ctrl-C after 3 network calls keeps the checkpoint; another seed is refused in one line; the same
    command resumes from the saved step and writes the same bytes as a run that was never stopped."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from infdit_cli.cli import app
    from infdit_cli.model import InfDiT, precond
    from infdit_cli.weights import save_model
    from tests.distributed_worker import TINY

    save_model(InfDiT(TINY).init_random(2), tmp_path / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    base = ["upscale", str(tmp_path / "in.png"), "--model", str(tmp_path / "model"), "--steps", "4", "-q"]
    runner = CliRunner()
    assert runner.invoke(app, [*base, "-o", str(tmp_path / "plain")]).exit_code == 0
    reference = (tmp_path / "plain" / "in_x4.png").read_bytes()

    real_call, calls = precond.EDMDenoiser.__call__, [0]

    def interrupted(self, x, sigma):
        calls[0] += 1
        if calls[0] > 3:
            raise KeyboardInterrupt
        return real_call(self, x, sigma)

    out, ck = str(tmp_path / "out"), str(tmp_path / "ck")
    monkeypatch.setattr(precond.EDMDenoiser, "__call__", interrupted)
    res = runner.invoke(app, [*base, "-o", out, "--checkpoint", ck])
    assert res.exit_code == 130 and not (tmp_path / "out" / "in_x4.png").exists()
    assert list((tmp_path / "ck").glob("*/pass0-step1.safetensors"))  # heun: calls 1-2 are step 0, 3 starts step 1
    monkeypatch.setattr(precond.EDMDenoiser, "__call__", real_call)

    res = runner.invoke(app, [*base, "-o", out, "--checkpoint", ck, "--seed", "9"])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and "belongs to another run" in lines[0] and "seed" in lines[0]

    res = runner.invoke(app, [*base, "-o", out, "--checkpoint", ck, "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "in_x4.png").read_bytes() == reference
    assert json.loads(res.stdout)["outputs"][0]["network_calls"] < 7  # 2·4 − 1 without the checkpoint
    assert not any((tmp_path / "ck").iterdir())  # cleared once the image is written


def test_log_mode_refuses_a_pass_whose_log_would_not_fit_the_disk(tmp_path, monkeypatch):
    """The per-call log grows with every call: a pass that would fill the disk is refused up front,
    with the figure, before any call (state mode keeps two images and is not checked)."""
    import shutil
    from collections import namedtuple

    sampler = get_sampler("heun-edm", SamplerOptions(s_churn=2.0))
    x0, sigmas, noise = _problem()
    nfe = sampler.nfe(len(sigmas) - 1)
    need = (nfe + 1) * x0.numel() * 4
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(need * 10, need * 10 - need + 1, need - 1))
    calls = _denoiser()
    with pytest.raises(CheckpointError, match=f"needs {need / 1e9:.1f} GB .*{nfe} calls") as info:
        Checkpoint(tmp_path, "m").sample(sampler, calls, x0, sigmas, noise, 0)
    assert calls.calls[0] == 0 and "\n" not in str(info.value)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(need * 10, 0, need))
    Checkpoint(tmp_path, "m").sample(sampler, calls, x0, sigmas, noise, 0)  # exactly enough
    assert calls.calls[0] == nfe
