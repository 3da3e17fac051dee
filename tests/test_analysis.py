"""Study-level analyses on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from exfiqa.evaluation.fusion import ex_fiqa_fw
from exfiqa.report.attention import attention_statistics
from exfiqa.report.early_exit import adaptive_exit, operating_points
from exfiqa.report.fusion_report import fusion_wins
from exfiqa.report.layers import rank_correlation


def test_adaptive_exit_stops_at_the_first_confident_exit():
    # running FW mean with weights 1, 2, 3: row 0 -> 3, (3+4*2)/3=3.67, ... ; threshold 0, margin 1
    scores = np.array([[3.0, 4.0, 5.0], [0.5, 0.5, 0.5], [0.2, 3.0, -9.0]])
    res = adaptive_exit(scores, threshold=0.0, margin=1.0, min_exit=1, gflops=[1.0, 2.0, 3.0])
    assert res.exit_used.tolist() == [1, 3, 2]  # row 1 never confident -> runs all exits
    np.testing.assert_allclose(res.score, [3.0, 0.5, (0.2 + 6.0) / 3])
    assert res.mean_gflops == pytest.approx(2.0) and res.full_gflops == 3.0
    later = adaptive_exit(scores, 0.0, 1.0, min_exit=2, gflops=[1.0, 2.0, 3.0])
    assert later.exit_used.tolist() == [2, 3, 2]


def test_adaptive_exit_score_is_the_fw_fusion_of_the_exits_read_so_far():
    # the running score at the stopping exit k is EX-FIQA-FW of exits 1..k (a second route)
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(300, 12))
    res = adaptive_exit(scores, threshold=0.0, margin=0.4, min_exit=2, gflops=list(range(1, 13)))
    assert len(set(res.exit_used.tolist())) > 3  # rows stop at several different exits
    direct = [ex_fiqa_fw(scores[i : i + 1, :k])[0] for i, k in enumerate(res.exit_used)]
    np.testing.assert_allclose(res.score, direct, rtol=1e-13, atol=1e-15)
    assert np.all((np.abs(res.score) > 0.4) | (res.exit_used == 12)) and res.exit_used.min() >= 2


def test_attention_statistics_of_uniform_and_point_maps():
    g = 4
    uniform = np.full((1, 1, g, g), 1 / g**2)
    point = np.zeros((1, 1, g, g))
    point[0, 0, 2, 1] = 1.0
    stats = attention_statistics(np.concatenate([uniform, point], axis=1))
    assert stats["entropy_mean"].tolist() == pytest.approx([np.log(16), 0.0], abs=1e-9)
    # spread of the uniform 4x4 grid around its centre: sqrt(2 * var(0..3)) = sqrt(2.5)
    assert stats["spread_mean"].tolist() == pytest.approx([np.sqrt(2.5), 0.0])


def test_fusion_wins_counts_datasets():
    rows = []
    for ds, fw, last in (("a", 1.0, 2.0), ("b", 3.0, 2.0), ("c", 0.5, 0.6), ("tie", 7.0 * (1 - 1e-12), 7.0)):
        rows += [{"quality_model": "C", "fr_model": "arcface", "fmr": 1e-3, "dataset": ds, "method": "EX-FIQA-FW", "pauc": fw},
                 {"quality_model": "C", "fr_model": "arcface", "fmr": 1e-3, "dataset": ds, "method": "Exit 12", "pauc": last}]
    out = fusion_wins(pd.DataFrame(rows), "EX-FIQA-FW", "Exit 12")
    assert out[["wins", "n"]].values.tolist() == [[2, 4]]  # equal to 1e-12 relative: a tie, no win
    assert out["summary"].iloc[0] == "EX-FIQA-FW has a lower pAUC (point estimate) than Exit 12 on 2 of 4"


def test_operating_points_from_a_hand_table():
    pauc = pd.DataFrame({
        "quality_model": "C",
        "method": ["Exit 1", "Exit 2", "Exit 3", "EX-FIQA-FW", "sharpness"],
        "pauc": [0.50, 0.31, 0.30, 0.29, 0.10],  # a baseline without a cost is ignored
    })
    costs = pd.DataFrame({"quality_model": "C", "method": ["Exit 1", "Exit 2", "Exit 3", "EX-FIQA-FW"], "exit": [1, 2, 3, None],
                          "gflops": [1.0, 2.0, 3.0, 3.5]})
    ops = operating_points(pauc, costs, tolerance=0.05).set_index("scenario")
    assert ops.loc["max accuracy", "method"] == "EX-FIQA-FW"
    assert ops.loc["balanced", "method"] == "Exit 2"  # 0.31 <= 0.30 * 1.05
    assert ops.loc["max efficiency", "method"] == "Exit 2"  # Exit 1 is far worse
    assert ops.loc["balanced", "flop_saving"] == pytest.approx(1 - 2 / 3)
    assert set(ops["tied_methods"]) == {""}
    # Exit 3 ties with FW for the lowest mean pAUC: both are named
    pauc.loc[pauc["method"] == "Exit 3", "pauc"] = 0.29 * (1 + 1e-12)
    ops = operating_points(pauc, costs, tolerance=0.05).set_index("scenario")
    assert ops.loc["max accuracy", "tied_methods"] == "EX-FIQA-FW, Exit 3" and ops.loc["balanced", "tied_methods"] == ""


def test_rank_correlation_is_spearman():
    frame = pd.DataFrame({"a": [1, 2, 3, 4], "b": [10, 20, 30, 40], "c": [4, 3, 2, 1]})
    corr = rank_correlation(frame, ["a", "b", "c"])
    assert corr.loc["a", "b"] == pytest.approx(1.0) and corr.loc["a", "c"] == pytest.approx(-1.0)
