"""The placement planner: one plan per image says n, where the KV band lives and where the sampler's
image-sized state lives, from closed-form memory (engine/memory.py) and the speed model (engine/cost.py).

Every n from 1 to the grid's longer side is priced with every placement (a few hundred plans for
a 16384² image, well under a millisecond each); among the plans whose device peak fits the budget
the fastest is chosen, with near-ties (`cost.NEAR_TIE`) won by the largest n on a CPU and by the
smallest device peak on CUDA. After a warm-up, a CPU plan uses no group larger than the largest one
timed, so its estimate is never an extrapolation. A host-resident band costs its per-layer copies
over PCIe; host-resident sampler state costs little on CUDA (one group's pixels in and out per call)
and nothing on a CPU, where it is the same memory: it is chosen whenever the state would otherwise
be more than `cost.FLAT_STATE_FRACTION` of the device peak, which keeps device memory flat in the
image height.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from infdit_cli.config import ModelConfig
from infdit_cli.engine.cost import (
    ACTIVATION_SLACK,
    BUDGET_FRACTION,
    FLAT_STATE_FRACTION,
    NEAR_TIE,
    OOM_SHRINK,
    SpeedModel,
)
from infdit_cli.engine.memory import (
    available_memory,
    group_activation_bytes,
    io_bytes,
    kv_staging_bytes,
    parameter_count,
    state_bytes,
    stream_kv_bytes,
    weights_bytes,
)


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
    """`BUDGET_FRACTION` of the free device memory (CUDA) or available RAM, capped by --max-memory."""
    budget = int(available_memory(device) * BUDGET_FRACTION)
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
    Sampler state goes to the host when it would be more than `FLAT_STATE_FRACTION` of the device
    peak (device memory flat in height), and always on a CPU, where host and device are the same memory.
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
    """After an out-of-memory error: the fastest plan planned at `OOM_SHRINK` of the failed one's peak."""
    budget = int(plan.device_bytes * OOM_SHRINK)
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


