"""Study-level analyses the notebooks call: EDC/pAUC over datasets x FR models x quality models,
exit-to-exit agreement, fusion comparisons, operating points and adaptive early exit.

Every pAUC frame carries ``convention``, ``limit`` and ``scale`` columns (from
:func:`exfiqa.evaluation.metrics.pauc_frame`), so a written table can never be read under the wrong protocol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from exfiqa.config import ConfigError
from exfiqa.evaluation import fusion
from exfiqa.evaluation.bootstrap import bootstrap_samples
from exfiqa.evaluation.metrics import eer, fnmr_at_fmr, verification_accuracy
from exfiqa.extract.models import Models
from exfiqa.models.flops import exit_costs, fused_cost
from exfiqa.models.vitfiqa import ViTFIQA, ViTFIQAConfig
from exfiqa.study import Study

__all__ = [
    "AdaptiveResult",
    "adaptive_cost_curve",
    "adaptive_exit",
    "attention_contrast",
    "attention_maps",
    "attention_statistics",
    "attention_unavailable",
    "fr_sanity",
    "search_fusion_weights",
    "cost_table",
    "model_architecture",
    "edc_all",
    "fusion_wins",
    "measure_latency",
    "operating_points",
    "pauc_all",
    "unresolved",
    "paired_vs_reference",
    "rank_correlation",
]


def _available(study: Study, quality: str, dataset: str, methods: Sequence[str] | None) -> list[str]:
    """``methods`` (default: all of the run's) that have scores on ``dataset``."""
    have = study.methods(quality, dataset)
    return have if methods is None else [m for m in methods if m in have]


def edc_all(study: Study, quality: str, fr: str, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy EDC points of every method on every configured dataset (one FR and quality model).

    Bounded: each method's order and each dataset's scores are computed once by the Study
    (:meth:`exfiqa.study.Study.edc_frame`) and reused by every FMR target.
    """
    frames = [study.edc_frame(ds, fr, quality, _available(study, quality, ds, methods)) for ds in study.config.datasets]
    return pd.concat(frames, ignore_index=True)


def pauc_all(study: Study, methods: Sequence[str] | None = None, scale: float = 1.0) -> pd.DataFrame:
    """Tidy pAUC of every method x dataset x FR model x quality model x FMR target.

    Bounded (:meth:`exfiqa.study.Study.pauc_frame`): per dataset one scores object per FR
    model and one order per method, each reused across the other loops.
    """
    cfg = study.config
    frames = []
    for q in cfg.quality_models:
        for fr in cfg.fr_models:
            for ds in cfg.datasets:
                f = study.pauc_frame(ds, fr, q, _available(study, q, ds, methods), scale=scale)
                f.insert(0, "quality_model", q)
                frames.append(f)
    return pd.concat(frames, ignore_index=True)


def unresolved(pauc: pd.DataFrame) -> pd.DataFrame:
    """The rows of a tidy pAUC table (:func:`pauc_all`) whose FMR target is not resolved
    (column ``resolved`` False: fewer than one expected false match at the threshold, for the whole
    set or at a ``recompute`` level up to the limit; :func:`exfiqa.evaluation.metrics.resolvable`).

    Findings should leave these cells out or say that they rest on them: filter with
    ``pauc[pauc["resolved"]]``.
    """
    if "resolved" not in pauc.columns:
        raise ValueError("pauc: no 'resolved' column (a table from exfiqa.evaluation.metrics.pauc_rows / analysis.pauc_all has one)")
    return pauc[~pauc["resolved"].astype(bool)].reset_index(drop=True)


def rank_correlation(sample_quality: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Spearman rank correlation between the per-sample scores of ``methods`` (a square frame)."""
    rho = spearmanr(sample_quality[list(methods)].to_numpy()).statistic
    rho = np.atleast_2d(rho)
    return pd.DataFrame(rho, index=list(methods), columns=list(methods))


def fusion_wins(pauc: pd.DataFrame, challenger: str, reference: str) -> pd.DataFrame:
    """Per (quality model, FR model, FMR): on how many datasets ``challenger`` has a lower pAUC.

    Returns columns ``quality_model, fr_model, fmr, wins, n, unresolved, summary``. Point
    estimates, no intervals (a tie, :func:`is_tie`, is no win): whether a difference is resolved,
    the paired bootstrap says (:func:`paired_vs_reference`, :func:`paper_findings`). With a
    ``resolved`` column, datasets where either pAUC rests on an FMR target the data cannot
    resolve are left out of ``n`` and counted in ``unresolved``.
    """
    keys = ["quality_model", "fr_model", "fmr", "dataset"]
    both = pauc[pauc["method"].isin([challenger, reference])]
    wide = both.pivot_table(index=keys, columns="method", values="pauc")
    a, b = wide[challenger], wide[reference]
    counted = (both.groupby(keys)["resolved"].all().reindex(wide.index).astype(bool) if "resolved" in both.columns
               else pd.Series(True, index=wide.index))
    tie = np.array([is_tie(x, y) for x, y in zip(a, b, strict=True)], dtype=bool)
    flags = pd.DataFrame({"win": (a < b) & ~tie & counted, "counted": counted})
    out = flags.groupby(level=[0, 1, 2]).agg(wins=("win", "sum"), n=("counted", "sum"), total=("counted", "size")).reset_index()
    out["wins"], out["n"] = out["wins"].astype(int), out["n"].astype(int)
    out["unresolved"] = (out.pop("total") - out["n"]).astype(int)
    out["summary"] = [f"{challenger} has a lower pAUC (point estimate) than {reference} on {w} of {n}"
                      + (f" ({u} more left out: FMR target not resolvable)" if u else "")
                      for w, n, u in zip(out["wins"], out["n"], out["unresolved"], strict=True)]
    return out


BOOTSTRAP_UNITS = ("subject", "comparison")
"""What a bootstrap resamples: the independent units of each benchmark (``subject``, the
default: :meth:`exfiqa.study.Study.subjects`) or comparisons as if independent."""


def bootstrap_units(study: Study, dataset: str, unit: str) -> tuple[Any, str, int]:
    """``(subjects argument, unit name, number of units)`` of a bootstrap on ``dataset``.

    ``unit="subject"``: the dataset's units (:meth:`exfiqa.study.Study.subjects`);
    ``"comparison"``: None (comparisons resampled, stratified) and the comparison count.
    """
    if unit == "subject":
        return study.subjects(dataset)
    if unit == "comparison":
        return None, "comparison", int(study.scores(dataset, next(iter(study.config.fr_models))).n)
    raise ValueError(f"unit: expected one of {BOOTSTRAP_UNITS}, got {unit!r}")


def unit_summary(study: Study) -> pd.DataFrame:
    """What a subject bootstrap resamples on each dataset: the unit, how many, how many
    comparisons each enters on average, and, where the unit is the pair (the ``.bin`` sets), how
    often their images repeat across pairs (by the SHA-256 of the encoded image bytes;
    :func:`exfiqa.evaluation.subjects.repeated_images`): repeated images tie pairs together that the pair
    bootstrap treats as independent."""
    import hashlib

    from exfiqa.evaluation.subjects import repeated_images
    from exfiqa.readers.benchmarks import _load_bin

    rows = []
    for ds, spec in study.config.datasets.items():
        _, unit, n_units = study.subjects(ds)
        comp = study.comparison_set(ds)
        row: dict[str, Any] = {"dataset": spec.label, "unit": unit, "n_units": n_units, "comparisons": int(comp.n),
                               "comparisons_per_unit": 2 * comp.n / n_units if unit != "pair" else 1.0,
                               "images_in_another_pair": float("nan"), "max_pairs_per_image": float("nan")}
        if unit == "pair" and spec.kind == "bin":
            bins, _ = _load_bin(Path(spec.args["path"]))
            rep = repeated_images(np.array([hashlib.sha256(b).hexdigest() for b in bins]))
            row["images_in_another_pair"], row["max_pairs_per_image"] = rep["shared_pairs"], rep["max_uses"]
        rows.append(row)
    return pd.DataFrame(rows)


def _diff_interval(diff: np.ndarray) -> tuple[float, float, np.ndarray]:
    """95% percentile interval of the defined paired differences, and which are defined."""
    ok = np.isfinite(diff)
    if not ok.any():
        return float("nan"), float("nan"), ok
    lo, hi = np.quantile(diff[ok], [0.025, 0.975])
    return float(lo), float(hi), ok


def paired_vs_reference(
    study: Study, quality: str, fr: str, methods: Sequence[str], reference: str, fmr: float, n_boot: int = 500,
    unit: str = "subject",
) -> pd.DataFrame:
    """Paired bootstrap of pAUC(method) - pAUC(reference) per dataset, with 95% intervals.

    All methods and the reference are evaluated on the same resamples in one pass
    (:func:`exfiqa.evaluation.bootstrap.bootstrap_samples`; each difference equals
    :func:`exfiqa.evaluation.bootstrap.paired_bootstrap` of the pair), from the Study's scores and orders,
    bounded at IJB-C and all-vs-all sizes. ``unit``: what is resampled (:data:`BOOTSTRAP_UNITS`);
    the rows say it (``unit``, ``n_units``, ``n_boot``).
    ``resolved``: both pAUCs have a resolvable FMR target (:meth:`exfiqa.study.Study.resolved`).
    """
    cfg = study.config
    rows = []
    for ds in cfg.datasets:
        scores = study.scores(ds, fr)
        names = [reference, *methods]
        orders = [study.ordering(ds, quality, m) for m in names]
        est = [study.pauc_order(ds, fr, o, fmr) for o in orders]
        subjects, unit_name, n_units = bootstrap_units(study, ds, unit)
        res = [study.resolved(ds, fr, o, fmr) for o in orders]
        samples = bootstrap_samples(scores, orders, fmr, cfg.convention, cfg.discard_limit, n_boot, cfg.seed,
                                    subtract_best=cfg.subtract_best, subjects=subjects, **study.rules())
        for m, e, s, r in zip(methods, est[1:], samples[1:], res[1:], strict=True):
            diff = s - samples[0]
            lo, hi, ok = _diff_interval(diff)
            rows.append({
                "quality_model": quality, "dataset": cfg.datasets[ds].label, "fr_model": fr, "fmr": fmr,
                "method": m, "reference": reference, "delta_pauc": e - est[0], "ci_low": lo,
                "ci_high": hi, "p_better": float(np.mean(s[ok] < samples[0][ok])), "convention": cfg.convention,
                "limit": cfg.discard_limit, "unit": unit_name, "n_units": n_units, "n_boot": int(n_boot),
                "n_defined": int(ok.sum()), "resolved": bool(r and res[0]),
            })
    return pd.DataFrame(rows)


def cost_table(model: ViTFIQA | ViTFIQAConfig) -> pd.DataFrame:
    """Analytic GFLOPs per exit and of fusing all exits for ``model``'s configuration (or a configuration)."""
    c = model if isinstance(model, ViTFIQAConfig) else model.config
    rows = [{"exit": e.exit, "method": f"Exit {e.exit}", "gflops": e.gflops, "saving": e.saving} for e in exit_costs(c)]
    full = rows[-1]["gflops"]
    fused = fused_cost(c)
    rows += [{"exit": c.depth, "method": m, "gflops": fused, "saving": 1 - fused / full} for m in ("EX-FIQA-F", "EX-FIQA-FW")]
    return pd.DataFrame(rows)


def _timed(fn, repeats: int, cuda: bool) -> np.ndarray:
    """Wall times (s) of ``repeats`` calls of ``fn``, each bracketed by a device synchronisation on CUDA."""
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def measure_latency(
    model: ViTFIQA, batch_size: int = 32, repeats: int = 5, device: str = "cpu", seed: int = 0
) -> pd.DataFrame:
    """Measured wall time per image of the truncated model at every exit and of all exits in one
    pass, every row timed the same way.

    Each row: one untimed warm-up call, then ``repeats`` timed calls, each bracketed by
    ``torch.cuda.synchronize()`` on a CUDA device (kernels are asynchronous). Columns: ``exit``
    (``1..depth`` or ``"all (one pass)"``), ``ms_per_image`` (the median), ``ms_q25``, ``ms_q75``
    (the interquartile range), ``ms_min``, ``ms_max``, ``repeats``; all per image.
    """
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
    """Derive the paper's three operating points from data (per quality model).

    Mean pAUC over datasets and FR models per EX-FIQA method (exits and fusions, the methods with a
    cost in ``costs``); then
    - max accuracy: the method with the lowest mean pAUC;
    - balanced: the cheapest single exit whose mean pAUC is within ``tolerance`` (relative) of the
      last exit's;
    - max efficiency: the cheapest single exit within ``2 * tolerance`` of the last exit's.

    ``tied_methods``: for max accuracy, every method tied (:func:`is_tie`) for the lowest mean pAUC
    when there are several (the row shows the first by name); empty otherwise.
    ``resolved`` (when ``pauc`` has that column): every pAUC in the method's mean is resolved.
    """
    rows = []
    for q, part in pauc.groupby("quality_model", sort=False):
        cost = costs[costs["quality_model"] == q].set_index("method")["gflops"]
        mean = part[part["method"].isin(cost.index)].groupby("method")["pauc"].mean()  # EX-FIQA methods only
        exits = [m for m in mean.index if m.startswith("Exit ")]
        last = max(exits, key=lambda m: int(m.split()[1]))
        full = cost[last]
        tied = tied_best(mean.sort_index())
        rows.append({**_point(q, "max accuracy", tied[0], mean, cost, full), "tied_methods": ", ".join(tied) if len(tied) > 1 else ""})
        for name, tol in (("balanced", tolerance), ("max efficiency", 2 * tolerance)):
            ok = [m for m in exits if mean[m] <= mean[last] * (1 + tol)]
            pick = min(ok, key=lambda m: cost[m])
            rows.append({**_point(q, name, pick, mean, cost, full), "tied_methods": ""})
        if "resolved" in part.columns:
            ok = part.groupby("method")["resolved"].all()
            for r in rows:
                if r["quality_model"] == q:
                    r["resolved"] = bool(ok[r["method"]])
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
    from exfiqa.models.flops import block_flops, head_flops, patch_embed_flops

    return [(patch_embed_flops(model_cfg) + k * (block_flops(model_cfg) + head_flops(model_cfg))) / 1e9 for k in range(1, depth + 1)]


def attention_maps(model: ViTFIQA, images: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Mean attention over the patch grid at every exit: (N, depth, g, g), heads averaged.

    (T): the quality token's attention row over the patches; (C): the mean attention each patch
    receives (there is no quality token). Rows are renormalised over the patches.
    """
    from exfiqa.models.vitfiqa import attention_grid, capture_attention
    from exfiqa.readers.images import to_tensor

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


#: Normalised entropy (entropy / log(patches)) at or above which a map counts as low-contrast:
#: practically uniform (0.99: at most 1% below the entropy of the uniform map).
LOW_CONTRAST_ENTROPY = 0.99


def attention_contrast(maps: np.ndarray) -> np.ndarray:
    """Normalised entropy of each attention map: entropy / log(patches), in [0, 1] (1 = uniform).

    ``maps``: (..., g, g), each map summing to 1. A map at or above :data:`LOW_CONTRAST_ENTROPY` is
    low-contrast: min-max scaling it on its own amplifies noise.
    """
    g2 = maps.shape[-1] * maps.shape[-2]
    p = maps.reshape(*maps.shape[:-2], g2).astype(np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)
    return np.asarray(entropy / np.log(g2))


def attention_statistics(maps: np.ndarray) -> pd.DataFrame:
    """Per exit: entropy (nats) of the attention over patches, its spatial spread and its contrast.

    ``maps``: (N, depth, g, g), each map summing to 1. Spread = attention-weighted RMS distance of
    the patches from the map's centroid, in patch units. Mean and std over the N images.
    Contrast: ``normalised_entropy`` (mean entropy / ``max_entropy``, 1 = uniform),
    ``max_min_ratio`` (mean over images of the largest over the smallest patch weight; 1 = uniform)
    and ``low_contrast`` (normalised entropy >= :data:`LOW_CONTRAST_ENTROPY`: practically uniform,
    nothing to interpret).
    """
    n, depth, g, _ = maps.shape
    p = maps.reshape(n, depth, -1).astype(np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)
    yy, xx = np.divmod(np.arange(g * g), g)
    cy, cx = (p * yy).sum(-1), (p * xx).sum(-1)
    spread = np.sqrt((p * ((yy - cy[..., None]) ** 2 + (xx - cx[..., None]) ** 2)).sum(-1))
    ratio = p.max(-1) / np.clip(p.min(-1), 1e-12, None)
    norm = entropy.mean(0) / np.log(g * g)
    return pd.DataFrame({
        "exit": np.arange(1, depth + 1), "entropy_mean": entropy.mean(0), "entropy_std": entropy.std(0),
        "spread_mean": spread.mean(0), "spread_std": spread.std(0), "max_entropy": np.log(g * g),
        "normalised_entropy": norm, "max_min_ratio": ratio.mean(0), "low_contrast": norm >= LOW_CONTRAST_ENTROPY,
    })


def search_fusion_weights(
    study: Study, quality: str, fr: str, dataset: str, fmr: float, n_candidates: int = 200, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Weights (non-negative, summing to 1) with the lowest pAUC on ``dataset``: random search.

    Candidates: the uniform and depth weights, every one-hot exit and ``n_candidates`` Dirichlet
    draws (concentration 0.5); the first candidate with the lowest pAUC wins. Returns the best
    weights and their pAUC on ``dataset``; apply them to other datasets to test whether learned
    fusion transfers. Bounded: one candidate's fused per-sample scores (float32) and order at a
    time, against the Study's scores.

    Why a random search: pAUC depends on the weights only through the order of the fused scores,
    so it is a step function of the weights (zero gradient almost everywhere, jumps where two
    samples swap). scikit-learn's (and scipy's) gradient-based or least-squares fitters optimise
    a smooth surrogate loss against a target, not the pAUC of a discard curve, so they do not
    apply; a derivative-free search over the simplex optimises the criterion itself.
    """
    scores = study.exit_scores(dataset, quality).astype(np.float64)
    depth = scores.shape[1]
    rng = np.random.default_rng(seed)
    cands = [fusion.uniform_weights(depth), fusion.depth_weights(depth), *np.eye(depth)]
    cands += list(rng.dirichlet(np.full(depth, 0.5), size=n_candidates))
    best_w, best_p = cands[0], np.inf
    for w in cands:
        p = study.pauc_of(dataset, fr, scores @ w, (fmr,))[float(fmr)][0]
        if p < best_p:
            best_w, best_p = w, p
    return np.asarray(best_w), float(best_p)


def fr_sanity(study: Study) -> pd.DataFrame:
    """Per dataset x FR model: 10-fold verification accuracy, EER and FNMR@FMR (no discarding).

    A check that the FR models and readers behave before any quality analysis is read. Uses the
    Study's scores (float32 similarities); an all-vs-all set is evaluated without materialising
    its similarities (:func:`exfiqa.evaluation.pairs.all_pairs_sanity`, exact).
    """
    from exfiqa.evaluation.pairs import AllPairs, all_pairs_sanity

    cfg = study.config
    rows = []
    for fr in cfg.fr_models:
        for ds in cfg.datasets:
            comp = study.comparison_set(ds)
            row = {"dataset": cfg.datasets[ds].label, "fr_model": fr, "comparisons": comp.n}
            if isinstance(comp, AllPairs):
                stats = all_pairs_sanity(study.scores(ds, fr), cfg.fmr_targets)
                row.update(mated=comp.n_m, accuracy_10fold=stats["accuracy_10fold"], eer=stats["eer"])
                fnmr = stats["fnmr"]
            else:
                sim, mated = study.similarity(ds, fr), comp.mated
                acc = verification_accuracy(sim, mated, n_folds=min(10, len(sim)))
                row.update(mated=int(mated.sum()), accuracy_10fold=acc.mean, eer=eer(sim[~mated], sim[mated]))
                fnmr = np.atleast_1d(fnmr_at_fmr(sim[~mated], sim[mated], cfg.fmr_targets))
            for f, v in zip(cfg.fmr_targets, fnmr, strict=True):
                row[f"fnmr@fmr={f:g}"] = float(v)
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ what the notebooks show
# Table and figure assembly the notebooks call, so that a notebook is parameters, a few calls,
# figures and prose. pAUC values here are the raw area times the config's ``pauc_scale``.


@dataclass(frozen=True)
class Headline:
    """The headline operating point: dataset (config key and label), FR model and FMR target."""

    dataset: str
    label: str
    fr_model: str
    fmr: float


def headline(cfg, fmr: float | None = None) -> Headline:
    """The run's headline (the poster's IJB-C / ArcFace / FMR 1e-3) from the config's ``headline``.

    Dataset and FR model: ``headline.dataset`` / ``headline.fr_model`` when the run has them, else
    the run's first. FMR: ``fmr`` if given (a notebook parameter), else ``headline.fmr``, else
    1e-3 if it is a target, else the first target. It must be one of ``fmr_targets``.
    """
    from exfiqa.config import ConfigError

    h = cfg.headline
    ds = h["dataset"] if h.get("dataset") in cfg.datasets else next(iter(cfg.datasets))
    fr = h["fr_model"] if h.get("fr_model") in cfg.fr_models else next(iter(cfg.fr_models))
    if fmr is not None:
        value, source = fmr, "parameter headline_fmr"
    elif "fmr" in h:
        value, source = h["fmr"], "headline.fmr of the config"
    else:
        value = 1e-3 if any(np.isclose(1e-3, f) for f in cfg.fmr_targets) else cfg.fmr_targets[0]
        source = "the default"
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    match = [f for f in cfg.fmr_targets if number and np.isclose(value, f)]
    if not match:
        raise ConfigError(
            f"headline FMR {value!r} ({source}) is not one of fmr_targets {list(cfg.fmr_targets)}; "
            "set headline.fmr in the config or pass -p headline_fmr"
        )
    return Headline(ds, cfg.datasets[ds].label, fr, float(match[0]))


def fmr_target(cfg, value: float | None, name: str, default: str = "smallest") -> float:
    """A notebook's FMR parameter: ``value`` if given (must be a target), else the smallest target."""
    from exfiqa.config import ConfigError

    if value is None:
        return float(min(cfg.fmr_targets) if default == "smallest" else max(cfg.fmr_targets))
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    match = [f for f in cfg.fmr_targets if number and np.isclose(value, f)]
    if not match:
        raise ConfigError(f"{name} {value!r} is not one of fmr_targets {list(cfg.fmr_targets)}")
    return float(match[0])


def table_protocol(cfg, fmr: float | None = None, seed: bool = False) -> dict:
    """The protocol columns of a table of this run (:func:`exfiqa.report.tables.protocol`)."""
    from exfiqa.report.tables import protocol

    out = protocol(cfg.convention, cfg.discard_limit, fmr, cfg.pauc_scale, cfg.seed if seed else None)
    for key, default in (("threshold_rule", "at_most"), ("acceptance", "similarity>=")):
        if getattr(cfg, key, default) != default:  # stated where it differs from the default only
            out[key] = getattr(cfg, key)
    return out


def variant_tags(study: Study) -> dict[str, tuple[str, int]]:
    """Quality model name -> (tag, depth): ``T`` for the token variant, ``C`` for CR-FIQA
    (:meth:`Study.variant_tag`); the depth from the exit-score arrays (:meth:`Study.depth`), so no
    weights are loaded to learn it."""
    return {q: (study.variant_tag(q), study.depth(q)) for q in study.config.quality_models}


# --- 01: depth


def depth_summary(pauc_table: pd.DataFrame, depths: dict[str, int], fmr: float) -> pd.DataFrame:
    """Per quality model: mean pAUC (over datasets and FR models) of exit 1 and the last exit,
    the share of the exit-1-to-last change reached by exit 5 and by exit 8, the best single exit
    (every exit tied for best named, :func:`best_text`).

    ``depths``: quality model -> depth. Share = (pAUC(1) - pAUC(k)) / (pAUC(1) - pAUC(last)).
    """
    rows = []
    for q, depth in depths.items():
        part = pauc_table[(pauc_table["quality_model"] == q) & np.isclose(pauc_table["fmr"], fmr)]
        if part.empty:  # e.g. every dataset left out (unresolvable FMR target)
            continue
        mean = part.groupby("method")["pauc"].mean()
        first, last = mean["Exit 1"], mean[f"Exit {depth}"]
        total = first - last

        def share(k: int, first=first, total=total, mean=mean, depth=depth) -> float:
            return float((first - mean[f"Exit {min(k, depth)}"]) / total) if total else float("nan")

        best = best_text(mean[[f"Exit {k}" for k in range(1, depth + 1)]])
        rows.append({
            "quality_model": q, "pauc_exit_1": float(first), "pauc_last_exit": float(last), "last_exit": depth,
            "share_of_gain_by_exit_5": share(5), "share_of_gain_by_exit_8": share(8), "best_single_exit": best,
        })
    return pd.DataFrame(rows)


# --- 03: fusion


def fusion_vs_exits(head: pd.DataFrame, depths: dict[str, int]) -> pd.DataFrame:
    """Per quality model, FR model and dataset (``head``: pAUC rows at one FMR): the last exit,
    the best single exit (chosen with hindsight; every tied exit named, :func:`best_text`),
    EX-FIQA-F and EX-FIQA-FW; with a ``resolved`` column in ``head``, the flags of
    :func:`exfiqa.report.tables.flag_unresolved` follow."""
    from exfiqa.report.tables import flag_unresolved

    rows, flags = [], []
    for (q, fr, ds), part in head.groupby(["quality_model", "fr_model", "dataset"], sort=False):
        p = part.set_index("method")["pauc"]
        depth = depths[q]
        exits = p[[f"Exit {k}" for k in range(1, depth + 1)]]
        rows.append({
            "quality_model": q, "fr_model": fr, "dataset": ds, "last exit": float(p[f"Exit {depth}"]),
            "best single exit": best_text(exits), "best exit pAUC": float(exits.min()), "EX-FIQA-F": float(p["EX-FIQA-F"]),
            "EX-FIQA-FW": float(p["EX-FIQA-FW"]),
        })
        if "resolved" in part.columns:
            r = part.set_index("method")["resolved"].astype(bool)
            flags.append({"last exit": r[f"Exit {depth}"], "best exit pAUC": bool(r[tied_best(exits)].all()), "EX-FIQA-F": r["EX-FIQA-F"],
                          "EX-FIQA-FW": r["EX-FIQA-FW"]})
    out = pd.DataFrame(rows)
    return flag_unresolved(out, pd.DataFrame(flags, index=out.index)) if flags else out


def fusion_bootstrap(study: Study, fr: str, fmr: float, n_boot: int, unit: str = "subject") -> pd.DataFrame:
    """Paired bootstrap of F and FW against the last exit, per quality model and dataset
    (:func:`paired_vs_reference`, resampling ``unit``), with ``delta_pauc`` and its interval
    times ``pauc_scale``."""
    cfg = study.config
    parts = []
    for q, (_, depth) in variant_tags(study).items():
        parts.append(paired_vs_reference(study, q, fr, ["EX-FIQA-F", "EX-FIQA-FW"], f"Exit {depth}", fmr, n_boot=n_boot,
                                         unit=unit))
    return _scaled(pd.concat(parts, ignore_index=True), cfg)


def depth_bootstrap(study: Study, fr: str, fmr: float, n_boot: int, unit: str = "subject") -> pd.DataFrame:
    """Paired bootstrap of the last exit against exit 1, per quality model and dataset
    (:func:`paired_vs_reference`, resampling ``unit``; ``delta_pauc`` = pAUC(last) - pAUC(exit 1),
    < 0: depth helps), scaled and labelled as :func:`fusion_bootstrap`; for the "depth gains" finding."""
    parts = [paired_vs_reference(study, q, fr, [f"Exit {depth}"], "Exit 1", fmr, n_boot=n_boot, unit=unit)
             for q, (_, depth) in variant_tags(study).items()]
    return _scaled(pd.concat(parts, ignore_index=True), study.config)


def _scaled(boot: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """A paired-bootstrap table with ``delta_pauc`` and its interval times ``pauc_scale`` (+ scale, seed)."""
    for col in ("delta_pauc", "ci_low", "ci_high"):
        boot[col] = boot[col] * cfg.pauc_scale
    boot["scale"] = float(cfg.pauc_scale)
    boot["seed"] = int(cfg.seed)
    return boot


@dataclass(frozen=True)
class StrategyResult:
    """Fusion strategies on every dataset: ``tidy`` rows, the ``wide`` table (datasets as
    columns, plus their mean) and the ``learned`` weights per quality model."""

    tidy: pd.DataFrame
    wide: pd.DataFrame
    learned: dict[str, np.ndarray]


def strategy_table(study: Study, fr: str, fmr: float, learn_on: str, n_candidates: int = 200) -> StrategyResult:
    """pAUC of the last exit, every :func:`exfiqa.evaluation.fusion.strategies` entry and weights learned on
    ``learn_on`` (:func:`search_fusion_weights`), on each dataset, for FR model ``fr``."""
    cfg = study.config
    rows, learned = [], {}
    for q, (_, depth) in variant_tags(study).items():
        w, _ = search_fusion_weights(study, q, fr, learn_on, fmr, n_candidates=n_candidates, seed=cfg.seed)
        learned[q] = w
        strategies = [fusion.Strategy(f"Exit {depth}", weights=np.eye(depth)[-1]),
                      *fusion.strategies(depth).values(), fusion.Strategy("learned", weights=w)]
        for ds in cfg.datasets:
            scores = study.exit_scores(ds, q).astype(np.float64)
            fused = np.stack([s.apply(scores) for s in strategies], axis=1)
            values = study.pauc_of(ds, fr, fused, (fmr,))[fmr] * cfg.pauc_scale
            ok = study.resolved_of(ds, fr, fused, fmr)
            for s, v, r in zip(strategies, values, ok, strict=True):
                rows.append({"quality_model": q, "dataset": cfg.datasets[ds].label, "strategy": s.name, "pauc": float(v),
                             "fitted_here": s.name == "learned" and ds == learn_on, "resolved": bool(r)})
    tidy = pd.DataFrame(rows)
    return StrategyResult(tidy, _wide_with_mean(tidy, "strategy"), learned)


def _wide_with_mean(tidy: pd.DataFrame, rows: str) -> pd.DataFrame:
    """``pauc`` by (quality model, ``rows``) x dataset plus the datasets' mean, with the flags of
    :func:`exfiqa.report.tables.flag_unresolved` (the mean is unresolved where any of its cells is)."""
    from exfiqa.report.tables import flag_unresolved

    keys = ["quality_model", rows]
    wide = tidy.pivot_table(index=keys, columns="dataset", values="pauc", sort=False)
    wide["mean"] = wide.mean(axis=1)
    ok = tidy.pivot_table(index=keys, columns="dataset", values="resolved", aggfunc="all", sort=False).astype(bool)
    ok["mean"] = ok.all(axis=1)
    wide = flag_unresolved(wide, ok).reset_index()
    wide.columns.name = None
    return wide


# --- 03: data-chosen exits (EX-FIQA-DC)


def mated_similarity_label(study: Study, dataset: str, fr: str) -> np.ndarray:
    """EX-FIQA-DC's pseudo-label: each side's **mean mated similarity** under FR model ``fr``.

    A side is what a comparison pairs: a sample (pair lists, Adience all-vs-all) or a template
    (IJB-C). Its label is the mean similarity of the mated comparisons it takes part in, exactly
    as evaluated (:meth:`Study.scores`: float32 similarities, averaged in float64), NaN for a
    side in no mated comparison (left out of the correlations). Well-defined on every benchmark
    kind and O(sides + mated comparisons) in memory. A certainty ratio (mated / max non-mated)
    was not chosen: sparse pair lists give most samples one or two non-mated comparisons, and
    all-vs-all would need every non-mated similarity per sample (one more full scan).
    """
    from exfiqa.evaluation.pairs import AllPairs

    comp = study.comparison_set(dataset)
    scores = study.scores(dataset, fr)
    refs = np.asarray(scores.mated_refs)
    if isinstance(comp, AllPairs):
        i, j, n = refs[:, 0], refs[:, 1], comp.n_samples
    else:
        i, j, n = comp.a[refs], comp.b[refs], comp.n_sides
    sim = np.asarray(scores.sim_m, dtype=np.float64)
    total = np.bincount(i, sim, minlength=n) + np.bincount(j, sim, minlength=n)
    count = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def calibration_set(study: Study, dataset: str, quality: str, fr: str):
    """:class:`exfiqa.evaluation.fusion.CalibrationSet` of ``dataset``: the exit scores of ``quality``, the
    :func:`mated_similarity_label` under ``fr``, and (templates) each sample's template, in the
    sorted template order the comparisons use."""
    from exfiqa.evaluation.fusion import CalibrationSet

    bench = study.benchmark(dataset)
    sides = None
    if bench.level == "template":
        _, sides = np.unique(bench.samples["template_id"].to_numpy(), return_inverse=True)
        sides = sides.ravel()
    return CalibrationSet(np.asarray(study.exit_scores(dataset, quality)), mated_similarity_label(study, dataset, fr), sides, dataset)


def calibration_datasets(datasets: Sequence[str], evaluated: str, calibrate_on: Sequence[str] = ()) -> list[str]:
    """The datasets EX-FIQA-DC's exits are chosen on when it is evaluated on ``evaluated``.

    ``calibrate_on`` empty: leave-one-dataset-out, every other dataset of the run. Otherwise the
    named datasets, which must be the run's and are then not evaluated. Never ``evaluated``.
    """
    from exfiqa.config import ConfigError

    if not calibrate_on:
        out = [d for d in datasets if d != evaluated]
        if not out:
            raise ConfigError(f"EX-FIQA-DC on {evaluated!r}: leave-one-dataset-out needs a second dataset; "
                              "add one to the run or name a calibration dataset (calibrate_on)")
        return out
    unknown = [d for d in calibrate_on if d not in datasets]
    if unknown:
        raise ConfigError(f"calibrate_on {unknown} are not datasets of the run {list(datasets)}")
    if evaluated in calibrate_on:
        raise ConfigError(f"EX-FIQA-DC: {evaluated!r} is a calibration dataset (calibrate_on) and cannot be evaluated")
    return list(dict.fromkeys(calibrate_on))


def evaluated_datasets(datasets: Sequence[str], calibrate_on: Sequence[str] = ()) -> list[str]:
    """The datasets EX-FIQA-DC is evaluated on: all but those named in ``calibrate_on``."""
    from exfiqa.config import ConfigError

    out = [d for d in datasets if d not in set(calibrate_on)]
    if not out:
        raise ConfigError(f"calibrate_on {list(calibrate_on)} leaves no dataset of the run to evaluate EX-FIQA-DC on")
    return out


def choose_for(
    study: Study, quality: str, fr: str, evaluated: str, calibrate_on: Sequence[str] = (), cache: dict | None = None
):
    """:func:`exfiqa.evaluation.fusion.choose_exits` of ``quality`` for evaluation on ``evaluated``, on the
    :func:`calibration_datasets` (pseudo-label under ``fr``); reads nothing of ``evaluated``.
    ``cache``: calibration sets by ``(dataset, quality, fr)``, shared between calls."""
    from exfiqa.evaluation.fusion import choose_exits

    cache = {} if cache is None else cache
    sets = []
    for d in calibration_datasets(list(study.config.datasets), evaluated, calibrate_on):
        if (d, quality, fr) not in cache:
            cache[(d, quality, fr)] = calibration_set(study, d, quality, fr)
        sets.append(cache[(d, quality, fr)])
    return choose_exits(sets)


def _exits_text(exits: Sequence[int]) -> str:
    return ", ".join(str(k) for k in exits)


@dataclass(frozen=True)
class ChosenExits:
    """EX-FIQA-DC on a run: the :class:`exfiqa.evaluation.fusion.ExitChoice` per ``(quality model, dataset
    key)`` evaluated, the pseudo-label's FR model, and the ``selection`` table (one row each)."""

    choices: dict
    fr_model: str
    selection: pd.DataFrame


def chosen_exits(study: Study, fr: str, calibrate_on: Sequence[str] = ()) -> ChosenExits:
    """The exits EX-FIQA-DC chooses for every quality model and evaluated dataset.

    Pseudo-label: :func:`mated_similarity_label` under ``fr``. Calibration:
    :func:`calibration_datasets` of ``calibrate_on`` (dataset keys; a single key may be given as a
    string; empty: leave-one-dataset-out), correlations averaged over
    the calibration datasets (:func:`exfiqa.evaluation.fusion.choose_exits`). Table columns: the chosen
    exits (in order of addition) and their mean's correlation, the full ranking, the best
    single exit and the first exit that did not raise the correlation.
    """
    cfg = study.config
    calibrate_on = [calibrate_on] if isinstance(calibrate_on, str) and calibrate_on else list(calibrate_on or [])
    cache: dict = {}
    choices, rows = {}, []
    for q in cfg.quality_models:
        for ds in evaluated_datasets(list(cfg.datasets), calibrate_on):
            c = choose_for(study, q, fr, ds, calibrate_on, cache)
            choices[(q, ds)] = c
            rows.append({
                "quality_model": q, "dataset": cfg.datasets[ds].label,
                "calibrated_on": "; ".join(cfg.datasets[d].label for d in c.calibration),
                "pseudo_label": f"mean mated similarity ({fr})", "chosen_exits": _exits_text(c.chosen),
                "n_chosen": len(c.chosen), "rho_chosen_mean": c.trace[-1], "best_single_exit": c.ranking[0],
                "rho_best_exit": c.correlations[c.ranking[0] - 1], "stopped_at_exit": c.stopped_at or 0,
                "rho_with_it": float("nan") if c.stop_correlation is None else c.stop_correlation,
                "ranking": _exits_text(c.ranking),
            })
    return ChosenExits(choices, fr, pd.DataFrame(rows))


@dataclass(frozen=True)
class ChosenComparison:
    """EX-FIQA-DC against F, FW, the learned fusion and the last exit: ``tidy`` pAUC rows,
    the ``wide`` table (datasets as columns, plus their mean) and the paired ``bootstrap``."""

    tidy: pd.DataFrame
    wide: pd.DataFrame
    bootstrap: pd.DataFrame


def chosen_exits_comparison(
    study: Study, chosen: ChosenExits, fmr: float, n_boot: int, learned: dict, learn_on: str, unit: str = "subject"
) -> ChosenComparison:
    """pAUC (x ``pauc_scale``) of EX-FIQA-DC, F, FW, ``learned`` weights (fitted on ``learn_on``,
    as :func:`strategy_table`) and the last exit on each dataset DC is evaluated on, with the
    FR model of ``chosen``; and the paired bootstrap of pAUC(DC) - pAUC(each other), all five on
    the same resamples (:func:`exfiqa.evaluation.bootstrap.bootstrap_samples`, the run's seed; as
    :func:`paired_vs_reference`, resampling ``unit``). ``delta_pauc < 0``: DC is better."""
    from exfiqa.evaluation.fusion import DC_NAME, chosen_mean, ex_fiqa_f, ex_fiqa_fw

    cfg = study.config
    fr, scale = chosen.fr_model, cfg.pauc_scale
    rows, boot = [], []
    for (q, ds), c in chosen.choices.items():
        scores = np.asarray(study.exit_scores(ds, q), dtype=np.float64)
        depth = scores.shape[1]
        values = {DC_NAME: chosen_mean(scores, c.chosen), "EX-FIQA-F": ex_fiqa_f(scores), "EX-FIQA-FW": ex_fiqa_fw(scores),
                  "learned": scores @ np.asarray(learned[q], dtype=np.float64), f"Exit {depth}": scores[:, -1]}
        comp = study.scores(ds, fr)
        orders = [study.order_of(ds, v) for v in values.values()]
        est = [study.pauc_order(ds, fr, o, fmr) for o in orders]
        subjects, unit_name, n_units = bootstrap_units(study, ds, unit)
        res = [study.resolved(ds, fr, o, fmr) for o in orders]
        samples = bootstrap_samples(comp, orders, fmr, cfg.convention, cfg.discard_limit, n_boot, cfg.seed,
                                    subtract_best=cfg.subtract_best, subjects=subjects, **study.rules())
        label = cfg.datasets[ds].label
        for m, e, r in zip(values, est, res, strict=True):
            rows.append({"quality_model": q, "dataset": label, "fr_model": fr, "fmr": fmr, "method": m, "pauc": e * scale,
                         "fitted_here": m == "learned" and ds == learn_on, "resolved": bool(r)})
        for m, e, s, r in zip(list(values)[1:], est[1:], samples[1:], res[1:], strict=True):
            diff = samples[0] - s
            lo, hi, ok = _diff_interval(diff)
            boot.append({
                "quality_model": q, "dataset": label, "fr_model": fr, "fmr": fmr, "method": DC_NAME, "reference": m,
                "chosen_exits": _exits_text(c.chosen), "delta_pauc": (est[0] - e) * scale, "ci_low": lo * scale,
                "ci_high": hi * scale, "p_better": float(np.mean(samples[0][ok] < s[ok])),
                "reference_fitted_here": m == "learned" and ds == learn_on, "convention": cfg.convention,
                "limit": cfg.discard_limit, "scale": float(scale), "seed": int(cfg.seed), "n_boot": int(n_boot),
                "unit": unit_name, "n_units": n_units, "n_defined": int(ok.sum()), "resolved": bool(r and res[0]),
            })
    tidy = pd.DataFrame(rows)
    return ChosenComparison(tidy, _wide_with_mean(tidy, "method"), pd.DataFrame(boot))


#: Table labels of the built-in baselines. SER-FIQ is this package's re-implementation
#: (:mod:`exfiqa.models.baselines`), not the authors' code: its label says so wherever the poster's SER-FIQ
#: sits beside it.
_METHOD_LABELS = {"magface_norm": "MagFace (norm)", "serfiq": "SER-FIQ-style (re-impl.)", "sharpness": "Sharpness (Laplacian)"}

#: ``selection`` of a row of the comparison tables (:func:`poster_table`, :func:`headline_vs_paper`).
SELECTED_ON_DATA = "best early exit: lowest mean pAUC over the evaluated datasets (chosen on the evaluated data)"
SELECTED_BY_POSTER = "the early exit the poster reports"
SELECTED_BY_BOTH = "the early exit the poster reports; also the best on the evaluated data"


def best_early_exit(rows: pd.DataFrame, quality: str, depth: int) -> str:
    """The best early exit of ``quality`` chosen on the evaluated data: the lowest mean pAUC over
    the datasets of ``rows`` (pAUC rows at one FR model and FMR) among exits 1..depth-1, the lowest
    index on ties. Shared by :func:`poster_table` and :func:`headline_vs_paper`, whose rows agree."""
    part = rows[rows["quality_model"] == quality]
    mean = part.groupby("method")["pauc"].mean()
    return min((f"Exit {k}" for k in range(1, depth)), key=lambda m: mean[m])


def paper_early_exits() -> dict[str, int]:
    """Variant tag -> the early exit the poster reports (from :data:`PAPER_HEADLINE`: 11 for (C), 10 for (T))."""
    out = {}
    for name, _ in PAPER_HEADLINE:
        stem = name[:-3].removeprefix("EX-FIQA-")
        if name.startswith("EX-FIQA-") and stem.isdigit():
            out[name[-2]] = int(stem)
    return out


def _early_exit_rows(rows: pd.DataFrame, tags: dict[str, tuple[str, int]]) -> dict[str, list[tuple[str, str, bool]]]:
    """Per quality model: (run method, selection, chosen on the evaluated data) of the poster's
    early exit (where the model has it) and of :func:`best_early_exit` (once if they coincide)."""
    poster = paper_early_exits()
    out = {}
    for q, (tag, depth) in tags.items():
        best = best_early_exit(rows, q, depth)
        k = poster.get(tag)
        if k is not None and k < depth and f"Exit {k}" == best:
            out[q] = [(best, SELECTED_BY_BOTH, False)]
        elif k is not None and k < depth:
            out[q] = [(f"Exit {k}", SELECTED_BY_POSTER, False), (best, SELECTED_ON_DATA, True)]
        else:
            out[q] = [(best, SELECTED_ON_DATA, True)]
    return out


def _is_exfiqa(method: str) -> bool:
    return method.startswith(("Exit ", "EX-FIQA"))


def poster_table(head: pd.DataFrame, tags: dict[str, tuple[str, int]], dataset_order: Sequence[str]) -> pd.DataFrame:
    """The poster's comparison layout for one FR model at one FMR (``head``: its pAUC rows).

    Rows: the other methods (baselines, external CSVs; the re-implemented SER-FIQ labelled so),
    then per quality model plain ViT-FIQA (= last exit), its early exits (:func:`_early_exit_rows`:
    the poster's exit where the model has it, and :func:`best_early_exit`, chosen on the evaluated
    data) and EX-FIQA-FW; columns: ``group, method``, ``dataset_order`` (dataset labels, the
    headline first) and their mean, ``selection`` and ``chosen_on_evaluated_data`` (the same rows
    and values as :func:`headline_vs_paper` on the headline dataset). With a ``resolved`` column
    in ``head``, the flags of :func:`exfiqa.report.tables.flag_unresolved` follow.
    """
    from exfiqa.report.tables import flag_unresolved

    rows, flags = [], []
    q0 = next(iter(tags))
    with_flags = "resolved" in head.columns

    def add(row: dict, part: pd.DataFrame, method: str) -> None:
        vals = part[part["method"] == method].set_index("dataset")
        rows.append({**row, **vals["pauc"].to_dict()})
        if with_flags:
            flags.append(vals["resolved"].astype(bool).to_dict())

    for m in [m for m in head["method"].unique() if not _is_exfiqa(m)]:
        add({"group": "other methods", "method": _METHOD_LABELS.get(m, m), "selection": "", "chosen_on_evaluated_data": False},
            head[head["quality_model"] == q0], m)
    early = _early_exit_rows(head, tags)
    for q, (tag, depth) in tags.items():
        part = head[head["quality_model"] == q]
        add({"group": "ViT-FIQA", "method": f"ViT-FIQA ({tag})", "selection": "the last exit", "chosen_on_evaluated_data": False},
            part, f"Exit {depth}")
        for m, selection, on_data in early[q]:
            add({"group": "EX-FIQA", "method": f"EX-FIQA-{m.split()[1]} ({tag})", "selection": selection,
                 "chosen_on_evaluated_data": on_data}, part, m)
        add({"group": "EX-FIQA", "method": f"EX-FIQA-FW ({tag})", "selection": "fixed rule (depth weights)",
             "chosen_on_evaluated_data": False}, part, "EX-FIQA-FW")
    out = pd.DataFrame(rows)[["group", "method", *dataset_order, "selection", "chosen_on_evaluated_data"]]
    out.insert(2 + len(dataset_order), "mean", out[list(dataset_order)].mean(axis=1))
    if with_flags:
        ok = pd.DataFrame(flags, index=out.index).reindex(columns=list(dataset_order)).fillna(True).astype(bool)
        ok["mean"] = ok.all(axis=1)
        out = flag_unresolved(out, ok)
    return out


#: The poster's headline table: pAUC-EDC at FNMR@FMR=1e-3, ArcFace, IJB-C, discard 0..0.3, as
#: printed (x10^3 of the raw area; lower is better). Source: the EX-FIQA poster (IEEE FG 2026;
#: paper arXiv 2604.22842), transcribed by this project.
PAPER_HEADLINE: tuple[tuple[str, float], ...] = (
    ("BRISQUE", 8.75), ("RankIQA", 8.70), ("DeepIQA", 8.78), ("SER-FIQ", 6.53), ("CR-FIQA(L)", 6.58),
    ("DifFIQA(R)", 6.48), ("eDifFIQA(L)", 6.47), ("GraFIQs(L)", 6.86), ("CLIB-FIQA", 6.60),
    ("ViT-FIQA(C)", 6.60), ("ViT-FIQA(T)", 6.56), ("EX-FIQA-11(C)", 6.67), ("EX-FIQA-FW(C)", 6.50),
    ("EX-FIQA-10(T)", 6.38), ("EX-FIQA-FW(T)", 6.36),
)
PAPER_HEADLINE_SCALE = 1000.0

#: Label of :data:`SECONDARY_VITFIQA_T`'s source wherever it is shown (a column of
#: :func:`headline_vs_paper` and of :func:`secondary_reference`).
SECONDARY_SOURCE = "PreFIQs (secondary transcription)"

#: ViT-FIQA (T) (= exit 12 (T)) with ArcFace, pAUC-EDC at FNMR@FMR=1e-3 up to discard 0.3, x10^3,
#: per benchmark (keyed by config dataset key), as reported in the PreFIQs paper (Kolf et al., CVPR
#: 2026 Workshops, arXiv 2605.13396) and **transcribed by a secondary source**, not read from the
#: paper by this project. Its IJB-C value (6.563) agrees with the poster's 6.56.
SECONDARY_VITFIQA_T: dict[str, float] = {
    "adience": 9.948, "agedb_30": 8.234, "cfp_fp": 3.568, "cplfw": 20.531, "ijbc": 6.563,
}
SECONDARY_PROTOCOL = "ArcFace, FNMR@FMR=1e-3, pAUC-EDC up to discard 0.3, x10^3"


def _norm_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _poster_method(name: str, tags: dict[str, tuple[str, int]], others: Sequence[str]) -> tuple[str, str] | None:
    """(quality model, run method) that a poster row corresponds to in this run, or None."""
    by_tag = {tag: (q, depth) for q, (tag, depth) in tags.items()}
    if name == "SER-FIQ" and "serfiq" in others:
        return next(iter(tags)), "serfiq"
    for m in others:  # external methods named as on the poster
        if _norm_name(m) == _norm_name(name):
            return next(iter(tags)), m
    if name.endswith(("(T)", "(C)")) and name[-2] in by_tag:
        q, depth = by_tag[name[-2]]
        stem = name[:-3]
        if stem == "ViT-FIQA":
            return q, f"Exit {depth}"
        if stem == "EX-FIQA-FW":
            return q, "EX-FIQA-FW"
        k = stem.removeprefix("EX-FIQA-")
        if k.isdigit() and 1 <= int(k) <= depth:
            return q, f"Exit {k}"
    return None


def headline_vs_paper(
    pauc_table: pd.DataFrame, head: Headline, tags: dict[str, tuple[str, int]], scale: float
) -> pd.DataFrame:
    """The poster's headline table (:data:`PAPER_HEADLINE`) beside this run's values at the
    headline dataset, FR model and FMR, both at ``scale``; then this run's methods the poster
    lacks, among them the :func:`best_early_exit` of each variant (chosen on the evaluated data,
    as in :func:`poster_table`). ``paper`` is NaN where the poster has no such method,
    ``this_run`` where this run lacks it. ``selection`` and ``chosen_on_evaluated_data`` say how
    an early-exit row was chosen; ``resolved`` (where ``pauc_table`` has it; NA without a value
    of this run) whether this run's FMR target is resolvable. The poster's SER-FIQ is the authors'
    method, this run's a re-implementation (``this_run_method`` says so).
    Column :data:`SECONDARY_SOURCE`: a second reference, for the ViT-FIQA(T) row only
    (:data:`SECONDARY_VITFIQA_T` on IJB-C, at ``scale``), NaN elsewhere.
    """
    at = pauc_table[(pauc_table["fr_model"] == head.fr_model) & np.isclose(pauc_table["fmr"], head.fmr)]
    part = at[at["dataset"] == head.label]
    value = {(r.quality_model, r.method): float(r.pauc) for r in part.itertuples()}
    ok = ({(r.quality_model, r.method): bool(r.resolved) for r in part.itertuples()} if "resolved" in part.columns else None)
    others = [m for m in part["method"].unique() if not _is_exfiqa(m)]
    early = _early_exit_rows(at, tags)
    how = {(q, m): (sel, on_data) for q, rows in early.items() for m, sel, on_data in rows}
    rows, used = [], set()

    def label_of(q: str, m: str) -> str:
        return _METHOD_LABELS.get(m, m) if m in others else f"{m} ({tags[q][0]})"

    def add(name: str, paper: float, key: tuple[str, str] | None) -> None:
        sel, on_data = how.get(key, ("", False)) if key else ("", False)
        row = {"method": name, "paper": paper, "this_run": value.get(key, float("nan")) if key else float("nan"),
               "this_run_method": label_of(*key) if key else "(not in this run)", "selection": sel,
               "chosen_on_evaluated_data": on_data}
        if ok is not None:
            row["resolved"] = ok.get(key, pd.NA) if key else pd.NA
        rows.append(row)

    for name, paper_value in PAPER_HEADLINE:
        match = _poster_method(name, tags, others)
        if match:
            used.add(match)
        add(name, float(f"{paper_value * scale / PAPER_HEADLINE_SCALE:.12g}"), match)  # as printed, at this run's scale
    chosen = [(q, m) for q, rows_q in early.items() for m, _, on_data in rows_q if on_data]
    extra = [(q, m) for (q, m) in value if (q, m) not in used and (not m.startswith("Exit ") or (q, m) in chosen)
             and (_is_exfiqa(m) or q == next(iter(tags)))]
    for q, m in extra:
        used.add((q, m))
        add(label_of(q, m), float("nan"), (q, m))
    out = pd.DataFrame(rows)
    if ok is not None:
        out["resolved"] = out["resolved"].astype("boolean")
    out.insert(2, "dataset", head.label)
    out.insert(3, "fr_model", head.fr_model)
    # the second reference for one poster row: ViT-FIQA(T) on IJB-C, as transcribed (NaN elsewhere)
    second = SECONDARY_VITFIQA_T["ijbc"] * scale / PAPER_HEADLINE_SCALE
    out.insert(2, SECONDARY_SOURCE, np.where(out["method"] == "ViT-FIQA(T)", float(f"{second:.12g}"), np.nan))
    return out


def secondary_reference(
    pauc_table: pd.DataFrame, labels: dict[str, str], tags: dict[str, tuple[str, int]], head: Headline, scale: float
) -> pd.DataFrame:
    """This run's plain ViT-FIQA (T) (its last exit) beside :data:`SECONDARY_VITFIQA_T`, per
    reference benchmark, at the headline FR model and FMR (as :func:`headline_vs_paper`; the
    reference's own protocol is :data:`SECONDARY_PROTOCOL`), both at ``scale``.

    ``labels``: config dataset key -> this run's label; a reference benchmark is matched by its
    config key (``adience``, ``agedb_30``, ``cfp_fp``, ``cplfw``, ``ijbc``). Columns: ``benchmark``,
    ``dataset`` (this run's label, or "(not in this run)"), :data:`SECONDARY_SOURCE`, ``this_run``
    (NaN where the run lacks the benchmark or a (T) model), ``this_run_method``, ``fr_model``,
    ``reference_protocol``.
    """
    q_t = next((q for q, (tag, _) in tags.items() if tag == "T"), None)
    method = f"Exit {tags[q_t][1]}" if q_t is not None else ""
    part = pauc_table[(pauc_table["quality_model"] == q_t) & (pauc_table["method"] == method)
                      & (pauc_table["fr_model"] == head.fr_model) & np.isclose(pauc_table["fmr"], head.fmr)]
    value = dict(zip(part["dataset"], part["pauc"].astype(float), strict=True))
    rows = []
    for key, ref in SECONDARY_VITFIQA_T.items():
        label = labels.get(key)
        rows.append({
            "benchmark": key, "dataset": label if label is not None else "(not in this run)",
            SECONDARY_SOURCE: float(f"{ref * scale / PAPER_HEADLINE_SCALE:.12g}"),
            "this_run": value.get(label, float("nan")) if label is not None else float("nan"),
            "this_run_method": f"{method} (T)" if method else "(no (T) model)",
            "fr_model": head.fr_model, "reference_protocol": SECONDARY_PROTOCOL,
        })
    return pd.DataFrame(rows)


def _pool(part: pd.DataFrame, tags: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """pAUC rows with a run-wide method name: ``"Exit 7 (C)"``, ``"EX-FIQA-FW (T)"``, baselines
    once (they do not depend on the quality model)."""
    q0 = next(iter(tags))
    keep = part[part["method"].map(_is_exfiqa) | (part["quality_model"] == q0)].copy()
    keep["name"] = [f"{m} ({tags[q][0]})" if _is_exfiqa(m) else m for q, m in zip(keep["quality_model"], keep["method"], strict=True)]
    return keep


# --- verdicts: ties and paired intervals

TIE_RTOL = 1e-9
"""Two pAUCs within this relative distance are equal (a tie: the same value up to rounding)."""

VERDICTS = ("agrees", "differs", "tie", "not resolved", "not computable in this run")
"""The verdicts of :func:`paper_findings`."""

FINDINGS_COLUMNS = ("finding", "paper", "this_run", "verdict", "difference", "ci_low", "ci_high", "criterion")
"""The columns of :func:`paper_findings`."""

PAIRED_COLUMNS = ("quality_model", "dataset", "fr_model", "fmr", "method", "reference", "delta_pauc", "ci_low", "ci_high")
"""The columns :func:`paper_findings` reads from a paired bootstrap table (:func:`paired_vs_reference`)."""


def is_tie(a: float, b: float, rtol: float = TIE_RTOL) -> bool:
    """``a`` and ``b`` are equal to a relative ``rtol`` (NaN ties with nothing)."""
    return bool(a == b or abs(a - b) <= rtol * max(abs(a), abs(b)))


def tied_best(values: pd.Series, rtol: float = TIE_RTOL) -> list[str]:
    """Every label of ``values`` that ties (:func:`is_tie`) with the minimum, lower being better,
    in the order of ``values``. One label: a clear best; none: no finite value."""
    v = pd.to_numeric(values, errors="coerce").astype(np.float64)
    finite = v[np.isfinite(v)]
    if finite.empty:
        return []
    lo = float(finite.min())
    return [str(k) for k, x in finite.items() if is_tie(float(x), lo, rtol)]


def best_text(values: pd.Series, rtol: float = TIE_RTOL) -> str:
    """The best (lowest) of ``values`` in words, naming every tied label: ``"Exit 8"`` or
    ``"Exit 9, Exit 10, Exit 11 (tie)"``."""
    best = tied_best(values, rtol)
    return ", ".join(best) + (" (tie)" if len(best) > 1 else "")


def _best_verdict(values: pd.Series, target: str) -> tuple[str, float]:
    """Verdict of "``target`` is the best of ``values``" and pAUC(target) - best other (< 0: it is).

    ``agrees``: target alone is best; ``tie``: target ties with another for best; ``differs``:
    another is best; ``not computable in this run``: no target value."""
    if target not in values.index or not np.isfinite(values[target]):
        return "not computable in this run", float("nan")
    others = values.drop(target)
    margin = float(values[target] - others.min()) if others.notna().any() else float("nan")
    best = tied_best(values)
    verdict = "differs" if target not in best else ("agrees" if len(best) == 1 else "tie")
    return verdict, margin


def _paired_rows(paired: pd.DataFrame | None, quality: str, method: str, reference: str, fr: str, fmr: float) -> pd.DataFrame:
    """Rows of the paired bootstrap table for one comparison, indexed by dataset label."""
    if paired is None:
        return pd.DataFrame(columns=list(PAIRED_COLUMNS)).set_index("dataset")
    missing = [c for c in PAIRED_COLUMNS if c not in paired.columns]
    if missing:
        raise ValueError(f"paper_findings: the paired bootstrap table (paired=) lacks the columns {missing}; "
                         "pass the table of analysis.fusion_bootstrap / depth_bootstrap")
    sel = paired[(paired["quality_model"] == quality) & (paired["method"] == method) & (paired["reference"] == reference)
                 & (paired["fr_model"] == fr) & np.isclose(paired["fmr"].astype(float), fmr)]
    if sel["dataset"].duplicated().any():
        raise ValueError(f"paper_findings: the paired bootstrap table (paired=) has several rows for {method} - {reference} "
                         f"({quality}, {fr}, FMR {fmr:g}) on one dataset")
    return sel.set_index("dataset")


def _paired_detail(
    finding: str, paper: str, label: str, ds: str, a: float, b: float, boot: pd.DataFrame
) -> dict:
    """One comparison pAUC(a) - pAUC(b) on dataset ``ds`` (``label`` names a and b: "FW - Exit 12"):
    ``agrees`` when its 95% paired interval lies below 0 (a is better), ``differs`` above 0,
    ``tie`` when a and b are equal, ``not resolved`` otherwise or without an interval."""
    diff = a - b
    lo = hi = float("nan")
    if ds in boot.index:
        row = boot.loc[ds]
        lo, hi = float(row["ci_low"]), float(row["ci_high"])
        if not np.isclose(float(row["delta_pauc"]), diff, rtol=1e-6, atol=1e-9 * max(abs(a), abs(b))):
            raise ValueError(
                f"paper_findings: paired= gives delta_pauc {float(row['delta_pauc']):.6g} for {label} on {ds}, "
                f"the pAUC table {diff:.6g}: the two tables differ in scale or protocol")
    if is_tie(a, b):
        verdict = "tie"
    elif hi < 0:
        verdict = "agrees"
    elif lo > 0:
        verdict = "differs"
    else:
        verdict = "not resolved"
    ci = f"95% paired interval [{lo:.4g}, {hi:.4g}]" if np.isfinite(lo) else "no paired interval"
    return {
        "finding": f"{finding}: {ds}", "paper": paper,
        "this_run": f"{label} = {a:.6g} - {b:.6g} = {diff:+.4g}, {ci}", "verdict": verdict,
        "difference": diff, "ci_low": lo, "ci_high": hi,
        "criterion": f"{label} < 0 with a 95% paired bootstrap interval below 0: agrees; above 0: differs; "
                     "interval containing 0 (or none): not resolved; equal pAUC: tie",
    }


def _count(details: list[dict]) -> dict[str, int]:
    return {v: sum(d["verdict"] == v for d in details) for v in ("agrees", "differs", "tie", "not resolved")}


def _unresolved_groups(at: pd.DataFrame) -> list[tuple[str, str]]:
    """``(dataset, fr_model)`` pairs where some pAUC of ``at`` rests on an unresolvable FMR target."""
    if "resolved" not in at.columns:
        return []
    bad = at[~at["resolved"].astype(bool)]
    return sorted(set(zip(bad["dataset"], bad["fr_model"], strict=True)))


def paper_findings(
    pauc_table: pd.DataFrame, tags: dict[str, tuple[str, int]], head: Headline, adience: str | None = None,
    paired: pd.DataFrame | None = None, min_change: float = 0.05,
) -> pd.DataFrame:
    """Each finding the paper states, computed from this run, with a verdict that holds.

    Findings (as stated in the EX-FIQA paper, arXiv 2604.22842, and its poster): largest gains exits 1->5 and little after 8; middle exits best on IJB-C
    for (C); FW beats exit 12 on 5 of 8 datasets for (C); FW (T) best mean pAUC; FW (T) top-1 on
    IJB-C for every FR model; FW (C) best on Adience. "IJB-C" is the headline dataset, "Adience"
    the dataset ``adience`` (a label, or None when the run has none); all at the headline FMR and,
    where a finding compares two methods on a dataset, the headline FR model.

    ``paired``: a paired bootstrap table (:data:`PAIRED_COLUMNS`, at the scale of ``pauc_table``):
    rows EX-FIQA-FW vs the last exit (:func:`fusion_bootstrap`) and the last exit vs exit 1
    (:func:`depth_bootstrap`). Each such comparison becomes a row of its own
    (``"<finding>: <dataset>"``) with the difference and its 95% interval. Without it, "beats"
    counts and depth changes are "not resolved" or rest on the size threshold alone.

    Verdicts (:data:`VERDICTS`): ``agrees`` / ``differs``; ``tie`` where the verdict rests on
    methods with equal pAUC (:data:`TIE_RTOL`; every tied method is named in ``this_run``);
    ``not resolved`` where the 95% paired intervals cannot decide it (a dataset counts as a win
    only if its interval lies below 0) or the depth change is below ``min_change`` (relative to
    exit 1's pAUC); ``not computable in this run``.

    With a ``resolved`` column in ``pauc_table``, a dataset x FR model on which some pAUC at the
    headline FMR is unresolvable (:func:`exfiqa.evaluation.metrics.resolvable`) is left out of every finding,
    and a last row names what was left out.

    Columns (:data:`FINDINGS_COLUMNS`): ``finding``, ``paper`` (the claim), ``this_run`` (what the
    run shows, in words), ``verdict``, ``difference`` (pAUC difference the verdict rests on, lower
    = the claim's method better: FW - last exit, last exit - exit 1, middle-exit best - best
    elsewhere, claimed best - best other), ``ci_low`` / ``ci_high`` (its 95% paired interval, NaN
    where there is none), ``criterion`` (the rule applied).
    """
    at = pauc_table[np.isclose(pauc_table["fmr"], head.fmr)]
    left_out = _unresolved_groups(at)
    if left_out:
        keep = ~pd.Series(list(zip(at["dataset"], at["fr_model"], strict=True)), index=at.index).isin(left_out)
        at = at[keep]
    by_tag = {tag: q for q, (tag, _) in tags.items()}
    nan = float("nan")
    rows: list[dict] = []
    if at.empty and left_out:  # nothing resolvable at the headline FMR: every finding says so
        why = f"no dataset with a resolvable FMR {head.fmr:g}"
        claims = [(f"depth gains ({t})", "largest gains from exit 1 to exit 5, little change after exit 8") for t, _ in tags.values()]
        claims += [("middle exits best on IJB-C (C)", "exits 7-9 are the best single exits of (C) on IJB-C"),
                   ("FW beats the last exit (C)", "EX-FIQA-FW (C) beats exit 12 on 5 of 8 datasets"),
                   ("FW (T) best mean pAUC", "EX-FIQA-FW (T) has the best mean pAUC"),
                   ("FW (T) top-1 on IJB-C", "EX-FIQA-FW (T) is top-1 on IJB-C for all four FR models"),
                   ("FW (C) best on Adience", "EX-FIQA-FW (C) is the best method on Adience")]
        claims.append(("left out: unresolvable FMR target", f"(FMR {head.fmr:g})"))
        return pd.DataFrame([{"finding": f, "paper": c, "this_run": why if not f.startswith("left out") else
                              "; ".join(f"{ds} with {fr}" for ds, fr in left_out), "verdict": "not computable in this run",
                              "difference": nan, "ci_low": nan, "ci_high": nan, "criterion": ""} for f, c in claims],
                            columns=list(FINDINGS_COLUMNS))

    def add(finding: str, paper_says: str, this_run: str, verdict: str, criterion: str, difference: float = nan) -> None:
        rows.append({"finding": finding, "paper": paper_says, "this_run": this_run, "verdict": verdict,
                     "difference": difference, "ci_low": nan, "ci_high": nan, "criterion": criterion})

    def details(q: str, finding: str, paper_says: str, a_name: str, b_name: str, label: str) -> list[dict]:
        part = at[(at["quality_model"] == q) & (at["fr_model"] == head.fr_model)]
        wide = part.pivot_table(index="dataset", columns="method", values="pauc", sort=False)
        boot = _paired_rows(paired, q, a_name, b_name, head.fr_model, head.fmr)
        return [_paired_detail(finding, paper_says, label, str(ds), float(r[a_name]), float(r[b_name]), boot)
                for ds, r in wide.iterrows()]

    summary = depth_summary(at, {q: d for q, (_, d) in tags.items()}, head.fmr)
    for q in set(tags) - set(summary.get("quality_model", [])):
        add(f"depth gains ({tags[q][0]})", "largest gains from exit 1 to exit 5, little change after exit 8",
            f"no dataset with a resolvable FMR {head.fmr:g}", "not computable in this run", "")
    for r in summary.itertuples():
        tag, depth = tags[r.quality_model]
        name, paper_says = f"depth gains ({tag})", "largest gains from exit 1 to exit 5, little change after exit 8"
        s5, s8 = r.share_of_gain_by_exit_5, r.share_of_gain_by_exit_8
        first, last = float(r.pauc_exit_1), float(r.pauc_last_exit)
        change = last - first
        rel = change / first if first else nan
        shape = bool(np.isfinite(s5) and first > last and s5 >= max(s8 - s5, 1 - s8) and 1 - s8 <= 0.2)
        det = details(r.quality_model, name, paper_says, f"Exit {depth}", "Exit 1", f"Exit {depth} - Exit 1")
        n = _count(det)
        with_ci = sum(np.isfinite(d["ci_low"]) for d in det)
        resolved = n["agrees"] + n["differs"]
        text = (f"mean pAUC exit 1 -> exit {depth}: {first:.4g} -> {last:.4g} (change {change:+.4g}, {rel:+.1%}); "
                f"{s5:.0%} of it by exit 5, {s8:.0%} by exit 8 (mean over datasets and FR models)")
        if with_ci:
            text += f"; the change's 95% paired interval excludes 0 on {resolved} of {len(det)} datasets ({head.fr_model})"
        if is_tie(first, last):
            verdict = "tie"
        elif not (np.isfinite(rel) and abs(rel) >= min_change) or (with_ci and 2 * resolved <= len(det)):
            verdict = "not resolved"
        else:
            verdict = "agrees" if shape else "differs"
        add(name, paper_says, text, verdict,
            f"resolved if the change exit 1 -> last is at least {min_change:.0%} of exit 1's pAUC and "
            + ("its paired interval excludes 0 on more than half of the datasets; " if with_ci else "(no paired intervals given); ")
            + "then agrees if exit 1->5 is the largest of the three segments 1->5, 5->8, 8->last, and at most 20% of "
              "the change comes after exit 8", change)
        if paired is not None:  # one row per compared dataset
            rows.extend(det)
    hp = at[(at["dataset"] == head.label) & (at["fr_model"] == head.fr_model)]
    if "C" in by_tag and hp[hp["quality_model"] == by_tag["C"]].empty:
        why = f"FMR {head.fmr:g} is not resolvable on {head.label} with {head.fr_model}"
        add("middle exits best on IJB-C (C)", "exits 7-9 are the best single exits of (C) on IJB-C", why,
            "not computable in this run", "")
        add("FW beats the last exit (C)", "EX-FIQA-FW (C) beats exit 12 on 5 of 8 datasets", why,
            "not computable in this run", "")
    elif "C" in by_tag:
        q = by_tag["C"]
        depth = tags[q][1]
        p = hp[hp["quality_model"] == q].set_index("method")["pauc"]
        exits = pd.Series({f"Exit {k}": float(p[f"Exit {k}"]) for k in range(1, depth + 1)})
        lo, hi = round(7 * depth / 12), round(9 * depth / 12)
        best = tied_best(exits)
        inside = [m for m in best if lo <= int(m.split()[1]) <= hi]
        verdict = "agrees" if len(inside) == len(best) else ("differs" if not inside else "tie")
        middle = exits[[f"Exit {k}" for k in range(lo, hi + 1)]]
        rest = exits.drop(middle.index)
        margin = float(middle.min() - rest.min()) if len(rest) else nan
        add("middle exits best on IJB-C (C)", "exits 7-9 are the best single exits of (C) on IJB-C",
            f"best single exit of (C) on {head.label} with {head.fr_model}: {best_text(exits)} (pAUC {exits.min():.6g}); "
            f"best of exits {lo}..{hi} minus best of the others: {margin:+.4g}", verdict,
            f"the best single exit lies in {lo}..{hi} (7..9 of 12, scaled to depth {depth}); exits tied for best "
            "inside and outside that range: tie; point estimates, no interval", margin)
        name, paper_says = "FW beats the last exit (C)", "EX-FIQA-FW (C) beats exit 12 on 5 of 8 datasets"
        det = details(q, name, paper_says, "EX-FIQA-FW", f"Exit {depth}", f"FW - Exit {depth}")
        n, total = _count(det), len(det)
        point = sum(d["difference"] < 0 and d["verdict"] != "tie" for d in det)
        if 2 * n["agrees"] > total:
            verdict = "agrees"
        elif 2 * (n["agrees"] + n["not resolved"] + n["tie"]) <= total:
            verdict = "differs"
        elif 2 * (n["agrees"] + n["not resolved"]) <= total:
            verdict = "tie"
        else:
            verdict = "not resolved"
        text = (f"FW better on {n['agrees']} of {total} datasets with {head.fr_model} (95% paired interval below 0), "
                f"worse on {n['differs']}, not resolved on {n['not resolved']}"
                + (f", tied on {n['tie']}" if n["tie"] else "") + f"; lower pAUC (point estimate) on {point} of {total}")
        if not any(np.isfinite(d["ci_low"]) for d in det):
            text += "; no paired intervals given"
        add(name, paper_says, text, verdict,
            "FW (C) beats the last exit (95% paired interval below 0) on more than half of the datasets (5 of 8 is): "
            "agrees; cannot be more than half even if every unresolved dataset were a win: differs; only tied "
            "datasets could make it: tie; otherwise not resolved")
        if paired is not None:  # one row per compared dataset
            rows.extend(det)
    else:
        add("middle exits best on IJB-C (C)", "exits 7-9 are the best single exits of (C) on IJB-C", "no (C) model in this run",
            "not computable in this run", "")
        add("FW beats the last exit (C)", "EX-FIQA-FW (C) beats exit 12 on 5 of 8 datasets", "no (C) model in this run",
            "not computable in this run", "")
    pool = _pool(at, tags)
    ties_rule = "; tied for best with another method: tie; point estimates, no interval"
    mean = pool.groupby("name")["pauc"].mean().sort_index()
    verdict, margin = _best_verdict(mean, "EX-FIQA-FW (T)")
    add("FW (T) best mean pAUC", "EX-FIQA-FW (T) has the best mean pAUC",
        f"best mean pAUC over datasets and FR models: {best_text(mean)} ({mean.min():.4g})", verdict,
        "EX-FIQA-FW (T) has the lowest mean pAUC of all methods of the run" + ties_rule, margin)
    on_head = pool[pool["dataset"] == head.label]
    per_fr = {fr: part.set_index("name")["pauc"].sort_index() for fr, part in on_head.groupby("fr_model", sort=False)}
    verdicts = {fr: _best_verdict(v, "EX-FIQA-FW (T)") for fr, v in per_fr.items()}
    n_fw = sum(v == "agrees" for v, _ in verdicts.values())
    n_tie = sum(v == "tie" for v, _ in verdicts.values())
    if any(v == "not computable in this run" for v, _ in verdicts.values()) or not verdicts:
        verdict = "not computable in this run"
    else:
        verdict = "agrees" if n_fw == len(verdicts) else ("tie" if n_fw + n_tie == len(verdicts) else "differs")
    add("FW (T) top-1 on IJB-C", "EX-FIQA-FW (T) is top-1 on IJB-C for all four FR models",
        f"top-1 on {head.label} for {n_fw} of {len(per_fr)} FR models" + (f", tied for top-1 for {n_tie}" if n_tie else "")
        + " (" + "; ".join(f"{fr}: {best_text(v)}" for fr, v in per_fr.items()) + ")", verdict,
        "EX-FIQA-FW (T) has the lowest pAUC on the headline dataset for every FR model of the run" + ties_rule
        + "; difference: the largest over FR models", max((m for _, m in verdicts.values()), default=nan))
    if adience is None:
        add("FW (C) best on Adience", "EX-FIQA-FW (C) is the best method on Adience", "no Adience dataset in this run",
            "not computable in this run", "")
    else:
        part = pool[(pool["dataset"] == adience) & (pool["fr_model"] == head.fr_model)].set_index("name")["pauc"].sort_index()
        verdict, margin = _best_verdict(part, "EX-FIQA-FW (C)")
        add("FW (C) best on Adience", "EX-FIQA-FW (C) is the best method on Adience",
            f"best on {adience} with {head.fr_model}: {best_text(part)}", verdict,
            "EX-FIQA-FW (C) has the lowest pAUC on the Adience dataset with the headline FR model" + ties_rule, margin)
    if left_out:
        add("left out: unresolvable FMR target", f"(FMR {head.fmr:g})",
            "; ".join(f"{ds} with {fr}" for ds, fr in left_out), "not computable in this run",
            "a dataset x FR model on which some pAUC at the headline FMR rests on fewer than one expected false "
            "match (the 'resolved' column) is left out of every finding above")
    return pd.DataFrame(rows, columns=list(FINDINGS_COLUMNS))


# --- 04: early exit


def released_gflops() -> pd.DataFrame:
    """Analytic GFLOPs per exit (and of fusing all exits) of the two released architectures."""
    from exfiqa.models.flops import exit_costs, fused_cost
    from exfiqa.models.vitfiqa import ViTFIQAConfig

    rows = []
    for variant, tag in (("token", "T"), ("crfiqa", "C")):
        c = ViTFIQAConfig(variant=variant)
        costs = exit_costs(c)
        for e in costs:
            rows.append({"model": f"ViT-FIQA ({tag}) released", "exit": str(e.exit), "gflops": e.gflops, "flop_saving": e.saving})
        fused = fused_cost(c)
        rows.append({"model": f"ViT-FIQA ({tag}) released", "exit": "all fused", "gflops": fused, "flop_saving": 1 - fused / costs[-1].gflops})
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
    ``full_size``, the released architectures on random weights), on the run's device, seeded by
    the run's seed: every row (each exit and the one-pass row) the median of ``repeats``
    synchronised timings after a warm-up, with its interquartile range and min/max."""
    from exfiqa.models.vitfiqa import build_vitfiqa

    cfg = study.config
    models = {q: Models(cfg).quality_model(q) for q in cfg.quality_models if study.has_checkpoint("quality_models", q)}
    if full_size:
        for variant, tag in (("token", "T"), ("crfiqa", "C")):
            models[f"{tag} full-size"] = build_vitfiqa(variant=variant)
    if not models:  # no checkpoint here and no full-size timing asked for
        return pd.DataFrame({"model": pd.Series(dtype=str), "exit": pd.Series(dtype=str), "ms_per_image": pd.Series(dtype=float)})
    parts = []
    for name, model in models.items():
        t = measure_latency(model, batch_size=batch_size, repeats=repeats, device=str(cfg.device), seed=cfg.seed)
        t.insert(0, "model", name)
        parts.append(t)
    lat = pd.concat(parts, ignore_index=True)
    lat["exit"] = lat["exit"].astype(str)
    return lat


def model_architecture(study: Study, quality: str) -> tuple[ViTFIQAConfig, str]:
    """The architecture of quality model ``quality`` and where it comes from: its checkpoint when
    the file is there, else the released architecture of its variant (:meth:`Study.variant_tag`)
    at the depth of its arrays (the evaluation needs no checkpoint; GFLOPs then assume the
    released widths)."""
    if study.has_checkpoint("quality_models", quality):
        return Models(study.config).quality_model(quality).config, "checkpoint"
    tag = study.variant_tag(quality)
    if tag not in ("T", "C"):
        raise ConfigError(f"quality_models.{quality}: its checkpoint is not there and its variant is unknown; "
                          "label it 'ViT-FIQA (T)' or '(C)', or provide the checkpoint")
    variant = "token" if tag == "T" else "crfiqa"
    return ViTFIQAConfig(variant=variant, depth=study.depth(quality)), "released architecture (no checkpoint here)"


def study_costs(study: Study) -> pd.DataFrame:
    """:func:`cost_table` of every quality model of the run (:func:`model_architecture`), with a
    ``quality_model`` column."""
    parts = []
    for q in study.config.quality_models:
        ct = cost_table(model_architecture(study, q)[0])
        ct.insert(0, "quality_model", q)
        parts.append(ct)
    return pd.concat(parts, ignore_index=True)


def pauc_cost_points(
    pauc_table: pd.DataFrame, costs: pd.DataFrame, quality: str, fr: str, fmr: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(exits, fusion): pAUC and GFLOPs per dataset of every exit and of EX-FIQA-FW, for the
    pAUC-vs-GFLOPs figure."""
    part = pauc_table[(pauc_table["quality_model"] == quality) & (pauc_table["fr_model"] == fr) & np.isclose(pauc_table["fmr"], fmr)]
    merged = part.merge(costs[costs["quality_model"] == quality][["method", "gflops"]], on="method")
    return merged[merged["method"].str.startswith("Exit ")], merged[merged["method"] == "EX-FIQA-FW"]


def adaptive_study(
    study: Study, fr: str, fmr: float, reject_fraction: float, margin: float, min_exit: int
) -> pd.DataFrame:
    """Adaptive early exit (:func:`adaptive_exit`) on every dataset and quality model.

    The gate rejects the worst ``reject_fraction`` by the full-depth FW score; the adaptive rule
    stops when the running FW score is more than ``margin`` standard deviations (of the FW
    score) from that threshold. Columns: ``mean_exit`` (mean stopping exit), ``compute_saving``
    (against reading all exits), ``gate_agreement`` (share of images the adaptive gate accepts or
    rejects as the full-depth gate does), the same for the trivial gates ``agreement_accept_all``
    (accept every image: the full gate's acceptance rate) and ``agreement_reject_all``,
    ``beats_trivial_gates`` (``gate_agreement`` above both), ``pauc_adaptive`` and
    ``pauc_fw_all_exits`` (x ``pauc_scale``, the adaptive and the full-depth FW score).
    """
    from exfiqa.config import ConfigError
    from exfiqa.evaluation.fusion import depth_weights

    if not 0 < reject_fraction < 1:
        raise ConfigError(f"reject_fraction must lie in (0, 1), got {reject_fraction}")
    cfg = study.config
    rows = []
    for q in cfg.quality_models:
        arch, _ = model_architecture(study, q)
        cum_cost = adaptive_cost_curve(arch, arch.depth)
        for ds in cfg.datasets:
            scores = study.exit_scores(ds, q).astype(np.float64)
            full = scores @ depth_weights(arch.depth)
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


# --- 02: attention


@dataclass(frozen=True)
class AttentionInputs:
    """The faces of the attention figure and the bounded, seeded sample for the dataset mean.

    ``faces``: column label -> RGB uint8 face; ``sources``: label -> where it came from;
    ``note``: how they were chosen; ``mean_dataset``: label of the dataset averaged;
    ``mean_ids``: its sample ids used (sorted); ``mean_faces``: those images.
    """

    faces: dict[str, np.ndarray]
    sources: dict[str, str]
    note: str
    mean_dataset: str
    mean_ids: np.ndarray
    mean_faces: np.ndarray


def attention_inputs(study: Study, samples: dict | None = None, mean_images: int = 256) -> AttentionInputs:
    """The four sample faces and the dataset-mean sample of notebook 02.

    Faces, in this order of precedence: ``samples`` (already parsed by
    :func:`exfiqa.config.parse_attention_samples`), the config's ``attention_samples``, the demo
    world's ``samples/<type>.png`` when the config is a demo config, else the first sample of each
    of the first four datasets (labelled so, not as sample types). The mean uses
    ``min(mean_images, N)`` images of the run's first dataset, drawn without replacement with the
    run's seed.
    """
    from exfiqa.config import ATTENTION_SAMPLE_TYPES, ConfigError
    from exfiqa.readers.benchmarks import load_benchmark
    from exfiqa.readers.images import read_face

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
            sources[kind] = s.describe()
    elif cfg.demo:
        note = "the demo world's sample types (samples/*.png)"
        for kind in ATTENTION_SAMPLE_TYPES:
            path = cfg.data_root / "samples" / f"{kind}.png"
            if not path.is_file():
                raise ConfigError(f"demo world: {path} does not exist (rebuild it with `make demo`)")
            faces[kind], sources[kind] = read_face(path), str(path)
    else:
        note = ("attention_samples is not set in the config: showing the first sample of each of the first datasets "
                "instead of the poster's sample types (child, frontal, occlusion, pose)")
        for ds in list(cfg.datasets)[: len(ATTENTION_SAMPLE_TYPES)]:
            label = f"{cfg.datasets[ds].label} #0"
            faces[label], sources[label] = study.benchmark(ds).image(0), f"{ds} sample 0"
    ds0 = next(iter(cfg.datasets))
    bench = study.benchmark(ds0)
    rng = np.random.default_rng(cfg.seed)
    ids = np.sort(rng.choice(len(bench), size=min(mean_images, len(bench)), replace=False))
    mean_faces = np.stack([bench.image(int(i)) for i in ids])
    return AttentionInputs(faces, sources, note, cfg.datasets[ds0].label, ids, mean_faces)


def attention_unavailable(study: Study) -> str | None:
    """Why the attention figure cannot be drawn here (None: it can): it runs the quality models
    on face images, so it needs their checkpoints, which evaluating the arrays does not."""
    absent = [q for q in study.config.quality_models if not study.has_checkpoint("quality_models", q)]
    if absent:
        return (f"the attention maps run the ViT-FIQA models on face images; the checkpoints of {absent} are "
                "not here (the rest of the evaluation reads the per-sample arrays only)")
    return None


def attention_study(study: Study, quality: str, inputs: AttentionInputs) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Per-exit attention maps of ``quality`` for each face and the dataset mean (figure input),
    and :func:`attention_statistics` over the mean's images (with a ``quality_model`` column)."""
    cfg = study.config
    model = Models(study.config).quality_model(quality)
    per_face = attention_maps(model, np.stack(list(inputs.faces.values())), batch_size=cfg.batch_size, device=cfg.device)
    maps = {name: per_face[i] for i, name in enumerate(inputs.faces)}
    dataset_maps = attention_maps(model, inputs.mean_faces, batch_size=cfg.batch_size, device=cfg.device)
    maps[f"{inputs.mean_dataset} (mean)"] = dataset_maps.mean(axis=0)
    stats = attention_statistics(dataset_maps)
    stats.insert(0, "quality_model", quality)
    return maps, stats


def exit_scores_long(sample_quality: pd.DataFrame, depth: int) -> pd.DataFrame:
    """Per-sample exit scores as a tidy ``exit, score`` frame (for the violin plot)."""
    tidy = sample_quality[[f"Exit {k}" for k in range(1, depth + 1)]].melt(var_name="exit", value_name="score")
    tidy["exit"] = tidy["exit"].str.replace("Exit ", "", regex=False).astype(int)
    return tidy


__all__ += [  # the notebook-assembly section above
    "BOOTSTRAP_UNITS", "ChosenComparison", "ChosenExits", "bootstrap_units", "unit_summary", "calibration_datasets", "calibration_set", "choose_for", "chosen_exits",
    "chosen_exits_comparison", "evaluated_datasets", "mated_similarity_label",
    "LOW_CONTRAST_ENTROPY", "AttentionInputs", "Headline", "PAPER_HEADLINE", "SELECTED_BY_BOTH", "SELECTED_BY_POSTER",
    "SELECTED_ON_DATA", "best_early_exit", "paper_early_exits", "PAPER_HEADLINE_SCALE", "StrategyResult", "adaptive_study",
    "attention_inputs", "attention_study", "depth_bootstrap", "depth_summary", "exit_scores_long", "fmr_target",
    "fusion_bootstrap",
    "fusion_vs_exits", "headline", "headline_vs_paper", "latency_table", "paper_findings", "pauc_cost_points",
    "poster_table", "released_claims", "released_gflops", "secondary_reference", "strategy_table", "study_costs",
    "table_protocol", "variant_tags",
    "FINDINGS_COLUMNS", "PAIRED_COLUMNS", "TIE_RTOL", "VERDICTS", "best_text", "is_tie", "tied_best",
]
