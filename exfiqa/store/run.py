"""The run description the two stages share: a config's benchmarks, models and array keys.

:class:`Run` is what extraction (:mod:`exfiqa.extract`) writes from and what the evaluation
(:class:`exfiqa.study.Study`) reads with: the validated :class:`~exfiqa.config.Config`, its
benchmarks (each opened once), the input digests (:class:`~exfiqa.store.digests.DigestIndex`),
the per-sample layout (:class:`~exfiqa.store.arrays.ArrayStore`) and, for every array
``(dataset, kind, name)``, what its values depend on (:meth:`Run.array_inputs`). It loads no model
(no torch): the extraction loads the models it runs (:mod:`exfiqa.extract.models`); what the
evaluation needs of a model (its depth, its variant) comes from the arrays and the config.
"""

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
    BASELINES,
    ArrayError,
    ArrayStore,
    arrays_root,
    external_array_files,
    jsonable,
    missing_array_hint,
    wanted_arrays,
)
from exfiqa.store.digests import INDEX_NAME, DigestIndex, index_key

__all__ = ["BASELINES", "BASELINE_FR", "FAMILY_OPTIONS", "Run", "input_digests", "input_files"]

#: The settings of the family arrays (part of their key): :meth:`exfiqa.models.vitfiqa.ViTFIQA.forward_exits`.
FAMILY_OPTIONS = {"attn": {"attn_tokens": "all"}, "vitnt": {"vitnt_blocks": "all"}}


@dataclass
class Run:
    """A config's inputs, models (as config entries) and per-sample array keys; opened lazily.

    ``persistent_digests=False`` keeps input digests in memory (the extraction's other ranks);
    ``progress``: the hashing bars. Nothing is checked or read on construction.
    """

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
        """Whether the checkpoint of ``<kind>.<name>`` (``quality_models``/``fr_models``) is on disk
        (evaluation does not need it; running the model, e.g. for attention maps, does)."""
        spec = (self.config.support_fr_models.get(name) if kind == "fr_models" else None) or self.spec(kind, name)
        return bool(spec.checkpoint.is_file())

    def variant_label(self, quality: str) -> str | None:
        """``"T"``/``"C"`` of quality model ``quality`` from its config label or name (``T``/``C``,
        or ending in ``(T)``/``(C)``), None when they do not say (no checkpoint is read)."""
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
        """What exfiqa's ``kind`` array of model or method ``name`` on ``dataset`` depends on, code
        aside, as it reads back from JSON (:func:`~exfiqa.store.arrays.jsonable`).

        ``data``: the benchmark's content fingerprint; ``checkpoint``: the model file's SHA-256;
        ``args``: its loader arguments; ``precision``: the extraction's arithmetic (arrays
        computed by a model); ``onnxruntime``: its version, for an ONNX model's arrays. SER-FIQ
        adds ``seed`` (its dropout draws; one generator per sample, so not the batching). A
        benchmark read by a registered reader adds ``reader``, the SHA-256 of the reader's source
        file (:func:`exfiqa.readers.reader_source`). The code's digest is
        :func:`exfiqa.store.arrays.code_version`.

        ``evaluation=True`` (what the evaluation compares with a manifest): without ``data`` (no
        image is read or stat-ed) and without ``checkpoint`` where the checkpoint file is absent;
        the manifest's values of those are taken as they are.
        """
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
        out: dict[str, Any] = jsonable(key)
        return out

    def missing(self, dataset: str, kind: str, name: str, reason: str) -> ArrayError:
        """The error for an array the evaluation cannot use (``reason``: ``"missing"`` or why it is
        not this run's): the file, what the layout holds instead and the command that makes it."""
        if reason == "missing":
            reason = f"missing: {missing_array_hint(self.arrays.root, dataset, kind, name)}"
        src = self.config.source or "<config>"
        return ArrayError(
            f"{self.arrays.path(dataset, kind, name)}: {reason}; the notebooks read the extracted "
            f"arrays: run `exfiqa extract --config {src}` first (make paper does), or write it "
            f"in the documented layout (exfiqa.store.arrays)"
        )

    def produced_width(self, dataset: str, quality: str) -> tuple[int, str] | None:
        """Columns of quality model ``quality``'s exits/attn arrays on ``dataset`` that exfiqa's
        extraction wrote (the model's depth, from a manifest), and which; None when neither is
        exfiqa's (no array is read; no checkpoint either)."""
        for kind in ("exits", "attn"):
            npy = self.arrays.path(dataset, kind, quality)
            m = self.arrays.manifest_of(npy)
            if m is not None and m.get("producer") == "exfiqa" and len(m.get("shape", [])) == 2:
                return int(m["shape"][1]), f"its {kind} array extracted by exfiqa, {Path(npy).name}"
        return None


# ------------------------------------------------------------------------------ a run's inputs


def input_files(cfg: Config, benchmarks: Mapping[str, Benchmark] | None = None) -> list[Path]:
    """Every file a run of ``cfg`` reads (absolute paths, sorted, without repeats).

    The checkpoints of its quality models, FR models and the FR models its baselines run on; every
    file of every benchmark (each image of a folder benchmark, the ``.bin`` files, pairs and
    ``meta/`` files), including a benchmark an attention sample is taken from; the external
    methods' CSVs; the attention-figure images given as paths; and the per-sample arrays (``.npy``
    and manifest) an external producer placed in the run's layout (see :mod:`exfiqa.store.arrays`).
    ``benchmarks``: already opened benchmarks by dataset name (e.g. a Study's), not read again.
    """
    cfg.check_paths()
    opened = dict(benchmarks or {})
    specs = dict(cfg.datasets)
    for sample in getattr(cfg, "attention_samples", {}).values():
        if sample.dataset is not None:
            specs.setdefault(sample.dataset.name, sample.dataset)
    files: set[str] = {str(m.checkpoint) for m in (*cfg.quality_models.values(), *cfg.fr_models.values())}
    files |= {str(cfg.support_fr_models[BASELINE_FR[b]].checkpoint) for b in cfg.baselines if b in BASELINE_FR}
    for name, spec in specs.items():
        bench = opened.get(name) or load_benchmark(spec.kind, **spec.args)
        files |= {str(f) for _, f in bench._files}
    files |= {str(p) for per_ds in cfg.external_methods.values() for ds, p in per_ds.items() if ds in cfg.datasets}
    files |= {str(s.path) for s in getattr(cfg, "attention_samples", {}).values() if s.path is not None}
    files |= {str(p) for p in external_array_files(cfg)}
    return [Path(f) for f in sorted({index_key(f) for f in files})]


def input_digests(
    cfg: Config, benchmarks: Mapping[str, Benchmark] | None = None, progress: bool = True,
) -> dict[str, str]:
    """``{absolute path: SHA-256}`` of every file a run of ``cfg`` reads (:func:`input_files`).

    Uses the run's persistent index (``<cache_dir>/digests.sqlite``, shared with
    :class:`Run`), so a second call on an unchanged tree only ``stat`` s the
    files. ``benchmarks``: already opened benchmarks by dataset name, not read again;
    ``progress``: the hashing bar. (The run card cites less: :func:`exfiqa.store.runcard.evaluation_inputs`.)
    """
    files = input_files(cfg, benchmarks)
    index = DigestIndex(Path(cfg.cache_dir) / INDEX_NAME, progress=progress)
    return dict(zip(map(str, files), index.digests(files, desc="hashing inputs"), strict=True))
