"""Issue 13's GPU verdicts: streamed = whole in bf16 on the card, and the bench results against the targets.

    python benchmarks/gpu_check.py EAGER.json COMPILE.json BAND.json FLAT.json

Writes results/<machine>-<date>-gpu-check-verdict.{md,json}. Run by gpu-check.sh.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import torch

from infdit_cli.bench import machine_info, machine_slug, random_model
from infdit_cli.config import preset
from infdit_cli.engine import StreamedRunner, WholeImageRunner, plan_placement

HERE = Path(__file__).resolve().parent
TARGET_S_PER_NFE_4096 = 3.5
TARGET_PEAK_4096 = 8e9
TARGET_PEAK_16384 = 24e9


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def streamed_equals_whole(device: torch.device) -> dict[str, Any]:
    """x4 random weights, bf16, 1024² (8×8 blocks): streamed n = 1, 3, 8 and compiled n = 4 against whole."""
    cfg = preset("x4")
    net = random_model(cfg, torch.bfloat16, device)
    g = torch.Generator(device=device).manual_seed(0)
    net_in = torch.randn(1, 6, 1024, 1024, generator=g, device=device)
    lr = torch.randn(1, 3, 256, 256, generator=g, device=device).to(torch.bfloat16)
    vector = torch.randn(1, cfg.vector_dim, generator=g, device=device)
    c_noise = torch.tensor([0.1], device=device)
    whole = WholeImageRunner(net, lr, vector)(net_in, c_noise).float()
    errs = {f"n={n}": rel_err(StreamedRunner(net, lr, vector, n)(net_in, c_noise).float(), whole) for n in (1, 3, 8)}
    net.compile_layers()
    errs["n=4 compiled"] = rel_err(StreamedRunner(net, lr, vector, 4)(net_in, c_noise).float(), whole)
    return {"relative_errors": errs, "limit": 2e-2, "ok": all(e <= 2e-2 for e in errs.values())}


def rows(path: str) -> list[dict[str, Any]]:
    return [r for run in json.loads(Path(path).read_text())["runs"] for r in run["rows"]]


def pick(table: list[dict[str, Any]], size: str, path: str) -> dict[str, Any] | None:
    return next((r for r in table if "x".join(map(str, r["resolution"])) == size and r["path"] == path), None)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    device = torch.device("cuda")
    eager, compiled, band, flat = (rows(p) for p in argv)
    verdict: dict[str, Any] = {"streamed_equals_whole_bf16": streamed_equals_whole(device)}
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
        ratio = tall["peak_memory_bytes"] / short["peak_memory_bytes"]
        verdict["flat_in_height"] = {"ratio": ratio, "limit": 1.10, "ok": ratio <= 1.10,
                                     "source": tall["peak_memory_source"]}
    free = torch.cuda.mem_get_info(device)[1]
    plan = plan_placement(preset("x4"), (128, 128), torch.bfloat16, "cuda", min(int(TARGET_PEAK_16384), free))
    verdict["plan_16384_square"] = {**plan.to_dict(), "ok": plan.fits}
    machine = machine_info(device, measure_peak=False)
    now = dt.datetime.now(dt.timezone.utc)
    stem = HERE / "results" / f"{machine_slug(machine)}-{now:%Y-%m-%d}-gpu-check-verdict"
    stem.with_suffix(".json").write_text(json.dumps(verdict, indent=2) + "\n")
    lines = [f"# GPU check verdicts: {machine.device_name}, {now:%Y-%m-%d %H:%M} UTC", ""]
    lines += [f"- **{key}**: `{json.dumps(value)}`" for key, value in verdict.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
