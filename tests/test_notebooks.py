"""The four notebooks, executed with papermill on the demo world, produce every figure and table.

This is the slow end-to-end test: it builds the default demo world if `make demo` has not (about
10 minutes on 2 cores, cached in data/demo) and executes the notebooks (a few minutes; embeddings
and scores are cached in data/cache).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import entropy, rankdata

from exfiqa.config import load_config
from exfiqa.evaluation import fusion
from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.pauc import pauc, pauc_resolved
from exfiqa.evaluation.verification import eer
from exfiqa.extract import Models
from exfiqa.paper import NOTEBOOKS, run_paper
from exfiqa.report.attention import attention_maps
from exfiqa.report.findings import VERDICTS
from exfiqa.study import Study

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_FIGURES = [
    "edc_grid_T_arcface", "edc_grid_C_arcface", "rank_correlation_T", "rank_correlation_C",
    "score_distributions_T", "score_distributions_C",  # 01
    "attention_T", "attention_C", "attention_entropy_spread",  # 02
    "fusion_bootstrap",  # 03
    "pauc_vs_gflops_T", "pauc_vs_gflops_C",  # 04
]
EXPECTED_TABLES = [
    "fr_sanity", "pauc_all", "pauc_per_exit_T", "pauc_per_exit_C", "depth_summary", "rank_correlation_T", "rank_correlation_C",
    "attention_statistics",
    "headline_vs_paper", "secondary_reference", "paper_findings", "fusion_vs_exits", "fusion_wins", "fusion_bootstrap",
    "fusion_strategies", "bootstrap_units", "chosen_exits", "chosen_exits_pauc", "chosen_exits_bootstrap", "comparison_table",
    "gflops_released", "latency_per_exit", "operating_points", "adaptive_exit", "runtime_early_exit",
]


def test_paired_ipynb_match_their_sources_and_carry_no_outputs():
    for name in NOTEBOOKS:
        src = jupytext.read(ROOT / "notebooks" / f"{name}.py")
        paired = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert [(c.cell_type, c.source) for c in src.cells] == [(c.cell_type, c.source) for c in paired.cells], (
            f"notebooks/{name}.ipynb is out of sync with {name}.py: run `make notebooks`"
        )
        assert all(not c.get("outputs") for c in paired.cells if c.cell_type == "code")
        params = [c for c in src.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{name}: exactly one parameters cell"


_EVALUATED = {"config", "datasets", "fr_models", "quality_models", "data_root", "fmr_targets", "discard_limit",
              "convention", "pauc_scale", "out_dir"}
#: The study settings (open_study's) each notebook declares: those its section uses, and no other.
STUDY_PARAMETERS = {
    "01_layer_analysis": _EVALUATED,
    "02_attention": {"config", "datasets", "quality_models", "data_root", "attention_samples", "device", "batch_size",
                     "seed", "out_dir"},
    "03_fusion": _EVALUATED | {"seed"},
    "04_early_exit": _EVALUATED | {"device", "seed"},
}
#: Parameters that mirror a config setting: they default to None (= the config's value).
FROM_CONFIG = {"fmr_targets", "discard_limit", "convention", "pauc_scale", "device", "batch_size", "seed", "headline_fmr", "cost_fmr"}


def test_parameters_that_mirror_the_config_default_to_none():
    import papermill as pm

    for name in NOTEBOOKS:
        params = pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
        mirrored = FROM_CONFIG & set(params)
        assert FROM_CONFIG & STUDY_PARAMETERS[name] <= mirrored, name
        assert all(params[p]["default"] == "None" for p in mirrored), {p: params[p]["default"] for p in mirrored}


def test_papermill_sees_every_parameter():
    import papermill as pm

    every = set().union(*STUDY_PARAMETERS.values())
    for name in NOTEBOOKS:
        params = pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
        assert every & set(params) == STUDY_PARAMETERS[name], f"{name}: papermill sees {sorted(every & set(params))}"
        assert all(p["help"] for p in params.values()), name


#: Tables too long for a float: CSV only (:data:`exfiqa.report.tables.MAX_FLOAT_LINES`).
CSV_ONLY = {"pauc_all"}


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    results = tmp_path_factory.mktemp("paper")
    raw.update(
        run_name="test", data_root=str(ROOT / raw["data_root"]), cache_dir=str(ROOT / raw["cache_dir"]),
        results_dir=str(results),
    )
    config = results / "demo.yaml"
    config.write_text(yaml.safe_dump(raw))
    with contextlib.chdir(results):  # as `make paper` from a checkout: the notebooks get paths relative to it
        return run_paper(str(config), log=print), config


def test_no_absolute_path_of_the_machine_in_the_results(paper_run):
    """No file of the run names the repository, the data root or the results folder by its
    absolute path: not the run card, the index, the executed notebooks' injected parameters and
    papermill metadata, nor a table."""
    out, config = paper_run
    cfg = load_config(config)
    needles = {str(p) for base in (ROOT, cfg.data_root, config.parent) for p in (Path(base), Path(base).resolve())}
    files = [p for p in out.rglob("*") if p.suffix in {".json", ".html", ".ipynb", ".csv", ".tex", ".md"}]
    assert {"index.html", "run_card.json", "01_layer_analysis.ipynb", "01_layer_analysis.html"} <= {p.name for p in files}
    found = [f"{p.relative_to(out)}: {n}" for p in files for n in sorted(needles) if n.encode() in p.read_bytes()]
    assert not found, found
    nb = nbformat.read(out / "notebooks" / "01_layer_analysis.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"] == {"config": "demo.yaml", "out_dir": "test"}
    for name in NOTEBOOKS:  # self-contained: nothing loaded from a CDN
        page = (out / "notebooks" / f"{name}.html").read_text()
        assert "cdnjs" not in page and '<script src="http' not in page, name


def test_every_figure_and_table_tex_fits_an_ieee_page(paper_run, tmp_path):
    """Every table of the run compiles alone, with only the packages its first line declares, in
    an IEEE two-column page without an overfull box: a ``table`` fits a column, a ``table*`` the
    text width."""
    from test_latex_tables import assert_compiles  # tests/ is on sys.path

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not on PATH: the tables are not compiled (install texlive-latex-base and "
                    "texlive-latex-recommended)")
    out, _ = paper_run
    texs = sorted((out / "tables").glob("*.tex"))
    assert {p.stem for p in texs} == set(EXPECTED_TABLES)
    for path in texs:
        assert path.read_text().startswith("% requires: booktabs" if path.stem not in CSV_ONLY else "% CSV only"), path.stem
    assert_compiles(texs, tmp_path)


def test_every_figure_and_table_is_produced(paper_run):
    out, _ = paper_run
    for name in EXPECTED_FIGURES:
        png, pdf = out / "figures" / f"{name}.png", out / "figures" / f"{name}.pdf"
        assert png.stat().st_size > 5_000, name
        data = pdf.read_bytes()
        assert data[:5] == b"%PDF-", name
        # fonts embedded as TrueType (Type 42, /FontFile2), never Type 3 (IEEE's PDF check refuses those)
        assert b"/Type3" not in data and b"/FontFile2" in data, name
    import pandas as pd

    for name in EXPECTED_TABLES:
        frame = pd.read_csv(out / "tables" / f"{name}.csv")
        assert len(frame) > 0, name
        tex = (out / "tables" / f"{name}.tex").read_text()
        # CSV only: too long for a float, its .tex typesets nothing (the caption says so)
        assert tex.count("\\toprule") == (0 if name in CSV_ONLY else 1), name
        assert tex.startswith("% CSV only") == (name in CSV_ONLY), name
    for name in NOTEBOOKS:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, name
        assert (out / "notebooks" / f"{name}.html").stat().st_size > 10_000
    pauc = pd.read_csv(out / "tables" / "pauc_all.csv")
    assert set(pauc["convention"]) == {"recompute"} and set(pauc["limit"]) == {0.3} and set(pauc["scale"]) == {1000.0}
    findings = pd.read_csv(out / "tables" / "paper_findings.csv")
    assert len(findings) >= 6 and set(findings["verdict"]) <= set(VERDICTS)


# ------------------------------------------------------------------------------ every table, one cell recomputed
#
# Each written table gets at least one cell recomputed here from the Study's arrays (exit scores,
# baselines, similarities) with exfiqa.evaluation's materialised functions (edc + pauc
# on explicit similarity / mated / pair-quality vectors), independently of the Study's bounded
# path (orders, scores objects) and of the notebooks' assembly (pivots, means, wins, labels).


class Direct:
    """Direct computations on the run's arrays: pair quality = min of the two sides (templates:
    min over each template's samples, by pandas), pAUC = pauc(edc(...)) x scale."""

    def __init__(self, config: Path) -> None:
        self.study = Study(load_config(config), progress=False)
        self.cfg = self.study.config
        self.head = self.cfg.headline  # {dataset, fr_model, fmr} of configs/demo.yaml
        self.cost_fmr = min(self.cfg.fmr_targets)  # notebook 04's cost_fmr default
        self.first = next(iter(self.cfg.datasets))  # of the rank correlations (01) and the attention mean (02)
        self._sim: dict[tuple[str, str], np.ndarray] = {}

    def label(self, ds: str) -> str:
        return self.cfg.datasets[ds].label

    def comparisons(self, ds: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Side rows a, b of every comparison (templates: rows of the sorted template ids), mated."""
        bench = self.study.benchmark(ds)
        comp = bench.comparisons  # materialised, also Adience's all-vs-all (51k pairs in the demo world)
        a, b = comp["a"].to_numpy(), comp["b"].to_numpy()
        if bench.level == "template":
            tids = np.unique(bench.samples["template_id"].to_numpy())
            a, b = np.searchsorted(tids, a), np.searchsorted(tids, b)
        return a, b, comp["mated"].to_numpy(bool)

    def sides(self, ds: str, per_sample: np.ndarray) -> np.ndarray:
        bench = self.study.benchmark(ds)
        if bench.level != "template":
            return per_sample
        return pd.Series(per_sample).groupby(bench.samples["template_id"].to_numpy()).min().to_numpy()

    def similarity(self, ds: str, fr: str) -> np.ndarray:
        if (ds, fr) not in self._sim:
            self._sim[(ds, fr)] = np.asarray(self.study.similarity(ds, fr))
        return self._sim[(ds, fr)]

    def pauc(self, ds: str, fr: str, per_sample: np.ndarray, fmr: float) -> float:
        a, b, mated = self.comparisons(ds)
        v = self.sides(ds, np.asarray(per_sample, dtype=np.float32))  # every quality is evaluated in float32
        c = self.cfg
        curve = edc(self.similarity(ds, fr), mated, np.minimum(v[a], v[b]), fmr, c.convention,
                            threshold_rule=c.threshold_rule, acceptance=c.acceptance)
        return pauc(curve, c.discard_limit, c.subtract_best) * c.pauc_scale

    def resolved(self, ds: str, fr: str, per_sample: np.ndarray, fmr: float) -> bool:
        """Whether that pAUC's FMR target is resolvable (materialised curve, pauc_resolved)."""
        a, b, mated = self.comparisons(ds)
        v = self.sides(ds, np.asarray(per_sample, dtype=np.float32))
        c = self.cfg
        curve = edc(self.similarity(ds, fr), mated, np.minimum(v[a], v[b]), fmr, c.convention,
                            threshold_rule=c.threshold_rule, acceptance=c.acceptance)
        return pauc_resolved(curve, c.discard_limit)

    def exits(self, ds: str, q: str) -> np.ndarray:
        return np.asarray(self.study.exit_scores(ds, q), dtype=np.float64)

    def mean_pauc(self, values, fmr: float) -> float:
        """Mean over every dataset x FR model of the pAUC of ``values(ds)`` (per-sample scores)."""
        return float(np.mean([self.pauc(ds, fr, values(ds), fmr) for ds in self.cfg.datasets for fr in self.cfg.fr_models]))

    def mated_label(self, ds: str, fr: str) -> np.ndarray:
        """EX-FIQA-DC's pseudo-label: each side's mean mated similarity (NaN: no mated comparison)."""
        a, b, mated = self.comparisons(ds)
        bench = self.study.benchmark(ds)
        n = len(bench) if bench.level == "sample" else bench.samples["template_id"].nunique()
        sim = self.similarity(ds, fr)[mated].astype(np.float64)
        mean = pd.Series(np.concatenate([sim, sim])).groupby(np.concatenate([a[mated], b[mated]])).mean()
        return mean.reindex(range(n)).to_numpy()


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def _cell(frame: pd.DataFrame, column: str, **where):
    rows = frame
    for key, value in where.items():
        rows = rows[np.isclose(rows[key], value)] if isinstance(value, float) else rows[rows[key] == value]
    assert len(rows) == 1, f"{where}: {len(rows)} rows"
    return rows[column].iloc[0]


def _close(value, expected, rel=1e-9):
    assert value == pytest.approx(expected, rel=rel, abs=1e-12), (value, expected)


def check_fr_sanity(d: Direct, t):
    # EER of LFW-like / arcface from the similarities, which equal the float64 cosine of the embeddings
    a, b, mated = d.comparisons("lfw")
    emb = np.asarray(d.study.embeddings("lfw", "arcface"), dtype=np.float64)
    cos = np.sum(emb[a] * emb[b], 1) / (np.linalg.norm(emb[a], axis=1) * np.linalg.norm(emb[b], axis=1))
    sim = d.similarity("lfw", "arcface")
    np.testing.assert_allclose(sim, cos, atol=1e-5)
    _close(_cell(t["fr_sanity"], "eer", dataset="LFW-like", fr_model="arcface"), eer(sim[~mated], sim[mated]))


def check_pauc_all(d: Direct, t):
    # an exit on a pair list, and a baseline on Adience's all-vs-all set
    _close(_cell(t["pauc_all"], "pauc", quality_model="T", fr_model="arcface", dataset="LFW-like", method="Exit 5", fmr=1e-3),
           d.pauc("lfw", "arcface", d.exits("lfw", "T")[:, 4], 1e-3))
    # LFW-like has 300 non-mated comparisons: FMR 1e-3 is not resolvable there (and 1e-2 is, at every level to 0.3)
    _, _, mated = d.comparisons("lfw")
    assert (~mated).sum() == 300
    for fmr, expect in ((1e-3, False), (1e-2, d.resolved("lfw", "arcface", d.exits("lfw", "T")[:, 4], 1e-2))):
        assert _cell(t["pauc_all"], "resolved", quality_model="T", fr_model="arcface", dataset="LFW-like", method="Exit 5",
                     fmr=fmr) == expect
    _close(_cell(t["pauc_all"], "pauc", quality_model="C", fr_model="elasticface", dataset="Adience-like", method="sharpness",
                 fmr=1e-2), d.pauc("adience", "elasticface", np.asarray(d.study.baseline_scores("adience", "sharpness")), 1e-2))


def check_pauc_per_exit_T(d: Direct, t):
    # EX-FIQA-FW (T), CFP-FP-like / elasticface, at the headline FMR
    _close(_cell(t["pauc_per_exit_T"], "CFP-FP-like / elasticface", method="EX-FIQA-FW"),
           d.pauc("cfp_fp", "elasticface", fusion.ex_fiqa_fw(d.exits("cfp_fp", "T")), d.head["fmr"]))
    flagged = str(_cell(t["pauc_per_exit_T"], "unresolved_in", method="EX-FIQA-FW")).split("; ")
    assert ("CFP-FP-like / elasticface" in flagged) == (not d.resolved("cfp_fp", "elasticface", fusion.ex_fiqa_fw(d.exits("cfp_fp", "T")), d.head["fmr"]))


def check_pauc_per_exit_C(d: Direct, t):
    # Exit 1 (C) on the template benchmark IJB-C-like / arcface
    _close(_cell(t["pauc_per_exit_C"], "IJB-C-like / arcface", method="Exit 1"),
           d.pauc("ijbc", "arcface", d.exits("ijbc", "C")[:, 0], d.head["fmr"]))


def check_depth_summary(d: Direct, t):
    # (T) pauc_exit_1: the mean over every dataset x FR model of Exit 1's pAUC at the headline FMR
    _close(_cell(t["depth_summary"], "pauc_exit_1", quality_model="T"),
           d.mean_pauc(lambda ds: d.exits(ds, "T")[:, 0], d.head["fmr"]))


def check_rank_correlation_T(d: Direct, t):
    # Spearman of Exit 1 and Exit 12 (T) on the run's first dataset
    s = np.asarray(d.study.exit_scores(d.first, "T"))
    _close(_cell(t["rank_correlation_T"], "Exit 12", method="Exit 1"), _spearman(s[:, 0], s[:, 11]))


def check_rank_correlation_C(d: Direct, t):
    # Spearman of EX-FIQA-FW (float32, as every quality) and Exit 6 (C) on the run's first dataset
    s = np.asarray(d.study.exit_scores(d.first, "C"))
    fw = fusion.ex_fiqa_fw(s).astype(np.float32)
    _close(_cell(t["rank_correlation_C"], "Exit 6", method="EX-FIQA-FW"), _spearman(fw, s[:, 5]))


def check_attention_statistics(d: Direct, t):
    # (T) exit 1: mean entropy of the attention maps over notebook 02's seeded draw of 256 images
    # of the run's first dataset (scipy's entropy), and the uniform map's entropy log(g^2)
    cfg, bench = d.cfg, d.study.benchmark(d.first)
    ids = np.sort(np.random.default_rng(cfg.seed).choice(len(bench), size=min(256, len(bench)), replace=False))
    model = Models(d.cfg).quality_model("T")
    maps = attention_maps(model, np.stack([bench.image(int(i)) for i in ids]), batch_size=cfg.batch_size,
                                   device=cfg.device)
    stats = t["attention_statistics"]
    _close(_cell(stats, "entropy_mean", quality_model="T", exit=1),
           float(entropy(maps[:, 0].reshape(len(ids), -1).astype(np.float64), axis=1).mean()), rel=1e-5)
    _close(_cell(stats, "max_entropy", quality_model="T", exit=1), np.log(model.config.grid_size**2))
    norm = float(entropy(maps[:, 0].reshape(len(ids), -1).astype(np.float64), axis=1).mean()) / np.log(model.config.grid_size**2)
    _close(_cell(stats, "normalised_entropy", quality_model="T", exit=1), norm, rel=1e-5)
    assert _cell(stats, "low_contrast", quality_model="T", exit=1) == (norm >= 0.99)


def check_headline_vs_paper(d: Direct, t):
    # EX-FIQA-FW(T): this run at the headline (IJB-C-like, arcface, 1e-3); the poster's 6.36 at scale 1000
    h = d.head
    _close(_cell(t["headline_vs_paper"], "this_run", method="EX-FIQA-FW(T)"),
           d.pauc(h["dataset"], h["fr_model"], fusion.ex_fiqa_fw(d.exits(h["dataset"], "T")), h["fmr"]))
    _close(_cell(t["headline_vs_paper"], "paper", method="EX-FIQA-FW(T)"), 6.36 * d.cfg.pauc_scale / 1000)


def check_secondary_reference(d: Direct, t):
    # plain ViT-FIQA (T) = its last exit on the demo's CFP-FP-like set (config key cfp_fp) at the
    # headline FR model and FMR; the transcribed PreFIQs value 3.568 x10^3 at the run's scale
    h, ref = d.head, t["secondary_reference"]
    _close(_cell(ref, "this_run", benchmark="cfp_fp"), d.pauc("cfp_fp", h["fr_model"], d.exits("cfp_fp", "T")[:, -1], h["fmr"]))
    _close(_cell(ref, "PreFIQs (secondary transcription)", benchmark="cfp_fp"), 3.568 * d.cfg.pauc_scale / 1000)
    assert _cell(ref, "dataset", benchmark="agedb_30") == "(not in this run)"
    assert np.isnan(_cell(ref, "this_run", benchmark="agedb_30"))


def _fw_wins(d: Direct, q: str, fr: str, fmr: float) -> int:
    return sum(d.pauc(ds, fr, fusion.ex_fiqa_fw(d.exits(ds, q)), fmr) < d.pauc(ds, fr, d.exits(ds, q)[:, -1], fmr)
               for ds in d.cfg.datasets)


def check_paper_findings(d: Direct, t):
    # "FW beats the last exit (C)": per dataset, the difference from direct pAUCs (headline FR model
    # and FMR) and a verdict that follows its paired interval; the summary counts resolved wins only
    fr, fmr = d.head["fr_model"], d.head["fmr"]
    f = t["paper_findings"].set_index("finding")
    # datasets x FR models with an unresolvable pAUC at the headline FMR are left out (pauc_all's flags);
    # a set whose whole non-mated count cannot resolve the FMR (fmr x n_nm < 1) is among them
    at = t["pauc_all"][np.isclose(t["pauc_all"]["fmr"], fmr)]
    bad = at[~at["resolved"].astype(bool)].groupby(["dataset", "fr_model"]).size().index
    listed = f.loc["left out: unresolvable FMR target", "this_run"].split("; ")
    assert sorted(listed) == sorted(f"{ds} with {m}" for ds, m in bad)
    for ds in d.cfg.datasets:
        n_nm = int((~d.comparisons(ds)[2]).sum())
        if fmr * n_nm < 1:
            assert f"{d.label(ds)} with {fr}" in listed, (ds, n_nm)
    kept = [ds for ds in d.cfg.datasets if (d.label(ds), fr) not in set(bad)]
    n = len(kept)
    won = point = 0
    for ds in kept:
        s = d.exits(ds, "C")
        fw, last = d.pauc(ds, fr, fusion.ex_fiqa_fw(s), fmr), d.pauc(ds, fr, s[:, -1], fmr)
        row = f.loc[f"FW beats the last exit (C): {d.label(ds)}"]
        _close(row["difference"], fw - last, rel=1e-6)
        expect = ("tie" if fw == pytest.approx(last, rel=1e-9, abs=0) else "agrees" if row["ci_high"] < 0
                  else "differs" if row["ci_low"] > 0 else "not resolved")
        assert row["verdict"] == expect, (ds, row["verdict"], expect)
        won += expect == "agrees"
        point += fw < last and expect != "tie"
    summary = f.loc["FW beats the last exit (C)"]
    assert summary["this_run"].startswith(f"FW better on {won} of {n} datasets with {fr}"), summary["this_run"]
    assert f"lower pAUC (point estimate) on {point} of {n}" in summary["this_run"], summary["this_run"]
    assert (summary["verdict"] == "agrees") == (2 * won > n)
    # "middle exits best on IJB-C (C)": every exit tied for the lowest pAUC is named
    s = d.exits(d.head["dataset"], "C")
    per_exit = np.array([d.pauc(d.head["dataset"], fr, s[:, k], fmr) for k in range(s.shape[1])])
    best = [f"Exit {k + 1}" for k in np.flatnonzero(np.isclose(per_exit, per_exit.min(), rtol=1e-9, atol=0))]
    text = ", ".join(best) + (" (tie)" if len(best) > 1 else "")
    assert f"with {fr}: {text} (pAUC" in f.loc["middle exits best on IJB-C (C)", "this_run"]
    # "depth gains (T)": the change exit 1 -> last on the headline dataset, one row with its interval
    s = d.exits(d.head["dataset"], "T")
    row = f.loc[f"depth gains (T): {d.label(d.head['dataset'])}"]
    _close(row["difference"], d.pauc(d.head["dataset"], fr, s[:, -1], fmr) - d.pauc(d.head["dataset"], fr, s[:, 0], fmr), rel=1e-6)
    assert row["ci_low"] <= row["ci_high"]


def check_fusion_vs_exits(d: Direct, t):
    # (C, magface, XQLFW-like): EX-FIQA-F's pAUC, and the best single exit (argmin over the 12 exits)
    fmr, s = d.head["fmr"], d.exits("xqlfw", "C")
    where = {"quality_model": "C", "fr_model": "magface", "dataset": "XQLFW-like"}
    _close(_cell(t["fusion_vs_exits"], "EX-FIQA-F", **where), d.pauc("xqlfw", "magface", fusion.ex_fiqa_f(s), fmr))
    per_exit = np.array([d.pauc("xqlfw", "magface", s[:, k], fmr) for k in range(s.shape[1])])
    best = [f"Exit {k + 1}" for k in np.flatnonzero(np.isclose(per_exit, per_exit.min(), rtol=1e-9, atol=0))]
    assert _cell(t["fusion_vs_exits"], "best single exit", **where) == ", ".join(best) + (" (tie)" if len(best) > 1 else "")
    _close(_cell(t["fusion_vs_exits"], "best exit pAUC", **where), min(per_exit))


def check_fusion_wins(d: Direct, t):
    # (T, elasticface, FMR 1e-2): datasets on which FW has a lower pAUC than Exit 12
    _close(_cell(t["fusion_wins"], "wins", quality_model="T", fr_model="elasticface", fmr=1e-2), _fw_wins(d, "T", "elasticface", 1e-2))


def check_fusion_bootstrap(d: Direct, t):
    # the point estimate delta_pauc of EX-FIQA-FW (T) on IJB-C-like: pAUC(FW) - pAUC(Exit 12)
    fr, fmr, s = d.head["fr_model"], d.head["fmr"], d.exits("ijbc", "T")
    _close(_cell(t["fusion_bootstrap"], "delta_pauc", quality_model="T", dataset="IJB-C-like", method="EX-FIQA-FW"),
           d.pauc("ijbc", fr, fusion.ex_fiqa_fw(s), fmr) - d.pauc("ijbc", fr, s[:, -1], fmr))


def check_bootstrap_units(d: Direct, t):
    # the units the bootstrap resampled: Adience-like identities (from the samples table), and the
    # LFW-like pairs whose encoded image bytes also occur in another pair (hashed here)
    import collections
    import hashlib

    from exfiqa.readers.bin import _load_bin

    bench = d.study.benchmark("adience")
    assert _cell(t["bootstrap_units"], "n_units", dataset="Adience-like") == bench.samples["identity"].nunique()
    assert set(t["fusion_bootstrap"]["unit"]) == set(t["bootstrap_units"]["unit"])
    bins, _ = _load_bin(Path(d.cfg.datasets["lfw"].args["path"]))
    h = [hashlib.sha256(x).hexdigest() for x in bins]
    pairs_of = collections.defaultdict(set)
    for k, x in enumerate(h):
        pairs_of[x].add(k // 2)
    shared = np.mean([len(pairs_of[h[2 * p]]) > 1 or len(pairs_of[h[2 * p + 1]]) > 1 for p in range(len(h) // 2)])
    _close(_cell(t["bootstrap_units"], "images_in_another_pair", dataset="LFW-like"), shared)


def check_fusion_strategies(d: Direct, t):
    # exp-depth (C) on LFW-like: w_l ~ exp(0.3 l), headline FR model and FMR
    s = d.exits("lfw", "C")
    _close(_cell(t["fusion_strategies"], "LFW-like", quality_model="C", strategy="exp-depth"),
           d.pauc("lfw", d.head["fr_model"], fusion.fuse(s, fusion.exponential_weights(s.shape[1], 0.3)), d.head["fmr"]))


def _dc_exits(t, q: str, label: str) -> list[int]:
    return [int(k) for k in _cell(t["chosen_exits"], "chosen_exits", quality_model=q, dataset=label).split(",")]


def check_chosen_exits(d: Direct, t):
    # (T, LFW-like): the best single exit and its correlation, from the Spearman correlation of each
    # exit's side scores with the mean mated similarity, averaged over the other datasets
    fr, others = d.head["fr_model"], [ds for ds in d.cfg.datasets if ds != "lfw"]
    rho = []
    for ds in others:
        label = d.mated_label(ds, fr)
        keep = np.isfinite(label)
        s = d.exits(ds, "T")
        rho.append([_spearman(d.sides(ds, s[:, k])[keep], label[keep]) for k in range(s.shape[1])])
    mean = np.mean(rho, axis=0)
    assert _cell(t["chosen_exits"], "best_single_exit", quality_model="T", dataset="LFW-like") == int(np.argmax(mean)) + 1
    _close(_cell(t["chosen_exits"], "rho_best_exit", quality_model="T", dataset="LFW-like"), mean.max(), rel=1e-5)
    assert _cell(t["chosen_exits"], "calibrated_on", quality_model="T", dataset="LFW-like") == "; ".join(map(d.label, others))


def check_chosen_exits_pauc(d: Direct, t):
    # EX-FIQA-DC (T) on LFW-like: the mean of the exits chosen for LFW-like
    s = d.exits("lfw", "T")
    _close(_cell(t["chosen_exits_pauc"], "LFW-like", quality_model="T", method="EX-FIQA-DC"),
           d.pauc("lfw", d.head["fr_model"], fusion.chosen_mean(s, _dc_exits(t, "T", "LFW-like")), d.head["fmr"]))


def check_chosen_exits_bootstrap(d: Direct, t):
    # the point estimate delta_pauc of DC against FW (C) on CFP-FP-like: pAUC(DC) - pAUC(FW)
    fr, fmr, s = d.head["fr_model"], d.head["fmr"], d.exits("cfp_fp", "C")
    dc = d.pauc("cfp_fp", fr, fusion.chosen_mean(s, _dc_exits(t, "C", "CFP-FP-like")), fmr)
    _close(_cell(t["chosen_exits_bootstrap"], "delta_pauc", quality_model="C", dataset="CFP-FP-like", reference="EX-FIQA-FW"),
           dc - d.pauc("cfp_fp", fr, fusion.ex_fiqa_fw(s), fmr))


def check_comparison_table(d: Direct, t):
    # the SER-FIQ baseline on the headline dataset (IJB-C-like), headline FR model and FMR
    h = d.head
    _close(_cell(t["comparison_table"], "IJB-C-like", method="SER-FIQ-style (re-impl.)"),
           d.pauc(h["dataset"], h["fr_model"], np.asarray(d.study.baseline_scores(h["dataset"], "serfiq")), h["fmr"]))


def check_gflops_released(d: Direct, t):
    # (C) released, exit 7, by hand (N = 144 patches, D = F = 512, patch 9, FLOPs = 2 MACs):
    # patch embedding 2*144*512*3*81, 7 blocks of 2*(12*N*D^2 + 2*N^2*D), head 2*(N*D*F + F^2 + F)
    # + LayerNorm 2*N*D + two BatchNorms 2*2F + 2F: 6.751064064 GFLOPs (the paper: 6.75)
    n, dim = 144, 512
    flops = 2 * n * dim * 3 * 81 + 7 * 2 * (12 * n * dim**2 + 2 * n**2 * dim)
    flops += 2 * (n * dim * dim + dim * dim + dim) + 2 * n * dim + 4 * dim + 2 * dim
    _close(_cell(t["gflops_released"], "gflops", model="ViT-FIQA (C) released", exit="7"), flops / 1e9)


def check_latency_per_exit(d: Direct, t):
    # measured wall time: no computation reproduces it; the rows (each model x every exit and the
    # one-pass row) and that each is a positive, finite time are checked
    lat = t["latency_per_exit"]
    models = [*d.cfg.quality_models, "T full-size", "C full-size"]
    assert list(lat["model"].unique()) == models
    for m in models:
        assert list(lat[lat["model"] == m]["exit"]) == [str(k) for k in range(1, 13)] + ["all (one pass)"], m
    assert np.isfinite(lat["ms_per_image"]).all() and (lat["ms_per_image"] > 0).all()
    # every row (the one-pass row too) timed alike: the same repeats, median inside its interquartile range
    assert lat["repeats"].nunique() == 1 and lat["repeats"].iloc[0] >= 3
    assert (lat["ms_min"] <= lat["ms_q25"]).all() and (lat["ms_q25"] <= lat["ms_per_image"]).all()
    assert (lat["ms_per_image"] <= lat["ms_q75"]).all() and (lat["ms_q75"] <= lat["ms_max"]).all()


def check_runtime_early_exit(d: Direct, t):
    # measured wall time: the rows (each quality model: the full pass, its operating points' exits,
    # the adaptive run) and the analytic saving of a fixed exit, recomputed from the FLOP counts
    rt, ops = t["runtime_early_exit"], t["operating_points"]
    from exfiqa.extract.models import Models
    from exfiqa.models.flops import exit_costs

    for q in d.cfg.quality_models:
        part = rt[rt["quality_model"] == q]
        picked = sorted({int(m.split()[1]) for m in ops[ops["quality_model"] == q]["method"] if m.startswith("Exit ")})
        assert list(part["run"]) == ["full pass (Exit 12)", *[f"Exit {k} (fixed)" for k in picked], "adaptive"], q
        assert np.isfinite(part["ms_per_image"]).all() and (part["ms_per_image"] > 0).all()
        assert part["measured_speedup"].iloc[0] == 1.0 and 3 <= part["mean_exit"].iloc[-1] <= 12
    k = int(rt[(rt["quality_model"] == "C") & rt["run"].str.endswith("(fixed)")]["exit"].iloc[0])
    arch = Models(d.cfg).quality_model("C").config  # exit_costs itself is checked by hand in check_gflops_released
    _close(_cell(rt, "flop_saving", quality_model="C", run=f"Exit {k} (fixed)"), exit_costs(arch)[k - 1].saving)


def check_operating_points(d: Direct, t):
    # (C) max efficiency: mean_pauc of the exit it picked, over every dataset x FR model at cost_fmr
    method = _cell(t["operating_points"], "method", quality_model="C", scenario="max efficiency")
    k = int(method.split()[1])
    _close(_cell(t["operating_points"], "mean_pauc", quality_model="C", scenario="max efficiency"),
           d.mean_pauc(lambda ds: d.exits(ds, "C")[:, k - 1], d.cost_fmr))


def check_adaptive_exit(d: Direct, t):
    # (T, LFW-like): pAUC of the full-depth FW score at cost_fmr, headline FR model
    _close(_cell(t["adaptive_exit"], "pauc_fw_all_exits", quality_model="T", dataset="LFW-like"),
           d.pauc("lfw", d.head["fr_model"], fusion.ex_fiqa_fw(d.exits("lfw", "T")), d.cost_fmr))
    # the trivial gate "accept every image" agrees with the full-depth gate on the share it accepts
    full = fusion.ex_fiqa_fw(d.exits("lfw", "T"))
    accept_all = _cell(t["adaptive_exit"], "agreement_accept_all", quality_model="T", dataset="LFW-like")
    assert abs(accept_all - np.mean(full > np.quantile(full, 0.2))) <= 1.5 / len(full)  # 04's default reject_fraction


CHECKS = {name.removeprefix("check_"): f for name, f in list(globals().items()) if name.startswith("check_")}


def test_one_cell_of_every_table_equals_a_direct_computation(paper_run):
    out, config = paper_run
    produced = sorted(p.stem for p in (out / "tables").glob("*.csv"))
    assert produced == sorted(EXPECTED_TABLES) == sorted(CHECKS), "a new table needs a check here"
    direct = Direct(config)
    tables = {name: pd.read_csv(out / "tables" / f"{name}.csv") for name in CHECKS}
    failed = []
    for name, check in CHECKS.items():
        try:
            check(direct, tables)
        except AssertionError as exc:
            failed.append(f"{name}: {exc}")
    assert not failed, "\n".join(failed)


def test_unchanged_inputs_are_reused_and_tables_are_byte_identical(paper_run, tmp_path):
    out, config = paper_run
    before = {p.name: p.read_bytes() for p in (out / "tables").glob("*.csv")}
    state = json.loads((out / "run.json").read_text())
    messages: list[str] = []
    run_paper(str(config), log=messages.append)  # from another working folder: the same keys
    assert sum("inputs unchanged" in m for m in messages) == len(NOTEBOOKS)
    assert json.loads((out / "run.json").read_text()) == state
    # re-execute the fusion notebook (bootstrap, weight search) from scratch: same bytes
    with contextlib.chdir(config.parent):
        run_paper(str(config), notebooks=["03_fusion"], force=True, log=messages.append)
    after = {p.name: p.read_bytes() for p in (out / "tables").glob("*.csv")}
    for name in ("fusion_bootstrap.csv", "fusion_strategies.csv", "comparison_table.csv", "pauc_all.csv", "paper_findings.csv",
                 "headline_vs_paper.csv"):
        assert after[name] == before[name], name


def test_index_page_shows_every_figure(paper_run, tmp_path):
    out, _ = paper_run
    page = (out / "index.html").read_text()
    from exfiqa.store.runcard import RunCard

    card = RunCard.from_json((out / "run_card.json").read_text())
    assert card.html() in page and card.device == "cpu" and card.convention == "recompute"
    for name in EXPECTED_FIGURES:
        assert f'src="figures/{name}.png"' in page
    # every figure and table has its caption (none left to "other"), the results before the run card
    assert "Other figures and tables" not in page and page.index('id="tab-paper_findings"') < page.index('id="run-card"')
    for name in NOTEBOOKS:
        assert f'href="notebooks/{name}.html"' in page
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless Chromium here (.ci/run installs Debian's chromium)")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--allow-file-access-from-files", "--dump-dom", (out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert 'data-broken="0"' in dom, dom[:500]
    assert f'data-images-ok="{len(list((out / "figures").glob("*.png")))}"' in dom


def test_bad_parameter_stops_at_the_first_cell(tiny_config, tmp_path):
    import papermill as pm

    nb = jupytext.read(ROOT / "notebooks" / "01_layer_analysis.py")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "in.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown datasets \['nope'\]"):
        pm.execute_notebook(
            str(src), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
            parameters={"config": str(tiny_config), "datasets": ["nope"], "out_dir": str(tmp_path / "o")},
        )
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [2]  # parameters, injected parameters, then the first code cell
