"""Tests for exfiqa.evaluation.bootstrap: explicit resampling as the second implementation, exact draws,
determinism, pairing, the candidate fallbacks, bad input."""

from __future__ import annotations

import numpy as np
import oracles as O
import pytest
from test_metrics import synthetic  # tests/ is on sys.path

from exfiqa.evaluation import bootstrap as B
from exfiqa.evaluation import scores as SC
from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.pauc import pauc
from exfiqa.evaluation.rules import BestCurve, Convention
from exfiqa.evaluation.scores import ArrayOrder, Comparisons


def explicit_bootstrap(s, y, q, fmr, conv, n_boot, seed):
    """Independent bootstrap: resample indices per stratum, rerun edc + pauc each time."""
    rng = np.random.default_rng(seed)
    im, inm = np.flatnonzero(y), np.flatnonzero(~y)
    out = []
    for _ in range(n_boot):
        idx = np.sort(np.r_[rng.choice(inm, inm.size), rng.choice(im, im.size)])
        out.append(pauc(edc(s[idx], y[idx], q[idx], fmr, conv), 0.3))
    return np.array(out)


@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_bootstrap_distribution_matches_explicit_resampling(convention):
    s, y, q = synthetic(1200, 0.15, seed=13, mated_mean=0.3)
    ours = B.bootstrap_pauc(s, y, q, 0.01, convention, n_boot=300, seed=1).samples
    ref = explicit_bootstrap(s, y, q, 0.01, convention, 300, seed=2)
    assert abs(ours.mean() - ref.mean()) < 0.3 * ref.std()
    assert 0.8 < ours.std() / ref.std() < 1.25


def test_order_stat_sampler_matches_explicit_resampling():
    comp = Comparisons(np.r_[np.arange(50.0), 100.0], np.r_[np.zeros(50, bool), True])
    k = 2
    ours = B._order_stat_samples(comp, k, np.random.default_rng(0).random(20000))
    rng = np.random.default_rng(1)
    draws = rng.integers(0, 50, size=(20000, 50)).astype(float)
    ref = -np.sort(-draws, axis=1)[:, k]
    grid = np.arange(50.0)
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / x.size  # noqa: E731
    assert np.max(np.abs(cdf(ours) - cdf(ref))) < 0.03


@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_bootstrap_deterministic_and_contains_estimate(convention):
    s, y, q = synthetic(1500, 0.15, seed=14, mated_mean=0.3)
    a = B.bootstrap_pauc(s, y, q, 0.01, convention, n_boot=200, seed=3)
    b = B.bootstrap_pauc(s, y, q, 0.01, convention, n_boot=200, seed=3)
    c = B.bootstrap_pauc(s, y, q, 0.01, convention, n_boot=200, seed=4)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    assert a.estimate == pytest.approx(pauc(edc(s, y, q, 0.01, convention), 0.3))
    assert a.lower <= a.estimate <= a.upper and a.lower < a.upper


@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_paired_bootstrap(convention):
    s, y, q = synthetic(1500, 0.15, seed=15, mated_mean=0.3)
    same = B.paired_bootstrap(s, y, q, q.copy(), 0.01, convention, n_boot=100, seed=0)
    assert same.difference == 0.0 and same.lower == 0.0 and same.upper == 0.0
    assert same.frac_a_below_b == 0.0
    good_vs_bad = B.paired_bootstrap(s, y, q, -q, 0.01, convention, n_boot=100, seed=0)
    assert good_vs_bad.upper < 0 and good_vs_bad.frac_a_below_b == 1.0
    est = pauc(edc(s, y, q, 0.01, convention)) - pauc(edc(s, y, -q, 0.01, convention))
    assert good_vs_bad.difference == pytest.approx(est)


def test_paired_fixed_equals_difference_of_single_bootstraps():
    # Under `fixed` single and paired bootstraps consume the seed identically.
    s, y, q = synthetic(1500, 0.15, seed=15, mated_mean=0.3)
    q2 = q + np.random.default_rng(0).normal(size=q.size)
    paired = B.paired_bootstrap(s, y, q, q2, 0.01, "fixed", n_boot=100, seed=0)
    a = B.bootstrap_pauc(s, y, q, 0.01, "fixed", n_boot=100, seed=0).samples
    b = B.bootstrap_pauc(s, y, q2, 0.01, "fixed", n_boot=100, seed=0).samples
    np.testing.assert_allclose(paired.samples, a - b)
    assert paired.frac_a_below_b == np.mean(a < b)


def _explicit_paired_deltas(s, y, q, q2, n_boot=300, seed=2):
    """pAUC(q) - pAUC(q2) on explicit resamples (mated and non-mated drawn separately)."""
    rng = np.random.default_rng(seed)
    im, inm = np.flatnonzero(y), np.flatnonzero(~y)
    ref = []
    for _ in range(n_boot):
        idx = np.sort(np.r_[rng.choice(inm, inm.size), rng.choice(im, im.size)])
        a, b = (pauc(edc(s[idx], y[idx], x[idx], 0.01, "recompute")) for x in (q, q2))
        ref.append(a - b)
    return np.array(ref)


def test_paired_recompute_matches_explicit_resampling():
    s, y, q = synthetic(1000, 0.15, seed=20, mated_mean=0.3)
    q2 = q + 1.5 * np.random.default_rng(1).normal(size=q.size)
    ours = B.paired_bootstrap(s, y, q, q2, 0.01, "recompute", n_boot=300, seed=1).samples
    ref = _explicit_paired_deltas(s, y, q, q2)
    assert abs(ours.mean() - ref.mean()) < 0.3 * ref.std()
    assert 0.8 < ours.std() / ref.std() < 1.25


def test_bootstrap_subtract_best_fixed():
    s, y, q = synthetic(1500, 0.15, seed=16, mated_mean=0.3)
    r = B.bootstrap_pauc(s, y, s, 0.01, "fixed", n_boot=50, seed=0, subtract_best="stepwise")
    assert r.estimate == pytest.approx(0.0, abs=1e-12)  # perfect quality
    # In a resample duplicated comparisons tie in quality and are discarded together, so the
    # perfect quality is only nearly perfect: small, never negative.
    plain = B.bootstrap_pauc(s, y, s, 0.01, "fixed", n_boot=50, seed=0)
    assert np.all(r.samples >= -1e-12) and np.all(r.samples < 0.1 * plain.samples)


def test_weighted_paths_with_unit_weights_equal_point_estimates():
    s, y, q = synthetic(2000, 0.2, seed=17, decimals=1)
    comp = Comparisons(s, y)
    order = ArrayOrder(q)
    fixed = edc(s, y, q, 0.01, "fixed")
    plan = B._FixedPlan(comp, q[comp.idx_m])
    stat = np.nextafter(fixed.thresholds[0], -np.inf)
    for best in BestCurve:
        area = plan.pauc(np.ones((1, comp.n_m), np.int64), np.array([stat]), 0.3, best)
        assert area[0] == pytest.approx(pauc(fixed, 0.3, subtract_best=best))
    vals, idx = comp.top_nonmated(comp.n_nm)
    gap = B._GapPlan(comp.n, order.ranks(comp.mated_refs), order.ranks(idx))
    assert gap.rest == 0  # every comparison is needed: no gaps
    fnmr = gap.fnmr(comp, 0.01, np.ones(comp.n_m, np.int64), np.ones(idx.size, np.int64), O.gaps(gap, 0, None), vals)
    np.testing.assert_allclose(fnmr, edc(s, y, q, 0.01, "recompute").fnmr)


def adversarial(n=1500, seed=18):
    """High-quality comparisons have low non-mated scores: the top candidates run out."""
    s, y, _ = synthetic(n, 0.15, seed=seed, mated_mean=0.3)
    return s, y, np.where(y, s, -s)


def run_boot(s, y, qs, fmr, n_boot, seed):
    """The bootstrap engine on a fresh comparison set (no candidates cached by an estimate)."""
    comp = Comparisons(s, y)
    orders = [ArrayOrder(comp.quality(q)) for q in qs]
    return B._run_bootstrap(comp, orders, fmr, Convention.RECOMPUTE, 0.3, False, n_boot, seed)


def count_fallbacks(monkeypatch):
    """How often a ``recompute`` resample needs more candidates: one plan refinement each."""
    calls = [0]
    refine = B._GapPlan.refine

    def counted(self, *args):
        calls[0] += 1
        return refine(self, *args)

    monkeypatch.setattr(B._GapPlan, "refine", counted)
    return calls


def test_recompute_paired_bootstrap_candidate_fallback(monkeypatch):
    s, y, q = adversarial()
    q2 = q + 0.1 * np.random.default_rng(0).normal(size=q.size)
    fallbacks = count_fallbacks(monkeypatch)
    run_boot(s, y, [q, q2], 0.05, 20, 5)
    assert fallbacks[0] == 0  # the default candidates suffice here
    monkeypatch.setattr(SC, "MIN_CANDIDATES", 1)
    monkeypatch.setattr(B, "_GAP_BLOCK", 2)  # many blocks: most drawn only as block totals
    small = run_boot(s, y, [q, q2], 0.05, 300, 5)
    assert fallbacks[0] > 30  # many resamples split gaps over more candidates ...
    rng = np.random.default_rng(2)
    im, inm = np.flatnonzero(y), np.flatnonzero(~y)
    ref = []
    for _ in range(300):
        idx = np.sort(np.r_[rng.choice(inm, inm.size), rng.choice(im, im.size)])
        ref.append([pauc(edc(s[idx], y[idx], x[idx], 0.05, "recompute")) for x in (q, q2)])
    ref = np.array(ref)
    for ours, r in zip(small, ref.T, strict=True):  # ... and each measure stays exactly distributed
        assert abs(ours.mean() - r.mean()) < 0.3 * r.std()
        assert 0.8 < ours.std() / r.std() < 1.25


def test_recompute_single_bootstrap_candidate_fallback(monkeypatch):
    s, y, q = adversarial(1000)
    monkeypatch.setattr(SC, "MIN_CANDIDATES", 1)
    fallbacks = count_fallbacks(monkeypatch)
    (ours,) = run_boot(s, y, [q], 0.05, 300, 1)
    assert fallbacks[0] > 30  # many resamples went through the exact refinement
    ref = explicit_bootstrap(s, y, q, 0.05, "recompute", 300, seed=2)
    assert abs(ours.mean() - ref.mean()) < 0.3 * ref.std()
    assert 0.8 < ours.std() / ref.std() < 1.25


def test_gap_split_keeps_gap_totals_and_spreads_by_size():
    s, y, q = synthetic(500, 0.2, seed=21)
    comp = Comparisons(s, y)
    order = ArrayOrder(q)
    vals, idx = comp.top_nonmated(5)
    rm, rc = order.ranks(comp.mated_refs), order.ranks(idx)
    plan = B._GapPlan(comp.n, rm, rc)
    assert plan.gap_size.sum() == comp.n - comp.n_m - idx.size
    _, more = comp.top_nonmated(60)
    extra = order.ranks(more[idx.size :])
    finer = B._GapPlan(comp.n, rm, np.r_[rc, extra])
    rng = np.random.default_rng(0)
    totals = np.zeros(finer.gap_size.size)
    for _ in range(400):
        gaps = O.gaps(plan, plan.rest, rng)
        fine, ext = plan.split(finer, extra, gaps, rng)
        assert fine.sum() + ext.sum() == gaps.sum() == plan.rest
        # every coarse gap's copies stay inside it
        np.testing.assert_array_equal(np.cumsum(fine)[finer.gap_size.size - 1], plan.rest - ext.sum())
        totals += fine
    # one copy per comparison on average: sub-gap counts follow their sizes
    np.testing.assert_allclose(totals / 400, finer.gap_size, atol=4 * np.sqrt(finer.gap_size.max() / 400) + 0.5)


def test_bootstrap_samples_do_not_depend_on_the_companions():
    s, y, q = synthetic(1200, 0.15, seed=22, mated_mean=0.3)
    comp = Comparisons(s, y)
    q2, q3 = q + np.random.default_rng(1).normal(size=q.size), -q
    for conv in ("fixed", "recompute"):
        alone = B.bootstrap_samples(comp, [ArrayOrder(q)], 0.01, conv, n_boot=30, seed=4)[0]
        trio = B.bootstrap_samples(comp, [ArrayOrder(x) for x in (q3, q, q2)], 0.01, conv, n_boot=30, seed=4)
        np.testing.assert_array_equal(trio[1], alone)
        pair = B.paired_bootstrap(s, y, q2, q, 0.01, conv, n_boot=30, seed=4)
        np.testing.assert_allclose(pair.samples, trio[2] - trio[1])
        same = B.bootstrap_samples(comp, [ArrayOrder(q), ArrayOrder(q.copy())], 0.01, conv, n_boot=30, seed=4)
        np.testing.assert_array_equal(same[0], same[1])
    with pytest.raises(ValueError, match="subtract_best"):
        B.bootstrap_samples(comp, [ArrayOrder(q)], 0.01, "recompute", n_boot=5, subtract_best=True)



@pytest.mark.parametrize("block", [1, 3, 256])
def test_block_gap_draws_give_the_fnmr_of_every_gap(monkeypatch, block):
    """Unrefined blocks hold no level boundary: completing their gaps changes no FNMR."""
    monkeypatch.setattr(B, "_GAP_BLOCK", block)
    s, y, q = synthetic(3000, 0.1, seed=23, decimals=1)  # ties in quality
    comp = Comparisons(s, y)
    order = ArrayOrder(q)
    vals, idx = comp.top_nonmated(200)
    r = order.ranks(np.r_[comp.mated_refs, idx])
    plan = B._GapPlan(comp.n, r[: comp.n_m], r[comp.n_m :])
    rng = np.random.default_rng(1)
    p_nm = np.r_[np.full(idx.size, 1 / comp.n_nm), 1 - idx.size / comp.n_nm]
    for _ in range(50):
        c_m = np.bincount(rng.integers(0, comp.n_m, comp.n_m), minlength=comp.n_m)
        draw = rng.multinomial(comp.n_nm, p_nm)  # candidates' counts, then the pooled rest
        end_m, end_c, state = plan.ends(c_m, draw[:-1], int(draw[-1]), rng)
        fast = B._recompute_weighted(plan.d, plan.n, 0.05, end_m, c_m, comp.sim_m, end_c, draw[:-1], vals)
        gaps = plan.full_gaps(state, rng)
        assert gaps.sum() == draw[-1]
        full = plan.fnmr(comp, 0.05, c_m, draw[:-1], gaps, vals)
        np.testing.assert_array_equal(fast, full)


def test_paired_recompute_with_pooled_gaps_is_close_and_not_narrower(monkeypatch):
    """Most non-mated comparisons pooled into gaps: the difference's spread is that of explicit
    resampling, or slightly wider (the omitted cross-order covariance of the gap counts)."""
    monkeypatch.setattr(SC, "MIN_CANDIDATES", 1)
    s, y, q = synthetic(3000, 0.15, seed=20, mated_mean=0.3)
    q2 = q + 0.7 * np.random.default_rng(1).normal(size=q.size)
    ours = B.paired_bootstrap(s, y, q, q2, 0.01, "recompute", n_boot=300, seed=1).samples
    ref = _explicit_paired_deltas(s, y, q, q2)
    assert abs(ours.mean() - ref.mean()) < 0.3 * ref.std()
    assert 0.9 < ours.std() / ref.std() < 1.3


def test_bad_input_raises_naming_the_parameter():
    s, y, q = synthetic(200, 0.2, seed=19)
    with pytest.raises(ValueError, match="n_boot"):
        B.bootstrap_pauc(s, y, q, n_boot=1)
    with pytest.raises(ValueError, match="alpha"):
        B.bootstrap_pauc(s, y, q, alpha=1.0)
    with pytest.raises(ValueError, match="quality_b: length"):
        B.paired_bootstrap(s, y, q, q[:-1])
    with pytest.raises(ValueError, match="quality: 1 non-finite"):
        B.bootstrap_pauc(s, y, np.r_[np.nan, q[1:]])
    with pytest.raises(ValueError, match="convention"):
        B.bootstrap_samples(Comparisons(s, y), [ArrayOrder(q)], 0.01, "sometimes")
