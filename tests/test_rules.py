"""The authors' evaluation rules as options: threshold rules, acceptance, ``compat: crfiqa``, FM-EDC,
the two best curves, the metric API, their config keys and the IJB-C template protocols.

Hand-computed cases (ties included) for each rule, and a second implementation of every rule written
from its description (the scripts' ROC, one comparison set at a time) on random data.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import oracles as O
import pytest
import yaml

from exfiqa.config import ConfigError, load_config
from exfiqa.evaluation import bootstrap as B
from exfiqa.evaluation import scores as SC
from exfiqa.evaluation.edc import edc, edc_curves, edc_many
from exfiqa.evaluation.pauc import pauc, pauc_meta
from exfiqa.evaluation.rules import (
    TIE_ORDER_NOTE,
    Acceptance,
    Convention,
    ErrorType,
    ThresholdRule,
    compat_rules,
    level_starts,
    rule_note,
)
from exfiqa.evaluation.scores import ArrayOrder, Comparisons, DistanceView
from exfiqa.evaluation.verification import (
    eer,
    error_rates,
    fmr_at_fnmr,
    fnmr_at_fmr,
    roc,
    threshold_at_fmr,
)

CRFIQA = compat_rules("crfiqa")


def dist(s):
    """The scripts' angular distance."""
    return np.arccos(np.clip(np.asarray(s, np.float64), -1, 1)) / np.pi


# ----------------------------------------------------------------------------- a second implementation


def roc_threshold(x, mated, target, error_type):
    """The scripts' ROC (``calculate_roc``): one point per distinct score ``x`` (higher = more alike),
    FMR = #non-mated >= t, FNMR = #mated < t; FNM-EDC: first point of minimal |FMR - target|
    (``get_fmr_op``), FM-EDC: last point of minimal |FNMR - target| (``get_fnmr_op``)."""
    t = np.unique(x)
    if error_type == "fnmr":
        fm = np.array([np.count_nonzero(x[~mated] >= v) for v in t])
        return t[np.argmin(np.abs(fm / np.count_nonzero(~mated) - target))]
    fnm = np.array([np.count_nonzero(x[mated] < v) for v in t])
    d = np.abs(fnm / np.count_nonzero(mated) - target)
    return t[np.flatnonzero(d == d.min())[-1]]


def errors_at(x, mated, target, rule, strict, error_type):
    """Error indicators of the comparisons the error is counted on (mated for FNM-EDC, else non-mated)."""
    xm, xn = x[mated], x[~mated]
    if rule == "at_most":
        if error_type == "fnmr":
            k = min(int(np.floor(target * xn.size * (1 + 1e-9))), xn.size - 1)
            return xm <= np.sort(xn)[::-1][k]  # accept > the (k+1)-th largest (either acceptance)
        k = min(int(np.floor(target * xm.size * (1 + 1e-9))), xm.size - 1)
        return xn >= np.sort(xm)[k]
    t = roc_threshold(x, mated, target, error_type)
    if error_type == "fnmr":
        return xm <= t if strict else xm < t
    return xn > t if strict else xn >= t


def domain(s, acceptance):
    return -dist(s) if acceptance == "distance<" else s


def brute_recompute(s, y, q, target, rule, acceptance, error_type):
    x, n = domain(s, acceptance), s.size
    order = np.argsort(q, kind="stable")
    out = []
    for j in range(20):
        keep = order[(j * n) // 20 :]
        if y[keep].all() or not y[keep].any():
            out.append(np.nan)
            continue
        out.append(errors_at(x[keep], y[keep], target, rule, acceptance == "distance<", error_type).mean())
    return np.array(out)


def brute_fixed(s, y, q, target, rule, acceptance, error_type):
    bad = errors_at(domain(s, acceptance), y, target, rule, acceptance == "distance<", error_type)
    qq = q[y] if error_type == "fnmr" else q[~y]
    o = np.argsort(qq, kind="stable")
    qs, b = qq[o], bad[o]
    starts = [i for i in range(qs.size) if i == 0 or qs[i] != qs[i - 1]]
    return np.array(starts) / qs.size, np.array([b[i:].mean() for i in starts])


def synthetic(seed, n=None):
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(40, 700))
    y = rng.random(n) < rng.uniform(0.1, 0.5)
    y[:2] = [True, False]
    s = np.clip(np.where(y, rng.normal(0.5, 0.2, n), rng.normal(0.1, 0.15, n)), -1, 1)
    s = np.round(s, int(rng.integers(1, 4)))  # ties in similarity
    q = np.round(rng.normal(size=n) + y * s, int(rng.integers(0, 3)))  # ties in quality
    return s, y, q


RULES = list(itertools.product(("at_most", "closest"), ("similarity>=", "distance<"), ("fnmr", "fmr")))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("rule, acceptance, error_type", RULES)
def test_every_rule_matches_the_second_implementation(seed, rule, acceptance, error_type):
    s, y, q = synthetic(seed)
    kw = {"threshold_rule": rule, "acceptance": acceptance, "error_type": error_type}
    for t in (0.3, 0.05, 0.01):
        got = edc(s, y, q, t, "recompute", **kw)
        np.testing.assert_allclose(got.error, brute_recompute(s, y, q, t, rule, acceptance, error_type),
                                   rtol=0, atol=1e-15, equal_nan=True)
        got = edc(s, y, q, t, "fixed", **kw)
        frac, err = brute_fixed(s, y, q, t, rule, acceptance, error_type)
        np.testing.assert_allclose(got.discard_fraction, frac)
        np.testing.assert_allclose(got.error, err, rtol=0, atol=1e-15)


def scripts_fnmr(sim, y, q, fmr):
    """The ERC scripts' FNMR per level, transcribed from their description: distances, the ROC of the
    negated distances, the point of minimal |FMR - target|, then ``distance < threshold``."""
    d_all, n = dist(sim), sim.size
    order = np.argsort(q, kind="stable")  # the scripts' argsort, made stable
    out = []
    for u in np.arange(0, 0.98, 0.05):
        keep = order[int(u * n) :]
        pos, neg = np.sort(d_all[keep][y[keep]]), np.sort(d_all[keep][~y[keep]])
        scores = np.r_[-pos, -neg]
        labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
        o = np.argsort(scores, kind="stable")
        srt, lab = scores[o], labels[o]
        thr, first = np.unique(srt, return_index=True)
        fnm = np.cumsum(lab)[first] - lab[first]
        fm = neg.size - (first - fnm)
        threshold = -thr[np.argmin(np.abs(fm / neg.size - fmr))]
        out.append(1 - np.count_nonzero(pos < threshold) / pos.size)
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_compat_crfiqa_reproduces_the_scripts_algorithm(seed):
    s, y, q = synthetic(seed, n=3000 if seed < 2 else None)
    for fmr in (1e-2, 1e-3, 1e-4):
        got = edc(s, y, q, fmr, "recompute", **CRFIQA).fnmr
        np.testing.assert_allclose(got, scripts_fnmr(s, y, q, fmr), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- hand cases: thresholds

# Non-mated 0.9 .. 0.1 with 0.8 twice (10); mated 0.85, 0.8, 0.75, 0.65.
NEG = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
POS = np.array([0.85, 0.8, 0.75, 0.65])


def test_fnm_rules_hand_case_with_ties():
    # FMR 0.25 of 10: at_most allows k = 2; the 3rd largest is the tied 0.8, so only 0.9 is
    # accepted (FMR 0.1) and the mated 0.8, 0.75, 0.65 are rejected.
    t = threshold_at_fmr(NEG, 0.25)
    assert t == np.nextafter(0.8, np.inf)
    assert error_rates(NEG, POS, t) == (0.1, 0.75)
    assert fnmr_at_fmr(NEG, POS, 0.25) == 0.75
    # closest: achievable counts 1 (>= 0.9), 3 (>= 0.8), 4, ...; |3/10 - 0.25| is smallest, so FMR
    # 0.3 (above the target). Lowest threshold with 3 accepted: the smallest score above the 4th
    # largest non-mated (0.7) is the mated 0.75.
    t = threshold_at_fmr(NEG, 0.25, threshold_rule="closest", mated_scores=POS)
    assert t == 0.75
    assert error_rates(NEG, POS, t) == (0.3, 0.25)  # similarity>=: the mated 0.75 accepted
    assert fnmr_at_fmr(NEG, POS, 0.25, threshold_rule="closest") == 0.25
    # distance<: the same ROC point, as an angular distance; the mated 0.75 at it is rejected.
    t = threshold_at_fmr(NEG, 0.25, **CRFIQA, mated_scores=POS)
    assert t == dist(0.75)
    assert error_rates(NEG, POS, t, acceptance="distance<") == (0.3, 0.5)
    assert fnmr_at_fmr(NEG, POS, 0.25, **CRFIQA) == 0.5
    # at_most with distance<: the 3rd smallest distance itself, strictly; the same errors.
    t = threshold_at_fmr(NEG, 0.25, acceptance="distance<")
    assert t == dist(0.8)
    assert error_rates(NEG, POS, t, acceptance="distance<") == (0.1, 0.75)
    with pytest.raises(ValueError, match="mated_scores"):
        threshold_at_fmr(NEG, 0.25, threshold_rule="closest")


def test_closest_ties_go_to_the_higher_fmr_and_fmr_zero_needs_a_mated_point():
    neg = np.array([0.4, 0.3, 0.2, 0.1])
    # 0.375 lies exactly between 1/4 and 2/4: the first in ascending threshold order is the
    # lower threshold, i.e. 2 accepted.
    assert threshold_at_fmr(neg, 0.375, threshold_rule="closest", mated_scores=[0.05]) == 0.3
    # FMR 0.1: 0 accepted is closer than 1/4, but the ROC has a point with FMR 0 only if a mated
    # score exceeds every non-mated one (there is no point at infinity).
    # Here it does not: 1 accepted, at the lowest such threshold, the mated 0.35 above 0.3.
    assert threshold_at_fmr(neg, 0.1, threshold_rule="closest", mated_scores=[0.35]) == 0.35
    t = threshold_at_fmr(neg, 0.1, threshold_rule="closest", mated_scores=[0.35, 0.6, 0.9])
    assert t == 0.6  # the smallest score above every non-mated one
    assert fnmr_at_fmr(neg, [0.35, 0.6, 0.9], 0.1, threshold_rule="closest") == pytest.approx(1 / 3)
    assert fnmr_at_fmr(neg, [0.35, 0.6, 0.9], 0.1, **CRFIQA) == pytest.approx(2 / 3)  # 0.6 itself rejected


def test_fm_rules_hand_case_with_ties():
    neg = np.array([0.2, 0.4, 0.5, 0.6, 0.95])
    pos = np.array([0.3, 0.5, 0.5, 0.7, 0.9])
    # FNMR 0.2 of 5: at_most allows 1 false non-match: threshold = 2nd smallest mated (0.5);
    # FMR = non-mated >= 0.5 = 3/5, either acceptance.
    assert fmr_at_fnmr(neg, pos, 0.2) == 0.6
    assert fmr_at_fnmr(neg, pos, 0.2, acceptance="distance<") == 0.6
    # closest: FNMR counts 0 (at 0.3), 1 (0.5), 3 (0.7), 4 (0.9), 5 (0.95, a non-mated above all
    # mated); 1/5 = 0.2 exactly -> threshold 0.5: FMR 3/5, or 2/5 when 0.5 itself is rejected.
    assert fmr_at_fnmr(neg, pos, 0.2, threshold_rule="closest") == 0.6
    assert fmr_at_fnmr(neg, pos, 0.2, **CRFIQA) == 0.4
    # FNMR 0.5: counts 3 (0.7) -> FMR 1/5 (0.95).
    assert fmr_at_fnmr(neg, pos, 0.5, threshold_rule="closest") == 0.2
    # ties of |FNMR - target| go to the last ROC point (the higher threshold): mated 0.1 .. 0.7,
    # 0.375 between 1/4 (0.3) and 2/4 (0.5) -> 0.5: FMR = non-mated >= 0.5.
    assert fmr_at_fnmr([0.45, 0.55, 0.05], [0.1, 0.3, 0.5, 0.7], 0.375, threshold_rule="closest") == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- hand cases: curves


def hand_recompute_input():
    """20 comparisons listed in quality order (quality = position), so level j discards j."""
    rows = [  # (similarity, mated)
        (0.90, 0), (0.30, 1), (0.85, 0), (0.10, 0), (0.50, 1), (0.20, 0), (0.60, 0), (0.05, 0),
        (0.70, 1), (0.15, 0), (0.25, 0), (0.35, 0), (0.95, 1), (0.45, 0), (0.55, 0), (0.40, 1),
        (0.32, 0), (0.02, 0), (0.12, 0), (0.22, 0),
    ]  # fmt: skip
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=bool), np.arange(20.0)


def test_recompute_rules_hand_case():
    s, y, q = hand_recompute_input()
    # level  non-mated  x = 0.2 n  at_most: k, stat, FNMR    closest: count, stat, ROC point
    # 0      15         3          3, 0.55, 3/5             3 (3/15 = 0.2), 0.55, 0.60
    # 1      14         2.8        2, 0.55, 3/5             3 (3/14 nearer), 0.45, 0.50 (mated)
    # 2      14 (-m .3) 2.8        2, 0.55, 2/4             3, 0.45, 0.50
    # closest, similarity>=: FNMR = mated <= stat: 3/5, 2/5 (.30 .40), 1/4 (.40)
    # closest, distance<:    FNMR = mated at or below the ROC point: 3/5, 3/5, 2/4 (the mated 0.50)
    at_most = edc(s, y, q, 0.2, "recompute")
    closest = edc(s, y, q, 0.2, "recompute", threshold_rule="closest")
    crfiqa = edc(s, y, q, 0.2, "recompute", **CRFIQA)
    np.testing.assert_allclose(at_most.fnmr[:3], [3 / 5, 3 / 5, 2 / 4])
    np.testing.assert_allclose(closest.fnmr[:3], [3 / 5, 2 / 5, 1 / 4])
    np.testing.assert_allclose(crfiqa.fnmr[:3], [3 / 5, 3 / 5, 2 / 4])
    np.testing.assert_array_equal(closest.thresholds[:3], [0.60, 0.50, 0.50])
    np.testing.assert_array_equal(crfiqa.thresholds[:3], dist([0.60, 0.50, 0.50]))
    assert crfiqa.threshold_rule is ThresholdRule.CLOSEST and crfiqa.acceptance is Acceptance.DISTANCE


def test_fixed_fm_edc_hand_case_with_tied_qualities():
    # Mated 0.3 0.5 0.7 0.9 (qualities ignored); FNMR 0.25 -> at_most threshold = 2nd smallest
    # mated, 0.5: non-mated >= 0.5 are false matches. Non-mated (similarity, quality):
    nm = np.array([[0.60, 1], [0.20, 2], [0.55, 2], [0.10, 3], [0.80, 4], [0.40, 5]])
    s = np.r_[[0.3, 0.5, 0.7, 0.9], nm[:, 0]]
    y = np.r_[np.ones(4, bool), np.zeros(6, bool)]
    q = np.r_[[9.0, 9, 9, 9], nm[:, 1]]
    c = edc(s, y, q, 0.25, "fixed", error_type="fmr")
    # Groups by quality: {0.60} | {0.20, 0.55} (tie) | {0.10} | {0.80} | {0.40}: discarded
    # 0, 1, 3, 4, 5 of 6; false matches left 3, 2, 1, 1, 0.
    np.testing.assert_allclose(c.discard_fraction, np.array([0, 1, 3, 4, 5]) / 6)
    np.testing.assert_allclose(c.error, [3 / 6, 2 / 5, 1 / 3, 1 / 2, 0])
    np.testing.assert_array_equal(c.thresholds, 0.5)
    assert c.error_type is ErrorType.FMR and c.target == 0.25 and c.n_counted == 6
    with pytest.raises(AttributeError, match="FM-EDC"):
        _ = c.fnmr
    # stepwise area to 0.3: 3/6 on [0, 1/6), 2/5 on [1/6, 0.3)
    assert pauc(c, 0.3) == pytest.approx(3 / 6 / 6 + 2 / 5 * (0.3 - 1 / 6))
    # triangle: e0 = 1/2 > 0.3: 0.5^2/2 - 0.2^2/2
    assert pauc(c, 0.3, subtract_best=True) == pytest.approx(pauc(c, 0.3) - (0.125 - 0.02))
    # stepwise best on the grid i/6: (3 - i) / (6 - i): 1/2 on [0, 1/6), 2/5 on [1/6, 0.3)
    assert pauc(c, 0.3, subtract_best="stepwise") == pytest.approx(0.0, abs=1e-15)
    # at discard 0 both conventions give the plain FMR at the FNMR target
    assert c.error[0] == fmr_at_fnmr(s[~y], s[y], 0.25)
    assert edc(s, y, q, 0.25, "recompute", error_type="fmr").error[0] == c.error[0]
    with pytest.raises(ValueError, match="targets: an FM-EDC"):
        edc_many(s, y, q, None, error_type="fmr")


@pytest.mark.parametrize("rule, acceptance, error_type", RULES)
def test_discard_zero_equals_the_operating_point(rule, acceptance, error_type):
    s, y, q = synthetic(40, n=900)
    kw = {"threshold_rule": rule, "acceptance": acceptance}
    for t in (0.2, 0.01):
        if error_type == "fnmr":
            plain = fnmr_at_fmr(s[~y], s[y], t, **kw)
        else:
            plain = fmr_at_fnmr(s[~y], s[y], t, **kw)
        for conv in Convention:
            assert edc(s, y, q, t, conv, error_type=error_type, **kw).error[0] == plain


def test_at_most_distance_gives_the_errors_of_at_most_similarity_on_float32():
    rng = np.random.default_rng(3)
    n = 5000
    y = rng.random(n) < 0.2
    s = np.clip(np.where(y, rng.normal(0.5, 0.2, n), rng.normal(0.0, 0.15, n)), -1, 1).astype(np.float32)
    q = rng.normal(size=n).astype(np.float32)
    for conv, err in itertools.product(Convention, ErrorType):
        t = (1e-2, 1e-3)
        a = edc_many(s, y, q, t, conv, error_type=err)
        b = edc_many(s, y, q, t, conv, error_type=err, acceptance="distance<")
        for f in t:
            np.testing.assert_array_equal(a[f].error, b[f].error)
            assert b[f].acceptance is Acceptance.DISTANCE


def test_distance_ties_of_float64_cosines_are_ties():
    """Distinct float64 cosines near 0 share one float64 distance: under distance< they tie."""
    tiny = np.array([3e-18, 2e-18, 1e-18])
    assert np.unique(dist(tiny)).size == 1
    neg = np.r_[tiny, -0.5, -0.6, -0.7, -0.8, -0.9, -0.95, -0.99]
    pos = np.array([2.5e-18, 0.8])
    # at_most, FMR 0.1 of 10 -> k = 1: similarity>= rejects 2e-18 and below; distance< sees the
    # three tiny cosines as one value, so all three are rejected together with the mated 2.5e-18.
    assert fnmr_at_fmr(neg, pos, 0.1) == 0.0
    assert fnmr_at_fmr(neg, pos, 0.1, acceptance="distance<") == 0.5
    # the bounded engine's candidates respect the merged ties (the view drops a partial tail group)
    view = DistanceView(Comparisons(np.r_[neg, pos], np.r_[np.zeros(10, bool), True, True]))
    vals, _ = view.top_nonmated(2)
    assert vals.size == 3 and np.unique(vals).size == 1
    s, y = np.r_[neg, pos], np.r_[np.zeros(10, bool), True, True]
    q = np.arange(12.0)
    for rule in ("at_most", "closest"):
        np.testing.assert_array_equal(
            edc(s, y, q, 0.1, "recompute", threshold_rule=rule, acceptance="distance<").fnmr,
            brute_recompute(s, y, q, 0.1, rule, "distance<", "fnmr"),
        )


@pytest.mark.parametrize("error_type", ["fnmr", "fmr"])
def test_candidate_growth_for_the_rules(error_type, monkeypatch):
    monkeypatch.setattr(SC, "MIN_CANDIDATES", 1)
    rng = np.random.default_rng(7)
    n = 3000
    y = rng.random(n) < 0.15
    s = np.round(np.where(y, rng.normal(0.6, 0.15, n), rng.normal(0.05, 0.1, n)), 3)
    q = np.where(y, rng.normal(size=n), -s + 0.01 * rng.normal(size=n))  # candidates run out
    for (rule, acc), t in itertools.product(itertools.product(("at_most", "closest"), ("similarity>=", "distance<")), (0.2, 0.02)):
        got = edc(s, y, q, t, "recompute", threshold_rule=rule, acceptance=acc, error_type=error_type)
        np.testing.assert_allclose(got.error, brute_recompute(s, y, q, t, rule, acc, error_type), atol=1e-15, equal_nan=True)


# ----------------------------------------------------------------------------- scripts' level boundaries


def test_int_u_times_n_equals_floor_j_n_over_20():
    u = np.arange(0, 0.98, 0.05)  # the scripts' grid
    assert u.size == 20
    # the premise of the proof (module docstring): every u_j >= j / 20 exactly, by at most 9e-17
    excess = [Fraction(float(u[j])) - Fraction(j, 20) for j in range(20)]
    assert all(0 <= e < Fraction(9, 10**17) for e in excess)
    n = np.arange(1, 2_000_001, dtype=np.int64)
    for j in range(20):
        np.testing.assert_array_equal((u[j] * n).astype(np.int64), (j * n) // 20, err_msg=f"level {j}")
    np.testing.assert_array_equal(level_starts(2_000_000), (np.arange(20) * 2_000_000) // 20)


# ----------------------------------------------------------------------------- API


def test_error_rates_float32_score_exactly_at_a_float64_threshold():
    x = np.float32(0.3)
    scores = np.array([x, np.nextafter(x, np.float32(1)), np.float32(0.1)], dtype=np.float32)
    at = float(x)  # a float64 threshold equal to the float32 score: accepted (>=)
    assert error_rates(scores, scores, at) == (2 / 3, 1 / 3)
    above = np.nextafter(at, np.inf)  # rounds back to x in float32: a float32 comparison would accept x
    assert np.float32(above) == x
    assert error_rates(scores, scores, above) == (1 / 3, 2 / 3)
    assert error_rates(scores, scores, np.float64(above)) == (1 / 3, 2 / 3)
    assert error_rates(scores.astype(np.float64), scores.astype(np.float64), above) == (1 / 3, 2 / 3)


def test_one_default_convention_and_argument_names():
    s, y, q = synthetic(5, n=600)
    rec = edc(s, y, q, 0.05, "recompute")
    assert edc(s, y, q, 0.05).convention is Convention.RECOMPUTE
    np.testing.assert_array_equal(edc_many(s, y, q, (0.05,))[0.05].fnmr, rec.fnmr)
    comp, order = Comparisons(s, y), ArrayOrder(q)
    assert edc_curves(comp, order, (0.05,))[0.05].convention is Convention.RECOMPUTE
    for f in (B.bootstrap_pauc, B.paired_bootstrap, B.bootstrap_samples, O.edc_frame, O.pauc_frame):
        import inspect

        assert inspect.signature(f).parameters["convention"].default is Convention.RECOMPUTE, f.__name__
    # one argument order: (similarity, mated, quality); scores are never called "mated"
    for f in (edc, edc_many, B.bootstrap_pauc, B.paired_bootstrap, O.edc_frame, O.pauc_frame):
        import inspect

        assert list(inspect.signature(f).parameters)[:2] == ["similarity", "mated"], f.__name__
    for f in (error_rates, fnmr_at_fmr, fmr_at_fnmr, roc, eer):
        import inspect

        assert list(inspect.signature(f).parameters)[:2] == ["nonmated_scores", "mated_scores"], f.__name__
    a = O.edc_frame(s, y, {"q": q}, dataset="d", fr_model="f")
    assert set(a.convention) == {"recompute"}
    with pytest.raises(ValueError, match="threshold_rule"):
        edc(s, y, q, threshold_rule="nearest")
    with pytest.raises(ValueError, match="acceptance"):
        edc(s, y, q, acceptance="distance<=")
    with pytest.raises(ValueError, match="error_type"):
        edc(s, y, q, error_type="far")
    with pytest.raises(ValueError, match="subtract_best"):
        pauc(edc(s, y, q, convention="fixed"), subtract_best="area")
    with pytest.raises(ValueError, match="compat"):
        compat_rules("magface")


def test_frames_and_meta_state_the_rules():
    s, y, q = synthetic(6, n=800)
    quals = {"good": q, "bad": -q}
    default = O.pauc_frame(s, y, quals, dataset="d", fr_model="f", convention="fixed")
    assert list(default.columns) == ["method", "dataset", "fr_model", "fmr", "convention", "limit",
                                     "subtract_best", "scale", "pauc", "resolved"]
    tri = O.pauc_frame(s, y, quals, dataset="d", fr_model="f", convention="fixed", subtract_best=True, **CRFIQA)
    assert list(tri.columns) == ["method", "dataset", "fr_model", "fmr", "convention", "limit", "subtract_best",
                                 "scale", "best_curve", "threshold_rule", "acceptance", "pauc", "resolved"]
    assert set(tri.best_curve) == {"triangle"} and set(tri.threshold_rule) == {"closest"}
    row = tri[(tri.method == "good") & (tri.fmr == 1e-3)].iloc[0]
    curve = edc(s, y, q, 1e-3, "fixed", **CRFIQA)
    assert row.pauc == pauc(curve, 0.3, "triangle")
    fm = O.pauc_frame(s, y, quals, dataset="d", fr_model="f", targets=(0.1,), error_type="fmr")
    assert list(fm.columns) == ["method", "dataset", "fr_model", "fnmr", "convention", "limit", "subtract_best",
                                "scale", "error_type", "pauc", "resolved"]
    edc_table = O.edc_frame(s, y, quals, dataset="d", fr_model="f", targets=(0.1,), error_type="fmr", **CRFIQA)
    assert list(edc_table.columns) == ["method", "dataset", "fr_model", "fnmr", "convention", "threshold_rule",
                                 "acceptance", "error_type", "discard_fraction", "fmr", "resolved"]
    meta = pauc_meta("recompute", **CRFIQA)
    assert (meta["threshold_rule"], meta["acceptance"], meta["error_type"]) == ("closest", "distance<", "fnmr")
    assert "closest to the target" in meta["threshold"] and meta["tie_order"] == TIE_ORDER_NOTE
    assert "unstable" in TIE_ORDER_NOTE
    assert pauc_meta("fixed", subtract_best=True)["best_curve"] == "triangle"
    assert pauc_meta("fixed", error_type="fmr")["metric"].startswith("pAUC-EDC (FMR at fixed FNMR")
    assert rule_note(**CRFIQA).endswith("(= compat crfiqa)")


def test_bootstrap_supports_at_most_with_either_acceptance():
    s, y, q = synthetic(8, n=1500)
    s = s.astype(np.float32)
    for conv in Convention:
        a = B.bootstrap_pauc(s, y, q, 0.02, conv, n_boot=40, seed=1)
        b = B.bootstrap_pauc(s, y, q, 0.02, conv, n_boot=40, seed=1, acceptance="distance<")
        np.testing.assert_array_equal(a.samples, b.samples)  # float32: the same errors, the same draws
    tri = B.bootstrap_pauc(s, y, q, 0.02, "fixed", n_boot=40, seed=1, subtract_best=True)
    step = B.bootstrap_pauc(s, y, q, 0.02, "fixed", n_boot=40, seed=1, subtract_best="stepwise")
    plain = B.bootstrap_pauc(s, y, q, 0.02, "fixed", n_boot=40, seed=1)
    assert tri.estimate == pauc(edc(s, y, q, 0.02, "fixed"), 0.3, "triangle")
    assert np.all(step.samples <= tri.samples) and np.all(tri.samples <= plain.samples)
    with pytest.raises(ValueError, match="threshold_rule: the bootstrap supports 'at_most'"):
        B.bootstrap_pauc(s, y, q, 0.02, threshold_rule="closest")


# ----------------------------------------------------------------------------- config


def write_config(tmp_path, **extra):
    raw = {"data_root": str(tmp_path), "datasets": {}, "fr_models": {}, "quality_models": {}, **extra}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_keys_for_the_rules(tmp_path):
    cfg = load_config(write_config(tmp_path))
    assert (cfg.threshold_rule, cfg.acceptance, cfg.subtract_best, cfg.template_protocol) == (
        "at_most", "similarity>=", "none", "group")
    cfg = load_config(write_config(tmp_path, compat="crfiqa"))
    assert (cfg.threshold_rule, cfg.acceptance) == ("closest", "distance<")
    cfg = load_config(write_config(tmp_path, compat="crfiqa", acceptance="distance<"))  # consistent: fine
    assert cfg.acceptance == "distance<"
    with pytest.raises(ConfigError, match="compat: crfiqa sets threshold_rule 'closest'.*at_most"):
        load_config(write_config(tmp_path, compat="crfiqa", threshold_rule="at_most"))
    with pytest.raises(ConfigError, match="compat"):
        load_config(write_config(tmp_path, compat="magface"))
    with pytest.raises(ConfigError, match="threshold_rule"):
        load_config(write_config(tmp_path, threshold_rule="nearest"))
    with pytest.raises(ConfigError, match="acceptance"):
        load_config(write_config(tmp_path, acceptance="distance<="))
    with pytest.raises(ConfigError, match="template_protocol"):
        load_config(write_config(tmp_path, template_protocol="mxnet"))
    cfg = load_config(write_config(tmp_path, convention="fixed", subtract_best=True))
    assert cfg.subtract_best == "triangle"
    assert load_config(write_config(tmp_path, convention="fixed", subtract_best="stepwise")).subtract_best == "stepwise"
    with pytest.raises(ConfigError, match="subtract_best.*'fixed' only"):
        load_config(write_config(tmp_path, subtract_best=True))  # the default convention is recompute
    with pytest.raises(ConfigError, match="subtract_best"):
        load_config(write_config(tmp_path, convention="fixed", subtract_best="area"))
    over = load_config(write_config(tmp_path)).with_(threshold_rule="closest", acceptance="distance<",
                                                     template_protocol="insightface")
    assert (over.threshold_rule, over.acceptance, over.template_protocol) == ("closest", "distance<", "insightface")
    with pytest.raises(ConfigError, match="threshold_rule"):
        over.with_(threshold_rule="nearest")


def test_run_card_states_the_rules(tmp_path):
    from exfiqa.store.runcard import RunCard, run_card

    card = run_card(load_config(write_config(tmp_path, compat="crfiqa")), inputs={})
    rows = dict(card.rows())
    assert rows["EDC threshold"].startswith("closest") and "distance<" in rows["EDC threshold"]
    assert rows["IJB-C templates"] == "group" and rows["best curve subtracted"] == "none"
    assert RunCard.from_json(card.to_json()) == card
    old = {k: v for k, v in __import__("json").loads(card.to_json()).items()
           if k not in ("threshold_rule", "acceptance", "subtract_best", "template_protocol")}
    assert RunCard.from_json(__import__("json").dumps(old)).threshold_rule == "at_most"  # cards written before


# ----------------------------------------------------------------------------- IJB-C templates


def insightface_reference(raw, det, tids, mids):
    """insightface's aggregation written out with loops: (f(x) + f(flip x)) * det, mean per media
    within each template, sum over media, L2-normalise."""
    half = raw.shape[1] // 2
    img = (raw[:, :half].astype(np.float64) + raw[:, half:]) * det[:, None]
    out = []
    for t in np.unique(tids):
        medias = []
        for m in np.unique(mids[tids == t]):
            sel = (tids == t) & (mids == m)
            medias.append(img[sel].mean(axis=0))
        v = np.sum(medias, axis=0)
        out.append(v / np.linalg.norm(v))
    return np.unique(tids), np.array(out)


def test_insightface_templates_hand_case_and_from_stored_halves():
    from exfiqa.models import fr

    # two templates; template 7 has media 1 (two images) and media 2 (one); template 3 one image
    raw = np.array([[3.0, 0, 1, 0], [1, 0, 1, 0], [0, 2, 0, 2], [0, 0, 5, 0]])  # [f(x), f(flip x)]
    det = np.array([1.0, 0.5, 1.0, 2.0])
    tids, mids = np.array([7, 7, 7, 3]), np.array([1, 1, 2, 9])
    ids, feats = fr.insightface_template_embeddings(raw, det, tids, mids)
    # template 7: images (4, 0)*1, (2, 0)*0.5 -> media mean (2.5, 0); media 2: (0, 4) -> (2.5, 4)
    np.testing.assert_array_equal(ids, [3, 7])
    np.testing.assert_allclose(feats, [[1.0, 0.0], np.array([2.5, 4.0]) / np.hypot(2.5, 4.0)], rtol=1e-6)
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(300, 16)) * rng.uniform(0.5, 30, size=(300, 1))
    det, tids, mids = rng.uniform(0.3, 1, 300), rng.integers(0, 20, 300), rng.integers(0, 50, 300)
    ref_ids, ref = insightface_reference(raw, det, tids, mids)
    ids, feats = fr.insightface_template_embeddings(raw, det, tids, mids)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)
    # the stored per-sample embeddings are L2-normalised halves; with the two raw norms they give f
    n1, n2 = np.linalg.norm(raw[:, :8], axis=1), np.linalg.norm(raw[:, 8:], axis=1)
    halves = np.c_[raw[:, :8] / n1[:, None], raw[:, 8:] / n2[:, None]].astype(np.float32)
    _, from_halves = fr.insightface_template_embeddings(halves, det, tids, mids, norms=np.c_[n1, n2])
    np.testing.assert_allclose(from_halves, ref, rtol=1e-5, atol=1e-6)
    # ... and differ from the group's protocol, which ignores norms and detector scores
    _, group = fr.template_embeddings(halves, tids, mids)
    assert group.shape == (ref.shape[0], 16) and not np.allclose(group[:, :8] + group[:, 8:], 0)
    with pytest.raises(ValueError, match="det_scores"):
        fr.insightface_template_embeddings(raw, det[:-1], tids, mids)
    with pytest.raises(ValueError, match="norms"):
        fr.insightface_template_embeddings(halves, det, tids, mids, norms=np.c_[n1, -n2])


