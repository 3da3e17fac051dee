"""What extraction and evaluation share: a config's benchmarks, input digests, array keys (no torch)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from exfiqa.config import Config, ConfigError, ModelSpec
from exfiqa.io import file_digest
from exfiqa.readers import Benchmark, load_benchmark, reader_source
from exfiqa.store.arrays import (
    BASELINE_FR,
    ArrayError,
    ArrayStore,
    arrays_root,
    external_array_files,
    jsonable,
    missing_array_hint,
    wanted_arrays,
)
from exfiqa.store.digests import INDEX_NAME, DigestIndex, index_key

__all__ = ["FAMILY_OPTIONS", "Run", "input_digests", "input_files"]

#: The settings of the family arrays (part of their key): :meth:`exfiqa.models.vitfiqa.ViTFIQA.forward_exits`.
FAMILY_OPTIONS = {"attn": {"attn_tokens": "all"}, "vitnt": {"vitnt_blocks": "all"}}


@dataclass
class Run:
    """A config's inputs, models and array keys, opened lazily (``persistent_digests=False``: in memory)."""

    config: Config
    progress: bool = True
    persistent_digests: bool = True
    _benchmarks: dict[str, Benchmark] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        index = self.config.cache_dir / INDEX_NAME if self.persistent_digests else None
        self.digests = DigestIndex(index, progress=self.progress)
        self.arrays = ArrayStore(arrays_root(self.config), self.digests)

    # ------------------------------------------------------------------ inputs

    def benchmark(self, dataset: str) -> Benchmark:
        """The named benchmark, opened once."""
        if dataset not in self._benchmarks:
            spec = self.spec("datasets", dataset)
            self._benchmarks[dataset] = load_benchmark(spec.kind, **spec.args)
        return self._benchmarks[dataset]

    def spec(self, kind: str, name: str) -> Any:
        """The config entry ``<kind>.<name>`` (``datasets``, ``quality_models``, ``fr_models``)."""
        table = getattr(self.config, kind)
        if name not in table:
            raise ConfigError(f"unknown {kind[:-1]} {name!r}; known: {sorted(table)}")
        return table[name]

    def has_checkpoint(self, kind: str, name: str) -> bool:
        """Whether the checkpoint of ``<kind>.<name>`` is on disk."""
        spec = (self.config.support_fr_models.get(name) if kind == "fr_models" else None) or self.spec(kind, name)
        return bool(spec.checkpoint.is_file())

    def variant_label(self, quality: str) -> str | None:
        """``"T"``/``"C"`` from the label or name of quality model ``quality`` (or ``(T)``/``(C)`` at its end), else None."""
        spec = self.spec("quality_models", quality)
        for text in (str(spec.label).strip(), str(spec.name).strip()):
            if text in ("T", "C"):
                return text
            if text.endswith(("(T)", "(C)")):
                return text[-2]
        return None

    # ------------------------------------------------------------------ per-sample arrays

    def wanted(self, dataset: str) -> list[tuple[str, str]]:
        """``(kind, name)`` of every array the run reads on ``dataset`` (:func:`~exfiqa.store.arrays.wanted_arrays`)."""
        return wanted_arrays(self.config, self.benchmark(dataset).level)

    def array_inputs(self, dataset: str, kind: str, name: str, evaluation: bool = False) -> dict[str, Any]:
        """What the ``kind`` array of ``name`` on ``dataset`` depends on, code aside, as JSON reads it back;
        ``evaluation=True``: without ``data`` and, where the file is absent, ``checkpoint``."""
        key: dict[str, Any] = {} if evaluation else {"data": self.benchmark(dataset).fingerprint(self.digests)}
        reader = reader_source(self.config.datasets[dataset].kind)
        if reader is not None:
            key.update(reader=file_digest(reader))
        spec: ModelSpec | None
        if kind == "baseline":
            fr = BASELINE_FR.get(name)
            spec = None if fr is None else self.config.support_fr_models[fr]
            if name == "serfiq":
                key.update(seed=self.config.seed)
        else:
            spec = self.spec("fr_models" if kind in ("emb", "norms") else "quality_models", name)
            if kind in FAMILY_OPTIONS:
                key.update(method=FAMILY_OPTIONS[kind])
        if spec is not None:
            key.update(args=spec.args, precision=self.config.precision)
            if str(spec.checkpoint).lower().endswith(".onnx"):  # the runtime computes an ONNX model's values
                try:
                    key.update(onnxruntime=metadata.version("onnxruntime"))
                except metadata.PackageNotFoundError:
                    key.update(onnxruntime="absent")
            if not evaluation or spec.checkpoint.is_file():
                key.update(checkpoint=self.digests.digest(spec.checkpoint))
        return dict(jsonable(key))

    def missing(self, dataset: str, kind: str, name: str, reason: str) -> ArrayError:
        """The error for an array the evaluation cannot use (``reason``: ``"missing"`` or why not)."""
        if reason == "missing":
            reason = f"missing: {missing_array_hint(self.arrays.root, dataset, kind, name)}"
        src = self.config.source or "<config>"
        return ArrayError(
            f"{self.arrays.path(dataset, kind, name)}: {reason}; the notebooks read the extracted "
            f"arrays: run `exfiqa extract --config {src}` first (make paper does), or write it "
            f"in the documented layout (exfiqa.store.arrays)"
        )

    def produced_width(self, dataset: str, quality: str) -> tuple[int, str] | None:
        """The width of ``quality``'s exits/attn array that exfiqa extracted (from its manifest) and which, else None."""
        for kind in ("exits", "attn"):
            npy = self.arrays.path(dataset, kind, quality)
            m = self.arrays.manifest_of(npy)
            if m is not None and m.get("producer") == "exfiqa" and len(m.get("shape", [])) == 2:
                return int(m["shape"][1]), f"its {kind} array extracted by exfiqa, {Path(npy).name}"
        return None


# ------------------------------------------------------------------------------ a run's inputs


def input_files(cfg: Config, benchmarks: Mapping[str, Benchmark] | None = None) -> list[Path]:
    """Every file a run of ``cfg`` reads (absolute, sorted, unique); ``benchmarks``: already opened ones."""
    cfg.check_paths()
    opened = dict(benchmarks or {})
    specs = cfg.datasets | {s.dataset.name: s.dataset for s in cfg.attention_samples.values()
                            if s.dataset is not None and s.dataset.name not in cfg.datasets}
    files: set[str] = {str(m.checkpoint) for m in (*cfg.quality_models.values(), *cfg.fr_models.values())}
    files |= {str(cfg.support_fr_models[BASELINE_FR[b]].checkpoint) for b in cfg.baselines if b in BASELINE_FR}
    for name, spec in specs.items():
        bench = opened.get(name) or load_benchmark(spec.kind, **spec.args)
        files |= {str(f) for _, f in bench._files}
    files |= {str(p) for per_ds in cfg.external_methods.values() for ds, p in per_ds.items() if ds in cfg.datasets}
    files |= {str(s.path) for s in cfg.attention_samples.values() if s.path is not None}
    files |= {str(p) for p in external_array_files(cfg)}
    return [Path(f) for f in sorted({index_key(f) for f in files})]


def input_digests(
    cfg: Config, benchmarks: Mapping[str, Benchmark] | None = None, progress: bool = True,
) -> dict[str, str]:
    """``{absolute path: SHA-256}`` of :func:`input_files`, through the persistent digest index."""
    files = input_files(cfg, benchmarks)
    index = DigestIndex(Path(cfg.cache_dir) / INDEX_NAME, progress=progress)
    return dict(zip(map(str, files), index.digests(files, desc="hashing inputs"), strict=True))
