"""pAUC of an EDC (stepwise or trapezoid, with the theoretical best curves), whether it is
resolved, the metadata stored beside every pAUC, and the tidy rows of EDCs and pAUCs.

numpy only (pandas imported by :func:`edc_rows`).
The conventions and their area rules: :mod:`exfiqa.evaluation.edc`. The area helpers
(:func:`stepwise_area`, :func:`trapezoid_area`, :func:`best_area`, :func:`triangle_area`) are
shared with :mod:`exfiqa.evaluation.bootstrap`, which applies them to resampled curves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from exfiqa.evaluation.edc import EDCCurve, left_per_level
from exfiqa.evaluation.rules import (
    N_LEVELS,
    PAUC_META,
    RECOMPUTE_DISCARD_FRACTIONS,
    TIE_ORDER_NOTE,
    Acceptance,
    BestCurve,
    Convention,
    ErrorType,
    ThresholdRule,
    as_acceptance,
    as_best_curve,
    as_convention,
    as_error_type,
    as_rule,
    check_limit,
    describe_rule,
    resolvable,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def _area_points(curve: EDCCurve, limit: float) -> np.ndarray:
    """The points an area up to ``limit`` reads: those at or below it, and under ``recompute``
    the next one when the limit falls between grid points (the interpolated end point)."""
    frac = curve.discard_fraction
    inside = frac <= limit + 1e-12
    if curve.convention is Convention.RECOMPUTE:
        i = int(inside.sum())
        if frac[i - 1] < limit - 1e-12 and i < frac.shape[0]:
            inside[i] = True
    return inside


def resolved_for(
    scores: Any,
    order: Any,
    target: float,
    convention: Convention | str = Convention.RECOMPUTE,
    limit: float = 0.3,
    *,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> bool:
    """:func:`pauc_resolved` of the EDC of prepared ``scores`` and ``order`` (the interface of
    :func:`edc_curves`) without computing the curve: the counts left per level follow from the
    levels of the mated comparisons alone (bounded at any size)."""
    conv, e_type = as_convention(convention), as_error_type(error_type)
    if conv is Convention.FIXED:
        return bool(resolvable(target, int(scores.n_nm if e_type is ErrorType.FNMR else scores.n_m)))
    _, n_m_j, n_nm_j = left_per_level(scores, order)
    base = n_nm_j if e_type is ErrorType.FNMR else n_m_j
    curve = EDCCurve(RECOMPUTE_DISCARD_FRACTIONS, np.zeros(N_LEVELS), np.zeros(N_LEVELS), target, conv,
                     max(int(scores.n_m), 1), int(scores.n_nm), n_target_base=base)
    return pauc_resolved(curve, limit)


def pauc_resolved(curve: EDCCurve, limit: float = 0.3) -> bool:
    """Whether every point a :func:`pauc` up to ``limit`` reads has a resolvable target
    (:attr:`EDCCurve.resolved`): the whole set, and under ``recompute`` each level up to the limit."""
    return bool(curve.resolved[_area_points(curve, check_limit(limit))].all())


def stepwise_area(frac: np.ndarray, err: np.ndarray, limit: float) -> np.ndarray:
    """Area under right-continuous steps along the last axis, the last step held to ``limit``."""
    nxt = np.concatenate((frac[..., 1:], np.full(frac.shape[:-1] + (1,), np.inf)), axis=-1)
    width = np.minimum(nxt, limit) - np.minimum(frac, limit)
    return np.asarray(np.where(width > 0, err * width, 0.0).sum(axis=-1))


def trapezoid_area(frac: np.ndarray, err: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``err`` over ``frac`` up to ``limit`` (``recompute``), the end point
    interpolated linearly when the limit falls between grid points; raises where the curve is
    undefined (NaN) at a point the area reads or ``limit`` lies beyond the grid."""
    if limit > frac[-1] + 1e-12:
        raise ValueError(
            f"limit: {limit} lies beyond the last discard fraction of the curve ({frac[-1]})"
        )
    inside = frac <= limit + 1e-12
    x, y = frac[inside], err[inside]
    if x[-1] < limit - 1e-12:
        i = x.shape[0]
        y_lim = err[i - 1] + (err[i] - err[i - 1]) * (limit - frac[i - 1]) / (frac[i] - frac[i - 1])
        x, y = np.append(x, limit), np.append(y, y_lim)
    if np.isnan(y).any():
        raise ValueError(
            "curve: the error is undefined (NaN, no mated or non-mated comparisons left) at a discard "
            f"fraction <= limit {limit}"
        )
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def best_area(n_errors: int, n_counted: int, limit: float) -> float:
    """Stepwise area of max(0, e0 - f) / (1 - f) on the grid f = i / n_counted, up to ``limit``."""
    k = np.arange(min(n_errors, math.ceil(limit * n_counted)), dtype=np.float64)
    if k.size == 0:
        return 0.0
    height = (n_errors - k) / (n_counted - k)
    width = np.minimum((k + 1) / n_counted, limit) - k / n_counted
    return float(np.sum(height * np.maximum(width, 0.0)))


def triangle_area(e0: float | np.ndarray, limit: float) -> float | np.ndarray:
    """Area under max(0, e0 - f) from 0 to ``limit`` (Schlett's ``compute_edc_area_under_theoretical_best``)."""
    e0 = np.asarray(e0, dtype=np.float64)
    return e0**2 / 2 - np.maximum(e0 - limit, 0.0) ** 2 / 2


def pauc(curve: EDCCurve, limit: float = 0.3, subtract_best: bool | BestCurve | str = False) -> float:
    """Partial area under an EDC from discard fraction 0 to ``limit`` (lower is better).

    ``fixed``: stepwise area; ``subtract_best`` subtracts the area under the theoretical best
    curve (module docstring): ``True`` or ``"triangle"`` the reference's triangle, ``"stepwise"``
    the stepwise best on the finest grid. ``recompute``: trapezoid area, linearly interpolated at
    the limit; ``subtract_best`` raises. Unscaled (multiply for printing and record the factor,
    see :func:`pauc_meta`).
    """
    lim = check_limit(limit)
    best = as_best_curve(subtract_best)
    if lim == 0.0:
        return 0.0
    if curve.convention is Convention.FIXED:
        if np.isnan(curve.error).any():
            raise ValueError("curve: the error contains NaN")
        area = float(stepwise_area(curve.discard_fraction, curve.error, lim))
        if best is BestCurve.STEPWISE:
            area -= best_area(int(round(curve.error[0] * curve.n_counted)), curve.n_counted, lim)
        elif best is BestCurve.TRIANGLE:
            area -= float(triangle_area(curve.error[0], lim))
        return area
    if best is not None:
        raise ValueError(
            "subtract_best: the theoretical best curve is defined for the 'fixed' convention only"
        )
    return trapezoid_area(curve.discard_fraction, curve.error, lim)


# ----------------------------------------------------------------------------- metadata, frames


def pauc_meta(
    convention: Convention | str,
    limit: float = 0.3,
    subtract_best: bool | BestCurve | str = False,
    scale: float = 1.0,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> dict[str, Any]:
    """Everything needed to read a pAUC number: store it beside every pAUC written.

    Args:
        convention: The EDC convention.
        limit: Upper discard-fraction limit of the area.
        subtract_best: Whether (and which) theoretical best curve was subtracted: ``False``,
            ``True`` (= ``"triangle"``), ``"triangle"`` or ``"stepwise"``.
        scale: Factor the printed numbers were multiplied by (e.g. 100 for the poster's table).
        threshold_rule, acceptance, error_type: The rules (module docstring).

    Returns:
        ``metric, convention, limit, subtract_best`` (bool), ``best_curve`` (its name or
        ``"none"``), ``scale, threshold_rule, acceptance, error_type``, the descriptions
        ``threshold, discard_base, area_rule`` and ``tie_order`` (:data:`TIE_ORDER_NOTE` where ties
        matter: ``recompute``).
    """
    conv, rule, acc, e_type = as_convention(convention), as_rule(threshold_rule), as_acceptance(acceptance), as_error_type(error_type)
    best = as_best_curve(subtract_best)
    if best is not None and conv is Convention.RECOMPUTE:
        raise ValueError("subtract_best: is defined for the 'fixed' convention only")
    static = dict(PAUC_META[conv])
    fm = e_type is ErrorType.FMR
    if fm:
        static["threshold"] = static["threshold"].replace("non-mated", "mated")
        if conv is Convention.FIXED:
            static["discard_base"] = "non-mated comparisons; equal qualities discarded together"
    static["threshold"] += f"; {describe_rule(rule, e_type)}; accept {acc.value}"
    return {
        "metric": "pAUC-EDC (FMR at fixed FNMR vs discarded fraction)" if fm
        else "pAUC-EDC (FNMR at fixed FMR vs discarded fraction)",
        "convention": conv.value,
        "limit": check_limit(limit),
        "subtract_best": best is not None,
        "best_curve": best.value if best is not None else "none",
        "scale": float(scale),
        "threshold_rule": rule.value,
        "acceptance": acc.value,
        "error_type": e_type.value,
        **static,
        "tie_order": TIE_ORDER_NOTE if conv is Convention.RECOMPUTE else "none: equal qualities are discarded together",
    }


def _extra_columns(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Protocol columns beyond today's defaults: present only when a rule differs from them."""
    out: dict[str, Any] = {}
    if meta["threshold_rule"] != ThresholdRule.AT_MOST.value or meta["acceptance"] != Acceptance.SIMILARITY.value:
        out.update(threshold_rule=meta["threshold_rule"], acceptance=meta["acceptance"])
    if meta["error_type"] != ErrorType.FNMR.value:
        out["error_type"] = meta["error_type"]
    return out


def _rate_columns(error_type: str) -> tuple[str, str]:
    """(target column, error column): ``("fmr", "fnmr")`` for FNM-EDC, swapped for FM-EDC."""
    return ("fmr", "fnmr") if error_type == ErrorType.FNMR.value else ("fnmr", "fmr")


def pauc_rows(
    method: str, dataset: str, fr_model: str, curves: Mapping[float, EDCCurve], meta: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Rows of a tidy pAUC table for one method's curves (one per target) under ``meta`` (:func:`pauc_meta`).

    Columns ``method, dataset, fr_model, fmr, convention, limit, subtract_best, scale``, then
    ``best_curve`` when subtracting, ``threshold_rule, acceptance`` when either differs from the
    default, ``error_type`` for FM-EDCs (whose target column is ``fnmr``), ``pauc`` (times ``scale``)
    and ``resolved`` (:func:`pauc_resolved`: False where the target is below what the comparisons
    resolve, for the whole set or at a level up to the limit).
    """
    target_col, _ = _rate_columns(meta["error_type"])
    extra = ({"best_curve": meta["best_curve"]} if meta["subtract_best"] else {}) | _extra_columns(meta)
    best = meta["best_curve"] if meta["subtract_best"] else False
    rows = []
    for t, c in curves.items():
        rows.append({
            "method": method, "dataset": dataset, "fr_model": fr_model, target_col: t,
            "convention": meta["convention"], "limit": meta["limit"], "subtract_best": meta["subtract_best"],
            "scale": meta["scale"], **extra, "pauc": pauc(c, meta["limit"], best) * meta["scale"],
            "resolved": pauc_resolved(c, meta["limit"]),
        })
    return rows


def edc_rows(method: str, dataset: str, fr_model: str, curves: Mapping[float, EDCCurve]) -> list[pd.DataFrame]:
    """Tidy EDC points of one method's curves: columns ``method, dataset, fr_model, fmr, convention``,
    the rule columns of :func:`pauc_rows` where they differ from the defaults, ``discard_fraction, fnmr``
    (FM-EDC: ``fnmr`` is the target and ``fmr`` the error) and ``resolved`` (:attr:`EDCCurve.resolved`
    of the point)."""
    import pandas as pd

    frames = []
    for t, c in curves.items():
        meta = {"threshold_rule": c.threshold_rule.value, "acceptance": c.acceptance.value,
                "error_type": c.error_type.value}
        target_col, error_col = _rate_columns(c.error_type.value)
        n = c.discard_fraction.shape[0]
        cols: dict[str, Any] = {
            "method": [method] * n, "dataset": [dataset] * n, "fr_model": [fr_model] * n,
            target_col: np.full(n, t), "convention": [c.convention.value] * n,
        }
        cols.update({k: [v] * n for k, v in _extra_columns(meta).items()})
        cols.update({"discard_fraction": c.discard_fraction, error_col: c.error, "resolved": c.resolved})
        frames.append(pd.DataFrame(cols))
    return frames
