"""pAUC of an EDC (area rules: :mod:`exfiqa.evaluation.edc`), whether it is resolved, the metadata
stored beside every pAUC, and the tidy rows of EDCs and pAUCs. numpy only (pandas in :func:`edc_rows`).
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
    RULE_DESCRIPTIONS,
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
    resolvable,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def resolved_for(
    scores: Any,
    order: Any,
    target: float,
    convention: Convention | str = Convention.RECOMPUTE,
    limit: float = 0.3,
    *,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> bool:
    """:func:`pauc_resolved` of the EDC of ``scores`` and ``order`` (as :func:`edc_curves`), without the curve."""
    conv, e_type = as_convention(convention), as_error_type(error_type)
    if conv is Convention.FIXED:
        return bool(resolvable(target, int(scores.n_nm if e_type is ErrorType.FNMR else scores.n_m)))
    _, n_m_j, n_nm_j = left_per_level(scores, order)
    base = n_nm_j if e_type is ErrorType.FNMR else n_m_j
    curve = EDCCurve(RECOMPUTE_DISCARD_FRACTIONS, np.zeros(N_LEVELS), np.zeros(N_LEVELS), target, conv,
                     max(int(scores.n_m), 1), int(scores.n_nm), n_target_base=base)
    return pauc_resolved(curve, limit)


def pauc_resolved(curve: EDCCurve, limit: float = 0.3) -> bool:
    """Whether every point a :func:`pauc` up to ``limit`` reads has a resolvable target (:attr:`EDCCurve.resolved`)."""
    lim, frac = check_limit(limit), curve.discard_fraction
    inside = frac <= lim + 1e-12
    if curve.convention is Convention.RECOMPUTE:  # and the next point, read by an interpolated end point
        i = int(inside.sum())
        if frac[i - 1] < lim - 1e-12 and i < frac.shape[0]:
            inside[i] = True
    return bool(curve.resolved[inside].all())


def stepwise_area(frac: np.ndarray, err: np.ndarray, limit: float) -> np.ndarray:
    """Area under right-continuous steps along the last axis, the last step held to ``limit``."""
    nxt = np.concatenate((frac[..., 1:], np.full(frac.shape[:-1] + (1,), np.inf)), axis=-1)
    width = np.minimum(nxt, limit) - np.minimum(frac, limit)
    return np.asarray(np.where(width > 0, err * width, 0.0).sum(axis=-1))


def trapezoid_area(frac: np.ndarray, err: np.ndarray, limit: float) -> float:
    """Trapezoid area up to ``limit``, interpolated there; raises on NaN read or a limit beyond the grid."""
    if limit > frac[-1] + 1e-12:
        raise ValueError(f"limit: {limit} lies beyond the last discard fraction of the curve ({frac[-1]})")
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
    """Partial area under an EDC from discard fraction 0 to ``limit`` (lower is better, unscaled).

    ``fixed``: stepwise; ``subtract_best``: ``True``/``"triangle"`` or ``"stepwise"`` best curve.
    ``recompute``: trapezoid; ``subtract_best`` raises.
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
        raise ValueError("subtract_best: the theoretical best curve is defined for the 'fixed' convention only")
    return trapezoid_area(curve.discard_fraction, curve.error, lim)


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
    """Everything needed to read a pAUC number, stored beside every pAUC written (``scale``: the
    factor printed numbers were multiplied by); ``subtract_best`` raises under ``recompute``."""
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
    static["threshold"] += f"; {RULE_DESCRIPTIONS[rule, e_type]}; accept {acc.value}"
    return {
        "metric": f"pAUC-EDC ({'FMR at fixed FNMR' if fm else 'FNMR at fixed FMR'} vs discarded fraction)",
        "convention": conv.value, "limit": check_limit(limit), "subtract_best": best is not None,
        "best_curve": best.value if best is not None else "none", "scale": float(scale),
        "threshold_rule": rule.value, "acceptance": acc.value, "error_type": e_type.value, **static,
        "tie_order": TIE_ORDER_NOTE if conv is Convention.RECOMPUTE else "none: equal qualities are discarded together",
    }


def _extra_columns(rule: str, acceptance: str, error_type: str) -> dict[str, Any]:
    """Rule columns, present only where a rule differs from the defaults."""
    out: dict[str, Any] = {}
    if rule != ThresholdRule.AT_MOST.value or acceptance != Acceptance.SIMILARITY.value:
        out.update(threshold_rule=rule, acceptance=acceptance)
    if error_type != ErrorType.FNMR.value:
        out["error_type"] = error_type
    return out


def pauc_rows(
    method: str, dataset: str, fr_model: str, curves: Mapping[float, EDCCurve], meta: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Rows of a tidy pAUC table, one per target, under ``meta`` (:func:`pauc_meta`).

    Columns ``method, dataset, fr_model, fmr`` (``fnmr`` for FM-EDCs), ``convention, limit,
    subtract_best, scale``, ``best_curve`` when subtracting, the rule columns that differ from the
    defaults, ``pauc`` (times ``scale``) and ``resolved`` (:func:`pauc_resolved`).
    """
    target_col = "fmr" if meta["error_type"] == ErrorType.FNMR.value else "fnmr"
    extra = ({"best_curve": meta["best_curve"]} if meta["subtract_best"] else {})
    extra |= _extra_columns(meta["threshold_rule"], meta["acceptance"], meta["error_type"])
    return [{
        "method": method, "dataset": dataset, "fr_model": fr_model, target_col: t,
        "convention": meta["convention"], "limit": meta["limit"], "subtract_best": meta["subtract_best"],
        "scale": meta["scale"], **extra, "pauc": pauc(c, meta["limit"], meta["best_curve"]) * meta["scale"],
        "resolved": pauc_resolved(c, meta["limit"]),
    } for t, c in curves.items()]


def edc_rows(method: str, dataset: str, fr_model: str, curves: Mapping[float, EDCCurve]) -> list[pd.DataFrame]:
    """Tidy EDC points, one frame per target: the key and rule columns of :func:`pauc_rows`,
    ``discard_fraction``, the error (``fnmr``, or ``fmr`` for FM-EDCs) and ``resolved``."""
    import pandas as pd

    frames = []
    for t, c in curves.items():
        target_col, error_col = ("fmr", "fnmr") if c.error_type is ErrorType.FNMR else ("fnmr", "fmr")
        keys = {"method": method, "dataset": dataset, "fr_model": fr_model, target_col: t,
                "convention": c.convention.value}
        keys |= _extra_columns(c.threshold_rule.value, c.acceptance.value, c.error_type.value)
        cols: dict[str, Any] = {k: [v] * c.discard_fraction.shape[0] for k, v in keys.items()}
        cols |= {"discard_fraction": c.discard_fraction, error_col: c.error, "resolved": c.resolved}
        frames.append(pd.DataFrame(cols))
    return frames
