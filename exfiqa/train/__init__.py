"""Training of the demo's (and the paper's) FR models and ViT-FIQA (``python -m exfiqa.train``); apart from the core."""
