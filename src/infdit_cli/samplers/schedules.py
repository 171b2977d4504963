"""Noise schedules (sigma_0 > ... > sigma_{N-1} > 0, then a trailing 0), kept apart from the solvers.

Values are computed in float32 with the same operations as the official EDMDiscretization, so the
Karras schedule matches it bit for bit (float64 would differ by ~2e-6 relative, and those differences
would then flip some bf16 roundings).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from infdit_cli.samplers.base import check_num_steps

if TYPE_CHECKING:
    from torch import Tensor

# The released model's schedule (configs/text2image-sr.yaml).
DEFAULT_NUM_STEPS = 20
DEFAULT_SIGMA_MIN = 0.002
DEFAULT_SIGMA_MAX = 40.0
DEFAULT_RHO = 7.0

Schedule = Callable[..., "Tensor"]


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min <= sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _append_zero(s: Tensor) -> Tensor:
    import torch

    return torch.cat([s, s.new_zeros(1)])


def karras_sigmas(
    num_steps: int, sigma_min: float = DEFAULT_SIGMA_MIN, sigma_max: float = DEFAULT_SIGMA_MAX, rho: float = DEFAULT_RHO
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
    num_steps: int, sigma_min: float = DEFAULT_SIGMA_MIN, sigma_max: float = DEFAULT_SIGMA_MAX, rho: float = DEFAULT_RHO
) -> Tensor:
    """Uniform in log(sigma) (constant DPM-Solver step h); ``rho`` is accepted and ignored."""
    del rho
    check_num_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    import torch

    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    log_s = math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max))
    return _append_zero(log_s.exp().float())


SCHEDULES: dict[str, Schedule] = {"karras": karras_sigmas, "exponential": exponential_sigmas}


def make_sigmas(
    schedule: str = "karras",
    num_steps: int = DEFAULT_NUM_STEPS,
    sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX,
    rho: float = DEFAULT_RHO,
) -> Tensor:
    """Schedule by name, for CLI flags (``--steps/--sigma-min/--sigma-max/--rho``)."""
    try:
        fn = SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown schedule {schedule!r}; available: {', '.join(SCHEDULES)}") from None
    return fn(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
