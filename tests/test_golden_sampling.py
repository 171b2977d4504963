"""Full sampling parity with the official Heun-EDM sampler on the tiny golden model (float32)."""

from __future__ import annotations

import pytest
import torch

from infdit_cli.model import EDMDenoiser
from infdit_cli.samplers import StepInfo, get_sampler, karras_sigmas
from tests.conftest import Golden, rel_err

TOL = 1e-4


def _denoiser(golden: Golden, model) -> EDMDenoiser:
    vector, lr, lr_up = golden["vector"], golden["lr_image"], golden["concat_lr_image"]
    return EDMDenoiser(lambda net_in, c_noise: model(net_in, c_noise, vector, lr), lr_up)


def _run(golden: Golden, model, num_steps: int) -> tuple[torch.Tensor, list[torch.Tensor], list[float], list[StepInfo]]:
    """Sample like the official script: x0 = lr_up + sigma_0·noise; record every denoiser call."""
    denoiser = _denoiser(golden, model)
    inputs: list[torch.Tensor] = []
    call_sigmas: list[float] = []

    def recording(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        inputs.append(x.clone())
        call_sigmas.append(float(sigma))
        return denoiser(x, sigma)

    def no_noise(step: int) -> torch.Tensor:
        raise AssertionError("the official sampler uses no churn noise")

    infos: list[StepInfo] = []
    sigmas = karras_sigmas(num_steps)
    x0 = golden["concat_lr_image"] + sigmas[0] * golden["noise"]
    with torch.no_grad():
        out = get_sampler("heun-edm").sample(recording, x0, sigmas, no_noise, callback=infos.append)
    return out, inputs, call_sigmas, infos


@pytest.mark.parametrize("num_steps", [4, 20])
def test_karras_sigmas_match_official(golden, num_steps):
    key = f"sigmas_steps{num_steps}"
    if key not in golden:
        pytest.skip(f"golden folder has no {key}")
    ours, ref = karras_sigmas(num_steps), golden[key]
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert ((ours - ref).abs() / ref.clamp_min(1e-30)).max().item() <= 1e-6


def test_heun_steps4_matches_official(golden, golden_model):
    out, inputs, call_sigmas, infos = _run(golden, golden_model, 4)
    err = rel_err(out, golden["sample_full_steps4"])
    print(f"\nsample_full_steps4 rel err {err:.3e}")
    assert err <= TOL

    # The first call of step i + 1 sees the state after step i (no churn: x_hat == x).
    for i in range(3):
        key = f"sample_full_steps4_x_after_step{i}"
        if key in golden:
            step_err = rel_err(inputs[2 * (i + 1)], golden[key])
            print(f"{key} rel err {step_err:.3e}")
            assert step_err <= TOL

    assert len(call_sigmas) == 7 and [i.nfe for i in infos] == list(range(1, 8))
    if "sample_steps4_call_sigmas" in golden:
        assert call_sigmas == golden["sample_steps4_call_sigmas"].tolist()
    if "sample_steps4_call_step_index" in golden:
        assert [i.step for i in infos] == golden["sample_steps4_call_step_index"].tolist()


def test_heun_steps20_matches_official(golden, golden_model):
    if "sample_full_steps20" not in golden:
        pytest.skip("golden folder has no sample_full_steps20")
    out, _, call_sigmas, _ = _run(golden, golden_model, 20)
    err = rel_err(out, golden["sample_full_steps20"])
    print(f"\nsample_full_steps20 rel err {err:.3e}")
    assert err <= TOL
    if "sample_steps20_call_sigmas" in golden:
        assert call_sigmas == golden["sample_steps20_call_sigmas"].tolist()
