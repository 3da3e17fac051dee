"""IJB-C- and Adience-scale rehearsal of the evaluation path: time and peak memory per stage.

Writes, under a temporary folder (``--workdir`` to keep it), a benchmark with IJB-C's exact
counts in the real ``meta/`` layout that :func:`exfiqa.readers.read_ijbc` reads (469,375
samples, 23,124 templates: 3,531 enrolment x 19,593 probe templates, 15,658,489 comparisons of
which 19,557 mated; no image files: evaluation never decodes an image) and an Adience-size
all-vs-all set (20,000 images in identity folders, one tiny JPEG hard-linked everywhere; about
200M pairs). Synthetic per-sample arrays enter through the documented layout
(:mod:`exfiqa.store.arrays`, ``producer: external``): embeddings (N, 1024) float32 for four FR models,
exit scores (N, 12) for two quality models, three baselines. They are random but structured so
that quality matters: a latent quality per sample raises the noise of its embeddings (lower
mated similarity) and drives the exit scores, with noise that decreases with depth.

Each scenario then runs in its own process with a fresh :class:`exfiqa.study.Study` and prints
the wall time, the resident memory after each stage and the process's peak (``VmHWM``; its
anonymous part ``RssAnon`` is printed too, since memory-mapped arrays count as file-backed):

* ``ijbc1``: one (FR, quality) pair on IJB-C, every method x 3 FMRs x both conventions, pAUC table
  (target <= 60 s, <= 3 GB);
* ``ijbc-nb``: the notebooks' evaluation for 4 FR x 2 quality models on IJB-C, one process per
  notebook as ``make paper`` runs them (target <= 20 min in all, <= 8 GB);
* ``adience1``: Adience-size all-vs-all, one pair, every method x 3 FMRs (target <= 10 min, <= 8 GB).

Usage: ``python bench/bench_scale.py [--scenarios ijbc1,ijbc-nb,adience1] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_SAMPLES, N_TEMPLATES, N_GALLERY = 469_375, 23_124, 3_531
N_COMPARISONS, N_MATED = 15_658_489, 19_557
N_ADIENCE = 20_000
EMB_HALF = 512
DEPTH = 12
FR_MODELS = ("arcface", "elasticface", "magface", "curricularface")
QUALITY_MODELS = ("T", "C")
BASELINES = ("magface_norm", "serfiq", "sharpness")
CHUNK = 50_000


# ------------------------------------------------------------------------------ measuring


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Stages:
    """Prints one line per stage: wall and CPU seconds (all threads), RSS now, peak RSS so far
    (``VmHWM``), anonymous RSS now."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.t0 = self.last = time.perf_counter()
        self.cpu0 = self.cpu = time.process_time()
        self.rows: list[dict] = []

    def __call__(self, stage: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        row = {"scenario": self.scenario, "stage": stage, "seconds": round(now - self.last, 2), "cpu_s": round(cpu - self.cpu, 1),
               "rss_gb": round(_status("VmRSS") / 2**30, 2), "peak_gb": round(_status("VmHWM") / 2**30, 2),
               "anon_gb": round(_status("RssAnon") / 2**30, 2)}
        self.rows.append(row)
        print(f"  {stage:<62} {row['seconds']:>7.1f} s  cpu {row['cpu_s']:>6.1f} s   rss {row['rss_gb']:5.2f} GB   "
              f"peak {row['peak_gb']:5.2f} GB   anon {row['anon_gb']:5.2f} GB", flush=True)
        self.last, self.cpu = now, cpu

    def total(self) -> None:
        secs, cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
        print(f"  {'TOTAL ' + self.scenario:<62} {secs:>7.1f} s  cpu {cpu:>6.1f} s   peak {_status('VmHWM') / 2**30:5.2f} GB", flush=True)
        self.rows.append({"scenario": self.scenario, "stage": "TOTAL", "seconds": round(secs, 1),
                          "peak_gb": round(_status("VmHWM") / 2**30, 2)})


# ------------------------------------------------------------------------------ writing the data


def _write_lines(path: Path, columns: list[np.ndarray], fmts: list[str]) -> None:
    """Whitespace-separated columns, written in chunks (``fmt`` per column, numpy-formatted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(columns[0])
    with open(path, "w") as fh:
        for s in range(0, n, 1_000_000):
            block = np.stack([np.char.mod(f, c[s : s + 1_000_000]) for f, c in zip(fmts, columns, strict=True)], axis=1)
            fh.write("\n".join(" ".join(r) for r in block.tolist()) + "\n")


def _ijbc_layout(root: Path, rng: np.random.Generator) -> None:
    """The three meta files of IJB-C 1:1 with its exact counts."""
    # templates: 3,531 enrolment (one per subject) + 19,593 probes; every template has >= 1 image
    n_probe = N_TEMPLATES - N_GALLERY
    tid_gallery = 1 + 7 * np.arange(N_GALLERY)
    tid_probe = 200_000 + 3 * np.arange(n_probe)
    tids = np.concatenate([tid_gallery, tid_probe])
    subject = np.concatenate([np.arange(N_GALLERY), rng.integers(0, N_GALLERY, n_probe)])
    sizes = 1 + rng.multinomial(N_SAMPLES - N_TEMPLATES, rng.dirichlet(np.full(N_TEMPLATES, 0.7)))
    t_of = np.repeat(np.arange(N_TEMPLATES), sizes)  # template index of each sample
    media_len = rng.integers(1, 9, N_SAMPLES)  # consecutive images of a template share a media
    new_media = np.r_[True, t_of[1:] != t_of[:-1]] | (rng.random(N_SAMPLES) < 1 / media_len)
    media = np.cumsum(new_media)
    names = np.array([f"img/{k}.jpg" for k in range(N_SAMPLES)])
    _write_lines(root / "meta/ijbc_face_tid_mid.txt", [names, tids[t_of], media], ["%s", "%d", "%d"])
    pts = np.array([38.29, 51.70, 73.53, 51.50, 56.03, 71.74, 41.55, 92.37, 70.73, 92.20]) + 20
    cols = [names] + [np.full(N_SAMPLES, v) for v in pts] + [rng.uniform(0.5, 1.0, N_SAMPLES)]
    _write_lines(root / "meta/ijbc_name_5pts_score.txt", cols, ["%s"] + ["%.2f"] * 10 + ["%.4f"])
    # pairs: each probe against its subject's enrolment template (19,557 of them) and about 800
    # non-mated enrolment templates, grouped by probe, sorted by enrolment template
    mated_probe = np.zeros(n_probe, bool)
    mated_probe[rng.choice(n_probe, N_MATED, replace=False)] = True
    n_non = N_COMPARISONS - N_MATED
    per = np.full(n_probe, n_non // n_probe)
    per[: n_non - per.sum()] += 1
    a_parts, b_parts, y_parts = [], [], []
    for s in range(0, n_probe, 1000):
        e = min(s + 1000, n_probe)
        keys = rng.random((e - s, N_GALLERY))
        keys[np.arange(e - s), subject[N_GALLERY + np.arange(s, e)]] = np.inf  # never the mate
        order = np.argsort(keys, axis=1)
        for p in range(s, e):
            g = np.sort(order[p - s, : per[p]])
            label = np.zeros(g.size, np.int8)
            if mated_probe[p]:
                g = np.sort(np.r_[g, subject[N_GALLERY + p]])
                label = (g == subject[N_GALLERY + p]).astype(np.int8)
            a_parts.append(tid_gallery[g])
            b_parts.append(np.full(g.size, tid_probe[p]))
            y_parts.append(label)
    a, b, y = np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(y_parts)
    assert a.size == N_COMPARISONS and int(y.sum()) == N_MATED
    _write_lines(root / "meta/ijbc_template_pair_label.txt", [a, b, y], ["%d", "%d", "%d"])


def _adience_layout(root: Path, rng: np.random.Generator) -> None:
    """20,000 images in identity folders (one tiny JPEG, hard-linked)."""
    from PIL import Image

    sizes = 1 + rng.poisson(7.8, 2300)
    sizes = sizes[np.cumsum(sizes) <= N_ADIENCE]
    sizes = np.r_[sizes, N_ADIENCE - sizes.sum()] if sizes.sum() < N_ADIENCE else sizes
    src = root.parent / "one.jpg"
    Image.new("RGB", (112, 112), (128, 128, 128)).save(src, quality=50)
    for ident, n in enumerate(sizes):
        d = root / f"id{ident:05d}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(int(n)):
            os.link(src, d / f"{k:03d}.jpg")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_external(store, bench, dataset: str, kind: str, name: str, shape: tuple, fill) -> None:
    """An external array of the documented layout written block-wise (as another machine would)."""
    from numpy.lib.format import open_memmap

    from exfiqa.store.arrays import manifest_path

    path = store.path(dataset, kind, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    for s in range(0, shape[0], CHUNK):
        out[s : s + CHUNK] = fill(s, min(s + CHUNK, shape[0]))
    out.flush()
    del out
    manifest = store.manifest(bench, dataset, kind, name, shape, "external")
    manifest_path(path).write_text(json.dumps({**manifest, "complete": True}, indent=2) + "\n")


def _structure(bench) -> tuple[np.ndarray, np.ndarray]:
    """``(subject, group)`` of every sample, read back from the benchmark itself.

    IJB-C: group = template; an enrolment template (side a) is its own subject, a probe takes
    its mate's (a probe without a mated comparison gets a subject of its own). Adience: subject =
    identity folder, group = the sample.
    """
    n = len(bench)
    if bench.level == "sample":
        subject = np.unique(bench.samples["identity"].to_numpy(), return_inverse=True)[1]
        return subject.ravel(), np.arange(n)
    tids, group = np.unique(bench.samples["template_id"].to_numpy(), return_inverse=True)
    comp = bench.comparisons
    a, b = np.searchsorted(tids, comp["a"].to_numpy()), np.searchsorted(tids, comp["b"].to_numpy())
    subj_t = np.arange(tids.size)  # own subject unless a mated comparison says otherwise
    mated = comp["mated"].to_numpy(bool)
    subj_t[b[mated]] = a[mated]
    return subj_t[group.ravel()], group.ravel()


def _write_arrays(study, dataset: str, seed: int) -> None:
    """Synthetic embeddings, exit scores and baselines for ``dataset`` (see the module docstring).

    A latent quality per group (template, or sample) sets the size of a nuisance shared by the
    group's embeddings (``1.0 * exp(-0.7 z)``, times a unit random direction): low quality, low
    mated similarity (about 5 % FNMR at FMR 1e-3 overall, mostly in the lowest-quality 30 %). A
    sample's latent quality (its group's plus noise for templates) drives the exit scores with
    noise 2.5 / depth and the baselines with more noise.
    """
    bench = study.benchmark(dataset)
    n = len(bench)
    subject, group = _structure(bench)
    rng = np.random.default_rng(seed)
    z_group = rng.normal(size=int(group.max()) + 1).astype(np.float32)
    latent = z_group[group] + (0.5 * rng.normal(size=n).astype(np.float32) if bench.level == "template" else 0)
    shared = (1.0 * np.exp(-0.7 * z_group)).astype(np.float32)  # nuisance size per group
    own = 1.0 * np.exp(-0.5 * latent) if bench.level == "template" else np.zeros(n, np.float32)
    n_subj = int(subject.max()) + 1
    for r, fr in enumerate(FR_MODELS):
        g0 = np.random.default_rng([seed, r])
        ids = _unit(g0.normal(size=(n_subj, EMB_HALF))).astype(np.float32)
        nuisance = (g0.normal(size=(z_group.size, EMB_HALF)) * (shared / np.sqrt(EMB_HALF))[:, None]).astype(np.float32)

        def emb(s: int, e: int, r: int = r, ids: np.ndarray = ids, nuisance: np.ndarray = nuisance) -> np.ndarray:
            g = np.random.default_rng([seed, r, s])
            noise = g.normal(size=(e - s, EMB_HALF)).astype(np.float32) * (own[s:e] / np.sqrt(EMB_HALF))[:, None]
            x = _unit(ids[subject[s:e]] + nuisance[group[s:e]] + noise)
            flip = _unit(x + 0.15 * g.normal(size=x.shape).astype(np.float32) / np.sqrt(EMB_HALF))
            return np.concatenate([x, flip], axis=1)

        _write_external(study.arrays, bench, dataset, "emb", fr, (n, 2 * EMB_HALF), emb)
    for k, q in enumerate(QUALITY_MODELS):
        def exits(s: int, e: int, k: int = k) -> np.ndarray:
            g = np.random.default_rng([seed, 100 + k, s])
            depth = np.arange(1, DEPTH + 1)
            return (latent[s:e, None] * (0.5 + depth / DEPTH) + g.normal(size=(e - s, DEPTH)) * (2.5 / depth)).astype(np.float32)

        _write_external(study.arrays, bench, dataset, "exits", q, (n, DEPTH), exits)
    for k, (m, sd) in enumerate(zip(BASELINES, (0.8, 1.2, 1.6), strict=True)):
        def base(s: int, e: int, k: int = k, sd: float = sd) -> np.ndarray:
            return latent[s:e] + sd * np.random.default_rng([seed, 200 + k, s]).normal(size=e - s).astype(np.float32)

        _write_external(study.arrays, bench, dataset, "baseline", m, (n,), base)


def arrays(work: Path) -> None:
    """(Re)write the per-sample arrays of both benchmarks."""
    from exfiqa.config import load_config
    from exfiqa.store.arrays import arrays_root
    from exfiqa.study import Study

    st = Stages("arrays")
    cfg = load_config(work / "scale.yaml")
    shutil.rmtree(arrays_root(cfg), ignore_errors=True)
    study = Study(cfg, progress=False)
    _write_arrays(study, "ijbc", seed=1)
    st("IJB-C arrays (4 x 1.9 GB embeddings)")
    _write_arrays(study, "adience", seed=2)
    st("Adience arrays")
    st.total()


def _tiny_quality_models(root: Path) -> None:
    """Small random-weight ViT-FIQA checkpoints of depth 12 (``Study.methods`` reads the depth)."""
    from exfiqa.models.vitfiqa import build_vitfiqa, save_vitfiqa

    for q, variant in (("T", "token"), ("C", "crfiqa")):
        save_vitfiqa(build_vitfiqa(variant=variant, embed_dim=32, num_heads=2, feature_dim=16), root / f"vitfiqa_{q}.pt", overwrite=True)


def _config(work: Path) -> Path:
    fr = "\n".join(f"  {m}: {{checkpoint: fr/{m}.pt, label: {m}}}" for m in FR_MODELS)
    text = f"""run_name: scale
data_root: {work / "data"}
cache_dir: {work / "cache"}
results_dir: {work / "results"}
arrays_dir: {work / "arrays"}
datasets:
  ijbc: {{kind: ijbc, root: ijbc, label: IJB-C}}
  adience: {{kind: adience, root: adience, label: Adience}}
fr_models:
{fr}
quality_models:
  T: {{checkpoint: vitfiqa/vitfiqa_T.pt, num_heads: 2, label: ViT-FIQA (T)}}
  C: {{checkpoint: vitfiqa/vitfiqa_C.pt, num_heads: 2, label: ViT-FIQA (C)}}
baselines: [{", ".join(BASELINES)}]
fmr_targets: [0.01, 0.001, 0.0001]
discard_limit: 0.3
convention: recompute
device: cpu
batch_size: 128
seed: 0
headline: {{dataset: ijbc, fr_model: arcface, fmr: 0.001}}
"""
    path = work / "scale.yaml"
    path.write_text(text)
    return path


def build(work: Path) -> None:

    st = Stages("build")
    data = work / "data"
    rng = np.random.default_rng(0)
    _ijbc_layout(data / "ijbc", rng)
    st("IJB-C meta files")
    _adience_layout(data / "adience", rng)
    st("Adience folders (hard links)")
    for m in FR_MODELS:
        (data / "fr").mkdir(parents=True, exist_ok=True)
        (data / "fr" / f"{m}.pt").write_bytes(b"not read: embeddings come from the layout\n")
    (data / "vitfiqa").mkdir(parents=True, exist_ok=True)
    _tiny_quality_models(data / "vitfiqa")
    _config(work)
    st("config, checkpoints")
    st.total()


# ------------------------------------------------------------------------------ scenarios


def _study(work: Path, datasets: list[str], fr_models: list[str], quality_models: list[str]):
    from exfiqa.config import load_config
    from exfiqa.study import Study

    return Study(load_config(work / "scale.yaml").select(datasets, fr_models, quality_models), progress=False)


def scenario_one_pair(work: Path, dataset: str, fr: str = "arcface", quality: str = "T") -> None:
    """One (FR, quality) pair: every method x 3 FMRs x both conventions, and the pAUC table."""
    from exfiqa.report.bootstrap_tables import paired_vs_reference
    from exfiqa.report.frames import pauc_all
    from exfiqa.report.layers import fr_sanity

    st = Stages(f"{dataset}1")
    study = _study(work, [dataset], [fr], [quality])
    comp = study.comparison_set(dataset)
    st(f"read benchmark ({comp.n:,} comparisons)")
    methods = study.methods(quality, dataset)
    for m in methods:
        study.sample_scores(dataset, quality, m)
    study.embeddings(dataset, fr)
    st("load + check the per-sample arrays")
    scores = study.scores(dataset, fr)
    if hasattr(scores, "sim"):
        st("similarities (template features, float32 GEMM tiles)")
    else:
        scores.top_nonmated(1)
        st("Gram scan: mated + top non-mated similarities")
    for m in methods:
        study.ordering(dataset, quality, m)
    st(f"orders of {len(methods)} methods")
    tables = {}
    for conv in ("fixed", "recompute"):
        tables[conv] = study.pauc_frame(dataset, fr, quality, methods, scale=1000, convention=conv)
        st(f"EDC + pAUC, {len(methods)} methods x 3 FMRs, {conv}")
    pauc = pauc_all(study, scale=1000)
    st("pauc_all (the config's convention)")
    head = pauc[np.isclose(pauc["fmr"], 1e-3)].set_index("method")["pauc"].round(3)
    print("  pAUC x1e3 at FMR 1e-3:", head.to_dict(), flush=True)
    st.total()
    extra = Stages(f"{dataset}1, beyond the target")
    fr_sanity(study)
    extra("fr_sanity (accuracy, EER, FNMR@FMR)")
    paired_vs_reference(study, quality, fr, ["EX-FIQA-F", "EX-FIQA-FW"], "Exit 12", 1e-3, n_boot=300)
    extra("paired bootstrap, F and FW vs exit 12, 300 resamples")
    extra.total()


def _notebook01(study, st: Stages) -> None:
    """Notebook 01's evaluation calls (its table and figure assembly aside)."""
    from exfiqa.report.frames import edc_all, pauc_all
    from exfiqa.report.layers import depth_summary, fr_sanity, rank_correlation

    cfg = study.config
    fr0 = next(iter(cfg.fr_models))
    fr_sanity(study)
    st("fr_sanity (accuracy, EER, FNMR@FMR; 4 FR models)")
    for q in cfg.quality_models:
        edc_all(study, q, fr0)
    st("edc_all (2 quality models, one FR model)")
    pauc = pauc_all(study, scale=1000)
    st("pauc_all (4 FR x 2 quality models)")
    depth_summary(pauc, dict.fromkeys(cfg.quality_models, DEPTH), 1e-3)
    for q in cfg.quality_models:
        sq = study.sample_quality("ijbc", q)
        rank_correlation(sq, [f"Exit {k}" for k in range(1, DEPTH + 1)] + ["EX-FIQA-FW"])
    st("depth summary, rank correlations")


def _notebook03(study, st: Stages, n_boot: int) -> None:
    """Notebook 03's evaluation calls: pAUC table, paired bootstrap, fusion strategies."""
    from exfiqa.report.bootstrap_tables import fusion_bootstrap
    from exfiqa.report.frames import pauc_all
    from exfiqa.report.fusion_report import strategy_table

    cfg = study.config
    fr0 = next(iter(cfg.fr_models))
    pauc_all(study, scale=1000)
    st("pauc_all (4 FR x 2 quality models)")
    fusion_bootstrap(study, fr0, 1e-3, n_boot)
    st(f"fusion_bootstrap (F, FW vs exit 12, {n_boot} resamples, 2 quality models)")
    strategy_table(study, fr0, 1e-3, "ijbc")
    st("strategy_table (weight search, 214 candidates x 2, 7 strategies)")


def _notebook04(study, st: Stages) -> None:
    """Notebook 04's evaluation calls: pAUC table and the adaptive early exit."""
    from exfiqa.report.early_exit import adaptive_study
    from exfiqa.report.frames import pauc_all

    cfg = study.config
    pauc_all(study, scale=1000)
    st("pauc_all (4 FR x 2 quality models)")
    adaptive_study(study, next(iter(cfg.fr_models)), 1e-4, 0.2, 0.5, 3)
    st("adaptive_study (2 quality models)")


def scenario_notebook(work: Path, which: str, n_boot: int) -> None:
    st = Stages(f"ijbc-nb{which}")
    study = _study(work, ["ijbc"], list(FR_MODELS), list(QUALITY_MODELS))
    {"01": _notebook01, "03": lambda s, t: _notebook03(s, t, n_boot), "04": _notebook04}[which](study, st)
    st.total()


def _run(work: Path, *args: str) -> None:
    subprocess.run([sys.executable, __file__, "--workdir", str(work), "--child", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temporary folder)")
    ap.add_argument("--scenarios", default="ijbc1,ijbc-nb,adience1")
    ap.add_argument("--n-boot", type=int, default=300, help="bootstrap resamples in notebook 03 (its default)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            build(args.workdir)
        elif kind == "arrays":
            arrays(args.workdir)
        elif kind == "one":
            scenario_one_pair(args.workdir, rest[0])
        elif kind == "nb":
            scenario_notebook(args.workdir, rest[0], args.n_boot)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="exfiqa-scale-"))
    try:
        if not (work / "scale.yaml").is_file():
            print(f"writing the rehearsal data under {work}", flush=True)
            _run(work, "build")
            _run(work, "arrays")
        for sc in args.scenarios.split(","):
            print(f"scenario {sc}", flush=True)
            if sc == "ijbc1":
                _run(work, "one", "ijbc")
            elif sc == "adience1":
                _run(work, "one", "adience")
            elif sc == "ijbc-nb":
                for nb in ("01", "03", "04"):
                    _run(work, "nb", nb)
            else:
                raise SystemExit(f"unknown scenario {sc!r}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
