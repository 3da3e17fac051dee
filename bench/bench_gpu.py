"""Extraction speed on the device at hand: the model stage (fp32 vs bf16, share of the peak) and
``exfiqa.extract.stage`` end to end from JPEG files (N DataLoader workers vs decoding alone).

Runs unchanged on a GPU node and on a CPU (where it shows that it works). Measures and prints:

1. **Model stage**, on random uint8 faces already on the device, exactly the calls extraction
   makes per batch: ViT-FIQA (T) and (C) full size, ALL 12 exits in one pass
   (``forward_exits(vit_input(x))``); iResNet-100 and IR-101 with flip (``FRModel.embed_batch``:
   ``[x, hflip(x)]`` as one batch of 2B); SER-FIQ on the iResNet-100 (one ``forward_features``
   plus 20 dropout passes of the head). Random weights (speed does not depend on them; FR
   BatchNorm statistics are set from the batch so activations stay finite). Per model and
   precision (fp32; bf16 under ``torch.autocast``, on CPU too where oneDNN supports it) and
   variant (CNNs: ``channels_last`` as extraction runs them vs contiguous; on CUDA also
   ``cudnn.benchmark`` off vs on; ``--compile``: ``torch.compile`` of the step): images/s after
   warm-up (``torch.cuda.synchronize`` around the timed loop), FLOPs per image counted by
   ``torch.utils.flop_counter.FlopCounterMode`` (attention counted through the math kernel, which
   the counter sees as matmuls), achieved TFLOP/s and its share of the device's dense bf16 peak
   (:data:`PEAK_BF16_TFLOPS`; n/a on CPUs and unknown devices); bf16-vs-fp32 agreement of the
   outputs of the timed batch (random weights: indicative only).
2. **End to end**: a temporary IJB-C-like folder (SynthFace loose crops of 150-224 px with their
   5 landmarks, JPEG q95, the real ``meta/`` files) and the paper's model set as random-weight
   checkpoints in the released layouts (full size, or ``--small-models``), a config like
   ``configs/paper.yaml``; ``exfiqa.extract.stage.extract`` timed for each worker count (each run in a
   fresh ``arrays_dir``, file digests warmed first), and the same DataLoader
   (``exfiqa.extract.stage.ImageSet``) iterated without models: decode + align (+ the sharpness
   baseline its workers compute) alone. A tiny second dataset run just before each timed run
   gives the fixed cost (loading 6 checkpoints, planning, merging), so the marginal rate
   ``(N - n_warm) / (t_N - t_warm)`` can be compared with decoding alone.
3. Single-core decode rates (aligned 112x112 JPEG as in ``.bin``/XQLFW/Adience; IJB-C loose crop
   decode + 5-point alignment) and a projection of one pass over each paper benchmark on this
   device from these measurements.

Prints tables and one ``BENCH_GPU_JSON {...}`` line with every number (device, torch, CPU model,
flags); ``--out FILE`` also writes that JSON (after every section, so a run cut short keeps what
it measured). ``--budget-s`` skips what is left once the budget is spent.

Usage (from the repository root)::

    python bench/bench_gpu.py --quick                 # CPU smoke run: 2.3 min of CPU time on 2 cores
    python bench/bench_gpu.py --out bench-gpu.json    # GPU node: sized to fit 8 min on one H200
    python bench/bench_gpu.py --compile               # also try torch.compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import build_real_layout as brl  # noqa: E402  (bench/build_real_layout.py: checkpoints, BN calibration)

import exfiqa.readers as ds  # noqa: E402
from exfiqa.io import atomic_write  # noqa: E402

#: Dense (no structured sparsity) BF16 tensor-core peak in TFLOP/s, matched as a substring of
#: ``torch.cuda.get_device_name()``, first match wins (so the specific names come first).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200 NVL", 835.0),  # NVIDIA H200 NVL datasheet: BF16 1,671 TFLOPS with sparsity -> half dense
    ("H200", 989.0),  # NVIDIA H200 (SXM) datasheet: BF16 1,979 TFLOPS with sparsity -> 989 dense
    ("H100 PCIe", 756.0),  # NVIDIA H100 datasheet, PCIe: BF16 1,513 with sparsity -> 756 dense
    ("H100 NVL", 835.0),  # NVIDIA H100 NVL datasheet: BF16 1,671 with sparsity (per GPU) -> 835 dense
    ("H100", 989.0),  # NVIDIA H100 datasheet, SXM (e.g. "H100 80GB HBM3"): 1,979 sparse -> 989 dense
    ("A100", 312.0),  # NVIDIA A100 datasheet: BF16 tensor core 312 TFLOPS (624 with sparsity)
    ("L40S", 362.0),  # NVIDIA L40S datasheet: BF16 362.05 TFLOPS dense (733 with sparsity)
]

#: Images per pass over each paper benchmark (configs/paper.yaml's datasets). IJB-C: the 1:1
#: template protocol's 469,375 images. The .bin files hold 2 images per pair of the standard protocols (LFW, AgeDB-30,
#: CALFW, CPLFW 6,000 pairs; CFP-FP 7,000). XQLFW: at most 2 x its 6,000 pairs (the reader keeps
#: the distinct images referenced). Adience: 19,370 aligned images (the count the FIQA literature
#: uses; all-vs-all gives the ~187M comparisons of DESIGN.md).
PAPER_IMAGES: dict[str, int] = {
    "lfw": 12_000, "agedb_30": 12_000, "cfp_fp": 14_000, "calfw": 12_000, "cplfw": 12_000,
    "xqlfw": 12_000, "adience": 19_370, "ijbc": 469_375,
}
#: The paper's per-image model work: (T), (C), ArcFace, ElasticFace and MagFace (iResNet-100 with
#: flip), CurricularFace (IR-101 with flip), SER-FIQ on ArcFace; the MagFace norm and sharpness
#: share those passes / the decoding worker.
PAPER_SET: dict[str, int] = {"T": 1, "C": 1, "r100": 3, "ir101": 1, "serfiq": 1}
MODEL_LABELS = {"T": "ViT-FIQA (T) 12 exits", "C": "ViT-FIQA (C) 12 exits", "r100": "iResNet-100 +flip",
                "ir101": "IR-101 +flip", "serfiq": "SER-FIQ (r100)"}
LOOSE_SIDES = (150, 180, 224)


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- machine


def cpu_info() -> dict[str, Any]:
    """CPU model and the flags that matter for torch's kernels (Linux /proc/cpuinfo)."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), platform.processor())
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"model": model, "cores": cores, "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "torch_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def peak_bf16(name: str) -> float | None:
    """Dense bf16 peak (TFLOP/s) of a CUDA device name, None if not in :data:`PEAK_BF16_TFLOPS`."""
    return next((p for key, p in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)


def device_info(dev: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(dev), "torch": torch.__version__, "python": platform.python_version()}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        props = torch.cuda.get_device_properties(dev)
        info.update(name=name, peak_bf16_tflops=peak_bf16(name), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), memory_gib=round(props.total_memory / 2**30, 1),
                    sms=props.multi_processor_count, gpus_visible=torch.cuda.device_count(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        info.update(name=cpu_info()["model"], peak_bf16_tflops=None)
    return info


def bf16_supported(dev: torch.device) -> tuple[bool, str]:
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported(), "torch.cuda.is_bf16_supported()"
    try:
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        ok = False
    return ok, "oneDNN bf16 (torch.ops.mkldnn._is_mkldnn_bf16_supported)"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def autocast(dev: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """What extraction does: bf16 = ``torch.autocast(device type, bfloat16)``; fp32 = nothing."""
    return torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


# ----------------------------------------------------------------------------- model stage

Step = Callable[[torch.Tensor], torch.Tensor]


def count_flops(step: Step, x: torch.Tensor) -> float:
    """FLOPs per image of ``step(x)`` by ``FlopCounterMode``; attention through the math kernel
    (the fused CPU attention kernel is invisible to the counter; math = the same matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        step(x)
    return fc.get_total_flops() / x.shape[0]


def time_step(step: Step, x: torch.Tensor, dev: torch.device, precision: str, warmup: int,
              iters: int) -> tuple[dict[str, float], torch.Tensor]:
    """Seconds per batch of ``step(x)``: ``warmup`` calls (the first timed alone: compilation,
    cudnn autotuning), then ``iters`` calls between two synchronisations; and the first output."""
    with torch.inference_mode(), autocast(dev, precision):
        sync(dev)
        t0 = time.perf_counter()
        out = step(x)
        sync(dev)
        first = time.perf_counter() - t0
        for _ in range(max(0, warmup - 1)):
            step(x)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(iters):
            step(x)
        sync(dev)
        per = (time.perf_counter() - t0) / iters
    return {"first_call_s": first, "s_per_batch": per}, out


def build_model(name: str, dev: torch.device, calib: torch.Tensor) -> Any:
    """Full-size random-weight model ``name`` on ``dev`` (FR: BatchNorm statistics of ``calib``)."""
    from exfiqa.models import fr as frmod
    from exfiqa.models.vitfiqa import build_vitfiqa

    torch.manual_seed(0)
    if name in ("T", "C"):
        return build_vitfiqa(variant=brl.QUALITY_VARIANTS[name]).to(dev).eval()
    arch_of = {"r100": "arcface", "serfiq": "arcface", "ir101": "curricularface"}
    arch, pre = frmod.FR_MODELS[arch_of[name]]
    model = frmod.FRModel(arch_of[name], frmod.build_fr(arch), pre, device=dev, arch=arch)
    brl._calibrate_bn(model, calib.cpu().numpy())
    return model


def steps_for(name: str, model: Any, dev: torch.device, compile_: bool,
              layouts: bool = True) -> Iterator[tuple[str, Step, Callable[[], None]]]:
    """``(variant, step, setup)`` to time for one model; ``setup()`` sets layout and cudnn flags.
    ``layouts=False``: only the variant extraction runs (and its compiled form)."""
    from exfiqa.extract.stage import vit_input
    from exfiqa.models.baselines import serfiq_features

    def cudnn(flag: bool) -> Callable[[], None]:
        def setup() -> None:
            torch.backends.cudnn.benchmark = flag
            if model_is_fr:
                model.backbone.to(memory_format=torch.channels_last)
        return setup

    model_is_fr = name not in ("T", "C")
    cuda = dev.type == "cuda"
    if name in ("T", "C"):
        def vit(x: torch.Tensor) -> torch.Tensor:
            return model.forward_exits(vit_input(x)).scores
        variants = [("as extract", vit, cudnn(cuda))]
    elif name == "serfiq":
        def ser(x: torch.Tensor) -> torch.Tensor:
            feats = model.backbone.forward_features(model.preprocess.tensor(x, memory_format=torch.channels_last))
            return serfiq_features(model, feats, 0, seed=0)
        variants = [("as extract", ser, cudnn(cuda))]
    else:
        def flip(x: torch.Tensor) -> torch.Tensor:
            return model.embed_batch(x)[0]

        def flip_contiguous(x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            y = model.backbone(model.preprocess.tensor(torch.cat([x, x.flip(2)]))).float()
            e = torch.nn.functional.normalize(y, dim=1)
            return torch.cat([e[:n], e[n:]], dim=1)

        def contiguous(flag: bool) -> Callable[[], None]:
            def setup() -> None:
                torch.backends.cudnn.benchmark = flag
                model.backbone.to(memory_format=torch.contiguous_format)
            return setup

        if cuda:
            variants = [("channels_last, cudnn.benchmark (as extract)", flip, cudnn(True)),
                        ("channels_last, no cudnn.benchmark", flip, cudnn(False)),
                        ("contiguous, cudnn.benchmark", flip_contiguous, contiguous(True))]
        else:
            variants = [("channels_last (as extract)", flip, cudnn(False)),
                        ("contiguous", flip_contiguous, contiguous(False))]
    yield from variants if layouts else variants[:1]
    if compile_:
        label, step, setup = variants[0]
        yield "torch.compile of: " + label, torch.compile(step, dynamic=False), setup


def agreement(name: str, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """bf16 vs fp32 outputs of one batch: scores (ViT, SER-FIQ) as max |diff| / std of the fp32
    scores; FR embeddings as the smallest cosine between the two (each half L2-normalised)."""
    a, b = a.float(), b.float()
    if name in ("r100", "ir101"):
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        return {"min_cosine_bf16_fp32": float(cos.min())}
    spread = float(a.std()) or 1.0
    return {"max_abs_diff_over_std": float((a - b).abs().max()) / spread}


def model_stage(args: argparse.Namespace, dev: torch.device, result: dict[str, Any], deadline: float) -> None:
    peak = result["device"].get("peak_bf16_tflops")
    rows: list[dict[str, Any]] = result["model_stage"]["rows"]
    precisions = list(args.precisions)
    ok, how = bf16_supported(dev)
    result["model_stage"]["bf16_supported"] = {"value": ok, "how": how}
    if not ok and "bf16" in precisions:
        precisions.remove("bf16")
        log(f"  bf16 skipped: not supported here ({how})")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, 112, 112, 3), dtype=torch.uint8, generator=g).to(dev)
    built: dict[str, Any] = {}
    for name in args.models:
        if time.perf_counter() > deadline:
            rows.append({"model": name, "skipped": "budget spent"})
            continue
        t0 = time.perf_counter()
        try:  # SER-FIQ runs on the ArcFace iResNet-100: the same network as r100
            model = built.pop("r100") if name == "serfiq" and "r100" in built else build_model(name, dev, x[:16])
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            rows.append({"model": name, "error": repr(exc)})
            log(f"  {name}: build failed: {exc!r}")
            continue
        build_s = time.perf_counter() - t0
        flops = None
        outputs: dict[str, torch.Tensor] = {}
        if name == "r100" and "serfiq" in args.models[args.models.index(name):]:
            built["r100"] = model
        layouts = not args.quick or name == "r100"  # --quick: the layout comparison on iResNet-100 only
        for variant, step, setup in steps_for(name, model, dev, args.compile, layouts):
            if flops is None:
                setup()
                flops = count_flops(step, x[:1])
            for precision in precisions:
                if time.perf_counter() > deadline:
                    rows.append({"model": name, "variant": variant, "precision": precision, "skipped": "budget spent"})
                    continue
                row: dict[str, Any] = {"model": name, "label": MODEL_LABELS[name], "variant": variant,
                                       "precision": precision, "batch": args.batch_size, "gflops_per_image": flops / 1e9}
                try:
                    setup()
                    t, out = time_step(step, x, dev, precision, args.warmup, args.iters)
                    ips = args.batch_size / t["s_per_batch"]
                    tflops = flops * ips / 1e12
                    row.update(t, images_per_s=ips, tflops=tflops,
                               share_of_bf16_peak=(tflops / peak) if peak else None)
                    if variant == steps_for_first(name, dev):
                        outputs[precision] = out[:256]
                except Exception as exc:  # noqa: BLE001
                    row["error"] = repr(exc)
                    traceback.print_exc()
                rows.append(row)
                log("  " + model_row_text(row))
        if "fp32" in outputs and "bf16" in outputs:
            result["model_stage"]["bf16_vs_fp32"][name] = agreement(name, outputs["fp32"], outputs["bf16"])
        result["model_stage"]["build_s"][name] = round(build_s, 2)
        del model, outputs
        torch.backends.cudnn.benchmark = False
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def steps_for_first(name: str, dev: torch.device) -> str:
    """The variant label extraction runs (the first one :func:`steps_for` yields)."""
    if name in ("T", "C", "serfiq"):
        return "as extract"
    return "channels_last, cudnn.benchmark (as extract)" if dev.type == "cuda" else "channels_last (as extract)"


def model_row_text(r: dict[str, Any]) -> str:
    head = f"{MODEL_LABELS.get(r['model'], r['model']):<22} {r.get('precision', ''):<5} {r.get('variant', ''):<46}"
    if "error" in r or "skipped" in r:
        return head + " " + str(r.get("error") or r.get("skipped"))
    share = f"{100 * r['share_of_bf16_peak']:5.1f}%" if r.get("share_of_bf16_peak") is not None else "  n/a"
    first = f" (first call {r['first_call_s']:.0f} s)" if r["variant"].startswith("torch.compile") else ""
    return (f"{head} {r['images_per_s']:9.1f} img/s {1e3 * r['s_per_batch']:9.1f} ms/batch "
            f"{r['gflops_per_image']:6.2f} GFLOP/img {r['tflops']:8.3f} TFLOP/s {share}{first}")


def best_rates(rows: list[dict[str, Any]], precision: str) -> dict[str, float]:
    """Fastest measured images/s per model at ``precision`` (any variant)."""
    out: dict[str, float] = {}
    for r in rows:
        if r.get("precision") == precision and "images_per_s" in r:
            out[r["model"]] = max(out.get(r["model"], 0.0), r["images_per_s"])
    return out


def paper_set(rows: list[dict[str, Any]], precision: str) -> dict[str, Any] | None:
    """Images/s of the paper's whole per-image model work (:data:`PAPER_SET`), from the best rate
    of each model: 1 / sum(count / rate); None unless every model was measured."""
    rates = best_rates(rows, precision)
    if not all(m in rates for m in PAPER_SET):
        return None
    flops = {r["model"]: r["gflops_per_image"] for r in rows if "gflops_per_image" in r}
    s_per_image = sum(c / rates[m] for m, c in PAPER_SET.items())
    gflops = sum(c * flops[m] for m, c in PAPER_SET.items())
    return {"precision": precision, "images_per_s": 1 / s_per_image, "gflops_per_image": gflops,
            "tflops": gflops / s_per_image / 1e3}


# ----------------------------------------------------------------------------- end to end


def render_crops(unique: int, seed: int, workers: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``unique`` SynthFace loose crops (sides 150/180/224 in turn, half degraded) + landmarks."""
    from exfiqa.demo.synth import WorldSpec, generate_items

    world = WorldSpec(seed=seed, n_identities=1, images_per_identity=1, degradation_prob=0.5)
    crops: list[np.ndarray] = [np.empty(0)] * unique
    lmk = np.zeros((unique, 5, 2))
    for k, side in enumerate(LOOSE_SIDES):
        sel = np.arange(k, unique, len(LOOSE_SIDES))
        if len(sel):
            b = generate_items(world, sel // 4, sel % 4, loose_size=side, workers=workers)
            for j, im, pts in zip(sel, b.images, b.landmarks, strict=True):
                crops[j], lmk[j] = im, np.round(pts, 4)
    return crops, lmk


def write_ijbc_like(root: Path, crops: list[np.ndarray], lmk: np.ndarray, n: int) -> None:
    """IJB-C 1:1 layout with ``n`` loose crops (the rendered ones repeated: decoding costs the same);
    templates of 4 images from 2 media, each template compared with the next two."""
    idx = np.arange(n) % len(crops)
    tids = np.arange(n) // 4 + 1
    n_t = int(tids[-1])
    pairs = [(t, u) for t in range(1, n_t + 1) for u in (t + 1, t + 2) if u <= n_t]
    ident = {t: int(idx[4 * (t - 1)]) // 4 for t in range(1, n_t + 1)}
    labels = [int(ident[a] == ident[b]) for a, b in pairs]
    ds.write_ijbc(root, [crops[i] for i in idx], lmk[idx], tids, np.arange(n) // 2 + 10_000, pairs, labels,
                  fmt="jpeg", quality=95)


def e2e_config(work: Path, paper: dict[str, Any], dev: torch.device, args: argparse.Namespace,
               workers: int, tag: str) -> Path:
    """A config like configs/paper.yaml on the temporary folder, one arrays_dir per ``tag``."""
    raw = dict(paper)
    raw.update(
        run_name="bench-gpu", data_root=str(work), cache_dir=str(work / "cache"), results_dir=str(work / "results"),
        arrays_dir=str(work / "arrays" / tag), device=str(dev), batch_size=args.e2e_batch_size, workers=workers,
        precision=args.e2e_precision,
        datasets={"ijbc": {"kind": "ijbc", "root": "IJB_C", "label": "IJB-C-like"},
                  "warm": {"kind": "ijbc", "root": "IJB_C_warm", "label": "warm-up"}},
    )
    raw.pop("attention_samples", None)
    path = work / f"config-{tag}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def decode_only(cfg: Any, dataset: str, workers: int, pin: bool) -> dict[str, float]:
    """The extraction's DataLoader (its ImageSet, batches of batch_size, ``workers``) without models."""
    import exfiqa.extract.stage as ex

    bench = ds.load_benchmark(cfg.datasets[dataset].kind, **cfg.datasets[dataset].args)
    images = ex.ImageSet(bench, lambda: ex.reopen_benchmark(cfg, dataset), sharpness="sharpness" in cfg.baselines)
    n, b = len(bench), cfg.batch_size
    loader = ex.loader(images, [list(range(s, min(s + b, n))) for s in range(0, n, b)], workers, pin=pin)
    t0 = time.perf_counter()
    t_first, seen, after_first = None, 0, 0
    for _, imgs, _, _ in loader:
        seen += len(imgs)
        if t_first is None:
            t_first = time.perf_counter()
        else:
            after_first += len(imgs)
    total = time.perf_counter() - t0
    steady = after_first / (time.perf_counter() - t_first) if t_first and after_first else float("nan")
    return {"images": seen, "seconds": total, "images_per_s": seen / total, "steady_images_per_s": steady}


def single_core_decode(crops: list[np.ndarray], bench_root: Path, n: int) -> dict[str, float]:
    """Images/s of one process: decode of an aligned 112x112 JPEG q95 from bytes (``.bin`` /
    XQLFW / Adience), and ``Benchmark.image`` of the IJB-C-like folder (decode + 5-point align)."""
    from exfiqa.demo.synth import WorldSpec, generate_items

    world = WorldSpec(seed=1, n_identities=1, images_per_identity=1, degradation_prob=0.5)
    k = min(n, 64)
    faces = generate_items(world, np.arange(k) // 4, np.arange(k) % 4).images
    blobs = [ds.encode_image(faces[i % k]) for i in range(n)]
    t0 = time.perf_counter()
    for blob in blobs:
        ds.decode_image(blob)
    aligned = n / (time.perf_counter() - t0)
    bench = ds.read_ijbc(bench_root)
    m = min(n, len(bench))
    t0 = time.perf_counter()
    for i in range(m):
        bench.image(i)
    loose = m / (time.perf_counter() - t0)
    return {"aligned_jpeg_112_per_s": aligned, "ijbc_loose_decode_align_per_s": loose}


def end_to_end(args: argparse.Namespace, dev: torch.device, result: dict[str, Any], deadline: float) -> None:
    from exfiqa.config import load_config
    from exfiqa.extract.stage import extract
    from exfiqa.study import Study

    e2e = result["end_to_end"]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="exfiqa-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        cores = cpu_info()["cores"]
        crops, lmk = render_crops(args.unique, 0, workers=min(cores, 8))
        n_warm = min(args.images, max(4, (2 if dev.type == "cuda" else 1) * args.e2e_batch_size))
        write_ijbc_like(work / "IJB_C", crops, lmk, args.images)
        write_ijbc_like(work / "IJB_C_warm", crops, lmk, n_warm)
        paper = brl.read_paper_config(REPO / "configs" / "paper.yaml")
        spec = brl.LayoutSpec(seed=0, images_per_benchmark=4, small_models=args.small_models)
        brl.build_checkpoints(paper, work, spec, brl.calibration_faces(0), lambda s: None)
        e2e.update(images=args.images, warm_images=n_warm, unique_crops=args.unique, precision=args.e2e_precision,
                   small_models=args.small_models, batch=args.e2e_batch_size, build_s=round(time.perf_counter() - t0, 1),
                   folder_mib=round(sum(p.stat().st_size for p in (work / "IJB_C").rglob("*") if p.is_file()) / 2**20, 1))
        log(f"  built {args.images} loose crops ({args.unique} distinct) + {'small' if args.small_models else 'full-size'} "
            f"checkpoints in {e2e['build_s']} s ({e2e['folder_mib']} MiB of IJB-C-like files)")
        cfg0 = load_config(e2e_config(work, paper, dev, args, 1, "digests"))
        study = Study(cfg0, progress=False)
        for name in ("ijbc", "warm"):
            study.benchmark(name).fingerprint(study.digests)  # the digest index: later runs only stat
        e2e["single_core"] = sc = single_core_decode(crops, work / "IJB_C", args.single_core_images)
        log(f"  one core: aligned 112 JPEG decode {sc['aligned_jpeg_112_per_s']:.0f} img/s; IJB-C loose crop "
            f"decode + align {sc['ijbc_loose_decode_align_per_s']:.0f} img/s")
        for w in args.workers:
            if time.perf_counter() > deadline:
                e2e["runs"].append({"workers": w, "skipped": "budget spent"})
                continue
            run: dict[str, Any] = {"workers": w}
            try:
                cfg = load_config(e2e_config(work, paper, dev, args, w, f"w{w}"))
                run["decode_only"] = decode_only(cfg, "ijbc", w, pin=dev.type == "cuda")
                t = time.perf_counter()
                (warm,) = extract(cfg, ["warm"], progress=False, log=lambda s: None)
                run["warm_call_s"] = time.perf_counter() - t
                t = time.perf_counter()
                (rep,) = extract(cfg, ["ijbc"], progress=False, log=lambda s: None)
                run["call_s"] = time.perf_counter() - t
                if not rep.computed or rep.images_read != args.images:
                    raise RuntimeError(f"extract computed {rep.computed}, read {rep.images_read} images; expected "
                                       f"every array from {args.images} reads")
                extra = run["call_s"] - run["warm_call_s"]  # <= 0: the fixed cost's noise hides the images
                marginal = (args.images - n_warm) / extra if extra > 0 else None
                run.update(report_s=rep.seconds, images_read=rep.images_read, arrays=sorted(rep.computed),
                           images_per_s=args.images / run["call_s"], marginal_images_per_s=marginal,
                           marginal_over_decode_only=marginal / run["decode_only"]["steady_images_per_s"] if marginal else None)
            except Exception as exc:  # noqa: BLE001
                run["error"] = repr(exc)
                traceback.print_exc()
            e2e["runs"].append(run)
            log("  " + e2e_row_text(run))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def e2e_row_text(r: dict[str, Any]) -> str:
    if "error" in r or "skipped" in r:
        return f"workers {r['workers']:>2}: {r.get('error') or r.get('skipped')}"
    d, m = r["decode_only"], r["marginal_images_per_s"]
    marginal = f"{m:8.1f} img/s" if m else "     n/a (fixed cost >= call)"
    ratio = f"{r['marginal_over_decode_only']:.2f}" if m else "n/a"
    return (f"workers {r['workers']:>2}: extract {r['images_per_s']:8.1f} img/s per call ({r['call_s']:.1f} s; "
            f"fixed cost {r['warm_call_s']:.1f} s), marginal {marginal} | decode+align "
            f"alone {d['steady_images_per_s']:8.1f} img/s steady ({d['images_per_s']:.1f} incl. start) | "
            f"marginal / decode {ratio}")


# ----------------------------------------------------------------------------- projection


def projection(result: dict[str, Any]) -> dict[str, Any] | None:
    """Minutes of one extraction pass per paper benchmark on THIS device: each image costs the
    slower of the paper's model work (best measured precision) and decoding (the best decode-only
    rate measured, at its worker count; IJB-C decode + align, an upper bound for the aligned sets)."""
    rows = result["model_stage"]["rows"]
    sets = [s for s in (paper_set(rows, p) for p in ("bf16", "fp32")) if s]
    runs = [r for r in result["end_to_end"].get("runs", []) if "decode_only" in r]
    if not sets or not runs:
        return None
    best = max(sets, key=lambda s: s["images_per_s"])
    dec = max(runs, key=lambda r: r["decode_only"]["steady_images_per_s"])
    rate = min(best["images_per_s"], dec["decode_only"]["steady_images_per_s"])
    return {"model_set": best, "decode_workers": dec["workers"],
            "decode_images_per_s": dec["decode_only"]["steady_images_per_s"], "images_per_s": rate,
            "limited_by": "models" if best["images_per_s"] < dec["decode_only"]["steady_images_per_s"] else "decoding",
            "minutes": {k: n / rate / 60 for k, n in PAPER_IMAGES.items()}}


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda if available)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: small batch, few iterations, small e2e models")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on CPU (2 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per measurement (default CUDA 5, CPU 1)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls (default CUDA 20, CPU 3, --quick 1)")
    ap.add_argument("--models", nargs="+", default=list(PAPER_SET), choices=list(PAPER_SET))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of each model's step")
    ap.add_argument("--e2e-batch-size", type=int, default=None, help="extraction batch_size (default --batch-size; --quick 8)")
    ap.add_argument("--images", type=int, default=None, help="e2e loose crops (default CUDA 8192, CPU 128, --quick 32)")
    ap.add_argument("--unique", type=int, default=None, help="distinct rendered crops (default 512 CUDA, 48 CPU)")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="e2e DataLoader workers (CUDA 4 8 16; CPU 1 2)")
    ap.add_argument("--small-models", action="store_true", default=None,
                    help="e2e with small checkpoints (default with --quick; full size otherwise)")
    ap.add_argument("--e2e-precision", choices=["fp32", "bf16"], default=None, help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--single-core-images", type=int, default=None, help="images of the one-core decode rates")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--budget-s", type=float, default=None, help="skip what is left after this many seconds (CUDA 480)")
    ap.add_argument("--keep", default=None, help="build the e2e folder here and keep it (default: a temp folder)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    args.device = ("cuda" if args.device == "auto" else args.device) if cuda else "cpu"
    q = args.quick
    defaults = {"batch_size": 256 if cuda else 2 if q else 32, "warmup": 5 if cuda else 1, "iters": 20 if cuda else 1 if q else 3,
                "images": 8192 if cuda else 32 if q else 128, "unique": 512 if cuda else 32 if q else 48,
                "workers": [4, 8, 16] if cuda else [1, 2], "small_models": q, "e2e_precision": "bf16" if cuda else "fp32",
                "single_core_images": 400 if cuda else 100, "budget_s": 480.0 if cuda else float("inf")}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.e2e_batch_size is None:
        args.e2e_batch_size = 8 if q and not cuda else args.batch_size
    for k in ("batch_size", "e2e_batch_size", "iters", "images", "unique", "single_core_images"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.warmup < 1:
        ap.error(f"--warmup must be >= 1, got {args.warmup}")
    if args.unique % 4 or args.unique > args.images:
        ap.error(f"--unique must be a multiple of 4 and <= --images, got {args.unique} (images {args.images})")
    return args


def write_json(result: dict[str, Any], out: str | None) -> None:
    if out:
        with atomic_write(out, overwrite=True) as fh:
            json.dump(result, fh, indent=1, default=str)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dev = torch.device(args.device)
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    result: dict[str, Any] = {
        "bench": "bench/bench_gpu.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
        "device": device_info(dev), "cpu": cpu_info(),
        "model_stage": {"rows": [], "bf16_vs_fp32": {}, "build_s": {}}, "end_to_end": {"runs": []},
    }
    d = result["device"]
    log(f"bench_gpu: {d['name']} ({dev}), torch {d['torch']}, CPU {result['cpu']['model']} x{result['cpu']['cores']} "
        f"(avx512f {'yes' if result['cpu']['avx512f'] else 'no'}, avx512_bf16 {'yes' if result['cpu']['avx512_bf16'] else 'no'}), "
        f"dense bf16 peak {d['peak_bf16_tflops'] or 'n/a'} TFLOP/s, load average {result['cpu']['load_average_1min']}")
    if not args.skip_model:
        log(f"\nmodel stage: batch {args.batch_size}, {args.warmup} warm-up + {args.iters} timed calls, random uint8 faces on {dev}")
        model_stage(args, dev, result, deadline)
        for p in ("fp32", "bf16"):
            s = paper_set(result["model_stage"]["rows"], p)
            if s:
                result["model_stage"][f"paper_set_{p}"] = s
                share = f", {100 * s['tflops'] / d['peak_bf16_tflops']:.1f}% of the bf16 peak" if d["peak_bf16_tflops"] else ""
                log(f"  paper's per-image model work ({' + '.join(f'{c}x{m}' for m, c in PAPER_SET.items())}), {p}: "
                    f"{s['images_per_s']:.3g} img/s, {s['gflops_per_image']:.1f} GFLOP/img, {s['tflops']:.3f} TFLOP/s{share}")
        for m, a in result["model_stage"]["bf16_vs_fp32"].items():
            log(f"  bf16 vs fp32, {MODEL_LABELS[m]}: " + ", ".join(f"{k} {v:.4g}" for k, v in a.items()))
        write_json(result, args.out)
    if not args.skip_e2e:
        log(f"\nend to end: exfiqa.extract.stage on {args.images} IJB-C-like JPEG loose crops, {args.e2e_precision}, "
            f"batch {args.e2e_batch_size}, workers {args.workers}")
        end_to_end(args, dev, result, deadline)
        write_json(result, args.out)
    proj = projection(result)
    if proj:
        result["projection_this_device"] = proj
        log(f"\nprojected one pass per paper benchmark on this device ({proj['images_per_s']:.3g} img/s, limited by "
            f"{proj['limited_by']}: models {proj['model_set']['images_per_s']:.3g} img/s {proj['model_set']['precision']}, "
            f"decode {proj['decode_images_per_s']:.1f} img/s with workers={proj['decode_workers']}):")
        log("  " + ", ".join(f"{k} {v:.1f} min" if v < 600 else f"{k} {v / 60:.1f} h" for k, v in proj["minutes"].items()))
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    result["cpu"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    write_json(result, args.out)
    log(f"\ntotal {result['total_s']} s (load average at the end {result['cpu']['load_average_1min_end']})")
    print("BENCH_GPU_JSON " + json.dumps(result, default=str, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
