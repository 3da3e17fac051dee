"""The four notebooks, executed with papermill on the demo world, produce every figure and table.

This is the slow end-to-end test: it builds the default demo world if `make demo` has not (about
10 minutes on 2 cores, cached in data/demo) and executes the notebooks (a few minutes; embeddings
and scores are cached in data/cache).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from exfiqa.paper import NOTEBOOKS, run_paper

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
    "headline_vs_paper", "paper_findings", "fusion_vs_exits", "fusion_wins", "fusion_bootstrap", "fusion_strategies",
    "comparison_table",
    "gflops_released", "latency_per_exit", "operating_points", "adaptive_exit",
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


COMMON_PARAMETERS = {
    "config", "datasets", "fr_models", "quality_models", "data_root", "fmr_targets", "discard_limit",
    "convention", "pauc_scale", "device", "batch_size", "seed", "out_dir",
}
#: Parameters that mirror a config setting: they default to None (= the config's value).
FROM_CONFIG = {"fmr_targets", "discard_limit", "convention", "pauc_scale", "device", "batch_size", "seed", "headline_fmr", "cost_fmr"}


def test_parameters_that_mirror_the_config_default_to_none():
    import papermill as pm

    for name in NOTEBOOKS:
        params = pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
        mirrored = FROM_CONFIG & set(params)
        assert {"fmr_targets", "discard_limit", "convention", "device", "batch_size", "seed"} <= mirrored, name
        assert all(params[p]["default"] == "None" for p in mirrored), {p: params[p]["default"] for p in mirrored}


def test_papermill_sees_every_parameter():
    import papermill as pm

    for name in NOTEBOOKS:
        params = pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
        assert COMMON_PARAMETERS <= set(params), f"{name}: papermill cannot parse {COMMON_PARAMETERS - set(params)}"
        assert all(p["help"] for p in params.values()), name


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
    return run_paper(str(config), log=print), config


def test_every_figure_and_table_is_produced(paper_run):
    out, _ = paper_run
    for name in EXPECTED_FIGURES:
        png, pdf = out / "figures" / f"{name}.png", out / "figures" / f"{name}.pdf"
        assert png.stat().st_size > 5_000, name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
    import pandas as pd

    for name in EXPECTED_TABLES:
        frame = pd.read_csv(out / "tables" / f"{name}.csv")
        assert len(frame) > 0, name
        assert (out / "tables" / f"{name}.tex").read_text().count("\\toprule") == 1, name
    for name in NOTEBOOKS:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, name
        assert (out / "notebooks" / f"{name}.html").stat().st_size > 10_000
    pauc = pd.read_csv(out / "tables" / "pauc_all.csv")
    assert set(pauc["convention"]) == {"recompute"} and set(pauc["limit"]) == {0.3} and set(pauc["scale"]) == {1000.0}
    findings = pd.read_csv(out / "tables" / "paper_findings.csv")
    assert len(findings) >= 6 and set(findings["verdict"]) <= {"agrees", "differs", "not computable in this run"}


def test_unchanged_inputs_are_reused_and_tables_are_byte_identical(paper_run, tmp_path):
    out, config = paper_run
    before = {p.name: p.read_bytes() for p in (out / "tables").glob("*.csv")}
    state = json.loads((out / "run.json").read_text())
    messages: list[str] = []
    run_paper(str(config), log=messages.append)
    assert sum("inputs unchanged" in m for m in messages) == len(NOTEBOOKS)
    assert json.loads((out / "run.json").read_text()) == state
    # re-execute the fusion notebook (bootstrap, weight search) from scratch: same bytes
    run_paper(str(config), notebooks=["03_fusion"], force=True, log=messages.append)
    after = {p.name: p.read_bytes() for p in (out / "tables").glob("*.csv")}
    for name in ("fusion_bootstrap.csv", "fusion_strategies.csv", "comparison_table.csv", "pauc_all.csv", "paper_findings.csv",
                 "headline_vs_paper.csv"):
        assert after[name] == before[name], name


def test_index_page_shows_every_figure(paper_run, tmp_path):
    out, _ = paper_run
    page = (out / "index.html").read_text()
    from exfiqa.runcard import RunCard

    card = RunCard.from_json((out / "run_card.json").read_text())
    assert card.html() in page and card.device == "cpu" and card.convention == "recompute"
    for name in EXPECTED_FIGURES:
        assert f'src="figures/{name}.png"' in page
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
