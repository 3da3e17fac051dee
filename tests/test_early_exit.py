"""Early exit for real (issue 24): `score --exit K` runs K blocks, the adaptive runtime stops faces
inside a batch exactly as the simulation says, options are never abbreviated, ONNX export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from exfiqa.cli import build_parser, main
from exfiqa.evaluation.fusion import ex_fiqa_f, ex_fiqa_fw
from exfiqa.extract.models import Models
from exfiqa.models.adaptive import adaptive_forward, adaptive_scores
from exfiqa.models.flops import exit_costs
from exfiqa.models.vitfiqa import build_vitfiqa, load_vitfiqa, save_vitfiqa, to_tensor
from exfiqa.readers.images import read_face
from exfiqa.report.early_exit import adaptive_exit

SMALL = {"embed_dim": 32, "num_heads": 2, "feature_dim": 16}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("early")
    torch.manual_seed(0)
    ckpt = root / "small.pt"
    save_vitfiqa(build_vitfiqa(variant="crfiqa", **SMALL), ckpt)
    faces = root / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(faces / f"f{i}.png")
    return root, ckpt, faces


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)


def _model(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_vitfiqa(variant=variant, **SMALL).eval()
    for bn in model.modules():  # non-trivial running statistics, so the heads do something
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    return model


# ---------------------------------------------------------------- --exit K runs only K blocks


def test_score_exit_runs_only_k_blocks_and_matches_the_full_pass(world, tmp_path):
    root, ckpt, faces = world
    model = load_vitfiqa(ckpt)
    calls = [0] * model.depth

    def boom(*_):
        raise AssertionError("block 7 ran for --exit 6")

    import exfiqa.models.vitfiqa as vf

    real = vf.load_vitfiqa

    def counting_load(*a, **k):
        m = real(*a, **k)
        for i, blk in enumerate(m.blocks):
            blk.register_forward_hook(lambda *_x, i=i: calls.__setitem__(i, calls[i] + 1))
        m.blocks[6].register_forward_pre_hook(boom)
        return m

    out = tmp_path / "e6.csv"
    mp = pytest.MonkeyPatch()
    mp.setattr(vf, "load_vitfiqa", counting_load)
    try:
        assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--exit", "6", "--quiet"]) == 0
    finally:
        mp.undo()
    assert calls[:6] == [1] * 6 and calls[6:] == [0] * 6  # one batch, blocks 1..6 once each
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "exit_6"]  # nothing that needs a deeper block
    imgs = np.stack([read_face(p) for p in table["path"]])
    with torch.inference_mode():
        full = model.forward_exits(to_tensor(imgs)).scores[:, 5].numpy()
    # the full pass runs the heads on 12 exits at once: the same values up to float32 rounding
    # (matrix-vector kernels sum by row count, see exfiqa.models.adaptive), bit for bit vs score_at_exit
    np.testing.assert_allclose(table["exit_6"].to_numpy(np.float32), full, rtol=0, atol=2e-7)
    with torch.inference_mode():
        np.testing.assert_array_equal(table["exit_6"].to_numpy(np.float32), model.score_at_exit(to_tensor(imgs), 6).numpy())


def test_abbreviated_options_are_refused(world, tmp_path, capsys):
    root, ckpt, faces = world
    with pytest.raises(SystemExit) as err:  # "--exi" used to mean --exits / --exit
        main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a.csv"), "--exi", "6"])
    assert err.value.code == 2 and "unrecognized arguments: --exi" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a.csv"), "--over"])
    parser = build_parser()
    assert parser.allow_abbrev is False
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert {name: p.allow_abbrev for name, p in subs.items()} == dict.fromkeys(subs, False)


@pytest.mark.parametrize("extra, message", [
    (["--exit", "13"], "--exit 13 outside 1..12"),
    (["--exit", "6", "--adaptive", "--threshold", "0", "--margin", "1"], "exclude each other"),
    (["--exit", "6", "--exits", "1,6"], "excludes --exit"),
    (["--adaptive", "--threshold", "0"], "--adaptive needs --margin"),
    (["--threshold", "0"], "add --adaptive"),
    (["--adaptive", "--threshold", "0", "--margin", "-1"], "margin must be"),
    (["--adaptive", "--threshold", "0", "--margin", "1", "--min-exit", "13"], "min_exit must be"),
])
def test_early_exit_usage_errors(world, tmp_path, capsys, extra, message):
    root, ckpt, faces = world
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(tmp_path / "u.csv"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "u.csv").exists()


# ---------------------------------------------------------------- the adaptive runtime


def _sim_inputs(model, x):
    with torch.inference_mode():
        full = model.forward_exits(x).scores.numpy().astype(np.float64)
    thr = float(np.quantile(ex_fiqa_fw(full), 0.3))
    running3 = full[:, :3] @ np.arange(1, 4) / 6  # about 40% of the faces settle at exit 3
    return full, thr, float(np.quantile(np.abs(running3 - thr), 0.6))


@pytest.mark.parametrize("variant", ["token", "crfiqa"])
def test_adaptive_runtime_equals_the_simulation_bit_for_bit(variant):
    """Stopping exit and score equal :func:`adaptive_exit` on the scores the runtime computed
    (its per-block path), exactly; and those scores are the full pass's up to float32 rounding."""
    model = _model(variant)
    x = to_tensor(_faces(48, seed=1))
    full, thr, margin = _sim_inputs(model, x)
    with torch.inference_mode():
        out = adaptive_forward(model, x, thr, margin, min_exit=3)
    ran = ~np.isnan(out.exit_scores)
    assert (ran.sum(axis=1) == out.exit_used).all() and ran[np.arange(48), out.exit_used - 1].all()
    counts = np.bincount(out.exit_used, minlength=13)
    assert counts[3] > 5 and counts[4:].sum() > 5 and counts[:3].sum() == 0  # faces stop early, others go on
    # the batch really shrinks: block l runs on the faces that had not stopped before it
    assert out.batch_per_block == [int((out.exit_used >= lv).sum()) for lv in range(1, len(out.batch_per_block) + 1)]
    data = np.where(ran, out.exit_scores.astype(np.float64), full)  # the runtime's data where it ran
    sim = adaptive_exit(data, thr, margin, 3, list(range(1, 13)))
    assert np.array_equal(sim.exit_used, out.exit_used)
    assert torch.equal(torch.from_numpy(sim.score), torch.from_numpy(out.score))
    np.testing.assert_allclose(out.exit_scores[ran], full[ran], rtol=0, atol=1e-6)
    # against the simulation on full-pass scores: the same exits except within rounding of the boundary
    sim_full = adaptive_exit(full, thr, margin, 3, list(range(1, 13)))
    running = np.cumsum(full * np.arange(1, 13), axis=1) / np.cumsum(np.arange(1, 13))
    near = (np.abs(np.abs(running - thr) - margin) < 1e-5).any(axis=1)
    assert np.array_equal(sim_full.exit_used[~near], out.exit_used[~near])
    np.testing.assert_allclose(sim_full.score[~near], out.score[~near], rtol=0, atol=1e-6)


def test_adaptive_batches_in_order_and_extreme_rules():
    model = _model("crfiqa", seed=2)
    imgs = _faces(10, seed=3)
    x = to_tensor(imgs)
    full, thr, margin = _sim_inputs(model, x)
    stop, score = adaptive_scores(model, [imgs[:4], imgs[4:]], thr, 1e9, 1, progress=False)
    assert (stop == 12).all()  # nothing is ever settled: the full FW score
    np.testing.assert_allclose(score, ex_fiqa_fw(full), rtol=0, atol=1e-6)
    stop, score = adaptive_scores(model, [imgs[:4], imgs[4:]], thr, 0.0, 5, progress=False)
    running5 = (full[:, :5] @ np.arange(1, 6)) / 15
    assert np.array_equal(stop == 5, np.abs(running5 - thr) > 0)
    with pytest.raises(ValueError, match="min_exit"):
        adaptive_forward(model, x, thr, margin, 0)


def test_score_adaptive_cli_writes_stop_exit_and_score(world, tmp_path):
    root, ckpt, faces = world
    model = load_vitfiqa(ckpt)
    paths = sorted(str(p) for p in faces.iterdir())
    imgs = np.stack([read_face(p) for p in paths])
    with torch.inference_mode():
        full = model.forward_exits(to_tensor(imgs)).scores.numpy().astype(np.float64)
    fw = ex_fiqa_fw(full)
    thr, margin = float(np.median(fw)), 0.3 * float(fw.std())
    out = tmp_path / "ad.csv"
    args = ["--adaptive", "--threshold", repr(thr), "--margin", repr(margin), "--min-exit", "2"]
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--quiet", *args]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "stop_exit", "stop_score"] and table["path"].tolist() == paths
    stop, score = adaptive_scores(model, [imgs], thr, margin, 2, progress=False)
    assert table["stop_exit"].tolist() == stop.tolist()
    np.testing.assert_allclose(table["stop_score"], score, rtol=5e-9)


# ---------------------------------------------------------------- ONNX export


@pytest.mark.parametrize("variant", ["token", "crfiqa"])
def test_onnx_export_matches_pytorch(tmp_path, variant, capsys):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'exfiqa[onnx]')")
    pytest.importorskip("onnx")
    model = _model(variant)
    ckpt = tmp_path / "m.pt"
    save_vitfiqa(model, ckpt)
    model = load_vitfiqa(ckpt)
    for exit in ("5", "all"):
        path = tmp_path / f"m{exit}.onnx"
        assert main(["export", "--checkpoint", str(ckpt), "--exit", exit, "--out", str(path)]) == 0
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,) = sess.get_inputs()
        assert inp.name == "images" and inp.type == "tensor(uint8)" and list(inp.shape[1:]) == [112, 112, 3]
        names = [o.name for o in sess.get_outputs()]
        assert names == (["quality"] if exit == "5" else ["exits", "ex_fiqa_f", "ex_fiqa_fw"])
        for batch in (1, 3):  # one graph, two batch sizes: the batch axis is dynamic
            imgs = _faces(batch, seed=batch)
            got = sess.run(None, {"images": imgs})
            with torch.inference_mode():
                ref = model.forward_exits(to_tensor(imgs)).scores.numpy()
            if exit == "5":
                np.testing.assert_allclose(got[0], ref[:, 4], rtol=0, atol=1e-4)
            else:
                for value, expected in zip(got, (ref, ex_fiqa_f(ref), ex_fiqa_fw(ref)), strict=True):
                    np.testing.assert_allclose(value, expected, rtol=0, atol=1e-4)
    # an existing --out is refused without --force, kept as it was; --force replaces it
    before = (tmp_path / "m5.onnx").read_bytes()
    assert main(["export", "--checkpoint", str(ckpt), "--exit", "5", "--out", str(tmp_path / "m5.onnx")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "m5.onnx").read_bytes() == before
    assert main(["export", "--checkpoint", str(ckpt), "--exit", "3", "--out", str(tmp_path / "m5.onnx"), "--force"]) == 0
    assert main(["export", "--checkpoint", str(ckpt), "--exit", "13", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "outside 1..12" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write leaves nothing behind


# ---------------------------------------------------------------- notebook 04's measured runtime


def test_runtime_table_on_the_tiny_run(tiny_config):
    from exfiqa.report.early_exit import operating_points, study_costs
    from exfiqa.report.frames import pauc_all
    from exfiqa.report.runtime import runtime_table
    from exfiqa.study import open_study

    study = open_study(str(tiny_config))
    cfg = study.config
    pauc = pauc_all(study, scale=cfg.pauc_scale)
    ops = operating_points(pauc[pauc["fmr"] == min(cfg.fmr_targets)], study_costs(study))
    ds = next(iter(cfg.datasets))
    table = runtime_table(study, ops, ds, 0.2, 0.5, 3, n_images=16, repeats=1)
    for q in cfg.quality_models:
        part = table[table["quality_model"] == q].set_index("run")
        picked = sorted({int(m.split()[1]) for m in ops[ops["quality_model"] == q]["method"] if m.startswith("Exit")})
        assert list(part.index) == ["full pass (Exit 12)", *[f"Exit {k} (fixed)" for k in picked], "adaptive"]
        assert part.loc["full pass (Exit 12)", "measured_speedup"] == 1.0 and (part["ms_per_image"] > 0).all()
        # a fixed exit's analytic saving is the cost table's; the adaptive run's follows its stopping exits
        costs = exit_costs(Models(cfg).quality_model(q).config)
        for k in picked:
            assert part.loc[f"Exit {k} (fixed)", "flop_saving"] == pytest.approx(costs[k - 1].saving)
        ad = part.loc["adaptive"]
        assert 3 <= ad["mean_exit"] <= 12 and ad["same_exit_as_simulation"] >= 0.9
