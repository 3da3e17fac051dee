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
config = "configs/demo.yaml"  # run config: datasets, FR models, quality checkpoints, paths
datasets = []  # subset of the datasets in the config; empty means all
fr_models = []  # subset of the FR models in the config; empty means all
quality_models = []  # subset of the ViT-FIQA checkpoints, T and C; empty means all
data_root = ""  # replaces data_root of the config; empty means keep
fmr_targets = [0.01, 0.001, 0.0001]  # FMR operating points
discard_limit = 0.3  # pAUC-EDC integrates discard fractions 0..discard_limit
convention = "recompute"  # recompute (the evaluation code of the paper) or fixed (Schlett et al.)
cost_fmr = 0.0001  # FMR of the pAUC-vs-GFLOPs figure (the poster uses 1e-4)
tolerance = 0.05  # operating points: relative pAUC slack allowed against the last exit
latency_batch = 8  # batch size of the latency measurement
latency_repeats = 2  # timed runs per exit (median reported)
latency_full_size = True  # also time the full-size released architecture (random weights)
reject_fraction = 0.2  # adaptive exit: share of images a quality gate would reject
margin = 0.5  # adaptive exit: stop when |running score - threshold| > margin * std(score)
min_exit = 3  # adaptive exit: earliest exit allowed to decide
device = "cpu"  # cpu, cuda or auto
batch_size = 128  # images per forward pass
seed = 0  # seed of the latency inputs
out_dir = ""  # figures and tables are written here; empty means results/RUN-adhoc

# %%
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from exfiqa import analysis, plots, tables
from exfiqa.config import ConfigError
from exfiqa.flops import exit_costs, fused_cost
from exfiqa.metrics import edc_many, pauc
from exfiqa.model import ViTFIQAConfig, build_vitfiqa
from exfiqa.paper import open_study

study = open_study(
    config, datasets, fr_models, quality_models, data_root=data_root, out_dir=out_dir,
    fmr_targets=fmr_targets, discard_limit=discard_limit, convention=convention,
    device=device, batch_size=batch_size, seed=seed,
)
cfg = study.config
if not any(np.isclose(cost_fmr, f) for f in cfg.fmr_targets):
    raise ConfigError(f"cost_fmr {cost_fmr} is not one of fmr_targets {list(cfg.fmr_targets)}")
if not 0 < reject_fraction < 1:
    raise ConfigError(f"reject_fraction must lie in (0, 1), got {reject_fraction}")
FIG, TAB = study.out_dir / "figures", study.out_dir / "tables"

# %% [markdown]
# ## GFLOPs per exit of the released models (analytic)
#
# The same count as the paper: patch embedding, then per block `3ND^2 + ND^2 + 2N^2D + 8ND^2`
# MACs, then the heads read by the exit. The table checks our numbers against the paper's.

# %%
released = []
for variant, tag in (("token", "T"), ("crfiqa", "C")):
    c = ViTFIQAConfig(variant=variant)
    for e in exit_costs(c):
        released.append({"model": f"ViT-FIQA ({tag}) released", "exit": e.exit, "gflops": e.gflops, "flop_saving": e.saving})
    released.append({"model": f"ViT-FIQA ({tag}) released", "exit": "all fused", "gflops": fused_cost(c), "flop_saving": 1 - fused_cost(c) / exit_costs(c)[-1].gflops})
released = pd.DataFrame(released)
tables.save_table(released, TAB, "gflops_released", caption="Analytic GFLOPs per exit of the released ViT-FIQA models (FLOPs = 2 x MACs)")
c7 = released[(released["model"] == "ViT-FIQA (C) released") & (released["exit"] == 7)]["gflops"].iloc[0]
c12 = released[(released["model"] == "ViT-FIQA (C) released") & (released["exit"] == 12)]["gflops"].iloc[0]
t6 = released[(released["model"] == "ViT-FIQA (T) released") & (released["exit"] == 6)]["flop_saving"].iloc[0]
display(Markdown(
    f"(C): exit 7 = **{c7:.2f}** GFLOPs, exit 12 = **{c12:.2f}** (saving {1 - c7 / c12:.0%}; paper: 6.75 vs 11.49, 41%). "
    f"(T): exit 6 saves **{t6:.0%}** (paper: 50%)."
))
display(released.pivot_table(index="exit", columns="model", values="gflops", sort=False).round(3))

# %% [markdown]
# ## Measured latency per exit on this machine
#
# Wall time per image of the truncated model (median of `latency_repeats` runs), for the run's models and,
# optionally, the full-size released architecture on random weights (speed does not depend on the
# weights). The ideal is linear in the exit index; the one-pass row is the cost of reading *all*
# exits at once (what fusion needs).

# %%
lat = []
models = {q: study.quality_model(q) for q in cfg.quality_models}
if latency_full_size:
    for variant, tag in (("token", "T"), ("crfiqa", "C")):
        models[f"{tag} full-size"] = build_vitfiqa(variant=variant)
for name, model in models.items():
    t = analysis.measure_latency(model, batch_size=latency_batch, repeats=latency_repeats, device=str(cfg.device), seed=cfg.seed)
    t.insert(0, "model", name)
    lat.append(t)
lat = pd.concat(lat, ignore_index=True)
lat["exit"] = lat["exit"].astype(str)
tables.save_table(lat, TAB, "latency_per_exit", caption=f"Measured ms per image, batch {latency_batch}, device {cfg.device} (machine-dependent)", float_format="%.3f")
display(lat.pivot_table(index="exit", columns="model", values="ms_per_image", sort=False).round(3))

# %% [markdown]
# ## pAUC against GFLOPs
#
# The poster's trade-off figure: pAUC-EDC of each exit against its cost, one line per dataset,
# with EX-FIQA-FW as a star at the cost of all exits. GFLOPs are those of the run's checkpoints.

# %%
pauc_table = analysis.pauc_all(study)
costs = []
for q, model in ((q, study.quality_model(q)) for q in cfg.quality_models):
    ct = analysis.cost_table(model)
    ct.insert(0, "quality_model", q)
    costs.append(ct)
costs = pd.concat(costs, ignore_index=True)
fr0 = next(iter(cfg.fr_models))
for q in cfg.quality_models:
    part = pauc_table[(pauc_table["quality_model"] == q) & (pauc_table["fr_model"] == fr0) & np.isclose(pauc_table["fmr"], cost_fmr)]
    merged = part.merge(costs[costs["quality_model"] == q][["method", "gflops"]], on="method")
    exits = merged[merged["method"].str.startswith("Exit ")]
    fw = merged[merged["method"] == "EX-FIQA-FW"]
    fig = plots.pauc_vs_gflops(exits, fw, title=f"pAUC-EDC vs GFLOPs, EX-FIQA ({q}), {fr0}, FMR={cost_fmr:.0e}")
    plots.save_figure(fig, FIG, f"pauc_vs_gflops_{q}")
    display(fig)

# %% [markdown]
# ## Operating points, derived from the data
#
# Mean pAUC over datasets and FR models (headline-free). *Max accuracy*: the lowest mean pAUC of
# any method. *Balanced*: the cheapest exit within `tolerance` of the last exit's mean pAUC.
# *Max efficiency*: the cheapest exit within twice that.

# %%
ops = analysis.operating_points(pauc_table[np.isclose(pauc_table["fmr"], cost_fmr)], costs, tolerance=tolerance)
tables.save_table(ops, TAB, "operating_points", caption=f"tolerance {tolerance:g}. " + tables.protocol_note(cfg.convention, cfg.discard_limit, cost_fmr))
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

# %%
rows = []
for q in cfg.quality_models:
    model = study.quality_model(q)
    cum_cost = analysis.adaptive_cost_curve(model.config, model.depth)
    for ds in cfg.datasets:
        scores = study.exit_scores(ds, q).astype(np.float64)
        full = scores @ (np.arange(1, model.depth + 1) / (model.depth * (model.depth + 1) / 2))
        thr = float(np.quantile(full, reject_fraction))
        res = analysis.adaptive_exit(scores, thr, margin * float(full.std()), min_exit, cum_cost)
        agree = float(np.mean((res.score > thr) == (full > thr)))
        sim = study.similarity(ds, fr0)
        mated = study.benchmark(ds).comparisons["mated"].to_numpy(bool)
        p_ad = pauc(edc_many(sim, mated, study.pair(ds, res.score), (cost_fmr,), cfg.convention)[cost_fmr], cfg.discard_limit)
        p_fw = pauc(edc_many(sim, mated, study.pair(ds, full), (cost_fmr,), cfg.convention)[cost_fmr], cfg.discard_limit)
        rows.append({"quality_model": q, "dataset": cfg.datasets[ds].label, "mean_exit": float(res.exit_used.mean()),
                     "compute_saving": 1 - res.mean_gflops / res.full_gflops, "gate_agreement": agree,
                     "pauc_adaptive": p_ad, "pauc_fw_all_exits": p_fw})
adaptive = pd.DataFrame(rows)
tables.save_table(adaptive, TAB, "adaptive_exit", caption=f"reject {reject_fraction:g}, margin {margin:g} std, min exit {min_exit}; {fr0}. " + tables.protocol_note(cfg.convention, cfg.discard_limit, cost_fmr))
display(adaptive.round(4))
for q, part in adaptive.groupby("quality_model", sort=False):
    display(Markdown(
        f"* ({q}): the adaptive gate stops at exit {part['mean_exit'].mean():.1f} on average, saving "
        f"{part['compute_saving'].mean():.0%} of the compute of reading all exits, and agrees with the full-depth "
        f"FW gate on {part['gate_agreement'].mean():.1%} of the images."
    ))
