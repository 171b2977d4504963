"""What each output format can hold, the errors of the file layer, and the decoded-image record.

Checks here run before any compute (sizes, lost alpha or bits), so a bad output is reported in
milliseconds, not after minutes of upscaling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from infdit_cli.errors import InfditError, printable


class InputError(InfditError):
    """An input that cannot be used: missing, empty, truncated, not an image, too large."""

    def __init__(self, message: object) -> None:
        super().__init__(printable(message))


class OutputError(InfditError):
    """An output that cannot be written: exists, unwritable folder, too large for its format."""

    def __init__(self, message: object) -> None:
        super().__init__(printable(message))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Format:
    name: str  # Pillow's format name
    alpha: bool  # can store an alpha channel
    sixteen: bool  # can store 16 bits per channel (through our writers)
    grey: bool  # can store single-channel grey
    metadata: bool  # stores ICC and EXIF
    max_side: int


_MAX_INT32 = 2**31 - 1
OUTPUT_FORMATS: dict[str, Format] = {
    # PNG and TIFF store 32-bit sizes; we stay at 2**31 - 1 because many readers use signed ints.
    "PNG": Format("PNG", alpha=True, sixteen=True, grey=True, metadata=True, max_side=_MAX_INT32),
    # The JPEG header has 16-bit sizes, but libjpeg refuses anything over 65500 (JPEG_MAX_DIMENSION).
    "JPEG": Format("JPEG", alpha=False, sixteen=False, grey=True, metadata=True, max_side=65500),
    # libwebp: 14-bit sizes.
    "WEBP": Format("WEBP", alpha=True, sixteen=False, grey=False, metadata=True, max_side=16383),
    # We write BigTIFF automatically past 4 GiB, so only the size fields limit TIFF.
    "TIFF": Format("TIFF", alpha=True, sixteen=True, grey=True, metadata=True, max_side=_MAX_INT32),
    # BMP: signed 32-bit sizes and a 32-bit file size (checked in check_output_size).
    "BMP": Format("BMP", alpha=True, sixteen=False, grey=True, metadata=False, max_side=_MAX_INT32),
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



# TIFF tags that describe a file's pixel layout, not the photo: dropped when EXIF is carried over.
LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 274, 277, 278, 279, 280, 281, 284, 290, 291, 292, 293,
    297, 301, 317, 320, 322, 323, 324, 325, 330, 332, 338, 339, 340, 341, 347, 512, 513, 514, 515, 517, 518,
    519, 520, 521, 529, 530, 532, 700, 34377, 34675,
})
EXIF_IFD, GPS_IFD, ORIENTATION = 0x8769, 0x8825, 274


def output_channels(like: LoadedImage | None, fmt: str) -> tuple[int, int]:
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
        channels, _ = output_channels(like, name)
        bits = 8 * channels
        stride = ((width * bits + 7) // 8 + 3) & ~3
        header = 14 + 40 + (1024 if channels == 1 else 0)
        if header + stride * height > 2**32 - 1:
            raise OutputError(f"{width}x{height} output is too large for BMP (files are limited to 4 GiB); "
                              "use --format png or tiff")


# Formats written band by band (`imageio.bands`); the others go through Pillow, which needs the whole image.
STREAMED_FORMATS = ("PNG", "TIFF")


def check_streamable(width: int, height: int, fmt: str) -> None:
    """OutputError, before the run, for a format that cannot be written band by band (an output too
    large to hold in memory), naming those that can."""
    name = output_format(fmt)
    if name not in STREAMED_FORMATS:
        raise OutputError(f"a {width}x{height} output is written band by band (too large to hold in memory), "
                          f"which {name} cannot do; use --format tiff or png")


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
    elif like.icc and not icc_matches(like.icc, grey=like.grayscale and spec.grey):
        losses.append("ICC profile dropped (it does not match the written colour channels)")
    if name == "TIFF" and like.exif and _has_sub_ifds(like.exif):
        losses.append("EXIF camera and GPS details not stored (the TIFF writer keeps only the main EXIF tags)")
    return losses


def _has_sub_ifds(exif_bytes: bytes) -> bool:
    exif = Image.Exif()
    try:
        exif.load(exif_bytes)
    except Exception:  # unreadable EXIF is dropped elsewhere; nothing to warn about here
        return False
    return EXIF_IFD in exif or GPS_IFD in exif


def icc_matches(icc: bytes, grey: bool) -> bool:
    """Whether an ICC profile's colour space (header bytes 16-20) fits the channels being written."""
    space = icc[16:20]
    return space == (b"GRAY" if grey else b"RGB ")

