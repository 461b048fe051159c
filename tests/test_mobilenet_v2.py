"""MobileNetV2: Keras layer names, parameter counts, the two weight readers, and agreement with
the real Keras and torchvision networks (fixtures in ../shared, made with random seeded weights).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

from belka.errors import WeightsError
from belka.models import registry
from belka.models.layers import LEAF_MODULES, Add, GlobalAvgPool
from belka.models.mobilenet_v2 import (
    LAYER_NAMES,
    MobileNetV2,
    build_keras,
    build_torchvision,
    read_keras_h5,
    read_torchvision_state_dict,
)

TOTAL_KERAS_PARAMS = 3_538_984  # weights + BN moving statistics, as Keras counts them
ATOL = 1e-4


def _layer_count(module: nn.Module) -> int:
    """Parameters as Keras counts them: BN moving mean/variance included."""
    n = sum(p.numel() for p in module.parameters())
    n += sum(b.numel() for k, b in module.named_buffers() if not k.endswith("num_batches_tracked"))
    return n


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN statistic random (default init leaves BN at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var") or (name.endswith(".weight") and t.ndim == 1):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 4:
                fan_in = t.shape[1] * t.shape[2] * t.shape[3]
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * 0.5)
    return model.eval()


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("build", [build_keras, build_torchvision])
def test_children_are_the_keras_layers_in_order(build):
    names = [name for name, _ in build().named_children()]
    assert names == list(LAYER_NAMES)
    assert len(names) == 155
    assert names[:4] == ["Conv1", "bn_Conv1", "Conv1_relu", "expanded_conv_depthwise"]
    assert names[-3:] == ["out_relu", "global_average_pooling2d", "predictions"]


@pytest.mark.parametrize("build", [build_keras, build_torchvision])
def test_total_parameter_count(build):
    assert _layer_count(build()) == TOTAL_KERAS_PARAMS


def test_flavours_differ_only_in_padding_and_eps():
    keras, tv = build_keras(), build_torchvision()
    assert keras.bn_Conv1.eps == 1e-3 and tv.bn_Conv1.eps == 1e-5
    assert type(keras.Conv1).__name__ == "Conv2dSame" and tv.Conv1.padding == (1, 1)
    assert type(keras.block_1_pad).__name__ == "SamePad2d"
    assert isinstance(tv.block_1_pad, nn.ZeroPad2d) and tv.block_1_pad.padding == (1, 1, 1, 1)
    with pytest.raises(ValueError):
        MobileNetV2(padding="valid")


@pytest.mark.parametrize("build", [build_keras, build_torchvision])
def test_fx_trace_has_one_call_module_node_per_layer(build):
    # Add and GlobalAvgPool live outside torch.nn, so fx would inline them unless told not to.
    leaves = (*LEAF_MODULES, Add, GlobalAvgPool)

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    model = build().eval()
    graph = Tracer().trace(model)
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    assert targets == list(LAYER_NAMES)
    assert [n.op for n in graph.nodes if n.op not in ("call_module",)] == ["placeholder", "output"]
    gm = torch.fx.GraphModule(model, graph)
    x = torch.randn(1, 3, 65, 65)
    torch.testing.assert_close(_run(gm, x), _run(model, x), rtol=0, atol=0)


@pytest.mark.parametrize("build", [build_keras, build_torchvision])
def test_any_input_size(build):
    model = build().eval()
    for size in (64, 65, 97):
        assert _run(model, torch.randn(1, 3, size, size)).shape == (1, 1000)


def test_num_classes():
    assert _run(MobileNetV2(10).eval(), torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_registered():
    keras = registry.get_spec("mobilenet_v2")
    assert keras.read_weights is read_keras_h5
    assert keras.weights.filename == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    assert keras.weights.url.endswith("/mobilenet_v2/" + keras.weights.filename)
    assert keras.preprocessing.mean == (127.5,) * 3 and keras.preprocessing.std == (127.5,) * 3
    assert keras.build().bn_Conv1.eps == 1e-3

    tv = registry.get_spec("mobilenet_v2_torchvision")
    assert tv.read_weights is read_torchvision_state_dict
    assert tv.weights.url == "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
    assert tv.weights.sha256_prefix == "b0353104" and tv.weights.sha256 is None
    assert tv.preprocessing.mean == pytest.approx((123.675, 116.28, 103.53))
    assert tv.preprocessing.std == pytest.approx((58.395, 57.12, 57.375))
    assert tv.build().bn_Conv1.eps == 1e-5


# --------------------------------------------------------------------------- self-made files
# Writers for the two foreign layouts, written from the layout descriptions (not from the
# readers), so that the round trip checks the readers without ../shared.


def _keras_weights(model: MobileNetV2) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Our weights in Keras naming and layout, layer by layer in Keras order."""
    out = []
    for name, layer in model.named_children():
        ws: list[tuple[str, np.ndarray]] = []
        if isinstance(layer, nn.BatchNorm2d):
            for keras_name, t in (("gamma", layer.weight), ("beta", layer.bias),
                                  ("moving_mean", layer.running_mean),
                                  ("moving_variance", layer.running_var)):  # fmt: skip
                ws.append((f"{name}/{keras_name}:0", t.detach().numpy()))
        elif isinstance(layer, nn.Conv2d) and layer.groups > 1:  # (C,1,kh,kw) -> (kh,kw,C,1)
            w = layer.weight.detach().numpy()
            ws.append((f"{name}/depthwise_kernel:0", w.transpose(2, 3, 0, 1)))
        elif isinstance(layer, nn.Conv2d):  # (out,in,kh,kw) -> (kh,kw,in,out)
            w = layer.weight.detach().numpy()
            ws.append((f"{name}/kernel:0", w.transpose(2, 3, 1, 0)))
        elif isinstance(layer, nn.Linear):
            ws.append((f"{name}/kernel:0", layer.weight.detach().numpy().T))
            ws.append((f"{name}/bias:0", layer.bias.detach().numpy()))
        out.append((name, [(n, np.ascontiguousarray(a)) for n, a in ws]))
    return out


def _strings(values: list[str], as_bytes: bool):
    if as_bytes:  # h5py 2 wrote fixed-length byte strings
        width = max((len(v) for v in values), default=1)
        return np.array([v.encode() for v in values], dtype=f"S{width}")
    return values  # h5py 3 writes a list of str as variable-length strings


def write_keras_h5(model: MobileNetV2, path: Path, *, as_bytes: bool, full_model: bool) -> Path:
    """A legacy Keras-2 weight file: ``save_weights`` layout, or a full model's layout."""
    layers = [("input_1", [])] + _keras_weights(model)
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        if full_model:
            f.attrs["model_config"] = "{}"
        root.attrs["layer_names"] = _strings([n for n, _ in layers], as_bytes)
        root.attrs["backend"] = "tensorflow"
        root.attrs["keras_version"] = "2.1.6" if as_bytes else "2.21.0"
        for name, weights in layers:
            g = root.create_group(name)
            names = [n for n, _ in weights]
            g.attrs["weight_names"] = _strings(names, as_bytes) if names else np.zeros(0)
            for n, a in weights:
                g.create_dataset(n, data=a)
        extra = root.create_group("top_level_model_weights")
        extra.attrs["weight_names"] = np.zeros(0)
    return path


def torchvision_state_dict(model: MobileNetV2) -> dict[str, torch.Tensor]:
    """Our weights under torchvision ``mobilenet_v2`` keys (with num_batches_tracked)."""
    paths = ["features.0.0", "features.0.1"]
    for i in range(1, 18):
        c = f"features.{i}.conv"
        inner = ["0.0", "0.1", "1", "2"] if i == 1 else ["0.0", "0.1", "1.0", "1.1", "2", "3"]
        paths += [f"{c}.{s}" for s in inner]
    paths += ["features.18.0", "features.18.1", "classifier.1"]
    weighted = [(n, m) for n, m in model.named_children() if list(m.parameters())]
    assert len(weighted) == len(paths)
    sd = {}
    for tv, (_, module) in zip(paths, weighted):
        for k, v in module.state_dict().items():
            sd[f"{tv}.{k}"] = v.clone()
    return sd


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def keras_src() -> MobileNetV2:
    return _randomize(build_keras())


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str-attrs", "bytes-attrs"])
@pytest.mark.parametrize("full_model", [False, True], ids=["save_weights", "full-model"])
def test_keras_h5_round_trip(tmp_path, keras_src, as_bytes, full_model):
    src = keras_src
    path = write_keras_h5(src, tmp_path / "w.h5", as_bytes=as_bytes, full_model=full_model)
    if as_bytes:
        with h5py.File(path) as f:
            root = f["model_weights"] if full_model else f
            assert isinstance(root.attrs["layer_names"][0], np.bytes_)
    sd = read_keras_h5(path)
    assert not any(k.endswith("num_batches_tracked") for k in sd)
    dst = build_keras()
    dst.load_state_dict(sd, strict=True)
    dst.eval()
    _assert_same_weights(dst, src)
    x = torch.randn(1, 3, 65, 65)
    assert torch.equal(_run(dst, x), _run(src, x))


def test_torchvision_round_trip(tmp_path):
    src = _randomize(build_torchvision(), seed=1)
    torch.save(torchvision_state_dict(src), tmp_path / "tv.pth")
    for given in (tmp_path / "tv.pth", str(tmp_path / "tv.pth"), torchvision_state_dict(src)):
        dst = build_torchvision()
        dst.load_state_dict(read_torchvision_state_dict(given), strict=True)
        _assert_same_weights(dst.eval(), src)
    x = torch.randn(1, 3, 65, 65)
    assert torch.equal(_run(dst, x), _run(src, x))


# --------------------------------------------------------------------------- strictness


@pytest.fixture(scope="module")
def keras_h5(tmp_path_factory, keras_src) -> Path:
    path = tmp_path_factory.mktemp("keras") / "w.h5"
    return write_keras_h5(keras_src, path, as_bytes=False, full_model=False)


def test_keras_missing_dataset_is_named(keras_h5, tmp_path):
    broken = Path(shutil.copy(keras_h5, tmp_path / "broken.h5"))
    with h5py.File(broken, "a") as f:
        del f["block_5_project"]["block_5_project/kernel:0"]
    with pytest.raises(WeightsError, match=r"block_5_project/kernel:0"):
        read_keras_h5(broken)


def test_keras_unlisted_weight_is_missing(keras_h5, tmp_path):
    broken = Path(shutil.copy(keras_h5, tmp_path / "broken.h5"))
    with h5py.File(broken, "a") as f:
        g = f["Conv_1_bn"]
        del g["Conv_1_bn/moving_variance:0"]
        g.attrs["weight_names"] = [n for n in g.attrs["weight_names"] if "moving_variance" not in n]
    with pytest.raises(WeightsError, match=r"missing: Conv_1_bn\.running_var"):
        read_keras_h5(broken)


def test_keras_wrong_shape_and_extra_layer(keras_h5, tmp_path):
    broken = Path(shutil.copy(keras_h5, tmp_path / "broken.h5"))
    with h5py.File(broken, "a") as f:
        del f["predictions"]["predictions/bias:0"]
        f["predictions"].create_dataset("predictions/bias:0", data=np.zeros(10, np.float32))
        names = list(f.attrs["layer_names"]) + ["extra_dense"]
        f.attrs["layer_names"] = names
        g = f.create_group("extra_dense")
        g.attrs["weight_names"] = ["extra_dense/bias:0"]
        g.create_dataset("extra_dense/bias:0", data=np.zeros(3, np.float32))
    with pytest.raises(WeightsError) as info:
        read_keras_h5(broken)
    assert "unexpected: extra_dense.bias" in str(info.value)
    assert "predictions.bias (file (10,), model (1000,))" in str(info.value)


def test_keras_not_hdf5(tmp_path):
    text = tmp_path / "weights.h5"
    text.write_text("this is not HDF5\n")
    with pytest.raises(WeightsError, match="not a Keras HDF5 weight file"):
        read_keras_h5(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError, match="not a Keras HDF5 weight file"):
        read_keras_h5(other)
    with pytest.raises(WeightsError, match="not found"):
        read_keras_h5(tmp_path / "absent.h5")


def test_torchvision_strictness(tmp_path):
    good = torchvision_state_dict(build_torchvision())
    extra = dict(good, **{"classifier.2.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match=r"classifier\.2\.weight"):
        read_torchvision_state_dict(extra)
    missing = {k: v for k, v in good.items() if k != "features.7.conv.1.0.weight"}
    with pytest.raises(WeightsError, match=r"missing: block_6_depthwise\.weight"):
        read_torchvision_state_dict(missing)
    wrong = dict(good, **{"classifier.1.bias": torch.zeros(10)})
    with pytest.raises(WeightsError, match=r"shape mismatch: predictions\.bias"):
        read_torchvision_state_dict(wrong)
    text = tmp_path / "tv.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a torch state-dict file"):
        read_torchvision_state_dict(text)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="expected a state dict"):
        read_torchvision_state_dict(tmp_path / "list.pth")


# --------------------------------------------------------------------------- real fixtures


@pytest.fixture(scope="module")
def keras_dir(fixtures_dir) -> Path:
    return fixtures_dir / "keras_mobilenet_v2"


@pytest.fixture(scope="module")
def keras_run(keras_dir):
    """The Keras fixture's weights and inputs through our model: outputs and hooked layers."""
    model = build_keras()
    model.load_state_dict(read_keras_h5(keras_dir / "weights.h5"), strict=True)
    model.eval()
    captured: dict[str, torch.Tensor] = {}
    for name in ("block_12_expand", "block_12_expand_relu", "global_average_pooling2d"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)
        )
    x = torch.from_numpy(np.load(keras_dir / "input.npy")).permute(0, 3, 1, 2)  # NHWC -> NCHW
    logits = _run(model, x)
    return {
        "logits": logits.numpy(),
        "probs": torch.softmax(logits, dim=1).numpy(),
        "pooled": captured["global_average_pooling2d"].numpy(),
        # NCHW -> NHWC to compare with Keras
        "block_12_expand": captured["block_12_expand"].permute(0, 2, 3, 1).numpy(),
        "block_12_expand_relu": captured["block_12_expand_relu"].permute(0, 2, 3, 1).numpy(),
    }


def test_layers_json_names_and_params(keras_dir):
    info = json.loads((keras_dir / "layers.json").read_text())
    layers = info["layers"]
    assert layers[0]["name"] == "input_1"
    model = build_keras()
    children = dict(model.named_children())
    assert list(children) == [layer["name"] for layer in layers[1:]]
    for layer in layers[1:]:
        assert _layer_count(children[layer["name"]]) == layer["params"], layer["name"]
    assert info["total_params"] == TOTAL_KERAS_PARAMS == _layer_count(model)


@pytest.mark.parametrize(
    "name", ["logits", "probs", "pooled", "block_12_expand", "block_12_expand_relu"]
)
def test_matches_keras(keras_run, keras_dir, name):
    expected = np.load(keras_dir / f"{name}.npy")
    assert keras_run[name].shape == expected.shape
    np.testing.assert_allclose(keras_run[name], expected, rtol=0, atol=ATOL)


def test_keras_top1(keras_run):
    assert keras_run["probs"].argmax(axis=1).tolist() == [221, 661]


def test_matches_torchvision(fixtures_dir):
    folder = fixtures_dir / "torchvision_mobilenet_v2"
    model = build_torchvision()
    model.load_state_dict(read_torchvision_state_dict(folder / "state_dict.pth"), strict=True)
    model.eval()
    logits = _run(model, torch.from_numpy(np.load(folder / "input.npy"))).numpy()
    expected = np.load(folder / "logits.npy")
    np.testing.assert_allclose(logits, expected, rtol=0, atol=ATOL)
    assert logits.argmax(axis=1).tolist() == [2, 576]


def test_torchvision_fixture_keys(fixtures_dir):
    keys_file = fixtures_dir / "torchvision_mobilenet_v2" / "state_dict_keys.json"
    listed = json.loads(keys_file.read_text())
    ours = torchvision_state_dict(build_torchvision())
    assert [k["key"] for k in listed["keys"]] == list(ours)
    assert all(list(ours[k["key"]].shape) == k["shape"] for k in listed["keys"])


def test_real_keras_file_strictness(keras_dir, tmp_path):
    broken = Path(shutil.copy(keras_dir / "weights.h5", tmp_path / "weights.h5"))
    with h5py.File(broken, "a") as f:
        del f["block_12_expand"]["block_12_expand/kernel:0"]
    with pytest.raises(WeightsError, match="block_12_expand/kernel:0"):
        read_keras_h5(broken)
