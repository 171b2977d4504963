"""`infdit upscale`: files in, exact-size upscaled files out, with honest progress and clear errors."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infdit_cli import errors
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
    SamplerDtype,
    SamplerOption,
    SigmaMaxOption,
    SigmaMinOption,
    StepsOption,
    cli_errors,
    err,
    fail,
    info,
    parse_block_batch,
    parse_denoise,
    parse_dtype,
    pick_device,
    report_error,
)
from infdit_cli.progress import ImageProgress, layer_ticks
from infdit_cli.units import format_bytes, format_duration

if TYPE_CHECKING:  # torch-heavy modules, imported when a run starts (help stays light)
    from infdit_cli.distributed import Session
    from infdit_cli.engine.estimate import TimeEstimator
    from infdit_cli.pipeline import UpscaleOptions, Upscaler

DEFAULT_SEED = 0
PLAIN_PROGRESS_EVERY = 10.0  # seconds between plain progress lines when stderr is not a terminal


@dataclass
class Job:
    source: Path
    target: Path


@cli_errors
def upscale_command(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.", show_default=False)],
    scale: Annotated[int, typer.Option("--scale", "-s", help="2, 4, 8 or 16 (8 and 16 are repeated passes).")] = 4,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output folder, or a file for one input.",
        show_default="beside each input, as NAME_x4.EXT")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="Output format: png, jpg, webp, tiff, bmp.", show_default="the input's")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    skip_existing: Annotated[bool, typer.Option(help="Skip inputs whose output exists (resume a batch).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")] = False,
    model: ModelOption = None,
    clip: Annotated[str | None, typer.Option(
        help="CLIP weights: local file or hub repo (models using CLIP).",
        show_default="the model folder's, else the hub")] = None,
    prompt_pos: Annotated[str | None, typer.Option(help="Text to steer towards (e.g. 'clear').")] = None,
    prompt_neg: Annotated[str | None, typer.Option(help="Text to steer away from (e.g. 'blur').")] = None,
    prompt_scale: Annotated[float, typer.Option(help="Weight of the prompt edit of the CLIP embedding.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Noise seed; the same seed gives the same image.")] = DEFAULT_SEED,
    steps: StepsOption = None,
    sampler: SamplerOption = None,
    sigma_min: SigmaMinOption = None,
    sigma_max: SigmaMaxOption = None,
    rho: RhoOption = None,
    churn: ChurnOption = None,
    sampler_dtype: Annotated[SamplerDtype, typer.Option(
        help="Sampler arithmetic: fp32, or bf16 as the official code.")] = SamplerDtype.fp32,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[Dtype, typer.Option(help=DTYPE_HELP)] = Dtype.auto,
    block_batch: BlockBatchOption = None,
    max_memory: MaxMemoryOption = None,
    max_host_memory: Annotated[str | None, typer.Option(
        help="Host RAM for the image-sized state, e.g. 3GB; past it the image runs out of core, band after band, "
        "and is written as it finishes (png or tiff).",
        show_default="512 MiB, or 60% of the available RAM if less")] = None,
    scratch: Annotated[Path | None, typer.Option(
        help="Folder for out-of-core scratch files (the KV edges between bands); removed afterwards.",
        show_default="the system's temporary folder")] = None,
    denoise: DenoiseOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, pre-flight or summary lines.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Engine figures per image.")] = False,
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the transformer layers: faster calls after a one-off compile, the same "
        "image within bf16 tolerance. Needs a C++ compiler on CPU, Triton on CUDA (refused, with the reason, "
        "where missing).")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Folder for sampling progress, saved after every step; rerun the same command to continue.",
        show_default="none")] = None,
    split_image: Annotated[bool, typer.Option(
        help="Under torchrun: split each image's block columns across all ranks (else files are shared out).",
    )] = False,
) -> None:
    """Upscale images with Inf-DiT: exact W·s × H·s output, streamed in memory that grows with the width.

    A batch checks every input before the model loads, writes the good ones, and exits 1 if any failed.
    """
    run_start = time.perf_counter()
    from infdit_cli.imageio import output_format
    from infdit_cli.inputs import check_input, check_output, gather_inputs, plan_outputs

    if fmt is not None:
        output_format(fmt)
    if overwrite and skip_existing:
        raise fail("--overwrite and --skip-existing exclude each other")
    options = _upscale_options(scale=scale, steps=steps, sampler=sampler, sigma_min=sigma_min, sigma_max=sigma_max,
                               rho=rho, churn=churn, seed=seed, block_batch=parse_block_batch(block_batch),
                               max_memory=max_memory, prompt_pos=prompt_pos, prompt_neg=prompt_neg,
                               prompt_scale=prompt_scale, sampler_dtype=sampler_dtype, max_host_memory=max_host_memory,
                               scratch=scratch)
    from infdit_cli.distributed import join

    session = join(pick_device(device))  # under torchrun: this rank, its device and the process group
    quiet = quiet or not session.ranks.is_root  # rank 0 checks the inputs and reports for every rank
    batch = Batch(report=session.ranks.is_root)
    out_folder = output if output is not None and (output.is_dir() or not output.suffix) else None
    files, problems = gather_inputs(inputs, recursive, exclude=out_folder)
    for spec, problem in problems:
        batch.failed(spec, problem)
    good = []
    for f in files:
        try:
            check_input(f)
            good.append(f)
        except errors.InfditError as exc:
            batch.failed(f, exc)
    planning_failures: dict[Path, Any] = {}
    targets = plan_outputs(good, scale, output, fmt, failed=planning_failures)
    for f, exc in planning_failures.items():
        batch.failed(f, exc)
    jobs = []
    for f, target in targets.items():
        try:
            if check_output(target, overwrite, skip_existing) == "skip":
                batch.skipped += 1
                if not quiet:
                    info(f"skip {f}: {target} exists")
                continue
        except errors.InfditError as exc:
            batch.failed(f, exc)
            continue
        jobs.append(Job(f, target))
    total_inputs = len(jobs) + batch.skipped + len(batch.failures)
    jobs = session.share(jobs, Job, split_image)  # rank 0's pending list: a share each, or all when split
    if not session.ranks.is_root:
        batch = Batch(report=False)  # rank 0 counted and reported the checks for every rank
    run_info: dict[str, Any] | None = None
    if jobs:
        settings = RunSettings(scale=scale, fmt=fmt, model=model, clip=clip, device=device, dtype=dtype,
                               quiet=quiet, verbose=verbose, checkpoint=checkpoint, split_image=split_image,
                               compile=compile, denoise=parse_denoise(denoise))
        try:
            run_info = _run_jobs(jobs, batch, options, settings, session)
        except KeyboardInterrupt:
            if not quiet:
                _interrupted(batch, total_inputs, run_start)
            raise typer.Exit(130) from None
    _finish(batch, run_info, total_inputs, run_start, as_json, quiet, session)


@dataclass(frozen=True)
class RunSettings:
    """The options of one run that pick the model and shape the files and the console."""

    scale: int
    fmt: str | None
    model: str | None
    clip: str | None
    device: str
    dtype: Dtype
    quiet: bool
    verbose: bool
    checkpoint: Path | None = None  # resumable sampling state, per output file
    split_image: bool = False  # under torchrun: every rank works on every image
    compile: bool = False  # torch.compile the transformer layers
    denoise: float | None = None  # --denoise strength; None: auto per file


@dataclass
class Batch:
    """What happened to every input of one `infdit upscale` run."""

    report: bool = True  # print failures as they happen (rank 0 prints the other ranks' in its summary)
    skipped: int = 0
    failures: list[dict[str, str | None]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def failed(self, source: Path | str | None, exc: BaseException) -> None:
        if self.report:
            report_error(errors.one_line(exc))
        self.failures.append({"input": None if source is None else str(source), "error": errors.one_line(exc)})


def _upscale_options(*, scale: int, steps: int | None, sampler: str | None, sigma_min: float | None,
                     sigma_max: float | None, rho: float | None, churn: float | None, seed: int,
                     block_batch: int | None, max_memory: str | None, prompt_pos: str | None,
                     prompt_neg: str | None, prompt_scale: float, sampler_dtype: SamplerDtype,
                     max_host_memory: str | None = None, scratch: Path | None = None) -> UpscaleOptions:
    """The run's UpscaleOptions, built once from the command line and checked before any file or model;
    sampling fields not given stay None (the model's own sampling, filled in once it is loaded)."""
    import torch

    from infdit_cli.engine.memory import parse_size
    from infdit_cli.pipeline import UpscaleOptions
    from infdit_cli.samplers import SamplerOptions, get_sampler

    try:
        memory = parse_size(max_memory) if max_memory else None
        host_memory = parse_size(max_host_memory) if max_host_memory else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    options = UpscaleOptions(
        scale=scale, steps=steps, sampler=sampler, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, churn=churn,
        seed=seed, block_batch=block_batch, max_memory=memory, prompt_pos=prompt_pos, prompt_neg=prompt_neg,
        prompt_scale=prompt_scale, max_host_memory=host_memory, scratch=scratch,
        sampler_dtype=torch.bfloat16 if sampler_dtype == SamplerDtype.bf16 else torch.float32)
    options.validate()
    if sampler is not None:
        get_sampler(sampler, SamplerOptions(s_churn=churn or 0.0))
    return options


@dataclass
class Loaded:
    """The model ready for a batch: its upscaler, the run's options with its sampling, the calibrated
    time estimate, and what the JSON summary says about the run."""

    upscaler: Upscaler
    options: UpscaleOptions  # sampling filled in
    estimator: TimeEstimator
    model_hash: str  # for --checkpoint
    run_info: dict[str, Any]
    load_seconds: float  # reading the model and CLIP (not compiling or calibrating)


@dataclass
class Done:
    """One upscaled image, for its record."""

    size: tuple[int, int]
    options: UpscaleOptions  # this image's (its denoise strength)
    plans: list
    estimate: float
    result: Any
    seconds: tuple[float, float, float, float]  # start, decoded, upscaled, end (perf_counter)


def _run_jobs(jobs: list[Job], batch: Batch, options: UpscaleOptions, a: RunSettings, session: Session
              ) -> dict[str, Any]:
    """Load the model once and upscale every job; a failing image is reported and the batch goes on.

    Returns what the JSON summary says about the run (model, sampler, steps, seed, device, load time).
    """
    from infdit_cli.device import OutOfMemoryError, release_cache
    from infdit_cli.distributed import DistributedError
    from infdit_cli.engine.runner import DeviceMemoryError

    loaded = _load(options, a, session)
    with ImageProgress(err, quiet=a.quiet, every=PLAIN_PROGRESS_EVERY, batch_total=len(jobs)) as progress:
        for job in jobs:
            try:
                done = _upscale_one(job, loaded, a, session, progress)
            except DistributedError:
                raise  # a lost peer ends the run on every rank, not just this image
            except (DeviceMemoryError, OutOfMemoryError) as exc:  # too big for this card: this image only
                release_cache(session.device)
                failure = f"{job.source}: {errors.one_line(exc)}"
                if a.split_image and session.ranks.distributed:  # the other ranks are inside this image
                    raise DistributedError(f"rank {session.ranks.rank}: {failure}") from None
                progress.end_image()
                batch.failed(job.source, errors.InfditError(failure))
                continue
            except errors.InfditError as exc:
                progress.end_image()
                batch.failed(job.source, exc)
                continue
            progress.end_image()
            if session.writes(a.split_image):  # a split image is recorded by rank 0, which wrote it
                batch.results.append(_record(job, done, loaded, a))
    loaded.run_info["load_s"] = round(loaded.load_seconds, 3)
    return loaded.run_info


def _load(options: UpscaleOptions, a: RunSettings, session: Session) -> Loaded:
    """The model (and CLIP) on this rank's device, the options with its own sampling, the calibration."""
    from infdit_cli.distributed.checkpoint import model_digest
    from infdit_cli.engine.estimate import TimeEstimator
    from infdit_cli.pipeline import load_upscaler
    from infdit_cli.samplers import SamplerOptions, get_sampler
    from infdit_cli.weights import default_model_path

    load_start = time.perf_counter()
    dev = session.device
    model_source = a.model or (str(default_model_path()) if default_model_path() else None)
    if model_source is None:
        raise fail("no default model is installed with this build; pass --model PATH_OR_REPO")
    upscaler = load_upscaler(model_source, dev, parse_dtype(a.dtype, dev.type), a.clip,
                             need_text=bool(options.prompt_pos or options.prompt_neg))
    asked, options = options, upscaler.options(options)
    options.validate()
    get_sampler(options.sampler, SamplerOptions(s_churn=options.churn))
    if a.denoise is not None and not upscaler.config.denoise_cond:
        raise fail("this model has no denoise input; drop --denoise (or use a model trained with it)")
    warning = upscaler.sampling_warning(asked)
    if warning and not a.quiet:
        info(f"warning: {warning}", "yellow")
    model_hash = model_digest(upscaler.model) if a.checkpoint is not None else ""
    load_seconds = time.perf_counter() - load_start
    run_info = {"model": model_source, "sampler": options.sampler, "steps": options.steps, "seed": options.seed,
                "device": dev.type, "dtype": str(upscaler.dtype).removeprefix("torch.")}
    if not a.quiet:
        info(f"model {model_source} on {dev.type} ({run_info['dtype']}), "
             f"sampler {options.sampler}, {options.steps} steps, seed {options.seed}")
    if a.compile:
        from infdit_cli.model.network import compile_unavailable

        reason = compile_unavailable(dev.type)
        if reason:
            raise fail(f"--compile is not available here: {reason}")
        upscaler.model.compile_layers()
    estimator = TimeEstimator(upscaler.model)
    calibrate_start = time.perf_counter()
    estimator.calibration  # the short warm-up, here so that no image's timing includes it  # noqa: B018
    run_info["calibrate_s"] = round(time.perf_counter() - calibrate_start, 3)
    return Loaded(upscaler, options, estimator, model_hash, run_info, load_seconds)


def _upscale_one(job: Job, loaded: Loaded, a: RunSettings, session: Session, progress: ImageProgress) -> Done:
    """Decode, plan (pre-flight line), upscale and, on the rank that writes it, encode one image."""
    import torch

    from infdit_cli.imageio import (
        check_output_size,
        check_streamable,
        format_losses,
        load_image,
        output_format,
        save_image,
    )
    from infdit_cli.preprocess import upscale_alpha

    upscaler, scale = loaded.upscaler, a.scale
    start = time.perf_counter()
    image = load_image(job.source)
    decoded = time.perf_counter()
    w, h = image.size
    out_fmt = output_format(a.fmt or job.target.suffix)
    check_output_size(w * scale, h * scale, out_fmt, image)
    if not a.quiet:
        for loss in format_losses(out_fmt, image):
            info(f"warning: {job.target.name}: {loss}", "yellow")
    options, denoise_note = _with_denoise(upscaler, loaded.options, a.denoise, job.source)
    plans = upscaler.plan((h, w), options, speed=loaded.estimator.calibration.speed)
    estimate = sum(loaded.estimator.run_seconds(p.grid, p.memory, p.nfe, options.steps) for p in plans)
    streamed = _streamed(plans, a, session)
    if streamed:
        check_streamable(w * scale, h * scale, out_fmt)
    if not a.quiet:
        _preflight(job, image.size, scale, plans, estimate, denoise_note,
                   checkpointed=streamed and a.checkpoint is not None)
    progress.start_image(job.source.name, sum(p.nfe * p.blocks for p in plans))
    tensor = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
    resumable = session.checkpoint(a.checkpoint, job.target, loaded.model_hash, a.split_image)
    if streamed:  # out of core: each band is written as it finishes
        with layer_ticks(upscaler.model, progress):
            result = _upscale_streamed(job, upscaler, tensor, options, plans, progress, image, out_fmt, resumable)
        upscaled = time.perf_counter()
        return Done((w, h), options, plans, estimate, result, (start, decoded, upscaled, upscaled))
    with layer_ticks(upscaler.model, progress):
        result = session.upscale(upscaler, tensor, options, plans, progress.blocks_done, resumable, a.split_image)
    upscaled = time.perf_counter()
    if session.writes(a.split_image):  # a split image is written by rank 0 only
        alpha = None if image.alpha is None else upscale_alpha(image.alpha, scale)
        save_image(job.target, result.image[0].permute(1, 2, 0), alpha, image, out_fmt)
        if resumable is not None:
            resumable.clear()
    return Done((w, h), options, plans, estimate, result, (start, decoded, upscaled, time.perf_counter()))


def _streamed(plans: list, a: RunSettings, session: Any) -> bool:
    """Whether the image runs out of core and is written band by band: the plan says so, in one process
    (a split image gathers its strips in RAM)."""
    from infdit_cli.banded import is_banded

    return is_banded(plans) and not (a.split_image and session.ranks.distributed)


def _upscale_streamed(job: Job, upscaler: Any, tensor: Any, options: Any, plans: list, progress: ImageProgress,
                      image: Any, out_fmt: str, resumable: Any | None = None) -> Any:
    """Run the bands and write each as it finishes (alpha rows upscaled beside them); the run's result.
    With a checkpoint, finished bands are kept there until the file is written."""
    from infdit_cli.banded import BandedUpscale
    from infdit_cli.imageio import save_bands
    from infdit_cli.preprocess import upscale_alpha, upscaled_rows

    scale = options.scale
    w, h = image.size
    run = BandedUpscale(upscaler, tensor, options, plans, progress.blocks_done, resumable)

    def bands():
        top = 0
        for band in run:
            rows = range(top, top + band.shape[-2])
            alpha = None if image.alpha is None else upscaled_rows(
                lambda part: upscale_alpha(part, scale), image.alpha, scale, rows)
            yield band[0].permute(1, 2, 0), alpha
            top = rows.stop

    save_bands(job.target, bands(), (w * scale, h * scale), image, out_fmt)
    assert run.finished, "the writer stopped before the last band"
    if resumable is not None:
        resumable.clear()
    return run  # stats and rss_growth_bytes, as an UpscaleResult has them


def _record(job: Job, done: Done, loaded: Loaded, a: RunSettings) -> dict[str, Any]:
    """The image's --json record; its 'wrote' line (and engine figures with --verbose) on stderr."""
    (w, h), scale = done.size, a.scale
    start, decoded, upscaled, end = done.seconds
    record = {"input": str(job.source), "output": str(job.target), "input_size": [w, h],
              "output_size": [w * scale, h * scale], "seconds": round(end - start, 3),
              "timings": {"decode_s": round(decoded - start, 3), "upscale_s": round(upscaled - decoded, 3),
                          "encode_s": round(end - upscaled, 3)},
              "estimated_upscale_s": round(done.estimate, 3), **_memory_fields(done.result, done.plans),
              "network_calls": sum(s.calls for s in done.result.stats), **loaded.run_info}
    if loaded.upscaler.config.denoise_cond:
        record["denoise"] = round(done.options.denoise, 4)
    if not a.quiet:
        info(f"wrote {job.target} ({w * scale}x{h * scale}) in {end - start:.1f} s")
    if a.verbose:
        for s in done.result.stats:
            info(f"  engine: {s.calls} calls, {s.tokens:,} tokens, {s.flops / 1e12:.2f} TFLOP, "
                 f"KV band {format_bytes(s.peak_kv_bytes)}, {s.placement}, device peak "
                 f"{format_bytes(s.peak_device_bytes)} ({s.peak_device_source})")
    return record


def _interrupted(batch: Batch, total_inputs: int, run_start: float) -> None:
    """After Ctrl-C: what the batch did so far, and the command that continues it (no finished file is
    redone, and an image with --checkpoint resumes at its last step)."""
    import shlex
    import sys

    args = [arg for arg in sys.argv[1:] if arg != "--overwrite"]
    if "--skip-existing" not in args:
        args.append("--skip-existing")
    failed = len(batch.failures)
    info(f"interrupted: {len(batch.results)} written, {batch.skipped} skipped, {failed} failed of "
         f"{total_inputs} in {format_duration(time.perf_counter() - run_start)}", "red")
    info(f"to continue: {shlex.join(['infdit', *args])}")


def _finish(batch: Batch, run_info: dict[str, Any] | None, total_inputs: int, run_start: float, as_json: bool,
            quiet: bool, session: Any = None) -> None:
    """The one-line summary on stderr, the JSON on stdout, and exit 1 if any input failed.

    Under torchrun every rank sends rank 0 what it did, and rank 0 reports for the whole job.
    """
    if session is not None and session.ranks.distributed:
        from infdit_cli.distributed import RankReport

        merged = session.gather(RankReport(session.ranks.rank, batch.results, batch.failures, batch.skipped))
        if merged is None:  # not rank 0
            return
        for failure in merged.failures:
            if failure["rank"] != 0:
                report_error(f"rank {failure['rank']}: {failure['error']}")
        batch = Batch(skipped=merged.skipped, failures=merged.failures, results=merged.outputs)
        run_info = {**(run_info or {}), "ranks": session.ranks.world}
    results = batch.results
    seconds = time.perf_counter() - run_start
    failed = len(batch.failures)
    if not quiet and (total_inputs > 1 or failed):
        info(f"{len(results)} written, {batch.skipped} skipped, {failed} failed of {total_inputs} "
             f"in {format_duration(seconds)}", "red" if failed else None)
    if as_json:
        summary: dict[str, Any] = {"outputs": results, "written": len(results), "skipped": batch.skipped,
                                   "failed": failed, "failures": batch.failures, "total_s": round(seconds, 3)}
        summary.update(run_info or {})
        print(json.dumps(summary, indent=2))
    if failed:
        raise typer.Exit(1)


def _memory_fields(result: Any, plans: list) -> dict[str, Any]:
    """--json memory figures of one image: measured device peak, the plan's, host bytes, RSS growth, n used."""
    stats = result.stats or []
    return {"peak_memory_bytes": max((s.peak_device_bytes for s in stats), default=None),
            "peak_memory_source": stats[0].peak_device_source if stats else None,
            "planned_peak_bytes": max(p.memory.device_bytes for p in plans),
            "host_bytes": max((s.host_bytes for s in stats), default=0),
            "rss_growth_bytes": getattr(result, "rss_growth_bytes", None),
            "block_batch": [s.block_batch for s in stats] or [p.memory.block_batch for p in plans],
            "placement": [s.placement for s in stats] or [p.memory.name for p in plans],
            "oom_retries": sum(s.oom_retries for s in stats)}


def _with_denoise(upscaler: Any, options: Any, setting: float | None, source: Path) -> tuple[Any, str]:
    """This image's options with its denoise strength (auto: from the file) and the pre-flight note."""
    from dataclasses import replace

    from infdit_cli.degrade import resolve_strength

    if not upscaler.config.denoise_cond:
        return options, ""
    strength, why = resolve_strength(setting, source)
    return replace(options, denoise=strength), f"denoise {strength:.2f} ({why})"


def _host_note(plan: Any, checkpointed: bool = False) -> str:
    """The pass's host side for the pre-flight line: out of core (band height, scratch disk) or nothing.
    A checkpointed out-of-core pass keeps its KV edges memory-mapped in the checkpoint folder."""
    host = plan.host
    if host is None or not host.banded:
        return ""
    if checkpointed:
        return f", {host.label('the checkpoint')}"
    disk = f", {format_bytes(host.disk_bytes)} scratch disk" if host.disk_bytes else ""
    return f", {host.name}{disk}"


def _preflight(job: Job, size: tuple[int, int], scale: int, plans: list, estimate: float, note: str = "",
               checkpointed: bool = False) -> None:
    """Two lines before an image, each within 80 columns for a short name: size, blocks, calls and the
    estimated time; then the placement plan and its planned device peak; a third with the denoise
    strength for models that take one."""
    plan = " / ".join(p.memory.name + _host_note(p, checkpointed) for p in plans)
    peak = max(p.memory.device_bytes for p in plans)
    host = max(p.memory.host_bytes for p in plans)
    off = f" (+{format_bytes(host)} host)" if host else ""
    info(f"{job.source.name}: {size[0]}x{size[1]} -> {size[0] * scale}x{size[1] * scale}, "
         f"{sum(p.blocks for p in plans)} blocks, {sum(p.nfe for p in plans)} network calls, "
         f"~{format_duration(estimate)}")
    info(f"  {plan}, est. peak {format_bytes(peak)}{off}")
    if note:
        info(f"  {note}")

