"""Paired bootstrap tables (notebook 03): what is resampled on each dataset, and pAUC(method) -
pAUC(reference) with 95% intervals, all methods on the same resamples."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exfiqa.evaluation.bootstrap import bootstrap_samples
from exfiqa.evaluation.exits import exit_label
from exfiqa.evaluation.subjects import repeated_images
from exfiqa.readers.bin import _load_bin
from exfiqa.report.frames import variant_tags
from exfiqa.study import Study

#: What a bootstrap resamples: each benchmark's independent units (``subject``, the default:
#: :meth:`exfiqa.study.Study.subjects`) or comparisons as if independent.
BOOTSTRAP_UNITS = ("subject", "comparison")


def unit_summary(study: Study) -> pd.DataFrame:
    """What a subject bootstrap resamples on each dataset: the unit, how many, comparisons per
    unit, and on the ``.bin`` pair sets how often images (by SHA-256 of their bytes) repeat across
    pairs, which ties pairs together that the bootstrap treats as independent."""
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


def _resampled(
    study: Study, ds: str, fr: str, orders: list[Any], fmr: float, n_boot: int, unit: str
) -> tuple[list[float], list[bool], list[np.ndarray], str, int]:
    """pAUC, ``resolved`` and ``n_boot`` bootstrap pAUCs (all on the same resamples, the run's
    seed) of each order on ``ds``, and the unit resampled (:data:`BOOTSTRAP_UNITS`) and its count."""
    cfg = study.config
    if unit == "subject":
        subjects, unit_name, n_units = study.subjects(ds)
    elif unit == "comparison":
        subjects, unit_name, n_units = None, "comparison", int(study.scores(ds, next(iter(cfg.fr_models))).n)
    else:
        raise ValueError(f"unit: expected one of {BOOTSTRAP_UNITS}, got {unit!r}")
    est = [study.pauc_order(ds, fr, o, fmr) for o in orders]
    res = [study.resolved(ds, fr, o, fmr) for o in orders]
    samples = bootstrap_samples(study.scores(ds, fr), orders, fmr, cfg.convention, cfg.discard_limit, n_boot, cfg.seed,
                                subtract_best=cfg.subtract_best, subjects=subjects, **study.rules())
    return est, res, samples, unit_name, n_units


def _paired(a: float, b: float, a_boot: np.ndarray, b_boot: np.ndarray) -> tuple[float, float, float, float, int]:
    """pAUC(a) - pAUC(b), the 95% percentile interval of the defined paired differences, the share
    of them in which a is lower, and how many are defined."""
    diff = a_boot - b_boot
    ok = np.isfinite(diff)
    lo, hi = np.quantile(diff[ok], [0.025, 0.975]) if ok.any() else (np.nan, np.nan)
    return a - b, float(lo), float(hi), float(np.mean(a_boot[ok] < b_boot[ok])), int(ok.sum())


def paired_vs_reference(
    study: Study, quality: str, fr: str, methods: Sequence[str], reference: str, fmr: float, n_boot: int = 500,
    unit: str = "subject",
) -> pd.DataFrame:
    """Paired bootstrap of pAUC(method) - pAUC(reference) per dataset, with 95% intervals, every
    method on the same resamples (:func:`exfiqa.evaluation.bootstrap.bootstrap_samples`), resampling
    ``unit`` (:data:`BOOTSTRAP_UNITS`). ``resolved``: both pAUCs have a resolvable FMR target."""
    cfg = study.config
    rows = []
    for ds in cfg.datasets:
        orders = [study.ordering(ds, quality, m) for m in [reference, *methods]]
        est, res, samples, unit_name, n_units = _resampled(study, ds, fr, orders, fmr, n_boot, unit)
        for m, e, s, r in zip(methods, est[1:], samples[1:], res[1:], strict=True):
            delta, lo, hi, p_better, n_defined = _paired(e, est[0], s, samples[0])
            rows.append({
                "quality_model": quality, "dataset": cfg.datasets[ds].label, "fr_model": fr, "fmr": fmr,
                "method": m, "reference": reference, "delta_pauc": delta, "ci_low": lo, "ci_high": hi,
                "p_better": p_better, "convention": cfg.convention, "limit": cfg.discard_limit, "unit": unit_name, "n_units": n_units,
                "n_boot": int(n_boot), "n_defined": n_defined, "resolved": bool(r and res[0]),
            })
    return pd.DataFrame(rows)


def fusion_bootstrap(study: Study, fr: str, fmr: float, n_boot: int, unit: str = "subject") -> pd.DataFrame:
    """:func:`paired_vs_reference` of F and FW against the last exit for each quality model, with
    ``delta_pauc`` and its interval times ``pauc_scale`` (and ``scale``, ``seed`` columns)."""
    return _per_variant(study, fr, fmr, n_boot, unit, lambda depth: (["EX-FIQA-F", "EX-FIQA-FW"], exit_label(depth)))


def depth_bootstrap(study: Study, fr: str, fmr: float, n_boot: int, unit: str = "subject") -> pd.DataFrame:
    """As :func:`fusion_bootstrap`, the last exit against exit 1 (``delta_pauc`` < 0: depth helps)."""
    return _per_variant(study, fr, fmr, n_boot, unit, lambda depth: ([exit_label(depth)], exit_label(1)))


def _per_variant(
    study: Study, fr: str, fmr: float, n_boot: int, unit: str, pair: Callable[[int], tuple[list[str], str]]
) -> pd.DataFrame:
    cfg = study.config
    boot = pd.concat([paired_vs_reference(study, q, fr, *pair(depth), fmr, n_boot=n_boot, unit=unit)
                      for q, (_, depth) in variant_tags(study).items()], ignore_index=True)
    for col in ("delta_pauc", "ci_low", "ci_high"):
        boot[col] = boot[col] * cfg.pauc_scale
    boot["scale"] = float(cfg.pauc_scale)
    boot["seed"] = int(cfg.seed)
    return boot
