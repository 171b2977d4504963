"""The start's noise (`Sampling.start_noise`): 1 is the paper's bicubic + σ_max·noise; 0 starts from the
bicubic image itself, which a one-step model's own sampling may record (then the seed changes nothing)."""

from __future__ import annotations

import pytest
import torch

from infdit_cli.model import InfDiT
from infdit_cli.pipeline import UpscaleError, UpscaleOptions, Upscaler
from tests.models import small_block


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return Upscaler(InfDiT(small_block()).init_random(5).eval())


def lr() -> torch.Tensor:
    return torch.rand(1, 3, 12, 9, generator=torch.Generator().manual_seed(2))


def one_step(seed: int, start_noise: float | None, **extra) -> UpscaleOptions:
    return UpscaleOptions(sampler="euler", steps=1, sigma_max=0.05, sigma_min=0.02, seed=seed,
                          start_noise=start_noise, block_batch=1, **extra)


def test_without_start_noise_the_seed_changes_nothing(upscaler: Upscaler) -> None:
    a = upscaler.upscale(lr(), one_step(1, 0.0)).image
    assert torch.equal(a, upscaler.upscale(lr(), one_step(2, 0.0)).image)
    noisy = [upscaler.upscale(lr(), one_step(s, 1.0)).image for s in (1, 2)]
    assert not torch.equal(noisy[0], noisy[1])
    assert torch.equal(noisy[0], upscaler.upscale(lr(), one_step(1, None)).image)  # the default is the paper's
    half = upscaler.upscale(lr(), one_step(1, 0.5)).image
    assert (half - a).abs().mean() < (noisy[0] - a).abs().mean()


def test_out_of_core_keeps_the_start(upscaler: Upscaler) -> None:
    in_ram = upscaler.upscale(lr(), one_step(3, 0.0)).image
    banded = upscaler.upscale(lr(), one_step(3, 0.0, max_host_memory=1))
    assert banded.passes[0].host.banded and torch.equal(in_ram, banded.image)


def test_the_model_file_records_it(tmp_path) -> None:
    from infdit_cli.pipeline import load_upscaler
    from infdit_cli.weights import save_model

    save_model(InfDiT(small_block()).init_random(1), tmp_path / "model.safetensors",
               extra_metadata={"sampling": '{"sampler": "euler", "steps": 1, "sigma_max": 0.004, "sigma_min": 0.002, '
                                     '"start_noise": 0.0}'})
    assert load_upscaler(str(tmp_path / "model.safetensors"), torch.device("cpu")).options().start_noise == 0.0


def test_negative_start_noise_is_refused(upscaler: Upscaler) -> None:
    with pytest.raises(UpscaleError, match="start noise"):
        upscaler.upscale(lr(), one_step(1, -0.1))
