"""`infdit upscale`: files in, exact-size upscaled files out, with honest progress and clear errors."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from infdit_cli import errors
from infdit_cli.cli_common import (
    cli_errors,
    default_model_path,
    err,
    fail,
    info,
    parse_dtype,
    pick_device,
    report_error,
)

DEFAULT_SEED = 0


@dataclass
class Job:
    source: Path
    target: Path


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _throughput(device: Any) -> float:
    """A quick matmul to turn FLOPs into a rough time estimate for the pre-flight line.

    The network reaches about 40% of the matmul rate on an H200 (eager) and about 80% on CPUs,
    where attention runs near the matmul rate; the caller applies that factor.
    """
    import torch

    a = torch.randn(512, 512, device=device)
    torch.mm(a, a)
    start = time.perf_counter()
    for _ in range(4):
        torch.mm(a, a)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 4 * 2 * 512**3 / max(time.perf_counter() - start, 1e-9)


@cli_errors
def upscale_command(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.", show_default=False)],
    scale: Annotated[int, typer.Option("--scale", "-s", help="2, 4, 8 or 16 (8 and 16 are repeated passes).")] = 4,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output folder, or a file for one input.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Output format: png, jpg, webp, tiff, bmp.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    skip_existing: Annotated[bool, typer.Option(help="Skip inputs whose output exists (resume a batch).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")] = False,
    model: Annotated[str | None, typer.Option(help="Model: local folder/file or hub repo org/name[@rev].")] = None,
    clip: Annotated[str | None, typer.Option(help="CLIP weights: local file or hub repo (models using CLIP).")] = None,
    prompt_pos: Annotated[str | None, typer.Option(help="Text to steer towards (e.g. 'clear').")] = None,
    prompt_neg: Annotated[str | None, typer.Option(help="Text to steer away from (e.g. 'blur').")] = None,
    prompt_scale: Annotated[float, typer.Option(help="Weight of the prompt edit of the CLIP embedding.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Noise seed; the same seed gives the same image.")] = DEFAULT_SEED,
    steps: Annotated[int | None, typer.Option(help="Sampler steps [default: the model's, else 20].")] = None,
    sampler: Annotated[str | None, typer.Option(
        help="Sampler plugin (see `infdit samplers`) [default: the model's, else heun-edm].")] = None,
    sigma_min: Annotated[float | None, typer.Option(help="Smallest noise level [default: 0.002].")] = None,
    sigma_max: Annotated[float | None, typer.Option(help="Largest noise level [default: 40].")] = None,
    rho: Annotated[float | None, typer.Option(help="Karras schedule exponent [default: 7].")] = None,
    churn: Annotated[float | None, typer.Option(help="EDM stochastic churn [default: 0, deterministic].")] = None,
    sampler_bf16: Annotated[bool, typer.Option(help="Sampler arithmetic in bf16, as the official code.")] = False,
    device: Annotated[str, typer.Option(help="auto, cuda, cpu or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 elsewhere), bf16, fp16, fp32.")] = "auto",
    block_batch: Annotated[int | None, typer.Option(
        help="Blocks per group side n (default: planned from memory).")] = None,
    max_memory: Annotated[str | None, typer.Option(help="Memory budget, e.g. 6GB.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or pre-flight output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Engine figures per image.")] = False,
) -> None:
    """Upscale images with Inf-DiT: exact W·s × H·s output, streamed in memory that grows with the width."""
    import torch

    from infdit_cli.engine.memory import parse_size
    from infdit_cli.imageio import (
        check_output_size,
        format_losses,
        load_image,
        output_format,
        save_image,
    )
    from infdit_cli.inputs import check_output, collect_inputs, plan_outputs
    from infdit_cli.pipeline import UpscaleOptions, load_upscaler
    from infdit_cli.preprocess import upscale_alpha
    from infdit_cli.samplers import SamplerOptions, get_sampler

    try:
        budget = parse_size(max_memory) if max_memory else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    given = dict(scale=scale, steps=steps, sampler=sampler, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                 churn=churn, seed=seed, block_batch=block_batch, max_memory=budget, prompt_pos=prompt_pos,
                 prompt_neg=prompt_neg, prompt_scale=prompt_scale,
                 sampler_dtype=torch.bfloat16 if sampler_bf16 else torch.float32)
    UpscaleOptions(**{k: v for k, v in given.items() if v is not None}).validate()  # fail before loading anything
    if sampler is not None:
        try:
            get_sampler(sampler, SamplerOptions(s_churn=churn or 0.0))
        except ValueError as exc:
            raise fail(errors.one_line(exc)) from None
    if fmt is not None:
        output_format(fmt)
    out_folder = output if output is not None and (output.is_dir() or not output.suffix) else None
    files = collect_inputs(inputs, recursive, exclude=out_folder)
    jobs, failures, skipped, results = [], 0, 0, []
    targets = plan_outputs(files, scale, output, fmt)
    for f, target in targets.items():
        try:
            if check_output(target, overwrite, skip_existing) == "skip":
                skipped += 1
                if not quiet:
                    info(f"skip {f}: {target} exists")
                continue
        except errors.InfditError as exc:
            report_error(errors.one_line(exc))
            failures += 1
            continue
        jobs.append(Job(f, target))

    dev = pick_device(device)
    model_source = model or (str(default_model_path()) if default_model_path() else None)
    if model_source is None:
        raise fail("no default model is installed with this build; pass --model PATH_OR_REPO")
    upscaler = load_upscaler(model_source, dev, parse_dtype(dtype, dev.type), clip,
                             need_text=bool(prompt_pos or prompt_neg))
    options = upscaler.options(**given)
    options.validate()
    try:
        get_sampler(options.sampler, SamplerOptions(s_churn=options.churn))
    except ValueError as exc:
        raise fail(errors.one_line(exc)) from None
    if not quiet:
        info(f"model {model_source} on {dev.type} ({str(upscaler.dtype).removeprefix('torch.')}), "
             f"sampler {options.sampler}, {options.steps} steps, seed {seed}")
    flops_per_s = _throughput(dev) * (0.4 if dev.type == "cuda" else 0.8) if jobs and not quiet else 0.0

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=quiet, transient=False)
    with progress:
        batch = progress.add_task("batch", total=len(jobs), visible=len(jobs) > 1)
        for job in jobs:
            start = time.perf_counter()
            try:
                image = load_image(job.source)
                w, h = image.size
                out_fmt = output_format(fmt or job.target.suffix)
                check_output_size(w * scale, h * scale, out_fmt, image)
                if not quiet:
                    for loss in format_losses(out_fmt, image):
                        info(f"warning: {job.target.name}: {loss}", "yellow")
                plans = upscaler.plan((h, w), options)
                total = sum(p.nfe * p.blocks for p in plans)
                if not quiet:
                    _preflight(job, image.size, scale, plans, upscaler, flops_per_s)
                task = progress.add_task(job.source.name, total=total)
                tensor = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
                result = upscaler.upscale(tensor, options, on_blocks=lambda n, t=task: progress.advance(t, n),
                                          plans=plans)
                alpha = None if image.alpha is None else upscale_alpha(image.alpha, scale)
                save_image(job.target, result.image[0].permute(1, 2, 0), alpha, image, out_fmt)
            except errors.InfditError as exc:
                report_error(errors.one_line(exc))
                failures += 1
                progress.advance(batch)
                continue
            progress.remove_task(task)
            progress.advance(batch)
            seconds = time.perf_counter() - start
            peak = max([s.peak_device_bytes for s in result.stats] + [p.memory.estimated_bytes for p in plans])
            record = {"input": str(job.source), "output": str(job.target), "input_size": [w, h],
                      "output_size": [w * scale, h * scale], "seconds": round(seconds, 3),
                      "peak_memory_bytes": peak, "block_batch": [p.memory.block_batch for p in plans],
                      "network_calls": sum(s.calls for s in result.stats), "seed": seed}
            results.append(record)
            if not quiet:
                info(f"wrote {job.target} ({w * scale}x{h * scale}) in {seconds:.1f} s")
            if verbose:
                for s in result.stats:
                    info(f"  engine: {s.calls} calls, {s.tokens:,} tokens, {s.flops / 1e12:.2f} TFLOP, "
                              f"KV band peak {_fmt_bytes(s.peak_kv_bytes)}, n={s.block_batch}")
    if as_json:
        print(json.dumps({"outputs": results, "failed": failures, "skipped": skipped}, indent=2))
    if failures:
        raise typer.Exit(1)


def _preflight(job: Job, size: tuple[int, int], scale: int, plans: list, upscaler: Any, flops_per_s: float) -> None:
    from infdit_cli.engine import flops_per_call

    flops = sum(p.nfe * flops_per_call(upscaler.config, p.grid) for p in plans)
    eta = f", ~{flops / flops_per_s:.0f} s" if flops_per_s else ""
    n = "/".join(str(p.memory.block_batch) for p in plans)
    peak = max(p.memory.estimated_bytes for p in plans)
    info(f"{job.source.name}: {size[0]}x{size[1]} -> {size[0] * scale}x{size[1] * scale}, "
              f"{sum(p.blocks for p in plans)} blocks, n={n}, est. peak {_fmt_bytes(peak)}, "
              f"{sum(p.nfe for p in plans)} network calls{eta}")
