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
# in patches), averaged over the dataset.

# %% tags=["parameters"]
config = "configs/demo.yaml"  # run config: datasets, FR models, quality checkpoints, paths
datasets = []  # subset of the datasets in the config; the first gives the dataset mean
fr_models = []  # (unused here; kept so every notebook takes the same parameters)
quality_models = []  # subset of the ViT-FIQA checkpoints, T and C; empty means all
data_root = ""  # replaces data_root of the config; empty means keep
sample_images = {}  # sample type to image path (child, frontal, occlusion, pose); empty means demo samples
mean_images = 256  # images of the first dataset averaged for the mean map
fmr_targets = [0.01, 0.001, 0.0001]  # (unused here)
discard_limit = 0.3  # (unused here)
convention = "recompute"  # (unused here)
device = "cpu"  # cpu, cuda or auto
batch_size = 128  # images per forward pass
seed = 0  # seed of the image sampling for the mean map
out_dir = ""  # figures and tables are written here; empty means results/RUN-adhoc

# %%
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from exfiqa import analysis, plots, tables
from exfiqa.config import ConfigError
from exfiqa.images import read_face
from exfiqa.paper import open_study

study = open_study(
    config, datasets, fr_models, quality_models, data_root=data_root, out_dir=out_dir,
    device=device, batch_size=batch_size, seed=seed,
)
cfg = study.config
FIG, TAB = study.out_dir / "figures", study.out_dir / "tables"
SAMPLE_TYPES = ("child", "frontal", "occlusion", "pose")
if not sample_images:
    sample_images = {t: str(cfg.data_root / "samples" / f"{t}.png") for t in SAMPLE_TYPES}
missing = {t: p for t, p in sample_images.items() if not Path(p).is_file()}
if missing:
    raise ConfigError(f"sample_images: files not found {missing}")
faces = {t: read_face(p) for t, p in sample_images.items()}
ds0 = next(iter(cfg.datasets))
bench = study.benchmark(ds0)
rng = np.random.default_rng(seed)
pick = np.sort(rng.choice(len(bench), size=min(mean_images, len(bench)), replace=False))
mean_faces = np.stack([bench.image(int(i)) for i in pick])
display(Markdown(f"Sample types: {list(faces)}; dataset mean over {len(pick)} images of {cfg.datasets[ds0].label}."))

# %% [markdown]
# ## The attention figure
#
# Columns: sample types and the dataset mean; rows: exits. Each panel is min-max scaled on its
# own, as on the poster, so the figure shows *where* attention goes, not how peaked it is (that is
# the entropy below).

# %%
stats = []
for q in cfg.quality_models:
    model = study.quality_model(q)
    per_type = analysis.attention_maps(model, np.stack(list(faces.values())), device=cfg.device)
    maps = {t: per_type[i] for i, t in enumerate(faces)}
    dataset_maps = analysis.attention_maps(model, mean_faces, batch_size=cfg.batch_size, device=cfg.device)
    maps[f"{cfg.datasets[ds0].label} (mean)"] = dataset_maps.mean(axis=0)
    images = {**faces, f"{cfg.datasets[ds0].label} (mean)": None}
    fig = plots.attention_figure(maps, images)
    fig.suptitle(f"EX-FIQA ({q}): attention across exits", y=1.02, fontsize=8)
    plots.save_figure(fig, FIG, f"attention_{q}")
    display(fig)
    s = analysis.attention_statistics(dataset_maps)
    s.insert(0, "quality_model", q)
    stats.append(s)

# %% [markdown]
# ## Entropy and spatial spread per block
#
# Entropy is in nats; the uniform map over the patches has entropy `max_entropy`. A falling
# entropy with depth means attention concentrates on fewer patches; the spread tells whether those
# patches are close together (a facial part) or scattered (texture everywhere).

# %%
stats = pd.concat(stats, ignore_index=True)
tables.save_table(stats, TAB, "attention_statistics", caption=f"Attention entropy and spread per exit, mean over {len(pick)} images of {cfg.datasets[ds0].label}")
display(stats.round(3))
import matplotlib.pyplot as plt  # noqa: E402

plots.set_style()
fig, axes = plt.subplots(1, 2, figsize=(7, 2.6))
for q, part in stats.groupby("quality_model", sort=False):
    axes[0].errorbar(part["exit"], part["entropy_mean"], yerr=part["entropy_std"], marker="o", ms=3, capsize=2, label=f"({q})")
    axes[1].errorbar(part["exit"], part["spread_mean"], yerr=part["spread_std"], marker="o", ms=3, capsize=2, label=f"({q})")
axes[0].axhline(stats["max_entropy"].iloc[0], color="grey", ls=":", lw=1, label="uniform")
axes[0].set(xlabel="exit", ylabel="entropy (nats)", title="attention entropy")
axes[1].set(xlabel="exit", ylabel="RMS distance (patches)", title="spatial spread")
axes[0].legend()
fig.tight_layout()
plots.save_figure(fig, FIG, "attention_entropy_spread")
display(fig)
for q, part in stats.groupby("quality_model", sort=False):
    lo, hi = part.loc[part["entropy_mean"].idxmin()], part.loc[part["entropy_mean"].idxmax()]
    display(Markdown(
        f"* ({q}): attention is most diffuse at exit {int(hi['exit'])} (entropy {hi['entropy_mean']:.2f} of "
        f"{hi['max_entropy']:.2f}) and most concentrated at exit {int(lo['exit'])} ({lo['entropy_mean']:.2f}). "
        "The paper describes a progression from local texture (early) over facial parts (middle) to "
        "identity-bearing regions (late); compare the rows of the figure above."
    ))
