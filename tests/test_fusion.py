"""Fusion strategies against hand-computed weights and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from exfiqa.evaluation.fusion import (
    CalibrationSet,
    Strategy,
    choose_exits,
    chosen_mean,
    depth_ramp,
    depth_weights,
    ex_fiqa_f,
    ex_fiqa_fw,
    exponential_weights,
    fuse,
    last_k_weights,
    strategies,
    uniform_weights,
    zscore_fuse,
)


def test_paper_weights_by_hand():
    w = depth_weights(12)
    np.testing.assert_allclose(w, np.arange(1, 13) / 78)
    np.testing.assert_allclose(uniform_weights(12), np.full(12, 1 / 12))
    np.testing.assert_allclose(depth_weights(3), [1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(last_k_weights(4, 2), [0, 0, 0.5, 0.5])
    e = exponential_weights(3, rate=np.log(2))
    np.testing.assert_allclose(e, [2 / 14, 4 / 14, 8 / 14])


def test_fused_scores_by_hand():
    s = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]])
    np.testing.assert_allclose(ex_fiqa_f(s), [2.0, 1.0])
    np.testing.assert_allclose(ex_fiqa_fw(s), [(1 + 4 + 9) / 6, 3 / 6])
    # constant rows fuse to the constant under any normalised weights
    c = np.full((5, 12), 2.5)
    np.testing.assert_allclose(ex_fiqa_fw(c), 2.5)


def test_zscore_fusion_ignores_per_exit_affine_scales():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(50, 4))
    scaled = s * np.array([1.0, 10.0, 0.1, 3.0]) + np.array([0.0, 5.0, -2.0, 1.0])
    np.testing.assert_allclose(zscore_fuse(s), zscore_fuse(scaled), atol=1e-12)


def test_depth_weights_are_the_exact_quotients_l_over_the_triangular_number():
    # the FW weights once typed inline as arange(1, L + 1) / (L (L + 1) / 2): equal bit for bit
    for n in range(1, 300):
        np.testing.assert_array_equal(depth_weights(n), np.arange(1, n + 1) / (n * (n + 1) / 2))
        np.testing.assert_array_equal(depth_ramp(n), [float(k) for k in range(1, n + 1)])
    assert depth_ramp(4).dtype == np.float64 and depth_weights(12)[0] == 1 / 78


def test_strategy_registry_by_hand():
    reg = strategies(12)
    assert list(reg) == ["EX-FIQA-F", "EX-FIQA-FW", "last-4", "exp-depth", "z-score FW"]
    assert all(name == s.name for name, s in reg.items())
    np.testing.assert_array_equal(reg["EX-FIQA-F"].weights, np.full(12, 1 / 12))
    np.testing.assert_array_equal(reg["EX-FIQA-FW"].weights, np.arange(1, 13) / 78)
    np.testing.assert_array_equal(reg["last-4"].weights, [0.0] * 8 + [0.25] * 4)
    e = np.exp(0.3 * np.arange(1, 13))
    np.testing.assert_allclose(reg["exp-depth"].weights, e / e.sum(), rtol=1e-15)
    assert reg["z-score FW"].weights is None
    assert list(strategies(2)) == ["EX-FIQA-F", "EX-FIQA-FW", "last-1", "exp-depth", "z-score FW"]
    # applied: a 2-sample, 3-exit matrix by hand
    s = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]])
    three = strategies(3)
    np.testing.assert_allclose(three["EX-FIQA-F"].apply(s), [2.0, 1.0])
    np.testing.assert_allclose(three["EX-FIQA-FW"].apply(s), [14 / 6, 3 / 6])
    np.testing.assert_allclose(three["last-1"].apply(s), [3.0, 0.0])
    # z-score: each exit's two values standardise to -1/+1 (row 0: -1, +1, +1), FW weights l/6
    np.testing.assert_allclose(three["z-score FW"].apply(s), [(-1 + 2 + 3) / 6, (1 - 2 - 3) / 6])
    # F and FW are the same operation as ex_fiqa_f / ex_fiqa_fw, bit for bit
    r = np.random.default_rng(4).normal(size=(101, 12))
    np.testing.assert_array_equal(reg["EX-FIQA-F"].apply(r), ex_fiqa_f(r))
    np.testing.assert_array_equal(reg["EX-FIQA-FW"].apply(r), ex_fiqa_fw(r))
    np.testing.assert_array_equal(reg["z-score FW"].apply(r), zscore_fuse(r))


def test_a_weight_strategy_is_fuse_with_its_weights_as_given():
    w = np.array([0.0, 0.25, 0.75])
    s = Strategy("mine", weights=w)
    assert s.weights is w  # not copied: the same operands as fuse(scores, w)
    m = np.array([[4.0, 8.0, 12.0]])
    np.testing.assert_array_equal(s.apply(m), [11.0])
    with pytest.raises(ValueError, match="'both'.*exactly one"):
        Strategy("both", weights=w, scorer=zscore_fuse)
    with pytest.raises(ValueError, match="'none'.*exactly one"):
        Strategy("none")
    with pytest.raises(ValueError, match="'flat'.*one value per exit"):
        Strategy("flat", weights=np.ones((2, 2)))
    with pytest.raises(ValueError, match="weights must have shape"):
        s.apply(np.ones((2, 4)))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="depth must be a positive"):
            strategies(bad)  # type: ignore[arg-type]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="weights must have shape"):
        fuse(np.ones((2, 3)), [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\(N, L\) matrix"):
        ex_fiqa_fw(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        ex_fiqa_f(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="k must lie"):
        last_k_weights(3, 4)


# ------------------------------------------------------------------ data-chosen exits (EX-FIQA-DC)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho as the Pearson correlation of average ranks (a second implementation)."""
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(1, len(v) + 1)
        for value in np.unique(v):  # ties: the mean of their ranks
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))


def test_greedy_choice_by_hand():
    # label ranks 1..5; exit 1 swaps the top two (rho 1 - 6*2/120 = 0.9), exit 2 reverses it
    # (rho -1), exit 3 swaps the bottom two (0.9). Ranking: 1, 3 (tie: the shallower first), 2.
    # mean(1, 3) = [1.5, 1.5, 3, 4.5, 4.5]: rho = 9 / sqrt(9 * 10) = 3 / sqrt(10) > 0.9, added;
    # mean(1, 3, 2) = [8, 7, 9, 11, 10] / 3 has ranks [2, 1, 3, 5, 4]: rho 0.8, so it stops at 2.
    label = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    exits = np.array([[1, 2, 3, 5, 4], [5, 4, 3, 2, 1], [2, 1, 3, 4, 5]], dtype=float).T
    c = choose_exits([CalibrationSet(exits, label, name="hand")])
    np.testing.assert_allclose(c.correlations, [0.9, -1.0, 0.9])
    assert c.ranking == (1, 3, 2) and c.chosen == (1, 3) and c.stopped_at == 2
    np.testing.assert_allclose(c.trace, [0.9, 3 / np.sqrt(10)])
    assert c.stop_correlation == pytest.approx(0.8)
    np.testing.assert_allclose(chosen_mean(exits, c.chosen), exits @ [0.5, 0.0, 0.5])
    np.testing.assert_allclose(chosen_mean(exits, c.chosen), [1.5, 1.5, 3, 4.5, 4.5])
    assert c.calibration == ("hand",)


def test_exits_3_and_7_carry_the_label_the_rest_is_noise():
    rng = np.random.default_rng(0)
    n = 3000
    y = rng.normal(size=n)
    s = rng.normal(size=(n, 12))
    s[:, 2] = y + 0.6 * rng.normal(size=n)  # exit 3: the stronger signal
    s[:, 6] = y + 0.9 * rng.normal(size=n)  # exit 7
    c = choose_exits([CalibrationSet(s, y)])
    assert c.ranking[:2] == (3, 7) and c.chosen == (3, 7)
    assert c.stopped_at == c.ranking[2] and c.stopped_at not in (3, 7)
    # against an independent Spearman: each exit, the chosen mean, and the rejected candidate
    np.testing.assert_allclose(c.correlations, [_spearman(s[:, k], y) for k in range(12)], atol=1e-12)
    assert c.trace[1] == pytest.approx(_spearman((s[:, 2] + s[:, 6]) / 2, y), abs=1e-12)
    assert c.trace[1] > c.trace[0]
    third = c.stopped_at - 1
    assert c.stop_correlation == pytest.approx(_spearman((s[:, 2] + s[:, 6] + s[:, third]) / 3, y), abs=1e-12)
    assert c.stop_correlation <= c.trace[1]
    # the ranking follows the correlations, highest first
    assert list(c.ranking) == sorted(range(1, 13), key=lambda k: -c.correlations[k - 1])


def test_greedy_stops_at_the_first_exit_that_does_not_raise_it():
    # exit 2 ranks second but lives on a 100x scale, so the mean of 1 and 2 follows exit 2 and
    # its correlation falls; exit 3 would have raised it, but is never tried
    rng = np.random.default_rng(1)
    n = 3000
    y = rng.normal(size=n)
    s = np.stack([y + 0.5 * rng.normal(size=n), 100 * (y + 0.7 * rng.normal(size=n)), y + 0.8 * rng.normal(size=n)], axis=1)
    c = choose_exits([CalibrationSet(s, y)])
    assert c.ranking == (1, 2, 3) and c.chosen == (1,) and c.stopped_at == 2
    assert c.stop_correlation < c.trace[0]
    assert _spearman((s[:, 0] + s[:, 2]) / 2, y) > c.trace[0]  # would have risen with exit 3


def test_correlations_are_averaged_over_calibration_sets():
    rng = np.random.default_rng(2)
    sets = []
    for i, n in enumerate((400, 50)):  # sizes differ: each set still counts once
        y = rng.normal(size=n) * (10.0 if i else 1.0) + 5 * i  # labels on different scales
        s = rng.normal(size=(n, 4)) + y[:, None] * np.array([0.1, 0.5, 1.0, 0.0]) * (i + 1)
        sets.append(CalibrationSet(s, y, name=f"set{i}"))
    c = choose_exits(sets)
    expect = [np.mean([_spearman(cs.scores[:, k], cs.label) for cs in sets]) for k in range(4)]
    np.testing.assert_allclose(c.correlations, expect, atol=1e-12)
    mean = np.mean([_spearman(chosen_mean(cs.scores, c.chosen), cs.label) for cs in sets])
    assert c.trace[-1] == pytest.approx(mean, abs=1e-12)
    assert c.calibration == ("set0", "set1")
    flipped = choose_exits(sets[::-1])
    assert flipped.chosen == c.chosen and flipped.ranking == c.ranking
    np.testing.assert_allclose(flipped.trace, c.trace, atol=1e-12)


def test_sides_take_the_min_over_their_samples_and_unlabelled_sides_are_left_out():
    # templates {0, 1}, {2, 3}, {4}, {5}: exit 1's template minima are 1, 2, 4, 9 (rho 1 with the
    # labels of the first three; template 3 has none); per-sample means would be 3, 2.5, 4
    scores = np.array([[1.0], [5.0], [2.0], [3.0], [4.0], [9.0]])
    cal = CalibrationSet(scores, np.array([1.0, 2.0, 3.0, np.nan]), sides=np.array([0, 0, 1, 1, 2, 3]))
    np.testing.assert_allclose(cal.side_values(scores[:, 0]), [1, 2, 4, 9])
    assert cal.correlation(scores[:, 0]) == pytest.approx(1.0)
    shuffled = np.array([3, 0, 5, 1, 4, 2])  # sample order does not matter
    again = CalibrationSet(scores[shuffled], cal.label, sides=np.array([0, 0, 1, 1, 2, 3])[shuffled])
    assert again.correlation(scores[shuffled, 0]) == pytest.approx(1.0)


def test_choice_is_deterministic_and_ignores_sample_order():
    rng = np.random.default_rng(3)
    s, y = rng.normal(size=(500, 12)), rng.normal(size=500)
    s[:, 4] += y
    s[:, 9] += 0.7 * y
    first, second = choose_exits([CalibrationSet(s, y)]), choose_exits([CalibrationSet(s.copy(), y.copy())])
    assert first == second
    perm = rng.permutation(500)
    moved = choose_exits([CalibrationSet(s[perm], y[perm])])
    assert moved.chosen == first.chosen and moved.ranking == first.ranking
    np.testing.assert_allclose(moved.trace, first.trace, atol=1e-12)


def test_bad_calibration_input_is_named():
    y = np.arange(5.0)
    with pytest.raises(ValueError, match="exit 2 has constant scores"):
        choose_exits([CalibrationSet(np.stack([y, np.ones(5)], axis=1), y, name="flat")])
    with pytest.raises(ValueError, match="fewer than 3 sides"):
        CalibrationSet(np.ones((5, 2)), np.array([1.0, 2.0, np.nan, np.nan, np.nan]))
    with pytest.raises(ValueError, match="5 samples but 4 labels"):
        CalibrationSet(np.ones((5, 2)), np.arange(4.0))
    with pytest.raises(ValueError, match="every side"):
        CalibrationSet(np.ones((5, 2)), np.arange(4.0), sides=np.array([0, 0, 1, 1, 3]))
    with pytest.raises(ValueError, match="has 3 exits"):
        choose_exits([CalibrationSet(np.random.default_rng(0).normal(size=(5, 2)), y, name="a"),
                      CalibrationSet(np.random.default_rng(0).normal(size=(5, 3)), y, name="b")])
    with pytest.raises(ValueError, match="no calibration set"):
        choose_exits([])
    with pytest.raises(ValueError, match="distinct exits"):
        chosen_mean(np.ones((2, 3)), [0, 1])
