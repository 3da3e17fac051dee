"""EDC curves (error versus discard characteristic, "ERC"): the two conventions and their engines.

numpy only (rules: :mod:`~exfiqa.evaluation.rules`, areas and rows: :mod:`~exfiqa.evaluation.pauc`,
interfaces: :mod:`~exfiqa.evaluation.scores`). Comparisons are discarded lowest pair quality first;
the curve is the FNMR at an FMR target (FNM-EDC, default) or the FMR at an FNMR target (FM-EDC).

``fixed`` (Schlett et al., IEEE T-BIOM 2023; ``edc.py`` of dasec/quality-assessment-evaluation):
the threshold is set once from all comparisons; only the comparisons the error is counted on
(mated for FNM-EDC, non-mated for FM-EDC) are discarded, equal qualities together, and
``discard_fraction`` is over them: a point at 0 and after each tie group but the last. pAUC:
stepwise area (each error holds until the next point, the last up to the limit), less the
area of a :class:`BestCurve` with ``subtract_best`` (``e0`` = the error at 0, n = the comparisons counted).

``recompute`` (the CR-FIQA group's ERC scripts): at level j = 0 .. 19 the ``floor(j * N / 20)``
comparisons of lowest pair quality among all N are discarded (stable sort), the threshold is
recomputed from the rest and the error measured on the remaining mated (non-mated) comparisons;
NaN where none of either kind is left. pAUC: trapezoid area up to the limit, the end point
interpolated linearly between grid points; ``subtract_best`` raises.

At discard 0 both give the plain error at the operating point. A target is *resolvable* when it
allows at least one error (:func:`resolvable`; per level under ``recompute``: :attr:`EDCCurve.resolved`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from exfiqa.evaluation.rules import (
    DEFAULT_FMR_TARGETS,
    N_LEVELS,
    RECOMPUTE_DISCARD_FRACTIONS,
    Acceptance,
    Convention,
    ErrorType,
    ThresholdRule,
    allowed_errors,
    as_acceptance,
    as_convention,
    as_error_type,
    as_rule,
    check_rate,
    check_rates,
    fm_point,
    fnm_point,
    is_strict,
    level_starts,
    resolvable,
)
from exfiqa.evaluation.scores import (
    ArrayOrder,
    Comparisons,
    min_candidates,
    rule_view,
    top_candidates,
)


@dataclass(frozen=True, eq=False)
class EDCCurve:
    """One EDC: the error (FNMR, or FMR for FM-EDCs; NaN where undefined) at ``target`` against
    ``discard_fraction``; ``thresholds`` in the units of ``acceptance``; ``n_mated``, ``n_nonmated``
    before discarding; ``n_target_base``: per point, the comparisons the target is a fraction of
    (None: the whole set's count, ``fixed`` only)."""

    discard_fraction: np.ndarray
    error: np.ndarray
    thresholds: np.ndarray
    target: float
    convention: Convention
    n_mated: int
    n_nonmated: int = 0
    error_type: ErrorType = ErrorType.FNMR
    threshold_rule: ThresholdRule = ThresholdRule.AT_MOST
    acceptance: Acceptance = Acceptance.SIMILARITY
    n_target_base: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("discard_fraction", "error", "thresholds"):
            a = np.array(getattr(self, name), dtype=np.float64)
            if a.ndim != 1:
                raise ValueError(f"EDCCurve.{name}: expected a 1-D array, got shape {a.shape}")
            a.setflags(write=False)
            arrays[name] = a
        n = arrays["discard_fraction"].shape[0]
        for name, a in arrays.items():
            if a.shape[0] != n:
                raise ValueError(f"EDCCurve.{name}: length {a.shape[0]} != discard_fraction {n}")
            object.__setattr__(self, name, a)
        f = arrays["discard_fraction"]
        if n == 0 or f[0] != 0 or np.any(np.diff(f) < 0) or f[-1] > 1:
            raise ValueError("EDCCurve.discard_fraction: must start at 0, ascend and stay <= 1")
        object.__setattr__(self, "target", check_rate(self.target, "EDCCurve.target"))
        for name, parse in (("convention", as_convention), ("error_type", as_error_type), ("threshold_rule", as_rule),
                            ("acceptance", as_acceptance)):
            object.__setattr__(self, name, parse(getattr(self, name)))
        if int(self.n_mated) < 1:
            raise ValueError(f"EDCCurve.n_mated: must be >= 1, got {self.n_mated}")
        if self.error_type is ErrorType.FMR and int(self.n_nonmated) < 1:
            raise ValueError(f"EDCCurve.n_nonmated: an FM-EDC needs >= 1, got {self.n_nonmated}")
        if self.n_target_base is not None:
            base = np.array(self.n_target_base, dtype=np.int64)
            if base.shape != (n,):
                raise ValueError(f"EDCCurve.n_target_base: expected shape ({n},), got {base.shape}")
            base.setflags(write=False)
            object.__setattr__(self, "n_target_base", base)

    @property
    def resolved(self) -> np.ndarray:
        """Per point: whether the target is resolvable there (:func:`resolvable`, :attr:`n_target_base`)."""
        base = self.n_target_base
        if base is None:
            if self.convention is Convention.RECOMPUTE:
                raise ValueError("EDCCurve.resolved: a 'recompute' curve needs n_target_base (the counts left per level)")
            base = np.full(self.discard_fraction.shape, int(self.n_nonmated if self.error_type is ErrorType.FNMR else self.n_mated))
        return resolvable(self.target, base)

    @property
    def fnmr(self) -> np.ndarray:
        """The FNMR at each point of an FNM-EDC (``error``)."""
        if self.error_type is not ErrorType.FNMR:
            raise AttributeError("EDCCurve.fnmr: this is an FM-EDC; its FMR is .error, its FNMR target .target")
        return self.error

    @property
    def n_counted(self) -> int:
        """Comparisons the error is counted on before discarding (mated, or non-mated for FM-EDC)."""
        return int(self.n_mated if self.error_type is ErrorType.FNMR else self.n_nonmated)


def _curve(comp: Any, frac: np.ndarray, err: np.ndarray, thr: Any, t: float, conv: Convention,
           e_type: ErrorType, rule: ThresholdRule, strict: bool, base: Any) -> EDCCurve:
    """The curve of ``comp``; a scalar threshold or base holds at every point."""
    acc = Acceptance.DISTANCE if strict else Acceptance.SIMILARITY
    thr, base = np.broadcast_to(thr, frac.shape), np.broadcast_to(base, frac.shape)
    return EDCCurve(frac, err, thr, t, conv, comp.n_m, comp.n_nm, e_type, rule, acc, base)


def _fixed_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule, strict: bool
) -> dict[float, EDCCurve]:
    """FNM-EDCs: threshold fixed from all non-mated comparisons (candidates grown as needed)."""
    m = int(allowed_errors(max(targets), comp.n_nm)) + 2
    while True:
        top_vals, _ = comp.top_nonmated(m)
        complete = top_vals.shape[0] >= comp.n_nm
        maybe = [fnm_point(top_vals, complete, comp.n_nm, comp.sim_m, t, rule, strict) for t in targets]
        points = [p for p in maybe if p is not None]
        if len(points) == len(maybe):
            break
        m = min(comp.n_nm, 4 * max(m, top_vals.shape[0]))
    q_m = order.quality(comp.mated_refs)
    o = np.argsort(q_m, kind="stable")
    qs, ss = q_m[o], comp.sim_m[o]
    discarded = np.concatenate(([0], np.flatnonzero(qs[1:] != qs[:-1]) + 1))
    frac = discarded / comp.n_m
    out = {}
    for t, p in zip(targets, points, strict=True):
        cum_err = np.concatenate(([0], np.cumsum(ss <= p.e)))
        fnmr = (cum_err[-1] - cum_err[discarded]) / (comp.n_m - discarded)
        out[t] = _curve(comp, frac, fnmr, p.threshold, t, Convention.FIXED, ErrorType.FNMR, rule, strict, comp.n_nm)
    return out


def _fixed_fm_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule, strict: bool
) -> dict[float, EDCCurve]:
    """FM-EDCs: threshold fixed from all mated comparisons, non-mated discarded (ties together)."""
    mated_asc = np.sort(comp.sim_m)
    max_nm = float(comp.top_nonmated(1)[0][0])
    # fm_point is None only when max_nm is unknown
    points = [p for t in targets if (p := fm_point(mated_asc, max_nm, comp.n_m, t, rule, strict)) is not None]
    need = float(min(p.e for p in points))  # every point is finite
    m = min_candidates()
    while True:  # the top non-mated candidates, grown until every one with x >= min(es) is held
        vals, refs = top_candidates(comp, m)
        if vals.shape[0] >= comp.n_nm or vals[-1] < need:
            break
        m = min(comp.n_nm, 4 * max(m, vals.shape[0]))
    uniq, counts = order.value_counts()
    q_m = np.asarray(order.quality(comp.mated_refs))
    nm_counts = counts - np.bincount(np.searchsorted(uniq, q_m), minlength=uniq.shape[0])
    keep = nm_counts > 0
    groups, nm_counts = uniq[keep], nm_counts[keep]
    discarded = np.cumsum(nm_counts) - nm_counts
    frac = discarded / comp.n_nm
    out = {}
    for t, p in zip(targets, points, strict=True):
        sel = vals >= p.e
        g = np.searchsorted(groups, np.asarray(order.quality(refs[sel])))
        per_group = np.bincount(g, minlength=groups.shape[0])
        left = per_group.sum() - (np.cumsum(per_group) - per_group)
        fmr = left / (comp.n_nm - discarded)
        out[t] = _curve(comp, frac, fmr, p.threshold, t, Convention.FIXED, ErrorType.FMR, rule, strict, comp.n_m)
    return out


def left_per_level(comp: Any, order: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``recompute``: which mated comparisons remain at each level (L, n_m), and how many mated and
    non-mated comparisons are left per level (from the levels of the mated ones only)."""
    remaining_m = np.asarray(order.levels(comp.mated_refs))[None, :] >= np.arange(N_LEVELS)[:, None]  # (L, n_m)
    n_m_j = remaining_m.sum(axis=1)
    return remaining_m, n_m_j, (comp.n - level_starts(comp.n)) - n_m_j


def _recompute_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule, strict: bool, e_type: ErrorType
) -> dict[float, EDCCurve]:
    """EDCs on the ``recompute`` grid: the threshold recomputed from the comparisons left at each
    level (non-mated for FNM-EDC, mated for FM-EDC), the error counted on the other kind."""
    remaining_m, n_m_j, n_nm_j = left_per_level(comp, order)
    fm = e_type is ErrorType.FMR
    if fm:
        levels = [j for j in range(N_LEVELS) if n_m_j[j] > 0 and n_nm_j[j] > 0]
        mated = {j: np.sort(comp.sim_m[remaining_m[j]]) for j in levels}
        m = min_candidates()
    else:
        levels = [j for j in range(N_LEVELS) if n_nm_j[j] > 0]
        m = max(4 * (int(allowed_errors(max(targets), comp.n_nm)) + 1), min_candidates())
    while True:
        top_vals, top_refs = top_candidates(comp, m)
        level_top = np.asarray(order.levels(top_refs))
        complete = top_vals.shape[0] >= comp.n_nm or m >= comp.n_nm
        es, thr = np.full((2, len(targets), N_LEVELS), np.nan)
        short = False
        for j in levels:
            pos = np.flatnonzero(level_top >= j)
            if not fm:
                nm_desc, mated_x = top_vals[pos], comp.sim_m[remaining_m[j]]
                maybe = [fnm_point(nm_desc, complete, int(n_nm_j[j]), mated_x, t, rule, strict) for t in targets]
            else:
                max_nm: float | None = float(top_vals[pos[0]]) if pos.size else None
                if max_nm is None and (complete or top_vals[-1] <= mated[j][-1]):
                    max_nm = -np.inf  # every remaining non-mated score lies below the candidates
                maybe = [fm_point(mated[j], max_nm, int(n_m_j[j]), t, rule, strict) for t in targets]
            for i, p in enumerate(maybe):
                if p is None:
                    short = True
                    continue
                es[i, j], thr[i, j] = p
                if fm and not complete and p.e <= top_vals[-1]:
                    short = True  # scores below the candidates could be false matches
        if not short or complete:
            break
        m *= 4
    if fm:  # every false match is among the candidates
        remaining = level_top >= np.arange(N_LEVELS)[:, None]
        x, counted, base, wrong = top_vals, n_nm_j, n_m_j, operator.ge
    else:
        remaining, x, counted, base, wrong = remaining_m, comp.sim_m, n_m_j, n_nm_j, operator.le
    out = {}
    for i, t in enumerate(targets):
        with np.errstate(invalid="ignore", divide="ignore"):
            err = (remaining & wrong(x[None, :], es[i][:, None])).sum(axis=1)
            rate = np.where((n_m_j > 0) & (n_nm_j > 0), err / counted, np.nan)
        out[t] = _curve(comp, RECOMPUTE_DISCARD_FRACTIONS, rate, thr[i], t, Convention.RECOMPUTE, e_type, rule, strict,
                        base)
    return out


def edc_curves(
    scores: Any,
    order: Any,
    targets: float | Sequence[float] | None = None,
    convention: Convention | str = Convention.RECOMPUTE,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> dict[float, EDCCurve]:
    """EDCs, keyed by target, from a scores and an order object (:mod:`exfiqa.evaluation.scores`;
    reads only the mated and the top non-mated comparisons). ``targets``: FMR targets of an FNM-EDC
    (default :data:`DEFAULT_FMR_TARGETS`) or FNMR targets of an FM-EDC (required)."""
    conv, rule, e_type = as_convention(convention), as_rule(threshold_rule), as_error_type(error_type)
    strict = is_strict(acceptance)
    if targets is None and e_type is ErrorType.FMR:
        raise ValueError("targets: an FM-EDC needs its FNMR targets (there is no default)")
    tg = check_rates(DEFAULT_FMR_TARGETS if targets is None else targets, "targets")
    comp = rule_view(scores, strict)
    if conv is Convention.RECOMPUTE:
        return _recompute_curves(comp, order, tg, rule, strict, e_type)
    return (_fixed_fm_curves if e_type is ErrorType.FMR else _fixed_curves)(comp, order, tg, rule, strict)


def edc(
    similarity: ArrayLike,
    mated: ArrayLike,
    quality: ArrayLike,
    target: float = 1e-3,
    convention: Convention | str = Convention.RECOMPUTE,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> EDCCurve:
    """The EDC of one quality measure (one ``similarity``, ``mated``, ``quality`` per comparison) at
    ``target``: an FMR target, or the FNMR target of an FM-EDC (``error_type="fmr"``)."""
    rules = {"threshold_rule": threshold_rule, "acceptance": acceptance, "error_type": error_type}
    return edc_many(similarity, mated, quality, (target,), convention, **rules)[check_rate(target, "target")]


def edc_many(
    similarity: ArrayLike,
    mated: ArrayLike,
    quality: ArrayLike,
    targets: Sequence[float] | None = None,
    convention: Convention | str = Convention.RECOMPUTE,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> dict[float, EDCCurve]:
    """EDCs at several targets sharing one pass over the data; keyed by target (see :func:`edc`)."""
    comp = Comparisons(similarity, mated)
    return edc_curves(comp, ArrayOrder(comp.quality(quality)), targets, convention,
                      threshold_rule=threshold_rule, acceptance=acceptance, error_type=error_type)
