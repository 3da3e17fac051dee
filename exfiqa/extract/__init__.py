"""The GPU stage: one read of each image -> every per-sample array of a run (``python -m exfiqa.extract``)."""
