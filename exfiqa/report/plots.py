"""One figure style for every notebook; figures saved as PDF + PNG, byte-identical across runs.

Colour convention (as on the poster): exits 1..12 along a sequential palette (early = light,
deep = dark), EX-FIQA-F in red and EX-FIQA-FW in green, other methods in grey tones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

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

__all__ = [
    "FUSION_COLOURS",
    "attention_entropy_spread",
    "attention_figure",
    "edc_grid",
    "forest",
    "exit_colour",
    "method_colours",
    "pauc_vs_gflops",
    "rank_heatmap",
    "save_figure",
    "score_distributions",
    "set_style",
]

FUSION_COLOURS = {"EX-FIQA-F": "#d62728", "EX-FIQA-FW": "#2ca02c"}


def set_style() -> None:
    """Seaborn paper style with fixed fonts and sizes (called by every plotting function)."""
    sns.set_theme(context="paper", style="whitegrid", font="DejaVu Sans", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titlesize": 9, "legend.fontsize": 7,
                         # fonts embedded as TrueType (Type 42), not Type 3: IEEE's PDF check refuses Type 3
                         "pdf.fonttype": 42, "ps.fonttype": 42})


def exit_colour(exit: int, depth: int = 12) -> tuple[float, float, float]:
    """Colour of exit ``exit`` (1-based) on the shared sequential palette."""
    return tuple(sns.color_palette("viridis_r", depth)[exit - 1])  # type: ignore[return-value]


def method_colours(methods: Sequence[str], depth: int = 12) -> dict[str, object]:
    """Colour per method name: exits ``1..depth`` -> exit palette, fusions fixed, others grey tones."""
    greys = iter(sns.color_palette("Greys_d", max(1, len(methods))))
    number = exit_numbers(depth)
    out: dict[str, object] = {}
    for m in methods:
        if m in FUSION_COLOURS:
            out[m] = FUSION_COLOURS[m]
        elif m in number:
            out[m] = exit_colour(number[m], depth)
        else:
            out[m] = next(greys)
    return out


def save_figure(fig: Figure, out_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``name.pdf`` and ``name.png`` atomically; returns the paths. Closes the figure.

    The PDF carries no creation date, so the same figure gives the same bytes.
    """
    out = Path(out_dir)
    paths = []
    for ext, meta in (("pdf", {"CreationDate": None, "Creator": "exfiqa"}), ("png", {"Software": "exfiqa"})):
        target = out / f"{name}.{ext}"
        with atomic_path(target, overwrite=True) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta, bbox_inches="tight")
        paths.append(target)
    plt.close(fig)
    return paths


def edc_grid(
    edc: pd.DataFrame,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    fmr_targets: Sequence[float] | None = None,
    discard_max: float = 0.95,
    depth: int = 12,
) -> Figure:
    """The poster's EDC grid: rows = datasets, columns = FMR targets, one line per method.

    ``edc`` is tidy: columns ``method, dataset, fmr, discard_fraction, fnmr`` (one FR model). With
    a ``resolved`` column (:func:`exfiqa.evaluation.pauc.edc_rows`), points whose FMR target is not
    resolvable get hollow markers and their panel title a dagger (explained under the figure).
    Exits ``1..depth`` are drawn dashed in the exit palette (:func:`method_colours`).
    """
    set_style()
    datasets = list(datasets or edc["dataset"].unique())
    fmr_targets = list(fmr_targets or sorted(edc["fmr"].unique(), reverse=True))
    methods = list(methods or edc["method"].unique())
    colours = method_colours(methods, depth)
    exits = exit_numbers(depth)
    unresolved_panels: set[tuple[int, int]] = set()
    fig, axes = plt.subplots(
        len(datasets), len(fmr_targets), figsize=(2.3 * len(fmr_targets) + 0.8, 1.35 * len(datasets) + 0.8),
        sharex=True, squeeze=False,
    )
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
                    cur["discard_fraction"], cur["fnmr"], color=colours[m], lw=1.6 if fused else 0.8,
                    ls="--" if m in exits else "-", marker="o" if fused else None,
                    ms=2, label=m, drawstyle="steps-post" if "fixed" in set(cur.get("convention", [])) else "default",
                )
                if "resolved" in cur.columns:
                    bad = cur[~cur["resolved"].astype(bool)]
                    if len(bad):
                        unresolved_panels.add((i, j))
                        ax.plot(bad["discard_fraction"], bad["fnmr"], ls="none", marker="o", ms=3.5, mfc="none",
                                mec=colours[m], mew=0.7)
            if (i, j) in unresolved_panels:
                ax.text(0.97, 0.95, "\u2020", transform=ax.transAxes, ha="right", va="top", fontsize=9)
            if i == 0:
                ax.set_title(f"FNMR@FMR={fmr:.0e}")
            if j == 0:
                ax.set_ylabel(f"{ds}\nFNMR")
            if i == len(datasets) - 1:
                ax.set_xlabel("fraction discarded")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), bbox_to_anchor=(0.5, -0.02), frameon=False)
    if unresolved_panels:
        fig.text(0.5, -0.05, "\u2020 hollow markers: FMR target not resolved (fewer than one expected false match at the "
                 "threshold, FMR x non-mated comparisons < 1); the curve equals that of any smaller target",
                 ha="center", va="top", fontsize=6)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def rank_heatmap(corr: pd.DataFrame, title: str = "") -> Figure:
    """Exit-to-exit rank correlation (Spearman) as an annotated heatmap."""
    set_style()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    sns.heatmap(corr, vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f", annot_kws={"size": 5}, square=True, ax=ax, cbar_kws={"shrink": 0.7})
    ax.set_title(title)
    fig.tight_layout()
    return fig


def score_distributions(scores: pd.DataFrame, title: str = "") -> Figure:
    """Per-exit score distributions: tidy ``exit, score`` (and optional ``group``) -> violin plot."""
    set_style()
    fig, ax = plt.subplots(figsize=(6.5, 2.6))
    grouped = "group" in scores
    sns.violinplot(
        data=scores, x="exit", y="score", hue="group" if grouped else "exit", cut=0, inner="quartile",
        linewidth=0.6, ax=ax, palette=None if grouped else "viridis_r", legend="auto" if grouped else False,
    )
    ax.set_title(title)
    fig.tight_layout()
    return fig


def attention_figure(
    maps: Mapping[str, np.ndarray], images: Mapping[str, np.ndarray | None], exits: Sequence[int] | None = None,
    scale: str = "shared",
) -> Figure:
    """The poster's attention figure: columns = sample types (+ dataset mean), rows = exits.

    ``maps[name]`` is (depth, g, g), each map summing to 1; ``images[name]`` the RGB uint8 face
    shown on top (or None for a dataset mean). Maps are upsampled bilinearly to 112x112.
    ``scale="shared"`` (default): one colour scale for every panel, in multiples of the uniform
    weight 1/g^2 (0 .. the largest value of any panel), so a flat map looks flat;
    ``scale="per-panel"``: each panel min-max scaled on its own (as on the poster), which shows
    *where* attention goes but amplifies noise in near-uniform maps. Either way a low-contrast panel
    (normalised entropy >= :data:`exfiqa.report.attention.LOW_CONTRAST_ENTROPY`) is greyed out and labelled "flat".
    """
    if scale not in ("shared", "per-panel"):
        raise ValueError(f"parameter scale must be 'shared' or 'per-panel', got {scale!r}")
    set_style()
    names = list(maps)
    depth, g = next(iter(maps.values())).shape[:2]
    exits = list(exits or range(1, depth + 1))
    vmax = max(float(np.asarray(maps[n], dtype=np.float64).max()) for n in names) * g * g
    fig, axes = plt.subplots(len(exits) + 1, len(names), figsize=(1.15 * len(names), 1.05 * (len(exits) + 1)), squeeze=False)
    for j, name in enumerate(names):
        ax = axes[0, j]
        img = images.get(name)
        if img is not None:
            ax.imshow(img)
        else:
            ax.text(0.5, 0.5, "dataset\nmean", ha="center", va="center", fontsize=7)
        ax.set_title(name, fontsize=7)
        up = F.interpolate(torch.as_tensor(maps[name], dtype=torch.float32)[:, None], size=(112, 112), mode="bilinear", align_corners=False)[:, 0].numpy()
        p = np.asarray(maps[name], dtype=np.float64).reshape(depth, -1)
        flat = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1) / np.log(p.shape[1]) >= LOW_CONTRAST_ENTROPY
        for i, k in enumerate(exits):
            m, ax = up[k - 1], axes[i + 1, j]
            if scale == "per-panel":
                ax.imshow((m - m.min()) / (np.ptp(m) or 1.0), cmap="viridis", vmin=0, vmax=1)
            else:
                ax.imshow(m * g * g, cmap="viridis", vmin=0, vmax=vmax)
            if flat[k - 1]:
                ax.imshow(np.ones_like(m), cmap="Greys", vmin=0, vmax=1, alpha=0.55)
                ax.text(0.5, 0.5, "flat", transform=ax.transAxes, ha="center", va="center", fontsize=6, color="k")
            if j == 0:
                axes[i + 1, j].set_ylabel(exit_label(k), fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    note = (f"shared colour scale: 0 .. {vmax:.3g} x uniform" if scale == "shared" else "each panel min-max scaled")
    fig.text(0.5, 0.0, f"{note}; 'flat': practically uniform (normalised entropy >= {LOW_CONTRAST_ENTROPY:g}), "
             "nothing to read", ha="center", va="top", fontsize=6)
    fig.tight_layout(pad=0.2)
    return fig


def pauc_vs_gflops(frame: pd.DataFrame, fused: pd.DataFrame | None = None, title: str = "") -> Figure:
    """pAUC (lower is better) against GFLOPs per exit, one line per dataset; fusion as stars.

    ``frame``: columns ``dataset, gflops, pauc`` (one row per dataset and exit). ``fused``: the
    same columns for the fused score (drawn as a star at its cost). With a ``resolved`` column,
    unresolved pAUCs (:func:`exfiqa.evaluation.pauc.pauc_resolved`) are drawn hollow and noted in the legend.
    """
    set_style()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    palette = dict(zip(sorted(frame["dataset"].unique()), sns.color_palette("tab10"), strict=False))
    for ds, part in frame.groupby("dataset", sort=True):
        part = part.sort_values("gflops")
        ax.plot(part["gflops"], part["pauc"], marker="o", ms=3, lw=1, color=palette[ds], label=ds)
    any_bad = False
    if "resolved" in frame.columns:
        bad = frame[~frame["resolved"].astype(bool)]
        for ds, part in bad.groupby("dataset", sort=True):
            ax.plot(part["gflops"], part["pauc"], marker="o", ms=5, ls="none", mfc="white", mec=palette[ds])
        any_bad = len(bad) > 0
    if fused is not None:
        for _, row in fused.iterrows():
            hollow = "resolved" in fused.columns and not bool(row["resolved"])
            any_bad |= hollow
            ax.plot(row["gflops"], row["pauc"], marker="*", ms=9, color=palette.get(row["dataset"], "k"), ls="none",
                    mfc="white" if hollow else None)
        ax.plot([], [], marker="*", ls="none", color="k", label="Fusion (FW)")
    if any_bad:
        ax.plot([], [], marker="o", ls="none", mfc="white", mec="k", label="hollow: FMR not resolved")
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel("pAUC-EDC")
    ax.set_title(title)
    ax.legend(ncol=2, fontsize=6)
    fig.tight_layout()
    return fig


def forest(boot: pd.DataFrame, reference: str = "last exit") -> Figure:
    """Forest plot of paired-bootstrap differences: one row per (quality model, method, dataset).

    ``boot``: columns ``quality_model, method, dataset, delta_pauc, ci_low, ci_high`` (as from
    :func:`exfiqa.report.bootstrap_tables.fusion_bootstrap`); a point left of 0 means the method is better.
    """
    set_style()
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(boot) + 1))
    y = np.arange(len(boot))
    delta = boot["delta_pauc"].to_numpy()
    err = [delta - boot["ci_low"].to_numpy(), boot["ci_high"].to_numpy() - delta]
    ax.errorbar(delta, y, xerr=err, fmt="o", ms=3, capsize=2, color=FUSION_COLOURS["EX-FIQA-FW"])
    ax.axvline(0, color="grey", lw=1)
    labels = [f"({r.quality_model}) {r.method} | {r.dataset}" for r in boot.itertuples()]
    ax.set_yticks(y, labels, fontsize=6)
    scale = float(boot["scale"].iloc[0]) if "scale" in boot and len(boot) else 1.0
    unit = f" (x{scale:g})" if scale != 1.0 else ""
    ax.set_xlabel(f"pAUC(method) - pAUC({reference}){unit}   (< 0: method better)")
    fig.tight_layout()
    return fig


def attention_entropy_spread(stats: pd.DataFrame) -> Figure:
    """Attention entropy and spatial spread per exit (mean and std), one line per quality model.

    ``stats``: :func:`exfiqa.report.attention.attention_statistics` rows with a ``quality_model`` column.
    """
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.6))
    for q, part in stats.groupby("quality_model", sort=False):
        for ax, col in zip(axes, ("entropy", "spread"), strict=True):
            ax.errorbar(part["exit"], part[f"{col}_mean"], yerr=part[f"{col}_std"], marker="o", ms=3, capsize=2, label=f"({q})")
    axes[0].axhline(stats["max_entropy"].iloc[0], color="grey", ls=":", lw=1, label="uniform")
    axes[0].set(xlabel="exit", ylabel="entropy (nats)", title="attention entropy")
    axes[1].set(xlabel="exit", ylabel="RMS distance (patches)", title="spatial spread")
    axes[0].legend()
    fig.tight_layout()
    return fig
