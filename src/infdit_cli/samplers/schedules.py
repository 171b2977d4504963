"""Noise schedules (sigma_0 > ... > sigma_{N-1} > 0, then a trailing 0), kept apart from the solvers.

Values are computed in float32 with the same operations as the official EDMDiscretization, so the
Karras schedule matches it bit for bit (float64 would differ by ~2e-6 relative, and those differences
would then flip some bf16 roundings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infdit_cli.samplers.base import check_num_steps

if TYPE_CHECKING:
    from torch import Tensor



@dataclass(frozen=True)
class Sampling:
    """How an image is sampled: the sampler plugin, its steps, the Karras schedule and EDM churn.

    A model file may carry its own (metadata "sampling", e.g. one Euler step for a one-step model);
    the defaults here are the released Inf-DiT's (configs/text2image-sr.yaml), the only place they
    are written.
    """

    sampler: str = "heun-edm"
    steps: int = 20
    sigma_min: float = 0.002
    sigma_max: float = 40.0
    rho: float = 7.0
    churn: float = 0.0
    # The start is bicubic(LR) + start_noise · σ_max · noise: 1 for diffusion sampling (the paper). A one-step
    # model (trained at a tiny σ, one call) may record 0: its single call then starts from the bicubic image,
    # so no σ·noise passes through to the output (the default model's card measures the trade).
    start_noise: float = 1.0


RELEASED = Sampling()


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min <= sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _append_zero(s: Tensor) -> Tensor:
    import torch

    return torch.cat([s, s.new_zeros(1)])


def karras_sigmas(
    num_steps: int, sigma_min: float = RELEASED.sigma_min, sigma_max: float = RELEASED.sigma_max,
    rho: float = RELEASED.rho,
) -> Tensor:
    """Karras et al. (2022) eq. 5: uniform in sigma^(1/rho), so steps crowd at low noise."""
    check_num_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    import torch

    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float32)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(
    num_steps: int, sigma_min: float = RELEASED.sigma_min, sigma_max: float = RELEASED.sigma_max,
    rho: float = RELEASED.rho,
) -> Tensor:
    """Uniform in log(sigma) (constant DPM-Solver step h); ``rho`` is accepted and ignored."""
    del rho
    check_num_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    import torch

    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    log_s = math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max))
    return _append_zero(log_s.exp().float())

