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
# # 2. Attention across exits: what each depth looks at
#
# The poster's attention figure shows, for ViT-FIQA (T), the quality token's attention over the
# 12x12 patch grid (softmax row 0, averaged over heads, upsampled to the face) at exits 1..12, for
# four sample types (child, frontal, occlusion, pose) and the mean over a dataset (LFW). The paper
# reads it as: early blocks attend to local texture, middle blocks to facial parts, late blocks to
# identity-bearing regions. (C) has no quality token, so for (C) we show the mean attention each
# patch receives.
#
# Beyond the figure we measure, per block, the **entropy** of the attention over the patches
# (high = diffuse) and its **spatial spread** (attention-weighted RMS distance from the centroid,
# in patches), averaged over a bounded, seeded sample of the first dataset.
#
# **Which faces.** The config key `attention_samples` names the four sample types, each an image
# path (relative to `data_root`) or a sample of a configured dataset:
# `attention_samples: {child: faces/child.png, pose: {dataset: lfw, sample: 17}}`. Without it, a
# demo config uses the demo world's `samples/*.png`; real data shows the first sample of each of
# the first four datasets, labelled as such (not as sample types).

# %% tags=["parameters"]
config = "configs/demo.yaml"  # run config: datasets, FR models, quality checkpoints, protocol, paths
datasets = []  # subset of the datasets in the config; the first gives the dataset mean
quality_models = []  # subset of the ViT-FIQA checkpoints, T and C; empty means all
data_root = ""  # replaces data_root of the config; empty means keep
attention_samples = {}  # sample type to image path or {dataset, sample}; empty means the config's attention_samples
mean_images = 256  # at most this many images of the first dataset (seeded draw) give the mean map
attention_scale = "shared"  # colour scale of the panels: shared (one scale, flat maps look flat) or per-panel (min-max each)
device = None  # cpu, cuda, cuda:N or auto; None means the config's device
batch_size = None  # images per forward pass; None means the config's batch_size
seed = None  # seed of the image sampling for the mean map; None means the config's seed
out_dir = ""  # figures and tables are written here; empty means results/RUN-adhoc
titles = True  # figure titles (False for paper export: the caption says it)

# %%
# open the study: the config (and any parameter overrides), its run card
from IPython.display import Markdown, display

from exfiqa.report import plots, tables
from exfiqa.report.attention import (
    LOW_CONTRAST_ENTROPY,
    attention_inputs,
    attention_study,
    attention_unavailable,
)
from exfiqa.study import open_study

study = open_study(config, parameters=globals())  # the parameters above (or papermill's) override the config
cfg = study.config
plots.set_style(titles=titles)
LABELS = plots.config_labels(cfg)  # keys -> the config's labels (T -> ViT-FIQA (T))
FIG, TAB = study.out_dir / "figures", study.out_dir / "tables"
display(Markdown(study.card.banner()))
display(Markdown(study.card.markdown()))
no_attention = attention_unavailable(study)  # the maps run the models: checkpoints needed
if no_attention:
    display(Markdown(f"**The attention figure and statistics are skipped:** {no_attention}."))
else:
    inputs = attention_inputs(study, mean_images=mean_images)
    display(Markdown(f"Faces: {inputs.note}: " + "; ".join(f"{k} = `{v}`" for k, v in inputs.sources.items())
                     + f". Dataset mean over {len(inputs.mean_ids)} images of {inputs.mean_dataset} (seed {cfg.seed})."))

# %% [markdown]
# ## The attention figure
#
# Rows: sample types and the dataset mean; columns: exits (one page wide, a few inches tall). By default every panel shares one colour
# scale (in multiples of the uniform weight), so a map without contrast looks flat; with
# `attention_scale = "per-panel"` each panel is min-max scaled on its own, as on the poster, which
# shows *where* attention goes but stretches the noise of a near-uniform map into apparent structure.
# Panels whose attention is practically uniform (normalised entropy >= 0.99) are greyed out and
# labelled **flat**: there is nothing in them to interpret.

# %%
stats = []
for q in cfg.quality_models if not no_attention else ():
    maps, s = attention_study(study, q, inputs)
    fig = plots.attention_figure(maps, {**inputs.faces, f"{inputs.mean_dataset} (mean)": None}, scale=attention_scale)
    plots.add_title(fig, f"EX-FIQA ({q}): attention across exits")
    plots.save_figure(fig, FIG, f"attention_{q}")
    display(fig)
    stats.append(s)

# %% [markdown]
# ## Entropy and spatial spread per block
#
# Entropy is in nats; the uniform map over the patches has entropy `max_entropy`. A falling
# entropy with depth means attention concentrates on fewer patches; the spread tells whether those
# patches are close together (a facial part) or scattered (texture everywhere). Contrast:
# `normalised_entropy` (entropy / `max_entropy`, 1 = uniform), `max_min_ratio` (largest over smallest
# patch weight, 1 = uniform) and `low_contrast` (normalised entropy >= 0.99: practically uniform).

# %%
import pandas as pd  # noqa: E402

stats = pd.concat(stats, ignore_index=True) if stats else pd.DataFrame(columns=["quality_model", "entropy_mean"])
if not no_attention:
    tables.save_table(stats, TAB, "attention_statistics", caption=(
        f"Attention entropy, spread and contrast per exit, mean over {len(inputs.mean_ids)} images of {inputs.mean_dataset} "
        f"(seed {cfg.seed}; no EDC protocol involved); low_contrast: normalised entropy >= "
        f"{LOW_CONTRAST_ENTROPY:g}, practically uniform."))
    display(stats.round(3))
    fig = plots.attention_entropy_spread(stats, labels=LABELS)
    plots.save_figure(fig, FIG, "attention_entropy_spread")
    display(fig)
for q, part in stats.groupby("quality_model", sort=False):
    lo, hi = part.loc[part["entropy_mean"].idxmin()], part.loc[part["entropy_mean"].idxmax()]
    flat = [int(e) for e in part.loc[part["low_contrast"], "exit"]]
    readable = [int(e) for e in part.loc[~part["low_contrast"], "exit"]]
    display(Markdown(
        f"* ({q}): attention is most diffuse at exit {int(hi['exit'])} (entropy {hi['entropy_mean']:.3f} of "
        f"{hi['max_entropy']:.3f}) and most concentrated at exit {int(lo['exit'])} ({lo['entropy_mean']:.3f}). "
        + (f"Exits {', '.join(map(str, flat))} are practically uniform (normalised entropy >= "
           f"{LOW_CONTRAST_ENTROPY:g}): their panels carry no spatial pattern to interpret, and any "
           "structure a per-panel scaling shows there is noise. " if flat else "")
        + (f"The paper's reading (local texture early, facial parts in the middle, identity-bearing regions late) "
           f"can only be checked on the exits with contrast ({', '.join(map(str, readable))})."
           if readable else "No exit has enough contrast to check the paper's reading of the figure.")
    ))
