"""Run the bench matrix (models × resolutions × block batches × dtypes) and write the results.

Writes results/<machine-slug>-<date>[-tag].md and .json: the machine, the commit, the exact command
and one row per configuration, so runs on other commits or cards can be compared (compare.py).

    python benchmarks/run_matrix.py --presets tiny,small --resolutions 512,1024,2048 --block-batches 1,2,4
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from infdit_cli.bench import (
    BenchReport,
    how_measured,
    machine_slug,
    memory_ratios,
    parse_block_batch,
    parse_resolution,
    run_bench,
)
from infdit_cli.cli_common import parse_dtype, pick_device
from infdit_cli.units import format_bytes, format_duration

HERE = Path(__file__).resolve().parent


def git_state() -> dict[str, Any]:
    """Commit and whether the tree had uncommitted changes: results belong to a commit."""
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": run("rev-parse", "HEAD"), "describe": run("describe", "--always", "--dirty"),
            "dirty": None if status is None else bool(status)}


def markdown_table(report: BenchReport) -> list[str]:
    cuda = report.machine.device.startswith("cuda")
    layers = report.model["num_layers"]
    head = ["size", "path", "n", "dtype", "s / NFE", "est. s / NFE", f"run ({report.settings['nfe']} NFE)",
            "peak memory" if cuda else "peak (accounting)", "planned peak", "host", "KV band", "TFLOP/s",
            "% of matmul peak" if cuda else "RSS growth", "how", "placement"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows:
        n = "-" if r.block_batch is None else f"{r.block_batch}{' (auto)' if r.block_batch_requested == 'auto' else ''}"
        last = (f"{r.pct_of_peak:.0f}" if r.pct_of_peak is not None else "-") if cuda \
            else format_bytes(r.rss_growth_bytes)
        cells = [f"{r.resolution[0]}x{r.resolution[1]}", r.path, n, r.dtype, format_duration(r.seconds_per_nfe),
                 format_duration(r.estimated_seconds_per_nfe), format_duration(r.projected_run_seconds),
                 format_bytes(r.peak_memory_bytes), format_bytes(r.planned_peak_bytes),
                 format_bytes(r.host_bytes) if r.host_bytes else "-",
                 "-" if r.path == "whole" else format_bytes(r.kv_bytes),
                 "-" if r.tflops is None else f"{r.tflops:.3g}", last, how_measured(r, layers), r.placement]
        lines.append("| " + " | ".join(cells) + " |")
    for s, w in memory_ratios(report.rows):
        lines.append("")
        lines.append(f"Memory {s.resolution[0]}x{s.resolution[1]} {s.dtype}: streamed n={s.block_batch} "
                     f"{format_bytes(s.peak_memory_bytes)} : whole {format_bytes(w.peak_memory_bytes)}"
                     f"{' (estimated)' if w.estimated else ''} = 1 : {w.peak_memory_bytes / s.peak_memory_bytes:.3g}")
    return lines


def write_markdown(path: Path, doc: dict[str, Any], reports: list[BenchReport]) -> None:
    m = reports[0].machine
    lines = [f"# infdit bench: {doc['machine_slug']}, {doc['date']}", "",
             f"- machine: {m.device_name} ({m.device}); CPU {m.cpu_model}, {m.cpu_cores} cores "
             f"({m.torch_threads} torch threads); {format_bytes(m.total_memory_bytes)}; {m.os_platform}",
             f"- torch {m.torch_version}" + (f", CUDA {m.cuda_version}" if m.cuda_version else "")
             + (f"; bf16 matmul 8192³ {m.matmul_peak_tflops:.0f} TFLOP/s" if m.matmul_peak_tflops else ""),
             f"- load average at start: {m.load_average:.2f}" if m.load_average is not None else "- load: n/a",
             f"- commit: {doc['git']['describe']} (dirty: {doc['git']['dirty']})",
             f"- command: `{doc['command']}`",
             "- one network call (NFE) on random input (sigma 1.5); run = NFE × the sampler's calls; models with "
             "random weights (time and memory do not depend on the values)",
             "- how: measured ×k = k full calls (median); extrap. = timed on sampled block groups (and the first "
             "layers of a group) and scaled; est. = not run, analytic memory only", ""]
    if not m.device.startswith("cuda"):
        lines += ["CPU peak memory is the engine accounting (weights + KV band + activations + the call's "
                  "pixels); RSS growth is the measured process peak over the timed part only.", ""]
    for report in reports:
        info = report.model
        lines += [f"## {info['name']} ({info['parameters'] / 1e6:.1f} M parameters, {info['num_layers']} layers, "
                  f"hidden {info['hidden_size']}), {report.settings['dtype']}", ""]
        lines += markdown_table(report) + [""]
    path.write_text("\n".join(lines))


def free_name(folder: Path, stem: str) -> str:
    name, k = stem, 2
    while (folder / f"{name}.json").exists() or (folder / f"{name}.md").exists():
        name, k = f"{stem}-{k}", k + 1
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="tiny,small", help="comma-separated presets (random weights)")
    p.add_argument("--model", action="append", default=[], help="a model file/folder (repeatable), besides presets")
    p.add_argument("--resolutions", default="512,1024,2048", help="comma-separated, each 4096 or WxH")
    p.add_argument("--block-batches", default="1,2,4", help="comma-separated n or auto")
    p.add_argument("--dtypes", default="auto", help="comma-separated: auto, bf16, fp16, fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="heun-edm")
    p.add_argument("--time-budget", type=float, default=20.0, help="timing seconds per row")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-whole", action="store_true", help="skip the whole-image path")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer layers")
    p.add_argument("--state", choices=("device", "host"), help="force where the sampler state lives")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    sizes = [parse_resolution(s) for s in a.resolutions.split(",")]
    batches = [parse_block_batch(b) for b in a.block_batches.split(",")]
    dtypes = list(dict.fromkeys(parse_dtype(d, device.type) for d in a.dtypes.split(",")))
    models: list[tuple[Any, str | None]] = [(name, None) for name in a.presets.split(",") if name]
    if a.model:
        from infdit_cli.weights import load_model, resolve_model

        models += [(load_model(resolve_model(m).weights), m) for m in a.model]
    reports = []
    for model, source in models:
        for dtype in dtypes:
            label = source or model
            print(f"== {label} {dtype}", file=sys.stderr, flush=True)
            reports.append(run_bench(model, sizes, batches, dtype, device, a.steps, a.sampler, not a.no_whole,
                                     a.time_budget, source=source, compile=a.compile, state=a.state,
                                     progress=lambda msg: print(f"   {msg}", file=sys.stderr, flush=True)))
    now = dt.datetime.now(dt.timezone.utc)
    slug = machine_slug(reports[0].machine)
    doc = {"machine_slug": slug, "date": now.strftime("%Y-%m-%d %H:%M UTC"), "git": git_state(),
           "command": " ".join(["python benchmarks/run_matrix.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": reports[0].to_dict()["machine"],
           "runs": [{k: v for k, v in r.to_dict().items() if k != "machine"} for r in reports]}
    a.out.mkdir(parents=True, exist_ok=True)
    stem = free_name(a.out, f"{slug}-{now:%Y-%m-%d}" + (f"-{a.tag}" if a.tag else ""))
    (a.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(a.out / f"{stem}.md", doc, reports)
    print(a.out / f"{stem}.md")
    print(a.out / f"{stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
