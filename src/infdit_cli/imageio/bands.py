"""Writing an image band by band in raster order, never whole in memory (outputs too large to hold).

An out-of-core upscale finishes its output one band of rows at a time; these writers take the bands
as they come, so the host holds one band, not the image:

- TIFF: tiled (256×256) through `tifffile`, which takes the tiles from an iterator; BigTIFF past
  4 GiB, Adobe Deflate with the predictor, the same metadata as `save_image`'s TIFF.
- PNG: the container is written here (IHDR, our metadata chunks, IDAT from one running zlib stream,
  IEND): Pillow cannot take rows, and the kept pure-Python `pypng` writes every row unfiltered (a
  larger file). Rows get libpng's adaptive filter choice (the filter with the least sum of absolute
  signed bytes), computed with numpy over chunks of rows.
- JPEG, WebP and BMP go through Pillow, which needs the whole image: `check_streamable` refuses them
  before the run, naming the formats that stream.

The pixels decode to exactly what `save_image` writes for the same image (the same `to_samples`);
the files differ in layout only (tiles, filters). Atomic like every output: a temporary file, renamed.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from infdit_cli.imageio.encode import (
    as_float_array,
    meta_for,
    png_chunk,
    tiff_options,
    to_samples,
    write_atomic,
    write_png_metadata,
)
from infdit_cli.imageio.formats import (
    STREAMED_FORMATS,
    LoadedImage,
    check_output_size,
    check_streamable,
    output_channels,
    output_format,
)

__all__ = ["save_bands", "STREAMED_FORMATS"]

TIFF_TILE = 256  # px; tifffile compresses tile by tile, so a tile row is what the writer holds
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_CHUNK_BYTES = 4 << 20  # raw bytes filtered at once (the five candidates cost ~10x in int16)
_IDAT_BYTES = 1 << 20  # compressed bytes gathered per IDAT chunk


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
            _write_tiff_tiles(f, samples, size, channels, itemsize, grey, meta)
        else:
            _write_png_rows(f, samples, size, channels, 8 * itemsize, meta)
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


def _write_tiff_tiles(f: BinaryIO, samples: Iterator[np.ndarray], size: tuple[int, int], channels: int,
                      itemsize: int, grey: bool, meta: Any) -> None:
    """A tiled TIFF through tifffile, fed one tile row (gathered from the bands) at a time."""
    import tifffile

    w, h = size
    dtype = np.uint16 if itemsize == 2 else np.uint8
    shape = (h, w) if channels == 1 else (h, w, channels)
    tifffile.imwrite(f, _tiles(samples, w, channels, dtype), shape=shape, dtype=dtype,
                     tile=(TIFF_TILE, TIFF_TILE), **tiff_options(meta, grey, channels, h * w * channels * itemsize))


def _tiles(samples: Iterator[np.ndarray], w: int, channels: int, dtype: type) -> Iterator[np.ndarray]:
    """The image's tiles in raster order (edge tiles zero-padded), holding one tile row of pixels."""
    t = TIFF_TILE
    row = np.zeros((t, math.ceil(w / t) * t, channels), dtype)
    filled = 0
    for band in samples:
        start = 0
        while start < band.shape[0]:
            take = min(t - filled, band.shape[0] - start)
            row[filled:filled + take, :w] = band[start:start + take]
            filled, start = filled + take, start + take
            if filled == t:
                yield from _cut(row)
                filled = 0
    if filled:
        row[filled:] = 0
        yield from _cut(row)


def _cut(row: np.ndarray) -> Iterator[np.ndarray]:
    t = TIFF_TILE
    for x in range(0, row.shape[1], t):
        tile = row[:, x:x + t]
        yield (tile[..., 0] if tile.shape[2] == 1 else tile).copy()  # copies: tifffile may hold tiles a while


def _write_png_rows(f: BinaryIO, samples: Iterator[np.ndarray], size: tuple[int, int], channels: int,
                    depth: int, meta: Any) -> None:
    """A PNG written row by row: IHDR, metadata, IDAT chunks from one zlib stream, IEND."""
    w, h = size
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]  # grey, grey+alpha, RGB, RGBA
    f.write(PNG_SIGNATURE)
    png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))
    write_png_metadata(f, meta)
    bpp = channels * depth // 8  # bytes per pixel: the "left" neighbour of the filters
    z = zlib.compressobj(6)
    pending = bytearray()
    previous: np.ndarray | None = None
    for band in samples:
        raw = (band.astype(">u2") if depth == 16 else band).reshape(band.shape[0], -1).view(np.uint8)
        step = max(1, _FILTER_CHUNK_BYTES // raw.shape[1])
        for start in range(0, raw.shape[0], step):
            rows = raw[start:start + step]
            pending += z.compress(filter_rows(rows, previous, bpp).tobytes())
            previous = rows[-1]
            if len(pending) >= _IDAT_BYTES:
                png_chunk(f, b"IDAT", bytes(pending))
                pending.clear()
    pending += z.flush()
    png_chunk(f, b"IDAT", bytes(pending))
    png_chunk(f, b"IEND", b"")


def filter_rows(raw: np.ndarray, previous: np.ndarray | None, bpp: int) -> np.ndarray:
    """PNG scanlines [rows, 1 + stride]: each row's filter type byte, then the row filtered with the type
    (None, Sub, Up, Average, Paeth) whose bytes, read as signed, sum to the least magnitude (libpng's rule).

    `previous`: the raw row above the first (None at the image's top, where "up" is zero).
    """
    x = raw.astype(np.int16)
    up = np.empty_like(x)
    up[0] = 0 if previous is None else previous
    up[1:] = x[:-1]
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    corner = np.zeros_like(x)
    corner[:, bpp:] = up[:, :-bpp]
    pa, pb, pc = np.abs(up - corner), np.abs(left - corner), np.abs(left + up - 2 * corner)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
    candidates = (np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]) & 0xFF).astype(np.uint8)
    cost = np.abs(candidates.view(np.int8).astype(np.int16)).sum(axis=2, dtype=np.int64)
    best = cost.argmin(axis=0)
    out = np.empty((x.shape[0], x.shape[1] + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(x.shape[0])]
    return out
