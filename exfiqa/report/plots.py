"""One figure style for every notebook; figures one or two IEEE columns wide, saved as PDF + PNG,
byte-identical across runs, with no text under :data:`MIN_FONT_PT`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from exfiqa.evaluation.exits import exit_label, exit_numbers
from exfiqa.io import atomic_path
from exfiqa.report.attention import LOW_CONTRAST_ENTROPY
from exfiqa.report.tables import power_of_ten

__all__ = [
    "add_title", "COLUMN_IN", "DATASET_COLOURS", "FUSION_COLOURS", "MIN_FONT_PT", "TEXT_IN",
    "attention_entropy_spread", "attention_figure", "config_labels", "dataset_styles",
    "edc_grid", "exit_colour", "fmr_text", "forest", "method_colours", "pauc_vs_gflops", "rank_heatmap",
    "save_figure", "score_distributions", "set_style",
]

#: Figure widths in inches: one IEEE column, and the text width of a two-column page.
COLUMN_IN, TEXT_IN = 3.5, 7.16
#: The smallest font size (pt) of any text in a figure, at its saved size.
MIN_FONT_PT = 7.0
FUSION_COLOURS = {"EX-FIQA-F": "#d62728", "EX-FIQA-FW": "#2ca02c"}
#: Datasets (one line each), in the config's order; after the last, colours repeat with other markers.
DATASET_COLOURS = ("#e66101", "#7b3294", "#8c564b", "#c51b7d", "#a6761d")
DATASET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
#: The quality models (T, C, ...) where they are the lines: grey tones, told apart by line and marker.
QUALITY_STYLES = (("#1a1a1a", "-", "o"), ("#6e6e6e", "--", "s"), ("#9a9a9a", ":", "^"))
#: The exit ramp: this slice of matplotlib's ``Blues`` (exit 1 = the light end, still >= 3:1 on white).
EXIT_RAMP = ("Blues", 0.6, 1.0)
#: Whether figures draw their titles (:func:`set_style`).
_STYLE = {"titles": True}


def set_style(titles: bool | None = None) -> None:
    """The figures' fixed fonts and sizes (called by every plotting function); ``titles``, when
    given, turns the figures' titles on or off from now on (off for paper export)."""
    if titles is not None:
        _STYLE["titles"] = bool(titles)
    sns.set_theme(context="paper", style="whitegrid", font="DejaVu Sans")
    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 200, "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
        "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7,
        "figure.titlesize": 8, "figure.labelsize": 8, "mathtext.default": "regular", "lines.markersize": 3,
        "axes.linewidth": 0.6, "grid.linewidth": 0.5,
        # fonts embedded as TrueType (Type 42), not Type 3: IEEE's PDF check refuses Type 3
        "pdf.fonttype": 42, "ps.fonttype": 42,
    })


def add_title(fig_or_ax: Figure | mpl.axes.Axes, text: str) -> None:
    """``text`` as the figure's (or axes') title, if titles are on (:func:`set_style`)."""
    if _STYLE["titles"] and text:
        (fig_or_ax.suptitle if isinstance(fig_or_ax, Figure) else fig_or_ax.set_title)(text)


def fmr_text(fmr: float) -> str:
    """``FMR = 10^-3`` (mathtext) for a power of ten, else ``FMR = 0.002``."""
    return f"FMR = {power_of_ten(fmr)}"


def config_labels(cfg: object) -> dict[str, str]:
    """Key -> label of every dataset, FR model and quality model of a config (``arcface`` -> ``ArcFace``)."""
    return {str(key): str(getattr(spec, "label", None) or key)
            for group in ("datasets", "fr_models", "quality_models") for key, spec in getattr(cfg, group, {}).items()}


def exit_colour(exit: int, depth: int = 12) -> tuple[float, float, float]:
    """Colour of exit ``exit`` (1-based) on the exit ramp (:data:`EXIT_RAMP`: light = early, dark = deep)."""
    name, lo, hi = EXIT_RAMP
    t = lo + (hi - lo) * ((exit - 1) / (depth - 1) if depth > 1 else 1.0)
    return tuple(mpl.colormaps[name](t)[:3])  # type: ignore[return-value]


def method_colours(methods: Sequence[str], depth: int = 12) -> dict[str, object]:
    """Colour per method name: exits ``1..depth`` -> exit ramp, fusions fixed, others grey tones."""
    number = exit_numbers(depth)
    others = [m for m in methods if m not in FUSION_COLOURS and m not in number]
    greys = iter(sns.color_palette("Greys_d", max(1, len(others))))
    return {m: FUSION_COLOURS[m] if m in FUSION_COLOURS else exit_colour(number[m], depth) if m in number else next(greys)
            for m in methods}


def dataset_styles(datasets: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per dataset in the given order: :data:`DATASET_COLOURS`, then the same
    colours with other markers (every dataset a distinct pair)."""
    return {d: (DATASET_COLOURS[i % len(DATASET_COLOURS)], DATASET_MARKERS[i % len(DATASET_MARKERS)])
            for i, d in enumerate(datasets)}


def _label(labels: Mapping[str, str] | None, key: object) -> str:
    return (labels or {}).get(str(key), str(key))


def save_figure(fig: Figure, out_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``name.pdf`` and ``name.png`` atomically at the figure's size (no tight bounding box, no
    creation date: the same figure gives the same bytes); returns the paths. Closes the figure."""
    out = Path(out_dir)
    paths = []
    for ext, meta in (("pdf", {"CreationDate": None, "Creator": "exfiqa"}), ("png", {"Software": "exfiqa"})):
        target = out / f"{name}.{ext}"
        with atomic_path(target, overwrite=True) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        paths.append(target)
    plt.close(fig)
    return paths


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **kw) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, layout="constrained", **kw)
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, hspace=0.03, wspace=0.03)
    return fig, axes


def edc_grid(
    edc: pd.DataFrame,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    fmr_targets: Sequence[float] | None = None,
    discard_max: float = 0.95,
    depth: int = 12,
    limit: float | None = None,
) -> Figure:
    """The poster's EDC grid (rows: datasets, columns: FMR targets) of tidy ``edc`` (``method, dataset,
    fmr, discard_fraction, fnmr``, optional ``resolved``); ``limit``: a dotted vertical line."""
    set_style()
    datasets = list(datasets or edc["dataset"].unique())
    fmr_targets = list(fmr_targets or sorted(edc["fmr"].unique(), reverse=True))
    methods = list(methods or edc["method"].unique())
    colours = method_colours(methods, depth)
    exits = exit_numbers(depth)
    unresolved_panels: set[tuple[int, int]] = set()
    fig, axes = _figure(TEXT_IN, 1.25 * len(datasets) + 1.25, len(datasets), len(fmr_targets), sharex=True)
    for i, ds in enumerate(datasets):
        for j, fmr in enumerate(fmr_targets):
            ax = axes[i, j]
            part = edc[(edc["dataset"] == ds) & np.isclose(edc["fmr"], fmr)]
            for m in methods:
                cur = part[part["method"] == m].sort_values("discard_fraction")
                cur = cur[cur["discard_fraction"] <= discard_max]
                if cur.empty:
                    continue
                fused = m in FUSION_COLOURS
                ax.plot(
                    cur["discard_fraction"], cur["fnmr"], color=colours[m], lw=1.4 if fused else 0.7,
                    ls="--" if m in exits else "-", marker="o" if fused else ".", ms=2.5 if fused else 2.0,
                    label=m, zorder=3 if fused else 2,
                    drawstyle="steps-post" if "fixed" in set(cur.get("convention", [])) else "default",
                )
                if "resolved" in cur.columns:
                    bad = cur[~cur["resolved"].astype(bool)]
                    if len(bad):
                        unresolved_panels.add((i, j))
                        ax.plot(bad["discard_fraction"], bad["fnmr"], ls="none", marker="o", ms=3.5, mfc="none",
                                mec=colours[m], mew=0.7)
            if limit is not None:
                ax.axvline(limit, color="0.3", ls=":", lw=0.9, zorder=1, label="pAUC limit")
            if (i, j) in unresolved_panels:
                ax.text(0.97, 0.95, "\u2020", transform=ax.transAxes, ha="right", va="top", fontsize=8)
            if i == 0:
                ax.set_title(fmr_text(fmr))
            if j == 0:
                ax.set_ylabel(ds)
            if i == len(datasets) - 1:
                ax.set_xlabel("fraction discarded")
    fig.supylabel("FNMR")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    note = ("\u2020 hollow markers: FMR target not resolved (FMR x non-mated comparisons < 1 at the threshold);\n"
            "the curve equals that of any smaller target") if unresolved_panels else None
    fig.legend(handles, labels, loc="outside lower center", ncol=min(8, len(labels)), frameon=False,
               handlelength=2.0, columnspacing=1.0, title=note)
    return fig


def rank_heatmap(corr: pd.DataFrame, title: str = "") -> Figure:
    """Exit-to-exit Spearman correlation as a ``cividis`` heatmap, one column wide, labelled by exit
    number (``FW``: EX-FIQA-FW)."""
    set_style()
    fig, axes = _figure(COLUMN_IN, 3.3)
    ax = axes[0, 0]
    short = [str(exit_numbers(len(corr)).get(str(c), c)).replace("EX-FIQA-", "") for c in corr.columns]
    shown = pd.DataFrame(corr.to_numpy(), index=short, columns=short)
    sns.heatmap(shown, vmin=-1, vmax=1, cmap="cividis", square=True, ax=ax, cbar_kws={"shrink": 0.8, "label": "Spearman"})
    ax.set_xlabel("exit")
    ax.set_ylabel("exit")
    ax.tick_params(length=0)
    add_title(ax, title)
    return fig


def score_distributions(scores: pd.DataFrame, title: str = "") -> Figure:
    """Per-exit score distributions: tidy ``exit, score`` (and optional ``group``) -> violin plot,
    two columns wide, exits on the exit ramp."""
    set_style()
    fig, axes = _figure(TEXT_IN, 2.4)
    ax = axes[0, 0]
    grouped = "group" in scores
    order = sorted(scores["exit"].unique())
    palette = None if grouped else [exit_colour(int(e), len(order)) for e in order]
    sns.violinplot(
        data=scores, x="exit", y="score", hue="group" if grouped else "exit", cut=0, inner="quartile",
        linewidth=0.6, ax=ax, palette=palette, legend="auto" if grouped else False, order=order,
        hue_order=None if grouped else order,
    )
    add_title(ax, title)
    return fig


def attention_figure(
    maps: Mapping[str, np.ndarray], images: Mapping[str, np.ndarray | None], exits: Sequence[int] | None = None,
    scale: str = "shared", layout: str = "exits-as-columns",
) -> Figure:
    """The poster's attention figure: the sample types (+ dataset mean) against the exits.

    ``maps[name]``: (depth, g, g), each map summing to 1; ``images[name]``: the RGB uint8 face (None
    for a dataset mean). ``scale="shared"``: one colour scale in multiples of 1/g^2; ``"per-panel"``:
    min-max per panel. Panels with normalised entropy >= ``LOW_CONTRAST_ENTROPY`` are greyed out.
    """
    if scale not in ("shared", "per-panel"):
        raise ValueError(f"parameter scale must be 'shared' or 'per-panel', got {scale!r}")
    if layout not in ("exits-as-columns", "exits-as-rows"):
        raise ValueError(f"parameter layout must be 'exits-as-columns' or 'exits-as-rows', got {layout!r}")
    set_style()
    names = list(maps)
    depth, g = next(iter(maps.values())).shape[:2]
    exits = list(exits or range(1, depth + 1))
    vmax = max(float(np.asarray(maps[n], dtype=np.float64).max()) for n in names) * g * g
    columns = layout == "exits-as-columns"
    n_img, n_ex = len(names), len(exits) + 1
    if columns:
        side = min(0.62, (TEXT_IN - 0.5) / n_ex)
        fig, axes = _figure(TEXT_IN, side * n_img + 0.55, n_img, n_ex)
    else:
        side = min(0.75, (COLUMN_IN - 0.4) / n_img)
        fig, axes = _figure(COLUMN_IN, side * n_ex + 0.75, n_ex, n_img)

    def panel(j: int, i: int) -> mpl.axes.Axes:  # sample type j, row/column i (0 = the face)
        return axes[j, i] if columns else axes[i, j]

    for j, name in enumerate(names):
        ax = panel(j, 0)
        img = images.get(name)
        if img is not None:
            ax.imshow(img)
        else:
            ax.text(0.5, 0.5, "dataset\nmean", ha="center", va="center", fontsize=7)
        (ax.set_ylabel if columns else ax.set_title)(name.replace(" (mean)", "\n(mean)"), fontsize=7)
        up = F.interpolate(torch.as_tensor(maps[name], dtype=torch.float32)[:, None], size=(112, 112), mode="bilinear", align_corners=False)[:, 0].numpy()
        p = np.asarray(maps[name], dtype=np.float64).reshape(depth, -1)
        flat = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1) / np.log(p.shape[1]) >= LOW_CONTRAST_ENTROPY
        for i, k in enumerate(exits):
            m, ax = up[k - 1], panel(j, i + 1)
            if scale == "per-panel":
                ax.imshow((m - m.min()) / (np.ptp(m) or 1.0), cmap="viridis", vmin=0, vmax=1)
            else:
                ax.imshow(m * g * g, cmap="viridis", vmin=0, vmax=vmax)
            if flat[k - 1]:
                ax.imshow(np.zeros_like(m), cmap="Greys", vmin=0, vmax=1, alpha=0.6)  # greyed out: washed white
                ax.text(0.5, 0.5, "flat", transform=ax.transAxes, ha="center", va="center", fontsize=7, color="k")
            if j == 0:
                (ax.set_title if columns else ax.set_ylabel)(exit_label(k), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    note = (f"shared colour scale: 0 .. {vmax:.3g} x uniform" if scale == "shared" else "each panel min-max scaled")
    sep = "; " if columns else ";\n"
    fig.supxlabel(f"{note}{sep}'flat': practically uniform (normalised entropy >= {LOW_CONTRAST_ENTROPY:g}), "
                  "nothing to read", fontsize=7)
    return fig


def pauc_vs_gflops(
    frame: pd.DataFrame, fused: pd.DataFrame | None = None, title: str = "", scale: float = 1.0,
    callout_exit: int | None = 7, quality_label: str = "", datasets: Sequence[str] | None = None,
) -> Figure:
    """The poster's pAUC-vs-GFLOPs panel: one line per dataset of ``frame`` (``dataset, gflops, pauc``
    times ``scale``, optional ``exit``, ``resolved``), ``fused`` as a star, ``callout_exit``'s FLOP saving."""
    set_style()
    fig, axes = _figure(COLUMN_IN, 3.3)
    ax = axes[0, 0]
    order = list(datasets or sorted(frame["dataset"].unique()))
    styles = dataset_styles(order)
    for ds in order:
        part = frame[frame["dataset"] == ds].sort_values("gflops")
        colour, marker = styles[ds]
        ax.plot(part["gflops"], part["pauc"], marker=marker, ms=3.5, lw=1, color=colour, label=ds)
    any_bad = False
    if "resolved" in frame.columns:
        bad = frame[~frame["resolved"].astype(bool)]
        for ds, part in bad.groupby("dataset", sort=True):
            colour, marker = styles.get(str(ds), ("k", "o"))
            ax.plot(part["gflops"], part["pauc"], marker=marker, ms=3.5, ls="none", mfc="white", mec=colour, mew=0.8)
        any_bad = len(bad) > 0
    if fused is not None and len(fused):
        for _, row in fused.iterrows():
            hollow = "resolved" in fused.columns and not bool(row["resolved"])
            any_bad |= hollow
            ax.plot(row["gflops"], row["pauc"], marker="*", ms=9, color=styles.get(str(row["dataset"]), ("k", ""))[0],
                    ls="none", mfc="white" if hollow else None, zorder=4)
        ax.plot([], [], marker="*", ls="none", color="0.2", ms=7, label="EX-FIQA-FW")
    if any_bad:
        ax.plot([], [], marker="o", ls="none", mfc="white", mec="0.2", label="hollow: FMR not resolved")
    if "exit" in frame.columns and frame["exit"].notna().any():
        costs = frame.dropna(subset=["exit"]).groupby("exit")["gflops"].mean().sort_index()
        top = ax.secondary_xaxis("top")
        top.set_xticks(costs.to_numpy(), [str(int(e)) for e in costs.index])
        top.tick_params(labelsize=7, length=2, pad=1)
        top.set_xlabel("exit", fontsize=7, labelpad=2)
        last = int(costs.index.max())
        if callout_exit is not None and callout_exit in costs.index and callout_exit != last:
            saving = 1.0 - float(costs[callout_exit]) / float(costs[last])
            tag = f" {quality_label}" if quality_label else ""
            x = float(costs[callout_exit])
            ax.axvline(x, color="0.35", ls="--", lw=0.7, zorder=1)
            ax.text(x, 0.97, f"Exit {callout_exit}{tag}: {saving:.0%} FLOP reduction\n"
                    f"({costs[callout_exit]:.3g} vs {costs[last]:.3g} GFLOPs)",
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7, zorder=5,
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.5", "lw": 0.5})
    values = pd.concat([frame["pauc"], fused["pauc"] if fused is not None else pd.Series(dtype=float)]).astype(float)
    if len(values) and np.isfinite(values).any():
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        span = (hi - lo) or max(abs(hi), 1.0)
        ax.set_ylim(lo - 0.08 * span, hi + 0.35 * span)  # room for the call-out above the lines
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel("pAUC-EDC" + (f" ($\\times${power_of_ten(scale)})" if scale != 1.0 else "") + " (lower is better)")
    add_title(ax, title)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False,
               handlelength=1.6, columnspacing=0.8)
    return fig


def forest(boot: pd.DataFrame, reference: str = "last exit", labels: Mapping[str, str] | None = None) -> Figure:
    """Forest plot of paired-bootstrap differences, two columns wide: one panel per quality model, one
    row per (method, dataset). ``boot``: ``quality_model, method, dataset, delta_pauc, ci_low, ci_high``
    (and ``fr_model, fmr, scale`` where known); < 0 means the method is better."""
    set_style()
    models = list(dict.fromkeys(boot["quality_model"])) or [""]
    rows = list(dict.fromkeys(f"{r.method} | {r.dataset}" for r in boot.itertuples()))
    fig, axes = _figure(TEXT_IN, 0.16 * len(rows) + 1.0, 1, len(models), sharey=True)
    colours = method_colours(list(dict.fromkeys(boot["method"])))
    y_of = {r: k for k, r in enumerate(rows)}
    for ax, q in zip(axes[0], models, strict=True):
        part = boot[boot["quality_model"] == q]
        for m, sub in part.groupby("method", sort=False):
            y = np.array([y_of[f"{m} | {d}"] for d in sub["dataset"]])
            delta = sub["delta_pauc"].to_numpy(dtype=float)
            err = [delta - sub["ci_low"].to_numpy(dtype=float), sub["ci_high"].to_numpy(dtype=float) - delta]
            ax.errorbar(delta, y, xerr=err, fmt="o", ms=3, capsize=2, lw=0.9, color=colours[str(m)])
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(_label(labels, q))
    axes[0, 0].set_yticks(range(len(rows)), rows)
    axes[0, 0].invert_yaxis()
    scale = float(boot["scale"].iloc[0]) if "scale" in boot and len(boot) else 1.0
    unit = f" ($\\times${power_of_ten(scale)})" if scale != 1.0 else ""
    where = []
    if "fr_model" in boot and boot["fr_model"].nunique() == 1:
        where.append(_label(labels, boot["fr_model"].iloc[0]))
    if "fmr" in boot and boot["fmr"].nunique() == 1:
        where.append(fmr_text(float(boot["fmr"].iloc[0])))
    fig.supxlabel(f"pAUC(method) - pAUC({reference}){unit}" + (f", {', '.join(where)}" if where else "")
                  + "   (< 0: method better; 95% interval)")
    return fig


def attention_entropy_spread(stats: pd.DataFrame, labels: Mapping[str, str] | None = None) -> Figure:
    """Attention entropy and spatial spread per exit (mean and std), one line per quality model, two
    columns wide; ``stats``: ``attention_statistics`` rows with a ``quality_model`` column."""
    set_style()
    fig, axes = _figure(TEXT_IN, 2.4, 1, 2)
    for n, (q, part) in enumerate(stats.groupby("quality_model", sort=False)):
        colour, ls, marker = QUALITY_STYLES[n % len(QUALITY_STYLES)]
        for ax, col in zip(axes[0], ("entropy", "spread"), strict=True):
            ax.errorbar(part["exit"], part[f"{col}_mean"], yerr=part[f"{col}_std"], marker=marker, ms=3, capsize=2,
                        color=colour, ls=ls, lw=0.9, label=_label(labels, q))
    axes[0, 0].axhline(stats["max_entropy"].iloc[0], color="grey", ls=":", lw=1, label="uniform")
    axes[0, 0].set(xlabel="exit", ylabel="entropy (nats)")
    axes[0, 1].set(xlabel="exit", ylabel="RMS distance (patches)")
    add_title(axes[0, 0], "attention entropy")
    add_title(axes[0, 1], "spatial spread")
    axes[0, 0].legend()
    return fig
