"""Reading face images for the quality model, as **RGB uint8** arrays (112, 112, 3): grayscale and
RGBA become RGB; other sizes are resized bilinearly with a warning (alignment is the caller's job).
Nothing here imports torch.

Decoding (:func:`decode_rgb8`, shared by :func:`read_face` and ``exfiqa.readers.decode_image``):

- An image of more than :data:`MAX_IMAGE_PIXELS` (below Pillow's own limit), or of another size
  than a caller's ``size``, is refused from its header, so a decompression bomb costs no memory.
- A JPEG with more than :data:`MAX_JPEG_SCANS` scans is refused before decoding (each scan of a
  progressive JPEG is a pass over the image; encoders write a few dozen at most).
- Bit depth: a 16-bit sample v becomes ``v >> 8`` (its high byte), as Pillow reads 16-bit RGB(A)
  PNG and TIFF; :func:`to_rgb8` applies it to the 16-bit gray modes ``I;16*`` and to mode ``I``
  (values must lie in 0..65535), which ``convert("RGB")`` would clip. (Pillow scales 16-bit PPM
  with rounding, at most one level above.) Float images (mode ``F``) are refused; all other modes
  go through ``convert("RGB")`` (alpha dropped, not composited).
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

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_SIZE", "MAX_IMAGE_PIXELS", "MAX_JPEG_SCANS", "ImageReadError", "decode_rgb8",
           "find_images", "read_face", "to_rgb8"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""Face image suffixes (lower case), in the order a reader tries them; also ``exfiqa score``'s and training's."""

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
    """Files given directly plus image files found recursively in folders, sorted, duplicates dropped;
    paths kept as given (``faces/`` yields ``faces/a/1.jpg``). FileNotFoundError for a missing input."""
    found: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.update(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.add(str(p))
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return sorted(found)


def to_rgb8(im: Image.Image) -> NDArray[np.uint8]:
    """A Pillow image -> RGB uint8 (H, W, 3) array by the module's bit-depth rule (decodes ``im``).

    Raises:
        ValueError: mode ``F``, or mode ``I`` outside 0..65535 (the file is not named; readers add it).
    """
    if im.mode == "F":
        raise ValueError("32-bit float image (mode F) has no defined 8-bit range; save the face as an 8- or "
                         "16-bit image")
    if im.mode in _SIXTEEN_BIT_GRAY:
        v = np.asarray(im)  # uint16 (either byte order) for I;16*, int32 for I
        if im.mode == "I" and v.size:
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi > 65535:
                raise ValueError(f"mode I image with values {lo}..{hi}, outside the 16-bit range 0..65535")
        gray = (v >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def decode_rgb8(
    fp: str | os.PathLike[str] | IO[bytes], size: tuple[int, int] | None = None
) -> NDArray[np.uint8]:
    """Decode an image file (path or binary file object) to RGB uint8 (H, W, 3) by :func:`to_rgb8`,
    after checking the header against :data:`MAX_IMAGE_PIXELS`, ``size`` (width, height) if given and
    :data:`MAX_JPEG_SCANS`.

    Raises:
        ValueError: any of those checks, or a mode :func:`to_rgb8` refuses (file not named).
        OSError: not an image Pillow can decode (``UnidentifiedImageError``, truncated data, ...).
    """
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as exc:  # Pillow's own refusal, above 2x its limit
        raise ValueError(f"refused, possible decompression bomb: {exc}") from None
    with im:
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"{w}x{h} = {w * h:,} pixels exceeds the {MAX_IMAGE_PIXELS:,}-pixel limit for a face image "
                f"(exfiqa.readers.images.MAX_IMAGE_PIXELS; possible decompression bomb); not decoded"
            )
        if size is not None and (w, h) != tuple(size):
            raise ValueError(f"{w}x{h} image, expected {size[0]}x{size[1]}; not decoded")
        if im.format in ("JPEG", "MPO") and im.fp is not None:
            scans = _jpeg_scans(im.fp)
            if scans > MAX_JPEG_SCANS:
                raise ValueError(
                    f"JPEG with {scans} scans, more than the {MAX_JPEG_SCANS} an encoder writes "
                    f"(exfiqa.readers.images.MAX_JPEG_SCANS; each scan is a pass over the image); not decoded"
                )
        im.load()
        return to_rgb8(im)


def _jpeg_scans(fh: IO[bytes]) -> int:
    """Start-of-scan markers (``FF DA``) in a JPEG file, keeping ``fh``'s position. Entropy-coded data
    never holds ``FF DA``, so every one is a marker (embedded thumbnails count too: an upper bound)."""
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
        warnings.warn(f"{path}: {w}x{h} resized to {size}x{size}; ViT-FIQA expects faces aligned to the ArcFace "
                      f"{size}x{size} template", stacklevel=2)
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(arr, dtype=np.uint8)
