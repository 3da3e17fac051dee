"""The GPU stage: one read of each image -> every per-sample array of a run (``python -m exfiqa.extract``).

``extract(cfg)`` computes the arrays of :mod:`exfiqa.store.arrays` that are missing or stale;
:class:`Models` loads a config's models. The evaluation only reads what this writes.
"""

from exfiqa.extract.models import Models
from exfiqa.extract.stage import extract

__all__ = ["Models", "extract"]
