"""Issue 13's GPU verdicts: streamed = whole in bf16 on the card, and the bench results against the targets.

    python benchmarks/gpu_check.py EAGER.json COMPILE.json BAND.json FLAT.json

Writes results/<machine>-<date>-gpu-check-verdict.{md,json}. Run by gpu-check.sh. Its flow runs in
tests/test_fake_cuda.py on a simulated card (small sizes), so it cannot die of a typo on a GPU.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import torch

from infdit_cli.bench import machine_info, machine_slug, random_model
from infdit_cli.config import ModelConfig, preset
from infdit_cli.device import free_bytes, generator, randn
from infdit_cli.engine import StreamedRunner, WholeImageRunner, plan_placement
from infdit_cli.model.network import compile_unavailable

HERE = Path(__file__).resolve().parent
TARGET_S_PER_NFE_4096 = 3.5
TARGET_PEAK_4096 = 8e9
TARGET_PEAK_16384 = 24e9
LIMIT = 2e-2  # bf16 relative error of streamed against whole


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def streamed_equals_whole(device: torch.device, config: ModelConfig | None = None, size: int = 1024,
                          ns: tuple[int, ...] = (1, 3, 8), compiled_n: int = 4) -> dict[str, Any]:
    """x4 random weights, bf16, 1024² (8×8 blocks): streamed n = 1, 3, 8 and compiled n = 4 against whole."""
    cfg = config or preset("x4")
    net = random_model(cfg, torch.bfloat16, device)
    g = generator(device, 0)
    net_in = randn((1, cfg.in_channels, size, size), g, device)
    lr = randn((1, cfg.image_channels, size // cfg.sr_scale, size // cfg.sr_scale), g, device).to(torch.bfloat16)
    vector = randn((1, cfg.vector_dim), g, device) if cfg.vector_dim else None
    c_noise = torch.tensor([0.1], device=device)
    whole = WholeImageRunner(net, lr, vector)(net_in, c_noise).float()
    errs = {f"n={n}": rel_err(StreamedRunner(net, lr, vector, n)(net_in, c_noise).float(), whole) for n in ns}
    verdict: dict[str, Any] = {"relative_errors": errs, "limit": LIMIT}
    reason = compile_unavailable(device.type)
    if reason:
        verdict["compiled"] = f"not checked: {reason}"
    else:
        net.compile_layers()
        errs[f"n={compiled_n} compiled"] = rel_err(StreamedRunner(net, lr, vector, compiled_n)(net_in, c_noise).float(),
                                                   whole)
    verdict["ok"] = all(e <= LIMIT for e in errs.values())
    return verdict


def rows(path: str) -> list[dict[str, Any]]:
    return [r for run in json.loads(Path(path).read_text())["runs"] for r in run["rows"]]


def pick(table: list[dict[str, Any]], size: str, path: str) -> dict[str, Any] | None:
    return next((r for r in table if "x".join(map(str, r["resolution"])) == size and r["path"] == path), None)


def bench_verdicts(eager: list[dict[str, Any]], compiled: list[dict[str, Any]], band: list[dict[str, Any]],
                   flat: list[dict[str, Any]]) -> dict[str, Any]:
    """The bench rows against the issue-13 targets."""
    verdict: dict[str, Any] = {}
    for label, table in (("eager", eager), ("compile", compiled)):
        r = pick(table, "4096x4096", "streamed")
        if r:
            verdict[f"4096_{label}"] = {"s_per_nfe": r["seconds_per_nfe"], "peak_bytes": r["peak_memory_bytes"],
                                        "placement": r["placement"], "tflops": r["tflops"],
                                        "ok_time": (r["seconds_per_nfe"] or 1e9) <= TARGET_S_PER_NFE_4096,
                                        "ok_memory": r["peak_memory_bytes"] <= TARGET_PEAK_4096}
    b = pick(band, "16384x1024", "streamed")
    if b:
        verdict["band_16384x1024"] = {"peak_bytes": b["peak_memory_bytes"], "kv_bytes": b["kv_bytes"],
                                      "placement": b["placement"], "s_per_nfe": b["seconds_per_nfe"]}
    short, tall = pick(flat, "1024x512", "streamed"), pick(flat, "1024x2048", "streamed")
    if short and tall:
        ratio = tall["peak_memory_bytes"] / short["peak_memory_bytes"] if short["peak_memory_bytes"] else None
        verdict["flat_in_height"] = {"ratio": ratio, "limit": 1.10, "ok": ratio is not None and ratio <= 1.10,
                                     "source": tall["peak_memory_source"]}
    return verdict


def check(paths: list[str], device: torch.device, out_dir: Path, **flow: Any) -> Path:
    """Every verdict, written as JSON and markdown under `out_dir`; returns the markdown's path.

    `flow`: sizes for `streamed_equals_whole` (the test shrinks them).
    """
    eager, compiled, band, flat = (rows(p) for p in paths)
    verdict: dict[str, Any] = {"streamed_equals_whole_bf16": streamed_equals_whole(device, **flow)}
    verdict.update(bench_verdicts(eager, compiled, band, flat))
    free = free_bytes(device) or 0  # free now, not the card's total: what the planner would see
    plan = plan_placement(preset("x4"), (128, 128), torch.bfloat16, device.type, min(int(TARGET_PEAK_16384), free))
    verdict["plan_16384_square"] = {**plan.to_dict(), "ok": plan.fits}
    machine = machine_info(device, measure_peak=False)
    now = dt.datetime.now(dt.timezone.utc)
    stem = out_dir / f"{machine_slug(machine)}-{now:%Y-%m-%d}-gpu-check-verdict"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(verdict, indent=2) + "\n")
    lines = [f"# GPU check verdicts: {machine.device_name}, {now:%Y-%m-%d %H:%M} UTC", ""]
    lines += [f"- **{key}**: `{json.dumps(value)}`" for key, value in verdict.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".md")


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    print(check(argv, torch.device("cuda"), HERE / "results"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
