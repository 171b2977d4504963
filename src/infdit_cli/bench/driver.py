"""The bench driver: for each resolution and block batch, plan, estimate, then time a full call or
sampled groups, measure memory, and assemble rows (see report.py for what a row holds)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from infdit_cli.bench.extrapolate import extrapolate_call_seconds, head_tail_fraction
from infdit_cli.bench.machine import machine_info
from infdit_cli.bench.options import BenchError, BlockBatch, dtype_name
from infdit_cli.bench.report import BenchReport, BenchRow
from infdit_cli.config import ModelConfig, preset
from infdit_cli.device import OutOfMemoryError, generator, inference, peak_bytes, randn, release_cache
from infdit_cli.engine.cost import flops_per_call
from infdit_cli.engine.estimate import TimeEstimator
from infdit_cli.engine.measure import RssPeak, reset_device_peak
from infdit_cli.engine.memory import (
    accounted_device_bytes,
    available_memory,
    group_activation_bytes,
    io_bytes,
    stream_kv_bytes,
    whole_image_memory_bytes,
)
from infdit_cli.engine.placement import Plan, budget_bytes, plan_placement
from infdit_cli.engine.runner import StreamedRunner, WholeImageRunner
from infdit_cli.engine.timing import Clock, GroupTiming, sync, time_group
from infdit_cli.model.network import Conditioning, InfDiT, compile_unavailable
from infdit_cli.model.uniba import WholeImage
from infdit_cli.samplers.schedules import RELEASED
from infdit_cli.units import format_duration

BENCH_SIGMA = 1.5  # the noise level of the reference GPU measurements; time does not depend on it


@dataclass
class BenchInputs:
    """One call's inputs: fp32 [noisy, LR-up] pixels (where the plan keeps the state), LR, CLIP, c_noise."""

    net_in: Tensor
    lr: Tensor | None
    vector: Tensor | None
    c_noise: Tensor


def random_inputs(config: ModelConfig, size: tuple[int, int], dtype: torch.dtype, device: torch.device,
                  seed: int = 0, state: torch.device | None = None) -> BenchInputs:
    """What the upscaler feeds the network; the image-sized tensors on `state` (default: `device`)."""
    w, h = size
    home = state or device
    g = generator(home, seed)  # drawn where it is used: 16384² is 6 GB
    net_in = randn((1, config.in_channels, h, w), g, home)
    lr = None
    if config.cross_lr:
        lr = randn((1, config.image_channels, h // config.sr_scale, w // config.sr_scale), g, home).to(dtype)
    gv = generator(device, seed)
    vector = randn((1, config.vector_dim), gv, device) if config.vector_dim else None
    c_noise = torch.full((1,), 0.25 * math.log(BENCH_SIGMA), device=device)
    return BenchInputs(net_in, lr, vector, c_noise)


def weight_bytes(net: InfDiT) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())


def random_model(config: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int = 0) -> InfDiT:
    """The model's own random init (`init_random`), allocated once on the device in its dtype."""
    with torch.device("meta"):
        net = InfDiT(config)
    net = net.to_empty(device=device).to(dtype)
    return net.init_random(seed).eval()


class _Bench:
    """Measures rows for one model on one device; `budget` is seconds of timing per row."""

    def __init__(self, net: InfDiT, device: torch.device, nfe: int, budget: float, clock: Clock,
                 progress: Callable[[str], None], peak_tflops: float | None, max_sample_groups: int,
                 max_repeats: int = 3, state: str | None = None) -> None:
        self.net, self.cfg, self.device = net, net.config, device
        self.dtype = next(net.parameters()).dtype
        self.nfe, self.budget, self.clock, self.progress = nfe, budget, clock, progress
        self.peak_tflops, self.max_sample_groups, self.max_repeats = peak_tflops, max_sample_groups, max_repeats
        self.state = state
        self.weights = weight_bytes(net)
        self.params = net.num_parameters()
        self.tail = head_tail_fraction(self.cfg)
        self.estimator = TimeEstimator(net)  # real clock: the estimate is what a user would be shown

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        bs = self.cfg.block_size
        w, h = size
        if w % bs or h % bs:
            raise BenchError(f"resolution {w}x{h} is not a multiple of the {bs}-px block size")
        return h // bs, w // bs

    def plan(self, requested: BlockBatch, grid: tuple[int, int]) -> Plan:
        n = None if requested == "auto" else max(1, min(int(requested), max(grid)))
        return plan_placement(self.cfg, grid, self.dtype, self.device.type, budget_bytes(self.device),
                              self.params, block_batch=n, state=self.state, speed=self.estimator.calibration.speed)

    def inputs(self, size: tuple[int, int], plan: Plan) -> BenchInputs:
        state = self.device if plan.state == "device" else torch.device("cpu")
        return random_inputs(self.cfg, size, self.dtype, self.device, state=state)

    @contextmanager
    def _measured(self) -> Iterator[dict[str, int | None]]:
        """CUDA peak allocated (reset first) and the process RSS growth, over the block."""
        result: dict[str, int | None] = {"cuda": None, "rss": None}
        reset_device_peak(self.device)
        with RssPeak() as rss:
            yield result
        sync(self.device)
        result["cuda"] = peak_bytes(self.device)
        result["rss"] = rss.growth

    def _condition(self, inp: BenchInputs) -> tuple[Conditioning, float]:
        sync(self.device)
        start = self.clock()
        with inference():
            cond = self.net.condition(inp.c_noise, inp.vector)
        sync(self.device)
        return cond, self.clock() - start

    def _time_group(self, inp: BenchInputs, cond: Conditioning, grid: tuple[int, int], plan: Plan, gi: int,
                    gj: int, layers: int, out: Tensor | None = None) -> GroupTiming:
        """Run group (gi, gj) of the real grid through the engine (`layers` layers), on a band of zeros.

        On CUDA the whole band is allocated (the measured peak is the real one); on a CPU only the
        entries the group reads are touched (the memory figure there is the accounting).
        """
        bs, n = self.cfg.block_size, plan.block_batch
        group = StreamedRunner.groups(grid, n)[gi * math.ceil(grid[1] / n) + gj]
        r, c = group.rows, group.cols
        runner = StreamedRunner(self.net, inp.lr, inp.vector, plan)
        nbh = runner.neighbourhood(grid, zero=self.device.type == "cuda")
        nbh.begin_group(r, c, group.last_row, group.last_col)
        nbh.clear_edges()

        def run() -> None:
            f = runner.run_group(inp.net_in, cond, nbh, group)
            if out is not None:
                out[..., r.start * bs:r.stop * bs, c.start * bs:c.stop * bs] = f

        with inference():
            return time_group(self.net, run, len(r) * len(c), self.device, self.clock, layers)

    @staticmethod
    def sample_order(grid: tuple[int, int], n: int) -> list[tuple[int, int]]:
        """Groups to time, most representative first: interior, then the middle, the first, the end."""
        gr, gc = math.ceil(grid[0] / n), math.ceil(grid[1] / n)
        picks = [(min(1, gr - 1), min(1, gc - 1)), (gr // 2, gc // 2), (0, 0), (0, min(2, gc - 1)),
                 (gr - 1, gc - 1), (min(1, gr - 1), gc // 2)]
        return list(dict.fromkeys(picks))

    # -- streamed ---------------------------------------------------------------------------
    def streamed_row(self, size: tuple[int, int], requested: BlockBatch, force_sample: int | None = None,
                     sample_layers: int | None = None) -> BenchRow:
        grid = self.grid(size)
        plan = self.plan(requested, grid)
        n, (rows, cols) = plan.block_batch, grid
        total_groups = math.ceil(rows / n) * math.ceil(cols / n)
        flops = flops_per_call(self.cfg, grid)
        est_call = self.estimator.call_seconds(grid, plan)
        self.progress(f"{size[0]}x{size[1]} streamed {plan.name}: ~{format_duration(est_call)} per call estimated")
        inp = self.inputs(size, plan)
        if force_sample is None and est_call <= self.budget:
            return self._streamed_full(size, grid, inp, plan, requested, flops, total_groups, est_call)
        est_group = est_call / total_groups
        layers = self.cfg.num_layers
        if sample_layers is not None:
            layers = max(1, min(sample_layers, self.cfg.num_layers))
        elif est_group * 2 > self.budget and self.cfg.num_layers > 2:
            per_layer = max(est_group / self.cfg.num_layers, 1e-9)
            layers = max(2, min(self.cfg.num_layers, int(self.budget / per_layer)))
        cond, cond_s = self._condition(inp)
        k_max = force_sample or self.max_sample_groups
        timings: list[GroupTiming] = []
        with self._measured() as mem:
            out = torch.empty(1, self.cfg.image_channels, *inp.net_in.shape[-2:], device=inp.net_in.device,
                              dtype=inp.net_in.dtype)
            start = self.clock()
            for gi, gj in self.sample_order(grid, n)[:k_max]:
                if timings and force_sample is None and self.clock() - start > self.budget:
                    break
                timings.append(self._time_group(inp, cond, grid, plan, gi, gj, layers, out))
            del out
        seconds = extrapolate_call_seconds(timings, rows * cols, self.cfg.num_layers, cond_s, self.tail)
        kv = stream_kv_bytes(self.cfg, grid, n, self.dtype)
        accounted = accounted_device_bytes(self.cfg, grid, n, plan.band, plan.state, self.dtype, self.weights)
        return self._row(size, grid, "streamed", plan, requested, seconds, est_call, flops, kv, "calculated",
                         accounted, plan.host_bytes, mem, extrapolated=True, sample_groups=len(timings),
                         total_groups=total_groups, sample_layers=layers, repeats=0)

    def _streamed_full(self, size: tuple[int, int], grid: tuple[int, int], inp: BenchInputs, plan: Plan,
                       requested: BlockBatch, flops: float, total_groups: int, est_call: float) -> BenchRow:
        runner = StreamedRunner(self.net, inp.lr, inp.vector, plan)
        times: list[float] = []
        with self._measured() as mem:
            start = self.clock()
            while len(times) < self.max_repeats and (not times or self.clock() - start + times[-1] <= self.budget):
                t0 = self.clock()
                runner(inp.net_in, inp.c_noise)
                sync(self.device)
                times.append(self.clock() - t0)
        st = runner.stats
        used = runner.plan or plan
        return self._row(size, grid, "streamed", used, requested, statistics.median(times), est_call, flops,
                         st.peak_kv_bytes, "measured", st.peak_device_bytes, st.host_bytes, mem,
                         extrapolated=False, sample_groups=total_groups, total_groups=total_groups,
                         sample_layers=self.cfg.num_layers, repeats=len(times), oom_retries=st.oom_retries)

    # -- whole image ------------------------------------------------------------------------
    def whole_row(self, size: tuple[int, int]) -> BenchRow:
        grid = self.grid(size)
        flops = flops_per_call(self.cfg, grid)
        need = whole_image_memory_bytes(self.cfg, grid, self.dtype, self.weights) - self.weights
        act = group_activation_bytes(self.cfg, *grid, self.dtype)
        if need > 0.9 * available_memory(self.device):
            self.progress(f"{size[0]}x{size[1]} whole: needs ~{need / 1e9:.1f} GB more than is free, estimated")
            return self._estimated(size, grid, flops, act, "memory")
        est_call = self.estimator.call_seconds(grid, max(grid))  # the whole image as one group
        per_layer = est_call / self.cfg.num_layers
        if est_call > self.budget and per_layer * 2 > self.budget:
            self.progress(f"{size[0]}x{size[1]} whole: ~{format_duration(est_call)} per call, over the time "
                          "budget, estimated")
            return self._estimated(size, grid, flops, act, "time")
        layers = self.cfg.num_layers
        if est_call > self.budget:
            layers = max(2, min(self.cfg.num_layers, int(self.budget / per_layer)))
        inp = random_inputs(self.cfg, size, self.dtype, self.device)
        try:
            if layers == self.cfg.num_layers:
                runner = WholeImageRunner(self.net, inp.lr, inp.vector)
                with self._measured() as mem:
                    start = self.clock()
                    runner(inp.net_in, inp.c_noise)
                    sync(self.device)
                    seconds, extrapolated = self.clock() - start, False
                accounted = runner.stats.peak_device_bytes
            else:
                with self._measured() as mem:
                    cond, cond_s = self._condition(inp)
                    rows, cols = grid

                    def run() -> None:
                        self.net.run_blocks(inp.net_in, cond, range(rows), range(cols), WholeImage(), inp.lr)

                    with inference():
                        t = time_group(self.net, run, rows * cols, self.device, self.clock, layers)
                seconds = extrapolate_call_seconds([t], t.blocks, self.cfg.num_layers, cond_s, self.tail)
                extrapolated, accounted = True, self.weights + act + io_bytes(*size)
        except OutOfMemoryError:
            release_cache(self.device)
            return self._estimated(size, grid, flops, act, "memory")
        return self._row(size, grid, "whole", None, "-", seconds, est_call, flops, 0, "none", accounted, 0, mem,
                         extrapolated=extrapolated, sample_groups=1, sample_layers=layers, repeats=1,
                         total_groups=1, oom_retries=0)

    def _estimated(self, size: tuple[int, int], grid: tuple[int, int], flops: float, act: int,
                   reason: str) -> BenchRow:
        io = io_bytes(*size)
        total = self.weights + act + io
        return BenchRow(size, grid, "whole", None, "-", "-", dtype_name(self.dtype), None, None, self.nfe, None,
                        total, "analytic", total, 0, None, self.weights, 0, "none", act, io, flops, None, None,
                        estimated=True, estimate_reason=reason, extrapolated=False, sample_groups=0,
                        total_groups=1, sample_layers=0, repeats=0)

    # -- assembling a row -------------------------------------------------------------------
    def _row(self, size: tuple[int, int], grid: tuple[int, int], path: str, plan: Plan | None,
             requested: BlockBatch, seconds: float, est_call: float, flops: float, kv: int, kv_source: str,
             accounted: int, host: int, mem: dict[str, int | None], **kw: Any) -> BenchRow:
        n = None if plan is None else plan.block_batch
        act = group_activation_bytes(self.cfg, *(grid if n is None else (min(n, grid[0]), min(n, grid[1]))),
                                     self.dtype)
        cuda_peak = mem["cuda"]
        tflops = flops / seconds / 1e12 if seconds > 0 else None
        pct = 100 * tflops / self.peak_tflops if tflops is not None and self.peak_tflops else None
        return BenchRow(size, grid, path, n, str(requested), "-" if plan is None else plan.name,
                        dtype_name(self.dtype), seconds, est_call, self.nfe, seconds * self.nfe,
                        cuda_peak if cuda_peak is not None else accounted,
                        "cuda_max_allocated" if cuda_peak is not None else "accounting",
                        None if plan is None else plan.device_bytes, host, mem["rss"], self.weights, kv, kv_source,
                        act, io_bytes(*size), flops, tflops, pct, estimated=False, estimate_reason=None, **kw)


def _sampler_nfe(sampler: str, steps: int) -> int:
    from infdit_cli.samplers import SamplerOptions, get_sampler

    return get_sampler(sampler, SamplerOptions()).nfe(steps)


def _prepare_model(model: InfDiT | ModelConfig | str, dtype: torch.dtype, device: torch.device,
                   source: str | None) -> tuple[InfDiT, dict[str, Any]]:
    if isinstance(model, InfDiT):
        first = next(model.parameters())
        if first.dtype != dtype or first.device.type != device.type or \
                (device.index is not None and first.device.index != device.index):
            model = model.to(device=device, dtype=dtype)  # (a no-op conversion would still swap every tensor)
        net = model.eval()
        name, random = source or "model", False
    else:
        config = preset(model) if isinstance(model, str) else model
        name = model if isinstance(model, str) else "custom config"
        net, random = random_model(config, dtype, device), True
    cfg = net.config
    info = {"name": name, "parameters": net.num_parameters(), "random_weights": random,
            "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "num_heads": cfg.num_heads,
            "vector_dim": cfg.vector_dim, "cross_lr": cfg.cross_lr}
    if random:
        info["note"] = "random weights (timing only: time and memory do not depend on the values)"
    return net, info


def run_bench(
    model: InfDiT | ModelConfig | str,
    resolutions: Sequence[tuple[int, int]] | tuple[int, int],
    block_batches: Sequence[BlockBatch] = ("auto",),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    steps: int = RELEASED.steps,
    sampler: str = RELEASED.sampler,
    include_whole: bool = True,
    time_budget_s: float = 60.0,
    *,
    source: str | None = None,
    clock: Clock = time.perf_counter,
    progress: Callable[[str], None] | None = None,
    max_sample_groups: int = 4,
    measure_peak: bool = True,
    force_sample: int | None = None,
    sample_layers: int | None = None,
    max_repeats: int = 3,
    state: str | None = None,
    compile: bool = False,
) -> BenchReport:
    """Time one network call per (resolution, block batch) on random inputs, plus the whole-image path.

    model: a loaded InfDiT, or a preset name / config (random weights, clearly labelled).
    time_budget_s: timing seconds per row; slower calls are extrapolated from sampled groups
    (and, if one group is still too slow, from its first layers). force_sample / sample_layers
    force that extrapolation (tests). Full calls are repeated up to max_repeats times (median).
    state: "device" / "host" forces where the image-sized state lives (default: planned).
    compile: torch.compile the layers first (their compile time is paid in the warm-up).
    """
    device = torch.device(device)
    if compile:
        reason = compile_unavailable(device.type)
        if reason:
            raise BenchError(f"--compile is not available here: {reason}")
    if isinstance(resolutions, tuple) and len(resolutions) == 2 and all(isinstance(v, int) for v in resolutions):
        resolutions = [resolutions]  # type: ignore[list-item]
    sizes: list[tuple[int, int]] = list(resolutions)  # type: ignore[arg-type]
    if not sizes:
        raise BenchError("no resolution to benchmark")
    if time_budget_s <= 0:
        raise BenchError("the time budget must be positive")
    say = progress or (lambda _m: None)
    nfe = _sampler_nfe(sampler, steps)
    machine = machine_info(device, measure_peak)
    say("building the model")
    net, model_info = _prepare_model(model, dtype, device, source)
    if compile:
        net.compile_layers()
        model_info["compiled"] = True
    bench = _Bench(net, device, nfe, time_budget_s, clock, say, machine.matmul_peak_tflops, max_sample_groups,
                   max_repeats, state)
    for size in sizes:
        bench.grid(size)  # reject bad sizes before any timing
    say("warming up (calibrating the time estimate)")
    calibration = bench.estimator.calibration
    rows: list[BenchRow] = []
    for size in sizes:
        for requested in block_batches:
            rows.append(bench.streamed_row(size, requested, force_sample, sample_layers))
        if include_whole:
            rows.append(bench.whole_row(size))
    settings = {"steps": steps, "sampler": sampler, "nfe": nfe, "time_budget_s": time_budget_s,
                "sigma": BENCH_SIGMA, "dtype": dtype_name(dtype), "compile": compile,
                "calibration": {"flops_per_s": calibration.speed.flops_per_s,
                                "group_seconds": calibration.speed.group_seconds,
                                "timed_groups": [{"blocks": g, "seconds": t} for g, t in calibration.speed.measured],
                                "warmup_seconds": calibration.warmup_seconds}}
    return BenchReport(machine, model_info, settings, rows)
