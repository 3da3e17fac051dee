"""Paired bootstrap tables (notebook 03): what is resampled on each dataset, and pAUC(method) -
pAUC(reference) with 95% intervals, all methods on the same resamples."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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


def fusion_bootstrap(study: Study, fr: str, fmr: float, n_boot: int, unit: str = "subject") -> pd.DataFrame:
    """Paired bootstrap of F and FW against the last exit, per quality model and dataset
    (:func:`paired_vs_reference`, resampling ``unit``), with ``delta_pauc`` and its interval
    times ``pauc_scale``."""
    cfg = study.config
    parts = []
    for q, (_, depth) in variant_tags(study).items():
        parts.append(paired_vs_reference(study, q, fr, ["EX-FIQA-F", "EX-FIQA-FW"], exit_label(depth), fmr, n_boot=n_boot,
                                         unit=unit))
    return _scaled(pd.concat(parts, ignore_index=True), cfg)


def depth_bootstrap(study: Study, fr: str, fmr: float, n_boot: int, unit: str = "subject") -> pd.DataFrame:
    """Paired bootstrap of the last exit against exit 1, per quality model and dataset
    (:func:`paired_vs_reference`, resampling ``unit``; ``delta_pauc`` = pAUC(last) - pAUC(exit 1),
    < 0: depth helps), scaled and labelled as :func:`fusion_bootstrap`; for the "depth gains" finding."""
    parts = [paired_vs_reference(study, q, fr, [exit_label(depth)], exit_label(1), fmr, n_boot=n_boot, unit=unit)
             for q, (_, depth) in variant_tags(study).items()]
    return _scaled(pd.concat(parts, ignore_index=True), study.config)


def _scaled(boot: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """A paired-bootstrap table with ``delta_pauc`` and its interval times ``pauc_scale`` (+ scale, seed)."""
    for col in ("delta_pauc", "ci_low", "ci_high"):
        boot[col] = boot[col] * cfg.pauc_scale
    boot["scale"] = float(cfg.pauc_scale)
    boot["seed"] = int(cfg.seed)
    return boot
