"""First-order Euler sampler for the EDM probability-flow ODE (k-diffusion ``sample_euler``)."""

from __future__ import annotations

import torch
from torch import Tensor

from infdit_cli.samplers.base import BaseSampler, Denoiser, NoiseFn, StepCallback, check_num_steps


class Euler(BaseSampler):
    """One denoiser call per step; cheapest, first order, same churn options as Heun."""

    name = "euler"

    def nfe(self, num_steps: int) -> int:
        return check_num_steps(num_steps)

    @torch.no_grad()
    def sample(
        self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseFn, callback: StepCallback | None = None
    ) -> Tensor:
        run = self.start(denoiser, x, sigmas, callback)
        x = run.x
        for i in range(run.num_steps):
            x_hat, sigma_hat = run.churn(x, i, noise)
            d = (x_hat - run.denoise(x_hat, sigma_hat, i)) / sigma_hat
            x = x_hat + (run.sigmas[i + 1] - sigma_hat) * d
        return run.finish(x)
