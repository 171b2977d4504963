"""Unidirectional block attention (UniBA): which keys/values a block attends to.

Every block attends to itself and to its top-left, left and top neighbours, in that order
([self, top-left, left, top]), as the released weights were trained. Missing neighbours at the
image border are replaced by the clamped block (replicate padding). A *neighbourhood* supplies,
for a grid of blocks, the blocks just above it (`top`), just left of it (`left`) and the corner
block; `gather_neighbours` writes the four segments of every block's keys once, straight from
those sources (no padded grid in between). The whole-image path takes the edges from the grid
itself (replication), the streaming engine from its band, so both compute the same function.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Neighbourhood(Protocol):
    """Supplies the gathered keys/values of one layer for one group of blocks."""

    def gather(self, layer: int, k: Tensor, v: Tensor, key_pos: Tensor | None) -> tuple[Tensor, Tensor]:
        """k, v: [B, X, Y, T, H, D] of the group -> keys, values [B, X, Y, 4T, H, D]; key_pos [4, H, D] or None."""
        ...


def gather_neighbours(own: Tensor, top: Tensor, left: Tensor, corner: Tensor, pos: Tensor | None = None,
                      out: Tensor | None = None) -> Tensor:
    """[B, X, Y, T, H, D] own blocks + their edges -> [B, X, Y, 4T, H, D] as [self, top-left, left, top].

    top: [B, Y, T, H, D], the blocks above row 0; left: [B, X, T, H, D], the blocks left of column 0;
    corner: [B, T, H, D], the block above-left of (0, 0). pos[s] ([H, D]) is added to segment s
    (keys only). `out` ([B, X, Y, 4, T, H, D] or larger, flat) is written in place when given.
    """
    if torch.is_grad_enabled() and (own.requires_grad or (pos is not None and pos.requires_grad)):
        return _gather_differentiable(own, top, left, corner, pos)
    b, nx, ny = own.shape[:3]
    shape = (b, nx, ny, 4, *own.shape[3:])
    if out is None:
        out = own.new_empty(shape)
    else:
        out = out.view(-1)[: own.numel() * 4].view(shape)

    def put(dst: Tensor, src: Tensor, s: int) -> None:
        if pos is None:
            dst.copy_(src)
        else:
            torch.add(src, pos[s], out=dst)

    put(out[:, :, :, 0], own, 0)
    # top-left: padded[i, j]
    put(out[:, 1:, 1:, 1], own[:, :-1, :-1], 1)
    put(out[:, 0, 1:, 1], top[:, :-1], 1)
    put(out[:, 1:, 0, 1], left[:, :-1], 1)
    put(out[:, 0, 0, 1], corner, 1)
    # left: padded[i + 1, j]
    put(out[:, :, 1:, 2], own[:, :, :-1], 2)
    put(out[:, :, 0, 2], left, 2)
    # top: padded[i, j + 1]
    put(out[:, 1:, :, 3], own[:, :-1], 3)
    put(out[:, 0, :, 3], top, 3)
    return out.flatten(3, 4)


def _gather_differentiable(own: Tensor, top: Tensor, left: Tensor, corner: Tensor, pos: Tensor | None) -> Tensor:
    """The same segments built with `cat` (in-place writes do not take gradients): training."""
    head = torch.cat([corner[:, None], top], dim=1)[:, None]  # [B, 1, Y+1, ...]
    body = torch.cat([left[:, :, None], own], dim=2)  # [B, X, Y+1, ...]
    p = torch.cat([head, body], dim=1)
    views = [p[:, 1:, 1:], p[:, :-1, :-1], p[:, 1:, :-1], p[:, :-1, 1:]]
    if pos is not None:
        views = [v + pos[s] for s, v in enumerate(views)]
    return torch.cat(views, dim=3)


class WholeImage:
    """The neighbourhood of the whole image at once (the paper's Appendix A form): replicate padding."""

    def gather(self, layer: int, k: Tensor, v: Tensor, key_pos: Tensor | None) -> tuple[Tensor, Tensor]:
        keys = gather_neighbours(k, k[:, 0], k[:, :, 0], k[:, 0, 0], key_pos)
        return keys, gather_neighbours(v, v[:, 0], v[:, :, 0], v[:, 0, 0])
