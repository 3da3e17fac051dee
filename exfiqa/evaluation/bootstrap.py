"""Bootstrap intervals of pAUC-EDC (:mod:`exfiqa.evaluation.pauc`), single and paired.

* ``subjects=``: units resampled with replacement (weights: :mod:`exfiqa.evaluation.subjects`).
* Without: mated and non-mated comparisons resampled, stratified, as if independent. Only the mated
  and the top non-mated *candidates* (:data:`exfiqa.evaluation.scores.MIN_CANDIDATES`) are drawn;
  ``fixed`` draws the threshold from its exact rank distribution, ``recompute`` pools the other
  copies into the *gaps* between needed comparisons (blocks of :data:`_GAP_BLOCK`), each order
  from its own generator (seeded by ``seed`` and its structure).

A resampled comparison keeps its pair quality and input position (stable tie-break). Deterministic
per seed (and numpy version). ``at_most`` rule only. Percentile intervals: ``np.quantile`` (linear)
at ``alpha / 2`` and ``1 - alpha / 2``, around the original pAUC.
"""

from __future__ import annotations

import functools
import hashlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from exfiqa.evaluation.edc import edc_curves
from exfiqa.evaluation.pauc import best_area, pauc, stepwise_area, trapezoid_area, triangle_area
from exfiqa.evaluation.rules import (
    RECOMPUTE_DISCARD_FRACTIONS,
    Acceptance,
    BestCurve,
    Convention,
    ThresholdRule,
    allowed_errors,
    as_best_curve,
    as_convention,
    as_rule,
    check_limit,
    check_rate,
    is_strict,
    level_starts,
)
from exfiqa.evaluation.scores import (
    ArrayOrder,
    Comparisons,
    min_candidates,
    rule_view,
    top_candidates,
)
from exfiqa.evaluation.subjects import AllPairsUnits, ExplicitUnits, draw_unit_weights


class BootstrapResult(NamedTuple):
    """Point estimate and percentile interval of a pAUC; ``samples``: the resampled values."""

    estimate: float
    lower: float
    upper: float
    samples: np.ndarray


class PairedBootstrapResult(NamedTuple):
    """pAUC(a) - pAUC(b) with its percentile interval, from the same resamples for both;
    ``frac_a_below_b``: share of resamples with pAUC(a) < pAUC(b) (a better)."""

    difference: float
    lower: float
    upper: float
    frac_a_below_b: float
    samples: np.ndarray


_BOOT_CELLS = 4_000_000  # entries of the (resamples x mated) count matrix per block


def _boot_checks(
    n_boot: int, alpha: float, threshold_rule: ThresholdRule | str, acceptance: Acceptance | str
) -> bool:
    """Validate the bootstrap arguments (``at_most`` rule only); returns strict acceptance."""
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot: expected an integer >= 2, got {n_boot!r}")
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha: must lie in (0, 1), got {alpha!r}")
    if as_rule(threshold_rule) is not ThresholdRule.AT_MOST:
        raise ValueError(
            "threshold_rule: the bootstrap supports 'at_most' only (the resampled order statistic "
            "has an exact distribution there); evaluate 'closest' without intervals"
        )
    return is_strict(acceptance)


def _order_stat_samples(comp: Comparisons, k: int, u: np.ndarray) -> np.ndarray:
    """Exact draws of the (k+1)-th largest score of a resample of the non-mated: its rank R
    (1-based, descending), ``P(R <= r) = P(Binomial(n, r/n) >= k + 1)``, inverted at uniforms ``u``."""
    from scipy.special import bdtrc

    n = comp.n_nm
    r_hi = min(n, k + 1 + int(12 * math.sqrt(k + 1)) + 64)
    u_max = float(u.max())
    while True:
        r = np.arange(1, r_hi + 1, dtype=np.float64)
        cdf = np.maximum.accumulate(bdtrc(k, n, r / n))
        if r_hi == n or cdf[-1] >= u_max:
            break
        r_hi = min(n, 2 * r_hi)
    if r_hi == n:
        cdf[-1] = 1.0
    rank = np.minimum(np.searchsorted(cdf, u, side="left"), r_hi - 1)
    top_vals, _ = comp.top_nonmated(r_hi)
    return top_vals[rank]


class _FixedPlan:
    """One quality measure's mated comparisons in stable quality order, with tie groups."""

    def __init__(self, comp: Any, q_m: np.ndarray) -> None:
        self.order = np.argsort(q_m, kind="stable")
        qs = q_m[self.order]
        self.sim = comp.sim_m[self.order]
        self.groups = np.concatenate(([0], np.flatnonzero(qs[1:] != qs[:-1]) + 1))

    def pauc(
        self, counts: np.ndarray, stats: np.ndarray, limit: float, best: BestCurve | None
    ) -> np.ndarray:
        """pAUC per resample from ``counts`` (B, n_m), the copies of each mated comparison in
        mated order, and thresholds ``stats`` (B,). A row without mated copies gives NaN."""
        c = counts[:, self.order]
        err = c * (self.sim[None, :] <= stats[:, None])
        gc = np.add.reduceat(c, self.groups, axis=1)
        ge = np.add.reduceat(err, self.groups, axis=1)
        total = c.sum(axis=1)
        discarded = np.cumsum(gc, axis=1) - gc
        remaining = total[:, None] - discarded
        err_total = ge.sum(axis=1)
        err_left = err_total[:, None] - (np.cumsum(ge, axis=1) - ge)
        with np.errstate(invalid="ignore", divide="ignore"):
            fnmr = np.where(remaining > 0, err_left / remaining, 0.0)
            frac = discarded / total[:, None]
            area = stepwise_area(frac, fnmr, limit)
            if best is BestCurve.TRIANGLE:
                area -= triangle_area(err_total / total, limit)
        if best is BestCurve.STEPWISE:
            cached = functools.cache(best_area)
            for i, (e, t) in enumerate(zip(err_total.tolist(), total.tolist(), strict=True)):
                if t > 0:
                    area[i] -= cached(e, t, limit)
        out: np.ndarray = np.where(total > 0, area, np.nan)
        return out


def _fixed_boot(
    comp: Any, orders: list[Any], fmr: float, limit: float, best: BestCurve | None, n_boot: int, seed: int
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    plans = [_FixedPlan(comp, np.asarray(o.quality(comp.mated_refs))) for o in orders]
    k = int(allowed_errors(fmr, comp.n_nm))
    stats = _order_stat_samples(comp, k, rng.random(n_boot))
    out = [np.empty(n_boot) for _ in orders]
    block = max(1, _BOOT_CELLS // comp.n_m)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        draws = rng.integers(0, comp.n_m, size=(b, comp.n_m)) + (np.arange(b) * comp.n_m)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * comp.n_m).reshape(b, comp.n_m)
        for plan, o in zip(plans, out, strict=True):
            o[start : start + b] = plan.pauc(counts, stats[start : start + b], limit, best)
    return out


def _recompute_weighted(
    d: np.ndarray, n: int, fmr: float, end_m: np.ndarray, w_m: np.ndarray, sim_m: np.ndarray,
    end_c: np.ndarray, w_c: np.ndarray, val_c: np.ndarray,
) -> np.ndarray | None:
    """``recompute`` FNMR per level j (keeps slots ``>= d[j]``) of a weighted set: copies at slots
    ``[end - w, end)``; ``*_m``: mated, ``*_c``: the candidates by similarity descending. None when
    the candidates do not reach a needed order statistic (retry with more)."""
    small: type[np.signedinteger[Any]] = np.int32 if n < 2**31 else np.int64  # halves the memory traffic of the (L, K) arrays
    d_s = d.astype(small)[:, None]
    rem_m = np.minimum(np.maximum(end_m.astype(small)[None, :] - d_s, 0), w_m.astype(small)[None, :])
    n_m_j = rem_m.sum(axis=1, dtype=np.int64)
    n_nm_j = (n - d) - n_m_j
    rem_c = np.minimum(np.maximum(end_c.astype(small)[None, :] - d_s, 0), w_c.astype(small)[None, :])
    cum_c = np.cumsum(rem_c, axis=1)
    fnmr = np.full(d.shape[0], np.nan)
    for j in range(d.shape[0]):
        if n_m_j[j] == 0 or n_nm_j[j] == 0:
            continue
        k = int(allowed_errors(fmr, n_nm_j[j]))
        i = int(np.searchsorted(cum_c[j], k + 1, side="left"))
        if i >= cum_c.shape[1]:
            return None
        fnmr[j] = np.sum(rem_m[j] * (sim_m <= val_c[i])) / n_m_j[j]
    return fnmr


class _GapPlan:
    """One quality order as its needed comparisons (mated, candidates) and the *gaps* between them
    (``gap_0, needed_0, ..., needed_{Q-1}, gap_Q``, from stable ranks); ``digest`` seeds its gap draws."""

    def __init__(self, n: int, ranks_m: np.ndarray, ranks_c: np.ndarray) -> None:
        ranks = np.concatenate((np.asarray(ranks_m), np.asarray(ranks_c))).astype(np.int64)
        o = np.argsort(ranks, kind="stable")
        self.qpos = ranks[o]  # sorted ranks of the needed comparisons
        n_q = self.qpos.shape[0]
        self.gap_size = np.diff(np.concatenate(([-1], self.qpos, [n]))) - 1  # n_q + 1 gaps
        q_of = np.empty(n_q, dtype=np.int64)
        q_of[o] = np.arange(n_q)
        self.m_q, self.c_q = q_of[: len(ranks_m)], q_of[len(ranks_m) :]  # needed index of the mated, candidates
        self.rest = int(self.gap_size.sum())
        h = hashlib.sha256(np.int64(n).tobytes() + self.qpos.tobytes() + (2 * self.m_q + 1).tobytes())
        self.digest = int.from_bytes(h.digest()[:8], "little")
        self.d = level_starts(n)
        self.n = n
        self.refined: dict[int, tuple[_GapPlan, np.ndarray]] = {}
        self.n_q = n_q
        self.block_start = np.arange(0, self.gap_size.shape[0], _GAP_BLOCK)
        self.needed_block = np.arange(n_q) // _GAP_BLOCK  # needed q follows gap q
        block_size = np.add.reduceat(self.gap_size, self.block_start)
        self.block_p = block_size / self.rest if self.rest else None

    def ends(
        self, c_m: np.ndarray, c_c: np.ndarray, total: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, dict[int, np.ndarray]]]:
        """``(end_m, end_c, state)``: end slot of each mated and candidate comparison's copies,
        ``total`` pooled copies spread over the gaps by block (per gap only in blocks a level
        boundary falls in); ``state`` completes the draw (:meth:`full_gaps`)."""
        nb = self.block_start.shape[0]
        needed = np.zeros(self.n_q, dtype=np.int64)
        needed[self.m_q] = c_m
        needed[self.c_q] = c_c
        pooled = rng.multinomial(total, self.block_p) if self.block_p is not None else np.zeros(nb, np.int64)
        per_block = pooled + np.bincount(self.needed_block, weights=needed, minlength=nb).astype(np.int64)
        end_b = np.cumsum(per_block)
        start_b = end_b - per_block
        bounds = self.d[1:]
        blk = np.minimum(np.searchsorted(end_b, bounds, side="right"), nb - 1)
        cut = np.unique(blk[start_b[blk] < bounds])  # blocks a boundary falls strictly inside
        end_q = end_b[self.needed_block]
        inside: dict[int, np.ndarray] = {}
        for b in cut.tolist():
            g0 = int(self.block_start[b])
            inside[b] = cnt = self._block_gaps(g0, int(pooled[b]), rng)
            q1 = min(g0 + cnt.shape[0], self.n_q)
            end_q[g0:q1] = start_b[b] + np.cumsum(cnt[: q1 - g0]) + np.cumsum(needed[g0:q1])
        return end_q[self.m_q], end_q[self.c_q], (pooled, inside)

    def _block_gaps(self, g0: int, pooled: int, rng: np.random.Generator) -> np.ndarray:
        """The ``pooled`` copies of the block of gaps from ``g0`` spread over its gaps by size."""
        sizes = self.gap_size[g0 : g0 + _GAP_BLOCK]
        total = int(sizes.sum())
        if pooled == 0 or total == 0:
            return np.zeros(sizes.shape[0], dtype=np.int64)
        return rng.multinomial(pooled, sizes / total)

    def full_gaps(self, state: tuple[np.ndarray, dict[int, np.ndarray]], rng: np.random.Generator) -> np.ndarray:
        """Every gap's count, completing :meth:`ends`' draw (exact conditional draws per block)."""
        pooled, inside = state
        out = np.zeros(self.gap_size.shape[0], dtype=np.int64)
        for b, g0 in enumerate(self.block_start.tolist()):
            out[g0 : g0 + _GAP_BLOCK] = inside[b] if b in inside else self._block_gaps(g0, int(pooled[b]), rng)
        return out

    def fnmr(
        self, comp: Any, fmr: float, c_m: np.ndarray, c_c: np.ndarray, gaps: np.ndarray, vals: np.ndarray
    ) -> np.ndarray | None:
        """``recompute`` FNMR per level given every gap's count (:func:`_recompute_weighted`)."""
        seq = np.zeros(2 * self.n_q + 1, dtype=np.int64)  # gap_0, needed_0, gap_1, ...
        seq[0::2] = gaps
        seq[2 * self.m_q + 1] = c_m
        seq[2 * self.c_q + 1] = c_c
        cum = np.cumsum(seq)
        end_m, end_c = cum[2 * self.m_q + 1], cum[2 * self.c_q + 1]
        return _recompute_weighted(self.d, self.n, fmr, end_m, c_m, comp.sim_m, end_c, c_c, vals)

    def refine(
        self, comp: Any, order: Any, m: int, ranks_m: np.ndarray, ranks_c: np.ndarray
    ) -> tuple[_GapPlan, np.ndarray]:
        """The plan with the top ``m`` non-mated as candidates (a superset); cached per ``m``."""
        if m not in self.refined:
            _, refs = top_candidates(comp, m)
            extra = np.asarray(order.ranks(refs[ranks_c.shape[0] :]), dtype=np.int64)
            self.refined[m] = (_GapPlan(self.n, ranks_m, np.concatenate((ranks_c, extra))), extra)
        return self.refined[m]

    def split(
        self, finer: _GapPlan, extra: np.ndarray, gaps: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(finer gap counts, extra candidate counts in their given order)``: each gap's copies
        spread uniformly over its sub-gaps and extra candidates (exact conditional draws)."""
        o = np.argsort(extra, kind="stable")
        ext = extra[o]
        parent = np.searchsorted(self.qpos, ext)  # this plan's gap holding each extra
        below = np.searchsorted(ext, self.qpos)  # extras below each needed comparison
        first = np.arange(gaps.shape[0]) + np.concatenate(([0], below))  # first sub-gap
        n_ext = np.bincount(parent, minlength=gaps.shape[0])
        fine = np.zeros(finer.gap_size.shape[0], dtype=np.int64)
        plain = n_ext == 0
        fine[first[plain]] = gaps[plain]
        ext_counts = np.zeros(ext.shape[0], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(n_ext)))
        for g in np.flatnonzero(~plain & (gaps > 0)):
            t = int(n_ext[g])
            sizes = np.ones(2 * t + 1)
            sizes[0::2] = finer.gap_size[first[g] : first[g] + t + 1]
            draw = rng.multinomial(int(gaps[g]), sizes / sizes.sum())
            fine[first[g] : first[g] + t + 1] = draw[0::2]
            ext_counts[starts[g] : starts[g + 1]] = draw[1::2]
        out = np.empty_like(ext_counts)
        out[o] = ext_counts
        return fine, out


def _recompute_boot(
    comp: Any, orders: list[Any], fmr: float, limit: float, n_boot: int, seed: int
) -> list[np.ndarray]:
    k = int(allowed_errors(fmr, comp.n_nm))
    m0 = max(4 * (k + 1), min_candidates())
    cand_vals, cand_refs = top_candidates(comp, m0)
    n_c = cand_vals.shape[0]
    ranks = []
    for o in orders:  # one call per order: the ranks of the mated and the candidates together
        r = np.asarray(o.ranks(np.concatenate((comp.mated_refs, cand_refs))), np.int64)
        ranks.append((r[: comp.n_m], r[comp.n_m :]))
    plans = [_GapPlan(comp.n, rm, rc) for rm, rc in ranks]
    rng = np.random.default_rng(seed)  # shared: mated and candidate counts
    plan_rngs = [np.random.default_rng([int(seed), p.digest]) for p in plans]  # gaps, per order
    out = [np.empty(n_boot) for _ in orders]
    for b in range(n_boot):
        c_m = np.bincount(rng.integers(0, comp.n_m, comp.n_m), minlength=comp.n_m)
        # the non-mated resample's copies on the candidates (a binomial total, spread uniformly:
        # the multinomial over candidates + rest), the rest pooled
        on_cand = int(rng.binomial(comp.n_nm, n_c / comp.n_nm))
        c_c = np.bincount(rng.integers(0, n_c, on_cand), minlength=n_c)
        rest = comp.n_nm - on_cand
        for p, (plan, prng, o) in enumerate(zip(plans, plan_rngs, out, strict=True)):
            end_m, end_c, state = plan.ends(c_m, c_c, rest, prng)
            fnmr = _recompute_weighted(plan.d, plan.n, fmr, end_m, c_m, comp.sim_m, end_c, c_c, cand_vals)
            if fnmr is None:  # rare: the order statistic lies below the candidates
                cur, cur_c, cur_gaps, m = plan, c_c, plan.full_gaps(state, prng), m0
            while fnmr is None:
                m *= 4
                finer, extra = plan.refine(comp, orders[p], m, *ranks[p])
                vals, _ = top_candidates(comp, m)
                cur_gaps, extra_c = cur.split(finer, extra[cur_c.shape[0] - n_c :], cur_gaps, prng)
                cur_c = np.concatenate((cur_c, extra_c))
                cur = finer
                fnmr = cur.fnmr(comp, fmr, c_m, cur_c, cur_gaps, vals)
            o[b] = trapezoid_area(RECOMPUTE_DISCARD_FRACTIONS, fnmr, limit)
    return out


_GAP_BLOCK = 256  # gaps drawn together unless a level boundary falls among them


def _run_bootstrap(
    comp: Any, orders: list[Any], fmr: float, conv: Convention, limit: float,
    subtract_best: bool | BestCurve | str | None, n_boot: int, seed: int, units: Any = None,
) -> list[np.ndarray]:
    """pAUC samples of every order: units resampled when ``units`` is given, else comparisons."""
    best = as_best_curve(subtract_best)
    if units is not None:
        return _unit_boot(comp, orders, units, fmr, conv, limit, best, int(n_boot), seed)
    if conv is Convention.FIXED:
        return _fixed_boot(comp, orders, fmr, limit, best, int(n_boot), seed)
    return _recompute_boot(comp, orders, fmr, limit, int(n_boot), seed)


def _units_of(comp: Any, subjects: Any) -> Any:
    """The units object for ``subjects``: an (N, 2) array of side units (explicit comparisons),
    a per-sample array (an all-vs-all scores object) or a prepared :mod:`exfiqa.evaluation.subjects` object."""
    if hasattr(subjects, "plan") and hasattr(subjects, "n_units"):
        return subjects
    base = getattr(comp, "base", comp)
    pairs = getattr(base, "pairs", None)
    arr = np.asarray(subjects)
    if pairs is not None and arr.ndim == 1:
        return AllPairsUnits(pairs, arr)
    if pairs is not None:
        raise ValueError(
            "subjects: an all-vs-all comparison set takes one unit id per sample (shape "
            f"({pairs.n_samples},)), got shape {arr.shape}"
        )
    return ExplicitUnits(arr, comp.n)


def _weighted_stat(vals: np.ndarray, w_c: np.ndarray, k: int) -> float | None:
    """The (k+1)-th largest non-mated score of a weighted set (copies ``w_c`` of the descending
    candidates ``vals``); None when the candidates hold fewer than k + 1 copies."""
    cum = np.cumsum(w_c)
    i = int(np.searchsorted(cum, k + 1, side="left"))
    return None if i >= cum.shape[0] else float(vals[i])


class _Candidates:
    """The top non-mated candidates ``vals``, ``refs`` of ``comp``, grown 4x when a resample needs more."""

    def __init__(self, comp: Any, fmr: float) -> None:
        self.comp = comp
        self.m = max(4 * (int(allowed_errors(fmr, comp.n_nm)) + 1), min_candidates())
        self.vals, self.refs = top_candidates(comp, self.m)

    def grow(self) -> bool:
        """Four times as many candidates; False when every non-mated already is one."""
        if self.vals.shape[0] >= self.comp.n_nm:
            return False
        self.m *= 4
        self.vals, self.refs = top_candidates(self.comp, self.m)
        return True

    def stat(self, units: Any, w: np.ndarray, k: int) -> tuple[float | None, np.ndarray]:
        """The resample's (k+1)-th largest non-mated score (:func:`_weighted_stat`) and the candidates' weights."""
        while True:
            w_c = units.weights(w, self.refs)
            stat = _weighted_stat(self.vals, w_c, k)
            if stat is not None or not self.grow():
                return stat, w_c


def _unit_resamples(comp: Any, units: Any, n_boot: int, seed: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """``(b, w, w_m, n_nm_w)`` per unit resample: unit counts, mated copies, non-mated copies."""
    rng = np.random.default_rng(seed)
    for b in range(n_boot):
        w = draw_unit_weights(units.n_units, rng)
        w_m = units.weights(w, comp.mated_refs)
        yield b, w, w_m, units.total(w) - int(w_m.sum())


def _needed_levels(limit: float) -> int:
    """How many ``recompute`` levels a pAUC up to ``limit`` reads (the next one interpolates)."""
    f = RECOMPUTE_DISCARD_FRACTIONS
    n = int(np.sum(f <= limit + 1e-12))
    return int(min(f.shape[0], n + (0 if np.any(np.abs(f - limit) <= 1e-12) else 1)))


def _unit_boot(
    comp: Any, orders: list[Any], units: Any, fmr: float, conv: Convention, limit: float,
    best: BestCurve | None, n_boot: int, seed: int,
) -> list[np.ndarray]:
    """pAUC samples of every order under one draw of unit counts per resample (shared by every
    order); NaN where a resample leaves no mated or non-mated copies the pAUC needs."""
    cands = _Candidates(comp, fmr)
    out = [np.full(n_boot, np.nan) for _ in orders]
    if conv is Convention.FIXED:
        plans = [_FixedPlan(comp, np.asarray(o.quality(comp.mated_refs))) for o in orders]
    else:
        gplans = [units.plan(o) for o in orders]
        n_lv = _needed_levels(limit)
    for b, w, w_m, n_nm_w in _unit_resamples(comp, units, n_boot, seed):
        if n_nm_w <= 0 or not w_m.any():
            continue
        k = int(allowed_errors(fmr, n_nm_w))
        stat, w_c = cands.stat(units, w, k)
        if conv is Convention.FIXED:  # stat is found once every non-mated is a candidate (k < n_nm_w)
            for plan, o in zip(plans, out, strict=True):
                o[b] = plan.pauc(w_m[None, :], np.array([stat]), limit, best)[0]
            continue
        for gp, o in zip(gplans, out, strict=True):
            while True:
                (end_m, end_c), n_all = gp.ends(w, [comp.mated_refs, cands.refs], n_lv)
                d = level_starts(n_all)[:n_lv]
                fnmr = _recompute_weighted(d, n_all, fmr, end_m, w_m, comp.sim_m, end_c, w_c, cands.vals)
                if fnmr is not None or not cands.grow():
                    break
                w_c = units.weights(w, cands.refs)
            assert fnmr is not None  # found once every non-mated is a candidate
            try:
                o[b] = trapezoid_area(RECOMPUTE_DISCARD_FRACTIONS[:n_lv], fnmr, limit)
            except ValueError:  # no mated or non-mated copies left at a level <= limit
                o[b] = np.nan
    return out


def _intervals(samples: np.ndarray, alpha: float, strict: bool = True) -> tuple[float, float]:
    """Percentile interval of the finite samples (only a unit resample can leave one undefined);
    with none, NaN unless ``strict`` (raises); ``strict`` also warns when some are undefined."""
    ok = np.isfinite(samples)
    if not ok.any() and not strict:
        return (float("nan"), float("nan"))
    if not ok.any():
        raise ValueError(
            "subjects: no resample left mated and non-mated comparisons at every discard level: too few units"
        )
    if strict and not ok.all():
        warnings.warn(
            f"{int((~ok).sum())} of {samples.shape[0]} unit resamples leave the pAUC undefined (no mated "
            "or non-mated copies at a level); the interval uses the others",
            RuntimeWarning, stacklevel=3,
        )
    lo, hi = np.quantile(samples[ok], [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _checked(
    fmr: float, convention: Convention | str, limit: float, n_boot: int, alpha: float,
    threshold_rule: ThresholdRule | str, acceptance: Acceptance | str,
) -> tuple[float, Convention, float, bool]:
    """The validated ``(fmr, convention, limit, strict acceptance)`` of a bootstrap call."""
    f, conv, lim = check_rate(fmr), as_convention(convention), check_limit(limit)
    return f, conv, lim, _boot_checks(n_boot, alpha, threshold_rule, acceptance)


def bootstrap_samples(
    scores: Any, orders: Sequence[Any], fmr: float = 1e-3, convention: Convention | str = Convention.RECOMPUTE,
    limit: float = 0.3, n_boot: int = 1000, seed: int = 0, *, subtract_best: bool | BestCurve | str = False,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY, subjects: Any = None,
) -> list[np.ndarray]:
    """Bootstrap pAUC samples of several quality orders (``scores``, ``orders`` as in :func:`edc_curves`)
    on the same resamples, in bounded memory; an order's samples do not depend on its companions.
    ``subjects``: the units to resample, (N, 2) side units (explicit set), one unit per sample (all-vs-all)
    or a :mod:`exfiqa.evaluation.subjects` object; without it comparisons. NaN where a unit resample
    leaves the pAUC undefined."""
    f, conv, lim, strict = _checked(fmr, convention, limit, n_boot, 0.05, threshold_rule, acceptance)
    if as_best_curve(subtract_best) is not None and conv is Convention.RECOMPUTE:
        raise ValueError("subtract_best: is defined for the 'fixed' convention only")
    view = rule_view(scores, strict)
    units = None if subjects is None else _units_of(view, subjects)
    return _run_bootstrap(view, list(orders), f, conv, lim, subtract_best, n_boot, seed, units)


def _explicit_boot(
    similarity: ArrayLike, mated: ArrayLike, qualities: dict[str, ArrayLike], fmr: float,
    convention: Convention | str, limit: float, n_boot: int, seed: int, subtract_best: bool | BestCurve | str,
    alpha: float, threshold_rule: ThresholdRule | str, acceptance: Acceptance | str, subjects: ArrayLike | None,
) -> tuple[list[float], list[np.ndarray]]:
    """Point pAUC and bootstrap samples of each quality of an explicit comparison list."""
    comp = Comparisons(similarity, mated)
    orders = [ArrayOrder(comp.quality(q, name)) for name, q in qualities.items()]
    f, conv, lim, strict = _checked(fmr, convention, limit, n_boot, alpha, threshold_rule, acceptance)
    est = [pauc(edc_curves(comp, o, (f,), conv, acceptance=acceptance)[f], lim, subtract_best) for o in orders]
    units = None if subjects is None else ExplicitUnits(subjects, comp.n)
    return est, _run_bootstrap(rule_view(comp, strict), orders, f, conv, lim, subtract_best, n_boot, seed, units)


def bootstrap_pauc(
    similarity: ArrayLike, mated: ArrayLike, quality: ArrayLike, fmr: float = 1e-3,
    convention: Convention | str = Convention.RECOMPUTE, limit: float = 0.3, n_boot: int = 1000, seed: int = 0,
    *, subtract_best: bool | BestCurve | str = False, alpha: float = 0.05,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY, subjects: ArrayLike | None = None,
) -> BootstrapResult:
    """pAUC-EDC of the original data with a percentile bootstrap interval (95 % for
    ``alpha=0.05``). ``subjects`` (N, 2): each comparison's side units, resampled (module
    docstring); without it comparisons are resampled (stratified)."""
    (estimate,), (samples,) = _explicit_boot(
        similarity, mated, {"quality": quality}, fmr, convention, limit, n_boot, seed,
        subtract_best, alpha, threshold_rule, acceptance, subjects,
    )
    lo, hi = _intervals(samples, alpha)
    return BootstrapResult(estimate, lo, hi, samples)


def paired_bootstrap(
    similarity: ArrayLike, mated: ArrayLike, quality_a: ArrayLike, quality_b: ArrayLike, fmr: float = 1e-3,
    convention: Convention | str = Convention.RECOMPUTE, limit: float = 0.3, n_boot: int = 1000, seed: int = 0,
    *, subtract_best: bool | BestCurve | str = False, alpha: float = 0.05,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY, subjects: ArrayLike | None = None,
) -> PairedBootstrapResult:
    """Paired bootstrap of pAUC(a) - pAUC(b) (same resamples for both; ``subjects`` as in
    :func:`bootstrap_pauc`): the point difference, its percentile interval and the share of
    resamples in which ``a`` has the lower (better) pAUC."""
    est, (sa, sb) = _explicit_boot(
        similarity, mated, {"quality_a": quality_a, "quality_b": quality_b}, fmr, convention, limit,
        n_boot, seed, subtract_best, alpha, threshold_rule, acceptance, subjects,
    )
    diff = sa - sb
    lo, hi = _intervals(diff, alpha)
    ok = np.isfinite(diff)
    return PairedBootstrapResult(est[0] - est[1], lo, hi, float(np.mean(sa[ok] < sb[ok])), diff)
