"""The :class:`Model`: one object that carries the network, its preprocessing contract, its
labels and its layer names, so every feature takes one argument."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from torch import nn

from .. import images
from . import labels as _labels
from .preprocessing import Preprocessing

ImageLike = Union[str, os.PathLike, bytes, np.ndarray, "PIL.Image.Image"]  # noqa: F821


@dataclass(frozen=True)
class Prediction:
    """One ranked class: its name, its index in the label list, and its probability."""

    label: str
    index: int
    probability: float

    def to_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "probability": round(self.probability, 6)}


def _is_batch(images_: object) -> bool:
    return isinstance(images_, (list, tuple))


class Model:
    """A pretrained image classifier ready to use.

    ``module`` is the ``nn.Module`` (in eval mode) whose direct children are the named layers;
    ``preprocessing`` turns decoded images into its input; ``labels`` name its outputs.
    """

    def __init__(self, name: str, module: nn.Module, preprocessing: Preprocessing,
                 labels: Sequence[str], *, weights_sha256: str | None = None,
                 device: str | torch.device | None = None,
                 groups: dict[str, tuple[int, ...]] | None = None):
        self.name = name
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.eval().to(self.device)
        self.preprocessing = preprocessing
        self.labels = list(labels)
        self.groups = dict(_labels.IMAGENET_GROUPS if groups is None else groups)
        self.weights_sha256 = weights_sha256

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.module.parameters())
        return (f"<belka.Model {self.name}: {params / 1e6:.2f} M parameters, "
                f"{len(self.labels)} classes, input {self.preprocessing.size}px, {self.device}>")

    # -- running the network -------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an already-preprocessed N x 3 x S x S tensor."""
        with torch.inference_mode():
            return self.module(x.to(self.device))

    def decode(self, image: ImageLike) -> np.ndarray:
        """Any image source -> H x W x 3 uint8 (see :func:`belka.images.decode`)."""
        return images.decode(image)

    def preprocess(self, images_: Sequence[ImageLike], resize: str | None = None) -> torch.Tensor:
        """Image sources -> the batch tensor the network expects."""
        return self.preprocessing([self.decode(im) for im in images_], resize)

    def probabilities(self, images_: ImageLike | Sequence[ImageLike], *, resize: str | None = None,
                      batch_size: int = 32) -> np.ndarray:
        """Softmax probabilities, N x classes (1 x classes for a single image)."""
        batch = list(images_) if _is_batch(images_) else [images_]
        out = []
        for start in range(0, len(batch), batch_size):
            decoded = [self.decode(im) for im in batch[start:start + batch_size]]
            resized = np.stack([self.preprocessing.resize(im, resize) for im in decoded])
            out.append(self.probabilities_from_batch(resized))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def probabilities_from_batch(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities for N x S x S x 3 uint8 images already at the input size."""
        logits = self(self.preprocessing.normalize(batch))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def rank(self, probs: np.ndarray, top: int = 5) -> list[Prediction]:
        """The ``top`` most probable classes of one probability vector."""
        top = max(1, min(top, len(self.labels)))
        order = np.argsort(-probs, kind="stable")[:top]
        return [Prediction(self.labels[i], int(i), float(probs[i])) for i in order]

    def classify(self, images_: ImageLike | Sequence[ImageLike], top: int = 5, *,
                 resize: str | None = None) -> list[Prediction] | list[list[Prediction]]:
        """Top-``top`` predictions for one image, or a list of them for a list of images."""
        probs = self.probabilities(images_, resize=resize)
        ranked = [self.rank(p, top) for p in probs]
        return ranked if _is_batch(images_) else ranked[0]

    # -- classes and the gate ------------------------------------------------------------
    def class_indices(self, targets: str | int | Iterable[str | int]) -> list[int]:
        """Indices for class names, group names or indices ("squirrel", "tabby", 281)."""
        return _labels.resolve(targets, self.labels, self.groups)

    def check(self, images_: ImageLike | Sequence[ImageLike], allow: str | Iterable[str | int] = "squirrel",
              threshold: float | None = None, *, resize: str | None = None):
        """The upload gate: accept when the allowed classes' summed probability reaches the
        threshold. Returns a :class:`belka.gate.CheckResult` (a list of them for a list)."""
        from ..gate import Gate

        gate = Gate(self, allow=allow, threshold=threshold)
        results = gate.check_many(list(images_) if _is_batch(images_) else [images_], resize=resize)
        return results if _is_batch(images_) else results[0]

    # -- looking inside (see belka.inspect) ------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Names of the network's layers in execution order."""
        return [name for name, _ in self.module.named_children()]

    @property
    def layers(self):
        """The layers in execution order, each callable on a tensor (``layer(x)``)."""
        from .. import inspect

        return inspect.layers(self)

    def layer(self, name_or_index: str | int):
        """One layer by name (``"block_12_expand"``) or index (``100``)."""
        from .. import inspect

        return inspect.get_layer(self, name_or_index)

    def summary(self, input_size: int | None = None):
        """A Keras-style table of layers, shapes, parameters and multiply-adds (``print()`` it)."""
        from .. import inspect

        return inspect.summarize(self, input_size)

    def activations(self, image, layers: Sequence[str | int] | None = None, *,
                    resize: str | None = None) -> dict[str, torch.Tensor]:
        """Named activations of ``layers`` for one image (or an input tensor)."""
        from .. import inspect

        return inspect.activations(self, image, layers, resize=resize)

    def split(self, layer: str | int):
        """``head, tail`` such that ``tail(head(x))`` equals the model's logits; the cut is after
        ``layer``, and tensors a residual shortcut carries across travel with the head's output."""
        from .. import inspect

        return inspect.split(self, layer)


def load_model(name: str = "efficientnet_lite0", *, weights: str | os.PathLike | None = None,
               device: str | None = None, progress: bool = True) -> Model:
    """Build a registered model and load its weights (see :func:`belka.load`)."""
    from . import weights as _weights
    from .registry import get_spec

    spec = get_spec(name)
    module = spec.build()
    if weights == "none":
        sha = None
    else:
        if spec.weights is None and weights is None:
            from ..errors import WeightsError

            raise WeightsError(f"model {spec.name!r} has no default weights: pass weights=PATH")
        path = _weights.resolve(spec.weights, override=weights, progress=progress)
        module.load_state_dict(spec.read_weights(Path(path)), strict=True)
        sha = spec.weights.sha256 if (weights is None and spec.weights and spec.weights.sha256) \
            else _weights.sha256_file(path)
    return Model(spec.name, module, spec.preprocessing, _labels.imagenet_labels(),
                 weights_sha256=sha, device=device)
