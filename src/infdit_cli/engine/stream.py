"""The streamed UniBA neighbourhood: a KV band one block-row high, freed as soon as it is read.

Groups of n×n blocks run in raster order. For layer l the cache holds:
- `top[l][c]`: K/V of block (r0−1, c), the last block-row of the previous group-row;
- `left[l]`: K/V of the previous group's last block-column (rows of the current group-row);
- `corner[l]`: K/V of block (r0−1, c0−1), stashed before the previous group overwrote it.
The padded grid is block (max(r0−1+a, 0), max(c0−1+b, 0)) for a, b in 0..n, exactly the
replicate padding of the whole-image path, so both paths compute the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor

KV = tuple[Tensor, Tensor]  # K, V of one block: [B, T, H, D] each


class StreamNeighbourhood:
    """Neighbourhood for one denoiser call streamed over an X×Y block grid."""

    def __init__(self, num_layers: int, grid_cols: int) -> None:
        self.num_layers = num_layers
        self.top: list[list[KV | None]] = [[None] * grid_cols for _ in range(num_layers)]
        self.left: list[KV | None] = [None] * num_layers
        self.corner: list[KV | None] = [None] * num_layers
        self.rows = range(0)
        self.cols = range(0)
        self.last_row = self.last_col = False
        self.cached_bytes = 0
        self.peak_cached_bytes = 0

    def begin_group(self, rows: range, cols: range, last_row: bool, last_col: bool) -> None:
        """Declare the group the next `pad` calls (one per layer) belong to."""
        self.rows, self.cols, self.last_row, self.last_col = rows, cols, last_row, last_col

    def pad(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        r0, c0, c1 = self.rows.start, self.cols.start, self.cols.stop
        top_stored = self.top[layer]
        pads = []
        for which, own in ((0, k), (1, v)):
            if r0 == 0:
                top_row = own[:, 0]  # [B, nc, T, H, D]
            else:
                top_row = torch.stack([top_stored[c][which] for c in range(c0, c1)], dim=1)  # type: ignore[index]
            if c0 == 0:
                left_col = own[:, :, 0]  # [B, nr, T, H, D]
                corner = top_row[:, 0]
            else:
                left_col = self.left[layer][which]  # type: ignore[index]
                corner = left_col[:, 0] if r0 == 0 else self.corner[layer][which]  # type: ignore[index]
            head = torch.cat([corner[:, None], top_row], dim=1)[:, None]  # [B, 1, nc+1, ...]
            body = torch.cat([left_col[:, :, None], own], dim=2)  # [B, nr, nc+1, ...]
            pads.append(torch.cat([head, body], dim=1))
        self._advance(layer, k, v)
        return pads[0], pads[1]

    def _advance(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Keep what later groups read; drop everything else now."""
        c0, c1 = self.cols.start, self.cols.stop
        top = self.top[layer]
        # The next group in this row needs block (r0−1, c1−1) as its corner: stash it before overwriting.
        self._set_corner(layer, None if self.last_col else top[c1 - 1])
        for idx, c in enumerate(range(c0, c1)):
            entry = None if self.last_row else (k[:, -1, idx].clone(), v[:, -1, idx].clone())
            self._replace(top, c, entry)
        self._set_left(layer, None if self.last_col else (k[:, :, -1].clone(), v[:, :, -1].clone()))

    def _bytes(self, entry: KV | None) -> int:
        return 0 if entry is None else sum(t.numel() * t.element_size() for t in entry)

    def _account(self, old: KV | None, new: KV | None) -> None:
        self.cached_bytes += self._bytes(new) - self._bytes(old)
        self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)

    def _replace(self, store: list[KV | None], index: int, entry: KV | None) -> None:
        self._account(store[index], entry)
        store[index] = entry

    def _set_corner(self, layer: int, entry: KV | None) -> None:
        # The stashed corner aliases a top entry that is being replaced, so it is counted on its own.
        self._replace(self.corner, layer, entry)

    def _set_left(self, layer: int, entry: KV | None) -> None:
        self._replace(self.left, layer, entry)
