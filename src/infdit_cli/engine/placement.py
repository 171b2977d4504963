"""The placement planner: one plan per image says n, where the KV band lives and where the sampler's
image-sized state lives, from closed-form memory (engine/memory.py) and a closed-form speed model.

Every n from 1 to the grid's longer side is priced with every placement (a few hundred plans for
a 16384² image, well under a millisecond each); among the plans whose device peak fits the budget
the fastest is chosen. Speed model (`SpeedModel`): the seconds of one group of g blocks. The
warm-up (estimate.py) times groups of 1, 4, 16, … blocks on the machine at hand, and a group's
time is read off that table (linear in g between two timed sizes); on a CPU no plan uses a group
larger than the largest one timed, so an estimate is never an extrapolation there (a 2-core EPYC
runs 16–64-block groups of the default model 1.7× cheaper per block than 1,024-block ones, a
curve no closed form fitted to three points held). Before a warm-up, priors: per group a fixed
dispatch cost plus its FLOPs at the device's rate times an efficiency: on CUDA small groups leave
the GPU idle (g/(g + 0.9) for g blocks, fitted to the H200 measurements: 16 blocks 298 TFLOP/s,
64 blocks 310); on CPUs large groups spill out of the caches (1/(1 + 0.075·log2 g)).
A host-resident band costs its per-layer copies over PCIe; host-resident sampler state costs
little on CUDA (one group's pixels in and out per call) and nothing on a CPU, where it is the
same memory: it is chosen whenever the state would otherwise be more than a tenth of the device
peak, which keeps device memory flat in the image height.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from infdit_cli.config import ModelConfig
from infdit_cli.engine.memory import (
    available_memory,
    group_activation_bytes,
    io_bytes,
    kv_block_bytes,
    kv_staging_bytes,
    parameter_count,
    state_bytes,
    stream_kv_bytes,
    weights_bytes,
)

PLACES = ("device", "host")
ACTIVATION_SLACK = 1.25  # allocator rounding and short-lived temporaries above the formula
FLAT_STATE_FRACTION = 0.1  # state above this fraction of the device peak goes to the host
# Plans estimated within this fraction of the fastest count as equally fast. On a CPU (10%: the
# estimate's own spread on a busy machine) the largest n of those wins: fewer groups, less dispatch
# per block, and memory is plentiful. On CUDA (3%: the GPU saturates from a few dozen blocks on) the
# smallest device peak wins, leaving headroom (4096² with the x4 model: n=6, about 8 GB).
NEAR_TIE = {"cpu": 0.10, "cuda": 0.03}
# Past the largest timed group a CPU's per-block cost is assumed to grow at least this much per doubling
# of the group (caches spill: +18% per doubling on the 2-core EPYC from 64 to 1,024 blocks of the
# default model, where the timed sizes below 64 show almost none). Only `bench`'s whole-image path
# and a user's explicit --block-batch go there: the planner stays inside the timed sizes on a CPU.
CPU_SPILL_GROWTH = 0.15


@dataclass(frozen=True)
class SpeedModel:
    """Seconds of one network call: from the warm-up's timed groups when there are some, else priors.

    `flops_per_s` and `group_seconds` are the priors' parameters; after a warm-up they summarise the
    timings (best rate reached, fixed cost per group and layer) for reports, and `measured` decides.
    """

    flops_per_s: float
    group_seconds: float  # fixed cost per group and layer (dispatch, launches)
    cuda: bool
    host_bytes_per_s: float = 20e9  # pinned host <-> device copies
    measured: tuple[tuple[int, float], ...] = ()  # warm-up: (blocks in a square group, its seconds), g rising

    @classmethod
    def for_device(cls, device_type: str, flops_per_s: float | None = None) -> SpeedModel:
        if device_type == "cuda":
            return cls(flops_per_s or 300e12, 2e-4, True)
        return cls(flops_per_s or 50e9, 5e-4, False)

    @property
    def max_group_blocks(self) -> int | None:
        """The largest group a CPU plan may use: the largest timed one (None: no limit)."""
        return self.measured[-1][0] if self.measured and not self.cuda else None

    def efficiency(self, blocks: int) -> float:
        """Prior: the fraction of `flops_per_s` a group of `blocks` blocks reaches."""
        if self.cuda:
            return blocks / (blocks + 0.9)
        return 1.0 / (1.0 + 0.075 * math.log2(max(blocks, 1)))

    def group_call_seconds(self, config: ModelConfig, blocks: int) -> float:
        """Seconds of one group of `blocks` blocks through every layer (no host copies)."""
        if self.measured:
            return interpolate_group_seconds(self.measured, blocks, 0.0 if self.cuda else CPU_SPILL_GROWTH)
        from infdit_cli.engine.runner import flops_per_call

        per_block = flops_per_call(config, (1, 1))
        rate = self.flops_per_s * self.efficiency(blocks)
        return config.num_layers * self.group_seconds + blocks * per_block / rate

    def call_seconds(self, config: ModelConfig, grid: tuple[int, int], n: int, band: str = "device",
                     state: str = "device") -> float:
        """Seconds of one streamed call on an X×Y grid with block batch n and the given placement."""
        rows, cols = grid
        total = 0.0
        for g_rows, count_r in _spans(rows, n):
            for g_cols, count_c in _spans(cols, n):
                seconds = self.group_call_seconds(config, g_rows * g_cols)
                if band == "host" and self.cuda:  # each layer reads its edges and writes its last row/column
                    moved = (g_rows + g_cols + 1 + g_rows + g_cols) * kv_block_bytes(config, torch.bfloat16)
                    seconds += moved / self.host_bytes_per_s
                if state == "host" and self.cuda:
                    seconds += io_bytes(g_cols * config.block_size, g_rows * config.block_size) / self.host_bytes_per_s
                total += count_r * count_c * seconds
        return total


def interpolate_group_seconds(measured: tuple[tuple[int, float], ...], blocks: int,
                              min_growth: float = 0.0) -> float:
    """A group's seconds from timed (blocks, seconds) pairs: linear in the block count between two timed
    sizes (a fixed cost plus a per-block one). Past the largest, its per-block cost grows by a factor
    per doubling of the group: the trend of the last two sizes, at least 1 + `min_growth` (larger
    groups are never assumed cheaper per block)."""
    if blocks <= measured[0][0]:
        return measured[0][1] * blocks / measured[0][0]
    for (g0, t0), (g1, t1) in zip(measured, measured[1:], strict=False):
        if blocks <= g1:
            return t0 + (t1 - t0) * (blocks - g0) / (g1 - g0)
    g1, t1 = measured[-1]
    factor = 1.0 + min_growth
    if len(measured) > 1:
        g0, t0 = measured[-2]
        factor = max(factor, ((t1 / g1) / (t0 / g0)) ** (1 / math.log2(g1 / g0)))
    return blocks * (t1 / g1) * factor ** math.log2(blocks / g1)


def _spans(length: int, n: int) -> list[tuple[int, int]]:
    """(group side, how many groups) along one axis: full groups and the ragged last one."""
    full, rest = divmod(length, n)
    spans = [(n, full)] if full else []
    return spans + [(rest, 1)] if rest else spans


@dataclass(frozen=True)
class Plan:
    """What one image runs with, and what it was expected to cost."""

    block_batch: int
    band: str  # where the KV band lives: "device" | "host"
    state: str  # where the sampler's image-sized state lives: "device" | "host"
    device_bytes: int  # planned device peak
    host_bytes: int  # what the plan keeps off the device
    budget_bytes: int
    seconds_per_call: float  # the speed model's figure (ranking; calibrated: an estimate)
    fits: bool  # False: nothing fits the budget, this is the smallest plan

    @property
    def name(self) -> str:
        return f"n={self.block_batch}, KV band on {self.band}, state on {self.state}"

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "name": self.name}


def plan_bytes(config: ModelConfig, grid: tuple[int, int], n: int, band: str, state: str, dtype: torch.dtype,
               num_parameters: int | None = None) -> tuple[int, int]:
    """(device peak, host bytes) of one streamed call with this placement: closed form."""
    rows, cols = grid
    bs = config.block_size
    kv = stream_kv_bytes(config, grid, n, dtype)
    g_rows, g_cols = min(n, rows), min(n, cols)
    act = int(group_activation_bytes(config, g_rows, g_cols, dtype) * ACTIVATION_SLACK)
    image = state_bytes(cols * bs, rows * bs)
    device = weights_bytes(config, dtype, num_parameters) + act
    device += kv if band == "device" else kv_staging_bytes(config, grid, n, dtype)
    device += image if state == "device" else io_bytes(g_cols * bs, g_rows * bs)
    host = (kv if band == "host" else 0) + (image if state == "host" else 0)
    return device, host


def budget_bytes(device: torch.device, max_memory: int | None = None) -> int:
    """90% of the free device memory (CUDA) or available RAM, capped by the user's --max-memory."""
    budget = int(available_memory(device) * 0.9)
    return budget if max_memory is None else min(budget, max_memory)


def plan_placement(
    config: ModelConfig, grid: tuple[int, int], dtype: torch.dtype, device_type: str, budget: int,
    num_parameters: int | None = None, block_batch: int | None = None, band: str | None = None,
    state: str | None = None, speed: SpeedModel | None = None,
) -> Plan:
    """The fastest plan whose device peak fits `budget`; fixed n / band / state where given.

    With a warm-up's timings on a CPU, n is limited to groups no larger than the largest one timed.

    Plans within `NEAR_TIE` of the fastest estimate are a tie, won by the largest n on a CPU and by
    the smallest device peak on CUDA.
    Sampler state goes to the host when it would be more than a tenth of the device peak (device
    memory flat in height), and always on a CPU, where host and device are the same memory.
    """
    speed = speed or SpeedModel.for_device(device_type)
    if num_parameters is None:
        num_parameters = parameter_count(config)
    if block_batch is not None:
        ns = [min(block_batch, max(grid))]
    else:  # on a CPU after a warm-up: no group larger than the largest one timed
        cap = speed.max_group_blocks
        ns = [n for n in range(1, max(grid) + 1) if n == 1 or cap is None or min(n, grid[0]) * min(n, grid[1]) <= cap]
    bands = [band] if band else (["device", "host"] if device_type == "cuda" else ["device"])
    candidates: list[Plan] = []
    for n in ns:
        for b in bands:
            states = [state] if state else _states(config, grid, n, b, dtype, num_parameters, device_type)
            for s in states:
                dev, host = plan_bytes(config, grid, n, b, s, dtype, num_parameters)
                seconds = speed.call_seconds(config, grid, n, b, s)
                candidates.append(Plan(n, b, s, dev, host, budget, seconds, dev <= budget))
    fitting = [p for p in candidates if p.fits]
    if fitting:
        fastest = min(p.seconds_per_call for p in fitting)
        cuda = device_type == "cuda"
        near = [p for p in fitting if p.seconds_per_call <= fastest * (1 + NEAR_TIE["cuda" if cuda else "cpu"])]
        if cuda:
            return min(near, key=lambda p: (p.device_bytes, p.seconds_per_call))
        return max(near, key=lambda p: (p.block_batch, -p.seconds_per_call, -p.device_bytes))
    return min(candidates, key=lambda p: (p.device_bytes, p.seconds_per_call))


def smaller_plan(plan: Plan, config: ModelConfig, grid: tuple[int, int], dtype: torch.dtype, device_type: str,
                 num_parameters: int | None = None) -> Plan | None:
    """After an out-of-memory error: the fastest plan planned at three quarters of the failed one's peak."""
    budget = int(plan.device_bytes * 0.75)
    smaller = plan_placement(config, grid, dtype, device_type, budget, num_parameters, state=plan.state)
    if smaller.device_bytes >= plan.device_bytes:
        return None
    return Plan(smaller.block_batch, smaller.band, smaller.state, smaller.device_bytes, smaller.host_bytes,
                plan.budget_bytes, smaller.seconds_per_call, smaller.fits)


def _states(config: ModelConfig, grid: tuple[int, int], n: int, band: str, dtype: torch.dtype, num_parameters: int,
            device_type: str) -> list[str]:
    """Where the state may live for this n: host on CPUs; on CUDA device only while it stays small."""
    if device_type != "cuda":
        return ["host"]
    with_state, _ = plan_bytes(config, grid, n, band, "device", dtype, num_parameters)
    image = state_bytes(grid[1] * config.block_size, grid[0] * config.block_size)
    if image > FLAT_STATE_FRACTION * (with_state - image):
        return ["host"]
    return ["device", "host"]


