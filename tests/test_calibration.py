"""What a score means: percentile ranks against a reference (`exfiqa calibrate`, `score --reference`)
and OFIQ's CSV read as an external method."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from exfiqa.cli import main
from exfiqa.evaluation.calibration import (
    fit_sigmoid,
    percentile_rank,
    reference_quantiles,
    sigmoid_score,
)
from exfiqa.io import file_digest


def test_percentile_rank_hand_cases():
    q = [1.0, 2.0, 3.0]  # probabilities 0, 1/2, 1
    np.testing.assert_allclose(percentile_rank([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 7.0], q), [0, 0, 25, 50, 75, 100, 100])
    # ties: a value equal to several quantiles takes the middle of their probabilities
    q4 = [1.0, 2.0, 2.0, 3.0]  # probabilities 0, 1/3, 2/3, 1
    np.testing.assert_allclose(percentile_rank([2.0, 1.5, 2.5], q4), [50, 100 / 6, 500 / 6])
    np.testing.assert_allclose(percentile_rank([4.0, 3.0, 5.0], [4.0, 4.0, 4.0]), [50, 0, 100])
    assert np.isnan(percentile_rank([np.nan], q)[0])
    with pytest.raises(ValueError, match="ascending"):
        percentile_rank([1.0], [2.0, 1.0])


def test_reference_quantiles_are_the_linear_quantiles():
    v = np.array([3.0, 1.0, 2.0, 10.0, 4.0])
    q = reference_quantiles(v, 5)
    np.testing.assert_allclose(q, [1, 2, 3, 4, 10])
    np.testing.assert_allclose(percentile_rank(v, q), [50, 0, 25, 100, 75])  # rank / (n - 1) of each
    np.testing.assert_allclose(reference_quantiles(v, 1001)[[0, 125, 1000]], [1, 1.5, 10])
    with pytest.raises(ValueError, match="finite"):
        reference_quantiles([1.0, np.inf])


def test_sigmoid_mapping_hand_cases():
    x0, w = fit_sigmoid(np.linspace(0.0, 10.0, 1001))  # median 5, 5th / 95th percentiles 0.5 / 9.5
    assert x0 == pytest.approx(5.0) and w == pytest.approx(9.0 / (2 * np.log(19.0)))
    np.testing.assert_array_equal(sigmoid_score([5.0, 9.5, 0.5, 1e9, -1e9], x0, w), [50, 95, 5, 100, 0])
    # OFIQ's unified score form, x0 = 23, w = 2.6; 2.5 rounds half away from zero to 3
    half = 23.0 + 2.6 * np.log(2.5 / 97.5)
    np.testing.assert_array_equal(sigmoid_score([23.0, half, 23.0 + 2.6 * np.log(3)], 23.0, 2.6), [50, 3, 75])
    np.testing.assert_array_equal(sigmoid_score([1.0, 2.0, 3.0], *fit_sigmoid([2.0, 2.0])), [0, 50, 100])


@pytest.fixture(scope="module")
def demo_images(tiny_world):
    images = tiny_world / "benchmarks" / "adience"
    ckpt = tiny_world / "vitfiqa" / "vitfiqa_token.pt"
    assert len(list(images.rglob("*.jpg"))) >= 6 and ckpt.is_file()
    return images, ckpt


def test_calibrate_then_score_with_the_reference(demo_images, tmp_path):
    images, ckpt = demo_images
    opts = ["--checkpoint", str(ckpt), "--num-heads", "2", "--quiet"]
    ref = tmp_path / "ref.json"
    assert main(["calibrate", str(images), "--out", str(ref), *opts]) == 0
    data = json.loads(ref.read_text())
    plain = tmp_path / "plain.csv"
    assert main(["score", str(images), "--out", str(plain), *opts]) == 0
    scores = pd.read_csv(plain)
    cols = [c for c in scores.columns if c != "path"]
    assert data["format"] == "exfiqa-reference" and data["version"] == 1 and data["name"] == "ref"
    assert data["n_images"] == len(scores) and list(data["columns"]) == cols and data["n_quantiles"] == 1001
    assert data["checkpoint"] == {"name": "vitfiqa_token.pt", "sha256": file_digest(ckpt)}
    for c in cols:
        assert len(data["columns"][c]) == 1001
        np.testing.assert_allclose(data["columns"][c], np.quantile(scores[c], np.linspace(0, 1, 1001)), rtol=1e-6)

    out = tmp_path / "ranked.csv"
    assert main(["score", str(images), "--out", str(out), "--reference", str(ref), *opts]) == 0
    table = pd.read_csv(out)  # plain pandas reads it
    assert list(table.columns) == ["path", *cols, *[f"{c}_pct" for c in cols], "reference", "reference_sha256"]
    assert (table["reference"] == "ref").all() and (table["reference_sha256"] == file_digest(ref)).all()
    pd.testing.assert_frame_equal(table[["path", *cols]], scores)
    for c in cols:  # the reference images themselves: the lowest ranks 0, the highest 100, order kept
        pct = table[f"{c}_pct"].to_numpy()
        assert pct.min() == 0 and pct.max() == 100 and np.all((pct >= 0) & (pct <= 100))
        v = table[c].to_numpy()
        assert np.all(np.diff(pct[np.argsort(v, kind="stable")]) >= 0)

    # the optional sigmoid mapping, x0 and w fitted on the reference's quantiles
    sig = tmp_path / "sig.csv"
    assert main(["score", str(images), "--out", str(sig), "--reference", str(ref), "--sigmoid", *opts]) == 0
    with_sig = pd.read_csv(sig)
    for c in cols:
        expected = sigmoid_score(with_sig[c], *fit_sigmoid(data["columns"][c]))
        np.testing.assert_array_equal(with_sig[f"{c}_sig"], expected)
        assert set(np.unique(expected)) <= set(range(101))
    assert main(["score", str(images), "--out", str(sig), "--overwrite", "--sigmoid", *opts]) == 2

    # n quantiles = n images: each reference image ranks 100 * (its rank) / (n - 1)
    exact = tmp_path / "exact.json"
    assert main(["calibrate", "--from-csv", str(plain), "--quantiles", str(len(scores)), "--name", "mine",
                 "--out", str(exact), "--checkpoint", str(ckpt)]) == 0
    assert main(["score", str(images), "--out", str(out), "--overwrite", "--reference", str(exact), *opts]) == 0
    table = pd.read_csv(out)
    assert (table["reference"] == "mine").all()
    for c in cols:
        ranks = pd.Series(table[c]).rank(method="average").to_numpy() - 1
        np.testing.assert_allclose(table[f"{c}_pct"], np.round(100 * ranks / (len(table) - 1), 2), atol=0.011)


def test_score_reference_errors(demo_images, tmp_path, capsys):
    images, ckpt = demo_images
    opts = ["--num-heads", "2", "--quiet"]
    ref = tmp_path / "ref.json"
    other = ckpt.parent / "vitfiqa_crfiqa.pt"
    assert main(["calibrate", str(images), "--out", str(ref), "--checkpoint", str(ckpt), *opts]) == 0
    out = tmp_path / "s.csv"
    assert main(["score", str(images), "--out", str(out), "--checkpoint", str(other), "--reference", str(ref), *opts]) == 2
    assert "calibrated with checkpoint 'vitfiqa_token.pt'" in capsys.readouterr().err and not out.exists()
    data = json.loads(ref.read_text())
    del data["columns"]["exit_3"]
    ref.write_text(json.dumps(data))
    assert main(["score", str(images), "--out", str(out), "--checkpoint", str(ckpt), "--reference", str(ref), *opts]) == 2
    assert "no quantiles for column(s) ['exit_3']" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["score", str(images), "--out", str(out), "--checkpoint", str(ckpt), "--reference", str(bad), *opts]) == 2
    assert f"{bad}: not an exfiqa reference" in capsys.readouterr().err
    assert main(["calibrate", "--out", str(ref), "--checkpoint", str(ckpt)]) == 2
    assert "reference images (files or folders) or --from-csv" in capsys.readouterr().err


def _ofiq_csv(path, names, unified):
    """OFIQ's layout: ';'-separated, native value then '.scalar' columns, assessment time last."""
    lines = ["Filename;UnifiedQualityScore;BackgroundUniformity;UnifiedQualityScore.scalar;"
             "BackgroundUniformity.scalar;assessment_time_in_ms"]
    lines += [f"{n};{20 + u / 10:.6f};{u / 3:.3f};{u:g};{u / 2:g};123" for n, u in zip(names, unified, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def test_ofiq_csv_is_read_as_an_external_method(tiny_config, tmp_path):
    from exfiqa.config import load_config
    from exfiqa.study import Study, read_method_csv

    raw = yaml.safe_load(tiny_config.read_text())
    bench = Study(load_config(tiny_config), progress=False).benchmark("adience")
    root = tmp_path / "ofiq_in"
    names = [str(root / p) for p in bench.samples["path"]]  # OFIQ was given another (absolute) folder
    unified = np.arange(len(names))[::-1] * 7 % 101
    unified[0] = -1  # a failed assessment: OFIQ's -1
    csv = tmp_path / "ofiq.csv"
    _ofiq_csv(csv, names, unified)
    np.testing.assert_array_equal(read_method_csv(csv, bench, "OFIQ"), unified)  # the .scalar column, as written
    raw["external_methods"] = {"OFIQ": {"adience": str(csv)}}
    cfg = tmp_path / "with_ofiq.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    study = Study(load_config(cfg), progress=False)
    q = next(iter(study.config.quality_models))
    assert "OFIQ" in study.methods(q, "adience")
    np.testing.assert_array_equal(study.sample_quality("adience", q)["OFIQ"], unified.astype(np.float32))
    fr = next(iter(study.config.fr_models))
    frame = study.pauc_frame("adience", fr, q)
    assert "OFIQ" in set(frame["method"])
    # an OFIQ CSV without the unified score's scalar column is refused, naming it
    csv.write_text("Filename;UnifiedQualityScore\na.png;21.5\n")
    with pytest.raises(ValueError, match=r"without the column 'UnifiedQualityScore.scalar'"):
        read_method_csv(csv, bench, "OFIQ")
