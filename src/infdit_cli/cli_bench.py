"""`infdit bench`: the command over `infdit_cli.bench` (register with `app.command("bench")(bench_command)`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infdit_cli import errors
from infdit_cli.bench import BenchError, BenchReport, how_measured, memory_ratios
from infdit_cli.cli_common import DEVICE_HELP, DTYPE_HELP, Dtype, cli_errors, fail, info, out, parse_dtype, pick_device
from infdit_cli.samplers.schedules import RELEASED
from infdit_cli.units import format_bytes, format_duration


def render(report: BenchReport, console: Console) -> None:
    """The human-readable report: machine and model lines, one table, the memory ratios."""
    if not console.is_terminal:  # pipes and files: do not squeeze the table into 80 columns
        console = Console(file=console.file, width=max(console.width, 160), no_color=console.no_color)
    m, model, s = report.machine, report.model, report.settings
    cuda = m.device.startswith("cuda")
    peak = f", bf16 matmul peak {m.matmul_peak_tflops:.0f} TFLOP/s" if m.matmul_peak_tflops else ""
    load = f", load {m.load_average:.1f}" if m.load_average is not None and not cuda else ""
    console.print(f"[bold]machine[/] {escape(m.device_name)} ({m.device}), {m.cpu_cores} CPU cores "
                  f"({m.torch_threads} torch threads{load}), {format_bytes(m.total_memory_bytes)}, "
                  f"torch {m.torch_version}{peak}", highlight=False)
    weights = "random weights (timing only: values do not change time or memory)" if model["random_weights"] \
        else "loaded weights"
    console.print(f"[bold]model[/] {escape(str(model['name']))}: {model['parameters'] / 1e6:.1f} M parameters, "
                  f"{model['num_layers']} layers, hidden {model['hidden_size']}, {weights}", highlight=False)
    console.print(f"[bold]run[/] one network call (NFE) on random input; projected run = "
                  f"{s['nfe']} NFE ({s['sampler']}, {s['steps']} steps); time budget {s['time_budget_s']:g} s per row",
                  highlight=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["size", "path", "n", "dtype", "s / NFE", "est. s / NFE", f"run ({s['nfe']} NFE)",
            "peak memory" if cuda else "peak (acct)", "host", "KV band", "TFLOP/s", "% peak" if cuda else "RSS growth",
            "how"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("size", "path", "dtype", "how") else "right", no_wrap=True)
    for r in report.rows:
        mem = format_bytes(r.peak_memory_bytes)
        kv = "-" if r.path == "whole" else format_bytes(r.kv_bytes)
        tail = (f"{r.pct_of_peak:.0f}%" if r.pct_of_peak is not None else "-") if cuda \
            else format_bytes(r.rss_growth_bytes)
        n = "-" if r.block_batch is None else (f"{r.block_batch} (auto)" if r.block_batch_requested == "auto"
                                               else str(r.block_batch))
        table.add_row(f"{r.resolution[0]}x{r.resolution[1]}", r.path, n, r.dtype, format_duration(r.seconds_per_nfe),
                      format_duration(r.estimated_seconds_per_nfe), format_duration(r.projected_run_seconds), mem,
                      format_bytes(r.host_bytes) if r.host_bytes else "-", kv,
                      "-" if r.tflops is None else f"{r.tflops:.3g}", tail, how_measured(r, model["num_layers"]))
    console.print(table)
    for streamed, whole in memory_ratios(report.rows):
        est = " (whole estimated)" if whole.estimated else ""
        console.print(f"memory {streamed.resolution[0]}x{streamed.resolution[1]} {streamed.dtype}: streamed "
                      f"n={streamed.block_batch} {format_bytes(streamed.peak_memory_bytes)} : whole "
                      f"{format_bytes(whole.peak_memory_bytes)} = 1 : "
                      f"{whole.peak_memory_bytes / streamed.peak_memory_bytes:.3g}{est}", highlight=False)
    notes = ["KV band: what the engine allocated on full calls, calculated from the grid (stream_kv_bytes) "
             "on extrapolated ones; host: what the plan keeps off the device (sampler state, band)",
             "est. s / NFE: the calibrated estimate the upscale pre-flight line would show",
             "est. rows were not run: memory from whole_image_memory_bytes, no time"]
    for r in report.rows:
        if r.path == "streamed":
            notes.append(f"plan {r.resolution[0]}x{r.resolution[1]} n={r.block_batch_requested}: {r.placement}")
    if not cuda:
        notes.insert(0, "peak (acct) = engine accounting of what the compute device holds: weights + KV band + "
                        "activations + the pixels there (a group's when the state is on the host); "
                        "RSS growth = measured process peak (VmHWM) over the timed part only")
    for note in notes:
        console.print(note, highlight=False, style="dim", soft_wrap=True)


def _load(model: str | None, preset_name: str | None, device: Any, dtype: Any) -> tuple[Any, str | None]:
    if model and preset_name:
        raise BenchError("give either --model or --preset, not both")
    if not model:
        return preset_name or "x4", None
    from infdit_cli.weights import load_model, resolve_model

    files = resolve_model(model)
    return load_model(files.weights, device=device, dtype=dtype), model


def _bench(resolution: list[str] | None, model: str | None, preset_name: str | None, block_batch: list[str] | None,
           dtype: str, device: str, steps: int, sampler: str, whole: bool, as_json: bool, time_budget: float,
           threads: int | None, state: str | None = None, compile: bool = False) -> None:
    import torch

    from infdit_cli.bench import parse_block_batch, parse_resolution, run_bench

    if threads is not None:
        if threads < 1:
            raise BenchError("--threads must be at least 1")
        torch.set_num_threads(threads)
    sizes = [parse_resolution(r) for r in (resolution or ["4096"])]
    batches = [parse_block_batch(b) for b in (block_batch or ["auto"])]
    dev = pick_device(device)
    dt = parse_dtype(dtype, dev.type)
    if state not in (None, "device", "host"):
        raise BenchError(f"--state must be device or host (got {state!r})")
    if compile:
        from infdit_cli.model.network import compile_unavailable

        reason = compile_unavailable(dev.type)
        if reason:
            raise BenchError(f"--compile is not available here: {reason}")
    net, source = _load(model, preset_name, dev, dt)
    report = run_bench(net, sizes, batches, dt, dev, steps=steps, sampler=sampler, include_whole=whole,
                       time_budget_s=time_budget, source=source, state=state, compile=compile,
                       progress=lambda msg: info(msg, style="dim"))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        render(report, out)


@cli_errors
def bench_command(
    resolution: Annotated[list[str] | None, typer.Option(
        "--resolution", help="Output size: 4096 or WxH (repeatable).", show_default="4096")] = None,
    model: Annotated[str | None, typer.Option(help="Model file, folder or hub id (org/name).")] = None,
    preset_name: Annotated[str | None, typer.Option(
        "--preset", help="Preset with random weights instead of --model (x4, base, small, tiny).",
        show_default="x4")] = None,
    block_batch: Annotated[list[str] | None, typer.Option(
        "--block-batch", "-n", help="Block batch n or auto (repeatable: one row each).", show_default="auto")] = None,
    dtype: Annotated[Dtype, typer.Option(help=DTYPE_HELP)] = Dtype.auto,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    steps: Annotated[int, typer.Option(help="Sampler steps for the projected run time.")] = RELEASED.steps,
    sampler: Annotated[str, typer.Option(help="Sampler whose NFE count projects the run time.")] = RELEASED.sampler,
    whole: Annotated[bool, typer.Option(
        "--whole/--no-whole", help="Also the whole-image path (measured if it fits, else estimated).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report on stdout.")] = False,
    time_budget: Annotated[float, typer.Option(
        help="Timing seconds per row; slower calls are extrapolated from sampled block groups.")] = 60.0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.", show_default="torch's choice")] = None,
    state: Annotated[str | None, typer.Option(
        help="Where the sampler's image-sized state lives: device or host.", show_default="planned")] = None,
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the transformer layers (needs a C++ compiler on CPU, Triton on CUDA)."
    )] = False,
) -> None:
    """Time one network call (NFE) and its memory, streamed vs whole image, on random input."""
    try:
        _bench(resolution, model, preset_name, block_batch, dtype, device, steps, sampler, whole, as_json,
               time_budget, threads, state, compile)
    except BenchError as exc:
        raise fail(errors.one_line(exc)) from None
