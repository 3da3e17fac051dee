"""Comparison sets evaluated in bounded memory, each giving the *scores* and per quality the *order*
of :mod:`exfiqa.evaluation.scores`: :class:`PairList` (explicit ``a``/``b`` rows; GEMM tiles where
dense, gathered dot products elsewhere) and :class:`AllPairs` (every pair ``i < j`` of identity-sorted
samples, row-major; nothing of size n(n-1)/2 is held, results equal the materialised computation).

Pair quality = ``min(v[a], v[b])``, ties broken by comparison position; similarity = ``scale`` (0.5
for flip-concatenated embeddings, 1 for templates) times the float32 dot product of the features.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from exfiqa.evaluation.quality import pair_quality
from exfiqa.evaluation.rules import allowed_errors, as_vector, level_starts, next_above
from exfiqa.evaluation.scores import Comparisons

TILE = 2048  # side length of a GEMM tile of the similarity computation
DENSE = 1 / 32  # share of a tile's entries that must be compared for a GEMM
CHUNK = 8192  # comparisons per gathered dot-product chunk (two (CHUNK, D) float32 temporaries)
GRAM_ROWS = 1024  # rows of the Gram matrix computed at once for all-vs-all sets


def _features(features: np.ndarray, n: int) -> np.ndarray:
    f = np.asarray(features)
    if f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"features: expected shape ({n}, D), got {f.shape}")
    f = np.ascontiguousarray(f, dtype=np.float32)
    if not np.isfinite(f).all():
        raise ValueError("features: contain NaN or inf")
    return f


def _side_values(values: np.ndarray, n: int) -> np.ndarray:
    v = as_vector(values, "values")
    if v.shape[0] != n:
        raise ValueError(f"values: expected {n} per-side values, got {v.shape[0]}")
    return v.astype(np.float32, copy=False) + np.float32(0)  # -0.0 -> 0.0 (same value)


def _compact(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of ``x`` and the int32 index of each entry among them."""
    if x.size and x.dtype.kind in "iu" and 0 <= x.min() and x.max() < 2**26:  # dense ids: a lookup
        present = np.zeros(int(x.max()) + 1, dtype=bool)
        present[x] = True
        uniq = np.flatnonzero(present)
        lookup = np.cumsum(present, dtype=np.int32) - 1
        return uniq.astype(x.dtype), lookup[x]
    uniq, inv = np.unique(x, return_inverse=True)
    return uniq, inv.astype(np.int32).ravel()


def release_pages(array: np.ndarray, start: int = 0, stop: int | None = None) -> bool:
    """Drop rows ``start:stop`` of a memory-mapped array from this process's resident memory
    (whole pages only; the array stays usable, pages are read back when touched). Returns False
    when ``array`` is not a file mapping."""
    x: Any = array
    while x is not None and not isinstance(x, mmap.mmap):
        x = x._mmap if isinstance(x, np.memmap) and getattr(x, "_mmap", None) is not None else getattr(x, "base", None)
    if x is None or not hasattr(x, "madvise") or not hasattr(mmap, "MADV_DONTNEED") or not array.flags.c_contiguous:
        return False
    stop = array.shape[0] if stop is None else min(stop, array.shape[0])
    if stop <= start:
        return True
    base = np.frombuffer(x, dtype=np.uint8).ctypes.data
    row = array.strides[0] if array.ndim else array.itemsize
    lo = array.ctypes.data - base + start * row
    hi = array.ctypes.data - base + stop * row
    page = mmap.PAGESIZE
    lo, hi = -(-lo // page) * page, (hi // page) * page
    if hi <= lo:
        return True
    try:
        x.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (OSError, ValueError):
        return False
    return True


def _row_pairs(end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` (int64) of every ``i < j < end[i]``, row-major."""
    rows = np.arange(end.shape[0], dtype=np.int64)
    cnt = end - rows - 1
    i = np.repeat(rows, cnt)
    return i, i + 1 + (np.arange(i.size, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt))


def _upper(g: np.ndarray) -> np.ndarray:
    """Mask of a Gram block's pairs ``i < j`` (entry (r, c) is the pair (r0 + r, r0 + c))."""
    return np.arange(g.shape[1])[None, :] > np.arange(g.shape[0])[:, None]


def _c2(x: np.ndarray | int) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    return x * (x - 1) // 2


# --------------------------------------------------------------------------------- similarity


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product ``<a[k], b[k]>`` of two (N, D) arrays, in their dtype: the cosine of
    already L2-normalised rows (flip-concatenated embeddings: divide by 2 afterwards)."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"cosine_similarity: expected two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    out: np.ndarray = np.einsum("ij,ij->i", a, b)
    return out


def pair_similarity(
    features: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float = 1.0, plan: _TilePlan | None = None
) -> np.ndarray:
    """``scale * <features[a], features[b]>`` for every comparison, float32, in bounded memory
    (GEMM tiles and (``CHUNK``, D) gathers). ``plan``: a :class:`_TilePlan` of ``a``, ``b`` to reuse."""
    f = np.ascontiguousarray(features, dtype=np.float32)
    plan = plan or _TilePlan.build(np.asarray(a), np.asarray(b))
    out = np.empty(plan.n, dtype=np.float32)
    for ta, tb, s, e in plan.bounds:
        sel = plan.order[s:e]
        g = f[plan.ua[ta * TILE : (ta + 1) * TILE]] @ f[plan.ub[tb * TILE : (tb + 1) * TILE]].T
        out[sel] = g[plan.ra[sel] - ta * TILE, plan.rb[sel] - tb * TILE]
    rest = plan.sparse
    for s in range(0, rest.shape[0], CHUNK):
        sel = rest[s : s + CHUNK]
        out[sel] = cosine_similarity(f[plan.a[sel]], f[plan.b[sel]])
    if scale != 1.0:
        out *= np.float32(scale)
    return out


@dataclass
class _TilePlan:
    """Comparisons grouped into GEMM tiles over the (distinct a) x (distinct b) grid."""

    n: int
    a: np.ndarray
    b: np.ndarray
    ua: np.ndarray  # distinct a (sorted) and b
    ub: np.ndarray
    ra: np.ndarray  # compact index of each comparison's a in ua, and b in ub (int32)
    rb: np.ndarray
    order: np.ndarray  # comparisons of the dense tiles, grouped by tile
    bounds: list[tuple[int, int, int, int]]  # (tile a, tile b, start, end) into order
    sparse: np.ndarray  # comparisons outside dense tiles

    @classmethod
    def build(cls, a: np.ndarray, b: np.ndarray) -> _TilePlan:
        ua, ra = _compact(a)
        ub, rb = _compact(b)
        nta, ntb = -(-ua.size // TILE), -(-ub.size // TILE)
        tile = (ra // TILE).astype(np.int64 if nta * ntb >= 2**31 else np.int32) * ntb + rb // TILE
        counts = np.bincount(tile, minlength=nta * ntb)
        ta, tb = np.divmod(np.arange(nta * ntb), ntb)
        area = np.minimum(TILE, ua.size - ta * TILE) * np.minimum(TILE, ub.size - tb * TILE)
        dense = (counts > 0) & (counts >= DENSE * area)
        in_dense = dense[tile]
        idx = np.int32 if a.shape[0] < 2**31 else np.int64
        sel = np.flatnonzero(in_dense).astype(idx)
        key = tile[sel]
        del tile
        small = key.astype(np.uint16) if nta * ntb < 2**16 else key
        order = sel[np.argsort(small, kind="stable")]
        del sel, key, small
        ends = np.cumsum(counts * dense)
        starts = ends - counts * dense
        bounds = [(int(ta[t]), int(tb[t]), int(starts[t]), int(ends[t])) for t in np.flatnonzero(dense)]
        sparse = np.flatnonzero(~in_dense).astype(idx)
        return cls(int(a.shape[0]), a, b, ua, ub, ra, rb, order, bounds, sparse)


# --------------------------------------------------------------------------------- explicit pairs


class PairList:
    """Explicit comparisons between rows ``a[k]``, ``b[k]`` of a side table of ``n_sides`` rows."""

    def __init__(self, a: np.ndarray, b: np.ndarray, mated: np.ndarray, n_sides: int) -> None:
        self.a = np.asarray(a)
        self.b = np.asarray(b)
        self.mated = np.asarray(mated, dtype=bool)
        self.n = int(self.a.shape[0])
        self.n_sides = int(n_sides)
        if not (self.b.shape[0] == self.n == self.mated.shape[0]):
            raise ValueError("PairList: a, b and mated must have the same length")
        for side, x in (("a", self.a), ("b", self.b)):
            if self.n and (x.min() < 0 or x.max() >= self.n_sides):
                raise ValueError(f"PairList: side {side} indexes outside 0..{self.n_sides - 1}")

    @cached_property
    def _tile_plan(self) -> _TilePlan:
        return _TilePlan.build(self.a, self.b)

    def similarity(self, features: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Similarity of every comparison (float32, :func:`pair_similarity`)."""
        f = _features(features, self.n_sides)
        return pair_similarity(f, self.a, self.b, scale, self._tile_plan)

    def scores(self, features: np.ndarray, scale: float = 1.0):
        """The scores object (:mod:`exfiqa.evaluation.scores`) of these comparisons (holds the similarities)."""
        sim = self.similarity(features, scale)
        sim.setflags(write=False)  # shared by every caller of Study.similarity
        return Comparisons(sim, self.mated)

    def order(self, side_values: np.ndarray) -> MinPairOrder:
        """The stable order of ``min(v[a], v[b])`` for per-side values ``v``."""
        return MinPairOrder(self, _side_values(side_values, self.n_sides))


class _MinOrder:
    """Stable order of the pair qualities ``min(v[a], v[b])``: group r (minimum ``uniq[r]``) holds the
    ``sizes[r]`` ranks from ``start[r]`` in comparison order; ``level_of[r]``: its ``recompute`` level
    unless a level boundary cuts it (``cut``: the at most 19 groups that are cut)."""

    def __init__(self, pairs: Any, v: np.ndarray) -> None:
        self.pairs = pairs
        self.v = v
        self.n = int(pairs.n)
        self.d = level_starts(self.n)
        self.uniq, rank = np.unique(v, return_inverse=True)
        self.rank = rank.astype(np.int32).ravel()  # dense rank of each side value

    def _layout(self, sizes: np.ndarray) -> None:
        """Lay out the groups from their sizes (a subclass also gives :meth:`_sides` of references)."""
        self.sizes = sizes
        self.start = np.cumsum(sizes) - sizes
        self.level_of = (np.searchsorted(self.d, self.start, side="right") - 1).astype(np.uint8)
        bounds = self.d[1:]  # every bound is < n, so some group holds it
        g = np.searchsorted(self.start + sizes, bounds, side="right")  # the group holding rank d[j]
        self.cut = np.unique(g[self.start[g] < bounds])

    def quality(self, refs: np.ndarray) -> np.ndarray:
        i, j = self._sides(refs)
        return pair_quality(self.v[i], self.v[j])

    def value_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct pair qualities, ascending, and how many comparisons have each."""
        nz = self.sizes > 0
        return self.uniq[nz], self.sizes[nz]


class MinPairOrder(_MinOrder):
    """Stable order of the pair qualities of a :class:`PairList`: one ``uint8`` level per comparison."""

    def __init__(self, pairs: PairList, v: np.ndarray) -> None:
        super().__init__(pairs, v)
        self._rank = self.rank.astype(np.uint16) if self.uniq.size <= 2**16 else self.rank  # narrow gathers are faster
        minrank = np.minimum(self._rank[pairs.a], self._rank[pairs.b])
        self._layout(np.bincount(minrank, minlength=self.uniq.size).astype(np.int64))
        level = self.level_of[minrank]
        if self.cut.size:
            pos = np.flatnonzero(np.isin(minrank, self.cut))
            g = minrank[pos]
            o = np.argsort(g, kind="stable")
            gs = g[o]
            ranks = self.start[gs] + np.arange(gs.size) - np.searchsorted(gs, gs)  # + rank within the group
            level[pos[o]] = (np.searchsorted(self.d, ranks, side="right") - 1).astype(np.uint8)
        self.level = level

    def _sides(self, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs.a[refs], self.pairs.b[refs]

    def levels(self, refs: np.ndarray) -> np.ndarray:
        return self.level[refs]

    def ranks(self, refs: np.ndarray) -> np.ndarray:
        """Exact stable ranks of the comparisons ``refs`` (one O(n) sort, nothing kept): a radix
        sort of uint16 groups, else 64-bit keys ``group << 32 | position``."""
        refs = np.asarray(refs)
        minrank = np.minimum(self._rank[self.pairs.a], self._rank[self.pairs.b])
        if minrank.dtype == np.uint16:
            order = np.argsort(minrank, kind="stable")
            del minrank
            position = np.empty(self.n, dtype=np.int64)
            position[order] = np.arange(self.n)
            return position[refs]
        if self.n >= 2**32:
            raise ValueError("MinPairOrder.ranks: more than 2**32 comparisons")
        keys = (minrank.astype(np.uint64) << np.uint64(32)) | np.arange(self.n, dtype=np.uint64)
        return np.searchsorted(np.sort(keys), keys[refs]).astype(np.int64)


# --------------------------------------------------------------------------------- all-vs-all


@dataclass
class AllPairs:
    """All pairs ``i < j`` of ``n_samples`` identity-sorted samples, row-major (:meth:`position`);
    ``group_end[i]``: one past the last sample of i's identity, (i, j) is mated iff ``j < group_end[i]``."""

    group_end: np.ndarray
    n_samples: int = field(init=False)
    n: int = field(init=False)
    n_m: int = field(init=False)

    def __post_init__(self) -> None:
        self.group_end = np.asarray(self.group_end, dtype=np.int64)
        self.n_samples = int(self.group_end.shape[0])
        rows = np.arange(self.n_samples)
        if self.n_samples and (np.any(self.group_end <= rows) or np.any(self.group_end > self.n_samples)):
            raise ValueError("AllPairs: group_end[i] must lie in (i, n_samples]")
        self.n = int(_c2(self.n_samples))
        self.n_m = int((self.group_end - rows - 1).sum())

    @classmethod
    def from_codes(cls, identity_codes: np.ndarray) -> AllPairs:
        """From identity codes that are sorted (samples grouped by identity)."""
        codes = np.asarray(identity_codes)
        if codes.size and np.any(codes[1:] < codes[:-1]):
            raise ValueError("identity codes must be sorted")
        _, starts, counts = np.unique(codes, return_index=True, return_counts=True)
        return cls(np.repeat(starts + counts, counts))

    @property
    def n_nm(self) -> int:
        return self.n - self.n_m

    def position(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        i64, j64 = np.asarray(i, np.int64), np.asarray(j, np.int64)
        return i64 * self.n_samples - i64 * (i64 + 1) // 2 + j64 - i64 - 1

    def mated_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(i, j)`` of every mated pair, row-major (int32)."""
        i, j = _row_pairs(self.group_end)
        return i.astype(np.int32), j.astype(np.int32)

    def materialise(
        self, max_nonmated: int | None = None, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(a, b, mated)`` of every pair, row-major (small sets only), int32 (int64 beyond 2**31
        samples). ``max_nonmated``: only the non-mated at ``default_rng(seed).choice(n_nm, max_nonmated,
        replace=False)``."""
        dt = np.int32 if self.n_samples < 2**31 else np.int64
        if max_nonmated is None or max_nonmated >= self.n_nm:
            a, b = _row_pairs(np.full(self.n_samples, self.n_samples, dtype=np.int64))
            return a.astype(dt), b.astype(dt), b < self.group_end[a]
        if max_nonmated < 0:
            raise ValueError(f"max_nonmated must be >= 0, got {max_nonmated}")
        lin = np.sort(np.random.default_rng(seed).choice(self.n_nm, size=max_nonmated, replace=False))
        n_non_row = self.n_samples - self.group_end
        cum = np.cumsum(n_non_row)
        non_a = np.searchsorted(cum, lin, side="right").astype(np.int64)
        non_b = self.group_end[non_a] + (lin - (cum[non_a] - n_non_row[non_a]))
        mated_a, mated_b = self.mated_pairs()
        a = np.concatenate([mated_a.astype(dt), non_a.astype(dt)])
        b = np.concatenate([mated_b.astype(dt), non_b.astype(dt)])
        mated = np.concatenate([np.ones(mated_a.size, bool), np.zeros(non_a.size, bool)])
        order = np.lexsort((b, a))
        return a[order], b[order], mated[order]

    def gram_rows(self, features: np.ndarray, scale: float = 1.0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(r0, G, nonmated)``: ``G[r, c] = scale * <f[r0 + r], f[r0 + c]>`` for a block of rows
        from r0, and which entries are non-mated pairs. The one place all-vs-all similarities
        are computed (every user sees the same floats)."""
        f = _features(features, self.n_samples)
        for r0 in range(0, self.n_samples, GRAM_ROWS):
            g = f[r0 : r0 + GRAM_ROWS] @ f[r0:].T
            if scale != 1.0:
                g *= np.float32(scale)
            yield r0, g, np.arange(g.shape[1])[None, :] >= (self.group_end[r0 : r0 + g.shape[0]] - r0)[:, None]

    def similarity(self, features: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Similarity of every pair, row-major (materialised: small sets only)."""
        blocks = [g[_upper(g)] for _, g, _ in self.gram_rows(features, scale)]
        return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)

    def scores(self, features: np.ndarray, scale: float = 1.0, initial_m: int = 4096) -> AllPairsScores:
        """The scores object (:mod:`exfiqa.evaluation.scores`) of these pairs (nothing is scanned yet)."""
        return AllPairsScores(self, _features(features, self.n_samples), scale, initial_m)

    def order(self, sample_values: np.ndarray) -> AllPairsOrder:
        return AllPairsOrder(self, _side_values(sample_values, self.n_samples))


class AllPairsScores:
    """Scores of an :class:`AllPairs` set; references are ``(K, 2)`` int32 arrays of ``(i, j)``. A scan
    collects at least ``initial_m`` candidates (the first also the mated); asking for more rescans."""

    def __init__(self, pairs: AllPairs, features: np.ndarray, scale: float, initial_m: int = 4096) -> None:
        self.pairs = pairs
        self.features = features
        self.scale = scale
        self.initial_m = int(initial_m)
        self.n, self.n_m, self.n_nm = pairs.n, pairs.n_m, pairs.n_nm
        if self.n_m == 0:
            raise ValueError("mated: there are no mated comparisons (no identity has two samples)")
        if self.n_nm == 0:
            raise ValueError("mated: there are no non-mated comparisons (one identity)")
        i, j = pairs.mated_pairs()
        self.mated_refs = np.stack((i, j), axis=1)
        self._sim_m: np.ndarray | None = None
        self._top_vals: np.ndarray | None = None
        self._top_refs: np.ndarray | None = None

    @property
    def sim_m(self) -> np.ndarray:
        """Mated similarities, row-major (the first scan computes them)."""
        if self._sim_m is None:
            self.top_nonmated(self.initial_m)
        assert self._sim_m is not None
        return self._sim_m

    def _scan(self, m: int) -> None:
        """One pass over the Gram rows: the top ``m`` non-mated (and the mated, first time)."""
        keep = _TopK(m)
        mated = []
        for r0, g, nonmated in self.pairs.gram_rows(self.features, self.scale):
            if self._sim_m is None:
                mated.append(g[_upper(g) & ~nonmated])
            keep.add(g, nonmated, r0)
        if self._sim_m is None:
            self._sim_m = np.concatenate(mated)
        self._top_vals, self._top_refs = keep.result()

    def top_nonmated(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        m = int(min(max(m, 1), self.n_nm))
        if self._top_vals is None or self._top_vals.shape[0] < m:
            first = self._top_vals is None
            self._scan(max(m, self.initial_m) if first else min(self.n_nm, max(m, 4 * self._top_vals.shape[0])))
        assert self._top_vals is not None and self._top_refs is not None
        return self._top_vals, self._top_refs


class _TopK:
    """The ``m`` largest values of a stream of Gram blocks (ties at the cutoff all kept)."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.cut = np.float32(-np.inf)
        self.vals: list[np.ndarray] = []
        self.refs: list[np.ndarray] = []
        self.size = 0

    def _top(self, v: np.ndarray) -> np.ndarray:
        """Which of ``v`` are among its ``m`` largest (ties at the cutoff kept); raises the cutoff."""
        if v.size <= self.m:
            return np.ones(v.size, dtype=bool)
        t = np.partition(v, v.size - self.m)[v.size - self.m]
        self.cut = max(self.cut, t)
        return v >= t

    def add(self, g: np.ndarray, mask: np.ndarray, r0: int) -> None:
        r, c = np.nonzero(mask & (g >= self.cut))
        sel = self._top(g[r, c])  # the block's own top m first; the global cutoff is >= theirs
        r, c = r[sel], c[sel]
        self.vals.append(g[r, c])
        self.refs.append(np.stack(((r + r0).astype(np.int32), (c + r0).astype(np.int32)), axis=1))
        self.size += r.size
        if self.size > 2 * self.m:
            self._prune()

    def _prune(self) -> None:
        v = np.concatenate(self.vals)
        sel = self._top(v)
        self.vals, self.refs, self.size = [v[sel]], [np.concatenate(self.refs)[sel]], int(sel.sum())

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._prune()
        v, refs = self.vals[0], self.refs[0]
        o = np.argsort(-v, kind="stable")  # collected row-major: ties stay in comparison order
        return v[o], refs[o]


class AllPairsOrder(_MinOrder):
    """Stable order of the pair qualities of an :class:`AllPairs` set: with ``L`` samples of dense
    rank below r, ``C(n, 2) - C(n - L, 2)`` pairs have a minimum of rank < r; those of rank r
    follow in row-major order (:meth:`_within`, O(n) per group)."""

    def __init__(self, pairs: AllPairs, v: np.ndarray) -> None:
        super().__init__(pairs, v)
        counts = np.bincount(self.rank, minlength=self.uniq.size).astype(np.int64)
        lower = np.cumsum(counts) - counts
        ns = pairs.n_samples
        self._layout(_c2(ns - lower) - _c2(ns - lower - counts))

    def _group(self, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        refs = np.asarray(refs)
        i, j = refs[:, 0].astype(np.int64), refs[:, 1].astype(np.int64)
        return i, j, np.minimum(self.rank[i], self.rank[j])

    def _within(self, r: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Row-major rank of pairs (i, j) among the pairs whose minimum has dense rank r."""
        eq = self.rank == r
        ge = self.rank >= r
        gt = ge & ~eq
        cum_eq = np.concatenate(([0], np.cumsum(eq)))
        cum_ge = np.concatenate(([0], np.cumsum(ge)))
        # members in row x: y > x with rank >= r if x has rank r; y > x with rank r if rank > r
        row = eq * (cum_ge[-1] - cum_ge[1:]) + gt * (cum_eq[-1] - cum_eq[1:])
        before = np.concatenate(([0], np.cumsum(row)))
        inside = np.where(eq[i], cum_ge[j] - cum_ge[i + 1], cum_eq[j] - cum_eq[i + 1])
        return before[i] + inside

    def levels(self, refs: np.ndarray) -> np.ndarray:
        _, _, g = self._group(refs)
        level = self.level_of[g]
        sel = np.flatnonzero(np.isin(g, self.cut))  # ranks needed only in the groups a boundary cuts
        if sel.size:
            level[sel] = np.searchsorted(self.d, self.ranks(np.asarray(refs)[sel]), side="right") - 1
        return level

    def ranks(self, refs: np.ndarray) -> np.ndarray:
        i, j, g = self._group(refs)
        out = np.empty(i.shape[0], dtype=np.int64)
        o = np.argsort(g, kind="stable")
        gs = g[o]
        bounds = np.concatenate(([0], np.flatnonzero(gs[1:] != gs[:-1]) + 1, [gs.size]))
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            sel = o[s:e]
            r = int(gs[s])
            out[sel] = self.start[r] + self._within(r, i[sel], j[sel])
        return out

    def _sides(self, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._group(refs)[:2]


# --------------------------------------------------------------------------------- FR sanity


def _keys32(v: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values (-0.0 counted as +0.0)."""
    u = (np.asarray(v, dtype=np.float32) + np.float32(0)).view(np.uint32)
    return np.where(u & np.uint32(0x80000000), ~u, u | np.uint32(0x80000000))


def _fold_edges(n: int, n_folds: int) -> np.ndarray:
    """Start of each of ``n_folds`` contiguous folds of ``n`` comparisons (``np.array_split``), and n."""
    q, r = divmod(n, n_folds)
    k = np.arange(n_folds + 1, dtype=np.int64)
    return k * q + np.minimum(k, r)


def _nonmated_blocks(scores: AllPairsScores, edges: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(fold, values)``: every non-mated similarity, in comparison order, cut at the fold edges."""
    pairs = scores.pairs
    n_s, end = pairs.n_samples, pairs.group_end
    for r0, g, nonmated in pairs.gram_rows(scores.features, scores.scale):
        rows = np.arange(r0, r0 + g.shape[0])
        vals = g[nonmated]  # row-major: ascending comparison position
        counts = n_s - end[rows]
        start = pairs.position(rows, np.minimum(end[rows], n_s - 1))  # position of each row's first non-mated
        cuts = [int(np.clip(e - start, 0, counts).sum()) for e in edges[1:-1]]
        bounds = np.concatenate(([0], cuts, [vals.size]))
        for f in range(len(edges) - 1):
            if bounds[f + 1] > bounds[f]:
                yield f, vals[bounds[f] : bounds[f + 1]]


def all_pairs_sanity(
    scores: AllPairsScores, fmr_targets: Sequence[float], n_folds: int = 10, bits: int = 16
) -> dict[str, Any]:
    """10-fold accuracy (contiguous folds in comparison order), EER and FNMR@FMR of an all-vs-all
    set, equal to :mod:`exfiqa.evaluation.verification` on the materialised arrays. Two Gram scans:
    per-fold histograms in ``2**bits`` bins of the float32 order, then the values of the bins that
    can hold the EER point or a fold's best threshold."""
    n_m, n_nm = scores.n_m, scores.n_nm
    sim_m = scores.sim_m
    targets = [float(t) for t in fmr_targets]
    top, _ = scores.top_nonmated(max(int(allowed_errors(t, n_nm)) for t in targets) + 1)
    fnmr = [float(np.count_nonzero(sim_m <= top[int(allowed_errors(t, n_nm))]) / n_m) for t in targets]
    shift, nb = np.uint32(32 - bits), 1 << bits
    edges = _fold_edges(scores.n, n_folds)
    i_m, j_m = scores.mated_refs[:, 0], scores.mated_refs[:, 1]
    fold_m = np.searchsorted(edges, scores.pairs.position(i_m, j_m), side="right") - 1
    hist = np.zeros((n_folds, nb), dtype=np.int64)
    for f, vals in _nonmated_blocks(scores, edges):
        hist[f] += np.bincount(_keys32(vals) >> shift, minlength=nb)
    bin_m = _keys32(sim_m) >> shift
    h = hist.sum(0)
    lo, hi, eer_bins = _eer_bins(h, bin_m, n_m, n_nm)  # which bins to read value by value
    plans = [_accuracy_bins(h - hist[f], bin_m[fold_m != f]) for f in range(n_folds)]
    flag = np.zeros(nb, dtype=bool)
    flag[sorted(set(eer_bins).union(*(p["collect"] for p in plans)))] = True
    got_v, got_f = [np.zeros(0, np.float32)], [np.zeros(0, np.int16)]
    for f, vals in _nonmated_blocks(scores, edges):
        sel = flag[_keys32(vals) >> shift]
        got_v.append(vals[sel])
        got_f.append(np.full(int(sel.sum()), f, dtype=np.int16))
    cv, cf = np.concatenate(got_v), np.concatenate(got_f)
    cbin = _keys32(cv) >> shift
    eer = _eer_exact(h, lo, hi, cv[np.isin(cbin, eer_bins)], sim_m, n_m, n_nm, shift)
    acc = np.array([_fold_accuracy(hist, f, plans[f], cv, cf, cbin, sim_m, fold_m, shift) for f in range(n_folds)])
    return {"accuracy_10fold": float(acc.mean()), "accuracy_std": float(acc.std()), "folds": acc, "eer": eer, "fnmr": fnmr}


def _eer_bins(h: np.ndarray, bin_m: np.ndarray, n_m: int, n_nm: int) -> tuple[int, int, list[int]]:
    """``(lo, hi, bins to read)``: the bin where FMR - FNMR changes sign and the nearest non-empty bins
    below/above it (else 0 / the last); every threshold the EER can use lies in bins ``lo..hi``."""
    nb = h.size
    nm_ge = np.concatenate((np.cumsum(h[::-1])[::-1], [0]))  # non-mated in bins >= b, b = 0..nb
    m_lt = np.searchsorted(np.sort(bin_m), np.arange(nb + 1), side="left")
    g = nm_ge / n_nm - m_lt / n_m  # FMR - FNMR at the lower edge of each bin (nb: +inf)
    b = int(np.argmax(g <= 0)) - 1  # g[0] = 1 > 0 and g[nb] = -1
    nonempty = np.flatnonzero(h)
    below, above = nonempty[nonempty < b], nonempty[nonempty > b]
    lo = int(below[-1]) if below.size else 0
    hi = int(above[0]) if above.size else nb - 1
    return lo, hi, sorted({lo, b, hi})


def _eer_exact(
    h: np.ndarray, lo: int, hi: int, vals: np.ndarray, sim_m: np.ndarray, n_m: int, n_nm: int, shift: np.uint32
) -> float:
    """``metrics.eer`` over the thresholds in bins ``lo..hi`` (``vals``: their non-mated values)."""
    above = int(h[hi + 1 :].sum())  # non-mated beyond the resolved bins
    km = _keys32(sim_m).astype(np.uint64)
    inside = (km >= np.uint64(lo) << np.uint64(shift)) & (km < np.uint64(hi + 1) << np.uint64(shift))
    thr = np.unique(np.concatenate((vals, sim_m[inside])).astype(np.float64))
    if above == 0 and not (km >= np.uint64(hi + 1) << np.uint64(shift)).any():
        thr = np.append(thr, np.inf)  # nothing beyond: the ROC's last point is adjacent
    nm_sorted = np.sort(vals.astype(np.float64))
    nm_ge = above + (nm_sorted.size - np.searchsorted(nm_sorted, thr, side="left"))
    m_lt = np.searchsorted(np.sort(sim_m.astype(np.float64)), thr, side="left")
    fmr, fnmr = nm_ge / n_nm, m_lt / n_m
    i = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[i] + fnmr[i]) / 2)


def _accuracy_bins(h_tr: np.ndarray, bin_m_tr: np.ndarray) -> dict[str, Any]:
    """The bins a fold's best accuracy threshold can lie in (``cand``: a cut in bin b scores between
    ``P>=(b+1) + N<(b)`` and ``P>=(b) + N<(b+1)``, P/N: mated/non-mated counts by bin edge) and those to
    read to place it (``collect``: from the previous non-empty bin, below the lowest, the highest)."""
    nb = h_tr.size
    m_hist = np.bincount(bin_m_tr, minlength=nb)
    n_lt = np.concatenate(([0], np.cumsum(h_tr)))  # N<(b), b = 0..nb
    p_ge = np.concatenate((np.cumsum(m_hist[::-1])[::-1], [0]))  # P>=(b)
    nonempty = np.flatnonzero((h_tr + m_hist) > 0)
    lb = p_ge[nonempty + 1] + n_lt[nonempty]
    ub = p_ge[nonempty] + n_lt[nonempty + 1]
    best_lb = max(int(lb.max()), int(n_lt[-1]))
    cand = nonempty[ub >= best_lb]
    collect: set[int] = {int(nonempty[-1])}
    lowest = int(nonempty[0])
    for b in cand.tolist():
        pos = int(np.searchsorted(nonempty, b))
        prev = int(nonempty[pos - 1]) if pos else b
        collect.update(range(prev, b + 1))
        if b == lowest and b > 0:
            collect.add(b - 1)
    return {"cand": cand, "collect": collect, "n_lt": n_lt, "nonempty": nonempty}


def _fold_accuracy(
    hist: np.ndarray, f: int, plan: dict[str, Any], cv: np.ndarray, cf: np.ndarray, cbin: np.ndarray,
    sim_m: np.ndarray, fold_m: np.ndarray, shift: np.uint32,
) -> float:
    """Accuracy on fold ``f`` at the threshold that maximises it on the other folds (exact)."""
    n_lt, nonempty = plan["n_lt"], plan["nonempty"]
    m_tr = np.sort(sim_m[fold_m != f].astype(np.float64))
    bin_m_all = _keys32(sim_m) >> shift
    tr = cf != f

    def train_values(b: int) -> np.ndarray:
        return np.concatenate((cv[tr & (cbin == b)], sim_m[(fold_m != f) & (bin_m_all == b)])).astype(np.float64)

    best, best_cut, best_bin = int(n_lt[-1]), None, -1  # the inf cut; finite cuts win ties
    for b in plan["cand"].tolist():
        nm_b = np.sort(cv[tr & (cbin == b)].astype(np.float64))
        cuts = np.unique(train_values(b))
        correct = (m_tr.size - np.searchsorted(m_tr, cuts, side="left")) + n_lt[b] + np.searchsorted(nm_b, cuts, side="left")
        i = int(np.argmax(correct))
        if correct[i] >= best if best_cut is None else correct[i] > best:
            best, best_cut, best_bin = int(correct[i]), float(cuts[i]), b
    if best_cut is None:  # inf: just above the highest training value
        t = next_above(train_values(int(nonempty[-1])).max())[()]
    else:
        here = train_values(best_bin)
        lower = here[here < best_cut]
        pos = int(np.searchsorted(nonempty, best_bin))
        if lower.size:
            t = (lower.max() + best_cut) / 2
        elif pos:
            t = (train_values(int(nonempty[pos - 1])).max() + best_cut) / 2
        else:
            t = np.float64(best_cut)
    t = np.float64(t)
    z = np.float32(t)  # the largest float32 below t: s < t <=> s <= z
    if np.float64(z) >= t:
        z = np.nextafter(z, np.float32(-np.inf))
    bz = int(_keys32(np.array([z]))[0] >> shift)
    fold_vals = cv[(cf == f) & (cbin == bz)]
    neg_ok = int(hist[f, :bz].sum()) + int(np.count_nonzero(fold_vals <= z))
    pos_ok = int(np.count_nonzero(sim_m[fold_m == f] >= t))
    n_fold = int(hist[f].sum()) + int(np.count_nonzero(fold_m == f))
    return (pos_ok + neg_ok) / n_fold
