"""Sampling one region of the image (all of it, a strip of block columns, or a band of block rows).

The whole-image pass, a split-image strip and an out-of-core band all start from bicubic(LR) plus the
image's own block noise and run the same sampler over the EDM denoiser; this is that one call, so
the three paths cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from infdit_cli.engine.noise import block_noise
from infdit_cli.model import EDMDenoiser

# (sampler, denoiser, x0, sigmas, noise, pass index) -> sampled x; the default is sampler.sample.
SampleHook = Callable[[Any, Callable[..., Tensor], Tensor, Tensor, Callable[[int], Tensor], int], Tensor]


def sample_region(
    sampler: Any, network_call: Callable[[Tensor, Tensor], Tensor], lr_up: Tensor, sigmas: Tensor, seed: int,
    block_size: int, sigma_data: float, device: torch.device, first_row: int = 0, first_col: int = 0,
    sample: SampleHook | None = None, index: int = 0, start_noise: float = 1.0,
) -> Tensor:
    """Sample the region whose bicubic start is `lr_up`; its noise is the image's, block for block
    (`first_row`/`first_col`: where the region sits in the image's block grid). The start is
    `lr_up + start_noise · σ_0 · noise` (`Sampling.start_noise`)."""
    shape = tuple(lr_up.shape)

    def noise(step: int) -> Tensor:
        return block_noise(seed, step + 1, shape, block_size, device, first_col=first_col, first_row=first_row)

    if start_noise == 0:
        x0 = lr_up.clone()
    else:
        noise0 = block_noise(seed, 0, shape, block_size, device, first_col=first_col, first_row=first_row)
        x0 = lr_up + start_noise * sigmas[0] * noise0  # × 1.0 is exact: the paper's start bit for bit
    denoiser = EDMDenoiser(network_call, lr_up, sigma_data)
    if sample is None:
        return sampler.sample(denoiser, x0, sigmas, noise)
    return sample(sampler, denoiser, x0, sigmas, noise, index)
