"""The PNG and TIFF containers we write ourselves, from bands of rows: one writer per format for whole
images (`save_image`) and images written band by band as they finish (`save_bands`).

One writer, so an out-of-core upscale's file is byte for byte the file of the same upscale run in RAM,
and the bytes never depend on where bands were cut:

- PNG: IHDR, our metadata chunks (iCCP, pHYs, eXIf, iTXt XMP: after IHDR, where the spec puts them),
  IDAT from one running zlib stream cut into fixed-size chunks, IEND. Rows get libpng's adaptive filter
  choice (least sum of absolute signed bytes) and zlib runs as libpng and Pillow run it (level 6,
  memLevel 9, Z_FILTERED): the files are as small as Pillow's, 8 and 16 bit alike. zlib's output does
  not depend on how its input was split (without flushes), and row filters see only their row and
  the row above, so band boundaries leave no trace.
- TIFF: tiled (256×256) through `tifffile`, which takes the tiles from an iterator: Adobe Deflate with
  the horizontal predictor, BigTIFF only past 4 GiB, EXIF tags of the first IFD (sub-IFDs cannot be
  written by tifffile; `format_losses` says so), unassociated alpha.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from infdit_cli.imageio.formats import EXIF_IFD, GPS_IFD, LAYOUT_TAGS, ORIENTATION

TIFF_TILE = 256  # px; tifffile compresses tile by tile, so a tile row is what the writer holds
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_CHUNK_BYTES = 4 << 20  # raw bytes filtered at once (the five candidates cost ~10x in int16)
_IDAT_BYTES = 1 << 20  # every IDAT chunk but the last holds exactly this many compressed bytes


@dataclass
class Meta:
    """The metadata an output carries over from its input (what the format can hold)."""

    icc: bytes | None
    exif: Image.Exif | None
    xmp: bytes | None
    dpi: tuple[float, float] | None


# ----------------------------------------------------------------------------- PNG


def png_chunk(f: BinaryIO, tag: bytes, payload: bytes) -> None:
    f.write(struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload)))


def write_png_metadata(f: BinaryIO, meta: Meta) -> None:
    """Our ancillary chunks (iCCP, pHYs, eXIf, iTXt XMP), which belong after IHDR and before IDAT."""
    if meta.icc:
        png_chunk(f, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(meta.icc))
    if meta.dpi:
        ppm = [int(v / 0.0254 + 0.5) for v in meta.dpi]
        png_chunk(f, b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if meta.exif is not None:
        png_chunk(f, b"eXIf", meta.exif.tobytes()[6:])  # without the "Exif\0\0" JPEG prefix
    if meta.xmp:
        png_chunk(f, b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + meta.xmp)


def write_png(f: BinaryIO, samples: Iterator[np.ndarray], size: tuple[int, int], channels: int, depth: int,
              meta: Meta) -> None:
    """A PNG of `size` (w, h) from bands of samples [rows, w, channels] (uint8 or uint16) in raster order."""
    w, h = size
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]  # grey, grey+alpha, RGB, RGBA
    f.write(PNG_SIGNATURE)
    png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))
    write_png_metadata(f, meta)
    bpp = channels * depth // 8  # bytes per pixel: the "left" neighbour of the filters
    z = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
    pending = bytearray()
    previous: np.ndarray | None = None

    def emit_full_chunks() -> None:
        start = 0
        while len(pending) - start >= _IDAT_BYTES:
            png_chunk(f, b"IDAT", bytes(pending[start:start + _IDAT_BYTES]))
            start += _IDAT_BYTES
        del pending[:start]

    for band in samples:
        raw = (band.astype(">u2") if depth == 16 else band).reshape(band.shape[0], -1).view(np.uint8)
        step = max(1, _FILTER_CHUNK_BYTES // raw.shape[1])
        for start in range(0, raw.shape[0], step):
            rows = raw[start:start + step]
            pending += z.compress(filter_rows(rows, previous, bpp).tobytes())
            previous = rows[-1]
            emit_full_chunks()
    pending += z.flush()
    emit_full_chunks()
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


# ----------------------------------------------------------------------------- TIFF


def write_tiff(f: BinaryIO, samples: Iterator[np.ndarray], size: tuple[int, int], channels: int, itemsize: int,
               grey: bool, meta: Meta, compress: bool = True, bigtiff: bool | None = None) -> None:
    """A tiled TIFF of `size` (w, h) from bands of samples, fed to tifffile one tile row at a time."""
    import tifffile

    w, h = size
    dtype = np.uint16 if itemsize == 2 else np.uint8
    shape = (h, w) if channels == 1 else (h, w, channels)
    tifffile.imwrite(f, _tiles(samples, w, channels, dtype), shape=shape, dtype=dtype, tile=(TIFF_TILE, TIFF_TILE),
                     **tiff_options(meta, grey, channels, h * w * channels * itemsize, compress, bigtiff))


def tiff_options(meta: Meta, grey: bool, channels: int, nbytes: int, compress: bool = True,
                 bigtiff: bool | None = None) -> dict[str, Any]:
    """tifffile.imwrite's arguments for our TIFFs: Deflate, metadata; BigTIFF only when the pixels
    (`nbytes`) come near 4 GiB."""
    extratags = _tiff_exif_tags(meta.exif) if meta.exif is not None else []
    if meta.xmp:
        extratags.append((700, 1, len(meta.xmp), meta.xmp, True))
    return dict(
        bigtiff=nbytes + (1 << 25) > 2**32 if bigtiff is None else bigtiff, byteorder="<",
        photometric="minisblack" if grey else "rgb", planarconfig="contig" if channels > 1 else None,
        extrasamples=("unassalpha",) if channels in (2, 4) else None,
        compression="adobe_deflate" if compress else None, predictor=compress or None,
        resolution=meta.dpi, resolutionunit="inch" if meta.dpi else None, iccprofile=meta.icc,
        software=False, metadata=None, extratags=extratags,
    )


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


def _tiff_exif_tags(exif: Image.Exif) -> list[tuple[int, int, int, Any, bool]]:
    """The photo tags of the first EXIF IFD as tifffile extratags (layout tags and sub-IFD pointers left out)."""
    tags: list[tuple[int, int, int, Any, bool]] = []
    for tag, value in exif.items():
        if tag in (EXIF_IFD, GPS_IFD) or (tag in LAYOUT_TAGS and tag != ORIENTATION):
            continue
        if isinstance(value, str):
            raw = value.encode("utf-8", "replace")
            tags.append((tag, 2, len(raw) + 1, raw, True))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and 0 <= value < 2**32:
            tags.append((tag, 3 if value < 2**16 else 4, 1, value, True))
        elif isinstance(value, float) or type(value).__name__ == "IFDRational":
            frac = Fraction(float(value)).limit_denominator(2**31 - 1)
            if frac >= 0:
                tags.append((tag, 5, 1, (frac.numerator, frac.denominator), True))
        elif isinstance(value, bytes):
            tags.append((tag, 7, len(value), value, True))
    return tags
