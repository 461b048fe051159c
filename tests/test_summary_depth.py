"""`belka summary --depth N` (nested modules, torchinfo's view, with kernel size and parameter
share) and nested modules addressed by dotted name (`belka layers --depth`, get_layer,
explanations at a nested layer)."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner
from torch import nn

import belka
from belka import inspect as bi
from belka.cli import main
from belka.explain import explain
from belka.models.layers import GlobalAvgPool
from belka.models.model import Model
from belka.models.preprocessing import Preprocessing


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(Block(3, 8), Block(8, 16, stride=2))
        self.pool = GlobalAvgPool()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def test_nested_rows_in_run_order_with_kernel_and_share():
    net = Nested().eval()
    s = bi.summarize(net, 32, depth=3)
    names = [r.name for r in s.rows[1:]]
    assert names == ["features", "features.0", "features.0.conv", "features.0.bn",
                     "features.0.act", "features.1", "features.1.conv", "features.1.bn",
                     "features.1.act", "pool", "head"]
    rows = {r.name: r for r in s.rows}
    assert rows["features.1.conv"].kernel == (3, 3) and rows["features.1.bn"].kernel is None
    assert rows["features.1.conv"].output_shape == (None, 16, 16, 16)
    assert rows["features.0.conv"].depth == 3 and rows["features"].depth == 1
    assert rows["features.1.conv"].macs == 16 * 16 * 16 * 8 * 9
    assert rows["features"].macs == rows["features.0.conv"].macs + rows["features.1.conv"].macs
    assert rows["features"].params == sum(p.numel() for p in net.features.parameters()) \
        + sum(b.numel() for b in net.features.buffers() if b.is_floating_point())
    flat = bi.summarize(net, 32)
    assert s.macs == flat.macs and s.total_params == flat.total_params
    assert s.activation_bytes == flat.activation_bytes          # nested rows are not counted twice
    assert [r.name for r in bi.summarize(net, 32, depth=1).rows[1:]] == ["features", "pool", "head"]
    table = s.to_table()
    assert "Kernel" in table and "Param %" in table
    share = 100 * rows["head"].params / s.total_params
    assert f"{share:.2f}%" in table and "    conv (Conv2d)" in table      # indented by depth
    data = json.loads(s.to_json())
    assert data["depth"] == 3 and data["layers"][3]["kernel"] == [3, 3]


def test_dotted_names_address_nested_modules():
    net = Nested().eval()
    layer = bi.get_layer(net, "features.1.conv")
    assert layer.module is net.features[1].conv and layer.index == 0
    found = [layer.name for layer in bi.find_layers(net, "act", depth=3)]
    assert found == ["features.0.act", "features.1.act"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    acts = bi.activations(net, x, ["features.0.act", "head"])
    np.testing.assert_allclose(acts["head"], net(x).detach(), atol=1e-6)
    model = Model("nested", net, Preprocessing(size=32), [f"c{i}" for i in range(4)],
                  device="cpu")
    by_name = explain(model, x, target=1, layer="features.1.act")
    by_module = explain(model, x, target=1, layer=net.features[1].act)
    assert by_name[0].layer == "features.1.act"
    np.testing.assert_allclose(by_name[0].raw, by_module[0].raw, atol=1e-7)


def test_packaged_model_is_flat_at_any_depth():
    lite0 = belka.load(weights="none", device="cpu")
    deep = bi.summarize(lite0, depth=4)
    assert [r.name for r in deep.rows] == [r.name for r in bi.summarize(lite0).rows]
    assert {r.name: r.kernel for r in deep.rows[1:3]} == {"stem_conv": (3, 3), "stem_bn": None}
    assert deep.macs == 385_187_552


def test_cli_summary_and_layers_depth():
    r = CliRunner().invoke(main, ["summary", "--depth", "2"])
    assert r.exit_code == 0 and "Kernel" in r.stdout and "Param %" in r.stdout
    assert "predictions (Linear)" in r.stdout and "27.29%" in r.stdout
    r = CliRunner().invoke(main, ["summary"])
    assert "Kernel" not in r.stdout                                 # Keras's table unchanged
    r = CliRunner().invoke(main, ["layers", "--depth", "2", "top_"])
    assert r.exit_code == 0 and r.stdout.split()[1] == "top_conv"
    r = CliRunner().invoke(main, ["summary", "--depth", "0"])
    assert r.exit_code == 2
