"""Reading face images for the quality model.

Convention: images are returned as **RGB uint8** arrays of shape (112, 112, 3) (grayscale and RGBA
are converted to RGB; other sizes are resized bilinearly with a warning, because alignment is the
caller's job). :func:`to_tensor` turns a uint8 NHWC batch into the float NCHW tensor ViT-FIQA
expects: ``(x/255 - 0.5) / 0.5``, channels RGB.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "find_images", "read_face", "to_tensor"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


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


def read_face(path: str | os.PathLike[str], size: int = 112) -> NDArray[np.uint8]:
    """Decode an image as RGB uint8 (size, size, 3), resizing (with a warning) if needed.

    Raises:
        ImageReadError: the file cannot be decoded as an image.
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None
    if rgb.size != (size, size):
        warnings.warn(
            f"{path}: {rgb.size[0]}x{rgb.size[1]} resized to {size}x{size}; ViT-FIQA expects "
            f"faces aligned to the ArcFace {size}x{size} template",
            stacklevel=2,
        )
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def to_tensor(batch: NDArray[np.uint8] | Sequence[NDArray[np.uint8]]) -> torch.Tensor:
    """uint8 RGB (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]: ``(x/255 - 0.5)/0.5``."""
    arr = np.asarray(batch)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images (B, H, W, 3), got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    return (t / 255.0 - 0.5) / 0.5
