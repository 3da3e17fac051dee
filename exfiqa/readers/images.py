"""Reading face images for the quality model.

Convention: images are returned as **RGB uint8** arrays of shape (112, 112, 3) (grayscale and RGBA
are converted to RGB; other sizes are resized bilinearly with a warning, because alignment is the
caller's job). The models turn them into tensors (``exfiqa.models.vitfiqa.to_tensor``); nothing here
imports torch.

Decoding (:func:`decode_rgb8`, shared by :func:`read_face` and ``exfiqa.readers.decode_image``):

- **Size limit, checked before decoding.** An image of more than :data:`MAX_IMAGE_PIXELS`
  (8192 x 8192 = 67,108,864) pixels is refused from its header alone, before any pixel is
  decoded, so a decompression bomb (a 20000 x 20000 PNG is about 48 kB on disk) costs no memory.
  The limit is below Pillow's own ``Image.MAX_IMAGE_PIXELS`` (about 89.5 M), so every image
  Pillow would only warn about (``DecompressionBombWarning``, 1x to 2x its limit) is refused too,
  as is every image Pillow refuses itself (``DecompressionBombError``, above 2x). A caller that
  knows the size it needs (the aligned 112x112 benchmark readers) passes ``size``, and any other
  size is refused from the header too.
- **Decoding work limit.** A JPEG with more than :data:`MAX_JPEG_SCANS` scans (SOS markers) is
  refused before decoding: each scan of a progressive JPEG is a pass over the whole image, and a
  file that repeats its last scan 2,000 times (600 kB) takes minutes to decode. Encoders write
  at most a few dozen (libjpeg's progressive script: 10).
- **Bit depth, one rule: a 16-bit sample v (0..65535) becomes v >> 8** (its high byte,
  ``floor(v / 256)``; 8-bit data stored as 16 bits, ``v * 257``, comes back unchanged). This is
  what Pillow itself does when it opens 16-bit RGB, RGBA and gray+alpha PNG and 16-bit RGB TIFF
  (it reads them as 8-bit ``RGB``/``RGBA``, keeping the high byte), and :func:`to_rgb8` applies it
  to the 16-bit grayscale modes Pillow keeps as 16 bits (``I;16``, ``I;16B``, ``I;16L``,
  ``I;16N``) and to the 32-bit integer mode ``I`` (16-bit PGM, some TIFFs), whose values must lie
  in 0..65535, so gray and colour 16-bit files agree. (Pillow's ``convert("RGB")`` would clip
  them instead: nearly every pixel of a 16-bit photograph would become 255.) One exception we do
  not control: Pillow's Netpbm decoder scales 16-bit colour PPM with rounding,
  ``round(v * 255 / maxval)``, at most one level above ``v >> 8``.
- 32-bit float images (mode ``F``) have no agreed 0..1 or 0..255 range and are refused, as are
  ``I`` images with values outside 0..65535. All other modes (``1``, ``L``, ``P``, ``RGB``,
  ``RGBA``, ``LA``, ``PA``, ``CMYK``, ``YCbCr``, ...) go through Pillow's ``convert("RGB")``
  (alpha is dropped, not composited).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "MAX_IMAGE_PIXELS",
    "MAX_JPEG_SCANS",
    "ImageReadError",
    "decode_rgb8",
    "find_images",
    "read_face",
    "to_rgb8",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""File suffixes (lower case) of face images, in the order a reader tries them: what the folder
readers list, what ``exfiqa score`` finds in a folder (:func:`find_images`), what training reads."""

IMAGE_SIZE = 112
"""Side length of every aligned face returned by the readers."""

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image (width x height) that is decoded; larger ones are refused from their header."""

MAX_JPEG_SCANS = 100
"""Most scans (SOS markers) a JPEG may hold; more are refused before decoding."""

_SIXTEEN_BIT_GRAY = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class ImageReadError(OSError):
    """An image file that cannot be decoded."""


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files given directly plus image files found recursively in folders, sorted by path string.

    Paths are kept as given (a folder ``faces/`` yields ``faces/a/1.jpg``), duplicates dropped.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    found: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.update(
                str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif p.is_file():
            found.add(str(p))
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return sorted(found)


def to_rgb8(im: Image.Image) -> NDArray[np.uint8]:
    """A Pillow image -> RGB uint8 (H, W, 3) array, by the bit-depth rule of the module docstring.

    16-bit grayscale (``I;16*``, and ``I`` with values in 0..65535): ``v >> 8`` on every channel.
    Everything else but ``F``: Pillow's ``convert("RGB")``. Decodes ``im`` if not yet loaded.

    Raises:
        ValueError: mode ``F`` (float), or mode ``I`` with values outside 0..65535 (the message
            does not name the file; the readers add it).
    """
    if im.mode == "F":
        raise ValueError(
            "32-bit float image (mode F) has no defined 8-bit range; save the face as an 8- or "
            "16-bit image"
        )
    if im.mode in _SIXTEEN_BIT_GRAY:
        v = np.asarray(im)  # uint16 (either byte order) for I;16*, int32 for I
        if im.mode == "I" and v.size:
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi > 65535:
                raise ValueError(
                    f"mode I image with values {lo}..{hi}, outside the 16-bit range 0..65535"
                )
        gray = (v >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def decode_rgb8(
    fp: str | os.PathLike[str] | IO[bytes], size: tuple[int, int] | None = None
) -> NDArray[np.uint8]:
    """Decode an image file (path or binary file object) to RGB uint8 (H, W, 3).

    Before decoding, the header's size is checked against :data:`MAX_IMAGE_PIXELS` and, if
    given, ``size`` (width, height), and a JPEG's scans are counted against
    :data:`MAX_JPEG_SCANS`; the pixels are then converted by :func:`to_rgb8`.

    Raises:
        ValueError: too many pixels (possible decompression bomb), a size other than ``size``,
            too many JPEG scans, or a mode :func:`to_rgb8` refuses. Messages do not name the
            file; callers add it.
        OSError: not an image Pillow can decode (``UnidentifiedImageError``, truncated data, ...).
    """
    limit = MAX_IMAGE_PIXELS
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as exc:  # Pillow's own refusal, above 2x its limit
        raise ValueError(f"refused, possible decompression bomb: {exc}") from None
    with im:
        w, h = im.size
        if w * h > limit:
            raise ValueError(
                f"{w}x{h} = {w * h:,} pixels exceeds the {limit:,}-pixel limit for a face image "
                f"(exfiqa.readers.images.MAX_IMAGE_PIXELS; possible decompression bomb); not decoded"
            )
        if size is not None and (w, h) != tuple(size):
            raise ValueError(f"{w}x{h} image, expected {size[0]}x{size[1]}; not decoded")
        if im.format in ("JPEG", "MPO") and im.fp is not None:
            scans = _jpeg_scans(im.fp)
            if scans > MAX_JPEG_SCANS:
                raise ValueError(
                    f"JPEG with {scans} scans, more than the {MAX_JPEG_SCANS} an encoder writes "
                    f"(exfiqa.readers.images.MAX_JPEG_SCANS; each scan is a pass over the image); "
                    f"not decoded"
                )
        im.load()
        return to_rgb8(im)


def _jpeg_scans(fh: IO[bytes]) -> int:
    """Start-of-scan markers (``FF DA``) in a JPEG file; the position of ``fh`` is kept.

    Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so
    every ``FF DA`` is a marker (embedded thumbnails count too: an upper bound).
    """
    pos = fh.tell()
    fh.seek(0)
    count, tail = 0, b""
    while block := fh.read(1 << 20):
        count += (tail + block).count(b"\xff\xda")
        tail = block[-1:]
    fh.seek(pos)
    return count


def read_face(path: str | os.PathLike[str], size: int = IMAGE_SIZE) -> NDArray[np.uint8]:
    """Decode an image as RGB uint8 (size, size, 3), resizing (with a warning) if needed.

    See the module docstring for the size limit and the 16-bit rule.

    Raises:
        ImageReadError: the file cannot be decoded as an image, is larger than
            :data:`MAX_IMAGE_PIXELS`, or is a float (mode ``F``) image; the message names it.
    """
    try:
        arr = decode_rgb8(path)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None
    h, w = arr.shape[:2]
    if (w, h) != (size, size):
        warnings.warn(
            f"{path}: {w}x{h} resized to {size}x{size}; ViT-FIQA expects "
            f"faces aligned to the ArcFace {size}x{size} template",
            stacklevel=2,
        )
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(arr, dtype=np.uint8)
