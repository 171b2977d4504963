"""Unidirectional block attention (UniBA): which keys/values a block attends to.

Every block attends to itself and to its top-left, left and top neighbours, in that order
([self, top-left, left, top]), as the released weights were trained. Missing neighbours at the
image border are replaced by the clamped block (replicate padding). A *neighbourhood* supplies,
for a grid of blocks, the (X+1)×(Y+1) padded grid of keys/values whose row 0 and column 0 hold
the blocks above and to the left; the whole-image path pads by replication, the streaming engine
from its cache. Both then go through the same `four_views`, so they compute the same function.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Neighbourhood(Protocol):
    """Supplies the padded key/value grid for one layer of one group of blocks."""

    def pad(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v: [B, X, Y, T, H, D] of the group -> padded [B, X+1, Y+1, T, H, D] each."""
        ...


def replicate_pad(x: Tensor) -> Tensor:
    """Prepend a copy of block-row 0 and then of block-column 0 (the image-border rule)."""
    x = torch.cat([x[:, :1], x], dim=1)
    return torch.cat([x[:, :, :1], x], dim=2)


class WholeImage:
    """The neighbourhood of the whole image at once (the paper's Appendix A form)."""

    def pad(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return replicate_pad(k), replicate_pad(v)


def four_views(padded: Tensor) -> Tensor:
    """[B, X+1, Y+1, T, ...] -> [B, X, Y, 4T, ...] as [self, top-left, left, top]."""
    return torch.cat(
        [padded[:, 1:, 1:], padded[:, :-1, :-1], padded[:, 1:, :-1], padded[:, :-1, 1:]], dim=3
    )
