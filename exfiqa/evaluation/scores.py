"""The two interfaces the EDC and bootstrap engines read, and their array implementations (numpy only).

A **scores** object (one comparison set, one FR model): ``n``, ``n_m``, ``n_nm``, ``sim_m`` (mated
similarities in comparison order), ``mated_refs`` (their references) and ``top_nonmated(m)`` (at
least ``min(m, n_nm)`` highest non-mated similarities, descending, ties in comparison order, with
their references; every other non-mated similarity strictly lower). An **order** object (the stable
pair-quality order of one quality measure, ties by comparison position): ``levels(refs)`` (the
``recompute`` level), ``ranks(refs)`` (the stable rank), ``quality(refs)`` and ``value_counts()``.
:mod:`exfiqa.evaluation.pairs` implements both for pair lists and implicit all-vs-all sets.
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
    """The scores interface on validated similarity/mated arrays (references: positions)."""

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
        self._top: tuple[np.ndarray, np.ndarray] | None = None

    def quality(self, quality: ArrayLike, name: str = "quality") -> np.ndarray:
        """Per-comparison quality values, checked to be finite and of the comparisons' length."""
        q = as_vector(quality, name)
        check_same_length(q, name, self.n, "similarity")
        return q

    def top_nonmated(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """At least ``min(m, n_nm)`` highest non-mated scores, descending, with their indices (cached)."""
        m = int(min(max(m, 1), self.n_nm))
        if self._top is None or self._top[0].shape[0] < m:
            nonmated = ~self.mated
            if m >= self.n_nm:
                idx = np.flatnonzero(nonmated)
            else:
                cutoff = np.partition(self.sim[nonmated], self.n_nm - m)[self.n_nm - m]
                idx = np.flatnonzero(nonmated & (self.sim >= cutoff))
            vals = self.sim[idx]
            order = np.argsort(-vals, kind="stable")
            self._top = vals[order], idx[order]
        return self._top


class ArrayOrder:
    """The order interface on a per-comparison quality array."""

    def __init__(self, q: np.ndarray) -> None:
        self.q = q
        self.n = int(q.shape[0])
        self.d = level_starts(self.n)
        self._bounds: np.ndarray | None = None
        self._position: np.ndarray | None = None

    def levels(self, refs: np.ndarray) -> np.ndarray:
        """The ``recompute`` level of each comparison ``refs`` (no full sort)."""
        if self._bounds is None:  # the quality at each level boundary d[1:] of the stable order
            self._bounds = np.partition(self.q, np.unique(self.d[1:]))[self.d[1:]]
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
    """The top ``m`` non-mated of ``comp`` and their ties, even when more are cached."""
    vals, refs = comp.top_nonmated(m)
    if vals.shape[0] > m:
        keep = int(np.searchsorted(-vals, -vals[m - 1], side="right"))
        vals, refs = vals[:keep], refs[:keep]
    return vals, refs


class DistanceView:
    """A scores object in the ``distance<`` domain ``x = -arccos(clip(s, -1, 1)) / pi`` (float64); the
    transform may merge float64 similarities, so the lowest group of a partial candidate list is dropped."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.n, self.n_m, self.n_nm = base.n, base.n_m, base.n_nm
        self.mated_refs = base.mated_refs
        self.sim_m = neg_distance(base.sim_m)
        self._top: tuple[np.ndarray, np.ndarray] | None = None

    def top_nonmated(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Comparisons.top_nonmated`, in the ``distance<`` domain."""
        m = int(min(max(m, 1), self.n_nm))
        if self._top is None or self._top[0].shape[0] < m:
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
            self._top = x, refs
        return self._top


def rule_view(scores: Any, strict: bool) -> Any:
    """``scores`` in the rules' domain: unchanged for ``similarity>=``, a :class:`DistanceView` else."""
    if not strict or isinstance(scores, DistanceView):
        return scores
    if getattr(scores, "_distance_view", None) is None:  # one view per scores object: its candidates are reused
        scores._distance_view = DistanceView(scores)
    return scores._distance_view


def _levels_of(q: np.ndarray, v: np.ndarray, sel: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Level of the comparisons ``sel``: the largest j with d[j] <= stable rank, without a full sort
    (``v``: the qualities at the boundaries; a quality equal to one gets its exact rank from the count
    of lower qualities and its position among the equal ones)."""
    x = q[sel]
    lo = np.searchsorted(v, x, side="left")
    hi = np.searchsorted(v, x, side="right")
    level: np.ndarray = lo.astype(np.int64)
    tied = np.flatnonzero(lo != hi)
    for u in np.unique(x[tied]):
        members = tied[x[tied] == u]
        ranks = np.count_nonzero(q < u) + np.searchsorted(np.flatnonzero(q == u), sel[members])
        level[members] = np.searchsorted(d, ranks, side="right") - 1
    return level
