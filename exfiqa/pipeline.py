"""The comparison table for (dataset, FR model, quality model), computed once and cached on disk.

Data flow: images -> quality model (N x depth exit scores) and FR model (embeddings) -> comparison
table (similarity, mated flag, pair quality per method) -> metrics -> plots and tables.

Conventions:
- Sample quality for EX-FIQA methods: ``Exit 1`` .. ``Exit D``, ``EX-FIQA-F``, ``EX-FIQA-FW``
  (fusions over the sample's exit scores, then paired). Baselines and external methods add their
  own columns. Higher = better quality everywhere.
- Template benchmarks (IJB-C): template embedding = mean within media, sum over media,
  L2-normalised; template quality = min over its samples.
- Pair quality = min of the two qualities. Similarity = cosine of flip-concatenated embeddings.
- Similarities and qualities are float32. The analyses evaluate in bounded memory, at IJB-C and
  Adience all-vs-all sizes: per dataset a comparison set (:meth:`Study.comparison_set`), per
  FR model its scores (:meth:`Study.scores`), per quality method its order
  (:meth:`Study.ordering`), each computed once and reused by every FMR target and convention
  (:meth:`Study.edc`, :meth:`Study.pauc_frame`, :meth:`Study.pauc_of`; :mod:`exfiqa.comparisons`).
  :meth:`Study.table` (one column per method) is for small sets.

Per-sample arrays (exit scores, embeddings, baselines) live in the documented layout of
:mod:`exfiqa.arrays`, whoever produced them; exfiqa's own are keyed by the content of what they
depend on (benchmark files, checkpoint bytes, arguments, the source of the code that computes
them) and recomputed when any of it changes; they are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from .comparisons import AllPairs, PairList, release_pages
from .config import _BASELINE_FR, _BASELINES, Config, ConfigError
from .datasets import Benchmark, load_benchmark
from .fusion import ex_fiqa_f, ex_fiqa_fw

__all__ = ["Study", "exit_names", "read_method_csv"]


def exit_names(depth: int) -> list[str]:
    """Method names of the exits, ``["Exit 1", ..., "Exit D"]``."""
    return [f"Exit {k}" for k in range(1, depth + 1)]


def read_method_csv(path: str | os.PathLike[str], bench: Benchmark, method: str) -> NDArray[np.float64]:
    """Per-sample scores of an external quality method, aligned to ``bench.samples``.

    The CSV has a header and two columns: ``path,score`` (``path`` as in ``bench.samples.path``;
    for ``.bin`` benchmarks that is ``<file.bin>#<k>``, or the bare index ``k``) or, for template
    benchmarks, ``template_id,score`` (then every sample of a template gets its score). Higher =
    better quality. Every sample must have exactly one score.
    """
    table = pd.read_csv(path)
    where = f"{method}: {path}"
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
        paths = bench.samples["path"].astype(str)
        if not set(paths) & set(lookup):  # allow bare indices / file names
            paths = pd.Series([p.rsplit("#", 1)[-1] if "#" in p else Path(p).name for p in paths])
        ids = paths.to_numpy()
    else:
        raise ConfigError(f"{where}: first column must be 'path' or 'template_id', got {key!r}")
    missing = [i for i in ids if i not in lookup]
    if missing:
        raise ConfigError(f"{where}: no score for {len(missing)} samples, e.g. {missing[:3]}")
    return np.array([lookup[i] for i in ids], dtype=np.float64)


@dataclass
class Study:
    """Everything a notebook needs, computed lazily and cached: ``Study(config).table(ds, fr, q)``."""

    config: Config
    progress: bool = True
    _benchmarks: dict[str, Benchmark] = field(default_factory=dict, repr=False)
    _models: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from .arrays import ArrayStore, arrays_root
        from .digests import INDEX_NAME, DigestIndex

        self.config.check_paths()
        self.digests = DigestIndex(self.config.cache_dir / INDEX_NAME, progress=self.progress)
        self.arrays = ArrayStore(arrays_root(self.config), self.digests)
        self._arrays: dict[tuple[str, str, str], NDArray[np.float32]] = {}

    # ------------------------------------------------------------------ inputs

    def benchmark(self, dataset: str) -> Benchmark:
        """The named benchmark, opened once."""
        if dataset not in self._benchmarks:
            spec = self._spec("datasets", dataset)
            self._benchmarks[dataset] = load_benchmark(spec.kind, **spec.args)
        return self._benchmarks[dataset]

    def _spec(self, kind: str, name: str) -> Any:
        table = getattr(self.config, kind)
        if name not in table:
            raise ConfigError(f"unknown {kind[:-1]} {name!r}; known: {sorted(table)}")
        return table[name]

    def _digest(self, path: Path) -> str:
        """SHA-256 of an input file, through the run's persistent digest index."""
        return self.digests.digest(path)

    def quality_model(self, name: str):
        """The ViT-FIQA model ``name`` (loaded once, eval mode, on the configured device)."""
        from .model import load_vitfiqa

        if ("q", name) not in self._models:
            spec = self._spec("quality_models", name)
            self._models[("q", name)] = load_vitfiqa(spec.checkpoint, device=self.config.device, **spec.args)
        return self._models[("q", name)]

    def fr_model(self, name: str):
        """The FR model ``name`` (arch and preprocessing from its name or the config's ``arch``)."""
        from .fr import load_fr

        if ("fr", name) not in self._models:
            spec = self.config.fr_models.get(name) or self.config.support_fr_models.get(name) or self._spec("fr_models", name)
            args = dict(spec.args)
            self._models[("fr", name)] = load_fr(args.pop("name", name), spec.checkpoint, device=self.config.device, **args)
        return self._models[("fr", name)]

    def _batches(self, dataset: str):
        for _, imgs in self.benchmark(dataset).iter_images(self.config.batch_size):
            yield imgs

    # ------------------------------------------------------------------ per-sample arrays

    def array_inputs(self, dataset: str, kind: str, name: str) -> dict[str, Any]:
        """What exfiqa's ``kind`` array of model or method ``name`` on ``dataset`` depends on, code aside.

        ``data``: the benchmark's content fingerprint; ``checkpoint``: the model file's SHA-256;
        ``args``: its loader arguments. SER-FIQ adds ``seed`` and ``batch_size`` (its dropout
        draws follow the batches). The code's digest is :func:`exfiqa.arrays.code_version`.
        """
        key: dict[str, Any] = {"data": self.benchmark(dataset).fingerprint(self.digests)}
        if kind == "baseline":
            fr = _BASELINE_FR.get(name)
            spec = None if fr is None else self.config.support_fr_models[fr]
            if name == "serfiq":
                key.update(seed=self.config.seed, batch_size=self.config.batch_size)
        else:
            spec = self._spec("quality_models" if kind == "exits" else "fr_models", name)
        if spec is not None:
            key.update(checkpoint=self._digest(spec.checkpoint), args=spec.args)
        return key

    def _array(self, dataset: str, kind: str, name: str, compute: Callable[[], NDArray[Any]]) -> NDArray[np.float32]:
        """The per-sample array from the layout (:mod:`exfiqa.arrays`), computed if absent or stale."""
        if (dataset, kind, name) not in self._arrays:
            self._arrays[(dataset, kind, name)] = self.arrays.get(
                self.benchmark(dataset), dataset, kind, name,
                inputs=lambda: self.array_inputs(dataset, kind, name), compute=compute,
            )
        return self._arrays[(dataset, kind, name)]

    def exit_scores(self, dataset: str, quality: str) -> NDArray[np.float32]:
        """(N, depth) quality scores of every exit for every sample of ``dataset`` (float32, read-only)."""
        self._spec("quality_models", quality)

        def compute() -> NDArray[np.float32]:
            from .inference import exit_scores

            return exit_scores(
                self.quality_model(quality), self._batches(dataset), total=len(self.benchmark(dataset)),
                device=self.config.device, progress=self.progress, desc=f"{quality} on {dataset}",
            )

        return self._array(dataset, "exits", quality, compute)

    def embeddings(self, dataset: str, fr: str) -> NDArray[np.float32]:
        """(N, 2E) flip-concatenated embeddings of every sample (float32, read-only)."""
        self._spec("fr_models", fr)

        def compute() -> NDArray[np.float32]:
            from tqdm.auto import tqdm

            model = self.fr_model(fr)
            bench = self.benchmark(dataset)
            out = []
            with tqdm(total=len(bench), desc=f"{fr} on {dataset}", unit="img", disable=not self.progress, leave=False) as bar:
                for imgs in self._batches(dataset):
                    out.append(model.embed(imgs, batch_size=self.config.batch_size))
                    bar.update(len(imgs))
            return np.concatenate(out)

        return self._array(dataset, "emb", fr, compute)

    def baseline_scores(self, dataset: str, method: str) -> NDArray[np.float32]:
        """Per-sample scores of a built-in baseline (see :mod:`exfiqa.baselines`; float32, read-only)."""
        if method not in _BASELINES:
            raise ConfigError(f"unknown baseline {method!r}; known: {list(_BASELINES)}")
        fr = _BASELINE_FR.get(method)
        if fr is not None and fr not in self.config.support_fr_models:
            raise ConfigError(f"baseline {method!r} needs fr_models.{fr} in the config file")

        def compute() -> NDArray[np.float64]:
            from .baselines import serfiq_quality, sharpness
            from .fr import magface_quality

            if method == "sharpness":
                return np.concatenate([sharpness(b) for b in self._batches(dataset)])
            model = self.fr_model(fr)
            if method == "magface_norm":
                return magface_quality(model, self._batches(dataset), self.config.batch_size)
            return serfiq_quality(model, self._batches(dataset), seed=self.config.seed)

        return self._array(dataset, "baseline", method, compute)

    def sample_scores(self, dataset: str, quality: str, method: str) -> NDArray[np.float32]:
        """One method's per-sample quality (float32): an exit, a fusion, a baseline or external.

        ``Exit k`` is column k-1 of :meth:`exit_scores`; ``EX-FIQA-F``/``-FW`` are fused in
        float64 over the exit scores and rounded to float32 (the dtype every quality is
        evaluated in; equal float32 values tie).
        """
        scores = self.exit_scores(dataset, quality)
        depth = scores.shape[1]
        if method in exit_names(depth):
            return np.ascontiguousarray(scores[:, int(method.split()[1]) - 1], dtype=np.float32)
        if method == "EX-FIQA-F":
            return ex_fiqa_f(scores).astype(np.float32)
        if method == "EX-FIQA-FW":
            return ex_fiqa_fw(scores).astype(np.float32)
        if method in self.config.baselines:
            return np.asarray(self.baseline_scores(dataset, method), dtype=np.float32)
        per_ds = self.config.external_methods.get(method)
        if per_ds is not None and dataset in per_ds:
            return read_method_csv(per_ds[dataset], self.benchmark(dataset), method).astype(np.float32)
        known = exit_names(depth) + ["EX-FIQA-F", "EX-FIQA-FW", *self.config.baselines]
        known += [m for m, d in self.config.external_methods.items() if dataset in d]
        raise ConfigError(f"unknown quality method {method!r} on {dataset}; known: {known}")

    def sample_quality(self, dataset: str, quality: str) -> pd.DataFrame:
        """Per-sample qualities (float32): ``Exit 1..D``, ``EX-FIQA-F``, ``EX-FIQA-FW``, baselines, external."""
        depth = self.exit_scores(dataset, quality).shape[1]
        methods = exit_names(depth) + ["EX-FIQA-F", "EX-FIQA-FW", *self.config.baselines]
        methods += [m for m, per_ds in self.config.external_methods.items() if dataset in per_ds]
        return pd.DataFrame({m: self.sample_scores(dataset, quality, m) for m in methods})

    # ------------------------------------------------------------------ comparisons
    #
    # Bounded evaluation: a comparison set (explicit pairs or implicit all-vs-all), one scores
    # object per (dataset, FR model) and one order per (dataset, quality model, method), each
    # computed once and kept for the Study's life (IJB-C: 62 MB per FR model, 15.6 MB per method;
    # Adience all-vs-all: the top non-mated candidates per FR model, one float per sample per
    # method). EDCs and pAUCs at every FMR target and both conventions reuse them
    # (:mod:`exfiqa.comparisons`, :func:`exfiqa.metrics.edc_curves`).

    def _memo(self) -> dict[tuple[Any, ...], Any]:
        return self.__dict__.setdefault("_evaluation", {})

    def comparison_set(self, dataset: str) -> PairList | AllPairs:
        """The comparisons of ``dataset`` as an explicit pair list (sides: samples or templates)
        or the implicit all-vs-all structure."""
        key = ("comparisons", dataset)
        if key not in self._memo():
            bench = self.benchmark(dataset)
            if bench.all_pairs is not None:
                self._memo()[key] = bench.all_pairs
            else:
                a, b = self._comparison_index(dataset)
                n_sides = len(bench) if bench.level == "sample" else len(np.unique(bench.samples["template_id"].to_numpy()))
                self._memo()[key] = PairList(a, b, bench.comparisons["mated"].to_numpy(bool), n_sides)
        return self._memo()[key]

    def _side_values(self, dataset: str, values: NDArray[Any]) -> NDArray[Any]:
        """Per-side values from per-sample ones (templates: the min over each template's samples)."""
        bench = self.benchmark(dataset)
        v = np.asarray(values)
        if v.shape[0] != len(bench):
            raise ValueError(f"{dataset}: expected {len(bench)} per-sample values, got {v.shape[0]}")
        if bench.level == "template":
            from .fr import template_min

            _, v = template_min(v, bench.samples["template_id"].to_numpy())
        return v

    def pair(self, dataset: str, values: NDArray[Any]) -> NDArray[np.float32]:
        """Pair quality (min, float32) of each comparison from per-sample values, (N,) or (N, K).

        Template benchmarks first take the min over each template's samples. Materialises one
        value per comparison: for large sets use :meth:`order_of` / :meth:`edc`.
        """
        v = np.asarray(self._side_values(dataset, np.asarray(values, dtype=np.float32)))
        comp = self.comparison_set(dataset)
        if isinstance(comp, AllPairs):
            a, b = self._materialised_index(dataset)
        else:
            a, b = comp.a, comp.b
        return np.minimum(v[a], v[b])

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
        """Per-side features (float32) and the similarity scale: templates: media-mean, sum,
        L2-normalise, scale 1; samples: flip-concatenated embeddings, scale 1/2 (cosine)."""
        bench = self.benchmark(dataset)
        emb = self.embeddings(dataset, fr)
        if bench.level == "template":
            from .fr import template_embeddings

            _, feats = template_embeddings(emb, bench.samples["template_id"].to_numpy(), bench.samples["media_id"].to_numpy())
            release_pages(emb)  # read once: 1.9 GB per FR model at IJB-C size need not stay resident
            return feats.astype(np.float32, copy=False), 1.0
        return emb, 0.5  # flip-concatenated halves of norm 1: |e| = sqrt(2)

    def scores(self, dataset: str, fr: str) -> Any:
        """The comparison scores of ``dataset`` under ``fr`` (computed once; see :mod:`exfiqa.comparisons`)."""
        key = ("scores", dataset, fr)
        if key not in self._memo():
            comp = self.comparison_set(dataset)
            feats, scale = self.features(dataset, fr)
            if isinstance(comp, AllPairs):
                k = int(max(self.config.fmr_targets) * comp.n_nm)
                self._memo()[key] = comp.scores(feats, scale, initial_m=max(4 * (k + 1), 4096))
            else:
                self._memo()[key] = comp.scores(feats, scale)
        return self._memo()[key]

    def similarity(self, dataset: str, fr: str) -> NDArray[np.float32]:
        """Similarity (float32) of every comparison, in comparison order (all-vs-all: small sets only)."""
        comp = self.comparison_set(dataset)
        if isinstance(comp, AllPairs):
            self._materialised_index(dataset)  # the same size limit as the comparison table
            feats, scale = self.features(dataset, fr)
            return comp.similarity(feats, scale)
        return self.scores(dataset, fr).sim

    def ordering(self, dataset: str, quality: str, method: str) -> Any:
        """The stable pair-quality order of ``method`` (computed once, reused by every FR model
        and FMR target)."""
        key = ("order", dataset, quality, method)
        if key not in self._memo():
            self._memo()[key] = self.order_of(dataset, self.sample_scores(dataset, quality, method))
        return self._memo()[key]

    def order_of(self, dataset: str, values: NDArray[Any]) -> Any:
        """The stable pair-quality order of any per-sample quality (not kept: e.g. a fusion candidate)."""
        values = np.asarray(values, dtype=np.float32)
        return self.comparison_set(dataset).order(self._side_values(dataset, values))

    def edc(
        self, dataset: str, fr: str, quality: str, method: str,
        fmr_targets: Sequence[float] | None = None, convention: str | None = None,
    ) -> dict[float, Any]:
        """EDCs of a named method at each FMR target (config defaults), keyed by target."""
        from .metrics import edc_curves

        targets = tuple(self.config.fmr_targets if fmr_targets is None else fmr_targets)
        order = self.ordering(dataset, quality, method)
        return edc_curves(self.scores(dataset, fr), order, targets, convention or self.config.convention)

    def edc_of(
        self, dataset: str, fr: str, values: NDArray[Any],
        fmr_targets: Sequence[float] | None = None, convention: str | None = None,
    ) -> dict[float, Any]:
        """EDCs of any per-sample quality values (higher = better), paired by min."""
        from .metrics import edc_curves

        targets = tuple(self.config.fmr_targets if fmr_targets is None else fmr_targets)
        return edc_curves(self.scores(dataset, fr), self.order_of(dataset, values), targets, convention or self.config.convention)

    def pauc_of(
        self, dataset: str, fr: str, values: NDArray[Any], fmr_targets: Sequence[float] | None = None,
    ) -> dict[float, NDArray[np.float64]]:
        """pAUC (raw area, the config's convention and limit) of (N,) or (N, K) per-sample values:
        ``{fmr: (K,) areas}``, one column's order at a time (bounded path)."""
        from .metrics import pauc

        targets = tuple(self.config.fmr_targets if fmr_targets is None else fmr_targets)
        values = np.asarray(values)
        cols = values.reshape(len(values), -1)
        out = {float(f): np.empty(cols.shape[1]) for f in targets}
        for j in range(cols.shape[1]):
            curves = self.edc_of(dataset, fr, cols[:, j], targets)
            for f in out:
                out[f][j] = pauc(curves[f], self.config.discard_limit)
        return out

    def _curves(self, dataset: str, fr: str, quality: str, methods: Sequence[str] | None, convention: str | None) -> dict[str, Any]:
        from .metrics import _fmr_targets

        ms = list(methods) if methods is not None else self.methods(quality, dataset)
        targets = _fmr_targets(tuple(self.config.fmr_targets))
        out = {}
        for m in ms:
            try:
                out[m] = self.edc(dataset, fr, quality, m, targets, convention)
            except ValueError as exc:
                raise ValueError(f"{dataset}, {fr}, {quality}, {m!r}: {exc}") from None
        return out

    def pauc_frame(
        self, dataset: str, fr: str, quality: str, methods: Sequence[str] | None = None,
        scale: float = 1.0, convention: str | None = None,
    ) -> pd.DataFrame:
        """Tidy pAUC rows (the columns of :func:`exfiqa.metrics.pauc_frame`) of each method x FMR
        target, through the bounded path; ``dataset`` is written as its label."""
        from .metrics import pauc, pauc_meta

        meta = pauc_meta(convention or self.config.convention, self.config.discard_limit, False, scale)
        rows = []
        for m, by_fmr in self._curves(dataset, fr, quality, methods, meta["convention"]).items():
            for t, c in by_fmr.items():
                rows.append({
                    "method": m, "dataset": self.config.datasets[dataset].label, "fr_model": fr, "fmr": t,
                    "convention": meta["convention"], "limit": meta["limit"], "subtract_best": False,
                    "scale": meta["scale"], "pauc": pauc(c, meta["limit"]) * meta["scale"],
                })
        return pd.DataFrame(rows)

    def edc_frame(
        self, dataset: str, fr: str, quality: str, methods: Sequence[str] | None = None, convention: str | None = None,
    ) -> pd.DataFrame:
        """Tidy EDC points (the columns of :func:`exfiqa.metrics.edc_frame`), bounded path."""
        conv = convention or self.config.convention
        frames = []
        for m, by_fmr in self._curves(dataset, fr, quality, methods, conv).items():
            for t, c in by_fmr.items():
                n = c.discard_fraction.shape[0]
                frames.append(pd.DataFrame({
                    "method": [m] * n, "dataset": [self.config.datasets[dataset].label] * n, "fr_model": [fr] * n,
                    "fmr": np.full(n, t), "convention": [c.convention.value] * n,
                    "discard_fraction": c.discard_fraction, "fnmr": c.fnmr,
                }))
        return pd.concat(frames, ignore_index=True)

    def table(self, dataset: str, fr: str, quality: str) -> pd.DataFrame:
        """Comparison table: ``a, b, mated, similarity`` and the pair quality of every method
        (float32; one column per method, so for small sets: the analyses use the bounded path)."""
        comp = self.benchmark(dataset).comparisons
        q = self.sample_quality(dataset, quality)
        out = pd.DataFrame({
            "a": comp["a"].to_numpy(), "b": comp["b"].to_numpy(), "mated": comp["mated"].to_numpy(bool),
            "similarity": self.similarity(dataset, fr),
        })
        pairs = pd.DataFrame({m: self.pair(dataset, q[m].to_numpy()) for m in q.columns})
        return pd.concat([out, pairs], axis=1)

    def methods(self, quality: str, dataset: str | None = None) -> list[str]:
        """Method columns a :meth:`table` carries, in plotting order (external methods: those
        with scores for ``dataset``, or all when no dataset is given)."""
        depth = self.quality_model(quality).depth
        extra = list(self.config.baselines)
        extra += [m for m, per_ds in self.config.external_methods.items() if dataset is None or dataset in per_ds]
        return exit_names(depth) + ["EX-FIQA-F", "EX-FIQA-FW"] + extra
