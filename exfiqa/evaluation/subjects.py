"""Independent units (subjects) of a comparison set and the weights a unit resample gives them.

``S`` units drawn with replacement, unit ``u`` ``w[u]`` times: a comparison of units ``a != b`` enters
``w[a] * w[b]`` times, one within a unit ``w[a]`` times, copies together at their place in the stable
quality order. Exact integer weights: :class:`ExplicitUnits` (comparison lists), :class:`AllPairsUnits`
(all-vs-all, closed form per group). Units per benchmark: :meth:`exfiqa.study.Study.subjects`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exfiqa.evaluation.pairs import AllPairs
from exfiqa.evaluation.rules import level_starts


def _compact(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids as 0..S-1 (the order of ``np.unique``) in the narrowest unsigned dtype, and S."""
    x = np.asarray(ids)
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"subjects: expected integer unit ids, got dtype {x.dtype}")
    uniq, inv = np.unique(x, return_inverse=True)
    dt = np.uint16 if uniq.size <= 2**16 else np.uint32
    return inv.reshape(x.shape).astype(dt), int(uniq.size)


def draw_unit_weights(n_units: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n_units`` units is drawn in one resample of ``n_units`` with replacement."""
    return np.bincount(rng.integers(0, n_units, n_units), minlength=n_units).astype(np.int64)


def _pair_weights(w: np.ndarray, ua: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """Copies of each comparison: ``w[a] * w[b]`` across units, ``w[a]`` within one unit (int64)."""
    wa, wb = w[ua], w[ub]
    return np.where(ua == ub, wa, wa * wb)


class ExplicitUnits:
    """Units of an explicit comparison list: ``subjects`` (N, 2), the unit of each side; ``refs`` are
    comparison positions."""

    def __init__(self, subjects: Any, n: int | None = None) -> None:
        s = np.asarray(subjects)
        if s.ndim != 2 or s.shape[1] != 2:
            raise ValueError(f"subjects: expected an (N, 2) integer array of unit ids, got shape {s.shape}")
        if n is not None and s.shape[0] != n:
            raise ValueError(f"subjects: expected one row per comparison ({n}), got {s.shape[0]}")
        units, self.n_units = _compact(s)
        self.ua, self.ub = np.ascontiguousarray(units[:, 0]), np.ascontiguousarray(units[:, 1])
        self.n = int(s.shape[0])
        key = self.ua.astype(np.int64) * self.n_units + self.ub
        pairs, counts = np.unique(key, return_counts=True)
        self._pu, self._pv = pairs // self.n_units, pairs % self.n_units  # distinct unit pairs
        self._pc = counts.astype(np.int64)

    def weights(self, w: np.ndarray, refs: np.ndarray) -> np.ndarray:
        """Copies of the comparisons ``refs`` in a resample with unit counts ``w``."""
        return _pair_weights(w, self.ua[refs].astype(np.int64), self.ub[refs].astype(np.int64))

    def total(self, w: np.ndarray) -> int:
        """Comparisons in the resample (all copies), from the distinct unit pairs."""
        return int(np.sum(self._pc * _pair_weights(w, self._pu, self._pv)))

    def plan(self, order: Any) -> _ExplicitPlan:
        return _ExplicitPlan(self, order)


class _ExplicitPlan:
    """One quality order of an explicit list: the units in stable quality order, each comparison's rank."""

    def __init__(self, units: ExplicitUnits, order: Any) -> None:
        pos = np.asarray(order.ranks(np.arange(units.n)), dtype=np.int64)
        perm = np.empty(units.n, dtype=np.int64)
        perm[pos] = np.arange(units.n)
        self.ua, self.ub = units.ua[perm], units.ub[perm]
        del perm
        self.same = np.flatnonzero(self.ua == self.ub)
        self.pos = pos.astype(np.int32) if units.n < 2**31 else pos

    def ends(self, w: np.ndarray, refs: Any, n_levels: int = 20) -> tuple[list[np.ndarray], int]:
        """``(ends of each array of refs, total)``: one past the last slot of each comparison's copies
        in the weighted stable quality order, and the number of slots (exact whatever ``n_levels``)."""
        if w.size and int(w.max()) >= 2**16:  # pragma: no cover - a unit drawn 65,536 times
            raise ValueError("subjects: a unit weight does not fit the 32-bit products")
        w32 = w.astype(np.uint32)
        cw = w32.take(self.ua)
        np.multiply(cw, w32.take(self.ub), out=cw)
        cw[self.same] = w32.take(self.ua[self.same])
        arrays = [np.asarray(r) for r in refs]
        pos, inv = np.unique(np.concatenate([self.pos[r] for r in arrays]), return_inverse=True)
        seg = np.add.reduceat(cw, np.concatenate(([0], pos[:-1] + 1)), dtype=np.int64) if pos.size else np.zeros(0, np.int64)
        ends = np.cumsum(seg)
        tail = int(np.sum(cw[pos[-1] + 1 :] if pos.size else cw, dtype=np.int64))
        if pos.size:  # the last segment ran to the end: keep it up to the last referenced rank
            ends[-1] -= tail
        total = int(ends[-1]) + tail if pos.size else tail
        return np.split(ends[inv], np.cumsum([r.size for r in arrays])[:-1]), total


class AllPairsUnits:
    """Units of an all-vs-all set (:class:`exfiqa.evaluation.pairs.AllPairs`), one unit id per sample;
    ``refs`` are ``(K, 2)`` arrays of sample indices ``(i, j)``."""

    def __init__(self, pairs: Any, sample_units: Any) -> None:
        u = np.asarray(sample_units)
        if u.ndim != 1 or u.shape[0] != pairs.n_samples:
            raise ValueError(
                f"subjects: expected one unit id per sample ({pairs.n_samples}) for an all-vs-all set, got shape {u.shape}"
            )
        units, self.n_units = _compact(u)
        self.u = units.astype(np.int64)
        self.n_samples = int(pairs.n_samples)
        self._per_unit = np.bincount(self.u, minlength=self.n_units).astype(np.int64)
        self.by_unit = np.argsort(self.u, kind="stable")  # samples sorted by (unit, index)
        self.key = self.u[self.by_unit] * self.n_samples + self.by_unit  # sorted keys
        self.place = np.empty(self.n_samples, dtype=np.int64)
        self.place[self.by_unit] = np.arange(self.n_samples)

    def weights(self, w: np.ndarray, refs: np.ndarray) -> np.ndarray:
        r = np.asarray(refs)
        return _pair_weights(w, self.u[r[:, 0]], self.u[r[:, 1]])

    def total(self, w: np.ndarray) -> int:
        s = w[self.u]
        same = (self._per_unit * (self._per_unit - 1) // 2) * (w - w * w)
        return int((int(s.sum()) ** 2 - int(np.sum(s * s))) // 2 + int(same.sum()))

    def plan(self, order: Any) -> _AllPairsPlan:
        return _AllPairsPlan(self, order)


class _AllPairsPlan:
    """One quality order of an all-vs-all set: pairs whose minimum has dense rank r form group r (row-major
    inside), weighed in closed form; exact slots only inside groups a level boundary cuts."""

    def __init__(self, units: AllPairsUnits, order: Any) -> None:
        self.units = units
        self.rank = np.asarray(order.rank, dtype=np.int64)
        self.n_ranks = int(order.uniq.size)
        # same-unit pairs per (unit, rank of their minimum): C(n_ur, 2) + n_ur * n_u(>r)
        key = units.u * self.n_ranks + self.rank
        ur, cnt = np.unique(key, return_counts=True)
        uu, rr = ur // self.n_ranks, ur % self.n_ranks
        seg_end = np.cumsum(cnt)
        first = np.searchsorted(uu, uu, side="left")  # first (u, r) row of each unit
        within = seg_end - np.concatenate(([0], seg_end[:-1]))[first] if cnt.size else cnt  # samples of u up to r
        above = units._per_unit[uu] - within
        self.m_u, self.m_r = uu, rr
        self.m_n = (cnt * (cnt - 1) // 2 + cnt * above).astype(np.int64)

    def _group_weights(self, w: np.ndarray) -> np.ndarray:
        s = w[self.units.u]
        big = np.bincount(self.rank, weights=s.astype(np.float64), minlength=self.n_ranks)
        sq = np.bincount(self.rank, weights=(s * s).astype(np.float64), minlength=self.n_ranks)
        above = float(big.sum()) - np.cumsum(big)
        wm = w[self.m_u]
        corr = np.bincount(self.m_r, weights=((wm - wm * wm) * self.m_n).astype(np.float64), minlength=self.n_ranks)
        g = (big * big - sq) / 2 + big * above + corr  # integers below 2**53: exact in float64
        return np.rint(g).astype(np.int64)

    def ends(self, w: np.ndarray, refs: Any, n_levels: int = 20) -> tuple[list[np.ndarray], int]:
        """As :meth:`_ExplicitPlan.ends`, exact relative to the first ``n_levels`` level starts."""
        g = self._group_weights(w)
        cum = np.cumsum(g)
        total = int(cum[-1]) if cum.size else 0
        start = cum - g
        bounds = level_starts(total)[1:n_levels]
        hold = np.searchsorted(cum, bounds, side="right")  # the group holding slot d[j]
        hold = hold[hold < g.size]
        cut = np.unique(hold[start[hold] < bounds[: hold.size]])
        out = []
        for r in refs:
            r = np.asarray(r)
            i, j = r[:, 0].astype(np.int64), r[:, 1].astype(np.int64)
            grp = np.minimum(self.rank[i], self.rank[j])
            end = cum[grp].copy()
            for c in cut.tolist():
                sel = np.flatnonzero(grp == c)
                if sel.size:
                    end[sel] = start[c] + self._within(w, c, i[sel], j[sel])
            out.append(end)
        return out, total

    def _within(self, w: np.ndarray, r: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """End of the copies of pairs (i, j) inside group r: the weight of the group's pairs up to and
        including (i, j) in row-major order. Row x holds the pairs (x, y), y > x, y of rank >= r if x
        has rank r, else of rank r; a same-unit pair weighs w, not w * w."""
        un = self.units
        n = un.n_samples
        u, s = un.u, w[un.u]
        eq = self.rank == r
        ge = self.rank >= r
        pref_s = {m: np.concatenate(([0], np.cumsum(s * k))) for m, k in (("eq", eq), ("ge", ge))}
        cnt = {m: np.concatenate(([0], np.cumsum(k[un.by_unit]))) for m, k in (("eq", eq), ("ge", ge))}
        extra = w * w - w  # per unit: w^2 - w

        def after(m: str, x: np.ndarray, y_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Sum of s and same-unit count over partners y of mask m with x < y < y_end."""
            ps = pref_s[m][y_end] - pref_s[m][x + 1]
            stop = np.searchsorted(un.key, u[x] * n + y_end, side="left")  # places of unit u[x] below y_end
            same = cnt[m][stop] - cnt[m][un.place[x] + 1]
            return ps, same

        def row_weight(x: np.ndarray, y_end: np.ndarray) -> np.ndarray:
            """Weight of the group's pairs (x, y) with y < y_end."""
            (ps_g, c_g), (ps_e, c_e), xe = after("ge", x, y_end), after("eq", x, y_end), eq[x]
            return s[x] * np.where(xe, ps_g, ps_e) - extra[u[x]] * np.where(xe, c_g, c_e)

        rows = np.flatnonzero(ge)
        row_cum = np.zeros(n + 1, dtype=np.int64)
        row_cum[rows + 1] = row_weight(rows, np.full(rows.size, n))
        row_cum = np.cumsum(row_cum)  # weight of rows < x at row_cum[x]
        return row_cum[i] + row_weight(i, j) + _pair_weights(w, u[i], u[j])


def comparison_units(comparison_set: Any, side_units: Any) -> ExplicitUnits | AllPairsUnits:
    """The units object of a :mod:`exfiqa.evaluation.pairs` set from the unit of each side (sample or template)."""
    side = np.asarray(side_units)
    if isinstance(comparison_set, AllPairs):
        return AllPairsUnits(comparison_set, side)
    if side.ndim != 1 or side.shape[0] != comparison_set.n_sides:
        raise ValueError(f"side_units: expected one unit per side ({comparison_set.n_sides}), got shape {side.shape}")
    return ExplicitUnits(np.stack((side[comparison_set.a], side[comparison_set.b]), axis=1))


def mated_components(a: Any, b: Any, mated: Any, n_sides: int) -> np.ndarray:
    """Subject id of each side: the connected components of the mated comparisons (a side in none
    is its own unit; units may be finer than subjects, never coarser), numbered by first appearance."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b, m = np.asarray(a), np.asarray(b), np.asarray(mated, dtype=bool)
    g = coo_matrix((np.ones(int(m.sum()), dtype=np.int8), (a[m], b[m])), shape=(n_sides, n_sides))
    _, labels = connected_components(g, directed=False)
    _, first = np.unique(labels, return_index=True)
    rename = np.empty(first.size, dtype=np.int64)
    rename[np.argsort(np.argsort(first))] = np.arange(first.size)
    out: np.ndarray = rename[labels]
    return out


def repeated_images(digests: Any) -> dict[str, float]:
    """How often images repeat across a pair benchmark's comparisons, from each sample's content
    digest (two samples per pair): ``{"images", "distinct", "shared_pairs" (share of pairs with an
    image also in another pair), "max_uses" (most pairs one image appears in)}``."""
    d = np.asarray(digests)
    if d.shape[0] % 2:
        raise ValueError(f"digests: expected two samples per pair, got {d.shape[0]} samples")
    uniq, inv, counts = np.unique(d, return_inverse=True, return_counts=True)
    pair_uses = counts.astype(np.int64)
    pairs = inv.reshape(-1, 2)
    same = pairs[:, 0] == pairs[:, 1]
    np.subtract.at(pair_uses, pairs[same, 0], 1)  # an image twice in one pair counts once
    shared = (pair_uses[pairs[:, 0]] > 1) | (pair_uses[pairs[:, 1]] > 1)
    return {
        "images": int(d.shape[0]), "distinct": int(uniq.size),
        "shared_pairs": float(shared.mean()) if pairs.shape[0] else 0.0,
        "max_uses": int(pair_uses.max()) if pair_uses.size else 0,
    }
