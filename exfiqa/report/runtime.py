"""Notebook 04, early exit measured: the fixed exit and the adaptive runtime
(:mod:`exfiqa.models.adaptive`) timed on a run's quality models and faces, beside the FLOP saving
the analytic costs predict (the simulation of :mod:`exfiqa.report.early_exit`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import torch

from exfiqa.evaluation import fusion
from exfiqa.evaluation.exits import exit_label, exit_numbers
from exfiqa.models.adaptive import adaptive_forward
from exfiqa.models.device import resolve_device
from exfiqa.models.flops import exit_costs
from exfiqa.models.vitfiqa import to_tensor
from exfiqa.report.early_exit import _timed, adaptive_cost_curve, adaptive_exit
from exfiqa.report.frames import study_models
from exfiqa.study import Study

__all__ = ["runtime_table"]


def runtime_table(
    study: Study, ops: pd.DataFrame, dataset: str, reject_fraction: float, margin: float, min_exit: int,
    n_images: int = 64, repeats: int = 3,
) -> pd.DataFrame:
    """Measured ms per image (median of ``repeats`` after a warm-up) of the full pass, the exits ``ops``
    picks and the adaptive runtime, on the first ``n_images`` faces of ``dataset``, per quality model
    with a checkpoint here; with the analytic ``flop_saving`` and the share of faces stopping where the
    simulation does."""
    cfg = study.config
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    bench = study.benchmark(dataset)
    n = min(n_images, len(bench))
    faces = np.stack([bench.image(i) for i in range(n)])
    rows = []
    for q in cfg.quality_models:
        if not study.has_checkpoint("quality_models", q):
            continue
        model = study_models(study).quality_model(q).to(device).eval()
        depth = model.depth
        x = to_tensor(faces).to(device)
        stored = study.exit_scores(dataset, q).astype(np.float64)
        full_fw = stored @ fusion.depth_weights(depth)
        thr = float(np.quantile(full_fw, reject_fraction))
        gap = margin * float(full_fw.std())
        costs = [c.gflops for c in exit_costs(model.config)]
        cum = np.asarray(adaptive_cost_curve(model.config, depth))
        numbers = exit_numbers(depth)
        own = ops[(ops["quality_model"] == q) & ops["method"].isin(numbers)]
        fixed = sorted({numbers[m] for m in own["method"]})
        with torch.inference_mode():
            out = adaptive_forward(model, x, thr, gap, min_exit)
            full = f"full pass ({exit_label(depth)})"
            calls: list[tuple[str, int | None, Callable[[], object], float]] = [(full, depth, partial(model, x), costs[-1])]
            calls += [(f"{exit_label(k)} (fixed)", k, partial(model.score_at_exit, x, k), costs[k - 1]) for k in fixed]
            calls.append(("adaptive", None, partial(adaptive_forward, model, x, thr, gap, min_exit),
                          float(cum[out.exit_used - 1].mean())))
            times = {}
            for name, _k, fn, _g in calls:
                _timed(fn, 1, cuda)  # warm-up
                times[name] = float(np.median(_timed(fn, repeats, cuda)))
        sim = adaptive_exit(stored[:n], thr, gap, min_exit, list(cum))
        for name, k, _fn, g in calls:
            saving = 1 - g / costs[-1]
            adaptive = name == "adaptive"
            rows.append({
                "quality_model": q, "run": name, "exit": k if not adaptive else pd.NA,
                "ms_per_image": 1e3 * times[name] / n, "measured_speedup": times[full] / times[name],
                "flop_saving": saving, "ideal_speedup": 1 / (1 - saving),
                "mean_exit": float(out.exit_used.mean()) if adaptive else np.nan,
                "same_exit_as_simulation": float(np.mean(sim.exit_used == out.exit_used)) if adaptive else np.nan,
            })
    return pd.DataFrame(rows).astype({"exit": "Int64"}) if rows else pd.DataFrame(rows)
