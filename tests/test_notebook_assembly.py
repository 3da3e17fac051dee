"""The tables and studies the notebooks assemble (exfiqa.report's section modules, tables, plots), checked against
hand-made frames and against direct computations on the tiny demo world."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml

from exfiqa.config import ConfigError, load_config, parse_attention_samples
from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.fusion import depth_weights
from exfiqa.evaluation.pauc import pauc
from exfiqa.extract import Models, extract
from exfiqa.readers.images import read_face
from exfiqa.report import tables
from exfiqa.report.attention import attention_inputs
from exfiqa.report.bootstrap_tables import depth_bootstrap, fusion_bootstrap
from exfiqa.report.comparison import (
    PAPER_HEADLINE,
    SECONDARY_PROTOCOL,
    SECONDARY_SOURCE,
    SELECTED_BY_BOTH,
    SELECTED_BY_POSTER,
    SELECTED_ON_DATA,
    best_early_exit,
    headline_vs_paper,
    poster_table,
    secondary_reference,
)
from exfiqa.report.early_exit import (
    adaptive_cost_curve,
    adaptive_exit,
    adaptive_study,
    operating_points,
    released_claims,
    released_gflops,
)
from exfiqa.report.findings import FINDINGS_COLUMNS, VERDICTS, paper_findings
from exfiqa.report.frames import (
    Headline,
    best_text,
    fmr_target,
    headline,
    is_tie,
    pauc_all,
    tied_best,
    unresolved,
    variant_tags,
)
from exfiqa.report.fusion_report import fusion_vs_exits, fusion_wins, strategy_table
from exfiqa.report.layers import depth_summary
from exfiqa.study import Study

# ------------------------------------------------------------------------------ hand-made frames


def _tidy(values: dict[tuple[str, str, str, str], float], fmr: float = 1e-3) -> pd.DataFrame:
    """``{(quality_model, fr_model, dataset, method): pauc}`` -> a pauc_all-like frame."""
    return pd.DataFrame([
        {"quality_model": q, "fr_model": fr, "dataset": ds, "method": m, "fmr": fmr, "pauc": v}
        for (q, fr, ds, m), v in values.items()
    ])


def _exits(q: str, fr: str, ds: str, per_exit: list[float], f: float, fw: float, **others: float) -> dict:
    out = {(q, fr, ds, f"Exit {k}"): v for k, v in enumerate(per_exit, 1)}
    out[(q, fr, ds, "EX-FIQA-F")] = f
    out[(q, fr, ds, "EX-FIQA-FW")] = fw
    out.update({(q, fr, ds, m): v for m, v in others.items()})
    return out


def test_depth_summary_shares_by_hand():
    # exit pAUCs 10, 6, 4, 3 (depth 4): total change 7; exit 5 -> exit 4 (clamped), exit 8 -> exit 4
    frame = _tidy({**_exits("T", "a", "x", [10, 6, 4, 3], 5, 2), **_exits("T", "a", "y", [12, 8, 6, 5], 7, 4)})
    frame = pd.concat([frame, _tidy(_exits("T", "a", "x", [1, 1, 1, 1], 1, 1), fmr=1e-2)])  # another FMR, ignored
    out = depth_summary(frame, {"T": 4}, 1e-3).iloc[0]
    assert out["pauc_exit_1"] == pytest.approx(11.0) and out["pauc_last_exit"] == pytest.approx(4.0)
    assert out["share_of_gain_by_exit_5"] == pytest.approx(1.0) and out["best_single_exit"] == "Exit 4"
    frame12 = _tidy(_exits("C", "a", "x", [20, 16, 13, 11, 10, 9.5, 9.2, 9.1, 9.0, 9.05, 9.1, 9.0], 9, 8))
    out = depth_summary(frame12, {"C": 12}, 1e-3).iloc[0]
    assert out["share_of_gain_by_exit_5"] == pytest.approx((20 - 10) / (20 - 9.0))
    assert out["share_of_gain_by_exit_8"] == pytest.approx((20 - 9.1) / (20 - 9.0))
    assert out["best_single_exit"] == "Exit 9, Exit 12 (tie)"  # every tied minimum named, in exit order


def test_fusion_vs_exits_and_poster_table_by_hand():
    vals = {**_exits("T", "arc", "IJB", [9, 7, 8], 7.5, 6.5, serfiq=8.5), **_exits("T", "arc", "LFW", [3, 2, 1], 2.5, 1.5, serfiq=2.0),
            **_exits("C", "arc", "IJB", [9, 6, 7], 6.6, 6.4, serfiq=8.5), **_exits("C", "arc", "LFW", [4, 3, 2], 3.0, 2.5, serfiq=2.0)}
    frame = _tidy(vals)
    versus = fusion_vs_exits(frame, {"T": 3, "C": 3}).set_index(["quality_model", "dataset"])
    assert versus.loc[("T", "IJB"), "best single exit"] == "Exit 2" and versus.loc[("T", "IJB"), "best exit pAUC"] == 7
    assert versus.loc[("C", "LFW"), "last exit"] == 2 and versus.loc[("C", "LFW"), "EX-FIQA-FW"] == 2.5
    tags = {"T": ("T", 3), "C": ("C", 3)}
    poster = poster_table(frame, tags, ["IJB", "LFW"]).set_index("method")
    assert list(poster.index) == ["SER-FIQ-style (re-impl.)", "ViT-FIQA (T)", "EX-FIQA-2 (T)", "EX-FIQA-FW (T)",
                                  "ViT-FIQA (C)", "EX-FIQA-2 (C)", "EX-FIQA-FW (C)"]
    # best early exit of (T) among exits 1..2 by mean: exit 1 (9+3)/2 = 6, exit 2 (7+2)/2 = 4.5
    assert poster.loc["EX-FIQA-2 (T)", "IJB"] == 7 and poster.loc["EX-FIQA-FW (C)", "mean"] == pytest.approx((6.4 + 2.5) / 2)
    assert list(poster.columns) == ["group", "IJB", "LFW", "mean", "selection", "chosen_on_evaluated_data"]
    assert poster.loc["EX-FIQA-2 (T)", "chosen_on_evaluated_data"] and not poster.loc["EX-FIQA-FW (T)", "chosen_on_evaluated_data"]


def test_headline_vs_paper_maps_the_poster_rows_and_rescales_them():
    vals = {**_exits("T", "arcface", "IJB-C-like", list(np.linspace(9, 6, 12)), 6.6, 6.2, serfiq=7.0, sharpness=8.0),
            **_exits("C", "arcface", "IJB-C-like", list(np.linspace(8, 7, 12)), 6.9, 6.8, serfiq=7.0, sharpness=8.0),
            **_exits("T", "other", "IJB-C-like", [1.0] * 12, 1, 1)}
    head = Headline("ijbc", "IJB-C-like", "arcface", 1e-3)
    out = headline_vs_paper(_tidy(vals), head, {"T": ("T", 12), "C": ("C", 12)}, scale=100.0).set_index("method")
    assert out.loc["EX-FIQA-FW(T)", "paper"] == pytest.approx(0.636) and out.loc["EX-FIQA-FW(T)", "this_run"] == 6.2
    assert out.loc["EX-FIQA-10(T)", "this_run"] == pytest.approx(np.linspace(9, 6, 12)[9])
    assert out.loc["ViT-FIQA(C)", "this_run"] == 7.0 and out.loc["ViT-FIQA(C)", "this_run_method"] == "Exit 12 (C)"
    assert out.loc["SER-FIQ", "this_run"] == 7.0 and out.loc["SER-FIQ", "this_run_method"] == "SER-FIQ-style (re-impl.)"
    assert np.isnan(out.loc["BRISQUE", "this_run"]) and out.loc["BRISQUE", "this_run_method"] == "(not in this run)"
    assert out.loc["Sharpness (Laplacian)", "this_run"] == 8.0 and np.isnan(out.loc["Sharpness (Laplacian)", "paper"])
    assert out.loc["EX-FIQA-F (T)", "this_run"] == 6.6
    assert set(out["fr_model"]) == {"arcface"} and set(out["dataset"]) == {"IJB-C-like"}
    # + F (T), F (C), sharpness and (T)'s best early exit on this data (11; the poster's is 10); serfiq is mapped
    assert len(out) == len(PAPER_HEADLINE) + 4
    assert out.loc["Exit 11 (T)", "chosen_on_evaluated_data"] and out.loc["Exit 11 (T)", "selection"] == SELECTED_ON_DATA
    assert out.loc["EX-FIQA-11(C)", "selection"] == SELECTED_BY_BOTH  # (C): the poster's exit is also the best
    # an external method named as on the poster takes its row
    ext = _tidy({("T", "arcface", "IJB-C-like", "CR-FIQA (L)"): 6.1, **vals})
    out = headline_vs_paper(ext, head, {"T": ("T", 12), "C": ("C", 12)}, scale=1000.0).set_index("method")
    assert out.loc["CR-FIQA(L)", "this_run"] == 6.1 and out.loc["CR-FIQA(L)", "paper"] == 6.58


def test_secondary_reference_sits_beside_plain_vitfiqa_t_and_is_labelled_as_such():
    vals = {**_exits("T", "arcface", "IJB-C-like", list(np.linspace(9, 6, 12)), 6.6, 6.2),
            **_exits("T", "arcface", "CFP", [3.0] * 11 + [3.5], 3.1, 3.2),
            **_exits("C", "arcface", "CFP", [9.0] * 12, 9, 9),  # (C) is no reference row
            **_exits("T", "magface", "CFP", [1.0] * 12, 1, 1)}  # nor another FR model
    frame = pd.concat([_tidy(vals), _tidy(_exits("T", "arcface", "CFP", [7.0] * 12, 7, 7), fmr=1e-2)])
    head = Headline("ijbc", "IJB-C-like", "arcface", 1e-3)
    tags = {"T": ("T", 12), "C": ("C", 12)}
    col = "PreFIQs (secondary transcription)"
    assert SECONDARY_SOURCE == col
    out = secondary_reference(frame, {"ijbc": "IJB-C-like", "cfp_fp": "CFP", "lfw": "LFW"}, tags, head, 100.0)
    out = out.set_index("benchmark")
    assert list(out.index) == ["adience", "agedb_30", "cfp_fp", "cplfw", "ijbc"]
    # the transcribed values, x10^3 -> x100
    assert out[col].tolist() == pytest.approx([0.9948, 0.8234, 0.3568, 2.0531, 0.6563], abs=1e-12)
    assert out.loc["cfp_fp", "this_run"] == 3.5 and out.loc["cfp_fp", "dataset"] == "CFP"  # exit 12 (T), arcface, 1e-3
    assert out.loc["ijbc", "this_run"] == pytest.approx(6.0) and out.loc["ijbc", "this_run_method"] == "Exit 12 (T)"
    assert np.isnan(out.loc["adience", "this_run"]) and out.loc["adience", "dataset"] == "(not in this run)"
    assert set(out["fr_model"]) == {"arcface"} and set(out["reference_protocol"]) == {SECONDARY_PROTOCOL}
    only_c = secondary_reference(frame, {"cfp_fp": "CFP"}, {"C": ("C", 12)}, head, 1000.0).set_index("benchmark")
    assert only_c[["this_run"]].isna().all().all() and set(only_c["this_run_method"]) == {"(no (T) model)"}
    # the headline table carries the IJB-C value in its own column, on the ViT-FIQA(T) row only
    vs = headline_vs_paper(frame, head, tags, scale=1000.0).set_index("method")
    assert vs.loc["ViT-FIQA(T)", col] == 6.563 and vs.loc["ViT-FIQA(T)", "paper"] == 6.56
    assert vs[col].notna().sum() == 1


def test_comparison_tables_agree_and_disclose_rows_chosen_on_the_data():
    # (T) depth 12: the best early exit on this data is exit 4 (mean over both datasets), the poster's is 10
    t_exits = {"IJB": [9, 8, 7, 5, 8, 8, 8, 8, 8, 6, 7, 7], "LFW": [3, 3, 3, 1, 3, 3, 3, 3, 3, 3, 3, 3]}
    vals = {}
    for ds, ex in t_exits.items():
        vals.update(_exits("T", "arc", ds, ex, 7.0, 6.0, serfiq=7.5))
    frame = _tidy(vals)
    frame["resolved"] = ~((frame["dataset"] == "LFW") & (frame["method"] == "Exit 4"))  # one unresolved cell
    tags = {"T": ("T", 12)}
    poster = poster_table(frame, tags, ["IJB", "LFW"]).set_index("method")
    head = Headline("ijb", "IJB", "arc", 1e-3)
    vs = headline_vs_paper(frame, head, tags, scale=1000.0)
    assert best_early_exit(frame, "T", 12) == "Exit 4"
    # both tables hold the poster's exit 10 and the data-chosen exit 4, flagged alike, with the same values
    assert poster.loc["EX-FIQA-10 (T)", "selection"] == SELECTED_BY_POSTER
    assert not poster.loc["EX-FIQA-10 (T)", "chosen_on_evaluated_data"]
    assert poster.loc["EX-FIQA-4 (T)", "selection"] == SELECTED_ON_DATA and poster.loc["EX-FIQA-4 (T)", "chosen_on_evaluated_data"]
    by_run = vs.set_index("this_run_method")
    assert by_run.loc["Exit 4 (T)", "this_run"] == poster.loc["EX-FIQA-4 (T)", "IJB"] == 5
    assert by_run.loc["Exit 4 (T)", "chosen_on_evaluated_data"] and by_run.loc["Exit 4 (T)", "selection"] == SELECTED_ON_DATA
    assert by_run.loc["Exit 10 (T)", "this_run"] == poster.loc["EX-FIQA-10 (T)", "IJB"] == 6
    chosen_poster = {m.split()[0].removeprefix("EX-FIQA-") for m in poster.index[poster["chosen_on_evaluated_data"]]}
    chosen_vs = {m.split()[1] for m in vs["this_run_method"][vs["chosen_on_evaluated_data"]]}
    assert chosen_poster == chosen_vs == {"4"}
    # the re-implemented SER-FIQ is labelled so in both
    assert "SER-FIQ-style (re-impl.)" in poster.index
    assert vs.set_index("method").loc["SER-FIQ", "this_run_method"] == "SER-FIQ-style (re-impl.)"
    # resolved flags: the unresolved LFW cell of exit 4 and the mean that contains it
    assert poster.loc["EX-FIQA-4 (T)", "unresolved_in"] == "LFW; mean" and not poster.loc["EX-FIQA-4 (T)", "resolved"]
    assert poster.loc["EX-FIQA-10 (T)", "resolved"] and poster.loc["EX-FIQA-10 (T)", "unresolved_in"] == ""
    assert by_run.loc["Exit 4 (T)", "resolved"]  # on the headline dataset IJB it is resolved
    assert pd.isna(vs.set_index("method").loc["BRISQUE", "resolved"])  # no value of this run, nothing to flag


def test_operating_points_and_fusion_vs_exits_carry_resolved():
    frame = _tidy({**_exits("T", "arc", "IJB", [9, 7, 8], 7.5, 6.5), **_exits("T", "arc", "LFW", [3, 2, 1], 2.5, 1.5)})
    frame["resolved"] = ~((frame["dataset"] == "LFW") & (frame["method"] == "EX-FIQA-FW"))
    versus = fusion_vs_exits(frame, {"T": 3}).set_index("dataset")
    assert versus.loc["LFW", "unresolved_in"] == "EX-FIQA-FW" and versus.loc["IJB", "resolved"]
    frame["quality_model"] = "T"
    costs = pd.DataFrame({"quality_model": "T", "method": ["Exit 1", "Exit 2", "Exit 3", "EX-FIQA-F", "EX-FIQA-FW"],
                          "exit": [1, 2, 3, None, None], "gflops": [1.0, 2.0, 3.0, 3.1, 3.1]})
    ops = operating_points(frame, costs).set_index("scenario")
    assert ops.loc["max accuracy", "method"] == "EX-FIQA-FW" and not ops.loc["max accuracy", "resolved"]
    assert ops.loc["balanced", "resolved"]
    assert list(unresolved(frame)["method"]) == ["EX-FIQA-FW"]
    with pytest.raises(ValueError, match="no 'resolved' column"):
        unresolved(frame.drop(columns="resolved"))


def _paper_world(fw_t_best: bool) -> pd.DataFrame:
    """Two variants, two FR models, four datasets, built so that each finding agrees (or, for
    ``fw_t_best=False``, so that the FW (T) findings differ)."""
    gains = [20, 14, 11, 9.5, 8.6, 8.3, 8.1, 8.0, 8.0, 8.05, 8.1, 8.2]  # big early gains, little after 8
    vals = {}
    for fr in ("arcface", "magface"):
        for i, ds in enumerate(("IJB-C", "LFW", "Adience", "CFP")):
            c_exits = [g + i for g in gains]
            c_exits[7] -= 0.5  # exit 8 of (C) best everywhere
            fw_c = c_exits[-1] - (0.3 if ds != "CFP" else -0.3)  # FW (C) beats exit 12 on 3 of 4
            fw_t = (5.0 if fw_t_best else 9.5) + i
            vals.update(_exits("C", fr, ds, c_exits, c_exits[-1], fw_c if ds != "Adience" else 4.0 + i, serfiq=30.0))
            vals.update(_exits("T", fr, ds, [g + i + 1 for g in gains], 9.0 + i, fw_t, serfiq=30.0))
    return _tidy(vals)


def test_paper_findings_agree_and_differ_as_constructed():
    head = Headline("ijbc", "IJB-C", "arcface", 1e-3)
    tags = {"T": ("T", 12), "C": ("C", 12)}
    good = paper_findings(_paper_world(True), tags, head, adience="Adience").set_index("finding")
    assert good.loc["depth gains (T)", "verdict"] == "agrees" and good.loc["depth gains (C)", "verdict"] == "agrees"
    assert good.loc["middle exits best on IJB-C (C)", "verdict"] == "agrees"
    assert "Exit 8" in good.loc["middle exits best on IJB-C (C)", "this_run"]
    # no paired intervals given: the point estimates win 3 of 4, but no win is resolved
    fw = good.loc["FW beats the last exit (C)"]
    assert fw["verdict"] == "not resolved" and "lower pAUC (point estimate) on 3 of 4" in fw["this_run"]
    assert fw["this_run"].endswith("no paired intervals given")
    assert good.loc["FW (T) best mean pAUC", "verdict"] == "agrees"
    assert good.loc["FW (T) top-1 on IJB-C", "verdict"] == "agrees"
    assert good.loc["FW (C) best on Adience", "verdict"] == "agrees"  # FW (C) 4+2 = 6 below FW (T) 5+2 = 7
    assert good.loc["FW (C) best on Adience", "difference"] == pytest.approx(6 - 7)  # FW (C) - the best other
    assert set(good["verdict"]) <= {"agrees", "not resolved"} and good["criterion"].str.len().min() > 10
    assert tuple(good.reset_index().columns) == FINDINGS_COLUMNS
    bad = paper_findings(_paper_world(False), tags, head, adience=None).set_index("finding")
    assert bad.loc["FW (T) best mean pAUC", "verdict"] == "differs"
    assert bad.loc["FW (T) top-1 on IJB-C", "verdict"] == "differs"
    assert bad.loc["FW (C) best on Adience", "verdict"] == "not computable in this run"
    flat = _tidy(_exits("C", "arcface", "IJB-C", [9.0] * 11 + [10.0], 9, 9))  # no gain with depth at all
    flat_out = paper_findings(flat, {"C": ("C", 12)}, head).set_index("finding")
    assert flat_out.loc["depth gains (C)", "verdict"] == "differs"


def _paired(frame: pd.DataFrame, q: str, method: str, reference: str, cis: dict[str, tuple[float, float]],
            fr: str = "arcface", scale: float = 1.0) -> pd.DataFrame:
    """A hand-made paired bootstrap table: delta_pauc from ``frame`` (times ``scale``), the given intervals."""
    p = frame[(frame["quality_model"] == q) & (frame["fr_model"] == fr)].set_index(["dataset", "method"])["pauc"]
    return pd.DataFrame([
        {"quality_model": q, "dataset": ds, "fr_model": fr, "fmr": 1e-3, "method": method, "reference": reference,
         "delta_pauc": scale * (p[(ds, method)] - p[(ds, reference)]), "ci_low": lo, "ci_high": hi}
        for ds, (lo, hi) in cis.items()
    ])


def test_paper_findings_name_every_tie_and_say_tie_when_the_verdict_rests_on_one():
    head = Headline("ijbc", "IJB-C", "arcface", 1e-3)
    tags = {"T": ("T", 12), "C": ("C", 12)}

    def world(c_exits: list[float], fw_t: float = 5.0, serfiq: float = 30.0, fw_c_adience: float = 6.0) -> pd.DataFrame:
        vals = {}
        for fr in ("arcface", "magface"):
            for ds in ("IJB-C", "Adience"):
                vals.update(_exits("C", fr, ds, c_exits, 30, fw_c_adience if ds == "Adience" else 30, serfiq=serfiq))
                vals.update(_exits("T", fr, ds, [40.0 - k for k in range(12)], 30, fw_t, serfiq=serfiq))
        return _tidy(vals)

    def findings(frame: pd.DataFrame) -> pd.DataFrame:
        return paper_findings(frame, tags, head, adience="Adience").set_index("finding")

    # the case: exits 9..12 of (C) share the best pAUC (equal to 1e-12 relative), only exit 9 lies in 7..9
    gains = [30, 28, 26, 25, 24, 23, 22.5, 22.0, 21.810767, 21.810767, 21.810767 * (1 + 1e-12), 21.810767]
    row = findings(world(gains)).loc["middle exits best on IJB-C (C)"]
    assert row["verdict"] == "tie"  # main said "agrees" with "Exit 9" (the lowest index won the tie)
    assert "Exit 9, Exit 10, Exit 11, Exit 12 (tie)" in row["this_run"]
    assert row["difference"] == pytest.approx(0.0, abs=1e-9)  # best of 7..9 minus best of the others
    # all tied exits outside 7..9: differs; all inside: agrees, both named
    outside = gains[:9] + [21.0, 21.0, 21.0]
    assert findings(world(outside)).loc["middle exits best on IJB-C (C)", "verdict"] == "differs"
    inside = gains[:6] + [20.0, 20.0, 21.0, 22, 22, 22]
    row = findings(world(inside)).loc["middle exits best on IJB-C (C)"]
    assert row["verdict"] == "agrees" and "Exit 7, Exit 8 (tie)" in row["this_run"] and row["difference"] == -2.0  # 20 - 22
    # a baseline ties with FW (T) everywhere: best mean, top-1 and Adience say tie and name both
    tied = findings(world(gains, fw_t=5.0, serfiq=5.0, fw_c_adience=5.0))
    assert tied.loc["FW (T) best mean pAUC", "verdict"] == "tie"
    assert "EX-FIQA-FW (T), serfiq (tie)" in tied.loc["FW (T) best mean pAUC", "this_run"]
    assert tied.loc["FW (T) top-1 on IJB-C", "verdict"] == "tie"
    assert "arcface: EX-FIQA-FW (T), serfiq (tie); magface: EX-FIQA-FW (T), serfiq (tie)" in tied.loc["FW (T) top-1 on IJB-C", "this_run"]
    assert tied.loc["FW (C) best on Adience", "verdict"] == "tie"
    assert "EX-FIQA-FW (C), EX-FIQA-FW (T), serfiq (tie)" in tied.loc["FW (C) best on Adience", "this_run"]
    assert tied.loc["FW (C) best on Adience", "difference"] == 0.0
    # a clear loser that would have won a lowest-index tie-break still differs
    lost = findings(world(gains, fw_t=5.0, serfiq=4.0))
    assert lost.loc["FW (T) best mean pAUC", "verdict"] == "differs" and lost.loc["FW (T) best mean pAUC", "difference"] == 1.0


def test_tied_best_is_relative_and_ignores_nan():
    v = pd.Series({"a": 2.0, "b": 1.0 + 1e-10, "c": 1.0, "d": float("nan"), "e": 1.0 + 1e-8})
    assert tied_best(v) == ["b", "c"] and best_text(v) == "b, c (tie)"
    assert best_text(v.drop("b")) == "c" and tied_best(pd.Series({"x": float("nan")})) == []
    assert is_tie(0.0, 0.0) and not is_tie(0.0, 1e-300)


def test_paper_findings_count_a_win_only_where_the_paired_interval_excludes_0():
    head = Headline("ijbc", "IJB-C", "arcface", 1e-3)
    tags = {"T": ("T", 12), "C": ("C", 12)}
    frame = _paper_world(True)  # FW (C) - Exit 12 (C): -0.3, -0.3, -4.2, +0.3 on IJB-C, LFW, Adience, CFP
    dss = ("IJB-C", "LFW", "Adience", "CFP")

    def fw_row(cis: list[tuple[float, float]], scale: float = 1.0) -> tuple[pd.Series, pd.DataFrame]:
        paired = _paired(frame, "C", "EX-FIQA-FW", "Exit 12", dict(zip(dss, cis, strict=True)), scale=scale)
        out = paper_findings(frame, tags, head, adience="Adience", paired=paired).set_index("finding")
        return out.loc["FW beats the last exit (C)"], out

    # all four intervals include 0 (the case): main said "agrees" (3 of 4 point wins)
    row, out = fw_row([(-0.5, 0.1), (-0.6, 0.2), (-5.0, 0.4), (-0.1, 0.7)])
    assert row["verdict"] == "not resolved"
    assert row["this_run"].startswith("FW better on 0 of 4 datasets with arcface (95% paired interval below 0), "
                                      "worse on 0, not resolved on 4; lower pAUC (point estimate) on 3 of 4")
    cfp = out.loc["FW beats the last exit (C): CFP"]  # the difference and its interval, one row per dataset
    assert cfp["difference"] == pytest.approx(0.3) and (cfp["ci_low"], cfp["ci_high"]) == (-0.1, 0.7)
    assert cfp["verdict"] == "not resolved" and "[-0.1, 0.7]" in cfp["this_run"]
    # three intervals below 0: agrees; two below, two open: not resolved; one below, one above: not resolved
    assert fw_row([(-0.5, -0.1), (-0.6, -0.2), (-5.0, -3.0), (-0.1, 0.7)])[0]["verdict"] == "agrees"
    assert fw_row([(-0.5, -0.1), (-0.6, -0.2), (-5.0, 0.1), (-0.1, 0.7)])[0]["verdict"] == "not resolved"
    # one win resolved, one loss resolved, two open: 1 + 2 = 3 of 4 could still win
    row, out = fw_row([(-0.5, -0.1), (-0.6, 0.2), (-5.0, 0.1), (0.1, 0.7)])
    assert row["verdict"] == "not resolved" and out.loc["FW beats the last exit (C): CFP", "verdict"] == "differs"
    # at most 2 of 4 possible wins: differs
    assert fw_row([(-0.5, -0.1), (-0.6, 0.2), (-5.0, -3.0), (0.1, 0.7)])[0]["verdict"] == "not resolved"
    assert fw_row([(0.1, 0.5), (-0.6, 0.2), (-5.0, -3.0), (0.1, 0.7)])[0]["verdict"] == "differs"
    # a paired table at another scale, or without its interval columns, is refused
    with pytest.raises(ValueError, match="differ in scale or protocol"):
        fw_row([(-0.5, 0.1)] * 4, scale=1000.0)
    with pytest.raises(ValueError, match=r"lacks the columns \['ci_low'\]"):
        paper_findings(frame, tags, head, paired=_paired(frame, "C", "EX-FIQA-FW", "Exit 12", {"LFW": (0, 1)}).drop(columns="ci_low"))


def test_paper_findings_fw_count_says_tie_when_only_tied_datasets_could_decide():
    head = Headline("ijbc", "IJB-C", "arcface", 1e-3)
    vals = {}
    for ds, fw in (("A", 9.0), ("B", 10.0), ("C", 10.0), ("D", 11.0)):  # last exit 10: one win, two ties, one loss
        vals.update(_exits("C", "arcface", ds, [20.0] * 11 + [10.0], 10, fw))
    frame = _tidy(vals)
    paired = _paired(frame, "C", "EX-FIQA-FW", "Exit 12", {"A": (-2, -0.5), "B": (0, 0), "C": (0, 0), "D": (0.5, 2)})
    head = Headline("a", "A", "arcface", 1e-3)
    out = paper_findings(frame, {"C": ("C", 12)}, head, paired=paired).set_index("finding")
    assert [out.loc[f"FW beats the last exit (C): {d}", "verdict"] for d in "ABCD"] == ["agrees", "tie", "tie", "differs"]
    assert out.loc["FW beats the last exit (C)", "verdict"] == "tie" and "tied on 2" in out.loc["FW beats the last exit (C)", "this_run"]


def test_depth_gains_state_the_size_of_the_change_and_resolve_it():
    head = Headline("ijbc", "IJB-C", "arcface", 1e-3)
    tags = {"C": ("C", 12)}
    shape = [10.0, 9.94, 9.92, 9.91, 9.905, 9.903, 9.902, 9.901, 9.9, 9.9, 9.9, 9.9]  # the shape agrees, the change is 1%
    frame = _tidy({**_exits("C", "arcface", "IJB-C", shape, 9.9, 9.9), **_exits("C", "arcface", "LFW", shape, 9.9, 9.9)})
    row = paper_findings(frame, tags, head).set_index("finding").loc["depth gains (C)"]
    assert row["verdict"] == "not resolved"  # main said "agrees"
    assert "10 -> 9.9 (change -0.1, -1.0%)" in row["this_run"] and row["difference"] == pytest.approx(-0.1)
    assert "at least 5% of exit 1's pAUC" in row["criterion"]
    assert paper_findings(frame, tags, head, min_change=0.005).set_index("finding").loc[
        "depth gains (C)", "verdict"] == "agrees"
    # a 10x larger change: resolved by size; then the paired intervals (last exit - exit 1) decide
    big = [20 - 100 * (10 - v) for v in shape]  # 20 -> 10, same shape
    frame = _tidy({**_exits("C", "arcface", "IJB-C", big, 10, 10), **_exits("C", "arcface", "LFW", big, 10, 10)})
    assert paper_findings(frame, tags, head).set_index("finding").loc["depth gains (C)", "verdict"] == "agrees"
    for cis, verdict in (({"IJB-C": (-12.0, -8.0), "LFW": (-11.0, -9.0)}, "agrees"),
                         ({"IJB-C": (-12.0, -8.0), "LFW": (-15.0, 1.0)}, "not resolved")):
        paired = _paired(frame, "C", "Exit 12", "Exit 1", cis)
        out = paper_findings(frame, tags, head, paired=paired).set_index("finding")
        assert out.loc["depth gains (C)", "verdict"] == verdict, cis
        assert f"excludes 0 on {2 if verdict == 'agrees' else 1} of 2 datasets" in out.loc["depth gains (C)", "this_run"]
        assert out.loc["depth gains (C): LFW", "difference"] == pytest.approx(-10.0)


def test_released_gflops_are_the_papers():
    released = released_gflops()
    claims = released_claims(released)
    assert claims["c7_gflops"] == pytest.approx(6.75, abs=0.005) and claims["c12_gflops"] == pytest.approx(11.49, abs=0.005)
    assert claims["c7_saving"] == pytest.approx(0.41, abs=0.005) and claims["t6_saving"] == pytest.approx(0.50, abs=0.01)
    assert len(released) == 2 * 13 and set(released["exit"]) == {str(k) for k in range(1, 13)} | {"all fused"}


def test_headline_and_fmr_parameters(tmp_path):
    cfg = load_config("configs/demo.yaml")
    head = headline(cfg)
    assert (head.dataset, head.label, head.fr_model, head.fmr) == ("ijbc", "IJB-C-like", "arcface", 0.001)
    assert headline(cfg, 1e-2).fmr == 0.01
    with pytest.raises(ConfigError, match=r"headline FMR 0.005 \(parameter headline_fmr\) is not one of fmr_targets"):
        headline(cfg, 0.005)
    odd = cfg.with_(fmr_targets=[0.02, 0.002])
    with pytest.raises(ConfigError, match=r"headline FMR 0.001 \(headline.fmr of the config\).*set headline.fmr"):
        headline(odd)
    plain = dataclasses.replace(odd, headline={})
    assert headline(plain).fmr == 0.02 and headline(plain).dataset == "lfw"
    assert fmr_target(cfg, None, "cost_fmr") == 1e-4
    with pytest.raises(ConfigError, match="cost_fmr 0.5 is not one of fmr_targets"):
        fmr_target(cfg, 0.5, "cost_fmr")


# ------------------------------------------------------------------------------ tables


def test_save_table_keeps_full_precision_and_states_the_protocol(tmp_path):
    frame = pd.DataFrame({"method": ["a_b", "c"], "pauc": [1 / 3, 6.36], "fmr": [1e-3, 1e-3]})
    proto = tables.protocol("fixed", 0.25, 1e-3, 100.0, seed=7)
    tables.save_table(frame, tmp_path, "t", caption="50% & more", protocol=proto)
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["pauc"].tolist() == [1 / 3, 6.36]  # bit-exact round trip
    assert back[["convention", "limit", "scale", "seed"]].drop_duplicates().values.tolist() == [["fixed", 0.25, 100.0, 7]]
    tex = (tmp_path / "t.tex").read_text()
    assert r"\caption{50\% \& more pAUC-EDC up to discard 0.25, convention 'fixed', FNMR@FMR=0.001, pAUC x100" in tex
    assert "convention &" not in tex and "0.33 " in tex and "a\\_b" in tex  # constant protocol columns left to the caption
    assert tables.latex_unescape(tables.latex_escape("x_1 & 50% {a} ~ ^ \\")) == "x_1 & 50% {a} ~ ^ \\"
    first = (tmp_path / "t.csv").read_bytes()
    tables.save_table(frame, tmp_path, "t", caption="50% & more", protocol=proto)
    assert (tmp_path / "t.csv").read_bytes() == first


# ------------------------------------------------------------------------------ on the tiny world


@pytest.fixture(scope="module")
def odd_study(tiny_config, tmp_path_factory):
    cache = tmp_path_factory.mktemp("odd") / "cache"  # its own arrays: seed 3 keys SER-FIQ's otherwise
    cfg = load_config(tiny_config).with_(convention="fixed", discard_limit=0.25, fmr_targets=[0.02, 0.002], seed=3,
                                         pauc_scale=100.0)
    cfg = dataclasses.replace(cfg, cache_dir=cache)
    extract(cfg, progress=False, log=lambda *_: None)  # the Study reads arrays; extraction runs first
    return Study(cfg, progress=False)


def _direct_pauc(study: Study, dataset: str, fr: str, sample_values: np.ndarray, fmr: float) -> float:
    """pAUC x scale from first principles: embeddings -> cosine, per-sample values -> min pairs."""
    cfg = study.config
    bench = study.benchmark(dataset)
    assert bench.level == "sample"
    a, b = bench.comparisons["a"].to_numpy(), bench.comparisons["b"].to_numpy()
    emb = np.asarray(study.embeddings(dataset, fr), dtype=np.float64)
    sim = np.einsum("ij,ij->i", emb[a], emb[b]) / np.linalg.norm(emb[a], axis=1) / np.linalg.norm(emb[b], axis=1)
    v = np.asarray(sample_values, dtype=np.float32)
    curve = edc(sim, bench.comparisons["mated"].to_numpy(bool), np.minimum(v[a], v[b]), fmr, cfg.convention)
    return pauc(curve, cfg.discard_limit) * cfg.pauc_scale


def test_strategy_table_cells_equal_direct_pauc(odd_study):
    study = odd_study
    result = strategy_table(study, "arcface", 0.002, learn_on="lfw", n_candidates=5)
    tidy = result.tidy.set_index(["quality_model", "dataset", "strategy"])["pauc"]
    scores = np.asarray(study.exit_scores("lfw", "T"), dtype=np.float64)
    label = study.config.datasets["lfw"].label
    for name, values in (("Exit 12", scores[:, -1]), ("EX-FIQA-FW", scores @ depth_weights(12)),
                         ("learned", scores @ result.learned["T"])):
        assert tidy[("T", label, name)] == pytest.approx(_direct_pauc(study, "lfw", "arcface", values, 0.002), rel=1e-6, abs=1e-9)
    wide = result.wide.set_index(["quality_model", "strategy"])
    datasets = [s.label for s in study.config.datasets.values()]
    assert wide.loc[("C", "EX-FIQA-F"), "mean"] == pytest.approx(np.mean([tidy[("C", d, "EX-FIQA-F")] for d in datasets]))
    assert result.tidy["fitted_here"].sum() == 2  # learned on lfw, once per quality model
    assert result.learned["T"].sum() == pytest.approx(1.0) and (result.learned["T"] >= 0).all()


def test_adaptive_study_matches_its_parts(odd_study):
    study = odd_study
    out = adaptive_study(study, "arcface", 0.02, reject_fraction=0.3, margin=0.4, min_exit=2)
    row = out[(out["quality_model"] == "C") & (out["dataset"] == study.config.datasets["lfw"].label)].iloc[0]
    scores = np.asarray(study.exit_scores("lfw", "C"), dtype=np.float64)
    full = scores @ depth_weights(12)
    thr = np.quantile(full, 0.3)
    model = Models(study.config).quality_model("C")
    res = adaptive_exit(scores, thr, 0.4 * full.std(), 2, adaptive_cost_curve(model.config, 12))
    assert row["mean_exit"] == pytest.approx(res.exit_used.mean())
    assert row["gate_agreement"] == pytest.approx(np.mean((res.score > thr) == (full > thr)))
    # the trivial gates: accepting every image agrees wherever the full gate accepts (about 70% here)
    assert row["agreement_accept_all"] == pytest.approx(np.mean(full > thr)) == pytest.approx(0.7, abs=0.02)
    assert row["agreement_reject_all"] == pytest.approx(np.mean(full <= thr))
    assert row["beats_trivial_gates"] == (row["gate_agreement"] > max(np.mean(full > thr), np.mean(full <= thr)))
    assert row["pauc_adaptive"] == pytest.approx(_direct_pauc(study, "lfw", "arcface", res.score, 0.02), rel=1e-6, abs=1e-9)
    assert row["pauc_fw_all_exits"] == pytest.approx(_direct_pauc(study, "lfw", "arcface", full, 0.02), rel=1e-6, abs=1e-9)
    with pytest.raises(ConfigError, match="reject_fraction"):
        adaptive_study(study, "arcface", 0.02, reject_fraction=1.0, margin=0.4, min_exit=2)


def test_fusion_bootstrap_is_scaled_and_states_seed(odd_study):
    study = Study(odd_study.config.select(datasets=["lfw"]), progress=False)
    boot = fusion_bootstrap(study, "arcface", 0.002, n_boot=20)
    assert set(boot["scale"]) == {100.0} and set(boot["seed"]) == {3} and set(boot["convention"]) == {"fixed"}
    row = boot[(boot["quality_model"] == "T") & (boot["method"] == "EX-FIQA-FW")].iloc[0]
    scores = np.asarray(study.exit_scores("lfw", "T"), dtype=np.float64)
    direct = _direct_pauc(study, "lfw", "arcface", scores @ depth_weights(12), 0.002) - _direct_pauc(
        study, "lfw", "arcface", scores[:, -1], 0.002)
    assert row["delta_pauc"] == pytest.approx(direct, rel=1e-6, abs=1e-9)
    assert row["ci_low"] <= row["ci_high"]


def test_attention_inputs_follow_the_config(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    study = Study(cfg, progress=False)
    demo = attention_inputs(study, mean_images=5)
    assert list(demo.faces) == ["child", "frontal", "occlusion", "pose"]
    np.testing.assert_array_equal(demo.faces["pose"], read_face(cfg.data_root / "samples" / "pose.png"))
    ds0 = next(iter(cfg.datasets))  # the mean is over the run's first dataset
    assert demo.mean_dataset == cfg.datasets[ds0].label
    n = len(study.benchmark(ds0))
    expect = np.sort(np.random.default_rng(cfg.seed).choice(n, size=5, replace=False))
    np.testing.assert_array_equal(demo.mean_ids, expect)
    np.testing.assert_array_equal(demo.mean_faces[2], study.benchmark(ds0).image(int(expect[2])))
    assert len(attention_inputs(study, mean_images=10_000).mean_ids) == n  # bounded by the dataset
    # configured: a path and a dataset sample
    chosen = parse_attention_samples({"child": "samples/frontal.png", "pose": {"dataset": "adience", "sample": 3}}, cfg)
    mine = Study(dataclasses.replace(cfg, attention_samples=chosen), progress=False)
    got = attention_inputs(mine, mean_images=2)
    assert list(got.faces) == ["child", "pose"]
    np.testing.assert_array_equal(got.faces["child"], read_face(cfg.data_root / "samples" / "frontal.png"))
    np.testing.assert_array_equal(got.faces["pose"], study.benchmark("adience").image(3))
    # real data (no demo): the first sample of each of the first datasets, labelled so
    real = Study(dataclasses.replace(cfg, demo=""), progress=False)
    got = attention_inputs(real, mean_images=2)
    labels = [s.label for s in cfg.datasets.values()][:4]
    assert list(got.faces) == [f"{lab} #0" for lab in labels] and "not set" in got.note
    np.testing.assert_array_equal(got.faces[f"{labels[1]} #0"], study.benchmark(list(cfg.datasets)[1]).image(0))
    far = parse_attention_samples({"pose": {"dataset": "adience", "sample": 10**6}}, cfg)
    with pytest.raises(ConfigError, match=r"attention_samples.pose: sample 1000000 is out of range for adience"):
        attention_inputs(Study(dataclasses.replace(cfg, attention_samples=far), progress=False))
    with pytest.raises(ConfigError, match="mean_images"):
        attention_inputs(study, mean_images=0)


def test_attention_samples_config_key(tiny_config, tmp_path):
    raw = yaml.safe_load(tiny_config.read_text())
    raw["attention_samples"] = {"child": "samples/child.png", "pose": {"dataset": "lfw", "sample": 1}}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert cfg.attention_samples["child"].path == cfg.data_root / "samples" / "child.png"
    assert cfg.attention_samples["pose"].dataset.name == "lfw" and cfg.attention_samples["pose"].sample == 1
    assert cfg.select(datasets=["adience"]).attention_samples["pose"].dataset.name == "lfw"  # kept when narrowed
    for bad, message in (({"kid": "x.png"}, r"attention_samples: unknown key\(s\) \['kid'\]"),
                         ({"pose": {"dataset": "nope", "sample": 1}}, r"attention_samples.pose.dataset 'nope' is not one of"),
                         ({"pose": {"dataset": "lfw", "sample": -1}}, r"attention_samples.pose.sample must be an integer >= 0"),
                         ({"pose": 3}, r"attention_samples.pose must be an image path or a mapping")):
        raw["attention_samples"] = bad
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    raw["attention_samples"] = {"child": "samples/none.png"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"attention_samples.child: .*none.png does not exist"):
        load_config(path).check_paths()


def test_paper_findings_take_the_studys_paired_tables(odd_study):
    # notebook 03's path: pauc_all and the two bootstrap tables at one scale, one row per compared dataset
    study = Study(odd_study.config.select(datasets=["lfw"]), progress=False)
    cfg = study.config
    tags = variant_tags(study)
    head = Headline("lfw", cfg.datasets["lfw"].label, "arcface", 0.002)
    pauc = pauc_all(study, scale=cfg.pauc_scale)
    depth = depth_bootstrap(study, "arcface", 0.002, n_boot=20)
    assert set(depth["method"]) == {"Exit 12"} and set(depth["reference"]) == {"Exit 1"}
    paired = pd.concat([fusion_bootstrap(study, "arcface", 0.002, n_boot=20), depth])
    flagged = paper_findings(pauc, tags, head, paired=paired)  # the tiny LFW cannot resolve FMR 0.002
    assert not pauc.loc[np.isclose(pauc["fmr"], 0.002) & (pauc["dataset"] == cfg.datasets["lfw"].label), "resolved"].all()
    assert set(flagged["verdict"]) == {"not computable in this run"}
    pauc = pauc.drop(columns="resolved")  # the paired-table mechanics, as if it were resolvable
    out = paper_findings(pauc, tags, head, paired=paired).set_index("finding")
    label = cfg.datasets["lfw"].label
    for finding, a, b in ((f"FW beats the last exit (C): {label}", "EX-FIQA-FW", "Exit 12"),
                          (f"depth gains (T): {label}", "Exit 12", "Exit 1")):
        row = out.loc[finding]
        q = "C" if "(C)" in finding else "T"
        p = pauc[(pauc["quality_model"] == q) & (pauc["fr_model"] == "arcface") & np.isclose(pauc["fmr"], 0.002)].set_index("method")["pauc"]
        assert row["difference"] == pytest.approx(p[a] - p[b]) and row["ci_low"] <= row["ci_high"]
        expect = ("tie" if p[a] == pytest.approx(p[b], rel=1e-9, abs=0) else "agrees" if row["ci_high"] < 0
                  else "differs" if row["ci_low"] > 0 else "not resolved")
        assert row["verdict"] == expect, (finding, p[a], p[b])
    assert set(out["verdict"]) <= set(VERDICTS)
    with pytest.raises(ValueError, match="differ in scale or protocol"):  # an unscaled bootstrap table is refused
        paper_findings(pauc, tags, head, paired=paired.assign(delta_pauc=paired["delta_pauc"] / cfg.pauc_scale))


def test_findings_and_wins_leave_out_unresolvable_fmr_cells():
    """A dataset whose pAUC at the headline FMR is unresolvable (fewer than one expected false
    match) counts in no finding: the FW count and the best-mean ranking drop it, a row names it."""
    vals = {}
    for ds, fw in (("IJB", 5.0), ("A", 5.0), ("LFW", 1.0)):
        vals.update(_exits("C", "arc", ds, [9.0] * 8 + [7.0, 7.5, 8.0, 8.5], 6.0, fw))
        vals.update(_exits("T", "arc", ds, [9.0] * 12, 9.0, 9.0))
    frame = _tidy(vals)
    frame["resolved"] = frame["dataset"] != "LFW"
    wins = fusion_wins(frame[frame["quality_model"] == "C"], "EX-FIQA-FW", "Exit 12").iloc[0]
    assert (wins["wins"], wins["n"], wins["unresolved"]) == (2, 2, 1) and "1 more left out" in wins["summary"]
    head = Headline("ijb", "IJB", "arc", 1e-3)
    tags = {"T": ("T", 12), "C": ("C", 12)}
    f = paper_findings(frame, tags, head).set_index("finding")
    assert f.loc["left out: unresolvable FMR target", "this_run"] == "LFW with arc"
    assert f.loc["left out: unresolvable FMR target", "verdict"] == "not computable in this run"
    everything = paper_findings(frame.drop(columns="resolved"), tags, head).set_index("finding")
    assert "left out: unresolvable FMR target" not in everything.index
    # the unresolved LFW cell (FW 1.0, far the lowest) would otherwise move the best mean of FW (C)
    assert "(3.667)" not in f.loc["FW (T) best mean pAUC", "this_run"]
    frame.loc[frame["dataset"] == "IJB", "resolved"] = False
    f = paper_findings(frame, tags, head).set_index("finding")
    assert f.loc["FW beats the last exit (C)", "verdict"] == "not computable in this run"
