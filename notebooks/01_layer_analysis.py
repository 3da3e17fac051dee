# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Layer analysis: what each exit of ViT-FIQA knows about quality
#
# EX-FIQA reads a quality score after every transformer block *l* of ViT-FIQA: the tokens after
# block *l* go through the **shared final LayerNorm** and the **unchanged** quality head. Exit 12
# is plain ViT-FIQA. This notebook regenerates the paper's per-exit study:
#
# * the error-versus-discard curves (EDC) of every exit, plus the fusions EX-FIQA-F and
#   EX-FIQA-FW, for each dataset at FMR 1e-2, 1e-3 and 1e-4 (the poster's grid);
# * the pAUC-EDC of every exit x dataset x FR model;
# * how much the exits agree (rank correlation) and how their score distributions change with depth.
#
# All scores and embeddings come from `exfiqa.pipeline.Study`, computed once and cached.

# %% tags=["parameters"]
config = "configs/demo.yaml"  # run config: datasets, FR models, quality checkpoints, paths
datasets = []  # subset of the datasets in the config, e.g. lfw and ijbc; empty means all
fr_models = []  # subset of the FR models in the config; empty means all
quality_models = []  # subset of the ViT-FIQA checkpoints, T and C; empty means all
data_root = ""  # replaces data_root of the config; empty means keep
fmr_targets = [0.01, 0.001, 0.0001]  # FMR operating points of the EDCs
discard_limit = 0.3  # pAUC-EDC integrates discard fractions 0..discard_limit
convention = "recompute"  # recompute (the evaluation code of the paper) or fixed (Schlett et al.)
device = "cpu"  # cpu, cuda or auto
batch_size = 128  # images per forward pass
seed = 0  # seed of every random step (bootstrap, sampling)
out_dir = ""  # figures and tables are written here; empty means results/RUN-adhoc

# %%
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from exfiqa import analysis, plots, tables
from exfiqa.paper import open_study
from exfiqa.pipeline import exit_names

study = open_study(
    config, datasets, fr_models, quality_models, data_root=data_root, out_dir=out_dir,
    fmr_targets=fmr_targets, discard_limit=discard_limit, convention=convention,
    device=device, batch_size=batch_size, seed=seed,
)
cfg = study.config
FIG, TAB = study.out_dir / "figures", study.out_dir / "tables"
display(Markdown(f"**Run** `{cfg.run_name}`: datasets {list(cfg.datasets)}, FR models {list(cfg.fr_models)}, "
                 f"quality models {list(cfg.quality_models)}. {tables.protocol_note(cfg.convention, cfg.discard_limit)}."))

# %% [markdown]
# ## Sanity check: the FR models without any discarding
#
# 10-fold verification accuracy (LFW protocol), EER and FNMR at each FMR target per dataset and
# FR model. Everything after this rests on these comparisons.

# %%
sanity = analysis.fr_sanity(study)
tables.save_table(sanity, TAB, "fr_sanity", caption="FR models before quality-based discarding")
display(sanity.round(4))

# %% [markdown]
# ## EDC of every exit (the poster's grid)
#
# Rows are datasets, columns FMR targets; each line is one exit (light = early, dark = deep),
# EX-FIQA-F in red, EX-FIQA-FW in green. Lower curves mean the quality score discards the
# comparisons that cause false non-matches first. The grid is drawn for the first FR model of the
# config (ArcFace in the paper) and every quality model.

# %%
fr0 = next(iter(cfg.fr_models))
for q in cfg.quality_models:
    edc = analysis.edc_all(study, q, fr0)
    depth = study.quality_model(q).depth
    methods = exit_names(depth) + ["EX-FIQA-F", "EX-FIQA-FW"]
    fig = plots.edc_grid(edc, methods=methods, fmr_targets=sorted(cfg.fmr_targets, reverse=True))
    fig.suptitle(f"EX-FIQA ({q}): EDC per exit, {fr0}", y=1.0)
    plots.save_figure(fig, FIG, f"edc_grid_{q}_{fr0}")
    display(fig)

# %% [markdown]
# ## pAUC-EDC per exit, dataset and FR model
#
# One row per exit (and fusion), one column per dataset x FR model, at FMR 1e-3 (the headline
# operating point) and, in the CSV, at every FMR target.

# %%
pauc = analysis.pauc_all(study)
tables.save_table(pauc, TAB, "pauc_all", caption=tables.protocol_note(cfg.convention, cfg.discard_limit), float_format="%.5f")
fmr_main = 1e-3 if 1e-3 in cfg.fmr_targets else cfg.fmr_targets[0]
for q in cfg.quality_models:
    part = pauc[(pauc["quality_model"] == q) & np.isclose(pauc["fmr"], fmr_main)]
    wide = tables.wide_pauc(part, columns=("dataset", "fr_model"), order=study.methods(q))
    tables.save_table(wide, TAB, f"pauc_per_exit_{q}", caption=f"ViT-FIQA ({q}) exits. " + tables.protocol_note(cfg.convention, cfg.discard_limit, fmr_main))
    display(Markdown(f"**ViT-FIQA ({q})**, FNMR@FMR={fmr_main:.0e}"))
    display(wide.round(4))

# %% [markdown]
# ## Where along the depth does quality information appear?
#
# The paper reports the largest gains from exit 1 to exit 5 and little change after exit 8. We
# measure the same thing on this run: the share of the total pAUC change between exit 1 and the
# last exit that is already reached at exit 5 and at exit 8 (mean over datasets and FR models).

# %%
rows = []
for q in cfg.quality_models:
    depth = study.quality_model(q).depth
    part = pauc[(pauc["quality_model"] == q) & np.isclose(pauc["fmr"], fmr_main)]
    mean = part.groupby("method")["pauc"].mean()
    total = mean["Exit 1"] - mean[f"Exit {depth}"]
    share = {k: (mean["Exit 1"] - mean[f"Exit {k}"]) / total if total else np.nan for k in (5, 8)}
    best = min(exit_names(depth), key=lambda m: mean[m])
    rows.append({"quality_model": q, "pauc_exit_1": mean["Exit 1"], f"pauc_exit_{depth}": mean[f"Exit {depth}"],
                 "share_of_gain_by_exit_5": share[5], "share_of_gain_by_exit_8": share[8], "best_single_exit": best})
depth_summary = pd.DataFrame(rows)
tables.save_table(depth_summary, TAB, "depth_summary", caption="Mean pAUC over datasets and FR models. " + tables.protocol_note(cfg.convention, cfg.discard_limit, fmr_main))
display(depth_summary.round(3))
for r in rows:
    display(Markdown(
        f"* **({r['quality_model']})**: {r['share_of_gain_by_exit_5']:.0%} of the exit-1-to-last pAUC change is reached by "
        f"exit 5 and {r['share_of_gain_by_exit_8']:.0%} by exit 8; the best single exit is {r['best_single_exit']}. "
        "The paper reports largest gains from exit 1 to 5 and diminishing returns after exit 8."
    ))

# %% [markdown]
# ## Do the exits agree? Rank correlation and score distributions
#
# Spearman correlation of the per-image scores between exits (first dataset of the run). Exits
# that rank images differently carry complementary information, which is what fusion can use.

# %%
ds0 = next(iter(cfg.datasets))
for q in cfg.quality_models:
    sq = study.sample_quality(ds0, q)
    depth = study.quality_model(q).depth
    corr = analysis.rank_correlation(sq, exit_names(depth) + ["EX-FIQA-FW"])
    tables.save_table(corr.reset_index(names="method"), TAB, f"rank_correlation_{q}", caption=f"Spearman correlation of per-image scores, {cfg.datasets[ds0].label}")
    fig = plots.rank_heatmap(corr, title=f"({q}) exit-to-exit Spearman, {cfg.datasets[ds0].label}")
    plots.save_figure(fig, FIG, f"rank_correlation_{q}")
    display(fig)
    tidy = sq[exit_names(depth)].melt(var_name="exit", value_name="score")
    tidy["exit"] = tidy["exit"].str.replace("Exit ", "", regex=False).astype(int)
    fig = plots.score_distributions(tidy, title=f"({q}) per-exit score distributions, {cfg.datasets[ds0].label}")
    plots.save_figure(fig, FIG, f"score_distributions_{q}")
    display(fig)
    adjacent = np.diag(corr.to_numpy(), k=1)[: depth - 1]
    display(Markdown(f"({q}): adjacent exits correlate at {adjacent.min():.2f}..{adjacent.max():.2f}; "
                     f"exit 1 vs exit {depth}: {corr.iloc[0, depth - 1]:.2f}."))
