"""Everything that touches image files: decoding with metadata (`decode`), atomic encoding (`encode`),
and what each format can hold (`formats`). Tensor geometry (padding, cropping, alpha resizing) is
not here but in `infdit_cli.preprocess`; this package never imports torch.

Decisions, in one place (the README and the CLI help point here):

- Colour: pixels are never converted between colour spaces. The network sees the image's own RGB
  values, whatever space its ICC profile describes, and the same profile is embedded in the output,
  so every pixel keeps its meaning. A converted image would lose gamut and precision twice (in and
  out) for no gain: an upscaler does not care which RGB it works in. The one exception is CMYK,
  which the model cannot take: with a profile it goes to sRGB through LittleCMS (and the output
  carries sRGB); without one Pillow's naive conversion is used.
- Orientation: EXIF orientation is applied on load and written as 1, so every viewer shows the
  output the way it showed the input.
- 16 bit: 16-bit PNG and TIFF come back as 16 bit (our PNG writer, and tifffile, write
  them); formats that store 8 bits (JPEG, WebP, BMP) get 8 bits.
- Alpha: split off on load, upscaled separately (`preprocess.upscale_alpha`) and re-attached on
  save. JPEG has no alpha channel: the image is composited onto white, as image editors do when
  flattening for JPEG; `format_losses` reports it so the CLI can warn before any compute.
- Safety: Pillow's decompression-bomb limit stays on and is a hard error; every image is fully
  decoded, so truncated files are errors; EPS (runs Ghostscript) and other non-raster plugins are off.
- Writing is atomic: an output either exists complete or not at all (disk full, Ctrl-C, encoder error).
- Outputs too large to hold in memory are written band by band as they finish (`bands`: tiled TIFF,
  PNG rows); JPEG, WebP and BMP cannot be, and are refused before the run.
"""

from infdit_cli.imageio.bands import save_bands
from infdit_cli.imageio.decode import check_header, load_image
from infdit_cli.imageio.encode import save_image
from infdit_cli.imageio.formats import (
    OUTPUT_FORMATS,
    STREAMED_FORMATS,
    InputError,
    LoadedImage,
    OutputError,
    check_output_size,
    check_streamable,
    format_losses,
    output_format,
    read_formats,
    supports_alpha,
)

__all__ = [
    "InputError", "OutputError", "LoadedImage", "OUTPUT_FORMATS", "read_formats", "load_image", "check_header",
    "save_image", "save_bands", "STREAMED_FORMATS", "check_streamable",
    "output_format", "check_output_size", "format_losses", "supports_alpha",
]
