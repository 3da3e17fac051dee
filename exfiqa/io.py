"""Safe loading and atomic writing: the only places where files enter or leave the package.

Conventions:
- Checkpoints are read with ``torch.load(weights_only=True)``: tensors, containers and primitive
  types only. A file that needs any other unpickling is refused and nothing in it runs; weights
  holding NaN or inf are refused too, naming the file and the tensors.
- Every output is first written to a temporary file in the target folder, then renamed into place,
  so a reader never sees a half-written file. An existing file is only replaced with
  ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "CheckpointError",
    "atomic_path",
    "atomic_write",
    "chunked",
    "clip",
    "file_digest",
    "load_state_dict",
    "load_state_dict_with_metadata",
    "safe_torch_load",
    "state_dict_report",
]


_T = TypeVar("_T")


def chunked(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """Consecutive slices of ``items`` of length ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for i in range(0, len(items), size):
        yield items[i : i + size]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely or does not match the model."""


def clip(text: object, limit: int = 80) -> str:
    """``text`` made safe for a one-line error message: escaped and at most ``limit`` characters.

    A string taken from a file (a pickle's global name, a manifest entry, an exception raised
    while parsing it) may hold control characters (ANSI escapes, newlines), lone surrogates or
    millions of characters. Every character outside printable ASCII is written as a Python
    escape (``\\x1b``, ``\\n``, ``\\udcff``, ``\\u00e9``), and the result is cut to ``limit``
    characters followed by ``...``.
    """
    s = text if isinstance(text, str) else str(text)
    head = s[: limit + 1]
    out = head.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if c.isprintable() or c == "\\" else repr(c)[1:-1] for c in out)
    if len(out) > limit or len(s) > len(head):
        return out[:limit] + "..."
    return out


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """Load a ``torch.save`` file without running any code from it.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is not a weights-only checkpoint (it would need arbitrary
            unpickling, e.g. a pickled ``nn.Module`` or a custom class), or it is corrupt.
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{p}: refused to load: the file needs arbitrary unpickling (a pickled module or a "
            f"custom class), which could run code. Only plain state_dicts of tensors are accepted; "
            f"re-save it with torch.save(model.state_dict(), path) in a trusted environment. "
            f"Detail: {clip(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__}"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001  # a corrupt archive fails anywhere in torch's unpickler
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__}: {clip(str(exc))})"
        ) from None


def load_state_dict(
    path: str | os.PathLike[str], nested_keys: tuple[str, ...] = ("state_dict", "model")
) -> dict[str, Any]:
    """Load a checkpoint safely and return its flat state_dict.

    A dict holding a state_dict under one of ``nested_keys`` (e.g. MagFace's ``{"state_dict": ...}``)
    is unwrapped. Keys are returned unchanged (prefix handling is the caller's job).
    """
    return load_state_dict_with_metadata(path, nested_keys)[0]


def load_state_dict_with_metadata(
    path: str | os.PathLike[str], nested_keys: tuple[str, ...] = ("state_dict", "model")
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`load_state_dict` and the state_dict's ``_metadata`` (``{}`` when it has none).

    ``_metadata`` is the attribute in which PyTorch keeps its per-module version record of a
    state_dict; it is saved with the dict but is no key, so a writer can keep non-weight facts
    there that a strict ``load_state_dict`` never sees (``exfiqa.models.vitfiqa.save_vitfiqa`` does).
    """
    obj = safe_torch_load(path)
    if isinstance(obj, Mapping):
        for key in nested_keys:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and not _is_tensor(obj.get(key)):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a non-empty state_dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not _is_tensor(v)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    _check_finite(obj, path)
    metadata = getattr(obj, "_metadata", None)
    return dict(obj), dict(metadata) if isinstance(metadata, Mapping) else {}


def state_dict_report(
    expected: Mapping[str, Sequence[int]],
    got: Mapping[str, Sequence[int]],
    source: str,
    *,
    optional: Collection[str] = (),
    limit: int = 10,
) -> str | None:
    """Compare a checkpoint's keys and shapes with a model's; None when they match.

    ``expected``/``got``: key -> shape (``torch.Size`` or any int sequence) of the model and of
    the checkpoint; ``optional`` keys may be absent from ``got``. Otherwise returns
    ``"<source>: missing keys (n): [...]; unexpected keys (n): [...]; shape mismatches (n):
    ['<key>: checkpoint [..] vs model [..]', ...]"`` (only the non-empty parts, at most ``limit``
    entries each, in the mappings' order), for the caller to extend with its hint and raise as
    :class:`CheckpointError`.
    """
    missing = [k for k in expected if k not in got and k not in optional]
    unexpected = [k for k in got if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(got[k])} vs model {list(shape)}"
        for k, shape in expected.items()
        if k in got and tuple(got[k]) != tuple(shape)
    ]
    parts = [
        f"{what} ({len(items)}): [{', '.join(map(repr, items[:limit]))}{', ...' if len(items) > limit else ''}]"
        for what, items in (
            ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched),
        )
        if items
    ]
    return f"{source}: " + "; ".join(parts) if parts else None


def _check_finite(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse weights holding NaN or inf: they would give NaN scores, or silently wrong rankings."""
    import torch

    bad = []
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            n = int(value.numel() - torch.isfinite(value).sum())
            if n:
                bad.append(f"{key} ({n} of {value.numel()})")
    if bad:
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{path}: refused to load: non-finite weights (NaN or inf) in {', '.join(bad[:3])}{more}. "
            f"The file is corrupt or was saved from a diverged training run."
        )


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike[str], *, overwrite: bool = False
) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False (checked before any work).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give outputs the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(
    target: str | os.PathLike[str], mode: str = "w", *, overwrite: bool = False, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``target`` only if the block succeeds."""
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
        open_kwargs.setdefault("newline", "")
    with atomic_path(target, overwrite=overwrite) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's content (used as a cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
