"""Benchmark readers and writers in the real on-disk formats, and 5-point face alignment.

Every reader returns a :class:`Benchmark`: a sample table, a comparison table and a lazy image
iterator. Conventions shared by all readers:

- Images are decoded with Pillow and returned as **RGB, uint8, shape (112, 112, 3)**, channels in
  the order red, green, blue (no BGR anywhere in this module). Grayscale/palette/RGBA files are
  converted to RGB; an image that is not 112x112 after decoding (and alignment, for IJB-C) is an
  error naming the file.
- ``samples`` has ``sample_id`` = 0..n-1 (the row order, which is also the decode order) and
  ``path`` (a file path, or ``<file.bin>#<k>`` for the k-th image inside a ``.bin``).
- ``comparisons`` has ``a``, ``b`` and ``mated`` (bool; True = same identity, "genuine").
  For ``level="sample"`` benchmarks ``a``/``b`` are sample ids; for ``level="template"``
  (IJB-C 1:1) they are template ids, and ``samples`` carries ``template_id`` and ``media_id``.

Supported formats (see each reader's docstring for the exact layout):

- insightface verification ``.bin`` (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW): :func:`read_bin`.
- XQLFW aligned images + pairs file: :func:`read_xqlfw`.
- Adience-like identity folders, all-vs-all pairs: :func:`read_adience`.
- IJB-C 1:1 template protocol with 5-point alignment: :func:`read_ijbc`.

Untrusted ``.bin`` pickles are never unpickled: their opcodes are checked against the few
structures real insightface files contain and the values are built from them directly, so no code
from the file runs and memory stays proportional to the file size.
"""

from __future__ import annotations

import codecs
import hashlib
import inspect
import io
import os
import pickle
import pickletools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from PIL import Image

from exfiqa.evaluation.pairs import AllPairs
from exfiqa.io import atomic_write, clip, file_digest


class DigestIndex(Protocol):  # exfiqa.store.digests.DigestIndex, a layer above: what fingerprint uses of it
    def digests(self, paths: Sequence[str | os.PathLike[str]], desc: str = ...) -> list[str]: ...

__all__ = [
    "ARCFACE_TEMPLATE",
    "BENCHMARK_KINDS",
    "READERS",
    "IMAGE_SIZE",
    "Benchmark",
    "BinFormatError",
    "DatasetFormatError",
    "align_face",
    "decode_image",
    "encode_image",
    "load_benchmark",
    "read_adience",
    "read_bin",
    "read_ijbc",
    "read_xqlfw",
    "reader_source",
    "register_reader",
    "write_bin",
    "write_identity_folders",
    "write_ijbc",
    "write_xqlfw",
]

IMAGE_SIZE = 112
"""Side length of every aligned face returned by the readers."""

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye (image left, subject's right)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)
"""ArcFace 112x112 five-point template, (x, y) = (column, row) pixel coordinates."""

BENCHMARK_KINDS = ("bin", "xqlfw", "adience", "ijbc")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ImageFormat = Literal["jpeg", "png"]


class DatasetFormatError(ValueError):
    """A benchmark file or folder that does not follow the expected layout."""


class BinFormatError(DatasetFormatError):
    """An insightface ``.bin`` file that is unsafe or not a ``(bins, issame_list)`` pickle."""


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
                    "Study.pauc_frame, analysis.pauc_all), or read the benchmark with "
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
        _check_aligned(img, self.samples["path"].iat[int(sample_id)])
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

    def fingerprint(self, digests: DigestIndex | None = None) -> str:
        """SHA-256 over the content of every file this benchmark reads, plus its protocol.

        Each file is labelled by its path relative to the benchmark root, so the same content
        elsewhere gives the same fingerprint. ``digests`` (a persistent
        :class:`exfiqa.store.digests.DigestIndex`) re-reads only files whose stat changed since it last
        hashed them; without one every file is read. The value depends on content only (a file's
        stat only decides whether it is read again). Computed once and cached on the object.
        """
        if "fingerprint" not in self._cache:
            files = [f for _, f in self._files]
            values = digests.digests(files, desc=f"hashing {self.name}") if digests is not None else map(file_digest, files)
            h = hashlib.sha256()
            h.update(f"{self.name}\0{self.level}\0{self._protocol}\0".encode())
            for (label, _), digest in zip(self._files, values, strict=True):
                h.update(label.encode() + b"\0" + digest.encode() + b"\n")
            self._cache["fingerprint"] = h.hexdigest()
        return self._cache["fingerprint"]


# --------------------------------------------------------------------------------------------
# Image encoding / decoding / alignment
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
    from exfiqa.readers.images import decode_rgb8

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
    arr = _check_rgb(image, "image")
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if fmt == "jpeg":
        im.save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        im.save(buf, format="PNG")
    else:
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    return buf.getvalue()


def align_face(image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """Align a face to the ArcFace 112x112 template by a 5-point similarity transform.

    The similarity (rotation, isotropic scale, translation; no reflection) mapping
    ``landmarks5`` onto :data:`ARCFACE_TEMPLATE` is estimated by least squares
    (:func:`_similarity_matrix`, the matrix of scikit-image's ``SimilarityTransform``) and the
    image is resampled bilinearly by OpenCV's ``warpAffine`` (:func:`_warp_affine`); pixels
    outside the source are 0. Integer coordinates are pixel centres, in the landmarks, the
    source and the output alike. OpenCV rounds each sampling position to 1/32 pixel, so the
    result can differ from an exact bilinear resampling (scikit-image's ``warp``, used before)
    by ``1 + (dx + dy) / 60`` grey levels at most, where dx, dy are the largest horizontal and
    vertical steps between neighbouring source pixels there (0 outside the image): at most 1
    where neighbours differ by <= 30 levels. On photographs 3-7% of the pixels differ, 0.2%
    by more than 1, at most 5 (hard edges, and the image border next to the 0 fill); see
    tests/test_align.py.

    Args:
        image: RGB uint8 array (H, W, 3) (any size; grayscale (H, W) is replicated to RGB).
        landmarks5: (5, 2) array of (x, y) = (column, row) pixel coordinates in ``image``, in
            the order left eye, right eye, nose, left mouth corner, right mouth corner.

    Returns:
        RGB uint8 array of shape (112, 112, 3).

    Raises:
        ValueError: ``image`` is not uint8 (H, W, 3) or (H, W), ``landmarks5`` is not a finite
            (5, 2) array, or the landmarks are degenerate (e.g. all equal).
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = _check_rgb(img, "image")
    pts = np.asarray(landmarks5, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"landmarks5 must be a finite (5, 2) array, got shape {pts.shape}")
    matrix = _similarity_matrix(pts, ARCFACE_TEMPLATE)
    if matrix is None:
        raise ValueError(
            f"similarity estimation failed for landmarks {pts.tolist()}: degenerate landmarks"
        )
    return _warp_affine(img, matrix, IMAGE_SIZE)


def _similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """The 2x3 least-squares similarity ``[[a, -b, tx], [b, a, ty]]`` taking the (N, 2) points
    ``src`` onto ``dst``, or None if it is degenerate (scale 0, or not invertible in float).

    Closed form of Umeyama's (1991) estimate in 2-D (the rotation is proper, never a
    reflection): with p, q the centred points, ``a = sum(p . q) / sum(|p|^2)`` and
    ``b = sum(p x q) / sum(|p|^2)``; equals scikit-image's ``SimilarityTransform.from_estimate``
    to rounding (tests/test_align.py) at a fifth of its cost.
    """
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    p = src - src_mean
    q = dst - dst_mean
    var = float(np.sum(p * p))
    if not var > 0.0:
        return None
    a = float(np.sum(p * q)) / var
    b = float(np.sum(p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0])) / var
    det = a * a + b * b
    if not (det > 0.0 and np.isfinite(1.0 / det)):
        return None
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (dst_mean - rot @ src_mean)[:, None]])


def _warp_affine(img: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (size, size) resampling of the uint8 (H, W, 3) ``img`` under the 2x3 forward map
    ``matrix`` (source (x, y, 1) -> output (x, y)), pixel centres at integers, 0 outside.

    This is ``cv2.warpAffine(img, matrix, (size, size), INTER_LINEAR, BORDER_CONSTANT, 0)``
    with the source first cut to the pixels the output can reach (each output pixel reads at
    most the 2x2 source pixels around its preimage), so OpenCV's limit of 32767 pixels per side
    applies to that window, not to the image. OpenCV splits a warp across its thread pool only
    from about 98,000 output pixels (measured, 4.14); the 12,544 here run on the calling thread
    and never start the pool, whatever ``cv2.setNumThreads`` says (tests/test_align.py).
    """
    import cv2

    h, w = img.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[-1.0, -1.0], [size, -1.0], [-1.0, size], [size, size]])
    reach = corners @ inverse[:, :2].T + inverse[:, 2]  # preimage of a 1-pixel-wider square
    lo = np.floor(reach.min(axis=0)) - 1
    hi = np.ceil(reach.max(axis=0)) + 2
    x0, y0 = (int(v) for v in np.clip(lo, 0, [w, h]))
    x1, y1 = (int(v) for v in np.clip(hi, 0, [w, h]))
    if x0 >= x1 or y0 >= y1:
        return np.zeros((size, size, 3), dtype=np.uint8)
    inverse[:, 2] -= (x0, y0)  # the same map, read from the window's origin
    return cv2.warpAffine(
        img[y0:y1, x0:x1],
        inverse,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def _check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"{what}: expected an RGB uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def _check_aligned(img: np.ndarray, source: str) -> None:
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or img.dtype != np.uint8:
        raise DatasetFormatError(
            f"{source}: expected an aligned {IMAGE_SIZE}x{IMAGE_SIZE} RGB face, got "
            f"{img.dtype} {img.shape}; align it first (e.g. exfiqa.readers.benchmarks.align_face)"
        )


def _suffix(fmt: ImageFormat) -> str:
    if fmt == "jpeg":
        return ".jpg"
    if fmt == "png":
        return ".png"
    raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")


def _refuse_existing(targets: Sequence[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [t for t in targets if t.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} exists{more}; pass overwrite=True to replace")


def _write_bytes(target: Path, data: bytes, overwrite: bool) -> None:
    with atomic_write(target, "wb", overwrite=overwrite) as fh:
        fh.write(data)


# --------------------------------------------------------------------------------------------
# insightface .bin
# --------------------------------------------------------------------------------------------


# A verification .bin is never unpickled. Its opcodes are evaluated by _BinMachine, a typed stack
# machine that knows only the opcodes and the few constructors that real insightface files use.
# It checks every constructor's arguments and builds the values itself: bytes, small scalars,
# strings, tuples, lists, and two placeholders (_Dtype, _Array) standing for numpy objects.
# No code named by the file runs, and numpy only ever receives checked bytes (bool labels).

_BIN_GLOBALS: dict[tuple[str, str], str] = {
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",
    ("builtins", "bytes"): "bytes",
    ("numpy", "dtype"): "dtype",
    ("numpy", "ndarray"): "ndarray",
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "_frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "_frombuffer",
}
"""The only globals a ``.bin`` may name, mapped to the call the machine stands in for."""

_BIN_CALLS = {
    "encode": "_codecs.encode(str, 'latin1')",
    "bytes": "bytes()",
    "dtype": "numpy.dtype('u1' or 'b1', False, True)",
    "ndarray": "none (numpy.ndarray is only an argument of _reconstruct)",
    "_reconstruct": "_reconstruct(numpy.ndarray, (0,), b'b')",
    "_frombuffer": "_frombuffer(bytes, dtype, (n,), 'C')",
}
"""The one form in which each global is called (``numpy.ndarray`` is only an argument)."""

_LATIN1 = ("latin1", "latin-1")
_MAX_LISTED_BYTES_PER_FILE_BYTE = 2
"""The images in ``bins`` may total at most this many bytes per byte of the file: the memo may
list a stored image twice (a pair of identical images), but not amplify the file."""

_MAX_MARK_DEPTH = 8
"""Most MARKs open at once. Real files reach 2 (the tuple, a batch of list items); a numpy array
pickled with protocol 0 or 1 reaches 4 (the tuple, the list batch, its BUILD state, the shape)."""
_MAX_STACK = 4096
"""Most values on the stack, all MARK frames together. The pickler appends list items in
batches of 1000, so a real file holds about 1,000 at most."""
MIN_BIN_IMAGE_BYTES = 24
"""Shortest encoded image a ``.bin`` may hold. No format Pillow reads describes a 112x112 image
in fewer bytes (the smallest we could build, a GIF with a 1x1 frame on a 112x112 screen, takes
29; a solid-colour lossless WebP 42, a 1-bit PNG 79; real .bin JPEGs take several kB), so the
number of samples is bounded by the file size."""
_MEMORY_PER_FILE_BYTE = 2
_MEMORY_FLOOR = 1 << 20
"""The values the machine builds may take at most ``_MEMORY_PER_FILE_BYTE`` bytes of memory per
byte of the file plus ``_MEMORY_FLOOR``, as estimated by :meth:`_BinMachine._charge` (object
sizes plus 8 bytes per reference, 64 per memo entry or MARK frame). With the file itself in
memory, reading any ``.bin`` so stays below about 4x its size, whatever opcodes it floods."""

_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_TEXT_OPS = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"})
_BYTES_OPS = frozenset({"STRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"})
_PY2_STR_OPS = frozenset({"BINSTRING", "SHORT_BINSTRING"})  # the reader decodes them as latin-1
_CONSTANT_OPS: dict[str, Any] = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})


class _Refused(Exception):
    """A ``.bin`` pickle left the accepted grammar; the message says where and why."""


@dataclass(frozen=True)
class _Global:
    """A global of :data:`_BIN_GLOBALS`, as GLOBAL / STACK_GLOBAL push it."""

    name: str


@dataclass(eq=False)
class _Dtype:
    """``numpy.dtype(spec, False, True)``; an array may use it once BUILD set the plain state."""

    spec: str  # "u1" (uint8) or "b1" (bool)
    built: bool = False


@dataclass(eq=False, repr=False)
class _Array:
    """A 1-D uint8 or bool array, one data byte per element; ``spec`` is None until filled."""

    spec: str | None = None
    data: bytes = b""


def _is(value: Any, *options: object) -> bool:
    """``value`` equals one of ``options`` with its exact type (True is not 1, b"u1" not "u1")."""
    return any(type(value) is type(o) and value == o for o in options)


def _kind(value: Any) -> str:
    """The type of a machine value, for error messages."""
    if isinstance(value, _Array):
        return {"u1": "uint8 array", "b1": "bool array"}.get(value.spec or "", "unfilled array")
    if isinstance(value, _Dtype):
        return f"numpy dtype {value.spec}"
    if isinstance(value, _Global):
        return f"global {value.name}"
    if type(value) in (tuple, list):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _describe(value: Any, depth: int = 0) -> str:
    """Short text for a machine value in an error message; never prints a payload."""
    if value is None or type(value) is bool or (type(value) is int and abs(value) < 2**63):
        return repr(value)
    if type(value) in (str, bytes) and len(value) <= 16:
        return repr(value)
    if type(value) is tuple and depth < 2 and len(value) <= 8:
        inner = ", ".join(_describe(v, depth + 1) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return _kind(value)


def _pickle_ops(data: bytes) -> Iterator[tuple[int, str, Any]]:
    """Yield (position, opcode name, argument) before STOP, like :func:`pickletools.genops`.

    Unlike genops, a protocol-0 ``STRING`` (a Python 2 ``str``) comes back as bytes instead of
    ASCII-only text, and data after STOP is an error. Reading from memory, an argument's declared
    length never allocates more than the bytes actually present.
    """
    f = io.BytesIO(data)
    while True:
        pos = f.tell()
        code = f.read(1)
        if not code:
            raise ValueError("the file ends before the pickle's STOP opcode")
        op = _OPCODES.get(code)
        if op is None:
            raise ValueError(f"byte {pos}: {code!r} is not a pickle opcode")
        if op.name == "STRING":
            arg = codecs.escape_decode(pickletools.read_stringnl(f, decode=False))[0]
        else:
            arg = None if op.arg is None else op.arg.reader(f)
        if op.name == "STOP":
            if f.read(1):
                raise ValueError(f"byte {pos + 1}: data after the pickle's STOP opcode")
            return
        yield pos, op.name, arg


def _bin_global(module: Any, name: Any) -> _Global:
    if type(module) is not str or type(name) is not str:
        raise _Refused(f"STACK_GLOBAL of {_kind(module)} and {_kind(name)}")
    kind = _BIN_GLOBALS.get((module, name))
    if kind is None:
        raise _Refused(
            f"refused global {clip(f'{module}.{name}')}: a verification .bin holds only (list of "
            f"encoded images, list of bools); any other object could run code"
        )
    return _Global(kind)


def _bin_call(fn: Any, args: Any) -> Any:
    """REDUCE: the value of ``fn(*args)`` for the accepted calls, built without calling it."""
    if not isinstance(fn, _Global) or type(args) is not tuple:
        raise _Refused(f"REDUCE of {_kind(fn)} with {_kind(args)}: only globals are called")
    n = len(args)
    if fn.name == "encode" and n == 2 and type(args[0]) is str and _is(args[1], *_LATIN1):
        try:
            return args[0].encode("latin-1")
        except UnicodeEncodeError:
            raise _Refused("_codecs.encode of a str that is not latin-1") from None
    if fn.name == "bytes" and n == 0:
        return b""
    if fn.name == "dtype" and n == 3 and _is(args[1], False, 0) and _is(args[2], True, 1):
        for spec in ("u1", "b1"):
            if _is(args[0], spec, spec.encode()):  # Python 2 wrote the spec as a str -> bytes
                return _Dtype(spec)
    if (
        fn.name == "_reconstruct"
        and n == 3
        and _is(args[0], _Global("ndarray"))
        and type(args[1]) is tuple
        and len(args[1]) == 1
        and _is(args[1][0], 0)
        and _is(args[2], b"b")
    ):
        return _Array()
    if fn.name == "_frombuffer" and n == 4 and type(args[0]) is bytes and _is(args[3], "C"):
        array = _Array()
        _bin_fill(array, args[1], args[2], args[0])
        return array
    shown = ", ".join(_describe(a, depth=1) for a in args[:8]) + ", ..." * (n > 8)
    raise _Refused(
        f"refused call {fn.name}({shown}): the only such call in a verification .bin is "
        f"{_BIN_CALLS[fn.name]}"
    )


def _bin_build(obj: Any, state: Any) -> None:
    """BUILD: set the state of a fresh dtype or array, accepting only the plain 1-D forms."""
    if isinstance(obj, _Dtype) and not obj.built:
        plain = (
            type(state) is tuple
            and len(state) == 8
            and _is(state[0], 3)
            and _is(state[1], "|", b"|")
            and state[2] is None  # subarray
            and state[3] is None  # names
            and state[4] is None  # fields
            and _is(state[5], -1, 1)  # itemsize
            and _is(state[6], -1, 1)  # alignment
            and _is(state[7], 0)  # flags: no object references
        )
        if not plain:
            raise _Refused(
                f"refused numpy dtype state {_describe(state)}: only the plain uint8/bool state "
                f"(3, '|', None, None, None, -1, -1, 0) occurs in a .bin (names, fields, "
                f"subarrays or flags could make the array's bytes object pointers)"
            )
        obj.built = True
    elif isinstance(obj, _Array) and obj.spec is None:
        if not (
            type(state) is tuple
            and len(state) == 5
            and _is(state[0], 1)
            and _is(state[3], False, 0)  # not Fortran-ordered
            and type(state[4]) is bytes
        ):
            raise _Refused(
                f"refused numpy array state {_describe(state)}: expected "
                f"(1, (n,), dtype, False, n bytes)"
            )
        _bin_fill(obj, state[2], state[1], state[4])
    else:
        raise _Refused(f"BUILD of {_kind(obj)}: only a new numpy dtype or array has a state")


def _bin_fill(array: _Array, dtype: Any, shape: Any, data: bytes) -> None:
    """Give ``array`` its dtype and data: 1-D, exactly one byte of ``data`` per element."""
    if not (isinstance(dtype, _Dtype) and dtype.built):
        raise _Refused(f"array dtype is {_kind(dtype)}, expected a built uint8 or bool dtype")
    if not (
        type(shape) is tuple and len(shape) == 1 and type(shape[0]) is int and shape[0] == len(data)
    ):
        raise _Refused(
            f"array shape {_describe(shape)} does not fit its {len(data)} bytes of data: a .bin "
            f"array is 1-D with one byte per element"
        )
    if dtype.spec == "b1" and data.translate(None, b"\x00\x01"):
        raise _Refused("bool array holds bytes other than 0 and 1")
    array.spec, array.data = dtype.spec, data


class _BinMachine:
    """Evaluates a ``.bin`` pickle's opcodes with the accepted grammar; see the section comment.

    Every opcode pushes at most one value made of what the file holds (or a reference to a memo
    entry), and the machine refuses as soon as the structure leaves what real files need: more
    than :data:`_MAX_MARK_DEPTH` open MARKs, more than :data:`_MAX_STACK` values on the stack,
    more memo entries than values made, or an estimated memory above the budget of
    :data:`_MEMORY_PER_FILE_BYTE` (floods of one-byte opcodes such as EMPTY_LIST or MEMOIZE).
    """

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []  # the stacks set aside by MARK
        self.below = 0  # values held in self.marks
        self.memo: dict[int, Any] = {}
        self.values = 0  # values pushed so far
        self.cost = 0  # estimated bytes of everything built so far (never decreases)
        self.budget = _MEMORY_FLOOR

    def _charge(self, nbytes: int) -> None:
        self.cost += nbytes
        if self.cost > self.budget:
            raise _Refused(
                f"the pickle builds more than {self.budget:,} bytes of values from a file of "
                f"{(self.budget - _MEMORY_FLOOR) // _MEMORY_PER_FILE_BYTE:,} bytes: a verification "
                f".bin holds little besides its images"
            )

    def run(self, data: bytes) -> Any:
        """The pickle's top-level value (refused by :class:`_Refused` on the first violation)."""
        self.budget = _MEMORY_PER_FILE_BYTE * len(data) + _MEMORY_FLOOR
        for pos, op, arg in _pickle_ops(data):
            try:
                self._step(op, arg)
            except _Refused as exc:
                raise _Refused(f"byte {pos} ({op}): {exc}") from None
        if self.marks or len(self.stack) != 1:
            raise _Refused(
                f"STOP with {len(self.stack)} values and {len(self.marks)} open MARKs, "
                f"expected one value"
            )
        return self.stack[0]

    def _push(self, value: Any, size: int = 0) -> None:
        """Push ``value``; ``size`` is the estimated memory of a value made for it (0: shared)."""
        if len(self.stack) + self.below >= _MAX_STACK:
            raise _Refused(
                f"more than {_MAX_STACK} values on the stack; a real .bin holds about 1,000 "
                f"(the pickler appends list items in batches of 1000)"
            )
        self._charge(size + 8)
        self.values += 1
        self.stack.append(value)  # self.stack, not a bound method: MARK and TUPLE replace it

    def _pop(self, n: int) -> list[Any]:
        if len(self.stack) < n:
            raise _Refused("stack underflow")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _Refused("no MARK")
        items, self.stack = self.stack, self.marks.pop()
        self.below -= len(self.stack)
        return items

    def _top(self) -> Any:
        if not self.stack:
            raise _Refused("stack underflow")
        return self.stack[-1]

    def _top_list(self) -> list[Any]:
        top = self._top()
        if type(top) is not list:
            raise _Refused(f"append to {_kind(top)}")
        return top

    def _step(self, op: str, arg: Any) -> None:
        if op == "PROTO":
            if arg > 5:
                raise _Refused(f"unknown pickle protocol {arg}")
        elif op == "FRAME":
            pass  # only groups the following opcodes
        elif op == "MARK":
            if len(self.marks) >= _MAX_MARK_DEPTH:
                raise _Refused(
                    f"more than {_MAX_MARK_DEPTH} nested MARKs; a real .bin opens at most 2 "
                    f"(4 with numpy arrays pickled by protocol 0 or 1)"
                )
            self._charge(64)
            self.below += len(self.stack)
            self.marks.append(self.stack)
            self.stack = []
        elif op in _CONSTANT_OPS:
            self._push(_CONSTANT_OPS[op])
        elif op in _INT_OPS or op in _TEXT_OPS:
            self._push(arg, sys.getsizeof(arg))
        elif op in _BYTES_OPS:
            value = bytes(arg)
            self._push(value, sys.getsizeof(value))
        elif op in _PY2_STR_OPS:
            value = arg.encode("latin-1")  # read with encoding="bytes", as Python 2 meant them
            self._push(value, sys.getsizeof(value))
        elif op == "EMPTY_TUPLE":
            self._push(())
        elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
            value = tuple(self._pop(int(op[-1])))
            self._push(value, sys.getsizeof(value))
        elif op == "TUPLE":
            value = tuple(self._pop_mark())
            self._push(value, sys.getsizeof(value))
        elif op == "EMPTY_LIST":
            self._push([], 64)
        elif op == "LIST":
            self._push(self._pop_mark())  # the MARK frame, already charged, becomes the list
        elif op == "APPEND":
            (value,) = self._pop(1)
            self._charge(8)
            self._top_list().append(value)
        elif op == "APPENDS":
            items = self._pop_mark()
            self._charge(8 * len(items))
            self._top_list().extend(items)
        elif op in _PUT_OPS or op == "MEMOIZE":
            key = len(self.memo) if op == "MEMOIZE" else arg
            if key not in self.memo:
                if len(self.memo) >= self.values:
                    raise _Refused(
                        f"{len(self.memo) + 1} memo entries for {self.values} values: a pickler "
                        f"stores each value at most once"
                    )
                self._charge(64)
            self.memo[key] = self._top()
        elif op in _GET_OPS:
            if arg not in self.memo:
                raise _Refused(f"memo entry {_describe(arg)} was never stored")
            self._push(self.memo[arg])  # a reference to the stored value, never a copy
        elif op == "GLOBAL":
            module, _, name = arg.partition(" ")
            self._push(_bin_global(module, name), 200)
        elif op == "STACK_GLOBAL":
            module, name = self._pop(2)
            self._push(_bin_global(module, name), 200)
        elif op == "REDUCE":
            fn, args = self._pop(2)
            value = _bin_call(fn, args)
            self._push(value, sys.getsizeof(value) if type(value) is bytes else 200)
        elif op == "BUILD":
            (state,) = self._pop(1)
            _bin_build(self._top(), state)
        else:
            raise _Refused(
                f"opcode {op} does not occur in a verification .bin, a pickled 2-tuple "
                f"(bins, issame_list) of encoded images and bools"
            )


def _as_bytes(value: Any, k: int) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, _Array) and value.spec == "u1":
        return value.data
    raise _Refused(f"bins[{k}] is {_kind(value)}, expected encoded bytes")


def _as_issame(value: Any) -> np.ndarray:
    if isinstance(value, _Array) and value.spec == "b1":
        return np.frombuffer(value.data, dtype=np.uint8).astype(bool)
    if type(value) is not list:
        raise _Refused(f"issame_list is {_kind(value)}, expected a list of bools or a bool array")
    for k, v in enumerate(value):
        if not _is(v, False, True, 0, 1):
            raise _Refused(f"issame_list[{k}] = {_describe(v)} is not a bool")
    return np.array(value, dtype=bool)


def _load_bin(path: Path) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and issame labels of a ``.bin``, read without unpickling it.

    Accepted, as decided opcode by opcode by :class:`_BinMachine` (which builds only inert
    values, never an object the file names): a 2-tuple ``(bins, issame_list)``, pickle protocol
    0-5, where

    - ``bins`` is a list of encoded images, each bytes (``BINBYTES*``; Python 2 ``str`` as
      ``STRING``/``BINSTRING``/``SHORT_BINSTRING``; Python 3 protocol <3 as
      ``_codecs.encode(str, 'latin1')`` or ``bytes()``) or a 1-D uint8 numpy array;
    - ``issame_list`` is a list of bools (or 0/1 ints) or a 1-D bool numpy array;
    - a numpy array is ``_reconstruct(numpy.ndarray, (0,), b'b')`` with the BUILD state
      ``(1, (n,), dtype, False, n bytes)``, or protocol 5's ``_frombuffer(n bytes, dtype, (n,),
      'C')``, and its dtype ``numpy.dtype('u1' or 'b1', False, True)`` with the BUILD state
      ``(3, '|', None, None, None, -1, -1, 0)``.

    Nothing else is accepted: no other global, call, opcode or dtype state (so no object
    pointers), no array whose length differs from its data (so no zero strides or shapes larger
    than the file), and memo references may repeat images only up to
    :data:`_MAX_LISTED_BYTES_PER_FILE_BYTE` times the file size. The machine's own limits (MARK
    depth, stack size, memo entries, memory budget; see :class:`_BinMachine`) and a minimum image
    size (:data:`MIN_BIN_IMAGE_BYTES`) bound the memory and the sample count by the file size.
    Arrays become the bytes they hold.
    """
    src = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f".bin file not found: {path}") from None
    try:
        top = _BinMachine().run(data)
        if type(top) is not tuple or len(top) != 2:
            raise _Refused(f"expected a pickled 2-tuple (bins, issame_list), got {_kind(top)}")
        bins_value, issame_value = top
        if type(bins_value) is not list:
            raise _Refused(f"bins is {_kind(bins_value)}, expected a list of encoded images")
        bins = [_as_bytes(v, k) for k, v in enumerate(bins_value)]
        issame = _as_issame(issame_value)
        listed = sum(len(b) for b in bins)
        if listed > _MAX_LISTED_BYTES_PER_FILE_BYTE * len(data):
            raise _Refused(
                f"bins lists {listed} bytes of images from a {len(data)}-byte file: memo "
                f"references may repeat an image, but not amplify the file more than "
                f"{_MAX_LISTED_BYTES_PER_FILE_BYTE}x"
            )
    except _Refused as exc:
        raise BinFormatError(f"{src}: {exc}") from None
    except ValueError as exc:  # a truncated or garbled opcode argument
        raise BinFormatError(
            f"{src}: not a readable verification .bin pickle ({clip(exc, 200)})"
        ) from None
    if len(bins) % 2 or len(issame) != len(bins) // 2:
        raise BinFormatError(
            f"{src}: {len(bins)} images and {len(issame)} issame labels; expected "
            f"2 images per label (pair k = images 2k, 2k+1)"
        )
    short = next((k for k, b in enumerate(bins) if len(b) < MIN_BIN_IMAGE_BYTES), None)
    if short is not None:
        raise BinFormatError(
            f"{src}: bins[{short}] is {len(bins[short])} bytes; no encoded 112x112 image is "
            f"shorter than {MIN_BIN_IMAGE_BYTES} bytes (exfiqa.readers.benchmarks.MIN_BIN_IMAGE_BYTES)"
        )
    return bins, issame


def read_bin(path: str | os.PathLike[str], name: str | None = None) -> Benchmark:
    """Read an insightface verification ``.bin`` (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW).

    The file is a pickle of ``(bins, issame_list)``: 2N encoded images (JPEG/PNG bytes) and N
    booleans; pair k compares images 2k and 2k+1 and is mated iff ``issame_list[k]``. The file
    is not unpickled: its opcodes are checked against the structures real files contain (bytes or
    1-D uint8 arrays for images, bools or a 1-D bool array for labels, pickle protocols 0-5,
    Python 2 ``str`` read as bytes) and the values are built directly from them, so nothing from
    the file runs and memory stays proportional to its size. See ``_load_bin`` for the grammar.

    Args:
        path: The ``.bin`` file.
        name: Benchmark name (default: the file stem, e.g. ``"lfw"``).

    Returns:
        A sample-level :class:`Benchmark`; images decode to RGB uint8 (112, 112, 3).

    Raises:
        BinFormatError: anything outside that grammar (naming the file and, for an opcode, its
            byte position), or issame length != len(bins) / 2.
    """
    p = Path(path)
    bins, issame = _load_bin(p)
    n = len(bins)
    samples = pd.DataFrame(
        {"sample_id": np.arange(n, dtype=np.int64), "path": [f"{p}#{k}" for k in range(n)]}
    )
    comparisons = pd.DataFrame(
        {
            "a": np.arange(0, n, 2, dtype=np.int64),
            "b": np.arange(1, n, 2, dtype=np.int64),
            "mated": issame,
        }
    )

    def decode(k: int) -> np.ndarray:
        return decode_image(bins[k], source=f"{p}#{k}", size=(IMAGE_SIZE, IMAGE_SIZE))

    return Benchmark(
        name=name if name is not None else p.stem,
        level="sample",
        samples=samples,
        comparisons=comparisons,
        _decode=decode,
        _files=((p.name, p),),
        _protocol="bin",
    )


def write_bin(
    path: str | os.PathLike[str],
    images_rgb_uint8: Sequence[np.ndarray] | np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    fmt: ImageFormat = "jpeg",
    overwrite: bool = False,
    quality: int = 95,
) -> None:
    """Write a verification ``.bin`` like the insightface files.

    Stores a protocol-2 pickle of ``(list of encoded image bytes, list of bool)``. Pair k is
    images 2k, 2k+1, mated iff ``issame[k]``.

    Args:
        path: Target file (refused if it exists unless ``overwrite``).
        images_rgb_uint8: 2N RGB uint8 (H, W, 3) images (112x112 for the readers to accept them).
        issame: N booleans.
        fmt: ``"jpeg"`` (quality ``quality``) or ``"png"`` (lossless).
    """
    images = list(images_rgb_uint8)
    labels = [bool(v) for v in np.asarray(issame, dtype=bool).ravel()]
    if len(images) != 2 * len(labels):
        raise ValueError(f"{len(images)} images for {len(labels)} issame labels; need 2 per label")
    bins = [encode_image(im, fmt, quality) for im in images]
    payload = pickle.dumps((bins, labels), protocol=2)
    _write_bytes(Path(path), payload, overwrite)


# --------------------------------------------------------------------------------------------
# XQLFW (LFW-style folders + pairs file)
# --------------------------------------------------------------------------------------------


def _lfw_image_path(root: Path, name: str, index: int) -> Path:
    stem = root / name / f"{name}_{index:04d}"
    for ext in IMAGE_EXTENSIONS:
        for cand in (stem.with_name(stem.name + ext), stem.with_name(stem.name + ext.upper())):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"image not found: {stem}.<ext> (tried {', '.join(IMAGE_EXTENSIONS)})")


def _parse_lfw_pairs(pairs_file: Path) -> list[tuple[str, int, str, int]]:
    """Parse an LFW/XQLFW pairs file into (name1, n1, name2, n2) tuples (header line skipped)."""
    try:
        lines = pairs_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"pairs file not found: {pairs_file}") from None
    out: list[tuple[str, int, str, int]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 3:
            name1, n1, n2 = fields
            name2 = name1
        elif len(fields) == 4:
            name1, n1, name2, n2 = fields
        else:
            raise DatasetFormatError(
                f"{pairs_file}:{lineno}: expected 3 fields (name n1 n2, mated) or 4 fields "
                f"(name1 n1 name2 n2, non-mated), got {len(fields)}: {line!r}"
            )
        try:
            i1, i2 = int(n1), int(n2)
        except ValueError:
            raise DatasetFormatError(
                f"{pairs_file}:{lineno}: image index is not an integer: {line!r}"
            ) from None
        if min(i1, i2) < 1:
            raise DatasetFormatError(f"{pairs_file}:{lineno}: image indices start at 1: {line!r}")
        out.append((name1, i1, name2, i2))
    return out


def read_xqlfw(
    root: str | os.PathLike[str], pairs_file: str | os.PathLike[str], name: str = "xqlfw"
) -> Benchmark:
    """Read XQLFW (or any LFW-style benchmark of already aligned 112x112 images).

    Layout: ``root/<name>/<name>_<nnnn>.<ext>`` (4-digit index from 1, any common image
    extension) and a pairs file whose first line is a header (skipped); each further line is
    ``name n1 n2`` (mated) or ``name1 n1 name2 n2`` (non-mated).

    Samples are the distinct images referenced by the pairs, sorted by (identity, index), with
    columns ``sample_id``, ``path``, ``identity``, ``image_index``. Comparisons follow the pairs
    file order. Images decode to RGB uint8 (112, 112, 3).

    Raises:
        DatasetFormatError: a malformed pairs line (message names file and line number).
        FileNotFoundError: a referenced image is missing (message names the path).
    """
    root_p, pairs_p = Path(root), Path(pairs_file)
    pairs = _parse_lfw_pairs(pairs_p)
    keys = sorted({(n, i) for n1, i1, n2, i2 in pairs for n, i in ((n1, i1), (n2, i2))})
    index = {k: sid for sid, k in enumerate(keys)}
    paths = [_lfw_image_path(root_p, n, i) for n, i in keys]
    samples = pd.DataFrame(
        {
            "sample_id": np.arange(len(keys), dtype=np.int64),
            "path": [str(p) for p in paths],
            "identity": [n for n, _ in keys],
            "image_index": np.array([i for _, i in keys], dtype=np.int64),
        }
    )
    comparisons = pd.DataFrame(
        {
            "a": np.array([index[(n1, i1)] for n1, i1, _, _ in pairs], dtype=np.int64),
            "b": np.array([index[(n2, i2)] for _, _, n2, i2 in pairs], dtype=np.int64),
            "mated": np.array([n1 == n2 for n1, _, n2, _ in pairs], dtype=bool),
        }
    )
    return Benchmark(
        name=name,
        level="sample",
        samples=samples,
        comparisons=comparisons,
        _decode=lambda k: decode_image(paths[k], size=(IMAGE_SIZE, IMAGE_SIZE)),
        _files=(
            (pairs_p.name, pairs_p),
            *((str(p.relative_to(root_p)), p) for p in paths),
        ),
        _protocol="xqlfw",
    )


def write_xqlfw(
    root: str | os.PathLike[str],
    pairs_path: str | os.PathLike[str],
    images_by_name: Mapping[str, Sequence[np.ndarray]],
    pairs: Sequence[tuple[Any, ...]],
    overwrite: bool = False,
    fmt: ImageFormat = "jpeg",
    quality: int = 95,
) -> None:
    """Write an XQLFW/LFW-style benchmark: ``root/<name>/<name>_<nnnn>.jpg|png`` + pairs file.

    Args:
        root: Image folder.
        pairs_path: Pairs file; first line header ``1<TAB><number of pairs>``.
        images_by_name: identity -> list of aligned RGB uint8 images; list position p is
            written as index p + 1.
        pairs: ``(name, n1, n2)`` (mated) or ``(name1, n1, name2, n2)`` (non-mated), 1-based.
        overwrite: Replace existing files (otherwise refused before anything is written).
    """
    root_p, pairs_p = Path(root), Path(pairs_path)
    lines = [f"1\t{len(pairs)}"]
    for k, pair in enumerate(pairs):
        if len(pair) == 3:
            n1, i1, i2 = pair
            refs = [(n1, i1), (n1, i2)]
        elif len(pair) == 4:
            n1, i1, n2, i2 = pair
            refs = [(n1, i1), (n2, i2)]
        else:
            raise ValueError(f"pairs[{k}] has {len(pair)} fields, expected 3 or 4")
        for n, i in refs:
            if n not in images_by_name or not 1 <= int(i) <= len(images_by_name[n]):
                raise ValueError(f"pairs[{k}] refers to {n} #{i}, which is not in images_by_name")
            if any(ch.isspace() for ch in n):
                raise ValueError(f"identity name {n!r} contains whitespace")
        lines.append("\t".join(str(x) for x in pair))
    suffix = _suffix(fmt)
    targets = {
        root_p / n / f"{n}_{p + 1:04d}{suffix}": im
        for n, ims in images_by_name.items()
        for p, im in enumerate(ims)
    }
    _refuse_existing([*targets, pairs_p], overwrite)
    for target, im in targets.items():
        _write_bytes(target, encode_image(im, fmt, quality), overwrite)
    with atomic_write(pairs_p, overwrite=overwrite) as fh:
        fh.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Adience-like identity folders, all-vs-all
# --------------------------------------------------------------------------------------------


def _all_pairs(
    identity_codes: np.ndarray, max_nonmated: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All unordered pairs (a < b) of samples sorted by identity, optionally subsampled.

    With samples grouped by identity, row i's mated partners are i+1..end(i)-1 and its non-mated
    partners are end(i)..n-1, where end(i) is one past the last sample of i's identity.
    """
    n = len(identity_codes)
    if n and np.any(np.diff(identity_codes) < 0):
        raise ValueError("identity codes must be sorted")
    # end[i]: first index after i's identity group
    _, starts, counts = np.unique(identity_codes, return_index=True, return_counts=True)
    end = np.repeat(starts + counts, counts).astype(np.int64)
    rows = np.arange(n, dtype=np.int64)
    n_mated_row = end - rows - 1
    n_non_row = n - end
    idx_dtype = np.int32 if n < 2**31 else np.int64

    mated_a = np.repeat(rows, n_mated_row).astype(idx_dtype)
    mated_off = np.arange(len(mated_a), dtype=np.int64) - np.repeat(
        np.cumsum(n_mated_row) - n_mated_row, n_mated_row
    )
    mated_b = (mated_a + 1 + mated_off).astype(idx_dtype)

    total_non = int(n_non_row.sum())
    if max_nonmated is None or max_nonmated >= total_non:
        lin = np.arange(total_non, dtype=np.int64)
    else:
        if max_nonmated < 0:
            raise ValueError(f"max_nonmated must be >= 0, got {max_nonmated}")
        rng = np.random.default_rng(seed)
        lin = np.sort(rng.choice(total_non, size=max_nonmated, replace=False))
    cum = np.cumsum(n_non_row)
    non_a = np.searchsorted(cum, lin, side="right").astype(np.int64)
    non_b = end[non_a] + (lin - (cum[non_a] - n_non_row[non_a]))

    a = np.concatenate([mated_a, non_a.astype(idx_dtype)])
    b = np.concatenate([mated_b, non_b.astype(idx_dtype)])
    mated = np.concatenate([np.ones(len(mated_a), bool), np.zeros(len(non_a), bool)])
    order = np.lexsort((b, a))
    return a[order], b[order], mated[order]


def read_adience(
    root: str | os.PathLike[str],
    max_nonmated: int | None = None,
    seed: int = 0,
    name: str = "adience",
) -> Benchmark:
    """Read aligned 112x112 faces arranged as ``root/<identity>/<file>``; all-vs-all pairs.

    Every unordered pair of images is compared: pairs within an identity folder are mated, pairs
    across identity folders are non-mated. ``max_nonmated`` keeps a uniform random subset
    (``seed``) of the non-mated pairs; all mated pairs are always kept. Comparisons are sorted
    by (a, b) with a < b. Samples are sorted by (identity, file name) and carry ``identity``.
    Note the size: n images give n(n-1)/2 comparisons (19k images: about 180M). Without
    ``max_nonmated`` they are kept implicit (``Benchmark.all_pairs``): the Study evaluates all
    of them exactly in bounded memory, and ``comparisons`` is materialised only on access (and
    only up to :data:`MATERIALISE_LIMIT` rows). ``max_nonmated`` is an explicit choice to
    evaluate a sample of the non-mated pairs instead (then the protocol differs from the paper's).

    Arranging the real Adience data: its ``aligned/<user_id>/landmark_aligned_face.<face_id>.
    <original_image>.jpg`` files are not 112x112 ArcFace crops. Detect 5 landmarks, align each
    face with :func:`align_face`, and save it under ``root/<user_id>_<face_id>/<file>``: the
    subject identity is the (user_id, face_id) combination, since face ids are only unique
    within one user's album. :func:`write_identity_folders` writes this layout.

    Raises:
        DatasetFormatError: no identity folders or images found, or an image is not 112x112.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise FileNotFoundError(f"Adience root folder not found: {root_p}")
    identities: list[str] = []
    paths: list[Path] = []
    for d in sorted(p for p in root_p.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f
            for f in d.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        identities += [d.name] * len(files)
        paths += files
    if not paths:
        raise DatasetFormatError(f"{root_p}: no images found under <identity>/ subfolders")
    codes = np.unique(np.array(identities), return_inverse=True)[1].astype(np.int64)
    samples = pd.DataFrame(
        {
            "sample_id": np.arange(len(paths), dtype=np.int64),
            "path": [str(p) for p in paths],
            "identity": identities,
        }
    )
    if max_nonmated is None:  # all pairs: implicit, evaluated without materialising them
        comparisons, all_pairs = None, AllPairs.from_codes(codes)
    else:
        a, b, mated = _all_pairs(codes, max_nonmated, seed)
        comparisons, all_pairs = pd.DataFrame({"a": a, "b": b, "mated": mated}), None
    return Benchmark(
        name=name,
        level="sample",
        samples=samples,
        comparisons=comparisons,
        all_pairs=all_pairs,
        _decode=lambda k: decode_image(paths[k], size=(IMAGE_SIZE, IMAGE_SIZE)),
        _files=tuple((str(p.relative_to(root_p)), p) for p in paths),
        _protocol=f"adience:max_nonmated={max_nonmated}:seed={seed}",
    )


def write_identity_folders(
    root: str | os.PathLike[str],
    images_by_identity: Mapping[str, Sequence[np.ndarray]],
    overwrite: bool = False,
    fmt: ImageFormat = "jpeg",
    quality: int = 95,
) -> list[Path]:
    """Write ``root/<identity>/<nnnn>.jpg|png`` (index from 0) for :func:`read_adience`.

    Returns:
        The written paths, in identity then index order.
    """
    root_p = Path(root)
    suffix = _suffix(fmt)
    targets: dict[Path, np.ndarray] = {}
    for ident, ims in images_by_identity.items():
        if not ident or "/" in ident or ident.startswith("."):
            raise ValueError(f"identity {ident!r} is not a valid folder name")
        for p, im in enumerate(ims):
            targets[root_p / ident / f"{p:04d}{suffix}"] = im
    _refuse_existing(list(targets), overwrite)
    for target, im in targets.items():
        _write_bytes(target, encode_image(im, fmt, quality), overwrite)
    return list(targets)


# --------------------------------------------------------------------------------------------
# IJB-C 1:1
# --------------------------------------------------------------------------------------------

_IJBC_TID_MID = Path("meta/ijbc_face_tid_mid.txt")
_IJBC_PAIRS = Path("meta/ijbc_template_pair_label.txt")
_IJBC_5PTS = Path("meta/ijbc_name_5pts_score.txt")
_IJBC_CROPS = Path("loose_crop")


def _read_table(path: Path, kinds: Sequence[type]) -> list[np.ndarray]:
    """Read a whitespace-separated table with one column per entry of ``kinds`` (str/int/float).

    Fast path through pandas; on any problem the file is rescanned line by line to name the
    first offending line.
    """
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    dtypes = {i: {str: str, int: np.int64, float: np.float64}[k] for i, k in enumerate(kinds)}
    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, dtype=dtypes, engine="c", na_filter=False)
        if df.shape[1] != len(kinds):
            raise ValueError("column count")
        return [df[i].to_numpy() for i in range(len(kinds))]
    except pd.errors.EmptyDataError:
        raise DatasetFormatError(f"{path}: file is empty") from None
    except (ValueError, pd.errors.ParserError, TypeError) as exc:
        _locate_bad_line(path, kinds)
        raise DatasetFormatError(f"{path}: cannot parse ({exc})") from None


def _line_number(path: Path, row: int) -> int:
    """1-based line number of the ``row``-th (0-based) non-blank line (pandas skips blanks)."""
    seen = -1
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return lineno
    raise IndexError(f"{path}: no data row {row}")


def _locate_bad_line(path: Path, kinds: Sequence[type]) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(kinds):
                raise DatasetFormatError(
                    f"{path}:{lineno}: expected {len(kinds)} fields, got {len(fields)}: {line!r}"
                )
            for col, (value, kind) in enumerate(zip(fields, kinds, strict=True)):
                try:
                    kind(value)
                except ValueError:
                    raise DatasetFormatError(
                        f"{path}:{lineno}: field {col + 1} = {value!r} is not {kind.__name__}"
                    ) from None


def read_ijbc(root: str | os.PathLike[str], name: str = "ijbc") -> Benchmark:
    """Read the IJB-C 1:1 template protocol, aligning each loose crop by its 5 landmarks.

    Layout under ``root``:

    - ``meta/ijbc_face_tid_mid.txt``: ``image_name template_id media_id`` per image (defines
      the sample order);
    - ``meta/ijbc_template_pair_label.txt``: ``t1 t2 label`` per comparison, label 1 = mated;
    - ``meta/ijbc_name_5pts_score.txt``: ``image_name x1 y1 ... x5 y5 det_score``, points
      left eye, right eye, nose, left mouth, right mouth in loose-crop pixel coordinates;
    - ``loose_crop/<image_name>``.

    Samples carry ``template_id``, ``media_id``, ``det_score`` and the landmark columns
    ``x1 y1 ... x5 y5``; comparisons are template pairs (``a``, ``b`` = template ids). Images
    decode to RGB uint8 (112, 112, 3), aligned with :func:`align_face`.

    Raises:
        DatasetFormatError: a malformed line (file and line named), an image without landmarks,
            a label other than 0/1, or a pair naming a template that has no image.
    """
    root_p = Path(root)
    tid_p, pair_p, pts_p = root_p / _IJBC_TID_MID, root_p / _IJBC_PAIRS, root_p / _IJBC_5PTS
    names, tids, mids = _read_table(tid_p, [str, int, int])
    t1, t2, labels = _read_table(pair_p, [int, int, int])
    pts_cols = _read_table(pts_p, [str] + [float] * 11)
    pts_names = pts_cols[0]
    pts = np.stack(pts_cols[1:11], axis=1).reshape(-1, 5, 2)
    det = pts_cols[11]

    if len(pts_names) == len(names) and np.array_equal(pts_names, names):
        order = np.arange(len(names))
    else:
        pos = pd.Index(pts_names)
        if not pos.is_unique:
            dup = pos[pos.duplicated()][0]
            raise DatasetFormatError(f"{pts_p}: image {dup!r} listed more than once")
        order = pos.get_indexer(names)
        if np.any(order < 0):
            missing = names[np.flatnonzero(order < 0)[0]]
            raise DatasetFormatError(f"{pts_p}: no landmarks for image {missing!r} (from {tid_p})")
    pts, det = pts[order], det[order]

    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        line = _line_number(pair_p, int(bad[0]))
        raise DatasetFormatError(
            f"{pair_p}:{line}: label {labels[bad[0]]} is not 0 (non-mated) or 1 (mated)"
        )
    known = np.unique(tids)
    for col in (t1, t2):
        unknown = ~np.isin(col, known)
        if np.any(unknown):
            i = int(np.flatnonzero(unknown)[0])
            raise DatasetFormatError(
                f"{pair_p}:{_line_number(pair_p, i)}: template {col[i]} has no image in {tid_p}"
            )

    # 469k images: plain strings (a Path object per image costs seconds and memory)
    crop_label = _IJBC_CROPS.as_posix()
    labels_crop = [f"{crop_label}/{n}" for n in names.astype(str).tolist()]
    root_s = str(root_p)
    paths = [f"{root_s}/{lab}" for lab in labels_crop]
    samples = pd.DataFrame(
        {
            "sample_id": np.arange(len(names), dtype=np.int64),
            "path": paths,
            "image_name": names.astype(str),
            "template_id": tids.astype(np.int64),
            "media_id": mids.astype(np.int64),
            "det_score": det.astype(np.float64),
        }
    )
    flat = pts.reshape(-1, 10)
    for j in range(5):
        samples[f"x{j + 1}"] = flat[:, 2 * j]
        samples[f"y{j + 1}"] = flat[:, 2 * j + 1]
    comparisons = pd.DataFrame(
        {"a": np.asarray(t1, dtype=np.int64), "b": np.asarray(t2, dtype=np.int64), "mated": labels == 1}
    )
    del t1, t2, labels

    def decode(k: int) -> np.ndarray:
        return align_face(decode_image(paths[k]), pts[k])

    metas = tuple((str(f.relative_to(root_p)), f) for f in (tid_p, pair_p, pts_p))
    return Benchmark(
        name=name,
        level="template",
        samples=samples,
        comparisons=comparisons,
        _decode=decode,
        _files=metas + tuple(zip(labels_crop, paths, strict=True)),
        _protocol="ijbc:arcface5pt:bilinear",
    )


def write_ijbc(
    root: str | os.PathLike[str],
    crops_rgb_uint8: Sequence[np.ndarray],
    landmarks: np.ndarray,
    template_ids: Sequence[int] | np.ndarray,
    media_ids: Sequence[int] | np.ndarray,
    template_pairs: Sequence[tuple[int, int]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    overwrite: bool = False,
    fmt: ImageFormat = "jpeg",
    quality: int = 95,
    det_scores: Sequence[float] | np.ndarray | None = None,
) -> None:
    """Write an IJB-C-1:1-style folder (the three meta files + ``loose_crop/``).

    Image k is written as ``loose_crop/<k+1>.jpg`` (JPEG quality ``quality``) or ``.png``.

    Args:
        crops_rgb_uint8: N loose crops, RGB uint8 (H, W, 3), any size.
        landmarks: (N, 5, 2) (x, y) points in crop pixels: left eye, right eye, nose, left mouth,
            right mouth.
        template_ids, media_ids: N integers.
        template_pairs: (M, 2) template ids; ``labels``: M values, 1 = mated, 0 = non-mated.
        det_scores: N detector scores for the 5pts file (default 1.0).
    """
    root_p = Path(root)
    n = len(crops_rgb_uint8)
    lmk = np.asarray(landmarks, dtype=np.float64)
    tids = np.asarray(template_ids, dtype=np.int64)
    mids = np.asarray(media_ids, dtype=np.int64)
    tp = np.asarray(template_pairs, dtype=np.int64).reshape(-1, 2)
    lab = np.asarray(labels, dtype=np.int64).ravel()
    det = np.ones(n) if det_scores is None else np.asarray(det_scores, dtype=np.float64)
    if lmk.shape != (n, 5, 2):
        raise ValueError(f"landmarks must have shape ({n}, 5, 2), got {lmk.shape}")
    for what, arr in (("template_ids", tids), ("media_ids", mids), ("det_scores", det)):
        if arr.shape != (n,):
            raise ValueError(f"{what} must have {n} entries, got shape {arr.shape}")
    if len(lab) != len(tp) or not np.all(np.isin(lab, (0, 1))):
        raise ValueError(f"labels must be {len(tp)} values in {{0, 1}}")
    suffix = _suffix(fmt)
    names = [f"{k + 1}{suffix}" for k in range(n)]
    crop_targets = [root_p / _IJBC_CROPS / nm for nm in names]
    meta = {
        root_p / _IJBC_TID_MID: "".join(
            f"{nm} {t} {m}\n" for nm, t, m in zip(names, tids, mids, strict=True)
        ),
        root_p / _IJBC_PAIRS: "".join(f"{a} {b} {c}\n" for (a, b), c in zip(tp, lab, strict=True)),
        root_p / _IJBC_5PTS: "".join(
            f"{nm} " + " ".join(repr(float(v)) for v in pt.ravel()) + f" {float(s)!r}\n"
            for nm, pt, s in zip(names, lmk, det, strict=True)
        ),
    }
    _refuse_existing([*crop_targets, *meta], overwrite)
    for target, im in zip(crop_targets, crops_rgb_uint8, strict=True):
        _write_bytes(target, encode_image(im, fmt, quality), overwrite)
    for target, text in meta.items():
        with atomic_write(target, overwrite=overwrite) as fh:
            fh.write(text)


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


#: Benchmark kind (a config entry's ``kind``) -> reader. The built-in kinds are
#: :data:`BENCHMARK_KINDS`; :func:`register_reader` adds one.
READERS: dict[str, Callable[..., Benchmark]] = {
    "bin": read_bin,
    "xqlfw": read_xqlfw,
    "adience": read_adience,
    "ijbc": read_ijbc,
}


def register_reader(kind: str, reader: Callable[..., Benchmark]) -> None:
    """Make ``kind`` a benchmark kind of the config, read by ``reader``.

    ``reader`` takes keyword arguments only: ``name`` (the config entry's name), path arguments
    named ``path``, ``root`` or ``pairs_file`` (resolved against ``data_root``), any others
    integers or null (their defaults are the config's). It returns a :class:`Benchmark` whose
    files (``_files``) and protocol string cover everything the samples depend on: the
    benchmark's fingerprint, hence every cached array's key, is made of them, and a registered
    reader's own source file is part of the key too (:func:`reader_source`). Register when the
    reader's module is imported, so that processes started later (DataLoader workers started by
    ``spawn``, torchrun ranks) that import it see the kind too.

    Raises:
        ValueError: ``kind`` is not an identifier, or is already read by another function.
        TypeError: ``reader`` is not callable or takes no ``name`` argument.
    """
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"register_reader: kind must be an identifier, got {kind!r}")
    if not callable(reader):
        raise TypeError(f"register_reader({kind!r}): reader must be callable, got {type(reader).__name__}")
    if "name" not in inspect.signature(reader).parameters:
        raise TypeError(f"register_reader({kind!r}): {reader.__qualname__} must take a 'name' argument")
    known = READERS.get(kind)
    if known is not None and known is not reader:
        raise ValueError(f"benchmark kind {kind!r} is already read by {known.__module__}.{known.__qualname__}")
    READERS[kind] = reader


def reader_source(kind: str) -> Path | None:
    """The source file of a registered (not built-in) reader of ``kind``, else None (the built-in
    readers are this module, already part of every array's code version)."""
    if kind in BENCHMARK_KINDS:
        return None
    if kind not in READERS:
        raise ValueError(f"unknown benchmark kind {kind!r}; valid kinds: {', '.join(READERS)}")
    source = inspect.getsourcefile(READERS[kind])
    if source is None:
        raise ValueError(f"benchmark kind {kind!r}: cannot locate the source of its reader")
    return Path(source)


def load_benchmark(kind: str, **paths: Any) -> Benchmark:
    """Open a benchmark by format kind.

    Args:
        kind: One of ``"bin"`` (``path=``), ``"xqlfw"`` (``root=``, ``pairs_file=``),
            ``"adience"`` (``root=``, optional ``max_nonmated=``, ``seed=``), ``"ijbc"``
            (``root=``), or a kind added by :func:`register_reader`. All accept an optional
            ``name=``.

    Raises:
        ValueError: unknown ``kind`` (the message lists the valid ones).
        TypeError: missing or unexpected keyword arguments for that kind.
    """
    if kind not in READERS:
        raise ValueError(f"unknown benchmark kind {kind!r}; valid kinds: {', '.join(READERS)}")
    try:
        return READERS[kind](**paths)
    except TypeError as exc:
        if "argument" in str(exc):
            raise TypeError(f"load_benchmark(kind={kind!r}): {exc}") from None
        raise
