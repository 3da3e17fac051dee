"""5-point face alignment to the ArcFace 112x112 template (IJB-C's loose crops; your own data):
:func:`align_face` returns RGB uint8 (112, 112, 3), what every reader returns."""

from __future__ import annotations

import numpy as np

from exfiqa.readers.images import IMAGE_SIZE

__all__ = ["ARCFACE_TEMPLATE", "align_face", "check_rgb"]

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


def align_face(image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """Align a face to :data:`ARCFACE_TEMPLATE`: RGB uint8 (112, 112, 3).

    ``image``: RGB uint8 (H, W, 3), any size (grayscale (H, W) is replicated to RGB); ``landmarks5``:
    (5, 2) (x, y) = (column, row) pixels in ``image`` in the template's order. The least-squares
    similarity (rotation, isotropic scale, translation; no reflection) taking ``landmarks5`` onto the
    template resamples the image bilinearly (OpenCV's ``warpAffine``), 0 outside the source; integer
    coordinates are pixel centres. OpenCV's 1/32-pixel sampling differs from exact bilinear by at most
    ``1 + (dx + dy) / 60`` grey levels, dx, dy the largest steps between neighbouring source pixels.

    Raises:
        ValueError: ``image`` is not uint8 (H, W, 3) or (H, W), ``landmarks5`` is not a finite
            (5, 2) array, or the landmarks are degenerate (e.g. all equal).
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = check_rgb(img, "image")
    pts = np.asarray(landmarks5, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"landmarks5 must be a finite (5, 2) array, got shape {pts.shape}")
    matrix = _similarity_matrix(pts, ARCFACE_TEMPLATE)
    if matrix is None:
        raise ValueError(f"similarity estimation failed for landmarks {pts.tolist()}: degenerate landmarks")
    return _warp_affine(img, matrix, IMAGE_SIZE)


def _similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """The 2x3 least-squares similarity ``[[a, -b, tx], [b, a, ty]]`` taking the (N, 2) points
    ``src`` onto ``dst``, or None if it is degenerate (scale 0, or not invertible in float).

    Umeyama's (1991) estimate in 2-D, closed form for the centred points p, q:
    ``a = sum(p . q) / sum(|p|^2)``, ``b = sum(p x q) / sum(|p|^2)`` (scikit-image's
    ``SimilarityTransform`` to rounding, tests/test_align.py).
    """
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    p, q = src - src_mean, dst - dst_mean
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

    ``cv2.warpAffine`` on the source cut to the pixels the output can reach, so OpenCV's limit of
    32767 pixels per side applies to that window, not to the image. The 12,544 output pixels run on
    the calling thread (OpenCV's pool starts at about 98,000; tests/test_align.py).
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
        img[y0:y1, x0:x1], inverse, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


def check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` as a C-contiguous RGB uint8 (H, W, 3) array; ValueError naming ``what`` otherwise."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{what}: expected an RGB uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)
