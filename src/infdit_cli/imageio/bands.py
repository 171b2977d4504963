"""Writing an image band by band in raster order, never whole in memory (outputs too large to hold).

An out-of-core upscale finishes its output one band of rows at a time; these writers take the bands
as they come, so the host holds one band, not the image:

- PNG and TIFF through `writers`, the writers `save_image` uses too (tiled TIFF through tifffile, PNG
  rows filtered and compressed here: Pillow cannot take rows), so a file written band by band is
  byte for byte the file `save_image` writes for the same pixels, wherever the bands were cut.
- JPEG, WebP and BMP go through Pillow, which needs the whole image: `check_streamable` refuses them
  before the run, naming the formats that stream.

Atomic like every output: a temporary file, renamed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from infdit_cli.imageio.encode import as_float_array, meta_for, to_samples, write_atomic
from infdit_cli.imageio.formats import (
    STREAMED_FORMATS,
    LoadedImage,
    check_output_size,
    check_streamable,
    output_channels,
    output_format,
)
from infdit_cli.imageio.writers import write_png, write_tiff

__all__ = ["save_bands", "STREAMED_FORMATS"]


def save_bands(
    path: str | Path,
    bands: Iterable[tuple[Any, Any | None]],
    size: tuple[int, int],
    like: LoadedImage,
    fmt: str | None = None,
) -> Path:
    """Write an image of `size` (w, h) from its bands in raster order, atomically, like `save_image`.

    `bands` yields (rgb [rows, w, 3], alpha [rows, w] or None) floats in [0, 1], numpy or torch, whose
    rows add up to h; alpha must come with every band exactly when `like` has alpha. Only PNG and
    TIFF (`STREAMED_FORMATS`) can be written this way.
    """
    path = Path(path)
    name = output_format(fmt if fmt else path.suffix)
    w, h = size
    check_streamable(w, h, name)
    check_output_size(w, h, name, like)
    channels, itemsize = output_channels(like, name)
    grey = channels in (1, 2)
    meta = meta_for(like, name, size, grey)
    samples = _samples(bands, like, name, size)

    def write(f: BinaryIO) -> None:
        if name == "TIFF":
            write_tiff(f, samples, size, channels, itemsize, grey, meta)
        else:
            write_png(f, samples, size, channels, 8 * itemsize, meta)
        for _ in samples:  # tifffile stops at the last tile: run the bands to their end (checks, caller's finish)
            raise ValueError(f"the bands hold more than the image's {h} rows")

    write_atomic(path, write)
    return path


def _samples(bands: Iterable[tuple[Any, Any | None]], like: LoadedImage, name: str, size: tuple[int, int]
             ) -> Iterator[np.ndarray]:
    """Each band as the integer samples the format stores, [rows, w, channels]; checks shapes and row count."""
    w, h = size
    done = 0
    for rgb, alpha in bands:
        colour = as_float_array(rgb, "rgb")
        if colour.ndim != 3 or colour.shape[1:] != (w, 3):
            raise ValueError(f"a band must be [rows, {w}, 3], got {list(colour.shape)}")
        if (alpha is None) != (like.alpha is None):
            raise ValueError("alpha must come with every band exactly when the image has alpha")
        a = None if alpha is None else as_float_array(alpha, "alpha")
        if a is not None and a.shape != colour.shape[:2]:
            raise ValueError(f"alpha band must be [{colour.shape[0]}, {w}], got {list(a.shape)}")
        done += colour.shape[0]
        if done > h:
            raise ValueError(f"the bands hold more than the image's {h} rows")
        yield to_samples(colour, a, like, name)[0]
    if done != h:
        raise ValueError(f"the bands held {done} of the image's {h} rows")
