"""Study-level analyses the notebooks call: EDC/pAUC over datasets x FR models x quality models,
exit-to-exit agreement, fusion comparisons, operating points and adaptive early exit.

Every pAUC frame carries ``convention``, ``limit`` and ``scale`` columns (from
:func:`exfiqa.metrics.pauc_frame`), so a written table can never be read under the wrong protocol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from .flops import exit_costs, fused_cost
from .metrics import (
    edc_frame,
    edc_many,
    eer,
    fnmr_at_fmr,
    paired_bootstrap,
    pauc,
    pauc_frame,
    verification_accuracy,
)
from .model import ViTFIQA, ViTFIQAConfig
from .pipeline import Study

__all__ = [
    "AdaptiveResult",
    "adaptive_cost_curve",
    "adaptive_exit",
    "attention_maps",
    "attention_statistics",
    "fr_sanity",
    "fused_sample_scores",
    "fusion_strategies",
    "search_fusion_weights",
    "cost_table",
    "edc_all",
    "fusion_wins",
    "measure_latency",
    "operating_points",
    "pauc_all",
    "paired_vs_reference",
    "rank_correlation",
]


def _qualities(table: pd.DataFrame, methods: Sequence[str]) -> dict[str, np.ndarray]:
    return {m: table[m].to_numpy() for m in methods if m in table}


def edc_all(study: Study, quality: str, fr: str, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy EDC points of every method on every configured dataset (one FR and quality model)."""
    cfg = study.config
    frames = []
    for ds in cfg.datasets:
        table = study.table(ds, fr, quality)
        ms = methods or study.methods(quality)
        frames.append(
            edc_frame(
                _qualities(table, ms), table["similarity"], table["mated"], dataset=cfg.datasets[ds].label,
                fr_model=fr, fmr_targets=cfg.fmr_targets, convention=cfg.convention,
            )
        )
    return pd.concat(frames, ignore_index=True)


def pauc_all(study: Study, methods: Sequence[str] | None = None, scale: float = 1.0) -> pd.DataFrame:
    """Tidy pAUC of every method x dataset x FR model x quality model x FMR target."""
    cfg = study.config
    frames = []
    for q in cfg.quality_models:
        ms = methods or study.methods(q)
        for fr in cfg.fr_models:
            for ds in cfg.datasets:
                table = study.table(ds, fr, q)
                f = pauc_frame(
                    _qualities(table, ms), table["similarity"], table["mated"], dataset=cfg.datasets[ds].label,
                    fr_model=fr, fmr_targets=cfg.fmr_targets, convention=cfg.convention,
                    limit=cfg.discard_limit, scale=scale,
                )
                f.insert(0, "quality_model", q)
                frames.append(f)
    return pd.concat(frames, ignore_index=True)


def rank_correlation(sample_quality: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Spearman rank correlation between the per-sample scores of ``methods`` (a square frame)."""
    rho = spearmanr(sample_quality[list(methods)].to_numpy()).statistic
    rho = np.atleast_2d(rho)
    return pd.DataFrame(rho, index=list(methods), columns=list(methods))


def fusion_wins(pauc: pd.DataFrame, challenger: str, reference: str) -> pd.DataFrame:
    """Per (quality model, FR model, FMR): on how many datasets ``challenger`` has a lower pAUC.

    Returns columns ``quality_model, fr_model, fmr, wins, n, summary`` ("FW beats exit 12 on k of n").
    """
    keys = ["quality_model", "fr_model", "fmr", "dataset"]
    wide = pauc[pauc["method"].isin([challenger, reference])].pivot_table(index=keys, columns="method", values="pauc")
    wide["win"] = wide[challenger] < wide[reference]
    out = wide.groupby(level=[0, 1, 2])["win"].agg(["sum", "count"]).reset_index()
    out = out.rename(columns={"sum": "wins", "count": "n"})
    out["wins"] = out["wins"].astype(int)
    out["summary"] = [f"{challenger} beats {reference} on {w} of {n}" for w, n in zip(out["wins"], out["n"], strict=True)]
    return out


def paired_vs_reference(
    study: Study, quality: str, fr: str, methods: Sequence[str], reference: str, fmr: float, n_boot: int = 500
) -> pd.DataFrame:
    """Paired bootstrap of pAUC(method) - pAUC(reference) per dataset, with 95% intervals."""
    cfg = study.config
    rows = []
    for ds in cfg.datasets:
        table = study.table(ds, fr, quality)
        for m in methods:
            r = paired_bootstrap(
                table["similarity"], table["mated"], table[m], table[reference], fmr=fmr,
                convention=cfg.convention, limit=cfg.discard_limit, n_boot=n_boot, seed=cfg.seed,
            )
            rows.append({
                "quality_model": quality, "dataset": cfg.datasets[ds].label, "fr_model": fr, "fmr": fmr,
                "method": m, "reference": reference, "delta_pauc": r.difference, "ci_low": r.lower,
                "ci_high": r.upper, "p_better": r.frac_a_below_b, "convention": cfg.convention,
                "limit": cfg.discard_limit,
            })
    return pd.DataFrame(rows)


def cost_table(model: ViTFIQA) -> pd.DataFrame:
    """Analytic GFLOPs per exit and of fusing all exits for ``model``'s configuration."""
    c = model.config
    rows = [{"exit": e.exit, "method": f"Exit {e.exit}", "gflops": e.gflops, "saving": e.saving} for e in exit_costs(c)]
    full = rows[-1]["gflops"]
    fused = fused_cost(c)
    rows += [{"exit": c.depth, "method": m, "gflops": fused, "saving": 1 - fused / full} for m in ("EX-FIQA-F", "EX-FIQA-FW")]
    return pd.DataFrame(rows)


def measure_latency(
    model: ViTFIQA, batch_size: int = 32, repeats: int = 3, device: str = "cpu", seed: int = 0
) -> pd.DataFrame:
    """Measured wall time per image of the truncated model at every exit (median of ``repeats``)."""
    torch.manual_seed(seed)
    x = torch.randn(batch_size, 3, model.config.img_size, model.config.img_size, device=device)
    model = model.to(device).eval()
    rows = []
    with torch.inference_mode():
        model.forward_exits(x)  # warm-up
        for k in range(1, model.depth + 1):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.score_at_exit(x, k)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            rows.append({"exit": k, "ms_per_image": 1e3 * float(np.median(times)) / batch_size})
        t0 = time.perf_counter()
        model.forward_exits(x)
        rows.append({"exit": "all (one pass)", "ms_per_image": 1e3 * (time.perf_counter() - t0) / batch_size})
    return pd.DataFrame(rows)


def operating_points(pauc: pd.DataFrame, costs: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """Derive the paper's three operating points from data (per quality model).

    Mean pAUC over datasets and FR models per EX-FIQA method (exits and fusions, the methods with a
    cost in ``costs``); then
    - max accuracy: the method with the lowest mean pAUC;
    - balanced: the cheapest single exit whose mean pAUC is within ``tolerance`` (relative) of the
      last exit's;
    - max efficiency: the cheapest single exit within ``2 * tolerance`` of the last exit's.
    """
    rows = []
    for q, part in pauc.groupby("quality_model", sort=False):
        cost = costs[costs["quality_model"] == q].set_index("method")["gflops"]
        mean = part[part["method"].isin(cost.index)].groupby("method")["pauc"].mean()  # EX-FIQA methods only
        exits = [m for m in mean.index if m.startswith("Exit ")]
        last = max(exits, key=lambda m: int(m.split()[1]))
        full = cost[last]
        best = mean.idxmin()
        rows.append(_point(q, "max accuracy", best, mean, cost, full))
        for name, tol in (("balanced", tolerance), ("max efficiency", 2 * tolerance)):
            ok = [m for m in exits if mean[m] <= mean[last] * (1 + tol)]
            pick = min(ok, key=lambda m: cost[m])
            rows.append(_point(q, name, pick, mean, cost, full))
    return pd.DataFrame(rows)


def _point(q: str, scenario: str, method: str, mean: pd.Series, cost: pd.Series, full: float) -> dict:
    return {
        "quality_model": q, "scenario": scenario, "method": method, "mean_pauc": float(mean[method]),
        "gflops": float(cost[method]), "flop_saving": 1 - float(cost[method]) / full,
    }


@dataclass(frozen=True)
class AdaptiveResult:
    """Adaptive early exit: per-sample stopping exit, final score and compute."""

    exit_used: np.ndarray
    score: np.ndarray
    mean_gflops: float
    full_gflops: float


def adaptive_exit(
    scores: np.ndarray, threshold: float, margin: float, min_exit: int, gflops: Sequence[float]
) -> AdaptiveResult:
    """Stop at the first exit >= ``min_exit`` whose running FW-fused score lies more than ``margin``
    from ``threshold`` (a confident accept/reject of the face); otherwise run all exits.

    ``scores``: (N, L) exit scores (from one pass, used to simulate the stopping rule exactly as a
    deployment that evaluates exits one after another would). ``gflops[l-1]``: cost of running
    up to exit l with heads at every exit so far. Beyond the paper.
    """
    n, depth = scores.shape
    w = np.arange(1, depth + 1, dtype=np.float64)
    running = np.cumsum(scores * w, axis=1) / np.cumsum(w)
    confident = np.abs(running - threshold) > margin
    confident[:, : min_exit - 1] = False
    confident[:, -1] = True
    stop = confident.argmax(axis=1)
    cost = np.asarray(gflops, dtype=np.float64)
    return AdaptiveResult(stop + 1, running[np.arange(n), stop], float(cost[stop].mean()), float(cost[-1]))


def adaptive_cost_curve(model_cfg: ViTFIQAConfig, depth: int) -> list[float]:
    """GFLOPs of running exits 1..l with the heads evaluated at each of them (for adaptive exit)."""
    from .flops import block_flops, head_flops, patch_embed_flops

    return [(patch_embed_flops(model_cfg) + k * (block_flops(model_cfg) + head_flops(model_cfg))) / 1e9 for k in range(1, depth + 1)]


def attention_maps(model: ViTFIQA, images: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Mean attention over the patch grid at every exit: (N, depth, g, g), heads averaged.

    (T): the quality token's attention row over the patches; (C): the mean attention each patch
    receives (there is no quality token). Rows are renormalised over the patches.
    """
    from .images import to_tensor
    from .model import attention_grid, capture_attention

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


def attention_statistics(maps: np.ndarray) -> pd.DataFrame:
    """Per exit: entropy (nats) of the attention over patches and its spatial spread.

    ``maps``: (N, depth, g, g), each map summing to 1. Spread = attention-weighted RMS distance of
    the patches from the map's centroid, in patch units. Mean and std over the N images.
    """
    n, depth, g, _ = maps.shape
    p = maps.reshape(n, depth, -1).astype(np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)
    yy, xx = np.divmod(np.arange(g * g), g)
    cy, cx = (p * yy).sum(-1), (p * xx).sum(-1)
    spread = np.sqrt((p * ((yy - cy[..., None]) ** 2 + (xx - cx[..., None]) ** 2)).sum(-1))
    return pd.DataFrame({
        "exit": np.arange(1, depth + 1), "entropy_mean": entropy.mean(0), "entropy_std": entropy.std(0),
        "spread_mean": spread.mean(0), "spread_std": spread.std(0), "max_entropy": np.log(g * g),
    })


def fusion_strategies(depth: int) -> dict[str, np.ndarray | str]:
    """Named fusion strategies beyond F and FW: weights, or ``"zscore"`` for standardised FW."""
    from .fusion import depth_weights, exponential_weights, last_k_weights, uniform_weights

    return {
        "EX-FIQA-F": uniform_weights(depth),
        "EX-FIQA-FW": depth_weights(depth),
        f"last-{max(1, depth // 3)}": last_k_weights(depth, max(1, depth // 3)),
        "exp-depth": exponential_weights(depth, rate=0.3),
        "z-score FW": "zscore",
    }


def fused_sample_scores(scores: np.ndarray, strategy: np.ndarray | str) -> np.ndarray:
    """Per-sample fused scores for a strategy from :func:`fusion_strategies` or a weight vector."""
    from .fusion import fuse, zscore_fuse

    if isinstance(strategy, str):
        if strategy != "zscore":
            raise ValueError(f"unknown fusion strategy {strategy!r}")
        return zscore_fuse(scores)
    return fuse(scores, strategy)


def search_fusion_weights(
    study: Study, quality: str, fr: str, dataset: str, fmr: float, n_candidates: int = 200, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Weights (non-negative, summing to 1) with the lowest pAUC on ``dataset``: random search.

    Candidates: the uniform and depth weights, every one-hot exit and ``n_candidates`` Dirichlet
    draws (concentration 0.5). Returns the best weights and their pAUC on ``dataset``; apply them
    to other datasets to test whether learned fusion transfers.
    """
    cfg = study.config
    scores = study.exit_scores(dataset, quality).astype(np.float64)
    depth = scores.shape[1]
    sim = study.similarity(dataset, fr)
    mated = study.benchmark(dataset).comparisons["mated"].to_numpy(bool)
    rng = np.random.default_rng(seed)
    cands = [np.full(depth, 1 / depth), np.arange(1, depth + 1) / (depth * (depth + 1) / 2), *np.eye(depth)]
    cands += list(rng.dirichlet(np.full(depth, 0.5), size=n_candidates))
    pair_q = study.pair(dataset, scores @ np.stack(cands).T)  # (M, C)
    best_w, best_p = cands[0], np.inf
    for j, w in enumerate(cands):
        p = pauc(edc_many(sim, mated, pair_q[:, j], (fmr,), cfg.convention)[fmr], cfg.discard_limit)
        if p < best_p:
            best_w, best_p = w, p
    return np.asarray(best_w), float(best_p)


def fr_sanity(study: Study) -> pd.DataFrame:
    """Per dataset x FR model: 10-fold verification accuracy, EER and FNMR@FMR (no discarding).

    A check that the FR models and readers behave before any quality analysis is read.
    """
    cfg = study.config
    rows = []
    for fr in cfg.fr_models:
        for ds in cfg.datasets:
            sim = study.similarity(ds, fr)
            mated = study.benchmark(ds).comparisons["mated"].to_numpy(bool)
            acc = verification_accuracy(sim, mated, n_folds=min(10, len(sim)))
            row = {"dataset": cfg.datasets[ds].label, "fr_model": fr, "comparisons": len(sim), "mated": int(mated.sum()),
                   "accuracy_10fold": acc.mean, "eer": eer(sim[~mated], sim[mated])}
            for f, v in zip(cfg.fmr_targets, np.atleast_1d(fnmr_at_fmr(sim[~mated], sim[mated], cfg.fmr_targets)), strict=True):
                row[f"fnmr@fmr={f:g}"] = float(v)
            rows.append(row)
    return pd.DataFrame(rows)
