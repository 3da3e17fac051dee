"""The :class:`Benchmark` every reader returns, its errors, and image encoding for the readers.

Conventions of all readers: images decode (Pillow) to **RGB uint8 (112, 112, 3)**, channels red,
green, blue (no BGR anywhere); grayscale/palette/RGBA become RGB, and an image not 112x112 after
decoding (and alignment, for IJB-C) is an error naming the file. ``samples`` has ``sample_id`` =
0..n-1 (row order = decode order) and ``path`` (a file, or ``<file.bin>#<k>``). ``comparisons``
has ``a``, ``b`` and ``mated`` (True = same identity): sample ids for ``level="sample"``,
template ids for ``level="template"`` (IJB-C 1:1, whose ``samples`` add ``template_id`` and
``media_id``).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from PIL import Image

from exfiqa.evaluation.pairs import AllPairs
from exfiqa.io import atomic_write, clip, file_digest
from exfiqa.readers.align import check_rgb
from exfiqa.readers.images import IMAGE_SIZE, decode_rgb8

__all__ = [
    "MATERIALISE_LIMIT", "Benchmark", "DatasetFormatError", "FileDigests", "ImageFormat", "check_aligned",
    "decode_image", "encode_image", "image_suffix", "refuse_existing", "write_bytes",
]

ImageFormat = Literal["jpeg", "png"]


class DatasetFormatError(ValueError):
    """A benchmark file or folder that does not follow the expected layout."""


class FileDigests(Protocol):
    """A digest index (e.g. :class:`exfiqa.store.digests.DigestIndex`): each file's SHA-256 hex."""

    def digests(self, paths: Sequence[str | os.PathLike[str]], desc: str = "hashing") -> Sequence[str]: ...


MATERIALISE_LIMIT = 50_000_000
"""Most implicit all-vs-all comparisons :attr:`Benchmark.comparisons` materialises as a table."""


@dataclass(frozen=True, eq=False, init=False)
class Benchmark:
    """A verification benchmark: ``samples``, ``comparisons`` and lazily decoded aligned images
    (columns and ``level`` as in the module docstring).

    ``all_pairs``: for an all-vs-all benchmark (Adience without ``max_nonmated``), the implicit
    :class:`exfiqa.evaluation.pairs.AllPairs` (every pair ``a < b``, row-major) instead of a
    table; ``comparisons`` is then built on first access, up to :data:`MATERIALISE_LIMIT` rows.
    """

    name: str
    level: Literal["sample", "template"]
    samples: pd.DataFrame
    _table: pd.DataFrame | None = field(repr=False)
    _decode: Callable[[int], np.ndarray] = field(repr=False)
    _files: tuple[tuple[str, Path | str], ...] = field(repr=False)
    _protocol: str = field(repr=False)
    _cache: dict[str, Any] = field(repr=False)
    all_pairs: AllPairs | None = field(repr=False)

    def __init__(self, name: str, level: Literal["sample", "template"], samples: pd.DataFrame,
                 comparisons: pd.DataFrame | None = None, _decode: Callable[[int], np.ndarray] | None = None,
                 _files: tuple[tuple[str, Path | str], ...] = (), _protocol: str = "", *,
                 all_pairs: AllPairs | None = None) -> None:
        values = {"name": name, "level": level, "samples": samples, "_table": comparisons, "_decode": _decode,
                  "_files": _files, "_protocol": _protocol, "_cache": {}, "all_pairs": all_pairs}
        for key, value in values.items():
            object.__setattr__(self, key, value)
        if level not in ("sample", "template"):
            raise ValueError(f"Benchmark {name!r}: level must be 'sample' or 'template'")
        if _decode is None:
            raise ValueError(f"Benchmark {name!r}: no image decoder given")
        ids = samples["sample_id"].to_numpy()
        if not np.array_equal(ids, np.arange(len(ids))):
            raise ValueError(f"Benchmark {name!r}: sample_id must be 0..n-1 in row order")
        if (comparisons is None) == (all_pairs is None):
            raise ValueError(f"Benchmark {name!r}: give exactly one of comparisons and all_pairs")
        if comparisons is not None:
            if missing := {"a", "b", "mated"} - set(comparisons.columns):
                raise ValueError(f"Benchmark {name!r}: comparisons lack columns {sorted(missing)}")
        elif level != "sample" or all_pairs.n_samples != len(samples):
            raise ValueError(f"Benchmark {name!r}: all_pairs must pair the {len(samples)} samples")
        if level == "template":
            if need := {"template_id", "media_id"} - set(samples.columns):
                raise ValueError(f"Benchmark {name!r}: samples lack columns {sorted(need)}")

    @property
    def comparisons(self) -> pd.DataFrame:
        """The comparison table (for all-vs-all benchmarks built once, on first access)."""
        if self._table is not None:
            return self._table
        if "comparisons" not in self._cache:
            assert self.all_pairs is not None
            if self.all_pairs.n > MATERIALISE_LIMIT:
                raise ValueError(
                    f"{self.name}: {self.all_pairs.n:,} all-vs-all comparisons are not materialised as a table "
                    f"(more than MATERIALISE_LIMIT = {MATERIALISE_LIMIT:,}); exfiqa.study.Study evaluates them in "
                    "bounded memory (Study.edc, Study.pauc_frame, report.frames.pauc_all), or read the benchmark "
                    "with max_nonmated to sample the non-mated pairs"
                )
            a, b, mated = self.all_pairs.materialise()
            self._cache["comparisons"] = pd.DataFrame({"a": a, "b": b, "mated": mated})
        return self._cache["comparisons"]

    @property
    def n_comparisons(self) -> int:
        """Number of comparisons (without materialising an all-vs-all table)."""
        return self.all_pairs.n if self.all_pairs is not None else len(self._table)

    def __len__(self) -> int:
        """Number of samples (images)."""
        return len(self.samples)

    def image(self, sample_id: int) -> np.ndarray:
        """Decode one sample: RGB uint8 array of shape (112, 112, 3)."""
        if not 0 <= int(sample_id) < len(self):
            raise IndexError(f"{self.name}: sample_id {sample_id} out of range 0..{len(self) - 1}")
        img = self._decode(int(sample_id))
        check_aligned(img, self.samples["path"].iat[int(sample_id)])
        return img

    def iter_images(self, batch_size: int = 64, workers: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode all samples lazily, in ``sample_id`` order, ``workers`` threads per batch (1: the
        calling thread). Yields ``(ids, images)``: int64 (B,) and uint8 RGB (B, 112, 112, 3)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        n = len(self)
        with ThreadPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
            decode = pool.map if pool else map
            for start in range(0, n, batch_size):
                ids = np.arange(start, min(start + batch_size, n), dtype=np.int64)
                yield ids, np.stack(list(decode(self.image, ids)))

    def fingerprint(self, digests: FileDigests | None = None) -> str:
        """SHA-256 over the name, level, protocol and the content of every file read, each labelled
        by its path relative to the benchmark root (content only: moving the root keeps it).
        ``digests`` (a :class:`FileDigests`) may skip re-reading unchanged files; without one every
        file is read. Cached on the object."""
        if "fingerprint" not in self._cache:
            files = [f for _, f in self._files]
            if digests is None:
                hexes: Sequence[str] = [file_digest(f) for f in files]
            else:
                hexes = digests.digests(files, desc=f"hashing {self.name}")
            h = hashlib.sha256()
            h.update(f"{self.name}\0{self.level}\0{self._protocol}\0".encode())
            for (label, _), digest in zip(self._files, hexes, strict=True):
                h.update(label.encode() + b"\0" + digest.encode() + b"\n")
            self._cache["fingerprint"] = h.hexdigest()
        return self._cache["fingerprint"]


def decode_image(
    data: bytes | os.PathLike[str] | str, source: str | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode encoded bytes or an image file to RGB uint8 (H, W, 3) with
    :func:`exfiqa.readers.images.decode_rgb8` (as ``read_face``; its size, scan and 16-bit rules).
    ``size`` is the (width, height) required, checked from the header; ``source`` names the data in
    errors (default: the path).

    Raises:
        DatasetFormatError: not a decodable image, too large or not of ``size``, too many JPEG
            scans, or a float image; the message names ``source``.
    """
    where = source if source is not None else "<bytes>" if isinstance(data, bytes) else str(data)
    try:
        fh = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {where}") from None
    try:
        with fh:
            return decode_rgb8(fh, size)
    except (OSError, ValueError) as exc:
        raise DatasetFormatError(f"{where}: cannot decode image ({clip(exc, 300)})") from None


def encode_image(image: np.ndarray, fmt: ImageFormat = "jpeg", quality: int = 95) -> bytes:
    """Encode an RGB uint8 (H, W, 3) array as JPEG (given quality) or PNG (lossless) bytes."""
    im = Image.fromarray(check_rgb(image, "image"))
    image_suffix(fmt)  # refuses a format other than jpeg and png
    buf = io.BytesIO()
    im.save(buf, format=fmt.upper(), **({"quality": quality} if fmt == "jpeg" else {}))
    return buf.getvalue()


def check_aligned(img: np.ndarray, source: str) -> None:
    """Refuse a decoded sample that is not an aligned RGB uint8 112x112 face (naming ``source``)."""
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or img.dtype != np.uint8:
        raise DatasetFormatError(f"{source}: expected an aligned {IMAGE_SIZE}x{IMAGE_SIZE} RGB face, got "
                                 f"{img.dtype} {img.shape}; align it first (e.g. exfiqa.readers.align_face)")


def image_suffix(fmt: ImageFormat) -> str:
    """The file suffix the writers give an image encoded as ``fmt``."""
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    return ".jpg" if fmt == "jpeg" else ".png"


def refuse_existing(targets: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, to replace existing ``targets`` unless ``overwrite``."""
    existing = [] if overwrite else [t for t in targets if t.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} exists{more}; pass overwrite=True to replace")


def write_bytes(target: Path, data: bytes, overwrite: bool) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_write(target, "wb", overwrite=overwrite) as fh:
        fh.write(data)
