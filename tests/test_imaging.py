"""decode_image on every kind of upload a user can send."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from agelens.imaging import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    apply_orientation,
    decode_image,
)
from tests.conftest import encode


def gradient(w: int = 120, h: int = 80) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full_like(x, 90)], -1)


def png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR claiming w x h, with a tiny IDAT: a decompression-bomb probe."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_rgb_jpeg_roundtrip() -> None:
    out = decode_image(encode(gradient(), "PNG"))
    assert out.shape == (80, 120, 3) and out.dtype == np.uint8
    assert np.array_equal(out, gradient())


def test_empty_and_text() -> None:
    with pytest.raises(ImageDecodeError, match="0 bytes"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(b"hello, this is not an image")


def test_truncated_jpeg() -> None:
    data = encode(gradient(400, 300), "JPEG", quality=95)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = Image.fromarray(gradient()[:, :, 0], "L")
    out = decode_image(encode(gray, "PNG"))
    assert out.shape == (80, 120, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], np.asarray(gray))


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :5, 3] = 255  # left half opaque red-ish, right half fully transparent
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[0, 9]) == (255, 255, 255)
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert decode_image(encode(la, "PNG")).shape == (10, 10, 3)


def test_palette_with_transparency() -> None:
    img = Image.fromarray(gradient()).convert("P")
    img.info["transparency"] = 0
    assert decode_image(encode(img, "PNG", transparency=0)).shape == (80, 120, 3)


def test_16_bit_png_scales_by_type_range() -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    img = Image.fromarray(arr)
    out = decode_image(encode(img, "PNG"))
    assert out.shape == (8, 8, 3)
    assert 126 <= int(out[0, 0, 0]) <= 129  # half of the 16-bit range -> half of 8-bit


def test_cmyk_jpeg() -> None:
    cmyk = Image.fromarray(gradient()).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.shape == (80, 120, 3)
    assert np.abs(out.astype(int) - gradient().astype(int)).mean() < 12


def test_exif_rotation_is_applied() -> None:
    img = Image.fromarray(gradient(120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (120, 80, 3), "displayed orientation is portrait"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(orientation: int) -> None:
    """The OpenCV fast path turns images exactly as Pillow's exif_transpose does (lossless PNG)."""
    arr = gradient(120, 80)
    arr[5:15, 10:30] = (255, 0, 0)  # an asymmetric mark, so every flip and turn is distinguishable
    exif = Image.Exif()
    exif[0x0112] = orientation
    png = Image.open(io.BytesIO(encode(Image.fromarray(arr), "PNG", exif=exif.tobytes())))
    expected = np.asarray(ImageOps.exif_transpose(png).convert("RGB"))
    assert np.array_equal(apply_orientation(arr, orientation), expected)
    assert np.array_equal(decode_image(encode(Image.fromarray(arr), "PNG", exif=exif.tobytes())), expected)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_jpeg_fast_path_agrees_with_pillow(orientation: int) -> None:
    """JPEGs are decoded by OpenCV (fast path); the pixels match Pillow's decoder within rounding."""
    arr = gradient(160, 96)
    arr[10:30, 20:60] = (250, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)
    pil = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")).astype(int)
    out = decode_image(data)
    assert out.shape == pil.shape
    assert np.abs(out.astype(int) - pil).max() <= 3


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((250, 0, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode_image(buf.getvalue())
    assert out[5, 5, 0] > 200 and out[5, 5, 2] < 50


def test_webp_and_one_pixel() -> None:
    assert decode_image(encode(gradient(), "WEBP", quality=90)).shape == (80, 120, 3)
    assert decode_image(encode(np.zeros((1, 1, 3), np.uint8), "PNG")).shape == (1, 1, 3)


def test_huge_declared_size_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(png_header_only(20000, 20000), max_pixels=40_000_000)
    with pytest.raises(ImageTooLargeError, match="6000x5000"):
        decode_image(png_header_only(6000, 5000), max_pixels=20_000_000)


def test_unsupported_format() -> None:
    buf = io.BytesIO()
    Image.fromarray(gradient()).save(buf, "PCX")
    with pytest.raises(UnsupportedImageError, match="PCX"):
        decode_image(buf.getvalue())
