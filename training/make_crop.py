"""The README's side-by-side crop: bicubic, the default model and the original, ×4 from a held-out photo.

    python training/make_crop.py /work/wallpapers/val/ColorfulCups.jpg docs/default-model-crop.png

The HR is prepared as `infdit eval --max-side 384` does; a 120-px square of it (and of both
upscales) is shown 2× (nearest) with labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from infdit_cli.evaluate import bicubic_upscale, downscale, load_hr, quantise
from infdit_cli.pipeline import UpscaleOptions, load_upscaler
from infdit_cli.weights import default_model_path

CROP, ZOOM, LABEL = 120, 2, 18


def to_image(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(quantise(x)[0].permute(1, 2, 0).numpy().astype(np.uint8))


def main(src: Path, dst: Path, top: int = 60, left: int = 150) -> None:
    hr = load_hr(src, 384)
    lr = downscale(hr)
    upscaler = load_upscaler(str(default_model_path()), torch.device("cpu"))
    sr = upscaler.upscale(lr, upscaler.options(UpscaleOptions(scale=4))).image.float()
    panels = [("bicubic", bicubic_upscale(lr)), ("infdit default", sr), ("original", hr)]
    side = CROP * ZOOM
    sheet = Image.new("RGB", (3 * side + 8, side + LABEL), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, x) in enumerate(panels):
        tile = to_image(x[..., top: top + CROP, left: left + CROP]).resize((side, side), Image.Resampling.NEAREST)
        sheet.paste(tile, (i * (side + 4), LABEL))
        draw.text((i * (side + 4) + 4, 3), name, fill="black")
    sheet.save(dst)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
