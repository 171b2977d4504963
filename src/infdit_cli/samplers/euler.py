"""First-order Euler sampler for the EDM probability-flow ODE (k-diffusion ``sample_euler``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infdit_cli.samplers.base import BaseSampler, Denoiser, NoiseFn, StepCallback, check_num_steps

if TYPE_CHECKING:
    from torch import Tensor


class Euler(BaseSampler):
    """One denoiser call per step; cheapest, first order, same churn options as Heun."""

    name = "euler"

    def nfe(self, num_steps: int) -> int:
        return check_num_steps(num_steps)

    def sample(
        self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseFn, callback: StepCallback | None = None
    ) -> Tensor:
        import torch  # here, not at import: listing plugins must not load torch

        with torch.no_grad():
            return self._sample(denoiser, x, sigmas, noise, callback)

    def _sample(
        self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseFn, callback: StepCallback | None
    ) -> Tensor:
        run = self.start(denoiser, x, sigmas, callback)
        x = run.x
        for i in range(run.num_steps):
            x_hat, sigma_hat = run.churn(x, i, noise)
            d = (x_hat - run.denoise(x_hat, sigma_hat, i)) / sigma_hat
            x = x_hat + (run.sigmas[i + 1] - sigma_hat) * d
        return run.finish(x)
