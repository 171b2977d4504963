"""`infdit train` and `infdit eval`: thin Typer-signature shells over `train/` and `evaluate.py`.

Register with `app.command("train")(train_command)` and `app.command("eval")(eval_command)`.
Options follow the vocabulary in `cli_common` (`-o/--output`, `--dtype`, `--device`,
`--block-batch N|auto`, `--steps` for sampler steps only, `--max-steps` for a training length).
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from infdit_cli.cli_common import (
    DEVICE_HELP,
    DTYPE_HELP,
    BlockBatchOption,
    ChurnOption,
    DenoiseOption,
    Dtype,
    MaxMemoryOption,
    ModelOption,
    RhoOption,
    SamplerOption,
    SigmaMaxOption,
    SigmaMinOption,
    StepsOption,
    cli_errors,
    err,
    fail,
    info,
    out,
    parse_block_batch,
    parse_denoise,
    parse_dtype,
    pick_device,
)


class Objective(str, Enum):
    """--objective values (see infdit_cli.train.objective)."""

    edm = "edm"
    one_step = "one-step"


class Init(str, Enum):
    dit = "dit"
    random = "random"


class EvalMode(str, Enum):
    """--mode of `infdit eval` (see infdit_cli.evaluate.find_samples)."""

    auto = "auto"
    photos = "photos"
    pairs = "pairs"


def _parse_overrides(items: list[str] | None) -> dict[str, object]:
    """`field=value` pairs for ModelConfig (values parsed as JSON when possible: ints, floats, bools)."""
    result: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects field=value, got {item!r}")
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
    return result


@cli_errors
def train_command(
    data: Annotated[Path, typer.Argument(help="Folder of training images (searched recursively).", show_default=False)],
    preset: Annotated[str, typer.Option(help="Model preset from config.py.")] = "small",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a preset field, e.g. --set hidden_size=192 (repeatable).", show_default="none")] = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Checkpoint folder (model.safetensors = EMA weights).")] = Path("runs/train"),
    objective: Annotated[Objective, typer.Option(
        help="edm: x = HR + σn, the paper's; one-step: x = bicubic(LR) + σn at a fixed tiny σ, "
             "sampled with one Euler call.")] = Objective.edm,
    sigma: Annotated[float | None, typer.Option(
        help="Fixed training σ (required by one-step, e.g. 0.004).",
        show_default="log σ ~ N(p-mean, p-std²)")] = None,
    p_mean: Annotated[float, typer.Option(help="Mean of log σ when σ is not fixed.")] = -1.0,
    p_std: Annotated[float, typer.Option(help="Std of log σ when σ is not fixed.")] = 1.4,
    sample_sigma: Annotated[float | None, typer.Option(
        help="one-step: σ of the single inference call, stored as the model's sampling.",
        show_default="--sigma")] = None,
    init: Annotated[Init, typer.Option(
        help="dit: zeroed adaLN and output layer (starts as the identity); random: every path random.")] = Init.dit,
    max_steps: Annotated[int, typer.Option(
        help="Total optimiser steps (a resumed run continues up to this).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = 4,
    crop: Annotated[int, typer.Option(help="HR crop side in px, a multiple of the block size.")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate.")] = 1e-4,
    warmup: Annotated[int, typer.Option(help="Linear learning-rate warm-up steps.")] = 0,
    cosine: Annotated[bool, typer.Option(help="Cosine decay of the learning rate to 10 % at --max-steps.")] = False,
    ema: Annotated[float, typer.Option(help="EMA decay of the saved weights.")] = 0.999,
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0 = off).")] = 1.0,
    p_resize: Annotated[float, typer.Option(help="Probability of resize-shorter-side-then-crop.")] = 0.3,
    val_every: Annotated[int, typer.Option(help="Validate every N steps (0 = never).")] = 100,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.", show_default="--val-every")] = 0,
    val_images: Annotated[int, typer.Option(help="Images held out of DATA for validation.")] = 2,
    val_data: Annotated[Path | None, typer.Option(
        help="Separate validation folder instead.", show_default="held out of DATA")] = None,
    resume: Annotated[bool, typer.Option(help="Continue exactly from the checkpoint in --output.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, data order and noise.")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[Dtype, typer.Option(
        help="Compute precision: auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16.")] = Dtype.auto,
    degrade: Annotated[bool, typer.Option(
        help="Real-world LR degradations (blur, resize kernels, noise, JPEG 30-95), each LR labelled with "
             "its strength (give the model a strength input with --set denoise_cond=true).")] = False,
    p_clean: Annotated[float, typer.Option(help="With --degrade: share of LRs left clean.")] = 0.3,
    seam_weight: Annotated[float, typer.Option(
        help="Weight of the error of the step across the model's block edges (0: plain loss).")] = 0.0,
    loss: Annotated[str, typer.Option(help="l2 (EDM's weighted MSE) or charbonnier (L1-like).")] = "l2",
    init_from: Annotated[Path | None, typer.Option(
        help="Start from this model file's weights (new inputs keep their init).", show_default="none")] = None,
    clip: Annotated[str | None, typer.Option(
        help="CLIP weights (only for presets with vector_dim > 0).", show_default="none")] = None,
) -> None:
    """Train an Inf-DiT upscaler from scratch (UniBA whole-image path, EMA weights, exact resume)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from infdit_cli.train import TrainConfig, train

    dev = pick_device(device)
    if dtype == Dtype.fp16:
        raise fail("training supports --dtype auto, fp32 or bf16")
    bf16 = None if dtype == Dtype.auto else dtype == Dtype.bf16
    config = TrainConfig(
        data=str(data), out=str(output), preset=preset, overrides=_parse_overrides(set_), steps=max_steps,
        batch_size=batch_size, crop=crop, lr=lr, warmup=warmup, cosine=cosine, ema=ema, grad_clip=grad_clip,
        objective=objective.value, sigma=sigma, p_mean=p_mean, p_std=p_std, sample_sigma=sample_sigma,
        init=init.value, p_resize=p_resize, val_every=val_every, save_every=save_every, val_images=val_images,
        val_data=str(val_data) if val_data else None, resume=resume, seed=seed, device=str(dev), bf16=bf16,
        degrade=degrade, p_clean=p_clean, seam_weight=seam_weight, loss=loss,
        init_from=str(init_from) if init_from else None, clip=clip,
    )
    try:
        mc = config.model_config()
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"model config: {exc}") from None
    info(f"training preset {preset} {config.overrides or ''} on {dev.type}, objective {objective.value}: "
         f"{max_steps} steps × {batch_size} crops of {crop} px → {output}  "
         f"(hidden {mc.hidden_size}, {mc.num_layers} layers)")
    progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[msg]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    with progress:
        task = progress.add_task("train", total=max_steps, msg="")

        def on_step(p) -> None:
            if p.val_loss is not None:
                gain = f", {p.val_psnr_gain:+.2f} dB over bicubic" if p.val_psnr_gain is not None else ""
                progress.console.print(f"step {p.step}: validation loss {p.val_loss:.4f}{gain}", highlight=False)
            progress.update(task, completed=p.step, msg=f"loss {p.loss:.4f}")

        result = train(config, on_step)
    out.print(f"saved {result.model_path} ({result.num_parameters / 1e6:.2f} M parameters, "
              f"{result.steps} steps, {result.seconds / 60:.1f} min)")


@cli_errors
def eval_command(
    folder: Annotated[Path, typer.Argument(
        help="HR images to downscale ×4, or LR/HR pairs (NAME_lr.* + NAME_hr.*).", show_default=False)],
    lr_folder: Annotated[Path | None, typer.Option(
        "--lr", help="Folder of LR images with the same names as the HR images in FOLDER.",
        show_default="none")] = None,
    mode: Annotated[EvalMode, typer.Option(
        help="photos: every image is an HR photo; pairs: NAME_lr.* + NAME_hr.*; auto: pairs when --lr or a "
        "NAME_lr.* is there.")] = EvalMode.auto,
    model: ModelOption = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N images.", show_default="all")] = None,
    max_side: Annotated[int | None, typer.Option(
        help="Shrink each HR-only image so its long side is at most N px first.", show_default="no shrinking")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    steps: StepsOption = None,
    sampler: SamplerOption = None,
    sigma_min: SigmaMinOption = None,
    sigma_max: SigmaMaxOption = None,
    rho: RhoOption = None,
    churn: ChurnOption = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[Dtype, typer.Option(help=DTYPE_HELP)] = Dtype.auto,
    block_batch: BlockBatchOption = None,
    max_memory: MaxMemoryOption = None,
    degrade: Annotated[str | None, typer.Option(
        help="Degrade every LR first: jpeg:QUALITY (a real JPEG file) or noise:SIGMA (8-bit levels).",
        show_default="none")] = None,
    denoise: DenoiseOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """PSNR, SSIM and sharpness ratio (mean |∇| of the output / of the original) of the model and of
    bicubic, with the model's own sampling settings unless told otherwise."""
    from rich.table import Table

    from infdit_cli.degrade import parse_degradation
    from infdit_cli.engine.memory import parse_size
    from infdit_cli.evaluate import evaluate
    from infdit_cli.pipeline import UpscaleOptions, load_upscaler
    from infdit_cli.weights import default_model_path

    n = parse_block_batch(block_batch)
    strength = parse_denoise(denoise)
    degradation = parse_degradation(degrade) if degrade else None
    dev = pick_device(device)
    source = model or (str(default_model_path()) if default_model_path() else None)
    if source is None:
        raise fail("no default model is installed with this build; pass --model PATH_OR_REPO")
    upscaler = load_upscaler(source, dev, parse_dtype(dtype, dev.type))
    asked = UpscaleOptions(scale=4, steps=steps, sampler=sampler, sigma_min=sigma_min, sigma_max=sigma_max,
                           rho=rho, churn=churn, seed=seed, block_batch=n,
                           max_memory=parse_size(max_memory) if max_memory else None)
    options = upscaler.options(asked)
    options.validate()
    warning = upscaler.sampling_warning(asked)
    if warning:
        info(f"warning: {warning}", style="yellow")
    if not as_json:
        info(f"sampling: {options.sampler}, {options.steps} step(s), σ_max {options.sigma_max:g}, seed {seed}")

    def on_image(s) -> None:
        if not as_json:
            err.print(f"{s.name}: PSNR {s.psnr:.2f} (bicubic {s.psnr_bicubic:.2f}) dB, "
                      f"SSIM {s.ssim:.4f} (bicubic {s.ssim_bicubic:.4f}), "
                      f"sharpness {s.sharpness:.2f} (bicubic {s.sharpness_bicubic:.2f})", highlight=False)

    if strength is not None and not upscaler.config.denoise_cond:
        raise fail("this model has no denoise input; drop --denoise (or use a model trained with it)")
    report = evaluate(upscaler, folder, options, limit=limit, max_side=max_side, on_image=on_image,
                      lr_folder=lr_folder, degradation=degradation, mode=mode.value,
                      denoise=strength if upscaler.config.denoise_cond else None)
    if as_json:
        data = report.to_dict()
        data["sampling"] = {"sampler": options.sampler, "steps": options.steps, "sigma_min": options.sigma_min,
                            "sigma_max": options.sigma_max, "rho": options.rho, "churn": options.churn,
                            "seed": options.seed}
        data["degrade"] = degradation.label if degradation else None
        out.print_json(json.dumps(_nan_to_none(data)))
        return
    title = "model vs bicubic" + (f", LR {degradation.label}" if degradation else "")
    table = Table("image", "PSNR", "bicubic", "SSIM", "bicubic", "sharpness", "bicubic", "grid", "bicubic",
                  "seams", "bicubic", title=title)
    keys = ("psnr", "psnr_bicubic", "ssim", "ssim_bicubic", "sharpness", "sharpness_bicubic", "grid", "grid_bicubic",
            "seams", "seams_bicubic")
    rows = [(s.name, *(getattr(s, k) for k in keys)) for s in report.images]
    m = report.mean()
    rows.append(("mean", *(m[k] for k in keys)))
    for name, *v in rows:
        table.add_row(name, f"{v[0]:.2f}", f"{v[1]:.2f}", f"{v[2]:.4f}", f"{v[3]:.4f}", f"{v[4]:.3f}", f"{v[5]:.3f}",
                      f"{v[6]:.3f}", f"{v[7]:.3f}", f"{v[8]:.3f}", f"{v[9]:.3f}")
    out.print(table)


def _nan_to_none(data: object) -> object:
    """inf/nan (identical images, flat originals) become null: JSON has no such numbers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _nan_to_none(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_nan_to_none(v) for v in data]
    return data


__all__ = ["train_command", "eval_command"]
