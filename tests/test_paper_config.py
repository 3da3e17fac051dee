"""The config is the single source of a `make paper` run: a config whose convention, limit, FMR
targets, seed and pAUC scale all differ from the defaults drives every table, the run card in
each notebook's first cell and the index (tiny demo world, all four notebooks, a few minutes)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from markupsafe import escape

from exfiqa.config import ConfigError, load_config
from exfiqa.evaluation import metrics
from exfiqa.paper import NOTEBOOKS, cell_labels, notebook_key, run_paper
from exfiqa.store.runcard import RunCard, code_digest, input_summary, run_card
from exfiqa.study import Study

ODD = {"convention": "fixed", "discard_limit": 0.25, "fmr_targets": [0.02, 0.002], "seed": 7, "pauc_scale": 100.0}
#: Tables whose numbers involve no EDC protocol (their captions say so).
PROTOCOL_FREE = {"gflops_released", "latency_per_exit", "rank_correlation_T", "rank_correlation_C", "attention_statistics",
                 "chosen_exits", "bootstrap_units"}


@pytest.fixture(scope="module")
def odd_run(tiny_config, tmp_path_factory):
    work = tmp_path_factory.mktemp("odd")
    raw = yaml.safe_load(tiny_config.read_text())
    raw.update(run_name="odd", results_dir=str(work / "results"), headline={"dataset": "ijbc", "fr_model": "arcface", "fmr": 0.002}, **ODD)
    path = work / "odd.yaml"
    path.write_text(yaml.safe_dump(raw))
    messages: list[str] = []
    out = run_paper(str(path), log=messages.append)
    return out, path, messages


def test_every_table_carries_the_configs_protocol(odd_run):
    out, _, _ = odd_run
    csvs = sorted((out / "tables").glob("*.csv"))
    assert {"paper_findings", "headline_vs_paper", "pauc_all", "fusion_bootstrap"} <= {p.stem for p in csvs}
    for csv in csvs:
        frame = pd.read_csv(csv)
        caption = (out / "tables" / f"{csv.stem}.tex").read_text()
        if csv.stem in PROTOCOL_FREE:
            assert not [c for c in frame.columns if "pauc" in c.lower()], csv.stem
            assert "no EDC protocol involved" in caption, csv.stem
        elif csv.stem == "fr_sanity":
            assert [c for c in frame.columns if c.startswith("fnmr@")] == ["fnmr@fmr=0.02", "fnmr@fmr=0.002"]
        else:
            assert set(frame["convention"]) == {"fixed"} and set(frame["limit"]) == {0.25}, csv.stem
            assert set(frame["fmr"]) <= {0.02, 0.002} and set(frame["scale"]) == {100.0}, csv.stem
            assert "up to discard 0.25" in caption and "convention 'fixed'" in caption and "x100" in caption, csv.stem
    for name in ("fusion_bootstrap", "fusion_strategies"):
        assert set(pd.read_csv(out / "tables" / f"{name}.csv")["seed"]) == {7}, name
    assert set(pd.read_csv(out / "tables" / "pauc_all.csv")["fmr"]) == {0.02, 0.002}
    headline = pd.read_csv(out / "tables" / "headline_vs_paper.csv")
    assert set(headline["fmr"]) == {0.002}  # the config's headline.fmr
    assert headline.set_index("method").loc["EX-FIQA-FW(T)", "paper"] == pytest.approx(0.636)  # 6.36 x10^3 at scale 100


def test_the_numbers_follow_the_config(odd_run, tiny_config):
    """One pAUC of the table equals a direct computation under the odd protocol."""
    out, path, _ = odd_run
    pauc = pd.read_csv(out / "tables" / "pauc_all.csv")
    row = pauc[(pauc["quality_model"] == "T") & (pauc["fr_model"] == "arcface") & (pauc["method"] == "Exit 12")
               & (pauc["fmr"] == 0.002) & (pauc["dataset"] == "LFW-like")]
    study = Study(load_config(path), progress=False)
    bench = study.benchmark("lfw")
    a, b = bench.comparisons["a"].to_numpy(), bench.comparisons["b"].to_numpy()
    emb = np.asarray(study.embeddings("lfw", "arcface"), dtype=np.float64)
    sim = np.einsum("ij,ij->i", emb[a], emb[b]) / np.linalg.norm(emb[a], axis=1) / np.linalg.norm(emb[b], axis=1)
    q = np.asarray(study.exit_scores("lfw", "T"))[:, -1]
    curve = metrics.edc(sim, bench.comparisons["mated"].to_numpy(bool), np.minimum(q[a], q[b]), 0.002, "fixed")
    assert row["pauc"].item() == pytest.approx(metrics.pauc(curve, 0.25) * 100, rel=1e-6, abs=1e-9)


def test_run_card_in_every_notebook_and_the_index(odd_run):
    out, path, _ = odd_run
    card = RunCard.from_json((out / "run_card.json").read_text())
    assert (card.convention, card.discard_limit, card.fmr_targets, card.seed, card.pauc_scale) == (
        "fixed", 0.25, (0.02, 0.002), 7, 100.0)
    assert card.precision == "models fp32, arrays and evaluation float32" and re.fullmatch("[0-9a-f]{64}", card.code_sha256) and card.demo
    assert any(k.startswith("datasets.ijbc") for k in card.inputs) and any("quality_models.T" in k for k in card.inputs)
    # the same object the index renders (the code digest moves only if a package source was edited meanwhile)
    assert set(card.differences(run_card(load_config(path.resolve())))) <= {"code_sha256", "git"}
    page = (out / "index.html").read_text()
    assert card.html() in page and "not the paper" in page
    for name in NOTEBOOKS:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        injected = next(c for c in code if "injected-parameters" in c.metadata.get("tags", []))
        assigned = re.findall(r"^(\w+) = ", injected.source, re.M)
        assert assigned == ["config", "out_dir"], f"{name}: make paper passed {assigned}"
        first = code[2]  # parameters, injected parameters, then the first code cell
        shown = [o["data"]["text/markdown"] for o in first.get("outputs", []) if "text/markdown" in o.get("data", {})]
        table = next(t for t in shown if t.startswith("| run card |"))
        lines = [line for line in card.markdown().splitlines() if not line.startswith("| code |")]
        assert [line for line in table.splitlines() if not line.startswith("| code |")] == lines, name
        assert any("not the paper's numbers" in s for s in shown), name


def test_progress_names_each_cell_while_running(odd_run):
    _, _, messages = odd_run
    for name in NOTEBOOKS:
        # cell starts end with "..."; a long cell adds "still running (N min)" heartbeats
        cells = [m for m in messages if m.startswith(f"[paper] {name}: cell ") and m.endswith(" ...")]
        assert cells, name
        total = int(re.search(r"cell \d+/(\d+)", cells[0]).group(1))
        assert [int(re.search(r"cell (\d+)/", m).group(1)) for m in cells] == list(range(1, total + 1)), name
    assert any(re.fullmatch(r"\[paper\] 01_layer_analysis: cell \d+/\d+ \(EDC of every exit \(the poster's grid\)\) \.\.\.", m)
               for m in messages)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title\n\n## Section A"), nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("# the long step\ny = 2"), nbformat.v4.new_markdown_cell("text only"),
        nbformat.v4.new_code_cell("z = 3"),
    ])
    assert cell_labels(nb.cells) == {1: "Title", 2: "the long step", 4: "Title"}


def test_rerun_reuses_and_a_changed_input_changes_the_key(odd_run, tmp_path):
    out, path, _ = odd_run
    state = json.loads((out / "run.json").read_text())
    before = {p.name: p.read_bytes() for p in (out / "tables").glob("*.csv")}
    messages: list[str] = []
    run_paper(str(path), log=messages.append)
    assert sum("inputs unchanged" in m for m in messages) == len(NOTEBOOKS)
    assert json.loads((out / "run.json").read_text()) == state
    run_paper(str(path), notebooks=["03_fusion"], force=True, log=messages.append)
    after = {p.name: p.read_bytes() for p in (out / "tables").glob("*.csv")}
    for name in ("fusion_bootstrap.csv", "fusion_strategies.csv", "comparison_table.csv", "paper_findings.csv", "pauc_all.csv"):
        assert after[name] == before[name], name
    # the key holds every input's digest: an external CSV that changes changes it
    cfg = load_config(path)
    card = run_card(cfg)
    src = Path(__file__).resolve().parents[1] / "notebooks" / "01_layer_analysis.py"
    assert notebook_key(card, path, src) == notebook_key(run_card(cfg), path, src)
    bench = Study(cfg, progress=False).benchmark("lfw")
    csv = tmp_path / "ext.csv"
    csv.write_text("path,score\n" + "".join(f"{p},{i}\n" for i, p in enumerate(bench.samples["path"])))
    ext = dataclasses.replace(cfg, external_methods={"mine": {"lfw": csv}})
    first = run_card(ext)
    assert [k for k in first.inputs if k not in card.inputs] == ["external_methods.mine.lfw"]
    csv.write_text(csv.read_text().replace(",3\n", ",3.5\n"))
    second = run_card(ext)
    assert first.inputs["external_methods.mine.lfw"] != second.inputs["external_methods.mine.lfw"]
    assert notebook_key(first, path, src) != notebook_key(second, path, src)


def test_input_summary_groups_files_and_code_digest_sees_sub_packages(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    root = cfg.datasets["adience"].args["root"]
    files = {str(root / "a" / "1.jpg"): "11", str(root / "b" / "2.jpg"): "22", str(cfg.quality_models["T"].checkpoint): "tt",
             "/elsewhere/x.npy": "xx"}
    summary = input_summary(cfg, files)
    assert summary[f"quality_models.T ({cfg.quality_models['T'].checkpoint.name})"] == "tt"
    assert set(summary) == {f"quality_models.T ({cfg.quality_models['T'].checkpoint.name})", "datasets.adience (2 files)",
                            "other inputs (1 file)"}
    swapped = input_summary(cfg, {**files, str(root / "a" / "1.jpg"): "12"})
    assert swapped["datasets.adience (2 files)"] != summary["datasets.adience (2 files)"]
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    before = code_digest(pkg)
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    assert code_digest(pkg) != before


def test_notebook_key_changes_when_a_sub_package_file_changes(tiny_config, tmp_path, monkeypatch):
    """make paper's per-notebook key sees the demo wing (exfiqa/demo/*.py), not only exfiqa/*.py.

    The run card's code digest is taken over a copy of the package; editing the copy's
    demo/world.py must change notebook_key. A digest of the top-level files only (what the key
    was before the demo wing moved) does not move, so this test fails for such a digest.
    """
    import hashlib
    import shutil

    from exfiqa.store import runcard

    package = tmp_path / "exfiqa"
    shutil.copytree(runcard.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    world = package / "demo" / "world.py"
    assert world.is_file(), "the demo wing is expected at exfiqa/demo/world.py"
    real = runcard.code_digest
    monkeypatch.setattr(runcard, "code_digest", lambda package=package: real(package))

    def top_level(pkg: Path) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(pkg.glob("*.py")))).hexdigest()

    cfg = load_config(tiny_config)
    src = Path(__file__).resolve().parents[1] / "notebooks" / "01_layer_analysis.py"
    card = run_card(cfg, inputs={})
    assert card.code_sha256 == real(package)
    before, flat = notebook_key(card, tiny_config, src), top_level(package)
    world.write_text(world.read_text() + "\n# an edit inside the demo wing\n")
    after = run_card(cfg, inputs={})
    assert top_level(package) == flat  # the edit is invisible to a glob of exfiqa/*.py
    assert after.code_sha256 != card.code_sha256
    assert notebook_key(after, tiny_config, src) != before


def test_a_notebook_killed_midway_is_executed_again(tiny_config, tmp_path, monkeypatch):
    """`make paper --force` killed in the middle of a notebook, then `make paper`: the notebook
    runs again (the old code kept its completion record, and the half-written notebook in its
    place, and reused both as "inputs unchanged")."""
    import nbformat

    import exfiqa.paper as paper

    raw = yaml.safe_load(tiny_config.read_text())
    raw.update(run_name="killed", results_dir=str(tmp_path / "results"))
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(raw))
    calls: list[str] = []

    def execute(staged, executed, parameters, progress, kill=False):
        calls.append("kill" if kill else "run")
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("y = 2")])
        nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="first cell\n")]
        if kill:  # papermill has saved the first cell's output, the kernel dies in the second
            nbformat.write(nb, str(executed))
            raise KeyboardInterrupt
        nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="complete\n")]
        nbformat.write(nb, str(executed))

    monkeypatch.setattr(paper, "_execute", execute)
    name = "01_layer_analysis"
    out = run_paper(str(path), notebooks=[name], log=lambda *_: None)
    executed = out / "notebooks" / f"{name}.ipynb"
    assert calls == ["run"] and "complete" in executed.read_text()
    monkeypatch.setattr(paper, "_execute", lambda *a: execute(*a, kill=True))
    with pytest.raises(KeyboardInterrupt):
        run_paper(str(path), notebooks=[name], force=True, log=lambda *_: None)
    assert name not in json.loads((out / "run.json").read_text())  # no completion record
    assert "complete" in executed.read_text()  # the half-executed notebook never took its place
    monkeypatch.setattr(paper, "_execute", execute)
    messages: list[str] = []
    run_paper(str(path), notebooks=[name], log=messages.append)
    assert calls == ["run", "kill", "run"], messages
    assert not any("inputs unchanged" in m for m in messages)
    assert name in json.loads((out / "run.json").read_text())
    run_paper(str(path), notebooks=[name], log=messages.append)  # now it is reused
    assert calls == ["run", "kill", "run"] and any("inputs unchanged" in m for m in messages)


def test_make_paper_on_a_machine_with_only_the_arrays_skips_extraction(tiny_config, tmp_path, monkeypatch):
    """The checkpoints absent but every dataset's arrays present: `make paper` says so and runs
    the notebooks on the arrays (the old code stopped at the missing checkpoint); with neither,
    the missing checkpoint is the error."""
    import shutil

    import exfiqa.extract as extract_mod
    import exfiqa.paper as paper

    raw = yaml.safe_load(tiny_config.read_text())
    world = tmp_path / "world"
    shutil.copytree(raw["data_root"], world)
    raw.pop("demo", None)  # a copy of the world, not the demo builder's (it would rebuild what is missing)
    raw.update(run_name="arrays-only", results_dir=str(tmp_path / "results"), data_root=str(world),
               cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "arrays-only.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(paper, "_execute", lambda staged, executed, parameters, progress: shutil.copy(staged, executed))
    run_paper(str(path), notebooks=["01_layer_analysis"], log=lambda *_: None)  # extracts
    for ckpt in (world / "vitfiqa").glob("*.pt"):
        ckpt.unlink()
    monkeypatch.setattr(extract_mod, "extract", lambda *a, **k: pytest.fail("extraction without checkpoints"))
    messages: list[str] = []
    run_paper(str(path), notebooks=["01_layer_analysis"], force=True, log=messages.append)
    assert any("not extracting" in m and "checkpoint" in m for m in messages), messages
    raw.update(cache_dir=str(tmp_path / "empty-cache"), arrays_dir=str(tmp_path / "no-arrays"))
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="checkpoint"):
        run_paper(str(path), notebooks=["01_layer_analysis"], log=lambda *_: None)


# ------------------------------------------------------------------------------ the index page, paths, offline HTML

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(tmp_path: Path) -> tuple[Path, object]:
    """A results folder with every figure and table name of the four notebooks (tiny files), and
    ``pauc_all`` written as CSV only."""
    from exfiqa.paper import PAGE

    cfg = load_config(ROOT / "configs" / "demo.yaml", cwd=ROOT)
    out = tmp_path / "results" / "demo"
    for sub in ("figures", "tables", "notebooks"):
        (out / sub).mkdir(parents=True)
    pixel = b"\x89PNG\r\n\x1a\n"  # the page links it; no browser reads it here
    for _, entries in PAGE:
        for kind, pattern, _ in entries:
            for q in cfg.quality_models:
                stem = pattern.format(q=q, fr="arcface")
                if kind == "figure":
                    (out / "figures" / f"{stem}.png").write_bytes(pixel)
                else:
                    frame = pd.DataFrame({f"column_{i}": [1.5, 2.25] for i in range(40)})  # a wide table
                    frame.to_csv(out / "tables" / f"{stem}.csv", index=False)
                    if stem != "pauc_all":
                        (out / "tables" / f"{stem}.tex").write_text(f"\\caption{{Detail of {stem}.}}\n")
    (out / "tables" / "unlisted.csv").write_text("a\n1\n")
    (out / "run_card.json").write_text(run_card(cfg, inputs={}).to_json())
    return out, cfg


def test_index_leads_with_the_results_in_the_posters_order(tmp_path):
    from exfiqa.paper import PAGE, build_index

    out, cfg = _fake_run(tmp_path)
    page = build_index(out, cfg).read_text()
    order = ['id="tab-paper_findings"', 'id="tab-headline_vs_paper"', 'id="tab-comparison_table"',
             'id="fig-edc_grid_T_arcface"', 'id="fig-edc_grid_C_arcface"', 'id="fig-pauc_vs_gflops_T"', 'id="fig-attention_T"',
             'id="tab-fr_sanity"', 'id="fig-attention_entropy_spread"', 'id="tab-fusion_vs_exits"', 'id="tab-adaptive_exit"',
             'id="tab-unlisted"', 'id="notebooks"', 'id="run-card"']
    at = [page.index(mark) for mark in order]
    assert at == sorted(at)
    # each figure and table carries its one-sentence caption, in words (labels from the config)
    assert "EDC curves of every exit of ViT-FIQA (T) and of the fusions F and FW, per dataset and FMR target (ArcFace)" in page
    for _, entries in PAGE:
        for _, _, caption in entries:
            assert str(escape(caption.split("{")[0])) in page, caption
    assert "Detail of paper_findings." in page
    # a CSV-only table says so and links no .tex; wide tables scroll inside their box
    pauc = page[page.index('id="tab-pauc_all"'):page.index('id="tab-pauc_per_exit_T"')]
    assert "CSV only" in pauc and "pauc_all.tex" not in pauc and 'href="tables/pauc_all.csv"' in pauc
    assert page.count('<div class="scroll">') == len(list((out / "tables").glob("*.csv")))
    assert ".scroll { overflow-x: auto" in page
    assert "document.body.dataset.broken" in page  # the browser check's script
    assert str(ROOT) not in page and str(tmp_path) not in page


def test_paths_in_a_runs_outputs_are_relative(tmp_path):
    from exfiqa.paper import portable
    from exfiqa.store.runcard import shown_path

    cfg = dataclasses.replace(load_config(ROOT / "configs" / "demo.yaml", cwd=ROOT), data_root=tmp_path / "world",
                              source=tmp_path / "configs" / "mine.yaml")
    assert shown_path(ROOT / "configs" / "demo.yaml", cfg) == "configs/demo.yaml"
    assert shown_path(tmp_path / "world" / "samples" / "child.png", cfg) == "<data_root>/samples/child.png"
    assert shown_path(tmp_path / "world", cfg) == "<data_root>"
    assert shown_path(tmp_path / "configs" / "mine.yaml", cfg) == "<config folder>/mine.yaml"
    assert shown_path("/elsewhere/x.pt", cfg) == "<elsewhere>/x.pt"
    card = run_card(cfg, inputs={})
    assert card.config == "<config folder>/mine.yaml" and "in <data_root> (" in card.world and str(tmp_path) not in card.to_json()
    assert portable(tmp_path / "results" / "demo", cwd=tmp_path) == "results/demo"
    assert portable(tmp_path / "a.yaml", cwd=tmp_path / "results") == "../a.yaml"
    assert portable(Path("/"), cwd=tmp_path) == "/"  # nothing shared but the root: stays absolute


def test_notebook_html_loads_nothing_from_the_network(tmp_path):
    from exfiqa.paper import _to_html

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("x = 1")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "n.ipynb")
    _to_html(tmp_path / "n.ipynb", tmp_path / "n.html")
    page = (tmp_path / "n.html").read_text()
    assert "Title" in page and "jp-CodeCell" in page  # the lab template, its markup and CSS inline
    assert "cdnjs" not in page and not re.search(r"""<script[^>]+src=["']https?:""", page)
    assert not re.search(r"""import\(["']https?:""", page)
