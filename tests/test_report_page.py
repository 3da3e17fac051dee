"""Issue 22, the page: tables on index.html formatted as their LaTeX files (headers a reader
expects, fixed decimals, ``--`` for a missing value), and no absolute path of the machine in a
run's outputs even when the results folder shares nothing but ``/`` with the working folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import yaml

from exfiqa import paper
from exfiqa.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_html_tables_are_formatted_as_the_latex_tables():
    frame = pd.DataFrame({
        "quality_model": ["T", "C"], "fr_model": ["arcface", "magface"], "method": ["magface_norm", "EX-FIQA-11(C)"],
        "delta_pauc": [1.23456, np.nan], "p_better": [0.5, 1.0], "fnmr@fmr=0.001": [0.1, 0.25], "n_units": [600, 300],
        "resolved": [True, False], "convention": "recompute", "limit": 0.3, "fmr": 0.001, "scale": 1000.0,
    })
    page = paper.table_html(frame)
    headers = re.findall(r"<th>(.*?)</th>", page)
    assert headers == ["Model", "FR model", "Method", "\N{GREEK CAPITAL LETTER DELTA}pAUC", "P(better)",
                       "FNMR@10<sup>-3</sup>", "Units", "Resolved"]  # constant protocol columns: in the caption
    cells = re.findall(r"<td[^>]*>(.*?)</td>", page)
    assert cells[:8] == ["ViT-FIQA (T)", "ArcFace", "MagFace (norm)", "1.23", "0.5000", "0.1000", "600", "yes"]
    assert cells[8:16] == ["ViT-FIQA (C)", "MagFace", "EX-FIQA-11 (C)", "--", "1.0000", "0.2500", "300", "no"]
    assert "NaN" not in page and "nan" not in page


def test_index_tables_have_no_nan_and_no_snake_case_headers(tmp_path):
    from test_paper_config import _fake_run  # tests/ is on sys.path

    out, cfg = _fake_run(tmp_path)
    pd.DataFrame({"fr_model": ["arcface", "magface"], "mean_pauc": [1.5, np.nan], "share_of_gain_by_exit_5": [0.5, 0.25],
                  "scale": 1000.0}).to_csv(out / "tables" / "depth_summary.csv", index=False)
    page = paper.build_index(out, cfg).read_text()
    headers = re.findall(r"<th>(.*?)</th>", page)
    assert headers and not [h for h in headers if "_" in h], sorted({h for h in headers if "_" in h})
    assert "NaN" not in page and ">nan<" not in page
    part = page[page.index('id="tab-depth_summary"'):]
    assert "<th>Mean pAUC</th><th>Gain by exit 5</th>" in part and "<td class=\"num\">--</td>" in part


def test_no_absolute_path_when_the_results_folder_shares_only_the_root(tiny_config, tmp_path, monkeypatch):
    """A results folder and config outside the working folder (they share only ``/``): the kernel
    gets absolute paths, but the executed notebooks, their HTML, the run card and the index name
    them by labels only."""
    monkeypatch.chdir(tmp_path.anchor)  # a working folder that shares only / with tmp_path, wherever both are
    assert Path(paper.os.path.commonpath([Path.cwd().resolve(), tmp_path.resolve()])) == Path("/")
    raw = yaml.safe_load(tiny_config.read_text())
    raw.update(run_name="far", results_dir=str(tmp_path / "results"))
    config = tmp_path / "configs" / "far.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(raw))
    seen = {}

    def fake_execute(staged, running, parameters, progress):  # what papermill records, without a kernel
        nb = nbformat.read(staged, as_version=4)
        source = "\n".join(f"{k} = {json.dumps(v)}" for k, v in parameters.items())
        nb.cells.insert(0, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
        nb.metadata["papermill"] = {"parameters": parameters, "input_path": paper.portable(staged),
                                    "output_path": paper.portable(running)}
        seen.update(parameters)
        nbformat.write(nb, running)

    monkeypatch.setattr(paper, "_execute", fake_execute)
    out = paper.run_paper(str(config), notebooks=["01_layer_analysis"], log=lambda *_: None)
    assert seen["out_dir"] == str(out.resolve())  # the kernel needs it: nothing shared but /
    cfg = load_config(config)
    needles = {str(p) for base in (ROOT, cfg.data_root, tmp_path, out) for p in (Path(base), Path(base).resolve())}
    files = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".json", ".html", ".ipynb"}]
    assert {"index.html", "run_card.json", "01_layer_analysis.ipynb", "01_layer_analysis.html"} <= {p.name for p in files}
    found = [f"{p.name}: {n}" for p in files for n in sorted(needles) if n.encode() in p.read_bytes()]
    assert not found, found
    nb = nbformat.read(out / "notebooks" / "01_layer_analysis.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"] == {"config": "<config folder>/far.yaml", "out_dir": "<results folder>"}
    card = json.loads((out / "run_card.json").read_text())
    assert card["config"] == "<config folder>/far.yaml"


def test_shown_path_names_the_results_and_cache_folders(tmp_path):
    import dataclasses

    from exfiqa.store.runcard import shown_path

    cfg = dataclasses.replace(load_config(ROOT / "configs" / "demo.yaml", cwd=ROOT), results_dir=tmp_path / "res",
                              cache_dir=tmp_path / "cache", data_root=tmp_path / "world")
    assert shown_path(tmp_path / "res" / "demo" / "index.html", cfg) == "<results_dir>/demo/index.html"
    assert shown_path(tmp_path / "cache" / "arrays", cfg) == "<cache_dir>/arrays"
    assert shown_path("/nowhere/else.pt", cfg) == "<elsewhere>/else.pt"
