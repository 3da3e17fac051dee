"""The LaTeX tables: declared packages, fixed decimals, ``--`` for missing values, readable headers,
group rules, and a width that fits an IEEE two-column page (checked by compiling when ``pdflatex``
is installed; CI installs Debian's texlive-latex-base and texlive-latex-recommended)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exfiqa.report import tables

DATASETS = ["LFW-like", "CFP-FP-like", "XQLFW-like", "Adience-like", "IJB-C-like"]
FR = ["arcface", "elasticface", "magface", "curricularface"]
PROTO = tables.protocol("recompute", 0.3, 1e-3, 1000.0)


def _wide_pauc() -> pd.DataFrame:
    """A comparison-like table: a group column, datasets as columns, unresolved cells, a NaN."""
    rng = np.random.default_rng(0)
    methods = ["ATTN-FIQA", "magface_norm", "serfiq", "ViT-FIQA (T)", "EX-FIQA-11(C)", "EX-FIQA-FW (T)"]
    frame = pd.DataFrame({"group": ["other methods"] * 3 + ["ViT-FIQA", "EX-FIQA", "EX-FIQA"], "method": methods})
    for d in DATASETS:
        frame[d] = rng.uniform(5, 260, len(methods))
    frame.loc[2, "XQLFW-like"] = np.nan
    frame["mean"] = frame[DATASETS].mean(axis=1)
    frame["resolved"] = [False, True, True, False, True, True]
    frame["unresolved_in"] = ["LFW-like; mean", "", "", "CFP-FP-like", "", ""]
    return frame


def _per_exit() -> pd.DataFrame:
    """A pauc_per_exit-like table: a row per method, a column per dataset / FR model (21 columns)."""
    rng = np.random.default_rng(1)
    methods = [f"Exit {k}" for k in range(1, 13)] + ["EX-FIQA-F", "EX-FIQA-FW", "ATTN-FIQA", "sharpness"]
    frame = pd.DataFrame({"method": methods})
    for f in FR:
        for d in DATASETS:
            frame[f"{d} / {f}"] = rng.uniform(10, 270, len(methods))
    frame["resolved"] = True
    frame["unresolved_in"] = ""
    return frame


def _rates() -> pd.DataFrame:
    """fr_sanity / gflops-like: integers, rates, FNMR at FMR targets, a value that rounds to zero."""
    return pd.DataFrame({
        "dataset": ["LFW-like", "CFP-FP-like", "LFW-like", "CFP-FP-like"], "fr_model": ["arcface", "arcface", "magface", "magface"],
        "comparisons": [600, 600, 600, 600], "eer": [0.03, 0.15666666, 0.05, 0.2], "fnmr@fmr=0.001": [0.1666, 0.8266, 0.2, 0.9],
        "flop_saving": [0.9138101833857146, -2.939e-06, 0.5, 0.25], "gflops": [0.9911552, 11.49, 6.75, 2.9],
    })


def _findings() -> pd.DataFrame:
    """paper_findings-like: long text columns that must wrap."""
    text = "mean pAUC exit 1 -> exit 12: 84.88 -> 60.09 (change -24.78, -29.2%); 85% of it by exit 5, 93% by exit 8"
    return pd.DataFrame({
        "finding": [f"depth gains (T): {d}" for d in DATASETS], "paper": ["largest gains from exit 1 to exit 5, little change after exit 8"] * 5,
        "this_run": [text] * 5, "verdict": ["agrees", "differs", "not resolved", "tie", "not computable in this run"],
        "difference": [-24.78, 1.5, np.nan, 0.0, np.nan], "criterion": ["a long criterion " * 8] * 5,
    })


def _write(tmp_path: Path) -> dict[str, Path]:
    out = {}
    tables.save_table(_wide_pauc(), tmp_path, "comparison", caption="pAUC-EDC, arcface.", protocol=PROTO, tex_drop=["selection"])
    tables.save_table(_per_exit(), tmp_path, "per_exit", caption="ViT-FIQA (T) exits.", protocol=PROTO, transpose=True,
                      tex_drop=["ATTN-FIQA", "sharpness"])
    tables.save_table(_rates(), tmp_path, "rates", caption="FR models (no EDC protocol involved).")
    tables.save_table(_findings(), tmp_path, "findings", protocol=PROTO, tex_drop=["difference", "criterion"])
    long = pd.DataFrame({"method": [f"Exit {i % 12 + 1}" for i in range(300)], "pauc": np.linspace(1, 300, 300)})
    tables.save_table(long, tmp_path, "long", caption="Every pAUC.", protocol=PROTO)
    for name in ("comparison", "per_exit", "rates", "findings", "long"):
        out[name] = tmp_path / f"{name}.tex"
    return out


def test_tex_declares_packages_and_shows_fixed_decimals(tmp_path):
    tex = {k: p.read_text() for k, p in _write(tmp_path).items()}
    for name, text in tex.items():
        if name != "long":
            assert re.match(r"% requires: booktabs(, array)?\n", text), name
            assert text.count("\\toprule") == 1 and "NaN" not in text and not re.search(r"\de-0\d", text), name
            assert "_" not in text.split("\\toprule", 1)[1].replace("\\_", ""), name  # no snake_case left
    assert tex["findings"].startswith("% requires: booktabs, array\n") and "raggedright" in tex["findings"]
    assert "raggedright" not in tex["rates"]
    comp = tex["comparison"]
    assert "Method & LFW-like" in comp or "Method & IJB-C-like" in comp or "Method &" in comp
    assert "magface\\_norm" not in comp and "MagFace (norm)" in comp and "EX-FIQA-11 (C)" in comp
    assert "SER-FIQ-style (re-impl.)" in comp and " -- " in comp.replace("--$", "-- ")  # the NaN
    assert comp.count("\\emph{Other methods}") == 1 and comp.count("\\emph{EX-FIQA}") == 1  # group rules, named once
    assert "other methods &" not in comp and "Group" not in comp
    body = comp.split("\\midrule", 1)[1]
    cells = re.findall(r"(?<=& )-?\d+\.(\d+)", body)
    assert cells and {len(c) for c in cells} == {2}  # pAUC x1000: two decimals everywhere
    rates = tex["rates"]
    assert "FR model" not in rates.split("\\toprule")[1].split("\\\\")[0]  # grouped: ArcFace / MagFace as headings
    assert "\\emph{ArcFace}" in rates and "FNMR@$10^{-3}$" in rates and "EER" in rates
    assert " 600 " in rates and "0.1567" in rates and "0.0300" in rates  # integers as integers, rates 4 decimals
    assert "0.0000" in rates and "-0.0000" not in rates  # -2.939e-06 shows as zero
    assert "11.49" in rates and "0.99" in rates  # GFLOPs 2 decimals
    per_exit = tex["per_exit"]
    assert "Exit 1 &" in per_exit and "\\emph{CurricularFace}" in per_exit and "ATTN-FIQA" not in per_exit.split("\\toprule")[1]
    assert "In the CSV only: ATTN-FIQA, sharpness." in per_exit
    assert "\\begin{table" not in tex["long"] and "CSV only (300 rows" in tex["long"] and "\\iffalse" in tex["long"]
    assert re.search(r"^\\caption\{Every pAUC\..*CSV only.*\}$", tex["long"], re.M)  # the caption, for the index page


def test_csv_is_untouched_and_tex_is_byte_identical(tmp_path):
    first = {p: p.read_bytes() for p in _write(tmp_path / "a").values()}
    second = {p: p.read_bytes() for p in _write(tmp_path / "b").values()}
    assert list(first.values()) == list(second.values())
    frame = _rates()
    tables.save_table(frame, tmp_path, "r")
    assert (tmp_path / "r.csv").read_text() == frame.to_csv(index=False, lineterminator="\n")


def test_format_cell_and_decimals():
    assert tables.format_cell(np.nan, 2) == "--" and tables.format_cell(None, 2) == "--" and tables.format_cell("", 2) == "--"
    assert tables.format_cell(-0.0001, 2) == "0.00" and tables.format_cell(3.14159, 2) == "3.14"
    assert tables.format_cell(1e-4, 2, "fmr") == "$10^{-4}$" and tables.format_cell(True, None) == "yes"
    assert tables.column_decimals("pauc", pd.Series([11.1, 244.2]), True) == 2
    assert tables.column_decimals("rho_best_exit", pd.Series([0.34, 0.41]), False) == 3
    assert tables.column_decimals("n_units", pd.Series([600.0, 499.0]), False) is None
    assert tables.column_decimals("gflops", pd.Series([0.0798, 0.0631]), False) == 3  # tiny model: 2 significant digits
    assert tables.header_tex("fr_model") == "FR model" and tables.header_tex("this_run") == "This run"
    assert tables.header_tex("fnmr@fmr=0.01") == "FNMR@$10^{-2}$"


def test_width_picks_table_or_table_star(tmp_path):
    small = pd.DataFrame({"exit": [1, 2, 3], "gflops": [0.99, 1.94, 2.90]})
    tables.save_table(small, tmp_path, "small", caption="GFLOPs (no EDC protocol involved).")
    assert "\\begin{table}\n" in (tmp_path / "small.tex").read_text()
    tables.save_table(_wide_pauc(), tmp_path, "wide", protocol=PROTO)
    assert "\\begin{table*}\n" in (tmp_path / "wide.tex").read_text()


needs_pdflatex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason=(
    "pdflatex not on PATH: the LaTeX tables are not compiled (install texlive-latex-base and "
    "texlive-latex-recommended to check that every table fits an IEEE two-column page)"))


def latex_document(tex_files: Sequence[str | Path]) -> str:
    """A document that sets every table of ``tex_files`` in an IEEE two-column page (IEEEtran
    when installed, else ``article`` with IEEE's widths), with the packages their first lines
    declare; for checking that each compiles without an overfull box."""
    packages: list[str] = []
    for path in tex_files:
        first = Path(path).read_text().split("\n", 1)[0]
        if first.startswith("% requires:"):
            packages += [p.strip() for p in first.split(":", 1)[1].split(",") if p.strip() not in packages]
    head = [r"\documentclass[conference]{IEEEtran}"] if shutil.which("kpsewhich") and subprocess.run(
        ["kpsewhich", "IEEEtran.cls"], capture_output=True, text=True, check=False).stdout.strip() else [
        r"\documentclass[10pt,twocolumn]{article}",
        rf"\usepackage[paperwidth=8.5in,paperheight=11in,textwidth={tables.TEXT_WIDTH:g}pt,columnsep={tables.TEXT_WIDTH - 2 * tables.COLUMN_WIDTH:g}pt,"
        r"textheight=689pt]{geometry}"]
    head += [rf"\usepackage{{{p}}}" for p in dict.fromkeys(packages)]
    body = []
    for path in tex_files:
        body += [rf"\input{{{Path(path).resolve().as_posix()}}}", r"\clearpage"]
    return "\n".join([*head, r"\begin{document}", *body, r"\end{document}", ""])


def compile_tables(tex_files: Sequence[str | Path], workdir: str | Path) -> str:
    """Compile :func:`latex_document` of ``tex_files`` with ``pdflatex`` in ``workdir``; the log
    (raises ``RuntimeError`` with its tail when pdflatex fails)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "tables.tex").write_text(latex_document(tex_files))
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=work,
                          capture_output=True, text=True, check=False, timeout=600)
    log = (work / "tables.log").read_text(errors="replace") if (work / "tables.log").is_file() else done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"pdflatex failed:\n{log[-3000:]}")
    return log


def assert_compiles(tex_files, workdir: Path) -> None:
    """Each table alone, with only the packages its first line declares, in an IEEE two-column
    page: it compiles, and no box is overfull (wider than its column or the text width)."""
    for path in tex_files:
        log = compile_tables([path], workdir / Path(path).stem)
        bad = re.findall(r"^(Overfull \\hbox.*|.*Float too large.*)$", log, re.M)
        assert not bad, f"{Path(path).name}: {bad}"


@needs_pdflatex
def test_every_table_fits_an_ieee_page(tmp_path):
    assert_compiles(sorted(_write(tmp_path / "t").values()), tmp_path / "build")


@needs_pdflatex
def test_the_compile_check_sees_an_overfull_table(tmp_path):
    row = " & ".join(["123.456"] * 40)
    (tmp_path / "x.tex").write_text("% requires: booktabs\n\\begin{table*}\n\\begin{tabular}{" + "r" * 40 + "}\n\\toprule\n"
                                    + row + " \\\\\n\\bottomrule\n\\end{tabular}\n\\end{table*}\n")
    with pytest.raises(AssertionError, match="Overfull"):
        assert_compiles([tmp_path / "x.tex"], tmp_path / "build")
