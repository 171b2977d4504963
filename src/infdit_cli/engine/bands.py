"""Out of core: one image run as bands of block rows, one after another, in host memory that grows
with the width only.

UniBA makes a block read only its left, upper and upper-left neighbours, so the rows below a band
never change it, and a band needs from the band above exactly that band's last block row (its K/V in
every layer) for each network call: what the streamed engine's `top` band holds there in one pass
over the whole image. So the sampler runs on one band at a time (its x, denoised estimate, bicubic
start and noise are a band's rows, not the image's), and for every call the band's last block row is
kept (`EdgeStore`: in RAM, or memory-mapped in a scratch folder) for the next band. Band boundaries
fall on whole group-rows of the planned n, so every group is the single-pass group, and the sampler's
updates are elementwise: the image is bit for bit the in-RAM one, band by band, in raster order.

The trade: all steps of a band run before the next band starts, so the KV edges of every call
(`nfe` block rows of K/V) are kept instead of one; host memory is a band's state plus those edges,
and the edges move to disk when they do not fit (`plan_host`, closed form).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from infdit_cli.config import ModelConfig
from infdit_cli.engine.memory import available_memory, kv_block_bytes, state_bytes
from infdit_cli.engine.placement import Plan
from infdit_cli.engine.runner import Group, StreamedRunner
from infdit_cli.engine.stream import StreamNeighbourhood
from infdit_cli.model.network import Conditioning, InfDiT


@dataclass(frozen=True)
class HostPlan:
    """Where one pass's image-sized state lives on the host: whole in RAM, or band after band."""

    band_rows: int  # block rows per band (the whole grid: in RAM)
    rows: int  # block rows of the pass
    host_bytes: int  # planned host bytes of the image-sized state (and the KV edges kept in RAM)
    edge_bytes: int  # the KV edges kept between bands (every call's last block row)
    edges_on_disk: bool  # the edges live in memory-mapped scratch files

    @property
    def banded(self) -> bool:
        return self.band_rows < self.rows

    @property
    def disk_bytes(self) -> int:
        return 2 * self.edge_bytes if self.edges_on_disk else 0  # double-buffered: a band reads one, writes one

    @property
    def name(self) -> str:
        return self.label()

    def label(self, edges_in: str | None = None) -> str:
        """"in RAM", or the band height and where the KV edges live (`edges_in`: elsewhere than planned,
        e.g. a checkpoint folder)."""
        if not self.banded:
            return "in RAM"
        where = edges_in or ("scratch" if self.edges_on_disk else "RAM")
        return f"out of core: bands of {self.band_rows} block rows, KV edges in {where}"


HOST_SHARE = 0.6  # of the available RAM, for the image-sized state when no --max-host-memory is given
# ... and at most this much by default: past it a band is already hundreds of rows of a 16384-px-wide image
# (per-band set-up is a few small tensors), so more RAM buys no speed, only a peak that grows with the height.
DEFAULT_HOST_STATE = 512 << 20


def host_budget(device: torch.device, memory: Plan, max_host_memory: int | None = None) -> int:
    """Host bytes the image-sized state may take: `max_host_memory`, else 512 MiB or 60% of the available RAM;
    on a CPU less what the device plan already holds there (weights, KV band, activations)."""
    if max_host_memory is None:
        max_host_memory = min(DEFAULT_HOST_STATE, int(HOST_SHARE * available_memory(torch.device("cpu"))))
    budget = max_host_memory
    return max(0, budget - (memory.device_bytes if device.type == "cpu" else 0))


def plan_host(config: ModelConfig, grid: tuple[int, int], n: int, nfe: int, dtype: torch.dtype,
              budget: int | None, scratch: bool = True) -> HostPlan:
    """In RAM when the whole pass's state fits `budget` (None: no limit), else the tallest bands of whole
    group-rows that fit, with the KV edges in RAM when they fit beside one band, else on disk (`scratch`)."""
    rows, cols = grid
    bs = config.block_size
    edge = nfe * cols * kv_block_bytes(config, dtype)
    whole = state_bytes(cols * bs, rows * bs)
    if budget is None or whole <= budget:
        return HostPlan(rows, rows, whole, 0, False)
    per_group_row = state_bytes(cols * bs, min(n, rows) * bs)
    on_disk = scratch and 2 * edge + per_group_row > budget
    room = budget - (0 if on_disk else 2 * edge)
    group_rows = max(1, room // per_group_row)
    band = min(rows, group_rows * n)
    if band >= rows:
        return HostPlan(rows, rows, whole, 0, False)
    return HostPlan(band, rows, state_bytes(cols * bs, band * bs) + (0 if on_disk else 2 * edge), edge, on_disk)


class EdgeStore:
    """Every call's last block row of K/V, [calls, L, 2, 1, cols, T, H, D], twice: band k reads what band
    k-1 wrote and writes the other copy, so a band resumed midway still reads its upper edge intact.

    In RAM, or in memory-mapped files under `folder` (removed by `close` unless `keep`: a checkpoint's).
    """

    def __init__(self, calls: int, config: ModelConfig, cols: int, dtype: torch.dtype,
                 folder: Path | None = None, keep: bool = False) -> None:
        shape = (calls, config.num_layers, 2, 1, cols, config.block_tokens**2, config.num_heads, config.head_dim)
        self.folder: Path | None = None
        self._made: Path | None = None
        self._maps: list[np.memmap] = []
        if folder is None:
            self.copies = [torch.zeros(shape, dtype=dtype) for _ in range(2)]
            return
        folder.mkdir(parents=True, exist_ok=True)
        if not keep:
            self._made = folder = Path(tempfile.mkdtemp(prefix="infdit-edges-", dir=folder))
        self.folder = folder
        np_dtype = np.uint16 if dtype == torch.bfloat16 else torch.empty((), dtype=dtype).numpy().dtype
        self.copies, self._maps = [], []
        for k in range(2):
            path = folder / f"kv-edges-{k}.bin"
            size = math.prod(shape) * dtype.itemsize
            mm = np.memmap(path, dtype=np_dtype, mode="r+" if path.is_file() and path.stat().st_size == size else "w+",
                           shape=shape)
            self._maps.append(mm)
            t = torch.from_numpy(mm)
            self.copies.append(t.view(dtype) if dtype == torch.bfloat16 else t)

    def above(self, band: int, call: int) -> Tensor | None:
        """The last block row of the band above, for this call (None for the first band)."""
        return None if band == 0 else self.copies[(band - 1) % 2][call]

    def below(self, band: int, call: int) -> Tensor:
        """Where this band's last block row goes, for this call."""
        return self.copies[band % 2][call]

    def flush(self) -> None:
        """Write memory-mapped edges through to the files (a checkpoint may resume from them)."""
        for mm in self._maps:
            mm.flush()

    def close(self) -> None:
        """Drop the edges (and the scratch files this store made)."""
        self.copies, self._maps = [], []
        if self._made is not None:
            import shutil

            shutil.rmtree(self._made, ignore_errors=True)


class BandNeighbourhood(StreamNeighbourhood):
    """The streamed neighbourhood of one band: its `top` starts as the band above's last block row, and
    its own last block row is copied out as it is computed (for the band below)."""

    def __init__(self, base: StreamNeighbourhood, above: Tensor | None, below: Tensor | None) -> None:
        self.__dict__.update(base.__dict__)
        self.below = below
        if above is None:
            return
        lead = above.shape[:3]  # layers, K/V, batch
        if self.top is None:
            self.top = torch.empty_like(above, device=self.store)
        self.top.copy_(above)  # a copy: the stored edge stays intact for a resumed band
        if self.corner is None and math.ceil(self.grid[1] / self.n) > 1:
            self.corner = torch.zeros((*lead, *above.shape[4:]), dtype=above.dtype, device=self.store)
        self.band_bytes = sum(t.numel() * t.element_size() for t in (self.top, self.left, self.corner)
                              if t is not None)

    def _advance(self, layer: int, k: Tensor, v: Tensor, top_k: Tensor, top_v: Tensor) -> None:
        super()._advance(layer, k, v, top_k, top_v)
        if self.last_row and self.below is not None:
            c0, c1 = self.cols.start, self.cols.stop
            self.below[layer, 0][:, c0:c1].copy_(k[:, -1])
            self.below[layer, 1][:, c0:c1].copy_(v[:, -1])


class BandRunner(StreamedRunner):
    """The streamed engine over one band of block rows starting at the image's block row `first_row`:
    global rows for RoPE and the LR windows, the upper edge from `edges`, the lower edge into it."""

    def __init__(self, net: InfDiT, lr: Tensor | None, vector: Tensor | None, block_batch: Plan | int,
                 band: int, first_row: int, edges: EdgeStore, on_group: Callable[[int], None] | None = None,
                 ) -> None:
        super().__init__(net, lr, vector, block_batch, on_group=on_group)
        self.band, self.first_row, self.edges = band, first_row, edges
        self.call = 0

    def _shrink(self, grid: tuple[int, int]) -> bool:
        return False  # bands are whole group-rows of the planned n: a smaller n would change the groups

    def neighbourhood(self, grid: tuple[int, int], batch: int = 1, zero: bool = True) -> StreamNeighbourhood:
        base = super().neighbourhood(grid, batch, zero)
        return BandNeighbourhood(base, self.edges.above(self.band, self.call), self.edges.below(self.band, self.call))

    def run_group(self, net_in: Tensor, cond: Conditioning, nbh: StreamNeighbourhood, group: Group) -> Tensor:
        shifted = Group(range(group.rows.start + self.first_row, group.rows.stop + self.first_row), group.cols,
                        group.last_row, group.last_col)
        nbh.begin_group(shifted.rows, shifted.cols, shifted.last_row, shifted.last_col)
        bs = self.net.config.block_size
        r, c = group.rows, group.cols
        region = net_in[..., r.start * bs:r.stop * bs, c.start * bs:c.stop * bs]
        return self.net.run_blocks(region, cond, shifted.rows, c, nbh, self.lr, self.token_offset)

    def _end_call(self) -> None:
        self.call += 1
