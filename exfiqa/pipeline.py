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

The cache key of each entry is the content of what it depends on (benchmark files, checkpoint
bytes, parameters, the computation's version), never file times; entries are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from .config import _BASELINE_FR, Config, ConfigError
from .datasets import Benchmark, load_benchmark
from .fusion import ex_fiqa_f, ex_fiqa_fw
from .io import atomic_path, file_digest

__all__ = ["Cache", "Study", "exit_names", "read_method_csv"]

CACHE_VERSION = "1"


def exit_names(depth: int) -> list[str]:
    """Method names of the exits, ``["Exit 1", ..., "Exit D"]``."""
    return [f"Exit {k}" for k in range(1, depth + 1)]


class Cache:
    """A folder of ``.npy`` arrays keyed by a JSON-able description of their inputs."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: dict[str, Any]) -> Path:
        blob = json.dumps({"v": CACHE_VERSION, "kind": kind, **key}, sort_keys=True, default=str)
        return self.root / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.npy"

    def get(self, kind: str, key: dict[str, Any], compute: Callable[[], NDArray[Any]]) -> NDArray[Any]:
        """Load the entry for ``key``, or compute, store (atomically) and return it."""
        target = self.path(kind, key)
        if target.is_file():
            return np.load(target, allow_pickle=False)
        value = np.asarray(compute())
        with atomic_path(target, overwrite=True) as tmp, open(tmp, "wb") as fh:
            np.save(fh, value, allow_pickle=False)
        return value


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
    _digests: dict[Path, str] = field(default_factory=dict, repr=False)
    _models: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.config.check_paths()
        self.cache = Cache(self.config.cache_dir)

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
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return self._digests[path]

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

    def exit_scores(self, dataset: str, quality: str) -> NDArray[np.float32]:
        """(N, depth) quality scores of every exit for every sample of ``dataset``."""
        from .inference import exit_scores

        spec = self._spec("quality_models", quality)
        key = {"data": self.benchmark(dataset).fingerprint(), "ckpt": self._digest(spec.checkpoint), "args": spec.args}
        return self.cache.get(
            "exits",
            key,
            lambda: exit_scores(
                self.quality_model(quality), self._batches(dataset), total=len(self.benchmark(dataset)),
                device=self.config.device, progress=self.progress, desc=f"{quality} on {dataset}",
            ),
        )

    def embeddings(self, dataset: str, fr: str) -> NDArray[np.float32]:
        """(N, 2E) flip-concatenated embeddings of every sample."""
        spec = self._spec("fr_models", fr)
        key = {"data": self.benchmark(dataset).fingerprint(), "ckpt": self._digest(spec.checkpoint), "args": spec.args}

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

        return self.cache.get("emb", key, compute)

    def baseline_scores(self, dataset: str, method: str) -> NDArray[np.float64]:
        """Per-sample scores of a built-in baseline (see :mod:`exfiqa.baselines`)."""
        from .baselines import BASELINES, serfiq_quality, sharpness
        from .fr import magface_quality

        if method not in BASELINES:
            raise ConfigError(f"unknown baseline {method!r}; known: {list(BASELINES)}")
        bench = self.benchmark(dataset)
        fr = _BASELINE_FR.get(method)
        if fr is not None and fr not in self.config.support_fr_models:
            raise ConfigError(f"baseline {method!r} needs fr_models.{fr} in the config file")
        key: dict[str, Any] = {"data": bench.fingerprint(), "seed": self.config.seed}
        if fr is not None:
            key["ckpt"] = self._digest(self.config.support_fr_models[fr].checkpoint)

        def compute() -> NDArray[np.float64]:
            if method == "sharpness":
                return np.concatenate([sharpness(b) for b in self._batches(dataset)])
            model = self.fr_model(fr)
            if method == "magface_norm":
                return magface_quality(model, self._batches(dataset), self.config.batch_size)
            return serfiq_quality(model, self._batches(dataset), seed=self.config.seed)

        return self.cache.get(f"base-{method}", key, compute)

    def sample_quality(self, dataset: str, quality: str) -> pd.DataFrame:
        """Per-sample qualities: ``Exit 1..D``, ``EX-FIQA-F``, ``EX-FIQA-FW``, baselines, external."""
        scores = self.exit_scores(dataset, quality).astype(np.float64)
        frame = pd.DataFrame(scores, columns=exit_names(scores.shape[1]))
        frame["EX-FIQA-F"] = ex_fiqa_f(scores)
        frame["EX-FIQA-FW"] = ex_fiqa_fw(scores)
        for method in self.config.baselines:
            frame[method] = self.baseline_scores(dataset, method)
        for method, per_ds in self.config.external_methods.items():
            if dataset in per_ds:
                frame[method] = read_method_csv(per_ds[dataset], self.benchmark(dataset), method)
        return frame

    # ------------------------------------------------------------------ comparisons

    def pair(self, dataset: str, values: NDArray[Any]) -> NDArray[np.float64]:
        """Pair quality (min) of each comparison from per-sample values, (N,) or (N, K).

        Template benchmarks first take the min over each template's samples.
        """
        bench = self.benchmark(dataset)
        v = np.asarray(values, dtype=np.float64)
        if v.shape[0] != len(bench):
            raise ValueError(f"{dataset}: expected {len(bench)} per-sample values, got {v.shape[0]}")
        a, b = self._comparison_index(dataset)
        if bench.level == "template":
            from .fr import template_min

            _, v = template_min(v, bench.samples["template_id"].to_numpy())
        return np.minimum(v[a], v[b])

    def _comparison_index(self, dataset: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Row indices of each comparison's two sides (samples, or sorted unique templates)."""
        bench = self.benchmark(dataset)
        a = bench.comparisons["a"].to_numpy()
        b = bench.comparisons["b"].to_numpy()
        if bench.level == "sample":
            return a, b
        tids = np.unique(bench.samples["template_id"].to_numpy())
        ia, ib = np.searchsorted(tids, a), np.searchsorted(tids, b)
        for side, ids, idx in (("a", a, ia), ("b", b, ib)):
            bad = (idx >= len(tids)) | (tids[np.minimum(idx, len(tids) - 1)] != ids)
            if bad.any():
                raise ValueError(f"{dataset}: comparison side {side} names templates without samples, e.g. {ids[bad][:3]}")
        return ia, ib

    def similarity(self, dataset: str, fr: str) -> NDArray[np.float64]:
        """Cosine similarity of every comparison (templates: media-mean, sum, L2-normalise)."""
        bench = self.benchmark(dataset)
        emb = self.embeddings(dataset, fr).astype(np.float64)
        a, b = self._comparison_index(dataset)
        if bench.level == "template":
            from .fr import template_embeddings

            _, emb = template_embeddings(emb, bench.samples["template_id"].to_numpy(), bench.samples["media_id"].to_numpy())
            return np.einsum("ij,ij->i", emb[a], emb[b])
        return np.einsum("ij,ij->i", emb[a], emb[b]) / 2.0  # flip-concatenated halves: norm sqrt(2)

    def table(self, dataset: str, fr: str, quality: str) -> pd.DataFrame:
        """Comparison table: ``a, b, mated, similarity`` and the pair quality of every method."""
        comp = self.benchmark(dataset).comparisons
        q = self.sample_quality(dataset, quality)
        out = pd.DataFrame({
            "a": comp["a"].to_numpy(), "b": comp["b"].to_numpy(), "mated": comp["mated"].to_numpy(bool),
            "similarity": self.similarity(dataset, fr),
        })
        return pd.concat([out, pd.DataFrame(self.pair(dataset, q.to_numpy()), columns=q.columns)], axis=1)

    def methods(self, quality: str) -> list[str]:
        """Method columns a :meth:`table` carries, in plotting order."""
        depth = self.quality_model(quality).depth
        extra = list(self.config.baselines) + list(self.config.external_methods)
        return exit_names(depth) + ["EX-FIQA-F", "EX-FIQA-FW"] + extra
