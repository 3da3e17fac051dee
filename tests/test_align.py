"""5-point alignment (``exfiqa.readers.align_face``, OpenCV ``warpAffine``) against an exact
bilinear reference (scikit-image ``warp``, what ``align_face`` used before).

OpenCV resamples in fixed point: a sampling position is computed in 1/1024 pixel and rounded to
1/32 pixel, then the (exact, 15-bit) bilinear weights of that position are applied and the sum is
rounded. So at each output pixel, |opencv - exact| <= 1/2 + (Lx + Ly) * DELTA, where Lx, Ly are
the largest horizontal and vertical steps between neighbouring source pixels (0 beyond the image)
around the sampling position; the reference is within 1/2 of exact, so the two differ by at most
``floor(1 + (Lx + Ly) * DELTA)``: one grey level wherever Lx + Ly <= 60.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from scipy.ndimage import gaussian_filter
from skimage.transform import SimilarityTransform, warp

from exfiqa.readers import ARCFACE_TEMPLATE, align_face
from exfiqa.readers import align as ds

SIZE = 112
DELTA = 1 / 64 + 1 / 1024  # OpenCV's largest sampling-position error, per axis (pixels)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # RGB, 300x451 to 512x512
PAD = 3  # zeros around the source when reading the neighbourhood of a sampling position


# ------------------------------------------------------------------------------ references


def _reference(img: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The old alignment: scikit-image similarity and exact bilinear warp; (aligned, 3x3 matrix)."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    tform = SimilarityTransform.from_estimate(pts, ARCFACE_TEMPLATE)
    assert tform
    out = warp(
        img, tform.inverse, output_shape=(SIZE, SIZE), order=1, mode="constant", cval=0.0,
        preserve_range=True,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), tform.params


def _preimage(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source (x, y) of every output pixel centre under the forward 3x3 ``matrix``."""
    inv = np.linalg.inv(matrix)
    v, u = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    return inv[0, 0] * u + inv[0, 1] * v + inv[0, 2], inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]


def _allowed(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """floor(1 + (Lx + Ly) * DELTA) per output pixel and channel (see the module docstring)."""
    h, w = img.shape[:2]
    p = np.zeros((h + 2 * PAD, w + 2 * PAD, img.shape[2]), dtype=np.float64)
    p[PAD:-PAD, PAD:-PAD] = img
    hd = np.abs(np.diff(p, axis=1))  # hd[r, c] = |p[r, c + 1] - p[r, c]|
    vd = np.abs(np.diff(p, axis=0))
    # the 4x4 source pixels around each sampling position (clipped: far outside, all zeros)
    c0 = np.clip(np.floor(x).astype(np.int64), -2, w) - 1 + PAD
    r0 = np.clip(np.floor(y).astype(np.int64), -2, h) - 1 + PAD
    lx = np.zeros((SIZE, SIZE, img.shape[2]))
    ly = np.zeros_like(lx)
    for i in range(4):
        for j in range(3):
            lx = np.maximum(lx, hd[r0 + i, c0 + j])
            ly = np.maximum(ly, vd[r0 + j, c0 + i])
    return np.floor(1 + (lx + ly) * DELTA + 1e-9).astype(np.int64)


def _landmarks(rng: np.random.Generator, h: int, w: int, where: str) -> np.ndarray:
    """A jittered template under a random similarity: face ``inside`` the image (every output
    pixel maps into it, any rotation) or ``edge`` (centred near a border, partly outside)."""
    theta = rng.uniform(-np.pi, np.pi)
    if where == "inside":
        scale = rng.uniform(0.5, 0.85) * min(h, w) / (SIZE * np.sqrt(2))
        centre = np.array([w / 2, h / 2]) + rng.uniform(-0.05, 0.05, 2) * [w, h]
    else:
        scale = rng.uniform(0.4, 0.9) * min(h, w) / SIZE
        # near a side (one axis) or a corner (both): part of the output maps outside
        near = rng.choice([0.0, 1.0], 2) + rng.uniform(-0.15, 0.15, 2)
        middle = rng.uniform(0.3, 0.7, 2)
        axis = rng.integers(2)
        centre = np.where([a == axis or rng.random() < 0.5 for a in (0, 1)], near, middle) * [w, h]
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    face = SimilarityTransform(
        scale=scale, rotation=theta, translation=centre - scale * rot @ [SIZE / 2, SIZE / 2]
    )
    return face(ARCFACE_TEMPLATE) + rng.normal(0.0, 0.02 * scale * SIZE / 5, (5, 2))


def _smooth(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """Random photo-like content: smoothed noise whose neighbouring pixels differ by <= 25."""
    shape = (h, w, channels) if channels > 1 else (h, w)
    field = gaussian_filter(rng.normal(size=shape), (4, 4, 0)[: len(shape)])
    steps = max(np.abs(np.diff(field, axis=a)).max() for a in (0, 1))
    k = min(110 / np.abs(field).max(), 24 / steps)
    return np.clip(np.rint(128 + k * field), 0, 255).astype(np.uint8)


@functools.cache
def _photograph(name: str) -> np.ndarray:
    return getattr(skimage.data, name)()


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random (h, w) window of one of scikit-image's bundled photographs that is large enough."""
    names = [n for n in PHOTOS if _photograph(n).shape[0] >= h and _photograph(n).shape[1] >= w]
    full = _photograph(names[rng.integers(len(names))])
    y, x = rng.integers(0, full.shape[0] - h + 1), rng.integers(0, full.shape[1] - w + 1)
    return np.ascontiguousarray(full[y : y + h, x : x + w])


def _content(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return _smooth(rng, h, w) if kind == "smooth" else _photo(rng, h, w)


# ------------------------------------------------------------------------------ the matrix


def test_similarity_matrix_equals_scikit_image() -> None:
    rng = np.random.default_rng(0)
    for k in range(300):
        pts = _landmarks(rng, 250, 250, "inside" if k % 2 else "edge")
        if k % 3 == 0:
            pts = pts * [-1.0, 1.0]  # a mirrored face: the best proper rotation, no reflection
        if k % 7 == 0:
            pts = pts + rng.normal(0, 40, (5, 2))  # landmarks far from any similarity
        expected = SimilarityTransform.from_estimate(pts, ARCFACE_TEMPLATE).params[:2]
        got = ds._similarity_matrix(pts, ARCFACE_TEMPLATE)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_degenerate_landmarks_are_refused() -> None:
    img = np.zeros((250, 250, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="similarity estimation failed"):
        align_face(img, np.full((5, 2), 60.0))
    with pytest.raises(ValueError, match="landmarks5"):
        align_face(img, np.full((5, 2), np.nan))


# ------------------------------------------------------------------------------ the pixels


@pytest.mark.parametrize("shape", [(250, 250), (300, 200), (160, 420), (1024, 768)])
def test_smooth_content_agrees_within_one_level(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    for _ in range(6):
        img = _smooth(rng, *shape)
        pts = _landmarks(rng, *shape, "inside")
        expected, _ = _reference(img, pts)
        got = align_face(img, pts)
        assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - expected)
        assert diff.max() <= 1
        assert (diff > 0).mean() < 0.1


@pytest.mark.parametrize("kind", ["smooth", "photo", "noise"])
@pytest.mark.parametrize("shape", [(250, 250), (180, 140), (512, 380)])
def test_every_pixel_within_the_quantisation_bound(kind: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(len(kind) * 1000 + shape[0] + shape[1])
    for k in range(8):
        img = _content(kind, rng, *shape)
        pts = _landmarks(rng, *shape, "edge" if k % 2 else "inside")
        expected, matrix = _reference(img, pts)
        got = align_face(img, pts)
        x, y = _preimage(matrix)
        diff = np.abs(got.astype(int) - expected)
        assert np.all(diff <= _allowed(img, x, y))
        # where the 2x2 pixels a sample reads all lie outside the image, both are the fill, 0
        h, w = shape
        out = (x < -1 - DELTA) | (y < -1 - DELTA) | (x > w + DELTA) | (y > h + DELTA)
        assert not got[out].any() and not expected[out].any()
        if k % 2:
            assert 0.02 < out.mean() < 0.95  # an "edge" face: the border fill matters


def test_photographs_differ_in_few_pixels() -> None:
    rng = np.random.default_rng(5)
    diffs = []
    for k in range(24):
        img = _photo(rng, 250, 250)
        pts = _landmarks(rng, 250, 250, "edge" if k % 3 == 0 else "inside")
        diffs.append(np.abs(align_face(img, pts).astype(int) - _reference(img, pts)[0]))
    diff = np.stack(diffs)
    assert (diff > 0).mean() < 0.12
    assert (diff > 1).mean() < 0.01


def test_grayscale_input_is_replicated() -> None:
    rng = np.random.default_rng(6)
    for shape in [(250, 250), (200, 310)]:
        gray = _smooth(rng, *shape, channels=1)
        pts = _landmarks(rng, *shape, "edge")
        got = align_face(gray, pts)
        np.testing.assert_array_equal(got, align_face(np.dstack([gray] * 3), pts))
        assert all(np.array_equal(got[:, :, 0], got[:, :, c]) for c in (1, 2))
        expected, matrix = _reference(gray, pts)
        x, y = _preimage(matrix)
        assert np.all(np.abs(got.astype(int) - expected) <= _allowed(gray[:, :, None], x, y))


@pytest.mark.parametrize("shape", [(250, 250), (180, 256)])
def test_coordinate_ramps_map_to_their_preimage(shape: tuple[int, int]) -> None:
    # pixel (x, y) holds (x, y, W-1-x): bilinear interpolation reproduces these exactly, so each
    # output pixel must hold the source coordinates of its centre (within rounding + DELTA);
    # a half-pixel convention error would shift them by 0.5
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx, yy, w - 1 - xx], axis=2).astype(np.uint8)
    rng = np.random.default_rng(h + w)
    errors = []
    for k in range(10):
        pts = _landmarks(rng, h, w, "edge" if k % 2 else "inside")
        got = align_face(img, pts).astype(float)
        x, y = _preimage(_reference(img, pts)[1])
        # (a sample at most DELTA before the last column may be moved past it, onto the fill)
        inside = (x >= 0) & (x <= w - 1 - DELTA) & (y >= 0) & (y <= h - 1 - DELTA)
        err = np.stack([got[..., 0] - x, got[..., 1] - y, got[..., 2] - (w - 1 - x)])[:, inside]
        assert np.abs(err).max() <= 0.5 + DELTA + 1e-9
        errors.append(err.ravel())
    errors = np.concatenate(errors)
    assert errors.size > 3 * 10 * SIZE * SIZE * 0.4  # most samples were checked
    assert abs(errors.mean()) < 0.02


# ------------------------------------------------------------------------------ edge cases


def test_source_wider_than_opencv_allows() -> None:
    # OpenCV's warp refuses sources of 32767 pixels or more per side; only the window the face
    # reaches is handed to it
    rng = np.random.default_rng(7)
    img = _smooth(rng, 60, 40_000)
    pts = ARCFACE_TEMPLATE * 0.4 + [33_000.0, 5.0]
    expected, matrix = _reference(img, pts)
    got = align_face(img, pts)
    x, y = _preimage(matrix)
    assert np.all(np.abs(got.astype(int) - expected) <= _allowed(img, x, y))
    assert got.any()


def test_face_entirely_outside_is_black() -> None:
    img = np.full((250, 250, 3), 200, dtype=np.uint8)
    pts = ARCFACE_TEMPLATE + [900.0, -700.0]
    np.testing.assert_array_equal(_reference(img, pts)[0], 0)
    np.testing.assert_array_equal(align_face(img, pts), np.zeros((SIZE, SIZE, 3), np.uint8))


def test_opencv_version_is_part_of_the_array_keys() -> None:
    from exfiqa.store.arrays import LIBRARIES

    assert "opencv-python-headless" in LIBRARIES
    import cv2

    assert metadata.version("opencv-python-headless").startswith(cv2.__version__)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc (Linux)")
def test_alignment_starts_no_threads() -> None:
    # many DataLoader workers each aligning: a call must not start a thread pool
    code = (
        "import os, numpy as np\n"
        "from exfiqa.readers import ARCFACE_TEMPLATE, align_face\n"
        "img = np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)\n"
        "pts = ARCFACE_TEMPLATE * 1.7 + [30, 20]\n"
        "align_face(img, pts)\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "for k in range(200):\n"
        "    align_face(img, pts + k * 0.01)\n"
        "print(before, len(os.listdir('/proc/self/task')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert after == before
