"""2-D rotary position embedding as in the released model (pix2struct style, interleaved pairs).

The first half of each head's channels rotates with the token row, the second half with the
token column. Positions are absolute HR token coordinates modulo the table size (1024), so they
wrap every 4096 px exactly as the official code does.

Because the two halves are separable, a group's tables are one per axis ([X·t, D/2] for its rows,
[Y·t, D/2] for its columns) instead of one per token: `RopeCache` builds them once per block range,
offset, device and dtype and broadcasts them over the group, so nothing is rebuilt or cast per
group or per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_angles(positions: Tensor, half: int, theta: float, table: int) -> Tensor:
    """Angles [..., half] for integer token positions along one axis (one half of a head's channels)."""
    inv = 1.0 / (theta ** (torch.arange(0, half, 2, device=positions.device)[: half // 2].float() / half))
    inv = inv.repeat_interleave(2)  # f0, f0, f1, f1, ...: adjacent pairs rotate together
    return (positions % table).float()[..., None] * inv


AxisTables = tuple[Tensor, Tensor]  # cos, sin: [blocks·t, D/2]


class RopeCache:
    """Per-axis cos/sin tables, keyed by (block range, token offset, device, dtype); bounded."""

    def __init__(self, block_tokens: int, head_dim: int, theta: float, table: int, max_entries: int = 4096) -> None:
        self.t, self.half, self.theta, self.table = block_tokens, head_dim // 2, theta, table
        self.max_entries = max_entries
        self._tables: dict[tuple[object, ...], AxisTables] = {}

    def axis(self, blocks: range, offset: int, device: torch.device, dtype: torch.dtype) -> AxisTables:
        key = (blocks.start, blocks.stop, offset, str(device), dtype, torch.is_inference_mode_enabled())
        hit = self._tables.get(key)
        if hit is None:
            if len(self._tables) >= self.max_entries:
                self._tables.clear()
            pos = torch.arange(blocks.start * self.t, blocks.stop * self.t, device=device) + offset
            angles = axis_angles(pos, self.half, self.theta, self.table)
            hit = (angles.cos().to(dtype), angles.sin().to(dtype))
            self._tables[key] = hit
        return hit

    def group(self, block_rows: range, block_cols: range, token_offset: tuple[int, int], device: torch.device,
              dtype: torch.dtype) -> tuple[AxisTables, AxisTables]:
        """Row and column tables of a block group."""
        return (self.axis(block_rows, token_offset[0], device, dtype),
                self.axis(block_cols, token_offset[1], device, dtype))


def rotate_half(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: Tensor, rows: AxisTables, cols: AxisTables) -> Tensor:
    """x: [B, X, Y, T, H, D] (tokens row-major in a block); rows/cols: tables from `RopeCache.group`."""
    b, nx, ny, tt, h, d = x.shape
    t, half = rows[0].shape[0] // nx, d // 2
    grid = x.view(b, nx, ny, t, t, h, d)
    halves = ((rows, slice(0, half), (1, nx, 1, t, 1, 1, half)), (cols, slice(half, d), (1, 1, ny, 1, t, 1, half)))
    if torch.is_grad_enabled() and x.requires_grad:  # training: no in-place writes into one output
        parts = [grid[..., sl] * cos.view(shape) + rotate_half(grid[..., sl]) * sin.view(shape)
                 for (cos, sin), sl, shape in halves]
        return torch.cat(parts, dim=-1).view(b, nx, ny, tt, h, d)
    out = torch.empty_like(grid)
    for (cos, sin), sl, shape in halves:
        part = grid[..., sl]
        # x·cos + rot(x)·sin, written into its half of the output (same arithmetic as one full table)
        torch.mul(part, cos.view(shape), out=out[..., sl])
        out[..., sl] += rotate_half(part) * sin.view(shape)
    return out.view(b, nx, ny, tt, h, d)
