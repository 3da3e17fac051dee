"""Issue 19, point 3: attention panels without contrast are flagged (and a shared colour scale is
offered), every latency row is timed the same way, and figures mark unresolved FMR targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.text import Text

from exfiqa.models.vitfiqa import build_vitfiqa
from exfiqa.report import plots
from exfiqa.report.attention import attention_contrast, attention_statistics
from exfiqa.report.early_exit import _timed, measure_latency


def _near_uniform(g: int, eps: float, seed: int = 0) -> np.ndarray:
    p = 1.0 + eps * np.random.default_rng(seed).standard_normal((g, g))
    return p / p.sum()


def test_attention_contrast_flags_practically_uniform_maps():
    g = 7  # 49 patches: the uniform map's entropy is log(49) = 3.892, as in the issue
    uniform = np.full((g, g), 1 / g**2)
    point = np.zeros((g, g))
    point[3, 3] = 1.0
    near = _near_uniform(g, 0.1)  # entropy ~3.887 of 3.892: practically uniform
    peaked = np.exp(-((np.arange(g)[:, None] - 3) ** 2 + (np.arange(g)[None, :] - 3) ** 2) / 2.0)
    peaked /= peaked.sum()
    maps = np.stack([uniform, point, near, peaked])[None]  # (1 image, 4 exits, g, g)
    stats = attention_statistics(maps)
    ent_near = -(near * np.log(near)).sum()
    assert 3.88 < ent_near < np.log(49)
    assert stats["normalised_entropy"].tolist() == pytest.approx([1.0, 0.0, ent_near / np.log(49), stats["entropy_mean"][3] / np.log(49)])
    assert stats["low_contrast"].tolist() == [True, False, True, False]
    assert stats["max_min_ratio"][0] == pytest.approx(1.0) and stats["max_min_ratio"][2] == pytest.approx(near.max() / near.min())
    assert attention_contrast(maps)[0].tolist() == pytest.approx(stats["normalised_entropy"].tolist())


def _panel_arrays(fig) -> list[tuple[np.ndarray, float, float, list[str]]]:
    out = []
    for ax in fig.axes[2:]:  # skip the face row (2 columns)
        ims = ax.get_images()
        if ims:
            a = np.asarray(ims[0].get_array())
            out.append((a, *ims[0].get_clim(), [t.get_text() for t in ax.texts]))
    return out


def test_attention_figure_shared_scale_and_flat_panels():
    g, depth = 7, 2
    peaked = np.zeros((g, g))
    peaked[2:5, 2:5] = 1.0
    peaked /= peaked.sum()
    maps = {"a": np.stack([peaked, _near_uniform(g, 0.05)]), "b": np.stack([peaked, _near_uniform(g, 0.05, 1)])}
    faces = {"a": np.zeros((112, 112, 3), np.uint8), "b": None}
    shared = _panel_arrays(plots.attention_figure(maps, faces, layout="exits-as-rows"))
    assert len(shared) == 2 * depth
    vmax = peaked.max() * g * g  # one scale for all panels, in multiples of the uniform weight
    assert all(lo == 0 and hi == pytest.approx(vmax) for _, lo, hi, _ in shared)
    near_panel = shared[2]  # row 2 (exit 2), column a
    assert np.ptp(near_panel[0]) < 0.5 and near_panel[3] == ["flat"]  # a flat map looks flat, and is labelled
    assert shared[0][3] == []  # the peaked map is not
    per_panel = _panel_arrays(plots.attention_figure(maps, faces, scale="per-panel", layout="exits-as-rows"))
    assert per_panel[2][0].max() == pytest.approx(1.0) and per_panel[2][0].min() == pytest.approx(0.0)  # noise stretched
    assert per_panel[2][3] == ["flat"]
    with pytest.raises(ValueError, match="parameter scale"):
        plots.attention_figure(maps, faces, scale="auto")


def test_every_latency_row_is_timed_the_same_way(monkeypatch):
    model = build_vitfiqa(img_size=18, patch_size=9, embed_dim=16, depth=3, num_heads=2, feature_dim=8)
    calls = {"all": 0}
    original = model.forward_exits

    def counting(x, exits=None, *a, **k):
        if exits is None:
            calls["all"] += 1
        return original(x, exits, *a, **k)

    monkeypatch.setattr(model, "forward_exits", counting)
    lat = measure_latency(model, batch_size=2, repeats=4)
    assert calls["all"] == 1 + 4  # the one-pass row: a warm-up and 4 timed runs, as every exit row
    assert list(lat["exit"]) == [1, 2, 3, "all (one pass)"]
    assert (lat["repeats"] == 4).all()
    for r in lat.itertuples():
        assert 0 < r.ms_min <= r.ms_q25 <= r.ms_per_image <= r.ms_q75 <= r.ms_max
    with pytest.raises(ValueError, match="parameter repeats"):
        measure_latency(model, repeats=0)


def test_timings_synchronise_the_device(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    times = _timed(lambda: events.append("run"), 3, cuda=True)
    assert len(times) == 3 and events == ["sync", "run", "sync"] * 3
    events.clear()
    _timed(lambda: events.append("run"), 2, cuda=False)
    assert events == ["run", "run"]


def test_edc_grid_and_cost_figure_mark_unresolved_points():
    rows = []
    for fmr, ok in ((1e-2, True), (1e-3, False)):
        for f in (0.0, 0.05, 0.1):
            rows.append({"method": "Exit 1", "dataset": "LFW-like", "fmr": fmr, "convention": "recompute",
                         "discard_fraction": f, "fnmr": 0.2 - f, "resolved": ok})
    fig = plots.edc_grid(pd.DataFrame(rows))
    hollow = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_markerfacecolor() == "none"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [0.0, 0.05, 0.1]
    assert [t.get_text() for t in fig.axes[1].texts] == ["\u2020"] and len(fig.axes[0].texts) == 0
    assert any("not resolved" in t.get_text() for t in fig.findobj(Text))  # explained under the legend
    frame = pd.DataFrame({"dataset": "LFW-like", "gflops": [1.0, 2.0], "pauc": [3.0, 2.0], "resolved": [True, False]})
    fw = pd.DataFrame({"dataset": ["LFW-like"], "gflops": [2.5], "pauc": [1.5], "resolved": [False]})
    fig = plots.pauc_vs_gflops(frame, fw)
    assert "hollow: FMR not resolved" in fig.axes[0].get_legend_handles_labels()[1]
