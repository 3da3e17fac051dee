"""Build IJB-C's insightface-style meta layout (:func:`exfiqa.readers.ijbc.read_ijbc`) from NIST's release.

Input under ``nist_root``: ``protocols/`` (:data:`PROTOCOL_FILES`, box = (left, top, width, height) pixels;
:data:`MATCHES_FILE`) and ``images/<FILENAME>`` (no EXIF rotation). Output under ``dst``: ``loose_crop/<k>.jpg``
(:func:`loose_box`), ``meta/ijbc_face_tid_mid.txt`` (media id = SIGHTING_ID), ``meta/ijbc_name_5pts_score.txt``
(YuNet's landmarks for the face overlapping the NIST box most), ``meta/ijbc_template_pair_label.txt`` and
:data:`REPORT_NAME`, listing every row and pair left out. data/README.md says what differs from insightface's.
Sources (read, not copied): the ``strpy``/``vipy`` Janus IJB-C reader (columns, media grouping);
xysong1201/Face-recognition_preprocessing ``IJBC/generate_pair.py`` (pairs; deepinsight/insightface#920).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from exfiqa.io import atomic_write
from exfiqa.readers.benchmark import DatasetFormatError, encode_image, write_bytes
from exfiqa.readers.detect import FaceDetector
from exfiqa.readers.ijbc import _IJBC_5PTS, _IJBC_CROPS, _IJBC_PAIRS, _IJBC_TID_MID
from exfiqa.readers.images import decode_rgb8

__all__ = [
    "MARGIN", "MATCHES_FILE", "MIN_IOU", "PROTOCOL_FILES", "REPORT_COLUMNS", "REQUIRED_COLUMNS", "REPORT_NAME",
    "BuildSummary", "build_ijbc_meta", "loose_box",
]

#: The template files of the 1:1 protocol, read in this order, and its pairs (headerless ``t1,t2`` lines).
PROTOCOL_FILES = ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv")
MATCHES_FILE = "ijbc_11_G1_G2_matches.csv"
#: Columns every protocol file must have (in any order; others are ignored).
REQUIRED_COLUMNS = ("TEMPLATE_ID", "SUBJECT_ID", "FILENAME", "SIGHTING_ID",
                    "FACE_X", "FACE_Y", "FACE_WIDTH", "FACE_HEIGHT")
MARGIN = 0.5  # default loose-crop margin: the fraction of the box's width (height) added on each side
MIN_IOU = 0.2  # default smallest IoU of a detected face with the NIST box
REPORT_NAME = "ijbc-build-report.csv"
#: The report: each row or pair left out, status no_face, no_match, unreadable, bad_box or pair_without_image.
REPORT_COLUMNS = ("file", "line", "template_id", "filename", "status", "detail")

_Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class BuildSummary:
    """What :func:`build_ijbc_meta` wrote: protocol rows read, crops written, rows left out,
    templates with at least one crop, pairs written (``mated`` of them), pairs left out."""

    rows: int
    images: int
    skipped_rows: int
    templates: int
    pairs: int
    mated: int
    skipped_pairs: int
    report: Path


def loose_box(box: _Box, shape: tuple[int, int], margin: float = MARGIN) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` (end exclusive): ``box`` grown by ``margin`` of its size on each side, floor/ceil,
    clipped to ``shape`` = (height, width); None when empty."""
    x, y, w, h = box
    x0 = max(0, math.floor(x - margin * w))
    y0 = max(0, math.floor(y - margin * h))
    x1 = min(shape[1], math.ceil(x + w + margin * w))
    y1 = min(shape[0], math.ceil(y + h + margin * h))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _iou(a: _Box, b: _Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - ix * iy
    return ix * iy / union if union > 0 else 0.0


@dataclass(frozen=True)
class _Row:
    file: str
    line: int
    template: int
    subject: int
    sighting: int
    filename: str
    box: tuple[str, str, str, str]


def _protocol_rows(path: Path) -> Iterator[_Row]:
    """The rows of one protocol CSV; a missing column or a non-integer id is an error naming it."""
    if not path.is_file():
        raise DatasetFormatError(f"file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetFormatError(f"{path}: no column {missing[0]} in its header (needs {', '.join(REQUIRED_COLUMNS)})")
        col = {c: header.index(c) for c in REQUIRED_COLUMNS}
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) < len(header):
                raise DatasetFormatError(f"{path}:{line}: expected {len(header)} fields, got {len(fields)}")
            ids = []
            for c in ("TEMPLATE_ID", "SUBJECT_ID", "SIGHTING_ID"):
                value = fields[col[c]].strip()
                try:
                    ids.append(int(value))
                except ValueError:
                    raise DatasetFormatError(f"{path}:{line}: {c} = {value!r} is not an integer") from None
            box = tuple(fields[col[c]].strip() for c in ("FACE_X", "FACE_Y", "FACE_WIDTH", "FACE_HEIGHT"))
            yield _Row(path.name, line, ids[0], ids[1], ids[2], fields[col["FILENAME"]].strip(), box)  # type: ignore[arg-type]


def _parse_box(raw: tuple[str, str, str, str]) -> _Box | None:
    try:
        box = tuple(float(v) for v in raw)
    except ValueError:
        return None
    return box if all(map(math.isfinite, box)) and box[2] > 0 and box[3] > 0 else None


def build_ijbc_meta(nist_root: str | os.PathLike[str], dst: str | os.PathLike[str], *, force: bool = False,
                    margin: float = MARGIN, min_iou: float = MIN_IOU, detector: FaceDetector | None = None,
                    progress: TextIO | None = None) -> BuildSummary:
    """Build ``dst`` (absent or empty unless ``force``) from the NIST release at ``nist_root`` (module doc).

    ``progress``: a stream for progress lines and a summary (None: silent). Raises DatasetFormatError for
    malformed input, FileExistsError for a non-empty ``dst`` without ``force``.
    """
    root, out = Path(nist_root), Path(dst)
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; pass force=True (--force) to write into it")
    protocols = [root / "protocols" / name for name in PROTOCOL_FILES]
    matches = root / "protocols" / MATCHES_FILE
    for path in protocols:  # headers first: a missing column fails before any image is read
        next(_protocol_rows(path), None)
    if not matches.is_file():
        raise DatasetFormatError(f"file not found: {matches}")
    images_dir = root / "images"
    det = FaceDetector() if detector is None else detector

    subject: dict[int, int] = {}
    written: set[int] = set()  # templates with a crop
    n_rows = n_images = 0
    cached: tuple[str, np.ndarray | None, str] = ("", None, "")

    report = out / REPORT_NAME
    with atomic_write(report, overwrite=True) as rep_fh, \
            atomic_write(out / _IJBC_TID_MID, overwrite=True) as tid_fh, \
            atomic_write(out / _IJBC_5PTS, overwrite=True) as pts_fh:
        rep = csv.writer(rep_fh, lineterminator="\n")
        rep.writerow(REPORT_COLUMNS)

        def skip(row: _Row, status: str, detail: str) -> None:
            rep.writerow((row.file, row.line, row.template, row.filename, status, detail))

        for path in protocols:
            for row in _protocol_rows(path):
                n_rows += 1
                if subject.setdefault(row.template, row.subject) != row.subject:
                    raise DatasetFormatError(f"{path}:{row.line}: template {row.template} has SUBJECT_ID "
                                             f"{row.subject}, elsewhere {subject[row.template]}")
                if progress is not None and n_rows % 1000 == 0:
                    print(f"ijbc-meta: {n_rows} rows, {n_images} crops, {n_rows - 1 - n_images} left out",
                          file=progress, flush=True)
                box = _parse_box(row.box)
                if box is None:
                    skip(row, "bad_box", f"box {','.join(row.box)}")
                    continue
                if cached[0] != row.filename:
                    rel = Path(row.filename)
                    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                        cached = (row.filename, None, "not a path inside images/")
                    else:
                        try:
                            cached = (row.filename, decode_rgb8(images_dir / rel), "")
                        except (OSError, ValueError) as exc:
                            cached = (row.filename, None, str(exc).replace("\n", " "))
                image = cached[1]
                if image is None:
                    skip(row, "unreadable", cached[2])
                    continue
                crop_box = loose_box(box, image.shape[:2], margin)
                if crop_box is None:
                    skip(row, "bad_box", "box outside the image")
                    continue
                x0, y0, x1, y1 = crop_box
                crop = np.ascontiguousarray(image[y0:y1, x0:x1])
                nist = (box[0] - x0, box[1] - y0, box[2], box[3])
                faces = det.detect(crop)
                if not faces:
                    skip(row, "no_face", "")
                    continue
                ious = [_iou(f[0], nist) for f in faces]
                best = int(np.argmax(ious))
                if ious[best] < min_iou:
                    skip(row, "no_match", f"best IoU {ious[best]:.3f} with the NIST box")
                    continue
                _, confidence, landmarks = faces[best]
                n_images += 1
                name = f"{n_images}.jpg"
                write_bytes(out / _IJBC_CROPS / name, encode_image(crop, "jpeg", 95), overwrite=True)
                tid_fh.write(f"{name} {row.template} {row.sighting}\n")
                pts_fh.write(f"{name} {' '.join(map(repr, [*landmarks.ravel().tolist(), confidence]))}\n")
                written.add(row.template)

        n_pairs = n_mated = n_dropped = 0
        with atomic_write(out / _IJBC_PAIRS, overwrite=True) as pair_fh, \
                open(matches, encoding="utf-8-sig", newline="") as mfh:
            for line, fields in enumerate(csv.reader(mfh), start=1):
                if not any(f.strip() for f in fields):
                    continue
                try:
                    t1, t2 = (int(f) for f in fields)
                except ValueError:
                    raise DatasetFormatError(f"{matches}:{line}: expected two template ids, got {fields!r}") from None
                for t in (t1, t2):
                    if t not in subject:
                        raise DatasetFormatError(f"{matches}:{line}: template {t} is in no protocol file")
                if t1 not in written or t2 not in written:
                    n_dropped += 1
                    lost = t1 if t1 not in written else t2
                    rep.writerow((MATCHES_FILE, line, lost, "", "pair_without_image", f"pair {t1},{t2}"))
                    continue
                label = int(subject[t1] == subject[t2])
                pair_fh.write(f"{t1} {t2} {label}\n")
                n_pairs += 1
                n_mated += label
                if progress is not None and line % 1_000_000 == 0:
                    print(f"ijbc-meta: {line} pairs read", file=progress, flush=True)

    skipped_rows = n_rows - n_images
    if progress is not None:
        print(f"ijbc-meta: {n_images} crops of {n_rows} rows ({skipped_rows} left out), {len(written)} templates, "
              f"{n_pairs} pairs ({n_mated} mated, {n_dropped} left out); report {report}", file=progress, flush=True)
    return BuildSummary(n_rows, n_images, skipped_rows, len(written), n_pairs, n_mated, n_dropped, report)
