"""exfiqa: early-exit face image quality assessment with ViT-FIQA (companion to EX-FIQA, FG 2026).

Modules, in the order data flows through them (the README's layout table says more):

- readers: ``images``, ``datasets``;
- models: ``model`` (ViT-FIQA, every exit in one pass), ``flops``, ``fr`` (face recognition),
  ``baselines``, ``inference``;
- extraction: ``extract``, ``arrays`` (the per-sample arrays), ``digests``;
- evaluation: ``config``, ``pipeline`` (the Study and open_study, the notebooks' entry point),
  ``comparisons``, ``metrics`` (EDC, pAUC), ``subjects`` (independent units), ``bootstrap``, ``fusion``;
- output: ``analysis``, ``plots``, ``tables``, ``paper`` (``make paper``), ``runcard``, ``cli``;
- files in and out: ``io``, ``locks`` (one extraction at a time, owned temporary files, disk space);
- apart: ``demo`` (the offline demo world) and ``train`` (the training recipes).
"""

__version__ = "0.1.0"
