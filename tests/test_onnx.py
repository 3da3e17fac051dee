"""ONNX FR models as config entries: preprocessing stated and keyed, fixed-batch exports, graphs
that list their weights as inputs, and the device-side batch API they share with torch models.

The ONNX files are exported here from our own small backbones (torch's TorchScript exporter,
``dynamo=False``), so the torch model is the independent reference.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_fr import _randomise  # random weights and BN statistics (tests/ is on sys.path)

from exfiqa.config import ConfigError, load_config
from exfiqa.models import fr

ROOT = Path(__file__).resolve().parents[1]
TINY = {"layers": (1, 2, 1, 1), "widths": (4, 8, 8, 16), "embedding_size": 8}
SFACE = fr.Preprocess("RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
SFACE_ARGS = {"channel_order": "RGB", "scale": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}
ARCFACE_ARGS = {"channel_order": "RGB", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}


def _same(a: fr.Preprocess, b: fr.Preprocess) -> bool:
    """Same preprocessing (channel order, scale, mean, std), whatever ``source`` says."""
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


def _need_runtime() -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'exfiqa[onnx]')")
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)


def _torch_model(preprocess: fr.Preprocess, seed: int = 0) -> fr.FRModel:
    return fr.FRModel("ref", _randomise(fr.build_fr("iresnet", **TINY), seed), preprocess, "cpu", "iresnet")


def _export(model: fr.FRModel, path: Path, batch: int | None, keep_initializers: bool = False) -> Path:
    """``batch``: a fixed batch size, or None for a symbolic one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model.backbone, torch.zeros(batch or 1, 3, 112, 112), str(path), input_names=["x"],
            output_names=["emb"], dynamic_axes=None if batch else {"x": {0: "n"}, "emb": {0: "n"}},
            keep_initializers_as_inputs=keep_initializers, dynamo=False,
        )  # fmt: skip
    return path


def _config(tmp_path: Path, **fr_models) -> Path:
    """configs/demo.yaml's settings with only these fr_models (checkpoints relative to tmp_path)
    and no datasets, quality models or baselines (so a Study needs no other file)."""
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw.update(data_root=str(tmp_path), cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "r"))
    raw.update(fr_models=fr_models, datasets={}, quality_models={}, baselines=[], headline={}, demo=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _entry_model(cfg_path: Path, name: str) -> fr.FRModel:
    from exfiqa.extract import Models

    return Models(load_config(cfg_path)).fr_model(name)


# ------------------------------------------------------------------ config entries, end to end


def test_fixed_batch_and_weights_as_inputs_exports_load_from_the_config_and_match_torch(tmp_path):
    _need_runtime()
    import onnx

    sface_like, arc_like = _torch_model(SFACE, seed=1), _torch_model(fr.ARCFACE, seed=2)
    _export(sface_like, tmp_path / "fixed1.onnx", batch=1)
    _export(arc_like, tmp_path / "weights_in.onnx", batch=None, keep_initializers=True)
    _export(arc_like, tmp_path / "fixed3.onnx", batch=3, keep_initializers=True)
    graph = onnx.load(str(tmp_path / "weights_in.onnx")).graph
    assert len({i.name for i in graph.input} & {t.name for t in graph.initializer}) > 10  # really listed
    cfg = _config(
        tmp_path,
        sface={"checkpoint": "fixed1.onnx", "preprocess": SFACE_ARGS},
        arcw={"checkpoint": "weights_in.onnx", "preprocess": ARCFACE_ARGS, "name": "my-arcface"},
        arc3={"checkpoint": "fixed3.onnx", "preprocess": ARCFACE_ARGS, "providers": ["CPUExecutionProvider"]},
    )
    faces = _faces(5)  # 10 rows with the flips: 10 runs of 1; 4 runs of 3, the last one padded
    for key, ref, fixed in (("sface", sface_like, 1), ("arcw", arc_like, None), ("arc3", arc_like, 3)):
        model = _entry_model(cfg, key)
        assert isinstance(model, fr.OnnxFRModel) and model.fixed_batch == fixed, key
        assert _same(model.preprocess, ref.preprocess), key
        assert (model.input_size, model.embedding_size) == (112, 8)
        expect = ref.embed(faces, batch_size=64)
        np.testing.assert_allclose(model.embed(faces, batch_size=64), expect, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(model.embed(faces, batch_size=2), expect, atol=1e-5, err_msg=key)
        f_ref = ref.embed_raw(faces)  # unnormalised: ~1e3 for 0..255 inputs, so compared relatively
        np.testing.assert_allclose(model.embed_raw(faces), f_ref, rtol=1e-4, atol=1e-5, err_msg=key)
        emb, raw = model.embed_batch(torch.from_numpy(faces), raw=True)
        np.testing.assert_allclose(emb.numpy(), expect, atol=1e-5)
        np.testing.assert_allclose(raw.numpy(), f_ref, rtol=1e-4, atol=1e-5)
    assert _entry_model(cfg, "arcw").name == "my-arcface"


def test_a_fixed_batch_is_fed_in_chunks_of_its_size_and_padding_is_dropped():
    """The session sees only batches of k rows; the padded rows' outputs never reach the result."""
    seen: list[int] = []

    class Session:
        def get_inputs(self):
            return [types.SimpleNamespace(name="img", shape=[4, 3, 2, 2], type="tensor(float)")]

        def get_outputs(self):
            return [types.SimpleNamespace(name="out", shape=[4, 2])]

        def run(self, names, feed):
            (x,) = feed.values()
            seen.append(len(x))
            return [np.stack([x.sum(axis=(1, 2, 3)), x[:, 0, 0, 0]], axis=1)]

    model = fr.OnnxFRModel("k4", Session(), fr.Preprocess("RGB", 1.0, (0.0,) * 3, (1.0,) * 3))
    x = torch.arange(9 * 12, dtype=torch.float32).reshape(9, 3, 2, 2)
    y = model._forward(x)
    assert seen == [4, 4, 4]
    np.testing.assert_array_equal(y.numpy(), np.stack([x.sum(dim=(1, 2, 3)).numpy(), x[:, 0, 0, 0].numpy()], 1))


def test_weights_listed_among_the_runtime_inputs_are_not_fed(tmp_path, monkeypatch):
    """A runtime that lists every graph input (initializers included), as in the reported failure:
    the image is found by the graph's initializer names (onnx package), or without the onnx
    package by the session's overridable initializers."""
    _need_runtime()
    import onnx
    import onnxruntime as ort

    ref = _torch_model(fr.ARCFACE, seed=3)
    path = _export(ref, tmp_path / "w.onnx", batch=None, keep_initializers=True)
    graph_inputs = onnx.load(str(path)).graph.input
    fed: list[set[str]] = []

    class ListsEverything(ort.InferenceSession):
        def get_inputs(self):
            shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph_inputs}
            return [types.SimpleNamespace(name=n, shape=s, type="tensor(float)") for n, s in shapes.items()]

        def run(self, names, feed):
            fed.append(set(feed))
            return super().run(names, feed)

    monkeypatch.setattr(ort, "InferenceSession", ListsEverything)
    faces = _faces(3)
    for without_onnx in (False, True):
        if without_onnx:
            monkeypatch.setitem(sys.modules, "onnx", None)
        model = fr.load_onnx_fr(path, fr.ARCFACE)
        np.testing.assert_allclose(model.embed(faces), ref.embed(faces), atol=1e-5)
    assert fed and all(f == {"x"} for f in fed)


def test_a_graph_with_two_candidate_image_inputs_is_refused(tmp_path):
    _need_runtime()
    import onnx
    from onnx import TensorProto, helper

    shape = [1, 3, 112, 112]
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b"))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", [a, b], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(fr.OnnxModelError, match=r"two\.onnx: an FR model takes one NCHW float image as its only fed input, "
                       r"and this graph has 2 4-D float inputs .*export the model with one image input"):
        fr.load_onnx_fr(tmp_path / "two.onnx", SFACE)
    with pytest.raises(ConfigError, match=r"fr_models\.two: .*\['a tensor\(float\)") as err:
        _entry_model(_config(tmp_path, two={"checkpoint": "two.onnx", "preprocess": SFACE_ARGS}), "two")
    assert "\n" not in str(err.value) and "besides its weights" not in str(err.value)


def _pooling_graph(path: Path, unread: int = 0, read_extra: bool = False) -> Path:
    """x (N, 3, 112, 112) -> global average pool -> (N, 3), with ``unread`` declared inputs that no
    node reads (as OpenCV Zoo's SFace declares 29) and, if ``read_extra``, one more that a node reads."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 112, 112])
    extra = [helper.make_tensor_value_info(f"unused_{i}", TensorProto.FLOAT, [64]) for i in range(unread)]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"])]
    if read_extra:
        extra.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3]))
        nodes.append(helper.make_node("Add", ["f", "bias"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["f"], ["y"]))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    model = helper.make_model(helper.make_graph(nodes, "pool", [x, *extra], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_declared_inputs_no_node_reads_are_ignored(tmp_path):
    """The shipped SFace build declares graph inputs that no node reads and that are not
    initializers; onnxruntime would want them fed. They are pruned and the model runs."""
    _need_runtime()
    import onnxruntime as ort

    path = _pooling_graph(tmp_path / "dangling.onnx", unread=5)
    with pytest.raises(Exception, match="unused_0"):  # what onnxruntime alone does with that file
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": np.zeros((1, 3, 112, 112), np.float32)})
    model = fr.load_onnx_fr(path, SFACE)
    faces = _faces(2)
    x = faces.astype(np.float64).transpose(0, 3, 1, 2)  # SFace: RGB 0..255, no scaling
    expected = x.mean(axis=(2, 3))
    np.testing.assert_allclose(model._forward(torch.from_numpy(x.astype(np.float32))).numpy(), expected, rtol=1e-5)
    entry = _entry_model(_config(tmp_path, sface={"checkpoint": "dangling.onnx", "preprocess": SFACE_ARGS}), "sface")
    assert entry.embed(faces).shape == (2, 6)


def test_an_input_a_node_reads_is_refused_in_one_line(tmp_path):
    _need_runtime()
    _pooling_graph(tmp_path / "needs_bias.onnx", unread=2, read_extra=True)
    with pytest.raises(ConfigError) as err:
        _entry_model(_config(tmp_path, m={"checkpoint": "needs_bias.onnx", "preprocess": SFACE_ARGS}), "m")
    text = str(err.value)
    assert "\n" not in text and "bias" in text and "unused_0" not in text  # the unread ones are not the problem
    assert "its nodes read inputs exfiqa cannot feed" in text and "export the model with the image as its only input" in text
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe" * 10)
    with pytest.raises(ConfigError, match=r"fr_models\.j: ONNX model .*junk\.onnx: not a readable ONNX file"):
        _entry_model(_config(tmp_path, j={"checkpoint": "junk.onnx", "preprocess": SFACE_ARGS}), "j")


def test_an_unavailable_provider_is_refused(tmp_path):
    _need_runtime()
    path = _pooling_graph(tmp_path / "p.onnx")
    with pytest.raises(fr.OnnxModelError, match=r"providers \['NoSuchExecutionProvider'\] are not available .*available: \["):
        fr.load_onnx_fr(path, SFACE, providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert fr.load_onnx_fr(path, SFACE, providers=["CPUExecutionProvider"]).embed(_faces(1)).shape == (1, 6)


@pytest.mark.parametrize(("entry", "baseline"), [("arcface", "serfiq"), ("magface", "magface_norm")])
def test_a_baseline_that_needs_a_torch_architecture_refuses_an_onnx_entry(tmp_path, entry, baseline):
    path = _config(tmp_path, **{entry: {"checkpoint": "m.onnx", "preprocess": SFACE_ARGS}})
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "baselines": [baseline]}))
    with pytest.raises(ConfigError, match=rf"baselines: {baseline} runs on fr_models\.{entry} and needs .*ONNX graph m\.onnx"):
        load_config(path)
    path.write_text(yaml.safe_dump({**raw, "baselines": ["sharpness"]}))
    assert load_config(path).baselines == ("sharpness",)


def test_a_model_name_that_cannot_name_a_file_is_refused(tmp_path):
    for bad in ("a/b", "../x", ".hidden", " pad"):
        with pytest.raises(ConfigError, match=r"fr_models\..*names files of the per-sample layout"):
            load_config(_config(tmp_path, **{bad: {"checkpoint": "m.onnx", "preprocess": SFACE_ARGS}}))


def test_the_onnxruntime_version_is_part_of_an_onnx_models_array_key(tmp_path, tiny_world, monkeypatch):
    from importlib import metadata

    from exfiqa.store.run import Run

    path = _config(tmp_path, s={"checkpoint": str(_pooling_graph(tmp_path / "p.onnx")), "preprocess": SFACE_ARGS},
                   a={"checkpoint": str(tiny_world / "fr" / "arcface.pt")})
    raw = yaml.safe_load(path.read_text())
    raw.update(datasets={"lfw": {"kind": "bin", "path": str(tiny_world / "benchmarks" / "lfw.bin")}})
    path.write_text(yaml.safe_dump(raw))
    study = Run(load_config(path), progress=False)  # the run description both stages key arrays with
    key = study.array_inputs("lfw", "emb", "s")
    assert key["onnxruntime"] == metadata.version("onnxruntime")
    assert "onnxruntime" not in study.array_inputs("lfw", "emb", "a")  # a torch model's arrays: not keyed by it
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda d: "99.0" if d == "onnxruntime" else real(d))
    assert study.array_inputs("lfw", "emb", "s") != key


# ------------------------------------------------------------------ config validation and keys


def test_an_onnx_entry_must_state_its_preprocessing(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: fr_models\.sface\.preprocess is required for an ONNX model \(m\.onnx\)") as err:
        load_config(_config(tmp_path, sface={"checkpoint": "m.onnx"}))
    assert "SFace takes RGB 0..255 (scale 1, mean [0, 0, 0], std [1, 1, 1])" in str(err.value)
    assert "ArcFace (x/255 - 0.5)/0.5" in str(err.value)
    bad = {
        r"fr_models\.s\.preprocess needs \['mean', 'std'\]": {"channel_order": "RGB", "scale": 1},
        r"fr_models\.s\.preprocess\.channel_order must be 'RGB' or 'BGR', got 'rgb'": {**SFACE_ARGS, "channel_order": "rgb"},
        r"fr_models\.s\.preprocess\.std\[1\] must be a finite non-zero number, got 0": {**SFACE_ARGS, "std": [1, 0, 1]},
        r"fr_models\.s\.preprocess\.mean must be a list of 3 numbers": {**SFACE_ARGS, "mean": [0, 0]},
        r"fr_models\.s\.preprocess\.scale must be a finite non-zero number, got '1' \(str\)": {**SFACE_ARGS, "scale": "1"},
        r"fr_models\.s\.preprocess: unknown key\(s\) \['order'\]": {**SFACE_ARGS, "order": "RGB"},
    }
    for message, pre in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(_config(tmp_path, s={"checkpoint": "m.onnx", "preprocess": pre}))
    with pytest.raises(ConfigError, match=r"fr_models\.s: \['arch', 'layers'\] apply to torch checkpoints only"):
        load_config(_config(tmp_path, s={"checkpoint": "m.ONNX", "preprocess": SFACE_ARGS, "arch": "iresnet", "layers": [1]}))
    with pytest.raises(ConfigError, match=r"fr_models\.s\.providers: onnxruntime providers apply to ONNX models only"):
        load_config(_config(tmp_path, s={"checkpoint": "m.pt", "providers": ["CPUExecutionProvider"]}))
    with pytest.raises(ConfigError, match=r"fr_models\.s\.providers must be a non-empty list"):
        load_config(_config(tmp_path, s={"checkpoint": "m.onnx", "preprocess": SFACE_ARGS, "providers": "CPU"}))
    with pytest.raises(ValueError, match=r"fr_models\.s \(ONNX m\.onnx\) needs 'preprocess'"):
        fr.load_fr_entry("s", Path("m.onnx"), "cpu", {})


def test_the_preprocessing_is_part_of_the_model_args_and_thus_the_array_key(tmp_path):
    def spec(**entry):
        return load_config(_config(tmp_path, s={"checkpoint": "m.onnx", **entry})).fr_models["s"]

    sface, arc = spec(preprocess=SFACE_ARGS), spec(preprocess=ARCFACE_ARGS)
    assert sface.args["preprocess"] == {"channel_order": "RGB", "scale": 1.0, "mean": [0.0] * 3, "std": [1.0] * 3}
    assert sface.args != arc.args
    assert spec(preprocess={**SFACE_ARGS, "channel_order": "BGR"}).args != sface.args
    assert spec(preprocess={**SFACE_ARGS, "scale": 1.0, "mean": [0.0, 0, 0]}).args == sface.args  # 1 == 1.0
    assert _same(fr.effective_preprocess("s", sface.args), SFACE)
    assert _same(fr.effective_preprocess("s", arc.args), fr.ARCFACE)
    assert not _same(fr.effective_preprocess("s", arc.args), SFACE)
    # built-in torch entries: the released default, or the entry's own override
    assert fr.effective_preprocess("magface", {}) == fr.MAGFACE
    assert fr.effective_preprocess("x", {"name": "curricularface"}) == fr.CURRICULARFACE
    over = load_config(_config(tmp_path, arcface={"checkpoint": "a.pt", "preprocess": SFACE_ARGS})).fr_models["arcface"]
    assert _same(fr.effective_preprocess("arcface", over.args), SFACE)
    with pytest.raises(ValueError, match=r"fr_models\.sface: no preprocessing known for model name 'sface'"):
        fr.effective_preprocess("sface", {})


def test_a_torch_entry_takes_its_preprocess_override_and_any_name_with_arch(tmp_path):
    ref = _torch_model(fr.ARCFACE)
    fr.save_fr(ref, tmp_path / "a.pt", layout="plain")
    cfg = _config(
        tmp_path,
        arcface={"checkpoint": "a.pt", "preprocess": SFACE_ARGS},
        adaface={"checkpoint": "a.pt", "arch": "iresnet", "preprocess": ARCFACE_ARGS},
    )
    over = _entry_model(cfg, "arcface")
    assert _same(over.preprocess, SFACE) and not isinstance(over, fr.OnnxFRModel)
    faces = _faces(2)
    np.testing.assert_array_equal(over.embed(faces), _torch_model(SFACE).embed(faces))
    np.testing.assert_array_equal(_entry_model(cfg, "adaface").embed(faces), ref.embed(faces))
    with pytest.raises(ValueError, match=r"fr_models\.adaface: unknown FR model name 'adaface' .* needs 'arch'"):
        fr.load_fr_entry("adaface", tmp_path / "a.pt", "cpu", {"arch": "iresnet"})


# ------------------------------------------------------------------ preprocessing and the batch API


def test_sface_like_preprocessing_is_applied_exactly():
    x = torch.from_numpy(_faces(3))
    expect = x.permute(0, 3, 1, 2).to(torch.float32)  # RGB 0..255, nothing else
    got = SFACE.tensor(x)
    assert got.dtype == torch.float32 and got.shape == (3, 3, 112, 112) and got.is_contiguous()
    assert torch.equal(got, expect)
    assert torch.equal(SFACE.tensor(x, memory_format=torch.channels_last), expect)
    assert SFACE.tensor(x, memory_format=torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    # a BGR one with per-channel mean/std, by hand in float32 with numpy
    pre = fr.Preprocess("BGR", 0.5, (10.0, 20.0, 30.0), (2.0, 4.0, 8.0))
    img = x.numpy()[..., ::-1].astype(np.float32) * np.float32(0.5)
    hand = ((img - np.float32([10, 20, 30])) / np.float32([2, 4, 8])).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(pre.tensor(x).numpy(), hand)
    np.testing.assert_array_equal(pre(x.numpy()).numpy(), hand)  # __call__ is the same arithmetic
    with pytest.raises(ValueError, match=r"uint8 RGB pixels \(N, H, W, 3\), got torch.float32"):
        SFACE.tensor(x.float())


def test_embed_batch_is_one_forward_of_x_and_its_flip():
    model = _torch_model(fr.MAGFACE)
    faces = _faces(4)
    calls: list[int] = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.inference_mode():
        emb, raw = model.embed_batch(torch.from_numpy(faces), raw=True)
        emb_only, none = model.embed_batch(torch.from_numpy(faces))
    assert calls == [8, 8] and none is None
    assert emb.shape == (4, 16) and raw.shape == (4, 8) and emb.dtype == torch.float32
    assert torch.equal(emb, emb_only)
    np.testing.assert_array_equal(emb.numpy(), model.embed(faces))
    np.testing.assert_array_equal(raw.numpy(), model.embed_raw(faces))
    # the independent reference: each half is L2norm(f(.)) of the image or its mirror, by itself
    with torch.inference_mode():
        f = model.backbone(model.to_tensor(faces)).double()
        g = model.backbone(model.to_tensor(np.ascontiguousarray(faces[:, :, ::-1]))).double()
    np.testing.assert_allclose(emb.numpy()[:, :8], (f / f.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    np.testing.assert_allclose(emb.numpy()[:, 8:], (g / g.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    np.testing.assert_allclose(raw.numpy(), f.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.numpy(), axis=1), np.sqrt(2), rtol=1e-6)


def test_default_providers_use_cuda_only_when_asked_for_and_available():
    ort = types.SimpleNamespace(get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cpu_only = types.SimpleNamespace(get_available_providers=lambda: ["CPUExecutionProvider"])
    assert fr.onnx._default_providers(ort, torch.device("cuda")) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert fr.onnx._default_providers(ort, torch.device("cpu")) == ["CPUExecutionProvider"]
    assert fr.onnx._default_providers(cpu_only, torch.device("cuda:0")) == ["CPUExecutionProvider"]


# ------------------------------------------------------------------ without onnxruntime
# (moved here from tests/test_fr.py)


class _FakeInput:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession, running a torch module; like some runtimes, it
    lists the weights among the inputs (and as overridable initializers)."""

    module: torch.nn.Module

    def __init__(self, path, sess_options=None, providers=None):
        assert Path(path).is_file() and providers == ["CPUExecutionProvider"]

    def get_inputs(self):
        return [_FakeInput("fc.weight", [8, 16 * 49]), _FakeInput("input.1", ["batch", 3, 112, 112]),
                _FakeInput("bn.w", [1, 2, 3, 4])]  # fmt: skip

    def get_overridable_initializers(self):
        return [_FakeInput("fc.weight", [8, 16 * 49]), _FakeInput("bn.w", [1, 2, 3, 4])]

    def get_outputs(self):
        return [_FakeInput("683", ["batch", 8])]

    def run(self, output_names, feed):
        assert output_names is None and set(feed) == {"input.1"} and feed["input.1"].dtype == np.float32
        with torch.no_grad():
            return [self.module(torch.from_numpy(feed["input.1"])).numpy()]


def test_onnx_wrapper_with_a_fake_runtime(tmp_path, monkeypatch):
    model = _torch_model(fr.ARCFACE)
    _FakeSession.module = model.backbone
    fake = types.SimpleNamespace(InferenceSession=_FakeSession, SessionOptions=types.SimpleNamespace)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setitem(sys.modules, "onnx", None)
    (tmp_path / "m.onnx").write_bytes(b"x")
    onnx_model = fr.load_onnx_fr(tmp_path / "m.onnx", preprocess=fr.ARCFACE)
    assert onnx_model.input_size == 112 and onnx_model.embedding_size == 8 and onnx_model.fixed_batch is None
    faces = _faces(3)
    np.testing.assert_allclose(onnx_model.embed(faces), model.embed(faces), atol=1e-6)
    np.testing.assert_allclose(onnx_model.embed_raw(faces), model.embed_raw(faces), atol=1e-6)


def test_onnx_without_runtime_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"exfiqa\[onnx\]"):
        fr.load_onnx_fr(tmp_path / "m.onnx", fr.ARCFACE)


def test_load_onnx_fr_has_no_default_preprocessing(tmp_path):
    with pytest.raises(TypeError, match="preprocess"):
        fr.load_onnx_fr(tmp_path / "m.onnx")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"preprocess must be an exfiqa\.models\.fr\.Preprocess, got dict"):
        fr.load_onnx_fr(tmp_path / "m.onnx", SFACE_ARGS)  # type: ignore[arg-type]
