"""The GPU stage (``python -m exfiqa.extract``): :func:`extract` computes every per-sample array of a
run from one read of each image; :class:`Models` loads a config's models."""

from exfiqa.extract.models import Models
from exfiqa.extract.stage import extract

__all__ = ["Models", "extract"]
