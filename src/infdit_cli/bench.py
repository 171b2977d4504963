"""`infdit bench`: seconds per network call (NFE), memory and FLOP rate of both UniBA paths.

A call too slow to time in full is *extrapolated*, which is sound because the work is regular:
every n×n group runs the same layers on the same shapes (time is linear in the number of blocks),
and inside a group every layer after layer 0 costs the same. A path too big to run is *estimated*
analytically (`whole_image_memory_bytes`). Rows say which of the three they are.
Memory never needs extrapolating: the KV band follows from the grid (`stream_kv_bytes`) and the
activations from the group size (`group_activation_bytes`); tests check both against measurements.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from infdit_cli.config import ModelConfig, preset
from infdit_cli.engine.memory import (
    available_memory,
    estimate_memory,
    group_activation_bytes,
    io_bytes,
    meminfo_bytes,
    plan_block_batch,
    stream_kv_bytes,
    whole_image_memory_bytes,
)
from infdit_cli.engine.runner import StreamedRunner, WholeImageRunner, flops_per_call
from infdit_cli.engine.stream import StreamNeighbourhood
from infdit_cli.model.network import Conditioning, InfDiT
from infdit_cli.model.uniba import WholeImage

Clock = Callable[[], float]
BlockBatch = int | str  # an int n, or "auto" (what the upscaler's memory planner would pick)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BENCH_SIGMA = 1.5  # the noise level of the reference GPU measurements; time does not depend on it


class BenchError(ValueError):
    """Bench settings that cannot be measured (one line for the user)."""


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def _elt(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def parse_resolution(text: str) -> tuple[int, int]:
    """'4096' -> (4096, 4096); '2048x1024' -> (2048, 1024) as (width, height)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BenchError(f"invalid resolution {text!r} (use e.g. 4096 or 2048x1024)") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise BenchError(f"invalid resolution {text!r} (use e.g. 4096 or 2048x1024)")
    return (values[0], values[-1])


def parse_block_batch(text: str) -> BlockBatch:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise BenchError(f"invalid block batch {text!r} (use a positive integer or auto)") from None
    if n < 1:
        raise BenchError(f"block batch must be at least 1 (got {n})")
    return n


# -- the machine -------------------------------------------------------------------------------
@dataclass
class MachineInfo:
    """What the numbers were measured on; bench results are meaningless without it."""

    cpu_model: str
    cpu_cores: int
    torch_threads: int
    torch_version: str
    device: str  # "cpu", "cuda:0", ...
    device_name: str
    total_memory_bytes: int  # device memory on CUDA, RAM otherwise
    cuda_version: str | None = None
    matmul_peak_tflops: float | None = None  # CUDA: measured bf16 8192³ matmul
    load_average: float | None = None  # 1-min load when the bench started (other jobs skew CPU timings)
    os_platform: str = field(default_factory=platform.platform)


def cpu_model() -> str:
    """The CPU's marketing name (with family/model where the hypervisor hides the full name)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name") or platform.processor() or platform.machine()
    if len(name.split()) <= 2 and "cpu family" in info:  # e.g. a KVM guest reporting just "AMD EPYC"
        name += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return name


def _ram_total() -> int:
    return meminfo_bytes("MemTotal") or 0


def matmul_peak_tflops(device: torch.device, size: int = 8192, reps: int = 20) -> float:
    """Measured bf16 size³ matmul rate after warm-up: the practical peak the % column divides by."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e12


def machine_info(device: torch.device, measure_peak: bool = True) -> MachineInfo:
    cpu = cpu_model()
    info = MachineInfo(cpu_model=cpu, cpu_cores=os.cpu_count() or 1, torch_threads=torch.get_num_threads(),
                       torch_version=torch.__version__, device=device.type, device_name=cpu,
                       total_memory_bytes=_ram_total(),
                       load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        info.device, info.device_name, info.total_memory_bytes = f"cuda:{index}", props.name, props.total_memory
        info.cuda_version = torch.version.cuda
        info.matmul_peak_tflops = matmul_peak_tflops(device) if measure_peak else None
    return info


def machine_slug(machine: MachineInfo) -> str:
    """'nvidia-h200', 'amd-epyc-2c': a file-name-safe label for result files."""
    if machine.device.startswith("cuda"):
        base = machine.device_name
    else:
        base = f"{machine.cpu_model.split('(')[0]} {machine.cpu_cores}c"
    keep = "".join(ch if ch.isalnum() else "-" for ch in base.lower())
    return "-".join(p for p in keep.split("-") if p) or "machine"


# -- models ------------------------------------------------------------------------------------
def timing_model(config: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int = 0) -> InfDiT:
    """A model with cheap finite weights: built on `meta`, allocated once, filled from a small pool.

    Time and memory do not depend on the values, and `init_random` of the 754 M-parameter x4
    preset takes minutes on a CPU; this takes seconds. Matrices get a 1/sqrt(fan_in) scale so
    activations stay finite (NaN or denormals would slow CPU kernels down).
    """
    with torch.device("meta"):
        net = InfDiT(config)
    net = net.to(dtype).to_empty(device=device)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 20, generator=gen).to(device=device, dtype=dtype)
    with torch.no_grad():
        for name, p in net.named_parameters():
            flat = p.view(-1)
            for start in range(0, flat.numel(), pool.numel()):
                chunk = flat[start:start + pool.numel()]
                chunk.copy_(pool[: chunk.numel()])
            if p.dim() >= 2:
                p.mul_(0.5 if name.endswith(("q_pos", "k_pos", "block_pos")) else 1 / math.sqrt(math.prod(p.shape[1:])))
            elif name.endswith("weight"):
                p.mul_(0.1).add_(1)  # LayerNorm scales near 1
            else:
                p.mul_(0.1)
    return net.eval()


# -- memory ------------------------------------------------------------------------------------
def weight_bytes(net: InfDiT) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())


class RssPeak:
    """Growth of the process's peak resident memory (VmHWM) over a region: a measured CPU figure.

    The kernel's peak counter is reset first (clear_refs 5) so earlier, bigger rows do not hide
    this one; the allocator may keep freed memory, so it is approximate (and a lower bound when the
    reset is not allowed).
    """

    def __init__(self) -> None:
        self.start = 0
        self.growth: int | None = None

    @staticmethod
    def _status() -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        key, value = line.split(":")
                        out[key] = int(value.split()[0]) * 1024
        except OSError:
            pass
        return out

    def __enter__(self) -> RssPeak:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.start = self._status().get("VmRSS", 0)
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = self._status().get("VmHWM")
        self.growth = None if hwm is None else max(0, hwm - self.start)


# -- timing ------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised from a forward hook to end a layer-limited timing run."""


def _sync(device: torch.device) -> None:
    """Wait for queued device work, so the clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class LayerClock:
    """Per-layer timestamps from forward hooks; with `limit`, stops the forward after that many layers."""

    def __init__(self, net: InfDiT, device: torch.device, clock: Clock, limit: int | None) -> None:
        self.net, self.device, self.clock, self.limit = net, device, clock, limit
        self.starts: dict[int, float] = {}
        self.ends: dict[int, float] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> LayerClock:
        if self.limit is None:
            return self
        for i, blk in enumerate(self.net.blocks):
            self._handles.append(blk.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(blk.register_forward_hook(self._post_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre_hook(self, i: int) -> Callable[..., None]:
        def hook(_module: Any, _args: Any) -> None:
            _sync(self.device)
            self.starts[i] = self.clock()
        return hook

    def _post_hook(self, i: int) -> Callable[..., None]:
        def hook(_module: Any, _args: Any, _out: Any) -> None:
            _sync(self.device)
            self.ends[i] = self.clock()
            if self.limit is not None and i + 1 >= self.limit:
                raise _StopForward
        return hook

    def layer_seconds(self) -> list[float]:
        return [self.ends[i] - self.starts[i] for i in sorted(self.ends)]


@dataclass(frozen=True)
class GroupTiming:
    """One timed group: the whole forward, or the embedding and the first few layers."""

    blocks: int
    seconds: float | None = None  # every layer ran
    embed_seconds: float = 0.0  # layer-limited: patch embedding, RoPE tables, LR windows
    layer_seconds: tuple[float, ...] = ()  # layer-limited: layers 0..L-1

    def projected_seconds(self, num_layers: int, tail_fraction: float = 0.0) -> float:
        """The group's full forward: layer 0 (with cross-LR) + the mean later layer × the rest.

        tail_fraction: the output head's cost as a fraction of one layer (it is never timed here).
        """
        if self.seconds is not None:
            return self.seconds
        if not self.layer_seconds:
            raise ValueError("a layer-limited timing needs at least one layer")
        later = self.layer_seconds[1:] or self.layer_seconds[:1]
        per_layer = statistics.fmean(later)
        return (self.embed_seconds + self.layer_seconds[0] + (num_layers - 1) * per_layer
                + tail_fraction * per_layer)


def extrapolate_call_seconds(timings: Sequence[GroupTiming], total_blocks: int, num_layers: int,
                             fixed_seconds: float = 0.0, tail_fraction: float = 0.0) -> float:
    """Seconds of a whole call from sampled groups: per-block rate × blocks, plus per-call work.

    Ragged edge groups are weighted by their block count, which is what their cost scales with.
    """
    blocks = sum(t.blocks for t in timings)
    if blocks == 0:
        raise ValueError("no sampled groups")
    seconds = sum(t.projected_seconds(num_layers, tail_fraction) for t in timings)
    return fixed_seconds + seconds / blocks * total_blocks


def layer_flops_per_token(config: ModelConfig) -> float:
    """One UniBA layer's FLOPs per token (the engine's own formula, differenced)."""
    base = replace(config, cross_lr=False)
    one = flops_per_call(replace(base, num_layers=1), (1, 1)) - flops_per_call(replace(base, num_layers=0), (1, 1))
    return one / config.block_tokens**2


def head_tail_fraction(config: ModelConfig) -> float:
    """Output head cost relative to one layer (about 0.2% for x4): added when layers are sampled."""
    head = 2 * config.hidden_size * config.patch_size**2 * config.image_channels
    return head / layer_flops_per_token(config)


# -- rows --------------------------------------------------------------------------------------
@dataclass
class BenchRow:
    """One measured (or extrapolated, or estimated) configuration. Bytes are bytes, times seconds."""

    resolution: tuple[int, int]  # output (width, height)
    grid: tuple[int, int]  # block rows, block columns
    path: str  # "streamed" | "whole"
    block_batch: int | None  # n actually used; None for the whole-image path
    block_batch_requested: str  # "auto", "4", or "-" (whole)
    dtype: str
    seconds_per_nfe: float | None  # None: not run (estimated)
    nfe: int
    projected_run_seconds: float | None  # seconds_per_nfe × the sampler's NFE
    peak_memory_bytes: int
    peak_memory_source: str  # "cuda_max_allocated" | "accounting" (weights+kv+activations+io) | "analytic"
    accounted_bytes: int  # engine accounting: weights + kv + activations + io
    weights_bytes: int
    kv_bytes: int  # the streamed KV band (0 for the whole path, whose K/V are activations)
    kv_source: str  # "measured" (engine peak over a full call) | "calculated" (stream_kv_bytes) | "none"
    activation_bytes: int  # group_activation_bytes of the group (or the whole image)
    io_bytes: int
    planner_estimate_bytes: int | None  # engine.memory.estimate_memory, what --block-batch auto trusts
    rss_peak_growth_bytes: int | None  # measured process VmHWM growth over the timed part (CPU)
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


# -- the bench ---------------------------------------------------------------------------------
@dataclass
class _Inputs:
    net_in: Tensor
    lr: Tensor | None
    vector: Tensor | None
    c_noise: Tensor


def random_inputs(config: ModelConfig, size: tuple[int, int], dtype: torch.dtype, device: torch.device,
                  seed: int = 0) -> _Inputs:
    """What the upscaler feeds the network: fp32 [noisy, LR-up] pixels, the LR (model dtype), CLIP."""
    w, h = size
    g = torch.Generator(device=device).manual_seed(seed)  # drawn where it is used: 16384² is 6 GB
    net_in = torch.randn(1, config.in_channels, h, w, generator=g, device=device)
    lr = None
    if config.cross_lr:
        lr = torch.randn(1, config.image_channels, h // config.sr_scale, w // config.sr_scale,
                         generator=g, device=device).to(dtype)
    vector = torch.randn(1, config.vector_dim, generator=g, device=device) if config.vector_dim else None
    c_noise = torch.full((1,), 0.25 * math.log(BENCH_SIGMA), device=device)
    return _Inputs(net_in, lr, vector, c_noise)


class _Bench:
    """Measures rows for one model on one device; `budget` is seconds of timing per row."""

    def __init__(self, net: InfDiT, device: torch.device, nfe: int, budget: float, clock: Clock,
                 progress: Callable[[str], None], peak_tflops: float | None, max_sample_groups: int,
                 max_repeats: int = 3) -> None:
        self.net, self.cfg, self.device = net, net.config, device
        self.dtype = next(net.parameters()).dtype
        self.nfe, self.budget, self.clock, self.progress = nfe, budget, clock, progress
        self.peak_tflops, self.max_sample_groups, self.max_repeats = peak_tflops, max_sample_groups, max_repeats
        self.weights = weight_bytes(net)
        self.params = net.num_parameters()
        self.tail = head_tail_fraction(self.cfg)
        self.seconds_per_flop: dict[tuple[int, int], float] = {}  # by resolution, from streamed rows
        self.warm_seconds_per_flop: float | None = None  # one block, from the warm-up (pessimistic)

    # -- helpers ----------------------------------------------------------------------------
    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        bs = self.cfg.block_size
        w, h = size
        if w % bs or h % bs:
            raise BenchError(f"resolution {w}x{h} is not a multiple of the {bs}-px block size")
        return h // bs, w // bs

    @contextmanager
    def _measured(self) -> Iterator[dict[str, int | None]]:
        """CUDA peak allocated (reset first) or the process RSS growth, over the block."""
        result: dict[str, int | None] = {"cuda": None, "rss": None}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        rss = RssPeak()
        with rss:
            yield result
        _sync(self.device)
        if self.device.type == "cuda":
            result["cuda"] = int(torch.cuda.max_memory_allocated(self.device))
        else:
            result["rss"] = rss.growth

    def _condition(self, inp: _Inputs) -> tuple[Conditioning, float]:
        _sync(self.device)
        start = self.clock()
        cond = self.net.condition(inp.c_noise, inp.vector)
        _sync(self.device)
        return cond, self.clock() - start

    def _primed(self, grid: tuple[int, int], n: int, gi: int, gj: int) -> StreamNeighbourhood:
        """A neighbourhood holding what group (gi, gj) reads, as if every earlier group had run.

        On CUDA the whole band is allocated (so the measured peak is the real one); on the CPU,
        whose memory figure is the accounting, one shared zero block stands in for every entry.
        """
        rows, cols = grid
        cfg = self.cfg
        nbh = StreamNeighbourhood(cfg.num_layers, cols)
        shape = (1, cfg.block_tokens**2, cfg.num_heads, cfg.head_dim)
        full = self.device.type == "cuda"
        shared = torch.zeros(shape, dtype=self.dtype, device=self.device)

        def block() -> Tensor:
            return torch.zeros(shape, dtype=self.dtype, device=self.device) if full else shared

        r = range(gi * n, min(rows, (gi + 1) * n))
        c0 = gj * n
        top_cols = range(cols) if full else range(max(c0 - 1, 0), min(cols, c0 + n))
        for layer in range(cfg.num_layers):
            if gi > 0:
                for col in top_cols:
                    nbh.top[layer][col] = (block(), block())
                if gj > 0:
                    nbh.corner[layer] = (block(), block())
            if gj > 0:
                left = torch.zeros((1, len(r), *shape[1:]), dtype=self.dtype, device=self.device)
                nbh.left[layer] = (left, left.clone() if full else left)
        return nbh

    def _time_group(self, inp: _Inputs, cond: Conditioning, grid: tuple[int, int], n: int, gi: int, gj: int,
                    layers: int, out: Tensor | None = None) -> GroupTiming:
        """Run group (gi, gj) of the real grid through the engine, through `layers` layers."""
        bs = self.cfg.block_size
        group = StreamedRunner.groups(grid, n)[gi * math.ceil(grid[1] / n) + gj]
        r, c = group.rows, group.cols
        runner = StreamedRunner(self.net, inp.lr, inp.vector, n)
        nbh = self._primed(grid, n, gi, gj)
        limit = layers if layers < self.cfg.num_layers else None
        _sync(self.device)
        start = self.clock()
        with LayerClock(self.net, self.device, self.clock, limit) as lc:
            try:
                f = runner.run_group(inp.net_in, cond, nbh, group)
                if out is not None:
                    out[..., r.start * bs:r.stop * bs, c.start * bs:c.stop * bs] = f
            except _StopForward:
                pass
        _sync(self.device)
        end = self.clock()
        blocks = len(r) * len(c)
        if limit is None:
            return GroupTiming(blocks, seconds=end - start)
        return GroupTiming(blocks, embed_seconds=lc.starts[0] - start, layer_seconds=tuple(lc.layer_seconds()))

    def warm_up(self) -> None:
        """First-call costs (allocator, kernel choice, lazy init) kept out of every timing: one block."""
        bs = self.cfg.block_size
        inp = random_inputs(self.cfg, (bs, bs), self.dtype, self.device)
        cond, _ = self._condition(inp)
        with torch.no_grad():
            for _ in range(2):  # the second one is free of one-off initialisation
                t = self._time_group(inp, cond, (1, 1), 1, 0, 0, layers=1)
        per_block = t.projected_seconds(self.cfg.num_layers, self.tail)
        self.warm_seconds_per_flop = per_block / flops_per_call(self.cfg, (1, 1))
        if per_block * 4 < 2.0:  # cheap: also a full streamed 2×2 call
            inp = random_inputs(self.cfg, (2 * bs, 2 * bs), self.dtype, self.device)
            StreamedRunner(self.net, inp.lr, inp.vector, 2)(inp.net_in, inp.c_noise)

    def resolve_n(self, requested: BlockBatch, grid: tuple[int, int]) -> int:
        if requested == "auto":
            return plan_block_batch(self.cfg, grid, self.dtype, self.device, num_parameters=self.params).block_batch
        return max(1, min(int(requested), max(grid)))

    @staticmethod
    def sample_order(grid: tuple[int, int], n: int) -> list[tuple[int, int]]:
        """Groups to time, most representative first: interior, then the first row, the middle, the end."""
        gr, gc = math.ceil(grid[0] / n), math.ceil(grid[1] / n)
        picks = [(min(1, gr - 1), min(1, gc - 1)), (gr // 2, gc // 2), (0, 0), (0, min(2, gc - 1)),
                 (gr - 1, gc - 1), (min(1, gr - 1), gc // 2)]
        return list(dict.fromkeys(picks))

    # -- streamed ---------------------------------------------------------------------------
    def streamed_row(self, size: tuple[int, int], inp: _Inputs, requested: BlockBatch,
                     force_sample: int | None = None, sample_layers: int | None = None) -> BenchRow:
        grid = self.grid(size)
        n = self.resolve_n(requested, grid)
        rows, cols = grid
        total_groups = math.ceil(rows / n) * math.ceil(cols / n)
        flops = flops_per_call(self.cfg, grid)
        cond, cond_s = self._condition(inp)
        first = self.sample_order(grid, n)[0]
        with torch.no_grad():  # shape warm-up on layer 0 of one group: also a cost estimate
            warm = self._time_group(inp, cond, grid, n, *first, layers=1)
        g_rows, g_cols = min(n, rows), min(n, cols)
        per_block = warm.projected_seconds(self.cfg.num_layers, self.tail) / warm.blocks
        est_call = cond_s + per_block * rows * cols
        self.progress(f"{size[0]}x{size[1]} streamed n={n}: ~{est_call:.3g} s per call estimated")
        if force_sample is None and est_call <= self.budget:
            return self._streamed_full(size, grid, inp, n, requested, flops, total_groups)
        est_group = per_block * g_rows * g_cols
        layers = self.cfg.num_layers
        if sample_layers is not None:
            layers = max(1, min(sample_layers, self.cfg.num_layers))
        elif est_group * 2 > self.budget and self.cfg.num_layers > 2:
            per_layer = max(warm.layer_seconds[0], 1e-9)  # layer 0 (with cross-LR): pessimistic
            layers = max(2, min(self.cfg.num_layers, int(self.budget / per_layer)))
        k_max = force_sample or self.max_sample_groups
        timings: list[GroupTiming] = []
        with self._measured() as mem, torch.no_grad():
            out = torch.empty(1, self.cfg.image_channels, *inp.net_in.shape[-2:], device=self.device,
                              dtype=inp.net_in.dtype)
            start = self.clock()
            for gi, gj in self.sample_order(grid, n)[:k_max]:
                if timings and force_sample is None and self.clock() - start > self.budget:
                    break
                timings.append(self._time_group(inp, cond, grid, n, gi, gj, layers, out))
            del out
        seconds = extrapolate_call_seconds(timings, rows * cols, self.cfg.num_layers, cond_s, self.tail)
        kv = stream_kv_bytes(self.cfg, grid, n, self.dtype)
        return self._row(size, grid, "streamed", n, requested, seconds, flops, kv, "calculated",
                         self._activations(n, grid), mem, extrapolated=True, sample_groups=len(timings),
                         total_groups=total_groups, sample_layers=layers, repeats=0)

    def _streamed_full(self, size: tuple[int, int], grid: tuple[int, int], inp: _Inputs, n: int,
                       requested: BlockBatch, flops: float, total_groups: int) -> BenchRow:
        runner = StreamedRunner(self.net, inp.lr, inp.vector, n)
        times: list[float] = []
        with self._measured() as mem:
            start = self.clock()
            while len(times) < self.max_repeats and (not times or self.clock() - start + times[-1] <= self.budget):
                t0 = self.clock()
                runner(inp.net_in, inp.c_noise)
                _sync(self.device)
                times.append(self.clock() - t0)
        st = runner.stats
        return self._row(size, grid, "streamed", st.block_batch, requested, statistics.median(times), flops,
                         st.peak_kv_bytes, "measured", self._activations(st.block_batch, grid), mem,
                         extrapolated=False, sample_groups=total_groups, total_groups=total_groups,
                         sample_layers=self.cfg.num_layers, repeats=len(times), oom_retries=st.oom_retries)

    def _activations(self, n: int, grid: tuple[int, int]) -> int:
        return group_activation_bytes(self.cfg, min(n, grid[0]), min(n, grid[1]), self.dtype)

    # -- whole image ------------------------------------------------------------------------
    def whole_row(self, size: tuple[int, int], inp: _Inputs) -> BenchRow:
        grid = self.grid(size)
        flops = flops_per_call(self.cfg, grid)
        need = whole_image_memory_bytes(self.cfg, grid, self.dtype, self.weights) - self.weights
        act = group_activation_bytes(self.cfg, *grid, self.dtype)
        common = dict(total_groups=1, oom_retries=0)
        if need > 0.9 * available_memory(self.device):
            self.progress(f"{size[0]}x{size[1]} whole: needs ~{need / 1e9:.1f} GB more than is free, estimated")
            return self._estimated(size, grid, flops, act, "memory")
        rate = (self.seconds_per_flop.get(size) or min(self.seconds_per_flop.values(), default=None)
                or self.warm_seconds_per_flop)
        est_call = None if rate is None else rate * flops
        per_layer = None if est_call is None else est_call / self.cfg.num_layers
        if est_call is not None and est_call > self.budget and (per_layer or 0) * 2 > self.budget:
            self.progress(f"{size[0]}x{size[1]} whole: ~{est_call:.3g} s per call, over the time budget, estimated")
            return self._estimated(size, grid, flops, act, "time")
        layers = self.cfg.num_layers
        if est_call is not None and est_call > self.budget and per_layer:
            layers = max(2, min(self.cfg.num_layers, int(self.budget / per_layer)))
        try:
            if layers == self.cfg.num_layers:
                runner = WholeImageRunner(self.net, inp.lr, inp.vector)
                with self._measured() as mem:
                    start = self.clock()
                    runner(inp.net_in, inp.c_noise)
                    _sync(self.device)
                    seconds, extrapolated = self.clock() - start, False
            else:
                with self._measured() as mem, torch.no_grad():
                    cond, cond_s = self._condition(inp)
                    t = self._time_whole_layers(inp, cond, grid, layers)
                seconds = extrapolate_call_seconds([t], t.blocks, self.cfg.num_layers, cond_s, self.tail)
                extrapolated = True
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return self._estimated(size, grid, flops, act, "memory")
        return self._row(size, grid, "whole", None, "-", seconds, flops, 0, "none", act, mem,
                         extrapolated=extrapolated, sample_groups=1, sample_layers=layers, repeats=1, **common)

    def _time_whole_layers(self, inp: _Inputs, cond: Conditioning, grid: tuple[int, int],
                           layers: int) -> GroupTiming:
        rows, cols = grid
        _sync(self.device)
        start = self.clock()
        with LayerClock(self.net, self.device, self.clock, layers) as lc:
            try:
                self.net.run_blocks(inp.net_in, cond, range(rows), range(cols), WholeImage(), inp.lr)
            except _StopForward:
                pass
        return GroupTiming(rows * cols, embed_seconds=lc.starts[0] - start, layer_seconds=tuple(lc.layer_seconds()))

    def _estimated(self, size: tuple[int, int], grid: tuple[int, int], flops: float, act: int,
                   reason: str) -> BenchRow:
        io = io_bytes(*size)
        total = self.weights + act + io
        return BenchRow(size, grid, "whole", None, "-", dtype_name(self.dtype), None, self.nfe, None, total,
                        "analytic", total, self.weights, 0, "none", act, io, None, None, flops, None, None,
                        estimated=True, estimate_reason=reason, extrapolated=False, sample_groups=0,
                        total_groups=1, sample_layers=0, repeats=0)

    # -- assembling a row -------------------------------------------------------------------
    def _row(self, size: tuple[int, int], grid: tuple[int, int], path: str, n: int | None, requested: BlockBatch,
             seconds: float, flops: float, kv: int, kv_source: str, act: int, mem: dict[str, int | None],
             **kw: Any) -> BenchRow:
        io = io_bytes(*size)
        accounted = self.weights + kv + act + io
        cuda_peak = mem["cuda"]
        tflops = flops / seconds / 1e12 if seconds > 0 else None
        pct = 100 * tflops / self.peak_tflops if tflops is not None and self.peak_tflops else None
        planner = None
        if n is not None:
            planner = estimate_memory(self.cfg, grid, n, self.dtype, self.device.type, self.params)
            if seconds > 0:
                self.seconds_per_flop[size] = min(self.seconds_per_flop.get(size, math.inf), seconds / flops)
        return BenchRow(size, grid, path, n, str(requested), dtype_name(self.dtype), seconds, self.nfe,
                        seconds * self.nfe, cuda_peak if cuda_peak is not None else accounted,
                        "cuda_max_allocated" if cuda_peak is not None else "accounting", accounted, self.weights,
                        kv, kv_source, act, io, planner, mem["rss"], flops, tflops, pct,
                        estimated=False, estimate_reason=None, **kw)


def _sampler_nfe(sampler: str, steps: int) -> int:
    from infdit_cli.samplers import SamplerOptions, get_sampler

    return get_sampler(sampler, SamplerOptions()).nfe(steps)


def _prepare_model(model: InfDiT | ModelConfig | str, dtype: torch.dtype, device: torch.device,
                   source: str | None) -> tuple[InfDiT, dict[str, Any]]:
    if isinstance(model, InfDiT):
        net = model.to(device=device, dtype=dtype).eval()
        name, random = source or "model", False
    else:
        config = preset(model) if isinstance(model, str) else model
        name = model if isinstance(model, str) else "custom config"
        net, random = timing_model(config, dtype, device), True
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
    steps: int = 20,
    sampler: str = "heun-edm",
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
) -> BenchReport:
    """Time one network call per (resolution, block batch) on random inputs, plus the whole-image path.

    model: a loaded InfDiT, or a preset name / config (random weights, clearly labelled).
    time_budget_s: timing seconds per row; slower calls are extrapolated from sampled groups
    (and, if one group is still too slow, from its first layers). force_sample / sample_layers
    force that extrapolation (tests). Full calls are repeated up to max_repeats times (median).
    """
    device = torch.device(device)
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
    bench = _Bench(net, device, nfe, time_budget_s, clock, say, machine.matmul_peak_tflops, max_sample_groups,
                   max_repeats)
    for size in sizes:
        bench.grid(size)  # reject bad sizes before any timing
    say("warming up")
    bench.warm_up()
    rows: list[BenchRow] = []
    for size in sizes:
        inp = random_inputs(net.config, size, dtype, device)
        for requested in block_batches:
            rows.append(bench.streamed_row(size, inp, requested, force_sample, sample_layers))
        if include_whole:
            rows.append(bench.whole_row(size, inp))
        del inp
    settings = {"steps": steps, "sampler": sampler, "nfe": nfe, "time_budget_s": time_budget_s,
                "sigma": BENCH_SIGMA, "dtype": dtype_name(dtype)}
    return BenchReport(machine, model_info, settings, rows)
