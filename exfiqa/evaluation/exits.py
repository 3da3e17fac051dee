"""Exits are integers ``1..depth``; their display label (``"Exit 5"``) is built here and only here
(frames keep the integer in an ``exit`` column; a label is looked up, never parsed)."""

from __future__ import annotations


def exit_label(k: int) -> str:
    """The method name of exit ``k`` (1-based): ``"Exit k"``."""
    return f"Exit {k}"


def exit_labels(depth: int) -> list[str]:
    """The method names of exits ``1..depth``, in order."""
    return [exit_label(k) for k in range(1, depth + 1)]


def exit_numbers(depth: int) -> dict[str, int]:
    """Label -> exit of exits ``1..depth`` (the inverse of :func:`exit_label`, by lookup)."""
    return {exit_label(k): k for k in range(1, depth + 1)}
