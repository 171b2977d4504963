"""Time estimates that hold on the machine at hand: the speed model calibrated by a short warm-up.

Square groups of the real engine are timed after an untimed run that pays one-off costs: 1, 2×2,
4×4, … blocks up to about 4k tokens on a CPU (1…8 blocks a side with the default model's 8×8-token
blocks) and 16k on CUDA (1, 2 and 4 with the released model's 32×32), each the fastest of two or
three rounds, re-timed while the timings disagree (engine/cost.py: `settle_timings`), through the
first two layers only when a block is slow (e.g. the x4 model on a CPU). `SpeedModel` reads any
group's time off that table. Block noise is timed too (drawn per block, per sampler step). One
`TimeEstimator` serves the pre-flight line, `--json` and `infdit bench`, so they show one figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from infdit_cli.config import ModelConfig
from infdit_cli.device import generator, inference, randn
from infdit_cli.engine.cost import (
    SLOW_BLOCK_SECONDS,
    SpeedModel,
    calibration_sides,
    settle_timings,
    speed_from_timings,
)
from infdit_cli.engine.noise import block_noise
from infdit_cli.engine.placement import Plan
from infdit_cli.engine.runner import StreamedRunner
from infdit_cli.engine.timing import Clock, sync, time_group
from infdit_cli.model.network import InfDiT


@dataclass(frozen=True)
class Calibration:
    """What the warm-up measured, and the speed model it implies."""

    speed: SpeedModel
    block_seconds: float  # one block alone, every layer
    noise_seconds_per_block: float
    warmup_seconds: float  # what calibrating cost
    timings: int = 0  # groups timed, re-timings of a disturbed table included
    discarded: tuple[int, ...] = ()  # group sizes (blocks) whose timing was implausible and replaced


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
        g = generator(dev, 0)
        h, w = rows * cfg.block_size, cols * cfg.block_size
        net_in = randn((1, cfg.in_channels, h, w), g, dev)
        lr = randn((1, cfg.image_channels, h // cfg.sr_scale, w // cfg.sr_scale), g, dev).to(dtype) \
            if cfg.cross_lr else None
        vector = randn((1, cfg.vector_dim), g, dev) if cfg.vector_dim else None
        return net_in, lr, vector

    def time_square(self, side: int, layers: int | None = None) -> float:
        """Seconds of one side×side group (every layer; projected from `layers` when given)."""
        net_in, lr, vector = self._inputs(side, side)
        runner = StreamedRunner(self.net, lr, vector, side)
        grid = (side, side)
        group = runner.groups(grid, side)[0]
        with inference():
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
        sides = calibration_sides(cfg, self.device.type)
        if compiled:
            for side in sides:
                self.time_square(side, layers)  # untimed: compiles this group shape
        side_of = {side * side: side for side in sides}
        settled = settle_timings(tuple(side_of), lambda blocks: self.time_square(side_of[blocks], layers),
                                 rounds=3, cuda=self.device.type == "cuda")
        speed = speed_from_timings(cfg, settled.table, self.device.type)
        noise = min(self._time_noise(cfg) for _ in range(3))  # the first draw pays one-off costs
        return Calibration(speed, settled.table[1], noise, self.clock() - start, settled.timings, settled.discarded)

    def _time_noise(self, cfg: ModelConfig) -> float:
        """Seconds of one block's noise, from a 4×4-block draw."""
        start = self.clock()
        block_noise(0, 0, (1, cfg.image_channels, 4 * cfg.block_size, 4 * cfg.block_size), cfg.block_size,
                    self.device)
        sync(self.device)
        return (self.clock() - start) / 16

