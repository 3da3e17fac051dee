"""One all-exits pass with vs without the family methods (ATTN-FIQA + ViTNT-FIQA), measured.

``forward_exits(x)`` against ``forward_exits(x, family=True)`` for the full-size ViT-FIQA (T) and
(C) on random weights (speed does not depend on them), timed alternately so that drift of the
machine hits both alike; medians over --repeats after one warm-up each, beside the analytic extra
FLOPs of :func:`exfiqa.models.flops.family_extra_flops`. On a shared machine the wall times of whole
passes are noisy, so the process CPU time of each pass and the time of the extra operations alone
(the same calls as the pass, on tensors of the pass's shapes, 12 exits) are printed too. Usage:
    python bench/bench_family.py [--device cpu|cuda] [--batch-size 32] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from exfiqa.models.flops import family_extra_flops, fused_cost
from exfiqa.models.vitfiqa import (
    attn_fiqa_from_qk,
    build_vitfiqa,
    received_attention,
    vitnt_token_quality,
)


def _once(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def _extras(model, b: int, device: torch.device, dtype: torch.dtype):
    """The family's added operations of one all-exits pass, on random tensors of its shapes."""
    c = model.config
    heads, n, d, p0 = c.num_heads, c.num_tokens, c.embed_dim, c.num_prefix_tokens
    g = torch.Generator(device=device).manual_seed(0)
    q, k = (torch.randn(b, heads, n, d // heads, generator=g, device=device, dtype=dtype) for _ in range(2))
    normed = [torch.randn(b, n, d, generator=g, device=device, dtype=dtype) for _ in range(c.depth)]
    scale = model.blocks[0].attn.scale

    def work() -> None:
        prev, dist = None, torch.zeros(b, c.num_patches, device=device)
        for t in range(c.depth):
            attn_fiqa_from_qk(q, k, scale)
            cur = torch.nn.functional.normalize(normed[t][:, p0:].float(), dim=-1)
            if prev is not None:
                dist = dist + torch.linalg.vector_norm(cur - prev, dim=-1)
            prev = cur
        quality = vitnt_token_quality(dist / (c.depth - 1))
        w = received_attention(q, k, scale, start=p0)
        torch.stack([quality.mean(1), (quality * w).sum(1)], dim=1)

    return work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    print(
        f"device={dev} threads={torch.get_num_threads()} batch={args.batch_size} dtype={args.dtype} "
        f"repeats={args.repeats} torch={torch.__version__}"
    )
    print(
        f"{'model':<14}{'plain ms':>10}{'family ms':>11}{'ratio':>8}{'cpu ratio':>11}"
        f"{'extras ms':>11}{'extras/plain':>14}{'extra GFLOPs':>14}{'of pass':>9}"
    )
    for variant in ("token", "crfiqa"):
        torch.manual_seed(0)
        model = build_vitfiqa(variant=variant).to(dev, dtype).eval()
        x = torch.randn(args.batch_size, 3, 112, 112, device=dev, dtype=dtype)
        plain_t, family_t, extras_t = [], [], []
        with torch.inference_mode():
            extras = _extras(model, args.batch_size, dev, dtype)
            model.forward_exits(x)
            model.forward_exits(x, family=True)
            extras()
            for _ in range(args.repeats):
                plain_t.append(_once(lambda m=model, x=x: m.forward_exits(x), dev))
                family_t.append(_once(lambda m=model, x=x: m.forward_exits(x, family=True), dev))
                extras_t.append(_once(extras, dev))
        plain, family = (statistics.median(t[0] for t in ts) for ts in (plain_t, family_t))
        plain_cpu, family_cpu = (statistics.median(t[1] for t in ts) for ts in (plain_t, family_t))
        extras_ms = statistics.median(t[0] for t in extras_t) * 1e3
        extra = family_extra_flops(model.config) / 1e9
        tag = "ViT-FIQA (T)" if variant == "token" else "ViT-FIQA (C)"
        print(
            f"{tag:<14}{plain * 1e3:>10.1f}{family * 1e3:>11.1f}{family / plain:>8.3f}"
            f"{family_cpu / plain_cpu:>11.3f}{extras_ms:>11.1f}{extras_ms / (plain * 1e3):>14.2%}"
            f"{extra:>14.4f}{extra / fused_cost(model.config):>9.2%}"
        )
        print(f"  runs plain  wall ms: {' '.join(f'{t[0] * 1e3:.0f}' for t in plain_t)}")
        print(f"  runs family wall ms: {' '.join(f'{t[0] * 1e3:.0f}' for t in family_t)}")
    print("ms per batch, medians. ratio: wall, family / plain; cpu ratio: the same in process CPU")
    print("time; extras: the added operations alone; GFLOPs per image; of pass: extra GFLOPs over")
    print("the analytic all-exits pass (flops.fused_cost).")


if __name__ == "__main__":
    main()
