"""The one device resolver of the models: a config's or a command line's device string -> ``torch.device``."""

from __future__ import annotations

import torch


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when torch sees a GPU, else the CPU; anything else as given
    (ValueError if it names CUDA and torch sees no GPU)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available here")
    return dev
