"""The report's sections share one set of models per study: a checkpoint loads once per notebook."""

from __future__ import annotations

import exfiqa.extract.models as models_module
from exfiqa.config import load_config
from exfiqa.report.early_exit import latency_table, model_architecture
from exfiqa.report.frames import study_models
from exfiqa.study import Study


def test_each_checkpoint_loads_once_per_study(tiny_config, monkeypatch):
    cfg = load_config(tiny_config)
    loads: list[str] = []
    real = models_module.load_vitfiqa

    def counting(path, *args, **kwargs):
        loads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(models_module, "load_vitfiqa", counting)
    study = Study(cfg, progress=False)
    assert study_models(study) is study_models(study)
    q = next(iter(cfg.quality_models))
    model_architecture(study, q)
    latency_table(study, batch_size=2, repeats=1, full_size=False)
    model_architecture(study, q)
    assert sorted(loads) == sorted({str(s.checkpoint) for s in cfg.quality_models.values()})
    other = Study(cfg, progress=False)  # another study: its own models
    model_architecture(other, q)
    assert len(loads) == len(cfg.quality_models) + 1
