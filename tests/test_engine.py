"""The torch and ONNX Runtime engines agree, the export cache works, and the parallel pipeline
returns what the serial path returns, in order, with per-file errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import belka
from belka import engine as engine_mod
from belka import images
from belka.engine import (EngineError, OnnxEngine, TorchEngine, make_engine, normalize,
                          onnx_path)
from belka.models.model import Model
from belka.models.preprocessing import Preprocessing
from belka.models.weights import cache_dir
from belka.pipeline import draft_size, iter_predictions, load_resized

pytest.importorskip("onnxruntime")
skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module", autouse=True)
def _module_cache(tmp_path_factory):
    """Module-scoped fixtures are built before conftest's per-test cache switch: point them at
    the same session cache so that nothing is written to the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BELKA_CACHE", str(tmp_path_factory.getbasetemp() / "belka-cache"))
        yield


@pytest.fixture(scope="module")
def model() -> Model:
    return belka.load(device="cpu")


@pytest.fixture(scope="module")
def torch_engine(model) -> TorchEngine:
    return TorchEngine(model)


@pytest.fixture(scope="module")
def onnx_engine(model) -> OnnxEngine:
    return OnnxEngine(model)  # exports once per test session (the cache is per session)


def photo_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in images.IMAGE_EXTENSIONS)


def assert_engines_agree(torch_engine, onnx_engine, batch: np.ndarray) -> None:
    x = torch_engine.prepare(batch)
    want, got = torch_engine.logits(x), onnx_engine.logits(x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    top5 = lambda logits: np.argsort(-logits, axis=1, kind="stable")[:, :5]  # noqa: E731
    np.testing.assert_array_equal(top5(got), top5(want))


# -- engines ---------------------------------------------------------------------------------


def test_numpy_normalize_matches_preprocessing(model):
    batch = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(normalize(batch, model.preprocessing),
                                  model.preprocessing.normalize(batch).numpy())


def test_engines_agree_on_skimage_photos(model, torch_engine, onnx_engine):
    batch = np.stack([model.preprocessing.resize(im)
                      for im in (skdata.chelsea(), skdata.coffee(), skdata.astronaut())])
    assert_engines_agree(torch_engine, onnx_engine, batch)
    assert_engines_agree(torch_engine, onnx_engine, batch[:1])  # the batch axis is dynamic
    probs = onnx_engine.probabilities_from_batch(batch)
    assert probs.shape == (3, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[0].argmax() in range(281, 286)  # chelsea is a domestic cat
    assert model.labels[probs[1].argmax()] == "espresso"


def test_engines_agree_on_shared_photos(photos_dir, model, torch_engine, onnx_engine):
    files = photo_files(photos_dir)[::2]  # half of them: eager PyTorch is the slow part
    for start in range(0, len(files), 32):
        batch = np.stack([load_resized(f, model.preprocessing) for f in files[start:start + 32]])
        assert_engines_agree(torch_engine, onnx_engine, batch)


def test_engine_probabilities_match_the_model(model, onnx_engine):
    batch = np.stack([model.preprocessing.resize(skdata.chelsea())])
    np.testing.assert_allclose(onnx_engine.probabilities_from_batch(batch),
                               model.probabilities_from_batch(batch), atol=1e-5)


def test_make_engine_kinds(model, onnx_engine):
    assert isinstance(make_engine(model, "torch"), TorchEngine)
    assert isinstance(make_engine(model, "onnx"), OnnxEngine)
    assert isinstance(make_engine(model, "auto"), OnnxEngine)
    with pytest.raises(EngineError, match="unknown engine"):
        make_engine(model, "tensorrt")


def test_missing_onnxruntime_is_a_clear_error(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(EngineError, match="pip install onnxruntime") as info:
        make_engine(model, "onnx")
    assert "--engine torch" in str(info.value)
    assert isinstance(info.value, belka.BelkaError)
    assert isinstance(make_engine(model, "auto"), TorchEngine)


# -- export cache ----------------------------------------------------------------------------


def test_export_cache_is_reused(model, onnx_engine, monkeypatch):
    path = onnx_engine.path
    assert path == onnx_path(model)
    assert path.parent == cache_dir().parent / "onnx"
    assert model.weights_sha256 in path.name and torch.__version__ in path.name
    mtime = path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of using the cache")

    monkeypatch.setattr(engine_mod, "_export", no_export)
    again = OnnxEngine(model)
    assert again.path == path and path.stat().st_mtime_ns == mtime
    assert not list(path.parent.glob(".*.part"))  # no temporary files left behind


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def tiny_model(sha: str | None) -> Model:
    torch.manual_seed(0)
    return Model("tiny", Tiny(), Preprocessing(size=32), [str(i) for i in range(5)],
                 weights_sha256=sha, device="cpu")


def test_export_cache_is_keyed_by_weights_hash():
    calls = []
    real_export = engine_mod._export

    def counting_export(*args, **kwargs):
        calls.append(args)
        return real_export(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_mod, "_export", counting_export)
        first, second = tiny_model("a" * 64), tiny_model("b" * 64)
        a1, b1, a2 = OnnxEngine(first), OnnxEngine(second), OnnxEngine(first)
    assert a1.path != b1.path and a1.path == a2.path
    assert a1.path.is_file() and b1.path.is_file()
    assert len(calls) == 2  # one export per weights hash
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(a1.logits(x), TorchEngine(first).logits(x), atol=1e-5)
    # weights without a known hash are keyed by a digest of their state dict
    unhashed = tiny_model(None)
    assert onnx_path(unhashed) == onnx_path(tiny_model(None)) != a1.path
    # the same file hash with other weights (a head attached, an in-place edit): another file
    edited = tiny_model("a" * 64)
    with torch.no_grad():
        edited.module.fc.bias += 1
    assert onnx_path(edited) != a1.path


# -- pipeline --------------------------------------------------------------------------------


@pytest.fixture()
def folder(tmp_path) -> tuple[list[Path], set[int]]:
    """Good JPEGs and PNGs mixed with a truncated JPEG, a text file and a missing file."""
    paths = []
    sources = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket()]
    for i, image in enumerate(sources * 2):
        paths.append(images.save(image, tmp_path / f"{i}.{'png' if i % 3 == 0 else 'jpg'}"))
    data = images.encode(skdata.chelsea(), "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for position, path in ((1, truncated), (4, text), (6, tmp_path / "missing.jpg")):
        paths.insert(position, path)
    bad = {i for i, p in enumerate(paths) if p.name in ("truncated.jpg", "notes.jpg", "missing.jpg")}
    return paths, bad


@pytest.mark.parametrize("engine_name", ["torch_engine", "onnx_engine"])
def test_pipeline_order_errors_and_serial_equality(request, model, folder, engine_name):
    engine = request.getfixturevalue(engine_name)
    paths, bad = folder
    results = list(iter_predictions(engine, iter(paths), batch_size=2, workers=2, draft=False))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert {i for i, r in enumerate(results) if r.error is not None} == bad
    assert all((r.probabilities is None) == (r.error is not None) for r in results)
    assert "truncated" in results[1].error or "corrupt" in results[1].error
    good = [p for i, p in enumerate(paths) if i not in bad]
    serial = model.probabilities(good)  # decode -> crop -> batch -> torch, one batch
    got = np.stack([r.probabilities for r in results if r.error is None])
    np.testing.assert_allclose(got, serial, atol=1e-5 if engine_name == "torch_engine" else 1e-4)


def test_pipeline_takes_a_model_and_stops_early(model, folder):
    paths, _ = folder
    stream = iter_predictions(model, paths * 20, batch_size=4, workers=2)
    first = [next(stream) for _ in range(3)]
    stream.close()  # leaves the thread pool without waiting for the remaining files
    assert [r.path for r in first] == [str(p) for p in paths[:3]]


def test_draft_size_follows_the_policy(model):
    assert draft_size(model.preprocessing) == (256, 256)
    assert draft_size(model.preprocessing, "squash") == (224, 224)


def test_draft_decoding_keeps_top1_on_a_large_jpeg(tmp_path, onnx_engine):
    from PIL import Image

    paths = []
    for name in ("chelsea", "coffee", "astronaut"):
        image = Image.fromarray(getattr(skdata, name)())
        large = image.resize((image.width * 4, image.height * 4), Image.Resampling.BICUBIC)
        paths.append(images.save(np.asarray(large), tmp_path / f"{name}.jpg", quality=92))
    full = list(iter_predictions(onnx_engine, paths, draft=False))
    draft = list(iter_predictions(onnx_engine, paths, draft=True))
    for a, b in zip(full, draft):
        assert a.probabilities.argmax() == b.probabilities.argmax()


def test_draft_decoding_keeps_top1_on_shared_photos(photos_dir, onnx_engine):
    files = photo_files(photos_dir)
    full = list(iter_predictions(onnx_engine, files, draft=False))
    draft = list(iter_predictions(onnx_engine, files, draft=True))
    agree, clear_flips = 0, []
    for a, b in zip(full, draft):
        top2 = np.sort(a.probabilities)[-2:]
        if a.probabilities.argmax() == b.probabilities.argmax():
            agree += 1
        elif top2[1] - top2[0] > 0.15:  # a flip between near-tied classes is not a regression
            clear_flips.append(a.path)
    assert not clear_flips
    assert agree >= 0.95 * len(files)


def test_legacy_exporter_fallback(monkeypatch):
    """Without the dynamo exporter (no onnxscript), the legacy one still gives a working graph."""
    real = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise ImportError("No module named 'onnxscript'")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    model = tiny_model("c" * 64)
    engine = OnnxEngine(model)
    import onnx

    ops = {node.op_type for node in onnx.load(str(engine.path)).graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolution
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(engine.logits(x), TorchEngine(model).logits(x), atol=1e-5)


# -- the engine inside the Model -----------------------------------------------------------


def test_load_picks_the_engine(model, monkeypatch):
    assert model.engine_kind == "auto" and isinstance(model.engine, OnnxEngine)
    assert isinstance(belka.load(engine="torch").engine, TorchEngine)
    monkeypatch.setenv("BELKA_ENGINE", "torch")
    assert belka.load().engine_kind == "torch"
    assert belka.load(engine="onnx").engine_kind == "onnx"   # the argument wins
    monkeypatch.setenv("BELKA_ENGINE", "tensorrt")
    with pytest.raises(belka.UsageError, match="BELKA_ENGINE 'tensorrt'"):
        belka.load()
    monkeypatch.delenv("BELKA_ENGINE")
    with pytest.raises(belka.UsageError, match="choose auto, onnx or torch"):
        belka.load(engine="tvm")


def test_engines_give_the_same_embedding_and_feature_map(model, torch_engine, onnx_engine):
    batch = np.stack([model.preprocessing.resize(im) for im in
                      (skdata.chelsea(), skdata.coffee(), skdata.astronaut())])
    x = torch_engine.prepare(batch)
    names = ("logits", "embedding", "features")
    assert onnx_engine.outputs == torch_engine.outputs == names
    assert onnx_engine.spatial_layer == "top_activation"
    want, got = torch_engine.run(x, names), onnx_engine.run(x, names)
    assert [w.shape for w in want] == [(3, 1000), (3, 1280), (3, 1280, 7, 7)]
    for w, g in zip(want, got):
        assert np.abs(w - g).max() <= 1e-4
    # the embedding is the classifier's input: the feature map's mean, and it gives the logits
    np.testing.assert_allclose(got[1], got[2].mean(axis=(2, 3)), atol=1e-5)
    fc = model.module.predictions
    np.testing.assert_allclose(got[1] @ fc.weight.detach().numpy().T + fc.bias.detach().numpy(),
                               got[0], atol=1e-4)
    # and the module's own forward, hooks and all, agrees
    with torch.inference_mode():
        np.testing.assert_allclose(model.module(torch.from_numpy(x)).numpy(), want[0], atol=1e-5)


def test_model_probabilities_run_on_its_engine(model, monkeypatch):
    calls = []
    real = OnnxEngine.run

    def counting(self, x, outputs=("logits",)):
        calls.append(len(x))
        return real(self, x, outputs)

    monkeypatch.setattr(OnnxEngine, "run", counting)
    top = model.classify([skdata.chelsea(), skdata.coffee()], top=1)
    assert [t[0].label for t in top] == ["tiger cat", "espresso"] and calls == [2]


def test_copies_of_a_model_share_its_engine(model):
    import copy

    twin = copy.deepcopy(model)
    assert twin.engine is model.engine and twin.module is not model.module
    other = belka.load(engine="torch")
    other.engine = "onnx"
    assert other.engine_kind == "onnx" and isinstance(other.engine, OnnxEngine)
    other.engine = TorchEngine(other)
    assert other.engine_kind == "torch"


def test_gradcam_fast_path_on_the_engine_equals_autograd(model, onnx_engine):
    from belka.explain import explain

    photos = [skdata.chelsea(), skdata.coffee(), skdata.astronaut()]
    assert model.engine_if_made is not None
    fast = explain(model, photos, target=[282, "espresso", None])
    slow = explain(model, photos, target=[282, "espresso", None], fast=False)
    for f, s in zip(fast, slow):
        assert f.details["fast_path"] and not s.details["fast_path"]
        assert f.layer == s.layer == "top_activation" and f.indices == s.indices
        assert abs(f.score - s.score) <= 1e-3 and abs(f.probability - s.probability) <= 1e-4
        np.testing.assert_allclose(f.heatmap, s.heatmap, atol=1e-3)


def test_cli_engine_option(tmp_path):
    from click.testing import CliRunner

    from belka.cli import main

    photo = images.save(skdata.chelsea(), tmp_path / "cat.jpg")
    outputs = {}
    for kind in ("torch", "onnx"):
        result = CliRunner().invoke(main, ["classify", str(photo), "--json", "--engine", kind],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[kind] = json.loads(result.stdout)["predictions"]
    assert [p["label"] for p in outputs["torch"]] == [p["label"] for p in outputs["onnx"]]
    for a, b in zip(outputs["torch"], outputs["onnx"]):
        assert abs(a["probability"] - b["probability"]) <= 1e-5
    bad = CliRunner().invoke(main, ["classify", str(photo), "--engine", "tvm"])
    assert bad.exit_code == 2 and "tvm" in bad.output
