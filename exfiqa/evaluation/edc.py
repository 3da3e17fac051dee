"""EDC curves (error versus discard characteristic): the two conventions and their engines.

numpy only. The rules (threshold rule,
acceptance, error type) and the vocabulary: :mod:`exfiqa.evaluation.rules`; areas, metadata and
tidy rows: :mod:`exfiqa.evaluation.pauc`; the scores and order interfaces the engine reads:
:mod:`exfiqa.evaluation.scores`.

EDC (error-versus-discard characteristic, "ERC" in older papers) and pAUC
--------------------------------------------------------------------------
Comparisons are discarded lowest pair quality first and an error rate at a fixed operating
point is plotted against the discarded fraction: the FNMR at an FMR target (FNM-EDC, the
default) or the FMR at an FNMR target (FM-EDC, Schlett et al.'s second error type;
:class:`ErrorType`). Two conventions exist (:class:`Convention`); every pAUC this package writes
carries its convention, limit, scale and, where they differ from the defaults, its rules
(:func:`pauc_meta`, :data:`PAUC_META`, the columns of :func:`pauc_rows`).

``fixed`` (Schlett et al., "Considerations on the evaluation of biometric quality assessment
algorithms", IEEE T-BIOM 2023; reference ``edc.py`` in dasec/quality-assessment-evaluation):
    * The threshold is set **once**, before discarding, from **all** comparisons (rules above).
    * Only the comparisons the error is counted on are discarded and counted: **mated** ones for
      FNM-EDC (once the threshold is fixed, non-mated comparisons cannot change an FNMR),
      **non-mated** ones for FM-EDC. ``discard_fraction`` = discarded / all of them. The
      qualities of the other kind are ignored (but still validated).
    * Comparisons with equal pair quality are discarded together: the curve has a point at 0 and
      after each quality-tie group except the last (after which no comparison is left and the
      error is undefined; Schlett's code appends a plotting point (1, 0) there, which changes no
      area up to a limit <= 1).
    * pAUC is the **stepwise** area: the error at a discard point holds until the next discard
      point (right-continuous step), the last point's error holds up to the limit, and the step
      that contains the limit is cut there.
    * ``subtract_best`` subtracts the area under a theoretical best curve (:class:`BestCurve`),
      ``e0`` being the error at 0 discard and ``f`` the discard fraction. ``triangle`` (the
      default when subtracting, ``True``; Schlett's ``compute_edc_area_under_theoretical_best``):
      ``max(0, e0 - f)`` integrated exactly, ``e0**2 / 2 - max(0, e0 - limit)**2 / 2``.
      ``stepwise``: the curve of a quality that discards the errors first,
      ``max(0, e0 - f) / (1 - f)``, integrated with the same stepwise rule on the finest discard
      grid ``f = i / n``, i = 0 .. n - 1 (n = the comparisons counted): exactly the pAUC of such a
      perfect quality with distinct values, independent of the tie structure of the quality
      evaluated. ``pAUC - best >= 0`` for every quality under both (the stepwise best lies above
      the triangle). Both depend on ``e0`` and n only, which no quality changes: for one FR model
      and target the two subtractions differ by a constant, and no ranking of qualities moves.

``recompute`` (the CR-FIQA group's ERC scripts, used by CR-FIQA, ViT-FIQA and EX-FIQA):
    * Nominal discard fractions ``0, 0.05, ..., 0.95`` of **all** comparisons (mated and non-mated
      together). At level j the ``floor(j * N / 20)`` comparisons of lowest pair quality are
      discarded, using a **stable** sort by quality (ties broken by input position; the scripts'
      boundaries are the same, their tie order is not: see above).
    * At each level the threshold is **recomputed** from the remaining comparisons (rules above)
      and the error is measured on the remaining mated (FNM-EDC) or non-mated (FM-EDC, our
      extension: the scripts compute FNM-EDCs only) comparisons. A level without remaining mated
      or non-mated comparisons has error NaN.
    * pAUC is the **trapezoid** area over the points with discard fraction <= limit (default 0.3);
      a limit between grid points ends the area at a linearly interpolated point. (The scripts
      pass all 20 points to ``sklearn.metrics.auc``, i.e. a limit of 0.95; the papers' figures shade
      0 to 0.3.) ``subtract_best`` is not defined for this convention and raises.

Where the two conventions must agree: at discard 0 both give the plain error at the operating
point over all comparisons (:func:`fnmr_at_fmr`, :func:`fmr_at_fnmr`); and when every comparison
that a ``recompute`` level discards is mated (all non-mated comparisons have higher quality), the
recomputed FNM-EDC threshold equals the fixed one and the ``recompute`` FNMR at that level equals
the ``fixed`` FNMR after discarding the same mated comparisons. Otherwise they differ:
``recompute`` also discards the other kind, moving the threshold, and measures the discard
fraction over all comparisons.

Resolvable targets
------------------
A target rate needs at least one expected error at its threshold to mean what it says: an FMR
target ``fmr`` over ``n`` non-mated comparisons is *resolvable* when ``fmr * n >= 1``
(:func:`resolvable`; FM-EDC: the FNMR target over the mated comparisons). Below that the rules
above admit no false match at all, so every smaller target gives the same threshold and curve
(300 non-mated comparisons: FMR 1e-3 and 1e-4 give identical EDCs). Under ``fixed`` the whole
set decides; under ``recompute`` the threshold is recomputed from the comparisons left at each
level, so each level counts its own (:attr:`EDCCurve.resolved`). A pAUC is resolved when every
point its area reads is (:func:`exfiqa.evaluation.pauc.pauc_resolved`,
:func:`exfiqa.evaluation.pauc.resolved_for`); tidy frames carry this as the boolean column
``resolved`` (:func:`exfiqa.evaluation.pauc.pauc_rows`, :func:`exfiqa.evaluation.pauc.edc_rows`). The value is still computed
and written: the flag says it cannot separate the targets below that count.
"""

from __future__ import annotations

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
    OperatingPoint,
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
    next_above,
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
    """One EDC: an error rate at a fixed operating point against the discarded fraction.

    Attributes:
        discard_fraction: Discarded fraction at each point, ascending, starting at 0 (``fixed``:
            of the comparisons the error is counted on, mated for FNM-EDC and non-mated for
            FM-EDC; ``recompute``: nominal fraction of all comparisons).
        error: The error at each point (NaN where undefined): FNMR of the remaining mated
            comparisons (FNM-EDC) or FMR of the remaining non-mated ones (FM-EDC).
        thresholds: Threshold used at each point (constant under ``fixed``), in the units of
            ``acceptance``: a similarity (``similarity>=``) or an angular distance (``distance<``).
        target: The fixed rate of the operating point: an FMR (FNM-EDC) or an FNMR (FM-EDC).
        convention: The :class:`Convention` that produced the curve.
        n_mated: Number of mated comparisons before discarding.
        n_nonmated: Number of non-mated comparisons before discarding.
        error_type, threshold_rule, acceptance: The rules that produced it.
        n_target_base: At each point, the comparisons the target rate is a fraction of: the
            non-mated comparisons (FNM-EDC; mated for FM-EDC) the threshold is set from. Under
            ``fixed`` the whole set's count at every point; under ``recompute`` those left at
            each level. None (a hand-made curve): the whole set's count, ``fixed`` only.

    ``fnmr`` and ``fmr`` (the error and the target of an FNM-EDC) remain as read-only aliases.
    :attr:`resolved` says where the target is resolvable (:func:`resolvable`).
    """

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
        object.__setattr__(self, "convention", as_convention(self.convention))
        object.__setattr__(self, "target", check_rate(self.target, "EDCCurve.target"))
        object.__setattr__(self, "error_type", as_error_type(self.error_type))
        object.__setattr__(self, "threshold_rule", as_rule(self.threshold_rule))
        object.__setattr__(self, "acceptance", as_acceptance(self.acceptance))
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
        """Per point: whether the target is resolvable there (:func:`resolvable` of the target
        and :attr:`n_target_base`)."""
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
    def fmr(self) -> float:
        """The FMR target of an FNM-EDC (``target``)."""
        if self.error_type is not ErrorType.FNMR:
            raise AttributeError("EDCCurve.fmr: this is an FM-EDC; its FMR is .error, its FNMR target .target")
        return self.target

    @property
    def n_counted(self) -> int:
        """Comparisons the error is counted on before discarding (mated, or non-mated for FM-EDC)."""
        return int(self.n_mated if self.error_type is ErrorType.FNMR else self.n_nonmated)


def _reported(stat: np.ndarray | float, strict: bool) -> np.ndarray:
    """``at_most`` FNM-EDC thresholds from the order statistics (NaN stays NaN)."""
    return -np.asarray(stat, dtype=np.float64) if strict else next_above(stat)


def _curve(comp: Any, frac: np.ndarray, err: np.ndarray, thr: np.ndarray, t: float, conv: Convention,
           e_type: ErrorType, rule: ThresholdRule, strict: bool, base: np.ndarray) -> EDCCurve:
    acc = Acceptance.DISTANCE if strict else Acceptance.SIMILARITY
    return EDCCurve(frac, err, thr, t, conv, comp.n_m, comp.n_nm, e_type, rule, acc, base)


def _fnm_candidates(comp: Any, targets: list[float], rule: ThresholdRule, strict: bool, m: int) -> list[OperatingPoint]:
    """The fixed operating points of an FNM-EDC from all comparisons (candidates grown as needed)."""
    while True:
        top_vals, _ = comp.top_nonmated(m)
        complete = top_vals.shape[0] >= comp.n_nm
        points = [fnm_point(top_vals, complete, comp.n_nm, comp.sim_m, t, rule, strict) for t in targets]
        found = [p for p in points if p is not None]
        if len(found) == len(points):
            return found
        m = min(comp.n_nm, 4 * max(m, top_vals.shape[0]))


def _fixed_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule = ThresholdRule.AT_MOST,
    strict: bool = False, e_type: ErrorType = ErrorType.FNMR,
) -> dict[float, EDCCurve]:
    if e_type is ErrorType.FMR:
        return _fixed_fm_curves(comp, order, targets, rule, strict)
    ks = [int(allowed_errors(t, comp.n_nm)) for t in targets]
    if rule is ThresholdRule.AT_MOST:
        top_vals, _ = comp.top_nonmated(max(ks) + 1)
        points = [OperatingPoint(top_vals[k], np.nan) for k in ks]
    else:
        points = _fnm_candidates(comp, targets, rule, strict, max(ks) + 2)
    q_m = order.quality(comp.mated_refs)
    o = np.argsort(q_m, kind="stable")
    qs, ss = q_m[o], comp.sim_m[o]
    discarded = np.concatenate(([0], np.flatnonzero(qs[1:] != qs[:-1]) + 1))
    frac = discarded / comp.n_m
    out = {}
    for t, p in zip(targets, points, strict=True):
        stat = p.e
        cum_err = np.concatenate(([0], np.cumsum(ss <= stat)))
        fnmr = (cum_err[-1] - cum_err[discarded]) / (comp.n_m - discarded)
        reported = _reported(stat, strict) if rule is ThresholdRule.AT_MOST else p.threshold
        thr = np.full(frac.shape, reported)
        out[t] = _curve(comp, frac, fnmr, thr, t, Convention.FIXED, ErrorType.FNMR, rule, strict, np.full(frac.shape, comp.n_nm))
    return out


def _fm_errors(comp: Any, es: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top non-mated candidates, grown until every one with ``x >= min(es)`` is held."""
    need = float(np.nanmin(es)) if np.isfinite(es).any() else np.inf
    m = min_candidates()
    while True:
        vals, refs = top_candidates(comp, m)
        if vals.shape[0] >= comp.n_nm or vals[-1] < need:
            return vals, refs
        m = min(comp.n_nm, 4 * max(m, vals.shape[0]))


def _fixed_fm_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule, strict: bool
) -> dict[float, EDCCurve]:
    """FM-EDCs: threshold fixed from all mated comparisons, non-mated discarded (ties together)."""
    mated_asc = np.sort(comp.sim_m)
    max_nm = float(comp.top_nonmated(1)[0][0])
    maybe = [fm_point(mated_asc, max_nm, comp.n_m, t, rule, strict) for t in targets]
    points = [p for p in maybe if p is not None]
    assert len(points) == len(maybe)  # fm_point is None only when max_nm is unknown
    vals, refs = _fm_errors(comp, np.array([p.e for p in points], dtype=np.float64))
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
        out[t] = _curve(comp, frac, fmr, np.full(frac.shape, p.threshold), t, Convention.FIXED, ErrorType.FMR, rule, strict,
                        np.full(frac.shape, comp.n_m))
    return out


def left_per_level(comp: Any, order: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``recompute``, for a scores and an order object (:mod:`exfiqa.evaluation.scores`): which mated comparisons remain at each level (L, n_m), and how many mated
    and non-mated comparisons are left per level (from the levels of the mated ones only)."""
    d = level_starts(comp.n)
    level_m = np.asarray(order.levels(comp.mated_refs))
    remaining_m = level_m[None, :] >= np.arange(N_LEVELS)[:, None]  # (L, n_m)
    n_m_j = remaining_m.sum(axis=1)
    return remaining_m, n_m_j, (comp.n - d) - n_m_j


def _recompute_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule = ThresholdRule.AT_MOST,
    strict: bool = False, e_type: ErrorType = ErrorType.FNMR,
) -> dict[float, EDCCurve]:
    remaining_m, n_m_j, n_nm_j = left_per_level(comp, order)
    if e_type is ErrorType.FMR:
        return _recompute_fm_curves(comp, order, targets, rule, strict, remaining_m, n_m_j, n_nm_j)
    k_max = int(allowed_errors(max(targets), comp.n_nm))
    m = max(4 * (k_max + 1), min_candidates())
    while True:
        top_vals, top_refs = top_candidates(comp, m)
        level_top = np.asarray(order.levels(top_refs))
        stats = np.full((len(targets), N_LEVELS), np.nan)
        thr = np.full((len(targets), N_LEVELS), np.nan)
        complete = top_vals.shape[0] >= comp.n_nm or m >= comp.n_nm
        short = False
        for j in range(N_LEVELS):
            if n_nm_j[j] == 0:
                continue
            pos = np.flatnonzero(level_top >= j)
            if rule is ThresholdRule.AT_MOST:
                for i, t in enumerate(targets):
                    k = int(allowed_errors(t, n_nm_j[j]))
                    if k < pos.shape[0]:
                        stats[i, j] = top_vals[pos[k]]
                    else:
                        short = True
                continue
            nm_desc, mated_x = top_vals[pos], comp.sim_m[remaining_m[j]]
            for i, t in enumerate(targets):
                p = fnm_point(nm_desc, complete, int(n_nm_j[j]), mated_x, t, rule, strict)
                if p is None:
                    short = True
                else:
                    stats[i, j], thr[i, j] = p
        if not short or complete:
            break
        m *= 4
    out = {}
    for i, t in enumerate(targets):
        with np.errstate(invalid="ignore", divide="ignore"):
            err = (remaining_m & (comp.sim_m[None, :] <= stats[i][:, None])).sum(axis=1)
            fnmr = np.where((n_m_j > 0) & (n_nm_j > 0), err / n_m_j, np.nan)
        reported = _reported(stats[i], strict) if rule is ThresholdRule.AT_MOST else thr[i]
        out[t] = _curve(comp, RECOMPUTE_DISCARD_FRACTIONS, fnmr, reported, t, Convention.RECOMPUTE,
                        ErrorType.FNMR, rule, strict, n_nm_j)
    return out


def _recompute_fm_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule, strict: bool,
    remaining_m: np.ndarray, n_m_j: np.ndarray, n_nm_j: np.ndarray,
) -> dict[float, EDCCurve]:
    """FM-EDCs on the ``recompute`` grid: the threshold recomputed from the remaining mated
    comparisons at each level, the FMR counted on the remaining non-mated ones."""
    live = [j for j in range(N_LEVELS) if n_m_j[j] > 0 and n_nm_j[j] > 0]
    mated = {j: np.sort(comp.sim_m[remaining_m[j]]) for j in live}
    m = min_candidates()
    while True:
        top_vals, top_refs = top_candidates(comp, m)
        level_top = np.asarray(order.levels(top_refs))
        complete = top_vals.shape[0] >= comp.n_nm or m >= comp.n_nm
        es = np.full((len(targets), N_LEVELS), np.nan)
        thr = np.full((len(targets), N_LEVELS), np.nan)
        short = False
        for j in live:
            first = np.flatnonzero(level_top >= j)[:1]
            if first.size:
                max_nm: float | None = float(top_vals[first[0]])
            else:  # every remaining non-mated score lies below the candidates
                max_nm = -np.inf if complete or top_vals[-1] <= mated[j][-1] else None
            for i, t in enumerate(targets):
                p = fm_point(mated[j], max_nm, int(n_m_j[j]), t, rule, strict)
                if p is None:
                    short = True
                    continue
                es[i, j], thr[i, j] = p
                if not complete and p.e <= top_vals[-1]:
                    short = True  # scores below the candidates could be false matches
        if not short or complete:
            break
        m *= 4
    remaining_c = level_top[None, :] >= np.arange(N_LEVELS)[:, None]  # (L, K)
    out = {}
    for i, t in enumerate(targets):
        with np.errstate(invalid="ignore", divide="ignore"):
            err = (remaining_c & (top_vals[None, :] >= es[i][:, None])).sum(axis=1)
            fmr = np.where((n_m_j > 0) & (n_nm_j > 0), err / n_nm_j, np.nan)
        out[t] = _curve(comp, RECOMPUTE_DISCARD_FRACTIONS, fmr, thr[i], t, Convention.RECOMPUTE,
                        ErrorType.FMR, rule, strict, n_m_j)
    return out


def _targets(targets: float | Sequence[float] | None, e_type: ErrorType) -> list[float]:
    if targets is None:
        if e_type is ErrorType.FMR:
            raise ValueError("targets: an FM-EDC needs its FNMR targets (there is no default)")
        targets = DEFAULT_FMR_TARGETS
    return check_rates(targets, "targets")


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
    """EDCs from prepared comparison scores and a prepared quality order (bounded evaluation).

    The engine behind :func:`edc_many`, for comparison sets that are not held as arrays
    (:mod:`exfiqa.evaluation.pairs`: template pair lists, implicit all-vs-all). ``scores`` provides
    ``n``, ``n_m``, ``n_nm``, ``sim_m`` (mated similarities in comparison order), ``mated_refs``
    and ``top_nonmated(m)`` (at least ``min(m, n_nm)`` highest non-mated similarities, descending,
    ties in comparison order, with their references; every other non-mated similarity strictly
    lower). ``order`` provides ``levels(refs)``, ``ranks(refs)`` and ``quality(refs)`` of the
    stable pair-quality order (ties broken by comparison position), and ``value_counts()`` (FM-EDC
    under ``fixed``). Only the mated and the top non-mated comparisons are touched, so the results
    are those of :func:`edc_many` on the materialised arrays, exactly.

    ``targets``: FMR targets of an FNM-EDC (default :data:`DEFAULT_FMR_TARGETS`) or FNMR targets
    of an FM-EDC (required); keyed by target. ``threshold_rule``, ``acceptance``: module docstring.
    """
    conv, rule, e_type = as_convention(convention), as_rule(threshold_rule), as_error_type(error_type)
    strict = is_strict(acceptance)
    tg = _targets(targets, e_type)
    comp = rule_view(scores, strict)
    if conv is Convention.FIXED:
        return _fixed_curves(comp, order, tg, rule, strict, e_type)
    return _recompute_curves(comp, order, tg, rule, strict, e_type)


def _edc_prepared(
    comp: Comparisons,
    quality: ArrayLike,
    targets: float | Sequence[float] | None,
    convention: Convention | str,
    **rules: Any,
) -> dict[float, EDCCurve]:
    return edc_curves(comp, ArrayOrder(comp.quality(quality)), targets, convention, **rules)


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
    """The EDC of one quality measure: by default FNMR at an FMR target against the discarded fraction.

    Args:
        similarity: Similarity score of every comparison (higher = more alike).
        mated: True for mated comparisons, same length.
        quality: Pair quality of every comparison (higher = better), same length.
        target: FMR target in (0, 1) (FNM-EDC), or the FNMR target of an FM-EDC.
        convention: ``"recompute"`` (default, as the paper) or ``"fixed"`` (module docstring).
        threshold_rule, acceptance: How the target selects the threshold and what is accepted
            (module docstring); :func:`compat_rules` names the authors' scripts' rules.
        error_type: ``"fnmr"`` (FNM-EDC, default) or ``"fmr"`` (FM-EDC).
    """
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
    rules = {"threshold_rule": threshold_rule, "acceptance": acceptance, "error_type": error_type}
    return _edc_prepared(Comparisons(similarity, mated), quality, targets, convention, **rules)
