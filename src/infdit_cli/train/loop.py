"""The training loop: AdamW with warm-up and cosine decay (`LambdaLR`), gradient clipping, EMA
(`AveragedModel`, the saved model), periodic validation and checkpoints, exact resume.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from infdit_cli.config import ModelConfig
from infdit_cli.degrade import Recipe
from infdit_cli.model import InfDiT
from infdit_cli.model.network import conditioning_vector
from infdit_cli.train.checkpoint import STATE_JSON, load_checkpoint, save_checkpoint
from infdit_cli.train.config import ProgressCallback, TrainConfig, TrainError, TrainProgress, TrainResult
from infdit_cli.train.data import (
    CropSource,
    _rand_int,
    make_training_lr,
    offset_cut,
    random_crop,
    split_files,
    step_generator,
    validation_crops,
)
from infdit_cli.train.objective import LOSSES, OBJECTIVES, edm_loss, psnr_gain, validation_loss

LOG_FILE = "log.jsonl"


def learning_rate(config: TrainConfig, step: int) -> float:
    """The rate of step `step` (0-based): linear warm-up, then cosine down to 0.1× (the one formula)."""
    lr = config.lr
    if config.warmup and step < config.warmup:
        lr *= (step + 1) / config.warmup
    if config.cosine:
        lr *= 0.1 + 0.45 * (1 + math.cos(math.pi * min(step / max(config.steps, 1), 1.0)))
    return lr


def _validate_config(config: TrainConfig, mc: ModelConfig) -> None:
    if config.crop <= 0 or config.crop % mc.block_size:
        raise TrainError(f"crop {config.crop} must be a positive multiple of the block size {mc.block_size}")
    if config.crop // mc.patch_size > mc.rope_table:
        raise TrainError("crop is larger than the RoPE table")
    if config.batch_size < 1 or config.steps < 0:
        raise TrainError("batch size must be ≥ 1 and steps ≥ 0")
    if config.objective not in OBJECTIVES:
        raise TrainError(f"unknown objective {config.objective!r}; choose from {', '.join(OBJECTIVES)}")
    if config.objective == "one-step" and config.sigma is None:
        raise TrainError("the one-step objective trains at one fixed σ: give --sigma (e.g. 0.004)")
    if config.sigma is not None and not config.sigma > 0:
        raise TrainError("--sigma must be > 0")
    if config.init not in ("dit", "random"):
        raise TrainError(f"unknown init {config.init!r}; choose dit or random")
    if config.loss not in LOSSES:
        raise TrainError(f"unknown loss {config.loss!r}; choose from {', '.join(LOSSES)}")
    if not config.seam_weight >= 0:
        raise TrainError(f"seam weight must be ≥ 0 (got {config.seam_weight})")
    if not 0 <= config.p_clean <= 1:
        raise TrainError("--p-clean must be within 0..1")


def _init_from(model: InfDiT, path: str) -> None:
    """Start from a model file: every tensor it has (same shape) is loaded; new inputs keep their init."""
    from safetensors.torch import load_file

    from infdit_cli.weights import read_config

    if not Path(path).is_file():
        raise TrainError(f"{path}: no such model file")
    read_config(path)  # one line for a file that is not one of our models
    own = model.state_dict()
    state = load_file(path)
    for name, tensor in state.items():
        if name not in own or own[name].shape != tensor.shape:
            raise TrainError(f"{path}: tensor {name} does not fit this model (another architecture?)")
        own[name].copy_(tensor)


def _clip_vector_fn(config: TrainConfig, mc: ModelConfig, device: torch.device) -> Callable | None:
    if not mc.vector_dim:
        return None
    from infdit_cli.clip import load_clip

    if not config.clip:
        raise TrainError("this model is conditioned on CLIP (vector_dim > 0): give CLIP weights")
    encoder = load_clip(clip_source=config.clip, device=device)
    return lambda lr: encoder.image_embedding(lr).to(device)


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Train (or resume) and write checkpoints to `config.out`; returns where the EMA model is."""
    mc = config.model_config()
    _validate_config(config, mc)
    device = torch.device(config.device)
    bf16 = config.bf16 if config.bf16 is not None else device.type == "cuda"
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train_files, val_files = split_files(config)
    source = CropSource(train_files, config.crop + (mc.block_size if mc.block_offset else 0))
    val_crops = validation_crops(val_files, config.crop)
    vector_fn = _clip_vector_fn(config, mc, device)

    torch.manual_seed(config.seed)
    model = InfDiT(mc)
    model = (model.initialize_weights(config.seed) if config.init == "dit" else model.init_random(config.seed))
    if config.init_from:
        _init_from(model, config.init_from)
    model = model.to(device).train()
    ema = make_ema(model, config.ema)
    # Base rate 1: LambdaLR's factor is then `learning_rate` itself, bit for bit.
    opt = torch.optim.AdamW([{"params": list(model.parameters()), "initial_lr": 1.0}], lr=1.0,
                            betas=config.betas, weight_decay=config.weight_decay)
    step, seconds = 0, 0.0
    if config.resume and (out / STATE_JSON).is_file():
        step, seconds = load_checkpoint(out, model, ema, opt)
    schedule = LambdaLR(opt, lambda s: learning_rate(config, s), last_epoch=step - 1)  # the rate of `step`
    losses: list[float] = []
    val_history: list[tuple[int, float]] = []
    gain_history: list[tuple[int, float]] = []
    log = (out / LOG_FILE).open("a")
    save_every = config.save_every or config.val_every
    start = time.perf_counter() - seconds
    val_sigmas = (config.sigma,) if config.objective == "one-step" else config.val_sigmas

    def validate(at: int) -> tuple[float, float | None]:
        ema_model = ema.module.eval()
        val = validation_loss(ema_model, val_crops, val_sigmas, config.seed, vector_fn, bf16, config.objective)
        val_history.append((at, val))
        gain = None
        if config.objective == "one-step":
            gain = psnr_gain(ema_model, val_crops, config.sample_sigma or config.sigma, config.seed, vector_fn, bf16)
            gain_history.append((at, gain))
        return val, gain

    if step == 0 and val_crops is not None and config.val_every:  # baseline of a fresh run
        validate(0)
    try:
        while step < config.steps:
            loss = _train_step(model, opt, source, config, mc, step, device, bf16, vector_fn)
            schedule.step()
            ema.update_parameters(model)
            step += 1
            losses.append(loss)
            seconds = time.perf_counter() - start
            val = gain = None
            if val_crops is not None and config.val_every and (step % config.val_every == 0 or step == config.steps):
                val, gain = validate(step)
            record = TrainProgress(step, config.steps, loss, learning_rate(config, step - 1), seconds, val, gain)
            log.write(json.dumps(asdict(record)) + "\n")
            log.flush()
            if (save_every and step % save_every == 0) or step == config.steps:
                save_checkpoint(out, config, model, ema, opt, step, seconds)
            if progress:
                progress(record)
    finally:
        log.close()
    if not (out / "model.safetensors").is_file():
        save_checkpoint(out, config, model, ema, opt, step, seconds)
    return TrainResult(step, out / "model.safetensors", seconds, losses, val_history, model.num_parameters(),
                       gain_history)


def _train_step(
    model: InfDiT, opt: torch.optim.Optimizer, source: CropSource, config: TrainConfig, mc: ModelConfig,
    step: int, device: torch.device, bf16: bool, vector_fn: Callable | None,
) -> float:
    gen = step_generator(config.seed, step)
    hr = torch.stack([random_crop(source, gen, config.p_resize, config.hflip) for _ in range(config.batch_size)])
    recipe = Recipe(p_clean=config.p_clean) if config.degrade else None
    lr, strength = make_training_lr(hr, mc.sr_scale, gen, recipe)
    hr, lr = offset_cut(hr, lr, config.crop, mc.block_offset, mc.sr_scale)
    span = mc.rope_table - config.crop // mc.patch_size
    offset = (_rand_int(gen, span), _rand_int(gen, span))
    sigma = (torch.randn(config.batch_size, generator=gen) * config.p_std + config.p_mean).exp()
    if config.sigma is not None:
        sigma = torch.full_like(sigma, config.sigma)
    noise = torch.randn(hr.shape, generator=gen)
    hr, lr, sigma, noise = hr.to(device), lr.to(device), sigma.to(device), noise.to(device)
    vector = conditioning_vector(mc, vector_fn(lr) if vector_fn else None, strength.to(device))
    loss = edm_loss(model, hr, lr, sigma, noise, vector, offset, bf16, config.objective, config.loss,
                    config.seam_weight).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    opt.step()
    return loss.item()


def make_ema(model: InfDiT, decay: float) -> AveragedModel:
    """The EMA of `model`, starting as a copy of it, with the decay ramping up as min(decay, (1+s)/(10+s))
    after step s, so early (random) weights are forgotten fast."""

    @torch.no_grad()
    def average(ema: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        step = int(n_averaged) - 1  # one average per step, after the initial copy
        d = min(decay, (1 + step) / (10 + step))
        for e, c in zip(ema, current, strict=True):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(c.float(), alpha=1 - d)
            else:  # integer buffers follow the model
                e.copy_(c)

    ema = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
    ema.requires_grad_(False)
    ema.update_parameters(model)  # n_averaged 1: the copy
    return ema
