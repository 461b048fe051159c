"""The model registry: a name -> how to build the network, where its weights come from, and how
its inputs are prepared. ``belka.load(name)`` reads from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError
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


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    for key in (spec.name, *spec.aliases):
        _REGISTRY[key] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(available())}."
        ) from None


def available() -> list[str]:
    _ensure_builtin()
    return sorted({spec.name for spec in _REGISTRY.values()})


def _ensure_builtin() -> None:
    # Importing the families registers them; done lazily so `import belka` stays light.
    from . import efficientnet_lite, mobilenet_v2  # noqa: F401
