"""EDM Heun sampler (Karras et al. 2022, Algorithm 2), the released Inf-DiT sampler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infdit_cli.samplers.base import BaseSampler, NoiseFn, SamplingRun, check_num_steps

if TYPE_CHECKING:
    from torch import Tensor


class HeunEDM(BaseSampler):
    """Second-order Heun steps with optional churn; the step into sigma = 0 is plain Euler.

    With default options this reproduces the official ConcatSRHeunEDMSampler operation for operation
    (same update order, so float32 and bf16 round the same way): 2·steps − 1 denoiser calls.
    """

    name = "heun-edm"

    def nfe(self, num_steps: int) -> int:
        return 2 * check_num_steps(num_steps) - 1

    def steps(self, run: SamplingRun, noise: NoiseFn) -> Tensor:
        x = run.x
        for i in range(run.num_steps):
            x_hat, sigma_hat = run.churn(x, i, noise)
            sigma_next = run.sigmas[i + 1]
            d = (x_hat - run.denoise(x_hat, sigma_hat, i)) / sigma_hat
            dt = sigma_next - sigma_hat
            x_next = x_hat + dt * d
            if run.values[i + 1] > 0:  # Heun correction (the trapezoidal rule)
                d_next = (x_next - run.denoise(x_next, sigma_next, i)) / sigma_next
                x_next = x_hat + (d + d_next) / 2.0 * dt
            x = x_next
        return x
