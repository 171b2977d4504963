"""Bench rows and reports: what was measured, estimated or extrapolated, and how to print it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from infdit_cli.bench.machine import MachineInfo


@dataclass
class BenchRow:
    """One measured (or extrapolated, or estimated) configuration. Bytes are bytes, times seconds."""

    resolution: tuple[int, int]  # output (width, height)
    grid: tuple[int, int]  # block rows, block columns
    path: str  # "streamed" | "whole"
    block_batch: int | None  # n actually used; None for the whole-image path
    block_batch_requested: str  # "auto", "4", or "-" (whole)
    placement: str  # the plan's name (n, where the band and the sampler state live); "-" for whole
    dtype: str
    seconds_per_nfe: float | None  # None: not run (estimated)
    estimated_seconds_per_nfe: float | None  # the calibrated estimate, as the upscale pre-flight line gives it
    nfe: int
    projected_run_seconds: float | None  # seconds_per_nfe × the sampler's NFE
    peak_memory_bytes: int  # measured device peak: CUDA allocator, or on CPU the accounted device-resident bytes
    peak_memory_source: str  # "cuda_max_allocated" | "accounting" | "analytic"
    planned_peak_bytes: int | None  # the planner's device peak for this plan
    host_bytes: int  # what the plan keeps off the device (sampler state, band)
    rss_growth_bytes: int | None  # measured process VmHWM growth over the timed part
    weights_bytes: int
    kv_bytes: int  # the streamed KV band (0 for the whole path, whose K/V are activations)
    kv_source: str  # "measured" (allocated by the engine over a full call) | "calculated" | "none"
    activation_bytes: int  # group_activation_bytes of the group (or the whole image)
    io_bytes: int
    flops_per_nfe: float
    tflops: float | None
    pct_of_peak: float | None  # CUDA: of the measured bf16 matmul peak
    estimated: bool  # not run at all: analytic memory, no time
    estimate_reason: str | None  # "memory" | "time"
    extrapolated: bool  # timed on sample_groups groups × sample_layers layers
    sample_groups: int
    total_groups: int
    sample_layers: int
    repeats: int  # full calls timed (median taken)
    oom_retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resolution"], d["grid"] = list(self.resolution), list(self.grid)
        return d


@dataclass
class BenchReport:
    machine: MachineInfo
    model: dict[str, Any]
    settings: dict[str, Any]
    rows: list[BenchRow]

    def to_dict(self) -> dict[str, Any]:
        return {"machine": asdict(self.machine), "model": self.model, "settings": self.settings,
                "rows": [r.to_dict() for r in self.rows]}


def memory_ratios(rows: Sequence[BenchRow]) -> list[tuple[BenchRow, BenchRow]]:
    """(streamed, whole) pairs of the same resolution and dtype, streamed with its smallest peak."""
    pairs = []
    for whole in (r for r in rows if r.path == "whole"):
        same = [r for r in rows if r.path == "streamed" and r.resolution == whole.resolution
                and r.dtype == whole.dtype]
        if same:
            pairs.append((min(same, key=lambda r: r.peak_memory_bytes), whole))
    return pairs


def how_measured(row: BenchRow, num_layers: int) -> str:
    """'measured ×3', 'extrap. (4 groups)', 'extrap. (1 group × 2/28 layers)' or 'est. (memory)'."""
    if row.estimated:
        return f"est. ({row.estimate_reason})"
    if not row.extrapolated:
        return f"measured ×{row.repeats}"
    unit = "group" if row.sample_groups == 1 else "groups"
    layers = f" × {row.sample_layers}/{num_layers} layers" if row.sample_layers < num_layers else ""
    return f"extrap. ({row.sample_groups} {unit}{layers})"
