"""The cost model, in one place: FLOPs of a network call, the speed model that prices a plan, how a
warm-up's timings become that speed model, and every tuned constant with where its value came from.

Bytes are closed forms in engine/memory.py (arithmetic on the config, no tuned values); the planner
(placement.py) and the runners read FLOPs and speed from here, and nothing here imports them.

Calibration a busy machine cannot fool. A shared machine only ever *adds* time, and not evenly:
a slow spell during the 64-block timings once made the table say a block costs 17× less alone
than in a group, and the planner chose n=1 for a 32×128-block image (135 s instead of 7.9 s).
So the timed groups are checked against each other through the prior's closed form (a fixed cost
per group plus FLOPs at a rate: `form_fit`): while a timing is off that form by more than
`CONSISTENCY_TOLERANCE`, further rounds over every size are timed; a table still inconsistent is
replaced by the least loaded round that is consistent on its own (one round's timings share one
load); and no table is planned on that says the per-block cost falls more than `MAX_PER_BLOCK_FALL`
times as the group shrinks: such a timing is discarded and the form fitted to the others stands in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from infdit_cli.config import ModelConfig
from infdit_cli.engine.memory import io_bytes, kv_block_bytes

# -- tuned constants, each with the measurement (or the reason) it came from --------------------------
# Priors, used before a warm-up has timed the machine (and as the form timings are checked against).
# CUDA rate: one released-size layer in bf16 on the H200, eager, 298 TFLOP/s over 16 blocks and 310
# over 64 (../shared/reference/gpu-measurements.md).
CUDA_FLOPS_PER_S = 300e12
# CUDA efficiency g/(g + 0.9) for g blocks: fitted to those two points (16 → 0.947, 64 → 0.986: 1.04×).
CUDA_HALF_BLOCKS = 0.9
# CUDA fixed cost per group and layer: about 20 kernel launches of ~10 µs; not measured, and replaced
# by the warm-up's figure on the first run.
CUDA_GROUP_SECONDS = 2e-4
# CPU rate: the `small` preset calibrated 46 GFLOP/s on the 2-core EPYC
# (benchmarks/results/amd-epyc-2c-2026-11-29-issue13-after-small.json).
CPU_FLOPS_PER_S = 50e9
# CPU per-block cost +7.5% per doubling of the group (1/(1 + 0.075·log2 g)): caches spill; the 2-core
# EPYC ran 64-block groups of the default model at 1.68 ms a block, 256-block ones at 2.29 ms.
CPU_SPILL_PER_DOUBLING = 0.075
# CPU fixed cost per group and layer: a guess of Python and dispatch overhead; replaced by the warm-up.
CPU_GROUP_SECONDS = 5e-4
# Past the largest timed group a CPU's per-block cost grows at least this much per doubling (+18% per
# doubling on the 2-core EPYC from 64 to 1,024 blocks of the default model, little below 64). Only
# `bench`'s whole-image path and an explicit --block-batch go there: CPU plans stay inside the timed sizes.
CPU_SPILL_GROWTH = 0.15
# Pinned host <-> device copies: PCIe 4.0 ×16 gives about 25 GB/s; not measured on our cards.
HOST_BYTES_PER_S = 20e9

# Planning.
# Plans estimated within this fraction of the fastest are equally fast. CPU 10%: the estimate's own
# spread on the busy 2-core EPYC (16 of 16 estimates within 0.93–1.16 of the measured time,
# benchmarks/results/amd-epyc-2c-2026-11-29-estimates.md); the largest n wins (fewer groups). CUDA 3%:
# the GPU saturates from a few dozen blocks on; the smallest device peak wins (headroom).
NEAR_TIE = {"cpu": 0.10, "cuda": 0.03}
# Allocator rounding and short-lived temporaries above the activation formula (checked against the
# allocator in tests/test_bench.py).
ACTIVATION_SLACK = 1.25
# Chosen, not measured: the sampler state goes to the host above a tenth of the device peak, which
# keeps device memory flat in the image height at a small copy cost.
FLAT_STATE_FRACTION = 0.1
# Chosen: plan within 90% of the free memory (other processes, fragmentation); after an out-of-memory
# error, re-plan at three quarters of the failed plan's peak.
BUDGET_FRACTION = 0.9
OOM_SHRINK = 0.75

# Calibration.
# Above this per block (two layers timed), calibrate on the first two layers only (the x4 model on a CPU).
SLOW_BLOCK_SECONDS = 0.3
# The largest timed group, in tokens. CPU 4k (8×8 blocks of the default model): past it the 2-core EPYC
# runs no faster per block (64 blocks 1.68 ms each, 256 blocks 2.29 ms) and the warm-up stays near half
# a second. CUDA 16k (4×4 blocks of x4), where the H200 saturates.
CALIBRATION_TOKENS = {"cpu": 4096, "cuda": 16384}
# A timing more than this off the form fitted to the others is re-timed. The form fits the default
# model's cost on the quiet 2-core EPYC within 15% (31 ms a group + 1.5 ms a block, read off its
# 135 s run at n=1 and 7.9 s at n=8 on 32×128 blocks) and tests/test_estimate.py's cache-bound machine.
CONSISTENCY_TOLERANCE = 0.3
# Extra rounds over every size while the table is inconsistent (each costs about one warm-up round).
RETIME_ROUNDS = 3
# No table is planned on that says the per-block cost falls more than this as the group shrinks: no
# device runs blocks in a smaller group that much cheaper (the CPU's spill, the one effect that makes
# larger groups dearer per block, is 1.4× per 4× blocks on the 2-core EPYC).
MAX_PER_BLOCK_FALL = 3.0


def flops_per_call(config: ModelConfig, grid: tuple[int, int]) -> float:
    """FLOPs (a multiply-add is 2) of one network call on an X×Y block grid.

    Per token and layer, with C the width and M the MLP width: QKV (3C²) and the output projection
    (C²) are 4C²; the MLP 2CM; adaLN's modulation C·4C is computed once per call, not per token, so it
    is not counted; attention reads 4 segments of T keys (the block and its left, upper and upper-left
    neighbours): 4T·C for the scores and 4T·C for the values, ×2. Per token once: the patch embedding
    (in_channels·p² → C) and the output head (C → p²·image_channels). With the LR cross attention
    (layer 0): the query and output projections (2C² per HR token), the key/value projection of the
    3×3-block LR window (2C² per window token) and attention of each HR token over the window.
    """
    rows, cols = grid
    blocks = rows * cols
    t = config.block_tokens**2
    c, m = config.hidden_size, config.mlp_hidden
    per_token_layer = 2 * (4 * c * c + 2 * c * m) + 2 * 2 * 4 * t * c
    total = blocks * t * config.num_layers * per_token_layer
    total += blocks * t * 2 * (config.in_channels * config.patch_size**2 * c
                               + c * config.patch_size**2 * config.image_channels)
    if config.cross_lr:
        w = (3 * config.lr_block_tokens) ** 2
        total += blocks * (t * 2 * 2 * c * c + w * 2 * 2 * c * c + 2 * 2 * t * w * c)
    return float(total)


@dataclass(frozen=True)
class SpeedModel:
    """Seconds of one network call: from the warm-up's timed groups when there are some, else priors.

    `flops_per_s` and `group_seconds` are the priors' parameters; after a warm-up they summarise the
    timings (best rate reached, fixed cost per group and layer) for reports, and `measured` decides.
    """

    flops_per_s: float
    group_seconds: float  # fixed cost per group and layer (dispatch, launches)
    cuda: bool
    host_bytes_per_s: float = HOST_BYTES_PER_S
    measured: tuple[tuple[int, float], ...] = ()  # warm-up: (blocks in a square group, its seconds), g rising

    @classmethod
    def for_device(cls, device_type: str, flops_per_s: float | None = None) -> SpeedModel:
        if device_type == "cuda":
            return cls(flops_per_s or CUDA_FLOPS_PER_S, CUDA_GROUP_SECONDS, True)
        return cls(flops_per_s or CPU_FLOPS_PER_S, CPU_GROUP_SECONDS, False)

    @property
    def max_group_blocks(self) -> int | None:
        """The largest group a CPU plan may use: the largest timed one (None: no limit)."""
        return self.measured[-1][0] if self.measured and not self.cuda else None

    def efficiency(self, blocks: int) -> float:
        """Prior: the fraction of `flops_per_s` a group of `blocks` blocks reaches."""
        return efficiency(blocks, self.cuda)

    def group_call_seconds(self, config: ModelConfig, blocks: int) -> float:
        """Seconds of one group of `blocks` blocks through every layer (no host copies)."""
        if self.measured:
            return interpolate_group_seconds(self.measured, blocks, 0.0 if self.cuda else CPU_SPILL_GROWTH)
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


def efficiency(blocks: int, cuda: bool) -> float:
    """The prior's fraction of the peak rate a group of `blocks` blocks reaches."""
    if cuda:
        return blocks / (blocks + CUDA_HALF_BLOCKS)
    return 1.0 / (1.0 + CPU_SPILL_PER_DOUBLING * math.log2(max(blocks, 1)))


def interpolate_group_seconds(measured: tuple[tuple[int, float], ...], blocks: int,
                              min_growth: float = 0.0) -> float:
    """A group's seconds from timed (blocks, seconds) pairs: linear in the block count between two timed
    sizes (a fixed cost plus a per-block one). Past the largest, its per-block cost grows by a factor
    per doubling of the group: the trend of the last two sizes, at least 1 + `min_growth` (larger
    groups are never assumed cheaper per block)."""
    if blocks <= measured[0][0]:
        return measured[0][1] * blocks / measured[0][0]
    for (g0, t0), (g1, t1) in itertools.pairwise(measured):
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


# -- from timings to a speed model -------------------------------------------------------------------
def calibration_sides(config: ModelConfig, device_type: str = "cpu") -> tuple[int, ...]:
    """Square group sides to time: 1, 2, 4, … blocks while a group holds at most `CALIBRATION_TOKENS`
    tokens, and at least three sides (1, 2, 3 for large blocks)."""
    tokens = config.block_tokens**2
    limit = CALIBRATION_TOKENS.get(device_type, CALIBRATION_TOKENS["cpu"])
    sides = [1]
    while (2 * sides[-1]) ** 2 * tokens <= limit:
        sides.append(2 * sides[-1])
    while len(sides) < 3:
        sides.append(sides[-1] + 1)
    return tuple(sides)


def form_fit(table: dict[int, float], cuda: bool) -> Callable[[int], float]:
    """The prior's closed form, a + c·g/efficiency(g), fitted to timed groups {blocks: seconds}.

    Least median of squares over the exact fits through two sizes (a, c ≥ 0): the fit most of the
    timings agree with, so one or two slowed timings cannot pull it.
    """
    sizes = sorted(table)
    work = {g: g / efficiency(g, cuda) for g in sizes}
    best: tuple[float, float, float] | None = None  # (score, a, c)
    for g0, g1 in itertools.combinations(sizes, 2):
        c = max(0.0, (table[g1] - table[g0]) / (work[g1] - work[g0]))
        a = max(0.0, table[g0] - c * work[g0])
        if a == 0.0:
            c = table[g0] / work[g0]
        score = sorted(abs(math.log(table[g] / (a + c * work[g]))) for g in sizes)[len(sizes) // 2]
        if best is None or score < best[0]:
            best = (score, a, c)
    if best is None:  # one size: proportional
        (g,) = sizes
        return lambda blocks: table[g] * blocks / g
    _, a, c = best
    return lambda blocks: a + c * blocks / efficiency(blocks, cuda)


def inconsistent(table: dict[int, float], cuda: bool) -> list[int]:
    """Timed sizes off the closed form fitted to the table by more than `CONSISTENCY_TOLERANCE`."""
    if len(table) < 3:
        return []
    fit = form_fit(table, cuda)
    return [g for g in sorted(table) if abs(math.log(table[g] / fit(g))) > math.log1p(CONSISTENCY_TOLERANCE)]


def without_implausible_falls(table: dict[int, float], cuda: bool) -> tuple[dict[int, float], tuple[int, ...]]:
    """The table with every timing discarded whose per-block cost is more than `MAX_PER_BLOCK_FALL` times
    a smaller group's; the form fitted to the remaining timings stands in for it. Returns (table, discarded)."""
    table = dict(table)
    discarded: list[int] = []
    for g in sorted(table):
        cheapest = min((table[s] / s for s in table if s < g and s not in discarded), default=None)
        if cheapest is not None and table[g] / g > MAX_PER_BLOCK_FALL * cheapest:
            discarded.append(g)
    if discarded:
        kept = {g: t for g, t in table.items() if g not in discarded}
        fit = form_fit(kept, cuda)
        for g in discarded:
            table[g] = fit(g)
    return table, tuple(discarded)


@dataclass(frozen=True)
class SettledTimings:
    """What the warm-up's timed groups settled to: the table to plan on and how it got there."""

    table: dict[int, float]  # blocks in the group -> seconds
    timings: int  # groups timed, re-timings included
    discarded: tuple[int, ...] = ()  # sizes whose timing was replaced by the fitted form


def settle_timings(sizes: tuple[int, ...], time_size: Callable[[int], float], rounds: int, cuda: bool,
                   last_round_skips_largest: bool = True) -> SettledTimings:
    """Time each group size (blocks) in rounds over every size and keep each size's fastest timing; while
    that table is inconsistent, time further rounds. Still inconsistent: the least loaded round that is
    consistent on its own (its timings were taken close together, under one load). Never a table with
    an implausible per-block fall.

    Rounds go over every size, so that a slow spell of a shared machine touches each size alike (not all
    repeats of one size, which would tilt the table); the largest, the costliest, sits out the last round.
    """
    taken: list[dict[int, float]] = []

    def one_round(skip_largest: bool) -> None:
        taken.append({g: time_size(g) for g in (sizes[:-1] if skip_largest else sizes)})

    def fastest() -> dict[int, float]:
        return {g: min(r[g] for r in taken if g in r) for g in sizes}

    for r in range(rounds):
        one_round(last_round_skips_largest and r == rounds - 1 and r > 0)
    table = fastest()
    for _ in range(RETIME_ROUNDS):
        if not inconsistent(table, cuda):
            break
        one_round(False)
        table = fastest()
    if inconsistent(table, cuda):
        whole = [r for r in taken if len(r) == len(sizes) and not inconsistent(r, cuda)]
        if whole:
            table = min(whole, key=lambda r: sum(r.values()))
    table, discarded = without_implausible_falls(table, cuda)
    return SettledTimings(table, sum(len(r) for r in taken), discarded)


def speed_from_timings(config: ModelConfig, times: dict[int, float], device_type: str) -> SpeedModel:
    """The speed model of timed square groups {blocks: seconds}; times made non-decreasing in size
    (noise can time a bigger group faster), with the best rate reached and the fixed cost per group
    and layer (from the two smallest groups) as its summary figures."""
    measured: list[tuple[int, float]] = []
    for g in sorted(times):
        measured.append((g, max(times[g], measured[-1][1] if measured else 0.0)))
    per_block = flops_per_call(config, (1, 1))
    rate = max((g * per_block / t for g, t in measured if t > 0), default=0.0)
    (g0, t0), (g1, t1) = measured[0], measured[min(1, len(measured) - 1)]
    fixed = max(0.0, t0 - g0 * (t1 - t0) / (g1 - g0)) if g1 > g0 else 0.0
    base = SpeedModel.for_device(device_type)
    return replace(base, flops_per_s=rate or base.flops_per_s, group_seconds=fixed / config.num_layers,
                   measured=tuple(measured))
