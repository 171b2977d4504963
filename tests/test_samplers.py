"""Built-in samplers and schedules, checked without any model (exact Gaussian denoiser)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from infdit_cli.samplers import (
    SamplerOptions,
    StepInfo,
    churn_gamma,
    exponential_sigmas,
    get_sampler,
    karras_sigmas,
)
from infdit_cli.samplers.euler import Euler
from infdit_cli.samplers.heun import HeunEDM

DATA_STD = 0.5
F64 = SamplerOptions(arithmetic_dtype=torch.float64)
# Official bf16 schedule for 20 steps (official-implementation.md §3.3).
OFFICIAL_BF16_SIGMAS = [
    40,
    30.125,
    22.375,
    16.375,
    11.875,
    8.4375,
    5.90625,
    4.0625,
    2.71875,
    1.7890625,
    1.140625,
    0.70703125,
    0.421875,
    0.2421875,
    0.13183594,
    0.068359375,
    0.032958984,
    0.014587402,
    0.0057983398,
    0.0019989014,
    0,
]


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Exact D(x, sigma) for data ~ N(0, DATA_STD²)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return x * DATA_STD**2 / (DATA_STD**2 + sigma**2)


def gaussian_case(num_steps: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """(x_T, sigmas, exact ODE endpoint): x(sigma) ∝ sqrt(s² + sigma²) along the probability-flow ODE."""
    sigmas = karras_sigmas(num_steps)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    s0 = sigmas[0].to(dtype)
    x = z * s0
    return x, sigmas, x * DATA_STD / (DATA_STD**2 + s0**2).sqrt()


def no_noise(step: int) -> torch.Tensor:
    raise AssertionError("deterministic sampling must not ask for noise")


def convergence_ratios(errs: list[float]) -> list[float]:
    """err(N) / err(2N): about 2 for a first-order solver, about 4 for a second-order one."""
    return [a / b for a, b in itertools.pairwise(errs)]


def solve_error(sampler, num_steps: int) -> float:
    x, sigmas, exact = gaussian_case(num_steps)
    out = sampler.sample(gaussian_denoiser, x, sigmas, no_noise)
    return ((out - exact).norm() / exact.norm()).item()


# --- schedules -------------------------------------------------------------------------------------


def test_karras_endpoints_and_shape():
    s = karras_sigmas(20)
    assert s.dtype == torch.float32 and s.shape == (21,)
    assert s[-1] == 0 and bool((s[:-1] > 0).all()) and bool((s[:-1].diff() < 0).all())
    assert math.isclose(s[0].item(), 40.0, rel_tol=1e-6) and math.isclose(s[-2].item(), 0.002, rel_tol=1e-5)
    one = karras_sigmas(1, sigma_max=3.0)
    assert one.tolist() == [3.0, 0.0]


def test_karras_bf16_rounding_matches_official_table():
    assert karras_sigmas(20).to(torch.bfloat16).float().tolist() == pytest.approx(OFFICIAL_BF16_SIGMAS, rel=1e-7)


def test_exponential_is_log_uniform():
    s = exponential_sigmas(5, sigma_min=0.01, sigma_max=10.0)
    steps = s[:-1].double().log().diff()
    assert s[-1] == 0 and torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-5)


@pytest.mark.parametrize("bad", [dict(num_steps=0), dict(num_steps=4, sigma_min=0.0), dict(num_steps=4, rho=0.0)])
def test_schedule_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        karras_sigmas(**bad)


# --- protocol: NFE, callback, validation ---------------------------------------------------------


@pytest.mark.parametrize("cls, expected", [(HeunEDM, lambda n: 2 * n - 1), (Euler, lambda n: n)])
@pytest.mark.parametrize("num_steps", [1, 2, 5])
def test_nfe_is_exact_and_callback_drives_progress(cls, expected, num_steps):
    sampler = cls(SamplerOptions())
    calls: list[float] = []
    infos: list[StepInfo] = []

    def denoiser(x, sigma):
        calls.append(float(sigma))
        return gaussian_denoiser(x, sigma)

    x, sigmas, _ = gaussian_case(num_steps, torch.float32)
    sampler.sample(denoiser, x, sigmas, no_noise, callback=infos.append)
    assert sampler.nfe(num_steps) == expected(num_steps) == len(calls) == len(infos)
    assert [i.nfe for i in infos] == list(range(1, len(calls) + 1))
    assert {i.total_nfe for i in infos} == {len(calls)} and {i.num_steps for i in infos} == {num_steps}
    assert [i.sigma for i in infos] == calls
    assert [i.step for i in infos] == sorted(i.step for i in infos) and infos[-1].step == num_steps - 1


def test_registry_names_match_classes():
    assert isinstance(get_sampler("heun-edm"), HeunEDM) and HeunEDM.name == "heun-edm"
    assert isinstance(get_sampler("euler"), Euler) and Euler.name == "euler"
    assert HeunEDM.api_version == Euler.api_version == 1


@pytest.mark.parametrize("sigmas", [torch.tensor([1.0, 0.5]), torch.tensor([1.0, -0.5, 0.0]), torch.tensor([1.0])])
def test_rejects_schedules_without_trailing_zero(sigmas):
    with pytest.raises(ValueError, match="sigmas"):
        HeunEDM().sample(gaussian_denoiser, torch.zeros(1, 3, 2, 2), sigmas, no_noise)


@pytest.mark.parametrize(
    "bad", [dict(s_churn=-1.0), dict(s_noise=-1.0), dict(s_tmin=2.0, s_tmax=1.0), dict(arithmetic_dtype=torch.int32)]
)
def test_options_validate(bad):
    with pytest.raises(ValueError):
        SamplerOptions(**bad)


def test_result_keeps_input_dtype():
    x, sigmas, _ = gaussian_case(3, torch.float32)
    out = HeunEDM(SamplerOptions(arithmetic_dtype=torch.float64)).sample(gaussian_denoiser, x, sigmas, no_noise)
    assert out.dtype == torch.float32


# --- analytic convergence -------------------------------------------------------------------------


def test_euler_is_first_order():
    errs = [solve_error(Euler(F64), n) for n in (32, 64, 128)]
    ratios = convergence_ratios(errs)
    assert all(1.85 < r < 2.15 for r in ratios), (errs, ratios)


def test_heun_is_second_order():
    errs = [solve_error(HeunEDM(F64), n) for n in (32, 64, 128)]
    ratios = convergence_ratios(errs)
    assert all(3.7 < r < 4.7 for r in ratios), (errs, ratios)
    assert errs[-1] < 1e-3


# --- churn ----------------------------------------------------------------------------------------


class RecordingNoise:
    """Deterministic per-step noise, as the streaming engine supplies it; records the steps asked."""

    def __init__(self, shape: torch.Size, seed: int = 0) -> None:
        self.shape, self.seed, self.steps = shape, seed, []

    def __call__(self, step: int) -> torch.Tensor:
        self.steps.append(step)
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(self.seed * 1000 + step))


@pytest.mark.parametrize("cls", [HeunEDM, Euler])
def test_churn_uses_noise_fn_and_is_reproducible(cls, monkeypatch):
    x, sigmas, _ = gaussian_case(6, torch.float32)
    opts = SamplerOptions(s_churn=2.0, s_tmin=0.05, s_tmax=10.0)
    runs = []
    for seed in (0, 0, 1):
        noise = RecordingNoise(x.shape, seed)
        runs.append(cls(opts).sample(gaussian_denoiser, x, sigmas, noise))
        in_window = [i for i, s in enumerate(sigmas[:-1].tolist()) if 0.05 <= s <= 10.0]
        assert noise.steps == in_window and in_window
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    deterministic = cls(SamplerOptions()).sample(gaussian_denoiser, x, sigmas, no_noise)
    assert not torch.allclose(runs[0], deterministic)


def test_samplers_never_draw_global_randomness(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("samplers must use the noise function")

    x, sigmas, _ = gaussian_case(4, torch.float32)
    table = [RecordingNoise(x.shape)(i) for i in range(4)]  # drawn before torch.randn is patched
    for name in ("randn", "randn_like", "rand", "rand_like", "normal"):
        monkeypatch.setattr(torch, name, forbidden)
    for cls in (HeunEDM, Euler):
        used: list[int] = []

        def noise(step: int, used: list[int] = used) -> torch.Tensor:
            used.append(step)
            return table[step]

        out = cls(SamplerOptions(s_churn=1.0)).sample(gaussian_denoiser, x, sigmas, noise)
        assert used == [0, 1, 2, 3] and torch.isfinite(out).all()  # churn drew its noise, from the function


def test_churn_gamma_cap_and_window():
    opts = SamplerOptions(s_churn=100.0, s_tmin=1.0, s_tmax=5.0)
    assert churn_gamma(opts, 2.0, 10) == pytest.approx(math.sqrt(2) - 1)
    assert churn_gamma(opts, 0.5, 10) == 0.0 and churn_gamma(opts, 6.0, 10) == 0.0
    assert churn_gamma(SamplerOptions(s_churn=0.4), 2.0, 10) == pytest.approx(0.04)


def test_churn_heun_calls_denoiser_at_raised_sigma():
    seen: list[float] = []
    x, sigmas, _ = gaussian_case(4, torch.float64)
    opts = SamplerOptions(s_churn=0.4, arithmetic_dtype=torch.float64)
    denoiser = lambda x, s: seen.append(float(s)) or gaussian_denoiser(x, s)  # noqa: E731
    HeunEDM(opts).sample(denoiser, x, sigmas, RecordingNoise(x.shape))
    assert seen[0] == pytest.approx(sigmas[0].item() * 1.1) and seen[1] == pytest.approx(sigmas[1].item())


# --- bf16 arithmetic (official sampler) -----------------------------------------------------------


def official_bf16_heun(denoiser, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Independent restatement of the official bf16 loop (official-implementation.md §3.3)."""
    sigmas = sigmas.to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, next_sigma = s_in * sigmas[i], s_in * sigmas[i + 1]
        sigma_hat = sigma * (0.0 + 1.0)
        d = (x - denoiser(x, sigma_hat)) / sigma_hat.view(-1, 1, 1, 1)
        dt = (next_sigma - sigma_hat).view(-1, 1, 1, 1)
        euler = x + dt * d
        if next_sigma.sum() < 1e-14:
            x = euler
        else:
            d_new = (euler - denoiser(euler, next_sigma)) / next_sigma.view(-1, 1, 1, 1)
            x = torch.where(next_sigma.view(-1, 1, 1, 1) > 0, x + (d + d_new) / 2.0 * dt, euler)
    return x


def test_bf16_arithmetic_reproduces_official_loop_bitwise():
    def bf16_denoiser(x, sigma):  # stands in for a bf16 model
        sigma = torch.as_tensor(sigma).to(torch.bfloat16).reshape(-1, 1, 1, 1)
        return (x.to(torch.bfloat16) * 0.25 / (0.25 + sigma * sigma)).to(torch.bfloat16)

    seen: list[float] = []
    x, sigmas, _ = gaussian_case(20, torch.bfloat16)
    ours = HeunEDM(SamplerOptions(arithmetic_dtype=torch.bfloat16)).sample(
        lambda x, s: seen.append(float(s)) or bf16_denoiser(x, s), x, sigmas, no_noise
    )
    ref = official_bf16_heun(bf16_denoiser, x, sigmas)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref)
    assert sorted(set(seen), reverse=True) == pytest.approx(OFFICIAL_BF16_SIGMAS[:-1], rel=1e-7)
