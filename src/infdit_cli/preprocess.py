"""Tensor geometry and turning an LR image into the network's inputs, as the released pipeline does.

Padding to whole blocks (and cropping back), bicubic resizing, alpha upscaling and CLIP's pixels:
pure tensor functions, no files (the file layer is `infdit_cli.imageio`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
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


# LR rows read beyond a band on each side: bicubic reads 2 (its support), one more for the rounding of
# the window's ends.
BICUBIC_HALO = 3


def upsample_lr_rows(lr: Tensor, scale: int, rows: range) -> Tensor:
    """Rows `rows` (multiples of `scale`) of `upsample_lr(lr, scale)`, from only the LR rows they read."""
    return upscaled_rows(lambda part: upsample_lr(part, scale), lr, scale, rows)


def upscaled_rows(upscale: Callable[[Tensor], Tensor], x: Tensor, scale: int, rows: range) -> Tensor:
    """Rows `rows` (multiples of `scale`) of the bicubic ×scale `upscale(x)`, computed from the rows of x
    they read: the same numbers bit for bit (each output row's weights depend on its offset from its
    input rows only, and scale is a power of two), so an out-of-core pass never holds the whole image."""
    h = x.shape[-2]
    a, b = rows.start // scale, rows.stop // scale
    lo, hi = max(0, a - BICUBIC_HALO), min(h, b + BICUBIC_HALO)
    return upscale(x[..., lo:hi, :])[..., (a - lo) * scale:(b - lo) * scale, :]


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


def upscale_alpha(alpha: np.ndarray | Tensor, scale: int) -> np.ndarray | Tensor:
    """Bicubic ×scale of an alpha plane [H, W], clipped to [0, 1] (bicubic overshoots at hard edges).

    Returns the same kind of array it was given (numpy, or a tensor on the same device).
    """
    is_tensor = isinstance(alpha, Tensor)
    x = alpha if is_tensor else torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"alpha must be [H, W], got {list(x.shape)}")
    h, w = x.shape
    y = F.interpolate(x[None, None].float(), size=(h * scale, w * scale), mode="bicubic", align_corners=False)
    y = y[0, 0].clamp_(0.0, 1.0)
    return y if is_tensor else y.numpy()


def pad_to_multiple(x: Tensor, multiple: int, lead: int = 0) -> tuple[Tensor, tuple[int, int]]:
    """Pad [B, C, H, W] by `lead` pixels at the top and left, then at the bottom and right up to multiples
    of `multiple`; returns it and the original (h, w).

    Reflection keeps the statistics of the image's edge (no flat band for the model to invent
    detail in); where the image is too small to reflect (pad >= side), the edge is replicated.
    Crop the result with `crop(y, h * scale, w * scale, lead * scale)`: the output is exactly
    W·s × H·s, never centre-cropped.
    """
    if multiple < 1 or lead < 0:
        raise ValueError(f"multiple must be >= 1 and lead >= 0, got {multiple} and {lead}")
    h, w = x.shape[-2:]
    x = _pad_edge(x, -1, lead, -(w + lead) % multiple)
    x = _pad_edge(x, -2, lead, -(h + lead) % multiple)
    return x, (h, w)


def _pad_edge(x: Tensor, dim: int, before: int, after: int) -> Tensor:
    """Pad the last (dim -1) or second-last (dim -2) axis, each side reflected where it can be."""
    for amount, at_start in ((before, True), (after, False)):
        if amount:
            side = (amount, 0) if at_start else (0, amount)
            pad = side + (0, 0) if dim == -1 else (0, 0) + side
            x = F.pad(x, pad, mode="reflect" if amount < x.shape[dim] else "replicate")
    return x


def crop(x: Tensor, h: int, w: int, lead: int = 0) -> Tensor:
    """The h × w starting `lead` pixels in from the top-left of [..., H, W]: undoes `pad_to_multiple`
    (after scaling h, w and lead)."""
    if x.shape[-2] < lead + h or x.shape[-1] < lead + w:
        raise ValueError(f"cannot crop {list(x.shape[-2:])} to [{h}, {w}] at {lead}")
    return x[..., lead: lead + h, lead: lead + w]
