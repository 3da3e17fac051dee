"""Early exit measured: full pass vs fixed exit vs the adaptive runtime, PyTorch and onnxruntime.

Full-size ViT-FIQA (T) and (C) on random weights (speed does not depend on the weights), side by
side in one run: images/s of the plain full pass (exit 12), of all 12 exits in one pass (what the
EX-FIQA-FW gate reads), of the fixed exit the poster recommends (exit 6 (T), exit 7 (C)) and of the
adaptive runtime (:mod:`exfiqa.models.adaptive`) at batch sizes 1, 32 and 256, on the CPU and, when
``torch.cuda.is_available()``, on the GPU; the fraction of faces stopping at each exit; the measured
speed-up over the full pass beside the analytic FLOP saving (:mod:`exfiqa.models.flops`); and
onnxruntime (``exfiqa export`` graphs) beside PyTorch on the CPU at batch 1 and 32.

Adaptive operating point: notebook 04's rule (threshold = the ``--reject-fraction`` quantile of the
full-depth EX-FIQA-FW score, min exit 3). On random weights the exit scores carry no quality, and a
margin in standard deviations would stop almost every face at once or none; so the margin is set
on a calibration batch such that ``--early-fraction`` of the faces settle before exit 12 (a
realistic share), and the table says so. Images are random uint8 faces (B, 112, 112, 3).

Usage:
    python bench/bench_exit.py [--quick] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_model import timed  # bench/ is on sys.path when a script here runs

from exfiqa.evaluation.fusion import ex_fiqa_fw
from exfiqa.models.adaptive import adaptive_forward
from exfiqa.models.export import export_onnx
from exfiqa.models.flops import exit_costs
from exfiqa.models.vitfiqa import ViTFIQA, build_vitfiqa, to_tensor
from exfiqa.report.early_exit import adaptive_cost_curve

RECOMMENDED = {"token": 6, "crfiqa": 7}  # the poster: max efficiency exit 6 (T), balanced exit 7 (C)
MIN_EXIT = 3  # notebook 04's min_exit


def operating_point(model: ViTFIQA, faces: np.ndarray, reject: float, early: float, device: torch.device) -> tuple[float, float]:
    """(threshold, margin): the ``reject`` quantile of the full FW score; the margin at which a share
    ``early`` of ``faces`` settles at some exit in ``MIN_EXIT..11``."""
    with torch.inference_mode():
        s = model.forward_exits(to_tensor(faces).to(device)).scores.float().cpu().numpy().astype(np.float64)
    thr = float(np.quantile(ex_fiqa_fw(s), reject))
    ramp = np.arange(1, s.shape[1] + 1)
    running = np.cumsum(s * ramp, axis=1) / np.cumsum(ramp)
    reach = np.abs(running[:, MIN_EXIT - 1 : -1] - thr).max(axis=1)
    return thr, float(np.quantile(reach, 1 - early))


def ort_session(model: ViTFIQA, exit: int, folder: Path, threads: int):
    import onnxruntime as ort

    path = export_onnx(model, folder / f"{model.config.variant}_{exit}.onnx", exit, overwrite=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench_device(args: argparse.Namespace, device: torch.device, batches: list[int], repeats: dict[int, int]) -> None:
    rng = np.random.default_rng(0)
    print(f"\n### {device.type.upper()} (torch threads {torch.get_num_threads()})\n")
    print("| model | batch | run | img/s | measured speed-up vs exit 12 | analytic GFLOPs/img | FLOP saving vs exit 12 (ideal speed-up) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    stops: dict[str, np.ndarray] = {}
    points: dict[str, tuple[float, float]] = {}
    tmp = tempfile.TemporaryDirectory()
    for variant in ("token", "crfiqa"):
        tag = "T" if variant == "token" else "C"
        torch.manual_seed(0)
        model = build_vitfiqa(variant=variant).to(device).eval()
        cfg, k = model.config, RECOMMENDED[variant]
        costs = exit_costs(cfg)
        full_g = costs[-1].gflops
        cum = np.asarray(adaptive_cost_curve(cfg, cfg.depth))
        calib = rng.integers(0, 256, size=(args.calibration, 112, 112, 3), dtype=np.uint8)
        thr, margin = operating_point(model, calib, args.reject_fraction, args.early_fraction, device)
        points[tag] = (thr, margin)
        used: list[np.ndarray] = []
        sessions = {}
        if device.type == "cpu" and not args.no_onnx:
            sessions = {e: ort_session(model, e, Path(tmp.name), torch.get_num_threads()) for e in (cfg.depth, k)}
        for b in batches:
            faces = rng.integers(0, 256, size=(b, 112, 112, 3), dtype=np.uint8)
            x = to_tensor(faces).to(device)
            r = repeats[b]
            w = not args.quick or b == batches[0]  # --quick: warm up at the first batch size only
            with torch.inference_mode():
                out = adaptive_forward(model, x, thr, margin, MIN_EXIT)
                used.append(out.exit_used)
                t_full = timed(lambda m=model, x=x: m(x), r, device, w)
                rows = [
                    ("exit 12 (full pass)", t_full, full_g),
                    ("all 12 exits, one pass (FW)", timed(lambda m=model, x=x: m.forward_exits(x), r, device, w), cum[-1]),
                    (f"exit {k} (fixed)", timed(lambda m=model, x=x, k=k: m.score_at_exit(x, k), r, device, w), costs[k - 1].gflops),
                    ("adaptive", timed(lambda m=model, x=x, t=thr, g=margin: adaptive_forward(m, x, t, g, MIN_EXIT), r, device, w),
                     float(cum[out.exit_used - 1].mean())),
                ]
            if sessions and b <= 32:
                t_ort_full = timed(lambda s=sessions[cfg.depth], f=faces: s.run(None, {"images": f}), r, device, w)
                rows += [("onnxruntime exit 12", t_ort_full, full_g)]
                rows += [(f"onnxruntime exit {k}", timed(lambda s=sessions[k], f=faces: s.run(None, {"images": f}), r, device, w),
                          costs[k - 1].gflops)]
            for name, t, g in rows:
                base = t_ort_full if name.startswith("onnxruntime") else t_full
                saving = 1 - g / full_g
                print(f"| ({tag}) | {b} | {name} | {b / t:.2f} | {base / t:.2f}x | {g:.3f} | {saving:+.1%} ({1 / (1 - saving):.2f}x) |")
        stops[tag] = np.concatenate(used)
    tmp.cleanup()
    print("\nAdaptive operating point (random weights): threshold = the "
          f"{args.reject_fraction:g} quantile of the full FW score, min exit {MIN_EXIT}, margin set on "
          f"{args.calibration} calibration faces so that {args.early_fraction:.0%} of them settle before exit 12: "
          + "; ".join(f"({t}) threshold {p[0]:.4g}, margin {p[1]:.4g}" for t, p in points.items()) + ".")
    print("\nFraction of the timed faces stopping at each exit (adaptive):\n")
    print("| model | faces | " + " | ".join(str(e) for e in range(1, 13)) + " | mean exit |")
    print("| --- | --- | " + " | ".join("---" for _ in range(12)) + " | --- |")
    for tag, used_all in stops.items():
        frac = np.bincount(used_all, minlength=13)[1:] / len(used_all)
        print(f"| ({tag}) | {len(used_all)} | " + " | ".join(f"{f:.2f}" for f in frac) + f" | {used_all.mean():.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--quick", action="store_true",
                    help="batches 1 and 32, one timed run each, warm-up at batch 1 only (minutes on 2 cores)")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    ap.add_argument("--device", default="auto", help="cpu, or auto: the CPU and, if there is one, the GPU")
    ap.add_argument("--reject-fraction", type=float, default=0.2, help="the gate's reject share (notebook 04: 0.2)")
    ap.add_argument("--early-fraction", type=float, default=0.5, help="share of calibration faces settling before exit 12")
    ap.add_argument("--calibration", type=int, default=64, help="faces that set the adaptive margin")
    ap.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 32] if args.quick else [1, 32, 256]
    repeats = {1: 1, 32: 1} if args.quick else {1: 10, 32: 3, 256: 1}
    if args.quick:
        args.calibration = min(args.calibration, 16)
    print(f"torch {torch.__version__}, threads {args.threads}, {'quick' if args.quick else 'full'}; "
          "median of repeats after one warm-up" + (" (--quick: one run, warm-up at batch 1 only)" if args.quick else ""))
    bench_device(args, torch.device("cpu"), batches, repeats)
    if args.device == "auto" and torch.cuda.is_available():
        bench_device(args, torch.device("cuda"), [1, 32, 256], {1: 20, 32: 10, 256: 5})
    elif args.device == "auto":
        print("\nno GPU measured (torch.cuda.is_available() is False)")


if __name__ == "__main__":
    main()
