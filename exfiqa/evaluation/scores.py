"""The two interfaces the EDC and bootstrap engines read, and their explicit (array) implementations.

A **scores** object describes one comparison set under one FR model: ``n``, ``n_m``, ``n_nm``,
``sim_m`` (mated similarities in comparison order), ``mated_refs`` (their references) and
``top_nonmated(m)`` (at least ``min(m, n_nm)`` highest non-mated similarities, descending, ties in
comparison order, with their references; every other non-mated similarity strictly lower). An
**order** object describes the stable pair-quality order of one quality measure on it (ties broken
by comparison position): ``levels(refs)`` (the ``recompute`` level of each referenced comparison),
``ranks(refs)`` (the stable rank), ``quality(refs)`` and ``value_counts()`` (the distinct pair
qualities and their counts). References are whatever the matching order accepts.

Here: :class:`Comparisons` and :class:`ArrayOrder` (arrays in memory), :class:`DistanceView`
(any scores object in the ``distance<`` domain, :func:`rule_view`) and :func:`top_candidates`.
:mod:`exfiqa.evaluation.pairs` implements both interfaces for pair lists and implicit all-vs-all
sets. :data:`MIN_CANDIDATES` (read through :func:`min_candidates`, at call time) is the one
setting of how many candidates the EDC and the bootstrap start from. numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from exfiqa.evaluation.rules import (
    as_labels,
    as_vector,
    check_same_length,
    level_starts,
    neg_distance,
)

MIN_CANDIDATES = 4096
"""Fewest top non-mated scores (candidates) the EDC and bootstrap engines start from."""


def min_candidates() -> int:
    """:data:`MIN_CANDIDATES`, read at call time (one setting for the EDC and the bootstrap)."""
    return MIN_CANDIDATES


class Comparisons:
    """Validated similarity/mated arrays plus a cache of the highest non-mated scores.

    The explicit implementation of the scores interface (module docstring) the EDC and bootstrap
    engines use: ``n``, ``n_m``, ``n_nm``, ``sim_m`` (mated similarities in
    comparison order), ``mated_refs`` (their references; here positions) and
    :meth:`top_nonmated`. References are whatever the matching order's methods accept.
    """

    def __init__(self, similarity: ArrayLike, mated: ArrayLike) -> None:
        self.sim = as_vector(similarity, "similarity")
        self.mated = as_labels(mated, self.sim.shape[0])
        self.n = int(self.sim.shape[0])
        self.idx_m = np.flatnonzero(self.mated)
        self.n_m = int(self.idx_m.shape[0])
        self.n_nm = self.n - self.n_m
        if self.n_m == 0:
            raise ValueError("mated: there are no mated comparisons (all False)")
        if self.n_nm == 0:
            raise ValueError("mated: there are no non-mated comparisons (all True)")
        self.sim_m = self.sim[self.idx_m]
        self.mated_refs = self.idx_m
        self._top_vals: np.ndarray | None = None
        self._top_idx: np.ndarray | None = None

    def quality(self, quality: ArrayLike, name: str = "quality") -> np.ndarray:
        """Per-comparison quality values, checked to be finite and of the comparisons' length."""
        q = as_vector(quality, name)
        check_same_length(q, name, self.n, "similarity")
        return q

    def top_nonmated(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """At least ``min(m, n_nm)`` highest non-mated scores, descending, with their indices.

        Every non-mated score not returned is strictly below every score returned; ties keep
        input order.
        """
        m = int(min(max(m, 1), self.n_nm))
        if self._top_vals is None or self._top_vals.shape[0] < m:
            nonmated = ~self.mated
            if m >= self.n_nm:
                idx = np.flatnonzero(nonmated)
            else:
                neg = self.sim[nonmated]
                cutoff = np.partition(neg, self.n_nm - m)[self.n_nm - m]
                del neg
                idx = np.flatnonzero(nonmated & (self.sim >= cutoff))
            vals = self.sim[idx]
            order = np.argsort(-vals, kind="stable")
            self._top_vals, self._top_idx = vals[order], idx[order]
        assert self._top_vals is not None and self._top_idx is not None
        return self._top_vals, self._top_idx


class ArrayOrder:
    """The stable quality order of an explicit per-comparison quality array.

    The explicit implementation of the order interface (module docstring):
    ``levels(refs)`` (the ``recompute`` level of each referenced comparison: the largest j with
    ``floor(j * n / 20) <= stable rank``), ``ranks(refs)`` (the stable rank itself) and
    ``quality(refs)`` and ``value_counts()`` (the FM-EDC's tie groups). Levels need no full sort
    (:func:`_levels_of`); ranks sort once.
    """

    def __init__(self, q: np.ndarray) -> None:
        self.q = q
        self.n = int(q.shape[0])
        self.d = level_starts(self.n)
        self._bounds: np.ndarray | None = None
        self._position: np.ndarray | None = None

    def levels(self, refs: np.ndarray) -> np.ndarray:
        """The ``recompute`` level of each comparison ``refs`` (no full sort)."""
        if self._bounds is None:
            self._bounds = _level_bounds(self.q, self.d)
        return _levels_of(self.q, self._bounds, refs, self.d)

    def ranks(self, refs: np.ndarray) -> np.ndarray:
        """The stable rank of each comparison ``refs`` (one stable sort, kept)."""
        if self._position is None:
            order = np.argsort(self.q, kind="stable")
            self._position = np.empty(self.n, dtype=np.int64)
            self._position[order] = np.arange(self.n)
        out: np.ndarray = self._position[refs]
        return out

    def quality(self, refs: np.ndarray) -> np.ndarray:
        """The pair quality of each comparison ``refs``."""
        out: np.ndarray = self.q[refs]
        return out

    def value_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct pair qualities, ascending, and how many comparisons have each."""
        return np.unique(self.q, return_counts=True)


def top_candidates(comp: Any, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``m`` non-mated of ``comp`` and their ties, even when more are cached.

    A prefix of the descending list, cut after the last value equal to the m-th: every
    non-mated score left out is strictly below every one kept.
    """
    vals, refs = comp.top_nonmated(m)
    if vals.shape[0] > m:
        keep = int(np.searchsorted(-vals, -vals[m - 1], side="right"))
        vals, refs = vals[:keep], refs[:keep]
    return vals, refs


class DistanceView:
    """A scores object seen in the ``distance<`` domain ``x = -arccos(clip(s, -1, 1)) / pi`` (float64).

    The transform is monotone, so the highest similarities are the highest ``x``; it may merge
    neighbouring float64 similarities (never float32 ones), so the lowest group of a partial
    candidate list is dropped: every non-mated ``x`` left out stays strictly below every one kept.
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.n, self.n_m, self.n_nm = base.n, base.n_m, base.n_nm
        self.mated_refs = base.mated_refs
        self.sim_m = neg_distance(base.sim_m)
        self._vals: np.ndarray | None = None
        self._refs: np.ndarray | None = None

    def top_nonmated(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Comparisons.top_nonmated`, in the ``distance<`` domain (see the class docstring)."""
        m = int(min(max(m, 1), self.n_nm))
        if self._vals is None or self._vals.shape[0] < m:
            ask = m
            while True:
                vals, refs = self.base.top_nonmated(ask)
                x = neg_distance(vals)
                if vals.shape[0] < self.n_nm:
                    keep = int(np.searchsorted(-x, -x[-1], side="left"))
                    x, refs = x[:keep], refs[:keep]
                if x.shape[0] >= m:
                    break
                ask = min(self.n_nm, max(2 * ask, vals.shape[0] + 1))
            self._vals, self._refs = x, refs
        assert self._vals is not None and self._refs is not None
        return self._vals, self._refs


def rule_view(scores: Any, strict: bool) -> Any:
    """``scores`` in the rules' domain: unchanged for ``similarity>=``, a :class:`DistanceView` else."""
    if not strict:
        return scores
    if isinstance(scores, DistanceView):
        return scores
    cache = getattr(scores, "_distance_view", None)  # one view per scores object: its candidates are reused
    if cache is None:
        cache = DistanceView(scores)
        try:
            scores._distance_view = cache
        except AttributeError:  # pragma: no cover - a scores object without a __dict__
            pass
    return cache


def _level_bounds(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Quality at each level boundary d[1:] of the stable quality order (one ``np.partition``)."""
    bounds = d[1:]
    out: np.ndarray = np.partition(q, np.unique(bounds))[bounds]
    return out


def _levels_of(q: np.ndarray, v: np.ndarray, sel: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Level (chunk) of the comparisons ``sel``: the largest j with d[j] <= stable rank.

    The stable rank is the position in ``np.argsort(q, kind="stable")``; it is found without a
    full sort. ``v`` (from :func:`_level_bounds`) holds the qualities at the boundaries: a
    comparison whose quality differs from all of them lies after exactly the boundaries with a
    lower value; one whose quality equals a boundary value gets its exact rank from the count of
    lower qualities and its position (by index) among the equal ones.
    """
    x = q[sel]
    lo = np.searchsorted(v, x, side="left")
    hi = np.searchsorted(v, x, side="right")
    level: np.ndarray = lo.astype(np.int64)
    tied = np.flatnonzero(lo != hi)
    if tied.size:
        for u in np.unique(x[tied]):
            members = tied[x[tied] == u]
            n_lower = np.count_nonzero(q < u)
            equal = np.flatnonzero(q == u)
            ranks = n_lower + np.searchsorted(equal, sel[members])
            level[members] = np.searchsorted(d, ranks, side="right") - 1
    return level
