"""Issue 22, figures: every figure function gives a figure one IEEE column (3.5 in) or two
(7.16 in) wide with no text under 7 pt, one colour per meaning (exits dark enough on white, F red,
FW green, datasets never red or green), the pAUC-vs-GFLOPs figure's exit numbers and call-out,
labels from the config, one FMR notation, titles that can be turned off."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from exfiqa.report import plots

DATASETS = ["LFW-like", "IJB-C-like", "Adience-like"]


def _edc() -> pd.DataFrame:
    rows = []
    for m in [f"Exit {k}" for k in range(1, 13)] + ["EX-FIQA-F", "EX-FIQA-FW"]:
        for ds in DATASETS:
            for fmr in (1e-2, 1e-3, 1e-4):
                for f in np.linspace(0, 0.9, 10):
                    rows.append({"method": m, "dataset": ds, "fmr": fmr, "discard_fraction": f, "fnmr": 0.2 * (1 - f),
                                 "resolved": fmr > 1e-4})
    return pd.DataFrame(rows)


def _cost() -> tuple[pd.DataFrame, pd.DataFrame]:
    gflops = np.linspace(1.0, 11.49, 12)
    gflops[6] = 6.75  # exit 7 of the released (C): 6.75 of 11.49 GFLOPs, 41% saved
    exits = pd.DataFrame([{"dataset": ds, "exit": k + 1, "gflops": gflops[k], "pauc": 100 + 10 * i - k, "resolved": True}
                          for i, ds in enumerate(DATASETS) for k in range(12)])
    fw = pd.DataFrame({"dataset": DATASETS, "gflops": 11.6, "pauc": [95.0, 105.0, 115.0], "resolved": True})
    return exits, fw


def _boot() -> pd.DataFrame:
    return pd.DataFrame([{"quality_model": q, "method": m, "dataset": ds, "fr_model": "arcface", "fmr": 1e-3,
                          "delta_pauc": -1.0, "ci_low": -2.0, "ci_high": 0.5, "scale": 1000.0}
                         for q in ("T", "C") for m in ("EX-FIQA-F", "EX-FIQA-FW") for ds in DATASETS])


def _attention() -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    maps = {n: rng.dirichlet(np.ones(49), size=12).reshape(12, 7, 7) for n in ("child", "frontal", "occlusion", "pose", "LFW-like (mean)")}
    faces = {n: np.zeros((112, 112, 3), np.uint8) for n in ("child", "frontal", "occlusion", "pose")} | {"LFW-like (mean)": None}
    return maps, faces


def _stats() -> pd.DataFrame:
    return pd.DataFrame([{"quality_model": q, "exit": k, "entropy_mean": 3.5, "entropy_std": 0.1, "spread_mean": 2.0,
                          "spread_std": 0.1, "max_entropy": np.log(49)} for q in ("T", "C") for k in range(1, 13)])


def _figures() -> dict[str, mpl.figure.Figure]:
    exits, fw = _cost()
    maps, faces = _attention()
    corr = pd.DataFrame(np.eye(13), index=[f"Exit {k}" for k in range(1, 13)] + ["EX-FIQA-FW"],
                        columns=[f"Exit {k}" for k in range(1, 13)] + ["EX-FIQA-FW"])
    scores = pd.DataFrame({"exit": np.repeat(np.arange(1, 13), 20), "score": np.random.default_rng(0).random(240)})
    return {
        "edc_grid": plots.edc_grid(_edc(), limit=0.3),
        "pauc_vs_gflops": plots.pauc_vs_gflops(exits, fw, title="t", scale=1000.0, quality_label="(C)"),
        "attention": plots.attention_figure(maps, faces),
        "attention_rows": plots.attention_figure(maps, faces, layout="exits-as-rows"),
        "forest": plots.forest(_boot(), labels={"arcface": "ArcFace", "T": "ViT-FIQA (T)", "C": "ViT-FIQA (C)"}),
        "rank_heatmap": plots.rank_heatmap(corr, title="t"),
        "score_distributions": plots.score_distributions(scores, title="t"),
        "attention_entropy_spread": plots.attention_entropy_spread(_stats()),
    }


def _texts(fig) -> list[Text]:
    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]


def test_every_figure_is_a_column_or_the_text_wide_with_text_of_at_least_7pt():
    for name, fig in _figures().items():
        width, height = fig.get_size_inches()
        assert round(width, 2) in (plots.COLUMN_IN, plots.TEXT_IN), (name, width)
        assert height <= 9.0, (name, height)  # fits a page with its caption
        small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < plots.MIN_FONT_PT]
        assert not small, (name, small)
        plt.close(fig)


def test_saved_figures_keep_their_size(tmp_path):
    fig = plots.pauc_vs_gflops(*_cost())
    pdf, png = plots.save_figure(fig, tmp_path, "x")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] == round(plots.COLUMN_IN * mpl.rcParams["savefig.dpi"])
    box = [float(v) for v in pdf.read_bytes().split(b"/MediaBox [")[1].split(b"]")[0].split()]
    assert box[2] == pytest.approx(plots.COLUMN_IN * 72, abs=0.5)


def contrast_on_white(colour: object) -> float:
    """WCAG contrast ratio of ``colour`` against white (1 .. 21; 3 is the minimum for graphics)."""
    def lin(x: float) -> float:
        return x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4

    r, g, b = mpl.colors.to_rgb(colour)
    lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    return 1.05 / (lum + 0.05)


def test_palette_one_meaning_per_colour():
    for k in range(1, 13):  # no pale exit: every exit at least 3:1 against white, and early lighter than deep
        assert contrast_on_white(plots.exit_colour(k)) >= 3.0, k
    assert contrast_on_white(plots.exit_colour(1)) < contrast_on_white(plots.exit_colour(12))
    r, g, b = mpl.colors.to_rgb(plots.FUSION_COLOURS["EX-FIQA-F"])
    assert r > 0.7 and g < 0.3 and b < 0.3  # F red
    r, g, b = mpl.colors.to_rgb(plots.FUSION_COLOURS["EX-FIQA-FW"])
    assert g > 0.55 and r < 0.3 and b < 0.3  # FW green
    for c in plots.DATASET_COLOURS:  # datasets: no red, no green, no blue of the exit ramp; dark enough
        h, s, _ = mpl.colors.rgb_to_hsv(mpl.colors.to_rgb(c))
        assert contrast_on_white(c) >= 3.0, c
        assert not ((h < 0.03 or h > 0.97) and s > 0.6) and not 0.2 < h < 0.45 and not 0.5 < h < 0.7, (c, h, s)
    styles = plots.dataset_styles([f"d{k}" for k in range(8)])
    assert len(set(styles.values())) == 8  # 8 datasets (the paper's), 8 distinct colour/marker pairs
    edc = plots.edc_grid(_edc())
    colours = {ln.get_label(): mpl.colors.to_hex(ln.get_color()) for ln in edc.axes[0].get_lines()}
    assert colours["EX-FIQA-F"] == "#d62728" and colours["EX-FIQA-FW"] == "#2ca02c"
    dashed = {ln.get_label(): (ln.get_linestyle(), ln.get_marker()) for ln in edc.axes[0].get_lines()}
    assert all(dashed[f"Exit {k}"][0] == "--" and dashed[f"Exit {k}"][1] not in ("None", "", None) for k in range(1, 13))
    plt.close("all")


def test_edc_grid_marks_the_pauc_limit_and_titles_do_not_collide():
    fig = plots.edc_grid(_edc(), limit=0.3)
    vlines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "pAUC limit"]
    assert len(vlines) == 1 and list(vlines[0].get_xdata()) == [0.3, 0.3]
    assert [ax.get_title() for ax in fig.axes[:3]] == [plots.fmr_text(f) for f in (1e-2, 1e-3, 1e-4)]
    plots.add_title(fig, "EX-FIQA (C)")
    fig.canvas.draw()
    sup = fig._suptitle.get_window_extent()
    for ax in fig.axes[:3]:  # the main title sits above the column titles
        assert sup.y0 >= ax.title.get_window_extent().y1 - 0.5
    plt.close(fig)


def test_pauc_vs_gflops_has_exit_numbers_and_the_call_out_from_the_data():
    exits, fw = _cost()
    fig = plots.pauc_vs_gflops(exits, fw, scale=1000.0, quality_label="(C)")
    texts = [t.get_text() for t in _texts(fig)]
    assert {str(k) for k in range(1, 13)} <= set(texts)  # exit numbers over the points
    assert "Exit 7 (C): 41% FLOP reduction\n(6.75 vs 11.5 GFLOPs)" in texts  # 1 - 6.75 / 11.49 = 0.413
    assert fig.axes[0].get_ylabel().startswith("pAUC-EDC ($\\times$$10^{3}$)")
    legend = fig.legends[0]  # the legend is under the axes, not on the data
    fig.canvas.draw()
    assert legend.get_window_extent().y1 <= fig.axes[0].get_window_extent().y0
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:3] == sorted(DATASETS) and "EX-FIQA-FW" in labels
    other = exits.assign(gflops=exits["gflops"] * 2)  # another cost: another number, no hard-coded 41%
    other.loc[other["exit"] == 7, "gflops"] = 0.5 * other["gflops"].max()
    texts = [t.get_text() for t in _texts(plots.pauc_vs_gflops(other, None, callout_exit=7))]
    assert any(t.startswith("Exit 7: 50% FLOP reduction") for t in texts)
    assert not any("FLOP reduction" in t for t in _texts_of(plots.pauc_vs_gflops(exits, None, callout_exit=None)))
    plt.close("all")


def _texts_of(fig) -> list[str]:
    return [t.get_text() for t in _texts(fig)]


def test_one_fmr_notation_labels_from_the_config_and_optional_titles(tiny_config):
    from exfiqa.config import load_config

    assert plots.fmr_text(1e-3) == "FMR = $10^{-3}$" and plots.fmr_text(0.01) == "FMR = $10^{-2}$"
    assert plots.fmr_text(0.002) == "FMR = 0.002"
    labels = plots.config_labels(load_config(tiny_config))
    assert labels["arcface"] == "ArcFace" and labels["T"] == "ViT-FIQA (T)" and labels["lfw"] == "LFW-like"
    fig = plots.forest(_boot(), labels=labels)
    assert [ax.get_title() for ax in fig.axes] == ["ViT-FIQA (T)", "ViT-FIQA (C)"]  # (T) and (C) never in one panel
    assert fig._supxlabel.get_text().endswith(", ArcFace, FMR = $10^{-3}$   (< 0: method better; 95% interval)")
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows[0] == "EX-FIQA-F | LFW-like" and not any("(T)" in r or "(C)" in r for r in rows)
    try:
        plots.set_style(titles=False)
        fig = plots.pauc_vs_gflops(*_cost(), title="a title")
        plots.add_title(fig, "a main title")
        assert "a title" not in _texts_of(fig) and "a main title" not in _texts_of(fig)
    finally:
        plots.set_style(titles=True)
    fig = plots.pauc_vs_gflops(*_cost(), title="a title")
    assert "a title" in _texts_of(fig)
    plt.close("all")


def test_attention_figure_is_no_taller_than_a_page():
    maps, faces = _attention()
    fig = plots.attention_figure(maps, faces)  # exits as columns: 5 rows of 13 panels
    assert tuple(np.round(fig.get_size_inches(), 2))[0] == plots.TEXT_IN and fig.get_size_inches()[1] < 4.0
    assert [ax.get_title() for ax in fig.axes[1:13]] == [f"Exit {k}" for k in range(1, 13)]
    with pytest.raises(ValueError, match="parameter layout"):
        plots.attention_figure(maps, faces, layout="grid")
    plt.close("all")


def test_pdfs_are_byte_identical_across_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        plots.save_figure(plots.edc_grid(_edc(), limit=0.3), d, "edc")
    assert (a / "edc.pdf").read_bytes() == (b / "edc.pdf").read_bytes()
    assert b"CreationDate" not in (a / "edc.pdf").read_bytes()
