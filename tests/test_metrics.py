"""Tests for the metrics of exfiqa.evaluation (rules, verification, edc, pauc, quality): hand-computed cases, brute-force twins, invariants, bad input."""

from __future__ import annotations

import numpy as np
import oracles as O
import pytest

from exfiqa.evaluation import scores as SC
from exfiqa.evaluation.edc import EDCCurve, edc, edc_many
from exfiqa.evaluation.pauc import pauc, pauc_meta
from exfiqa.evaluation.quality import pair_quality, template_quality
from exfiqa.evaluation.rules import Convention
from exfiqa.evaluation.verification import (
    eer,
    error_rates,
    fnmr_at_fmr,
    roc,
    threshold_at_fmr,
    verification_accuracy,
)

# ----------------------------------------------------------------------------- helpers


def brute_threshold_stat(neg: np.ndarray, fmr: float) -> float:
    """(k+1)-th largest non-mated score, k = floor(fmr * n) (decimal-safe), by a full sort."""
    neg = np.sort(neg)[::-1]
    k = min(int(np.floor(fmr * neg.size * (1 + 1e-9))), neg.size - 1)
    return neg[k]


def brute_recompute(s, y, q, fmr):
    """Second implementation of ``recompute``: loop over the 20 levels, sort each time."""
    n = s.size
    order = np.argsort(q, kind="stable")
    out = []
    for j in range(20):
        keep = order[(j * n) // 20 :]
        ss, yy = s[keep], y[keep]
        if yy.all() or not yy.any():
            out.append(np.nan)
            continue
        out.append(np.mean(ss[yy] <= brute_threshold_stat(ss[~yy], fmr)))
    return np.array(out)


def brute_fixed(s, y, q, fmr):
    """Second implementation of ``fixed``: walk the mated comparisons in quality order."""
    stat = brute_threshold_stat(s[~y], fmr)
    sm, qm = s[y], q[y]
    o = np.argsort(qm, kind="stable")
    sm, qm = sm[o], qm[o]
    frac, fnmr = [], []
    for i in range(sm.size):
        if i == 0 or qm[i] != qm[i - 1]:
            frac.append(i / sm.size)
            fnmr.append(np.mean(sm[i:] <= stat))
    return np.array(frac), np.array(fnmr)


def synthetic(n=3000, mated_share=0.1, seed=0, decimals=None, mated_mean=0.6):
    """Similarity, mated flags and a quality correlated with the mated similarity."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < mated_share
    s = np.where(y, rng.normal(mated_mean, 0.15, n), rng.normal(0.05, 0.1, n))
    q = np.where(y, (s - mated_mean) / 0.15 + 0.7 * rng.normal(size=n), rng.normal(size=n))
    if decimals is not None:
        s, q = np.round(s, decimals), np.round(q, decimals)
    return s, y, q


# ----------------------------------------------------------------------------- qualities


def test_pair_quality_is_min_by_default():
    np.testing.assert_array_equal(pair_quality([1.0, 5.0, 3.0], [2.0, 4.0, 3.0]), [1.0, 4.0, 3.0])
    np.testing.assert_array_equal(
        pair_quality([1.0, 5.0], [2.0, 4.0], reducer=np.maximum), [2.0, 5.0]
    )


def test_template_quality_min_and_mean():
    ids, q = template_quality([0.5, 0.2, 0.1, 0.7, 0.9], [3, 1, 3, 2, 1])
    np.testing.assert_array_equal(ids, [1, 2, 3])
    np.testing.assert_allclose(q, [0.2, 0.7, 0.1])
    _, q_mean = template_quality([0.5, 0.2, 0.1, 0.7, 0.9], [3, 1, 3, 2, 1], reducer="mean")
    np.testing.assert_allclose(q_mean, [0.55, 0.7, 0.3])


def test_pair_and_template_quality_of_several_measures():
    """(N, K) values: K measures at once (the pipeline's per-exit scores), each column as in 1-D."""
    rng = np.random.default_rng(0)
    qa, qb = rng.normal(size=(50, 3)).astype(np.float32), rng.normal(size=(50, 3)).astype(np.float32)
    pq = pair_quality(qa, qb)
    assert pq.dtype == np.float32 and pq.shape == (50, 3)
    for k in range(3):
        np.testing.assert_array_equal(pq[:, k], pair_quality(qa[:, k], qb[:, k]))
        np.testing.assert_array_equal(pq[:, k], [min(a, b) for a, b in zip(qa[:, k], qb[:, k], strict=True)])
    q = np.array([[0.5, 2.0], [0.1, 3.0], [0.7, 1.0], [0.9, 0.0]])  # templates 4, 2, 4, 2
    ids, mins = template_quality(q, np.array([4, 2, 4, 2]))
    np.testing.assert_array_equal(ids, [2, 4])
    np.testing.assert_array_equal(mins, [[0.1, 0.0], [0.5, 1.0]])
    _, means = template_quality(q, [4, 2, 4, 2], reducer="mean")
    np.testing.assert_allclose(means, [[0.5, 1.5], [0.6, 1.5]])
    tids = rng.integers(0, 12, 200)
    v = rng.normal(size=(200, 4)).astype(np.float32)
    ids, mins = template_quality(v, tids)
    assert mins.dtype == np.float32
    np.testing.assert_array_equal(ids, np.unique(tids))
    np.testing.assert_array_equal(mins, np.stack([v[tids == t].min(axis=0) for t in ids]))
    ids, mins = template_quality(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    assert ids.shape == (0,) and mins.shape == (0, 3)
    assert pair_quality(np.zeros(0), np.zeros(0)).shape == (0,)


def test_quality_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="q_b: shape \\(2, 3\\) does not match q_a's shape \\(3, 2\\)"):
        pair_quality(np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="q_a: expected shape \\(N,\\) or \\(N, K\\)"):
        pair_quality(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    bad = np.zeros((5, 2))
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="sample_quality: 1 non-finite value.*index \\(3, 1\\) \\(inf\\)"):
        template_quality(bad, np.arange(5))
    with pytest.raises(ValueError, match="q_b: 1 non-finite value.*index 1 \\(nan\\)"):
        pair_quality([1.0, 2.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="sample_quality: expected real numbers"):
        template_quality(np.array([True, False]), [1, 2])


# ----------------------------------------------------------------------------- thresholds, ROC


def test_threshold_at_fmr_hand_cases():
    neg = np.arange(1, 11) / 10  # 0.1 .. 1.0
    # fmr 0.2 of 10 -> k = 2 accepted; the 3rd largest (0.8) must be rejected.
    t = threshold_at_fmr(neg, 0.2)
    assert t == np.nextafter(0.8, np.inf)
    assert error_rates(neg, [0.5], t) == (0.2, 1.0)
    # Ties: five at 0.1, five at 0.9. FMR 0.2 is not reachable: the best below it is 0.
    tied = np.array([0.1] * 5 + [0.9] * 5)
    assert error_rates(tied, [0.5], threshold_at_fmr(tied, 0.2))[0] == 0.0
    assert error_rates(tied, [0.5], threshold_at_fmr(tied, 0.5))[0] == 0.5
    # Decimal targets: 0.29 of 100 allows exactly 29 (0.29 * 100 is 28.999... in float64).
    hundred = np.arange(100.0)
    assert error_rates(hundred, [0.0], threshold_at_fmr(hundred, 0.29))[0] == 0.29


@pytest.mark.parametrize("seed", range(5))
def test_threshold_is_smallest_with_fmr_not_above_target(seed):
    rng = np.random.default_rng(seed)
    neg = np.round(rng.normal(size=int(rng.integers(5, 500))), 1)
    for fmr in (0.5, 0.1, 0.01, 1e-3):
        t = threshold_at_fmr(neg, fmr)
        assert error_rates(neg, [0.0], t)[0] <= fmr
        just_below = np.nextafter(t, -np.inf)  # = the (k+1)-th largest score: accepted again
        assert error_rates(neg, [0.0], just_below)[0] > fmr


def test_boundary_thresholds_give_fmr_one_fnmr_zero_and_back():
    neg, pos = np.array([0.1, 0.3, 0.2]), np.array([0.5, 0.25, 0.9, 0.7])
    assert error_rates(neg, pos, -1.0) == (1.0, 0.0)
    assert error_rates(neg, pos, 0.1) == (1.0, 0.0)  # threshold at the lowest score
    assert error_rates(neg, pos, 2.0) == (0.0, 1.0)
    fmr, fnmr, thr = roc(neg, pos)
    assert (fmr[0], fnmr[0], thr[0]) == (1.0, 0.0, 0.1)
    assert (fmr[-1], fnmr[-1], thr[-1]) == (0.0, 1.0, np.inf)
    assert np.all(np.diff(fmr) <= 0) and np.all(np.diff(fnmr) >= 0)


def test_fnmr_at_fmr_matches_best_roc_point():
    s, y, _ = synthetic(2000, 0.3, seed=3, decimals=2)
    neg, pos = s[~y], s[y]
    fmr, fnmr, _ = roc(neg, pos)
    targets = (0.1, 0.01, 0.002)
    got = fnmr_at_fmr(neg, pos, targets)
    want = [fnmr[fmr <= t].min() for t in targets]
    np.testing.assert_allclose(got, want)
    assert fnmr_at_fmr(neg, pos, 0.01) == pytest.approx(want[1])


def test_eer_hand_case():
    # At threshold 0.4: FMR = 1/4 (0.4 accepted), FNMR = 1/4 (0.35 rejected).
    assert eer([0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6, 0.7]) == 0.25
    assert eer([0.1, 0.2], [0.3, 0.4]) == 0.0


# scikit-learn as a second implementation of the ROC. Conventions: the positive class is "mated"
# (label True), the score is the similarity, and sklearn predicts positive when score >= threshold,
# exactly as exfiqa accepts a comparison (similarity >= threshold). So at every threshold sklearn's
# fpr is exfiqa's FMR and 1 - tpr its FNMR. roc_curve(drop_intermediate=False) keeps one point per
# distinct score, thresholds descending from +inf (nothing accepted): reversed, exfiqa's ROC order.


def sklearn_case(case):
    if case == "all tied":
        return np.full(30, 0.25), np.arange(30) % 3 == 0
    s, y, _ = synthetic(int(40 + 500 * case), 0.3, seed=case, decimals=(None, 2, 1)[case % 3])  # ties: 2, 1 decimals
    y[:2] = True, False  # both classes present
    return (s.astype(np.float32) if case % 2 else s), y


@pytest.mark.parametrize("case", [0, 1, 2, 3, 4, 5, "all tied"])
def test_roc_eer_and_auc_agree_with_scikit_learn(case):
    from sklearn.metrics import roc_auc_score, roc_curve

    s, y = sklearn_case(case)
    n_nm, n_m = int((~y).sum()), int(y.sum())
    fmr, fnmr, thr = roc(s[~y], s[y])
    fpr, tpr, sk_thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(thr, sk_thr[::-1].astype(np.float64))
    np.testing.assert_array_equal(np.rint(fmr * n_nm), np.rint(fpr[::-1] * n_nm))  # counts: exact
    np.testing.assert_array_equal(np.rint(fnmr * n_m), n_m - np.rint(tpr[::-1] * n_m))
    np.testing.assert_allclose(fnmr, 1 - tpr[::-1], rtol=0, atol=1e-12)
    # EER from sklearn's points: (FMR + FNMR) / 2 at the first (ascending threshold) minimum of |FMR - FNMR|
    fm, fnm = np.rint(fpr[::-1] * n_nm) / n_nm, (n_m - np.rint(tpr[::-1] * n_m)) / n_m
    i = int(np.argmin(np.abs(fm - fnm)))
    assert eer(s[~y], s[y]) == pytest.approx((fm[i] + fnm[i]) / 2, abs=1e-12)
    # verification AUC: the trapezoid under exfiqa's ROC (tied scores: a diagonal step) = roc_auc_score
    auc = float(np.sum((fmr[:-1] - fmr[1:]) * ((1 - fnmr[:-1]) + (1 - fnmr[1:])) / 2))
    assert auc == pytest.approx(roc_auc_score(y, s), rel=1e-12, abs=1e-12)
    if case == "all tied":
        assert (auc, eer(s[~y], s[y])) == (0.5, 0.5)


def f32_at_threshold():
    """Non-mated float32 scores whose (k+1)-th largest is ``s``; mated scores at ``s`` and next to it."""
    s = np.float32(0.3)
    up, down = np.nextafter(s, np.float32(1)), np.nextafter(s, np.float32(-1))
    neg = np.array([0.1, 0.2, down, s, s, up, 0.5, 0.6, 0.7, 0.8], dtype=np.float32)
    pos = np.array([down, s, s, up, 0.9], dtype=np.float32)
    return neg, pos, s, up


def test_float32_scores_equal_to_the_threshold_statistic_are_rejected():
    neg, pos, s, up = f32_at_threshold()
    # FMR 0.5 of 10 allows k = 5 accepted; the 6th largest (s) must be rejected: FMR = 5/10 with
    # `up` accepted; a mated score at s is a false non-match, one at `up` is not.
    t = threshold_at_fmr(neg, 0.5)
    assert t == np.nextafter(np.float64(s), np.inf) and np.float32(t) == s  # the trap: t rounds to s
    assert error_rates(neg, pos, t) == (0.5, 3 / 5)
    assert error_rates(neg, pos, t) == error_rates(neg.astype(np.float64), pos.astype(np.float64), t)
    assert fnmr_at_fmr(neg, pos, 0.5) == 3 / 5
    assert error_rates(neg, pos, float(up)) == (0.5, 3 / 5)  # a float32 threshold itself is exact
    assert error_rates(neg, pos, float(s)) == (0.7, 1 / 5)


@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_float32_curves_equal_float64_curves(convention):
    neg, pos, _, _ = f32_at_threshold()
    s32 = np.r_[neg, pos]
    y = np.r_[np.zeros(neg.size, bool), np.ones(pos.size, bool)]
    q = np.arange(s32.size, dtype=np.float32) % 4
    a = edc(s32, y, q, 0.5, convention)
    b = edc(s32.astype(np.float64), y, q.astype(np.float64), 0.5, convention)
    np.testing.assert_array_equal(a.fnmr, b.fnmr)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    assert a.fnmr[0] == 3 / 5


def test_verification_accuracy_float32_adjacent_scores():
    # The best cut lies between two adjacent float32 scores (their float32 midpoint is one of them)
    # or above the highest one (nextafter in float64 rounds back to it in float32).
    x = np.float32(0.5)
    nx = np.nextafter(x, np.float32(1))
    s = np.array([0.1, x, nx, 0.9, 0.2, x, nx, 0.95], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1], bool)
    a = verification_accuracy(s, y, n_folds=2)
    b = verification_accuracy(s.astype(np.float64), y, n_folds=2)
    np.testing.assert_array_equal(a.folds, b.folds)
    assert a.mean == 1.0
    top = np.array([0.2, 0.3, x, 0.1, 0.2, x], dtype=np.float32)  # all non-mated: cut at inf
    np.testing.assert_array_equal(
        verification_accuracy(top, np.zeros(6, bool), 2).folds, [1.0, 1.0]
    )


def brute_accuracy(s, y, n_folds):
    """Second implementation: per fold, every cut of the training scores, in float64."""
    s = np.asarray(s, np.float64)
    out = []
    for test in np.array_split(np.arange(s.size), n_folds):
        tr = np.ones(s.size, bool)
        tr[test] = False
        u = np.unique(s[tr])
        cuts = np.append(u, np.inf)
        correct = [np.sum(s[tr][y[tr]] >= c) + np.sum(s[tr][~y[tr]] < c) for c in cuts]
        i = int(np.argmax(correct))
        t = u[0] if i == 0 else np.nextafter(u[-1], np.inf) if i == u.size else (u[i - 1] + u[i]) / 2
        out.append(np.mean((s[test] >= t) == y[test]))
    return np.array(out)


@pytest.mark.parametrize("seed", range(4))
def test_verification_accuracy_matches_brute_force(seed):
    s, y, _ = synthetic(700, 0.4, seed=seed, decimals=2 if seed % 2 else None, mated_mean=0.25)
    got = verification_accuracy(s.astype(np.float32), y, 7)
    np.testing.assert_array_equal(got.folds, brute_accuracy(s.astype(np.float32), y, 7))


def test_verification_accuracy_hand_case():
    s = [0.9, 0.8, 0.2, 0.1, 0.7, 0.6, 0.65, 0.3]
    y = [1, 1, 0, 0, 1, 0, 1, 0]
    # Fold 1 (pairs 0-3), trained on 4-7: best cut accepts >= 0.65 -> threshold 0.625 -> 4/4.
    # Fold 2 (pairs 4-7), trained on 0-3: best cut accepts >= 0.8 -> threshold 0.5; the non-mated
    # 0.6 is accepted -> 3/4.
    res = verification_accuracy(s, y, n_folds=2)
    np.testing.assert_allclose(res.folds, [1.0, 0.75])
    assert res.mean == pytest.approx(0.875) and res.std == pytest.approx(0.125)
    sep = verification_accuracy(
        np.r_[np.ones(50), np.zeros(50)], np.r_[np.ones(50), np.zeros(50)]
    )
    assert sep.mean == 1.0 and sep.std == 0.0


# ----------------------------------------------------------------------------- EDC, fixed

# Non-mated 0.05 .. 0.50 (10); FMR 0.1 -> k = 1 -> the 2nd largest (0.45) is the last rejected
# score, so a mated comparison is a false non-match when its similarity is <= 0.45.
HAND_NEG = np.arange(1, 11) * 0.05
# Mated (similarity, quality): three false non-matches (0.30, 0.40, 0.20); 0.40 and 0.80 tie at q=3.
HAND_MATED = np.array([[0.30, 1], [0.90, 2], [0.40, 3], [0.80, 3], [0.70, 5], [0.20, 6],
                       [0.95, 7], [0.85, 8]])  # fmt: skip


def hand_fixed_input():
    s = np.r_[HAND_NEG, HAND_MATED[:, 0]]
    y = np.r_[np.zeros(10, bool), np.ones(8, bool)]
    q = np.r_[np.full(10, 4.0), HAND_MATED[:, 1]]  # non-mated qualities are ignored by `fixed`
    return s, y, q


def test_fixed_hand_case():
    c = edc(*hand_fixed_input(), target=0.1, convention="fixed")
    # Quality order m1 | m2 | m3 m4 (tie, discarded together) | m5 | m6 | m7 | m8.
    # Discarded counts 0, 1, 2, 4, 5, 6, 7 of 8 mated; remaining false non-matches 3,2,2,1,1,0,0
    # over 8,7,6,4,3,2,1 remaining.
    np.testing.assert_allclose(c.discard_fraction, np.array([0, 1, 2, 4, 5, 6, 7]) / 8)
    np.testing.assert_allclose(c.fnmr, [3 / 8, 2 / 7, 2 / 6, 1 / 4, 1 / 3, 0, 0])
    np.testing.assert_array_equal(c.thresholds, np.nextafter(0.45, np.inf))
    assert c.convention is Convention.FIXED and c.n_mated == 8 and c.n_nonmated == 10
    # Stepwise area to 0.3: 3/8 on [0, 1/8), 2/7 on [1/8, 2/8), 1/3 on [2/8, 0.3).
    want = 3 / 8 * 1 / 8 + 2 / 7 * 1 / 8 + 1 / 3 * 0.05
    assert pauc(c, 0.3) == pytest.approx(want)
    # Stepwise best curve (3 - i) / (8 - i) on the grid i/8: 3/8, 2/7, then 1/6 on [2/8, 0.3).
    best = 3 / 8 * 1 / 8 + 2 / 7 * 1 / 8 + 1 / 6 * 0.05
    assert pauc(c, 0.3, subtract_best="stepwise") == pytest.approx(want - best)
    # Schlett's triangle under max(0, 3/8 - f) to 0.3: (3/8)^2 / 2 - (3/8 - 0.3)^2 / 2 = 0.0675;
    # True means the reference's triangle.
    assert pauc(c, 0.3, subtract_best="triangle") == pytest.approx(want - 0.0675)
    assert pauc(c, 0.3, subtract_best=True) == pauc(c, 0.3, subtract_best="triangle")
    # Past the triangle's end (limit 0.5 > e0): the whole triangle, (3/8)^2 / 2.
    assert pauc(c, 0.5, subtract_best="triangle") == pytest.approx(pauc(c, 0.5) - 9 / 128)
    # Beyond the last point the last step holds: limit 1 adds 0 * (1 - 7/8).
    assert pauc(c, 1.0) == pytest.approx(3 / 64 + 2 / 56 + 2 / 6 * 2 / 8 + 1 / 4 / 8 + 1 / 3 / 8)


def test_fixed_ties_discarded_together():
    s, y, q = hand_fixed_input()
    q_untied = q.copy()
    q_untied[12] = 2.5  # m3 (0.40) now strictly before m4: an extra point at 3/8
    c_tied = edc(s, y, q, 0.1, "fixed")
    c_untied = edc(s, y, q_untied, 0.1, "fixed")
    assert 3 / 8 not in c_tied.discard_fraction
    i = list(c_untied.discard_fraction).index(3 / 8)
    assert c_untied.fnmr[i] == pytest.approx(1 / 5)


def test_fixed_perfect_quality_is_theoretical_best():
    s, y, _ = synthetic(4000, 0.2, seed=1)
    c = edc(s, y, s, target=0.01, convention="fixed")  # quality = similarity: false non-matches go first
    e0, f = c.fnmr[0], c.discard_fraction
    np.testing.assert_allclose(c.fnmr, np.maximum(0, e0 - f) / (1 - f), atol=1e-12)
    assert pauc(c, 0.3, subtract_best="stepwise") == pytest.approx(0.0, abs=1e-12)
    # the triangle lies below the true best curve: a positive remainder, smaller than the plain area
    assert 0 < pauc(c, 0.3, subtract_best="triangle") < pauc(c, 0.3)


def test_subtract_best_never_negative():
    s, y, q = synthetic(3000, 0.2, seed=2, decimals=1)
    for fmr in (0.1, 0.01):
        c = edc(s, y, q, fmr, "fixed")
        assert pauc(c, 0.3, subtract_best="stepwise") >= -1e-15
        assert pauc(c, 0.3, subtract_best="triangle") >= pauc(c, 0.3, subtract_best="stepwise")


def test_fixed_constant_quality_is_flat():
    s, y, _ = synthetic(2000, 0.2, seed=4)
    c = edc(s, y, np.full(s.size, 0.5), target=0.01, convention="fixed")
    np.testing.assert_array_equal(c.discard_fraction, [0.0])
    assert pauc(c, 0.3) == pytest.approx(c.fnmr[0] * 0.3)


@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_inverted_quality_worse_than_random(convention):
    s, y, q = synthetic(4000, 0.15, seed=5)
    rng = np.random.default_rng(0)

    def area(quality):
        return pauc(edc(s, y, quality, 0.01, convention), 0.3)

    random_mean = np.mean([area(rng.permutation(q)) for _ in range(5)])
    assert area(-q) > random_mean > area(q)


@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_edc_invariant_to_monotone_quality_transform(convention):
    s, y, q = synthetic(3000, 0.1, seed=6, decimals=1)  # decimals: many ties
    for fmr in (0.05, 0.005):
        a = edc(s, y, q, fmr, convention)
        for transformed in (np.exp(2 * q), 3 * q - 7, np.arctan(q)):
            b = edc(s, y, transformed, fmr, convention)
            np.testing.assert_array_equal(a.discard_fraction, b.discard_fraction)
            np.testing.assert_array_equal(a.fnmr, b.fnmr)


@pytest.mark.parametrize("seed", range(12))
def test_fixed_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 2000))
    s, y, q = synthetic(n, rng.uniform(0.05, 0.5), seed, decimals=int(rng.integers(0, 3)))
    if y.all() or not y.any():
        pytest.skip("degenerate draw")
    for fmr in (0.3, 0.02, 1e-3):
        c = edc(s, y, q, fmr, "fixed")
        frac, fnmr = brute_fixed(s, y, q, fmr)
        np.testing.assert_allclose(c.discard_fraction, frac)
        np.testing.assert_allclose(c.fnmr, fnmr)


# ----------------------------------------------------------------------------- EDC, recompute


def hand_recompute_input():
    """20 comparisons listed in quality order (quality = position), so level j discards j."""
    rows = [  # (similarity, mated)
        (0.90, 0), (0.30, 1), (0.85, 0), (0.10, 0), (0.50, 1), (0.20, 0), (0.60, 0), (0.05, 0),
        (0.70, 1), (0.15, 0), (0.25, 0), (0.35, 0), (0.95, 1), (0.45, 0), (0.55, 0), (0.40, 1),
        (0.32, 0), (0.02, 0), (0.12, 0), (0.22, 0),
    ]  # fmt: skip
    s = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows], dtype=bool)
    return s, y, np.arange(20.0)


def test_recompute_hand_case():
    s, y, q = hand_recompute_input()
    c = edc(s, y, q, target=0.1, convention="recompute")
    # level (discarded)        non-mated left  k  threshold stat  mated left      FNMR
    # 0                        15              1  0.85            .3 .5 .7 .95 .4  4/5
    # 1 (-nm .90)              14              1  0.60            5 mated          3/5
    # 2 (-m .30)               14              1  0.60            .5 .7 .95 .4     2/4
    # 3 (-nm .85)              13              1  0.55            same             2/4
    # 4 (-nm .10)              12              1  0.55            same             2/4
    # 5 (-m .50)               12              1  0.55            .7 .95 .4        1/3
    # 6 (-nm .20)              11              1  0.55            same             1/3
    # 7 (-nm .60)              10              1  0.45            same             1/3
    np.testing.assert_allclose(c.fnmr[:8], [0.8, 0.6, 0.5, 0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(
        c.thresholds[:8], np.nextafter([0.85, 0.6, 0.6, 0.55, 0.55, 0.55, 0.55, 0.45], np.inf)
    )
    np.testing.assert_allclose(c.discard_fraction, np.arange(20) * 0.05)
    # Trapezoid to 0.3: 0.05 * (0.7 + 0.55 + 0.5 + 0.5 + 5/12 + 1/3) = 0.15.
    assert pauc(c, 0.3) == pytest.approx(0.15)
    # Limit 0.225 between grid points: interpolated FNMR (0.5 + 1/3) / 2 at 0.225.
    assert pauc(c, 0.225) == pytest.approx(0.05 * 2.25 + 0.025 * (0.5 + 5 / 12) / 2)


def test_recompute_ties_broken_by_position_and_nan_when_nothing_left():
    # Constant quality: the stable order is the input order. Level 1 discards the false non-match
    # (index 0); level 2 has no mated comparison left.
    s = np.r_[0.1, 0.9, np.linspace(0.0, 0.5, 18)]
    y = np.r_[True, True, np.zeros(18, bool)]
    c = edc(s, y, np.zeros(20), target=0.1, convention="recompute")
    assert c.fnmr[0] == 0.5 and c.fnmr[1] == 0.0
    assert np.isnan(c.fnmr[2:]).all()
    assert pauc(c, 0.05) == pytest.approx(0.05 * 0.25)
    with pytest.raises(ValueError, match="NaN"):
        pauc(c, 0.3)


@pytest.mark.parametrize("seed", range(15))
def test_recompute_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(20, 3000))
    s, y, q = synthetic(n, rng.uniform(0.05, 0.6), seed, decimals=None)
    s = np.round(s, int(rng.integers(1, 4)))
    q = np.round(q, int(rng.integers(0, 3)))  # heavy ties at level boundaries
    for fmr in (0.3, 0.05, 1e-3):
        np.testing.assert_allclose(
            edc(s, y, q, fmr, "recompute").fnmr, brute_recompute(s, y, q, fmr), equal_nan=True
        )


def test_recompute_candidate_growth(monkeypatch):
    # Quality anti-correlated with the non-mated similarity: high-quality levels keep only low
    # non-mated scores, so the top-of-all candidates run out and must be enlarged.
    monkeypatch.setattr(SC, "MIN_CANDIDATES", 1)
    rng = np.random.default_rng(7)
    n = 5000
    y = rng.random(n) < 0.1
    s = np.where(y, rng.normal(0.6, 0.15, n), rng.normal(0.05, 0.1, n))
    q = np.where(y, rng.normal(size=n), -s + 0.01 * rng.normal(size=n))
    for fmr in (0.1, 0.01):
        np.testing.assert_allclose(
            edc(s, y, q, fmr, "recompute").fnmr, brute_recompute(s, y, q, fmr), equal_nan=True
        )


def test_recompute_float32_scores():
    s, y, q = synthetic(3000, 0.2, seed=8)
    s32, q32 = s.astype(np.float32), q.astype(np.float32)
    np.testing.assert_allclose(
        edc(s32, y, q32, 0.01, "recompute").fnmr, brute_recompute(s32, y, q32, 0.01)
    )


# ----------------------------------------------------------------------------- conventions agree


def test_conventions_agree_at_zero_discard():
    s, y, q = synthetic(3000, 0.2, seed=9)
    for fmr in (0.1, 0.01, 1e-3):
        plain = fnmr_at_fmr(s[~y], s[y], fmr)
        assert edc(s, y, q, fmr, "fixed").fnmr[0] == pytest.approx(plain)
        assert edc(s, y, q, fmr, "recompute").fnmr[0] == pytest.approx(plain)


def test_conventions_agree_when_only_mated_are_discarded():
    # 40 comparisons: the 16 mated have the lowest (distinct) qualities, so recompute levels
    # 0..7 (2 comparisons per level) discard only mated ones and keep the fixed threshold; at
    # level 8 all 16 mated are gone (NaN).
    rng = np.random.default_rng(10)
    y = np.r_[np.ones(16, bool), np.zeros(24, bool)]
    s = np.where(y, rng.normal(0.5, 0.2, 40), rng.normal(0.1, 0.2, 40))
    q = np.r_[rng.permutation(16), 100 + np.arange(24)].astype(float)
    fixed = edc(s, y, q, 0.1, "fixed")
    rec = edc(s, y, q, 0.1, "recompute")
    for j in range(8):
        i = list(fixed.discard_fraction).index(2 * j / 16)
        assert rec.fnmr[j] == pytest.approx(fixed.fnmr[i])
        assert rec.thresholds[j] == fixed.thresholds[i]
    assert np.isnan(rec.fnmr[8])


def test_edc_many_equals_single_target_calls():
    s, y, q = synthetic(2000, 0.2, seed=11)
    for conv in Convention:
        many = edc_many(s, y, q, (0.1, 0.01), conv)
        for t in (0.1, 0.01):
            np.testing.assert_array_equal(many[t].fnmr, edc(s, y, q, t, conv).fnmr)


# ----------------------------------------------------------------------------- pAUC rules


def test_pauc_stepwise_vs_trapezoid_hand_case():
    frac, fnmr = [0.0, 0.1, 0.2, 0.4], [0.4, 0.2, 0.1, 0.0]
    step = EDCCurve(frac, fnmr, np.zeros(4), 0.01, Convention.FIXED, n_mated=10)
    trap = EDCCurve(frac, fnmr, np.zeros(4), 0.01, Convention.RECOMPUTE, n_mated=10)
    # stepwise: 0.4*0.1 + 0.2*0.1 + 0.1*0.1
    assert pauc(step, 0.3) == pytest.approx(0.07)
    # trapezoid: (0.4+0.2)/2*0.1 + (0.2+0.1)/2*0.1 + (0.1+0.05)/2*0.1, 0.05 interpolated at 0.3
    assert pauc(trap, 0.3) == pytest.approx(0.0525)
    assert pauc(step, 0.0) == 0.0
    with pytest.raises(ValueError, match="limit"):
        pauc(trap, 0.5)  # beyond the last point of a recompute curve


def test_curve_is_immutable_and_validated():
    c = edc(*hand_fixed_input(), target=0.1)
    with pytest.raises(ValueError):
        c.fnmr[0] = 0.0
    with pytest.raises(AttributeError):
        c.fmr = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="discard_fraction"):
        EDCCurve([0.1, 0.2], [0.0, 0.0], [0.0, 0.0], 0.01, "fixed", n_mated=3)


# ----------------------------------------------------------------------------- frames, metadata


def test_frames_carry_convention_limit_scale():
    s, y, q = synthetic(1500, 0.2, seed=12)
    quals = {"good": q, "bad": -q}
    edc_df = O.edc_frame(s, y, quals, dataset="toy", fr_model="arc", convention="recompute")
    assert list(edc_df.columns) == [
        "method", "dataset", "fr_model", "fmr", "convention", "discard_fraction", "fnmr", "resolved",
    ]  # fmt: skip
    assert len(edc_df) == 2 * 3 * 20 and set(edc_df.convention) == {"recompute"}
    pdf = O.pauc_frame(s, y, quals, dataset="toy", fr_model="arc", limit=0.2, scale=100, convention="fixed")
    assert list(pdf.columns) == [
        "method", "dataset", "fr_model", "fmr", "convention", "limit", "subtract_best", "scale",
        "pauc", "resolved",
    ]  # fmt: skip
    row = pdf[(pdf.method == "bad") & (pdf.fmr == 1e-3)].iloc[0]
    assert row.convention == "fixed" and row.limit == 0.2 and row.scale == 100.0
    assert row.pauc == pytest.approx(100 * pauc(edc(s, y, -q, 1e-3, "fixed"), 0.2))
    meta = pauc_meta("recompute", 0.3, scale=100)
    assert meta["convention"] == "recompute" and meta["area_rule"].startswith("trapezoid")
    with pytest.raises(ValueError, match="qualities\\['nan'\\]"):
        O.pauc_frame(s, y, {"nan": np.full(s.size, np.nan)}, dataset="t", fr_model="a")
    with pytest.raises(ValueError, match="subtract_best"):
        pauc_meta("recompute", subtract_best=True)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_naming_the_parameter():
    s, y, q = synthetic(200, 0.2, seed=19)
    with pytest.raises(ValueError, match="quality: length 199"):
        edc(s, y, q[:-1])
    with pytest.raises(ValueError, match="mated: length 199"):
        edc(s, y[:-1], q)
    q_nan = q.copy()
    q_nan[5] = np.nan
    with pytest.raises(ValueError, match="quality: 1 non-finite.*index 5"):
        edc(s, y, q_nan)
    with pytest.raises(ValueError, match="similarity: .*non-finite"):
        edc(np.r_[np.inf, s[1:]], y, q)
    with pytest.raises(ValueError, match="mated: there are no mated"):
        edc(s, np.zeros(s.size, bool), q)
    with pytest.raises(ValueError, match="mated: there are no non-mated"):
        edc(s, np.ones(s.size, bool), q)
    with pytest.raises(ValueError, match="mated: expected booleans or 0/1"):
        edc(s, np.full(s.size, 2), q)
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="target"):
            edc(s, y, q, target=bad)
        with pytest.raises(ValueError, match="fmr"):
            threshold_at_fmr(s, bad)
    with pytest.raises(ValueError, match="fmr_targets"):
        fnmr_at_fmr(s[~y], s[y], (0.01, 2.0))
    with pytest.raises(ValueError, match="convention"):
        edc(s, y, q, convention="sometimes")
    c = edc(s, y, q)
    with pytest.raises(ValueError, match="limit"):
        pauc(c, 1.5)
    with pytest.raises(ValueError, match="subtract_best"):
        pauc(edc(s, y, q, convention="recompute"), 0.3, subtract_best=True)
    with pytest.raises(ValueError, match="similarity: expected a 1-D"):
        edc(s.reshape(20, 10), y, q)
    with pytest.raises(ValueError, match="nonmated_scores: is empty"):
        fnmr_at_fmr([], [0.5], 0.1)
    with pytest.raises(ValueError, match="n_folds"):
        verification_accuracy(s, y, n_folds=1)
    with pytest.raises(ValueError, match="template_ids: length"):
        template_quality([0.1, 0.2], [1])
