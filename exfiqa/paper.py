"""``make paper``: execute the four notebooks with papermill into ``results/<run_name>/`` and index them.
A notebook whose key (:func:`notebook_key`) is unchanged since its last successful run is not rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from exfiqa.config import Config, ConfigError, load_config
from exfiqa.io import atomic_write
from exfiqa.locks import no_space_message
from exfiqa.report.tables import (
    PROTOCOL_COLUMNS,
    column_decimals,
    format_cell,
    header_tex,
    latex_unescape,
)
from exfiqa.store.arrays import arrays_root
from exfiqa.store.runcard import RunCard, run_card
from exfiqa.study import CARD

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_layer_analysis", "02_attention", "03_fusion", "04_early_exit")
RUN_MARKER = ".exfiqa-run"
#: Run-card fields that may differ between make paper's start and a notebook only because files
#: changed while the run went on (anything else differing is an error: a notebook overrode the config).
DRIFT = ("code_sha256", "git", "inputs")


def _write(path: Path, text: str) -> None:
    with atomic_write(path, overwrite=True) as fh:
        fh.write(text)


def _to_ipynb(source: Path, target: Path) -> None:
    import jupytext

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    with atomic_write(target, overwrite=True) as fh:
        jupytext.write(nb, fh, fmt="ipynb")


#: nbconvert's lab template without the scripts it loads from a CDN (require.js, MathJax, Mermaid).
_OFFLINE_HTML = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def _to_html(executed: Path, target: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[jinja2.DictLoader({"exfiqa_offline.html.j2": _OFFLINE_HTML})],
                            template_file="exfiqa_offline.html.j2")
    _write(target, exporter.from_notebook_node(nbformat.read(executed, as_version=4))[0])


# ------------------------------------------------------------------------------ progress


def cell_labels(cells: Sequence[Any]) -> dict[int, str]:
    """Cell index -> a code cell's label: its first comment line, else the markdown heading above it."""
    labels, heading = {}, ""
    for i, cell in enumerate(cells):
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            found = re.findall(r"^#+\s*(.+?)\s*$", source, re.M)
            heading = found[0] if found else heading
            continue
        if cell.get("cell_type") != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        first = source.lstrip().splitlines()[0] if source.strip() else ""
        tag = next((t for t in ("injected-parameters", "parameters") if t in tags), None)
        if tag:
            labels[i] = tag.replace("-", " ")
        elif first.startswith("#") and not first.startswith("# %%"):
            labels[i] = first.lstrip("# ").strip()
        else:
            labels[i] = heading or "setup"
    return labels


class _Progress:
    """Logs each code cell of a running notebook as it starts (nbclient's hooks): ``cell 3/12 (label) ...``"""

    def __init__(self, name: str, log: Callable[[str], Any]) -> None:
        self.name, self.log = name, log
        self.labels: dict[int, str] = {}

    def start(self, notebook: Any, **_: Any) -> None:
        self.labels = cell_labels(notebook.cells)  # the notebook with papermill's injected parameters

    def cell(self, cell: Any, cell_index: int, **_: Any) -> None:
        if cell_index in self.labels:
            order = sorted(self.labels)
            self.log(f"[paper] {self.name}: cell {order.index(cell_index) + 1}/{len(order)} ({self.labels[cell_index]}) ...")


def portable(path: Path, cwd: Path | None = None) -> str:
    """``path`` relative to the working folder, absolute only where the two share no folder but ``/``."""
    here = Path(cwd or Path.cwd()).resolve()
    target = Path(path).resolve()
    if Path(os.path.commonpath([here, target])) == Path(here.anchor):
        return str(target)
    return os.path.relpath(target, here)


def relativise(executed: Path, places: dict[Path, str]) -> None:
    """Rewrite ``executed`` naming each of ``places`` (folder -> label) by its label, not its path."""
    text = executed.read_text()
    names = {str(p): label for place, label in places.items() for p in (Path(place), Path(place).resolve())}
    for name in sorted(names, key=len, reverse=True):  # the deepest first: results/demo before the repository
        if name != "/":
            text = text.replace(json.dumps(name)[1:-1], names[name])
    _write(executed, text)


def _execute(staged: Path, executed: Path, parameters: dict[str, Any], progress: _Progress) -> None:
    """papermill, reporting each cell to ``progress``; the kernel's stderr goes to ours."""
    import papermill as pm

    pm.execute_notebook(
        portable(staged), portable(executed), parameters=parameters, kernel_name="python3", cwd=str(Path.cwd()),
        progress_bar=False, stderr_file=sys.stderr, on_notebook_start=progress.start, on_cell_start=progress.cell,
    )


# ------------------------------------------------------------------------------ the run


def notebook_key(card: RunCard, config_path: Path, notebook: Path, extra: Sequence[Path] = ()) -> str:
    """The "inputs unchanged" key of one notebook: the run card's key and the config, notebook and ``extra`` bytes."""
    files = hashlib.sha256()
    for p in sorted([config_path, notebook, *extra]):
        files.update(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p).encode())
        files.update(p.read_bytes() if p.is_file() else b"<missing>")
    return hashlib.sha256((card.key() + files.hexdigest()).encode()).hexdigest()


def _extractable(cfg: Config, log) -> bool:
    """Whether the checkpoints are there to extract; without them, arrays of every dataset skip it."""
    try:
        cfg.check_paths()
    except ConfigError as exc:
        root = arrays_root(cfg)
        if not all((root / ds).is_dir() for ds in cfg.datasets):
            raise
        log(f"[paper] {cfg.run_name}: not extracting ({exc}); evaluating the arrays in {root} as they are")
        return False
    return True


def run_paper(
    config_path: str, notebooks: Sequence[str] = NOTEBOOKS, force: bool = False, log=print
) -> Path:
    """Extract the per-sample arrays (a no-op when current), then execute the notebooks for
    ``config_path`` into ``results/<run_name>/`` and index them."""
    config = Path(config_path).resolve()
    cfg: Config = load_config(config)
    unknown = [n for n in notebooks if n not in NOTEBOOKS]
    if unknown:
        raise ConfigError(f"unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}")
    if cfg.demo:
        from exfiqa.demo import ensure_demo

        ensure_demo(cfg.data_root, cfg.demo, log=log)
    cfg.check_paths(checkpoints=False)
    out = cfg.results_dir / cfg.run_name
    if out.exists() and any(out.iterdir()) and not (out / RUN_MARKER).exists():
        raise ConfigError(f"{out} exists and was not made by exfiqa; move it or change run_name")
    for sub in ("notebooks", "figures", "tables"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).write_text("made by exfiqa.paper\n")
    if _extractable(cfg, log):
        from exfiqa.extract import extract  # torch: imported only when extracting

        log(f"[paper] {cfg.run_name}: extracting the per-sample arrays (exfiqa extract) ...")
        extract(cfg, log=log)
    log(f"[paper] {cfg.run_name}: digests of the inputs ...")
    card = run_card(cfg)
    _write(out / CARD, card.to_json())
    state_path = out / "run.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    extra = [cfg.data_root / "manifest.json"] if cfg.demo else []
    for name in notebooks:
        src = ROOT / "notebooks" / f"{name}.py"
        key = notebook_key(card, config, src, extra)
        executed = out / "notebooks" / f"{name}.ipynb"
        if not force and state.get(name, {}).get("key") == key and executed.is_file():
            log(f"[paper] {name}: inputs unchanged, reusing {executed}")
            continue
        t0 = time.perf_counter()
        log(f"[paper] {name}: executing ...")
        if state.pop(name, None) is not None:  # no completion record while it runs: a killed run is redone
            _write(state_path, json.dumps(state, indent=2, sort_keys=True))
        staged = out / "notebooks" / f".{name}.input.ipynb"
        running = out / "notebooks" / f".{name}.running.ipynb"
        _to_ipynb(src, staged)
        try:
            _execute(staged, running, {"config": portable(config), "out_dir": portable(out)}, _Progress(name, log))
        except Exception:
            if running.is_file():  # papermill wrote the notebook up to the failing cell: show it
                running.replace(executed)
            raise
        finally:
            staged.unlink(missing_ok=True)
        relativise(running, {out: "<results folder>", config.parent: "<config folder>", cfg.data_root: "<data_root>",
                             ROOT: "<repository>"})
        running.replace(executed)
        _to_html(executed, executed.with_suffix(".html"))
        diff = card.differences(RunCard.from_json((out / CARD).read_text()))  # the card the notebook wrote
        _write(out / CARD, card.to_json())  # the card of the run, for the index
        if set(diff) - set(DRIFT):
            raise ConfigError(f"{name} ran with another run card than the config gives (differs in {diff}); "
                              "a notebook must take its settings from the config")
        # the key of the run's start: a notebook that saw newer files (diff) runs again next time
        state[name] = {"key": key, "seconds": round(time.perf_counter() - t0, 1)}
        if diff:
            state[name]["changed_during_run"] = diff
            log(f"[paper] {name}: WARNING: {', '.join(diff)} changed while the run was going on; its tables "
                "follow the new files, the index shows the card of the run's start; make paper runs it again")
        _write(state_path, json.dumps(state, indent=2, sort_keys=True))
        log(f"[paper] {name}: done in {state[name]['seconds']} s")
    index = build_index(out, cfg)
    log(f"[paper] index: {index}")
    return out


# ------------------------------------------------------------------------------ the index page

#: The index page: (section, [(kind, stem pattern, caption)]); ``{q}``/``{fr}`` match a quality/FR
#: model's name (in a caption: its label). Files no entry names are listed last.
PAGE: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    ("Results (the poster's order)", (
        ("table", "paper_findings",
         "The paper's findings recomputed from this run, each with its verdict and a paired-bootstrap interval (the poster's claims, one row each)."),
        ("table", "headline_vs_paper",
         "The poster's headline table (pAUC-EDC on IJB-C with ArcFace) beside the same methods in this run."),
        ("table", "comparison_table",
         "pAUC-EDC of EX-FIQA (early exits, F, FW) against the baselines on every dataset: the poster's comparison table."),
        ("figure", "edc_grid_{q}_{fr}",
         "EDC curves of every exit of {q} and of the fusions F and FW, per dataset and FMR target ({fr}): the poster's EDC grid."),
        ("figure", "pauc_vs_gflops_{q}",
         "pAUC-EDC against the GFLOPs spent up to each exit of {q}, one line per dataset: the poster's pAUC vs cost panel."),
        ("figure", "attention_{q}",
         "Attention maps of {q}'s exits (columns) on the four sample types and a dataset mean (rows): the poster's attention figure, laid out to fit a page."),
    )),
    ("01 Layer analysis: which exit carries the quality signal", (
        ("table", "fr_sanity", "FNMR of each FR model at each FMR target before any discarding (a check that the FR models work)."),
        ("table", "pauc_all", "pAUC-EDC of every method, dataset, FR model, quality model and FMR target: every number the other tables select from."),
        ("table", "pauc_per_exit_{q}", "pAUC-EDC of each exit of {q} per dataset and FR model."),
        ("table", "depth_summary", "Mean pAUC-EDC of each exit over datasets and FR models: how quality prediction changes with depth."),
        ("figure", "rank_correlation_{q}", "Spearman correlation between the per-image scores of {q}'s exits and the baselines."),
        ("table", "rank_correlation_{q}", "Spearman correlation between the per-image scores of {q}'s exits and the baselines (the numbers of the figure)."),
        ("figure", "score_distributions_{q}", "Distribution of the per-image quality scores of each exit of {q}."),
    )),
    ("02 Attention", (
        ("figure", "attention_entropy_spread", "Entropy and spread of the attention maps per exit: how focused each exit's attention is."),
        ("table", "attention_statistics", "Attention entropy, spread and contrast per exit (the numbers behind the attention figures)."),
    )),
    ("03 Fusion", (
        ("table", "fusion_vs_exits", "The fusions F and FW against the last exit and the best single exit, per dataset."),
        ("table", "fusion_wins", "On how many datasets FW has a lower pAUC-EDC than the last exit."),
        ("figure", "fusion_bootstrap", "Paired-bootstrap intervals of the pAUC-EDC difference between the fusions and the last exit, per dataset."),
        ("table", "fusion_bootstrap", "Paired-bootstrap intervals of the pAUC-EDC difference between the fusions and the last exit (the numbers of the figure)."),
        ("table", "fusion_strategies", "Other ways of fusing the exits (learned weights among them) against F and FW."),
        ("table", "bootstrap_units", "What the bootstrap resamples on each dataset and how independent those units are."),
        ("table", "secondary_reference", "Plain ViT-FIQA of this run beside a secondary transcription of the PreFIQs paper's number."),
        ("table", "chosen_exits", "The exits EX-FIQA-DC chooses on each dataset."),
        ("table", "chosen_exits_pauc", "pAUC-EDC of EX-FIQA-DC against F, FW, learned weights and the last exit."),
        ("figure", "chosen_exits_bootstrap", "Paired-bootstrap intervals of the pAUC-EDC difference between EX-FIQA-DC and its references."),
        ("table", "chosen_exits_bootstrap", "Paired-bootstrap intervals of the pAUC-EDC difference between EX-FIQA-DC and its references (the numbers of the figure)."),
    )),
    ("04 Early exit: cost", (
        ("table", "gflops_released", "Analytic GFLOPs up to each exit of the released ViT-FIQA models."),
        ("table", "latency_per_exit", "Measured milliseconds per image up to each exit on this machine."),
        ("table", "operating_points", "Operating points from the data: the most accurate method, the cheapest exit within a tolerance of the last exit's mean pAUC-EDC (balanced) and within twice it (max efficiency)."),
        ("table", "adaptive_exit", "An adaptive gate that decides at an early exit when the score is clear: compute saved, agreement with the full-depth FW gate, and the pAUC-EDC of its score."),
        ("table", "runtime_early_exit", "Measured milliseconds per image of the full pass, the operating points' exits and the adaptive runtime, beside the analytic FLOP saving."),
    )),
)


def _expand(pattern: str, cfg: Config) -> Iterator[tuple[str, dict[str, str]]]:
    """The stems ``pattern`` names, in the config's order, each with the labels of its ``{q}``/``{fr}``."""
    tables = {"q": cfg.quality_models, "fr": cfg.fr_models}
    keys = [k for k in tables if "{" + k + "}" in pattern]
    for combo in itertools.product(*(list(tables[k]) for k in keys)):
        names = dict(zip(keys, combo, strict=True))
        yield pattern.format(**names), {k: getattr(tables[k][v], "label", None) or v for k, v in names.items()}


_MATH = ((r"$^\dagger$", "\N{DAGGER}"), (r"$\Delta$", "\N{GREEK CAPITAL LETTER DELTA}"), (r"$\rho$", "\N{GREEK SMALL LETTER RHO}"))


def tex_to_html(tex: str) -> str:
    """A header or cell of a LaTeX table as HTML (``$10^{-3}$`` as 10<sup>-3</sup>, symbols as characters)."""
    for math, char in _MATH:
        tex = tex.replace(math, char)
    parts = re.split(r"\$10\^\{(-?\d+)\}\$", tex)  # text, exponent, text, ...
    return "".join(html.escape(latex_unescape(t)) if k % 2 == 0 else f"10<sup>{t}</sup>" for k, t in enumerate(parts))


def table_html(frame: pd.DataFrame, rows: int = 60) -> str:
    """The first ``rows`` rows of a table's CSV formatted as its LaTeX file, without constant protocol columns."""
    protocol = "scale" in frame.columns
    if protocol:
        frame = frame.drop(columns=[c for c in PROTOCOL_COLUMNS if c in frame.columns and frame[c].nunique(dropna=False) <= 1])
    head = ["<tr>" + "".join(f"<th>{tex_to_html(header_tex(c))}</th>" for c in frame.columns) + "</tr>"]
    shown = frame.head(rows)
    cells = {c: [tex_to_html(format_cell(v, column_decimals(c, frame[c], protocol), c)) for v in shown[c]]
             for c in frame.columns}
    numeric = {c: frame[c].dtype.kind in "iuf" for c in frame.columns}
    body = ["<tr>" + "".join(f'<td class="{"num" if numeric[c] else "txt"}">{cells[c][k]}</td>' for c in frame.columns) + "</tr>"
            for k in range(len(shown))]
    return ('<table class="tbl">\n<thead>' + "".join(head) + "</thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody>\n</table>")


def _item(out: Path, kind: str, stem: str, caption: str) -> dict[str, Any]:
    item: dict[str, Any] = {"kind": kind, "stem": stem, "caption": caption}
    if kind == "table":
        frame, tex = pd.read_csv(out / "tables" / f"{stem}.csv"), out / "tables" / f"{stem}.tex"
        found = re.search(r"^\\caption\{(.*)\}\s*$", tex.read_text(), re.M) if tex.is_file() else None
        item |= {"detail": latex_unescape(found.group(1)) if found else "", "html": table_html(frame), "rows": len(frame),
                 "tex": tex.is_file()}
    return item


def index_sections(out: Path, cfg: Config) -> list[dict[str, Any]]:
    """The index page's sections (:data:`PAGE`) with what ``out`` holds, each ``{"title", "items", "id"}``."""
    left = {("figure", p.stem) for p in (out / "figures").glob("*.png")} | {
        ("table", p.stem) for p in (out / "tables").glob("*.csv")}
    sections = []
    for title, entries in PAGE:
        items = []
        for kind, pattern, caption in entries:
            for stem, labels in _expand(pattern, cfg):
                if (kind, stem) in left:
                    left.discard((kind, stem))
                    items.append(_item(out, kind, stem, caption.format(**labels)))
        if items:
            sections.append({"title": title, "items": items})
    if left:
        sections.append({"title": "Other figures and tables", "items": [_item(out, k, s, s) for k, s in sorted(left)]})
    return [{**section, "id": f"s{n}"} for n, section in enumerate(sections, 1)]


def build_index(out: Path, cfg: Config) -> Path:
    """Write ``out/index.html``: the sections of :func:`index_sections`, the notebooks and the run card."""
    card = RunCard.from_json((out / CARD).read_text()) if (out / CARD).is_file() else run_card(cfg)
    state = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    env = jinja2.Environment(loader=jinja2.PackageLoader("exfiqa.report"), autoescape=True, keep_trailing_newline=True)
    page = env.get_template("index.html.j2").render(
        card=card,
        banner=card.banner().split("**"),  # markdown **bold**: the odd parts
        changed={n: s["changed_during_run"] for n, s in state.items() if isinstance(s, dict) and s.get("changed_during_run")},
        notebooks=[n for n in NOTEBOOKS if (out / "notebooks" / f"{n}.ipynb").is_file()],
        sections=index_sections(out, cfg),
    )
    _write(out / "index.html", page)
    return out / "index.html"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exfiqa.paper", description="Regenerate every figure and table.", allow_abbrev=False)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), help="subset of the four notebooks")
    ap.add_argument("--force", action="store_true", help="execute notebooks even if their inputs are unchanged")
    args = ap.parse_args(argv)
    try:
        out = run_paper(args.config, args.notebooks, force=args.force)
    except ConfigError as exc:
        print(f"make paper: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        message = no_space_message(exc)
        if message is None:
            raise
        print(f"make paper: {message}", file=sys.stderr)
        return 1
    print(f"results in {out}/ (open {out}/index.html)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
