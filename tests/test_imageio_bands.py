"""Band-by-band writing (imageio.bands): the same pixels and metadata as save_image, atomically."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from infdit_cli.imageio import OutputError, load_image, save_bands, save_image, writers
from infdit_cli.imageio.writers import filter_rows

RNG = np.random.default_rng(18)


def smooth(h: int, w: int, c: int, maxval: int) -> np.ndarray:
    """A photo-like image: gradients plus a little noise (so every PNG filter type has a use)."""
    y, x = np.mgrid[0:h, 0:w]
    planes = [(np.sin(x / (7 + k) + y / (11 + k)) + 1) / 2 for k in range(c)]
    img = np.stack(planes, axis=2) * 0.9 + RNG.random((h, w, c)) * 0.1
    return np.floor(img * maxval).astype(np.uint16 if maxval > 255 else np.uint8)


def source(tmp_path: Path, mode: str) -> Path:
    """An input file of the given kind: RGB, RGBA, L, LA (8 bit) or RGB16, RGBA16 (tifffile)."""
    h, w = 37, 300
    path = tmp_path / f"src_{mode}.{'tif' if mode.endswith('16') else 'png'}"
    if mode.endswith("16"):
        c = 4 if mode.startswith("RGBA") else 3
        tifffile.imwrite(path, smooth(h, w, c, 65535), photometric="rgb",
                         extrasamples=("unassalpha",) if c == 4 else None)
    else:
        c = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
        data = smooth(h, w, c, 255)
        icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() if c >= 3 else None
        Image.fromarray(data[..., 0] if c == 1 else data, mode).save(path, icc_profile=icc, dpi=(300, 300))
    return path


def bands_of(rgb: np.ndarray, alpha: np.ndarray | None, heights: list[int]):
    start = 0
    for rows in heights:
        yield rgb[start:start + rows], None if alpha is None else alpha[start:start + rows]
        start += rows


def decoded(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        return tifffile.imread(path)
    import imagecodecs

    return imagecodecs.png_decode(path.read_bytes())


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "RGB16", "RGBA16"])
@pytest.mark.parametrize("ext", ["png", "tif"])
def test_bands_write_the_file_save_image_writes(tmp_path: Path, mode: str, ext: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte for byte, wherever the bands are cut (an out-of-core upscale's file is the in-RAM run's)."""
    monkeypatch.setattr(writers, "_IDAT_BYTES", 97)  # many IDAT chunks: their cuts must not follow the bands
    monkeypatch.setattr(writers, "_FILTER_CHUNK_BYTES", 1000)
    img = load_image(source(tmp_path, mode))
    h, w = img.rgb.shape[:2]
    rgb = np.clip(img.rgb * 1.1 - 0.05, -0.2, 1.2)  # out-of-range values are clipped alike
    whole = save_image(tmp_path / f"whole.{ext}", rgb, img.alpha, img)
    for k, cuts in enumerate([[7, 1, 20, 9], [1] * h, [h]]):
        banded = save_bands(tmp_path / f"banded{k}.{ext}", bands_of(rgb, img.alpha, cuts), (w, h), img)
        assert banded.read_bytes() == whole.read_bytes()
    expected = np.floor(np.clip(np.concatenate([rgb] + ([] if img.alpha is None else [img.alpha[..., None]]), 2),
                                0, 1) * (65535 if mode.endswith("16") else 255) + 0.5)
    if mode in ("L", "LA"):
        grey = np.floor(np.clip(rgb, 0, 1).mean(axis=2) * 255 + 0.5)
        expected = grey if mode == "L" else np.stack([grey, expected[..., 3]], axis=2)
    assert np.array_equal(decoded(whole), expected)
    with Image.open(whole) as a, Image.open(banded) as b:
        assert a.mode == b.mode and a.info.get("icc_profile") == b.info.get("icc_profile")
        assert a.info.get("dpi") == b.info.get("dpi")
    assert not list(tmp_path.glob(".*.tmp*"))


def test_tiff_is_tiled(tmp_path: Path) -> None:
    img = load_image(source(tmp_path, "RGB"))
    h, w = img.rgb.shape[:2]
    out = save_bands(tmp_path / "t.tif", bands_of(img.rgb, None, [h]), (w, h), img)
    with tifffile.TiffFile(out) as t:
        assert t.pages[0].is_tiled and t.pages[0].compression == 8  # Adobe Deflate


def test_png_compresses_like_libpng(tmp_path: Path) -> None:
    """Filters and zlib settings matter: within 1% of Pillow's (libpng's) file, far below unfiltered rows."""
    img = load_image(source(tmp_path, "RGB"))
    h, w = img.rgb.shape[:2]
    banded = save_bands(tmp_path / "banded.png", bands_of(img.rgb, None, [h]), (w, h), img)
    data = np.floor(np.clip(img.rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(data).save(tmp_path / "pillow.png", icc_profile=img.icc, dpi=img.dpi)
    raw = zlib.compress(b"".join(b"\0" + row.tobytes() for row in data), 6)  # every row unfiltered
    assert banded.stat().st_size < 1.01 * (tmp_path / "pillow.png").stat().st_size
    assert banded.stat().st_size < 0.9 * len(raw)


def test_filter_rows_inverts() -> None:
    """Undoing each row's filter (the PNG decoder's job, written out here) gives the raw rows back."""
    raw = smooth(5, 40, 3, 255).reshape(5, -1)
    previous = smooth(1, 40, 3, 255).reshape(-1)
    out = filter_rows(raw, previous, 3)
    assert set(out[:, 0]) <= {0, 1, 2, 3, 4}
    prior = previous.astype(np.int64)
    for y in range(5):
        ftype, line = out[y, 0], out[y, 1:].astype(np.int64)
        row = np.zeros_like(line)
        for i in range(len(line)):
            a = row[i - 3] if i >= 3 else 0
            b = prior[i]
            c = prior[i - 3] if i >= 3 else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = [0, a, b, (a + b) // 2, a if pa <= pb and pa <= pc else (b if pb <= pc else c)][ftype]
            row[i] = (line[i] + pred) % 256
        assert np.array_equal(row, raw[y])
        prior = row


def test_unstreamable_format_refused_before_writing(tmp_path: Path) -> None:
    img = load_image(source(tmp_path, "RGB"))
    h, w = img.rgb.shape[:2]

    def never():
        raise AssertionError("no band may be read")
        yield

    with pytest.raises(OutputError, match="JPEG cannot.*use --format tiff or png"):
        save_bands(tmp_path / "out.jpg", never(), (w, h), img)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_failure_midway_leaves_nothing(tmp_path: Path, ext: str) -> None:
    img = load_image(source(tmp_path, "RGB"))
    h, w = img.rgb.shape[:2]

    def broken():
        yield img.rgb[:10], None
        raise RuntimeError("the upscale stopped")

    with pytest.raises(RuntimeError):
        save_bands(tmp_path / f"out.{ext}", broken(), (w, h), img)
    with pytest.raises(OutputError, match="held 10 of the image's 37 rows"):
        save_bands(tmp_path / f"out.{ext}", bands_of(img.rgb, None, [10]), (w, h), img)
    assert list(tmp_path.iterdir()) == [tmp_path / "src_RGB.png"]


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_bands_are_read_to_their_end(tmp_path: Path, ext: str) -> None:
    """A producer finishes (its code after the last band runs) even when the image is whole tiles: the
    out-of-core upscale records its result there (tifffile stops pulling at the last tile)."""
    img = load_image(source(tmp_path, "RGB"))
    rgb = np.resize(img.rgb, (512, 16, 3))
    finished = []

    def bands():
        yield from bands_of(rgb, None, [256, 256])
        finished.append(True)

    save_bands(tmp_path / f"out.{ext}", bands(), (16, 512), img)
    assert finished == [True]
