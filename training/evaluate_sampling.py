"""The eval table of one model at one sampling (σ of the single step, the start's noise), set by set.

    python training/evaluate_sampling.py MODEL|- SIGMA START_NOISE SETS OUT.json
    python training/evaluate_sampling.py - 0.003 1 val,val@jpeg:75,val_illustrations /tmp/shipped.json

SETS: folders under /work/wallpapers (`training/prepare_wallpapers.py`), each optionally @ an `eval
--degrade` spec; every image's long side shrunk to 384 as in the model card. One thread; prints a JSON
line per set (means of PSNR, SSIM, sharpness, grid for the model and bicubic) and writes them all.
"""

from __future__ import annotations

import json
import statistics
import sys

import torch

from infdit_cli.degrade import parse_degradation
from infdit_cli.evaluate import evaluate
from infdit_cli.pipeline import UpscaleOptions, load_upscaler


def main(model: str, sigma: float, start_noise: float, sets: list[str], out: str) -> None:
    torch.set_num_threads(1)
    upscaler = load_upscaler(None if model == "-" else model, torch.device("cpu"))
    options = UpscaleOptions(scale=4, sigma_max=sigma, sigma_min=sigma / 2, start_noise=start_noise)
    rows = []
    for entry in sets:
        folder, spec = entry.split("@") if "@" in entry else (entry, None)
        report = evaluate(upscaler, f"/work/wallpapers/{folder}", options, max_side=384,
                          degradation=parse_degradation(spec) if spec else None)

        def mean(field: str, images=report.images) -> float:
            return statistics.mean(getattr(i, field) or 0.0 for i in images)

        row = {"set": entry, "sigma": sigma, "start_noise": start_noise, "strength": mean("denoise"),
               **{f: mean(f) for f in ("psnr", "psnr_bicubic", "ssim", "ssim_bicubic", "sharpness",
                                        "sharpness_bicubic", "grid", "grid_bicubic")}}
        row["gain"] = row["psnr"] - row["psnr_bicubic"]
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(","), sys.argv[5])
