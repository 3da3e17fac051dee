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
#   EX-FIQA-FW, for each dataset at each FMR target (1e-2, 1e-3 and 1e-4 on the poster);
# * the pAUC-EDC of every exit x dataset x FR model;
# * how much the exits agree (rank correlation) and how their score distributions change with depth.
#
# All scores and embeddings come from `exfiqa.study.Study`, computed once and cached. Every
# setting comes from the config; a parameter left at `None` takes the config's value.

# %% tags=["parameters"]
config = "configs/demo.yaml"  # run config: datasets, FR models, quality checkpoints, protocol, paths
datasets = []  # subset of the datasets in the config, e.g. lfw and ijbc; empty means all
fr_models = []  # subset of the FR models in the config; empty means all
quality_models = []  # subset of the ViT-FIQA checkpoints, T and C; empty means all
data_root = ""  # replaces data_root of the config; empty means keep
fmr_targets = None  # FMR operating points of the EDCs; None means the config's fmr_targets
discard_limit = None  # pAUC-EDC integrates discard fractions 0..discard_limit; None means the config's
convention = None  # recompute (the paper's evaluation code) or fixed (Schlett et al.); None means the config's
pauc_scale = None  # pAUC is shown times this (1000 as on the poster); None means the config's
headline_fmr = None  # FMR of the per-exit tables; None means the config's headline.fmr
out_dir = ""  # figures and tables are written here; empty means results/RUN-adhoc
titles = True  # figure titles (False for paper export: the caption says it)

# %%
# open the study: the config (and any parameter overrides), its run card
from IPython.display import Markdown, display

from exfiqa.evaluation.exits import exit_labels
from exfiqa.evaluation.rules import TIE_ORDER_NOTE, rule_note
from exfiqa.report import plots, tables
from exfiqa.report.findings import paper_findings
from exfiqa.report.frames import (
    edc_all,
    headline,
    pauc_all,
    table_protocol,
    unresolved,
    variant_tags,
)
from exfiqa.report.layers import depth_summary, exit_scores_long, fr_sanity, rank_correlation
from exfiqa.study import open_study

study = open_study(config, parameters=globals())  # the parameters above (or papermill's) override the config
cfg = study.config
plots.set_style(titles=titles)
LABELS = plots.config_labels(cfg)  # keys -> the config's labels (arcface -> ArcFace)
head = headline(cfg, headline_fmr)
tags = variant_tags(study)
depths = {q: depth for q, (_, depth) in tags.items()}
FIG, TAB = study.out_dir / "figures", study.out_dir / "tables"
display(Markdown(study.card.banner()))
display(Markdown(study.card.markdown()))

# %% [markdown]
# ## Sanity check: the FR models without any discarding
#
# 10-fold verification accuracy (LFW protocol), EER and FNMR at each FMR target per dataset and
# FR model. Everything after this rests on these comparisons.

# %%
sanity = fr_sanity(study)
tables.save_table(sanity, TAB, "fr_sanity", caption="FR models before quality-based discarding (no discarding; FNMR at each FMR target).")
display(sanity.round(4))

# %% [markdown]
# ## EDC of every exit (the poster's grid)
#
# Rows are datasets, columns FMR targets; each dashed line is one exit (light blue = early, dark = deep),
# EX-FIQA-F in red, EX-FIQA-FW in green; the dotted line is the pAUC limit (`discard_limit`). Lower curves mean the quality score discards the
# comparisons that cause false non-matches first. The grid is drawn for the headline FR model
# (ArcFace in the paper) and every quality model. **Hollow markers and a dagger** mark points whose
# FMR target the data cannot resolve: fewer than one expected false match at the threshold
# (FMR x non-mated comparisons < 1, for the whole set or, under `recompute`, for the non-mated
# comparisons left at that discard level). There the target admits no false match at all and the
# curve equals that of every smaller target (a set of 300 non-mated comparisons gives the same
# curve at 1e-3 and 1e-4).

# %%
for q, depth in depths.items():
    edc = edc_all(study, q, head.fr_model)
    fig = plots.edc_grid(edc, methods=exit_labels(depth) + ["EX-FIQA-F", "EX-FIQA-FW"],
                         fmr_targets=sorted(cfg.fmr_targets, reverse=True), limit=cfg.discard_limit)
    plots.add_title(fig, f"EX-FIQA ({q}): EDC per exit, {LABELS[head.fr_model]}, convention '{cfg.convention}'")
    plots.save_figure(fig, FIG, f"edc_grid_{q}_{head.fr_model}")
    display(fig)

# %% [markdown]
# ## pAUC-EDC per exit, dataset and FR model
#
# One row per exit (and fusion), one column per dataset x FR model, at the headline FMR and, in
# `pauc_all`, at every FMR target. Values are the area times the pAUC scale of the run card.
# ATTN-FIQA (last block) and ViTNT-FIQA (all blocks) are read from the same pass of the same
# backbone. The threshold rule and acceptance of this run are printed below; where pair
# qualities tie, the authors' own numbers depend on their machine's sort (the note below).

# %%
display(Markdown(f"Rules: {rule_note(cfg.threshold_rule, cfg.acceptance)}. {TIE_ORDER_NOTE}"))
pauc = pauc_all(study, scale=cfg.pauc_scale)
tables.save_table(pauc.drop(columns="exit"), TAB, "pauc_all", caption="pAUC-EDC of every method, dataset, FR model and quality model.",
                  protocol=table_protocol(cfg))
for q in depths:
    wide = tables.pauc_per_exit(pauc, q, head.fmr, study.methods(q))
    others = [m for m in wide["method"] if not str(m).startswith(("Exit ", "EX-FIQA"))]  # in comparison_table
    tables.save_table(wide, TAB, f"pauc_per_exit_{q}", caption=f"ViT-FIQA ({q}) exits.", transpose=True, tex_drop=others,
                      protocol=table_protocol(cfg, head.fmr))
    display(Markdown(f"**ViT-FIQA ({q})**, {tables.protocol_note(cfg.convention, cfg.discard_limit, head.fmr, cfg.pauc_scale)}"))
    display(wide.round(3))
unres = unresolved(pauc)
display(Markdown(
    "Every pAUC table carries a `resolved` column (wide tables also `unresolved_in`; the LaTeX files mark the "
    "cells with a dagger). " + ("All pAUCs of this run have a resolvable FMR target." if unres.empty else
    f"**{len(unres)} of {len(pauc)} pAUCs rest on an FMR target the data cannot resolve**, at FMR "
    + ", ".join(f"{f:g}" for f in sorted(unres['fmr'].unique())) + " on "
    + ", ".join(sorted(unres['dataset'].unique())) + ": read them as 'no false match allowed', not as that FMR.")
))

# %% [markdown]
# ## Where along the depth does quality information appear?
#
# The paper reports the largest gains from exit 1 to exit 5 and little change after exit 8. We
# measure the same thing on this run: the share of the total pAUC change between exit 1 and the
# last exit that is already reached at exit 5 and at exit 8 (mean over datasets and FR models).
# The shares mean something only if the change itself does: the verdict is "not resolved" when it
# is below 5% of exit 1's pAUC (notebook 03 adds the change's paired intervals per dataset). Exits
# tied for best (equal pAUC) are all named.

# %%
depth_table = depth_summary(pauc, depths, head.fmr)
tables.save_table(depth_table, TAB, "depth_summary", caption="Mean pAUC over datasets and FR models.",
                  protocol=table_protocol(cfg, head.fmr))
display(depth_table.round(3))
findings = paper_findings(pauc, tags, head)
display(findings[findings["finding"].str.startswith("depth gains")][["finding", "paper", "this_run", "verdict", "difference"]])

# %% [markdown]
# ## Do the exits agree? Rank correlation and score distributions
#
# Spearman correlation of the per-image scores between exits (first dataset of the run). Exits
# that rank images differently carry complementary information, which is what fusion can use.

# %%
ds0 = next(iter(cfg.datasets))
label0 = cfg.datasets[ds0].label
for q, depth in depths.items():
    sq = study.sample_quality(ds0, q)
    corr = rank_correlation(sq, exit_labels(depth) + ["EX-FIQA-FW"])
    tables.save_table(corr.reset_index(names="method"), TAB, f"rank_correlation_{q}", decimals=3,
                      caption=f"Spearman correlation of per-image scores, {label0} (no EDC protocol involved).")
    fig = plots.rank_heatmap(corr, title=f"({q}) exit-to-exit Spearman, {label0}")
    plots.save_figure(fig, FIG, f"rank_correlation_{q}")
    display(fig)
    fig = plots.score_distributions(exit_scores_long(sq, depth), title=f"({q}) per-exit score distributions, {label0}")
    plots.save_figure(fig, FIG, f"score_distributions_{q}")
    display(fig)
    display(Markdown(f"({q}): adjacent exits correlate at {min(corr.iloc[k, k + 1] for k in range(depth - 1)):.2f}.."
                     f"{max(corr.iloc[k, k + 1] for k in range(depth - 1)):.2f}; exit 1 vs exit {depth}: {corr.iloc[0, depth - 1]:.2f}."))
