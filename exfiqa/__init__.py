"""exfiqa: early-exit face image quality assessment with ViT-FIQA (companion to EX-FIQA, FG 2026).

Modules: ``model`` (ViT-FIQA with all exits in one pass), ``fusion``, ``flops``, ``metrics`` (EDC,
pAUC), ``datasets`` (benchmark readers), ``fr`` (face-recognition models), ``synth`` and ``train``
(the offline demo world), ``pipeline`` (cached comparison tables), ``plots``, ``tables``, ``cli``.
"""

__version__ = "0.1.0"
