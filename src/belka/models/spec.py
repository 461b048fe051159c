"""What a registered model is: how to build the network, where its weights come from, and how its
inputs are prepared (:mod:`belka.models.registry` keeps them by name)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .preprocessing import Preprocessing


@dataclass(frozen=True)
class WeightSource:
    """A published weight file: where to get it and how to check it.

    ``url`` may be None for weights that ship inside an installed package (``locate`` finds them).
    ``sha256`` is the full hex digest when known; ``sha256_prefix`` covers hubs that only publish
    the first hex digits in the file name (torchvision's ``-b0353104.pth`` convention).
    """

    filename: str
    url: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    locate: Callable[[], Path] | None = None
    help: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to make a :class:`belka.Model` of one kind."""

    name: str
    build: Callable[[], nn.Module]
    preprocessing: Preprocessing
    weights: WeightSource | None
    # Turn a weight file on disk into a state dict for ``build()``'s module (strict keys).
    read_weights: Callable[[Path], dict[str, torch.Tensor]]
    description: str = ""
    aliases: tuple[str, ...] = field(default=())
