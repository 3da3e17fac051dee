"""CONTRIBUTING.md's recipes run as written and do what they say.

Every ```python block of CONTRIBUTING.md is tagged ``recipe=<name>``; the blocks of one recipe are
executed in order, in one namespace, in a fresh folder, with the inputs the page names in capitals
(``CONFIG``: configs/demo.yaml pointed at the tests' tiny world and cut to dataset ``lfw``, FR
model ``arcface`` and quality model ``T``; ``IMAGES``/``PAIRS`` for the reader); a block tagged
``file=NAME.py`` is not executed but written as that module into a folder put on ``sys.path`` and
``PYTHONPATH``. The checks then compare what the recipe built with an independent computation: the
quality method's scores and pAUC recomputed here from the images and the comparisons
(``exfiqa.evaluation.edc.edc`` on materialised pairs, not the Study's bounded path), the reader's samples
with the XQLFW reader's on the same files and its pAUC likewise, the FR model's embeddings with the
torch network run here.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from exfiqa.config import ConfigError, load_config
from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.pauc import pauc
from exfiqa.extract import Models
from exfiqa.readers import READERS, DatasetFormatError, read_xqlfw, reader_source
from exfiqa.store.arrays import ArrayError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "CONTRIBUTING.md"
FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
RECIPES = ("quality", "reader", "fr")


@dataclass
class Recipe:
    """One recipe: the code run in the test (its untagged-file blocks, joined) and the modules
    (``file=NAME.py`` blocks: file name -> text) it expects on the import path."""

    code: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def recipes(text: str) -> dict[str, Recipe]:
    """Each recipe's tagged ```python blocks in page order."""
    out: dict[str, Recipe] = {}
    for lang, info, body in FENCE.findall(text):
        if lang != "python":
            continue
        tag = re.fullmatch(r"\s*recipe=(\w+)(?:\s+file=(\w+\.py))?\s*", info)
        assert tag, f"CONTRIBUTING.md: a ```python block without recipe=<name> (every one is run): {body[:60]!r}"
        recipe = out.setdefault(tag.group(1), Recipe())
        if tag.group(2):
            assert tag.group(2) not in recipe.files, f"CONTRIBUTING.md: two blocks of file={tag.group(2)}"
            recipe.files[tag.group(2)] = body
        else:
            recipe.code.append(body)
    return out


def run_recipe(name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, **inputs: Any) -> dict[str, Any]:
    """Run recipe ``name`` in ``cwd``; its ``file=`` modules go to ``cwd/lib`` (on sys.path and
    PYTHONPATH for as long as ``monkeypatch`` lasts)."""
    recipe = recipes(DOC.read_text())[name]
    if recipe.files:
        lib = cwd / "lib"
        lib.mkdir()
        for file, body in recipe.files.items():
            (lib / file).write_text(body)
        monkeypatch.syspath_prepend(str(lib))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(lib), os.environ.get("PYTHONPATH")])))
    monkeypatch.chdir(cwd)
    namespace: dict[str, Any] = {"__name__": f"contributing_{name}", **inputs}
    exec(compile("\n".join(recipe.code), f"{DOC.name}:recipe={name}", "exec"), namespace)  # the page's own code
    return namespace


@pytest.fixture(scope="module")
def small_config(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/demo.yaml on the tiny world: dataset lfw, FR model arcface, quality model T, no baselines."""
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    work = tmp_path_factory.mktemp("contributing")
    raw.update(
        run_name="contributing", demo="tiny", data_root=str(tiny_world), cache_dir=str(work / "cache"),
        results_dir=str(work / "results"), baselines=[],
        datasets={"lfw": raw["datasets"]["lfw"]}, fr_models={"arcface": raw["fr_models"]["arcface"]},
        quality_models={"T": {**raw["quality_models"]["T"], "num_heads": 2}},
    )
    raw.pop("headline", None)
    path = work / "small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_python_block_is_a_tagged_recipe() -> None:
    text = DOC.read_text()
    found = recipes(text)
    assert set(found) == set(RECIPES), sorted(found)
    assert all(r.code for r in found.values())
    assert text.count("```python") == sum(1 for lang, _, _ in FENCE.findall(text) if lang == "python")
    with pytest.raises(AssertionError, match="without recipe"):
        recipes("```python\nx = 1\n```\n")
    both = recipes("```python recipe=a file=m.py\nX = 1\n```\n\n```python recipe=a\nimport m\n```\n")
    assert both["a"].files == {"m.py": "X = 1\n"} and both["a"].code == ["import m\n"]


def test_setup_commands_and_type_check_list_match_the_makefile() -> None:
    text = DOC.read_text()
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z]+):", makefile, re.M))
    setup = re.search(r"```bash\n(.*?)```", text, re.S)
    assert setup, "CONTRIBUTING.md has no ```bash block of set-up commands"
    used = re.findall(r"^make (\w+)", setup.group(1), re.M)
    assert used and set(used) <= targets, sorted(set(used) - targets)
    strict = re.search(r"^MYPY_STRICT\s*:=\s*(.+)$", makefile, re.M)
    assert strict, "Makefile has no MYPY_STRICT list"
    named = re.search(r"`mypy --strict` on (.*?) \(the list is `MYPY_STRICT`", text, re.S)
    assert named, "CONTRIBUTING.md does not name the strictly type-checked modules"
    assert re.findall(r"`(exfiqa/[\w/]+\.py)`", named.group(1)) == strict.group(1).split()


def _pair_min(q: np.ndarray, comp: pd.DataFrame) -> np.ndarray:
    q32 = q.astype(np.float32)
    return np.minimum(q32[comp["a"].to_numpy()], q32[comp["b"].to_numpy()])


def _direct_pauc(study: Any, dataset: str, fr: str, pair_quality: np.ndarray) -> dict[float, float]:
    """pAUC at each FMR target from materialised comparisons (exfiqa.evaluation.edc.edc), raw area."""
    comp = study.benchmark(dataset).comparisons
    emb = study.embeddings(dataset, fr).astype(np.float64)
    sim = (emb[comp["a"].to_numpy()] * emb[comp["b"].to_numpy()]).sum(axis=1) / 2  # cosine of the halves
    cfg = study.config
    return {
        float(t): pauc(edc(sim.astype(np.float32), comp["mated"].to_numpy(bool), pair_quality, t, cfg.convention,
                           **study.rules()), cfg.discard_limit)
        for t in cfg.fmr_targets
    }


def _paucs(frame: pd.DataFrame, method: str) -> dict[float, float]:
    rows = frame[frame["method"] == method]
    assert (rows["scale"] == 1.0).all()
    return dict(zip(rows["fmr"].astype(float), rows["pauc"].astype(float), strict=True))


def test_quality_method_recipe(small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run_recipe("quality", tmp_path, monkeypatch, CONFIG=str(small_config))
    study = ns["study"]
    assert "contrast" in study.methods("T", "lfw")
    bench = study.benchmark("lfw")
    # an independent contrast: population std of the luma, pixel by pixel
    images = np.stack([bench.image(i) for i in range(len(bench))]).astype(np.float64)
    luma = 0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2]
    flat = luma.reshape(len(luma), -1)
    expected = np.sqrt(((flat - flat.mean(axis=1, keepdims=True)) ** 2).mean(axis=1))
    scores = study.sample_scores("lfw", "T", "contrast")
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    # the same order and ties (a .bin repeats images), so the pAUC cannot hinge on rounding
    assert (np.unique(scores, return_inverse=True)[1] == np.unique(expected.astype(np.float32), return_inverse=True)[1]).all()
    # the CSV is what the recipe said: one row per sample, in sample order
    csv = pd.read_csv(tmp_path / "scores" / "contrast-lfw.csv")
    assert list(csv.columns) == ["path", "score"] and list(csv["path"]) == list(bench.samples["path"])

    got = _paucs(ns["paucs"], "contrast")
    want = _direct_pauc(study, "lfw", "arcface", _pair_min(expected, bench.comparisons))
    assert got.keys() == want.keys() and len(got) == len(study.config.fmr_targets)
    for t in want:
        assert got[t] == pytest.approx(want[t], rel=1e-9, abs=1e-12), t
    # and the same machinery gives EX-FIQA-FW its own, different numbers beside it
    fw = _paucs(ns["paucs"], "EX-FIQA-FW")
    assert fw.keys() == got.keys()
    assert np.isfinite(list(fw.values())).all() and fw != got


@pytest.fixture(scope="module")
def pairs_input(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """A pairs CSV over the tiny world's XQLFW-like images, from the XQLFW reader's comparisons."""
    root = tiny_world / "benchmarks" / "xqlfw" / "images"
    xq = read_xqlfw(root, tiny_world / "benchmarks" / "xqlfw" / "pairs.txt")
    rel = [Path(p).relative_to(root).as_posix() for p in xq.samples["path"]]
    comp = xq.comparisons
    table = pd.DataFrame({
        "a": [rel[i] for i in comp["a"]], "b": [rel[i] for i in comp["b"]],
        "mated": ["true" if m else "false" for m in comp["mated"]],
    })
    path = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    table.to_csv(path, index=False)
    return root, path, xq


@pytest.fixture(scope="module")
def reader_run(
    small_config: Path, pairs_input: tuple[Path, Path, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], Path]]:
    """The reader recipe, run once: (its namespace, its folder). Its module stays importable (and
    on PYTHONPATH) for this file's tests; afterwards the registry and sys.modules are as before."""
    images, pairs, _ = pairs_input
    work = tmp_path_factory.mktemp("reader")
    saved = dict(READERS)
    modules = [Path(f).stem for f in recipes(DOC.read_text())["reader"].files]
    cwd = os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        try:
            ns = run_recipe("reader", work, mp, CONFIG=str(small_config), IMAGES=str(images), PAIRS=str(pairs))
            os.chdir(cwd)
            yield ns, work
        finally:
            READERS.clear()
            READERS.update(saved)
            for m in modules:
                sys.modules.pop(m, None)


def test_benchmark_reader_recipe(reader_run: tuple[dict[str, Any], Path], pairs_input: tuple[Path, Path, Any]) -> None:
    from exfiqa.readers import register_reader
    from exfiqa.store.arrays import sample_keys

    ns, work = reader_run
    images, pairs, xq = pairs_input
    module = sys.modules["mylab_readers"]
    read = module.read_pairs_csv
    # the module registered its reader, and the config's plugins entry imported it
    assert READERS["pairs_csv"] is read
    assert reader_source("pairs_csv").resolve() == (work / "lib" / "mylab_readers.py").resolve()
    study = ns["study"]
    spec = study.config.datasets["mine"]
    assert study.config.plugins == ("mylab_readers",)
    assert (spec.kind, spec.label, spec.args) == ("pairs_csv", "Mine", {"name": "mine", "root": images, "pairs_file": pairs})

    bench = ns["bench"]
    assert bench.name == "mine"
    # the new reader reads what the XQLFW reader reads from the same files
    assert len(bench) == len(xq) and bench.n_comparisons == xq.n_comparisons > 0
    assert list(bench.samples["sample_id"]) == list(range(len(bench)))
    path_a = [bench.samples["path"][i] for i in bench.comparisons["a"]]
    assert path_a == [xq.samples["path"][i] for i in xq.comparisons["a"]]
    path_b = [bench.samples["path"][i] for i in bench.comparisons["b"]]
    assert path_b == [xq.samples["path"][i] for i in xq.comparisons["b"]]
    assert (bench.comparisons["mated"].to_numpy() == xq.comparisons["mated"].to_numpy()).all()
    lookup = {p: i for i, p in enumerate(xq.samples["path"])}
    for k in (0, len(bench) - 1):
        np.testing.assert_array_equal(bench.image(k), xq.image(lookup[bench.samples["path"][k]]))
    assert sample_keys(bench) == sorted(Path(p).relative_to(images).as_posix() for p in xq.samples["path"])

    # the fingerprint follows the content of the pairs file
    checks = work / "checks"
    fewer = checks / "fewer" / pairs.name
    fewer.parent.mkdir(parents=True)
    fewer.write_text("\n".join(pairs.read_text().splitlines()[:-1]) + "\n")
    assert read(images, fewer, name="mine").fingerprint() != bench.fingerprint()
    assert read(images, pairs, name="mine").fingerprint() == bench.fingerprint()
    # bad input: errors that name the file (and line)
    bad = checks / "bad.csv"
    bad.write_text("left,right,mated\nx,y,true\n")
    with pytest.raises(DatasetFormatError, match="bad.csv: expected the header a,b,mated"):
        read(images, bad)
    row = pairs.read_text().splitlines()[1].split(",")
    bad.write_text(f"a,b,mated\n{row[0]},{row[1]},{row[2]}\n{row[0]},{row[1]},maybe\n")
    with pytest.raises(DatasetFormatError, match=r"bad.csv: line 3: mated must be true or false, got 'maybe'"):
        read(images, bad)
    bad.write_text(f"a,b,mated\n{row[0]},nobody/nobody_0001.jpg,false\n")
    with pytest.raises(FileNotFoundError, match="nobody_0001.jpg not found"):
        read(images, bad)

    # extract computed the arrays; they are those of the FR model run here on the decoded images
    (report,) = ns["reports"]
    assert report.dataset == "mine" and report.n_samples == len(bench) and report.computed
    emb = study.embeddings("mine", "arcface")
    direct = Models(study.config).fr_model("arcface").embed(np.stack([bench.image(i) for i in range(len(bench))]))
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    # and the pAUC is that of materialised pairs through exfiqa.evaluation.edc.edc / pauc
    frame = ns["paucs"]
    assert set(frame["dataset"]) == {"Mine"} and len(frame) == len(study.config.fmr_targets)
    fw = study.sample_scores("mine", "T", "EX-FIQA-FW")
    want = _direct_pauc(study, "mine", "arcface", _pair_min(fw, bench.comparisons))
    got = _paucs(frame, "EX-FIQA-FW")
    assert got.keys() == want.keys()
    for t in want:
        assert np.isfinite(got[t]) and got[t] == pytest.approx(want[t], rel=1e-9, abs=1e-12), t

    # the YAML the page shows is the config the recipe wrote
    shown = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert shown, "CONTRIBUTING.md: the reader recipe's YAML block is gone"
    block = yaml.safe_load(shown.group(1))
    written = yaml.safe_load((work / "with_mine.yaml").read_text())
    assert block["plugins"] == written["plugins"]
    assert block["datasets"]["mine"].keys() == written["datasets"]["mine"].keys()
    assert block["datasets"]["mine"]["kind"] == written["datasets"]["mine"]["kind"]

    # importing again is harmless; a reload makes a new function, which is refused
    register_reader("pairs_csv", read)
    importlib.import_module("mylab_readers")
    with pytest.raises(ValueError, match=r"'pairs_csv' is already read by mylab_readers\.read_pairs_csv"):
        importlib.reload(module)
    assert READERS["pairs_csv"] is read


def _extract_cli(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exfiqa.extract", "--config", "with_mine.yaml", "--datasets", "mine", "--no-progress"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def test_exfiqa_extract_in_a_fresh_process_imports_the_plugin(reader_run: tuple[dict[str, Any], Path]) -> None:
    ns, work = reader_run
    lib = str(work / "lib")
    assert lib in os.environ["PYTHONPATH"].split(os.pathsep)
    done = _extract_cli(work, dict(os.environ))
    assert done.returncode == 0, done.stderr
    # the new process knows kind pairs_csv and keys the arrays as this one did: nothing to compute
    n = len(ns["reports"][0].computed)
    assert f"[extract] mine: all {n} arrays current, nothing read" in done.stdout, done.stdout
    # without the module on the path, the config names the plugin it cannot import
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p != lib)
    done = _extract_cli(work, env)
    assert done.returncode == 2
    assert "with_mine.yaml: plugins: cannot import 'mylab_readers'" in done.stderr, done.stderr


def test_the_readers_source_is_part_of_the_arrays_key(reader_run: tuple[dict[str, Any], Path]) -> None:
    from exfiqa.study import Study

    _, work = reader_run
    cfg = load_config(work / "with_mine.yaml")
    source = work / "lib" / "mylab_readers.py"
    text = source.read_text()
    current = Study(cfg, progress=False).embeddings("mine", "arcface")
    try:
        source.write_text(text + "\n# an edit of the reader's module\n")
        with pytest.raises(ArrayError):
            Study(cfg, progress=False).embeddings("mine", "arcface")
    finally:
        source.write_text(text)
    np.testing.assert_array_equal(Study(cfg, progress=False).embeddings("mine", "arcface"), current)


def test_fr_model_recipe(small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime", reason="the ONNX route needs onnxruntime (pip install 'exfiqa[onnx]')")
    pytest.importorskip("onnx", reason="the ONNX export needs the onnx package")
    ns = run_recipe("fr", tmp_path, monkeypatch, CONFIG=str(small_config))
    study, net = ns["study"], ns["net"]
    bench = study.benchmark("lfw")
    images = np.stack([bench.image(i) for i in range(len(bench))])
    # the torch network run here, with the stated preprocessing and the flip: the reference
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        halves = [torch.nn.functional.normalize(net(v), dim=1) for v in (x, x.flip(3))]
    want = torch.cat(halves, dim=1).numpy()
    got = ns["embeddings"]
    assert got.shape == (len(bench), 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    frame = ns["paucs"]
    assert set(frame["fr_model"]) == {"tinyfacenet"} and np.isfinite(frame["pauc"]).all()
    # the pAUC is that of these embeddings (direct computation on materialised pairs)
    fw = study.sample_scores("lfw", "T", "EX-FIQA-FW")
    direct = _direct_pauc(study, "lfw", "tinyfacenet", _pair_min(fw, bench.comparisons))
    for t, v in _paucs(frame, "EX-FIQA-FW").items():
        assert v == pytest.approx(direct[t], rel=1e-9, abs=1e-12), t

    # the torch entry of a known architecture loads strictly under its own name
    model = Models(study.config).fr_model("my_iresnet")
    assert (model.name, model.arch, model.embedding_size) == ("my_iresnet", "iresnet", 32)
    assert study.embeddings("lfw", "my_iresnet").shape == (len(bench), 64)
    # and an ONNX entry without its preprocessing is refused, naming the key
    raw = yaml.safe_load((tmp_path / "with_tinyfacenet.yaml").read_text())
    del raw["fr_models"]["tinyfacenet"]["preprocess"]
    (tmp_path / "no_pre.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"fr_models\.tinyfacenet\.preprocess is required"):
        load_config(tmp_path / "no_pre.yaml")
