"""Notebook 04, early exit: analytic GFLOPs per exit, measured latency, the operating points
derived from the data, and an adaptive early exit (beyond the paper)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from exfiqa.config import ConfigError
from exfiqa.evaluation import fusion
from exfiqa.evaluation.exits import exit_label
from exfiqa.models.device import resolve_device
from exfiqa.models.flops import block_flops, exit_costs, fused_cost, head_flops, patch_embed_flops
from exfiqa.models.vitfiqa import ViTFIQA, ViTFIQAConfig, build_vitfiqa
from exfiqa.report.frames import study_models, tied_best
from exfiqa.study import Study

#: Variant tag -> ViT-FIQA variant of the released architectures.
_VARIANTS = {"T": "token", "C": "crfiqa"}


def _timed(fn, repeats: int, cuda: bool) -> np.ndarray:
    """Wall times (s) of ``repeats`` calls of ``fn``, each bracketed by a device synchronisation on CUDA."""
    sync = torch.cuda.synchronize if cuda else lambda: None
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def measure_latency(
    model: ViTFIQA, batch_size: int = 32, repeats: int = 5, device: str = "cpu", seed: int = 0
) -> pd.DataFrame:
    """Wall time per image (ms) of the truncated model at every exit ``1..depth`` and of all exits
    in one pass (``"all (one pass)"``): per row one warm-up call, then ``repeats`` timed calls
    (:func:`_timed`); median, interquartile range, min and max."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"parameter repeats must be an integer >= 1, got {repeats!r}")
    torch.manual_seed(seed)
    x = torch.randn(batch_size, 3, model.config.img_size, model.config.img_size, device=device)
    model = model.to(device).eval()
    cuda = str(device).startswith("cuda")
    calls = [(k, lambda k=k: model.score_at_exit(x, k)) for k in range(1, model.depth + 1)]
    calls.append(("all (one pass)", lambda: model.forward_exits(x)))
    rows = []
    with torch.inference_mode():
        for name, fn in calls:
            _timed(fn, 1, cuda)  # warm-up
            ms = 1e3 * _timed(fn, repeats, cuda) / batch_size
            q25, med, q75 = np.quantile(ms, [0.25, 0.5, 0.75])
            rows.append({"exit": name, "ms_per_image": float(med), "ms_q25": float(q25), "ms_q75": float(q75),
                         "ms_min": float(ms.min()), "ms_max": float(ms.max()), "repeats": repeats})
    return pd.DataFrame(rows)


def operating_points(pauc: pd.DataFrame, costs: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """The paper's three operating points per quality model, from the mean pAUC over datasets and
    FR models of each method with a cost in ``costs`` (:func:`study_costs`): max accuracy (lowest
    mean; ``tied_methods`` names every tied method when several), balanced and max efficiency (the
    cheapest single exit within ``tolerance``, ``2 * tolerance`` relative of the last exit's mean).
    ``resolved`` (where ``pauc`` has it): every pAUC in the mean is resolved."""
    rows: list[dict] = []
    for q, part in pauc.groupby("quality_model", sort=False):
        own = costs[costs["quality_model"] == q].set_index("method")
        cost, exit_of = own["gflops"], own["exit"]
        mean = part[part["method"].isin(cost.index)].groupby("method")["pauc"].mean()  # EX-FIQA methods only
        exits = [m for m in mean.index if pd.notna(exit_of[m])]
        last = max(exits, key=lambda m: exit_of[m])
        full = cost[last]
        tied = tied_best(mean.sort_index())
        picks = [("max accuracy", tied[0], ", ".join(tied) if len(tied) > 1 else "")]
        for name, tol in (("balanced", tolerance), ("max efficiency", 2 * tolerance)):
            within = [m for m in exits if mean[m] <= mean[last] * (1 + tol)]
            picks.append((name, min(within, key=lambda m: cost[m]), ""))
        ok = part.groupby("method")["resolved"].all() if "resolved" in part.columns else None
        for scenario, m, tied_text in picks:
            rows.append({"quality_model": q, "scenario": scenario, "method": m, "mean_pauc": float(mean[m]),
                         "gflops": float(cost[m]), "flop_saving": 1 - float(cost[m]) / full, "tied_methods": tied_text,
                         **({} if ok is None else {"resolved": bool(ok[m])})})
    return pd.DataFrame(rows)


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
    """Simulated adaptive early exit (beyond the paper) on (N, L) exit ``scores``: stop at the first
    exit >= ``min_exit`` whose running FW-fused score lies more than ``margin`` from ``threshold``,
    else at the last; ``gflops[l-1]``: the cost of running up to exit l (:func:`adaptive_cost_curve`)."""
    n, depth = scores.shape
    w = fusion.depth_ramp(depth)
    running = np.cumsum(scores * w, axis=1) / np.cumsum(w)
    confident = np.abs(running - threshold) > margin
    confident[:, : min_exit - 1] = False
    confident[:, -1] = True
    stop = confident.argmax(axis=1)
    cost = np.asarray(gflops, dtype=np.float64)
    return AdaptiveResult(stop + 1, running[np.arange(n), stop], float(cost[stop].mean()), float(cost[-1]))


def adaptive_cost_curve(model_cfg: ViTFIQAConfig, depth: int) -> list[float]:
    """GFLOPs of running exits 1..l with the heads evaluated at each of them (for adaptive exit)."""
    return [(patch_embed_flops(model_cfg) + k * (block_flops(model_cfg) + head_flops(model_cfg))) / 1e9 for k in range(1, depth + 1)]


def _costs(c: ViTFIQAConfig) -> list[tuple[int | None, float, float]]:
    """(exit, GFLOPs, saving against the full pass) of every exit, then (None, ...) of fusing all exits."""
    costs, fused = exit_costs(c), fused_cost(c)
    return [(e.exit, e.gflops, e.saving) for e in costs] + [(None, fused, 1 - fused / costs[-1].gflops)]


def released_gflops() -> pd.DataFrame:
    """Analytic GFLOPs per exit (and of fusing all exits) of the two released architectures."""
    rows = [{"model": f"ViT-FIQA ({tag}) released", "exit": "all fused" if k is None else str(k), "gflops": g,
             "flop_saving": saving}
            for tag, variant in _VARIANTS.items() for k, g, saving in _costs(ViTFIQAConfig(variant=variant))]
    return pd.DataFrame(rows)


def released_claims(released: pd.DataFrame) -> dict[str, float]:
    """The numbers the paper quotes, read from :func:`released_gflops`: (C) exit 7 and exit 12
    GFLOPs and saving, (T) exit 6 saving."""
    def get(model: str, exit: int, col: str) -> float:
        return float(released[(released["model"] == f"ViT-FIQA ({model}) released") & (released["exit"] == str(exit))][col].iloc[0])

    c7, c12 = get("C", 7, "gflops"), get("C", 12, "gflops")
    return {"c7_gflops": c7, "c12_gflops": c12, "c7_saving": 1 - c7 / c12, "t6_saving": get("T", 6, "flop_saving")}


def latency_table(study: Study, batch_size: int, repeats: int, full_size: bool) -> pd.DataFrame:
    """:func:`measure_latency` of the run's quality models whose checkpoint is here (and, if
    ``full_size``, the released architectures on random weights), on the run's device and seed."""
    cfg = study.config
    models = {q: study_models(study).quality_model(q) for q in cfg.quality_models if study.has_checkpoint("quality_models", q)}
    if full_size:
        models |= {f"{tag} full-size": build_vitfiqa(variant=variant) for tag, variant in _VARIANTS.items()}
    if not models:  # no checkpoint here and no full-size timing asked for
        return pd.DataFrame({"model": pd.Series(dtype=str), "exit": pd.Series(dtype=str), "ms_per_image": pd.Series(dtype=float)})
    device = str(resolve_device(cfg.device))
    lat = pd.concat({name: measure_latency(model, batch_size=batch_size, repeats=repeats, device=device, seed=cfg.seed)
                     for name, model in models.items()}, names=["model"]).reset_index(level=0).reset_index(drop=True)
    lat["exit"] = lat["exit"].astype(str)
    return lat


def model_architecture(study: Study, quality: str) -> tuple[ViTFIQAConfig, str]:
    """The architecture of quality model ``quality`` and where it comes from: its checkpoint when
    the file is there, else the released architecture of its variant at the depth of its arrays."""
    if study.has_checkpoint("quality_models", quality):
        return study_models(study).quality_model(quality).config, "checkpoint"
    tag = study.variant_tag(quality)
    if tag not in _VARIANTS:
        raise ConfigError(f"quality_models.{quality}: its checkpoint is not there and its variant is unknown; "
                          "label it 'ViT-FIQA (T)' or '(C)', or provide the checkpoint")
    return ViTFIQAConfig(variant=_VARIANTS[tag], depth=study.depth(quality)), "released architecture (no checkpoint here)"


def study_costs(study: Study) -> pd.DataFrame:
    """Analytic GFLOPs per exit and of F and FW (fusing all exits) of every quality model
    (:func:`model_architecture`): ``quality_model, exit`` (NA for the fusions) ``, method, gflops, saving``."""
    rows = []
    for q in study.config.quality_models:
        for k, g, saving in _costs(model_architecture(study, q)[0]):
            for m in [exit_label(k)] if k is not None else ["EX-FIQA-F", "EX-FIQA-FW"]:
                rows.append({"quality_model": q, "exit": pd.NA if k is None else k, "method": m, "gflops": g,
                             "saving": saving})
    return pd.DataFrame(rows).astype({"exit": "Int64"})


def pauc_cost_points(
    pauc_table: pd.DataFrame, costs: pd.DataFrame, quality: str, fr: str, fmr: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(exits, fusion): pAUC and GFLOPs per dataset of every exit and of EX-FIQA-FW (the
    pAUC-vs-GFLOPs figure); ``pauc_table``: a :func:`exfiqa.report.frames.pauc_all` frame."""
    part = pauc_table[(pauc_table["quality_model"] == quality) & (pauc_table["fr_model"] == fr) & np.isclose(pauc_table["fmr"], fmr)]
    merged = part.merge(costs[costs["quality_model"] == quality][["method", "gflops"]], on="method")
    return merged[merged["exit"].notna()], merged[merged["method"] == "EX-FIQA-FW"]


def adaptive_study(
    study: Study, fr: str, fmr: float, reject_fraction: float, margin: float, min_exit: int
) -> pd.DataFrame:
    """:func:`adaptive_exit` on every dataset and quality model: the gate rejects the worst
    ``reject_fraction`` by the full-depth FW score, the rule stops ``margin`` standard deviations
    (of that score) from its threshold. ``gate_agreement``: the share of images the adaptive gate
    decides as the full one, beside the trivial gates' (accept all, reject all); pAUCs x ``pauc_scale``.
    """
    if not 0 < reject_fraction < 1:
        raise ConfigError(f"reject_fraction must lie in (0, 1), got {reject_fraction}")
    cfg = study.config
    rows = []
    for q in cfg.quality_models:
        arch, _ = model_architecture(study, q)
        cum_cost = adaptive_cost_curve(arch, arch.depth)
        for ds in cfg.datasets:
            scores = study.exit_scores(ds, q).astype(np.float64)
            full = scores @ fusion.depth_weights(arch.depth)
            thr = float(np.quantile(full, reject_fraction))
            res = adaptive_exit(scores, thr, margin * float(full.std()), min_exit, cum_cost)
            agree = float(np.mean((res.score > thr) == (full > thr)))
            accept_all = float(np.mean(full > thr))  # the gate accepts score > thr
            p_ad, p_fw = study.pauc_of(ds, fr, np.stack([res.score, full], axis=1), (fmr,))[fmr] * cfg.pauc_scale
            rows.append({
                "quality_model": q, "dataset": cfg.datasets[ds].label, "mean_exit": float(res.exit_used.mean()),
                "compute_saving": 1 - res.mean_gflops / res.full_gflops,
                "gate_agreement": agree, "agreement_accept_all": accept_all, "agreement_reject_all": 1 - accept_all,
                "beats_trivial_gates": bool(agree > max(accept_all, 1 - accept_all)),
                "pauc_adaptive": float(p_ad), "pauc_fw_all_exits": float(p_fw),
            })
    return pd.DataFrame(rows)
