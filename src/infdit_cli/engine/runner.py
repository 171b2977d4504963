"""Network calls over a whole image: the streamed engine and the whole-image reference.

Both are `NetworkCall`s, (c_in-scaled input, c_noise) -> raw network output F, with the LR
image and CLIP vector bound, so the EDM denoiser and the samplers never see how blocks are run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from infdit_cli.device import OutOfMemoryError, buffer_like, inferring, peak_bytes, release_cache, working_on
from infdit_cli.engine.cost import flops_per_call
from infdit_cli.engine.memory import accounted_device_bytes, group_activation_bytes
from infdit_cli.engine.placement import Plan, smaller_plan
from infdit_cli.engine.stream import StreamNeighbourhood
from infdit_cli.engine.timing import sync
from infdit_cli.errors import InfditError
from infdit_cli.model.network import Conditioning, InfDiT
from infdit_cli.model.uniba import WholeImage


class DeviceMemoryError(InfditError):
    """The device ran out of memory even with the smallest plan (one line for the user)."""


@dataclass(frozen=True)
class Group:
    """One n×n (or ragged) group of blocks and whether it ends its group-row / the last group-row."""

    rows: range
    cols: range
    last_row: bool
    last_col: bool


@dataclass
class EngineStats:
    """What the engine did and measured, for `--verbose`, `--json` and `infdit bench`."""

    calls: int = 0
    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    peak_kv_bytes: int = 0  # the band the engine allocated (wherever it lives)
    peak_device_bytes: int = 0  # CUDA: max_memory_allocated; CPU: accounted device-resident bytes
    peak_device_source: str = "accounting"  # "cuda_max_allocated" | "accounting"
    host_bytes: int = 0  # image-sized state and band kept off the device by the plan
    block_batch: int = 0  # the n actually used (after any out-of-memory retry)
    placement: str = ""
    oom_retries: int = 0

class _RunnerBase:
    def __init__(self, net: InfDiT, lr: Tensor | None, vector: Tensor | None,
                 token_offset: tuple[int, int] = (0, 0)) -> None:
        self.net = net
        self.lr = lr
        self.vector = vector
        self.token_offset = token_offset
        self.stats = EngineStats()

    def _grid(self, net_in: Tensor) -> tuple[int, int]:
        bs = self.net.config.block_size
        h, w = net_in.shape[-2:]
        if h % bs or w % bs:
            raise ValueError(f"image size {w}x{h} is not a multiple of the block size {bs}")
        return h // bs, w // bs

    def _record(self, grid: tuple[int, int], start: float, device: torch.device, accounted: int) -> None:
        sync(device)
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - start
        self.stats.tokens += grid[0] * grid[1] * self.net.config.block_tokens**2
        self.stats.flops += flops_per_call(self.net.config, grid)
        peak = peak_bytes(device)  # CUDA's allocator peak; the caller resets it per image
        if peak is not None:
            self.stats.peak_device_bytes = max(self.stats.peak_device_bytes, peak)
            self.stats.peak_device_source = "cuda_max_allocated"
        else:
            self.stats.peak_device_bytes = max(self.stats.peak_device_bytes, accounted)

    def _weights_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.net.parameters())

    @staticmethod
    def _bytes(*tensors: Tensor | None) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class WholeImageRunner(_RunnerBase):
    """Every block in one forward (the paper's Appendix A form): memory grows with the area."""

    @inferring
    def __call__(self, net_in: Tensor, c_noise: Tensor) -> Tensor:
        grid = self._grid(net_in)
        start = time.perf_counter()
        cond = self.net.condition(c_noise, self.vector)
        out = self.net.run_blocks(net_in, cond, range(grid[0]), range(grid[1]), WholeImage(), self.lr,
                                  self.token_offset)
        cfg = self.net.config
        accounted = (self._weights_bytes() + group_activation_bytes(cfg, *grid, out.dtype)
                     + self._bytes(net_in, out, self.lr))
        self._record(grid, start, net_in.device, accounted)
        return out


class StreamedRunner(_RunnerBase):
    """n×n block groups in raster order with a preallocated KV band (see engine/stream.py).

    `block_batch` is a placement `Plan` (n, where the band lives, where the image-sized state lives)
    or just n (band and state on the device). The call's input may live on the host: each group's
    pixels are moved in and its output moved out, so device memory does not grow with the height.
    On a CUDA out-of-memory error the call is rerun with a smaller plan; the result does not depend on it.
    `first_col`: the image's block column of the input's first column (a strip of a split image).
    """

    def __init__(self, net: InfDiT, lr: Tensor | None, vector: Tensor | None, block_batch: Plan | int,
                 token_offset: tuple[int, int] = (0, 0), on_group: Callable[[int], None] | None = None,
                 first_col: int = 0) -> None:
        super().__init__(net, lr, vector, token_offset)
        self.first_col = first_col
        plan = block_batch
        n = plan.block_batch if isinstance(plan, Plan) else plan
        if n < 1:
            raise ValueError("block batch must be at least 1")
        self.plan = plan if isinstance(plan, Plan) else None
        self.block_batch = n
        self.band = self.plan.band if self.plan else "device"
        self.state = self.plan.state if self.plan else "device"
        self.stats.block_batch = n
        self.stats.placement = self.plan.name if self.plan else f"n={n}"
        self.on_group = on_group  # called with the number of blocks after each group (progress bars)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @inferring
    def __call__(self, net_in: Tensor, c_noise: Tensor) -> Tensor:
        grid = self._grid(net_in)
        start = time.perf_counter()
        # The output lives where the input does (the sampler state's place), allocated outside the
        # device region: a host state stays host memory.
        out = buffer_like(net_in, (net_in.shape[0], self.net.config.image_channels, *net_in.shape[-2:]))
        while True:
            try:
                with working_on(self.device):
                    accounted = self._stream(net_in, c_noise, grid, out)
                break
            except OutOfMemoryError:
                release_cache(self.device)
                if not self._shrink(grid):
                    raise DeviceMemoryError(f"out of device memory with the smallest plan ({self.stats.placement}) "
                                            f"for a {grid[1]}x{grid[0]}-block call; free device memory or "
                                            "use a smaller image") from None
        self._record(grid, start, self.device, accounted)
        return out

    def _shrink(self, grid: tuple[int, int]) -> bool:
        """Switch to a smaller plan after an out-of-memory error; False when there is none."""
        cfg, dtype = self.net.config, next(self.net.parameters()).dtype
        current = self.plan or Plan(self.block_batch, self.band, self.state, 0, 0, 0, 0.0, True)
        if self.plan is None:
            from infdit_cli.engine.placement import plan_bytes

            current = Plan(self.block_batch, self.band, self.state,
                           plan_bytes(cfg, grid, self.block_batch, self.band, self.state, dtype)[0], 0, 0, 0.0, True)
        smaller = smaller_plan(current, cfg, grid, dtype, self.device.type, self.net.num_parameters())
        if smaller is None:
            return False
        self.plan, self.block_batch, self.band = smaller, smaller.block_batch, smaller.band
        self.stats.oom_retries += 1
        self.stats.block_batch, self.stats.placement = smaller.block_batch, smaller.name
        return True

    @staticmethod
    def groups(grid: tuple[int, int], n: int) -> list[Group]:
        """The n×n block groups of a grid in raster order (ragged at the right and bottom edges)."""
        rows, cols = grid
        group_rows, group_cols = math.ceil(rows / n), math.ceil(cols / n)
        return [Group(range(gi * n, min(rows, (gi + 1) * n)), range(gj * n, min(cols, (gj + 1) * n)),
                      gi == group_rows - 1, gj == group_cols - 1)
                for gi in range(group_rows) for gj in range(group_cols)]

    def neighbourhood(self, grid: tuple[int, int], batch: int = 1, zero: bool = True) -> StreamNeighbourhood:
        """An empty band for one call on `grid` with this runner's n and band placement."""
        cfg = self.net.config
        dtype = next(self.net.parameters()).dtype
        store = torch.device("cpu") if self.band == "host" else None
        return StreamNeighbourhood(cfg.num_layers, grid, self.block_batch,
                                   (cfg.block_tokens**2, cfg.num_heads, cfg.head_dim), dtype, self.device, store,
                                   batch, zero)

    def run_group(self, net_in: Tensor, cond: Conditioning, nbh: StreamNeighbourhood, group: Group) -> Tensor:
        """Network output of one group on the device; `nbh` must hold what the earlier groups left."""
        bs = self.net.config.block_size
        r, c = group.rows, group.cols
        nbh.begin_group(r, c, group.last_row, group.last_col)
        region = net_in[..., r.start * bs:r.stop * bs, c.start * bs:c.stop * bs]
        image_cols = range(c.start + self.first_col, c.stop + self.first_col)  # RoPE positions, LR windows
        return self.net.run_blocks(region, cond, r, image_cols, nbh, self.lr, self.token_offset)

    def _begin_group(self, nbh: StreamNeighbourhood, group: Group) -> None:
        """Before each group (a strip runner receives its left edge at the start of a group-row)."""

    def _end_group(self, nbh: StreamNeighbourhood, group: Group) -> None:
        """After each group (a strip runner sends its right edge at the end of a group-row)."""

    def _end_call(self) -> None:
        """After the last group of a call."""

    def _stream(self, net_in: Tensor, c_noise: Tensor, grid: tuple[int, int], out: Tensor) -> int:
        cfg, n = self.net.config, self.block_batch
        bs = cfg.block_size
        cond = self.net.condition(c_noise.to(self.device), self.vector)
        nbh = self.neighbourhood(grid, net_in.shape[0])
        for group in self.groups(grid, n):
            r, c = group.rows, group.cols
            self._begin_group(nbh, group)
            out[..., r.start * bs:r.stop * bs, c.start * bs:c.stop * bs] = self.run_group(net_in, cond, nbh, group)
            self._end_group(nbh, group)
            if self.on_group is not None:
                self.on_group(len(r) * len(c))
        self._end_call()
        on_device = self.state == "device"
        dtype = next(self.net.parameters()).dtype
        accounted = accounted_device_bytes(cfg, grid, n, self.band, self.state, dtype, self._weights_bytes())
        image = self._bytes(net_in, out, self.lr)
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, nbh.band_bytes)
        self.stats.host_bytes = max(self.stats.host_bytes, (0 if on_device else image)
                                    + (0 if nbh.on_device else nbh.band_bytes))
        return accounted
