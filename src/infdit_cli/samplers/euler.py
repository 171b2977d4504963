"""First-order Euler sampler for the EDM probability-flow ODE (k-diffusion ``sample_euler``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infdit_cli.samplers.base import BaseSampler, NoiseFn, SamplingRun, check_num_steps

if TYPE_CHECKING:
    from torch import Tensor


class Euler(BaseSampler):
    """One denoiser call per step; cheapest, first order, same churn options as Heun."""

    name = "euler"

    def nfe(self, num_steps: int) -> int:
        return check_num_steps(num_steps)

    def steps(self, run: SamplingRun, noise: NoiseFn) -> Tensor:
        x = run.x
        for i in range(run.num_steps):
            x_hat, sigma_hat = run.churn(x, i, noise)
            d = (x_hat - run.denoise(x_hat, sigma_hat, i)) / sigma_hat
            x = x_hat + (run.sigmas[i + 1] - sigma_hat) * d
        return x
