"""Operating points on the ``fixed`` FNM-EDC (:func:`exfiqa.evaluation.edc.edc_curves`), with a
unit-bootstrap interval (:func:`operating_point`); the quality threshold ``t`` keeps pair quality ``>= t``.

* ``discard=f``: the point with the largest discard fraction ``<= f``; ``fnmr=e``: the smallest discard
  fraction whose FNMR is ``<= e`` (if none, ``reached`` is False and the first point of lowest FNMR).
* Interval: units resampled with ``t`` fixed and the comparison threshold recomputed; percentile
  interval (``np.quantile``, linear) of the defined resamples. ``at_most`` rule only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from exfiqa.evaluation.bootstrap import _boot_checks, _Candidates, _intervals, _unit_resamples
from exfiqa.evaluation.edc import edc_curves
from exfiqa.evaluation.quality import pair_quality
from exfiqa.evaluation.rules import Acceptance, ThresholdRule, allowed_errors, check_rate
from exfiqa.evaluation.scores import ArrayOrder, Comparisons, rule_view
from exfiqa.evaluation.subjects import ExplicitUnits

__all__ = ["QualityOperatingPoint", "operating_point", "operating_point_pairs"]


@dataclass(frozen=True)
class QualityOperatingPoint:
    """One point of a ``fixed`` FNM-EDC and its bootstrap interval (module docstring).

    ``comparison_threshold`` is in the acceptance's units; intervals are at level ``1 - alpha`` from
    ``n_valid`` of ``n_boot`` resamples; ``resolved``: ``fmr * n_nonmated >= 1``.
    """

    request: str
    reached: bool
    quality_threshold: float
    discard_fraction: float
    fnmr: float
    fmr: float
    comparison_threshold: float
    n_mated: int
    n_nonmated: int
    discard_interval: tuple[float, float]
    fnmr_interval: tuple[float, float]
    alpha: float
    n_boot: int
    n_valid: int
    seed: int
    unit: str
    n_units: int
    resolved: bool


def _pick(frac: np.ndarray, err: np.ndarray, discard: float | None, fnmr: float | None) -> tuple[int, bool]:
    """Index of the requested point on the curve, and whether the request is met."""
    if discard is not None:
        return int(np.flatnonzero(frac <= discard + 1e-12)[-1]), True
    assert fnmr is not None
    ok = np.flatnonzero(err <= fnmr)
    if ok.size:
        return int(ok[0]), True
    return int(np.nanargmin(err)), False


def _boot_point(
    view: Any, units: Any, keep: np.ndarray, fmr: float, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Discard fraction and FNMR per unit resample at a fixed set of kept mated comparisons."""
    cands = _Candidates(view, fmr)
    disc = np.full(n_boot, np.nan)
    err = np.full(n_boot, np.nan)
    for b, w, w_m, n_nm_w in _unit_resamples(view, units, n_boot, seed):
        kept = w_m * keep
        n_kept = int(kept.sum())
        if n_nm_w <= 0 or n_kept == 0:
            continue
        stat, _ = cands.stat(units, w, int(allowed_errors(fmr, n_nm_w)))
        if stat is None:  # pragma: no cover - every non-mated is a candidate and k < n_nm_w
            continue
        disc[b] = 1.0 - n_kept / int(w_m.sum())
        err[b] = float(np.sum(kept * (view.sim_m <= stat))) / n_kept
    return disc, err


def operating_point(
    scores: Any, order: Any, units: Any, *, discard: float | None = None, fnmr: float | None = None,
    fmr: float = 1e-3, threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY, n_boot: int = 1000, alpha: float = 0.05,
    seed: int = 0, unit: str = "unit",
) -> QualityOperatingPoint:
    """The quality threshold for ``discard`` (a fraction in [0, 1)) or ``fnmr`` (a target FNMR at ``fmr``).

    ``scores``, ``order``: as for :func:`exfiqa.evaluation.edc.edc_curves`; ``units``: the independent
    units (:mod:`exfiqa.evaluation.subjects`), named ``unit``. Conventions: module docstring.
    """
    if (discard is None) == (fnmr is None):
        raise ValueError("operating_point: give exactly one of discard= and fnmr=")
    if discard is not None and not (0.0 <= float(discard) < 1.0):
        raise ValueError(f"discard: a fraction in [0, 1), got {discard!r}")
    if fnmr is not None:
        fnmr = check_rate(fnmr, "fnmr")
    f = check_rate(fmr, "fmr")
    strict = _boot_checks(n_boot, alpha, threshold_rule, acceptance)
    curve = edc_curves(scores, order, (f,), "fixed", threshold_rule=threshold_rule, acceptance=acceptance)[f]
    view = rule_view(scores, strict)
    q_m = np.asarray(order.quality(view.mated_refs))
    i, reached = _pick(curve.discard_fraction, curve.error, discard, fnmr)
    n_discarded = int(round(curve.discard_fraction[i] * view.n_m))
    q_t = np.sort(q_m, kind="stable")[n_discarded]
    keep = (q_m >= q_t).astype(np.int64)
    assert int(keep.sum()) == view.n_m - n_discarded  # tie groups are discarded whole
    disc_s, err_s = _boot_point(view, units, keep, f, int(n_boot), seed)
    request = f"discard <= {discard:g}" if discard is not None else f"FNMR <= {fnmr:g} at FMR {f:g}"
    return QualityOperatingPoint(
        request=request, reached=reached, quality_threshold=float(q_t),
        discard_fraction=float(curve.discard_fraction[i]), fnmr=float(curve.error[i]), fmr=f,
        comparison_threshold=float(curve.thresholds[i]), n_mated=int(view.n_m), n_nonmated=int(view.n_nm),
        discard_interval=_intervals(disc_s, alpha, False), fnmr_interval=_intervals(err_s, alpha, False), alpha=float(alpha),
        n_boot=int(n_boot), n_valid=int(np.isfinite(err_s).sum()), seed=int(seed), unit=unit,
        n_units=int(units.n_units), resolved=bool(curve.resolved[i]),
    )


def operating_point_pairs(
    similarity: ArrayLike, mated: ArrayLike, quality_a: ArrayLike, quality_b: ArrayLike,
    subjects: ArrayLike | None = None, **kwargs: Any,
) -> QualityOperatingPoint:
    """:func:`operating_point` on explicit comparisons: similarity (higher = more alike), mated labels,
    the two samples' qualities and ``subjects`` (N, 2), the unit of each side (default: each comparison)."""
    comp = Comparisons(similarity, mated)
    q = comp.quality(pair_quality(quality_a, quality_b))
    own = np.arange(comp.n)
    kwargs.setdefault("unit", "comparison" if subjects is None else "subject")
    units = ExplicitUnits(np.stack((own, own), axis=1) if subjects is None else subjects, comp.n)
    return operating_point(comp, ArrayOrder(q), units, **kwargs)
