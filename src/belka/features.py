"""One forward for a batch of views: the model's probabilities and the backbone's embeddings.

The embedding is the input of the network's ``predictions`` layer (1280 numbers for
EfficientNet-Lite0). The gate, tiling, training and calibration all work from
:func:`forward_features`; a head replaces :data:`EMBEDDING_LAYER` and reads its input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .engine import EMBEDDING
from .errors import ModelError

if TYPE_CHECKING:
    from .models.model import Model

EMBEDDING_LAYER = "predictions"       # the head replaces this layer and reads its input


def classifier_layer(module: nn.Module) -> nn.Module:
    layer = getattr(module, EMBEDDING_LAYER, None)
    if layer is None:
        raise ModelError(f"this model has no {EMBEDDING_LAYER!r} layer to put a head on")
    return layer


def forward_features(model: Model, batch: np.ndarray, chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities N x classes, embeddings N x D) for N x S x S x 3 uint8 views.

    The embedding is the input of the model's ``predictions`` layer, captured by a hook during
    the same forward that gives the probabilities (of the head's classes for a head model).
    Runs on the model's engine when it gives embeddings, else on the module with a hook."""
    if len(batch) and EMBEDDING in model.engine.outputs:
        parts = [model.embed_batch(batch[start:start + chunk])
                 for start in range(0, len(batch), chunk)]
        return np.concatenate([p for p, _ in parts]), np.concatenate([e for _, e in parts])
    captured: list[torch.Tensor] = []
    hook = classifier_layer(model.module).register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].detach().float().cpu()))
    probs = []
    try:
        for start in range(0, len(batch), chunk):
            logits = model(model.preprocessing.normalize(batch[start:start + chunk]))
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        hook.remove()
    if not probs:
        return np.zeros((0, len(model.labels)), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(probs).numpy(), torch.cat(captured).numpy()
