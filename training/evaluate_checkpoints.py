"""The model card's per-checkpoint table: `infdit eval`'s numbers for every kept checkpoint.

    python training/evaluate_checkpoints.py /work/train_run/out /work/wallpapers/val [--sigma 0.003 ...] \
        [--degrade jpeg:75 ...] [--denoise 0.5] [--start-noise 0] [--block-offset 4]
    python training/evaluate_checkpoints.py MODEL.safetensors /work/wallpapers/val ...   # one model file

Each checkpoint is scored on the validation images as `infdit eval FOLDER --max-side 384`
does (HR shrunk to long side 384, LR = antialiased bicubic ÷4 in 8 bits, optionally degraded as
`--degrade` does), with its own sampling (one Euler step), or at each --sigma given, and the
denoise strength `auto` reads (or --denoise), and the start's noise the model records (or
--start-noise), and its block offset (or --block-offset: a model trained without one, run with one).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path

import torch

from infdit_cli.degrade import parse_degradation
from infdit_cli.evaluate import evaluate
from infdit_cli.pipeline import UpscaleOptions, load_upscaler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--sigma", type=float, action="append")
    parser.add_argument("--every", type=int, default=1000, help="only checkpoints at multiples of this step")
    parser.add_argument("--degrade", action="append", help="jpeg:Q or noise:S (repeatable; 'none' = clean)")
    parser.add_argument("--denoise", type=float, help="strength for models with a denoise input (default: auto)")
    parser.add_argument("--start-noise", type=float, help="the start's noise in units of σ (default: the model's)")
    parser.add_argument("--block-offset", type=int, help="LR pixels the block grid starts in (default: the model's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| step | LR | σ | PSNR model | PSNR bicubic | Δ dB | SSIM model | SSIM bicubic | sharpness model | "
          "sharpness bicubic | grid model | grid bicubic | seams model | seams bicubic |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    files = [args.run] if args.run.is_file() else sorted(args.run.glob("ckpt_*.safetensors"))
    for ckpt in files:
        step = int(ckpt.stem.split("_")[1]) if ckpt.stem.startswith("ckpt_") else 0
        if step % args.every:
            continue
        upscaler = load_upscaler(str(ckpt), torch.device("cpu"))
        if args.block_offset is not None:
            upscaler.model.config = replace(upscaler.config, block_offset=args.block_offset)
        for spec, sigma in itertools.product(args.degrade or ["none"], args.sigma or [None]):
            s = sigma or float(upscaler.defaults["sigma_max"])  # (sigma_min is unused by one step)
            options = upscaler.options(UpscaleOptions(scale=4, sigma_max=s, sigma_min=s / 2,
                                                      start_noise=args.start_noise))
            degradation = None if spec == "none" else parse_degradation(spec)
            denoise = args.denoise if upscaler.config.denoise_cond else None
            m = evaluate(upscaler, args.folder, options, max_side=384, degradation=degradation,
                         denoise=denoise).mean()
            print(f"| {step} | {spec} | {options.sigma_max:g} | {m['psnr']:.2f} | {m['psnr_bicubic']:.2f} | "
                  f"{m['psnr'] - m['psnr_bicubic']:+.2f} | {m['ssim']:.4f} | {m['ssim_bicubic']:.4f} | "
                  f"{m['sharpness']:.3f} | {m['sharpness_bicubic']:.3f} | {m['grid']:.3f} | "
                  f"{m['grid_bicubic']:.3f} | {m['seams']:.3f} | {m['seams_bicubic']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
