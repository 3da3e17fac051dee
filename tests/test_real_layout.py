"""bench/build_real_layout.py: a tiny folder in the real study's layout (data/README.md,
configs/paper.yaml) that the package's config, readers and checkpoint loaders accept as they are."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from exfiqa.config import load_config
from exfiqa.models.fr import build_fr, load_fr
from exfiqa.models.vitfiqa import build_vitfiqa, load_vitfiqa
from exfiqa.readers import decode_image, load_benchmark

ROOT = Path(__file__).resolve().parents[1]
N = 4  # images per benchmark


def _script():
    spec = importlib.util.spec_from_file_location("build_real_layout", ROOT / "bench" / "build_real_layout.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    mod = _script()
    work = tmp_path_factory.mktemp("reallayout")
    out = work / "mini"
    argv = ["--out", str(out), "--images-per-benchmark", str(N), "--small-models", "--no-estimate",
            "--results-dir", str(work / "results"), "--cache-dir", str(work / "cache")]
    assert mod.main(argv) == 0
    return mod, out, argv


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_paths_are_the_documented_ones(built):
    _, out, _ = built
    readme = (ROOT / "data" / "README.md").read_text()
    documented = [
        *(f"verification/{n}.bin" for n in ("lfw", "agedb_30", "cfp_fp", "calfw", "cplfw")),
        "xqlfw/xqlfw_pairs.txt", "IJB_C/meta/ijbc_face_tid_mid.txt", "IJB_C/meta/ijbc_template_pair_label.txt",
        "IJB_C/meta/ijbc_name_5pts_score.txt", "fr/arcface_r100_ms1mv2.pth", "fr/elasticface_arc_r100.pth",
        "fr/magface_iresnet100_ms1mv2.pth", "fr/curricularface_ir101.pth", "vitfiqa/vitfiqa_token.pt",
        "vitfiqa/vitfiqa_crfiqa.pt",
    ]
    for rel in documented:
        assert f"`{rel}`" in readme or rel in readme, rel  # the list above is the README's
        assert (out / rel).is_file(), rel
    xq = sorted((out / "xqlfw" / "xqlfw_aligned_112").iterdir())
    assert xq and all(re.fullmatch(re.escape(d.name) + r"_\d{4}\.jpg", f.name) for d in xq for f in d.iterdir())
    subjects = sorted((out / "adience" / "aligned_by_subject").iterdir())
    assert subjects and all(re.fullmatch(r"\d+@N\d\d_\d+", d.name) for d in subjects)  # <user_id>_<face_id>
    crops = sorted((out / "IJB_C" / "loose_crop").iterdir())
    assert [c.name for c in crops] == [f"{k}.jpg" for k in range(1, N + 1)]
    assert all(decode_image(c).shape[0] > 112 for c in crops)  # unaligned loose crops, not 112x112 faces
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"  # the generated folder ignores itself


def test_config_is_paper_yaml_with_only_the_run_keys_changed(built):
    mod, out, _ = built
    paper = yaml.load((ROOT / "configs" / "paper.yaml").read_text(), Loader=mod._Loader)
    mini = yaml.load((out / "paper-mini.yaml").read_text(), Loader=mod._Loader)
    assert list(mini) == list(paper)
    changed = {k for k in paper if mini[k] != paper[k]}
    assert changed <= {"run_name", "data_root", "cache_dir", "results_dir", "device"}
    assert mini["run_name"] == "paper-mini" and mini["device"] == "cpu"
    assert mini["data_root"] == str(out) and mini["results_dir"] == str(out.parent / "results")

    cfg = load_config(out / "paper-mini.yaml")
    cfg.check_paths()
    ref = load_config(ROOT / "configs" / "paper.yaml")
    assert cfg.device == "cpu" and cfg.data_root == out and cfg.cache_dir == out.parent / "cache"
    for key in ("fmr_targets", "discard_limit", "convention", "batch_size", "seed", "baselines", "headline"):
        assert getattr(cfg, key) == getattr(ref, key), key
    assert {k: (v.kind, v.label) for k, v in cfg.datasets.items()} == {k: (v.kind, v.label) for k, v in ref.datasets.items()}
    assert {k: v.args for k, v in cfg.quality_models.items()} == {k: v.args for k, v in ref.quality_models.items()}


# Hand-counted for 4 images per benchmark: a .bin holds 2 pairs (1 mated); XQLFW 2 identities x 2
# images, its 2 mated pairs and 2 non-mated ones; Adience 2 subjects x 2, all 6 pairs (2 mated);
# IJB-C 2 identities x 2 single-image templates, all 6 template pairs (2 mated).
EXPECTED = {
    **{n: (4, 2, 1) for n in ("lfw", "agedb_30", "cfp_fp", "calfw", "cplfw")},
    "xqlfw": (4, 4, 2), "adience": (4, 6, 2), "ijbc": (4, 6, 2),
}


def test_readers_open_every_benchmark_with_the_expected_counts(built):
    _, out, _ = built
    cfg = load_config(out / "paper-mini.yaml")
    assert set(cfg.datasets) == set(EXPECTED)
    items = {k: np.array(v["items"]) for k, v in ((k, _manifest(out)["datasets"][k]) for k in EXPECTED)}
    for name, dspec in cfg.datasets.items():
        b = load_benchmark(dspec.kind, **dspec.args)
        comp = b.comparisons
        assert (len(b), len(comp), int(comp["mated"].sum())) == EXPECTED[name], name
        for k in range(len(b)):
            img = b.image(k)
            assert img.shape == (112, 112, 3) and img.dtype == np.uint8
        ident = items[name][:, 0]  # rendered identity of each sample, in the reader's order
        if b.level == "sample":
            if "identity" in b.samples:  # folder/file names carry identity: agree with the renders
                codes = b.samples["identity"].to_numpy()
                assert np.array_equal(np.unique(codes, return_inverse=True)[1], np.unique(ident, return_inverse=True)[1])
            same = ident[comp["a"].to_numpy()] == ident[comp["b"].to_numpy()]
        else:
            tid = b.samples["template_id"].to_numpy()
            of = {t: set(ident[tid == t]) for t in np.unique(tid)}
            assert all(len(v) == 1 for v in of.values())  # a template is one subject
            same = np.array([of[a] == of[c] for a, c in zip(comp["a"], comp["b"], strict=True)])
        assert np.array_equal(same, comp["mated"].to_numpy(bool)), name


def test_mated_pairs_are_renders_of_one_identity(built):
    """The .bin images are the SynthFace renders the manifest names (JPEG q95 off by a few levels)."""
    mod, out, _ = built
    b = load_benchmark("bin", path=out / "verification" / "lfw.bin")
    items = np.array(_manifest(out)["datasets"]["lfw"]["items"])
    ref = np.stack(mod._render(0, mod.BIN_RECIPES["lfw"][0], items).images).astype(float)
    got = np.stack([b.image(k) for k in range(len(b))]).astype(float)
    own = np.abs(got - ref).mean(axis=(1, 2, 3))
    other = np.abs(got - ref[::-1]).mean(axis=(1, 2, 3))
    assert own.max() < 3 and other.min() > 3 * own.max()


def _normalised(keys) -> set[str]:
    """Key names with block/unit indices blanked: the layout, whatever the depth."""
    return {re.sub(r"^(layer\d+|body|blocks)\.\d+\.", r"\1.#.", k) for k in keys}


@pytest.mark.parametrize(("name", "arch", "file"), [
    ("arcface", "iresnet", "fr/arcface_r100_ms1mv2.pth"),
    ("elasticface", "iresnet", "fr/elasticface_arc_r100.pth"),
    ("magface", "magface", "fr/magface_iresnet100_ms1mv2.pth"),
    ("curricularface", "curricularface", "fr/curricularface_ir101.pth"),
])
def test_fr_checkpoints_have_the_released_layouts_and_load(built, name, arch, file):
    mod, out, _ = built
    raw = torch.load(out / file, weights_only=True)
    if name == "magface":
        assert set(raw) == {"state_dict"} and all(k.startswith("features.module.") for k in raw["state_dict"])
        keys = [k.removeprefix("features.module.") for k in raw["state_dict"]]
    else:
        keys = list(raw)
        assert not any(k.startswith(("module.", "backbone.", "features.module.")) for k in keys)
    stem = "input_layer.0.weight" if arch == "curricularface" else "conv1.weight"
    assert stem in keys
    assert _normalised(keys) == _normalised(build_fr(arch).state_dict())  # the full-size model's names
    model = load_fr(name, out / file, device="cpu")
    assert model.backbone.layers == mod.SMALL_FR["layers"] and model.embedding_size == mod.SMALL_FR["embedding_size"]
    # BatchNorm running statistics are those of the calibration batch (one batch: tracked once), so
    # on that batch the final BN gives each embedding component mean 0 and (biased) variance
    # (n-1)/n, up to the small mismatch of unbiased stored variances in the layers before it.
    calib = mod.calibration_faces(0)
    n = len(calib)
    tracked = [v for k, v in zip(keys, (raw["state_dict"] if name == "magface" else raw).values(), strict=True)
               if k.endswith("num_batches_tracked")]
    assert tracked and all(int(v) == 1 for v in tracked)
    emb = model.embed_raw(calib).astype(np.float64)
    assert np.abs(emb.mean(axis=0)).max() < 0.01
    np.testing.assert_allclose(emb.var(axis=0), (n - 1) / n, rtol=0.02)


@pytest.mark.parametrize(("variant", "file"), [("token", "vitfiqa/vitfiqa_token.pt"), ("crfiqa", "vitfiqa/vitfiqa_crfiqa.pt")])
def test_vitfiqa_checkpoints_have_the_released_layout_and_load(built, variant, file):
    _, out, _ = built
    raw = torch.load(out / file, weights_only=True)
    assert "exfiqa_num_heads" not in raw and "cls_token" not in raw and "mask_token" in raw
    assert ("qs_token" in raw) == (variant == "token")
    full = {("qs_token" if k == "cls_token" else k) for k in build_vitfiqa(variant=variant).state_dict()}
    assert _normalised(raw) == _normalised(full)
    for heads in ({}, {"num_heads": 8}):  # the loader's default and the config's entry
        model = load_vitfiqa(out / file, **heads)
        assert model.config.variant == variant and model.config.num_heads == 8 and model.depth == 12


def test_rerun_is_idempotent_refuses_foreign_folders_and_rebuilds_byte_identically(built, tmp_path, capsys):
    mod, out, argv = built
    before = _manifest(out)["files"]
    stamp = {f: (out / f).stat().st_mtime_ns for f in before}
    capsys.readouterr()
    assert mod.main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    assert {f: (out / f).stat().st_mtime_ns for f in before} == stamp  # nothing rewritten

    assert mod.main([*argv, "--images-per-benchmark", "6"]) == 2  # other settings need --force
    assert "--force" in capsys.readouterr().err
    assert {f: (out / f).stat().st_mtime_ns for f in before} == stamp

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    assert mod.main(["--out", str(foreign), "--small-models", "--force", "--no-estimate"]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["mine.txt"]

    sentinel = out.parent / "results" / "paper-mini" / "keep.txt"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("results survive a rebuild")
    assert mod.main([*argv, "--force"]) == 0
    assert _manifest(out)["files"] == before  # same files, same SHA-256
    assert sentinel.is_file()
