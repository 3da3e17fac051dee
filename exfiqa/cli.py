"""The ``exfiqa`` command: a thin layer over the package.

``exfiqa score IMAGES... --checkpoint vitfiqa_token.pt --out scores.csv`` writes one row per image
(sorted by path): ``path, exit_1..exit_D, ex_fiqa_f, ex_fiqa_fw``. The two fusions always use all D
exits, whichever exits are written.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _parse_exits(text: str, depth: int) -> list[int]:
    if text == "all":
        return list(range(1, depth + 1))
    try:
        exits = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise SystemExit(f"exfiqa score: --exits must be 'all' or a comma list like 1,6,12; got {text!r}") from None
    if not exits or exits[0] < 1 or exits[-1] > depth:
        raise SystemExit(f"exfiqa score: --exits {text!r} outside 1..{depth} (the model has {depth} blocks)")
    return exits


def cmd_score(args: argparse.Namespace) -> int:
    """Score images at every exit and write the CSV atomically."""
    import pandas as pd

    from .fusion import ex_fiqa_f, ex_fiqa_fw
    from .images import ImageReadError, find_images, read_face
    from .inference import chunked, exit_scores, resolve_device
    from .io import CheckpointError, atomic_write
    from .model import load_vitfiqa

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"exfiqa score: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        paths = find_images(args.images)
    except FileNotFoundError as exc:
        print(f"exfiqa score: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print(f"exfiqa score: no images found in {args.images}", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        model = load_vitfiqa(args.checkpoint, num_heads=args.num_heads)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"exfiqa score: {exc}", file=sys.stderr)
        return 2
    exits = _parse_exits(args.exits, model.depth)

    good: list[str] = []
    skipped: list[tuple[str, str]] = []

    def batches():
        for chunk in chunked(paths, args.batch_size):
            images = []
            for p in chunk:
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        images.append(read_face(p))
                    for w in caught[:1]:
                        print(f"warning: {w.message}", file=sys.stderr)
                    good.append(p)
                except ImageReadError as exc:
                    if not args.skip_bad:
                        raise
                    skipped.append((p, str(exc)))
            if images:
                yield np.stack(images)

    try:
        scores = exit_scores(model, batches(), total=len(paths), device=device, progress=not args.quiet)
    except ImageReadError as exc:
        print(f"exfiqa score: {exc} (use --skip-bad to leave such files out)", file=sys.stderr)
        return 2
    table = pd.DataFrame({"path": good})
    for k in exits:
        table[f"exit_{k}"] = scores[:, k - 1]
    table["ex_fiqa_f"] = ex_fiqa_f(scores) if len(good) else []
    table["ex_fiqa_fw"] = ex_fiqa_fw(scores) if len(good) else []
    with atomic_write(out, overwrite=args.overwrite) as fh:
        table.to_csv(fh, index=False, float_format="%.6f", lineterminator="\n")
    if skipped:
        with atomic_write(f"{out}.skipped", overwrite=True) as fh:
            fh.writelines(f"{p}\t{why}\n" for p, why in skipped)
        print(f"skipped {len(skipped)} unreadable images, listed in {out}.skipped", file=sys.stderr)
    print(f"wrote {len(good)} rows x {len(exits)} exits to {out}", file=sys.stderr)
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    """Print the analytic GFLOPs of every exit for the released configurations."""
    from .flops import exit_costs, fused_cost
    from .model import ViTFIQAConfig

    for variant in ("token", "crfiqa"):
        c = ViTFIQAConfig(variant=variant)
        print(f"ViT-FIQA ({'T' if variant == 'token' else 'C'})")
        for cost in exit_costs(c):
            print(f"  exit {cost.exit:2d}: {cost.gflops:6.3f} GFLOPs  ({cost.saving:5.1%} saved)")
        print(f"  all exits fused: {fused_cost(c):6.3f} GFLOPs")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exfiqa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="quality scores of every exit for aligned face images")
    s.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    s.add_argument("--checkpoint", required=True, help="ViT-FIQA state_dict (vitfiqa_token.pt or vitfiqa_crfiqa.pt)")
    s.add_argument("--out", required=True, help="CSV to write (path, exit_1.., ex_fiqa_f, ex_fiqa_fw)")
    s.add_argument("--exits", default="all", help="'all' or a comma list such as 1,6,12 (default all)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    s.add_argument("--num-heads", type=int, default=8, help="attention heads (not stored in checkpoints; default 8)")
    s.add_argument("--skip-bad", action="store_true", help="leave unreadable images out, listing them in OUT.skipped")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_score)
    f = sub.add_parser("flops", help="analytic GFLOPs per exit of the released models")
    f.set_defaults(func=cmd_flops)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("exfiqa score: --batch-size must be >= 1", file=sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
