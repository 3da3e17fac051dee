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
# # 3. Fusion of exits: EX-FIQA-F and EX-FIQA-FW
#
# EX-FIQA fuses the 12 exit scores of one image by a weighted average, `s = sum_l w_l s_l`:
# **EX-FIQA-F** with `w_l = 1/12`, **EX-FIQA-FW** with `w_l` proportional to the depth `l`. The paper
# reports that FW beats exit 12 on 5 of 8 datasets for (C), that FW (T) has the best mean pAUC and
# is top-1 on IJB-C for all four FR models, and that FW (C) is best on Adience.
#
# Here we compute those statements instead of typing them and set each beside the paper's claim,
# put the poster's headline numbers beside this run's, attach **paired bootstrap intervals**
# (the paper reports none), try further strategies (last-k, exponential depth weights, z-score
# normalised FW, weights learned on one dataset and tested on the others, exits chosen on held-out
# data as FROQ chooses FR layers), and fill the poster's comparison table with the methods this run has.

# %% tags=["parameters"]
config = "configs/demo.yaml"  # run config: datasets, FR models, quality checkpoints, protocol, paths
datasets = []  # subset of the datasets in the config; empty means all
fr_models = []  # subset of the FR models in the config; empty means all
quality_models = []  # subset of the ViT-FIQA checkpoints, T and C; empty means all
data_root = ""  # replaces data_root of the config; empty means keep
fmr_targets = None  # FMR operating points; None means the config's fmr_targets
discard_limit = None  # pAUC-EDC integrates discard fractions 0..discard_limit; None means the config's
convention = None  # recompute (the paper's evaluation code) or fixed (Schlett et al.); None means the config's
pauc_scale = None  # pAUC is shown times this (1000 as on the poster); None means the config's
headline_fmr = None  # FMR of the comparison tables (1e-3 on the poster); None means the config's headline.fmr
n_boot = 300  # bootstrap resamples for the intervals
bootstrap_unit = "subject"  # what the bootstrap resamples: subject (each benchmark's independent units) or comparison
min_depth_change = 0.05  # a depth finding rests on a pAUC change exit 1 -> last of at least this share of exit 1's
learn_on = ""  # dataset the learned fusion weights are fitted on; empty means the first dataset
calibrate_on = []  # datasets EX-FIQA-DC chooses its exits on (then not evaluated); empty means leave-one-dataset-out
seed = None  # seed of the bootstrap and the weight search; None means the config's seed
out_dir = ""  # figures and tables are written here; empty means results/RUN-adhoc

# %%
# open the study: the config (and any parameter overrides), its run card
from IPython.display import Markdown, display

from exfiqa.config import ConfigError
from exfiqa.evaluation.exits import exit_label
from exfiqa.report import plots, tables
from exfiqa.report.bootstrap_tables import depth_bootstrap, fusion_bootstrap, unit_summary
from exfiqa.report.comparison import (
    SECONDARY_PROTOCOL,
    SECONDARY_SOURCE,
    headline_note,
    headline_vs_paper,
    poster_table,
    secondary_reference,
)
from exfiqa.report.findings import paper_findings
from exfiqa.report.frames import best_text, headline, pauc_all, table_protocol, variant_tags
from exfiqa.report.fusion_report import (
    chosen_exits,
    chosen_exits_comparison,
    fusion_vs_exits,
    fusion_wins,
    strategy_table,
)
from exfiqa.study import open_study

study = open_study(config, parameters=globals())  # the parameters above (or papermill's) override the config
cfg = study.config
head = headline(cfg, headline_fmr)
LABELS = plots.config_labels(cfg)  # keys -> the config's labels (arcface -> ArcFace)
learn_on = learn_on or next(iter(cfg.datasets))
if learn_on not in cfg.datasets:
    raise ConfigError(f"learn_on {learn_on!r} is not one of the run's datasets {list(cfg.datasets)}")
tags = variant_tags(study)
FIG, TAB = study.out_dir / "figures", study.out_dir / "tables"
HEAD = table_protocol(cfg, head.fmr)
display(Markdown(study.card.banner()))
display(Markdown(study.card.markdown()))
display(Markdown(f"Headline: {head.label}, {LABELS[head.fr_model]}; {tables.protocol_note(cfg.convention, cfg.discard_limit, head.fmr, cfg.pauc_scale)}."
                 + (f" {headline_note(head)}" if headline_note(head) else "")))
# pAUC of every method x dataset x FR model x quality model x FMR
pauc_table = pauc_all(study, scale=cfg.pauc_scale)
at_head = pauc_table[pauc_table["fmr"] == head.fmr]

# %% [markdown]
# ## This run beside the paper
#
# The poster's headline table (pAUC-EDC at FNMR@FMR=1e-3, ArcFace, IJB-C, as printed: x10^3)
# beside this run's values at its headline dataset, FR model and FMR, both at the run's pAUC
# scale. A run without IJB-C (NIST no longer distributes it; configs/paper-no-ijbc.yaml) has
# another headline dataset: the table then says so (column `paper_dataset`, and the caption), and
# the paper's IJB-C findings are computed on that dataset, named in their text.
# A second reference for plain ViT-FIQA (T) (= exit 12 (T)) on five benchmarks comes from
# the PreFIQs paper (Kolf et al., CVPR 2026 Workshops, arXiv 2605.13396) **as transcribed by a
# secondary source** (not checked against the paper here): its column is labelled so in both
# tables. The paper's findings, computed from this run, follow the paired bootstrap below, on
# which they rest.

# %%
vs_paper = headline_vs_paper(pauc_table, head, tags, cfg.pauc_scale)
stand_in = headline_note(head)
tables.save_table(vs_paper, TAB, "headline_vs_paper", caption=(
    f"The poster's headline table (IJB-C, ArcFace) beside this run ({head.label}, {LABELS[head.fr_model]}). "
    + (f"{stand_in} " if stand_in else "")
    + f"Column '{SECONDARY_SOURCE}': ViT-FIQA (T) on {head.label} from the PreFIQs paper, via a secondary source "
    "(empty where it reports none). "
    "Rows with chosen_on_evaluated_data are the best early exit chosen on this run's evaluated data (the same rows "
    "as comparison_table; optimistic). This run's SER-FIQ is a SER-FIQ-style re-implementation (exfiqa.models.baselines), "
    "not the authors' code."), protocol=HEAD, tex_drop=["selection", "paper_dataset"])
display(vs_paper.round(3))
if stand_in:
    display(Markdown(f"**{stand_in}**"))
secondary = secondary_reference(pauc_table, {k: s.label for k, s in cfg.datasets.items()}, tags, head, cfg.pauc_scale)
tables.save_table(secondary, TAB, "secondary_reference", caption=(
    f"Plain ViT-FIQA (T) of this run ({LABELS[head.fr_model]}) beside '{SECONDARY_SOURCE}': the PreFIQs paper "
    f"(arXiv 2605.13396) as transcribed by a secondary source ({SECONDARY_PROTOCOL})."), protocol=HEAD)
display(secondary.round(3))

# %% [markdown]
# ## F and FW against the last exit and the best single exit
#
# Per dataset and FR model, at the headline FMR. "Best single exit" is chosen per dataset and FR
# model with hindsight (an upper bound for any fixed exit choice).

# %%
versus = fusion_vs_exits(at_head, {q: d for q, (_, d) in tags.items()})
tables.save_table(versus, TAB, "fusion_vs_exits", caption="F and FW against the last exit and the best single exit.", protocol=HEAD)
display(versus.round(3))
wins = fusion_wins(pauc_table, "EX-FIQA-FW", exit_label(next(iter(tags.values()))[1]))
tables.save_table(wins, TAB, "fusion_wins", caption="Datasets on which EX-FIQA-FW has a lower pAUC than the last exit.",
                  protocol=table_protocol(cfg))
for r in wins[wins["fmr"] == head.fmr].itertuples():
    display(Markdown(f"* ({r.quality_model}, {LABELS.get(r.fr_model, r.fr_model)}): **{r.summary}** datasets (paper, (C) with ArcFace: 5 of 8). "
                     "Point estimates: which of these differences the data resolve, the paired bootstrap below says."))

# %% [markdown]
# ## How sure are we? Paired bootstrap against the last exit
#
# Comparisons share people (on IJB-C a template enters about 1,350 comparisons, on Adience an image
# about 19,000), so the bootstrap resamples the **independent units** of each benchmark
# (`bootstrap_unit = "subject"`): the identity where the benchmark names it, the connected
# components of the mated comparisons on IJB-C, the pair on the `.bin` sets (`exfiqa.evaluation.subjects`
# explains what a unit resample means). Both scores are evaluated on the same resamples.
# `delta_pauc < 0` means the method is better than the last exit; the interval is the 95%
# percentile interval; `p_better` is the fraction of resamples in which the method wins; `unit`
# and `n_units` say what was resampled.

# %%
boot = fusion_bootstrap(study, head.fr_model, head.fmr, n_boot, unit=bootstrap_unit)
units_text = "; ".join(f"{d}: {n} {u}s" for d, u, n in boot[["dataset", "unit", "n_units"]].drop_duplicates().itertuples(index=False))
tables.save_table(boot, TAB, "fusion_bootstrap", caption=(
    f"Paired bootstrap ({n_boot} resamples of {units_text}), {LABELS[head.fr_model]}."),
                  protocol=table_protocol(cfg, head.fmr, seed=True), tex_drop=["unit", "n_units", "n_boot", "n_defined"])
display(Markdown(f"Resampled units: {units_text}."))
units = unit_summary(study)
tables.save_table(units, TAB, "bootstrap_units", caption=(
    "What the bootstrap resamples on each dataset; on the pair sets, the share of pairs with an image that "
    "also occurs in another pair (such pairs are not independent); no EDC protocol involved."))
display(units)
display(boot.round(4))
fig = plots.forest(boot, labels=plots.config_labels(cfg))
plots.save_figure(fig, FIG, "fusion_bootstrap")
display(fig)

# %% [markdown]
# ## The paper's findings, computed from this run
#
# Each finding the paper states, with the criterion used and a verdict: **agrees** / **differs**;
# **tie** where the verdict rests on methods with equal pAUC (every tied method is named);
# **not resolved** where the paired 95% intervals cannot decide it (a dataset counts as a win of
# FW over the last exit only if its interval lies below 0) or the change with depth is smaller
# than `min_depth_change` of exit 1's pAUC; **not computable in this run**. The comparisons a
# verdict rests on (FW against the last exit, the last exit against exit 1; headline FR model)
# have a row each, with the difference and its interval.

# %%
import pandas as pd

depth_boot = depth_bootstrap(study, head.fr_model, head.fmr, n_boot, unit=bootstrap_unit)
adience = next((s.label for s in cfg.datasets.values() if s.kind == "adience"), None)
findings = paper_findings(pauc_table, tags, head, adience=adience, paired=pd.concat([boot, depth_boot]),
                                   min_change=min_depth_change)
tables.save_table(findings, TAB, "paper_findings", protocol=table_protocol(cfg, head.fmr, seed=True),
                  tex_drop=["difference", "ci_low", "ci_high", "criterion"], caption=(
    f"The paper's findings, computed from this run; intervals: paired bootstrap ({n_boot} resamples of {units_text}), "
    f"{LABELS[head.fr_model]}."))
display(findings[["finding", "paper", "this_run", "verdict", "difference", "ci_low", "ci_high"]])

# %% [markdown]
# ## Further strategies, and learned weights that must transfer
#
# * **last-k**: uniform over the last third of the exits; **exp-depth**: `w_l ~ exp(0.3 l)`;
# * **z-score FW**: each exit standardised on the dataset before FW, since exits live on
#   different scales and plain averaging lets the widest exit dominate;
# * **learned**: weights chosen by random search for the lowest pAUC on one dataset
#   (`learn_on`), then applied unchanged to the others. On the training dataset this number is
#   optimistic by construction; the other datasets show whether it transfers.

# %%
strategies = strategy_table(study, head.fr_model, head.fmr, learn_on)
tables.save_table(strategies.wide, TAB, "fusion_strategies", caption=(
    f"{LABELS[head.fr_model]}; learned weights fitted on {cfg.datasets[learn_on].label}."),
    protocol=table_protocol(cfg, head.fmr, seed=True))
for q, w in strategies.learned.items():
    display(Markdown(f"({q}) learned weights (fitted on {cfg.datasets[learn_on].label}): " + ", ".join(f"{x:.2f}" for x in w)))
display(strategies.wide.round(3))

# %% [markdown]
# ## Exits chosen on data the method is not evaluated on (EX-FIQA-DC)
#
# A data-driven choice of exits beside the fixed rule of FW, after FROQ (IJCB 2025), which chooses
# the layers of an FR model so:
#
# * **pseudo-label**: each sample's (IJB-C: each template's) **mean mated similarity** under the
#   headline FR model, as evaluated;
# * **ranking**: each exit by the Spearman correlation of its scores with the pseudo-label;
# * **greedy**: exits are added in that order while the correlation of their plain mean with the
#   pseudo-label rises, stopping at the first exit that does not raise it; EX-FIQA-DC is the mean of
#   the chosen exits;
# * **calibration**: with `calibrate_on` empty, the exits for a dataset are chosen on all the
#   *other* datasets of the run (leave-one-dataset-out; the correlations are averaged over them,
#   each dataset counting once); otherwise on the named datasets, which are then not evaluated.
#
# The paired bootstrap evaluates DC, F, FW, the learned weights of the previous section and the
# last exit on the same resamples; `delta_pauc = pAUC(DC) - pAUC(reference)`, `< 0`: DC is better.
# The learned weights are fitted on `learn_on`, so there they are in-sample (`reference_fitted_here`).

# %%
single = len(cfg.datasets) < 2 and not calibrate_on  # leave-one-dataset-out needs a second dataset
if single:
    display(Markdown(f"**EX-FIQA-DC is skipped:** it chooses its exits on another dataset than the one it is evaluated "
                     f"on, and this run has only {list(cfg.datasets)}; add a dataset to the run (or name one in "
                     "`calibrate_on`) to evaluate it."))
else:
    dc = chosen_exits(study, head.fr_model, calibrate_on)
    tables.save_table(dc.selection, TAB, "chosen_exits", caption=(
        f"Exits chosen by EX-FIQA-DC for each evaluated dataset (pseudo-label: mean mated similarity, {LABELS[head.fr_model]}; "
        "Spearman correlations, no EDC protocol involved)."))
    display(dc.selection)
    dc_vs = chosen_exits_comparison(study, dc, head.fmr, n_boot, strategies.learned, learn_on,
                                            unit=bootstrap_unit)
    DC_PROTOCOL = table_protocol(cfg, head.fmr, seed=True)
    tables.save_table(dc_vs.wide, TAB, "chosen_exits_pauc", protocol=DC_PROTOCOL, caption=(
        f"EX-FIQA-DC against F, FW, learned weights (fitted on {cfg.datasets[learn_on].label}) and the last exit, {LABELS[head.fr_model]}."))
    display(dc_vs.wide.round(3))
    tables.save_table(dc_vs.bootstrap, TAB, "chosen_exits_bootstrap", protocol=DC_PROTOCOL,
                      tex_drop=["reference_fitted_here", "unit", "n_units", "n_boot", "n_defined"], caption=(
        f"Paired bootstrap ({n_boot} resamples of the datasets' {bootstrap_unit} units) of pAUC(EX-FIQA-DC) - "
        f"pAUC(reference), {LABELS[head.fr_model]}."))
    display(dc_vs.bootstrap[["quality_model", "dataset", "reference", "chosen_exits", "delta_pauc", "ci_low", "ci_high", "p_better"]].round(4))
    fig = plots.forest(dc_vs.bootstrap[dc_vs.bootstrap["reference"] == "EX-FIQA-FW"], reference="EX-FIQA-FW",
                      labels=plots.config_labels(cfg))
    plots.save_figure(fig, FIG, "chosen_exits_bootstrap")
    display(fig)
    for r in fusion_wins(dc_vs.tidy, "EX-FIQA-DC", "EX-FIQA-FW").itertuples():
        display(Markdown(f"* ({r.quality_model}, {LABELS.get(r.fr_model, r.fr_model)}): **{r.summary}** datasets."))

# %% [markdown]
# ## The comparison table in the poster's layout
#
# pAUC-EDC at the headline FMR for the headline FR model, datasets as columns, the headline
# dataset first (the poster shows IJB-C only). Rows: the other quality methods this run has
# (built-in baselines and any external CSV scores; SER-FIQ is this package's re-implementation and
# labelled so), plain ViT-FIQA (= last exit), the early exit the poster reports (where the model has
# it), the best early exit of each variant **chosen on the evaluated data** (lowest mean pAUC over these
# very datasets: optimistic, flagged in `chosen_on_evaluated_data`; the same rows as in
# `headline_vs_paper`) and EX-FIQA-FW. Lower is better.

# %%
labels = [s.label for s in cfg.datasets.values()]
order = [head.label] + [d for d in labels if d != head.label]
poster = poster_table(at_head[at_head["fr_model"] == head.fr_model], tags, order)
tables.save_table(poster, TAB, "comparison_table", caption=(
    f"pAUC-EDC, {LABELS[head.fr_model]}. Rows with chosen_on_evaluated_data are the best early exit chosen on the evaluated "
    "data (lowest mean over these datasets; optimistic); the poster's exits and FW are fixed in advance. "
    "SER-FIQ-style (re-impl.) is this package's re-implementation, not the authors' code."), protocol=HEAD,
    tex_drop=["selection"])
display(poster.round(3))
by_method = poster.set_index("method")
display(Markdown(
    f"Best on {head.label}: **{best_text(by_method[head.label])}** ({by_method[head.label].min():.3g}). "
    f"Best mean over datasets: **{best_text(by_method['mean'])}** (point estimates; tied methods are all "
    "named). The paper reports EX-FIQA-FW (T) best on IJB-C "
    "(6.36 x10^-3) and EX-FIQA-FW (C) best on Adience."
    + (" This run has no IJB-C headline: compare the ranking on its headline dataset, not the values." if stand_in else "")
))
