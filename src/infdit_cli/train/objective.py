"""Training objectives on the preconditioned denoiser, shared with inference through `EDMDenoiser`.

"edm" is the paper's: x = HR + σn with log σ ~ N(P_mean, P_std²) (or a fixed σ). "one-step"
trains the regime a small model is sampled in: x = bicubic(LR) + σn at one tiny fixed σ, target
HR, so one denoiser call from the bicubic start is the upscale.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from infdit_cli.evaluate import psnr, quantise
from infdit_cli.model import EDMDenoiser, InfDiT
from infdit_cli.preprocess import upsample_lr
from infdit_cli.train.data import make_lr

OBJECTIVES = ("edm", "one-step")
LOSSES = ("l2", "charbonnier")
CHARBONNIER_EPS = 1e-3  # in [-1, 1] pixel units: below a quarter of one 8-bit level


def denoise(
    model: InfDiT, x: Tensor, lr: Tensor, sigma: Tensor, vector: Tensor | None = None,
    token_offset: tuple[int, int] = (0, 0), bf16: bool = False,
) -> Tensor:
    """D(x; σ) through the whole-image path, preconditioned exactly as `EDMDenoiser` does at inference."""
    lr_up = upsample_lr(lr, model.config.sr_scale)

    def network_call(net_in: Tensor, c_noise: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(net_in, c_noise, vector=vector, lr=lr, token_offset=token_offset).float()

    return EDMDenoiser(network_call, lr_up, model.config.sigma_data)(x, sigma)


def edm_loss(
    model: InfDiT, hr: Tensor, lr: Tensor, sigma: Tensor, noise: Tensor,
    vector: Tensor | None = None, token_offset: tuple[int, int] = (0, 0), bf16: bool = False,
    objective: str = "edm", loss: str = "l2", seam_weight: float = 0.0,
) -> Tensor:
    """Per-sample λ(σ)·mean‖D(x; σ) − hr‖² with x = hr + σn ("edm") or bicubic(lr) + σn ("one-step").

    The one-step objective trains exactly the regime the model is then sampled in: one denoiser
    call at a tiny σ from the bicubic start, so the network learns the residual HR − bicubic.
    `loss="charbonnier"`: mean √((D − hr)² + ε²)·√λ, the same error in the network's output units
    but L1-like (less pulled to the mean by hard textures).
    `seam_weight` adds that weight × the mean squared error of the step across every edge where the
    model's blocks meet (`seam_error`), the same λ: seams cost almost no PSNR, so plain MSE leaves them.
    """
    sd = model.config.sigma_data
    start = hr if objective == "edm" else upsample_lr(lr, model.config.sr_scale)
    x = start + sigma.view(-1, 1, 1, 1) * noise
    denoised = denoise(model, x, lr, sigma, vector, token_offset, bf16)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    seams = seam_weight * weight * seam_error(denoised - hr, model.config.block_size) if seam_weight else 0.0
    if loss == "charbonnier":
        err = ((denoised - hr).square() + CHARBONNIER_EPS**2).sqrt().mean(dim=(1, 2, 3))
        return weight.sqrt() * err + seams
    return weight * (denoised - hr).square().mean(dim=(1, 2, 3)) + seams


def seam_error(err: Tensor, block_size: int) -> Tensor:
    """Per sample, the mean square of err's step across the block edges inside the crop (columns and rows
    k·block_size, k ≥ 1): zero where the output steps across an edge exactly as the HR does."""
    h, w = err.shape[-2:]
    cols = torch.arange(block_size, w, block_size, device=err.device)
    rows = torch.arange(block_size, h, block_size, device=err.device)
    if not len(cols) and not len(rows):
        return err.new_zeros(err.shape[0])
    steps = [err[..., :, cols] - err[..., :, cols - 1], (err[..., rows, :] - err[..., rows - 1, :]).transpose(-1, -2)]
    return torch.cat([s.flatten(1) for s in steps], dim=1).square().mean(dim=1)


def psnr_gain(model: InfDiT, crops: Tensor, sigma: float, seed: int = 0,
              vector_fn: Callable[[Tensor], Tensor | None] | None = None, bf16: bool = False) -> float:
    """Mean PSNR (dB, 8-bit) of one denoiser call from bicubic(LR) + σn minus that of bicubic itself."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 104729)
    lr = make_lr(crops, model.config.sr_scale)
    gains = []

    def db(a: Tensor, b: Tensor) -> float:  # 8-bit PSNR exactly as `infdit eval` measures it
        return psnr(quantise((a + 1) / 2), quantise((b + 1) / 2))

    with torch.no_grad():
        for i in range(crops.shape[0]):
            hr_i, lr_i = crops[i: i + 1].to(device), lr[i: i + 1].to(device)
            bic = upsample_lr(lr_i, model.config.sr_scale)
            x = bic + sigma * torch.randn(hr_i.shape, generator=gen).to(device)
            out = denoise(model, x, lr_i, torch.full((1,), sigma, device=device),
                          vector_fn(lr_i) if vector_fn else None, bf16=bf16)
            gains.append(db(out, hr_i) - db(bic, hr_i))
    return float(np.mean(gains))


@torch.no_grad()
def validation_loss(
    model: InfDiT, crops: Tensor, sigmas: tuple[float, ...], seed: int = 0,
    vector_fn: Callable[[Tensor], Tensor | None] | None = None, bf16: bool = False, objective: str = "edm",
) -> float:
    """Mean EDM loss over fixed crops × fixed sigmas with fixed noise: deterministic, comparable across runs."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 7919)
    lr = make_lr(crops, model.config.sr_scale)
    total, count = 0.0, 0
    for i in range(crops.shape[0]):
        hr_i, lr_i = crops[i: i + 1].to(device), lr[i: i + 1].to(device)
        vec = vector_fn(lr_i) if vector_fn else None
        for s in sigmas:
            noise = torch.randn(hr_i.shape, generator=gen).to(device)
            sigma = torch.full((1,), s, device=device)
            total += edm_loss(model, hr_i, lr_i, sigma, noise, vec, bf16=bf16, objective=objective).sum().item()
            count += 1
    return total / max(count, 1)
