"""DPM-Solver++(2M) (Lu et al. 2022), data-prediction form, written in sigma space for EDM denoisers.

With lambda = -log(sigma) and h_i = lambda_{i+1} - lambda_i, one step is
    x_{i+1} = (sigma_{i+1} / sigma_i) · x_i + (1 - sigma_{i+1} / sigma_i) · D'_i
where D'_i = D_i on the first step and, afterwards, the multistep extrapolation
    D'_i = (1 + 1/(2r)) · D_i - 1/(2r) · D_{i-1},   r = h_{i-1} / h_i,
which makes the method second order at one denoiser call per step. The step into sigma = 0 returns
the (first-order) denoised estimate, as k-diffusion's sample_dpmpp_2m does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from infdit_cli.samplers import BaseSampler, NoiseFn, SamplerOptions, SamplingRun, check_num_steps

if TYPE_CHECKING:  # torch is imported when sampling: `infdit samplers` lists plugins without loading it
    from torch import Tensor


class DPMPP2M(BaseSampler):
    """Deterministic multistep solver: ``steps`` NFEs, second order; churn is rejected, not ignored."""

    name = "dpmpp-2m"

    def __init__(self, options: SamplerOptions | None = None) -> None:
        super().__init__(options)
        if self.options.s_churn > 0:
            raise ValueError("dpmpp-2m is deterministic and does not support churn (s_churn must be 0)")

    def nfe(self, num_steps: int) -> int:
        return check_num_steps(num_steps)

    def steps(self, run: SamplingRun, noise: NoiseFn) -> Tensor:
        s = run.values  # coefficients in float64 from the (already rounded) schedule values
        x = run.x
        previous: Tensor | None = None
        for i in range(run.num_steps):
            denoised = run.denoise(x, run.sigmas[i], i)
            if s[i + 1] == 0:
                x = denoised
            else:
                ratio = s[i + 1] / s[i]
                target = denoised
                if previous is not None:
                    h = math.log(s[i] / s[i + 1])
                    h_last = math.log(s[i - 1] / s[i])
                    k = h / (2.0 * h_last)  # 1 / (2r)
                    target = (1.0 + k) * denoised - k * previous
                x = ratio * x + (1.0 - ratio) * target
            previous = denoised
        return x
