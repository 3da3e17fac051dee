"""Coverage of the pAUC bootstrap intervals on clustered synthetic populations (issue: honest conclusions).

Each simulated study draws ``S`` subjects with ``n`` images and compares every image with every
other (all-vs-all, as Adience). Subjects carry effects on both sides: a hard-to-match subject
(its mated similarities shifted), a look-alike subject (its non-mated similarities shifted), and
images a quality that drives both their mated similarity and the quality scores. Two quality
measures (``a``: sharper, ``b``: noisier) give single and paired pAUCs.

The true value of a pAUC (or of a difference) is that of the population: the mean over large
studies of the same generator (``--truth-subjects`` subjects each). For each study the 95%
percentile interval of the subject bootstrap (``subjects=``) and of the comparison bootstrap
(stratified, no ``subjects``) is checked for containing it; the share over ``--studies`` studies
is the coverage (target 0.92-0.99 for the subject bootstrap), printed beside the ratio of the
bootstrap standard deviation to the true sampling standard deviation (over the studies).

    python bench/bench_coverage.py                      # 100 and 160 subjects x 2 conventions, 200 studies
    python bench/bench_coverage.py --ijbc-timing        # time/memory of a unit resample at IJB-C size
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np

from exfiqa.evaluation import bootstrap as B
from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.pauc import pauc
from exfiqa.evaluation.scores import ArrayOrder, Comparisons

FMR = 1e-2
LIMIT = 0.3


@dataclass(frozen=True)
class Population:
    """The generator's parameters (similarities on a cosine-like scale)."""

    images: int = 4  # per subject
    mated_mean: float = 0.55
    nonmated_mean: float = 0.05
    hard_sd: float = 0.10  # subject effect on its mated similarities (hard-to-match subjects)
    lookalike_sd: float = 0.05  # subject effect on its non-mated similarities (both sides)
    quality_effect: float = 0.12  # mated similarity per unit of each side's image quality
    noise_sd: float = 0.07


def study(subjects: int, rng: np.random.Generator, pop: Population = Population()) -> dict[str, np.ndarray]:
    """One all-vs-all study: similarity, mated, the two pair qualities and the (N, 2) subjects."""
    n = subjects * pop.images
    ident = np.repeat(np.arange(subjects), pop.images)
    hard = rng.normal(0.0, pop.hard_sd, subjects)
    look = rng.normal(0.0, pop.lookalike_sd, subjects)
    iq = rng.normal(0.0, 1.0, n)  # true image quality
    qa = (iq + rng.normal(0.0, 0.5, n)).astype(np.float32)
    qb = (iq + rng.normal(0.0, 1.2, n)).astype(np.float32)
    i, j = np.triu_indices(n, 1)
    mated = ident[i] == ident[j]
    sim = np.where(
        mated,
        pop.mated_mean + hard[ident[i]] + pop.quality_effect * (np.minimum(iq[i], iq[j])),
        pop.nonmated_mean + look[ident[i]] + look[ident[j]],
    ) + rng.normal(0.0, pop.noise_sd, i.size)
    return {
        "sim": sim.astype(np.float32), "mated": mated,
        "qa": np.minimum(qa[i], qa[j]), "qb": np.minimum(qb[i], qb[j]),
        "subjects": np.stack((ident[i], ident[j]), axis=1).astype(np.int32),
    }


def paucs(s: dict[str, np.ndarray], convention: str) -> tuple[float, float]:
    out = []
    for q in ("qa", "qb"):
        out.append(pauc(edc(s["sim"], s["mated"], s[q], FMR, convention), LIMIT))
    return out[0], out[1]


def truth(convention: str, subjects: int, draws: int, seed: int) -> tuple[float, float]:
    """Population pAUC of ``a`` and of ``a - b``: the mean over ``draws`` large studies."""
    rng = np.random.default_rng([seed, 7])
    vals = np.array([paucs(study(subjects, rng), convention) for _ in range(draws)])
    return float(vals[:, 0].mean()), float((vals[:, 0] - vals[:, 1]).mean())


def coverage(
    subjects: int, convention: str, studies: int, n_boot: int, true_a: float, true_d: float, seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Coverage and spread ratios of both bootstraps over ``studies`` simulated studies."""
    rng = np.random.default_rng([seed, subjects])
    hit = {k: 0 for k in ("unit_single", "unit_paired", "comp_single", "comp_paired")}
    sd = {k: [] for k in hit}
    est_a, est_d = [], []
    bc = {"single": 0, "paired": 0}
    for t in range(studies):
        s = study(subjects, rng)
        comp = Comparisons(s["sim"], s["mated"])
        orders = [ArrayOrder(s[q]) for q in ("qa", "qb")]
        est = paucs(s, convention)
        for kind, subj in (("unit", s["subjects"]), ("comp", None)):
            # one pass gives both measures on the same resamples: single = samples of a, paired = a - b
            sa, sb = B.bootstrap_samples(comp, orders, FMR, convention, LIMIT, n_boot, seed + t, subjects=subj)
            for name, x, true, e in (("single", sa, true_a, est[0]), ("paired", sa - sb, true_d, est[0] - est[1])):
                x = x[np.isfinite(x)]
                lo, hi = np.quantile(x, [0.025, 0.975])
                hit[f"{kind}_{name}"] += bool(lo <= true <= hi)
                sd[f"{kind}_{name}"].append(float(np.std(x)))
                if kind == "unit":  # bias-corrected percentile interval (Efron's BC), for comparison
                    from scipy.stats import norm

                    z0 = norm.ppf(np.clip((np.sum(x < e) + 0.5 * np.sum(x == e)) / x.size, 1e-6, 1 - 1e-6))
                    blo, bhi = np.quantile(x, norm.cdf(2 * z0 + norm.ppf([0.025, 0.975])))
                    bc[name] += bool(blo <= true <= bhi)
        est_a.append(est[0])
        est_d.append(est[0] - est[1])
        if progress and (t + 1) % 25 == 0:
            print(f"  {subjects} subjects, {convention}: {t + 1}/{studies} studies", file=sys.stderr, flush=True)
    true_sd = {"single": float(np.std(est_a)), "paired": float(np.std(est_d))}
    out: dict[str, float] = {f"cover_{k}": v / studies for k, v in hit.items()}
    out.update({f"cover_bc_unit_{k}": v / studies for k, v in bc.items()})
    for k, v in sd.items():
        out[f"sd_ratio_{k}"] = float(np.mean(v)) / true_sd[k.split("_")[1]]
    out["bias_single"] = float(np.mean(est_a)) - true_a
    out["true_sd_single"] = true_sd["single"]
    return out


def ijbc_timing(n_boot: int = 5) -> None:
    """Time and peak memory of the subject bootstrap at IJB-C's real counts.

    15,658,489 comparisons between 3,531 subjects (IJB-C 1:1 has 19,557 mated comparisons);
    three quality orders (a reference and two methods, as in the fusion bootstrap), both
    conventions. The comparison set is explicit (IJB-C's pair list), the scores synthetic.
    """
    from exfiqa.evaluation.pairs import PairList

    rng = np.random.default_rng(0)
    n_subj, n_tmpl = 3531, 23124
    tmpl_subject = np.sort(rng.integers(0, n_subj, n_tmpl))
    n_cmp, n_mated = 15_658_489, 19_557
    # mated: two templates of one subject; non-mated: random templates of other subjects
    by_subj = np.split(np.arange(n_tmpl), np.flatnonzero(np.diff(tmpl_subject)) + 1)
    multi = [g for g in by_subj if g.size >= 2]
    pick = rng.integers(0, len(multi), n_mated)
    ma = np.array([multi[k][0] for k in pick])
    mb = np.array([multi[k][1 + rng.integers(0, multi[k].size - 1)] for k in pick])
    na = rng.integers(0, n_tmpl, n_cmp - n_mated)
    nb = rng.integers(0, n_tmpl, n_cmp - n_mated)
    same = tmpl_subject[na] == tmpl_subject[nb]
    nb[same] = (nb[same] + 1) % n_tmpl
    a = np.concatenate((ma, na)).astype(np.int32)
    b = np.concatenate((mb, nb)).astype(np.int32)
    mated = np.zeros(n_cmp, dtype=bool)
    mated[:n_mated] = True
    pairs = PairList(a, b, mated, n_tmpl)
    feats = rng.normal(size=(n_tmpl, 64)).astype(np.float32)
    feats[:] += 2.0 * rng.normal(size=(n_subj, 64)).astype(np.float32)[tmpl_subject]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    t0 = time.perf_counter()
    scores = pairs.scores(feats)
    orders = [pairs.order(rng.normal(size=n_tmpl).astype(np.float32)) for _ in range(3)]
    from exfiqa.evaluation.subjects import comparison_units, mated_components

    side = mated_components(a, b, mated, n_tmpl)
    units = comparison_units(pairs, side)
    print(f"IJB-C size: {n_cmp:,} comparisons, {units.n_units:,} units (mated components), "
          f"setup {time.perf_counter() - t0:.1f} s")
    for conv in ("fixed", "recompute"):
        t0 = time.perf_counter()
        B.bootstrap_samples(scores, orders, 1e-3, conv, LIMIT, 2, 0, subjects=units)
        t_small = time.perf_counter() - t0
        t0 = time.perf_counter()
        B.bootstrap_samples(scores, orders, 1e-3, conv, LIMIT, 2 + n_boot, 0, subjects=units)
        per = (time.perf_counter() - t0 - t_small) / n_boot
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"  {conv}: {per:.3f} s per resample for 3 methods ({per / 3:.3f} s per method), "
              f"setup {t_small:.1f} s, peak RSS so far {peak:.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 160], help="subjects per study")
    ap.add_argument("--conventions", nargs="+", default=["recompute", "fixed"])
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--truth-subjects", type=int, default=1200)
    ap.add_argument("--truth-draws", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated studies")
    ap.add_argument("--ijbc-timing", action="store_true")
    args = ap.parse_args()
    if args.ijbc_timing:
        ijbc_timing()
        return
    print(f"FMR {FMR}, pAUC up to {LIMIT}; {args.studies} studies per cell, {args.n_boot} resamples; "
          f"truth from {args.truth_draws} studies of {args.truth_subjects} subjects")
    print("| subjects | comparisons | convention | coverage single: unit / comparison | paired: unit / comparison "
          "| sd ratio single: unit / comparison | paired: unit / comparison | bias / true sd (single) "
          "| BC percentile coverage, unit: single / paired |")
    print("|---|---|---|---|---|---|---|---|---|")
    for conv in args.conventions:
        t0 = time.perf_counter()
        true_a, true_d = truth(conv, args.truth_subjects, args.truth_draws, 0)
        print(f"truth ({conv}): pAUC(a) {true_a:.6f}, pAUC(a) - pAUC(b) {true_d:.6f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        for size in args.sizes:
            r = coverage(size, conv, args.studies, args.n_boot, true_a, true_d, seed=args.seed)
            n = size * Population().images
            print(f"| {size} | {n * (n - 1) // 2:,} | {conv} | {r['cover_unit_single']:.3f} / {r['cover_comp_single']:.3f} "
                  f"| {r['cover_unit_paired']:.3f} / {r['cover_comp_paired']:.3f} "
                  f"| {r['sd_ratio_unit_single']:.2f} / {r['sd_ratio_comp_single']:.2f} "
                  f"| {r['sd_ratio_unit_paired']:.2f} / {r['sd_ratio_comp_paired']:.2f} "
                  f"| {r['bias_single'] / r['true_sd_single']:+.2f} "
                  f"| {r['cover_bc_unit_single']:.3f} / {r['cover_bc_unit_paired']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
