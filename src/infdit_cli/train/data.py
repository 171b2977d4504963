"""Training data: HR crops (random crop, or resize-shorter-side-then-crop), LR by antialiased
bicubic ÷ scale quantised to 8 bits, optional real-world degradations (`infdit_cli.degrade`) with
their strength labels, and the per-step generator that makes every draw a function of (seed, step) only.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from infdit_cli import evaluate
from infdit_cli.degrade import Recipe, degrade_lr
from infdit_cli.degrade import clean_lr as make_lr
from infdit_cli.evaluate import IMAGE_SUFFIXES
from infdit_cli.preprocess import bicubic_resize
from infdit_cli.train.config import TrainConfig, TrainError


def list_images(folder: str | Path) -> list[Path]:
    """Every image below `folder`, sorted so the list (and hence the split) is reproducible."""
    if not Path(folder).is_dir():
        raise TrainError(f"{folder}: not a folder")
    return evaluate.list_images(folder)


def load_rgb(path: Path) -> Tensor:
    """uint8 [3, H, W]; alpha is dropped (Pillow's RGB conversion)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def resize_shorter(img: Tensor, side: int) -> Tensor:
    """uint8 image with its shorter side scaled to `side` (antialiased bicubic)."""
    h, w = img.shape[-2:]
    s = side / min(h, w)
    size = (max(side, round(h * s)), max(side, round(w * s)))
    out = bicubic_resize(img[None].float(), size)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


class CropSource:
    """Decoded images (cached), each also at 'shorter side = crop' for the resize-then-crop branch."""

    def __init__(self, files: list[Path], crop: int) -> None:
        self.files, self.crop = files, crop
        self._full: dict[int, Tensor] = {}
        self._small: dict[int, Tensor] = {}

    def full(self, i: int) -> Tensor:
        if i not in self._full:
            img = load_rgb(self.files[i])
            if min(img.shape[-2:]) < self.crop:  # too small to crop: enlarge once
                img = resize_shorter(img, self.crop)
            self._full[i] = img
        return self._full[i]

    def small(self, i: int) -> Tensor:
        if i not in self._small:
            self._small[i] = resize_shorter(self.full(i), self.crop)
        return self._small[i]


def _rand_int(gen: torch.Generator, high: int) -> int:
    """Uniform in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=gen).item())


def _rand_float(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen).item())


def random_crop(source: CropSource, gen: torch.Generator, p_resize: float, hflip: bool) -> Tensor:
    """One HR crop in [-1, 1] (float32 [3, c, c])."""
    i = _rand_int(gen, len(source.files) - 1)
    img = source.small(i) if _rand_float(gen) < p_resize else source.full(i)
    c = source.crop
    top, left = _rand_int(gen, img.shape[-2] - c), _rand_int(gen, img.shape[-1] - c)
    out = img[:, top: top + c, left: left + c]
    if hflip and _rand_float(gen) < 0.5:
        out = out.flip(-1)
    return out.float() / 127.5 - 1


def make_training_lr(hr: Tensor, scale: int, gen: torch.Generator, recipe: Recipe | None) -> tuple[Tensor, Tensor]:
    """LR of every HR crop and its degradation strength [B]: clean when `recipe` is None, else drawn
    per image from `recipe` (`degrade.degrade_lr`, every draw from `gen`).
    """
    if recipe is None:
        return make_lr(hr, scale), torch.zeros(hr.shape[0])
    pairs = [degrade_lr(x, scale, gen, recipe) for x in hr.split(1)]
    return torch.cat([lr for lr, _ in pairs]), torch.tensor([s for _, s in pairs])


def offset_cut(hr: Tensor, lr: Tensor, crop: int, offset: int, scale: int) -> tuple[Tensor, Tensor]:
    """The training pair of a model with `block_offset`: HR crops are drawn (and degraded) one block larger,
    then cut `offset` LR pixels in, so the LR's JPEG block grid lies where it will at inference.
    """
    if not offset:
        return hr, lr
    c = crop // scale
    return hr[..., offset * scale: offset * scale + crop, offset * scale: offset * scale + crop], \
        lr[..., offset: offset + c, offset: offset + c]


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator for every random draw of one step: depends only on (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + stream)


def split_files(config: TrainConfig) -> tuple[list[Path], list[Path]]:
    """Training and validation files: a separate folder, or `val_images` held out at random (seeded)."""
    files = list_images(config.data)
    if config.val_data:
        val = list_images(config.val_data)
        train = files
    else:
        n = min(config.val_images, max(0, len(files) - 1))
        val = sorted(random.Random(config.seed).sample(files, n)) if n else []
        train = [f for f in files if f not in set(val)]
    if not train:
        raise TrainError(f"{config.data}: no training images ({', '.join(IMAGE_SUFFIXES)})")
    return train, val


def validation_crops(files: list[Path], crop: int) -> Tensor | None:
    """Fixed held-out HR crops: the centre of each image at full size and at 'shorter side = crop'."""
    if not files:
        return None
    source = CropSource(files, crop)
    crops = []
    for i in range(len(files)):
        for img in (source.full(i), source.small(i)):
            top, left = (img.shape[-2] - crop) // 2, (img.shape[-1] - crop) // 2
            crops.append(img[:, top: top + crop, left: left + crop].float() / 127.5 - 1)
    return torch.stack(crops)
