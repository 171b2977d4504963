"""2-D rotary position embedding as in the released model (pix2struct style, interleaved pairs).

The first half of each head's channels rotates with the token row, the second half with the
token column. Positions are absolute HR token coordinates modulo the table size (1024), so they
wrap every 4096 px exactly as the official code does.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_angles(rows: Tensor, cols: Tensor, head_dim: int, theta: float, table: int) -> Tensor:
    """Angles [..., head_dim] for integer token positions (any shape, broadcast together)."""
    half = head_dim // 2
    inv = 1.0 / (theta ** (torch.arange(0, half, 2, device=rows.device)[: half // 2].float() / half))
    inv = inv.repeat_interleave(2)  # f0, f0, f1, f1, ...: adjacent pairs rotate together
    r = (rows % table).float()[..., None] * inv
    c = (cols % table).float()[..., None] * inv
    return torch.cat([r, c], dim=-1)


def block_rope(
    block_rows: range, block_cols: range, block_tokens: int, head_dim: int, theta: float, table: int,
    token_offset: tuple[int, int] = (0, 0), device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """cos/sin of shape [X, Y, T, head_dim] for a grid of blocks, tokens row-major inside a block."""
    t = block_tokens
    inner = torch.arange(t, device=device)
    br = torch.arange(block_rows.start, block_rows.stop, device=device)  # no host-to-device copy per group
    bc = torch.arange(block_cols.start, block_cols.stop, device=device)
    rows = (br[:, None] * t + inner[None, :]) + token_offset[0]  # [X, t]
    cols = (bc[:, None] * t + inner[None, :]) + token_offset[1]  # [Y, t]
    rows = rows[:, None, :, None].expand(len(br), len(bc), t, t)
    cols = cols[None, :, None, :].expand(len(br), len(bc), t, t)
    angles = rope_angles(rows.reshape(len(br), len(bc), t * t), cols.reshape(len(br), len(bc), t * t),
                         head_dim, theta, table)
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, X, Y, T, H, D]; cos/sin: [X, Y, T, D] (shared by all heads)."""
    cos = cos[None, :, :, :, None, :].to(x.dtype)
    sin = sin[None, :, :, :, None, :].to(x.dtype)
    return x * cos + rotate_half(x) * sin
