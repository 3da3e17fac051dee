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
# # 4. Early exit: accuracy against compute
#
# Stopping at block *l* skips the remaining 12 - *l* blocks. The paper counts the cost
# analytically (FLOPs = 2 x MACs): for ViT-FIQA (C) exit 7 costs 6.75 GFLOPs against 11.49 for the
# full model (41% saved) with a pAUC close to exit 12; for (T) exit 6 saves 50%. It recommends
# exit 6 (T) for maximum efficiency, exit 7 (C) as the balanced choice and EX-FIQA-FW for maximum
# accuracy. Here we recompute the costs, **measure** latency per exit on the machine running this
# notebook, derive the operating points from the data, and try an **adaptive** early exit (stop
# as soon as the running fused score is confidently far from a decision threshold; beyond the paper).

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
cost_fmr = None  # FMR of the pAUC-vs-GFLOPs figure and operating points; None means the smallest target (1e-4 on the poster)
tolerance = 0.05  # operating points: relative pAUC slack allowed against the last exit
latency_batch = 8  # batch size of the latency measurement
latency_repeats = 5  # timed runs per row, after one warm-up (median and interquartile range reported)
latency_full_size = True  # also time the full-size released architecture (random weights)
reject_fraction = 0.2  # adaptive exit: share of images a quality gate would reject
margin = 0.5  # adaptive exit: stop when |running score - threshold| > margin * std(score)
min_exit = 3  # adaptive exit: earliest exit allowed to decide
runtime_images = 64  # measured runtime: faces of the first dataset timed in one batch
runtime_repeats = 3  # measured runtime: timed runs per row, after one warm-up (median reported)
device = None  # cpu, cuda, cuda:N or auto (the latency is measured there); None means the config's device
seed = None  # seed of the latency inputs; None means the config's seed
out_dir = ""  # figures and tables are written here; empty means results/RUN-adhoc
titles = True  # figure titles (False for paper export: the caption says it)

# %%
# open the study: the config (and any parameter overrides), its run card
from IPython.display import Markdown, display

from exfiqa.report import plots, runtime, tables
from exfiqa.report.early_exit import (
    adaptive_study,
    latency_table,
    model_architecture,
    operating_points,
    pauc_cost_points,
    released_claims,
    released_gflops,
    study_costs,
)
from exfiqa.report.frames import fmr_target, headline, pauc_all, table_protocol
from exfiqa.study import open_study

study = open_study(config, parameters=globals())  # the parameters above (or papermill's) override the config
cfg = study.config
plots.set_style(titles=titles)
LABELS = plots.config_labels(cfg)  # keys -> the config's labels (arcface -> ArcFace)
cost_fmr = fmr_target(cfg, cost_fmr, "cost_fmr")
head = headline(cfg)
COST = table_protocol(cfg, cost_fmr)
FIG, TAB = study.out_dir / "figures", study.out_dir / "tables"
display(Markdown(study.card.banner()))
display(Markdown(study.card.markdown()))

# %% [markdown]
# ## GFLOPs per exit of the released models (analytic)
#
# The same count as the paper: patch embedding, then per block `3ND^2 + ND^2 + 2N^2D + 8ND^2`
# MACs, then the heads read by the exit. The table checks our numbers against the paper's.

# %%
released = released_gflops()
tables.save_table(released, TAB, "gflops_released", caption=(
    "Analytic GFLOPs per exit of the released ViT-FIQA models (FLOPs = 2 x MACs; no EDC protocol involved)."))
claims = released_claims(released)
display(Markdown(
    f"(C): exit 7 = **{claims['c7_gflops']:.2f}** GFLOPs, exit 12 = **{claims['c12_gflops']:.2f}** (saving "
    f"{claims['c7_saving']:.0%}; paper: 6.75 vs 11.49, 41%). (T): exit 6 saves **{claims['t6_saving']:.0%}** (paper: 50%)."
))
display(released.pivot_table(index="exit", columns="model", values="gflops", sort=False).round(3))

# %% [markdown]
# ## Measured latency per exit on this machine
#
# Wall time per image of the truncated model, for the run's models and, optionally, the full-size
# released architecture on random weights (speed does not depend on the weights). Every row, each
# exit and the one-pass row alike, is one untimed warm-up and `latency_repeats` timed runs, each
# bracketed by a device synchronisation on a GPU; the table gives the median with the interquartile
# range (`ms_q25`..`ms_q75`) and min/max. A row whose range is wide is noise, not a property of the
# exit. The ideal is linear in the exit index; the one-pass row is the cost of reading *all* exits at
# once (what fusion needs).

# %%
lat = latency_table(study, latency_batch, latency_repeats, latency_full_size)
tables.save_table(lat, TAB, "latency_per_exit", caption=(
    f"Measured ms per image, batch {latency_batch}, device {cfg.device}: median of {latency_repeats} synchronised runs "
    "after a warm-up, with interquartile range and min/max, every row alike (machine-dependent; no EDC protocol involved)."))
display(lat.assign(median_iqr=[f"{m:.3f} ({a:.3f}-{b:.3f})" for m, a, b in zip(lat["ms_per_image"], lat["ms_q25"], lat["ms_q75"], strict=True)])
        .pivot_table(index="exit", columns="model", values="median_iqr", aggfunc="first", sort=False))

# %% [markdown]
# ## pAUC against GFLOPs
#
# The poster's trade-off figure: pAUC-EDC of each exit against its cost, one line per dataset,
# with EX-FIQA-FW as a star at the cost of all exits, the exit numbers on the top axis and the poster's
# call-out (exit 7 (C), exit 6 (T): the FLOP reduction against the last exit, computed from the costs).
# GFLOPs are those of the run's checkpoints.

# %%
pauc_table = pauc_all(study, scale=cfg.pauc_scale)
costs = study_costs(study)
display(Markdown("Architectures: " + "; ".join(f"({q}) {model_architecture(study, q)[1]}" for q in cfg.quality_models) + "."))
CALLOUT = {"T": 6, "C": 7}  # the poster's operating points: exit 6 (T) max efficiency, exit 7 (C) balanced
for q in cfg.quality_models:
    exits, fw = pauc_cost_points(pauc_table, costs, q, head.fr_model, cost_fmr)
    fig = plots.pauc_vs_gflops(
        exits, fw, title=f"EX-FIQA ({q}), {LABELS[head.fr_model]}, {plots.fmr_text(cost_fmr)}",
        scale=cfg.pauc_scale, callout_exit=CALLOUT.get(q), quality_label=f"({q})", datasets=[s.label for s in cfg.datasets.values()])
    plots.save_figure(fig, FIG, f"pauc_vs_gflops_{q}")
    display(fig)

# %% [markdown]
# ## Operating points, derived from the data
#
# Mean pAUC over datasets and FR models (headline-free). *Max accuracy*: the lowest mean pAUC of
# any method. *Balanced*: the cheapest exit within `tolerance` of the last exit's mean pAUC.
# *Max efficiency*: the cheapest exit within twice that.

# %%
ops = operating_points(pauc_table[pauc_table["fmr"] == cost_fmr], costs, tolerance=tolerance)
tables.save_table(ops, TAB, "operating_points", caption=f"Tolerance {tolerance:g}.", protocol=COST)
display(ops.round(4))
display(Markdown("Paper: max efficiency = exit 6 (T), 50% FLOP saving; balanced = exit 7 (C), 41% saving; max accuracy = EX-FIQA-FW."))

# %% [markdown]
# ## Adaptive early exit (beyond the paper)
#
# A quality gate rejects the worst `reject_fraction` of images. Instead of always running every
# block, evaluate exits one after another and stop as soon as the running depth-weighted score is
# more than `margin` standard deviations away from the gate's threshold (not before `min_exit`).
# Cost counts the blocks run plus a head at every exit visited. We report the compute saved, how
# often the gate decides as the full-depth FW score would, and the pAUC of the adaptive score.
# Agreement needs a yardstick: the trivial gates that read no exit at all, *accept every image*
# (agreeing with the full-depth gate on the `1 - reject_fraction` it accepts) and *reject every
# image*, stand beside it; an adaptive gate that does not beat both adds nothing to the decision.

# %%
adaptive = adaptive_study(study, head.fr_model, cost_fmr, reject_fraction, margin, min_exit)
tables.save_table(adaptive, TAB, "adaptive_exit", caption=(
    f"Reject {reject_fraction:g}, margin {margin:g} std, min exit {min_exit}; {LABELS[head.fr_model]}."), protocol=COST)
display(adaptive.round(4))
for q, part in adaptive.groupby("quality_model", sort=False):
    trivial = max(part["agreement_accept_all"].mean(), part["agreement_reject_all"].mean())
    beats = int(part["beats_trivial_gates"].sum())
    display(Markdown(
        f"* ({q}): the adaptive gate stops at exit {part['mean_exit'].mean():.1f} on average, saving "
        f"{part['compute_saving'].mean():.0%} of the compute of reading all exits, and agrees with the full-depth "
        f"FW gate on {part['gate_agreement'].mean():.1%} of the images; accepting every image agrees on "
        f"{part['agreement_accept_all'].mean():.1%}, rejecting every image on {part['agreement_reject_all'].mean():.1%}. "
        + (f"**The adaptive gate does not beat the better trivial gate** ({trivial:.1%}); it beats both on {beats} of "
           f"{len(part)} datasets." if part["gate_agreement"].mean() <= trivial else
           f"It beats the better trivial gate ({trivial:.1%}) on average, and both trivial gates on {beats} of {len(part)} datasets.")
    ))

# %% [markdown]
# ## Early exit measured: fixed and adaptive exit at run time
#
# Everything above counts FLOPs; here the model really stops. The full pass, the exits the operating
# points pick (blocks 1..k only) and the adaptive runtime (`exfiqa score --adaptive`: faces leave the
# batch as soon as their running FW score is `margin` standard deviations from the gate's threshold,
# the rest go on in a compacted batch) are timed on the first `runtime_images` faces of the first
# dataset with the run's quality models, on the run's device. `measured_speedup` (full-pass time /
# time) stands beside `ideal_speedup` = 1 / (1 - `flop_saving`), the analytic prediction;
# `same_exit_as_simulation` is the share of the timed faces that stop where the simulation above says.

# %%
runtime_ds = next(iter(cfg.datasets))
measured = runtime.runtime_table(study, ops, runtime_ds, reject_fraction, margin, min_exit, runtime_images, runtime_repeats)
tables.save_table(measured, TAB, "runtime_early_exit", caption=(
    f"Measured ms per image of the full pass, the operating points' exits and the adaptive runtime (reject "
    f"{reject_fraction:g}, margin {margin:g} std, min exit {min_exit}) on {runtime_images} faces of "
    f"{cfg.datasets[runtime_ds].label}, device {cfg.device}, median of {runtime_repeats} runs after a warm-up, beside "
    "the analytic FLOP saving (machine-dependent; the protocol is the one that picked the exits)."), protocol=COST)
display(measured.round(3))
