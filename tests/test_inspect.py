"""Looking inside a model: the Keras-style summary (checked against Keras's own MobileNetV2
summary), layer lookup, running one layer, named activations, the feature-map grid and the
`belka summary / layers / activations` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import belka
from belka import inspect as bi
from belka.cli import main
from belka.errors import ModelError, UsageError

KERAS_TOTAL, KERAS_TRAINABLE = 3_538_984, 3_504_872
LITE0_MACS = 0.385e9  # DESIGN.md: 0.385 G multiply-adds per 224 x 224 image


@pytest.fixture(scope="module")
def lite0():
    return belka.load(device="cpu")


@pytest.fixture(scope="module")
def mnv2():
    """MobileNetV2 with its initial random weights (no download)."""
    return belka.load("mobilenet_v2", weights="none", device="cpu")


@pytest.fixture(scope="module")
def cat_jpg(tmp_path_factory) -> Path:
    skdata = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("img") / "cat.jpg"
    Image.fromarray(skdata.chelsea()).save(path, quality=95)
    return path


def nhwc(shape):
    """Our channels-first row shape -> Keras's channels-last one."""
    return (shape[0], *shape[2:], shape[1]) if len(shape) > 2 else tuple(shape)


# -- summary -----------------------------------------------------------------------------------

def test_mobilenet_v2_summary_matches_keras(mnv2, fixtures_dir):
    keras = json.loads((fixtures_dir / "keras_mobilenet_v2" / "layers.json").read_text())
    summary = bi.summarize(mnv2)
    assert len(summary.rows) == keras["n_layers"] == 156
    for row, ref in zip(summary.rows, keras["layers"]):
        assert row.name == ref["name"]
        assert nhwc(row.output_shape) == tuple(ref["output_shape"]), row.name
        assert row.params == ref["params"], row.name
        assert row.trainable_params == ref["trainable_params"], row.name
    assert summary.total_params == keras["total_params"] == KERAS_TOTAL
    assert summary.trainable_params == keras["trainable_params"] == KERAS_TRAINABLE
    assert summary.rows[0].index is None and summary.rows[1].index == 0


def test_summary_table_text_follows_keras(mnv2, fixtures_dir):
    table = bi.summarize(mnv2).to_table()
    keras = (fixtures_dir / "keras_mobilenet_v2" / "summary.txt").read_text()
    assert "Total params: 3538984 (13.50 MB)" in keras
    assert "Total params: 3,538,984 (13.50 MiB)" in table
    assert "Trainable params: 3,504,872 (13.37 MiB)" in table
    assert "Non-trainable params: 34,112 (133.25 KiB)" in table
    assert "Multiply-adds: 300.77 M" in table
    lines = table.splitlines()
    assert lines[0].startswith('Model: "mobilenet_v2"')
    assert any(line.split()[:2] == ["block_12_expand", "(Conv2d)"] and "(None, 576, 14, 14)" in line
               and "55,296" in line for line in lines)
    assert lines[4].split()[:2] == ["input_1", "(InputLayer)"]


def test_efficientnet_lite0_summary(lite0):
    summary = bi.summarize(lite0)
    assert summary.macs == pytest.approx(LITE0_MACS, rel=0.02)
    assert [r.name for r in summary.rows[1:]] == lite0.layer_names
    assert summary.trainable_params == sum(p.numel() for p in lite0.module.parameters())
    assert summary.non_trainable_params == 2 * sum(
        m.num_features for m in lite0.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    rows = {r.name: r for r in summary.rows}
    assert rows["block2a_dwconv_pad"].output_shape == (None, 96, 113, 113)
    assert rows["predictions"].output_shape == (None, 1000)
    assert rows["predictions"].macs == 1280 * 1000
    # depthwise 3x3 over 32 channels at 112 x 112: one multiply-add per tap and output pixel
    assert rows["block1a_dwconv"].macs == 112 * 112 * 32 * 9
    assert rows["stem_conv"].activation_bytes == 32 * 112 * 112 * 4
    assert summary.activation_bytes == sum(r.activation_bytes for r in summary.rows)


def test_summary_needs_no_weights_and_follows_input_size():
    module = belka.models.get_spec("mobilenet_v2").build()
    with torch.device("meta"):  # a network with no weights at all
        hollow = belka.models.get_spec("efficientnet_lite0").build()
    small = bi.summarize(module, 160)
    assert small.model == "MobileNetV2"
    assert small.input_shape == (1, 3, 160, 160)
    assert {r.name: r for r in small.rows}["out_relu"].output_shape == (None, 1280, 5, 5)
    assert bi.summarize(hollow).macs == pytest.approx(LITE0_MACS, rel=0.02)


def test_summary_json(lite0):
    data = json.loads(bi.summarize(lite0).to_json())
    assert data["model"] == "efficientnet_lite0" and data["layout"] == "NCHW"
    assert data["input_shape"] == [1, 3, 224, 224]
    assert len(data["layers"]) == len(lite0.layer_names) + 1
    first = data["layers"][1]
    assert first == {"index": 0, "name": "stem_conv", "type": "Conv2dSame",
                     "output_shape": [None, 32, 112, 112], "params": 864,
                     "trainable_params": 864, "macs": 112 * 112 * 32 * 27,
                     "activation_bytes": 32 * 112 * 112 * 4}
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])


# -- layers ------------------------------------------------------------------------------------

def test_get_layer_by_name_and_index(mnv2):
    layer = bi.get_layer(mnv2, "block_12_expand")
    assert (layer.index, layer.name, layer.type) == (106, "block_12_expand", "Conv2d")
    assert layer.module is mnv2.module.block_12_expand
    assert bi.get_layer(mnv2, 106).name == "block_12_expand"
    assert bi.get_layer(mnv2, "106").name == "block_12_expand"  # as the CLI passes it
    assert bi.get_layer(mnv2, -1).name == "predictions"
    assert bi.get_layer(mnv2.module, 0).name == "Conv1"
    assert [layer.name for layer in bi.layers(mnv2)] == mnv2.layer_names


def test_unknown_layer_lists_close_matches(mnv2):
    with pytest.raises(ModelError, match="block_12_expand") as err:
        bi.get_layer(mnv2, "block_12_expnd")
    assert "Did you mean" in str(err.value)
    with pytest.raises(ModelError, match="out of range"):
        bi.get_layer(mnv2, 155)
    with pytest.raises(ModelError, match="Closest: block_12_expand"):
        bi.find_layers(mnv2, "block_12_expnd")
    assert len(bi.find_layers(mnv2, "BLOCK_12")) == 9


def test_run_one_layer(mnv2):
    x = torch.randn(1, 3, 224, 224)
    out = bi.run_layer(mnv2, 0, x)  # the article: layers[0].apply(input) is 1 x 112 x 112 x 32
    assert out.shape == (1, 32, 112, 112)
    assert torch.equal(out, mnv2.module.Conv1(x))
    a, b = torch.randn(2, 1, 24, 56, 56)
    assert torch.equal(bi.get_layer(mnv2, "block_2_add")(a, b), a + b)


# -- activations -------------------------------------------------------------------------------

def test_activations_are_named_layer_outputs(lite0):
    x = torch.randn(2, 3, 224, 224)
    acts = bi.activations(lite0, x, ["top_conv", "stem_conv", 0])
    assert list(acts) == ["top_conv", "stem_conv"]
    assert acts["stem_conv"].shape == (2, 32, 112, 112)
    assert torch.equal(acts["stem_conv"], lite0.module.stem_conv(x).detach())
    assert not acts["top_conv"].requires_grad
    assert all(not child._forward_hooks for child in lite0.module.children())


def test_activations_from_an_image(lite0, cat_jpg):
    from_path = bi.activations(lite0, cat_jpg, "predictions")["predictions"]
    expected = lite0(lite0.preprocess([cat_jpg]))
    assert torch.allclose(from_path, expected, atol=1e-5)
    with pytest.raises(UsageError, match="tensor"):
        bi.activations(lite0.module, cat_jpg, "predictions")


def test_activations_release_hooks_on_error(lite0):
    with pytest.raises(RuntimeError):
        bi.activations(lite0, torch.randn(1, 4, 224, 224), ["top_conv"])  # 4 channels: fails
    assert all(not child._forward_hooks for child in lite0.module.children())
    with pytest.raises(ModelError):
        bi.activations(lite0, torch.randn(1, 3, 224, 224), ["no_such_layer"])


def test_block_12_expand_matches_keras(fixtures_dir):
    """The article's layer, on the Keras fixture weights and input (NHWC there, NCHW here)."""
    folder = fixtures_dir / "keras_mobilenet_v2"
    model = belka.load("mobilenet_v2", weights=str(folder / "weights.h5"), device="cpu")
    x = torch.from_numpy(np.load(folder / "input.npy")).permute(0, 3, 1, 2)
    acts = bi.activations(model, x, ["block_12_expand", "block_12_expand_relu"])
    for name, act in acts.items():
        ref = torch.from_numpy(np.load(folder / f"{name}.npy")).permute(0, 3, 1, 2)
        assert act.shape == ref.shape == (2, 576, 14, 14)
        assert torch.allclose(act, ref, atol=1e-3), name


def test_feature_grid():
    maps = torch.rand(1, 10, 7, 7)
    maps[0, 3] = 5.0  # a constant channel draws as a flat tile, not NaN
    grid = bi.feature_grid(maps, title="test", max_channels=6)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    gray = bi.feature_grid(maps[0], max_channels=6, cmap="gray")
    assert gray.shape == bi.feature_grid(maps[0], max_channels=6).shape
    assert (gray[..., 0] == gray[..., 1]).all()
    many = bi.feature_grid(maps[0], max_channels=64)
    assert many.shape[0] > gray.shape[0]  # 10 tiles need more rows than 6
    assert bi.feature_grid(torch.randn(1, 1000)).shape[2] == 3  # a vector: one map
    with pytest.raises(UsageError):
        bi.feature_grid(maps, cmap="jet")


# -- CLI ---------------------------------------------------------------------------------------

def test_cli_summary():
    result = CliRunner().invoke(main, ["summary", "--model", "mobilenet_v2"])
    assert result.exit_code == 0, result.output
    assert "Total params: 3,538,984" in result.stdout
    assert " block_12_expand (Conv2d) " in result.stdout
    result = CliRunner().invoke(main, ["summary", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "efficientnet_lite0"
    assert data["macs"] == pytest.approx(LITE0_MACS, rel=0.02)


def test_cli_layers():
    result = CliRunner().invoke(main, ["layers", "--model", "mobilenet_v2", "block_12_exp"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["106", "block_12_expand", "Conv2d", "(None,", "576,", "14,", "14)"]
    assert len(lines) == 3
    result = CliRunner().invoke(main, ["layers", "--json"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0] == {"index": 0, "name": "stem_conv", "type": "Conv2dSame",
                       "output_shape": [None, 32, 112, 112]}


def test_cli_errors_are_one_line():
    result = CliRunner().invoke(main, ["layers", "--model", "mobilenet_v3"])
    assert result.exit_code == 2
    assert result.stderr.startswith("belka: unknown model 'mobilenet_v3'")
    result = CliRunner().invoke(main, ["layers", "blok_12"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_cli_activations(cat_jpg, tmp_path):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(main, ["activations", str(cat_jpg), "-o", str(out),
                                       "--layer", "block6a_expand_conv", "--max-channels", "16"])
    assert result.exit_code == 0, result.output
    assert "block6a_expand_conv 1 x 672 x 14 x 14, channels 0-15 of 672" in result.stdout
    with Image.open(out) as picture:
        assert picture.mode == "RGB" and picture.width > 4 * 64
    result = CliRunner().invoke(main, ["activations", str(cat_jpg), "--layer", "block_12_expnd",
                                       "-o", str(out)])
    assert result.exit_code == 2
    assert "Did you mean" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["activations", str(tmp_path / "missing.jpg"),
                                       "--layer", "0", "-o", str(out)])
    assert result.exit_code == 2 and result.stderr.startswith("belka: ")
    assert "Examples" in CliRunner().invoke(main, ["activations", "--help"]).stdout
