"""Time estimates that hold on the machine at hand: the speed model calibrated by a short warm-up.

Three small groups of the real engine are timed (one block, then about 4k and 16k tokens: 1, 2×2
and 4×4 blocks of the released model; the first two layers
only when a block is slow, e.g. the x4 model on a CPU), after an untimed run that pays one-off
costs. They fix the three unknowns of `SpeedModel`: the FLOP rate, the fixed cost per group and
layer, and how the per-block cost moves with the group size (caches on a CPU, occupancy on a GPU;
a busy CPU can reverse the sign). Block noise is timed too (drawn per block, per sampler step).
One `TimeEstimator` serves the pre-flight line, `--json` and `infdit bench`, so they show one figure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from infdit_cli.config import ModelConfig
from infdit_cli.engine.noise import block_noise
from infdit_cli.engine.placement import Plan, SpeedModel
from infdit_cli.engine.runner import StreamedRunner, flops_per_call
from infdit_cli.engine.timing import Clock, time_group
from infdit_cli.model.network import InfDiT

SLOW_BLOCK_SECONDS = 0.3  # above this per block (two layers), calibrate on the first two layers only


@dataclass(frozen=True)
class Calibration:
    """What the warm-up measured, and the speed model it implies."""

    speed: SpeedModel
    block_seconds: float  # per block in the smallest timed group, every layer
    group4_seconds: float  # the second timed group (2×2 blocks of 32×32 tokens), every layer
    noise_seconds_per_block: float
    warmup_seconds: float  # what calibrating cost


class TimeEstimator:
    """Seconds of a network call or a whole upscale for one model on one device (calibrated once)."""

    def __init__(self, net: InfDiT, clock: Clock = time.perf_counter) -> None:
        self.net = net
        self.clock = clock
        self._calibration: Calibration | None = None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def calibration(self) -> Calibration:
        if self._calibration is None:
            self._calibration = self._calibrate()
        return self._calibration

    def call_seconds(self, grid: tuple[int, int], plan: Plan | int) -> float:
        """One streamed network call on `grid` with this plan (or block batch n, everything on the device)."""
        speed = self.calibration.speed
        if isinstance(plan, Plan):
            return speed.call_seconds(self.net.config, grid, plan.block_batch, plan.band, plan.state)
        return speed.call_seconds(self.net.config, grid, plan)

    def run_seconds(self, grid: tuple[int, int], plan: Plan | int, nfe: int, steps: int) -> float:
        """A sampling run: `nfe` calls plus the block noise of `steps` + 1 draws."""
        noise = self.calibration.noise_seconds_per_block * grid[0] * grid[1] * (steps + 1)
        return nfe * self.call_seconds(grid, plan) + noise

    def _inputs(self, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        cfg, dev = self.net.config, self.device
        dtype = next(self.net.parameters()).dtype
        g = torch.Generator(device=dev).manual_seed(0)
        h, w = rows * cfg.block_size, cols * cfg.block_size
        net_in = torch.randn(1, cfg.in_channels, h, w, generator=g, device=dev)
        lr = torch.randn(1, cfg.image_channels, h // cfg.sr_scale, w // cfg.sr_scale, generator=g,
                         device=dev).to(dtype) if cfg.cross_lr else None
        vector = torch.randn(1, cfg.vector_dim, generator=g, device=dev) if cfg.vector_dim else None
        return net_in, lr, vector

    def time_square(self, side: int, layers: int | None = None) -> float:
        """Seconds of one side×side group (every layer; projected from `layers` when given)."""
        net_in, lr, vector = self._inputs(side, side)
        runner = StreamedRunner(self.net, lr, vector, side)
        grid = (side, side)
        group = runner.groups(grid, side)[0]
        with torch.inference_mode():
            cond = self.net.condition(torch.zeros(1, device=self.device), vector)
            nbh = runner.neighbourhood(grid)
            timing = time_group(self.net, lambda: runner.run_group(net_in, cond, nbh, group), side * side,
                                self.device, self.clock, layers)
        return timing.projected_seconds(self.net.config.num_layers)

    def _calibrate(self) -> Calibration:
        start = self.clock()
        cfg = self.net.config
        self.time_square(1, layers=2)  # untimed: allocator, kernel choice, thread pool
        probe = self.time_square(1, layers=2)
        layers = 2 if probe > SLOW_BLOCK_SECONDS and cfg.num_layers > 2 else None
        compiled = getattr(self.net, "compiled", False)
        times = {}
        for side, repeats in zip(calibration_sides(cfg), (2, 2, 1), strict=True):
            if compiled:
                self.time_square(side, layers)  # untimed: compiles this group shape
            times[side * side] = min(self.time_square(side, layers) for _ in range(repeats))
        speed = fit_speed(cfg, times, self.device.type)
        n0 = self.clock()
        block_noise(0, 0, (1, cfg.image_channels, 2 * cfg.block_size, 2 * cfg.block_size), cfg.block_size,
                    self.device)
        noise = (self.clock() - n0) / 4
        first, second = sorted(times)[:2]
        return Calibration(speed, times[first] / first, times[second], noise, self.clock() - start)


def calibration_sides(config: ModelConfig) -> tuple[int, int, int]:
    """Group sides to time: one block (the fixed cost per group shows), then about 4k and 16k tokens
    (1, 2×2, 4×4 blocks of 32×32 tokens; 1, 8×8, 16×16 blocks of 8×8 tokens)."""
    t = config.block_tokens**2
    sides = [1] + [max(1, round(math.sqrt(tokens / t))) for tokens in (4096, 16384)]
    for i in (1, 2):  # three distinct sizes even for very large blocks
        sides[i] = max(sides[i], sides[i - 1] + 1)
    return sides[0], sides[1], sides[2]


def fit_speed(config: ModelConfig, times: dict[int, float], device_type: str) -> SpeedModel:
    """The speed model through measured group times {blocks: seconds} (1, 4 and 16 blocks).

    t(g) = L·o + g·(F/r)·(1 + s·log2 g): fixed cost o per group and layer, rate r, size slope s,
    solved exactly from three points; a negative fixed cost (noise) is refitted with o = 0 by least
    squares over the same points.
    """
    per_block = flops_per_call(config, (1, 1))
    base = SpeedModel.for_device(device_type)
    gs = sorted(times)
    rows = [[1.0, g * per_block, g * per_block * math.log2(g)] for g in gs]
    sol = _solve(rows, [times[g] for g in gs])
    if sol is None or sol[0] < 0 or sol[1] <= 0:  # no visible fixed cost: least squares with o = 0
        a = [r[1:] for r in rows]
        b = [times[g] for g in gs]
        normal = [[sum(r[i] * r[j] for r in a) for j in range(2)] for i in range(2)]
        two = _solve(normal, [sum(r[i] * y for r, y in zip(a, b, strict=True)) for i in range(2)])
        if two is None or two[0] <= 0:
            return replace(base, flops_per_s=per_block / times[gs[0]], group_seconds=0.0, size_slope=0.0)
        sol = [0.0, *two]
    fixed, inv_rate, slope_rate = sol
    return replace(base, flops_per_s=1 / inv_rate, group_seconds=fixed / config.num_layers,
                   size_slope=slope_rate / inv_rate)


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Exact solve of a small square system (Gaussian elimination with pivoting); None if singular."""
    n = len(b)
    if n == 0 or len(a) != n:
        return None
    m = [row[:] + [rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-300:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]
