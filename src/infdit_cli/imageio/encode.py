"""Encoding: every output written atomically, like its input (grey, 16 bit, alpha, ICC/EXIF/XMP, DPI).

- PNG and TIFF (8 and 16 bit) go through our own writers (`writers`), the same ones that write an
  out-of-core image band by band, so both runs give the same file: PNG filtered and compressed as
  libpng does, TIFF tiled through `tifffile` with Adobe Deflate.
- JPEG, WebP and BMP go through Pillow's encoders.
- Writing is atomic: a hidden temporary file in the target folder, fsync, `os.replace`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from infdit_cli.atomic import atomic_path
from infdit_cli.imageio.formats import (
    EXIF_IFD,
    ORIENTATION,
    OUTPUT_FORMATS,
    LoadedImage,
    OutputError,
    check_output_size,
    first_line,
    icc_matches,
    output_format,
)
from infdit_cli.imageio.writers import Meta, write_png, write_tiff

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

    def write(f: BinaryIO) -> None:
        if name == "TIFF":
            write_tiff(f, iter([data]), (w, h), data.shape[2], data.dtype.itemsize, grey, meta)
        elif name == "PNG":
            write_png(f, iter([data]), (w, h), data.shape[2], 8 * data.dtype.itemsize, meta)
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


def meta_for(like: LoadedImage, name: str, size: tuple[int, int], grey: bool) -> Meta:
    """The metadata `name` carries over from `like` for an output of `size` (w, h)."""
    spec = OUTPUT_FORMATS[name]
    return Meta(
        icc=like.icc if spec.metadata and like.icc and icc_matches(like.icc, grey=grey) else None,
        exif=_exif_for_output(like.exif, *size) if spec.metadata else None,
        xmp=like.xmp if spec.metadata else None,
        dpi=like.dpi,
    )


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


def _write_pillow(f: BinaryIO, data: np.ndarray, name: str, meta: Meta, quality: int, lossless: bool) -> None:
    """JPEG, WebP and BMP through Pillow's encoders."""
    im = Image.fromarray(data[..., 0] if data.shape[2] == 1 else data)
    kwargs: dict[str, Any] = {}
    if meta.icc:
        kwargs["icc_profile"] = meta.icc
    if meta.exif is not None:
        kwargs["exif"] = meta.exif
    if meta.dpi:
        kwargs["dpi"] = meta.dpi
    if name == "JPEG":
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
