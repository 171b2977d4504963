"""The README's side-by-side crop: bicubic, the default model and the original, ×4 from a held-out photo.

    python training/make_crop.py /work/wallpapers/val/ColorfulCups.jpg docs/default-model-crop.png

The HR is prepared as `infdit eval --max-side 384` does; a 120-px square of it (and of both
upscales) is shown 2× (nearest) with labels. Two rows: the clean LR, and the same LR saved as a
JPEG at quality 75 (the model given the strength `--denoise auto` reads from that file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from infdit_cli.degrade import parse_degradation
from infdit_cli.evaluate import bicubic_upscale, degrade_input, downscale, load_hr, quantise
from infdit_cli.pipeline import UpscaleOptions, load_upscaler
from infdit_cli.weights import default_model_path

CROP, ZOOM, LABEL = 120, 2, 18


def to_image(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(quantise(x)[0].permute(1, 2, 0).numpy().astype(np.uint8))


def main(src: Path, dst: Path, top: int = 60, left: int = 150) -> None:
    hr = load_hr(src, 384)
    clean = downscale(hr)
    jpeg, strength = degrade_input(clean, parse_degradation("jpeg:75"))
    upscaler = load_upscaler(str(default_model_path()), torch.device("cpu"))
    side, row_h = CROP * ZOOM, CROP * ZOOM + LABEL
    sheet = Image.new("RGB", (3 * side + 8, 2 * row_h + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (what, lr, denoise) in enumerate((("clean LR", clean, 0.0), ("JPEG-75 LR", jpeg, strength))):
        sr = upscaler.upscale(lr, UpscaleOptions(scale=4, denoise=denoise)).image.float()
        panels = [(f"bicubic, {what}", bicubic_upscale(lr)), (f"infdit default, {what}", sr), ("original", hr)]
        for i, (name, x) in enumerate(panels):
            tile = to_image(x[..., top: top + CROP, left: left + CROP]).resize((side, side), Image.Resampling.NEAREST)
            sheet.paste(tile, (i * (side + 4), r * (row_h + 4) + LABEL))
            draw.text((i * (side + 4) + 4, r * (row_h + 4) + 3), name, fill="black")
    sheet.save(dst)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
