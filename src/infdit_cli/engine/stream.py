"""The streamed UniBA neighbourhood: a preallocated KV band one block-row high, updated in place.

Groups of n×n blocks run in raster order. For layer l the band holds:
- `top[l]`: K/V of block (r0−1, c) for every column c, the last block-row of the previous group-row;
- `left[l]`: K/V of the previous group's last block-column (rows of the current group-row);
- `corner[l]`: K/V of block (r0−1, c0−1), stashed before the previous group overwrote it.
Block (max(r0−1+a, 0), max(c0−1+b, 0)) is what the group reads, exactly the replicate padding of
the whole-image path, so both paths compute the same function (`gather_neighbours`).

The band is allocated once per call at its final size (`band_blocks`, closed form) and written in
place; it can live on the compute device or in (pinned) host memory, in which case each layer
reads only the group's own edge entries and writes its last row/column back, in stream order.
A strip of the image's columns whose left neighbour lives in another process (`--split-image`)
is streamed the same way: before each group-row the neighbour's right column arrives
(`receive_edge`) and serves as the left edge and, one group-row later, the corner of column 0,
exactly what the band would hold there in one process; the strip's own right column is written
layer by layer into `send_edge`'s buffer for the strip on its right. Without an edge, column 0 is
the image's border (replicate padding).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from infdit_cli.device import buffer, pin_for
from infdit_cli.model.uniba import gather_neighbours


def band_blocks(grid: tuple[int, int], n: int) -> int:
    """Blocks (per layer, K and V each) the band holds for an X×Y grid with block batch n: closed form.

    The top row exists once there is a second group-row, the left column once there is a second
    group-column, the corner when both do.
    """
    rows, cols = grid
    group_rows, group_cols = math.ceil(rows / n), math.ceil(cols / n)
    top = cols if group_rows > 1 else 0
    left = min(n, rows) if group_cols > 1 else 0
    corner = 1 if group_rows > 1 and group_cols > 1 else 0
    return top + left + corner


class StreamNeighbourhood:
    """Neighbourhood for one denoiser call streamed over an X×Y block grid with block batch n."""

    def __init__(self, num_layers: int, grid: tuple[int, int], n: int, block_shape: tuple[int, int, int],
                 dtype: torch.dtype, device: torch.device | str, store: torch.device | str | None = None,
                 batch: int = 1, zero: bool = True) -> None:
        """block_shape: (T, H, D) of one block's K; store: where the band lives (default: `device`).

        zero=False leaves the band uninitialised (untouched pages cost no memory on a CPU): for
        timing single groups, with `clear_edges` zeroing just what that group reads.
        """
        rows, cols = grid
        self.device = torch.device(device)
        self.store = torch.device(store) if store is not None else self.device
        self.on_device = store is None  # a host band on a CPU is the same memory, but planned (and counted) apart
        self.grid, self.n = grid, n
        group_rows, group_cols = math.ceil(rows / n), math.ceil(cols / n)
        pin = self.store.type == "cpu" and pin_for(self.device)

        def alloc(*shape: int) -> Tensor | None:
            if 0 in shape:
                return None
            return buffer((num_layers, 2, batch, *shape, *block_shape), dtype, self.store, zero=zero, pin=pin)

        self.top = alloc(cols if group_rows > 1 else 0)
        self.left = alloc(min(n, rows) if group_cols > 1 else 0)
        self.corner = alloc() if group_rows > 1 and group_cols > 1 else None
        self.band_bytes = sum(t.numel() * t.element_size() for t in (self.top, self.left, self.corner)
                              if t is not None)
        self.rows = range(0)
        self.cols = range(0)
        self.last_row = self.last_col = False
        self.edge: Tensor | None = None  # the left strip's right column, this group-row: [L, 2, B, X, T, H, D]
        self.edge_above: Tensor | None = None  # ... of the group-row above (its bottom block is the corner)
        self.outgoing: Tensor | None = None  # this group-row's right column, for the strip on the right

    def receive_edge(self, column: Tensor) -> None:
        """The left neighbour's right column for the coming group-row (on the compute device)."""
        self.edge_above, self.edge = self.edge, column

    def send_edge(self, column: Tensor | None) -> None:
        """Where the coming group-row's right column is written, layer by layer (None: nobody reads it)."""
        self.outgoing = column

    def begin_group(self, rows: range, cols: range, last_row: bool, last_col: bool) -> None:
        """Declare the group the next `gather` calls (one per layer) belong to."""
        self.rows, self.cols, self.last_row, self.last_col = rows, cols, last_row, last_col

    def clear_edges(self) -> None:
        """Zero the band entries the declared group reads, as if earlier groups had left zeros there."""
        c0, c1, nr = self.cols.start, self.cols.stop, len(self.rows)
        if self.top is not None:
            self.top[:, :, :, max(c0 - 1, 0):c1].zero_()
        if self.left is not None:
            self.left[:, :, :, :nr].zero_()
        if self.corner is not None:
            self.corner.zero_()

    def gather(self, layer: int, k: Tensor, v: Tensor, key_pos: Tensor | None) -> tuple[Tensor, Tensor]:
        """Keys/values [B, X, Y, 4T, H, D] of the group, then keep what later groups read."""
        r0, c0, c1 = self.rows.start, self.cols.start, self.cols.stop
        edges = []
        for which, own in ((0, k), (1, v)):
            top = own[:, 0] if r0 == 0 else self._read(self.top, layer, which, slice(c0, c1))
            if c0 == 0 and self.edge is None:  # the image's left border: replicate
                left, corner = own[:, :, 0], top[:, 0]
            elif c0 == 0:  # a strip's first column: the left neighbour's edge
                left = self.edge[layer, which]
                corner = left[:, 0] if r0 == 0 else self.edge_above[layer, which][:, -1]  # type: ignore[index]
            else:
                left = self._read(self.left, layer, which, slice(0, own.shape[1]))
                corner = left[:, 0] if r0 == 0 else self._read(self.corner, layer, which, None)
            edges.append((top, left, corner))
        keys = gather_neighbours(k, *edges[0], key_pos)
        values = gather_neighbours(v, *edges[1])
        self._advance(layer, k, v, edges[0][0], edges[1][0])
        return keys, values

    def _read(self, store: Tensor | None, layer: int, which: int, cols: slice | None) -> Tensor:
        assert store is not None, "the band was sized for another grid"
        part = store[layer, which] if cols is None else store[layer, which][:, cols]
        return part.to(self.device, non_blocking=True)

    def _advance(self, layer: int, k: Tensor, v: Tensor, top_k: Tensor, top_v: Tensor) -> None:
        """Write the entries later groups read into the band, in place."""
        c0, c1 = self.cols.start, self.cols.stop
        if not self.last_col and self.rows.start > 0 and self.corner is not None:
            # The next group in this row needs block (r0−1, c1−1) as its corner: stash it before overwriting.
            self.corner[layer, 0].copy_(top_k[:, -1], non_blocking=True)
            self.corner[layer, 1].copy_(top_v[:, -1], non_blocking=True)
        if not self.last_row and self.top is not None:
            self.top[layer, 0][:, c0:c1].copy_(k[:, -1], non_blocking=True)
            self.top[layer, 1][:, c0:c1].copy_(v[:, -1], non_blocking=True)
        if not self.last_col and self.left is not None:
            nr = k.shape[1]
            self.left[layer, 0][:, :nr].copy_(k[:, :, -1], non_blocking=True)
            self.left[layer, 1][:, :nr].copy_(v[:, :, -1], non_blocking=True)
        if self.last_col and self.outgoing is not None:
            self.outgoing[layer, 0].copy_(k[:, :, -1])
            self.outgoing[layer, 1].copy_(v[:, :, -1])
