"""Run configuration (a YAML file): datasets, FR and quality models, settings. Entry paths are
resolved against ``data_root``; ``data_root`` and the output folders against the working folder.
Nothing is coerced: a wrong type or unknown key/name raises a :class:`ConfigError` naming file and key.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml

from exfiqa.evaluation import rules
from exfiqa.readers import READERS as _READERS

_PATH_KEYS = {"path", "root", "pairs_file", "checkpoint"}

#: Built-in baselines (exfiqa.models.baselines, not imported: torch) -> the FR model each runs on.
_BASELINES: dict[str, str | None] = {"magface_norm": "magface", "serfiq": "arcface", "sharpness": None}
_BASELINE_FR = {b: fr for b, fr in _BASELINES.items() if fr is not None}  # baseline -> FR model

#: Model loader arguments, hand-listed (exfiqa.models import torch; tests/test_config.py checks them).
_FR_ARCHS = ("iresnet", "magface", "curricularface")  # exfiqa.models.fr.Arch
_FR_TORCH_ARGS = {"arch", "layers", "widths", "embedding_size", "input_size"}
_FR_ARGS = _FR_TORCH_ARGS | {"name", "preprocess", "providers"}
_PREPROCESS_KEYS = ("channel_order", "scale", "mean", "std")
_QUALITY_ARGS = {"num_heads", "img_size"}

_HEADLINE_KEYS = {"dataset", "fr_model", "fmr"}
#: The four sample types of the poster's attention figure (config key ``attention_samples``).
ATTENTION_SAMPLE_TYPES = ("child", "frontal", "occlusion", "pose")


class ConfigError(ValueError):
    """A configuration or notebook parameter that cannot be used; the message names it."""


# ------------------------------------------------------------------------------ value checks

Check = Callable[[str, Any], Any]  # (key, value) -> the clean value, or a ConfigError naming key


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _fail(key: str, expected: str, value: Any) -> NoReturn:
    raise ConfigError(f"{key} must be {expected}, got {_show(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rule(expected: str, ok: Callable[[Any], Any], clean: Callable[[Any], Any] = lambda v: v) -> Check:
    """The check that fails with "<key> must be <expected>, got ..." unless ``ok(value)``."""

    def check(key: str, value: Any) -> Any:
        if not ok(value):
            _fail(key, expected, value)
        return clean(value)

    return check


def _int(minimum: int) -> Check:
    return _rule(f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum, int)


def _choice(options: tuple[str, ...]) -> Check:
    return _rule(f"one of {list(options)}", lambda v: isinstance(v, str) and v in options)


def _switch(off: str, on: str, options: tuple[str, ...], expected: str) -> Check:
    """false/null -> ``off``, true -> ``on``, else one of ``options``."""
    return _rule(expected, lambda v: v is None or isinstance(v, bool) or isinstance(v, str) and v in options,
                 lambda v: off if v is None or v is False else on if v is True else v)


_text = _rule("a non-empty string", lambda v: isinstance(v, str) and v != "")
_flag = _rule("true or false", lambda v: isinstance(v, bool))
_device = _rule("'cpu', 'cuda', 'cuda:N' (N >= 0) or 'auto'",
                lambda v: isinstance(v, str) and re.fullmatch(r"cpu|cuda|cuda:[0-9]+|auto", v))
_run_name = _rule("a non-empty name without '/' (results go to results_dir/run_name)",
                  lambda v: isinstance(v, str) and v != "" and "/" not in v and "\\" not in v)
_discard_limit = _rule("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1, float)
_pauc_scale = _rule("a positive number (pAUC is shown times this; 1000 as on the poster)",
                    lambda v: _is_number(v) and 0 < v < math.inf, float)
_demo_kind = _switch("", "default", ("", "default", "tiny"), "false, true, 'default' or 'tiny'")
#: ``true`` is ``triangle`` (Schlett's ``edc.py``).
_subtract_best = _switch("none", "triangle", ("none", "triangle", "stepwise"),
                         "false, true (= 'triangle'), 'triangle' or 'stepwise'")


def _folder(key: str, value: Any) -> Path:
    return Path(_text(key, os.fspath(value) if isinstance(value, os.PathLike) else value))


def _mapping(key: str, value: Any, expected: str = "a mapping of name: entry") -> dict[str, Any]:
    """A YAML mapping with string keys (None, an empty entry, is an empty mapping)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(key, expected, value)
    for name in value:
        if not isinstance(name, str):
            raise ConfigError(f"{key}: names must be strings, got {_show(name)}")
    return dict(value)


def _only(where: str, entry: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(entry) - allowed, key=str)
    if extra:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _baseline_names(key: str, value: Any) -> tuple[str, ...]:
    """A list of distinct names of built-in baselines."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        _fail(key, f"a list of names from {sorted(_BASELINES)}", value)
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} lists a name twice: {list(value)}")
    unknown = [v for v in value if v not in _BASELINES]
    if unknown:
        raise ConfigError(f"{key}: unknown {unknown}; known: {sorted(_BASELINES)}")
    return tuple(value)


def _fmr_targets(key: str, value: Any) -> tuple[float, ...]:
    expected = "a non-empty list of distinct numbers in (0, 1)"
    if not isinstance(value, (list, tuple)) or not value:
        _fail(key, expected, value)
    for v in value:
        if not _is_number(v) or not 0 < v < 1:
            raise ConfigError(f"{key} must be {expected}; {_show(v)} in {list(value)} is not")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} must be {expected}, got {list(value)}")
    return tuple(float(v) for v in value)


def _headline(value: Any) -> dict[str, Any]:
    raw = _mapping("headline", value, f"a mapping with keys from {sorted(_HEADLINE_KEYS)}")
    _only("headline", raw, _HEADLINE_KEYS)
    for k in ("dataset", "fr_model"):
        if k in raw:
            _text(f"headline.{k}", raw[k])
    if "fmr" in raw and (not _is_number(raw["fmr"]) or not 0 < raw["fmr"] < 1):
        _fail("headline.fmr", "a number in (0, 1)", raw["fmr"])
    return raw


def default_workers() -> int:
    """DataLoader worker processes by default: the CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def max_discard_limit(convention: rules.Convention | str) -> float:
    """The largest pAUC discard limit of a convention's EDC: ``recompute`` 0.95, ``fixed`` 1."""
    if rules.Convention(convention) is rules.Convention.RECOMPUTE:
        return float(rules.RECOMPUTE_DISCARD_FRACTIONS[-1])
    return 1.0


def _compat_rules(raw: dict[str, Any]) -> dict[str, str]:
    """The EDC rules a file's ``compat`` sets; a conflicting rule, or subtract_best under recompute, raises."""
    if _subtract_best("subtract_best", raw.get("subtract_best")) != "none" and raw.get("convention", "recompute") == "recompute":
        raise ConfigError("subtract_best: a theoretical best curve is defined for convention 'fixed' only")
    name = raw.get("compat", "none")
    if name in (None, "none"):
        return {}
    if not isinstance(name, str) or name not in rules.COMPAT:
        _fail("compat", f"one of {['none', *sorted(rules.COMPAT)]}", name)
    for key, value in rules.COMPAT[name].items():
        if key in raw and raw[key] != value:
            raise ConfigError(f"compat: {name} sets {key} {value!r}, but the file also sets {key} {raw[key]!r}")
    return dict(rules.COMPAT[name])


# ------------------------------------------------------------------------------ the config


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: its reader kind and the reader's arguments (paths already resolved)."""

    name: str
    kind: str
    args: dict[str, Any]
    label: str


@dataclass(frozen=True)
class ModelSpec:
    """An FR or quality model: a checkpoint and loader arguments (e.g. ``arch``, ``num_heads``)."""

    name: str
    checkpoint: Path
    args: dict[str, Any]
    label: str


@dataclass(frozen=True)
class AttentionSample:
    """One image of the attention figure: a file (``path``) or sample ``sample`` of ``dataset`` (its spec)."""

    kind: str  # a name from ATTENTION_SAMPLE_TYPES
    path: Path | None = None
    dataset: DatasetSpec | None = None
    sample: int | None = None

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        assert self.dataset is not None
        return f"{self.dataset.name} sample {self.sample}"


def _setting(check: Check, *, default: Any) -> Any:
    """A :class:`Config` field :meth:`Config.with_` may override, checked whenever a config is made."""
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class Config:
    """A whole run; notebooks narrow it with :meth:`select`, override scalars with :meth:`with_`."""

    run_name: str = field(metadata={"check": _run_name})  # default in a file: the file's stem
    data_root: Path
    cache_dir: Path = field(metadata={"check": _folder})  # default in a file: <data_root>/cache
    results_dir: Path = field(metadata={"check": _folder})  # default in a file: results
    datasets: dict[str, DatasetSpec]
    fr_models: dict[str, ModelSpec]
    quality_models: dict[str, ModelSpec]
    external_methods: dict[str, dict[str, Path]] = field(default_factory=dict)
    baselines: tuple[str, ...] = _setting(_baseline_names, default=())
    support_fr_models: dict[str, ModelSpec] = field(default_factory=dict)  # all FR models, for baselines
    fmr_targets: tuple[float, ...] = _setting(_fmr_targets, default=(1e-2, 1e-3, 1e-4))
    discard_limit: float = _setting(_discard_limit, default=0.3)
    convention: str = _setting(_choice(tuple(c.value for c in rules.Convention)), default="recompute")
    device: str = _setting(_device, default="cpu")
    batch_size: int = _setting(_int(1), default=64)
    seed: int = _setting(_int(0), default=0)
    demo: str = ""  # "" (real data), "default" or "tiny": which demo world data_root holds
    headline: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    pauc_scale: float = _setting(_pauc_scale, default=1000.0)  # pAUC is shown times this; CSVs state it
    attention_samples: dict[str, AttentionSample] = field(default_factory=dict)  # {} = the default
    # the per-sample layout (exfiqa.store.arrays); None: exfiqa.store.arrays.arrays_root's default
    arrays_dir: Path | None = _setting(lambda k, v: None if v is None else _folder(k, v), default=None)
    # extraction: DataLoader worker processes (None: the cores available); model arithmetic (part of
    # every array key); samples per resumable shard; keep the aligned uint8 crops for later runs
    workers: int | None = _setting(lambda k, v: default_workers() if v is None else _int(0)(k, v), default=None)
    precision: str = _setting(_choice(("fp32", "bf16")), default="fp32")
    shard_size: int = _setting(_int(1), default=50_000)
    crop_cache: bool = _setting(_flag, default=False)
    # the EDC threshold for a target: at_most (FMR <= target) or closest (the authors' scripts); a
    # match: similarity >= threshold, or distance< (arccos(cos)/pi < threshold); pAUC minus a
    # theoretical best curve (fixed only): none, triangle or stepwise
    threshold_rule: str = _setting(_choice(tuple(r.value for r in rules.ThresholdRule)), default="at_most")
    acceptance: str = _setting(_choice(tuple(a.value for a in rules.Acceptance)), default="similarity>=")
    subtract_best: str = _setting(_subtract_best, default="none")
    template_protocol: str = _setting(_choice(("group", "insightface")), default="group")  # IJB-C template features
    plugins: tuple[str, ...] = ()  # modules imported before the datasets are read (registered readers)

    def __post_init__(self) -> None:
        for key, check in _SETTINGS.items():
            object.__setattr__(self, key, check(key, getattr(self, key)))
        top = max_discard_limit(self.convention)
        if self.discard_limit > top:
            raise ConfigError(
                f"discard_limit must be at most {top:g} (the last discard level of the "
                f"'{self.convention}' convention), got {self.discard_limit:g}"
            )

    def select(self, datasets: list[str] | None = None, fr_models: list[str] | None = None,
               quality_models: list[str] | None = None) -> Config:
        """Keep only the named entries (empty/None keeps all); unknown names are errors."""

        def pick(kind: str, names: list[str] | None) -> dict[str, Any]:
            table: dict[str, Any] = getattr(self, kind)
            if not names:
                return table
            unknown = [n for n in names if n not in table]
            if unknown:
                raise ConfigError(f"unknown {kind} {unknown}; this config has {sorted(table)}")
            return {n: table[n] for n in names}

        return replace(self, datasets=pick("datasets", datasets), fr_models=pick("fr_models", fr_models),
                       quality_models=pick("quality_models", quality_models))

    def with_(self, **overrides: Any) -> Config:
        """Override scalar settings (None, "" and [] are ignored), checked as :func:`load_config` does."""
        bad = [k for k in overrides if k not in {f.name for f in fields(self)}]
        if bad:
            raise ConfigError(f"unknown setting(s) {bad}")
        fixed = [k for k in overrides if k not in _SETTINGS]
        if fixed:
            raise ConfigError(f"setting(s) {fixed} cannot be overridden; choose from {sorted(_SETTINGS)}")
        return replace(self, **{k: v for k, v in overrides.items()
                                if not (v is None or isinstance(v, (str, list, tuple)) and len(v) == 0)})

    def check_paths(self, checkpoints: bool = True) -> None:
        """Raise a :class:`ConfigError` naming the first missing input path (checkpoints too if asked)."""
        hint = (" (build the demo world with `make demo`)" if self.demo
                else " (see data/README.md for where to get it and how to lay it out)")
        for spec in self.datasets.values():
            for key, value in spec.args.items():
                if key in _PATH_KEYS and not Path(value).exists():
                    raise ConfigError(f"dataset {spec.name!r}: {key} {value} does not exist{hint}")
        needed = {_BASELINE_FR[b] for b in self.baselines if b in _BASELINE_FR}
        support = {k: v for k, v in self.support_fr_models.items() if k in needed}
        for kind, table in (("fr_models", {**support, **self.fr_models}), ("quality_models", self.quality_models)):
            for m in table.values() if checkpoints else ():
                if not m.checkpoint.is_file():
                    raise ConfigError(f"{kind}.{m.name}: checkpoint {m.checkpoint} does not exist{hint}")
        for method, per_ds in self.external_methods.items():
            for ds, path in per_ds.items():
                if not path.is_file():
                    raise ConfigError(f"external_methods.{method}.{ds}: {path} does not exist")
        for kind, sample in self.attention_samples.items():
            if sample.path is not None and not sample.path.is_file():
                raise ConfigError(f"attention_samples.{kind}: {sample.path} does not exist")


#: The settings :meth:`Config.with_` may override -> their checks (key, value) -> clean value.
_SETTINGS: dict[str, Check] = {f.name: f.metadata["check"] for f in fields(Config) if "check" in f.metadata}
#: The keys a config file may give: the fields but those :func:`load_config` fills in, and ``compat``.
_TOP_KEYS = {f.name for f in fields(Config)} - {"support_fr_models", "source"} | {"compat"}


# ------------------------------------------------------------------------------ notebook parameters


def list_parameter(name: str, value: Any, of: Literal["names", "numbers"] = "names") -> list[Any]:
    """A notebook's list parameter: a list, or a JSON/YAML list as a string (``-p fr_models '["x"]'``)."""
    example = '\'["elasticface"]\'' if of == "names" else "'[0.01, 0.001]'"
    if isinstance(value, str):
        try:
            parsed = yaml.load(value, Loader=_Loader)
        except (yaml.YAMLError, ConfigError) as exc:
            raise ConfigError(f"parameter {name}: {value!r} is not a JSON/YAML list ({_yaml_problem(exc)})") from None
        if not isinstance(parsed, list):
            raise ConfigError(f"parameter {name} must be a list of {of}, e.g. -p {name} {example}; "
                              f"got the string {value!r}")
        value = parsed
    ok = (lambda v: isinstance(v, str)) if of == "names" else _is_number
    if not isinstance(value, (list, tuple)) or not all(ok(v) for v in value):
        raise ConfigError(f"parameter {name} must be a list of {of}, e.g. -p {name} {example}; got {_show(value)}")
    return list(value)


def parse_attention_samples(value: Any, cfg: Config, key: str = "parameter attention_samples") -> dict[str, AttentionSample]:
    """A notebook's ``attention_samples`` parameter (a mapping, or YAML/JSON text) for ``cfg``."""
    if isinstance(value, str):
        try:
            value = yaml.load(value, Loader=_Loader)
        except (yaml.YAMLError, ConfigError) as exc:
            raise ConfigError(f"{key}: {value!r} is not a YAML/JSON mapping ({_yaml_problem(exc)})") from None
    known = {**cfg.datasets, **{s.dataset.name: s.dataset for s in cfg.attention_samples.values() if s.dataset}}
    return _attention_samples(key, value, cfg.data_root, known)


# ------------------------------------------------------------------------------ reading YAML


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 floats (``1e-3`` is a float, not a string) and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeConstructor refuses it with its own message
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")  # YAML 1.2's 1e-3
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789"))


def _yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what went wrong, and where the construct it was parsing began."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)
    text = "; ".join(p for p in (exc.context, exc.problem) if p)
    if exc.context_mark is not None and exc.context_mark is not exc.problem_mark:
        text += f" (it began at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
    return text


def _read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; syntax errors name the file and line."""
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(raw).__name__}")
    return raw


# ------------------------------------------------------------------------------ entries


def _resolve(base: Path, value: Any) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else base / p


def _entries(kind: str, raw: Any, needs: str, hint: str = "") -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """``(name, "<kind>.<name>", entry)`` of a table of file-safe names whose entries need key ``needs``."""
    for name, entry in _mapping(kind, raw).items():
        where = f"{kind}.{name}"
        if not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip() or "\0" in name:
            raise ConfigError(f"{where}: the name {name!r} names files of the per-sample layout "
                              "(<dataset>/<kind>-<name>.npy): no '/', '\\', leading '.', or surrounding spaces")
        if not isinstance(entry, Mapping) or needs not in entry:
            raise ConfigError(f"{where} needs a '{needs}'{hint}, got {_show(entry)}")
        yield name, where, entry


def _label(where: str, entry: Mapping[str, Any], name: str) -> str:
    return _text(f"{where}.label", entry["label"]) if "label" in entry else name


def _datasets(raw: Any, root: Path) -> dict[str, DatasetSpec]:
    """Dataset entries: a reader ``kind`` and its arguments (non-path ones integers, null if default None)."""
    out = {}
    for name, where, entry in _entries("datasets", raw, "kind", f" ({', '.join(_READERS)})"):
        kind = entry["kind"]
        if kind not in _READERS:
            raise ConfigError(f"{where}.kind {kind!r} is not one of {list(_READERS)}")
        params = inspect.signature(_READERS[kind]).parameters
        reader = {k: p.default for k, p in params.items() if k != "name"}  # empty: required
        _only(where, entry, {"kind", "label", *reader})
        missing = [k for k, d in reader.items() if d is inspect.Parameter.empty and k not in entry]
        if missing:
            raise ConfigError(f"{where} (kind {kind}) needs {missing}")
        args: dict[str, Any] = {}
        for k, v in entry.items():
            if k in _PATH_KEYS:
                args[k] = _resolve(root, _text(f"{where}.{k}", v))
            elif k not in ("kind", "label"):
                if not (_is_int(v) or (v is None and reader[k] is None)):
                    _fail(f"{where}.{k}", "an integer" + (" or null" if reader[k] is None else ""), v)
                args[k] = v
        out[name] = DatasetSpec(name, kind, {"name": name, **args}, _label(where, entry, name))
    return out


def _preprocess(where: str, value: Any) -> dict[str, Any]:
    """exfiqa.models.fr.Preprocess; numbers become floats so that equal settings key alike."""

    def number(k: str, v: Any, nonzero: bool = False) -> float:
        if not _is_number(v) or not math.isfinite(v) or (nonzero and v == 0):
            _fail(f"{where}.{k}", "a finite" + (" non-zero" if nonzero else "") + " number", v)
        return float(v)

    entry = _mapping(where, value, "a mapping {channel_order: RGB|BGR, scale: S, mean: [3 numbers], std: [3 numbers]}")
    _only(where, entry, set(_PREPROCESS_KEYS))
    missing = [k for k in _PREPROCESS_KEYS if k not in entry]
    if missing:
        raise ConfigError(f"{where} needs {missing} (all of {list(_PREPROCESS_KEYS)}: the model's input is (pixel * scale - mean) / std)")
    if entry["channel_order"] not in ("RGB", "BGR"):
        _fail(f"{where}.channel_order", "'RGB' or 'BGR'", entry["channel_order"])
    out: dict[str, Any] = {"channel_order": entry["channel_order"], "scale": number("scale", entry["scale"], True)}
    for k in ("mean", "std"):
        v = entry[k]
        if not isinstance(v, list) or len(v) != 3:
            _fail(f"{where}.{k}", "a list of 3 numbers (one per channel, in channel_order)", v)
        out[k] = [number(f"{k}[{i}]", x, k == "std") for i, x in enumerate(v)]
    return out


_SIZES = _rule("a non-empty list of integers >= 1",
               lambda v: isinstance(v, list) and v and all(_is_int(x) and x >= 1 for x in v))
#: The checks of a model entry's loader arguments; any other is an integer >= 1.
_MODEL_ARGS: dict[str, Check] = {
    "name": _text,
    "arch": _choice(_FR_ARCHS),
    "layers": _SIZES,
    "widths": _SIZES,
    "providers": _rule("a non-empty list of onnxruntime provider names, e.g. [CUDAExecutionProvider]",
                       lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)),
    "preprocess": _preprocess,
}


def _models(raw: Any, root: Path, kind: str) -> dict[str, ModelSpec]:
    """Model entries; an ``.onnx`` FR checkpoint needs ``preprocess``, and only it takes ``providers``."""
    allowed = _FR_ARGS if kind == "fr_models" else _QUALITY_ARGS
    out = {}
    for name, where, entry in _entries(kind, raw, "checkpoint"):
        _only(where, entry, {"checkpoint", "label", *allowed})
        args = {k: _MODEL_ARGS.get(k, _int(1))(f"{where}.{k}", v) for k, v in entry.items() if k in allowed}
        text = _text(f"{where}.checkpoint", entry["checkpoint"])
        if kind == "fr_models" and text.lower().endswith(".onnx"):
            torch_only = sorted(set(args) & _FR_TORCH_ARGS)
            if torch_only:
                raise ConfigError(f"{where}: {torch_only} apply to torch checkpoints only; the ONNX graph {text} fixes its architecture")
            if "preprocess" not in args:
                raise ConfigError(
                    f"{where}.preprocess is required for an ONNX model ({text}): state what the model was trained on as "
                    "preprocess: {channel_order: RGB|BGR, scale: S, mean: [m, m, m], std: [s, s, s]} (input = (pixel * scale "
                    "- mean) / std), e.g. OpenCV Zoo's SFace takes RGB 0..255 (scale 1, mean [0, 0, 0], std [1, 1, 1]) and "
                    "insightface ArcFace (x/255 - 0.5)/0.5 (RGB, scale 0.00392156862745098, mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5])"
                )
        elif "providers" in args:
            raise ConfigError(f"{where}.providers: onnxruntime providers apply to ONNX models only (a checkpoint ending in .onnx)")
        out[name] = ModelSpec(name, _resolve(root, text), args, _label(where, entry, name))
    return out


#: Baselines that need a specific torch architecture of their FR model.
_BASELINE_NEEDS = {"serfiq": "the ArcFace torch model (its dropout-layer forward; an ONNX graph has none)",
                   "magface_norm": "a MagFace torch model (the norm of any other model's output is not MagFace's quality)"}


def _baseline_models(baselines: Sequence[str], fr: Mapping[str, ModelSpec]) -> None:
    """A baseline's FR model missing, an ONNX graph or another model is refused here, not mid-extraction."""
    for b in baselines:
        if _BASELINES[b] is not None and _BASELINES[b] not in fr:
            raise ConfigError(f"baselines: {b} runs on fr_models.{_BASELINES[b]}, which this config lacks")
    for b in [b for b in baselines if b in _BASELINE_FR]:
        model = _BASELINE_FR[b]
        spec = fr[model]
        onnx = str(spec.checkpoint).lower().endswith(".onnx")
        released = spec.args.get("name", model)
        if onnx or released != model:
            what = "the ONNX graph" if onnx else f"model name {released!r}"
            raise ConfigError(
                f"baselines: {b} runs on fr_models.{model} and needs {_BASELINE_NEEDS[b]}; this entry is {what} "
                f"{spec.checkpoint.name}: drop {b} from baselines or point fr_models.{model} at the released checkpoint"
            )


def _external(raw: Any, root: Path, datasets: Mapping[str, DatasetSpec]) -> dict[str, dict[str, Path]]:
    out = {}
    for method, per_ds in _mapping("external_methods", raw).items():
        where = f"external_methods.{method}"
        if method in _BASELINES:
            raise ConfigError(f"{where}: {method!r} is a built-in baseline; give the method another name")
        entries = _mapping(where, per_ds)
        unknown = [ds for ds in entries if ds not in datasets]
        if unknown:
            raise ConfigError(f"{where}: unknown dataset(s) {unknown}; this config has {sorted(datasets)}")
        out[method] = {ds: _resolve(root, _text(f"{where}.{ds}", p)) for ds, p in entries.items()}
    return out


def _attention_samples(
    key: str, raw: Any, root: Path, datasets: Mapping[str, DatasetSpec]
) -> dict[str, AttentionSample]:
    """``{type: path}`` (relative to ``data_root``) or ``{type: {dataset: name, sample: id}}``."""
    entries = _mapping(key, raw, f"a mapping of sample type ({', '.join(ATTENTION_SAMPLE_TYPES)}) to an image")
    _only(key, entries, set(ATTENTION_SAMPLE_TYPES))
    out = {}
    for kind, entry in entries.items():
        where = f"{key}.{kind}"
        if isinstance(entry, str):
            out[kind] = AttentionSample(kind, path=_resolve(root, _text(where, entry)))
            continue
        if not isinstance(entry, Mapping):
            _fail(where, "an image path or a mapping {dataset: name, sample: id}", entry)
        _only(where, entry, {"dataset", "sample"})
        if set(entry) != {"dataset", "sample"}:
            raise ConfigError(f"{where} needs both 'dataset' and 'sample', got {sorted(entry)}")
        name = _text(f"{where}.dataset", entry["dataset"])
        if name not in datasets:
            raise ConfigError(f"{where}.dataset {name!r} is not one of {sorted(datasets)}")
        out[kind] = AttentionSample(kind, dataset=datasets[name], sample=_int(0)(f"{where}.sample", entry["sample"]))
    return out


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z", re.ASCII)


def _plugins(names: tuple[str, ...], src: str) -> None:
    """Import the ``plugins`` modules in order (e.g. to register readers), each announced on stderr."""
    for module in names:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None and spec.origin else "?"
        print(f"{src}: plugins: importing {module} ({origin})", file=sys.stderr)
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import {module!r} ({exc}); is it installed or on PYTHONPATH?") from None
        except Exception as exc:  # a plugin's own error at import (e.g. a kind registered twice)
            raise ConfigError(f"plugins: importing {module!r} failed: {type(exc).__name__}: {exc}") from exc


def load_config(
    path: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> Config:
    """Read and validate a run config; ``data_root`` (if non-empty) replaces the file's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = _read_yaml(path)
    src = str(path)
    try:
        _only("", raw, _TOP_KEYS)
        base = Path(cwd) if cwd else Path.cwd()
        written_root = _text("data_root", raw.get("data_root", "data"))
        root = _resolve(base, data_root or written_root)
        # everything that does not need the plugins' readers is checked before any plugin runs
        plugins = [] if raw.get("plugins") is None else raw["plugins"]
        if not isinstance(plugins, list) or not all(isinstance(m, str) and _MODULE_NAME.match(m) for m in plugins):
            _fail("plugins", "a list of importable module names", plugins)
        settings = {key: raw[key] for key in _SETTINGS if key in raw}
        for key, value in settings.items():
            _SETTINGS[key](key, value)
        demo = _demo_kind("demo", raw.get("demo", False))
        headline = _headline(raw.get("headline"))
        fr = _models(raw.get("fr_models"), root, "fr_models")
        quality = _models(raw.get("quality_models"), root, "quality_models")
        _plugins(tuple(plugins), src)
        datasets = _datasets(raw.get("datasets"), root)
        _baseline_models(_baseline_names("baselines", raw.get("baselines", [])), fr)
        for key, table in (("dataset", datasets), ("fr_model", fr)):
            if key in headline and headline[key] not in table:
                raise ConfigError(f"headline.{key} {headline[key]!r} is not one of {sorted(table)}")
        # the settings as written (Config checks them), folders resolved against the working folder
        settings |= {key: _resolve(base, _text(key, settings[key])) for key in ("cache_dir", "arrays_dir", "results_dir")
                     if key in settings}
        defaults: dict[str, Any] = {"run_name": path.stem, "cache_dir": root / "cache", "results_dir": base / "results"}
        return Config(
            **defaults | settings | _compat_rules(raw), data_root=root, datasets=datasets, fr_models=fr,
            support_fr_models=dict(fr), quality_models=quality, demo=demo, headline=headline, source=path,
            external_methods=_external(raw.get("external_methods"), root, datasets), plugins=tuple(plugins),
            attention_samples=_attention_samples("attention_samples", raw.get("attention_samples"), root, datasets),
        )
    except ConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None
