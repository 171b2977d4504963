"""EDM preconditioning around the network, exactly as the released model uses it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# (net_in, c_noise) -> raw network output F; the engine (whole-image or streamed) is bound inside.
NetworkCall = Callable[[Tensor, Tensor], Tensor]


def edm_coefficients(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """c_skip, c_out, c_in, c_noise of Karras et al. (2022), Table 1."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / (sigma**2 + sd2).sqrt()
    c_in = 1 / (sigma**2 + sd2).sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


class EDMDenoiser:
    """D(x; sigma) = c_skip·x + c_out·F(c_in·[x, lr_up]; c_noise).

    As released, c_in scales the upsampled-LR channels as well as the noisy image; the skip term
    uses the noisy image only.
    """

    def __init__(self, network_call: NetworkCall, lr_up: Tensor, sigma_data: float = 0.5) -> None:
        self.network_call = network_call
        self.lr_up = lr_up
        self.sigma_data = sigma_data

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma_t, self.sigma_data)
        shape = (-1, 1, 1, 1)
        net_in = torch.cat([x, self.lr_up.to(x.dtype)], dim=1) * c_in.view(shape).to(x.dtype)
        out = self.network_call(net_in, c_noise)
        return c_skip.view(shape) * x + c_out.view(shape) * out.to(x.dtype)
