"""Decoding untrusted image bytes into an upright 8-bit RGB array.

Everything a user can upload goes through `decode_image`: EXIF orientation is applied (so boxes
come back in the orientation the user sees), and every Pillow mode we accept (grayscale, alpha,
palette, CMYK, 16-bit, float) is mapped to RGB. Errors are typed so the service can map them to
HTTP codes without leaking tracebacks.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats we decode. Anything else Pillow might open (PSD, EPS via Ghostscript, ...) is refused:
# a smaller attack surface, and nothing a face photo needs.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
# File name suffixes of those formats: what a folder scan (`agelens batch`) treats as an image.
SUPPORTED_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo"}
)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (empty, text, truncated, corrupt)."""


class UnsupportedImageError(ValueError):
    """The bytes are an image, but in a format we do not accept."""


class ImageTooLargeError(ValueError):
    """The image declares more pixels than allowed (checked before decoding: bomb-safe)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and 32-bit grayscale: scale by the type's range, not by the image's own range,
        # so a dark photo stays dark.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: transparent pixels are usually background, and black would read
        # as hair or shadow to the detector.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX...: Pillow's converters handle these correctly
    # (CMYK JPEGs from Photoshop carry inverted channels, which Pillow already undoes).
    return img.convert("RGB")


EXIF_ORIENTATION = 0x0112

# EXIF orientation -> the array operation that makes the image upright; the same transforms as
# Pillow's ImageOps.exif_transpose (tests/test_imaging.py checks all eight against it).
_ORIENT: dict[int, object] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def apply_orientation(arr: NDArray[np.uint8], orientation: int) -> NDArray[np.uint8]:
    """Rotate/flip an HxWxC array as EXIF orientation `orientation` asks (1 or unknown: as is)."""
    op = _ORIENT.get(orientation)
    return np.ascontiguousarray(op(arr)) if op is not None else arr  # type: ignore[operator]


def _jpeg_fast_path(data: bytes, img: Image.Image) -> NDArray[np.uint8] | None:
    """Decode a complete 8-bit RGB or grayscale JPEG with OpenCV, or return None.

    Profiling the service (benchmarks/profile_estimate.py, before this path existed) showed Pillow
    spending ~7 ms on a 640x480 JPEG (decode, an EXIF-transpose copy and the array conversion)
    where cv2.imdecode, which writes straight into a numpy array, needs 1-3 ms. Everything
    unusual (CMYK, truncated files, MPO) stays on the Pillow path, which reports errors
    precisely: a JPEG without its end-of-image marker is truncated, and libjpeg would silently
    fill it grey.
    """
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None
    try:
        # Straight to RGB: no separate BGR -> RGB pass over the photo.
        flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    if rgb is None or rgb.shape[:2] != (img.size[1], img.size[0]):
        return None
    return apply_orientation(rgb, int(img.getexif().get(EXIF_ORIENTATION, 1)))


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header only."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> NDArray[np.uint8]:
    """Decode bytes to an upright HxWx3 uint8 RGB array.

    Raises ImageDecodeError, UnsupportedImageError or ImageTooLargeError; never anything else
    for bad input.
    """
    if not data:
        raise ImageDecodeError("empty upload: the image has 0 bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at 2x errors) on huge images; we enforce our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("the upload is not a recognised image") from exc
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (2x its MAX_IMAGE_PIXELS) fired before ours could.
        raise ImageTooLargeError(f"the image declares too many pixels: {exc}") from exc
    except Exception as exc:
        raise ImageDecodeError(f"the image header could not be read: {type(exc).__name__}") from exc

    with img:
        if img.format not in SUPPORTED_FORMATS:
            raise UnsupportedImageError(f"image format {img.format} is not supported")
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageDecodeError("the image has no pixels")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"the image has {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
            )
        try:
            fast = _jpeg_fast_path(data, img)
            if fast is not None:
                return fast
            # Animated GIF/WebP: the first frame is the photo people expect to be analysed.
            img.seek(0)
            img.load()
            # exif_transpose copies the whole image even when nothing needs turning: skip it then.
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            upright = (ImageOps.exif_transpose(img) or img) if orientation != 1 else img
            rgb = _to_rgb(upright)
            return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            # Truncated or corrupt data: Pillow raises OSError ("image file is truncated", ...).
            raise ImageDecodeError(f"the image data is truncated or corrupt: {exc}") from exc


def read_image_file(path: str) -> NDArray[np.uint8]:
    with open(path, "rb") as fh:
        return decode_image(fh.read())
