"""IJB-C 1:1: the template protocol's meta files and loose crops aligned by their 5 landmarks."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from exfiqa.io import atomic_write
from exfiqa.readers.align import align_face
from exfiqa.readers.benchmark import (
    Benchmark,
    DatasetFormatError,
    ImageFormat,
    decode_image,
    encode_image,
    image_suffix,
    refuse_existing,
    write_bytes,
)

__all__ = ["read_ijbc", "write_ijbc"]

_IJBC_TID_MID = Path("meta/ijbc_face_tid_mid.txt")
_IJBC_PAIRS = Path("meta/ijbc_template_pair_label.txt")
_IJBC_5PTS = Path("meta/ijbc_name_5pts_score.txt")
_IJBC_CROPS = Path("loose_crop")


def _read_table(path: Path, kinds: Sequence[type]) -> list[np.ndarray]:
    """The columns of a whitespace-separated table, one per entry of ``kinds`` (str/int/float); on a
    parse error the file is rescanned to name the first bad line."""
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


def _data_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of the non-blank lines, the rows pandas reads."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from ((lineno, line) for lineno, line in enumerate(fh, start=1) if line.strip())


def _line_number(path: Path, row: int) -> int:
    return next(itertools.islice(_data_lines(path), row, None))[0]


def _locate_bad_line(path: Path, kinds: Sequence[type]) -> None:
    for lineno, line in _data_lines(path):
        fields = line.split()
        if len(fields) != len(kinds):
            raise DatasetFormatError(f"{path}:{lineno}: expected {len(kinds)} fields, got {len(fields)}: {line!r}")
        for col, (value, kind) in enumerate(zip(fields, kinds, strict=True)):
            try:
                kind(value)
            except ValueError:
                msg = f"{path}:{lineno}: field {col + 1} = {value!r} is not {kind.__name__}"
                raise DatasetFormatError(msg) from None


def read_ijbc(root: str | os.PathLike[str], name: str = "ijbc") -> Benchmark:
    """Read the IJB-C 1:1 template protocol, aligning each loose crop by its 5 landmarks.

    Under ``root``: ``meta/ijbc_face_tid_mid.txt`` (``image_name template_id media_id``, the
    sample order), ``meta/ijbc_template_pair_label.txt`` (``t1 t2 label``, 1 = mated),
    ``meta/ijbc_name_5pts_score.txt`` (``image_name x1 y1 ... x5 y5 det_score``, loose-crop
    pixels, :func:`align_face`'s point order) and ``loose_crop/<image_name>``. Samples carry
    ``template_id``, ``media_id``, ``det_score``, ``x1 y1 ... x5 y5``; comparisons are template
    pairs (``a``, ``b`` = template ids).

    Raises:
        DatasetFormatError: a malformed line (file and line named), an image without landmarks,
            a label other than 0/1, or a pair naming a template that has no image.
    """
    root_p = Path(root)
    tid_p, pair_p, pts_p = root_p / _IJBC_TID_MID, root_p / _IJBC_PAIRS, root_p / _IJBC_5PTS
    names, tids, mids = _read_table(tid_p, [str, int, int])
    t1, t2, labels = _read_table(pair_p, [int, int, int])
    pts_names, *coords, det = _read_table(pts_p, [str] + [float] * 11)
    pts = np.stack(coords, axis=1).reshape(-1, 5, 2)

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
        raise DatasetFormatError(
            f"{pair_p}:{_line_number(pair_p, int(bad[0]))}: label {labels[bad[0]]} is not 0 (non-mated) or 1 (mated)"
        )
    known = np.unique(tids)
    for col in (t1, t2):
        unknown = ~np.isin(col, known)
        if np.any(unknown):
            i = int(np.flatnonzero(unknown)[0])
            raise DatasetFormatError(f"{pair_p}:{_line_number(pair_p, i)}: template {col[i]} has no image in {tid_p}")

    # 469k images: plain strings (a Path object per image costs seconds and memory)
    root_s, crop_label = str(root_p), _IJBC_CROPS.as_posix()
    labels_crop = [f"{crop_label}/{n}" for n in names.astype(str).tolist()]
    paths = [f"{root_s}/{lab}" for lab in labels_crop]
    samples = pd.DataFrame({
        "sample_id": np.arange(len(names), dtype=np.int64), "path": paths, "image_name": names.astype(str),
        "template_id": tids.astype(np.int64), "media_id": mids.astype(np.int64), "det_score": det.astype(np.float64),
        **{f"{c}{j + 1}": pts[:, j, k] for j in range(5) for k, c in enumerate("xy")},
    })
    comparisons = pd.DataFrame(
        {"a": np.asarray(t1, dtype=np.int64), "b": np.asarray(t2, dtype=np.int64), "mated": labels == 1}
    )
    del t1, t2, labels

    def decode(k: int) -> np.ndarray:
        return align_face(decode_image(paths[k]), pts[k])

    metas = tuple((str(f.relative_to(root_p)), f) for f in (tid_p, pair_p, pts_p))
    return Benchmark(name=name, level="template", samples=samples, comparisons=comparisons, _decode=decode,
                     _files=metas + tuple(zip(labels_crop, paths, strict=True)), _protocol="ijbc:arcface5pt:bilinear")


def write_ijbc(
    root: str | os.PathLike[str], crops_rgb_uint8: Sequence[np.ndarray], landmarks: np.ndarray,
    template_ids: Sequence[int] | np.ndarray, media_ids: Sequence[int] | np.ndarray,
    template_pairs: Sequence[tuple[int, int]] | np.ndarray, labels: Sequence[int] | np.ndarray,
    overwrite: bool = False, fmt: ImageFormat = "jpeg", quality: int = 95,
    det_scores: Sequence[float] | np.ndarray | None = None,
) -> None:
    """Write an IJB-C-1:1-style folder (the three meta files + ``loose_crop/<k+1>.jpg|png``).

    N RGB uint8 crops of any size, their (N, 5, 2) landmarks (crop pixels, :func:`align_face`'s
    order), N template and media ids, (M, 2) template pairs with M labels (1 = mated) and N
    detector scores (default 1.0).
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
    suffix = image_suffix(fmt)
    names = [f"{k + 1}{suffix}" for k in range(n)]
    crop_targets = [root_p / _IJBC_CROPS / nm for nm in names]
    meta = {
        root_p / _IJBC_TID_MID: "".join(f"{nm} {t} {m}\n" for nm, t, m in zip(names, tids, mids, strict=True)),
        root_p / _IJBC_PAIRS: "".join(f"{a} {b} {c}\n" for (a, b), c in zip(tp, lab, strict=True)),
        root_p / _IJBC_5PTS: "".join(
            f"{nm} " + " ".join(repr(float(v)) for v in pt.ravel()) + f" {float(s)!r}\n"
            for nm, pt, s in zip(names, lmk, det, strict=True)
        ),
    }
    refuse_existing([*crop_targets, *meta], overwrite)
    for target, im in zip(crop_targets, crops_rgb_uint8, strict=True):
        write_bytes(target, encode_image(im, fmt, quality), overwrite)
    for target, text in meta.items():
        with atomic_write(target, overwrite=overwrite) as fh:
            fh.write(text)
