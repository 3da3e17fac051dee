"""SynthFace throughput, and (optionally) how hard its identities are to tell apart.

Prints images/s of ``exfiqa.demo.synth.generate`` (aligned 112x112, degradations per the default world)
for each worker count, each timed on a fresh set of identities (so identity textures are built
inside the timing, as in real use). With ``--recognition`` it also prints closed-set
nearest-centroid identification accuracy of simple features on clean images and under each
degradation: a sanity check that colour alone does not identify, that identity is recognisable,
and that degradations hurt. Usage:
    python bench/bench_synth.py [--n 4000] [--workers 1 2] [--per-identity 20] [--recognition]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from exfiqa.demo import synth as S


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(
    n: int, per_identity: int, workers: int, offset: int, chunk_size: int
) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second) for ``n`` images of fresh identities.

    The CPU-second rate (this process and its finished workers) is what one core delivers; it is
    the number to trust when other jobs share the machine.
    """
    spec = S.WorldSpec(seed=0)
    ids = offset + np.arange(max(1, n // per_identity))
    c0, t0 = _cpu_seconds(), time.perf_counter()
    batch = S.generate(spec, ids, per_identity, workers=workers, chunk_size=chunk_size)
    dt, dc = time.perf_counter() - t0, _cpu_seconds() - c0
    return len(batch.images) / dt, len(batch.images) / dc


def _nearest_centroid(
    feat: np.ndarray, label: np.ndarray, gallery: np.ndarray, probe: np.ndarray
) -> float:
    classes = np.unique(label)
    cent = np.stack([gallery[label == k].mean(0) for k in classes])
    d = ((probe[:, None, :] - cent[None]) ** 2).sum(-1)
    return float((classes[d.argmin(1)] == feat).mean())


def recognition(k: int = 50, m: int = 8) -> None:
    """Nearest-centroid identification (half the images gallery, half probes) on several features."""
    from skimage.feature import hog

    def f_colour(x: np.ndarray) -> np.ndarray:
        return x[:, 40:100, 30:82].astype(float).mean(axis=(1, 2))

    def f_pixels(x: np.ndarray) -> np.ndarray:
        g = x.astype(float).mean(-1)[:, 20:110, 14:98]
        g = (g - g.mean(axis=(1, 2), keepdims=True)) / g.std(axis=(1, 2), keepdims=True)
        return g.reshape(len(g), -1)

    def f_hog(x: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                hog(
                    im.mean(-1)[8:104, 8:104],
                    orientations=8,
                    pixels_per_cell=(8, 8),
                    cells_per_block=(2, 2),
                )
                for im in x
            ]
        )

    b = S.generate(S.WorldSpec(seed=7), np.arange(k), m, degraded=False)
    gal = np.tile(np.arange(m), k) < m // 2
    y = b.identity
    probes, lm = b.images[~gal], b.landmarks[~gal]
    print(
        f"closed-set identification, {k} identities, {m // 2} gallery + {m - m // 2} probe images each "
        f"(chance {1 / k:.3f}); columns: clean, then severity 0.3 / 0.6 / 1.0"
    )
    for name, f in (("mean colour", f_colour), ("gray pixels", f_pixels), ("HOG", f_hog)):
        g = f(b.images[gal])
        print(f"  {name:12s} clean {_nearest_centroid(y[~gal], y[gal], g, f(probes)):.2f}")
        if name == "mean colour":
            continue
        for kind in S.DEGRADATIONS:
            if kind == "pose":
                continue
            accs = []
            for s in (0.3, 0.6, 1.0):
                x = S.degrade(probes, kind, s, np.random.default_rng(0), lm)
                accs.append(_nearest_centroid(y[~gal], y[gal], g, f(x)))
            print(f"  {name:12s} {kind:15s} " + " ".join(f"{a:.2f}" for a in accs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="images per measurement")
    ap.add_argument("--per-identity", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument(
        "--recognition", action="store_true", help="also print identification accuracies"
    )
    args = ap.parse_args()
    print(f"cpus visible: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    throughput(64, 8, 1, offset=10**6, chunk_size=64)  # warm-up: imports, noise field
    for j, w in enumerate(args.workers):
        rate, per_cpu = throughput(
            args.n, args.per_identity, w, offset=(j + 1) * 10**5, chunk_size=args.chunk_size
        )
        print(
            f"workers={w}: {rate:.0f} images/s wall, {per_cpu:.0f} images per CPU-second "
            f"({args.n} images, {args.per_identity} per identity, load average now "
            f"{os.getloadavg()[0]:.2f})"
        )
    if args.recognition:
        recognition()


if __name__ == "__main__":
    main()
