"""The ``exfiqa`` command: a thin layer over the package.

``exfiqa score IMAGES... --checkpoint vitfiqa_token.pt --out scores.csv`` writes one row per image
(sorted by path): ``path, exit_1..exit_D, ex_fiqa_f, ex_fiqa_fw, attn_fiqa, vitnt_fiqa``. The two
fusions always use all D exits, whichever exits are written. From the same pass
(``forward_exits(family=True)``): ``attn_fiqa`` = ATTN-FIQA of the last block (as its paper: mean
pre-softmax attention score, all tokens) and ``vitnt_fiqa`` = ViTNT-FIQA over all D blocks, mean over
the (patch) tokens. Higher = better for every column.

Early exit runs only the blocks its columns need: ``--exit K`` writes ``path, exit_K`` from blocks
1..K (no fusion, no deeper exit); ``--adaptive --threshold T --margin M [--min-exit K]`` writes
``path, stop_exit, stop_score``: each face leaves its batch at the first exit >= K whose running
EX-FIQA-FW score lies more than M from T (else at the last exit), the score being that running score
(:mod:`exfiqa.models.adaptive`, the rule of :func:`exfiqa.report.early_exit.adaptive_exit`).
``exfiqa export --checkpoint CK --exit K|all --out model.onnx [--force]`` writes an ONNX graph
(:mod:`exfiqa.models.export`). Options are never abbreviated (``--exit`` is not ``--exits``).

Errors: every usage error (a bad option value, an ``--out`` that is a folder, lies under a regular
file, cannot be written, or it or ``OUT.skipped`` exists without ``--overwrite``, missing inputs
or checkpoint) is one line on stderr naming the option or path, and exit code 2; the ``--out``
checks run before the model is loaded or any image is read. An unreadable image stops the run with exit code 2 unless
``--skip-bad``.

Precision: values are written with :data:`SCORE_FORMAT` (``%.9g``, 9 significant digits), which
round-trips every float32 exactly: the exit, ``attn_fiqa`` and ``vitnt_fiqa`` columns read back as
float32 are the model's float32 outputs bit for bit, also for values near 0 (ATTN-FIQA is often of
order 1e-5, where a fixed 6 decimals would keep one or two digits). The fusions are float64 means of
those float32 exits, written to a relative 5e-9.

Determinism: the same images, checkpoint and options on the same machine and software give a
byte-identical CSV. Another ``--batch-size`` may change some values by a few float32 ulps (about
1e-7 for scores below 1) on some CPUs: PyTorch picks float32 matmul kernels by batch shape (on
AVX-512 CPUs these differ in summation order). Another device (``--device cuda``) or PyTorch build
can differ in the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["SCORE_FORMAT", "main"]

#: ``float_format`` of ``exfiqa score``'s CSV: 9 significant digits round-trip any float32.
SCORE_FORMAT = "%.9g"


class UsageError(ValueError):
    """A bad option value or input; :func:`main` reports it as one line on stderr, exit code 2."""


def _parse_exits(text: str) -> list[int] | None:
    """``'all'`` -> None, else the sorted distinct exits (>= 1; the upper bound needs the model)."""
    if text == "all":
        return None
    try:
        exits = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(f"--exits must be 'all' or a comma list like 1,6,12; got {text!r}") from None
    if not exits or exits[0] < 1:
        raise UsageError(f"--exits must be 'all' or exits >= 1 like 1,6,12; got {text!r}")
    return exits


def _check_exits(exits: list[int] | None, text: str, depth: int) -> list[int]:
    if exits is None:
        return list(range(1, depth + 1))
    if exits[-1] > depth:
        raise UsageError(f"--exits {text!r} outside 1..{depth} (the model has {depth} blocks)")
    return exits


def _check_out(text: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot become the CSV, without creating or changing anything.

    Raises:
        UsageError: ``--out`` is (or names, with a trailing slash) a folder; exists and
            ``overwrite`` is False; lies under a regular file; or its folder (or the nearest
            existing folder above it) is not writable, tested by creating and deleting a
            temporary file there.
    """
    out = Path(text)
    folder = out.parent
    try:
        if out.is_dir() or text.endswith(("/", os.sep)):
            what = "is a folder" if out.is_dir() else "ends with a slash, i.e. names a folder"
            raise UsageError(f"--out {text} {what}; give the CSV file to write, e.g. {out / 'scores.csv'}")
        if out.exists() and not overwrite:
            raise UsageError(f"{out} exists; pass --overwrite to replace it")
        skipped = Path(f"{text}.skipped")
        if skipped.is_dir():
            raise UsageError(f"--out {text}: {skipped} (the list of skipped images) is a folder")
        if (skipped.exists() or skipped.is_symlink()) and not overwrite:
            raise UsageError(f"{skipped} (a list of skipped images) exists; pass --overwrite to replace or remove it")
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise UsageError(f"--out {text}: cannot create it, {folder} is a regular file, not a folder")
        fd, probe = tempfile.mkstemp(prefix=".exfiqa-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {text}: cannot write in {folder} ({exc.strerror or exc})") from None


def cmd_score(args: argparse.Namespace) -> int:
    """Score images at every exit and write the CSV atomically."""
    import pandas as pd

    from exfiqa.evaluation.fusion import ex_fiqa_f, ex_fiqa_fw
    from exfiqa.io import CheckpointError, chunked
    from exfiqa.models.device import resolve_device
    from exfiqa.models.inference import family_scores
    from exfiqa.models.vitfiqa import load_vitfiqa
    from exfiqa.readers.images import ImageReadError, find_images, read_face

    out = Path(args.out)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_heads is not None and args.num_heads < 1:
        raise UsageError(f"--num-heads must be >= 1, got {args.num_heads}")
    wanted = _parse_exits(args.exits)
    _check_early_options(args)
    _check_out(args.out, args.overwrite)
    try:
        paths = find_images(args.images)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if not paths:
        raise UsageError(f"no images found in {args.images}")
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"--device {args.device}: {exc}") from None
    try:
        model = load_vitfiqa(args.checkpoint, num_heads=args.num_heads)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    exits = _check_exits(wanted, args.exits, model.depth)
    if model.depth < 2:
        raise UsageError(f"{args.checkpoint}: the model has 1 block; the vitnt_fiqa column needs >= 2")

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

    if args.exit is not None or args.adaptive:  # only the blocks these columns need (issue 24)
        table = _early_table(args, model, batches(), len(paths), device, good)
        return _write_scores(table, out, args, skipped, f"{len(good)} rows x {table.shape[1] - 1} columns")
    try:
        scores, attn, vitnt = family_scores(model, batches(), total=len(paths), device=device, progress=not args.quiet)
        attn_fiqa, vitnt_fiqa = attn[:, -1], vitnt[:, 0]  # the last block (as the paper); the mean
    except ImageReadError as exc:
        raise UsageError(f"{exc} (use --skip-bad to leave such files out)") from None
    table = pd.DataFrame({"path": good})
    for k in exits:
        table[f"exit_{k}"] = scores[:, k - 1]
    table["ex_fiqa_f"] = ex_fiqa_f(scores) if len(good) else []
    table["ex_fiqa_fw"] = ex_fiqa_fw(scores) if len(good) else []
    table["attn_fiqa"] = attn_fiqa
    table["vitnt_fiqa"] = vitnt_fiqa
    return _write_scores(table, out, args, skipped, f"{len(good)} rows x {len(exits)} exits")


def _write_scores(table, out: Path, args: argparse.Namespace, skipped: list[tuple[str, str]], what: str) -> int:
    """Write ``table`` to ``out`` atomically and the skipped images to ``OUT.skipped``."""
    from exfiqa.io import atomic_write

    try:
        with atomic_write(out, overwrite=args.overwrite) as fh:
            table.to_csv(fh, index=False, float_format=SCORE_FORMAT, lineterminator="\n")
        listing = Path(f"{out}.skipped")
        if skipped:
            with atomic_write(listing, overwrite=True) as fh:
                fh.writelines(f"{p}\t{why}\n" for p, why in skipped)
        elif listing.is_file():  # left by an earlier run into the same --out: no longer true
            listing.unlink()
    except OSError as exc:  # checked up front; this is what changed since (disk full, ...)
        raise UsageError(f"cannot write {out}: {exc}") from None
    if skipped:
        print(f"skipped {len(skipped)} unreadable images, listed in {out}.skipped", file=sys.stderr)
    print(f"wrote {what} to {out}", file=sys.stderr)
    return 0


def _check_early_options(args: argparse.Namespace) -> None:
    """``--exit`` and ``--adaptive`` exclude each other and ``--exits``; the rule needs its values."""
    if args.exit is not None and args.adaptive:
        raise UsageError("--exit K and --adaptive exclude each other (a fixed exit or a per-face one)")
    if (args.exit is not None or args.adaptive) and args.exits != "all":
        raise UsageError(f"--exits {args.exits} reads several exits of a full pass; it excludes --exit and --adaptive")
    if args.exit is not None and args.exit < 1:
        raise UsageError(f"--exit must be >= 1, got {args.exit}")
    rule = {"--threshold": args.threshold, "--margin": args.margin}
    if args.adaptive and None in rule.values():
        raise UsageError(f"--adaptive needs {' and '.join(k for k, v in rule.items() if v is None)}")
    if not args.adaptive and (args.threshold is not None or args.margin is not None or args.min_exit != 1):
        raise UsageError("--threshold, --margin and --min-exit set the rule of --adaptive; add --adaptive")


def _early_table(args: argparse.Namespace, model, batches, total: int, device, good: list[str]):
    """``--exit K``: ``path, exit_K`` from blocks 1..K only; ``--adaptive``: ``path, stop_exit,
    stop_score`` (the exit where each face stopped and its running EX-FIQA-FW score there)."""
    import pandas as pd

    from exfiqa.models.adaptive import adaptive_scores, check_rule, fixed_exit_scores
    from exfiqa.readers.images import ImageReadError

    try:
        if args.adaptive:
            try:
                check_rule(args.threshold, args.margin, args.min_exit, model.depth)
            except ValueError as exc:
                raise UsageError(f"--adaptive: {exc} (--threshold, --margin, --min-exit)") from None
            stop, score = adaptive_scores(model, batches, args.threshold, args.margin, args.min_exit, total=total,
                                          device=device, progress=not args.quiet)
            return pd.DataFrame({"path": good, "stop_exit": stop, "stop_score": score})
        if not 1 <= args.exit <= model.depth:
            raise UsageError(f"--exit {args.exit} outside 1..{model.depth} (the model has {model.depth} blocks)")
        scores = fixed_exit_scores(model, batches, args.exit, total=total, device=device, progress=not args.quiet)
        return pd.DataFrame({"path": good, f"exit_{args.exit}": scores})
    except ImageReadError as exc:
        raise UsageError(f"{exc} (use --skip-bad to leave such files out)") from None


def cmd_export(args: argparse.Namespace) -> int:
    """Export one exit (or all exits with the fusions) of a ViT-FIQA checkpoint to ONNX."""
    from exfiqa.io import CheckpointError
    from exfiqa.models.export import export_onnx, output_names
    from exfiqa.models.vitfiqa import load_vitfiqa

    if args.exit != "all" and not args.exit.isdigit():
        raise UsageError(f"--exit must be an exit number 1..12 or 'all', got {args.exit!r}")
    out = Path(args.out)
    if out.is_dir() or args.out.endswith(("/", os.sep)):
        raise UsageError(f"--out {args.out} names a folder; give the .onnx file to write")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    try:
        model = load_vitfiqa(args.checkpoint, num_heads=args.num_heads)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    exit = None if args.exit == "all" else int(args.exit)
    if exit is not None and not 1 <= exit <= model.depth:
        raise UsageError(f"--exit {exit} outside 1..{model.depth} (the model has {model.depth} blocks)")
    try:
        export_onnx(model, out, exit, overwrite=args.force)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc}") from None
    print(f"wrote {out}: input images uint8 (B, 112, 112, 3), outputs {', '.join(output_names(exit))}", file=sys.stderr)
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    """Print the analytic GFLOPs of every exit for the released configurations."""
    from exfiqa.models.flops import exit_costs, fused_cost
    from exfiqa.models.vitfiqa import ViTFIQAConfig

    for variant in ("token", "crfiqa"):
        c = ViTFIQAConfig(variant=variant)
        print(f"ViT-FIQA ({'T' if variant == 'token' else 'C'})")
        for cost in exit_costs(c):
            print(f"  exit {cost.exit:2d}: {cost.gflops:6.3f} GFLOPs  ({cost.saving:5.1%} saved)")
        print(f"  all exits fused: {fused_cost(c):6.3f} GFLOPs")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exfiqa", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", allow_abbrev=False, help="quality scores of every exit for aligned face images")
    s.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    s.add_argument("--checkpoint", required=True, help="ViT-FIQA state_dict (vitfiqa_token.pt or vitfiqa_crfiqa.pt)")
    s.add_argument("--out", required=True, help="CSV to write (path, exit_1.., ex_fiqa_f, ex_fiqa_fw, attn_fiqa, vitnt_fiqa)")
    s.add_argument("--exits", default="all", help="'all' or a comma list such as 1,6,12 (default all)")
    s.add_argument(
        "--batch-size", type=int, default=32,
        help="images per forward pass (default 32). Rerunning with the same options gives a "
        "byte-identical CSV; another batch size may move the 6th decimal by a unit or two on some "
        "CPUs (float32 kernels chosen by batch shape, e.g. on AVX-512)",
    )
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    s.add_argument("--num-heads", type=int, default=None,
                   help="attention heads; default: the count an exfiqa-written checkpoint records, else 8 (the released models)")
    s.add_argument("--skip-bad", action="store_true", help="leave unreadable images out, listing them in OUT.skipped")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    early = s.add_argument_group("early exit (only the blocks needed run; issue 24)")
    early.add_argument("--exit", type=int, default=None, metavar="K",
                       help="run blocks 1..K only and write path, exit_K (no fusions, no deeper exits)")
    early.add_argument("--adaptive", action="store_true",
                       help="per face, stop at the first exit >= --min-exit whose running EX-FIQA-FW score lies more "
                       "than --margin from --threshold (else exit 12); writes path, stop_exit, stop_score")
    early.add_argument("--threshold", type=float, default=None, help="--adaptive: the gate's threshold (score units)")
    early.add_argument("--margin", type=float, default=None, help="--adaptive: stop when |running FW - threshold| > margin")
    early.add_argument("--min-exit", type=int, default=1, help="--adaptive: earliest exit that may stop (default 1)")
    s.set_defaults(func=cmd_score)
    f = sub.add_parser("flops", allow_abbrev=False, help="analytic GFLOPs per exit of the released models")
    f.set_defaults(func=cmd_flops)
    x = sub.add_parser("export", allow_abbrev=False, help="ONNX graph of one exit (or all, with the fusions) of a checkpoint")
    x.add_argument("--checkpoint", required=True, help="ViT-FIQA state_dict")
    x.add_argument("--exit", required=True, help="an exit 1..12 (output quality) or 'all' (outputs exits, ex_fiqa_f, ex_fiqa_fw)")
    x.add_argument("--out", required=True, help="the .onnx file to write (input images: uint8 RGB (B, 112, 112, 3))")
    x.add_argument("--num-heads", type=int, default=None, help="as for score")
    x.add_argument("--force", action="store_true", help="replace an existing --out")
    x.set_defaults(func=cmd_export)
    from exfiqa.extract.stage import parser as extract_parser
    from exfiqa.extract.stage import run as run_extract

    e = sub.add_parser("extract", allow_abbrev=False, parents=[extract_parser(add_help=False)],
                       help="every per-sample array of a run config, one read of each image (see exfiqa.extract.stage)")
    e.set_defaults(func=run_extract)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a :class:`UsageError` is one line ``exfiqa <command>: message``, exit code 2."""
    args = build_parser().parse_args(argv)  # argparse's own errors exit 2 as well
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"exfiqa {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
