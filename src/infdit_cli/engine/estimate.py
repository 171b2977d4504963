"""Time estimates that hold on the machine at hand: the speed model calibrated by a short warm-up.

Two small groups of the real engine are timed (one block, then 2×2 blocks; the first few layers
only when a block is slow, e.g. the x4 model on a CPU), after an untimed run that pays one-off
costs. They fix the two unknowns of `SpeedModel`: the FLOP rate and the fixed cost per group and
layer. Block noise is timed too (drawn per block, per sampler step). One `TimeEstimator` serves
the pre-flight line, `--json` and `infdit bench`, so they show one figure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from infdit_cli.engine.noise import block_noise
from infdit_cli.engine.placement import Plan, SpeedModel
from infdit_cli.engine.runner import StreamedRunner, flops_per_call
from infdit_cli.engine.timing import Clock, time_group
from infdit_cli.model.network import InfDiT

SLOW_BLOCK_SECONDS = 2.0  # above this per block, calibrate on the first layers only


@dataclass(frozen=True)
class Calibration:
    """What the warm-up measured, and the speed model it implies."""

    speed: SpeedModel
    block_seconds: float  # one block alone, every layer
    group4_seconds: float  # a 2×2 group, every layer
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
        layers = 2 if probe > SLOW_BLOCK_SECONDS else None
        t1 = min(self.time_square(1, layers) for _ in range(2))
        if getattr(self.net, "compiled", False):
            self.time_square(2, layers)  # untimed: compiles the 2×2 graph
        t4 = min(self.time_square(2, layers) for _ in range(2))
        base = SpeedModel.for_device(self.device.type)
        per_block = flops_per_call(cfg, (1, 1))
        e1, e4 = base.efficiency(1), base.efficiency(4)
        inv_rate = (t4 - t1) / (per_block * (4 / e4 - 1 / e1))
        if inv_rate <= 0 or not math.isfinite(inv_rate):  # noise: no fixed cost visible
            inv_rate, fixed = t4 * e4 / (4 * per_block), 0.0
        else:
            fixed = max(0.0, t1 - per_block * inv_rate / e1) / cfg.num_layers
        speed = replace(base, flops_per_s=1 / inv_rate, group_seconds=fixed)
        n0 = self.clock()
        block_noise(0, 0, (1, cfg.image_channels, 2 * cfg.block_size, 2 * cfg.block_size), cfg.block_size,
                    self.device)
        noise = (self.clock() - n0) / 4
        return Calibration(speed, t1, t4, noise, self.clock() - start)
