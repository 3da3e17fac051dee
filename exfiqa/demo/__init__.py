"""The offline demo world (``make demo``, ``python -m exfiqa.demo``): the rehearsal, not the study.

Three modules, apart from the core so that ``exfiqa/`` lists only what the real study runs:

- :mod:`exfiqa.demo.synth`: SynthFace, the procedural face generator (identities, degradations,
  aligned 112x112 RGB crops).
- :mod:`exfiqa.demo.world`: the builder; renders the benchmarks in their real on-disk formats and
  trains the small FR and ViT-FIQA models with :mod:`exfiqa.train.trainer` (cached by ``manifest.json``).
- :mod:`exfiqa.demo.report`: the numbers that show the world means something (``report.json``).
"""

from .world import DemoSpec, build_demo, ensure_demo, main

__all__ = ["DemoSpec", "build_demo", "ensure_demo", "main"]
