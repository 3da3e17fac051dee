"""EDC + pAUC at IJB-C scale: both conventions, 3 FMR targets, time and peak memory.

Synthetic input of the IJB-C 1:1 size (15,658,489 comparisons, 19,557 mated): mated similarity
~ N(0.6, 0.15), non-mated ~ N(0.05, 0.1), pair quality correlated with the mated similarity.
Times ``edc_many`` + ``pauc`` for ``fixed`` and ``recompute``, reports the peak RSS
(``resource.getrusage``), then times a straightforward per-level ``recompute`` reference (stable
sort by quality once, then at each of the 20 levels sort the remaining non-mated similarities and
read the threshold off them), checks that it agrees and prints the speedup. With ``--n-boot B``
also times :func:`exfiqa.evaluation.bootstrap.bootstrap_pauc` at FMR 1e-3 (B resamples under ``fixed``;
``--n-boot-recompute`` resamples under ``recompute``; both draw only the mated and the top non-mated
comparisons one by one, so a resample costs far less than O(N)). Usage:
    python bench/bench_metrics.py [--n 15658489] [--n-mated 19557] [--skip-reference]
                                  [--n-boot 1000] [--n-boot-recompute 5]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from exfiqa.evaluation.bootstrap import bootstrap_pauc
from exfiqa.evaluation.edc import edc_many
from exfiqa.evaluation.pauc import pauc
from exfiqa.evaluation.rules import DEFAULT_FMR_TARGETS

IJBC_PAIRS = 15_658_489
IJBC_MATED = 19_557


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, n_mated: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(similarity, mated, quality) with mated comparisons at random positions."""
    rng = np.random.default_rng(seed)
    mated = np.zeros(n, dtype=bool)
    mated[rng.choice(n, size=n_mated, replace=False)] = True
    sim = rng.normal(0.05, 0.1, n)
    sim[mated] = rng.normal(0.6, 0.15, n_mated)
    quality = rng.normal(0.0, 1.0, n)
    quality[mated] = 0.6 * (sim[mated] - 0.6) / 0.15 + 0.8 * rng.normal(0.0, 1.0, n_mated)
    return sim, mated, quality


def reference_recompute(
    sim: np.ndarray, mated: np.ndarray, quality: np.ndarray, targets: tuple[float, ...]
) -> dict[float, np.ndarray]:
    """Per-level reference: full sort of the remaining non-mated similarities at each level."""
    n = sim.shape[0]
    order = np.argsort(quality, kind="stable")
    out = {t: np.empty(20) for t in targets}
    for j in range(20):
        keep = order[(j * n) // 20 :]
        s, y = sim[keep], mated[keep]
        neg = np.sort(s[~y])[::-1]
        pos = s[y]
        for t in targets:
            k = min(int(np.floor(t * neg.shape[0] * (1 + 1e-9))), neg.shape[0] - 1)
            out[t][j] = np.count_nonzero(pos <= neg[k]) / pos.shape[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=IJBC_PAIRS, help="number of comparisons")
    ap.add_argument(
        "--n-mated", type=int, default=0, help="mated comparisons (default: IJB-C's share of --n)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true", help="skip the slow reference")
    ap.add_argument("--n-boot", type=int, default=0, help="fixed-convention bootstrap resamples")
    ap.add_argument("--n-boot-recompute", type=int, default=0, help="recompute resamples")
    args = ap.parse_args()
    n_mated = args.n_mated or max(10, round(IJBC_MATED * args.n / IJBC_PAIRS))
    targets = DEFAULT_FMR_TARGETS

    t0 = time.perf_counter()
    sim, mated, quality = synthetic(args.n, n_mated, args.seed)
    print(f"comparisons={args.n:,} mated={n_mated:,} fmr_targets={targets}")
    print(f"generate: {time.perf_counter() - t0:.2f} s   peak RSS {peak_rss_mib():.0f} MiB")

    times, curves = {}, {}
    for conv in ("fixed", "recompute"):
        t0 = time.perf_counter()
        curves[conv] = edc_many(sim, mated, quality, targets, conv)
        areas = {t: pauc(c, 0.3) for t, c in curves[conv].items()}
        times[conv] = time.perf_counter() - t0
        line = "  ".join(f"pAUC@{t:g}={a:.5f}" for t, a in areas.items())
        print(f"{conv:>9}: {times[conv]:.2f} s   {line}")
    total = sum(times.values())
    print(f"both conventions, 3 targets: {total:.2f} s   peak RSS {peak_rss_mib():.0f} MiB")

    if not args.skip_reference:
        t0 = time.perf_counter()
        ref = reference_recompute(sim, mated, quality, targets)
        t_ref = time.perf_counter() - t0
        agree = all(np.array_equal(ref[t], curves["recompute"][t].fnmr) for t in targets)
        print(
            f"reference recompute (sort per level): {t_ref:.2f} s   agrees: {agree}   "
            f"speedup: {t_ref / times['recompute']:.1f}x"
        )
        if not agree:
            raise SystemExit("reference and fast recompute disagree")

    for conv, n_boot in (("fixed", args.n_boot), ("recompute", args.n_boot_recompute)):
        if n_boot < 2:
            continue
        t0 = time.perf_counter()
        res = bootstrap_pauc(sim, mated, quality, 1e-3, conv, 0.3, n_boot=n_boot, seed=0)
        dt = time.perf_counter() - t0
        print(
            f"bootstrap {conv}: {n_boot} resamples in {dt:.2f} s ({dt / n_boot:.3f} s each)   "
            f"pAUC@1e-3={res.estimate:.5f} [{res.lower:.5f}, {res.upper:.5f}]   "
            f"peak RSS {peak_rss_mib():.0f} MiB"
        )


if __name__ == "__main__":
    main()
