"""5-point alignment per loose crop: scikit-image (the old path) vs OpenCV (``align_face`` now).

IJB-C-like inputs: ``--images`` distinct 250x250 windows of scikit-image's bundled photographs,
JPEG-encoded (quality 95) in memory, each with 5 landmarks (the ArcFace template under a random
similarity, face box 0.45-0.7 of the crop, rotation within 30 degrees, 1.5 px jitter). Every stage
is timed side by side in one run: each repetition passes over all images once per method, in
turn, and the figure is the median over ``--reps`` repetitions of (pass time / images), on one
thread of this process. Pass time is that thread's CPU time (``time.thread_time``: what one core
spends, unaffected by other processes competing for the cores); the wall-clock medians and the
load average are printed beside it. Stages:

- estimate: the similarity only (scikit-image ``SimilarityTransform.from_estimate`` vs the closed
  form ``exfiqa.readers.align._similarity_matrix``);
- warp: resampling only, same matrix (``skimage.transform.warp`` order 1 vs ``cv2.warpAffine``);
- align: the whole function (the old ``align_face`` vs ``exfiqa.readers.align_face``);
- decode + align: ``exfiqa.readers.decode_image`` of the JPEG bytes, then align (file reads are
  not included: they depend on the storage).

Projected minutes: per-crop time x 469,375 (IJB-C's loose crops), one core.

    python bench/bench_align.py [--images 64] [--reps 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

import numpy as np
import skimage.data
from skimage.transform import SimilarityTransform, warp

from exfiqa.readers import (
    ARCFACE_TEMPLATE,
    IMAGE_SIZE,
    align_face,
    decode_image,
    encode_image,
)
from exfiqa.readers import align as ds

IJBC_CROPS = 469_375
CROP = 250
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _crops(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[bytes], list[np.ndarray]]:
    """n (250, 250, 3) crops (as decoded from their JPEG), their JPEG bytes and landmarks."""
    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    images, jpegs, landmarks = [], [], []
    for k in range(n):
        full = photos[k % len(photos)]
        y = rng.integers(0, full.shape[0] - CROP + 1)
        x = rng.integers(0, full.shape[1] - CROP + 1)
        data = encode_image(np.ascontiguousarray(full[y : y + CROP, x : x + CROP]), "jpeg", 95)
        scale = rng.uniform(0.45, 0.7) * CROP / IMAGE_SIZE
        theta = rng.uniform(-np.pi / 6, np.pi / 6)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        centre = CROP / 2 + rng.uniform(-10, 10, 2)
        face = SimilarityTransform(
            scale=scale, rotation=theta, translation=centre - scale * rot @ [56.0, 56.0]
        )
        jpegs.append(data)
        images.append(decode_image(data))
        landmarks.append(face(ARCFACE_TEMPLATE) + rng.normal(0, 1.5, (5, 2)))
    return images, jpegs, landmarks


def _old_estimate(pts: np.ndarray) -> np.ndarray:
    return SimilarityTransform.from_estimate(pts, ARCFACE_TEMPLATE).params


def _old_warp(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    out = warp(
        img, np.linalg.inv(matrix), output_shape=(IMAGE_SIZE, IMAGE_SIZE), order=1,
        mode="constant", cval=0.0, preserve_range=True,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _old_align(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``align_face`` before OpenCV (scikit-image estimate and warp)."""
    tform = SimilarityTransform.from_estimate(pts, ARCFACE_TEMPLATE)
    out = warp(
        img, tform.inverse, output_shape=(IMAGE_SIZE, IMAGE_SIZE), order=1, mode="constant",
        cval=0.0, preserve_range=True,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _cv2_warp(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.warpAffine(
        img, matrix[:2], (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


def _time_per_item(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) per call of ``fn(0..n-1)``."""
    c0, t0 = time.thread_time(), time.perf_counter()
    for k in range(n):
        fn(k)
    return (time.thread_time() - c0) / n, (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    import cv2

    images, jpegs, landmarks = _crops(args.images)
    matrices = [_old_estimate(p) for p in landmarks]
    n = args.images
    stages: dict[str, tuple[Callable[[int], object], Callable[[int], object]]] = {
        "estimate": (
            lambda k: _old_estimate(landmarks[k]),
            lambda k: ds._similarity_matrix(landmarks[k], ARCFACE_TEMPLATE),
        ),
        "warp": (
            lambda k: _old_warp(images[k], matrices[k]),
            lambda k: _cv2_warp(images[k], matrices[k]),
        ),
        "align": (
            lambda k: _old_align(images[k], landmarks[k]),
            lambda k: align_face(images[k], landmarks[k]),
        ),
        "decode + align": (
            lambda k: _old_align(decode_image(jpegs[k]), landmarks[k]),
            lambda k: align_face(decode_image(jpegs[k]), landmarks[k]),
        ),
        "decode only": (lambda k: decode_image(jpegs[k]), lambda k: decode_image(jpegs[k])),
    }
    # the two paths give (nearly) the same crops: report it beside the timings
    diff = np.stack([
        np.abs(_old_align(img, pts).astype(int) - align_face(img, pts))
        for img, pts in zip(images, landmarks, strict=True)
    ])
    times: dict[str, tuple[list[tuple[float, float]], ...]] = {s: ([], []) for s in stages}
    load = os.getloadavg()
    for stage in stages.values():  # warm-up (imports, caches)
        stage[0](0), stage[1](0)
    for _ in range(args.reps):
        for name, (old, new) in stages.items():
            times[name][0].append(_time_per_item(old, n))
            times[name][1].append(_time_per_item(new, n))

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"bench_align: {n} JPEG loose crops {CROP}x{CROP} -> {IMAGE_SIZE}x{IMAGE_SIZE}, "
          f"median of {args.reps} passes, one thread")
    print(f"  cpu: {cpu} ({os.cpu_count()} cores); python {sys.version.split()[0]}; numpy "
          f"{np.__version__}; scikit-image {metadata.version('scikit-image')}; opencv "
          f"{cv2.__version__}; cv2.getNumThreads() = {cv2.getNumThreads()}")
    print("  old = scikit-image (align_face before); new = closed-form estimate + cv2.warpAffine")
    print(f"  load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"  {'':<16}{'CPU ms per crop':^26}{'minutes, one core':^20}{'wall ms per crop':^20}")
    print(f"  {'stage':<16}{'old':>9}{'new':>9}{'ratio':>8}{'old':>10}{'new':>10}"
          f"{'old':>10}{'new':>10}")
    for name, (old, new) in times.items():
        a, b = (statistics.median(t[0] for t in x) * 1e3 for x in (old, new))
        wa, wb = (statistics.median(t[1] for t in x) * 1e3 for x in (old, new))
        label = "decode (both)" if name == "decode only" else name
        print(f"  {label:<16}{a:>9.3f}{b:>9.3f}{a / b:>8.2f}{a * IJBC_CROPS / 6e4:>10.1f}"
              f"{b * IJBC_CROPS / 6e4:>10.1f}{wa:>10.3f}{wb:>10.3f}")
    print(f"  (minutes = CPU ms x {IJBC_CROPS:,} IJB-C loose crops / 60,000)")
    print(f"  old vs new crops: max |difference| {diff.max()} grey levels; pixels differing "
          f"{(diff > 0).mean():.4f}, by more than 1: {(diff > 1).mean():.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
