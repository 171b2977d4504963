"""Decoding, encoding and geometry of infdit_cli.imageio, on tiny images."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms

from infdit_cli.imageio import (
    InputError,
    LoadedImage,
    OutputError,
    check_output_size,
    encode,
    format_losses,
    load_image,
    save_image,
    supports_alpha,
    writers,
)
from infdit_cli.preprocess import crop, pad_to_multiple, upscale_alpha

RNG = np.random.default_rng(1234)


def rand8(h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def rand16(h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 65536, (h, w, c)).astype(np.uint16)


def to_int(x: np.ndarray, maxval: int) -> np.ndarray:
    return np.floor(x * maxval + 0.5).astype(np.int64)


def png16_reference(a: np.ndarray) -> bytes:
    """A 16-bit PNG written independently of imageio (no filtering), for the decoder tests."""
    h, w, c = a.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def round_trip(src: Path, out: Path, **kwargs) -> tuple[LoadedImage, Image.Image]:
    img = load_image(src)
    save_image(out, img.rgb, img.alpha, img, **kwargs)
    return img, Image.open(out)


# ----------------------------------------------------------------------------- round trips


def test_rgba_png_round_trip(tmp_path: Path) -> None:
    a = rand8(7, 9, 4)
    Image.fromarray(a).save(tmp_path / "in.png")
    img, out = round_trip(tmp_path / "in.png", tmp_path / "out.png")
    assert img.alpha is not None and img.alpha.shape == (7, 9) and img.rgb.shape == (7, 9, 3)
    assert img.rgb.dtype == np.float32 and img.bit_depth == 8 and not img.grayscale and img.size == (9, 7)
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out), a)


def test_16bit_grayscale_png_round_trip(tmp_path: Path) -> None:
    a = rand16(5, 6, 1)[..., 0]
    Image.fromarray(a).save(tmp_path / "in.png")
    img, out = round_trip(tmp_path / "in.png", tmp_path / "out.png")
    assert img.bit_depth == 16 and img.grayscale and img.alpha is None
    np.testing.assert_array_equal(img.rgb[..., 0], img.rgb[..., 2])  # replicated for the model
    assert out.mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(out).astype(np.uint16), a)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_png_is_read_at_16_bits(tmp_path: Path, channels: int) -> None:
    a = rand16(6, 5, channels)
    (tmp_path / "in.png").write_bytes(png16_reference(a))
    img = load_image(tmp_path / "in.png")
    assert img.bit_depth == 16 and img.grayscale == (channels == 2)
    colour = 1 if channels == 2 else 3
    np.testing.assert_array_equal(to_int(img.rgb[..., :colour], 65535), a[..., :colour])
    if channels in (2, 4):
        np.testing.assert_array_equal(to_int(img.alpha, 65535), a[..., -1])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io's decoders are deprecated, still fine
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_png_written_by_us_decodes_with_libpng(tmp_path: Path, channels: int) -> None:
    tio = pytest.importorskip("torchvision.io")
    a = rand16(70, 5, channels)  # more rows than one filter chunk
    (tmp_path / "in.png").write_bytes(png16_reference(a))
    img, _ = round_trip(tmp_path / "in.png", tmp_path / "out.png")
    data = torch.frombuffer(bytearray((tmp_path / "out.png").read_bytes()), dtype=torch.uint8)
    decoded = tio.decode_png(data, tio.ImageReadMode.UNCHANGED)
    assert decoded.dtype == torch.uint16
    np.testing.assert_array_equal(decoded.permute(1, 2, 0).numpy().astype(np.uint16), a)
    again = load_image(tmp_path / "out.png")
    assert again.bit_depth == 16 and again.grayscale == img.grayscale


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("compress", [True, False])
def test_16bit_tiff_round_trip(tmp_path: Path, channels: int, compress: bool) -> None:
    a = rand16(6, 7, channels)
    meta = writers.Meta(icc=None, exif=None, xmp=None, dpi=(300.0, 300.0))
    with open(tmp_path / "in.tif", "wb") as f:
        writers.write_tiff(f, iter([a]), (a.shape[1], a.shape[0]), channels, 2, channels == 1, meta, compress)
    img, _ = round_trip(tmp_path / "in.tif", tmp_path / "out.tiff")
    assert img.bit_depth == 16 and img.format == "TIFF" and img.dpi == (300.0, 300.0)
    again = load_image(tmp_path / "out.tiff")
    colour = 1 if channels == 1 else 3
    np.testing.assert_array_equal(to_int(again.rgb[..., :colour], 65535), a[..., :colour])
    assert again.grayscale == (channels == 1) and again.bit_depth == 16
    if channels == 4:
        np.testing.assert_array_equal(to_int(again.alpha, 65535), a[..., 3])


def test_bigtiff_layout_reads_back(tmp_path: Path) -> None:
    a = rand8(4, 5, 3)
    with open(tmp_path / "big.tif", "wb") as f:
        writers.write_tiff(f, iter([a]), (5, 4), 3, 1, False, writers.Meta(None, None, None, None), bigtiff=True)
    assert (tmp_path / "big.tif").read_bytes()[:4] == b"II\x2b\x00"
    np.testing.assert_array_equal(to_int(load_image(tmp_path / "big.tif").rgb, 255), a)


def test_16bit_to_jpeg_is_8bit_and_rounded_to_nearest(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(png16_reference(rand16(4, 4, 3)))
    img = load_image(tmp_path / "in.png")
    assert "16-bit precision reduced to 8 bits (JPEG stores 8 bits)" in format_losses("jpg", img)
    save_image(tmp_path / "out.jpg", img.rgb, None, img)
    assert Image.open(tmp_path / "out.jpg").mode == "RGB"
    like = load_image(_write(tmp_path / "p8.png", rand8(2, 2, 3)))
    rgb = np.full((2, 2, 3), 0.7 / 255, dtype=np.float32)  # truncation would give 0
    save_image(tmp_path / "r.png", rgb, None, like)
    assert np.asarray(Image.open(tmp_path / "r.png")).max() == 1


def _write(path: Path, a: np.ndarray, **kwargs) -> Path:
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(path, **kwargs)
    return path


def test_grayscale_jpeg_round_trip(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.jpg", np.tile(np.arange(0, 240, 16, dtype=np.uint8), (8, 1))[..., None])
    img, out = round_trip(src, tmp_path / "out.jpg")
    assert img.grayscale and img.bit_depth == 8 and img.format == "JPEG"
    assert out.mode == "L"
    np.testing.assert_allclose(np.asarray(out, dtype=float), np.asarray(Image.open(src), dtype=float), atol=3)


def test_grayscale_alpha_round_trip(tmp_path: Path) -> None:
    a = rand8(5, 4, 2)
    img, out = round_trip(_write(tmp_path / "in.png", a), tmp_path / "out.png")
    assert img.grayscale and img.alpha is not None and out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out), a)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_icc_profile_is_kept(tmp_path: Path, suffix: str) -> None:
    icc = srgb_icc()
    src = _write(tmp_path / "in.png", rand8(6, 6, 3), icc_profile=icc)
    img, out = round_trip(src, tmp_path / f"out{suffix}")
    assert img.icc == icc
    assert out.info.get("icc_profile") == icc


def test_grey_icc_is_not_attached_to_rgb_webp(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.png", rand8(4, 4, 1))
    img = load_image(src)
    img.icc = b"\0" * 16 + b"GRAY" + b"\0" * 108  # a grey profile header is enough for the check
    assert any("ICC profile dropped" in m for m in format_losses("webp", img))
    save_image(tmp_path / "out.webp", img.rgb, None, img)
    assert "icc_profile" not in Image.open(tmp_path / "out.webp").info


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x013B] = "Ada Lovelace"  # Artist
    exif[0x0131] = "darktable 4.6"  # Software
    return exif


def test_exif_orientation_applied_and_other_tags_kept(tmp_path: Path) -> None:
    a = rand8(10, 20, 3)  # stored 20 wide, 10 high; orientation 6 shows it 10 wide, 20 high
    _write(tmp_path / "in.jpg", a, exif=exif_with(6), quality=95)
    img = load_image(tmp_path / "in.jpg")
    assert img.size == (10, 20) and img.rgb.shape == (20, 10, 3)
    save_image(tmp_path / "out.jpg", img.rgb, None, img)
    out = Image.open(tmp_path / "out.jpg")
    assert out.size == (10, 20)
    exif = out.getexif()
    assert exif[0x0112] == 1 and exif[0x013B] == "Ada Lovelace" and exif[0x0131] == "darktable 4.6"
    assert Image.Exif() is not None and 0x0112 not in _exif(img.exif)


def _exif(data: bytes | None) -> Image.Exif:
    exif = Image.Exif()
    if data:
        exif.load(data)
    return exif


def test_exif_orientation_rotates_pixels_exactly(tmp_path: Path) -> None:
    a = rand8(3, 5, 3)
    _write(tmp_path / "in.png", a, exif=exif_with(6))
    img = load_image(tmp_path / "in.png")
    np.testing.assert_array_equal(to_int(img.rgb, 255), np.rot90(a, k=-1))  # 6 = rotate 90° clockwise
    save_image(tmp_path / "out.png", img.rgb, None, img)
    out = Image.open(tmp_path / "out.png")
    assert out.getexif()[0x0112] == 1 and out.getexif()[0x013B] == "Ada Lovelace"


def test_exif_pixel_dimensions_follow_the_new_size(tmp_path: Path) -> None:
    exif = exif_with(1)
    exif.get_ifd(0x8769)[0xA002] = 4  # PixelXDimension
    exif.get_ifd(0x8769)[0xA003] = 3
    img = load_image(_write(tmp_path / "in.jpg", rand8(3, 4, 3), exif=exif))
    save_image(tmp_path / "out.jpg", np.zeros((12, 16, 3), np.float32), None, img)
    sub = Image.open(tmp_path / "out.jpg").getexif().get_ifd(0x8769)
    assert (sub[0xA002], sub[0xA003]) == (16, 12)


def test_exif_and_icc_carried_into_16bit_png_and_tiff(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(png16_reference(rand16(3, 4, 3)))
    img = load_image(tmp_path / "in.png")
    img.exif, img.icc, img.dpi = exif_with(1).tobytes(), srgb_icc(), (300.0, 300.0)
    for name in ("out.png", "out.tif"):
        save_image(tmp_path / name, img.rgb, None, img)
        out = Image.open(tmp_path / name)
        assert out.getexif()[0x013B] == "Ada Lovelace" and out.getexif()[0x0112] == 1
        assert out.info["icc_profile"] == img.icc
        assert out.info["dpi"] == pytest.approx((300.0, 300.0), abs=0.01)


@pytest.mark.parametrize("suffix,dpi", [(".png", (300, 300)), (".jpg", (300, 150)), (".tif", (72, 72))])
def test_dpi_carried_over(tmp_path: Path, suffix: str, dpi: tuple[int, int]) -> None:
    src = _write(tmp_path / f"in{suffix}", rand8(4, 4, 3), dpi=dpi)
    img, out = round_trip(src, tmp_path / f"out{suffix}")
    assert img.dpi == pytest.approx(dpi, abs=0.01)
    assert out.info["dpi"] == pytest.approx(dpi, abs=0.01)


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    im = Image.fromarray(rand8(4, 4, 3)).quantize(8)
    im.info["transparency"] = 0
    im.save(tmp_path / "in.png", transparency=0)
    img = load_image(tmp_path / "in.png")
    assert img.alpha is not None and not img.grayscale and img.bit_depth == 8


def test_colour_key_transparency_becomes_alpha(tmp_path: Path) -> None:
    a = rand8(4, 4, 3)
    a[0, 0] = (1, 2, 3)
    Image.fromarray(a).save(tmp_path / "in.png", transparency=(1, 2, 3))
    img = load_image(tmp_path / "in.png")
    assert img.alpha is not None and img.alpha[0, 0] == 0 and img.alpha[1, 1] == 1


def test_bilevel_and_cmyk_inputs(tmp_path: Path) -> None:
    Image.fromarray(rand8(4, 4, 1)[..., 0] > 128).save(tmp_path / "bw.png")
    assert load_image(tmp_path / "bw.png").grayscale
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    img = load_image(tmp_path / "cmyk.jpg")
    assert not img.grayscale and img.rgb[0, 0, 0] > 0.9 and img.rgb[0, 0, 1] < 0.1 and img.notes


def test_jpeg_output_flattens_alpha_onto_white(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 3] = 0  # fully transparent black
    img = load_image(_write(tmp_path / "in.png", a))
    assert not supports_alpha("jpg")
    assert any("flattened onto white" in m for m in format_losses("jpeg", img))
    save_image(tmp_path / "out.jpg", img.rgb, img.alpha, img)
    assert np.asarray(Image.open(tmp_path / "out.jpg")).min() >= 250


def test_lossless_webp_stays_lossless(tmp_path: Path) -> None:
    a = rand8(5, 6, 3)
    img, out = round_trip(_write(tmp_path / "in.webp", a, lossless=True), tmp_path / "out.webp")
    assert img.lossless_webp
    np.testing.assert_array_equal(np.asarray(out.convert("RGB")), a)
    assert not load_image(_write(tmp_path / "lossy.webp", a, quality=80)).lossless_webp


def test_torch_input_and_nan_refused(tmp_path: Path) -> None:
    img = load_image(_write(tmp_path / "in.png", rand8(2, 3, 3)))
    save_image(tmp_path / "t.png", torch.from_numpy(img.rgb), None, img)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "t.png")), to_int(img.rgb, 255))
    bad = img.rgb.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        save_image(tmp_path / "nan.png", bad, None, img)
    assert not (tmp_path / "nan.png").exists()


# ----------------------------------------------------------------------------- bad inputs


def assert_one_line(exc: pytest.ExceptionInfo, path: Path) -> None:
    text = str(exc.value)
    assert "\n" not in text and str(path) in text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as exc:
        load_image(tmp_path / "nope.png")
    assert_one_line(exc, tmp_path / "nope.png")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty file") as exc:
        load_image(tmp_path / "empty.png")
    assert_one_line(exc, tmp_path / "empty.png")


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file(tmp_path: Path, fmt: str, suffix: str, keep: float) -> None:
    buf = io.BytesIO()
    Image.fromarray(rand8(32, 32, 3)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="truncated or corrupt") as exc:
        load_image(path)
    assert_one_line(exc, path)


def test_text_file_with_image_suffix(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not\na picture\n")
    with pytest.raises(InputError, match="not an image") as exc:
        load_image(path)
    assert_one_line(exc, path)


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("limit", [300, 100])  # 400 px: Pillow warns over the limit, errors over twice it
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    path = _write(tmp_path / "bomb.png", rand8(20, 20, 3))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(InputError, match="decompression-bomb limit") as exc:
        load_image(path)
    assert_one_line(exc, path)


def test_control_characters_in_names_stay_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "evil\nname.png"
    with pytest.raises(InputError) as exc:
        load_image(path)
    assert "\n" not in str(exc.value) and "evil\\nname.png" in str(exc.value)


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("w,h,fmt,ok", [
    (65500, 10, "jpg", True), (65501, 10, "jpeg", False), (10, 70000, "JPEG", False),
    (16383, 16383, "webp", True), (16384, 5, "webp", False),
    (100_000, 100_000, "png", True), (2**31, 1, "png", False), (100_000, 100_000, "tiff", True),
    (30_000, 30_000, "bmp", True), (40_000, 40_000, "bmp", False),
])
def test_check_output_size(w: int, h: int, fmt: str, ok: bool) -> None:
    if ok:
        check_output_size(w, h, fmt)
    else:
        with pytest.raises(OutputError, match="too large") as exc:
            check_output_size(w, h, fmt)
        assert "\n" not in str(exc.value)


def test_unknown_output_format() -> None:
    with pytest.raises(OutputError, match="cannot write"):
        check_output_size(10, 10, "gif")


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt, OSError])
def test_atomic_save_leaves_nothing_when_the_encoder_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    img = load_image(_write(tmp_path / "in.png", rand8(4, 4, 3)))
    target = tmp_path / "out" / "result.png"
    target.parent.mkdir()
    target.write_bytes(b"previous result")

    def half_written(f, *args, **kwargs) -> None:
        f.write(b"\x89PNG partial")
        raise error("encoder died")

    monkeypatch.setattr(encode, "write_png", half_written)
    with pytest.raises(OutputError if error is OSError else error):
        save_image(target, img.rgb, None, img)
    assert sorted(os.listdir(target.parent)) == ["result.png"]
    assert target.read_bytes() == b"previous result"


def test_save_uses_hidden_temp_name_and_creates_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = load_image(_write(tmp_path / "in.png", rand8(4, 4, 3)))
    seen: list[str] = []
    real_replace = os.replace

    def spy(src, dst) -> None:
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    out = save_image(tmp_path / "new" / "deep" / "x.png", img.rgb, None, img)
    assert out.is_file() and seen == [f".x.png.{os.getpid()}.tmp.png"]


# ----------------------------------------------------------------------------- geometry


def test_pad_and_crop_odd_size_exactly() -> None:
    x = torch.rand(1, 3, 37, 53)
    padded, (h, w) = pad_to_multiple(x, 32)
    assert padded.shape == (1, 3, 64, 64) and (h, w) == (37, 53)
    torch.testing.assert_close(padded[..., :37, :53], x, rtol=0, atol=0)
    torch.testing.assert_close(padded[..., 37, :53], x[..., 35, :], rtol=0, atol=0)  # reflection
    scale = 4
    up = F.interpolate(padded, scale_factor=scale, mode="nearest")
    out = crop(up, h * scale, w * scale)
    assert out.shape[-2:] == (37 * 4, 53 * 4)
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=scale, mode="nearest"), rtol=0, atol=0)


def test_pad_falls_back_to_replicate_on_tiny_images() -> None:
    x = torch.rand(2, 3, 5, 1)  # one pixel wide: nothing to reflect
    padded, size = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 8, 8) and size == (5, 1)
    torch.testing.assert_close(padded[..., :5, :], x.expand(-1, -1, -1, 8), rtol=0, atol=0)
    same, _ = pad_to_multiple(torch.rand(1, 1, 16, 8), 8)
    assert same.shape == (1, 1, 16, 8)


def test_crop_refuses_to_grow() -> None:
    with pytest.raises(ValueError):
        crop(torch.zeros(1, 1, 4, 4), 5, 4)


def test_upscale_alpha_is_bicubic_and_clipped() -> None:
    alpha = np.zeros((6, 6), np.float32)
    alpha[:, 3:] = 1.0  # a hard edge makes bicubic overshoot
    up = upscale_alpha(alpha, 4)
    assert isinstance(up, np.ndarray) and up.shape == (24, 24)
    assert up.min() == 0.0 and up.max() == 1.0
    raw = F.interpolate(torch.from_numpy(alpha)[None, None], scale_factor=4, mode="bicubic")[0, 0]
    assert raw.max() > 1.0  # the clip above did something
    t = upscale_alpha(torch.from_numpy(alpha), 2)
    assert isinstance(t, torch.Tensor) and t.shape == (12, 12)


# ----------------------------------------------------------------------------- edge cases


def test_16bit_colour_orientation_applies_to_both_byte_halves(tmp_path: Path) -> None:
    a = rand16(3, 5, 3)
    meta = writers.Meta(icc=None, exif=exif_with(8), xmp=None, dpi=None)
    with open(tmp_path / "in.png", "wb") as f:
        writers.write_png(f, iter([a]), (a.shape[1], a.shape[0]), 3, 16, meta)
    img = load_image(tmp_path / "in.png")
    assert img.size == (3, 5) and img.bit_depth == 16
    np.testing.assert_array_equal(to_int(img.rgb, 65535), np.rot90(a, k=1))  # 8 = rotate 90° anticlockwise


def test_truncated_files_fail_even_if_pillow_was_made_lenient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    buf = io.BytesIO()
    Image.fromarray(rand8(32, 32, 3)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InputError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_float_images_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((3, 3), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(InputError, match="floating-point"):
        load_image(tmp_path / "f.tif")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_fifo_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(InputError, match="not a regular file"):
        load_image(tmp_path / "pipe.png")


def test_broken_exif_never_costs_the_upscale(tmp_path: Path) -> None:
    img = load_image(_write(tmp_path / "in.png", rand8(3, 3, 3)))
    img.exif = b"Exif\x00\x00garbage"
    for name in ("out.jpg", "out.tif"):
        save_image(tmp_path / name, img.rgb, None, img)
        assert Image.open(tmp_path / name).size == (3, 3)


def test_tiff_warns_that_exif_sub_ifds_are_not_kept(tmp_path: Path) -> None:
    exif = exif_with(1)
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:00:00"  # DateTimeOriginal, in the Exif sub-IFD
    img = load_image(_write(tmp_path / "in.jpg", rand8(4, 4, 3), exif=exif))
    assert any("EXIF camera" in loss for loss in format_losses("tiff", img))
    assert not any("EXIF camera" in loss for loss in format_losses("png", img))
    save_image(tmp_path / "out.tif", img.rgb, None, img)
    with Image.open(tmp_path / "out.tif") as out:
        assert out.getexif()[0x013B] == "Ada Lovelace" and out.getexif()[0x0112] == 1
