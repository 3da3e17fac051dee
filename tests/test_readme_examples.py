"""The README's papermill examples run as written, through the real papermill command line.

Each command line of the ```bash block under "Rerun one section with other parameters" is run
from the repository root with three adaptations only: the output notebook (and any ``out_dir``)
goes to a temporary folder, ``-p config`` points at the tests' tiny world (``tiny_config``), and
``my_params.yaml`` is written there first. The first example that executes a notebook is executed
in full (about a minute); the others are prepared with ``--prepare-only``, and the parameters
papermill injected are then passed to :func:`exfiqa.study.open_study` exactly as the notebook's
first code cell passes them. Either way the test checks that each parameter took effect.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
import yaml

from exfiqa.config import ConfigError, list_parameter

ROOT = Path(__file__).resolve().parents[1]
PAPERMILL = ".venv/bin/papermill"
SECTION = "## Rerun one section with other parameters"
MY_PARAMS = {"fr_models": ["arcface"], "quality_models": ["T"], "convention": "fixed", "discard_limit": 0.5}

# papermill options that take two values / one value; anything else starting with "-" is a flag
_TWO = {"-p", "--parameters", "-r", "--parameters_raw"}
_ONE = {"-f", "--parameters_file", "-y", "--parameters_yaml", "-b", "--parameters_base64", "-k", "--kernel", "--cwd"}
_FLAGS = {"--help-notebook", "--prepare-only", "--log-output", "--no-progress-bar", "--progress-bar"}


def readme_examples() -> list[str]:
    """The papermill command lines of the README's "Rerun one section" bash block."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    block = re.search(r"```bash\n(.*?)```", text.split(SECTION, 1)[1], re.S)
    assert block, f"README.md: no ```bash block under {SECTION!r}"
    return [line for line in block.group(1).splitlines() if line.startswith(PAPERMILL)]


EXAMPLES = readme_examples()
FIRST_RUN = next(i for i, line in enumerate(EXAMPLES) if "--help-notebook" not in line)


def adapt(line: str, tmp: Path, config: Path) -> tuple[list[str], dict[str, Any], Path | None]:
    """The command to run (papermill via this Python), the parameters it gives, its output notebook."""
    words = shlex.split(line, comments=True)
    assert words[0] == PAPERMILL
    argv: list[str] = []
    given: dict[str, Any] = {}
    output: Path | None = None
    i = 1
    while i < len(words):
        w = words[i]
        if w in _TWO:
            name, value = words[i + 1], words[i + 2]
            if name == "out_dir":
                value = str(tmp / value)
            argv += [w, name, value]
            given[name] = value
            i += 3
        elif w in _ONE:
            value = words[i + 1]
            if w in ("-f", "--parameters_file"):
                source = tmp / Path(value).name
                source.write_text(yaml.safe_dump(MY_PARAMS))
                given.update(MY_PARAMS)
                value = str(source)
            argv += [w, value]
            i += 2
        elif w.startswith("-"):
            assert w in _FLAGS, f"README example uses a papermill option this test does not know: {w}"
            argv.append(w)
            i += 1
        else:
            if any(not a.startswith("-") for a in argv):  # the second positional: the output notebook
                output = tmp / w
                w = str(output)
            argv.append(w)
            i += 1
    if "--help-notebook" not in argv:
        argv += ["-p", "config", str(config)]
        if "out_dir" not in given:
            argv += ["-p", "out_dir", str(tmp / "out")]
            given["out_dir"] = str(tmp / "out")
    return [sys.executable, "-m", "papermill", *argv], given, output


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _tagged(nb: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    return [c for c in _code_cells(nb) if tag in c.metadata.get("tags", [])]


def _open_study_as_the_notebook_does(nb: nbformat.NotebookNode):
    """Run the parameters and injected-parameters cells, then the notebook's own open_study(...) call."""
    from exfiqa.study import open_study

    ns: dict[str, Any] = {}
    exec(_tagged(nb, "parameters")[0].source, ns)
    injected = _tagged(nb, "injected-parameters")
    assert len(injected) == 1, "papermill injected no parameters cell"
    exec(injected[0].source, ns)
    for cell in _code_cells(nb):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open_study":
                ns["open_study"] = open_study
                return eval(compile(ast.Expression(node), "<notebook>", "eval"), ns), ns
    raise AssertionError("the notebook never calls open_study")


def _assert_took_effect(study, given: dict[str, Any], injected: dict[str, Any]) -> None:
    """Each parameter the command gave shows in the study's config (or out_dir)."""
    cfg = study.config
    for name in given:
        value = injected[name]  # as papermill passed it: '["elasticface"]' is still a string here
        if name in ("datasets", "fr_models", "quality_models"):
            assert list(getattr(cfg, name)) == list_parameter(name, value), name
        elif name == "fmr_targets":
            assert cfg.fmr_targets == tuple(list_parameter(name, value, "numbers"))
        elif name == "out_dir":
            assert study.out_dir == Path(value) and (study.out_dir / "tables").is_dir()
        elif name == "device":
            assert cfg.device == value
        elif name in ("discard_limit", "convention", "batch_size", "seed"):
            assert getattr(cfg, name) == value, name


def _example_id(line: str) -> str:
    """e.g. ``03_fusion-fr_models-discard_limit``: the notebook and what the example sets."""
    words = shlex.split(line, comments=True)
    parts = [Path(next(w for w in words if w.endswith(".ipynb"))).stem]
    for i, w in enumerate(words):
        if w in _TWO:
            parts.append(words[i + 1])
        elif w.startswith("-"):
            parts.append(w.lstrip("-"))
    return "-".join(parts)


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[_example_id(x) for x in EXAMPLES])
def test_readme_papermill_example_runs(index, tiny_config, tmp_path):
    line = EXAMPLES[index]
    cmd, given, output = adapt(line, tmp_path, tiny_config)
    run_fully = index == FIRST_RUN
    if "--help-notebook" not in cmd and not run_fully:
        cmd.append("--prepare-only")
    if run_fully:  # the notebooks read extracted arrays: `exfiqa extract` first, as the README says
        from exfiqa.config import load_config
        from exfiqa.extract.stage import extract

        extract(load_config(tiny_config), progress=False, log=lambda *_: None)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if "--help-notebook" in cmd:
        for name in ("config", "fr_models", "discard_limit", "out_dir"):
            assert name in done.stdout, f"--help-notebook does not list {name}"
        return

    assert output is not None, f"{line}: no output notebook"
    nb = nbformat.read(output, as_version=4)
    errors = [o for c in _code_cells(nb) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    study, injected = _open_study_as_the_notebook_does(nb)
    assert study.config.source == tiny_config
    _assert_took_effect(study, given, injected)
    if run_fully:  # what the executed notebook wrote follows the parameters too
        tables = Path(given["out_dir"]) / "tables"
        assert list(tables.glob("*.csv")), "the executed notebook wrote no tables"
        for csv in tables.glob("*.csv"):
            frame = pd.read_csv(csv)
            if "fr_model" in frame and "fr_models" in given:
                assert set(frame["fr_model"]) <= set(list_parameter("fr_models", injected["fr_models"])), csv.name
            for key in ("convention", "limit"):
                if key in frame and {"convention": "convention", "limit": "discard_limit"}[key] in given:
                    assert set(frame[key]) == {getattr(study.config, "discard_limit" if key == "limit" else key)}, csv.name
        if "discard_limit" in given:
            captions = " ".join(p.read_text() for p in tables.glob("*.tex"))
            assert f"up to discard {study.config.discard_limit:g}" in captions


def test_the_readme_shows_list_parameters_the_way_papermill_passes_them():
    """The reason open_study parses strings: papermill's -p leaves a JSON list a string."""
    from papermill.cli import _resolve_type

    listed = [w for line in EXAMPLES for w in shlex.split(line, comments=True) if w.startswith("[")]
    assert listed, "the README no longer shows a list parameter; drop this test"
    for value in listed:
        assert isinstance(_resolve_type(value), str)


def test_open_study_takes_list_strings_and_refuses_bare_names(tiny_config, tmp_path):
    from exfiqa.study import open_study

    study = open_study(
        str(tiny_config), '["lfw"]', "[elasticface]", '["T"]', out_dir=str(tmp_path / "o"),
        fmr_targets="[1e-2, 1e-3]", discard_limit=0.2, progress=False,
    )
    cfg = study.config
    assert (list(cfg.datasets), list(cfg.fr_models), list(cfg.quality_models)) == (["lfw"], ["elasticface"], ["T"])
    assert cfg.fmr_targets == (0.01, 0.001) and cfg.discard_limit == 0.2
    with pytest.raises(ConfigError, match=r"""parameter fr_models must be a list of names, e.g. -p fr_models '\["elasticface"\]'; got the string 'elasticface'"""):
        open_study(str(tiny_config), fr_models="elasticface", out_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"parameter datasets must be a list of names.*got \[1, 2\]"):
        open_study(str(tiny_config), datasets="[1, 2]", out_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"parameter fmr_targets must be a list of numbers"):
        open_study(str(tiny_config), fmr_targets="0.001", out_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"unknown fr_models \['facenet'\]"):
        open_study(str(tiny_config), fr_models='["facenet"]', out_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"parameter out_dir must be a path"):
        open_study(str(tiny_config), out_dir=3)
    with pytest.raises(ConfigError, match=r"batch_size must be an integer >= 1, got '64' \(str\)"):
        open_study(str(tiny_config), out_dir=str(tmp_path / "o"), batch_size="64")
