"""The demo world's builder (``make demo``): built once and cached under ``data/demo``.

What it builds from one seed (:class:`DemoSpec`):

1. SynthFace images (:mod:`exfiqa.demo.synth`) of disjoint train and test identities.
2. Four small FR models, one per loss of the paper's FR models (ArcFace, ElasticFace-Arc, MagFace,
   CurricularFace), iResNet-style (CurricularFace: the face.evoLVe IR layout), saved in their
   released checkpoint formats (``fr/*.pt``).
3. Two small 12-block ViT-FIQA models, (T) and (C), trained with the ViT-FIQA recipe (CosFace +
   10 x SmoothL1 to the certainty ratio), with a small convolutional stem before the blocks,
   saved in the released format (``vitfiqa/*.pt``).
4. Benchmarks in the real on-disk formats (``benchmarks/``): an LFW-like ``.bin``, a cross-pose
   ``.bin`` (CFP-FP-like), a cross-quality XQLFW-like folder + pairs file, an Adience-like
   identity-folder set and an IJB-C-like template set with ``meta/`` files, loose crops and
   5-point landmarks (aligned by the real reader).
5. Ground truth (``ground_truth/<dataset>.csv``: identity, degradation, severity per sample), the
   attention samples (``samples/{child,frontal,occlusion,pose}.png``), ``report.json`` (the numbers
   that show the world means something) and ``manifest.json`` (spec, file hashes, timings).

The world is cached: when ``manifest.json`` matches the spec and every listed file is present, the
build returns at once. The same seed gives byte-identical files. Its numbers are not the paper's.

Ownership: the builder removes or replaces files only in a folder it made. It marks such a folder
with :data:`MARKER` (``.exfiqa-demo``, content :data:`MARKER_TEXT`), written before anything else
goes there; a folder without the marker is refused (:class:`DemoFolderError`, naming it), except
an empty or absent one and a world built by an earlier version (no marker yet), which is adopted
only when its ``manifest.json`` has exactly the builder's keys and every file under the folder is
listed in it with the SHA-256 it has now. A ``manifest.json`` alone (e.g. ``configs/demo.yaml``
pointed at real data) is therefore never enough to delete anything. Do not keep your own files
in a demo world: a rebuild replaces ``fr/``, ``vitfiqa/``, ``benchmarks/``, ``ground_truth/`` and
``samples/`` whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exfiqa.config import ConfigError
from exfiqa.io import atomic_write, file_digest

__all__ = ["MARKER", "MARKER_TEXT", "DemoFolderError", "DemoSpec", "build_demo", "ensure_demo", "main"]

BUILD_VERSION = "5"
FR_JOBS = {  # name -> (loss, architecture, checkpoint layout)
    "arcface": ("arcface", "iresnet", "plain"),
    "elasticface": ("elasticface", "iresnet", "plain"),
    "magface": ("magface", "magface", "magface"),
    "curricularface": ("curricularface", "curricularface", "plain"),
}
MARKER = ".exfiqa-demo"
"""File that marks a folder as made by this builder (the only folders it removes files from)."""
MARKER_TEXT = "made by exfiqa.demo: a rebuild replaces everything here; keep no files of your own here\n"
#: The keys of a manifest written by this builder (any version that wrote a manifest).
_MANIFEST_KEYS = frozenset({"spec", "spec_key", "build_version", "files", "training", "timings_s", "identities"})


class DemoFolderError(ConfigError):
    """``data_root`` of a demo config is a folder the builder did not make; the message names it."""


@dataclass(frozen=True)
class DemoSpec:
    """Sizes and training settings of the demo world (defaults: 8-9 minutes on 2 CPU cores)."""

    seed: int = 0
    n_train_identities: int = 300
    train_images_per_identity: int = 16
    train_degradation_prob: float = 0.2  # mostly clean training faces, as in MS1MV2
    fr_widths: tuple[int, ...] = (8, 16, 32, 64)
    fr_layers: tuple[int, ...] = (1, 1, 1, 1)
    fr_embedding: int = 128
    fr_epochs: int = 2  # 3 gave the same clean accuracy and severity slope for 1.5x the CPU time
    fr_lr: float = 2e-3  # AdamW: converges far faster than SGD in a few CPU epochs
    vit_width: int = 64
    vit_heads: int = 4
    vit_patch: int = 4
    vit_stem: tuple[int, ...] = (16, 32)
    vit_feature: int = 128
    vit_epochs: int = 4
    vit_lr: float = 3e-3
    # The paper's drop path 0.1 regularises a 76M-parameter model over many epochs; this 4-epoch,
    # width-64 model learns the quality token better without it (measured on held-out faces: (T)
    # last exit vs -severity 0.46 with 0.1, 0.56 with 0).
    vit_drop_path: float = 0.0
    batch_size: int = 64
    lfw_pairs: int = 600
    cfp_pairs: int = 600
    xqlfw_pairs: int = 3000  # base set, half mated, half non-mated (the real XQLFW: 3,000 + 3,000)
    # All non-mated pairs of the XQLFW-like set; those beyond the base set are drawn among its own
    # images (no extra images). With 1,500, FMR 1e-3 sits on one or two impostor scores and the
    # pAUC ratio swung 0.60-0.86 between independent draws of one recipe; with 15,000, 0.75-0.76
    # (bench/RESULTS.md).
    xqlfw_non_mated: int = 15000
    xqlfw_degradation_prob: float = 0.3  # share of degraded images (severity 0.2-1)
    adience_identities: int = 40
    adience_images: int = 8
    ijbc_identities: int = 60
    ijbc_pairs: int = 3000
    workers: int = 2

    def __post_init__(self) -> None:
        if self.xqlfw_non_mated < self.xqlfw_pairs - self.xqlfw_pairs // 2:
            raise ValueError(
                f"DemoSpec.xqlfw_non_mated ({self.xqlfw_non_mated}) must be at least the base set's "
                f"non-mated pairs ({self.xqlfw_pairs - self.xqlfw_pairs // 2})"
            )
        if not 0.0 <= self.xqlfw_degradation_prob <= 1.0:
            raise ValueError(f"DemoSpec.xqlfw_degradation_prob must be in [0, 1], got {self.xqlfw_degradation_prob}")

    def key(self) -> str:
        blob = json.dumps({"v": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    @staticmethod
    def tiny(seed: int = 0) -> DemoSpec:
        """A seconds-sized world for tests: same code paths, far too small to mean anything."""
        return DemoSpec(
            seed=seed, n_train_identities=12, train_images_per_identity=4, fr_widths=(8, 16, 24, 32),
            fr_embedding=16, fr_epochs=1, vit_width=16, vit_heads=2, vit_stem=(4, 8), vit_feature=16,
            vit_epochs=1, batch_size=16, lfw_pairs=20, cfp_pairs=20, xqlfw_pairs=20, xqlfw_non_mated=30, adience_identities=4,
            adience_images=3, ijbc_identities=6, ijbc_pairs=40, workers=1,
        )


# ----------------------------------------------------------------------------- world


def _world(spec: DemoSpec, n_identities: int):
    from .synth import WorldSpec

    return WorldSpec(
        seed=spec.seed, n_identities=n_identities, images_per_identity=spec.train_images_per_identity,
        degradation_prob=spec.train_degradation_prob,
    )


def _ranges(spec: DemoSpec) -> dict[str, range]:
    """Disjoint identity ranges of the train set and each benchmark."""
    sizes = {
        "train": spec.n_train_identities,
        "lfw": max(10, spec.lfw_pairs // 6),
        "cfp_fp": max(10, spec.cfp_pairs // 6),
        "xqlfw": max(10, spec.xqlfw_pairs // 6),
        "adience": spec.adience_identities,
        "ijbc": spec.ijbc_identities,
    }
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = range(start, start + n)
        start += n
    return out


def _pairs(rng: np.random.Generator, ids: range, per_id: int, n_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half mated, half non-mated pairs of (identity, image index): returns a (P,2,2) array and labels."""
    ids = np.asarray(ids)
    n_m = n_pairs // 2
    k = rng.choice(ids, n_m)
    i1 = rng.integers(0, per_id, n_m)
    i2 = (i1 + rng.integers(1, per_id, n_m)) % per_id
    mated = np.stack([np.stack([k, i1], 1), np.stack([k, i2], 1)], 1)
    a = rng.choice(ids, n_pairs - n_m)
    b = (a - ids[0] + rng.integers(1, len(ids), n_pairs - n_m)) % len(ids) + ids[0]
    non = np.stack([np.stack([a, rng.integers(0, per_id, len(a))], 1), np.stack([b, rng.integers(0, per_id, len(b))], 1)], 1)
    pairs = np.concatenate([mated, non])
    labels = np.r_[np.ones(n_m, bool), np.zeros(len(non), bool)]
    order = rng.permutation(len(pairs))
    return pairs[order], labels[order], order


def _extra_non_mated(rng: np.random.Generator, images: np.ndarray, n: int, taken: np.ndarray) -> np.ndarray:
    """``n`` more non-mated pairs among ``images`` ((M,2) identity, index): none repeats ``taken`` or another."""
    if n <= 0:
        return np.empty((0, 2, 2), np.int64)
    def key(a: np.ndarray, b: np.ndarray) -> tuple[tuple[int, ...], ...]:
        return tuple(sorted((tuple(a.tolist()), tuple(b.tolist()))))

    seen = {key(*p) for p in taken}
    max_pairs = (len(images) ** 2 - np.sum(np.unique(images[:, 0], return_counts=True)[1] ** 2)) // 2
    if n + len(seen) > max_pairs:
        raise ValueError(f"xqlfw_non_mated: {n + len(seen)} non-mated pairs asked, only {max_pairs} exist among {len(images)} images")
    out: list[np.ndarray] = []
    while len(out) < n:
        i, j = rng.integers(0, len(images), (2, 2 * (n - len(out))))
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            k = key(images[a], images[b])
            if images[a, 0] == images[b, 0] or k in seen:
                continue
            seen.add(k)
            out.append(images[[a, b]])
            if len(out) == n:
                break
    return np.stack(out)


# ----------------------------------------------------------------------------- training jobs


def _train_job(args: tuple[str, DemoSpec, str, str]) -> dict[str, Any]:
    """One model (runs in a worker process, one torch thread): train and save in released format."""
    import torch

    from exfiqa.models import fr as frmod
    from exfiqa.models.vitfiqa import build_vitfiqa, save_vitfiqa
    from exfiqa.train.trainer import train_fr, train_vitfiqa

    name, spec, train_npz, out_path = args
    torch.set_num_threads(1)
    data = np.load(train_npz)
    images, labels = data["images"], data["labels"]
    t0 = time.perf_counter()
    if name in FR_JOBS:
        loss, arch, layout = FR_JOBS[name]
        torch.manual_seed(spec.seed)
        net = frmod.build_fr(arch, layers=spec.fr_layers, widths=spec.fr_widths, embedding_size=spec.fr_embedding)
        hist = train_fr(
            net, loss, (images, labels), name, epochs=spec.fr_epochs, batch_size=spec.batch_size, lr=spec.fr_lr,
            seed=spec.seed, progress=False, num_threads=1, warmup_epochs=min(0.5, spec.fr_epochs / 4),
            optimizer="adamw", channels_last=True,
        )
        frmod.save_fr(frmod.FRModel(name, net, frmod.FR_MODELS[name][1], device="cpu", arch=arch), out_path, layout=layout, overwrite=True)
    else:
        variant = {"vitfiqa_token": "token", "vitfiqa_crfiqa": "crfiqa"}[name]
        torch.manual_seed(spec.seed)
        model = build_vitfiqa(
            variant=variant, embed_dim=spec.vit_width, num_heads=spec.vit_heads, patch_size=spec.vit_patch,
            stem_channels=spec.vit_stem, feature_dim=spec.vit_feature, drop_path_rate=spec.vit_drop_path,
        )
        hist = train_vitfiqa(
            model, (images, labels), epochs=spec.vit_epochs, batch_size=spec.batch_size, lr=spec.vit_lr,
            seed=spec.seed, progress=False, num_threads=1, warmup_epochs=min(1.0, spec.vit_epochs / 4),
        )
        save_vitfiqa(model, out_path, overwrite=True)
    return {"model": name, "seconds": round(time.perf_counter() - t0, 1), "final_loss": hist.epoch_loss[-1]}


# ----------------------------------------------------------------------------- benchmarks


def _write_benchmarks(spec: DemoSpec, root: Path, log: Callable[[str], None], workers: int | None = None) -> None:
    """Render the test identities and write every benchmark + its ground truth (``workers``
    rendering processes, default ``spec.workers``)."""
    n_workers = spec.workers if workers is None else workers
    import pandas as pd
    from PIL import Image

    import exfiqa.readers as ds

    from .synth import WorldSpec, generate_items

    ranges = _ranges(spec)
    total = max(r.stop for r in ranges.values())
    rng = np.random.default_rng(spec.seed + 1)
    bench = root / "benchmarks"
    truth = root / "ground_truth"
    per = 8  # images per test identity

    def items(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = pairs.reshape(-1, 2)
        return flat[:, 0], flat[:, 1]

    def record(name: str, batch, extra: dict[str, Any] | None = None) -> None:
        frame = pd.DataFrame({
            "sample_id": np.arange(len(batch.identity)), "identity": batch.identity, "image_index": batch.image_index,
            "degradation": batch.degradation, "severity": np.round(batch.severity.astype(np.float64), 6),
            "yaw": np.round(batch.yaw.astype(np.float64), 6), "age_group": batch.age_group, **(extra or {}),
        })
        with atomic_write(truth / f"{name}.csv", overwrite=True) as fh:
            frame.to_csv(fh, index=False, lineterminator="\n")

    # LFW-like: mostly clean, mild degradations.
    easy = WorldSpec(seed=spec.seed, n_identities=total, images_per_identity=per, degradation_prob=0.25,
                     severity_range=(0.05, 0.6), kinds=("gaussian_blur", "jpeg", "gaussian_noise", "underexposure", "overexposure"))
    pairs, labels, _ = _pairs(rng, ranges["lfw"], per, spec.lfw_pairs)
    b = generate_items(easy, *items(pairs), workers=n_workers)
    ds.write_bin(bench / "lfw.bin", b.images, labels, overwrite=True)
    record("lfw", b)
    log(f"[demo] lfw.bin: {len(labels)} pairs")

    # CFP-FP-like: frontal first image, strong pose second.
    frontal = WorldSpec(seed=spec.seed, n_identities=total, images_per_identity=per, degradation_prob=0.0)
    posed = WorldSpec(seed=spec.seed, n_identities=total, images_per_identity=per, degradation_prob=1.0,
                      second_degradation_prob=0.0, kinds=("pose",), severity_range=(0.3, 1.0))
    pairs, labels, _ = _pairs(rng, ranges["cfp_fp"], per, spec.cfp_pairs)
    fa = generate_items(frontal, pairs[:, 0, 0], pairs[:, 0, 1], workers=n_workers)
    fb = generate_items(posed, pairs[:, 1, 0], pairs[:, 1, 1], workers=n_workers)
    inter = np.empty((2 * len(labels),) + fa.images.shape[1:], np.uint8)
    inter[0::2], inter[1::2] = fa.images, fb.images
    ds.write_bin(bench / "cfp_fp.bin", inter, labels, overwrite=True)
    n = len(fa)
    record("cfp_fp", type(fa).concat([fa, fb]).take(np.stack([np.arange(n), n + np.arange(n)], 1).ravel()))
    log(f"[demo] cfp_fp.bin: {len(labels)} pairs")

    # XQLFW-like: cross-quality, xqlfw_degradation_prob of the images degraded (severity 0.2-1;
    # at 0.3 about half of the pairs mix a good and a bad image): a base set of xqlfw_pairs, then
    # non-mated pairs among its images up to xqlfw_non_mated, so that the FMR 1e-3 threshold
    # rests on more than one or two impostor scores.
    hard = WorldSpec(seed=spec.seed, n_identities=total, images_per_identity=per,
                     degradation_prob=spec.xqlfw_degradation_prob, second_degradation_prob=0.3, severity_range=(0.2, 1.0))
    pairs, labels, _ = _pairs(rng, ranges["xqlfw"], per, spec.xqlfw_pairs)
    extra = _extra_non_mated(rng, np.unique(pairs.reshape(-1, 2), axis=0), spec.xqlfw_non_mated - int((~labels).sum()), pairs[~labels])
    order = rng.permutation(len(pairs) + len(extra))
    pairs = np.concatenate([pairs, extra])[order]
    labels = np.r_[labels, np.zeros(len(extra), bool)][order]
    used = np.unique(pairs.reshape(-1, 2), axis=0)
    b = generate_items(hard, used[:, 0], used[:, 1], workers=n_workers)
    images_by_name: dict[str, list[np.ndarray]] = {}
    for k in np.unique(used[:, 0]):
        sel = np.flatnonzero(used[:, 0] == k)
        full = [np.zeros((112, 112, 3), np.uint8)] * per
        for j in sel:
            full[int(used[j, 1])] = b.images[j]
        images_by_name[f"id{k:05d}"] = full
    pair_rows = [
        (f"id{p[0, 0]:05d}", int(p[0, 1]) + 1, int(p[1, 1]) + 1) if m else (f"id{p[0, 0]:05d}", int(p[0, 1]) + 1, f"id{p[1, 0]:05d}", int(p[1, 1]) + 1)
        for p, m in zip(pairs, labels, strict=True)
    ]
    ds.write_xqlfw(bench / "xqlfw" / "images", bench / "xqlfw" / "pairs.txt", images_by_name, pair_rows, overwrite=True)
    record("xqlfw", b)  # np.unique sorted (identity, index): the reader's sample order
    log(f"[demo] xqlfw: {len(pair_rows)} pairs ({int(labels.sum())} mated), {len(used)} images")

    # Adience-like: all pairs within a small identity set, mixed quality.
    mixed = WorldSpec(seed=spec.seed, n_identities=total, images_per_identity=spec.adience_images, degradation_prob=0.5)
    ids = np.asarray(ranges["adience"])
    b = generate_items(mixed, np.repeat(ids, spec.adience_images), np.tile(np.arange(spec.adience_images), len(ids)), workers=n_workers)
    by_id = {f"subject{k:05d}": list(b.images[b.identity == k]) for k in ids}
    ds.write_identity_folders(bench / "adience", by_id, overwrite=True)
    record("adience", b)
    log(f"[demo] adience: {len(ids)} identities x {spec.adience_images} images")

    # IJB-C-like: templates of 1-4 loose crops from 1-2 media, 5-point landmarks, template pairs.
    ids = np.asarray(ranges["ijbc"])
    tmpl_of, rows = [], []
    tid = 0
    for k in ids:
        count = 0
        for _ in range(3):  # three templates per identity
            n_img = int(rng.integers(1, 5))
            n_media = int(rng.integers(1, 3))
            for j in range(n_img):
                rows.append((int(k), count, tid, tid * 10 + j % n_media))
                count += 1
            tmpl_of.append((tid, int(k)))
            tid += 1
    ident = np.array([r[0] for r in rows])
    img_idx = np.array([r[1] for r in rows])
    b = generate_items(mixed, ident, img_idx, loose_size=160, workers=n_workers)
    t_ids = np.array([r[2] for r in rows])
    m_ids = np.array([r[3] for r in rows])
    tmpl_ident = dict(tmpl_of)
    all_t = np.array([t for t, _ in tmpl_of])
    tp, tl = [], []
    n_mated = spec.ijbc_pairs // 6
    while len(tp) < n_mated:
        t1, t2 = rng.choice(all_t, 2, replace=False)
        if tmpl_ident[t1] == tmpl_ident[t2]:
            tp.append((int(t1), int(t2)))
            tl.append(1)
    while len(tp) < spec.ijbc_pairs:
        t1, t2 = rng.choice(all_t, 2, replace=False)
        if tmpl_ident[t1] != tmpl_ident[t2]:
            tp.append((int(t1), int(t2)))
            tl.append(0)
    ds.write_ijbc(bench / "ijbc", list(b.images), b.landmarks, t_ids, m_ids, tp, tl, overwrite=True)
    record("ijbc", b, {"template_id": t_ids, "media_id": m_ids})
    log(f"[demo] ijbc: {len(all_t)} templates, {len(rows)} loose crops, {len(tp)} template pairs")

    # Attention samples: child, frontal, occlusion, pose.
    samples = root / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    test_ids = np.asarray(ranges["lfw"])
    from .synth import sample_identities

    is_child = sample_identities(test_ids, spec.seed).age_group == 1
    child = int(test_ids[np.argmax(is_child)]) if is_child.any() else int(test_ids[0])
    adults = [int(k) for k in test_ids[~is_child] if int(k) != child][:3]  # three other identities
    picks = {
        "child": (WorldSpec(seed=spec.seed, n_identities=total, degradation_prob=0.0), child),
        "frontal": (WorldSpec(seed=spec.seed, n_identities=total, degradation_prob=0.0), adults[0]),
        "occlusion": (WorldSpec(seed=spec.seed, n_identities=total, degradation_prob=1.0, second_degradation_prob=0.0, kinds=("sunglasses",), severity_range=(0.8, 0.8)), adults[1]),
        "pose": (WorldSpec(seed=spec.seed, n_identities=total, degradation_prob=1.0, second_degradation_prob=0.0, kinds=("pose",), severity_range=(0.9, 0.9)), adults[2]),
    }
    for name, (world, k) in picks.items():
        img = generate_items(world, [k], [0]).images[0]
        with atomic_write(samples / f"{name}.png", "wb", overwrite=True) as fh:
            Image.fromarray(img).save(fh, format="PNG")


def _train_set(spec: DemoSpec, path: Path) -> None:
    from .synth import generate

    ids = np.asarray(_ranges(spec)["train"])
    b = generate(_world(spec, int(ids[-1]) + 1), ids, spec.train_images_per_identity, workers=spec.workers)
    with atomic_write(path, "wb", overwrite=True) as fh:
        np.savez(fh, images=b.images, labels=(b.identity - ids[0]).astype(np.int64), severity=b.severity)


# ----------------------------------------------------------------------------- build


def _manifest_ok(root: Path, spec: DemoSpec) -> bool:
    path = root / "manifest.json"
    if not path.is_file():
        return False
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return man.get("spec_key") == spec.key() and all((root / f).is_file() for f in man.get("files", {}))


def _adoptable(root: Path) -> str:
    """Why the unmarked folder ``root`` is not a world built by an earlier version ("" if it is:
    its manifest has exactly the builder's keys and lists every file under ``root`` with the
    SHA-256 it has now)."""
    try:
        man = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "its manifest.json is not the builder's"
    if not isinstance(man, dict) or set(man) != _MANIFEST_KEYS or not isinstance(man["files"], dict):
        return "its manifest.json is not the builder's"
    listed = man["files"]
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(root).as_posix()
        if rel == "manifest.json":
            continue
        if rel not in listed or path.is_symlink() or not path.is_file():
            return f"{rel} is not a file the builder listed in its manifest.json"
        if file_digest(path) != listed[rel]:
            return f"{rel} differs from the file the builder wrote"
    return ""


def _claim(root: Path) -> None:
    """Make sure ``root`` is the builder's before anything there is removed or replaced: mark an
    absent or empty folder, adopt an earlier version's world (see :func:`_adoptable`), else refuse.

    Raises:
        DemoFolderError: ``root`` is not a folder, or holds files the builder did not make.
    """
    marker = root / MARKER
    if root.exists() and not root.is_dir():
        raise DemoFolderError(f"demo world {root} is not a folder; point data_root elsewhere")
    if marker.is_file() and not marker.is_symlink():
        if marker.read_text(encoding="utf-8", errors="replace") == MARKER_TEXT:
            return
        raise DemoFolderError(f"{root}: {MARKER} is not the demo builder's marker; this folder was not made by "
                              "exfiqa.demo, nothing was changed. Point data_root (the config) at another folder")
    if root.exists() and any(root.iterdir()):
        why = _adoptable(root) if (root / "manifest.json").is_file() else "it has no manifest.json"
        if why:
            raise DemoFolderError(
                f"{root} is not empty and was not made by exfiqa.demo ({why}; no {MARKER} marker); nothing was "
                "changed. Point data_root (the config) at an empty or absent folder"
            )
    root.mkdir(parents=True, exist_ok=True)
    with atomic_write(marker, overwrite=True) as fh:
        fh.write(MARKER_TEXT)


_OUTPUTS = ("manifest.json", "report.json", "benchmarks", "ground_truth", "fr", "vitfiqa", "samples")


def _clear_outputs(root: Path) -> None:
    """Remove a previous build's outputs (the folder is ours: :func:`_claim`): a rebuild with another
    spec must not leave stale files behind, e.g. identity folders a reader would pick up. The
    manifest goes first, so an interrupted rebuild is never mistaken for a finished one."""
    for name in _OUTPUTS:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _log_trained(log: Callable[[str], None], r: dict[str, Any]) -> None:
    log(f"[demo] trained {r['model']} in {r['seconds']} s (loss {r['final_loss']:.3f})")


def _train_and_report_in_pool(
    spec: DemoSpec, root: Path, jobs: list[tuple[str, DemoSpec, str, str]], timings: dict[str, float], log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the six models on ``spec.workers`` processes; meanwhile write the benchmarks here, and
    queue each model's share of the report as soon as it is trained, so no core idles between
    the steps. Every job is deterministic on one thread: the order they finish in changes nothing."""
    import multiprocessing
    from concurrent.futures import as_completed

    from .report import assemble_report, report_part

    t0 = time.perf_counter()
    ex = ProcessPoolExecutor(max_workers=spec.workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        train = {ex.submit(_train_job, j): j[0] for j in jobs}
        t1 = time.perf_counter()
        _write_benchmarks(spec, root, log, workers=1)  # one process: the pool has the cores
        timings["benchmarks"] = round(time.perf_counter() - t1, 1)
        results: dict[str, dict[str, Any]] = {}
        parts = []
        for fut in as_completed(train):
            r = fut.result()
            _log_trained(log, r)
            results[r["model"]] = r
            parts.append(ex.submit(report_part, r["model"], str(root), spec.vit_heads))
        timings["train_models"] = round(time.perf_counter() - t0, 1)
        t1 = time.perf_counter()
        report = assemble_report(root, [f.result() for f in parts])
        timings["report"] = round(time.perf_counter() - t1, 1)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()
    return [results[j[0]] for j in jobs], report


def build_demo(root: str | os.PathLike[str], spec: DemoSpec | None = None, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Build the demo world under ``root`` (cached; ``force`` rebuilds). Returns the manifest path."""
    spec = spec or DemoSpec()
    root = Path(root)
    if not force and _manifest_ok(root, spec):
        log(f"[demo] {root} is up to date (manifest matches the spec)")
        return root / "manifest.json"
    _claim(root)  # raises unless the folder is the builder's: before anything is removed
    t_all = time.perf_counter()
    work = root / ".build"
    if work.exists():
        shutil.rmtree(work)  # an interrupted build's
    work.mkdir()
    _clear_outputs(root)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train_npz = work / "train.npz"
    _train_set(spec, train_npz)
    timings["render_train"] = round(time.perf_counter() - t0, 1)
    log(f"[demo] rendered the training set in {timings['render_train']} s")

    jobs = [(name, spec, str(train_npz), str(root / "fr" / f"{name}.pt")) for name in FR_JOBS]
    jobs += [(name, spec, str(train_npz), str(root / "vitfiqa" / f"{name}.pt")) for name in ("vitfiqa_token", "vitfiqa_crfiqa")]
    (root / "fr").mkdir(parents=True, exist_ok=True)
    (root / "vitfiqa").mkdir(parents=True, exist_ok=True)
    jobs.sort(key=lambda j: not j[0].startswith("vitfiqa"))  # longest first
    if spec.workers > 1:
        results, report = _train_and_report_in_pool(spec, root, jobs, timings, log)
    else:
        t0 = time.perf_counter()
        results = []
        for j in jobs:
            results.append(_train_job(j))
            _log_trained(log, results[-1])
        timings["train_models"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        _write_benchmarks(spec, root, log)
        timings["benchmarks"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        from .report import world_report

        report = world_report(root, heads=spec.vit_heads)
        timings["report"] = round(time.perf_counter() - t0, 1)
    info = {"identities": {k: [r.start, r.stop] for k, r in _ranges(spec).items()}}
    with atomic_write(root / "report.json", overwrite=True) as fh:
        json.dump(report, fh, indent=2, sort_keys=True)
    shutil.rmtree(work)
    timings["total"] = round(time.perf_counter() - t_all, 1)

    files = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in ("manifest.json", MARKER)
    )
    manifest = {
        "spec": asdict(spec), "spec_key": spec.key(), "build_version": BUILD_VERSION,
        "files": {f: file_digest(root / f) for f in files}, "training": results, "timings_s": timings, **info,
    }
    with atomic_write(root / "manifest.json", overwrite=True) as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
    log(f"[demo] built {root} in {timings['total']} s")
    return root / "manifest.json"


def ensure_demo(root: str | os.PathLike[str], kind: str = "default", log: Callable[[str], None] = print) -> Path:
    """Build the demo world of ``kind`` ("default" or "tiny") under ``root`` if missing or stale."""
    if kind not in ("default", "tiny"):
        raise ValueError(f"demo kind must be 'default' or 'tiny', got {kind!r}")
    return build_demo(root, DemoSpec.tiny() if kind == "tiny" else DemoSpec(), log=log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exfiqa.demo", description="Build the offline demo world.", allow_abbrev=False)
    ap.add_argument("--config", default="configs/demo.yaml", help="its data_root is where the world goes")
    ap.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    ap.add_argument("--tiny", action="store_true", help="a seconds-sized world (for tests)")
    args = ap.parse_args(argv)
    from exfiqa.config import load_config

    cfg = load_config(args.config)
    if not cfg.demo:
        print(f"{args.config} is not a demo config (demo: false); nothing to build", file=sys.stderr)
        return 2
    kind = "tiny" if args.tiny else cfg.demo
    try:
        build_demo(cfg.data_root, DemoSpec.tiny() if kind == "tiny" else DemoSpec(), force=args.force)
    except DemoFolderError as exc:
        print(f"python -m exfiqa.demo: {exc}", file=sys.stderr)
        return 2
    return 0

