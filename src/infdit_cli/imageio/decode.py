"""Decoding any image Pillow reads into the model's RGB, with everything needed to write the result like it.

- Colour: pixels are never converted between colour spaces (see the package docstring); CMYK,
  which the model cannot take, goes to sRGB through LittleCMS when it has a profile.
- Orientation: EXIF orientation is applied (`ImageOps.exif_transpose`) and removed from the kept EXIF.
- 16 bit: Pillow reads 16-bit grey (`I;16`) natively but reduces 16-bit RGB(A) to 8 bit while
  decoding (it has no 16-bit colour mode), so for those we run Pillow's own decoder a second time
  with the byte-swapped raw mode, which yields the low bytes, and join the two halves.
- Alpha (and colour-key transparency) is split off; the decompression-bomb limit stays a hard
  error; every image is fully decoded, so truncated files are errors, never silently padded; EPS
  (runs Ghostscript) and other non-raster plugins are off.
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from infdit_cli.imageio.formats import LAYOUT_TAGS, InputError, LoadedImage, first_line, read_formats

__all__ = ["load_image", "check_header"]


def load_image(path: str | Path) -> LoadedImage:
    """Decode an image fully, upright, with its metadata; any failure is one InputError line naming the file."""
    path = Path(path)
    _check_readable(path)
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        # Some libraries switch Pillow to padding truncated files with grey; never while we decode.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with _decode_errors(path), Image.open(path, formats=read_formats()) as im:
            _check_pixels(path, im.size)
            return _load(path, im)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def check_header(path: str | Path) -> None:
    """InputError unless `path` opens as an image we read, within the pixel limit, and its structure checks out.

    Pixels are not decoded (cheap enough to run on a whole batch first): a truncated PNG is caught
    here by its chunk checksums; formats without them (a cut-off JPEG) fail later, in `load_image`.
    """
    path = Path(path)
    _check_readable(path)
    with _decode_errors(path), Image.open(path, formats=read_formats()) as im:
        _check_pixels(path, im.size)
        im.verify()  # structure and checksums without decoding pixels (PNG: every chunk's CRC)


@contextmanager
def _decode_errors(path: Path) -> Iterator[None]:
    """Pillow's many failure modes as one InputError line naming the file; decompression bombs are errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InputError(f"{path}: over the decompression-bomb limit of {_limit_text()} "
                         "(PIL.Image.MAX_IMAGE_PIXELS)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image, or a format Pillow cannot read") from None
    except MemoryError:
        raise InputError(f"{path}: not enough memory to decode it") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, KeyError) as exc:
        raise InputError(f"{path}: cannot decode, the file is truncated or corrupt ({first_line(exc)})") from None


def _check_readable(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot read (permission denied)")


def _limit_text() -> str:
    limit = Image.MAX_IMAGE_PIXELS
    return "none" if limit is None else f"{limit / 1e6:.1f} Mpx"


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    w, h = size
    if limit is not None and w * h > limit:
        raise InputError(f"{path}: {w}x{h} ({w * h / 1e6:.1f} Mpx) is over the decompression-bomb limit of "
                         f"{_limit_text()} (PIL.Image.MAX_IMAGE_PIXELS)")


def _load(path: Path, im: ImageFile.ImageFile) -> LoadedImage:
    notes: list[str] = []
    if im.mode == "F":
        raise InputError(f"{path}: 32-bit floating-point images are not supported")
    low_rawmode = _low_byte_rawmode(im)
    n_frames = int(getattr(im, "n_frames", 1) or 1)
    if n_frames > 1:
        notes.append(f"{n_frames} frames: only the first is upscaled")
    im.load()  # decode everything now: a truncated file must fail here, not be padded later
    info = dict(im.info)
    upright = ImageOps.exif_transpose(im)
    exif = _clean_exif(im, notes)  # after the transpose: it edits the Exif object the transpose reads
    icc = info.get("icc_profile") or None
    xmp = upright.info.get("xmp", upright.info.get("XML:com.adobe.xmp"))
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")

    key = info.get("transparency")
    if low_rawmode is not None:
        data, maxval, grey, alpha_channel = _decode_16bit_colour(path, im, upright, low_rawmode)
    else:
        data, maxval, grey, alpha_channel, icc = _decode(upright, icc, notes)
    if not alpha_channel and isinstance(key, (int, tuple)) and not isinstance(key, bool):
        data, alpha_channel = _alpha_from_key(data, key, maxval)

    colour = data[..., :-1] if alpha_channel else data
    rgb = colour.astype(np.float32) / np.float32(maxval)
    if grey:
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    alpha = data[..., -1].astype(np.float32) / np.float32(maxval) if alpha_channel else None
    h, w = rgb.shape[:2]
    return LoadedImage(
        rgb=np.ascontiguousarray(rgb), alpha=alpha, bit_depth=16 if maxval == 65535 else 8, grayscale=grey,
        icc=icc, exif=exif, dpi=_dpi(info), format=im.format or "", size=(w, h), xmp=xmp or None,
        path=path, lossless_webp=im.format == "WEBP" and _webp_is_lossless(path), n_frames=n_frames,
        notes=tuple(notes),
    )


def _decode(im: Image.Image, icc: bytes | None, notes: list[str]) -> tuple[np.ndarray, int, bool, bool, bytes | None]:
    """Integer pixels [H, W, C] of a Pillow image, its maximum value, grey?, has alpha?, and the ICC to keep."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)[..., None], 65535, True, False, icc
    if mode == "I":  # 32-bit int (e.g. signed 16-bit TIFF); values outside 16 bits cannot be kept
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            notes.append("32-bit integer values clipped to the 16-bit range")
        return np.clip(values, 0, 65535).astype(np.uint16)[..., None], 65535, True, False, icc
    if mode == "CMYK":
        converted = _cmyk_to_srgb(im, icc) if icc else None
        if converted is not None:
            im, icc = converted
            notes.append("CMYK converted to sRGB with its ICC profile")
        else:
            im, icc = im.convert("RGB"), None
            notes.append("CMYK converted to RGB without colour management (no usable ICC profile)")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or im.has_transparency_data else "RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("RGBa", "RGBX"):
        im = im.convert("RGBA" if mode == "RGBa" else "RGB")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")
    data = np.asarray(im)
    if data.ndim == 2:
        data = data[..., None]
    return data, 255, im.mode in ("L", "LA"), im.mode in ("LA", "RGBA"), icc


def _cmyk_to_srgb(im: Image.Image, icc: bytes) -> tuple[Image.Image, bytes] | None:
    """CMYK through its embedded profile into sRGB (the model needs RGB); None if LittleCMS refuses the profile."""
    try:
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        rgb = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
    return (rgb, srgb.tobytes()) if rgb is not None else None


def _low_byte_rawmode(im: ImageFile.ImageFile) -> str | None:
    """For a 16-bit-per-channel colour image that Pillow would reduce to 8 bits: a raw mode that decodes the rest.

    Pillow's unpackers `RGB;16B` / `RGB;16L` keep the high byte of each big- / little-endian sample,
    so the opposite endianness keeps the low byte. 16-bit grey+alpha PNGs (`LA;16B`, read as RGBA)
    have the same 4 bytes per pixel as 8-bit RGBA, so `RGBA` hands back all four bytes at once.
    """
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return None
    raws = {t.args if isinstance(t.args, str) else t.args[0] for t in im.tile if t.args}
    if len(raws) != 1:
        return None
    raw = raws.pop()
    if im.format == "PNG" and raw == "LA;16B":
        return "RGBA"
    m = re.fullmatch(r"(RGB|RGBA|RGBX);16([BLN])", str(raw))
    if m is None:
        return None
    native = "L" if sys.byteorder == "little" else "B"
    other = {"B": "L", "L": "B", "N": "B" if native == "L" else "L"}[m[2]]
    return f"{m[1]};16{other}"


def _decode_16bit_colour(
    path: Path, high: ImageFile.ImageFile, high_upright: Image.Image, low_rawmode: str
) -> tuple[np.ndarray, int, bool, bool]:
    low = _decode_low_bytes(path, low_rawmode)
    if low_rawmode == "RGBA":  # 16-bit grey+alpha PNG: bytes are G_hi, G_lo, A_hi, A_lo
        b = np.asarray(low).astype(np.uint16)
        data = np.stack([b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]], axis=-1)
        return data, 65535, True, True
    data = np.asarray(high_upright).astype(np.uint16) << 8 | np.asarray(low).astype(np.uint16)
    return data, 65535, False, high.mode == "RGBA"


def _decode_low_bytes(path: Path, rawmode: str) -> Image.Image:
    """Decode `path` again with another raw mode (see `_low_byte_rawmode`) and make it upright."""
    with Image.open(path, formats=read_formats()) as im:
        im.tile = [t._replace(args=rawmode if isinstance(t.args, str) else (rawmode, *t.args[1:])) for t in im.tile]
        im.load()
        return ImageOps.exif_transpose(im)


def _alpha_from_key(data: np.ndarray, key: int | tuple[int, ...], maxval: int) -> tuple[np.ndarray, bool]:
    """PNG/TIFF colour-key transparency (tRNS) as a real alpha channel."""
    keyv = np.asarray(key if isinstance(key, tuple) else (key,), dtype=np.int64)
    if keyv.size != data.shape[-1]:
        return data, False
    opaque = ~np.all(data == keyv.astype(data.dtype), axis=-1)
    alpha = np.where(opaque, maxval, 0).astype(data.dtype)
    return np.concatenate([data, alpha[..., None]], axis=-1), True


# TIFF tags that describe a file's pixel layout, not the photo: dropped when EXIF is carried over.
def _clean_exif(im: Image.Image, notes: list[str]) -> bytes | None:
    """The source EXIF without orientation (pixels are made upright) and without file-layout tags."""
    try:
        exif = im.getexif()
        for tag in list(exif):
            if tag in LAYOUT_TAGS:
                del exif[tag]
        return exif.tobytes() if len(exif) else None
    except Exception as exc:  # broken EXIF must not stop an upscale
        notes.append(f"EXIF unreadable, not carried over ({first_line(exc)})")
        return None


def _dpi(info: dict[str, Any]) -> tuple[float, float] | None:
    dpi = info.get("dpi")
    try:
        x, y = (float(v) for v in dpi)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def _webp_is_lossless(path: Path) -> bool:
    """Whether a WebP's image chunk is VP8L (lossless); read from the RIFF chunk headers only."""
    try:
        with open(path, "rb") as f:
            if f.read(12)[8:12] != b"WEBP":
                return False
            while header := f.read(8):
                if len(header) < 8:
                    return False
                tag, size = header[:4], struct.unpack("<I", header[4:])[0]
                if tag in (b"VP8 ", b"VP8L"):
                    return tag == b"VP8L"
                if tag == b"ANMF":  # animation frame: its image chunk follows a 16-byte frame header
                    f.seek(16, os.SEEK_CUR)
                    continue
                f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        pass
    return False


