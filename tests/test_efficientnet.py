"""The packaged EfficientNet-Lite0 against reference values from an independent implementation
of the same weights (crop policy, bilinear), and its strict weight loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import belka
from belka.errors import WeightsError
from belka.models.efficientnet_lite import (EfficientNetLite0, PACKAGED_SHA256,
                                            read_packaged_weights)
from belka.models.layers import same_padding
from belka.models.weights import sha256_file

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def model():
    return belka.load()


def top(model, image, k):
    return model.classify(image, top=k)


def test_packaged_weights_are_the_published_file(model):
    assert model.weights_sha256 == PACKAGED_SHA256
    from belka.models.efficientnet_lite import _packaged_path

    assert sha256_file(_packaged_path()) == PACKAGED_SHA256
    assert sum(p.numel() for p in model.module.parameters()) == 4_652_008


def test_chelsea_is_a_domestic_cat(model):
    preds = top(model, skdata.chelsea(), 3)
    assert preds[0].index in range(281, 286)
    assert {p.label for p in preds} == {"tiger cat", "Egyptian cat", "tabby"}
    expected = {"tiger cat": 0.38, "Egyptian cat": 0.37, "tabby": 0.16}
    for p in preds:
        assert p.probability == pytest.approx(expected[p.label], abs=0.05)


def test_coffee_is_espresso(model):
    preds = top(model, skdata.coffee(), 2)
    assert preds[0].label == "espresso"
    assert preds[0].probability == pytest.approx(0.96, abs=0.05)
    assert {"espresso", "cup"} & {p.label for p in preds}


def test_camera_is_tripod_grayscale_input(model):
    preds = top(model, skdata.camera(), 1)  # a 2-D grayscale array
    assert preds[0].label == "tripod"
    assert preds[0].probability == pytest.approx(0.94, abs=0.05)


def test_batch_equals_one_at_a_time(model):
    imgs = [skdata.chelsea(), skdata.coffee(), skdata.astronaut()]
    batch = model.probabilities(imgs)
    for img, row in zip(imgs, batch):
        np.testing.assert_allclose(model.probabilities(img)[0], row, atol=1e-5)
    assert [r[0].label for r in model.classify(imgs, top=1)][:2] == ["tiger cat", "espresso"]


def test_same_padding_matches_tensorflow_rule():
    # TF: out = ceil(in / s); pad = max((out - 1) * s + k - in, 0); extra goes after.
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(224, 5, 2) == (1, 2)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(7, 3, 1) == (1, 1)


def test_layer_names_are_keras_style():
    names = [n for n, _ in EfficientNetLite0().named_children()]
    assert names[:3] == ["stem_conv", "stem_bn", "stem_activation"]
    assert "block1a_dwconv" in names and "block2a_dwconv_pad" in names and "block2b_add" in names
    assert names[-4:] == ["top_bn", "top_activation", "avg_pool", "predictions"]
    assert len(names) == len(set(names))


def test_foreign_weights_are_refused(tmp_path):
    bad = tmp_path / "other.pth"
    sd = read_packaged_weights(belka.models.efficientnet_lite._packaged_path())
    torch.save({"_conv_stem.weight": sd["stem_conv.weight"]}, bad)
    with pytest.raises(WeightsError, match="_bn0"):
        read_packaged_weights(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        read_packaged_weights(tmp_path / "junk.pth")
