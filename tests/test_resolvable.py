"""Resolvable operating points (issue 19, point 4): an FMR target needs at least one expected false
match at its threshold, for the whole set and, under ``recompute``, for the non-mated comparisons
left at each discard level. Hand-computed cases."""

from __future__ import annotations

import numpy as np
import oracles as O
import pytest

from exfiqa.evaluation.edc import EDCCurve, edc
from exfiqa.evaluation.pauc import pauc_resolved, resolved_for
from exfiqa.evaluation.rules import resolvable
from exfiqa.evaluation.scores import ArrayOrder, Comparisons


def test_resolvable_by_hand():
    # 300 non-mated comparisons (the demo's LFW-like sets): 1e-2 -> 3 false matches allowed; 1e-3, 1e-4 -> none
    assert resolvable(1e-2, 300) and not resolvable(1e-3, 300) and not resolvable(1e-4, 300)
    assert resolvable(1e-3, 1000) and not resolvable(1e-3, 999)  # exactly one expected false match
    assert resolvable(1e-4, 3000) == np.False_  # the real LFW family at 1e-4
    assert list(resolvable(0.29, np.array([100, 4, 3]))) == [True, True, False]  # 0.29 * 4 = 1.16
    with pytest.raises(ValueError, match="n: expected non-negative integer counts"):
        resolvable(1e-3, -1)


def _low_quality_nonmated(n_nm: int, n_m: int, seed: int = 0):
    """``n_nm`` non-mated comparisons of the lowest qualities (discarded first), ``n_m`` mated above."""
    rng = np.random.default_rng(seed)
    mated = np.r_[np.zeros(n_nm, bool), np.ones(n_m, bool)]
    quality = np.r_[np.linspace(0.0, 0.4, n_nm), np.linspace(0.6, 1.0, n_m)]
    sim = rng.normal(size=n_nm + n_m) + 2.0 * mated
    return sim, mated, quality


def test_recompute_levels_count_the_nonmated_left():
    # N = 2000: level j discards 100 j comparisons, all non-mated until they are gone -> 1100 - 100 j left.
    sim, mated, q = _low_quality_nonmated(1100, 900)
    left = np.maximum(1100 - 100 * np.arange(20), 0)
    expect = np.floor(1e-3 * left * (1 + 1e-9)) >= 1  # 1100 and 1000 resolve 1e-3, 900 does not
    assert list(expect[:3]) == [True, True, False]
    got = O.resolvable_levels(mated, q, 1e-3)
    assert np.array_equal(got, expect)
    curve = edc(sim, mated, q, 1e-3)
    assert np.array_equal(curve.n_target_base, left) and np.array_equal(curve.resolved, expect)
    # the whole set resolves 1e-3, but not after discarding 10% (and so not up to 30%)
    assert resolvable(1e-3, int((~mated).sum()))
    assert pauc_resolved(curve, 0.05) and not pauc_resolved(curve, 0.3)
    assert not pauc_resolved(curve, 0.07)  # the area interpolates towards level 2 (900 left)
    # 1e-2 holds while 1100 - 100 j >= 100, i.e. levels 0..10
    assert list(np.flatnonzero(~O.resolvable_levels(mated, q, 1e-2))) == list(range(11, 20))
    # fixed: the threshold is set once from all 1100 -> resolved at every point, whatever is discarded
    fixed = edc(sim, mated, q, 1e-3, "fixed")
    assert fixed.resolved.all() and pauc_resolved(fixed, 0.3)
    assert np.array_equal(O.resolvable_levels(mated, q, 1e-3, "fixed"), fixed.resolved)


def test_levels_agree_with_the_engine_on_random_sets():
    rng = np.random.default_rng(3)
    for n, share in ((611, 0.3), (2400, 0.6)):
        mated = rng.random(n) < share
        sim = rng.normal(size=n) + mated
        q = np.round(rng.random(n), 1)  # many ties: the stable order matters
        for t in (1e-2, 3e-3, 1e-3):
            curve = edc(sim, mated, q, t)
            assert np.array_equal(O.resolvable_levels(mated, q, t), curve.resolved)
            fm = edc(sim, mated, q, t * 10, error_type="fmr")  # FM-EDC: the FNMR target over the mated left
            assert np.array_equal(O.resolvable_levels(mated, q, t * 10, error_type="fmr"), fm.resolved)


def test_identical_curves_below_the_resolution():
    # 300 non-mated: 1e-3 and 1e-4 both admit no false match -> the same curve, both flagged
    sim, mated, q = _low_quality_nonmated(300, 300, seed=5)
    q = np.random.default_rng(1).random(600)
    frame = O.pauc_frame(sim, mated, {"q": q}, dataset="d", fr_model="f", targets=(1e-2, 1e-3, 1e-4))
    by = frame.set_index("fmr")
    assert by.loc[1e-3, "pauc"] == by.loc[1e-4, "pauc"]
    assert not by.loc[1e-3, "resolved"] and not by.loc[1e-4, "resolved"]
    edc = O.edc_frame(sim, mated, {"q": q}, dataset="d", fr_model="f", targets=(1e-2, 1e-3))
    assert not edc[edc.fmr == 1e-3]["resolved"].any()


def test_hand_made_recompute_curve_needs_counts():
    c = EDCCurve([0, 0.05], [0.1, 0.1], [0, 0], 1e-3, "recompute", n_mated=10, n_nonmated=5000)
    with pytest.raises(ValueError, match="n_target_base"):
        c.resolved  # noqa: B018
    f = EDCCurve([0, 0.05], [0.1, 0.1], [0, 0], 1e-3, "fixed", n_mated=10, n_nonmated=5000)
    assert f.resolved.all()


def test_resolved_for_prepared_scores_equals_the_curve():
    rng = np.random.default_rng(7)
    n = 3000
    mated = rng.random(n) < 0.4
    sim = rng.normal(size=n) + mated
    q = np.where(mated, rng.random(n) + 0.6, rng.random(n))  # the first 30% discarded are non-mated
    comp = Comparisons(sim, mated)
    order = ArrayOrder(comp.quality(q))
    for conv in ("recompute", "fixed"):
        for t in (1e-2, 1e-3, 5e-4):
            for limit in (0.05, 0.17, 0.3):
                curve = edc(sim, mated, q, t, conv)
                assert resolved_for(comp, order, t, conv, limit) == pauc_resolved(curve, limit)
    # 1800 non-mated: 1e-3 resolved for the whole set; discarding mostly non-mated ones drops below 1000
    assert resolvable(1e-3, int((~mated).sum())) and not resolved_for(comp, order, 1e-3, "recompute", 0.3)
    assert resolved_for(comp, order, 1e-3, "fixed", 0.3)
