"""Each explanation method against its closed form on tiny networks where the answer is known.

The CAM network is ``conv (1x1) -> relu -> global average pool -> linear``: at ``conv`` the
gradient of logit t is ``W_fc[t, k] / (H W) * [A_k > 0]`` (it varies over positions, so the
methods differ); at ``relu`` it is ``W_fc[t, k] / (H W)`` everywhere (the fast path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from belka.errors import ModelError, UsageError
from belka.explain import explain
from belka.explain.base import classifier_after
from belka.models.layers import GlobalAvgPool
from belka.models.model import Model
from belka.models.preprocessing import Preprocessing

S = 6          # input side of the tiny CAM network (layer resolution = input resolution)
C, K = 3, 4    # channels at the explained layer, classes


class TinyCAM(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, C, 1)
        self.relu = nn.ReLU()
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(C, K)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(C, 3, 1, 1, generator=g))
            self.conv.bias.copy_(torch.randn(C, generator=g) * 0.3)
            self.fc.weight.copy_(torch.randn(K, C, generator=g))
            self.fc.bias.copy_(torch.randn(K, generator=g))

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))))


def wrap(module: nn.Module, size: int = S, classes: int = K) -> Model:
    return Model("tiny", module, Preprocessing(size=size), [f"class{i}" for i in range(classes)],
                 groups={"pair": (0, 2)}, device="cpu")


@pytest.fixture(scope="module")
def tiny():
    return wrap(TinyCAM())


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(1))


def numpy_parts(model: Model, x: torch.Tensor):
    """Pre-ReLU activations A (N x C x S x S), classifier W, b, all as float64 numpy."""
    m = model.module
    w = m.conv.weight.detach().double().numpy()[:, :, 0, 0]
    b = m.conv.bias.detach().double().numpy()
    xs = x.double().numpy()
    a = np.einsum("kc,nchw->nkhw", w, xs) + b[None, :, None, None]
    return a, m.fc.weight.detach().double().numpy(), m.fc.bias.detach().double().numpy()


def logits_np(model, x_np):
    m = model.module
    w = m.conv.weight.detach().double().numpy()[:, :, 0, 0]
    b = m.conv.bias.detach().double().numpy()
    a = np.maximum(np.einsum("kc,nchw->nkhw", w, x_np) + b[None, :, None, None], 0)
    return a.mean(axis=(2, 3)) @ m.fc.weight.detach().double().numpy().T + m.fc.bias.detach().double().numpy()


def relu(v):
    return np.maximum(v, 0)


TARGETS = [1, 3]


def expected_cam(method: str, a: np.ndarray, wfc: np.ndarray, layer: str) -> np.ndarray:
    out = []
    hw = a.shape[2] * a.shape[3]
    for n, t in enumerate(TARGETS):
        A = a[n] if layer == "conv" else relu(a[n])
        mask = (a[n] > 0).astype(float) if layer == "conv" else np.ones_like(A)
        g = wfc[t][:, None, None] / hw * mask
        if method == "gradcam":
            cam = np.einsum("k,khw->hw", g.mean(axis=(1, 2)), A)
        elif method == "hirescam":
            cam = (g * A).sum(0)
        elif method == "layercam":
            cam = (relu(g) * A).sum(0)
        elif method == "xgradcam":
            w = (g * A).sum(axis=(1, 2)) / (A.sum(axis=(1, 2)) + 1e-7)
            cam = np.einsum("k,khw->hw", w, A)
        elif method == "gradcam++":
            denom = 2 * g ** 2 + A.sum(axis=(1, 2))[:, None, None] * g ** 3
            alpha = np.where(g != 0, g ** 2 / np.where(denom != 0, denom, 1), 0)
            w = (alpha * relu(g)).sum(axis=(1, 2))
            cam = np.einsum("k,khw->hw", w, A)
        else:
            raise AssertionError(method)
        out.append(relu(cam))
    return np.stack(out)


@pytest.mark.parametrize("layer", ["conv", "relu"])
@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam", "xgradcam", "gradcam++"])
def test_gradient_cams_closed_form(tiny, x, method, layer):
    a, wfc, _ = numpy_parts(tiny, x)
    got = explain(tiny, x, target=TARGETS, method=method, layer=layer)
    raw = np.stack([e.raw for e in got])
    np.testing.assert_allclose(raw, expected_cam(method, a, wfc, layer), rtol=1e-5, atol=1e-6)
    assert [e.details["fast_path"] for e in got] == [layer == "relu"] * 2
    assert [e.indices for e in got] == [(1,), (3,)]
    for e in got:
        assert e.heatmap.shape == (S, S) and e.heatmap.dtype == np.float32
        assert 0.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0


def test_gradcam_one_channel_is_the_channel(x):
    """One channel, positive classifier weight: Grad-CAM = w / (HW) * ReLU(A), exactly."""
    module = TinyCAM()
    module.conv = nn.Conv2d(3, 1, 1)
    module.fc = nn.Linear(1, 2)
    with torch.no_grad():
        module.conv.weight.copy_(torch.tensor([1.0, -0.5, 0.25]).view(1, 3, 1, 1))
        module.conv.bias.zero_()
        module.fc.weight.copy_(torch.tensor([[2.0], [-1.0]]))
    model = wrap(module, classes=2)
    e = explain(model, x[:1], target=0, layer="relu")[0]
    a = np.maximum((x[0] * torch.tensor([1.0, -0.5, 0.25]).view(3, 1, 1)).sum(0).numpy(), 0)
    np.testing.assert_allclose(e.raw, 2.0 / (S * S) * a, rtol=1e-5, atol=1e-7)
    # A negative weight: the class is evidence against every active pixel, so the map is 0.
    assert np.all(explain(model, x[:1], target=1, layer="relu")[0].raw == 0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
def test_fast_path_equals_autograd(tiny, x, method):
    for target in (TARGETS, "pair", (0, 3)):
        fast = explain(tiny, x, target=target, method=method, layer="relu")
        slow = explain(tiny, x, target=target, method=method, layer="relu", fast=False)
        assert all(e.details["fast_path"] for e in fast)
        assert not any(e.details["fast_path"] for e in slow)
        for f, s in zip(fast, slow):
            np.testing.assert_allclose(f.raw, s.raw, atol=1e-6, rtol=0)
            np.testing.assert_allclose(f.heatmap, s.heatmap, atol=1e-6, rtol=0)


def test_group_target_sums_logits_and_probabilities(tiny, x):
    e = explain(tiny, x, target="pair")
    logits = tiny.module(x).detach()
    probs = torch.softmax(logits, 1)
    assert [r.indices for r in e] == [(0, 2), (0, 2)]
    assert e[0].label == "pair" and e[0].index is None
    assert e[1].score == pytest.approx(float(logits[1, 0] + logits[1, 2]), rel=1e-5)
    assert e[1].probability == pytest.approx(float(probs[1, 0] + probs[1, 2]), rel=1e-5)
    assert explain(tiny, x, target=(1, 3))[0].label == "class1 + class3"
    top = explain(tiny, x)
    assert [r.index for r in top] == logits.argmax(1).tolist()


def test_fast_path_needs_pool_and_classifier_only(tiny):
    assert classifier_after(tiny, "relu") is tiny.module.fc
    assert classifier_after(tiny, "conv") is None        # a ReLU sits in between
    assert classifier_after(tiny, "pool") is None


def test_fast_path_falls_back_when_the_wiring_differs(x):
    """Children that look like conv/relu/pool/fc, but the forward also uses the layer's output
    elsewhere: the logit check catches it and autograd gives the right answer."""
    class Sneaky(TinyCAM):
        def forward(self, x):
            a = self.relu(self.conv(x))
            return self.fc(self.pool(a)) + (a ** 2).mean(dim=(1, 2, 3))[:, None]

    model = wrap(Sneaky())
    fast = explain(model, x, target=TARGETS, layer="relu")
    slow = explain(model, x, target=TARGETS, layer="relu", fast=False)
    assert not any(e.details["fast_path"] for e in fast)
    for f, s in zip(fast, slow):
        np.testing.assert_allclose(f.raw, s.raw, atol=1e-6)


def test_eigencam_rank_one(x):
    """Every channel a positive multiple of one pattern u: Eigen-CAM = |c| * u exactly."""
    module = TinyCAM()
    c = torch.tensor([0.5, 2.0, 1.0])
    with torch.no_grad():
        module.conv.weight.zero_()
        module.conv.weight[:, 0, 0, 0] = c
        module.conv.bias.zero_()
    model = wrap(module)
    xp = x.abs()                                          # u = x[:, 0] >= 0
    got = explain(model, xp, method="eigencam", layer="relu")
    for n, e in enumerate(got):
        np.testing.assert_allclose(e.raw, float(c.norm()) * xp[n, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_eigencam_is_first_principal_projection(tiny, x):
    a, _, _ = numpy_parts(tiny, x)
    got = explain(tiny, x, method="eigencam", layer="relu")
    for n, e in enumerate(got):
        m = relu(a[n]).reshape(C, -1).T
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        p = m @ vt[0]
        p = p if p.sum() >= 0 else -p
        np.testing.assert_allclose(e.raw.ravel(), relu(p), rtol=1e-4, atol=1e-5)


def test_scorecam_known_masking_response(tiny, x):
    """Weights = softmax probability of the target on x * normalised(A_k), by a numpy replica."""
    a, _, _ = numpy_parts(tiny, x)
    got = explain(tiny, x, target=TARGETS, method="scorecam", layer="relu", internal_batch_size=2)
    for n, (e, t) in enumerate(zip(got, TARGETS)):
        acts = relu(a[n])
        weights = np.zeros(C)
        for k in range(C):
            if acts[k].max() <= 0:
                continue
            lo, hi = acts[k].min(), acts[k].max()
            mask = (acts[k] - lo) / (hi - lo) if hi > lo else np.zeros_like(acts[k])
            z = logits_np(tiny, x[n:n + 1].double().numpy() * mask[None, None])[0]
            p = np.exp(z - z.max())
            weights[k] = (p / p.sum())[t]
        np.testing.assert_allclose(e.raw, relu(np.einsum("k,khw->hw", weights, acts)),
                                   rtol=1e-5, atol=1e-6)


class Linear(nn.Module):
    """logits = W . flatten(x) + b: every gradient is a row of W."""

    def __init__(self, size=5, classes=3, seed=2):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3 * size * size, classes)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, 3 * size * size, generator=g))
            self.fc.bias.copy_(torch.randn(classes, generator=g))

    def forward(self, x):
        return self.fc(self.flatten(x))


@pytest.fixture(scope="module")
def linear():
    return wrap(Linear(), size=5, classes=3)


@pytest.fixture(scope="module")
def x5():
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(3))


def test_saliency_of_linear_model_is_abs_weight(linear, x5):
    w = linear.module.fc.weight.detach().view(3, 3, 5, 5)
    got = explain(linear, x5, target=[0, 2], method="saliency")
    for e, t in zip(got, [0, 2]):
        np.testing.assert_allclose(e.attributions, w[t].numpy(), rtol=1e-6)
        np.testing.assert_allclose(e.raw, w[t].abs().amax(0).numpy(), rtol=1e-6)
        assert e.layer == "input"


def test_smoothgrad_of_linear_model_is_abs_weight(linear, x5):
    w = linear.module.fc.weight.detach().view(3, 3, 5, 5)
    e = explain(linear, x5[:1], target=1, method="smoothgrad", samples=5, internal_batch_size=2)[0]
    np.testing.assert_allclose(e.raw, w[1].abs().amax(0).numpy(), rtol=1e-5)


@pytest.mark.parametrize("steps,chunk", [(1, 32), (7, 3)])
def test_integrated_gradients_linear_is_exact(linear, x5, steps, chunk):
    """IG on a linear model = (x - baseline) * w, whatever the step count or chunking, and
    complete: the attributions sum to score(x) - score(baseline)."""
    w = linear.module.fc.weight.detach().view(3, 3, 5, 5)
    baseline = 0.3
    got = explain(linear, x5, target=[2, 0], method="ig", steps=steps, baseline=baseline,
                  internal_batch_size=chunk)
    for n, (e, t) in enumerate(zip(got, [2, 0])):
        expected = ((x5[n] - baseline) * w[t]).numpy()
        np.testing.assert_allclose(e.attributions, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(e.raw, np.abs(expected.sum(0)), rtol=1e-5, atol=1e-6)
        assert abs(e.details["completeness_gap"]) < 1e-4


class OnePatch(nn.Module):
    """Looks only at the 2 x 2 patch at rows 2-3, columns 4-5 of an 8 x 8 input."""

    def forward(self, x):
        s = x[:, :, 2:4, 4:6].sum(dim=(1, 2, 3))
        return torch.stack([s, -s], dim=1)


def test_occlusion_finds_the_only_patch_that_matters():
    model = wrap(OnePatch(), size=8, classes=2)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4)) + 0.5
    e = explain(model, x, target=0, method="occlusion", window=2, stride=2)[0]
    expected = np.zeros((8, 8), np.float32)
    expected[2:4, 4:6] = float(x[0, :, 2:4, 4:6].sum())
    np.testing.assert_allclose(e.attributions[0], expected, rtol=1e-5, atol=1e-6)
    assert e.peak[0] in (2, 3) and e.peak[1] in (4, 5)
    assert e.heatmap[2:4, 4:6].min() == 1.0 and e.heatmap.sum() == 4.0
    # With overlapping windows the patch still holds the largest mean drop.
    e = explain(model, x, target=0, method="occlusion", window=3, stride=1)[0]
    assert 2 <= e.peak[0] <= 3 and 4 <= e.peak[1] <= 5


def test_batches_equal_single_calls(tiny, x):
    for method, opts in [("gradcam", {}), ("gradcam++", {"layer": "conv"}), ("scorecam", {}),
                         ("eigencam", {}), ("smoothgrad", {"samples": 3}), ("ig", {"steps": 4}),
                         ("occlusion", {"window": 2})]:
        both = explain(tiny, x, target=TARGETS, method=method, batch_size=2, **opts)
        one = [explain(tiny, x[i:i + 1], target=[t], method=method, **opts)[0]
               for i, t in enumerate(TARGETS)]
        for b, o in zip(both, one):
            np.testing.assert_allclose(b.raw, o.raw, rtol=1e-5, atol=1e-6, err_msg=method)


def test_options_and_errors(tiny, x):
    with pytest.raises(UsageError, match="unknown explanation method"):
        explain(tiny, x, method="gradcan")
    with pytest.raises(UsageError, match="takes no option"):
        explain(tiny, x, method="gradcam", steps=3)
    with pytest.raises(UsageError, match="takes no layer"):
        explain(tiny, x, method="saliency", layer="conv")
    with pytest.raises(ModelError, match="unknown layer"):
        explain(tiny, x, layer="cnov")
    with pytest.raises(ModelError, match="out of range"):
        explain(tiny, x, layer=17)
    with pytest.raises(ModelError, match="feature map"):
        explain(tiny, x, layer="fc")
    with pytest.raises(UsageError, match="2 images"):
        explain(tiny, x, target=[1, 2, 3])
    with pytest.raises(ModelError, match="unknown class"):
        explain(tiny, x, target="nope")
    assert explain(tiny, x, layer=-3)[0].layer == "relu"
    assert explain(tiny, x)[0].details["note"] == "layer chosen automatically: relu"


def test_hooks_are_released_also_on_errors(tiny, x):
    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                   for m in tiny.module.modules())

    for method in ("gradcam", "scorecam", "saliency", "ig"):
        explain(tiny, x, method=method, **({"steps": 2} if method == "ig" else {}))
    with pytest.raises(ModelError):
        explain(tiny, x, target="no such class", fast=False)   # fails after the forward ran
    with pytest.raises(ModelError):
        explain(tiny, x, target="no such class")
    assert hooks() == 0
    assert all(p.grad is None for p in tiny.module.parameters())
    assert torch.is_grad_enabled()
    e = explain(tiny, x)[0]
    assert not any(isinstance(v, torch.Tensor) for v in vars(e).values())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_repeated_calls_keep_no_tensors_alive(tiny, x):
    import gc

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for method, opts in (("hirescam", {"layer": "conv"}), ("saliency", {})):
        explain(tiny, x, method=method, **opts)
        before = live_tensors()
        results = [explain(tiny, x, method=method, **opts) for _ in range(3)]
        assert live_tensors() == before, method
        del results


def test_progress_callback_reports_and_can_cancel(tiny, x):
    calls = []
    explain(tiny, x, method="scorecam", progress=lambda done, total: calls.append((done, total)))
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] > 0
    calls.clear()
    explain(tiny, x, method="gradcam", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 2), (2, 2)]

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done:
            raise Cancelled

    with pytest.raises(Cancelled):
        explain(tiny, x, method="ig", steps=4, internal_batch_size=1, progress=cancel)
    assert sum(len(m._forward_hooks) for m in tiny.module.modules()) == 0
