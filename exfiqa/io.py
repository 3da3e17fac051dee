"""Atomic writing (a temporary file renamed into place), file digests and safe error text (no torch)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

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
    """``text`` for a one-line error message: non-printable-ASCII as Python escapes, cut to ``limit`` + ``...``."""
    s = text if isinstance(text, str) else str(text)
    head = s[: limit + 1]
    out = head.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if c.isprintable() or c == "\\" else repr(c)[1:-1] for c in out)
    if len(out) > limit or len(s) > len(head):
        return out[:limit] + "..."
    return out


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``, renamed onto it on success (:class:`FileExistsError`
    first if ``target`` exists and not ``overwrite``)."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give outputs the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], mode: str = "w", *, overwrite: bool = False,
                 **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``target`` only if the block succeeds."""
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
        open_kwargs.setdefault("newline", "")
    with atomic_path(target, overwrite=overwrite) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's content (used as a cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
