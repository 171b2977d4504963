"""Turning an LR image into the network's inputs, as the released pipeline does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def bicubic_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bicubic resize (torchvision's tensor default), computed in float32."""
    return F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=True)


def upsample_lr(lr: Tensor, scale: int) -> Tensor:
    """The concatenated LR channels: bicubic ×scale of the [-1, 1] LR, clipped to [-1, 1]."""
    h, w = lr.shape[-2:]
    return bicubic_resize(lr, (h * scale, w * scale)).clamp(-1, 1)


def clip_pixels(lr: Tensor, size: int = 224) -> Tensor:
    """CLIP input: [0,1], shorter side to `size` (bicubic, antialiased), centre crop, CLIP mean/std."""
    x = (lr.float() + 1) / 2
    h, w = x.shape[-2:]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    x = bicubic_resize(x, (new_h, new_w))
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    x = x[..., top: top + size, left: left + size]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
