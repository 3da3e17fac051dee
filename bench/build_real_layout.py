"""Build a small folder laid out exactly like the real study: benchmarks and full-size checkpoints.

``make paper CONFIG=configs/paper.yaml`` needs the real benchmarks and released checkpoints, which
cannot be downloaded here. This script writes a stand-in with the same on-disk layout, small enough
for a CPU, so that the real configuration's code paths (readers, alignment, checkpoint layouts,
full-size models, the config's protocol) can be run end to end:

- every path is the one ``configs/paper.yaml`` names under its ``data_root`` (and
  ``data/README.md`` documents): five verification ``.bin`` files, XQLFW aligned images + pairs
  file, Adience ``aligned_by_subject/<user_id>_<face_id>/`` folders, IJB-C ``loose_crop/`` + the
  three ``meta/`` files; all written by the package's own writers and checked by its readers;
- faces are SynthFace renders (:mod:`exfiqa.demo.synth`): mated pairs are two renders of one identity,
  each benchmark has its own disjoint identities; IJB-C crops are unaligned loose crops of varying
  (non-square) size with their 5 landmarks, aligned by the real reader;
- checkpoints are FULL-SIZE and RANDOM-WEIGHT, in the released key layouts and file names:
  iResNet-100 (arcface_torch plain layout) for ArcFace and ElasticFace, MagFace's
  ``{"state_dict": {"features.module." + key}}``, face.evoLVe IR-101 for CurricularFace, and the
  released ViT-FIQA (T)/(C) state_dicts (``qs_token`` naming, no exfiqa head-count entry: the
  loader's default of 8 heads applies, as for the real files);
- ``<out>/paper-mini.yaml``: ``configs/paper.yaml`` with only ``data_root``, ``run_name``,
  ``cache_dir``, ``results_dir`` and ``device`` changed, so the protocol is the paper's.

The FR models' BatchNorm running statistics are set from one batch of rendered faces (weights stay
random): with the init statistics (mean 0, variance 1) the 49-block residual stream of a random
iResNet-100 grows to embeddings of norm ~3e11 (fp16 would overflow, MagFace's norm quality would be
meaningless); calibrated, the embedding norm is ~sqrt(512), like a trained model's.
``--no-bn-calibration`` keeps the init statistics.

Everything is seeded: the same arguments give byte-identical files (``manifest.json`` lists their
SHA-256). The folder is marked as this script's (``.exfiqa-real-layout``); a non-empty folder
without the marker is never written into. A second run with the same settings returns at once
(only the config is rewritten from the current ``configs/paper.yaml``); ``--force`` rebuilds.

Usage (from the repository root)::

    python bench/build_real_layout.py [--out data/real-mini] [--images-per-benchmark 24] [--force]
    make paper CONFIG=data/real-mini/paper-mini.yaml

The script prints what it wrote, how long each step took and an estimate of the ``make paper``
time on this machine, from one measured forward pass of each full-size model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import exfiqa.readers as ds
from exfiqa.demo.synth import WorldSpec, generate_items
from exfiqa.io import atomic_path, atomic_write, file_digest

REPO = Path(__file__).resolve().parents[1]
BUILD_VERSION = "1"
MARKER = ".exfiqa-real-layout"
MANIFEST = "manifest.json"
CONFIG_NAME = "paper-mini.yaml"
RUN_NAME = "paper-mini"
#: The only keys of configs/paper.yaml this script changes; every other key is copied as is.
CHANGED_KEYS = ("run_name", "data_root", "cache_dir", "results_dir", "device")

#: Quality-model entry name -> ViT-FIQA variant (configs/paper.yaml: T = token, C = CR-FIQA head).
QUALITY_VARIANTS = {"T": "token", "C": "crfiqa"}
#: FR model name -> checkpoint layout of its release (exfiqa.models.fr.save_fr ``layout``).
FR_LAYOUTS = {"arcface": "plain", "elasticface": "plain", "magface": "magface", "curricularface": "plain"}
#: --small-models architectures (test speed only; same key names as the full-size models).
SMALL_FR = {"layers": (1, 2, 1, 1), "widths": (8, 16, 24, 32), "embedding_size": 32}
SMALL_VIT = {"embed_dim": 64, "feature_dim": 32}  # 12 blocks, patch 9, 8 heads of 8

# SynthFace recipes (WorldSpec overrides) of the benchmarks' two pair sides.
_CLEAN = {"degradation_prob": 0.25, "severity_range": (0.05, 0.6),
          "kinds": ("gaussian_blur", "jpeg", "gaussian_noise", "underexposure", "overexposure")}
_MIXED = {"degradation_prob": 0.5}
_FRONTAL = {"degradation_prob": 0.0}
_POSE = {"degradation_prob": 1.0, "second_degradation_prob": 0.0, "kinds": ("pose",), "severity_range": (0.3, 1.0)}
_HARD = {"degradation_prob": 0.6, "second_degradation_prob": 0.3, "severity_range": (0.2, 1.0)}
BIN_RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lfw": (_CLEAN, _CLEAN),
    "agedb_30": (_MIXED, _MIXED),
    "cfp_fp": (_FRONTAL, _POSE),  # frontal vs profile
    "calfw": (_MIXED, _MIXED),
    "cplfw": (_CLEAN, _POSE),  # cross-pose
}
IMAGES_PER_IDENTITY = 64  # image-index space per identity (indices are never reused)

# Cost model of `make paper` beyond per-image inference (the notebooks' defaults when written).
NOTEBOOKS = 4
NOTEBOOK_START_S = 20.0  # kernel start, imports, opening the study, per notebook
ATTENTION_IMAGES = 256  # 02: mean_images (capped at the first dataset's size), + 4 samples
LATENCY_BATCH, LATENCY_REPEATS = 8, 5  # 04: latency_batch, latency_repeats (timed runs per row, after a warm-up)
SERFIQ_PASSES_COST = 0.05  # 20 dropout passes of the FR head, relative to one backbone forward


@dataclass(frozen=True)
class LayoutSpec:
    """What the folder holds; equal specs give byte-identical files.

    24 images per benchmark (192 in all): measured on this 2-core AMD EPYC (2026-12), one image
    costs about 1.9 s of `make paper` with the cores to itself (four full-size FR models with flip,
    the two baselines' passes, two ViT-FIQA passes), so about 8-10 min in all; other jobs sharing
    the machine stretch that (33 min at load average 7.6). 60 would take about 17 min alone.
    """

    seed: int = 0
    images_per_benchmark: int = 24
    small_models: bool = False
    bn_calibration: bool = True
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        n = self.images_per_benchmark
        if n < 4 or n % 2:
            raise ValueError(f"--images-per-benchmark must be an even number >= 4, got {n}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")

    def key(self) -> str:
        blob = json.dumps({"v": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- config


class _Loader(yaml.SafeLoader):
    """Safe YAML reading floats as YAML 1.2 (and exfiqa.config) does: ``1e-3`` is a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_paper_config(path: Path) -> dict[str, Any]:
    """The source config's top-level mapping (``configs/paper.yaml``)."""
    raw = yaml.load(path.read_text(), Loader=_Loader)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the top level must be a mapping of settings")
    for key in ("datasets", "fr_models", "quality_models"):
        if not isinstance(raw.get(key), dict) or not raw[key]:
            raise ValueError(f"{path}: needs a non-empty {key!r} mapping")
    return raw


def _config_path_text(path: Path) -> str:
    """A path as the config writes it: relative to the repository root when inside it (``make``
    runs there and exfiqa.config resolves relative paths against the working folder), else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def mini_config(paper: dict[str, Any], out: Path, results_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """``paper`` with only :data:`CHANGED_KEYS` replaced (insertion order kept)."""
    raw = dict(paper)
    raw.update(
        run_name=RUN_NAME,
        data_root=_config_path_text(out),
        cache_dir=_config_path_text(cache_dir),
        results_dir=_config_path_text(results_dir),
        device="cpu",
    )
    return raw


def write_config(paper_path: Path, out: Path, results_dir: Path, cache_dir: Path, small: bool = False) -> Path:
    """Write ``<out>/paper-mini.yaml`` atomically and return its path."""
    raw = mini_config(read_paper_config(paper_path), out, results_dir, cache_dir)
    models = "SMALL (test-only)" if small else "full-size"
    relative = not Path(raw["data_root"]).is_absolute()
    header = (
        f"# Written by bench/build_real_layout.py from {_config_path_text(paper_path)} for a small\n"
        f"# real-layout folder (SynthFace faces, {models} random-weight checkpoints). Only\n"
        f"# {', '.join(CHANGED_KEYS)} differ from the source: the protocol is the paper's.\n"
        "# device: cpu because the machine this was built on has no GPU (cuda on a GPU box).\n"
        + ("# Relative paths are relative to the repository root; run from there:\n" if relative else "# Run:\n")
        + f"#   make paper CONFIG={_config_path_text(out / CONFIG_NAME)}\n"
    )
    body = yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)
    target = out / CONFIG_NAME
    with atomic_write(target, overwrite=True) as fh:
        fh.write(header + body)
    return target


def _under(root: Path, rel: str, where: str) -> Path:
    """``root / rel``, refusing paths that leave ``root`` (absolute, ``..``)."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: {rel!r} is not a path inside data_root; cannot lay it out under {root}")
    return target


# ----------------------------------------------------------------------------- rendering


@dataclass
class Rendered:
    """Rendered faces of one benchmark side: images, landmarks and the (identity, image) items."""

    images: list[np.ndarray]
    landmarks: np.ndarray
    items: np.ndarray  # (N, 2) identity, image index


def _render(seed: int, recipe: dict[str, Any], items: np.ndarray, loose: int | None = None) -> Rendered:
    world = WorldSpec(seed=seed, n_identities=1, images_per_identity=1, **recipe)
    b = generate_items(world, items[:, 0], items[:, 1], loose_size=loose)
    return Rendered(list(b.images), b.landmarks.astype(np.float64), items)


class _Identities:
    """Hands out disjoint identity blocks (one per benchmark) and fresh image indices per identity."""

    def __init__(self) -> None:
        self.next_id = 0
        self.used: dict[int, int] = {}

    def block(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + n)
        self.next_id += n
        return ids

    def image(self, identity: int) -> int:
        k = self.used.get(identity, 0)
        if k >= IMAGES_PER_IDENTITY:
            raise ValueError(f"identity {identity}: more than {IMAGES_PER_IDENTITY} images asked")
        self.used[identity] = k + 1
        return k


def _split(total: int, parts: int, rng: np.random.Generator, minimum: int) -> list[int]:
    """``total`` as ``parts`` random sizes, each >= ``minimum``."""
    base = [minimum] * parts
    extra = rng.multinomial(total - minimum * parts, np.full(parts, 1.0 / parts))
    return [b + int(e) for b, e in zip(base, extra, strict=True)]


def _bin_labels(n_pairs: int) -> np.ndarray:
    """insightface fold order: each fold holds its mated pairs, then its non-mated pairs."""
    folds = math.gcd(10, n_pairs // 2) if n_pairs >= 2 else 1
    per = n_pairs // folds
    one = np.r_[np.ones(per // 2, bool), np.zeros(per - per // 2, bool)]
    return np.tile(one, folds)


def build_bin(
    path: Path, name: str, n_images: int, spec: LayoutSpec, idents: _Identities, rng: np.random.Generator
) -> dict[str, Any]:
    """A verification ``.bin``: ``n_images / 2`` pairs, half mated, fold-ordered like insightface."""
    labels = _bin_labels(n_images // 2)
    ids = idents.block(max(2, len(labels) // 2 + 1))
    first, second = [], []
    for mated in labels:
        if mated:
            k = int(rng.choice(ids))
            first.append((k, idents.image(k)))
            second.append((k, idents.image(k)))
        else:
            a, b = (int(v) for v in rng.choice(ids, 2, replace=False))
            first.append((a, idents.image(a)))
            second.append((b, idents.image(b)))
    side_a, side_b = BIN_RECIPES.get(name, (_MIXED, _MIXED))
    ra = _render(spec.seed, side_a, np.array(first))
    rb = _render(spec.seed, side_b, np.array(second))
    images = [im for pair in zip(ra.images, rb.images, strict=True) for im in pair]
    items = np.stack([ra.items, rb.items], 1).reshape(-1, 2)
    ds.write_bin(path, images, labels, fmt="jpeg", quality=spec.jpeg_quality)
    return {"kind": "bin", "samples": len(images), "comparisons": len(labels), "mated": int(labels.sum()),
            "items": items.tolist()}


def _lfw_name(k: int) -> str:
    return f"Synth_Face_{k:05d}"


def build_xqlfw(
    root: Path, pairs_file: Path, n_images: int, spec: LayoutSpec, idents: _Identities, rng: np.random.Generator
) -> dict[str, Any]:
    """XQLFW: identities of >= 2 images; every mated pair among them and as many non-mated pairs."""
    n_ids = max(2, n_images // 4)
    sizes = _split(n_images, n_ids, rng, 2)
    ids = idents.block(n_ids)
    items = np.array([(int(k), idents.image(int(k))) for k, m in zip(ids, sizes, strict=True) for _ in range(m)])
    r = _render(spec.seed, _HARD, items)
    by_name: dict[str, list[np.ndarray]] = {}
    refs: list[tuple[str, int]] = []  # per rendered image: (name, 1-based index)
    for (k, _), im in zip(items, r.images, strict=True):
        by_name.setdefault(_lfw_name(int(k)), []).append(im)
        refs.append((_lfw_name(int(k)), len(by_name[_lfw_name(int(k))])))
    mated = [(n1, i1, i2) for a, (n1, i1) in enumerate(refs) for (n2, i2) in refs[a + 1 :] if n1 == n2]
    cross = [(n1, i1, n2, i2) for a, (n1, i1) in enumerate(refs) for (n2, i2) in refs[a + 1 :] if n1 != n2]
    pick = np.sort(rng.choice(len(cross), size=min(len(mated), len(cross)), replace=False))
    pairs: list[tuple[Any, ...]] = [*mated, *(cross[i] for i in pick)]
    order = rng.permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    ds.write_xqlfw(root, pairs_file, by_name, pairs, fmt="jpeg", quality=spec.jpeg_quality)
    # the reader's sample order: sorted by (name, index)
    sample_order = sorted(range(len(refs)), key=lambda j: refs[j])
    return {"kind": "xqlfw", "samples": len(refs), "comparisons": len(pairs), "mated": len(mated),
            "items": items[sample_order].tolist()}


def _adience_subject(k: int) -> str:
    """``<user_id>_<face_id>`` like the real Adience; two subjects share each user's album."""
    return f"{10_000_000 + 7919 * (k // 2)}@N0{(k // 2) % 9}_{100 + k}"


def build_adience(root: Path, n_images: int, spec: LayoutSpec, idents: _Identities, rng: np.random.Generator) -> dict[str, Any]:
    """Adience: subjects of >= 2 images in ``<user_id>_<face_id>/`` folders; all-vs-all pairs."""
    n_subj = max(2, n_images // 4)
    sizes = _split(n_images, n_subj, rng, 2)
    ids = idents.block(n_subj)
    items = np.array([(int(k), idents.image(int(k))) for k, m in zip(ids, sizes, strict=True) for _ in range(m)])
    r = _render(spec.seed, _MIXED, items)
    subject = [_adience_subject(int(k) - int(ids[0])) for k, _ in items]
    by_subject: dict[str, list[np.ndarray]] = {}
    for s, im in zip(subject, r.images, strict=True):
        by_subject.setdefault(s, []).append(im)
    ds.write_identity_folders(root, by_subject, fmt="jpeg", quality=spec.jpeg_quality)
    # the reader's sample order: folders by name, then files by name (0000.jpg, ...: write order)
    order = sorted(range(len(items)), key=lambda j: (subject[j], j))
    mated = sum(m * (m - 1) // 2 for m in sizes)
    return {"kind": "adience", "samples": n_images, "comparisons": n_images * (n_images - 1) // 2,
            "mated": mated, "items": items[order].tolist()}


LOOSE_SIZES = (150, 180, 224)  # rendered loose-crop sides; each crop is then padded to a rectangle


def build_ijbc(root: Path, n_images: int, spec: LayoutSpec, idents: _Identities, rng: np.random.Generator) -> dict[str, Any]:
    """IJB-C 1:1: loose crops (varying, non-square sizes) with 5 landmarks, templates of 1+ images
    from 1-3 media, non-consecutive template ids, every template pair compared."""
    n_ids = max(2, n_images // 6)
    sizes = _split(n_images, n_ids, rng, 2)
    ids = idents.block(n_ids)
    rows = []  # (identity, image index, template id, media id)
    tid, media = 0, 10_000
    tmpl_ident: dict[int, int] = {}
    for k, m in zip(ids, sizes, strict=True):
        n_t = int(rng.integers(2, max(2, m // 2) + 1))
        for t_size in _split(m, n_t, rng, 1):
            tid += int(rng.integers(1, 4))
            tmpl_ident[tid] = int(k)
            n_media = int(rng.integers(1, min(3, t_size) + 1))
            for j in range(t_size):
                rows.append((int(k), idents.image(int(k)), tid, media + j % n_media))
            media += n_media
    items = np.array([r[:2] for r in rows])
    side = rng.choice(LOOSE_SIZES, len(rows))
    crops: list[np.ndarray] = [np.empty(0)] * len(rows)
    lmk = np.zeros((len(rows), 5, 2))
    for size in LOOSE_SIZES:
        sel = np.flatnonzero(side == size)
        if len(sel):
            r = _render(spec.seed, _MIXED, items[sel], loose=int(size))
            for j, im, pts in zip(sel, r.images, r.landmarks, strict=True):
                pad = ((0, int(rng.integers(0, 41))), (0, int(rng.integers(0, 41))), (0, 0))
                crops[j] = np.pad(im, pad, mode="edge")  # right/bottom: landmarks unchanged
                lmk[j] = np.round(pts, 4)  # 4 decimals, as insightface's 5pts file
    t_all = sorted(tmpl_ident)
    tpairs = [(a, b) for i, a in enumerate(t_all) for b in t_all[i + 1 :]]
    labels = [int(tmpl_ident[a] == tmpl_ident[b]) for a, b in tpairs]
    det = np.round(rng.uniform(0.6, 1.0, len(rows)), 6)
    ds.write_ijbc(root, crops, lmk, [r[2] for r in rows], [r[3] for r in rows], tpairs, labels,
                  fmt="jpeg", quality=spec.jpeg_quality, det_scores=det)
    return {"kind": "ijbc", "samples": len(rows), "templates": len(t_all), "comparisons": len(tpairs),
            "mated": int(sum(labels)), "items": items.tolist()}


def build_benchmarks(paper: dict[str, Any], out: Path, spec: LayoutSpec, log: Callable[[str], None]) -> dict[str, Any]:
    """Every dataset of the config, at the path the config gives, in its kind's real format."""
    idents = _Identities()
    info: dict[str, Any] = {}
    for name, entry in paper["datasets"].items():
        where = f"datasets.{name}"
        rng = np.random.default_rng([spec.seed, zlib.crc32(name.encode())])
        n = spec.images_per_benchmark
        t0 = time.perf_counter()
        kind = entry.get("kind")
        if kind == "bin":
            info[name] = build_bin(_under(out, entry["path"], where), name, n, spec, idents, rng)
        elif kind == "xqlfw":
            info[name] = build_xqlfw(_under(out, entry["root"], where), _under(out, entry["pairs_file"], where),
                                     n, spec, idents, rng)
        elif kind == "adience":
            info[name] = build_adience(_under(out, entry["root"], where), n, spec, idents, rng)
        elif kind == "ijbc":
            info[name] = build_ijbc(_under(out, entry["root"], where), n, spec, idents, rng)
        else:
            raise ValueError(f"{where}: kind {kind!r} is not one of {list(ds.BENCHMARK_KINDS)}")
        i = info[name]
        extra = f", {i['templates']} templates" if "templates" in i else ""
        log(f"  {name:<9} {kind:<8} {i['samples']:>4} images{extra}, {i['comparisons']} comparisons "
            f"({i['mated']} mated)  [{time.perf_counter() - t0:.1f} s]")
    return info


# ----------------------------------------------------------------------------- checkpoints


def _calibrate_bn(model: Any, batch: np.ndarray) -> None:
    """Set every BatchNorm's running statistics to those of one forward pass over ``batch``
    (cumulative average over a single batch = that batch's mean and unbiased variance)."""
    import torch

    bb = model.backbone
    norms = [m for m in bb.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    bb.train()
    with torch.no_grad():
        bb(model.to_tensor(batch))
    bb.eval()
    for m, mom in zip(norms, saved, strict=True):
        m.momentum = mom


CALIBRATION_IMAGES = 16


def calibration_faces(seed: int) -> np.ndarray:
    """The clean rendered faces (identities 10^6.., used by no benchmark) whose batch statistics
    become the FR models' BatchNorm running statistics."""
    items = np.stack([np.arange(10**6, 10**6 + CALIBRATION_IMAGES), np.zeros(CALIBRATION_IMAGES, np.int64)], 1)
    return np.stack(_render(seed, _FRONTAL, items).images)


def _seed(spec: LayoutSpec, name: str) -> int:
    return spec.seed * 1_000_003 + zlib.crc32(name.encode())


def build_checkpoints(
    paper: dict[str, Any], out: Path, spec: LayoutSpec, calib: np.ndarray, log: Callable[[str], None]
) -> dict[str, Any]:
    """Random-weight FR and ViT-FIQA checkpoints in the released layouts, at the config's paths."""
    import torch

    from exfiqa.models import fr as frmod
    from exfiqa.models.vitfiqa import build_vitfiqa, released_state_dict

    def num_parameters(net: torch.nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())

    info: dict[str, Any] = {}
    for name, entry in paper["fr_models"].items():
        if name not in frmod.FR_MODELS or name not in FR_LAYOUTS:
            raise ValueError(f"fr_models.{name}: no released layout known for {name!r} (known: {sorted(FR_LAYOUTS)})")
        t0 = time.perf_counter()
        arch, pre = frmod.FR_MODELS[name]
        torch.manual_seed(_seed(spec, name))
        net = frmod.build_fr(arch, **(SMALL_FR if spec.small_models else {}))
        model = frmod.FRModel(name, net, pre, device="cpu", arch=arch)
        if spec.bn_calibration:
            _calibrate_bn(model, calib)
        path = _under(out, entry["checkpoint"], f"fr_models.{name}")
        frmod.save_fr(model, path, layout=FR_LAYOUTS[name])
        info[name] = {"path": str(path.relative_to(out)), "arch": arch, "layout": FR_LAYOUTS[name],
                      "parameters": num_parameters(net)}
        log(f"  {name:<15} {arch:<15} {FR_LAYOUTS[name]:<8} {num_parameters(net) / 1e6:6.1f}M params  "
            f"{path.stat().st_size / 2**20:7.1f} MiB  [{time.perf_counter() - t0:.1f} s]")
    for name, entry in paper["quality_models"].items():
        if name not in QUALITY_VARIANTS:
            raise ValueError(f"quality_models.{name}: unknown ViT-FIQA variant for {name!r} (known: {sorted(QUALITY_VARIANTS)})")
        t0 = time.perf_counter()
        heads = int(entry.get("num_heads", 8))
        torch.manual_seed(_seed(spec, name))
        vit = build_vitfiqa(variant=QUALITY_VARIANTS[name], num_heads=heads, **(SMALL_VIT if spec.small_models else {}))
        path = _under(out, entry["checkpoint"], f"quality_models.{name}")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: no temp name in the archive
            torch.save(released_state_dict(vit), fh)
        info[name] = {"path": str(path.relative_to(out)), "variant": QUALITY_VARIANTS[name], "num_heads": heads,
                      "parameters": num_parameters(vit)}
        log(f"  {name:<15} vitfiqa-{QUALITY_VARIANTS[name]:<7} released {num_parameters(vit) / 1e6:6.1f}M params  "
            f"{path.stat().st_size / 2**20:7.1f} MiB  [{time.perf_counter() - t0:.1f} s]")
    return info


# ----------------------------------------------------------------------------- checks and estimate


def verify(config_path: Path, bench_info: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Open everything through the package as ``make paper`` will: the config (and its paths),
    each benchmark (counts as built, every image decoded) and each checkpoint. Returns the config,
    the benchmarks and the loaded models."""
    from exfiqa.config import load_config
    from exfiqa.models.fr import load_fr_entry
    from exfiqa.models.vitfiqa import load_vitfiqa

    cfg = load_config(config_path, cwd=REPO)
    cfg.check_paths()
    benches = {}
    for name, dspec in cfg.datasets.items():
        b = ds.load_benchmark(dspec.kind, **dspec.args)
        want = bench_info[name]
        got = (len(b), len(b.comparisons), int(b.comparisons["mated"].sum()))
        if got != (want["samples"], want["comparisons"], want["mated"]):
            raise AssertionError(f"{name}: reader sees (samples, comparisons, mated) = {got}, built {want}")
        for k in range(len(b)):
            b.image(k)
        benches[name] = b
    models: dict[str, Any] = {}
    for name, m in cfg.fr_models.items():
        models[name] = load_fr_entry(name, m.checkpoint, "cpu", m.args)
    for name, m in cfg.quality_models.items():
        models[name] = load_vitfiqa(m.checkpoint, device="cpu", **m.args)
    return cfg, benches, models


def _seconds_per_image(run: Callable[[np.ndarray], Any], batch: np.ndarray, threads: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds / threads) per image of ``run(batch)``. The second is what the
    run would take with the cores to itself: other jobs on the machine stretch wall time, hardly
    CPU time (idle-spinning threads count too, so it errs on the slow side)."""
    run(batch[:2])  # warm-up (allocator, kernel selection)
    c0, t0 = time.process_time(), time.perf_counter()
    run(batch)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall / len(batch), cpu / threads / len(batch)


def _make_paper_seconds(cfg: Any, per: dict[str, float], n_images: int, n_first: int) -> dict[str, float]:
    """The cost model: per image, every FR model's flip embedding (two forwards), the baselines'
    extra passes (magface_norm: one MagFace forward; serfiq: one ArcFace backbone forward + 20 head
    passes) and every quality model's all-exit pass; plus the notebooks' fixed work: kernel starts,
    02's attention maps, 04's per-exit latency runs (of the run's models and the full-size ones)."""
    one_forward = {name: per[name] / 2 for name in cfg.fr_models}
    baseline = 0.0
    if "magface_norm" in cfg.baselines and "magface" in one_forward:
        baseline += one_forward["magface"]
    if "serfiq" in cfg.baselines and "arcface" in one_forward:
        baseline += one_forward["arcface"] * (1 + SERFIQ_PASSES_COST)
    image = sum(per[n] for n in cfg.fr_models) + baseline + sum(per[q] for q in cfg.quality_models)
    vit = float(np.mean([per[q] for q in cfg.quality_models]))
    attention = (min(ATTENTION_IMAGES, n_first) + 4) * vit * len(cfg.quality_models)
    passes = (1 + LATENCY_REPEATS) * (1 + sum(k / 12 for k in range(1, 13)))  # each row (exits 1..12, one pass): warm-up + repeats
    latency = 2 * len(cfg.quality_models) * passes * LATENCY_BATCH * vit
    fixed = NOTEBOOKS * NOTEBOOK_START_S + attention + latency
    return {"per_image_s": image, "baselines_s": baseline, "inference_min": n_images * image / 60,
            "overhead_min": fixed / 60, "total_min": (n_images * image + fixed) / 60}


def estimate(cfg: Any, benches: dict[str, Any], models: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Estimated ``make paper`` minutes on this machine (:func:`_make_paper_seconds`) from one timed
    forward of each model on 16 benchmark faces: as measured now, and with the cores to itself."""
    import torch

    from exfiqa.models.vitfiqa import to_tensor

    first = next(iter(benches.values()))
    batch = np.stack([first.image(k) for k in range(min(16, len(first)))])
    threads = torch.get_num_threads()
    wall: dict[str, float] = {}
    alone: dict[str, float] = {}
    for name in cfg.fr_models:
        m = models[name]
        wall[name], alone[name] = _seconds_per_image(lambda x, m=m: m.embed(x, batch_size=len(x)), batch, threads)
    for name in cfg.quality_models:
        m = models[name]

        def run(x: np.ndarray, m: Any = m) -> None:
            with torch.inference_mode():
                m.forward_exits(to_tensor(x))

        wall[name], alone[name] = _seconds_per_image(run, batch, threads)
    n_images = sum(len(b) for b in benches.values())
    now = _make_paper_seconds(cfg, wall, n_images, len(first))
    idle = _make_paper_seconds(cfg, alone, n_images, len(first))
    for label, per, e in (("measured now", wall, now), (f"CPU time / {threads} threads", alone, idle)):
        log(f"  {label}: s/image " + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
            + f", baselines {e['baselines_s']:.2f}; {n_images} images x {e['per_image_s']:.2f} s = "
            f"{e['inference_min']:.1f} min + {e['overhead_min']:.1f} min notebook overhead = {e['total_min']:.0f} min")
    log(f"  make paper on this {os.cpu_count()}-CPU machine: about {idle['total_min']:.0f} min with the cores to "
        f"itself, {now['total_min']:.0f} min as shared right now (load average {os.getloadavg()[0]:.1f})")
    return {
        "images": n_images, "threads": threads, "load_average": round(os.getloadavg()[0], 2),
        "seconds_per_image_wall": {k: round(v, 3) for k, v in wall.items()},
        "seconds_per_image_cpu": {k: round(v, 3) for k, v in alone.items()},
        "minutes_now": {k: round(v, 2) for k, v in now.items()},
        "minutes_alone": {k: round(v, 2) for k, v in idle.items()},
    }


# ----------------------------------------------------------------------------- folder handling


def _listing(out: Path, skip: set[Path]) -> Iterator[Path]:
    for p in sorted(out.rglob("*")):
        if p.is_file() and not any(p == s or p.is_relative_to(s) for s in skip):
            yield p


def _manifest(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _complete(out: Path, man: dict[str, Any] | None, spec: LayoutSpec) -> bool:
    """The manifest matches ``spec`` and every file it lists is there with its recorded size."""
    if not man or man.get("spec_key") != spec.key():
        return False
    return all((out / f).is_file() and (out / f).stat().st_size == e["bytes"] for f, e in man["files"].items())


def _outputs(paper: dict[str, Any]) -> set[str]:
    """Top-level names under ``data_root`` that the build writes (from the config's paths)."""
    rels = [e[k] for sec in ("datasets", "fr_models", "quality_models") for e in paper[sec].values()
            for k in ("path", "root", "pairs_file", "checkpoint") if k in e]
    return {Path(r).parts[0] for r in rels} | {CONFIG_NAME, MANIFEST}


def _clear(out: Path, paper: dict[str, Any], keep: list[Path]) -> None:
    """Remove a previous build (the folder is ours): the manifest first, so an interrupted rebuild
    is never taken for a finished one; never ``keep`` (cache, results) or a folder holding them."""
    old = _manifest(out) or {}
    (out / MANIFEST).unlink(missing_ok=True)
    names = _outputs(paper) | {Path(f).parts[0] for f in old.get("files", {})}
    for name in sorted(names):
        p = out / name
        if any(k.resolve() == p.resolve() or k.resolve().is_relative_to(p.resolve()) for k in keep):
            continue
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def build(
    out: Path,
    spec: LayoutSpec,
    paper_path: Path,
    results_dir: Path,
    cache_dir: Path,
    force: bool = False,
    with_estimate: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build (or confirm) the folder; returns its manifest. See the module docstring."""
    t_all = time.perf_counter()
    paper = read_paper_config(paper_path)
    out = out.resolve()
    ours = (out / MARKER).is_file()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise FileExistsError(
            f"{out} is not empty and was not made by bench/build_real_layout.py (no {MARKER}); "
            "choose another --out (--force never writes into a folder it did not make)"
        )
    man = _manifest(out) if ours else None
    if man is not None and not force:
        if _complete(out, man, spec):
            cfg_path = write_config(paper_path, out, results_dir, cache_dir, spec.small_models)
            log(f"[real-layout] {out} is up to date (manifest matches the settings); rewrote {cfg_path.name} "
                f"from {_config_path_text(paper_path)}")
            return man
        if man.get("spec_key") != spec.key():
            raise FileExistsError(
                f"{out} was built with other settings ({man.get('spec')}); pass --force to rebuild it with {asdict(spec)}"
            )
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"builder": "bench/build_real_layout.py", "build_version": BUILD_VERSION}) + "\n")
    (out / ".gitignore").write_text("# generated by bench/build_real_layout.py\n*\n")
    _clear(out, paper, [results_dir, cache_dir])
    log(f"[real-layout] building {out} ({asdict(spec)})")

    t0 = time.perf_counter()
    log("[real-layout] benchmarks (SynthFace renders, the package's writers):")
    bench_info = build_benchmarks(paper, out, spec, log)
    timings["benchmarks"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    log(f"[real-layout] checkpoints ({'small' if spec.small_models else 'full-size'}, random weights"
        f"{f', BN statistics from {CALIBRATION_IMAGES} rendered faces' if spec.bn_calibration else ''}):")
    ckpt_info = build_checkpoints(paper, out, spec, calibration_faces(spec.seed), log)
    timings["checkpoints"] = round(time.perf_counter() - t0, 1)

    cfg_path = write_config(paper_path, out, results_dir, cache_dir, spec.small_models)
    log(f"[real-layout] config {cfg_path} (from {_config_path_text(paper_path)}; changed: {', '.join(CHANGED_KEYS)})")

    t0 = time.perf_counter()
    cfg, benches, models = verify(cfg_path, bench_info)
    timings["verify"] = round(time.perf_counter() - t0, 1)
    log(f"[real-layout] checked: the config loads, its paths exist, the readers open all {len(benches)} "
        f"benchmarks with the built counts, all {len(models)} checkpoints load  [{timings['verify']} s]")
    est = None
    if with_estimate:
        t0 = time.perf_counter()
        log("[real-layout] estimate (one timed forward of each model):")
        est = estimate(cfg, benches, models, log)
        timings["estimate"] = round(time.perf_counter() - t0, 1)
    del models

    skip = {out / MANIFEST, out / MARKER, out / ".gitignore", out / CONFIG_NAME, results_dir.resolve(), cache_dir.resolve()}
    files = {str(p.relative_to(out)): {"sha256": file_digest(p), "bytes": p.stat().st_size} for p in _listing(out, skip)}
    timings["total"] = round(time.perf_counter() - t_all, 1)
    manifest = {
        "builder": "bench/build_real_layout.py", "build_version": BUILD_VERSION, "spec": asdict(spec),
        "spec_key": spec.key(), "source_config": _config_path_text(paper_path), "datasets": bench_info,
        "checkpoints": ckpt_info, "estimate": est, "timings_s": timings, "files": files,
    }
    with atomic_write(out / MANIFEST, overwrite=True) as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
    size = sum(e["bytes"] for e in files.values())
    log(f"[real-layout] wrote {len(files)} files, {size / 2**20:.1f} MiB, in {timings['total']} s "
        f"(benchmarks {timings['benchmarks']} s, checkpoints {timings['checkpoints']} s)")
    log(f"[real-layout] run it with:  make paper CONFIG={_config_path_text(cfg_path)}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python bench/build_real_layout.py",
        description="A small folder laid out like the real benchmarks and checkpoints (see the module docstring).",
    )
    ap.add_argument("--out", default="data/real-mini", help="target folder (default data/real-mini)")
    ap.add_argument("--config", default=str(REPO / "configs" / "paper.yaml"), help="source config (configs/paper.yaml)")
    ap.add_argument("--images-per-benchmark", type=int, default=LayoutSpec.images_per_benchmark,
                    help="images of each of the 8 benchmarks (even, >= 4; default %(default)s)")
    ap.add_argument("--small-models", action="store_true", help="small widths/depths, same key names (tests only)")
    ap.add_argument("--no-bn-calibration", action="store_true", help="keep the init BatchNorm statistics of the FR models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results-dir", default=None, help="results_dir of the config (default <out>/results)")
    ap.add_argument("--cache-dir", default=None, help="cache_dir of the config (default <out>/cache)")
    ap.add_argument("--force", action="store_true", help="rebuild a folder this script made")
    ap.add_argument("--no-estimate", action="store_true", help="skip the timed forward passes")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    try:
        spec = LayoutSpec(seed=args.seed, images_per_benchmark=args.images_per_benchmark,
                          small_models=args.small_models, bn_calibration=not args.no_bn_calibration)
        build(out, spec, Path(args.config), Path(args.results_dir or out / "results").resolve(),
              Path(args.cache_dir or out / "cache").resolve(), force=args.force, with_estimate=not args.no_estimate)
    except (FileExistsError, ValueError) as exc:
        print(f"build_real_layout: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
