"""One image across ranks: each rank streams its strip of block columns; boundaries flow left to right.

UniBA makes every block read only its left, upper and upper-left neighbours, so a strip needs from
the strip on its left exactly one block column per group-row (its K/V in every layer) and the
corner block above it, which is the bottom of the column received for the previous group-row.
Rank p receives that column before it starts a group-row and sends its own right column to rank
p+1 as soon as it finishes one (asynchronously), so after a lag of one group-row per rank all ranks
compute at once. The neighbourhood here serves the model exactly what the single-process stream
serves it, from its own band (one block-row across the strip only) and the received column.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from infdit_cli.distributed.context import Ranks, peer_errors
from infdit_cli.distributed.strips import Strip
from infdit_cli.model.network import InfDiT

KV = tuple[Tensor, Tensor]


class StripNeighbourhood:
    """UniBA neighbourhood of one rank's strip: its band, plus a left column that may come from a peer."""

    def __init__(self, num_layers: int, strip: Strip) -> None:
        self.num_layers = num_layers
        self.strip = strip
        self.top: list[dict[int, KV]] = [{} for _ in range(num_layers)]  # block (r0−1, c), c in the strip
        self.left: list[KV | None] = [None] * num_layers  # the column left of the group (rows of the group)
        self.corner: list[KV | None] = [None] * num_layers  # block (r0−1, c0−1)
        self.outgoing: list[KV | None] = [None] * num_layers  # the strip's right column, for the next rank
        self.rows, self.cols = range(0), range(0)
        self.last_row = self.last_col = False
        self.band_bytes = 0

    def receive(self, column: Tensor, previous: Tensor | None) -> None:
        """Left column of this group-row, [L, 2, B, X, T, H, D] from the left rank; the corner is the
        bottom block of the previous group-row's column (replicated at the top row, as at the image border)."""
        for layer in range(self.num_layers):
            self.left[layer] = (column[layer, 0], column[layer, 1])
            if previous is not None:
                self.corner[layer] = (previous[layer, 0][:, -1], previous[layer, 1][:, -1])

    def begin_group(self, rows: range, cols: range, last_row: bool, last_col: bool) -> None:
        """Declare the group the next calls (one per layer) belong to; last_col: last of the strip."""
        self.rows, self.cols, self.last_row, self.last_col = rows, cols, last_row, last_col

    def _edges(self, layer: int, which: int, own: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r0, c0 = self.rows.start, self.cols.start
        top = own[:, 0] if r0 == 0 else torch.stack([self.top[layer][c][which] for c in self.cols], dim=1)
        if c0 == 0:  # the image's left border: replicate
            return top, own[:, :, 0], top[:, 0]
        left = self.left[layer][which]  # type: ignore[index]
        corner = left[:, 0] if r0 == 0 else self.corner[layer][which]  # type: ignore[index]
        return top, left, corner

    @staticmethod
    def _padded(own: Tensor, top: Tensor, left: Tensor, corner: Tensor) -> Tensor:
        head = torch.cat([corner[:, None], top], dim=1)[:, None]
        body = torch.cat([left[:, :, None], own], dim=2)
        return torch.cat([head, body], dim=1)  # [B, X+1, Y+1, T, H, D]

    def pad(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The padded-grid form of the neighbourhood protocol."""
        kp, vp = self._padded(k, *self._edges(layer, 0, k)), self._padded(v, *self._edges(layer, 1, v))
        self._advance(layer, k, v)
        return kp, vp

    def gather(self, layer: int, k: Tensor, v: Tensor, key_pos: Tensor | None) -> tuple[Tensor, Tensor]:
        """The gathered form: [self, top-left, left, top] segments, key_pos added to the keys' segments."""
        out = []
        for which, own, pos in ((0, k, key_pos), (1, v, None)):
            p = self._padded(own, *self._edges(layer, which, own))
            segs = torch.stack([p[:, 1:, 1:], p[:, :-1, :-1], p[:, 1:, :-1], p[:, :-1, 1:]], dim=3)
            if pos is not None:
                segs = segs + pos[:, None]
            out.append(segs.flatten(3, 4))
        self._advance(layer, k, v)
        return out[0], out[1]

    def _advance(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Keep what later groups of this strip (or the next rank) read; drop the rest."""
        c1 = self.cols.stop
        top = self.top[layer]
        if not self.last_col:  # the next group's corner is block (r0−1, c1−1): stash it before overwriting
            self.corner[layer] = top.get(c1 - 1)
        for idx, c in enumerate(self.cols):
            if self.last_row:
                top.pop(c, None)
            else:
                top[c] = (k[:, -1, idx].clone(), v[:, -1, idx].clone())
        column = (k[:, :, -1].clone(), v[:, :, -1].clone())
        if self.last_col:
            self.outgoing[layer] = column
            self.left[layer] = None
        else:
            self.left[layer] = column
        held = sum(t.numel() * t.element_size() for kv in top.values() for t in kv)
        self.band_bytes = max(self.band_bytes, held * self.num_layers)

    def take_outgoing(self) -> Tensor:
        """The strip's right column of the group-row just finished, as one [L, 2, B, X, T, H, D] tensor."""
        column = torch.stack([torch.stack(kv) for kv in self.outgoing])  # type: ignore[arg-type]
        self.outgoing = [None] * self.num_layers
        return column


@dataclass
class LinkStats:
    """Traffic and waiting of one rank, for benchmarks and --verbose."""

    bytes_sent: int = 0
    bytes_received: int = 0
    wait_seconds: float = 0.0


class BoundaryLink:
    """Point-to-point boundary columns between neighbouring ranks (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self.stats = LinkStats()
        self._pending: list[tuple[object, Tensor]] = []

    @property
    def has_left(self) -> bool:
        return self.ranks.rank > 0

    @property
    def has_right(self) -> bool:
        return self.ranks.rank < self.ranks.world - 1

    def receive(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        import torch.distributed as dist

        buf = torch.empty(shape, dtype=dtype, device=device)
        start = time.perf_counter()
        with peer_errors(self.ranks, f"receiving a boundary column from rank {self.ranks.rank - 1}"):
            dist.recv(buf, src=self.ranks.rank - 1)
        self.stats.wait_seconds += time.perf_counter() - start
        self.stats.bytes_received += buf.numel() * buf.element_size()
        return buf

    def send(self, column: Tensor) -> None:
        import torch.distributed as dist

        column = column.contiguous()
        with peer_errors(self.ranks, f"sending a boundary column to rank {self.ranks.rank + 1}"):
            self._pending.append((dist.isend(column, dst=self.ranks.rank + 1), column))
        self.stats.bytes_sent += column.numel() * column.element_size()

    def finish_call(self) -> None:
        """Wait for this call's sends, then for every rank: ranks stay within one network call."""
        import torch.distributed as dist

        start = time.perf_counter()
        with peer_errors(self.ranks, "finishing a network call"):
            for work, _ in self._pending:
                work.wait()  # type: ignore[attr-defined]
            self._pending.clear()
            dist.barrier()
        self.stats.wait_seconds += time.perf_counter() - start


class StripRunner:
    """A NetworkCall over one rank's strip: (c_in-scaled strip input, c_noise) -> the strip's F."""

    def __init__(self, net: InfDiT, lr: Tensor | None, vector: Tensor | None, n: int, grid_rows: int,
                 strip: Strip, link: BoundaryLink, token_offset: tuple[int, int] = (0, 0),
                 on_group: Callable[[int], None] | None = None) -> None:
        self.net, self.lr, self.vector, self.n = net, lr, vector, n
        self.grid_rows, self.strip, self.link = grid_rows, strip, link
        self.token_offset = token_offset
        self.on_group = on_group  # called with the number of blocks after each group (progress bars)
        self.calls = 0
        self.seconds = 0.0
        self.band_bytes = 0

    def _column_shape(self, rows: int) -> tuple[int, ...]:
        cfg = self.net.config
        return (cfg.num_layers, 2, 1, rows, cfg.block_tokens**2, cfg.num_heads, cfg.head_dim)

    @torch.no_grad()
    def __call__(self, net_in: Tensor, c_noise: Tensor) -> Tensor:
        start = time.perf_counter()
        cfg, bs, n, s0 = self.net.config, self.net.config.block_size, self.n, self.strip.cols.start
        if net_in.shape[0] != 1 or net_in.shape[-1] != self.strip.width * bs:
            raise ValueError("a strip runner takes one image, exactly its strip wide")
        cond = self.net.condition(c_noise, self.vector)
        out = torch.empty(1, cfg.image_channels, *net_in.shape[-2:], device=net_in.device, dtype=net_in.dtype)
        nbh = StripNeighbourhood(cfg.num_layers, self.strip)
        group_rows = math.ceil(self.grid_rows / n)
        col_groups = [range(c, min(self.strip.cols.stop, c + n)) for c in range(s0, self.strip.cols.stop, n)]
        previous = None
        dtype = next(self.net.parameters()).dtype
        for gi in range(group_rows):
            rows = range(gi * n, min(self.grid_rows, (gi + 1) * n))
            if self.link.has_left:
                column = self.link.receive(self._column_shape(len(rows)), dtype, net_in.device)
                nbh.receive(column, previous)
                previous = column
            for gj, cols in enumerate(col_groups):
                nbh.begin_group(rows, cols, gi == group_rows - 1, gj == len(col_groups) - 1)
                region = net_in[..., rows.start * bs:rows.stop * bs, (cols.start - s0) * bs:(cols.stop - s0) * bs]
                y = self.net.run_blocks(region, cond, rows, cols, nbh, self.lr, self.token_offset)
                out[..., rows.start * bs:rows.stop * bs, (cols.start - s0) * bs:(cols.stop - s0) * bs] = y
                if self.on_group is not None:
                    self.on_group(len(rows) * len(cols))
            column_out = nbh.take_outgoing()
            if self.link.has_right:
                self.link.send(column_out)
        self.link.finish_call()
        self.calls += 1
        self.seconds += time.perf_counter() - start
        self.band_bytes = max(self.band_bytes, nbh.band_bytes)
        return out
