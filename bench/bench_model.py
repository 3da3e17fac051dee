"""All exits in one pass vs one plain forward vs the once-per-exit protocol; truncated exits.

Prints measured ratios (median of --repeats runs) for the full-size ViT-FIQA (T) and (C) on random
weights (speed does not depend on the weights). Usage:
    python bench/bench_model.py [--device cpu|cuda] [--batch-size 32] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from exfiqa.models.vitfiqa import build_vitfiqa


def timed(fn, repeats: int, device: torch.device, warm_up: bool = True) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run if ``warm_up``
    (CUDA synchronised around each run)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    print(f"device={dev} threads={torch.get_num_threads()} batch={args.batch_size} dtype={args.dtype}")
    for variant in ("token", "crfiqa"):
        torch.manual_seed(0)
        model = build_vitfiqa(variant=variant).to(dev, dtype).eval()
        x = torch.randn(args.batch_size, 3, 112, 112, device=dev, dtype=dtype)
        depth = model.depth
        with torch.inference_mode():
            plain = timed(lambda m=model, x=x: m(x), args.repeats, dev)
            one_pass = timed(lambda m=model, x=x: m.forward_exits(x), args.repeats, dev)
            per_exit = {
                k: timed(lambda k=k, m=model, x=x: m.score_at_exit(x, k), args.repeats, dev)
                for k in range(1, depth + 1)
            }
        protocol = sum(per_exit.values())
        tag = "T" if variant == "token" else "C"
        print(f"\nViT-FIQA ({tag})")
        print(f"  plain forward          {plain * 1e3:8.1f} ms/batch  {args.batch_size / plain:7.1f} img/s")
        print(f"  all {depth} exits, one pass {one_pass * 1e3:8.1f} ms/batch  ratio to plain {one_pass / plain:5.2f}x")
        print(f"  once-per-exit protocol {protocol * 1e3:8.1f} ms/batch  speedup of one pass {protocol / one_pass:5.2f}x")
        print("  truncated exit k: time / plain vs ideal k/12")
        for k, t in per_exit.items():
            print(f"    k={k:2d}  {t / plain:5.3f}  ideal {k / depth:5.3f}  ratio {t / plain / (k / depth):5.2f}")


if __name__ == "__main__":
    main()
