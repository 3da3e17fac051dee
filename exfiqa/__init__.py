"""exfiqa: early-exit face image quality assessment with ViT-FIQA (companion to EX-FIQA, FG 2026).

Sub-packages, in the order data flows through them; each imports only those below it (the
README's layout table says more; ``make lint`` checks the layering):

- ``readers``: files -> aligned RGB uint8 112x112 faces and each benchmark's comparisons;
- ``models``: ViT-FIQA (every exit in one pass), FR models, baselines, FLOPs;
- ``extract``: the compute stage, one read per image -> every per-sample array;
- ``store``: the interface between the stages: the run description, the arrays, the run card;
- ``study``: the evaluation over a run's arrays (never extracts), the notebooks' entry point;
- ``evaluation``: EDC, pAUC, comparison sets, subjects, bootstrap, fusion (numpy only);
- ``report``: what each notebook section shows, figures and tables; ``paper`` and ``cli`` run it;
- ``config``, ``io``, ``locks``: run configs; atomic writes and digests; run locks;
- apart: ``demo`` (the offline demo world) and ``train`` (the training recipes).
"""

__version__ = "0.1.0"
