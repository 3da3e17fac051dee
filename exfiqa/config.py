"""Run configuration: which datasets, FR models and quality models a paper run uses, and where.

A config is a YAML file (``configs/demo.yaml``, ``configs/paper.yaml``). Relative paths inside the
``datasets``, ``fr_models``, ``quality_models`` and ``external_methods`` entries are resolved
against ``data_root``; ``data_root``, ``cache_dir`` and ``results_dir`` themselves against the
folder the command runs in. Unknown keys are errors, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .datasets import BENCHMARK_KINDS
from .metrics import Convention

__all__ = ["Config", "ConfigError", "DatasetSpec", "ModelSpec", "load_config"]

_PATH_KEYS = {"path", "root", "pairs_file", "checkpoint"}
_BASELINE_FR = {"magface_norm": "magface", "serfiq": "arcface"}  # baseline -> FR model it runs on


class ConfigError(ValueError):
    """A configuration or notebook parameter that cannot be used; the message names it."""


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: its reader kind and the reader's arguments (paths already resolved)."""

    name: str
    kind: str
    args: dict[str, Any]
    label: str

    def describe(self) -> str:
        return f"{self.label} ({self.kind}: {', '.join(f'{k}={v}' for k, v in self.args.items())})"


@dataclass(frozen=True)
class ModelSpec:
    """An FR or quality model: a checkpoint and loader arguments (e.g. ``arch``, ``num_heads``)."""

    name: str
    checkpoint: Path
    args: dict[str, Any]
    label: str


@dataclass(frozen=True)
class Config:
    """A whole run. Notebooks narrow it with :meth:`select` and override scalars with :meth:`with_`."""

    run_name: str
    data_root: Path
    cache_dir: Path
    results_dir: Path
    datasets: dict[str, DatasetSpec]
    fr_models: dict[str, ModelSpec]
    quality_models: dict[str, ModelSpec]
    external_methods: dict[str, dict[str, Path]] = field(default_factory=dict)
    baselines: tuple[str, ...] = ()
    support_fr_models: dict[str, ModelSpec] = field(default_factory=dict)  # all FR models, for baselines
    fmr_targets: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    discard_limit: float = 0.3
    convention: str = "recompute"
    device: str = "cpu"
    batch_size: int = 64
    seed: int = 0
    demo: str = ""  # "" (real data), "default" or "tiny": which demo world data_root holds
    headline: dict[str, str] = field(default_factory=dict)
    source: Path | None = None

    def __post_init__(self) -> None:
        if not self.fmr_targets or not all(0 < f < 1 for f in self.fmr_targets):
            raise ConfigError(f"fmr_targets must be values in (0, 1), got {list(self.fmr_targets)}")
        if not 0 < self.discard_limit <= 1:
            raise ConfigError(f"discard_limit must lie in (0, 1], got {self.discard_limit}")
        valid = [c.value for c in Convention]
        if self.convention not in valid:
            raise ConfigError(f"convention must be one of {valid}, got {self.convention!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def select(
        self,
        datasets: list[str] | None = None,
        fr_models: list[str] | None = None,
        quality_models: list[str] | None = None,
    ) -> Config:
        """Keep only the named entries (empty/None keeps all); unknown names are errors."""

        def pick(kind: str, table: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
            if not names:
                return table
            unknown = [n for n in names if n not in table]
            if unknown:
                raise ConfigError(f"unknown {kind} {unknown}; this config has {sorted(table)}")
            return {n: table[n] for n in names}

        return replace(
            self,
            datasets=pick("datasets", self.datasets, datasets),
            fr_models=pick("fr_models", self.fr_models, fr_models),
            quality_models=pick("quality_models", self.quality_models, quality_models),
        )

    def with_(self, **overrides: Any) -> Config:
        """Override scalar settings (None values are ignored), validating them again."""
        valid = {f.name for f in fields(self)}
        bad = [k for k in overrides if k not in valid]
        if bad:
            raise ConfigError(f"unknown setting(s) {bad}")
        clean = {k: v for k, v in overrides.items() if v is not None and v != "" and v != []}
        if "fmr_targets" in clean:
            clean["fmr_targets"] = tuple(float(f) for f in clean["fmr_targets"])
        for key in ("results_dir", "cache_dir"):
            if key in clean:
                clean[key] = Path(clean[key])
        return replace(self, **clean)

    def check_paths(self) -> None:
        """Raise a :class:`ConfigError` naming the first dataset or checkpoint path that is missing."""
        for ds in self.datasets.values():
            for key, value in ds.args.items():
                if key in _PATH_KEYS and not Path(value).exists():
                    raise ConfigError(f"dataset {ds.name!r}: {key} {value} does not exist{self._hint()}")
        needed = {_BASELINE_FR[b] for b in self.baselines if b in _BASELINE_FR}
        support = {k: v for k, v in self.support_fr_models.items() if k in needed}
        for kind, table in (("fr_models", {**support, **self.fr_models}), ("quality_models", self.quality_models)):
            for m in table.values():
                if not m.checkpoint.is_file():
                    raise ConfigError(f"{kind}.{m.name}: checkpoint {m.checkpoint} does not exist{self._hint()}")
        for method, per_ds in self.external_methods.items():
            for ds, path in per_ds.items():
                if not path.is_file():
                    raise ConfigError(f"external_methods.{method}.{ds}: {path} does not exist")

    def _hint(self) -> str:
        if self.demo:
            return " (build the demo world with `make demo`)"
        return " (see data/README.md for where to get it and how to lay it out)"


def _resolve(base: Path, value: Any) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else base / p


def _only(where: str, entry: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(entry) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _datasets(raw: dict[str, Any], root: Path, src: str) -> dict[str, DatasetSpec]:
    out = {}
    for name, entry in (raw or {}).items():
        if not isinstance(entry, dict) or "kind" not in entry:
            raise ConfigError(f"{src}: datasets.{name} needs a 'kind' ({', '.join(BENCHMARK_KINDS)})")
        kind = entry["kind"]
        if kind not in BENCHMARK_KINDS:
            raise ConfigError(f"{src}: datasets.{name}.kind {kind!r} is not one of {list(BENCHMARK_KINDS)}")
        args = {k: (_resolve(root, v) if k in _PATH_KEYS else v) for k, v in entry.items() if k not in ("kind", "label")}
        out[name] = DatasetSpec(name, kind, {"name": name, **args}, entry.get("label", name))
    return out


def _models(raw: dict[str, Any], root: Path, src: str, kind: str) -> dict[str, ModelSpec]:
    out = {}
    for name, entry in (raw or {}).items():
        if not isinstance(entry, dict) or "checkpoint" not in entry:
            raise ConfigError(f"{src}: {kind}.{name} needs a 'checkpoint'")
        args = {k: v for k, v in entry.items() if k not in ("checkpoint", "label")}
        out[name] = ModelSpec(name, _resolve(root, entry["checkpoint"]), args, entry.get("label", name))
    return out


_TOP_KEYS = {
    "run_name", "data_root", "cache_dir", "results_dir", "datasets", "fr_models", "quality_models",
    "external_methods", "baselines", "fmr_targets", "discard_limit", "convention", "device",
    "batch_size", "seed", "demo", "headline",
}


def _demo_kind(value: Any, src: str) -> str:
    if value in (False, None, ""):
        return ""
    if value is True:
        return "default"
    if value in ("default", "tiny"):
        return str(value)
    raise ConfigError(f"{src}: demo must be false, true, 'default' or 'tiny', got {value!r}")


def load_config(
    path: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> Config:
    """Read and validate a run config. Errors name the file and the offending key.

    ``data_root`` (if given and non-empty) replaces the file's ``data_root`` before the dataset and
    checkpoint paths are resolved against it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    src = str(path)
    _only(src, raw, _TOP_KEYS)
    base = Path(cwd) if cwd else Path.cwd()
    root = _resolve(base, data_root or raw.get("data_root", "data"))
    external = {
        m: {ds: _resolve(root, p) for ds, p in per_ds.items()} for m, per_ds in (raw.get("external_methods") or {}).items()
    }
    try:
        return Config(
            run_name=str(raw.get("run_name", path.stem)),
            data_root=root,
            cache_dir=_resolve(base, raw.get("cache_dir", root / "cache")),
            results_dir=_resolve(base, raw.get("results_dir", "results")),
            datasets=_datasets(raw.get("datasets"), root, src),
            fr_models=(fr := _models(raw.get("fr_models"), root, src, "fr_models")),
            support_fr_models=dict(fr),
            quality_models=_models(raw.get("quality_models"), root, src, "quality_models"),
            external_methods=external,
            baselines=tuple(raw.get("baselines", ())),
            fmr_targets=tuple(float(f) for f in raw.get("fmr_targets", (1e-2, 1e-3, 1e-4))),
            discard_limit=float(raw.get("discard_limit", 0.3)),
            convention=str(raw.get("convention", "recompute")),
            device=str(raw.get("device", "cpu")),
            batch_size=int(raw.get("batch_size", 64)),
            seed=int(raw.get("seed", 0)),
            demo=_demo_kind(raw.get("demo", False), src),
            headline=dict(raw.get("headline") or {}),
            source=path,
        )
    except ConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None
