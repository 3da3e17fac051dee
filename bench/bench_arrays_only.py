"""The four notebooks at IJB-C's real counts from the per-sample arrays alone: time and peak memory.

Writes, under ``--workdir`` (default: a temporary folder), what a machine that only sees
``arrays_dir`` has: IJB-C's three ``meta/`` files with the exact counts (469,375 samples, 23,124
templates, 15,658,489 comparisons, 19,557 mated; :func:`bench_scale._ijbc_layout`), **no image, no
checkpoint** (the config names checkpoint files that do not exist), and synthetic per-sample arrays
in the documented layout (``producer: external``): 4 FR models x (N, 1024) embeddings, exits
(N, 12), ``attn`` (N, 12) and ``vitnt`` (N, 2) of two quality models labelled ViT-FIQA (T)/(C), and
3 baselines (the structure of :func:`bench_scale._write_arrays`). Then it executes the four
notebooks (``notebooks/0*.py`` through papermill, as ``make paper`` does, with only ``config`` and
``out_dir`` given), each in its own process, and prints each one's wall time and the peak RSS of
its kernel (``RUSAGE_CHILDREN`` max RSS of the papermill process, which waits for the kernel).

Usage: ``python bench/bench_arrays_only.py [--workdir DIR] [--notebooks 01,02,03,04] [--timeout S]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_scale as scale  # noqa: E402

NOTEBOOKS = {"01": "01_layer_analysis", "02": "02_attention", "03": "03_fusion", "04": "04_early_exit"}


def _config(work: Path) -> Path:
    fr = "\n".join(f"  {m}: {{checkpoint: fr/{m}.pt, label: {m}}}" for m in scale.FR_MODELS)
    text = f"""run_name: arrays-only
data_root: {work / "data"}
cache_dir: {work / "cache"}
results_dir: {work / "results"}
arrays_dir: {work / "arrays"}
datasets:
  ijbc: {{kind: ijbc, root: ijbc, label: IJB-C}}
fr_models:
{fr}
quality_models:
  T: {{checkpoint: vitfiqa/vitfiqa_T.pt, label: ViT-FIQA (T)}}
  C: {{checkpoint: vitfiqa/vitfiqa_C.pt, label: ViT-FIQA (C)}}
baselines: [{", ".join(scale.BASELINES)}]
fmr_targets: [0.01, 0.001, 0.0001]
discard_limit: 0.3
convention: recompute
device: cpu
batch_size: 128
seed: 0
headline: {{dataset: ijbc, fr_model: arcface, fmr: 0.001}}
"""
    path = work / "arrays-only.yaml"
    path.write_text(text)
    return path


def build(work: Path) -> None:
    """IJB-C meta files, the config, and the arrays (nothing else: no image, no checkpoint)."""
    from exfiqa.config import load_config
    from exfiqa.study import Study

    st = scale.Stages("build")
    scale._ijbc_layout(work / "data" / "ijbc", np.random.default_rng(0))
    cfg = load_config(_config(work))
    st("IJB-C meta files, config")
    study = Study(cfg, progress=False)  # no checkpoint is needed, nor checked
    scale._write_arrays(study, "ijbc", seed=1)
    bench = study.benchmark("ijbc")
    n = len(bench)
    exits = {q: np.load(study.arrays.path("ijbc", "exits", q), mmap_mode="r") for q in scale.QUALITY_MODELS}
    for k, q in enumerate(scale.QUALITY_MODELS):
        def attn(s: int, e: int, q: str = q, k: int = k) -> np.ndarray:
            g = np.random.default_rng([7, k, s])
            return (np.asarray(exits[q][s:e]) + g.normal(size=(e - s, scale.DEPTH))).astype(np.float32)

        def vitnt(s: int, e: int, q: str = q, k: int = k) -> np.ndarray:
            g = np.random.default_rng([8, k, s])
            base = np.asarray(exits[q][s:e]).mean(axis=1, keepdims=True)
            return (base + g.normal(size=(e - s, 2))).astype(np.float32)

        scale._write_external(study.arrays, bench, "ijbc", "attn", q, (n, scale.DEPTH), attn)
        scale._write_external(study.arrays, bench, "ijbc", "vitnt", q, (n, 2), vitnt)
    st("arrays: 4 x (N, 1024) emb, 2 x exits/attn/vitnt, 3 baselines")
    st.total()
    assert not list((work / "data").rglob("*.pt")) and not (work / "data" / "ijbc" / "loose_crop").exists()


def run_notebook(work: Path, nb: str, timeout: int) -> None:
    """One notebook through papermill (as make paper runs it); prints wall time and the kernel's peak RSS."""
    import papermill as pm

    from exfiqa.paper import _to_ipynb

    out = work / "results" / "arrays-only"
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    name = NOTEBOOKS[nb]
    staged = out / "notebooks" / f".{name}.input.ipynb"
    _to_ipynb(ROOT / "notebooks" / f"{name}.py", staged)
    t0 = time.perf_counter()
    status = "ok"
    try:
        pm.execute_notebook(str(staged), str(out / "notebooks" / f"{name}.ipynb"),
                            parameters={"config": str(work / "arrays-only.yaml"), "out_dir": str(out)},
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False, log_output=False,
                            execution_timeout=timeout)
    except Exception as exc:  # the notebook's own error, reported with the measurement
        status = f"FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"notebook": name, "wall_s": round(wall, 1), "kernel_peak_rss_gib": round(peak, 2), "status": status}),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--notebooks", default="01,02,03,04")
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per notebook cell")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            build(args.workdir)
        else:
            run_notebook(args.workdir, rest[0], args.timeout)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="exfiqa-arrays-only-"))
    try:
        if not (work / "arrays-only.yaml").is_file():
            subprocess.run([sys.executable, __file__, "--workdir", str(work), "--child", "build"], check=True)
        for nb in args.notebooks.split(","):
            subprocess.run([sys.executable, __file__, "--workdir", str(work), "--timeout", str(args.timeout),
                            "--child", "nb", nb], check=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
