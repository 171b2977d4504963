"""Width × depth at the same CPU budget, from scratch: which shape of the default model learns most per
CPU-minute (the model card's table). One thread per run; runs one after another.

    nice -n 10 python training/compare_shapes.py 20          # minutes per shape
    python training/compare_shapes.py 20 --shapes 128x4,96x6,160x3

Each shape: its seconds per step timed over 8 steps, then a cosine run of as many steps as fit the
budget (the default model's recipe: batch 8 × 96 px crops, lr 1e-3, degradations, 30 % clean), and
its EMA model's gain over bicubic on the validation crops (/work/wallpapers/val384) and its per-image
time (128² ×4, two threads, `compare_speed.median_seconds`) are reported.
Results: benchmarks/results/amd-epyc-2c-shapes.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from compare_speed import median_seconds

from infdit_cli.train import TrainConfig, train

OUT = Path("/work/train_run/shapes")
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "amd-epyc-2c-shapes.json"


def config(hidden: int, layers: int, steps: int, out: Path) -> TrainConfig:
    heads = max(1, hidden // 64)
    return TrainConfig(
        data="/work/wallpapers/train", out=str(out), preset="small",
        overrides=dict(hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_hidden=4 * hidden,
                       block_size=32, denoise_cond=True),
        steps=steps, batch_size=8, crop=96, lr=1e-3, warmup=min(100, steps // 10), cosine=True, ema=0.995,
        grad_clip=1.0, objective="one-step", sigma=0.004, sample_sigma=0.003, p_resize=0.1,
        val_every=max(1, steps), save_every=0, val_data="/work/wallpapers/val384", seed=1, device="cpu",
        degrade=True, p_clean=0.3, loss="l2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("minutes", type=float)
    ap.add_argument("--shapes", default="128x4,96x6,160x3")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for shape in args.shapes.split(","):
        hidden, layers = (int(v) for v in shape.split("x"))
        probe = OUT / f"{shape}-probe"
        shutil.rmtree(probe, ignore_errors=True)
        timed = train(config(hidden, layers, 8, probe))
        per_step = timed.seconds / 8
        steps = max(10, int(args.minutes * 60 / per_step))
        out = OUT / shape
        shutil.rmtree(out, ignore_errors=True)
        result = train(config(hidden, layers, steps, out))
        gain = round(result.gain_history[-1][1], 3) if result.gain_history else None
        row = {"shape": shape, "parameters": result.num_parameters, "seconds_per_step": round(per_step, 3),
               "steps": steps, "train_seconds": round(result.seconds), "val_gain_db": gain,
               "image_seconds_128": round(median_seconds({shape: str(result.model_path)}, runs=5)[shape], 3)}
        torch.set_num_threads(1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    RESULTS.write_text(json.dumps({"machine": "AMD EPYC, 2 cores shared with one training job; one thread each",
                                   "minutes_per_shape": args.minutes, "rows": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
