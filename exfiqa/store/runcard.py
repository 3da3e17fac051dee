"""The run card: what one run of the study runs with (settings, code version, input digests);
``make paper`` writes it to ``results/<run>/run_card.json`` and keys reruns on :meth:`RunCard.key`."""

from __future__ import annotations

import hashlib
import html
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from exfiqa.config import _BASELINE_FR, _PATH_KEYS, Config
from exfiqa.evaluation.rules import rule_note
from exfiqa.readers import Benchmark, load_benchmark
from exfiqa.store.arrays import (
    _read_json,
    array_path,
    arrays_root,
    manifest_path,
    samples_digest,
    wanted_arrays,
)
from exfiqa.store.digests import INDEX_NAME, DigestIndex

PACKAGE = Path(__file__).resolve().parents[1]  # exfiqa/, every sub-package included
REPO = PACKAGE.parent  # paths in a run's outputs are relative to it where they can be (shown_path)
PRECISION = "float32"


def code_digest(package: Path = PACKAGE) -> str:
    """SHA-256 over every ``.py`` file of the package, sub-packages included (path + bytes)."""
    h = hashlib.sha256()
    for p in sorted(package.rglob("*.py")):
        h.update(p.relative_to(package).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def git_describe(where: Path = PACKAGE) -> str:
    """``git describe --always --dirty`` of the checkout holding the package, else ``"unknown"``."""
    try:
        done = subprocess.run(["git", "-C", str(where), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


@dataclass(frozen=True)
class RunCard:
    """What a run runs with: Config fields by name (a table: its entry names), others in words."""

    run_name: str
    config: str
    world: str
    datasets: tuple[str, ...]
    fr_models: tuple[str, ...]
    quality_models: tuple[str, ...]
    device: str
    precision: str
    convention: str
    discard_limit: float
    fmr_targets: tuple[float, ...]
    pauc_scale: float
    headline: str
    seed: int
    batch_size: int
    code_sha256: str
    git: str
    inputs: dict[str, str] = field(default_factory=dict)
    threshold_rule: str = "at_most"  # the EDC rules (exfiqa.evaluation.rules); defaults for cards written before them
    acceptance: str = "similarity>="
    subtract_best: str = "none"
    template_protocol: str = "group"

    @property
    def demo(self) -> bool:
        """True when the numbers come from the offline demo world."""
        return self.world.startswith("demo")

    def banner(self) -> str:
        """One markdown line saying where the numbers come from (demo world or real data)."""
        if self.demo:
            return ("**Demo world.** These numbers come from the offline demo world (procedural faces, small "
                    "models trained on this machine). They exercise every step of the paper's protocol; "
                    "**they are not the paper's numbers.**")
        return f"**Real data** ({self.world.removeprefix('real data in ')}): the paper's benchmarks and checkpoints as configured."

    def key(self) -> str:
        """Digest of all fields but ``git`` (which also reflects files outside the package)."""
        blob = {k: v for k, v in asdict(self).items() if k != "git"}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def differences(self, other: RunCard) -> list[str]:
        """Names of the fields in which ``other`` differs from this card."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) pairs in display order; input digests shortened to 16 hex digits."""
        rows = [
            ("run", self.run_name),
            ("config", self.config),
            ("data", self.world),
            ("datasets", ", ".join(self.datasets)),
            ("FR models", ", ".join(self.fr_models)),
            ("quality models", ", ".join(self.quality_models)),
            ("device", self.device),
            ("precision", f"{self.precision} (this version evaluates in float32 only)"),
            ("EDC convention", self.convention),
            ("EDC threshold", rule_note(self.threshold_rule, self.acceptance).removeprefix("threshold ")),
            ("best curve subtracted", self.subtract_best),
            ("IJB-C templates", self.template_protocol),
            ("pAUC limit", f"discard 0 .. {self.discard_limit:g}"),
            ("FMR targets", ", ".join(f"{f:g}" for f in self.fmr_targets)),
            ("pAUC scale", f"x{self.pauc_scale:g} (tables show pAUC times this; CSVs keep full precision)"),
            ("headline", self.headline),
            ("seed", str(self.seed)),
            ("batch size", str(self.batch_size)),
            ("code", f"sha256 {self.code_sha256[:16]}, git {self.git}"),
        ]
        rows += [(f"input {name}", f"sha256 {digest[:16]}") for name, digest in self.inputs.items()]
        return rows

    def markdown(self) -> str:
        """A two-column markdown table (what every notebook's first cell prints)."""
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        lines = ["| run card | |", "| --- | --- |"]
        lines += [f"| {cell(k)} | {cell(v)} |" for k, v in self.rows()]
        return "\n".join(lines)

    def html(self) -> str:
        """The same table as HTML (what ``index.html`` shows)."""
        body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in self.rows())
        return f'<table class="card" id="run-card">{body}</table>'

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunCard:
        raw = json.loads(text)
        for f in fields(cls):
            if str(f.type).startswith("tuple") and f.name in raw:
                raw[f.name] = tuple(raw[f.name])
        return cls(**raw)


def shown_path(path: str | os.PathLike[str], cfg: Config | None = None) -> str:
    """``path`` relative to the repository, else ``<data_root>/...`` (and the like), else ``<elsewhere>/<name>``."""
    p = _abs(path)
    bases = [(REPO, "")]
    if cfg is not None:
        bases += [(_abs(cfg.data_root), "<data_root>"), (_abs(cfg.results_dir), "<results_dir>"),
                  (_abs(cfg.cache_dir), "<cache_dir>")]
        if cfg.source is not None:
            bases.append((_abs(cfg.source).parent, "<config folder>"))
    for base, label in bases:
        if p.is_relative_to(base):
            rel = p.relative_to(base).as_posix()
            return "/".join(x for x in (label, rel if rel != "." else "") if x) or "."
    return f"<elsewhere>/{p.name}"


def _input_groups(cfg: Config) -> list[tuple[str, list[Path]]]:
    """(label, the paths it reads: files, or folders whose files it reads) per input of ``cfg``."""
    models = [(f"quality_models.{k}", m) for k, m in cfg.quality_models.items()]
    models += [(f"fr_models.{k}", m) for k, m in cfg.support_fr_models.items()]
    groups = [(f"{label} ({m.checkpoint.name})", [_abs(m.checkpoint)]) for label, m in models]
    groups += [(f"datasets.{name}", [_abs(v) for k, v in spec.args.items() if k in _PATH_KEYS])
               for name, spec in cfg.datasets.items()]
    groups += [(f"external_methods.{m}.{ds}", [_abs(p)])
               for m, per_ds in cfg.external_methods.items() for ds, p in per_ds.items()]
    groups += [(f"attention_samples.{k}", [_abs(s.path)]) for k, s in cfg.attention_samples.items() if s.path is not None]
    return groups


def _abs(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(path))


def input_summary(cfg: Config, digests: Mapping[str, str]) -> dict[str, str]:
    """Per-file digests (``{path: sha256}``) grouped by the config entry that reads them (a
    single-file input keeps its digest; unclaimed files form ``other inputs``)."""
    groups = _input_groups(cfg)
    members: dict[str, list[tuple[Path, str]]] = {label: [] for label, _ in [*groups, ("other inputs", [])]}
    # a group's path -> the first group naming it
    owners = {str(q): i for i, (_, ps) in reversed(list(enumerate(groups))) for q in ps}
    for path_text, digest in sorted(digests.items()):
        # the first group (in config order) whose path is the file or one of its folders
        hits = [owners[p] for p in (path_text, *map(str, Path(path_text).parents)) if p in owners]
        label = groups[min(hits)][0] if hits else "other inputs"
        members[label].append((Path(path_text), digest))
    out = {}
    for label, files in members.items():
        if not files:
            continue
        if len(files) == 1 and not label.startswith(("datasets.", "other")):
            out[label] = files[0][1]
            continue
        base = Path(os.path.commonpath([str(p) for p, _ in files])) if len(files) > 1 else files[0][0].parent
        h = hashlib.sha256()
        for p, d in files:
            h.update(f"{p.relative_to(base).as_posix()}\0{d}\n".encode())
        out[f"{label} ({len(files)} file{'s' if len(files) > 1 else ''})"] = h.hexdigest()
    return dict(sorted(out.items()))  # one order everywhere (the JSON file sorts its keys too)


def _model_of(kind: str, name: str) -> str:
    """The config entry whose checkpoint an array of ``kind``/``name`` was computed with."""
    if kind in ("exits", "attn", "vitnt"):
        return f"quality_models.{name}"
    if kind in ("emb", "norms"):
        return f"fr_models.{name}"
    return f"fr_models.{_BASELINE_FR[name]}" if name in _BASELINE_FR else ""


def evaluation_inputs(cfg: Config, benchmarks: Mapping[str, Benchmark] | None = None,
                      progress: bool = True) -> dict[str, str]:
    """The inputs the notebooks read, label -> SHA-256, without reading an image or a checkpoint:
    protocol files, sample lists, arrays (and the digests their manifests cite), CSVs, images."""
    index = DigestIndex(Path(cfg.cache_dir) / INDEX_NAME, progress=progress)
    root = arrays_root(cfg)
    out: dict[str, str] = {}
    cited: dict[str, set[str]] = {}
    for ds, spec in cfg.datasets.items():
        bench = (benchmarks or {}).get(ds) or load_benchmark(spec.kind, **spec.args)
        images = set(bench.samples["path"].astype(str))
        protocol = [(label, str(f)) for label, f in bench._files if str(f) not in images]
        if protocol:
            h = hashlib.sha256()
            for (label, _), d in zip(protocol, index.digests([f for _, f in protocol], desc=f"hashing {ds}"), strict=True):
                h.update(f"{label}\0{d}\n".encode())
            out[f"datasets.{ds} protocol ({len(protocol)} file{'s' if len(protocol) > 1 else ''})"] = h.hexdigest()
        out[f"datasets.{ds} samples ({len(bench):,})"] = samples_digest(bench)
        for kind, name in wanted_arrays(cfg, bench.level):
            npy = array_path(root, ds, kind, name)
            mpath = manifest_path(npy)
            if not (npy.is_file() and mpath.is_file()):
                continue  # reading it is the notebook's error, naming the file
            try:
                m = _read_json(mpath)
            except ValueError:
                continue
            sha = m.get("sha256")
            out[f"arrays.{ds}/{kind}-{name}"] = sha if isinstance(sha, str) else index.digest(npy)
            got: dict[str, Any] = m.get("inputs") if isinstance(m.get("inputs"), dict) else {}  # type: ignore[assignment]
            if isinstance(got.get("data"), str):
                cited.setdefault(f"datasets.{ds} images (cited by the arrays)", set()).add(got["data"])
            model = _model_of(kind, name)
            if model and isinstance(got.get("checkpoint"), str):
                cited.setdefault(f"{model} checkpoint (cited by the arrays)", set()).add(got["checkpoint"])
    out.update({label: "+".join(sorted(values)) for label, values in cited.items()})
    files = {f"external_methods.{m}.{ds}": p for m, per_ds in cfg.external_methods.items() for ds, p in per_ds.items()
             if ds in cfg.datasets}
    files |= {f"attention_samples.{k}": s.path for k, s in cfg.attention_samples.items() if s.path is not None}
    out.update(zip(files, index.digests([_abs(p) for p in files.values()], desc="hashing inputs"), strict=True))
    return dict(sorted(out.items()))


def run_card(cfg: Config, inputs: Mapping[str, str] | None = None, *, benchmarks: Mapping[str, Benchmark] | None = None,
             progress: bool = True) -> RunCard:
    """The card of ``cfg``; ``inputs`` (``{path: sha256}``) by default :func:`evaluation_inputs`."""
    where = shown_path(cfg.data_root, cfg)
    described: dict[str, Any] = {
        "config": shown_path(cfg.source, cfg) if cfg.source else "(in memory)",  # no absolute path of the machine
        "world": f"demo world '{cfg.demo}' in {where} (procedural faces, small models: not the paper's numbers)"
        if cfg.demo else f"real data in {where}",
        "precision": f"models {cfg.precision}, arrays and evaluation {PRECISION}",
        "headline": ", ".join(f"{k} {cfg.headline[k]}" for k in ("dataset", "fr_model", "fmr") if k in cfg.headline)
        or "(none: first dataset and FR model)",
        "code_sha256": code_digest(),
        "git": git_describe(),
        "inputs": evaluation_inputs(cfg, benchmarks, progress) if inputs is None else input_summary(cfg, inputs),
    }
    # every other field is the config's setting of that name (Config has checked its type)
    mirrored: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in fields(RunCard) if f.name not in described}
    mirrored |= {k: tuple(v) for k, v in mirrored.items() if isinstance(v, dict)}  # a table: its entries' names
    return RunCard(**described, **mirrored)

