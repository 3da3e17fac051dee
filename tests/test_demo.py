"""The demo world: cached, byte-identical from the same seed, and meaningful (floors a little
below the numbers recorded in bench/RESULTS.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from exfiqa.config import load_config
from exfiqa.demo import DemoSpec, build_demo, ensure_demo
from exfiqa.metrics import verification_accuracy
from exfiqa.pipeline import Study

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_world_is_byte_identical_and_cached(tiny_world, tmp_path):
    again = tmp_path / "again"
    build_demo(again, DemoSpec.tiny(), log=lambda *_: None)
    first = json.loads((tiny_world / "manifest.json").read_text())["files"]
    second = json.loads((again / "manifest.json").read_text())["files"]
    assert first == second  # same files, same SHA-256
    for name in ("benchmarks/lfw.bin", "fr/magface.pt", "vitfiqa/vitfiqa_token.pt", "benchmarks/ijbc/meta/ijbc_name_5pts_score.txt"):
        assert name in first
    samples = [first[f"samples/{t}.png"] for t in ("child", "frontal", "occlusion", "pose")]
    assert len(set(samples)) == 4  # four different faces for the attention figure
    messages: list[str] = []
    t0 = time.perf_counter()
    build_demo(again, DemoSpec.tiny(), log=messages.append)
    assert time.perf_counter() - t0 < 2 and "up to date" in messages[0]


def test_build_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="not made by exfiqa.demo"):
        build_demo(tmp_path, DemoSpec.tiny(), log=lambda *_: None)
    assert (tmp_path / "mine.txt").read_text() == "a user's file"


@pytest.fixture(scope="module")
def default_world():
    root = ROOT / "data" / "demo"
    ensure_demo(root, log=print)
    return root


def test_demo_world_means_something(default_world):
    report = json.loads((default_world / "report.json").read_text())
    for name, fr in report["fr"].items():
        assert fr["clean_accuracy"] >= FLOORS["fr_clean_accuracy"], name
        assert fr["mated_similarity_vs_severity_spearman"] <= FLOORS["fr_mated_sim_vs_severity"], name
    for tag, q in report["vitfiqa"].items():
        assert q["spearman_vs_neg_severity"][-1] >= FLOORS["vit_spearman_neg_severity"], tag
        assert q["spearman_vs_cr"][-1] >= FLOORS["vit_spearman_cr"], tag
        assert q["last_exit_pauc_over_random"] <= FLOORS["vit_pauc_over_random"], tag
        # the exits differ: the analysis has something to show
        assert np.ptp(q["spearman_vs_neg_severity"]) > 0.03, tag


def test_report_numbers_hold_through_the_pipeline(default_world):
    """Recompute two report numbers by an independent path: the cached pipeline + scipy."""
    cfg = load_config(ROOT / "configs" / "demo.yaml", cwd=ROOT)
    study = Study(cfg, progress=False)
    truth = pd.read_csv(default_world / "ground_truth" / "adience.csv")
    for q in ("T", "C"):
        rho = spearmanr(study.exit_scores("adience", q)[:, -1], -truth["severity"]).statistic
        assert rho >= FLOORS["vit_spearman_neg_severity"], q
    lfw_truth = pd.read_csv(default_world / "ground_truth" / "lfw.csv")["severity"].to_numpy()
    for fr in cfg.fr_models:
        table = study.table("lfw", fr, "T")
        clean = (lfw_truth[table["a"]] == 0) & (lfw_truth[table["b"]] == 0)
        acc = verification_accuracy(table["similarity"][clean], table["mated"][clean]).mean
        assert acc >= FLOORS["fr_clean_accuracy"], fr


# A little below the numbers measured on the default world (bench/RESULTS.md): FR clean accuracy
# 0.917-0.947, mated similarity vs severity -0.34..-0.40, last exit vs -severity 0.16 (T) and
# 0.25 (C), vs CR 0.38 (T) and 0.41 (C), XQLFW-like pAUC 0.97x random. The targets (97%,
# Spearman 0.5, 0.75x random) are not reached by this CPU-sized world; see bench/RESULTS.md.
FLOORS = {
    "fr_clean_accuracy": 0.88,
    "fr_mated_sim_vs_severity": -0.25,
    "vit_spearman_neg_severity": 0.10,
    "vit_spearman_cr": 0.25,
    "vit_pauc_over_random": 1.0,
}
