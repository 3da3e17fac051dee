"""A run without IJB-C (NIST discontinued its distribution on 14 March 2023): the shipped
seven-benchmark config, and the notebooks' headline and findings on the demo world without its
IJB-C-like dataset, which say what stands in for IJB-C."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from exfiqa.config import load_config
from exfiqa.report.bootstrap_tables import fusion_bootstrap
from exfiqa.report.comparison import (
    SECONDARY_SOURCE,
    headline_note,
    headline_vs_paper,
    secondary_reference,
)
from exfiqa.report.findings import paper_findings
from exfiqa.report.frames import headline, pauc_all, variant_tags
from exfiqa.study import open_study

ROOT = Path(__file__).resolve().parents[1]
IJBC_FINDINGS = ("middle exits best on IJB-C (C)", "FW (T) top-1 on IJB-C")


def test_paper_no_ijbc_is_paper_yaml_without_ijbc(tmp_path):
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    seven = yaml.safe_load((ROOT / "configs" / "paper-no-ijbc.yaml").read_text())
    differs = {k for k in paper.keys() | seven.keys() if paper.get(k) != seven.get(k)}
    assert differs == {"run_name", "datasets", "headline"}
    assert {k: v for k, v in paper["datasets"].items() if k != "ijbc"} == seven["datasets"]
    assert len(seven["datasets"]) == 7 and "ijbc" not in seven["datasets"]
    assert seven["headline"] == {**paper["headline"], "dataset": "adience"}
    cfg = load_config(ROOT / "configs" / "paper-no-ijbc.yaml", cwd=tmp_path)
    ref = load_config(ROOT / "configs" / "paper.yaml", cwd=tmp_path)
    assert headline(cfg).label == "Adience"
    assert cfg.arrays_dir == ref.arrays_dir  # the arrays extracted for paper.yaml serve this run too
    readme = (ROOT / "data" / "README.md").read_text()
    assert "configs/paper-no-ijbc.yaml" in readme and "14 March 2023" in readme


@pytest.fixture(scope="module")
def no_ijbc(tiny_config, tmp_path_factory):
    """The tests' demo world under a config without its IJB-C-like dataset, headline Adience-like
    (the arrays are the tiny config's: same data_root and cache)."""
    raw = yaml.safe_load(Path(tiny_config).read_text())
    del raw["datasets"]["ijbc"]
    raw["headline"]["dataset"] = "adience"
    raw["run_name"] = "tiny-no-ijbc"
    path = tmp_path_factory.mktemp("noijbc") / "no-ijbc.yaml"
    path.write_text(yaml.safe_dump(raw))
    study = open_study(path, progress=False)
    return study, pauc_all(study, scale=study.config.pauc_scale)


def test_headline_and_findings_say_what_stands_in_for_ijbc(no_ijbc):
    study, pauc = no_ijbc
    cfg = study.config
    head = headline(cfg)
    assert (head.dataset, head.label) == ("adience", "Adience-like")
    assert "IJB-C-like" not in set(pauc["dataset"])
    note = headline_note(head)
    assert "Adience-like" in note and "NIST" in note
    tags = variant_tags(study)
    # at the config's FMR 1e-3 the tiny world resolves nothing: every finding says so, and which
    # dataset stands in for IJB-C
    findings = paper_findings(pauc, tags, head, adience="Adience-like").set_index("finding")
    for name in IJBC_FINDINGS:
        assert findings.loc[name, "this_run"] == "on Adience-like in place of IJB-C: no dataset with a resolvable FMR 0.001"
    # the tiny world is too small to resolve any FMR target; without the 'resolved' column nothing
    # is left out, and the IJB-C findings are computed on Adience-like
    findings = paper_findings(pauc.drop(columns="resolved"), tags, head, adience="Adience-like").set_index("finding")
    for name in IJBC_FINDINGS:
        text = findings.loc[name, "this_run"]
        prefix = "on Adience-like in place of IJB-C: "
        assert text.startswith(prefix) and "on Adience-like" in text[len(prefix):]
        assert findings.loc[name, "verdict"] in ("agrees", "differs", "tie")
    assert "in place of IJB-C" not in findings.loc["FW (T) best mean pAUC", "this_run"]
    # the table beside the poster: this run's headline dataset, the poster's IJB-C, and the second
    # reference on Adience (9.948 x10^-3 as transcribed), not its IJB-C value
    vs = headline_vs_paper(pauc, head, tags, cfg.pauc_scale).set_index("method")
    assert set(vs["dataset"]) == {"Adience-like"} and set(vs["paper_dataset"]) == {"IJB-C"}
    second = vs[SECONDARY_SOURCE]
    assert second.notna().sum() == 1
    assert second["ViT-FIQA(T)"] == pytest.approx(9.948 * cfg.pauc_scale / 1000)
    fw_t = pauc[(pauc["dataset"] == "Adience-like") & (pauc["fr_model"] == head.fr_model)
                & np.isclose(pauc["fmr"], head.fmr) & (pauc["method"] == "EX-FIQA-FW")
                & (pauc["quality_model"] == next(q for q, (t, _) in tags.items() if t == "T"))]["pauc"]
    assert vs.loc["EX-FIQA-FW(T)", "this_run"] == pytest.approx(float(fw_t.iloc[0]))
    sec = secondary_reference(pauc, {k: s.label for k, s in cfg.datasets.items()}, tags, head, cfg.pauc_scale)
    assert sec.set_index("benchmark").loc["ijbc", "dataset"] == "(not in this run)"
    # the paired bootstrap the findings rest on runs without IJB-C, one row per compared dataset
    boot = fusion_bootstrap(study, head.fr_model, head.fmr, 20, unit="subject")
    assert set(boot["dataset"]) == {s.label for s in cfg.datasets.values()}
    paired = paper_findings(pauc.drop(columns="resolved"), tags, head, adience="Adience-like", paired=boot)
    assert paired["finding"].str.endswith(": Adience-like").any()


def test_with_ijbc_nothing_stands_in(tiny_config):
    study = open_study(tiny_config, progress=False)
    cfg = study.config
    pauc = pauc_all(study, scale=cfg.pauc_scale)
    head = headline(cfg)
    assert head.dataset == "ijbc" and headline_note(head) == ""
    findings = paper_findings(pauc, variant_tags(study), head).set_index("finding")
    assert not findings["this_run"].str.contains("in place of IJB-C").any()
    vs = headline_vs_paper(pauc, head, variant_tags(study), cfg.pauc_scale).set_index("method")
    assert vs.loc["ViT-FIQA(T)", SECONDARY_SOURCE] == pytest.approx(6.563 * cfg.pauc_scale / 1000)
