"""Explanations on the real models: parity with Captum, the fast path, batching, mapping back
through the resize policy, where the heat map peaks on real photos, rendering, metrics, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import belka
from belka import images
from belka.cli import main
from belka.explain import deletion, explain, insertion, sanity_check, spearman
from belka.explain.base import classifier_after, geometry, map_to_image
from belka.explain.render import colormap_table

skdata = pytest.importorskip("skimage.data")

CAT_FACE = (40, 300, 60, 380)   # rows, rows_end, cols, cols_end of chelsea's face (451 x 300)


@pytest.fixture(scope="module")
def model():
    return belka.load()


@pytest.fixture(scope="module")
def photos():
    return [skdata.chelsea(), skdata.coffee()]


@pytest.fixture(scope="module")
def batch(model, photos):
    return model.preprocess(photos)


@pytest.mark.parametrize("layer", ["top_activation", "block6a_project_bn",
                                   "block4a_expand_activation"])
def test_gradcam_matches_captum(model, batch, layer):
    captum = pytest.importorskip("captum.attr")
    targets = [282, 967]                                  # tiger cat, espresso
    ours = explain(model, batch, target=targets, layer=layer)
    cam = captum.LayerGradCam(model.module, getattr(model.module, layer))
    theirs = cam.attribute(batch, target=targets, relu_attributions=True)
    theirs = captum.LayerAttribution.interpolate(theirs, (224, 224), "bilinear")[:, 0].detach()
    raw = np.stack([e.raw for e in ours])
    scale = float(theirs.abs().max())
    assert scale > 0
    np.testing.assert_allclose(raw, theirs.numpy(), atol=1e-5 * scale, rtol=0)
    assert [e.details["fast_path"] for e in ours] == [layer == "top_activation"] * 2


def test_fast_path_equals_autograd(model, batch):
    for method, target in (("gradcam", [282, 967]), ("gradcam", "cat"), ("gradcam++", [282, 967])):
        fast = explain(model, batch, target=target, method=method)
        slow = explain(model, batch, target=target, method=method, fast=False)
        assert all(e.details["fast_path"] for e in fast)
        assert not any(e.details["fast_path"] for e in slow)
        for f, s in zip(fast, slow):
            np.testing.assert_allclose(f.raw, s.raw, atol=1e-6, rtol=0)


def test_fast_path_layers(model):
    assert classifier_after(model, "top_activation") is model.module.predictions
    for layer in ("top_bn", "top_conv", "block6a_project_bn", "avg_pool"):
        assert classifier_after(model, layer) is None
    mnv2 = belka.load("mobilenet_v2", weights="none", device="cpu")
    assert classifier_after(mnv2, "out_relu") is mnv2.module.predictions
    assert classifier_after(mnv2, "Conv_1_bn") is None
    with torch.no_grad():            # untrained: give the classifier weights that matter
        mnv2.module.predictions.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
        mnv2.module.predictions.bias.zero_()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    fast = explain(mnv2, x)[0]                            # the top class: some positive evidence
    slow = explain(mnv2, x, fast=False)[0]
    assert fast.layer == "out_relu" and fast.details["fast_path"] and not slow.details["fast_path"]
    scale = float(slow.raw.max())
    assert scale > 0
    np.testing.assert_allclose(fast.raw, slow.raw, atol=1e-6 * scale, rtol=0)


def test_batch_equals_one_at_a_time(model, photos):
    targets = ["tiger cat", "espresso"]
    for kw in ({}, {"method": "gradcam++", "layer": "block6a_project_bn"}):
        both = explain(model, photos, target=targets, **kw)
        for image, target, b in zip(photos, targets, both):
            one = explain(model, image, target=target, **kw)
            assert one.indices == b.indices and one.layer == b.layer
            # Identical up to float32 summation order: CPU conv kernels pick different
            # blockings for batch 1 and batch 2 (measured up to 6e-5 on the [0, 1] map).
            np.testing.assert_allclose(one.heatmap, b.heatmap, atol=2e-4)
            assert one.probability == pytest.approx(b.probability, abs=1e-5)


def test_explanation_fields(model, photos):
    e = explain(model, photos[0], target="tiger cat")
    assert e.heatmap.shape == photos[0].shape[:2] and e.heatmap.dtype == np.float32
    assert e.heatmap.min() == 0.0 and e.heatmap.max() == 1.0
    assert (e.index, e.label, e.layer, e.method) == (282, "tiger cat", "top_activation", "gradcam")
    probs = model.probabilities(photos[0])[0]
    assert e.probability == pytest.approx(float(probs[282]), abs=1e-5)
    assert e.details["note"] == "layer chosen automatically: top_activation"
    group = explain(model, photos[0], target="cat")
    assert group.indices == (281, 282, 283, 284, 285) and group.index is None
    assert group.probability == pytest.approx(float(probs[281:286].sum()), abs=1e-5)
    assert explain(model, photos[0], layer=-3).layer == "top_activation"
    assert explain(model, photos[:1])[0].index == int(np.argmax(probs))
    json.dumps(e.to_dict())


def test_cat_heatmap_peaks_on_the_cat(model, photos):
    r0, r1, c0, c1 = CAT_FACE
    for policy in ("crop", "squash"):
        e = explain(model, photos[0], target="tiger cat", resize=policy)
        row, col = e.peak
        assert r0 <= row < r1 and c0 <= col < c1, (policy, e.peak)


# Hand-drawn boxes (x0, y0, x1, y1 as fractions) around large squirrels in the shared photos;
# bench/faithfulness.py measures all of them.
SQUIRREL_BOXES = {
    "cjmcdd_squirrel4.jpg": (0.23, 0.38, 0.80, 0.63),
    "cjmcdd_squirrel5.jpg": (0.33, 0.30, 0.90, 0.70),
    "cjmcdd_squirrel7.jpg": (0.27, 0.33, 0.70, 0.80),
    "cjmcdd_squirrel10.jpg": (0.36, 0.30, 0.62, 0.68),
    "cjmcdd_squirrel13.jpg": (0.18, 0.35, 0.87, 0.62),
    "imagen_n02355227_4298_squirrel.jpg": (0.42, 0.28, 0.75, 0.65),
}


def test_squirrel_heatmaps_peak_on_the_squirrel(model, photos_dir):
    folder = photos_dir / "squirrel"
    paths = [folder / name for name in SQUIRREL_BOXES if (folder / name).exists()]
    if not paths:
        pytest.skip("the squirrel photos are not there")
    hits = 0
    for path, e in zip(paths, explain(model, paths, target=335)):
        x0, y0, x1, y1 = SQUIRREL_BOXES[path.name]
        h, w = e.heatmap.shape
        row, col = e.peak
        m = 0.05                                          # a generous margin
        hits += (x0 - m) * w <= col <= (x1 + m) * w and (y0 - m) * h <= row <= (y1 + m) * h
    assert hits > len(paths) / 2, f"{hits} of {len(paths)}"


@pytest.mark.parametrize("policy", ["crop", "squash", "letterbox"])
def test_map_back_undoes_the_resize(policy):
    """Mapping the resized image itself back must land on the original pixels."""
    for image in (skdata.chelsea(), skdata.astronaut()[:300, :120]):
        h, w = image.shape[:2]
        resized = images.resize(image, 224, policy, crop_fraction=0.875).astype(np.float32).mean(2)
        back, in_y, in_x = map_to_image(resized, geometry(h, w, 224, policy, 0.875))
        grey = image.astype(np.float32).mean(2)
        region = np.ix_(in_y, in_x)
        error = np.abs(back[region] - grey[region]).mean()
        shifted = np.abs(np.roll(back, 3, axis=1)[region] - grey[region]).mean()
        assert error < 4.0 and error < shifted / 2, (error, shifted)
        if policy == "crop":
            assert not in_y.all() or not in_x.all()
            assert np.all(back[~in_y] == 0) and np.all(back[:, ~in_x] == 0)
        else:
            assert in_y.all() and in_x.all()


def test_crop_leaves_unseen_border_at_zero(model, photos):
    e = explain(model, photos[0], target="tiger cat")     # 451 x 300: crop drops the sides
    cols = np.flatnonzero(e.heatmap.max(axis=0) > 0)
    assert 80 <= cols[0] <= 110 and 340 <= cols[-1] <= 370
    assert not np.isnan(e.heatmap).any()


def test_overlay_and_grid(model, photos):
    e = explain(model, photos[0])
    over = e.overlay()
    assert isinstance(over, Image.Image) and over.size == (451, 300) and over.mode == "RGB"
    assert np.asarray(e.overlay(alpha=0.0)).tolist() == photos[0].tolist()
    assert e.grid().size[0] > 3 * 451 * 0.9
    table = colormap_table("turbo")
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert table[25].argmax() == 2 and table[128].argmax() == 1 and table[230].argmax() == 0
    assert table[0].max() < 60 and table[255].max() < 160              # dark at both ends


def test_faithfulness_metrics(model, photos):
    e = explain(model, photos[0], target="cat")
    inverted = type(e)(**{**vars(e), "raw": -e.raw})
    good, bad = deletion(model, None, e, steps=8), deletion(model, None, inverted, steps=8)
    assert good.probabilities[0] == pytest.approx(e.probability, abs=1e-4)
    assert good.auc < bad.auc
    assert insertion(model, None, e, steps=8).auc > insertion(model, None, inverted, steps=8).auc
    check = sanity_check(model, None, e)
    assert check.passed and check.randomized == ["top_conv", "top_bn", "predictions"]


def test_spearman():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=500), 0)               # ties at 0, as after a ReLU
    b = np.maximum(a + rng.normal(size=500), 0)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, np.zeros(500)) == 0.0


@pytest.fixture(scope="module")
def cat_jpg(tmp_path_factory, photos) -> Path:
    path = tmp_path_factory.mktemp("explain") / "cat.jpg"
    Image.fromarray(photos[0]).save(path, quality=95)
    return path


def test_cli_writes_overlay_grid_and_metrics(cat_jpg, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cam.png"
    result = runner.invoke(main, ["explain", str(cat_jpg), "-o", str(out), "--class", "tiger cat"])
    assert result.exit_code == 0, result.output
    assert "tiger cat (282)" in result.output and "top_activation" in result.output
    assert Image.open(out).size == (451, 300)
    grid = tmp_path / "grid.png"
    result = runner.invoke(main, ["explain", str(cat_jpg), "-o", str(grid), "--grid", "--metrics",
                                  "--layer", "block6a_project_bn", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["layer"] == "block6a_project_bn" and 0 <= record["deletion_auc"] <= 1
    assert {"insertion_auc", "sanity_spearman", "sanity_passed"} <= set(record)
    assert Image.open(grid).size[0] > 3 * 451 * 0.9


@pytest.mark.parametrize("args,fragment", [
    (["--method", "gradcan"], "unknown explanation method"),
    (["--layer", "top_activaton"], "unknown layer"),
    (["--layer", "predictions"], "not an N x C x H x W"),
    (["--class", "tigr cat"], "unknown class"),
    (["--method", "ig", "--layer", "3"], "takes no layer"),
])
def test_cli_errors_are_one_line(cat_jpg, tmp_path, args, fragment):
    result = CliRunner().invoke(main, ["explain", str(cat_jpg), "-o", str(tmp_path / "o.png"), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output
