"""``make paper``: execute the four section notebooks with papermill and build an index page.

Layout of one run (``results/<run_name>/``): ``notebooks/`` (executed ``.ipynb`` + ``.html``),
``figures/`` (PDF + PNG), ``tables/`` (CSV + LaTeX), ``index.html`` (every figure and table, links
to the notebooks) and ``run.json`` (what was run, with content hashes).

A notebook whose inputs (its source, the config file, the demo-world manifest and the package's
source) are unchanged since its last successful run is not executed again; its outputs are reused.
Expensive per-sample work is cached separately (see :mod:`exfiqa.pipeline`).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .io import atomic_write

__all__ = ["NOTEBOOKS", "build_index", "main", "open_study", "run_paper"]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_layer_analysis", "02_attention", "03_fusion", "04_early_exit")
RUN_MARKER = ".exfiqa-run"


def open_study(
    config: str | Path,
    datasets: Sequence[str] | str = (),
    fr_models: Sequence[str] | str = (),
    quality_models: Sequence[str] | str = (),
    data_root: str = "",
    out_dir: str = "",
    progress: bool = True,
    **overrides: Any,
):
    """What every notebook's first code cell calls: validated config -> :class:`Study`.

    Any bad parameter (unknown dataset, missing file, invalid FMR, wrong type) raises
    :class:`ConfigError` naming it, before any work starts. The list parameters (``datasets``,
    ``fr_models``, ``quality_models``, ``fmr_targets``) may also be JSON/YAML lists written as
    strings, which is what papermill's ``-p fr_models '["elasticface"]'`` passes; a bare name is
    refused with the spelling that works. Creates ``out_dir/figures`` and ``out_dir/tables``.
    """
    import os

    from .config import list_parameter
    from .pipeline import Study

    if not isinstance(config, (str, os.PathLike)) or not str(config):
        raise ConfigError(f"parameter config must be the path of a config file, got {config!r}")
    for name, value in (("data_root", data_root), ("out_dir", out_dir)):
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"parameter {name} must be a path (or empty), got {value!r} ({type(value).__name__})")
    names = {
        key: list_parameter(key, value)
        for key, value in (("datasets", datasets), ("fr_models", fr_models), ("quality_models", quality_models))
    }
    if overrides.get("fmr_targets") is not None:
        overrides["fmr_targets"] = list_parameter("fmr_targets", overrides["fmr_targets"], "numbers")
    cfg = load_config(config, data_root=data_root or None)
    cfg = cfg.select(**names).with_(**overrides)
    study = Study(cfg, progress=progress)
    out = Path(out_dir or cfg.results_dir / f"{cfg.run_name}-adhoc")
    for sub in ("figures", "tables"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    study.out_dir = out  # type: ignore[attr-defined]
    return study


def _hash_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p).encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    return h.hexdigest()


def _to_ipynb(source: Path, target: Path) -> None:
    import jupytext

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    with atomic_write(target, overwrite=True) as fh:
        jupytext.write(nb, fh, fmt="ipynb")


def _to_html(executed: Path, target: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
    with atomic_write(target, overwrite=True) as fh:
        fh.write(body)


def run_paper(
    config_path: str, notebooks: Sequence[str] = NOTEBOOKS, force: bool = False, log=print
) -> Path:
    """Execute the notebooks for ``config_path`` into ``results/<run_name>/`` and index them."""
    import papermill as pm

    cfg: Config = load_config(config_path)
    unknown = [n for n in notebooks if n not in NOTEBOOKS]
    if unknown:
        raise ConfigError(f"unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}")
    if cfg.demo:
        from .demo import ensure_demo

        ensure_demo(cfg.data_root, cfg.demo, log=log)
    cfg.check_paths()
    out = cfg.results_dir / cfg.run_name
    if out.exists() and any(out.iterdir()) and not (out / RUN_MARKER).exists():
        raise ConfigError(f"{out} exists and was not made by exfiqa; move it or change run_name")
    for sub in ("notebooks", "figures", "tables"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).write_text("made by exfiqa.paper\n")
    state_path = out / "run.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    package = _hash_files(list((ROOT / "exfiqa").glob("*.py")))
    inputs = [Path(config_path)] + ([cfg.data_root / "manifest.json"] if cfg.demo else [])
    base_key = _hash_files(inputs) + package
    for name in notebooks:
        src = ROOT / "notebooks" / f"{name}.py"
        key = hashlib.sha256((base_key + _hash_files([src])).encode()).hexdigest()
        executed = out / "notebooks" / f"{name}.ipynb"
        if not force and state.get(name, {}).get("key") == key and executed.is_file():
            log(f"[paper] {name}: inputs unchanged, reusing {executed}")
            continue
        t0 = time.perf_counter()
        log(f"[paper] {name}: executing ...")
        staged = out / "notebooks" / f".{name}.input.ipynb"
        _to_ipynb(src, staged)
        try:
            pm.execute_notebook(
                str(staged), str(executed), parameters={"config": str(Path(config_path).resolve()), "out_dir": str(out.resolve())},
                kernel_name="python3", cwd=str(Path.cwd()), progress_bar=False, log_output=False,
            )
        finally:
            staged.unlink(missing_ok=True)
        _to_html(executed, executed.with_suffix(".html"))
        state[name] = {"key": key, "seconds": round(time.perf_counter() - t0, 1)}
        with atomic_write(state_path, overwrite=True) as fh:
            json.dump(state, fh, indent=2, sort_keys=True)
        log(f"[paper] {name}: done in {state[name]['seconds']} s")
    index = build_index(out, cfg)
    log(f"[paper] index: {index}")
    return out


def build_index(out: Path, cfg: Config) -> Path:
    """Write ``out/index.html``: every figure (PNG, linked to its PDF), every table, the notebooks."""
    import pandas as pd

    def section(title: str, body: str) -> str:
        return f"<section><h2>{html.escape(title)}</h2>\n{body}</section>\n"

    nb_links = "".join(
        f'<li><a href="notebooks/{n}.html">{n}</a> (<a href="notebooks/{n}.ipynb">ipynb</a>)</li>'
        for n in NOTEBOOKS if (out / "notebooks" / f"{n}.ipynb").is_file()
    )
    figures = "".join(
        f'<figure id="{p.stem}"><a href="figures/{p.stem}.pdf"><img src="figures/{p.name}" alt="{p.stem}" '
        f'loading="lazy"></a><figcaption>{html.escape(p.stem)}</figcaption></figure>\n'
        for p in sorted((out / "figures").glob("*.png"))
    )
    tables = ""
    for p in sorted((out / "tables").glob("*.csv")):
        frame = pd.read_csv(p)
        shown = frame.head(60).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="tbl")
        more = f"<p>({len(frame)} rows; first 60 shown)</p>" if len(frame) > 60 else ""
        tables += (
            f'<div class="table" id="{p.stem}"><h3>{html.escape(p.stem)} '
            f'<small>(<a href="tables/{p.name}">csv</a>, <a href="tables/{p.stem}.tex">tex</a>)</small></h3>'
            f"{shown}{more}</div>\n"
        )
    demo_note = (
        "<p class=note>These results come from the offline <b>demo world</b> (procedural faces, small "
        "models trained on this machine). They exercise every step of the paper's protocol; the "
        "numbers are not the paper's.</p>" if cfg.demo else ""
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EX-FIQA results: {html.escape(cfg.run_name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; max-width: 560px; }}
figure img {{ max-width: 100%; border: 1px solid #ddd; }}
table.tbl {{ border-collapse: collapse; font-size: 0.8em; }} table.tbl td, table.tbl th {{ padding: 2px 6px; border-bottom: 1px solid #eee; }}
.note {{ background: #fff6d5; padding: 0.6em; }}
</style>
<script>
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  document.body.dataset.broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.dataset.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script></head><body>
<h1>EX-FIQA, regenerated: {html.escape(cfg.run_name)}</h1>
{demo_note}
<p>Config: <code>{html.escape(str(cfg.source))}</code>; EDC convention <code>{cfg.convention}</code>,
pAUC up to discard {cfg.discard_limit:g}, FMR targets {", ".join(f"{f:.0e}" for f in cfg.fmr_targets)}.</p>
{section("Notebooks", f"<ul>{nb_links}</ul>")}
{section("Figures", figures)}
{section("Tables", tables)}
</body></html>
"""
    target = out / "index.html"
    with atomic_write(target, overwrite=True) as fh:
        fh.write(page)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exfiqa.paper", description="Regenerate every figure and table.")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), help="subset of the four notebooks")
    ap.add_argument("--force", action="store_true", help="execute notebooks even if their inputs are unchanged")
    args = ap.parse_args(argv)
    try:
        out = run_paper(args.config, args.notebooks, force=args.force)
    except ConfigError as exc:
        print(f"make paper: {exc}", file=sys.stderr)
        return 2
    print(f"results in {out}/ (open {out}/index.html)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
