"""The methods added for issue 18, each against a reference: Captum where it implements the
method (Guided Backprop, Guided Grad-CAM, DeepLIFT, GradientSHAP on a linear model), else the
method's defining property (FullGrad's and DeepLIFT's completeness, GradientSHAP's completeness
in expectation, Ablation-CAM's definition by brute force, LIME's occlusion consistency, fused
LayerCAM as the fusion of single-layer LayerCAMs), plus the new metrics (ROAD's imputation,
Average Drop / Increase in Confidence)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import belka
from belka.explain import explain
from belka.explain.metrics import (average_drop_increase, confidence_change,
                                   noisy_linear_impute, road)
from belka.models.layers import GlobalAvgPool
from belka.models.model import Model
from belka.models.preprocessing import Preprocessing

captum = pytest.importorskip("captum.attr")
skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def model():
    return belka.load(engine="torch")


@pytest.fixture(scope="module")
def chelsea(model):
    return model.preprocess([skdata.chelsea()])        # 1 x 3 x 224 x 224; tiger cat is 282


class SmallReLUNet(nn.Module):
    """conv-ReLU-conv-ReLU-pool-linear with nn.ReLU modules (what Captum's rules hook)."""

    def __init__(self, act=nn.ReLU, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = act()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = act()
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))))


class LinearNet(nn.Module):
    """Linear in the input: 1x1 conv -> pool -> linear (GradientSHAP, LIME have exact answers)."""

    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)))


def wrap(module, size=16, classes=5):
    module.eval()
    return Model("tiny", module, Preprocessing(size=size), [f"c{i}" for i in range(classes)],
                 device="cpu")


class ReLU6AsReLU(nn.ReLU):
    """ReLU6 that Captum's guided rule recognises (it hooks nn.ReLU modules only)."""

    def forward(self, x):
        return F.relu6(x)


def relu6_as_relu(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    for parent in copied.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, ReLU6AsReLU())
    return copied


def close(ours, theirs, rel=1e-5):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    scale = float(np.abs(theirs).max())
    assert scale > 0
    np.testing.assert_allclose(ours, theirs, atol=rel * scale, rtol=0)


# -- Guided Backprop and Guided Grad-CAM --------------------------------------------------


def test_guided_backprop_matches_captum_on_relu_net():
    tiny = wrap(SmallReLUNet())
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = explain(tiny, x, target=[0, 2, 4], method="guidedbackprop")
    theirs = captum.GuidedBackprop(tiny.module).attribute(x, target=[0, 2, 4])
    close(np.stack([e.attributions for e in ours]), theirs.detach().numpy())
    plain = explain(tiny, x, target=[0, 2, 4], method="saliency")
    assert not np.allclose(ours[0].attributions, plain[0].attributions)   # the rule did act


def test_guided_backprop_and_guided_gradcam_match_captum_on_efficientnet(model, chelsea):
    """ReLU6 gets the guided rule; Captum agrees once its ReLU6 modules are nn.ReLU
    subclasses (same function, which Captum's rule then hooks)."""
    reference = relu6_as_relu(model.module).eval()
    ours = explain(model, chelsea, target=282, method="guidedbackprop")[0]
    theirs = captum.GuidedBackprop(reference).attribute(chelsea, target=282)
    close(ours.attributions, theirs[0].detach().numpy())

    ggc = explain(model, chelsea, target=282, method="guidedgradcam")[0]
    assert ggc.layer == "top_activation"
    theirs = captum.GuidedGradCam(reference, reference.top_activation).attribute(
        chelsea, target=282, interpolate_mode="bilinear")
    close(ggc.attributions, theirs[0].detach().numpy())


# -- DeepLIFT -----------------------------------------------------------------------------


def test_deeplift_matches_captum_on_relu_net():
    tiny = wrap(SmallReLUNet())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ours = explain(tiny, x, target=[1, 3], method="deeplift", baseline=0.1)
    theirs, delta = captum.DeepLift(tiny.module).attribute(
        x, baselines=torch.full_like(x, 0.1), target=[1, 3], return_convergence_delta=True)
    close(np.stack([e.attributions for e in ours]), theirs.detach().numpy())
    for e in ours:
        assert abs(e.details["completeness_gap"]) < 1e-4


def test_deeplift_matches_captums_rescale_rule_with_relu6(model, chelsea, monkeypatch):
    """Captum's rule table lacks nn.ReLU6; with its own Rescale rule registered for ReLU6 it
    gives belka's attributions, which sum to score(x) - score(baseline)."""
    from captum.attr._core import deep_lift

    monkeypatch.setitem(deep_lift.SUPPORTED_NON_LINEAR, nn.ReLU6, deep_lift.nonlinear)
    ours = explain(model, chelsea, target=282, method="deeplift")[0]
    theirs, delta = captum.DeepLift(model.module).attribute(
        chelsea, baselines=torch.zeros_like(chelsea), target=282, return_convergence_delta=True)
    close(ours.attributions, theirs[0].detach().numpy(), rel=1e-4)
    with torch.no_grad():
        ends = model.module(torch.cat([chelsea, torch.zeros_like(chelsea)]))[:, 282]
    delta_score = float(ends[0] - ends[1])
    assert abs(ours.details["completeness_gap"]) < 1e-4 * max(1.0, abs(delta_score))
    assert ours.attributions.sum() == pytest.approx(delta_score, rel=1e-4, abs=1e-3)


# -- GradientSHAP -------------------------------------------------------------------------


def test_gradientshap_is_exact_on_a_linear_model_like_captum():
    tiny = wrap(LinearNet(), classes=3)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    bases = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ours = explain(tiny, x, target=2, method="gradientshap", baselines=bases, samples=8)[0]
    theirs = captum.GradientShap(tiny.module).attribute(x, baselines=bases, target=2, n_samples=8)
    # Linear model: every draw gives w * (x - b), so the mean over the baselines drawn.
    # Captum draws baselines at random, belka in turn; with 8 draws over 4 baselines belka
    # uses each twice: the exact expectation, which Captum's estimate scatters around.
    grad = torch.autograd.functional.jacobian(lambda v: tiny.module(v)[0, 2], x)[0]
    exact = (grad * (x[0] - bases.mean(dim=0))).numpy()
    close(ours.attributions, exact)
    assert np.corrcoef(theirs[0].detach().numpy().ravel(), exact.ravel())[0, 1] > 0.9
    assert abs(ours.details["completeness_gap"]) < 1e-4


def test_gradientshap_is_complete_in_expectation(model, chelsea):
    e = explain(model, chelsea, target=282, method="gradientshap", samples=16,
                internal_batch_size=16)[0]
    gap, stderr = e.details["completeness_gap"], e.details["completeness_stderr"]
    assert stderr > 0
    assert abs(gap) < 4 * stderr + 1e-3            # a Monte Carlo estimate: within 4 std errors


# -- FullGrad -----------------------------------------------------------------------------


def test_fullgrad_is_complete_with_the_relu6_cap(model, chelsea):
    e = explain(model, chelsea, target=282, method="fullgrad")[0]
    with torch.no_grad():
        score = float(model.module(chelsea)[0, 282])
    assert abs(e.details["completeness_gap"]) < 1e-4 * max(1.0, abs(score))
    assert e.raw.shape == (224, 224) and e.raw.max() > 0


def test_fullgrad_parts_by_hand_on_a_relu_net():
    tiny = wrap(SmallReLUNet())
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    e = explain(tiny, x, target=1, method="fullgrad")[0]
    m = tiny.module
    xg = x.clone().requires_grad_(True)
    z1 = m.conv1(xg)
    z2 = m.conv2(m.relu1(z1))
    out = m.fc(m.pool(m.relu2(z2)))[0, 1]
    gx, g1, g2 = torch.autograd.grad(out, [xg, z1, z2])
    parts = (gx * x).sum() + (g1 * m.conv1.bias.view(1, -1, 1, 1)).sum() \
        + (g2 * m.conv2.bias.view(1, -1, 1, 1)).sum() + m.fc.bias[1]
    assert float(parts.detach()) == pytest.approx(float(out.detach()), abs=1e-5)      # completeness by hand
    assert abs(e.details["completeness_gap"]) < 1e-5
    np.testing.assert_allclose(e.attributions, (gx * x)[0].detach().numpy(), atol=1e-6)


# -- Ablation-CAM -------------------------------------------------------------------------


def test_ablationcam_closed_form_equals_ablating_each_channel(model, chelsea):
    fast = explain(model, chelsea, target=282, method="ablationcam")[0]
    slow = explain(model, chelsea, target=282, method="ablationcam", fast=False,
                   internal_batch_size=256)[0]
    assert fast.details["fast_path"] and not slow.details["fast_path"]
    close(fast.raw, slow.raw, rel=1e-4)


def test_ablationcam_by_brute_force_on_a_tiny_net():
    tiny = wrap(SmallReLUNet())
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    e = explain(tiny, x, target=3, method="ablationcam", layer="conv2")[0]
    m = tiny.module
    with torch.no_grad():
        a = m.conv2(m.relu1(m.conv1(x)))
        y = float(m.fc(m.pool(m.relu2(a)))[0, 3])
        weights = []
        for k in range(a.shape[1]):
            ablated = a.clone()
            ablated[:, k] = 0
            weights.append((y - float(m.fc(m.pool(m.relu2(ablated)))[0, 3])) / y)
        cam = F.relu(torch.einsum("c,chw->hw", torch.tensor(weights), a[0]))
    close(e.raw, cam.numpy())                       # 16 x 16 layer: no upsampling


# -- LIME ---------------------------------------------------------------------------------


def test_lime_is_occlusion_consistent_on_a_linear_model():
    """For a model linear in its input the surrogate is exact: each superpixel's coefficient
    is the score drop of hiding that superpixel alone."""
    from belka.explain.lime import superpixels

    tiny = wrap(LinearNet(), size=32, classes=3)
    x = tiny.preprocess([skdata.coffee()])            # a real picture: SLIC finds regions
    e = explain(tiny, x, target=1, method="lime", samples=64, segments=12, alpha=1e-6)[0]
    labels = superpixels(x[0], 12)
    assert e.details["superpixels"] == labels.max() + 1 > 4
    with torch.no_grad():
        full = float(tiny.module(x)[0, 1])
        for k in range(int(labels.max()) + 1):
            hidden = x.clone()
            hidden[0][:, torch.from_numpy(labels == k)] = 0.0
            drop = full - float(tiny.module(hidden)[0, 1])
            painted = e.attributions[0][labels == k]
            np.testing.assert_allclose(painted, drop, atol=1e-3 * max(1.0, abs(drop)))


def test_lime_runs_on_efficientnet(model, chelsea):
    e = explain(model, chelsea, target=282, method="lime", samples=48, internal_batch_size=24)[0]
    assert e.details["superpixels"] > 10 and e.heatmap.max() == pytest.approx(1.0)


# -- LayerCAM fused over layers -----------------------------------------------------------


def test_fused_layercam_is_the_fusion_of_single_layer_layercams(model, chelsea):
    from belka.explain.fused import default_layers

    layers = default_layers(model)
    assert layers == ["block4a_expand_activation", "block6a_expand_activation", "top_activation"]
    fused = explain(model, chelsea, target=282, method="layercam-fused")[0]
    assert fused.layer == "+".join(layers)
    expected = None
    for j, layer in enumerate(layers):
        raw = explain(model, chelsea, target=282, method="layercam", layer=layer)[0].raw
        m = (raw - raw.min()) / (raw.max() - raw.min())
        if j < len(layers) - 1:
            m = np.tanh(2.0 * m) / np.tanh(2.0)
        expected = m if expected is None else np.maximum(expected, m)
    np.testing.assert_allclose(fused.raw, expected, atol=1e-5)
    again = explain(model, chelsea, target=282, method="layercam-fused", layer=fused.layer)[0]
    np.testing.assert_allclose(again.raw, fused.raw, atol=1e-6)   # "a+b+c" names it again
    two = explain(model, chelsea, target=282, method="layercam-fused",
                  layer="block6a_expand_activation,top_activation", fuse="mean")[0]
    assert two.layer == "block6a_expand_activation+top_activation"


# -- metrics ------------------------------------------------------------------------------


def test_noisy_linear_imputation_solves_the_neighbour_equations():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((3, 20, 24)).astype(np.float32))
    removed = rng.random((20, 24)) < 0.4
    out = noisy_linear_impute(x, removed, noise=0.0).double().numpy()
    np.testing.assert_array_equal(out[:, ~removed], x.double().numpy()[:, ~removed])
    weights = {(-1, 0): 1 / 6, (1, 0): 1 / 6, (0, -1): 1 / 6, (0, 1): 1 / 6,
               (-1, -1): 1 / 12, (-1, 1): 1 / 12, (1, -1): 1 / 12, (1, 1): 1 / 12}
    for y, xx in zip(*np.nonzero(removed)):
        num, den = np.zeros(3), 0.0
        for (dy, dx), w in weights.items():
            if 0 <= y + dy < 20 and 0 <= xx + dx < 24:
                num += w * out[:, y + dy, xx + dx]
                den += w
        np.testing.assert_allclose(out[:, y, xx], num / den, atol=1e-8)
    noisy = noisy_linear_impute(x, removed, noise=0.05).double().numpy()
    assert 0 < np.abs(noisy - out)[:, removed].std() < 0.5


def test_road_and_confidence_change_on_a_tiny_model():
    tiny = wrap(SmallReLUNet(), size=16)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    e = explain(tiny, x, target=2, method="saliency")[0]
    result = road(tiny, x, e, fractions=(0.25, 0.5))
    assert result.morf.shape == result.lerf.shape == (2,)
    assert ((0 <= result.morf) & (result.morf <= 1)).all()
    assert result.score == pytest.approx(result.lerf.mean() - result.morf.mean())
    c = confidence_change(tiny, x, e)
    mask = (e.raw - e.raw.min()) / (e.raw.max() - e.raw.min())
    with torch.no_grad():
        p = torch.softmax(tiny.module(torch.cat([x, x * torch.from_numpy(mask)])), 1)[:, 2]
    assert c.probability == pytest.approx(float(p[0]), abs=1e-6)
    assert c.masked_probability == pytest.approx(float(p[1]), abs=1e-6)
    assert c.drop == pytest.approx(max(0.0, float(p[0] - p[1])) / float(p[0]), abs=1e-6)
    assert c.increase == bool(p[1] > p[0])
    drop, increase = average_drop_increase([c, c])
    assert drop == pytest.approx(100 * c.drop) and increase in (0.0, 100.0)
