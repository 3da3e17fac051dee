"""Notebook 02, attention across exits: the per-exit attention maps of sample faces and of a
dataset mean, and their entropy, spatial spread and contrast."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from exfiqa.config import ATTENTION_SAMPLE_TYPES, ConfigError
from exfiqa.models.device import resolve_device
from exfiqa.models.vitfiqa import ViTFIQA, attention_grid, capture_attention, to_tensor
from exfiqa.readers import load_benchmark
from exfiqa.readers.images import read_face
from exfiqa.report.frames import study_models
from exfiqa.store.runcard import shown_path
from exfiqa.study import Study


def attention_maps(model: ViTFIQA, images: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Attention over the patch grid at every exit, heads averaged, each map summing to 1: (N, depth, g, g).
    (T): the quality token's attention row; (C): the mean attention each patch receives."""
    g = model.config.grid_size
    out = []
    model = model.to(device).eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            with capture_attention(model) as maps:
                model.forward_exits(to_tensor(images[i : i + batch_size]).to(device))
            if len(maps) != model.depth:
                raise RuntimeError(f"captured {len(maps)} attention maps for {model.depth} blocks")
            grids = torch.stack([attention_grid(m, model.config.variant, g) for m in maps], dim=1)
            grids = grids / grids.sum(dim=(2, 3), keepdim=True)
            out.append(grids.float().cpu().numpy())
    return np.concatenate(out)


#: Normalised entropy (entropy / log(patches)) at or above which a map is practically uniform.
LOW_CONTRAST_ENTROPY = 0.99


def _entropy(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps (..., g, g) flattened to float64 (..., g*g), and their entropies (nats)."""
    p = maps.reshape(*maps.shape[:-2], -1).astype(np.float64)
    return p, -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


def attention_contrast(maps: np.ndarray) -> np.ndarray:
    """Normalised entropy of each attention map (..., g, g): entropy / log(patches), 1 = uniform."""
    return np.asarray(_entropy(maps)[1] / np.log(maps.shape[-1] * maps.shape[-2]))


def attention_statistics(maps: np.ndarray) -> pd.DataFrame:
    """Per exit, mean and std over the N images of ``maps`` (N, depth, g, g): entropy (nats),
    spread (attention-weighted RMS distance of the patches from the centroid, in patches) and
    contrast: ``normalised_entropy`` (of the mean entropy), ``max_min_ratio`` (largest over smallest
    weight) and ``low_contrast`` (:data:`LOW_CONTRAST_ENTROPY`)."""
    g = maps.shape[-1]
    p, entropy = _entropy(maps)
    yy, xx = np.divmod(np.arange(g * g), g)
    cy, cx = (p * yy).sum(-1), (p * xx).sum(-1)
    spread = np.sqrt((p * ((yy - cy[..., None]) ** 2 + (xx - cx[..., None]) ** 2)).sum(-1))
    ratio = p.max(-1) / np.clip(p.min(-1), 1e-12, None)
    norm = entropy.mean(0) / np.log(g * g)
    return pd.DataFrame({
        "exit": np.arange(1, maps.shape[1] + 1), "entropy_mean": entropy.mean(0), "entropy_std": entropy.std(0),
        "spread_mean": spread.mean(0), "spread_std": spread.std(0), "max_entropy": np.log(g * g),
        "normalised_entropy": norm, "max_min_ratio": ratio.mean(0), "low_contrast": norm >= LOW_CONTRAST_ENTROPY,
    })


@dataclass(frozen=True)
class AttentionInputs:
    """The faces of the attention figure (label -> RGB uint8 face, and where it came from, never an
    absolute path), how they were chosen, and the dataset mean's dataset label, sorted ids and images."""

    faces: dict[str, np.ndarray]
    sources: dict[str, str]
    note: str
    mean_dataset: str
    mean_ids: np.ndarray
    mean_faces: np.ndarray


def attention_inputs(study: Study, samples: dict | None = None, mean_images: int = 256) -> AttentionInputs:
    """The sample faces and the dataset-mean sample of notebook 02. Faces: ``samples`` (parsed by
    :func:`exfiqa.config.parse_attention_samples`), else the config's ``attention_samples``, else the
    demo world's ``samples/<type>.png``, else the first sample of each of the first four datasets.
    The mean: ``min(mean_images, N)`` images of the first dataset, drawn with the run's seed."""
    cfg = study.config
    if isinstance(mean_images, bool) or not isinstance(mean_images, int) or mean_images < 1:
        raise ConfigError(f"parameter mean_images must be an integer >= 1, got {mean_images!r}")
    chosen = samples or cfg.attention_samples
    faces, sources = {}, {}
    if chosen:
        note = "sample types from attention_samples" + (" (given to attention_inputs)" if samples else "")
        for kind in [k for k in ATTENTION_SAMPLE_TYPES if k in chosen]:
            s = chosen[kind]
            if s.path is not None:
                if not s.path.is_file():
                    raise ConfigError(f"attention_samples.{kind}: {s.path} does not exist")
                faces[kind] = read_face(s.path)
            else:
                bench = study.benchmark(s.dataset.name) if s.dataset.name in cfg.datasets else load_benchmark(s.dataset.kind, **s.dataset.args)
                if s.sample >= len(bench):
                    raise ConfigError(f"attention_samples.{kind}: sample {s.sample} is out of range for {s.dataset.name} ({len(bench)} samples)")
                faces[kind] = bench.image(s.sample)
            sources[kind] = shown_path(s.path, cfg) if s.path is not None else s.describe()
    elif cfg.demo:
        note = "the demo world's sample types (samples/*.png)"
        for kind in ATTENTION_SAMPLE_TYPES:
            path = cfg.data_root / "samples" / f"{kind}.png"
            if not path.is_file():
                raise ConfigError(f"demo world: {path} does not exist (rebuild it with `make demo`)")
            faces[kind], sources[kind] = read_face(path), shown_path(path, cfg)  # no absolute path in the notebook
    else:
        note = ("attention_samples is not set in the config: showing the first sample of each of the first datasets "
                "instead of the poster's sample types (child, frontal, occlusion, pose)")
        for ds in list(cfg.datasets)[: len(ATTENTION_SAMPLE_TYPES)]:
            label = f"{cfg.datasets[ds].label} #0"
            faces[label], sources[label] = study.benchmark(ds).image(0), f"{ds} sample 0"
    ds0 = next(iter(cfg.datasets))
    bench = study.benchmark(ds0)
    ids = np.sort(np.random.default_rng(cfg.seed).choice(len(bench), size=min(mean_images, len(bench)), replace=False))
    mean_faces = np.stack([bench.image(int(i)) for i in ids])
    return AttentionInputs(faces, sources, note, cfg.datasets[ds0].label, ids, mean_faces)


def attention_unavailable(study: Study) -> str | None:
    """Why the attention figure cannot be drawn here (None: it can): it needs the quality models' checkpoints."""
    absent = [q for q in study.config.quality_models if not study.has_checkpoint("quality_models", q)]
    if absent:
        return (f"the attention maps run the ViT-FIQA models on face images; the checkpoints of {absent} are "
                "not here (the rest of the evaluation reads the per-sample arrays only)")
    return None


def attention_study(study: Study, quality: str, inputs: AttentionInputs) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Per-exit attention maps of ``quality`` for each face and the dataset mean (figure input),
    and :func:`attention_statistics` over the mean's images (with a ``quality_model`` column)."""
    cfg = study.config
    model = study_models(study).quality_model(quality)
    run = {"batch_size": cfg.batch_size, "device": str(resolve_device(cfg.device))}
    per_face = attention_maps(model, np.stack(list(inputs.faces.values())), **run)
    maps = {name: per_face[i] for i, name in enumerate(inputs.faces)}
    dataset_maps = attention_maps(model, inputs.mean_faces, **run)
    maps[f"{inputs.mean_dataset} (mean)"] = dataset_maps.mean(axis=0)
    stats = attention_statistics(dataset_maps)
    stats.insert(0, "quality_model", quality)
    return maps, stats
