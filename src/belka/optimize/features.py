"""Several layers' outputs from one pass, with gradients: the network cut after the deepest
layer asked for (the split machinery's traced graph, :func:`belka.inspect.trace`), returning
each requested layer's output. No hooks are installed, so a tap can run on a model that other
threads use at the same time (the server's shared model)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import fx, nn

from ..errors import ModelError
from ..inspect import get_layer, trace


class Taps(nn.Module):
    """``taps(x)`` -> a dict {layer name: output} for the layers asked for, running the network
    only as far as the deepest of them. ``x`` is in the network's units (N x 3 x H x W)."""

    def __init__(self, model, layers: Sequence[str | int]):
        super().__init__()
        self.names = tuple(dict.fromkeys(get_layer(model, key).name for key in layers))
        if not self.names:
            raise ModelError("no layer to tap")
        traced = trace(model)
        nodes = list(traced.graph.nodes)
        where = {}
        for i, node in enumerate(nodes):
            if node.op == "call_module" and node.target in self.names:
                if node.target in where:
                    raise ModelError(f"layer {node.target!r} runs more than once per pass")
                where[node.target] = i
        missing = [n for n in self.names if n not in where]
        if missing:
            raise ModelError(f"layer {missing[0]!r} does not run in the traced graph")
        last = max(where.values())
        graph, env = fx.Graph(), {}
        for node in nodes[:last + 1]:
            env[node] = graph.node_copy(node, env.__getitem__)
        graph.output(tuple(env[nodes[where[n]]] for n in self.names))
        self.graph_module = fx.GraphModule(traced, graph, class_name="Taps")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.graph_module(x)
        return dict(zip(self.names, out))
