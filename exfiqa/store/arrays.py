"""Per-sample arrays on disk: the interface between extraction and evaluation (the notebooks read
only this), whoever produced them. Layout under ``arrays_dir`` (default :func:`arrays_root`)::

    <dataset>/exits-<quality model>.npy   (N, depth)  every exit's quality score
    <dataset>/emb-<FR model>.npy          (N, 2E)     [L2norm(f(x)), L2norm(f(hflip(x)))]
    <dataset>/baseline-<method>.npy       (N,)        a built-in baseline's score
    <dataset>/attn-<quality model>.npy    (N, depth)  ATTN-FIQA of every block
    <dataset>/vitnt-<quality model>.npy   (N, 2)      ViTNT-FIQA: mean, attention-weighted
    <dataset>/norms-<FR model>.npy        (N, 2)      [||f(x)||, ||f(hflip(x))||] (templates, insightface protocol)
    <dataset>/<same name>.json            its manifest

Names are the config's. Row i is sample i of ``Benchmark.samples``; values are float32 (``.npy``
version 1, ``<f4``, C order), finite, higher = better; each embedding half has L2 norm 1 (no flip:
write the embedding twice). The manifest is a JSON object:

- ``format``: ``"exfiqa-arrays/1"``; ``dataset``, ``kind`` (:data:`KINDS`), ``name``;
  ``producer``: ``"exfiqa"`` or ``"external"``; ``shape`` (a list), ``dtype`` (``"float32"``);
- ``n_samples``, ``samples_sha256``: N and the SHA-256 of the UTF-8 sample keys in row order joined
  by ``"\\n"`` (no trailing newline); a key is the path relative to the benchmark root as the reader
  lists it, or ``<file>.bin#<k>`` (:func:`sample_keys`);
- ``sha256`` of the ``.npy`` (optional for external arrays; checked when present);
- ``inputs`` (``data``: ``Benchmark.fingerprint``, ``checkpoint``, loader ``args``, e.g. ``seed``)
  and ``code_version`` (:func:`code_version`): required from exfiqa; an external ``inputs.data``
  is checked;
- ``complete``: false while exfiqa writes the pair, true once the array is in place.

An external array is used when its manifest matches the benchmark, else an :class:`ArrayError`
names the file; exfiqa never replaces it (delete both files for that). An exfiqa array is reused
only when its ``inputs``, ``code_version`` and ``sha256`` still hold, else re-extracted with a
warning (:meth:`ArrayStore.current`). Writes go manifest (``complete: false``), array (renamed into
place), final manifest. Outside arrays enter with ``run.arrays.write(..., producer="external")``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from numpy.typing import ArrayLike, NDArray

from exfiqa.config import _BASELINE_FR, _BASELINES, Config
from exfiqa.evaluation.pairs import release_pages
from exfiqa.io import atomic_path, atomic_write, clip, file_digest
from exfiqa.readers import READER_MODULES
from exfiqa.store.digests import DigestIndex

if TYPE_CHECKING:
    from exfiqa.readers import Benchmark

FORMAT = "exfiqa-arrays/1"
KINDS = ("exits", "emb", "baseline", "attn", "vitnt", "norms")

#: The FR package's modules an embedding depends on (the backbones, preprocessing and loading, ONNX
#: models; not ``templates``: template features are computed from the stored embeddings).
_FR_MODULES = ("exfiqa.models.fr.iresnet", "exfiqa.models.fr.model", "exfiqa.models.fr.load", "exfiqa.models.fr.onnx")
#: Built-in baselines and the FR model each runs on (None: needs no FR model): the config's table.
BASELINES: dict[str, str | None] = dict(_BASELINES)
#: Baseline -> the FR model (an entry of ``support_fr_models``) whose forward it needs.
BASELINE_FR: dict[str, str] = dict(_BASELINE_FR)

#: Modules whose source each kind of array depends on: readers and alignment, the model and its
#: preprocessing, the extraction stage. Baselines that run on an FR model add the FR modules.
CODE_MODULES: dict[str, tuple[str, ...]] = {
    kind: (*READER_MODULES, *model, "exfiqa.extract.stage")
    for kinds, model in ((("exits", "attn", "vitnt"), ("exfiqa.models.vitfiqa",)), (("emb", "norms"), _FR_MODULES),
                         (("baseline",), ("exfiqa.models.baselines",)))
    for kind in kinds
}

#: Libraries whose version is part of every code version (decoding, alignment, the models).
LIBRARIES = ("numpy", "pillow", "scikit-image", "opencv-python-headless", "scipy", "torch", "timm")

_CHECK_ELEMENTS = 1 << 22  # values per block when checking a large array
_NORM_TOL = 1e-3

_log = logging.getLogger(__name__)


class ArrayError(ValueError):
    """A per-sample array (or its manifest) that does not match the benchmark; names the file."""


# ------------------------------------------------------------------------------ names and keys


def arrays_root(cfg: Config) -> Path:
    """The config's ``arrays_dir``, else ``<cache_dir>/arrays/<data root name>-<8 hex of the SHA-256
    of its absolute path>`` (``demo-1a2b3c4d``)."""
    given = getattr(cfg, "arrays_dir", None)
    if given:
        return Path(given)
    root = os.path.abspath(cfg.data_root)
    tag = hashlib.sha256(root.encode()).hexdigest()[:8]
    return Path(cfg.cache_dir) / "arrays" / f"{Path(root).name or 'root'}-{tag}"


def _check_name(what: str, value: str) -> str:
    if not value or "/" in value or "\\" in value or value.startswith(".") or value != value.strip():
        raise ValueError(f"{what} {value!r} cannot name a file of the per-sample layout")
    return value


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown array kind {kind!r}; known: {list(KINDS)}")


def array_path(root: str | os.PathLike[str], dataset: str, kind: str, name: str) -> Path:
    """``<root>/<dataset>/<kind>-<name>.npy``."""
    _check_kind(kind)
    return Path(root) / _check_name("dataset", dataset) / f"{kind}-{_check_name('name', name)}.npy"


def manifest_path(npy: str | os.PathLike[str]) -> Path:
    """The manifest beside an array: ``<kind>-<name>.json``."""
    return Path(npy).with_suffix(".json")


def sample_keys(bench: Benchmark) -> list[str]:
    """The benchmark's sample keys in row order: paths relative to its root, ``<file>.bin#<k>``."""
    labels = {str(f): label for label, f in bench._files}
    keys = []
    for path in bench.samples["path"].astype(str):
        head, sep, k = path.rpartition("#")
        keys.append(labels[path] if path in labels else f"{labels[head]}#{k}" if sep and head in labels else path)
    return keys


def samples_digest(bench: Benchmark) -> str:
    """SHA-256 of :func:`sample_keys` joined by newlines: ``samples_sha256`` of a manifest."""
    return hashlib.sha256("\n".join(sample_keys(bench)).encode()).hexdigest()


def _sources(modules: tuple[str, ...]) -> list[Path]:
    out = []
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"cannot locate the source of {module}")
        out.append(Path(spec.origin))
    return out


def code_files(kind: str, name: str) -> list[Path]:
    """The source files an array of ``kind`` (for model or method ``name``) depends on."""
    _check_kind(kind)
    return _sources(CODE_MODULES[kind] + (_FR_MODULES if kind == "baseline" and name in BASELINE_FR else ()))


@functools.cache
def _version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "absent"


def _digest_code(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(f"{path.name}\0{file_digest(path)}\n".encode())
    for lib in LIBRARIES:
        h.update(f"{lib}=={_version(lib)}\n".encode())
    return h.hexdigest()


def code_version(kind: str, name: str) -> str:
    """Digest of :func:`code_files` (file name and content) and :data:`LIBRARIES`' versions."""
    return _digest_code(code_files(kind, name))


def modules_version(modules: tuple[str, ...]) -> str:
    """:func:`code_version`'s digest for any modules (e.g. the decoding code of the crop cache)."""
    return _digest_code(_sources(modules))


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# ------------------------------------------------------------------------------ checks


_SHAPES = {"exits": "(N, depth)", "emb": "(N, 2E)", "baseline": "(N,)", "attn": "(N, depth)", "vitnt": "(N, 2)",
           "norms": "(N, 2)"}


def _check_values(arr: NDArray[Any], kind: str, n: int, where: str) -> None:
    """Shape for ``kind`` with ``n`` rows, float32, finite, unit-norm embedding halves."""
    if arr.dtype != np.float32:
        raise ArrayError(f"{where}: dtype {arr.dtype} (per-sample arrays are float32)")
    ndim = 1 if kind == "baseline" else 2
    if arr.ndim != ndim or (ndim == 2 and arr.shape[1] < 1):
        raise ArrayError(f"{where}: shape {arr.shape}, expected {_SHAPES[kind]} for {kind}")
    if arr.shape[0] != n:
        raise ArrayError(f"{where}: {arr.shape[0]} rows, the benchmark has {n} samples")
    if kind in ("vitnt", "norms") and arr.shape[1] != 2:
        raise ArrayError(f"{where}: shape {arr.shape}, expected {_SHAPES[kind]} for {kind}")
    if kind == "emb" and arr.shape[1] % 2:
        raise ArrayError(f"{where}: width {arr.shape[1]} is odd; embeddings are flip-concatenated (N, 2E)")
    if kind == "emb" and arr.shape[1] > MAX_EMBEDDING_WIDTH:
        raise ArrayError(f"{where}: width {arr.shape[1]:,}, more than {MAX_EMBEDDING_WIDTH:,} (exfiqa.store.arrays.MAX_EMBEDDING_WIDTH)")
    width = int(np.prod(arr.shape[1:]))
    step = max(1, _CHECK_ELEMENTS // max(1, width))
    for start in range(0, n, step):
        block = np.asarray(arr[start : start + step])
        bad = ~np.isfinite(block)
        if bad.any():
            row = start + int(np.flatnonzero(bad.reshape(len(block), -1).any(axis=1))[0])
            raise ArrayError(f"{where}: NaN/inf values, the first in row {row} (sample_id {row})")
        if kind == "emb":
            half = arr.shape[1] // 2
            norms = np.stack([np.linalg.norm(block[:, :half], axis=1), np.linalg.norm(block[:, half:], axis=1)], 1)
            off = np.abs(norms - 1) > _NORM_TOL
            if off.any():
                row = start + int(np.flatnonzero(off.any(axis=1))[0])
                raise ArrayError(
                    f"{where}: row {row} has half norms {norms[row - start].round(4).tolist()}; each half "
                    f"of a flip-concatenated embedding must be L2-normalised"
                )
        release_pages(arr, start, start + step)  # checked once: keep RSS bounded (1.9 GB at IJB-C)


class _HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.raw.write(data)


MAX_MANIFEST_BYTES = 1 << 20  # largest manifest read (exfiqa writes about 1 kB)
MAX_EMBEDDING_WIDTH = 2 * 8192  # widest ``emb`` row accepted (2E, E <= 8192)

_MANIFEST_TYPES: dict[str, type] = {
    "format": str, "producer": str, "n_samples": int, "samples_sha256": str, "shape": list, "dtype": str,
    "sha256": str, "inputs": dict, "code_version": str, "complete": bool, "dataset": str, "kind": str, "name": str,
}  # the JSON type of each manifest key read (ints exclude booleans)
_JSON_TYPES = {str: "string", int: "integer", list: "list", dict: "object", bool: "boolean"}


def _read_json(path: Path) -> dict[str, Any]:
    """A manifest as a dict, its keys checked against :data:`_MANIFEST_TYPES`."""
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArrayError(f"{path}: {path.stat().st_size:,} bytes, more than a manifest's {MAX_MANIFEST_BYTES:,}")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArrayError(f"{path}: unreadable manifest ({clip(exc, 200)})") from None
    except RecursionError:
        raise ArrayError(f"{path}: unreadable manifest (JSON nested too deeply)") from None
    if not isinstance(data, dict):
        raise ArrayError(f"{path}: a manifest is a JSON object, got {type(data).__name__}")
    for key, t in _MANIFEST_TYPES.items():
        value = data.get(key)
        if key in data and (not isinstance(value, t) or (t is int and isinstance(value, bool))):
            raise ArrayError(f"{path}: {key} is {clip(json.dumps(value), 40)} ({type(value).__name__}), "
                             f"expected a JSON {_JSON_TYPES[t]}")
    shape = data.get("shape", [])
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ArrayError(f"{path}: shape {clip(json.dumps(shape), 60)} is not a list of non-negative integers")
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write(path, overwrite=True) as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ the store


class ArrayStore:
    """Reads, checks and writes the layout under ``root``; ``digests`` serves the ``sha256`` checks."""

    def __init__(self, root: str | os.PathLike[str], digests: DigestIndex) -> None:
        self.root = Path(root)
        self.digests = digests
        self._samples: dict[int, tuple[Benchmark, str]] = {}

    def path(self, dataset: str, kind: str, name: str) -> Path:
        return array_path(self.root, dataset, kind, name)

    def _samples_digest(self, bench: Benchmark) -> str:
        hit = self._samples.get(id(bench))
        if hit is None or hit[0] is not bench:
            hit = (bench, samples_digest(bench))
            self._samples[id(bench)] = hit
        return hit[1]

    def manifest(self, bench: Benchmark, dataset: str, kind: str, name: str, shape: tuple[int, ...],
                 producer: str, inputs: Mapping[str, Any] | None = None, code: str | None = None) -> dict[str, Any]:
        """The manifest fields of an array for ``bench`` (without ``sha256``/``complete``)."""
        if producer not in ("exfiqa", "external"):
            raise ValueError(f"producer must be 'exfiqa' or 'external', got {producer!r}")
        out: dict[str, Any] = {
            "format": FORMAT, "dataset": dataset, "kind": kind, "name": name, "producer": producer,
            "n_samples": len(bench), "samples_sha256": self._samples_digest(bench),
            "shape": list(shape), "dtype": "float32",
        }
        if inputs is not None:
            out["inputs"] = jsonable(dict(inputs))
        if code is not None:
            out["code_version"] = code
        return out

    # -------------------------------------------------------------- reading

    def load(
        self, bench: Benchmark, dataset: str, kind: str, name: str, check_data: bool = True,
    ) -> tuple[NDArray[np.float32], dict[str, Any]] | None:
        """The array (memory-mapped, read-only) and its manifest, None if absent, an :class:`ArrayError`
        for any mismatch but with this run's models and code (:meth:`current`); ``check_data=False``
        trusts an external ``inputs.data``."""
        npy = self.path(dataset, kind, name)
        mpath = manifest_path(npy)
        if not mpath.is_file():
            if npy.exists():
                raise ArrayError(
                    f"{npy}: no manifest {mpath.name} beside it; an array from elsewhere needs one "
                    f"(see exfiqa.store.arrays; ArrayStore.write(..., producer='external') writes both)"
                )
            return None
        m = _read_json(mpath)
        where = str(npy)
        missing = [k for k in ("format", "producer", "n_samples", "samples_sha256", "shape", "dtype") if k not in m]
        if missing:
            raise ArrayError(f"{mpath}: manifest lacks {missing}")
        if m["format"] != FORMAT:
            raise ArrayError(f"{mpath}: format {clip(repr(m['format']))}, expected {FORMAT!r}")
        if m["producer"] not in ("exfiqa", "external"):
            raise ArrayError(f"{mpath}: producer {clip(repr(m['producer']))} is not 'exfiqa' or 'external'")
        if m.get("complete") is False:
            raise ArrayError(f"{mpath}: incomplete (its writer was interrupted); write the array again")
        if not npy.is_file():
            raise ArrayError(f"{mpath}: manifest without its array {npy.name}")
        if m["n_samples"] != len(bench):
            raise ArrayError(f"{where}: manifest says {m['n_samples']} samples, the benchmark {dataset!r} has {len(bench)}")
        expected = self._samples_digest(bench)
        if m["samples_sha256"] != expected:
            raise ArrayError(
                f"{where}: computed for another sample list than benchmark {dataset!r}: samples_sha256 "
                f"{m['samples_sha256']!r}, expected {expected!r} (sha256 of the sample keys joined by "
                f"newlines, no trailing newline: exfiqa.store.arrays.sample_keys)"
            )
        if m["dtype"] != "float32":
            raise ArrayError(f"{where}: manifest dtype {clip(repr(m['dtype']))} (per-sample arrays are float32)")
        try:
            arr = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArrayError(f"{where}: not a readable .npy file ({exc})") from None
        if list(arr.shape) != list(m["shape"]):
            raise ArrayError(f"{where}: shape {arr.shape}, its manifest says {tuple(m['shape'])}")
        if "sha256" in m and self.digests.digest(npy) != m["sha256"]:
            raise ArrayError(f"{where}: content differs from its manifest's sha256 (changed after it was written)")
        if m["producer"] == "exfiqa" and "sha256" in m:
            _check_values(arr[:0], kind, 0, where)  # its values were checked when written
            return np.asarray(arr), m
        data = (m.get("inputs") or {}).get("data")
        if check_data and data is not None and data != bench.fingerprint(self.digests):
            raise ArrayError(f"{where}: computed from other benchmark content than {dataset!r} now holds (inputs.data differs)")
        _check_values(arr, kind, len(bench), where)
        return np.asarray(arr), m

    def current(
        self, bench: Benchmark, dataset: str, kind: str, name: str, inputs: Mapping[str, Any], code: str | None = None,
        trusted: tuple[str, ...] = (),
    ) -> tuple[NDArray[np.float32] | None, str]:
        """``(array, "")`` if usable for this run, else ``(None, "missing" or why exfiqa's array is
        stale)``; external arrays are used or refused (:class:`ArrayError`). ``trusted``: keys of
        ``inputs`` not compared."""
        npy = self.path(dataset, kind, name)
        try:
            found = self.load(bench, dataset, kind, name, check_data="data" not in trusted)
        except ArrayError as exc:
            if self._producer(npy) != "exfiqa":
                raise
            return None, str(exc).removeprefix(f"{npy}: ")
        if found is None:
            return None, "missing"
        if found[1]["producer"] == "external":
            _log.info("%s: using the external array", npy)
            return found[0], ""
        reason = self._stale(found[1], jsonable(dict(inputs)), code if code is not None else code_version(kind, name), trusted)
        return (found[0], "") if reason is None else (None, reason)

    @staticmethod
    def manifest_of(npy: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The manifest beside ``npy`` as it is (None: absent or unreadable); nothing is checked."""
        try:
            return _read_json(manifest_path(npy))
        except (ArrayError, FileNotFoundError):
            return None

    @staticmethod
    def _producer(npy: Path) -> str | None:
        m = ArrayStore.manifest_of(npy)
        return None if m is None else m.get("producer")

    @staticmethod
    def _stale(m: Mapping[str, Any], inputs: Mapping[str, Any], code: str, trusted: tuple[str, ...] = ()) -> str | None:
        """Why exfiqa's array ``m`` is not this run's (None: it is); keys in ``trusted`` are not compared."""
        old = m.get("inputs") or {}
        words = {"data": "benchmark content", "checkpoint": "checkpoint", "args": "model arguments"}
        keys = sorted((set(old) | set(inputs)) - set(trusted))
        changed = [words.get(k, k) for k in keys if old.get(k) != inputs.get(k)]
        if m.get("code_version") != code:
            changed.append("code")
        return f"{', '.join(changed)} changed" if changed else None

    # -------------------------------------------------------------- writing

    def write(
        self, bench: Benchmark, dataset: str, kind: str, name: str, values: ArrayLike, producer: str = "external",
        inputs: Mapping[str, Any] | None = None, code: str | None = None, overwrite: bool = False,
    ) -> Path:
        """Check and write ``values`` (row i = sample i of ``bench``) and its manifest in the module's
        order; return the ``.npy`` path. An external array is replaced only with ``overwrite=True``."""
        npy = self.path(dataset, kind, name)
        mpath = manifest_path(npy)
        arr = np.asarray(values)
        if arr.dtype != np.float32:
            if not np.issubdtype(arr.dtype, np.floating):
                raise ArrayError(f"{npy}: values of dtype {arr.dtype}; per-sample arrays are float32")
            arr = arr.astype(np.float32)
        _check_values(arr, kind, len(bench), f"{npy} (values to write)")
        if mpath.is_file() and not overwrite and self._producer(npy) == "external" and producer == "exfiqa":
            raise ArrayError(f"{npy}: an external array is there; exfiqa does not replace it")
        if producer == "external" and not overwrite and (npy.exists() or mpath.exists()):
            raise FileExistsError(f"{npy} exists; pass overwrite=True to replace it")
        manifest = self.manifest(bench, dataset, kind, name, arr.shape, producer, inputs, code)
        _write_json(mpath, {**manifest, "complete": False})
        with atomic_path(npy, overwrite=True) as tmp, open(tmp, "wb") as raw:
            writer = _HashingWriter(raw)
            np.save(writer, np.ascontiguousarray(arr), allow_pickle=False)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        digest = writer.sha.hexdigest()
        _write_json(mpath, {**manifest, "sha256": digest, "complete": True})
        self.digests.record(npy, digest)
        return npy


def wanted_arrays(cfg: Config, level: str = "sample") -> list[tuple[str, str]]:
    """``(kind, name)`` of every array a run of ``cfg`` reads on a ``level`` benchmark (``norms``:
    templates under ``template_protocol: insightface`` only)."""
    out = [(k, q) for q in cfg.quality_models for k in ("exits", "attn", "vitnt")]
    out += [("emb", f) for f in cfg.fr_models]
    if level == "template" and getattr(cfg, "template_protocol", "group") == "insightface":
        out += [("norms", f) for f in cfg.fr_models]
    return out + [("baseline", b) for b in cfg.baselines]


def missing_array_hint(root: str | os.PathLike[str], dataset: str, kind: str, name: str) -> str:
    """What the layout under ``root`` holds instead of ``<dataset>/<kind>-<name>.npy`` (for an error)."""
    folder = Path(root) / dataset
    if not folder.is_dir():
        others = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        return (f"no folder {folder} (the layout is <arrays_dir>/<dataset>/<kind>-<name>.npy, <dataset> as the "
                f"config names it; {root} holds {others or 'nothing'})")
    held = sorted(p.name for p in folder.glob("*.npy"))
    same_kind = [h for h in held if h.startswith(f"{kind}-")]
    return (f"no {kind}-{name}.npy in {folder} ({kind} arrays there: {same_kind or 'none'}; all arrays there: "
            f"{held or 'none'}; names are <kind>-<the config's model or method name>.npy, kinds {list(KINDS)})")


def external_array_files(cfg: Config) -> list[Path]:
    """The ``.npy`` and manifest of every external array in ``cfg``'s layout that its run reads."""
    root = arrays_root(cfg)
    out = []
    for dataset in cfg.datasets:
        for kind, name in wanted_arrays(cfg) + [("norms", f) for f in cfg.fr_models]:
            npy = array_path(root, dataset, kind, name)
            mpath = manifest_path(npy)
            if (mpath.is_file() and ArrayStore._producer(npy) == "external") or (npy.exists() and not mpath.exists()):
                out += [p for p in (npy, mpath) if p.exists()]
    return out
