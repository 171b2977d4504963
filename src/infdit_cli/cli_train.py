"""`infdit train` and `infdit eval`: thin Typer-signature shells over train.py and evaluate.py.

Register with `app.command("train")(train_command)` and `app.command("eval")(eval_command)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from infdit_cli.cli_common import cli_errors, default_model_path, err, fail, info, out, pick_device


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
    data: Annotated[Path, typer.Argument(help="Folder of training images (searched recursively).")],
    preset: Annotated[str, typer.Option(help="Model preset from config.py.")] = "small",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a preset field, e.g. --set hidden_size=192 (repeatable).")] = None,
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Checkpoint folder (model.safetensors = EMA).")] = Path("runs/train"),
    steps: Annotated[int, typer.Option(help="Total optimiser steps (a resumed run continues up to this).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = 4,
    crop: Annotated[int, typer.Option(help="HR crop side in px, a multiple of 128 (256 or 512).")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-4,
    warmup: Annotated[int, typer.Option(help="Linear learning-rate warm-up steps.")] = 0,
    ema: Annotated[float, typer.Option(help="EMA decay of the saved weights.")] = 0.999,
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0 = off).")] = 1.0,
    val_every: Annotated[int, typer.Option(help="Validate (and checkpoint) every N steps.")] = 100,
    val_images: Annotated[int, typer.Option(help="Images held out of DATA for validation.")] = 2,
    val_data: Annotated[Path | None, typer.Option(help="Separate validation folder instead.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue exactly from the checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, data order and noise.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cuda, cpu or mps.")] = "auto",
    bf16: Annotated[bool | None, typer.Option(help="bf16 autocast (default: on for CUDA only).")] = None,
    degrade: Annotated[bool, typer.Option(help="Random blur/noise/JPEG on the LR.")] = False,
    clip: Annotated[str | None, typer.Option(help="CLIP weights (only for presets with vector_dim > 0).")] = None,
) -> None:
    """Train an Inf-DiT upscaler from scratch (EDM loss, UniBA whole-image path, EMA weights)."""
    from infdit_cli.train import TrainConfig, TrainError, train

    dev = pick_device(device)
    config = TrainConfig(
        data=str(data), out=str(out_dir), preset=preset, overrides=_parse_overrides(set_), steps=steps,
        batch_size=batch_size, crop=crop, lr=lr, warmup=warmup, ema=ema, grad_clip=grad_clip,
        val_every=val_every, val_images=val_images, val_data=str(val_data) if val_data else None,
        resume=resume, seed=seed, device=str(dev), bf16=bf16, degrade=degrade, clip=clip,
    )
    try:
        mc = config.model_config()
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"model config: {exc}") from None
    info(f"training preset {preset} {config.overrides or ''} on {dev.type}: {steps} steps × {batch_size} "
         f"crops of {crop} px → {out_dir}  (hidden {mc.hidden_size}, {mc.num_layers} layers)")
    progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[msg]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    with progress:
        task = progress.add_task("train", total=steps, msg="")

        def on_step(p) -> None:
            msg = f"loss {p.loss:.4f}"
            if p.val_loss is not None:
                progress.console.print(f"step {p.step}: validation loss {p.val_loss:.4f}")
            progress.update(task, completed=p.step, msg=msg)

        try:
            result = train(config, on_step)
        except TrainError as exc:
            raise fail(str(exc)) from None
    out.print(f"saved {result.model_path} ({result.num_parameters / 1e6:.2f} M parameters, "
              f"{result.steps} steps, {result.seconds / 60:.1f} min)")


@cli_errors
def eval_command(
    folder: Annotated[Path, typer.Argument(help="Folder (or file) of HR images to downscale ×4 and restore.")],
    model: Annotated[str | None, typer.Option(help="Model folder/file or hub repo (default: shipped model).")] = None,
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 20,
    sampler: Annotated[str, typer.Option(help="Sampler plugin.")] = "heun-edm",
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N images.")] = None,
    max_side: Annotated[int | None, typer.Option(help="First shrink each HR so its long side is at most N px.")] = None,
    sigma_max: Annotated[float, typer.Option(help="Largest noise level (the sampler starts at LR + σ·noise).")] = 40.0,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cuda, cpu or mps.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """PSNR / SSIM / gradient energy of the model vs bicubic on ×4-downscaled images."""
    from infdit_cli.evaluate import evaluate
    from infdit_cli.pipeline import UpscaleOptions, load_upscaler

    dev = pick_device(device)
    source = model or (str(default_model_path()) if default_model_path() else None)
    if source is None:
        raise fail("no default model is installed with this build; pass --model PATH_OR_REPO")
    upscaler = load_upscaler(source, dev)
    options = UpscaleOptions(scale=4, steps=steps, sampler=sampler, seed=seed, sigma_max=sigma_max)

    def on_image(s) -> None:
        if not as_json:
            err.print(f"{s.name}: PSNR {s.psnr:.2f} (bicubic {s.psnr_bicubic:.2f}) dB, "
                      f"SSIM {s.ssim:.4f} (bicubic {s.ssim_bicubic:.4f})", highlight=False)

    try:
        report = evaluate(upscaler, folder, options, limit=limit, max_side=max_side, on_image=on_image)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    table = Table("image", "PSNR", "bicubic", "SSIM", "bicubic", "grad model", "grad bicubic", "grad HR")
    rows = [(s.name, s.psnr, s.psnr_bicubic, s.ssim, s.ssim_bicubic, s.grad_model, s.grad_bicubic, s.grad_truth)
            for s in report.images]
    m = report.mean()
    rows.append(("mean", m["psnr"], m["psnr_bicubic"], m["ssim"], m["ssim_bicubic"], m["grad_model"],
                 m["grad_bicubic"], m["grad_truth"]))
    for name, *v in rows:
        table.add_row(name, f"{v[0]:.2f}", f"{v[1]:.2f}", f"{v[2]:.4f}", f"{v[3]:.4f}", f"{v[4]:.1f}",
                      f"{v[5]:.1f}", f"{v[6]:.1f}")
    out.print(table)


__all__ = ["train_command", "eval_command"]
