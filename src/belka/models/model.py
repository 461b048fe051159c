"""The :class:`Model`: one object that carries the network, its preprocessing contract, its
labels and its layer names, so every feature takes one argument."""

from __future__ import annotations

import os
import threading
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

    Forward-only work (``classify``, ``check``, scans, embeddings, Grad-CAM's fast path) runs on
    :attr:`engine`; anything that needs gradients or layer hooks runs ``module``. ``engine`` is
    ``"auto"`` (ONNX Runtime when it is installed and the export works, else PyTorch),
    ``"onnx"`` or ``"torch"``; ``None`` reads ``$BELKA_ENGINE`` and defaults to ``"auto"``.
    The engine is made on first use (the first ONNX use of a model exports it once, 20-35 s
    on two cores, then the cached graph opens in a fraction of a second).
    """

    def __init__(self, name: str, module: nn.Module, preprocessing: Preprocessing,
                 labels: Sequence[str], *, weights_sha256: str | None = None,
                 device: str | torch.device | None = None,
                 groups: dict[str, tuple[int, ...]] | None = None, engine: str | None = None):
        self.name = name
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.eval().to(self.device)
        self.preprocessing = preprocessing
        self.labels = list(labels)
        self.groups = dict(_labels.IMAGENET_GROUPS if groups is None else groups)
        self.weights_sha256 = weights_sha256
        self._engine = _EngineSlot(engine_kind(engine))

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.module.parameters())
        return (f"<belka.Model {self.name}: {params / 1e6:.2f} M parameters, "
                f"{len(self.labels)} classes, input {self.preprocessing.size}px, {self.device}>")

    # -- the engine ------------------------------------------------------------------------
    @property
    def engine(self):
        """The :class:`belka.engine.Engine` that runs forward-only work, made on first use.
        Assign an engine object or a kind (``model.engine = "torch"``) to change it."""
        return self._engine.get(self)

    @engine.setter
    def engine(self, value) -> None:
        self._engine.set(value)

    @property
    def engine_if_made(self):
        """The engine if something has made it already, else None (never exports)."""
        return self._engine.engine

    @property
    def engine_kind(self) -> str:
        """``auto``, ``onnx`` or ``torch``: what :attr:`engine` is (or will be) made as."""
        return self._engine.kind

    def fast_logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (NumPy) for N x 3 x S x S float32 preprocessed input, run by the engine."""
        return self.engine.logits(x)

    def embed_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(softmax probabilities N x classes, embeddings N x D) for N x S x S x 3 uint8 images
        at the input size: one engine run gives both. The embedding is the input of the
        ``predictions`` layer."""
        from ..engine import EMBEDDING, softmax

        engine = self.engine
        logits, embedding = engine.run(engine.prepare(batch), ("logits", EMBEDDING))
        return softmax(self.logits_from_backbone(logits, embedding)), embedding

    def logits_from_backbone(self, logits: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """This model's logits from its engine's (backbone) logits and embeddings: the same
        logits here; a head model applies its head."""
        return logits

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
        from ..engine import softmax

        if len(batch) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return softmax(self.fast_logits(self.engine.prepare(batch)))

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


class _EngineSlot:
    """Where a model keeps its engine: made on first use under a lock (the server's worker
    threads share one model), and shared by deep copies of the model (the engine holds no
    hooks, and ONNX Runtime sessions are thread-safe but cannot be copied)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.engine = None
        self._lock = threading.Lock()

    def get(self, model: "Model"):
        if self.engine is None:
            with self._lock:
                if self.engine is None:
                    from ..engine import make_engine

                    self.engine = make_engine(model, self.kind)
        return self.engine

    def set(self, value) -> None:
        from ..engine import Engine

        with self._lock:
            if isinstance(value, Engine):
                self.engine, self.kind = value, value.kind
            else:
                self.engine, self.kind = None, engine_kind(value)

    def __deepcopy__(self, memo) -> "_EngineSlot":
        return self


def engine_kind(kind: str | None) -> str:
    """A valid engine kind: ``kind``, else ``$BELKA_ENGINE``, else ``"auto"``."""
    from ..errors import UsageError

    value = (kind or os.environ.get("BELKA_ENGINE") or "auto").strip().lower()
    if value not in ("auto", "onnx", "torch"):
        source = "engine" if kind else "BELKA_ENGINE"
        raise UsageError(f"unknown {source} {value!r}: choose auto, onnx or torch")
    return value


def load_model(name: str = "efficientnet_lite0", *, weights: str | os.PathLike | None = None,
               device: str | None = None, progress: bool = True,
               engine: str | None = None) -> Model:
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
                 weights_sha256=sha, device=device, engine=engine)
