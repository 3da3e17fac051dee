"""bf16 vs fp32 extraction: the effect on the scores and on pAUC, measured side by side.

Extracts the config's arrays twice, ``precision: fp32`` and ``precision: bf16`` (torch.autocast;
on CUDA, or on a CPU with bf16 support), each into its own cache, and prints per dataset and
quality model: the largest score difference of the exits, the Spearman correlation of exit 12,
the smallest cosine between fp32 and bf16 embeddings, and the pAUC (the config's convention,
limit and scale) of Exit D, EX-FIQA-FW, ATTN-FIQA and ViTNT-FIQA under the headline FR model at
each FMR target, fp32 beside bf16.

Usage: ``python bench/bench_precision.py [--config configs/demo.yaml] [--datasets lfw ijbc]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from exfiqa.config import load_config
from exfiqa.extract.stage import extract
from exfiqa.study import ATTN, VITNT, Study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--fr", default=None, help="FR model of the pAUC rows (default: the headline's)")
    args = ap.parse_args()
    base = load_config(args.config)
    if args.datasets:
        base = base.select(datasets=args.datasets)
    fr = args.fr or base.headline.get("fr_model") or next(iter(base.fr_models))
    with tempfile.TemporaryDirectory(prefix="bench_precision.") as tmp:
        studies = {}
        for precision in ("fp32", "bf16"):
            cfg = base.with_(precision=precision, cache_dir=str(Path(tmp) / precision))
            t0 = time.perf_counter()
            extract(cfg, progress=False, log=lambda *_: None)
            print(f"{precision}: extracted in {time.perf_counter() - t0:.1f} s on {cfg.device}")
            studies[precision] = Study(cfg, progress=False)
        fp, bf = studies["fp32"], studies["bf16"]
        for ds in base.datasets:
            for q in base.quality_models:
                a, b = fp.exit_scores(ds, q), bf.exit_scores(ds, q)
                rho = spearmanr(a[:, -1], b[:, -1]).statistic
                print(f"\n{ds} / {q}: exits max |bf16 - fp32| {np.abs(a - b).max():.4f} (scores span "
                      f"{a.min():.3f}..{a.max():.3f}); Spearman of exit {a.shape[1]}: {rho:.5f}")
                depth = a.shape[1]
                methods = [f"Exit {depth}", "EX-FIQA-FW", ATTN, VITNT[0]]
                pf = fp.pauc_frame(ds, fr, q, methods, scale=base.pauc_scale)
                pb = bf.pauc_frame(ds, fr, q, methods, scale=base.pauc_scale)
                for (_, r32), (_, r16) in zip(pf.iterrows(), pb.iterrows(), strict=True):
                    rel = (r16["pauc"] - r32["pauc"]) / r32["pauc"] if r32["pauc"] else float("nan")
                    print(f"   {r32['method']:12s} FMR {r32['fmr']:g}: pAUC fp32 {r32['pauc']:.3f}  bf16 {r16['pauc']:.3f}  ({rel:+.2%})")
            e32, e16 = fp.embeddings(ds, fr), bf.embeddings(ds, fr)
            half = e32.shape[1] // 2
            print(f"{ds} / {fr}: smallest cosine(fp32, bf16) of an embedding {np.min((e32[:, :half] * e16[:, :half]).sum(1)):.5f}")


if __name__ == "__main__":
    main()
