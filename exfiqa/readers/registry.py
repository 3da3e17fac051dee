"""Benchmark kinds: the built-in readers, :func:`register_reader` for your own, :func:`load_benchmark`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exfiqa.readers.benchmark import Benchmark
from exfiqa.readers.bin import read_bin
from exfiqa.readers.folders import read_adience, read_xqlfw
from exfiqa.readers.ijbc import read_ijbc

__all__ = ["BENCHMARK_KINDS", "READERS", "READER_MODULES", "load_benchmark", "reader_source", "register_reader"]

BENCHMARK_KINDS = ("bin", "xqlfw", "adience", "ijbc")

#: The modules that read, decode and align the built-in kinds and dispatch to them (part of every
#: array's code version; a registered reader's own file is :func:`reader_source`).
READER_MODULES = tuple(
    f"exfiqa.readers.{m}" for m in ("images", "align", "benchmark", "bin", "folders", "ijbc", "registry")
)

#: Benchmark kind (a config entry's ``kind``) -> reader; :func:`register_reader` adds one.
READERS: dict[str, Callable[..., Benchmark]] = dict(
    zip(BENCHMARK_KINDS, (read_bin, read_xqlfw, read_adience, read_ijbc), strict=True)
)


def register_reader(kind: str, reader: Callable[..., Benchmark]) -> None:
    """Make ``kind`` a benchmark kind of the config, read by ``reader``.

    ``reader`` takes keyword arguments only: ``name``, path arguments named ``path``, ``root`` or
    ``pairs_file`` (resolved against ``data_root``), others integers or null. Its
    :class:`Benchmark`'s ``_files`` and protocol must cover everything the samples depend on (they
    make the fingerprint, hence the array keys, with the reader's own source file). Register when
    the module is imported, so that spawned workers and torchrun ranks see the kind too.

    Raises:
        ValueError: ``kind`` is not an identifier, or is already read by another function.
        TypeError: ``reader`` is not callable or takes no ``name`` argument.
    """
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"register_reader: kind must be an identifier, got {kind!r}")
    if not callable(reader):
        raise TypeError(f"register_reader({kind!r}): reader must be callable, got {type(reader).__name__}")
    if "name" not in inspect.signature(reader).parameters:
        raise TypeError(f"register_reader({kind!r}): {reader.__qualname__} must take a 'name' argument")
    known = READERS.get(kind)
    if known is not None and known is not reader:
        raise ValueError(f"benchmark kind {kind!r} is already read by {known.__module__}.{known.__qualname__}")
    READERS[kind] = reader


def reader_source(kind: str) -> Path | None:
    """The source file of a registered (not built-in) reader of ``kind``, else None (the built-in
    readers' modules, :data:`READER_MODULES`, are already part of every array's code version)."""
    if kind in BENCHMARK_KINDS:
        return None
    source = inspect.getsourcefile(_reader(kind))
    if source is None:
        raise ValueError(f"benchmark kind {kind!r}: cannot locate the source of its reader")
    return Path(source)


def _reader(kind: str) -> Callable[..., Benchmark]:
    if kind not in READERS:
        raise ValueError(f"unknown benchmark kind {kind!r}; valid kinds: {', '.join(READERS)}")
    return READERS[kind]


def load_benchmark(kind: str, **paths: Any) -> Benchmark:
    """Open a benchmark by kind: ``"bin"`` (``path=``), ``"xqlfw"`` (``root=``, ``pairs_file=``),
    ``"adience"`` (``root=``, optional ``max_nonmated=``, ``seed=``), ``"ijbc"`` (``root=``) or a
    registered kind; all accept an optional ``name=``.

    Raises:
        ValueError: unknown ``kind`` (the message lists the valid ones).
        TypeError: missing or unexpected keyword arguments for that kind.
    """
    reader = _reader(kind)
    try:
        return reader(**paths)
    except TypeError as exc:
        if "argument" in str(exc):
            raise TypeError(f"load_benchmark(kind={kind!r}): {exc}") from None
        raise
