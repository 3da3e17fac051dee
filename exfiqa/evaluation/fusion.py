"""Fusion of per-exit quality scores: pure functions from an (N, L) matrix to (N,) scores.

Column ``l-1`` holds exit ``l`` (1-based depth). Fused score ``s = sum_l w_l * s_l`` with weights
summing to 1. EX-FIQA-F: ``w_l = 1/L``. EX-FIQA-FW: ``w_l = l / (L(L+1)/2)`` (``l/78`` for 12
exits), no per-exit normalisation. The named strategies: :func:`strategies`. EX-FIQA-DC (beyond the
paper): the plain mean of exits chosen on calibration data (:func:`choose_exits`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _matrix(scores: ArrayLike, where: str = "") -> NDArray[np.float64]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(f"{where}scores must be an (N, L) matrix of exit scores, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{where}scores contain NaN or infinite values")
    return s


def uniform_weights(n_exits: int) -> NDArray[np.float64]:
    """EX-FIQA-F weights: ``1/L`` each."""
    return np.full(n_exits, 1.0 / n_exits)


def depth_ramp(n_exits: int) -> NDArray[np.float64]:
    """EX-FIQA-FW's unnormalised weights ``1, 2, ..., L`` (float64; running FW means are
    ``cumsum(s * ramp) / cumsum(ramp)``)."""
    return np.arange(1, n_exits + 1, dtype=np.float64)


def depth_weights(n_exits: int) -> NDArray[np.float64]:
    """EX-FIQA-FW weights: the float64 quotients ``l / (L(L+1)/2)`` (1-based ``l``), summing to 1."""
    w = depth_ramp(n_exits)
    return np.asarray(w / w.sum(), dtype=np.float64)


def last_k_weights(n_exits: int, k: int) -> NDArray[np.float64]:
    """Uniform weights over the last ``k`` exits, zero before."""
    if not 1 <= k <= n_exits:
        raise ValueError(f"k must lie in 1..{n_exits}, got {k}")
    w = np.zeros(n_exits)
    w[-k:] = 1.0 / k
    return w


def exponential_weights(n_exits: int, rate: float = 0.3) -> NDArray[np.float64]:
    """``w_l`` proportional to ``exp(rate * l)``: deeper exits count exponentially more."""
    w = np.exp(rate * np.arange(1, n_exits + 1, dtype=np.float64))
    return np.asarray(w / w.sum(), dtype=np.float64)


def fuse(scores: ArrayLike, weights: ArrayLike) -> NDArray[np.float64]:
    """Weighted sum of exit scores: ``scores @ weights`` (weights are used as given)."""
    s = _matrix(scores)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (s.shape[1],):
        raise ValueError(f"weights must have shape ({s.shape[1]},), got {w.shape}")
    return s @ w


def ex_fiqa_f(scores: ArrayLike) -> NDArray[np.float64]:
    """EX-FIQA-F: mean of all exit scores (``strategies(L)["EX-FIQA-F"].apply``)."""
    s = _matrix(scores)
    return fuse(s, uniform_weights(s.shape[1]))


def ex_fiqa_fw(scores: ArrayLike) -> NDArray[np.float64]:
    """EX-FIQA-FW: depth-weighted mean, ``w_l`` proportional to ``l`` (``strategies(L)["EX-FIQA-FW"].apply``)."""
    s = _matrix(scores)
    return fuse(s, depth_weights(s.shape[1]))


def zscore_fuse(
    scores: ArrayLike, weights: ArrayLike | None = None, reference: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Fuse after standardising each exit (mean 0, std 1 over ``reference``, default ``scores``);
    default weights: depth weights."""
    s = _matrix(scores)
    ref = s if reference is None else _matrix(reference)
    std = ref.std(axis=0)
    std[std == 0] = 1.0
    z = (s - ref.mean(axis=0)) / std
    return fuse(z, depth_weights(s.shape[1]) if weights is None else weights)


@dataclass(frozen=True, eq=False)
class Strategy:
    """A named fusion of (N, L) exit scores into (N,) scores: exactly one of ``weights`` (for
    :func:`fuse`) or ``scorer`` (a function of the score matrix, e.g. :func:`zscore_fuse`)."""

    name: str
    weights: NDArray[np.float64] | None = None
    scorer: Callable[[ArrayLike], NDArray[np.float64]] | None = None

    def __post_init__(self) -> None:
        if (self.weights is None) == (self.scorer is None):
            raise ValueError(f"fusion strategy {self.name!r}: give exactly one of weights or scorer")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.ndim != 1 or w.size < 1:
                raise ValueError(f"fusion strategy {self.name!r}: weights must be one value per exit, got shape {w.shape}")
            object.__setattr__(self, "weights", w)

    def apply(self, scores: ArrayLike) -> NDArray[np.float64]:
        """(N,) fused scores of the (N, L) matrix ``scores``."""
        if self.weights is not None:
            return fuse(scores, self.weights)
        assert self.scorer is not None
        return self.scorer(scores)


def strategies(depth: int) -> dict[str, Strategy]:
    """The named fusion strategies for ``depth`` exits, by name, in table order: the paper's F and FW,
    then ``last-k`` (``k = max(1, depth // 3)``), ``exp-depth`` (rate 0.3) and ``z-score FW``."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be a positive number of exits, got {depth!r}")
    k = max(1, depth // 3)
    named = [
        Strategy("EX-FIQA-F", weights=uniform_weights(depth)),
        Strategy("EX-FIQA-FW", weights=depth_weights(depth)),
        Strategy(f"last-{k}", weights=last_k_weights(depth, k)),
        Strategy("exp-depth", weights=exponential_weights(depth, rate=0.3)),
        Strategy("z-score FW", scorer=zscore_fuse),
    ]
    return {s.name: s for s in named}


# ------------------------------------------------------------------ data-chosen exits (after FROQ, IJCB 2025)

DC_NAME = "EX-FIQA-DC"
"""Method name of the data-chosen exit mean."""


@dataclass(frozen=True)
class CalibrationSet:
    """One calibration dataset of :func:`choose_exits`: (N, L) exit ``scores``; (S,) per-side pseudo-``label``
    (higher = better, NaN: none); ``sides``, the side 0..S-1 of each sample, whose quality is the min
    over its samples (None: each sample is a side); ``name`` for messages."""

    scores: NDArray[np.float64]
    label: NDArray[np.float64]
    sides: NDArray[np.int64] | None = None
    name: str = ""
    _order: NDArray[np.int64] | None = field(default=None, init=False, repr=False, compare=False)
    _starts: NDArray[np.int64] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"calibration set {self.name!r}" if self.name else "calibration set"
        s = _matrix(self.scores, f"{where}: ")
        lab = np.asarray(self.label, dtype=np.float64)
        if lab.ndim != 1:
            raise ValueError(f"{where}: label must be one value per side, got shape {lab.shape}")
        if np.isinf(lab).any():
            raise ValueError(f"{where}: label contains infinite values")
        object.__setattr__(self, "scores", s)
        object.__setattr__(self, "label", lab)
        if self.sides is None:
            if lab.shape[0] != s.shape[0]:
                raise ValueError(f"{where}: {s.shape[0]} samples but {lab.shape[0]} labels (sides = samples)")
        else:
            sides = np.asarray(self.sides)
            if sides.shape != (s.shape[0],) or sides.dtype.kind not in "iu":
                raise ValueError(f"{where}: sides must be one integer side per sample, got {sides.dtype} {sides.shape}")
            order = np.argsort(sides, kind="stable")
            sorted_sides = sides[order]
            starts = np.flatnonzero(np.r_[True, sorted_sides[1:] != sorted_sides[:-1]])
            if sorted_sides.size == 0 or not np.array_equal(sorted_sides[starts], np.arange(lab.shape[0])):
                raise ValueError(f"{where}: every side 0..{lab.shape[0] - 1} must have at least one sample, and no other")
            object.__setattr__(self, "sides", sides)
            object.__setattr__(self, "_order", order)
            object.__setattr__(self, "_starts", starts)
        if int(np.isfinite(lab).sum()) < 3:
            raise ValueError(f"{where}: fewer than 3 sides have a pseudo-label (a correlation needs more)")

    @property
    def n_exits(self) -> int:
        return int(self.scores.shape[1])

    def side_values(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per-side values of per-sample ``values``, (N,) or (N, K): the min over each side's samples."""
        v = np.asarray(values, dtype=np.float64)
        if self._order is None or self._starts is None:  # sides are the samples
            return v
        return np.asarray(np.minimum.reduceat(v[self._order], self._starts, axis=0), dtype=np.float64)

    def correlation(self, values: NDArray[np.float64]) -> float:
        """Spearman correlation (scipy, average ranks for ties) of per-sample ``values`` (as side
        values) with the label, over the labelled sides; NaN if ``values`` is constant there."""
        from scipy.stats import spearmanr

        keep = np.isfinite(self.label)
        x = self.side_values(values)[keep]
        if np.all(x == x[0]):
            return float("nan")
        return float(spearmanr(x, self.label[keep]).statistic)


def exit_correlations(cal: CalibrationSet) -> NDArray[np.float64]:
    """(L,) Spearman correlation of each exit's scores with the pseudo-label of ``cal`` (ValueError naming
    a constant exit)."""
    rho = np.array([cal.correlation(cal.scores[:, k]) for k in range(cal.n_exits)])
    bad = np.flatnonzero(np.isnan(rho))
    if bad.size:
        raise ValueError(f"calibration set {cal.name!r}: exit {int(bad[0]) + 1} has constant scores, "
                         "its Spearman correlation with the pseudo-label is undefined")
    return rho


def chosen_mean(scores: ArrayLike, exits: Sequence[int]) -> NDArray[np.float64]:
    """EX-FIQA-DC's score: the plain mean of the chosen ``exits`` (1-based) of each sample."""
    s = _matrix(scores)
    idx = np.asarray(list(exits), dtype=np.int64)
    if idx.size == 0 or idx.min() < 1 or idx.max() > s.shape[1] or np.unique(idx).size != idx.size:
        raise ValueError(f"exits must be distinct exits in 1..{s.shape[1]}, got {list(exits)}")
    w = np.zeros(s.shape[1])
    w[idx - 1] = 1.0 / idx.size
    return s @ w


@dataclass(frozen=True)
class ExitChoice:
    """The outcome of :func:`choose_exits` (1-based exits): per-exit ``correlations`` averaged over the
    sets; the ``ranking``; the ``chosen`` prefix of it; ``trace``, the correlation of the mean of
    ``chosen[:k+1]``; ``stopped_at``, the first exit that did not raise it (None: all added), and
    ``stop_correlation``, the correlation with it added; the ``calibration`` set names."""

    correlations: tuple[float, ...]
    ranking: tuple[int, ...]
    chosen: tuple[int, ...]
    trace: tuple[float, ...]
    stopped_at: int | None
    stop_correlation: float | None
    calibration: tuple[str, ...]


def choose_exits(calibration: Sequence[CalibrationSet]) -> ExitChoice:
    """FROQ-style greedy exit selection on calibration data that is not evaluated.

    Exits are ranked by their Spearman correlation with the pseudo-label, averaged over the sets
    (each counts once; ties: the shallower exit first). From the top exit, the next of the ranking is
    added while it strictly raises the averaged correlation of the chosen exits' plain mean.
    """
    sets = list(calibration)
    if not sets:
        raise ValueError("choose_exits: no calibration set given")
    depth = sets[0].n_exits
    for c in sets:
        if c.n_exits != depth:
            raise ValueError(f"calibration set {c.name!r} has {c.n_exits} exits, {sets[0].name!r} has {depth}")
    rho = np.mean([exit_correlations(c) for c in sets], axis=0)
    ranking = [int(k) + 1 for k in np.argsort(-rho, kind="stable")]
    chosen, trace = [ranking[0]], [float(rho[ranking[0] - 1])]
    stopped_at, stop_rho = None, None
    for k in ranking[1:]:
        r = float(np.mean([c.correlation(chosen_mean(c.scores, [*chosen, k])) for c in sets]))
        if not r > trace[-1]:  # NaN (a constant mean) does not raise it either
            stopped_at, stop_rho = k, r
            break
        chosen.append(k)
        trace.append(r)
    return ExitChoice(
        tuple(float(x) for x in rho), tuple(ranking), tuple(chosen), tuple(trace), stopped_at, stop_rho,
        tuple(c.name for c in sets),
    )

