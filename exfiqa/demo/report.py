"""The numbers that show the demo world means something (written to ``data/demo/report.json``).

- Each FR model: verification accuracy (10-fold) on the clean pairs of the LFW-like set, and the
  Spearman correlation of mated similarity with pair severity (max of the two ground-truth
  severities) on the Adience-like set (should be clearly negative).
- Each ViT-FIQA model: Spearman of every exit's score with ``-severity`` and with the certainty
  ratio (CR) the demo FR models assign (class centres = mean embedding of each held-out identity),
  on the Adience-like set; and every exit's pAUC-EDC (FMR 1e-3, ``recompute``, ArcFace) on the
  cross-quality XQLFW-like set, against the mean pAUC of random quality scores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.pairs import cosine_similarity
from exfiqa.evaluation.pauc import pauc
from exfiqa.evaluation.verification import verification_accuracy
from exfiqa.models.fr import load_fr
from exfiqa.models.inference import exit_scores
from exfiqa.models.vitfiqa import load_vitfiqa
from exfiqa.readers import read_adience, read_bin, read_xqlfw
from exfiqa.train.trainer import certainty_ratio

__all__ = ["assemble_report", "report_part", "world_report"]

FR_NAMES = ("arcface", "elasticface", "magface", "curricularface")
PAUC_FR = "arcface"
VIT_FILES = {"T": "vitfiqa_token", "C": "vitfiqa_crfiqa"}  # tag -> checkpoint stem under vitfiqa/


def _images(bench) -> np.ndarray:
    return np.concatenate([imgs for _, imgs in bench.iter_images(256)])


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b).statistic)


def _fr_part(name: str, root: Path) -> dict[str, Any]:
    """One FR model's numbers and the arrays the quality part needs (runs in a worker process)."""
    torch.set_num_threads(1)
    bench_dir = root / "benchmarks"
    lfw = read_bin(bench_dir / "lfw.bin", name="lfw")
    adience = read_adience(bench_dir / "adience")
    truth = {n: pd.read_csv(root / "ground_truth" / f"{n}.csv") for n in ("lfw", "adience")}
    model = load_fr(name, root / "fr" / f"{name}.pt", device="cpu")
    e_lfw = model.embed(_images(lfw))
    la, lb = lfw.comparisons["a"].to_numpy(), lfw.comparisons["b"].to_numpy()
    sim = cosine_similarity(e_lfw[la], e_lfw[lb]) / 2
    sev_l = truth["lfw"]["severity"].to_numpy()
    clean = (sev_l[la] == 0) & (sev_l[lb] == 0)
    acc = verification_accuracy(sim[clean], lfw.comparisons["mated"].to_numpy(bool)[clean], n_folds=min(10, int(clean.sum())))
    imgs_a = _images(adience)
    e_a = model.embed(imgs_a)
    ca, cb = adience.comparisons["a"].to_numpy(), adience.comparisons["b"].to_numpy()
    mated_a = adience.comparisons["mated"].to_numpy(bool)
    sim_a = cosine_similarity(e_a[ca], e_a[cb]) / 2
    sev_a = truth["adience"]["severity"].to_numpy()
    pair_sev = np.maximum(sev_a[ca], sev_a[cb])
    out_x = None
    if name == PAUC_FR:  # the pAUC part needs one FR model's XQLFW similarities
        xq = read_xqlfw(bench_dir / "xqlfw" / "images", bench_dir / "xqlfw" / "pairs.txt")
        e_x = model.embed(_images(xq))
        xa, xb = xq.comparisons["a"].to_numpy(), xq.comparisons["b"].to_numpy()
        out_x = cosine_similarity(e_x[xa], e_x[xb]) / 2
    return {
        "name": name,
        "numbers": {
            "clean_pairs": int(clean.sum()),
            "clean_accuracy": float(acc.mean),
            "mated_similarity_vs_severity_spearman": _rho(sim_a[mated_a], pair_sev[mated_a]),
        },
        "adience_embeddings": np.ascontiguousarray(e_a[:, : e_a.shape[1] // 2]),  # L2norm(f(x)), no flip
        "xqlfw_similarity": out_x,
    }


def _vit_part(fname: str, root: Path, heads: int) -> dict[str, Any]:
    """One ViT-FIQA model's per-exit scores on the Adience-like and XQLFW-like sets (worker process)."""
    torch.set_num_threads(1)
    bench_dir = root / "benchmarks"
    adience = read_adience(bench_dir / "adience")
    xq = read_xqlfw(bench_dir / "xqlfw" / "images", bench_dir / "xqlfw" / "pairs.txt")
    model = load_vitfiqa(root / "vitfiqa" / f"{fname}.pt", num_heads=heads)
    return {
        "name": fname,
        "adience_scores": exit_scores(model, [_images(adience)], progress=False),
        "xqlfw_scores": exit_scores(model, [_images(xq)], progress=False),
    }


def report_part(name: str, root: str | os.PathLike[str], heads: int = 4) -> dict[str, Any]:
    """The share of the report that needs one trained model (an FR model or a ViT-FIQA model,
    by its file stem): :func:`assemble_report` combines all six. One torch thread."""
    if name in FR_NAMES:
        return _fr_part(name, Path(root))
    if name in VIT_FILES.values():
        return _vit_part(name, Path(root), heads)
    raise ValueError(f"report_part: unknown model {name!r}, expected one of {FR_NAMES + tuple(VIT_FILES.values())}")


def assemble_report(root: str | os.PathLike[str], parts: list[dict[str, Any]], random_draws: int = 20) -> dict[str, Any]:
    """Combine the six :func:`report_part` results (any order) into the report."""
    root = Path(root)
    by_name = {p["name"]: p for p in parts}
    missing = [n for n in FR_NAMES + tuple(VIT_FILES.values()) if n not in by_name]
    if missing:
        raise ValueError(f"assemble_report: no part for {missing}")
    fr_parts = [by_name[n] for n in FR_NAMES]
    report: dict[str, Any] = {"fr": {p["name"]: p["numbers"] for p in fr_parts}, "vitfiqa": {}}
    bench_dir = root / "benchmarks"
    xq = read_xqlfw(bench_dir / "xqlfw" / "images", bench_dir / "xqlfw" / "pairs.txt")
    truth = pd.read_csv(root / "ground_truth" / "adience.csv")
    sev_a = truth["severity"].to_numpy()
    # certainty ratio of the held-out samples under each demo FR model (centres = identity means)
    labels = np.unique(truth["identity"].to_numpy(), return_inverse=True)[1]
    crs = []
    for p in fr_parts:
        e = torch.as_tensor(p["adience_embeddings"])
        centres = torch.stack([e[torch.as_tensor(labels == c)].mean(0) for c in range(labels.max() + 1)])
        crs.append(certainty_ratio(e, torch.as_tensor(labels), centres).numpy())
    cr = np.mean(crs, axis=0)
    xq_sim = by_name[PAUC_FR]["xqlfw_similarity"]
    mated_x = xq.comparisons["mated"].to_numpy(bool)
    xa, xb = xq.comparisons["a"].to_numpy(), xq.comparisons["b"].to_numpy()
    rng = np.random.default_rng(0)
    rand = [pauc(edc(xq_sim, mated_x, rng.random(len(mated_x)), 1e-3, "recompute"), 0.3) for _ in range(random_draws)]
    for tag, fname in VIT_FILES.items():
        s_a, s_x = by_name[fname]["adience_scores"], by_name[fname]["xqlfw_scores"]
        depth = s_a.shape[1]
        per_exit_pauc = [
            pauc(edc(xq_sim, mated_x, np.minimum(s_x[xa, k], s_x[xb, k]), 1e-3, "recompute"), 0.3)
            for k in range(depth)
        ]
        report["vitfiqa"][tag] = {
            "spearman_vs_neg_severity": [_rho(s_a[:, k], -sev_a) for k in range(depth)],
            "spearman_vs_cr": [_rho(s_a[:, k], cr) for k in range(depth)],
            "xqlfw_pauc_fmr1e-3": per_exit_pauc,
            "xqlfw_pauc_random_mean": float(np.mean(rand)),
            "last_exit_pauc_over_random": per_exit_pauc[-1] / float(np.mean(rand)),
        }
    return report


def world_report(root: str | os.PathLike[str], heads: int = 4, random_draws: int = 20) -> dict[str, Any]:
    """Compute the report for a built demo world under ``root`` in this process (``build_demo``
    runs the same parts in its process pool as the models finish)."""
    names = list(FR_NAMES) + list(VIT_FILES.values())
    return assemble_report(root, [report_part(n, root, heads) for n in names], random_draws)
