"""The :class:`Benchmark` every reader returns, its errors, and image encoding for the readers.

Conventions shared by all readers (:mod:`exfiqa.readers.bin`, :mod:`exfiqa.readers.folders`,
:mod:`exfiqa.readers.ijbc`, and those added by :func:`exfiqa.readers.register_reader`):

- Images are decoded with Pillow and returned as **RGB, uint8, shape (112, 112, 3)**, channels in
  the order red, green, blue (no BGR anywhere in the readers). Grayscale/palette/RGBA files are
  converted to RGB; an image that is not 112x112 after decoding (and alignment, for IJB-C) is an
  error naming the file.
- ``samples`` has ``sample_id`` = 0..n-1 (the row order, which is also the decode order) and
  ``path`` (a file path, or ``<file.bin>#<k>`` for the k-th image inside a ``.bin``).
- ``comparisons`` has ``a``, ``b`` and ``mated`` (bool; True = same identity, "genuine").
  For ``level="sample"`` benchmarks ``a``/``b`` are sample ids; for ``level="template"``
  (IJB-C 1:1) they are template ids, and ``samples`` carries ``template_id`` and ``media_id``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    "MATERIALISE_LIMIT",
    "Benchmark",
    "DatasetFormatError",
    "FileDigests",
    "ImageFormat",
    "check_aligned",
    "decode_image",
    "encode_image",
    "image_suffix",
    "refuse_existing",
    "write_bytes",
]

ImageFormat = Literal["jpeg", "png"]


class DatasetFormatError(ValueError):
    """A benchmark file or folder that does not follow the expected layout."""


class FileDigests(Protocol):
    """What :meth:`Benchmark.fingerprint` needs of a digest index: the SHA-256 hex digest of each
    file's content, in order (:class:`exfiqa.store.digests.DigestIndex` is one)."""

    def digests(self, paths: Sequence[str | os.PathLike[str]], desc: str = "hashing") -> Sequence[str]: ...


class _ReadEveryFile:
    """:class:`FileDigests` without an index: every file is read."""

    def digests(self, paths: Sequence[str | os.PathLike[str]], desc: str = "hashing") -> list[str]:
        return [file_digest(p) for p in paths]


_READ_EVERY_FILE = _ReadEveryFile()


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


MATERIALISE_LIMIT = 50_000_000
"""Most implicit all-vs-all comparisons :attr:`Benchmark.comparisons` materialises as a table."""


@dataclass(frozen=True, eq=False, init=False)
class Benchmark:
    """A verification benchmark: samples, comparisons and lazily decoded aligned images.

    Attributes:
        name: Short dataset name (e.g. ``"lfw"``, ``"ijbc"``).
        level: ``"sample"`` if ``comparisons`` pairs sample ids, ``"template"`` if it pairs
            template ids (IJB-C 1:1).
        samples: One row per image, ``sample_id`` = 0..n-1 in row order, ``path`` = source
            reference; template benchmarks add ``template_id`` and ``media_id``.
        comparisons: Columns ``a``, ``b`` (sample or template ids) and ``mated`` (bool,
            True = mated/genuine pair).
        all_pairs: For an all-vs-all benchmark (Adience without ``max_nonmated``), the implicit
            comparison structure (:class:`exfiqa.evaluation.pairs.AllPairs`): every pair ``a < b``
            in row-major order. ``comparisons`` is then built on first access, up to
            :data:`MATERIALISE_LIMIT` rows; :class:`exfiqa.study.Study` evaluates the
            structure itself in bounded memory.
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

    def __init__(
        self,
        name: str,
        level: Literal["sample", "template"],
        samples: pd.DataFrame,
        comparisons: pd.DataFrame | None = None,
        _decode: Callable[[int], np.ndarray] | None = None,
        _files: tuple[tuple[str, Path | str], ...] = (),
        _protocol: str = "",
        _cache: dict[str, Any] | None = None,
        *,
        all_pairs: AllPairs | None = None,
    ) -> None:
        values = {"name": name, "level": level, "samples": samples, "_table": comparisons,
                  "_decode": _decode, "_files": _files, "_protocol": _protocol,
                  "_cache": {} if _cache is None else _cache, "all_pairs": all_pairs}
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
            missing = {"a", "b", "mated"} - set(comparisons.columns)
            if missing:
                raise ValueError(f"Benchmark {name!r}: comparisons lack columns {sorted(missing)}")
        elif level != "sample" or all_pairs.n_samples != len(samples):
            raise ValueError(f"Benchmark {name!r}: all_pairs must pair the {len(samples)} samples")
        if level == "template":
            need = {"template_id", "media_id"} - set(samples.columns)
            if need:
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
                    f"{self.name}: {self.all_pairs.n:,} all-vs-all comparisons are not materialised "
                    f"as a table (more than MATERIALISE_LIMIT = {MATERIALISE_LIMIT:,}); "
                    "exfiqa.study.Study evaluates them in bounded memory (Study.edc, "
                    "Study.pauc_frame, report.frames.pauc_all), or read the benchmark with "
                    "max_nonmated to sample the non-mated pairs"
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

    def iter_images(
        self, batch_size: int = 64, workers: int = 1
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode all samples lazily, in ``sample_id`` order.

        Args:
            batch_size: Images per yielded batch (the last one may be smaller).
            workers: Threads used to decode one batch (Pillow and scikit-image release the GIL
                for much of their work); 1 decodes in the calling thread.

        Yields:
            ``(ids, images)``: ``ids`` int64 of shape (B,), ``images`` uint8 RGB of shape
            (B, 112, 112, 3).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        n = len(self)
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            for start in range(0, n, batch_size):
                ids = np.arange(start, min(start + batch_size, n), dtype=np.int64)
                if pool is None:
                    imgs = [self.image(i) for i in ids]
                else:
                    imgs = list(pool.map(self.image, ids))
                yield ids, np.stack(imgs)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def fingerprint(self, digests: FileDigests | None = None) -> str:
        """SHA-256 over the content of every file this benchmark reads, plus its protocol.

        Each file is labelled by its path relative to the benchmark root, so the same content
        elsewhere gives the same fingerprint. ``digests`` (any :class:`FileDigests`, e.g. a persistent
        :class:`exfiqa.store.digests.DigestIndex`) re-reads only files whose stat changed since it last
        hashed them; without one every file is read (:func:`exfiqa.io.file_digest`). The value
        depends on content only (a file's stat only decides whether it is read again). Computed
        once and cached on the object.
        """
        if "fingerprint" not in self._cache:
            index = digests if digests is not None else _READ_EVERY_FILE
            files = [f for _, f in self._files]
            h = hashlib.sha256()
            h.update(f"{self.name}\0{self.level}\0{self._protocol}\0".encode())
            for (label, _), digest in zip(self._files, index.digests(files, desc=f"hashing {self.name}"), strict=True):
                h.update(label.encode() + b"\0" + digest.encode() + b"\n")
            self._cache["fingerprint"] = h.hexdigest()
        return self._cache["fingerprint"]



# --------------------------------------------------------------------------------------------
# Image encoding / decoding, shared by the readers and writers
# --------------------------------------------------------------------------------------------


def decode_image(
    data: bytes | os.PathLike[str] | str,
    source: str | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode an encoded image (bytes) or an image file to an RGB uint8 (H, W, 3) array.

    Decoding is :func:`exfiqa.readers.images.decode_rgb8`, the same as ``exfiqa.readers.images.read_face``:
    images above ``exfiqa.readers.images.MAX_IMAGE_PIXELS`` (or of another size than ``size``, when
    given) and JPEGs of more than ``exfiqa.readers.images.MAX_JPEG_SCANS`` scans are refused from their
    header, before decoding (decompression bombs); a 16-bit sample v becomes ``v >> 8``; float
    (mode ``F``) images are refused.

    Args:
        data: Encoded bytes (JPEG, PNG, ...) or a path.
        source: Name used in error messages (defaults to the path).
        size: The (width, height) the image must have, checked from its header.

    Raises:
        DatasetFormatError: the data is not a decodable image, is too large or of another size
            than ``size``, has too many JPEG scans, or is a float image; the message names
            ``source``.
    """
    where = (
        source if source is not None else str(data) if not isinstance(data, bytes) else "<bytes>"
    )
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
    arr = check_rgb(image, "image")
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if fmt == "jpeg":
        im.save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        im.save(buf, format="PNG")
    else:
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    return buf.getvalue()



def check_aligned(img: np.ndarray, source: str) -> None:
    """Refuse a decoded sample that is not an aligned RGB uint8 112x112 face (naming ``source``)."""
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or img.dtype != np.uint8:
        raise DatasetFormatError(
            f"{source}: expected an aligned {IMAGE_SIZE}x{IMAGE_SIZE} RGB face, got "
            f"{img.dtype} {img.shape}; align it first (e.g. exfiqa.readers.align_face)"
        )


def image_suffix(fmt: ImageFormat) -> str:
    """The file suffix the writers give an image encoded as ``fmt``."""
    if fmt == "jpeg":
        return ".jpg"
    if fmt == "png":
        return ".png"
    raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")


def refuse_existing(targets: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, to replace existing ``targets`` unless ``overwrite``."""
    if overwrite:
        return
    existing = [t for t in targets if t.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} exists{more}; pass overwrite=True to replace")


def write_bytes(target: Path, data: bytes, overwrite: bool) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_write(target, "wb", overwrite=overwrite) as fh:
        fh.write(data)


# --------------------------------------------------------------------------------------------
