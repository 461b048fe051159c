"""`split`: cutting a network after any layer gives a head and a tail with tail(head(x)) equal
to the whole network, including cuts inside residual blocks (a shortcut crosses the cut)."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import belka
from belka import inspect as bi
from belka.errors import ModelError

MAX_DIFF = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """About 300 small forward passes: one thread avoids OpenMP's spin-wait costs between
    them, which on a busy two-core machine make each pass many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lite0():
    return belka.load(device="cpu")


def mnv2():
    """MobileNetV2 with random weights and randomised BatchNorm statistics (default
    initialisation makes the output nearly independent of the input)."""
    model = belka.load("mobilenet_v2", weights="none", device="cpu")
    g = torch.Generator().manual_seed(0)
    for m in model.module.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.weight, 0.5, 1.5), (m.bias, -0.25, 0.25),
                              (m.running_mean, -0.25, 0.25), (m.running_var, 0.5, 1.5)):
                t.data.uniform_(lo, hi, generator=g)
    return model


@pytest.mark.parametrize("make", [lite0, mnv2], ids=["efficientnet_lite0", "mobilenet_v2"])
def test_every_cut_reproduces_the_network(make):
    model = make()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    names = bi.splittable_layers(model)
    assert names == model.layer_names
    with torch.inference_mode():
        whole = model.module(x)
        acts = bi.activations(model, x)
        worst, carried = 0.0, 0
        for name in names:
            head, tail = bi.split(model, name)
            h = head(x)
            first = h[0] if isinstance(h, tuple) else h
            assert torch.equal(first, acts[name]), name
            assert head.output_names == tail.input_names and head.output_names[0] == name
            assert isinstance(h, tuple) == (len(head.output_names) > 1)
            worst = max(worst, (tail(h) - whole).abs().max().item())
            carried += isinstance(h, tuple)
    assert worst <= MAX_DIFF
    assert carried > 50  # cuts inside residual blocks (a shortcut crosses) are common


def test_residual_cut_carries_the_shortcut():
    model = belka.load("mobilenet_v2", weights="none", device="cpu")
    head, tail = bi.split(model, "block_12_expand")  # the article's layer: inside block 12
    assert head.output_names == ("block_12_expand", "block_11_add")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        activation, shortcut = head(x)
        assert activation.shape == (1, 576, 14, 14) and shortcut.shape == (1, 96, 14, 14)
        assert torch.allclose(tail((activation, shortcut)), model.module(x), atol=MAX_DIFF)
    plain_head, _ = bi.split(model, "block_12_add")  # between blocks: one tensor crosses
    assert plain_head.output_names == ("block_12_add",)


def test_head_and_tail_share_the_weights_and_support_gradients():
    model = belka.load(device="cpu")
    head, tail = bi.split(model, 100)
    assert isinstance(head, fx.GraphModule) and isinstance(tail, fx.GraphModule)
    assert head.stem_conv is model.module.stem_conv
    assert not head.training and not tail.training
    h = head(torch.randn(1, 3, 224, 224))
    h = tuple(t.detach().requires_grad_() for t in h) if isinstance(h, tuple) \
        else h.detach().requires_grad_()
    tail(h)[0, 335].backward()
    first = h[0] if isinstance(h, tuple) else h
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_the_last_layer_has_an_identity_tail_and_traces_are_cached():
    model = belka.load("mobilenet_v2", weights="none", device="cpu")
    assert bi.trace(model) is bi.trace(model.module)
    _, tail = bi.split(model, "predictions")
    y = torch.randn(1, 1000)
    assert tail(y) is y


def test_split_errors():
    model = belka.load("mobilenet_v2", weights="none", device="cpu")
    with pytest.raises(ModelError, match="Did you mean block_12_expand"):
        bi.split(model, "block_12_expnd")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu, self.unused = nn.ReLU(), nn.ReLU()

        def forward(self, x):
            return self.relu(self.relu(x) - 1)

    assert bi.splittable_layers(Twice()) == []
    with pytest.raises(ModelError, match="runs 2 times"):
        bi.split(Twice(), "relu")
    with pytest.raises(ModelError, match="does not run"):
        bi.split(Twice(), "unused")
