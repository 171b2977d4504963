"""Everything that touches image files: decoding with metadata, atomic encoding, geometry helpers.

Decisions, in one place (the README and the CLI help point here):

- Colour: pixels are never converted between colour spaces. The network sees the image's own RGB
  values, whatever space its ICC profile describes, and the same profile is embedded in the output,
  so every pixel keeps its meaning. A converted image would lose gamut and precision twice (in and
  out) for no gain: an upscaler does not care which RGB it works in. The one exception is CMYK,
  which the model cannot take: with a profile it goes to sRGB through LittleCMS (and the output
  carries sRGB); without one Pillow's naive conversion is used.
- Orientation: EXIF orientation is applied on load (`ImageOps.exif_transpose`) and written as 1,
  so every viewer shows the output the way it showed the input. XMP orientation is removed too.
- 16 bit: 16-bit PNG and TIFF come back as 16 bit. Pillow reads 16-bit grey (`I;16`) natively but
  reduces 16-bit RGB(A) to 8 bit while decoding (it has no 16-bit colour mode), so for those we run
  Pillow's own decoder a second time with the byte-swapped raw mode, which yields the low bytes,
  and join the two halves (`_decode_low_bytes`). Pillow also cannot write 16-bit colour or 16-bit
  grey+alpha, so 16-bit PNG and all TIFF output go through the small writers at the end of this
  module (`_write_png16`, `_write_tiff`). Formats that store 8 bits (JPEG, WebP, BMP) get 8 bits.
- Alpha: split off on load, upscaled separately (`upscale_alpha`) and re-attached on save. JPEG
  has no alpha channel: the image is composited onto white, as image editors do when flattening
  for JPEG; `format_losses` reports it so the CLI can warn before any compute, and the default
  output format (the input's) never drops alpha.
- Safety: Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89.5 Mpx by default)
  stays on and is a hard error here; every image is fully decoded (`load()`), so truncated files
  are errors, never silently padded; EPS (runs Ghostscript) and other non-raster plugins are off.
- Writing is atomic: a hidden temporary file in the target folder, fsync, `os.replace`. An output
  either exists complete or not at all, whatever happens (disk full, Ctrl-C, an encoder error).
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageFile, ImageOps, TiffImagePlugin, TiffTags, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from infdit_cli.atomic import atomic_path

__all__ = [
    "InputError", "OutputError", "LoadedImage", "OUTPUT_FORMATS", "read_formats",
    "load_image", "save_image", "upscale_alpha", "pad_to_multiple", "crop",
    "output_format", "check_output_size", "format_losses", "supports_alpha",
]


def one_line(text: object) -> str:
    """`text` as one printable line: control characters escaped, undecodable file-name bytes shown as escapes."""
    s = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in s)


class _OneLineError(ValueError):
    """A user-facing error whose str() is always a single line, ready for stderr."""

    def __init__(self, message: object) -> None:
        super().__init__(one_line(message))


class InputError(_OneLineError):
    """An input that cannot be used: missing, empty, truncated, not an image, too large."""


class OutputError(_OneLineError):
    """An output that cannot be written: exists, unwritable folder, too large for its format."""


# --------------------------------------------------------------------------------------------
# Formats


@dataclass(frozen=True)
class _Format:
    name: str  # Pillow's format name
    alpha: bool  # can store an alpha channel
    sixteen: bool  # can store 16 bits per channel (through our writers)
    grey: bool  # can store single-channel grey
    metadata: bool  # stores ICC and EXIF
    max_side: int


_MAX_INT32 = 2**31 - 1
OUTPUT_FORMATS: dict[str, _Format] = {
    # PNG and TIFF store 32-bit sizes; we stay at 2**31 - 1 because many readers use signed ints.
    "PNG": _Format("PNG", alpha=True, sixteen=True, grey=True, metadata=True, max_side=_MAX_INT32),
    # The JPEG header has 16-bit sizes, but libjpeg refuses anything over 65500 (JPEG_MAX_DIMENSION).
    "JPEG": _Format("JPEG", alpha=False, sixteen=False, grey=True, metadata=True, max_side=65500),
    # libwebp: 14-bit sizes.
    "WEBP": _Format("WEBP", alpha=True, sixteen=False, grey=False, metadata=True, max_side=16383),
    # We write BigTIFF automatically past 4 GiB, so only the size fields limit TIFF.
    "TIFF": _Format("TIFF", alpha=True, sixteen=True, grey=True, metadata=True, max_side=_MAX_INT32),
    # BMP: signed 32-bit sizes and a 32-bit file size (checked in check_output_size).
    "BMP": _Format("BMP", alpha=True, sixteen=False, grey=True, metadata=False, max_side=_MAX_INT32),
}
_FORMAT_ALIASES = {
    "png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG", "jfif": "JPEG", "webp": "WEBP",
    "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP", "dib": "BMP",
}

# Plugins Pillow has but we refuse: EPS runs Ghostscript on the file; the rest are vector, video or
# stub formats that need handlers Pillow does not ship.
_REFUSED_READ_FORMATS = frozenset({"EPS", "PDF", "MPEG", "BUFR", "GRIB", "HDF5", "WMF"})


def read_formats() -> tuple[str, ...]:
    """Pillow formats we open, computed per call so plugins registered later (pillow-heif, ...) count."""
    Image.init()
    return tuple(sorted(set(Image.OPEN) - _REFUSED_READ_FORMATS))


def output_format(name: str) -> str:
    """Pillow's format name for 'png', 'jpg', '.JPEG', 'tif', ...; OutputError for what we cannot write."""
    key = name.lower().lstrip(".")
    if key not in _FORMAT_ALIASES:
        shown = name if name else "(no extension)"
        raise OutputError(f"cannot write {shown!s} images; use png, jpg, webp, tiff or bmp")
    return _FORMAT_ALIASES[key]


def supports_alpha(fmt: str) -> bool:
    """Whether files of this format keep an alpha channel (JPEG does not)."""
    return OUTPUT_FORMATS[output_format(fmt)].alpha


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(eq=False)
class LoadedImage:
    """A decoded image ready for the model, plus everything needed to write the result like it.

    `rgb` holds the image's own RGB (no colour conversion; see the module docstring), grey
    replicated to three channels because the model is RGB. `exif` has its orientation removed:
    the pixels are already upright. `notes` lists harmless surprises worth telling the user.
    """

    rgb: np.ndarray  # float32 [H, W, 3] in [0, 1]
    alpha: np.ndarray | None  # float32 [H, W] in [0, 1]
    bit_depth: int  # 8 or 16
    grayscale: bool
    icc: bytes | None
    exif: bytes | None  # "Exif\0\0" + TIFF structure, as Pillow's `exif=` takes it
    dpi: tuple[float, float] | None
    format: str  # Pillow format name of the source ("PNG", "JPEG", "MPO", ...)
    size: tuple[int, int]  # (width, height), upright
    xmp: bytes | None = None
    path: Path | None = None
    lossless_webp: bool = False  # source was lossless WebP: WebP output stays lossless
    n_frames: int = 1  # animations and multi-page files: only the first frame is used
    notes: tuple[str, ...] = field(default_factory=tuple)


def load_image(path: str | Path) -> LoadedImage:
    """Decode an image fully, upright, with its metadata; any failure is one InputError line naming the file."""
    path = Path(path)
    _check_readable(path)
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        # Some libraries switch Pillow to padding truncated files with grey; never while we decode.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=read_formats()) as im:
                _check_pixels(path, im.size)
                return _load(path, im)
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
        raise InputError(f"{path}: cannot decode, the file is truncated or corrupt ({_first_line(exc)})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 274, 277, 278, 279, 280, 281, 284, 290, 291, 292, 293,
    297, 301, 317, 320, 322, 323, 324, 325, 330, 332, 338, 339, 340, 341, 347, 512, 513, 514, 515, 517, 518,
    519, 520, 521, 529, 530, 532, 700, 34377, 34675,
})
_EXIF_IFD, _GPS_IFD, _ORIENTATION = 0x8769, 0x8825, 274


def _clean_exif(im: Image.Image, notes: list[str]) -> bytes | None:
    """The source EXIF without orientation (pixels are made upright) and without file-layout tags."""
    try:
        exif = im.getexif()
        for tag in list(exif):
            if tag in _LAYOUT_TAGS:
                del exif[tag]
        return exif.tobytes() if len(exif) else None
    except Exception as exc:  # broken EXIF must not stop an upscale
        notes.append(f"EXIF unreadable, not carried over ({_first_line(exc)})")
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


# --------------------------------------------------------------------------------------------
# Output checks (before any compute)


def _output_channels(like: LoadedImage | None, fmt: str) -> tuple[int, int]:
    """(channels, bytes per channel) that save_image will write for `like` in `fmt`."""
    spec = OUTPUT_FORMATS[fmt]
    if like is None:
        return 3, 1
    grey = like.grayscale and spec.grey
    alpha = like.alpha is not None and spec.alpha
    if fmt == "BMP" and grey and alpha:  # BMP has no grey+alpha: RGBA
        grey = False
    channels = (1 if grey else 3) + (1 if alpha else 0)
    return channels, 2 if like.bit_depth == 16 and spec.sixteen else 1


def check_output_size(width: int, height: int, fmt: str, like: LoadedImage | None = None) -> None:
    """OutputError if `fmt` cannot store a `width` x `height` image: call it before the compute, not after.

    `like` (the loaded input) refines the BMP file-size check with the real channel count.
    """
    name = output_format(fmt)
    spec = OUTPUT_FORMATS[name]
    if width < 1 or height < 1:
        raise OutputError(f"{width}x{height}: empty output size")
    if max(width, height) > spec.max_side:
        raise OutputError(f"{width}x{height} output is too large for {name} (at most {spec.max_side} px per side); "
                          "use --format png or tiff")
    if name == "BMP":
        channels, _ = _output_channels(like, name)
        bits = 8 * channels
        stride = ((width * bits + 7) // 8 + 3) & ~3
        header = 14 + 40 + (1024 if channels == 1 else 0)
        if header + stride * height > 2**32 - 1:
            raise OutputError(f"{width}x{height} output is too large for BMP (files are limited to 4 GiB); "
                              "use --format png or tiff")


def format_losses(fmt: str, like: LoadedImage) -> list[str]:
    """What writing `like`'s result as `fmt` would lose, as short phrases the CLI can warn with."""
    name = output_format(fmt)
    spec = OUTPUT_FORMATS[name]
    losses = []
    if like.alpha is not None and not spec.alpha:
        losses.append(f"transparency flattened onto white ({name} has no alpha channel)")
    if like.bit_depth == 16 and not spec.sixteen:
        losses.append(f"16-bit precision reduced to 8 bits ({name} stores 8 bits)")
    if like.grayscale and not spec.grey:
        losses.append(f"grayscale written as RGB ({name} has no grayscale mode)")
    if not spec.metadata and (like.icc or like.exif or like.xmp):
        losses.append(f"ICC profile and EXIF/XMP metadata not stored ({name} cannot hold them)")
    elif like.icc and not _icc_matches(like.icc, grey=like.grayscale and spec.grey):
        losses.append("ICC profile dropped (it does not match the written colour channels)")
    return losses


# --------------------------------------------------------------------------------------------
# Saving


def save_image(
    path: str | Path,
    rgb: np.ndarray | torch.Tensor,
    alpha: np.ndarray | torch.Tensor | None,
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
    spec = OUTPUT_FORMATS[name]
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    colour = _as_float_array(rgb, "rgb")
    if colour.ndim != 3 or colour.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got {list(colour.shape)}")
    h, w = colour.shape[:2]
    a = None if alpha is None else _as_float_array(alpha, "alpha")
    if a is not None and a.shape != (h, w):
        raise ValueError(f"alpha must be [{h}, {w}], got {list(a.shape)}")
    check_output_size(w, h, name, like)

    colour = np.clip(colour, 0.0, 1.0)
    if a is not None:
        a = np.clip(a, 0.0, 1.0)
        if not spec.alpha:  # JPEG: composite onto white, as editors flatten for JPEG
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
    data = np.floor(planes * maxval + 0.5).astype(np.uint16 if depth == 16 else np.uint8)

    meta = _Meta(
        icc=like.icc if spec.metadata and like.icc and _icc_matches(like.icc, grey=grey) else None,
        exif=_exif_for_output(like.exif, w, h) if spec.metadata else None,
        xmp=like.xmp if spec.metadata else None,
        dpi=like.dpi,
    )

    def write(f: BinaryIO) -> None:
        if name == "TIFF":
            _write_tiff(f, data, grey=grey, meta=meta)
        elif depth == 16:
            _write_png16(f, data, meta=meta)
        else:
            _write_pillow(f, data, name, meta=meta, quality=quality, lossless=like.lossless_webp)

    _write_atomic(path, write)
    return path


def _as_float_array(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(x, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values; refusing to write a corrupt image")
    return arr


@dataclass
class _Meta:
    icc: bytes | None
    exif: Image.Exif | None
    xmp: bytes | None
    dpi: tuple[float, float] | None


def _icc_matches(icc: bytes, grey: bool) -> bool:
    """Whether an ICC profile's colour space (header bytes 16-20) fits the channels being written."""
    space = icc[16:20]
    return space == (b"GRAY" if grey else b"RGB ")


def _exif_for_output(exif_bytes: bytes | None, width: int, height: int) -> Image.Exif | None:
    """The carried EXIF with orientation 1 and the pixel dimensions of the new image."""
    if not exif_bytes:
        return None
    try:
        exif = Image.Exif()
        exif.load(exif_bytes)
        exif[_ORIENTATION] = 1
        if _EXIF_IFD in exif:
            sub = exif.get_ifd(_EXIF_IFD)
            if 0xA002 in sub:
                sub[0xA002] = width  # PixelXDimension
            if 0xA003 in sub:
                sub[0xA003] = height  # PixelYDimension
        exif.tobytes()  # fail here, not halfway through writing the image
    except Exception:  # metadata must never cost the user the upscale itself
        return None
    return exif


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a hidden temporary file in the same folder, then rename over `path`."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            write(f)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or _first_line(exc)})") from None
    except ValueError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{path}: the encoder failed ({_first_line(exc)})") from None


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
            meta.exif.get_ifd(_EXIF_IFD).pop(0x927C, None)  # MakerNote: the usual culprit
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


def _chunk(f: BinaryIO, tag: bytes, payload: bytes) -> None:
    f.write(struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload)))


def _write_png16(f: BinaryIO, data: np.ndarray, meta: _Meta, rows_per_chunk: int = 64) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB, RGBA), which Pillow cannot write for colour or grey+alpha.

    Rows are filtered like libpng's default (per row, the filter with the smallest sum of absolute
    differences), vectorised over a few rows at a time, and streamed through zlib.
    """
    h, w, c = data.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    f.write(b"\x89PNG\r\n\x1a\n")
    _chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
    if meta.icc:
        _chunk(f, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(meta.icc))
    if meta.dpi:
        ppm = [int(v / 0.0254 + 0.5) for v in meta.dpi]
        _chunk(f, b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if meta.exif is not None:
        _chunk(f, b"eXIf", meta.exif.tobytes()[6:])  # without the "Exif\0\0" JPEG prefix
    if meta.xmp:
        _chunk(f, b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + meta.xmp)
    bpp = 2 * c
    z = zlib.compressobj(6)
    prev = np.zeros(w * bpp, dtype=np.uint8)
    for y in range(0, h, rows_per_chunk):
        rows = data[y: y + rows_per_chunk].astype(">u2").view(np.uint8).reshape(-1, w * bpp)
        out = _png_filter(rows, prev, bpp)
        prev = rows[-1]
        if compressed := z.compress(out.tobytes()):
            _chunk(f, b"IDAT", compressed)
    _chunk(f, b"IDAT", z.flush())
    _chunk(f, b"IEND", b"")


def _png_filter(rows: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG-filter byte rows [n, stride] given the row above the first; returns [n, 1 + stride]."""
    up = np.concatenate([prev[None], rows[:-1]], axis=0)
    left = np.zeros_like(rows)
    left[:, bpp:] = rows[:, :-bpp]
    up_left = np.zeros_like(up)
    up_left[:, bpp:] = up[:, :-bpp]
    a, b, cc = (v.astype(np.int16) for v in (left, up, up_left))
    p = a + b - cc
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - cc)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    average = ((a + b) >> 1).astype(np.uint8)
    candidates = np.stack([rows, rows - left, rows - up, rows - average, rows - paeth])  # uint8 wraps mod 256
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
    choice = cost.argmin(axis=0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = choice
    out[:, 1:] = candidates[choice, np.arange(rows.shape[0])]
    return out


def _write_tiff(
    f: BinaryIO, data: np.ndarray, grey: bool, meta: _Meta, compress: bool = True, bigtiff: bool | None = None
) -> None:
    """A TIFF (8 or 16 bit; grey, grey+alpha, RGB, RGBA): Adobe Deflate with horizontal predictor, strips of ~1 MiB.

    Pillow cannot write 16-bit colour TIFF, so all TIFF goes through this one path. The tag
    directory (EXIF sub-IFDs included) is serialised by Pillow's ImageFileDirectory_v2. BigTIFF is
    used only when the data would not fit the 4 GiB of a classic TIFF.
    """
    h, w, c = data.shape
    sample = data.dtype.itemsize
    rows_per_strip = max(1, min(h, (1 << 20) // max(1, w * c * sample)))
    dtype = "<u2" if sample == 2 else np.uint8
    strips = []
    for y in range(0, h, rows_per_strip):
        block = np.ascontiguousarray(data[y: y + rows_per_strip], dtype=dtype)
        if compress:
            diff = block.copy()
            diff[:, 1:] -= block[:, :-1]  # TIFF predictor 2, modulo the sample size
            strips.append(zlib.compress(diff.tobytes(), 6))
        else:
            strips.append(block.tobytes())
    total = sum(len(s) for s in strips)
    if bigtiff is None:
        bigtiff = total + (1 << 24) > 2**32
    header = b"II\x2b\x00" + struct.pack("<HHQ", 8, 0, 16) if bigtiff else b"II\x2a\x00" + struct.pack("<I", 8)
    try:
        directory = _tiff_directory(header, w, h, c, sample, grey, meta, strips, rows_per_strip, compress, exif=True)
    except Exception:  # an EXIF tag Pillow cannot serialise: write the image without EXIF rather than fail
        directory = _tiff_directory(header, w, h, c, sample, grey, meta, strips, rows_per_strip, compress, exif=False)
    f.write(header)
    f.write(directory)
    for s in strips:
        f.write(s)


def _tiff_directory(
    header: bytes, w: int, h: int, c: int, sample: int, grey: bool, meta: _Meta, strips: list[bytes],
    rows_per_strip: int, compress: bool, exif: bool,
) -> bytes:
    """The serialised first IFD (tags + their data); strip offsets point just past it."""
    bigtiff = header[2] == 0x2B
    ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=header)
    if exif and meta.exif is not None:  # photo tags first: the layout tags below must win
        for tag in meta.exif:
            if tag in (_EXIF_IFD, _GPS_IFD):
                ifd[tag] = meta.exif.get_ifd(tag)
            elif tag not in _LAYOUT_TAGS or tag == _ORIENTATION:
                ifd[tag] = meta.exif[tag]
    ifd[256] = w
    ifd[257] = h
    ifd[258] = (8 * sample,) * c
    ifd[259] = 8 if compress else 1
    ifd[262] = 1 if grey else 2
    ifd[277] = c
    ifd[278] = rows_per_strip
    ifd[284] = 1
    if compress:
        ifd[317] = 2
    if c in (2, 4):
        ifd[338] = (2,)  # unassociated alpha
    if meta.dpi:
        ifd[296] = 2
        ifd[282], ifd[283] = meta.dpi
    if meta.icc:
        ifd[34675] = meta.icc
    if meta.xmp:
        ifd[700] = meta.xmp
    offsets, pos = [], 0
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    ifd[273] = tuple(offsets)  # relative: ImageFileDirectory_v2.tobytes adds the data start
    ifd[279] = tuple(len(s) for s in strips)
    long_type = TiffTags.LONG8 if bigtiff else TiffTags.LONG
    ifd.tagtype[273] = ifd.tagtype[279] = long_type
    return ifd.tobytes(len(header))


# --------------------------------------------------------------------------------------------
# Geometry


def upscale_alpha(alpha: np.ndarray | torch.Tensor, scale: int) -> np.ndarray | torch.Tensor:
    """Bicubic ×scale of an alpha plane [H, W], clipped to [0, 1] (bicubic overshoots at hard edges).

    Returns the same kind of array it was given (numpy, or a tensor on the same device).
    """
    is_tensor = isinstance(alpha, torch.Tensor)
    x = alpha if is_tensor else torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"alpha must be [H, W], got {list(x.shape)}")
    h, w = x.shape
    y = F.interpolate(x[None, None].float(), size=(h * scale, w * scale), mode="bicubic", align_corners=False)
    y = y[0, 0].clamp_(0.0, 1.0)
    return y if is_tensor else y.numpy()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad [B, C, H, W] at the bottom and right up to multiples of `multiple`; returns it and the original (h, w).

    Reflection keeps the statistics of the image's edge (no flat band for the model to invent
    detail in); where the image is too small to reflect (pad >= side), the edge is replicated.
    Crop the result with `crop(y, h * scale, w * scale)`: the output is exactly W·s × H·s, never
    centre-cropped.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode="reflect" if pad_w < w else "replicate")
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode="reflect" if pad_h < h else "replicate")
    return x, (h, w)


def crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The top-left h × w of [..., H, W]: undoes `pad_to_multiple` (after scaling h and w)."""
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"cannot crop {list(x.shape[-2:])} to [{h}, {w}]")
    return x[..., :h, :w]
