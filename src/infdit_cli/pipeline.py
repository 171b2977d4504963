"""One upscale end to end, as a function a Python user can call (the CLI is a thin shell over it).

LR pixels in [0, 1] -> pad to whole blocks (reflect; the model's block offset above and left) ->
CLIP embedding (+ prompt edit) -> bicubic LR + per-block noise -> sampler over the EDM denoiser,
streamed block groups -> crop.
×2 runs the ×4 model with a half-size LR for CLIP and cross attention (as released); ×8 and
×16 are repeated passes.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from infdit_cli.banded import BandedUpscale, is_banded
from infdit_cli.clip import ClipEncoder
from infdit_cli.device import inferring, working_on
from infdit_cli.engine import (
    EngineStats,
    Plan,
    SpeedModel,
    StreamedRunner,
    budget_bytes,
    plan_placement,
)
from infdit_cli.engine.bands import HostPlan, host_budget, plan_host
from infdit_cli.engine.measure import RssPeak, reset_device_peak
from infdit_cli.engine.memory import state_bytes
from infdit_cli.engine.region import SampleHook, sample_region
from infdit_cli.errors import InfditError
from infdit_cli.model import InfDiT
from infdit_cli.model.network import conditioning_vector
from infdit_cli.preprocess import bicubic_resize, crop, pad_to_multiple, upsample_lr
from infdit_cli.samplers import RELEASED, SamplerOptions, Sampling, get_sampler, karras_sigmas

SUPPORTED_SCALES = (2, 4, 8, 16)
PASSES = {2: (2,), 4: (4,), 8: (4, 2), 16: (4, 4)}
# How to get a model that takes text prompts, for the error a prompt on a CLIP-free model gets.
NO_CLIP_PROMPT = ("this model is not conditioned on CLIP, so it cannot take text prompts; use a CLIP model "
                  "(convert the released Inf-DiT weights with `infdit convert`, see the README) or drop "
                  "--prompt-pos/--prompt-neg")


class UpscaleError(InfditError):
    """Settings that cannot produce an image (one line for the user)."""


@dataclass(frozen=True)
class UpscaleOptions:
    """How to upscale. The sampling fields (sampler … churn) left None are the model's own sampling
    (a one-step model records one Euler step at its σ), else the released Inf-DiT's (`samplers.RELEASED`):
    `Upscaler.upscale` and `Upscaler.plan` fill them in (`Upscaler.options`)."""

    scale: int = 4
    steps: int | None = None
    sampler: str | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    churn: float | None = None
    start_noise: float | None = None  # the start's noise, in units of σ_max (see `Sampling.start_noise`)
    seed: int = 0
    block_batch: int | None = None  # None ("auto"): the placement planner picks the fastest n that fits
    max_memory: int | None = None
    state: str | None = None  # where the sampler's image-sized state lives: "device", "host"; None: planned
    # Host RAM for the image-sized state (None: from the available RAM): past it a pass runs out of core,
    # band after band (banded.py), its KV edges in `scratch` (None: the system's temporary folder).
    max_host_memory: int | None = None
    scratch: Path | None = None
    prompt_pos: str | None = None
    prompt_neg: str | None = None
    prompt_scale: float = 2.0
    sampler_dtype: torch.dtype = torch.float32
    # Degradation strength for models with a denoise input: 0 keeps every detail of a clean input,
    # 1 removes heavy JPEG/noise (`degrade.auto_strength(path)` estimates it from a file).
    denoise: float = 0.0

    def validate(self) -> None:
        if self.scale not in SUPPORTED_SCALES:
            raise UpscaleError(f"unsupported scale {self.scale}; use one of {', '.join(map(str, SUPPORTED_SCALES))}")
        if self.steps is not None and self.steps < 1:
            raise UpscaleError(f"steps must be at least 1 (got {self.steps})")
        low = self.sigma_min if self.sigma_min is not None else math.ulp(0.0)
        high = self.sigma_max if self.sigma_max is not None else math.inf
        if not 0 < low < high:
            raise UpscaleError("need 0 < sigma-min < sigma-max")
        if self.start_noise is not None and not 0 <= self.start_noise < math.inf:
            raise UpscaleError(f"start noise must be 0 or more (got {self.start_noise:g})")
        if self.block_batch is not None and self.block_batch < 1:
            raise UpscaleError("block batch must be at least 1")
        if self.state not in (None, "device", "host"):
            raise UpscaleError(f"state placement must be device or host (got {self.state!r})")
        if not 0.0 <= self.denoise <= 1.0:
            raise UpscaleError(f"denoise strength must be within 0..1 (got {self.denoise:g})")


@dataclass
class PassPlan:
    factor: int
    lr_size: tuple[int, int]  # (h, w) of this pass's input
    grid: tuple[int, int]  # block rows, cols of the padded output
    memory: Plan  # the placement: n, where the KV band and the sampler state live, planned bytes
    nfe: int
    host: HostPlan | None = None  # in RAM or band after band (out of core); None: in RAM, unplanned

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass
class UpscaleResult:
    image: Tensor | None  # [1, 3, H·s, W·s] in [0, 1], float32, CPU (None: a split image's rank other than 0)
    passes: list[PassPlan]
    stats: list[EngineStats] = field(default_factory=list)
    seconds: float = 0.0
    rss_growth_bytes: int | None = None  # measured growth of the process's peak resident memory


@dataclass
class PassInputs:
    """One pass's sampling inputs: the concat LR, the cross-attention LR, CLIP vector, schedule, seed."""

    lr_pad: Tensor  # [1, 3, h, w] the LR in [-1, 1], padded so that h·factor and w·factor are whole blocks
    factor: int
    model_lr: Tensor | None  # what the nearby-LR cross attention reads (None: model without it)
    vector: Tensor | None  # CLIP image embedding (None: model without CLIP)
    sigmas: Tensor  # the schedule, on the host (the sampler reads its values and moves it beside x)
    seed: int  # the pass's noise seed (block noise is drawn from (seed, step, block row, block column))
    crop: tuple[int, int]  # (h, w) of the real image inside the padded output
    lead: int  # output pixels of padding above and left of the real image (the model's block_offset × factor)
    index: int  # pass number (×8 and ×16 run two)

    @functools.cached_property
    def lr_up(self) -> Tensor:
        """[1, 3, H, W] bicubic-upsampled padded LR in [-1, 1], the whole image (an out-of-core pass takes
        its bands' rows with `upsample_lr_rows` instead)."""
        return upsample_lr(self.lr_pad, self.factor)




SAMPLING_FIELDS = tuple(f.name for f in fields(Sampling))


def sampling_defaults(metadata: dict[str, str]) -> dict[str, object]:
    """A model's own sampling settings (metadata key "sampling", JSON), e.g. few steps for a small CPU model."""
    if "sampling" not in metadata:
        return {}
    try:
        data = json.loads(metadata["sampling"])
    except json.JSONDecodeError:
        raise UpscaleError("the model's 'sampling' metadata is not valid JSON") from None
    unknown = sorted(set(data) - set(SAMPLING_FIELDS))
    if unknown:
        raise UpscaleError(f"the model's sampling metadata has unknown field(s): {', '.join(unknown)}")
    return data


def training_objective(metadata: dict[str, str]) -> dict[str, object]:
    """How the model was trained (metadata key "objective", JSON: kind "edm" or "one-step", sigma...)."""
    try:
        data = json.loads(metadata.get("objective", "{}"))
    except json.JSONDecodeError:
        raise UpscaleError("the model's 'objective' metadata is not valid JSON") from None
    return data if isinstance(data, dict) else {}


class ColumnSplit(Protocol):
    """A pass spread over processes by block columns (distributed/split.py): this process samples one
    strip of the image's columns with a strip runner, then the strips are joined."""

    def strip_runner(self, upscaler: Upscaler, inputs: PassInputs, plan: PassPlan,
                     on_blocks: Callable[[int], None] | None) -> tuple[range, StreamedRunner]:
        """This process's block columns of the pass and the network call over them."""
        ...

    def join(self, strip: Tensor, plan: PassPlan, last: bool) -> Tensor | None:
        """The pass's whole output from every strip ([-1, 1], uncropped): on every process when a pass
        follows, else where the image is written (None elsewhere)."""
        ...


class Upscaler:
    """A loaded model (and CLIP when the model uses it) ready to upscale images."""

    def __init__(self, model: InfDiT, clip: ClipEncoder | None = None, device: torch.device | str = "cpu",
                 defaults: dict[str, object] | None = None, objective: dict[str, object] | None = None) -> None:
        self.model = model
        self.clip = clip
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.defaults = defaults or {}  # the model's recommended sampling settings
        self.objective = objective or {}  # how it was trained ("one-step" models know one sampling only)

    def sampling_warning(self, options: UpscaleOptions) -> str | None:
        """One line when a one-step model is asked to sample so that its output can differ from what it was
        trained for (it still runs). Settings that give the same image warn nothing: the same σ schedule
        and churn, and any sampler for one step (every sampler's last step to σ = 0 returns the denoised)."""
        if self.objective.get("kind") != "one-step":
            return None
        own, asked = self.options(), self.options(options)

        def schedule(o: UpscaleOptions) -> list[float]:
            return karras_sigmas(o.steps, o.sigma_min, o.sigma_max, o.rho).tolist()  # type: ignore[arg-type]

        ours, theirs = schedule(own), schedule(asked)  # float32: ρ may move σ by a rounding
        same = len(ours) == len(theirs) and asked.churn == own.churn and asked.start_noise == own.start_noise
        same = same and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(ours, theirs, strict=True))
        if same and (asked.sampler == own.sampler or asked.steps == 1):
            return None
        return (f"this model was trained for one {own.sampler} step at sigma {own.sigma_max:g} from the "
                f"bicubic start (a one-step residual upscaler); {asked.sampler}, {asked.steps} step(s), "
                f"sigma-max {asked.sigma_max:g} will likely look worse")

    def options(self, options: UpscaleOptions | None = None) -> UpscaleOptions:
        """`options` (default: all defaults) with every sampling field left None set: the model's own
        sampling, else the released Inf-DiT's. What `upscale` and `plan` run with."""
        options = options or UpscaleOptions()
        own = {name: getattr(options, name) for name in SAMPLING_FIELDS}
        for name, value in own.items():
            if value is None:
                own[name] = self.defaults.get(name, getattr(RELEASED, name))
        return replace(options, **own)

    @property
    def config(self):
        return self.model.config

    def plan(self, lr_size: tuple[int, int], options: UpscaleOptions, speed: SpeedModel | None = None
             ) -> list[PassPlan]:
        """Block grid, placement plan and network calls of every pass, before any compute.

        `speed`: a calibrated speed model (engine.estimate) to rank the plans; default: the device's.
        """
        options = self.options(options)
        options.validate()
        sampler = get_sampler(options.sampler, self._sampler_options(options))
        plans, (h, w) = [], lr_size
        bs, lead = self.config.block_size, self.config.block_offset  # lead: LR pixels padded above and left
        for factor in PASSES[options.scale]:
            grid = (math.ceil((h + lead) * factor / bs), math.ceil((w + lead) * factor / bs))
            memory = plan_placement(self.config, grid, self.dtype, self.device.type,
                                    budget_bytes(self.device, options.max_memory), self.model.num_parameters(),
                                    block_batch=options.block_batch, state=options.state, speed=speed)
            nfe = sampler.nfe(options.steps)
            host = plan_host(self.config, grid, memory.block_batch, nfe, self.dtype,
                             host_budget(self.device, memory, options.max_host_memory))
            if host.banded and memory.state == "host":  # the host holds a band's state, not the image's
                whole = state_bytes(grid[1] * bs, grid[0] * bs)
                memory = replace(memory, host_bytes=memory.host_bytes - whole + host.host_bytes)
            plans.append(PassPlan(factor, (h, w), grid, memory, nfe, host))
            h, w = h * factor, w * factor
        return plans

    def _sampler_options(self, options: UpscaleOptions) -> SamplerOptions:
        return SamplerOptions(s_churn=options.churn, arithmetic_dtype=options.sampler_dtype)

    def condition_vector(self, lr: Tensor, options: UpscaleOptions) -> Tensor | None:
        """The model's per-image vector: CLIP image embedding of the LR in [-1, 1] (with the optional
        text edit), then the denoise strength for models with that input."""
        strength = torch.full((1,), float(options.denoise), device=self.device)
        return conditioning_vector(self.config, self.clip_vector(lr, options), strength)

    def clip_vector(self, lr: Tensor, options: UpscaleOptions) -> Tensor | None:
        """CLIP image embedding of the LR in [-1, 1], with the optional text edit."""
        wants_prompt = bool(options.prompt_pos or options.prompt_neg)
        if not self.config.vector_dim:
            if wants_prompt:
                raise UpscaleError(NO_CLIP_PROMPT)
            return None
        if self.clip is None:
            raise UpscaleError("this model needs CLIP weights, but none were loaded")
        emb = self.clip.image_embedding(lr)
        if wants_prompt:
            emb = self.clip.prompt_edit(emb, options.prompt_pos, options.prompt_neg, options.prompt_scale)
        return emb.to(self.device)

    def upscale(
        self, image: Tensor, options: UpscaleOptions, on_blocks: Callable[[int], None] | None = None,
        plans: list[PassPlan] | None = None, sample: SampleHook | None = None, split: ColumnSplit | None = None,
    ) -> UpscaleResult:
        """image: [1, 3, h, w] in [0, 1]. on_blocks(n) is called as blocks finish (for progress).

        `plans` from an earlier `plan()` (e.g. the one a pre-flight line reported) are run as they are.
        `sample` replaces the plain `sampler.sample` call (e.g. checkpointed, resumable sampling).
        `split` spreads each pass's block columns over processes (`--split-image`).
        """
        options = self.options(options)
        options.validate()
        if plans is None:
            plans = self.plan(tuple(image.shape[-2:]), options)
        if is_banded(plans) and split is None and sample is None:  # out of core, gathered for the caller
            run = BandedUpscale(self, image, options, plans, on_blocks)
            whole = torch.cat(list(run), dim=-2)
            return UpscaleResult(whole, plans, run.stats, run.seconds, run.rss_growth_bytes)
        start = time.perf_counter()
        reset_device_peak(self.device)  # each image reports its own peak
        x: Tensor | None = image.float()
        stats = []
        with RssPeak() as rss:
            for index, plan in enumerate(plans):
                assert x is not None  # only the last pass of a split image ends without it
                x, st = self._one_pass(x, plan, options, index, on_blocks, sample, split, index == len(plans) - 1)
                stats.append(st)
        image_out = None if x is None else x.clamp(0, 1).cpu()
        return UpscaleResult(image_out, plans, stats, time.perf_counter() - start, rss.growth)

    @inferring
    def pass_inputs(self, image01: Tensor, plan: PassPlan, options: UpscaleOptions, index: int) -> PassInputs:
        """What one pass's sampling starts from, before any network call (shared with split-image runs).

        The image-sized tensors live where the plan keeps the sampler state (host: flat device memory).
        """
        f, cfg = plan.factor, self.config
        dev = self.state_device(plan)
        lr = image01.to(dev) * 2 - 1
        lr_pad, (h, w) = pad_to_multiple(lr, cfg.block_size // f, cfg.block_offset)
        if f == cfg.sr_scale:
            model_lr, clip_lr = lr_pad, lr
        else:  # ×2 with the ×4 model: CLIP and cross attention see the LR at half size
            ratio = cfg.sr_scale // f
            model_lr = bicubic_resize(lr_pad, (lr_pad.shape[-2] // ratio, lr_pad.shape[-1] // ratio))
            clip_lr = bicubic_resize(lr, (max(1, h // ratio), max(1, w // ratio)))
        with working_on(self.device):  # CLIP runs beside the model
            vector = self.condition_vector(clip_lr.to(self.device), options)
        with working_on(torch.device("cpu")):  # the schedule is a host fact
            sigmas = karras_sigmas(options.steps, options.sigma_min, options.sigma_max, options.rho)
        return PassInputs(lr_pad, f, model_lr.to(self.dtype) if cfg.cross_lr else None, vector, sigmas,
                          options.seed + 1_000_003 * index, (h * f, w * f), cfg.block_offset * f, index)

    def state_device(self, plan: PassPlan) -> torch.device:
        """Where this pass's image-sized sampler state lives."""
        return self.device if plan.memory.state == "device" else torch.device("cpu")

    @inferring
    def _one_pass(self, image01: Tensor, plan: PassPlan, options: UpscaleOptions, index: int,
                  on_blocks: Callable[[int], None] | None, sample: SampleHook | None = None,
                  split: ColumnSplit | None = None, last: bool = True) -> tuple[Tensor | None, EngineStats]:
        """One pass: sample this process's block columns (all of them unless `split`), in [0, 1], cropped."""
        cfg, dev, bs = self.config, self.state_device(plan), self.config.block_size
        with working_on(dev):  # the sampler works where the plan keeps its state
            inputs = self.pass_inputs(image01, plan, options, index)
            if split is None:
                cols = range(plan.grid[1])
                runner = StreamedRunner(self.model, inputs.model_lr, inputs.vector, plan.memory, on_group=on_blocks)
            else:
                cols, runner = split.strip_runner(self, inputs, plan, on_blocks)
            lr_up = inputs.lr_up[..., cols.start * bs:cols.stop * bs]
            sampler = get_sampler(options.sampler, self._sampler_options(options))
            out: Tensor | None = sample_region(sampler, runner, lr_up, inputs.sigmas, inputs.seed, bs,
                                               cfg.sigma_data, dev, first_col=cols.start, sample=sample,
                                               index=inputs.index, start_noise=options.start_noise).float()
            if split is not None:
                out = split.join(out, plan, last)
            if out is None:
                return None, runner.stats
            return ((crop(out, *inputs.crop, inputs.lead) + 1) / 2).clamp(0, 1), runner.stats


def load_upscaler(
    model_source: str | None = None, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
    clip_source: str | None = None, need_text: bool = False,
) -> Upscaler:
    """Resolve a model (a local folder or file, a hub repo `org/name[@rev]`, None: the model shipped with
    infdit), load it, and load CLIP only when the model is conditioned on it."""
    from infdit_cli.clip import load_clip
    from infdit_cli.weights import default_model_path, load_model, read_config, resolve_model

    if model_source is None:
        shipped = default_model_path()
        if shipped is None:
            raise UpscaleError("no default model is installed with this build; pass a model")
        model_source = str(shipped)
    device = torch.device(device)
    files = resolve_model(model_source)
    model = load_model(files.weights, device=device, dtype=dtype)
    metadata = read_config(files.weights)[1]
    defaults = sampling_defaults(metadata)
    clip = None
    if model.config.vector_dim:
        clip = load_clip(files.clip, clip_source, need_text=need_text, device=device)
    elif need_text:
        raise UpscaleError(NO_CLIP_PROMPT)
    return Upscaler(model, clip, device, defaults, training_objective(metadata))
