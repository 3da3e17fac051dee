"""Verification metrics of one comparison set: error rates, FNMR@FMR, FMR@FNMR, ROC, EER, accuracy.

numpy only; conventions, argument order and threshold rules: :mod:`exfiqa.evaluation.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from exfiqa.evaluation.rules import (
    DEFAULT_FMR_TARGETS,
    Acceptance,
    OperatingPoint,
    ThresholdRule,
    allowed_errors,
    as_labels,
    as_rule,
    as_vector,
    check_rate,
    check_rates,
    fm_point,
    fnm_point,
    is_strict,
    neg_distance,
    next_above,
)


def _scores(nonmated_scores: ArrayLike, mated_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    return as_vector(nonmated_scores, "nonmated_scores"), as_vector(mated_scores, "mated_scores")


def _x(scores: np.ndarray, strict: bool) -> np.ndarray:
    """The scores in the domain the rules work in: similarities, or negated angular distances."""
    return neg_distance(scores) if strict else scores


def _fnm_points(
    neg: np.ndarray, x_pos: np.ndarray, targets: list[float], rule: ThresholdRule, strict: bool
) -> list[OperatingPoint]:
    """The FNM-EDC operating point of each FMR target over all of ``neg`` (``x_pos``: mated, as :func:`_x`)."""
    if rule is ThresholdRule.AT_MOST and not strict:  # a partition finds the order statistics, no sort
        at = neg.shape[0] - 1 - np.array([allowed_errors(t, neg.shape[0]) for t in targets], dtype=np.int64)
        return [OperatingPoint(s, float(next_above(s))) for s in np.partition(neg, np.unique(at))[at]]
    x_neg = -np.sort(-_x(neg, strict))
    maybe = [fnm_point(x_neg, True, neg.shape[0], x_pos, t, rule, strict) for t in targets]
    return [p for p in maybe if p is not None]  # never None: every non-mated score is given


def threshold_at_fmr(
    nonmated_scores: ArrayLike,
    fmr: float,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    mated_scores: ArrayLike | None = None,
) -> float:
    """The threshold for an FMR target (a similarity, or an angular distance for ``distance<``);
    ``closest`` needs ``mated_scores`` (its ROC holds every score)."""
    neg = as_vector(nonmated_scores, "nonmated_scores")
    f, rule, strict = check_rate(fmr), as_rule(threshold_rule), is_strict(acceptance)
    fast = rule is ThresholdRule.AT_MOST and not strict  # reads no mated score
    if rule is ThresholdRule.CLOSEST and mated_scores is None:
        raise ValueError("mated_scores: the 'closest' rule picks a point of the ROC of all scores; pass them")
    pos = np.zeros(0) if mated_scores is None or fast else as_vector(mated_scores, "mated_scores")
    return _fnm_points(neg, _x(pos, strict), [f], rule, strict)[0].threshold


def error_rates(
    nonmated_scores: ArrayLike,
    mated_scores: ArrayLike,
    threshold: float,
    *,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
) -> tuple[float, float]:
    """``(FMR, FNMR)`` at ``threshold`` under ``acceptance``, compared in float64 whatever the scores' dtype."""
    neg, pos = _scores(nonmated_scores, mated_scores)
    t = np.float64(threshold)  # a numpy float64 (not a Python float): compared in float64 (NEP 50)
    if math.isnan(t):
        raise ValueError("threshold: is NaN")
    if is_strict(acceptance):
        d_neg, d_pos = -neg_distance(neg), -neg_distance(pos)
        return float(np.count_nonzero(d_neg < t) / neg.size), float(np.count_nonzero(d_pos >= t) / pos.size)
    neg64, pos64 = neg.astype(np.float64, copy=False), pos.astype(np.float64, copy=False)
    return float(np.count_nonzero(neg64 >= t) / neg.size), float(np.count_nonzero(pos64 < t) / pos.size)


def fnmr_at_fmr(
    nonmated_scores: ArrayLike,
    mated_scores: ArrayLike,
    fmr_targets: float | Sequence[float] = DEFAULT_FMR_TARGETS,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
) -> np.ndarray | float:
    """FNMR at the threshold of each FMR target (a float for a scalar target, else an array)."""
    neg, pos = _scores(nonmated_scores, mated_scores)
    targets = check_rates(fmr_targets)
    rule, strict = as_rule(threshold_rule), is_strict(acceptance)
    x_pos = _x(pos, strict)
    out = np.array([np.count_nonzero(x_pos <= p.e) / pos.size for p in _fnm_points(neg, x_pos, targets, rule, strict)])
    return float(out[0]) if np.isscalar(fmr_targets) else out


def fmr_at_fnmr(
    nonmated_scores: ArrayLike,
    mated_scores: ArrayLike,
    fnmr_targets: float | Sequence[float],
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
) -> np.ndarray | float:
    """FMR at the threshold of each FNMR target (FM-EDC's operating point; a float for a scalar target)."""
    neg, pos = _scores(nonmated_scores, mated_scores)
    targets = check_rates(fnmr_targets, "fnmr_targets")
    rule, strict = as_rule(threshold_rule), is_strict(acceptance)
    x_neg, x_pos = _x(neg, strict), np.sort(_x(pos, strict))
    points = [fm_point(x_pos, float(x_neg.max()), pos.shape[0], t, rule, strict) for t in targets]
    out = np.array([np.count_nonzero(x_neg >= p.e) / neg.size for p in points if p is not None])
    return float(out[0]) if np.isscalar(fnmr_targets) else out


def roc(nonmated_scores: ArrayLike, mated_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fmr, fnmr, thresholds)`` at every distinct score of both sets, ascending, then ``+inf``."""
    neg, pos = _scores(nonmated_scores, mated_scores)
    neg_s, pos_s = np.sort(neg), np.sort(pos)
    thr = np.append(np.unique(np.concatenate((neg_s, pos_s)).astype(np.float64)), np.inf)
    fmr = (neg_s.size - np.searchsorted(neg_s, thr, side="left")) / neg_s.size
    fnmr = np.searchsorted(pos_s, thr, side="left") / pos_s.size
    return fmr, fnmr, thr


def eer(nonmated_scores: ArrayLike, mated_scores: ArrayLike) -> float:
    """Equal error rate: ``(FMR + FNMR) / 2`` at the ROC threshold minimising ``|FMR - FNMR|``."""
    fmr, fnmr, _ = roc(nonmated_scores, mated_scores)
    i = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[i] + fnmr[i]) / 2)


class VerificationAccuracy(NamedTuple):
    """LFW-style accuracy: mean and (population) standard deviation over the test folds."""

    mean: float
    std: float
    folds: np.ndarray


def _best_cut(u: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.float64:
    """Threshold maximising accuracy given the training counts ``pos``/``neg`` at each distinct score
    ``u`` (ascending): the lowest best cut, placed at ``u[0]``, above ``u[-1]`` or at the float64
    midpoint of the two scores around it (accept ``s >= threshold``)."""
    pos_ge = pos.sum() - np.concatenate(([0], np.cumsum(pos)))  # positives >= u[k], k = 0..U
    neg_lt = np.concatenate(([0], np.cumsum(neg)))  # negatives < u[k]
    i = int(np.argmax(pos_ge + neg_lt))
    if i == 0:
        return np.float64(u[0])
    if i == u.size:
        return np.float64(next_above(u[-1]))
    return (np.float64(u[i - 1]) + np.float64(u[i])) / 2


def verification_accuracy(
    similarity: ArrayLike, mated: ArrayLike, n_folds: int = 10
) -> VerificationAccuracy:
    """LFW-protocol accuracy: ``n_folds`` contiguous folds in input order (as ``np.array_split``),
    each scored at the threshold that maximises the accuracy on the others (:func:`_best_cut`)."""
    s = as_vector(similarity, "similarity")
    y = as_labels(mated, s.shape[0])
    if int(n_folds) != n_folds or not (2 <= n_folds <= s.shape[0]):
        raise ValueError(f"n_folds: expected an integer in [2, {s.shape[0]}], got {n_folds!r}")
    # One sort of all scores; a fold's training counts are the totals minus the fold's own.
    u, inverse = np.unique(s, return_inverse=True)
    inv = inverse.astype(np.int32 if u.size < 2**31 else np.int64).ravel()
    pos_all, neg_all = np.bincount(inv[y], minlength=u.size), np.bincount(inv[~y], minlength=u.size)
    q_, r_ = divmod(s.shape[0], int(n_folds))  # the contiguous folds of np.array_split
    edges = np.cumsum([0] + [q_ + 1] * r_ + [q_] * (int(n_folds) - r_))
    acc = np.empty(int(n_folds))
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inv_f, y_f = inv[lo:hi], y[lo:hi]
        pos = pos_all - np.bincount(inv_f[y_f], minlength=u.size)
        neg = neg_all - np.bincount(inv_f[~y_f], minlength=u.size)
        keep = (pos + neg) > 0  # the distinct scores of the training folds
        t = _best_cut(u[keep], pos[keep], neg[keep])
        acc[i] = np.mean((s[lo:hi] >= t) == y_f)
    return VerificationAccuracy(float(acc.mean()), float(acc.std()), acc)
