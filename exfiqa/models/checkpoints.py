"""Checkpoints read so that nothing in them runs (``torch.load(weights_only=True)``); files that need
other unpickling, or hold NaN/inf weights, raise :class:`exfiqa.io.CheckpointError`."""

from __future__ import annotations

import os
import pickle
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from exfiqa.io import CheckpointError, clip


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """Load a ``torch.save`` file without running any code from it: FileNotFoundError, or
    CheckpointError when it is not weights-only or is corrupt."""
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
    """Load a checkpoint safely and return its flat state_dict, unwrapped from under one of
    ``nested_keys`` (e.g. MagFace's ``{"state_dict": ...}``); keys unchanged."""
    return load_state_dict_with_metadata(path, nested_keys)[0]


def load_state_dict_with_metadata(
    path: str | os.PathLike[str], nested_keys: tuple[str, ...] = ("state_dict", "model")
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`load_state_dict` and the state_dict's ``_metadata`` attribute (``{}`` when it has none),
    where a writer can keep non-weight facts a strict ``load_state_dict`` never sees."""
    obj = safe_torch_load(path)
    if isinstance(obj, Mapping):
        for key in nested_keys:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a non-empty state_dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    _check_finite(obj, path)
    metadata = getattr(obj, "_metadata", None)
    return dict(obj), dict(metadata) if isinstance(metadata, Mapping) else {}


def state_dict_report(
    expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]], source: str, *,
    optional: Collection[str] = (), limit: int = 10,
) -> str | None:
    """Compare a checkpoint's keys and shapes (``got``) with a model's (``expected``); None when they
    match (``optional`` keys may be missing), else ``"<source>: missing keys (n): [...]; unexpected
    keys (n): [...]; shape mismatches (n): [...]"`` (non-empty parts, at most ``limit`` entries each)."""
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
    floats = [(k, v) for k, v in state.items() if v.is_floating_point() or v.is_complex()]
    counts = [(k, int(v.numel() - torch.isfinite(v).sum()), v.numel()) for k, v in floats]
    bad = [f"{k} ({n} of {size})" for k, n, size in counts if n]
    if bad:
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{path}: refused to load: non-finite weights (NaN or inf) in {', '.join(bad[:3])}{more}. "
            f"The file is corrupt or was saved from a diverged training run."
        )
