"""Encoding: every output written atomically, like its input (grey, 16 bit, alpha, ICC/EXIF/XMP, DPI).

- 8-bit PNG, JPEG, WebP and BMP go through Pillow's encoders.
- 16-bit PNG (which Pillow cannot write for colour or grey+alpha) goes through libpng via
  `imagecodecs.png_encode`; our metadata chunks (iCCP, pHYs, eXIf, iTXt XMP) are spliced in after
  IHDR, where the PNG spec puts them.
- TIFF (8 and 16 bit) goes through `tifffile`: Adobe Deflate with the horizontal predictor, BigTIFF
  only past 4 GiB. EXIF tags of the first IFD (artist, software, orientation 1, ...) are carried;
  the Exif and GPS sub-IFDs are not (tifffile cannot write sub-IFDs; `format_losses` says so).
- Writing is atomic: a hidden temporary file in the target folder, fsync, `os.replace`.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from infdit_cli.atomic import atomic_path
from infdit_cli.imageio.formats import (
    EXIF_IFD,
    GPS_IFD,
    LAYOUT_TAGS,
    ORIENTATION,
    OUTPUT_FORMATS,
    LoadedImage,
    OutputError,
    check_output_size,
    first_line,
    icc_matches,
    output_format,
)

__all__ = ["save_image"]


def save_image(
    path: str | Path,
    rgb: Any,
    alpha: Any | None,
    like: LoadedImage,
    fmt: str | None = None,
    quality: int = 95,
) -> Path:
    """Write `rgb` (float [H, W, 3] in [0, 1]) atomically, like the input `like`: grey, 16 bit, alpha, metadata.

    The format comes from `fmt`, else from the file's suffix. Values are clipped and rounded to
    nearest. Grey inputs are written grey (mean of the three channels). Nothing is left behind at
    `path` unless the whole file was written.
    """
    path = Path(path)
    name = output_format(fmt if fmt else path.suffix)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    colour = as_float_array(rgb, "rgb")
    if colour.ndim != 3 or colour.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got {list(colour.shape)}")
    h, w = colour.shape[:2]
    a = None if alpha is None else as_float_array(alpha, "alpha")
    if a is not None and a.shape != (h, w):
        raise ValueError(f"alpha must be [{h}, {w}], got {list(a.shape)}")
    check_output_size(w, h, name, like)
    data, grey = to_samples(colour, a, like, name)
    meta = meta_for(like, name, (w, h), grey)
    depth = 8 * data.dtype.itemsize

    def write(f: BinaryIO) -> None:
        if name == "TIFF":
            _write_tiff(f, data, grey=grey, meta=meta)
        elif depth == 16:
            _write_png16(f, data, meta=meta)
        else:
            _write_pillow(f, data, name, meta=meta, quality=quality, lossless=like.lossless_webp)

    write_atomic(path, write)
    return path


def as_float_array(x: Any, what: str) -> np.ndarray:
    """numpy or torch (looked up only if the caller already imported it: the file layer never loads torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(x, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values; refusing to write a corrupt image")
    return arr


def to_samples(colour: np.ndarray, alpha: np.ndarray | None, like: LoadedImage, name: str
               ) -> tuple[np.ndarray, bool]:
    """Float [H, W, 3] (+ alpha [H, W]) in any range -> the integer samples `name` stores for `like`, and
    whether they are grey: clipped, rounded to nearest; shared by whole-image and band-by-band writers."""
    spec = OUTPUT_FORMATS[name]
    colour = np.clip(colour, 0.0, 1.0)
    a = None if alpha is None else np.clip(alpha, 0.0, 1.0)
    if a is not None and not spec.alpha:  # JPEG: composite onto white, as editors flatten for JPEG
        colour = colour * a[..., None] + (1.0 - a[..., None])
        a = None
    grey = like.grayscale and spec.grey
    if grey:
        colour = colour.mean(axis=2, keepdims=True)
    planes = colour if a is None else np.concatenate([colour, a[..., None]], axis=2)
    if name == "BMP" and grey and a is not None:  # BMP has no grey+alpha
        planes = np.concatenate([np.repeat(planes[..., :1], 3, axis=2), planes[..., 1:]], axis=2)
        grey = False
    depth = 16 if like.bit_depth == 16 and spec.sixteen else 8
    maxval = 65535 if depth == 16 else 255
    return np.floor(planes * maxval + 0.5).astype(np.uint16 if depth == 16 else np.uint8), grey


def meta_for(like: LoadedImage, name: str, size: tuple[int, int], grey: bool) -> _Meta:
    """The metadata `name` carries over from `like` for an output of `size` (w, h)."""
    spec = OUTPUT_FORMATS[name]
    return _Meta(
        icc=like.icc if spec.metadata and like.icc and icc_matches(like.icc, grey=grey) else None,
        exif=_exif_for_output(like.exif, *size) if spec.metadata else None,
        xmp=like.xmp if spec.metadata else None,
        dpi=like.dpi,
    )


@dataclass
class _Meta:
    icc: bytes | None
    exif: Image.Exif | None
    xmp: bytes | None
    dpi: tuple[float, float] | None


def _exif_for_output(exif_bytes: bytes | None, width: int, height: int) -> Image.Exif | None:
    """The carried EXIF with orientation 1 and the pixel dimensions of the new image."""
    if not exif_bytes:
        return None
    try:
        exif = Image.Exif()
        exif.load(exif_bytes)
        exif[ORIENTATION] = 1
        if EXIF_IFD in exif:
            sub = exif.get_ifd(EXIF_IFD)
            if 0xA002 in sub:
                sub[0xA002] = width  # PixelXDimension
            if 0xA003 in sub:
                sub[0xA003] = height  # PixelYDimension
        exif.tobytes()  # fail here, not halfway through writing the image
    except Exception:  # metadata must never cost the user the upscale itself
        return None
    return exif


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a hidden temporary file in the same folder, then rename over `path`."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            write(f)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or first_line(exc)})") from None
    except ValueError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{path}: the encoder failed ({first_line(exc)})") from None


def _write_pillow(f: BinaryIO, data: np.ndarray, name: str, meta: _Meta, quality: int, lossless: bool) -> None:
    """8-bit PNG, JPEG, WebP and BMP through Pillow's encoders."""
    im = Image.fromarray(data[..., 0] if data.shape[2] == 1 else data)
    kwargs: dict[str, Any] = {}
    if meta.icc:
        kwargs["icc_profile"] = meta.icc
    if meta.exif is not None:
        kwargs["exif"] = meta.exif
    if meta.dpi:
        kwargs["dpi"] = meta.dpi
    if name == "PNG":
        if meta.xmp:
            info = PngInfo()
            info.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8", "replace"))
            kwargs["pnginfo"] = info
    elif name == "JPEG":
        # 4:4:4: chroma subsampling would blur exactly the detail the upscaler adds.
        kwargs.update(quality=quality, subsampling=0, optimize=True)
        if meta.dpi:
            kwargs["dpi"] = tuple(round(v) for v in meta.dpi)
        if meta.xmp and len(meta.xmp) <= 65000:
            kwargs["xmp"] = meta.xmp
        if meta.exif is not None and len(meta.exif.tobytes()) > 65000:  # one APP1 segment at most
            meta.exif.get_ifd(EXIF_IFD).pop(0x927C, None)  # MakerNote: the usual culprit
            if len(meta.exif.tobytes()) > 65000:
                kwargs.pop("exif")
    elif name == "WEBP":
        if im.mode in ("L", "LA"):
            im = im.convert("RGBA" if im.mode == "LA" else "RGB")
        kwargs.update(quality=quality, lossless=lossless)
        kwargs.pop("dpi", None)
        if meta.xmp:
            kwargs["xmp"] = meta.xmp
    elif name == "BMP":
        kwargs = {"dpi": meta.dpi} if meta.dpi else {}
    im.save(f, format=name, **kwargs)


def png_chunk(f: BinaryIO, tag: bytes, payload: bytes) -> None:
    f.write(struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload)))


def _write_png16(f: BinaryIO, data: np.ndarray, meta: _Meta) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB, RGBA) from libpng, with our metadata chunks after IHDR."""
    import imagecodecs

    encoded = imagecodecs.png_encode(np.ascontiguousarray(data if data.shape[2] > 1 else data[..., 0]), level=6)
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 data bytes, CRC
    if encoded[12:16] != b"IHDR":
        raise ValueError("libpng wrote no IHDR first")
    f.write(encoded[:ihdr_end])
    write_png_metadata(f, meta)
    f.write(encoded[ihdr_end:])


def write_png_metadata(f: BinaryIO, meta: _Meta) -> None:
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


def _write_tiff(f: BinaryIO, data: np.ndarray, grey: bool, meta: _Meta, compress: bool = True,
                bigtiff: bool | None = None) -> None:
    """A TIFF (8 or 16 bit; grey, grey+alpha, RGB, RGBA) through tifffile, unassociated alpha, Adobe Deflate."""
    import tifffile

    h, w, c = data.shape
    tifffile.imwrite(
        f, data[..., 0] if c == 1 else data,
        rowsperstrip=max(1, min(h, (1 << 20) // max(1, w * c * data.dtype.itemsize))),
        **tiff_options(meta, grey, c, data.nbytes, compress, bigtiff),
    )


def tiff_options(meta: _Meta, grey: bool, channels: int, nbytes: int, compress: bool = True,
                 bigtiff: bool | None = None) -> dict[str, Any]:
    """tifffile.imwrite's arguments for our TIFFs (strips or tiles): layout, Deflate, metadata; BigTIFF
    only when the pixels (`nbytes`) come near 4 GiB."""
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
