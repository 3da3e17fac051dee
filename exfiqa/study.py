"""The :class:`Study`: a run's per-sample arrays (:mod:`exfiqa.store.arrays`) and their evaluation,
each comparison set, score set and pair-quality order computed once (:mod:`exfiqa.evaluation.pairs`).

Conventions: higher quality = better; qualities and similarities are float32. Methods: ``Exit 1``
.. ``Exit D``, ``EX-FIQA-F``/``-FW`` (fusions of the exit scores), :data:`ATTN`, :data:`VITNT`,
baselines, external. Templates (IJB-C): embedding = mean within media, sum over media,
L2-normalised (``template_protocol: group``; ``insightface``: of ``(f(x) + f(flip x)) * det_score``);
template quality = min over its samples. Pair quality = min of the two; similarity = cosine of
flip-concatenated embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from exfiqa.config import Config, ConfigError
from exfiqa.evaluation.edc import edc_curves
from exfiqa.evaluation.exits import exit_labels
from exfiqa.evaluation.fusion import ex_fiqa_f, ex_fiqa_fw
from exfiqa.evaluation.pairs import AllPairs, PairList, release_pages
from exfiqa.evaluation.pauc import edc_rows, pauc, pauc_meta, pauc_rows, resolved_for
from exfiqa.evaluation.quality import template_quality
from exfiqa.evaluation.subjects import comparison_units, mated_components
from exfiqa.evaluation.templates import insightface_template_embeddings, template_embeddings
from exfiqa.io import atomic_write
from exfiqa.readers import Benchmark
from exfiqa.store.arrays import BASELINE_FR, BASELINES, ArrayError, code_version
from exfiqa.store.run import FAMILY_OPTIONS, Run
from exfiqa.store.runcard import RunCard, run_card

__all__ = ["ATTN", "CARD", "FAMILY_OPTIONS", "OFIQ_COLUMN", "VITNT", "Study", "exit_names", "open_study",
           "read_method_csv", "read_pairs_csv"]

#: ATTN-FIQA (arXiv 2604.22841) of the last block (``"ATTN-FIQA Exit k"``: of block k) and ViTNT-FIQA
#: (arXiv 2601.05741), token qualities averaged (the default) or attention-weighted.
ATTN = "ATTN-FIQA"
VITNT = ("ViTNT-FIQA", "ViTNT-FIQA (attention-weighted)")
#: File name of the run card :func:`open_study` writes into a notebook's ``out_dir`` (``make paper`` reads it).
CARD = "run_card.json"


#: Method names of the exits of a model of depth D: ``exit_names(D) == ["Exit 1", ..., "Exit D"]``.
exit_names = exit_labels

#: The column of OFIQ's CSV read as its quality: the unified score mapped to 0-100 by OFIQ.
OFIQ_COLUMN = "UnifiedQualityScore.scalar"


def _read_ofiq(path: str | os.PathLike[str], where: str) -> pd.DataFrame | None:
    """OFIQ's output (``;``-separated, ``Filename;UnifiedQualityScore;...;UnifiedQualityScore.scalar;...``)
    as a ``path,score`` table (score = :data:`OFIQ_COLUMN`), or None for any other CSV."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    fields = [f.strip() for f in header.rstrip("\r\n").split(";")]
    if len(fields) < 2 or fields[0].lstrip("\ufeff") != "Filename":
        return None
    if OFIQ_COLUMN not in fields:
        raise ConfigError(f"{where}: an OFIQ CSV (';'-separated, 'Filename;...') without the column {OFIQ_COLUMN!r}")
    table = pd.read_csv(path, sep=";", usecols=lambda c: c.strip().lstrip("\ufeff") in ("Filename", OFIQ_COLUMN))
    table.columns = [c.strip().lstrip("\ufeff") for c in table.columns]
    return pd.DataFrame({"path": table["Filename"].astype(str), "score": pd.to_numeric(table[OFIQ_COLUMN], errors="coerce")})


def _match_paths(paths: pd.Series, lookup: Mapping[str, float]) -> NDArray[Any]:
    """Keys of ``lookup`` for the benchmark's sample paths: the paths themselves; else the paths
    under one common prefix (e.g. absolute paths in the CSV, relative ones in the benchmark);
    else bare indices / file names."""
    keys: list[str] = [str(p) for p in paths]
    first = keys[0] if keys else ""
    if not set(keys) & set(lookup):
        hit = next((k for k in lookup if first and k.endswith(("/" + first, os.sep + first))), None)
        if hit is not None:
            keys = [hit[: len(hit) - len(first)] + p for p in keys]
        else:
            keys = [p.rsplit("#", 1)[-1] if "#" in p else Path(p).name for p in keys]
    return np.array(keys, dtype=object)


def read_method_csv(path: str | os.PathLike[str], bench: Benchmark, method: str) -> NDArray[np.float64]:
    """Per-sample scores (higher = better) of an external method, aligned to ``bench.samples``, from
    a CSV ``path,score`` (paths as in ``bench.samples``, possibly under one common prefix; ``.bin``:
    ``<file.bin>#<k>`` or ``k``) or ``template_id,score``, one score per sample; or OFIQ's own
    output (score :data:`OFIQ_COLUMN`, 0-100; a failed assessment is -1, discard it first)."""
    where = f"{method}: {path}"
    ofiq = _read_ofiq(path, where)
    table = pd.read_csv(path) if ofiq is None else ofiq
    if "score" not in table.columns or len(table.columns) != 2:
        raise ConfigError(f"{where}: expected columns 'path,score' or 'template_id,score', got {list(table.columns)}")
    key = next(c for c in table.columns if c != "score")
    if table["score"].isna().any() or table[key].duplicated().any():
        raise ConfigError(f"{where}: missing scores or duplicate {key} entries")
    if key == "template_id":
        if bench.level != "template":
            raise ConfigError(f"{where}: template_id scores given for a sample-level benchmark")
        lookup = dict(zip(table["template_id"].astype(int), table["score"].astype(float), strict=True))
        ids = bench.samples["template_id"].to_numpy()
    elif key == "path":
        lookup = dict(zip(table["path"].astype(str), table["score"].astype(float), strict=True))
        ids = _match_paths(bench.samples["path"].astype(str), lookup)
    else:
        raise ConfigError(f"{where}: first column must be 'path' or 'template_id', got {key!r}")
    missing = [i for i in ids if i not in lookup]
    if missing:
        raise ConfigError(f"{where}: no score for {len(missing)} samples, e.g. {missing[:3]}")
    return np.array([lookup[i] for i in ids], dtype=np.float64)


#: Columns of a pairs CSV (:func:`read_pairs_csv`): required, then optional.
PAIRS_COLUMNS = ("score", "mated", "quality_a", "quality_b")
PAIRS_SUBJECTS = ("subject_a", "subject_b")


def read_pairs_csv(path: str | os.PathLike[str]) -> dict[str, NDArray[Any]]:
    """Labelled comparisons for ``exfiqa operating-point --pairs``: a CSV with ``score``, ``mated``
    (1/0, true/false), ``quality_a``, ``quality_b`` and optionally ``subject_a``, ``subject_b``.
    Returns those arrays (``subjects``: (N, 2) codes, or absent)."""
    table = pd.read_csv(path)
    missing = [c for c in PAIRS_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a pairs CSV has {', '.join(PAIRS_COLUMNS)} "
                         f"(and optionally {', '.join(PAIRS_SUBJECTS)}), got {list(table.columns)}")
    out: dict[str, NDArray[Any]] = {}
    for c in ("score", "quality_a", "quality_b"):
        v = pd.to_numeric(table[c], errors="coerce")
        if v.isna().any():
            raise ValueError(f"{path}: column {c!r} has empty or non-numeric values (row {int(v.isna().idxmax()) + 2})")
        out[c] = v.to_numpy(np.float64)
    labels = table["mated"].astype(str).str.strip().str.lower()
    truth = labels.map({"1": True, "0": False, "true": True, "false": False, "1.0": True, "0.0": False})
    if truth.isna().any():
        raise ValueError(f"{path}: column 'mated' must be 1/0 or true/false, got {labels[truth.isna()].iat[0]!r}")
    out["mated"] = truth.to_numpy(bool)
    have = [c for c in PAIRS_SUBJECTS if c in table.columns]
    if len(have) == 1:
        raise ValueError(f"{path}: give both {PAIRS_SUBJECTS[0]} and {PAIRS_SUBJECTS[1]}, or neither")
    if have:
        both = table[list(PAIRS_SUBJECTS)].astype(str)
        codes = pd.factorize(pd.concat([both.iloc[:, 0], both.iloc[:, 1]], ignore_index=True))[0]
        out["subjects"] = codes.reshape(2, -1).T.copy()
    return out


@dataclass
class Study:
    """Everything a notebook needs from a run's arrays, lazily, e.g. ``Study(config).pauc_frame(ds, fr, q)``.

    Never extracts nor loads a model; a missing or stale array is an :class:`ArrayError` naming the
    file and the command that makes it. ``run``: shared with the extraction (default: a new one);
    ``out_dir`` and ``card`` are set by :func:`open_study`.
    """

    config: Config
    progress: bool = True
    out_dir: Path | None = None
    card: RunCard | None = None
    run: Run | None = field(default=None, repr=False)
    #: memo: comparison sets by dataset; scores, orders, subjects and depths by tuple key
    _comparison_sets: dict[str, PairList | AllPairs] = field(default_factory=dict, repr=False)
    _evaluation: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.config.check_paths(checkpoints=False)
        if self.run is None:
            self.run = Run(self.config, progress=self.progress)
        self._run: Run = self.run
        self.digests = self._run.digests
        self.arrays = self._run.arrays
        self._arrays: dict[tuple[str, str, str], NDArray[np.float32]] = {}

    def benchmark(self, dataset: str) -> Benchmark:
        """The named benchmark, opened once (by the run description)."""
        return self._run.benchmark(dataset)

    def has_checkpoint(self, kind: str, name: str) -> bool:
        """Whether the checkpoint of ``<kind>.<name>`` (``quality_models``/``fr_models``) is on disk."""
        return self._run.has_checkpoint(kind, name)

    def depth(self, quality: str, dataset: str | None = None) -> int:
        """Number of exits of ``quality``: its exit-score width on ``dataset`` (default: the first)."""
        self._run.spec("quality_models", quality)
        ds = dataset if dataset is not None else next(iter(self.config.datasets))
        return int(self.exit_scores(ds, quality).shape[1])

    def variant_tag(self, quality: str) -> str:
        """``"T"``/``"C"`` from the label or name of ``quality`` (:meth:`Run.variant_label`), else its name."""
        return self._run.variant_label(quality) or str(quality)

    def array(self, dataset: str, kind: str, name: str) -> NDArray[np.float32]:
        """The per-sample array ``<kind>-<name>`` of ``dataset`` (float32, read-only;
        :mod:`exfiqa.store.arrays`); ``name`` must be in the config."""
        if kind == "baseline":
            fr = BASELINE_FR.get(name)
            if name not in BASELINES:
                raise ConfigError(f"unknown baseline {name!r}; known: {list(BASELINES)}")
            if fr is not None and fr not in self.config.support_fr_models:
                raise ConfigError(f"baseline {name!r} needs fr_models.{fr} in the config file")
            if name not in self.config.baselines:
                raise ConfigError(f"baseline {name!r} is not in this config's baselines {list(self.config.baselines)}")
        else:
            self._run.spec("fr_models" if kind in ("emb", "norms") else "quality_models", name)
        if (dataset, kind, name) not in self._arrays:
            bench = self.benchmark(dataset)
            inputs = self._run.array_inputs(dataset, kind, name, evaluation=True)
            trusted = ("data",) if "checkpoint" in inputs or "args" not in inputs else ("data", "checkpoint")
            found, reason = self.arrays.current(bench, dataset, kind, name, inputs, code_version(kind, name), trusted)
            if found is None:
                raise self._run.missing(dataset, kind, name, reason)
            if kind in ("exits", "attn"):  # one column per block: the width the extraction wrote, else
                # that of the first such array read in this run (no checkpoint needed)
                depth, source = self._run.produced_width(dataset, name) or (
                    int(self._evaluation.setdefault(("depth", name), int(found.shape[1]))),
                    "the first array of it read in this run")
                if found.shape[1] != depth:
                    raise ArrayError(
                        f"{self.arrays.path(dataset, kind, name)}: {found.shape[1]:,} columns, but quality "
                        f"model {name!r} has {depth} blocks ({source}; one column per exit)"
                    )
            self._arrays[(dataset, kind, name)] = found
        return self._arrays[(dataset, kind, name)]

    def exit_scores(self, dataset: str, quality: str) -> NDArray[np.float32]:
        """(N, depth) quality scores of every exit for every sample of ``dataset``."""
        return self.array(dataset, "exits", quality)

    def embeddings(self, dataset: str, fr: str) -> NDArray[np.float32]:
        """(N, 2E) flip-concatenated embeddings of every sample."""
        return self.array(dataset, "emb", fr)

    def baseline_scores(self, dataset: str, method: str) -> NDArray[np.float32]:
        """Per-sample scores of a built-in baseline (:mod:`exfiqa.models.baselines`)."""
        return self.array(dataset, "baseline", method)

    def sample_scores(self, dataset: str, quality: str, method: str) -> NDArray[np.float32]:
        """One method's per-sample quality (float32; equal values tie): ``Exit k`` is column k-1 of
        :meth:`exit_scores`, fusions are computed in float64 and rounded."""
        scores = self.exit_scores(dataset, quality)
        depth = scores.shape[1]
        if method in exit_names(depth):
            return np.ascontiguousarray(scores[:, int(method.split()[1]) - 1], dtype=np.float32)
        if method == "EX-FIQA-F":
            return ex_fiqa_f(scores).astype(np.float32)
        if method == "EX-FIQA-FW":
            return ex_fiqa_fw(scores).astype(np.float32)
        if method == ATTN or (method.startswith(f"{ATTN} Exit ") and method.removeprefix(f"{ATTN} ") in exit_names(depth)):
            col = depth if method == ATTN else int(method.rsplit(" ", 1)[1])
            return np.ascontiguousarray(self.array(dataset, "attn", quality)[:, col - 1])
        if method in VITNT:
            return np.ascontiguousarray(self.array(dataset, "vitnt", quality)[:, VITNT.index(method)])
        if method in self.config.baselines:
            return np.asarray(self.baseline_scores(dataset, method), dtype=np.float32)
        per_ds = self.config.external_methods.get(method)
        if per_ds is not None and dataset in per_ds:
            return read_method_csv(per_ds[dataset], self.benchmark(dataset), method).astype(np.float32)
        known = exit_names(depth) + ["EX-FIQA-F", "EX-FIQA-FW", ATTN, *VITNT, f"{ATTN} Exit k", *self.config.baselines]
        known += [m for m, d in self.config.external_methods.items() if dataset in d]
        raise ConfigError(f"unknown quality method {method!r} on {dataset}; known: {known}")

    def sample_quality(self, dataset: str, quality: str) -> pd.DataFrame:
        """Per-sample qualities (float32): ``Exit 1..D``, ``EX-FIQA-F``, ``EX-FIQA-FW``, baselines, external."""
        return pd.DataFrame({m: self.sample_scores(dataset, quality, m) for m in self.methods(quality, dataset)})

    # ------------------------------------------------------------------ comparisons

    def comparison_set(self, dataset: str) -> PairList | AllPairs:
        """The comparisons of ``dataset``: a pair list (sides: samples or templates) or all-vs-all."""
        if dataset not in self._comparison_sets:
            bench = self.benchmark(dataset)
            if bench.all_pairs is not None:
                self._comparison_sets[dataset] = bench.all_pairs
            else:
                a, b = self._comparison_index(dataset)
                n_sides = len(bench) if bench.level == "sample" else len(np.unique(bench.samples["template_id"].to_numpy()))
                self._comparison_sets[dataset] = PairList(a, b, bench.comparisons["mated"].to_numpy(bool), n_sides)
        return self._comparison_sets[dataset]

    def subjects(self, dataset: str) -> tuple[Any, str, int]:
        """The bootstrap's units of ``dataset``'s comparisons: ``(units, unit name, count)``: the
        identity where named; else mated components, or the pair where every sample enters one."""
        key = ("subjects", dataset)
        if key not in self._evaluation:
            bench = self.benchmark(dataset)
            comp = self.comparison_set(dataset)
            if isinstance(comp, AllPairs) or (bench.level == "sample" and "identity" in bench.samples):
                side = pd.factorize(bench.samples["identity"])[0]
                name = "subject"
            elif bench.level == "template":
                side, name = mated_components(comp.a, comp.b, comp.mated, comp.n_sides), "subject (mated component)"
            else:
                uses = np.bincount(comp.a, minlength=comp.n_sides) + np.bincount(comp.b, minlength=comp.n_sides)
                if np.all(uses == 1):
                    side = np.empty(comp.n_sides, dtype=np.int64)
                    side[comp.a] = np.arange(comp.n)
                    side[comp.b] = np.arange(comp.n)
                    name = "pair"
                else:
                    side, name = mated_components(comp.a, comp.b, comp.mated, comp.n_sides), "mated component"
            units = comparison_units(comp, side)
            self._evaluation[key] = (units, name, int(units.n_units))
        out: tuple[Any, str, int] = self._evaluation[key]
        return out

    def _side_values(self, dataset: str, values: NDArray[Any]) -> NDArray[Any]:
        """Per-side values from per-sample ones (templates: the min over each template's samples)."""
        bench = self.benchmark(dataset)
        v = np.asarray(values)
        if v.shape[0] != len(bench):
            raise ValueError(f"{dataset}: expected {len(bench)} per-sample values, got {v.shape[0]}")
        if bench.level == "template":
            _, v = template_quality(v, bench.samples["template_id"].to_numpy(), "min")
        return v

    def _materialised_index(self, dataset: str) -> tuple[NDArray[Any], NDArray[Any]]:
        comp = self.benchmark(dataset).comparisons  # raises for a too large all-vs-all set
        return comp["a"].to_numpy(), comp["b"].to_numpy()

    def _comparison_index(self, dataset: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Row indices of each comparison's two sides (samples, or sorted unique templates)."""
        bench = self.benchmark(dataset)
        a = bench.comparisons["a"].to_numpy()
        b = bench.comparisons["b"].to_numpy()
        if bench.level == "sample":
            return a, b
        tids = np.unique(bench.samples["template_id"].to_numpy())
        out = []
        for side, ids in (("a", a), ("b", b)):
            if tids.size and 0 <= tids[0] and tids[-1] < 2**26 and ids.size and 0 <= ids.min() and ids.max() < 2**26:
                lookup = np.full(max(int(tids[-1]), int(ids.max())) + 1, -1, dtype=np.int32)
                lookup[tids] = np.arange(tids.size, dtype=np.int32)
                idx = lookup[ids]  # int32 row of each side, -1 for an unknown template
                bad = idx < 0
            else:
                pos = np.searchsorted(tids, ids)
                bad = (pos >= len(tids)) | (tids[np.minimum(pos, len(tids) - 1)] != ids)
                idx = pos.astype(np.int32 if len(tids) < 2**31 else np.int64)
            if bad.any():
                raise ValueError(f"{dataset}: comparison side {side} names templates without samples, e.g. {ids[bad][:3]}")
            out.append(idx)
        return out[0], out[1]

    def features(self, dataset: str, fr: str) -> tuple[NDArray[np.float32], float]:
        """Per-side features (float32) and similarity scale: templates (``template_protocol``), 1;
        samples (flip-concatenated), 1/2."""
        bench = self.benchmark(dataset)
        emb = self.embeddings(dataset, fr)
        if bench.level == "template":
            tids, mids = bench.samples["template_id"].to_numpy(), bench.samples["media_id"].to_numpy()
            if self.config.template_protocol == "insightface":
                det = bench.samples["det_score"].to_numpy(np.float64)
                _, feats = insightface_template_embeddings(emb, det, tids, mids, norms=np.asarray(self.array(dataset, "norms", fr)))
            else:
                _, feats = template_embeddings(emb, tids, mids)
            release_pages(emb)  # read once: 1.9 GB per FR model at IJB-C size need not stay resident
            return feats.astype(np.float32, copy=False), 1.0
        return emb, 0.5  # flip-concatenated halves of norm 1: |e| = sqrt(2)

    def scores(self, dataset: str, fr: str) -> Any:
        """The comparison scores of ``dataset`` under ``fr`` (computed once; see :mod:`exfiqa.evaluation.pairs`)."""
        key = ("scores", dataset, fr)
        if key not in self._evaluation:
            comp = self.comparison_set(dataset)
            feats, scale = self.features(dataset, fr)
            if isinstance(comp, AllPairs):
                k = int(max(self.config.fmr_targets) * comp.n_nm)
                self._evaluation[key] = comp.scores(feats, scale, initial_m=max(4 * (k + 1), 4096))
            else:
                self._evaluation[key] = comp.scores(feats, scale)
        return self._evaluation[key]

    def similarity(self, dataset: str, fr: str) -> NDArray[np.float32]:
        """Similarity (float32) of every comparison, in comparison order (all-vs-all: small sets only)."""
        comp = self.comparison_set(dataset)
        if isinstance(comp, AllPairs):
            self._materialised_index(dataset)  # the same size limit as the comparison table
            feats, scale = self.features(dataset, fr)
            return comp.similarity(feats, scale)
        sim: NDArray[np.float32] = self.scores(dataset, fr).sim  # float32, read-only, held by the scores
        return sim

    def ordering(self, dataset: str, quality: str, method: str) -> Any:
        """The stable pair-quality order of ``method`` (computed once)."""
        key = ("order", dataset, quality, method)
        if key not in self._evaluation:
            self._evaluation[key] = self.order_of(dataset, self.sample_scores(dataset, quality, method))
        return self._evaluation[key]

    def order_of(self, dataset: str, values: NDArray[Any]) -> Any:
        """The stable pair-quality order of any per-sample quality (not kept: e.g. a fusion candidate)."""
        values = np.asarray(values, dtype=np.float32)
        return self.comparison_set(dataset).order(self._side_values(dataset, values))

    def rules(self) -> dict[str, str]:
        """The config's ``threshold_rule`` and ``acceptance``, as EDC keyword arguments."""
        return {"threshold_rule": self.config.threshold_rule, "acceptance": self.config.acceptance}

    def _edc_curves(
        self, dataset: str, fr: str, order: Any, targets: Sequence[float] | None, convention: str | None,
        error_type: str = "fnmr",
    ) -> dict[float, Any]:
        """EDCs of a prepared order (FNM-EDC targets default to the config's)."""
        if targets is None and error_type == "fnmr":
            targets = self.config.fmr_targets
        return edc_curves(self.scores(dataset, fr), order, None if targets is None else tuple(targets),
                          convention or self.config.convention, error_type=error_type, **self.rules())

    def edc(
        self, dataset: str, fr: str, quality: str, method: str,
        targets: Sequence[float] | None = None, convention: str | None = None, *, error_type: str = "fnmr",
    ) -> dict[float, Any]:
        """EDCs of a method by target (FNM-EDC: default the config's FMR targets; FM-EDC,
        ``error_type="fmr"``: FNMR targets, required), under the config's convention and rules."""
        return self._edc_curves(dataset, fr, self.ordering(dataset, quality, method), targets, convention, error_type)

    def edc_of(
        self, dataset: str, fr: str, values: NDArray[Any],
        targets: Sequence[float] | None = None, convention: str | None = None, *, error_type: str = "fnmr",
    ) -> dict[float, Any]:
        """EDCs of any per-sample quality values (higher = better), paired by min (see :meth:`edc`)."""
        return self._edc_curves(dataset, fr, self.order_of(dataset, values), targets, convention, error_type)

    def pauc_order(self, dataset: str, fr: str, order: Any, fmr: float) -> float:
        """pAUC (raw area, the config's settings) of a prepared order at one FMR target."""
        curve = self._edc_curves(dataset, fr, order, (fmr,), None)[float(fmr)]
        return pauc(curve, self.config.discard_limit, self.config.subtract_best)

    def resolved(self, dataset: str, fr: str, order: Any, fmr: float) -> bool:
        """Whether the pAUC of :meth:`pauc_order` is resolved (:func:`exfiqa.evaluation.pauc.resolved_for`)."""
        return resolved_for(self.scores(dataset, fr), order, fmr, self.config.convention, self.config.discard_limit)

    def resolved_of(self, dataset: str, fr: str, values: NDArray[Any], fmr: float) -> NDArray[np.bool_]:
        """:meth:`resolved` of each column of (N,) or (N, K) per-sample values: (K,) booleans."""
        cols = np.asarray(values).reshape(len(values), -1)
        return np.array([self.resolved(dataset, fr, self.order_of(dataset, c), fmr) for c in cols.T])

    def pauc_of(
        self, dataset: str, fr: str, values: NDArray[Any], targets: Sequence[float] | None = None,
        *, error_type: str = "fnmr",
    ) -> dict[float, NDArray[np.float64]]:
        """pAUC (raw area, the config's settings) of (N,) or (N, K) values: ``{target: (K,) areas}``."""
        cols = np.asarray(values).reshape(len(values), -1)
        out: dict[float, NDArray[np.float64]] = {}
        for j in range(cols.shape[1]):
            curves = self.edc_of(dataset, fr, cols[:, j], targets, error_type=error_type)
            for f, c in curves.items():
                out.setdefault(float(f), np.empty(cols.shape[1]))[j] = pauc(c, self.config.discard_limit, self.config.subtract_best)
        return out

    def _curves(
        self, dataset: str, fr: str, quality: str, methods: Sequence[str] | None, convention: str | None,
        error_type: str = "fnmr", targets: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        ms = list(methods) if methods is not None else self.methods(quality, dataset)
        out = {}
        for m in ms:
            try:
                out[m] = self.edc(dataset, fr, quality, m, targets, convention, error_type=error_type)
            except ValueError as exc:
                raise ValueError(f"{dataset}, {fr}, {quality}, {m!r}: {exc}") from None
        return out

    def pauc_frame(
        self, dataset: str, fr: str, quality: str, methods: Sequence[str] | None = None,
        scale: float = 1.0, convention: str | None = None, *, error_type: str = "fnmr",
        targets: Sequence[float] | None = None, subtract_best: bool | str | None = None,
    ) -> pd.DataFrame:
        """Tidy pAUC rows (:func:`~exfiqa.evaluation.pauc.pauc_rows`) of each method x target, the
        dataset by its label."""
        best = self.config.subtract_best if subtract_best is None else subtract_best
        meta = pauc_meta(convention or self.config.convention, self.config.discard_limit, best, scale,
                         error_type=error_type, **self.rules())
        rows = []
        label = self.config.datasets[dataset].label
        for m, by_t in self._curves(dataset, fr, quality, methods, meta["convention"], error_type, targets).items():
            rows += pauc_rows(m, label, fr, by_t, meta)
        return pd.DataFrame(rows)

    def edc_frame(
        self, dataset: str, fr: str, quality: str, methods: Sequence[str] | None = None, convention: str | None = None,
        *, error_type: str = "fnmr", targets: Sequence[float] | None = None,
    ) -> pd.DataFrame:
        """Tidy EDC points (the columns of :func:`exfiqa.evaluation.pauc.edc_rows`), bounded path."""
        conv = convention or self.config.convention
        frames = []
        label = self.config.datasets[dataset].label
        for m, by_t in self._curves(dataset, fr, quality, methods, conv, error_type, targets).items():
            frames += edc_rows(m, label, fr, by_t)
        return pd.concat(frames, ignore_index=True)

    def methods(self, quality: str, dataset: str | None = None) -> list[str]:
        """:meth:`sample_quality`'s columns in plotting order (external: those with scores for ``dataset``)."""
        depth = self.depth(quality, dataset)
        extra = list(self.config.baselines)
        extra += [m for m, per_ds in self.config.external_methods.items() if dataset is None or dataset in per_ds]
        return exit_names(depth) + ["EX-FIQA-F", "EX-FIQA-FW", ATTN, VITNT[0]] + extra


# ---------------------------------------------------------------------- the notebooks' entry point


def open_study(
    config: str | os.PathLike[str],
    datasets: Sequence[str] | str = (),
    fr_models: Sequence[str] | str = (),
    quality_models: Sequence[str] | str = (),
    data_root: str | os.PathLike[str] = "",
    out_dir: str | os.PathLike[str] = "",
    progress: bool = True,
    attention_samples: Mapping[str, Any] | str | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Study:
    """A notebook's first cell: validated config -> :class:`Study`; ``parameters=globals()`` takes
    the settings it holds. ``overrides`` not None replace the config's; list parameters may be
    JSON/YAML text; a bad one raises :class:`ConfigError` first. Creates ``out_dir/{figures,tables}``
    (default ``<results_dir>/<run_name>-adhoc``) and writes the run card ``out_dir/``:data:`CARD`.
    """
    from exfiqa.config import list_parameter, load_config, parse_attention_samples

    if parameters is not None:
        if datasets or fr_models or quality_models or data_root or out_dir or attention_samples is not None or overrides:
            raise TypeError("open_study: give the notebook's parameters (parameters=) or the arguments, not both")
        keys = ("datasets", "fr_models", "quality_models", "data_root", "out_dir", "attention_samples",
                 "fmr_targets", "discard_limit", "convention", "pauc_scale", "device", "batch_size", "seed")
        return open_study(config, progress=progress, **{k: parameters[k] for k in keys if k in parameters})
    if not isinstance(config, (str, os.PathLike)) or not str(config):
        raise ConfigError(f"parameter config must be the path of a config file, got {config!r}")
    for name, value in (("data_root", data_root), ("out_dir", out_dir)):
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"parameter {name} must be a path (or empty), got {value!r} ({type(value).__name__})")
    names = {
        key: list_parameter(key, value)
        for key, value in (("datasets", datasets), ("fr_models", fr_models), ("quality_models", quality_models))
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "fmr_targets" in overrides:
        overrides["fmr_targets"] = list_parameter("fmr_targets", overrides["fmr_targets"], "numbers")
    cfg = load_config(config, data_root=data_root or None)
    cfg = cfg.select(**names).with_(**overrides)
    if attention_samples:
        cfg = replace(cfg, attention_samples=parse_attention_samples(attention_samples, cfg))
    out = Path(out_dir or cfg.results_dir / f"{cfg.run_name}-adhoc")
    study = Study(cfg, progress=progress, out_dir=out)
    for sub in ("figures", "tables"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # the Study's own benchmarks: each is opened once per notebook (IJB-C's tables take seconds)
    opened = {ds: study.benchmark(ds) for ds in cfg.datasets}
    study.card = run_card(cfg, benchmarks=opened, progress=progress)
    with atomic_write(out / CARD, overwrite=True) as fh:
        fh.write(study.card.to_json())
    return study
