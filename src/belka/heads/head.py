"""The head: :class:`HeadLayer` (embedding -> head logits), :class:`Head` (the layer, its
classes, references, novelty floors and thresholds; the ``.belka`` file) and
:class:`HeadModel` (a model whose classes are the head's)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..engine import EMBEDDING
from ..errors import BelkaError, ModelError, UsageError
from ..features import EMBEDDING_LAYER, classifier_layer
from ..files import write_atomic
from ..models.model import Model
from ..scores import similarities
from ..tiling import DEFAULT_TILING, Tiling
from ..version import __version__

HEAD_FORMAT = "belka-head"
HEAD_FORMAT_VERSION = 2               # 2: agreement with the backbone's prior (scores.agreement)
HEAD_SUFFIX = ".belka"


def prior_classes(model: Model, labels: Sequence[str]) -> dict[str, list[int]]:
    """For each head label that names a class or group of the backbone's own classifier
    (``squirrel`` -> [335]), those class indices; others are left out."""
    out: dict[str, list[int]] = {}
    for label in labels:
        try:
            out[label] = [int(i) for i in model.class_indices(label)]
        except BelkaError:
            continue
    return out


def prior_indices(prior: dict[str, list[int]], labels: Sequence[str], allow: Sequence[int],
                  ) -> list[int] | None:
    """The backbone classes that make the prior of the allowed head classes (the union of
    their :func:`prior_classes`), or None when an allowed class has no prior."""
    out: set[int] = set()
    for a in allow:
        indices = prior.get(labels[a])
        if not indices:
            return None
        out.update(int(i) for i in indices)
    return sorted(out)


class HeadLayer(nn.Module):
    """Embedding -> head logits: ``((prior log-probs ++ embedding) - mean) / scale @ W.T + b``.

    ``backbone`` is a frozen copy of the backbone's own classifier, needed only for the prior
    features; it is not saved in the ``.belka`` file but taken from the model the head is
    attached to. The module replaces the backbone's ``predictions`` layer in a head model."""

    def __init__(self, backbone: nn.Module | None, prior_mask: torch.Tensor, mean: torch.Tensor,
                 scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.add_module("backbone", backbone)
        self.register_buffer("prior_logmask", torch.where(
            prior_mask > 0, torch.zeros_like(prior_mask), torch.full_like(prior_mask, -math.inf)))
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def features(self, embedding: torch.Tensor) -> torch.Tensor:
        if self.prior_logmask.shape[0] == 0:
            return embedding
        if self.backbone is None:
            raise UsageError("attach the head to its backbone model first (Head.attach)")
        logp = torch.log_softmax(self.backbone(embedding), dim=1)
        prior = torch.logsumexp(logp.unsqueeze(1) + self.prior_logmask.unsqueeze(0), dim=2)
        return torch.cat([prior, embedding], dim=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear((self.features(embedding) - self.mean) / self.scale)

    def backbone_probabilities(self, embedding: np.ndarray) -> np.ndarray:
        """The backbone's own (ImageNet) softmax probabilities for embeddings, N x C."""
        if self.backbone is None:
            raise UsageError("attach the head to its backbone model first (Head.attach)")
        with torch.no_grad():
            logits = self.backbone(torch.from_numpy(np.asarray(embedding, np.float32)))
            return torch.softmax(logits.float(), dim=1).numpy()

    def logits_from(self, embedding: np.ndarray, backbone_logits: np.ndarray) -> np.ndarray:
        """:meth:`forward` in NumPy, given the backbone's own logits for the same images (an
        engine gives both in one run, so the backbone classifier need not run again)."""
        features = np.asarray(embedding, np.float32)
        mask = self.prior_logmask.detach().cpu().numpy()
        if mask.shape[0]:
            z = np.asarray(backbone_logits, np.float32)
            z = z - z.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            prior = np.stack([_logsumexp(logp[:, np.isfinite(row)]) for row in mask], axis=1)
            features = np.concatenate([prior.astype(np.float32), features], axis=1)
        scaled = (features - self.mean.detach().cpu().numpy()) / self.scale.detach().cpu().numpy()
        weight = self.linear.weight.detach().cpu().numpy()
        return scaled @ weight.T + self.linear.bias.detach().cpu().numpy()


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(x)))."""
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def _frozen_copy(layer: nn.Module) -> nn.Module:
    out = copy.deepcopy(layer).float().cpu().eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


@dataclass
class Head:
    """A trained head: its layer, its classes, what it needs from the backbone, its thresholds.

    ``thresholds`` = ``{"tiles": {label: t}, "whole": {label: t}}``: for ``allow=label``, the
    lowest score that kept out-of-fold false accepts at or under ``max_false_accept`` (never
    below :data:`MIN_HEAD_THRESHOLD`).
    """

    labels: list[str]
    layer: HeadLayer
    references: np.ndarray
    reference_labels: np.ndarray
    floors: np.ndarray
    backbone: dict                    # name, weights_sha256, embedding_dim
    preprocessing: dict
    prior: dict[str, list[int]]
    thresholds: dict = field(default_factory=dict)
    tiling: Tiling | None = DEFAULT_TILING
    training: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    path: str | None = None

    # -- use --------------------------------------------------------------------------
    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.layer(torch.from_numpy(np.asarray(embeddings, np.float32))),
                                 dim=1).numpy()

    def similarities(self, embeddings: np.ndarray) -> np.ndarray:
        return similarities(embeddings, self.references.astype(np.float32),
                             self.reference_labels, len(self.labels))

    @property
    def agreement(self) -> bool:
        """Whether a view's score is the head's agreement with the backbone's prior
        (:func:`belka.scores.agreement`); heads of format 1 were trained without."""
        return bool(self.training.get("options", {}).get("agreement", False))

    def prior_scores(self, embeddings: np.ndarray, allow: Sequence[int]) -> np.ndarray | None:
        """Per view, the backbone's probability of the allowed classes' ImageNet counterparts;
        None when this head does not use agreement or an allowed class has none."""
        indices = prior_indices(self.prior, self.labels, allow) if self.agreement else None
        if indices is None or len(embeddings) == 0:
            return None
        return self.layer.backbone_probabilities(embeddings)[:, indices].sum(axis=1)

    def threshold_for(self, allow: Sequence[int], tiles: bool) -> float | None:
        if len(allow) != 1:
            return None
        return self.thresholds.get("tiles" if tiles else "whole", {}).get(self.labels[allow[0]])

    @property
    def fingerprint(self) -> str:
        """sha256 of the head's weights (not of the file: thresholds may change)."""
        h = hashlib.sha256()
        for t in (self.layer.linear.weight, self.layer.linear.bias, self.layer.mean,
                  self.layer.scale):
            h.update(np.ascontiguousarray(t.detach().cpu().numpy(), np.float32).tobytes())
        return h.hexdigest()

    def check_backbone(self, model: Model) -> None:
        """Raise :class:`ModelError` unless ``model`` is the backbone this head was trained on."""
        want, want_sha = self.backbone.get("name"), self.backbone.get("weights_sha256")
        where = f"head {self.path}" if self.path else "this head"
        if getattr(model, "head", None) is not None:
            raise UsageError("this model already has a head; load the plain backbone")
        if model.name != want or (want_sha and model.weights_sha256 and model.weights_sha256 != want_sha):
            raise ModelError(
                f"{where} was trained on {want} (weights sha256 {str(want_sha)[:12]}...) but the "
                f"model is {model.name} (weights sha256 {str(model.weights_sha256)[:12]}...): "
                f"embeddings of different backbones do not match; load {want} with its default "
                f"weights, or train the head again on this backbone")
        layer = classifier_layer(model.module)
        dim = self.backbone.get("embedding_dim")
        if dim and getattr(layer, "in_features", dim) != dim:
            raise ModelError(f"{where} expects {dim}-number embeddings, the model gives "
                             f"{layer.in_features}")

    def attach(self, model: Model) -> "HeadModel":
        """A copy of ``model`` whose outputs are this head's classes (see :class:`HeadModel`).
        Also binds the head to the backbone's classifier, so :meth:`probabilities` works."""
        self.check_backbone(model)
        if self.layer.backbone is None:
            self.layer.backbone = _frozen_copy(classifier_layer(model.module))
        return HeadModel(model, self)

    # -- file --------------------------------------------------------------------------
    def metadata(self) -> dict:
        return {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION,
                "belka_version": __version__, "labels": list(self.labels),
                "backbone": self.backbone, "preprocessing": self.preprocessing,
                "prior": self.prior, "novelty_floors": {l: float(f) for l, f in zip(self.labels, self.floors)},
                "thresholds": self.thresholds,
                "tiling": self.tiling.to_dict() if self.tiling else None,
                "training": self.training, "report": self.report,
                "fingerprint": self.fingerprint}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.belka`` file atomically (a temporary file renamed into place)."""
        from safetensors.numpy import save

        path = Path(path)
        tensors = {
            "weight": self.layer.linear.weight.detach().numpy().astype(np.float32),
            "bias": self.layer.linear.bias.detach().numpy().astype(np.float32),
            "mean": self.layer.mean.numpy().astype(np.float32),
            "scale": self.layer.scale.numpy().astype(np.float32),
            "prior_mask": (self.layer.prior_logmask == 0).numpy().astype(np.uint8),
            "references": self.references.astype(np.float16),
            "reference_labels": self.reference_labels.astype(np.int32),
        }
        data = save(tensors, metadata={"format": HEAD_FORMAT,
                                       "belka": json.dumps(self.metadata(), sort_keys=True)})
        try:
            write_atomic(path, data)
        except OSError as err:
            raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
        self.path = str(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Head":
        """Read a ``.belka`` file (see the module docstring for the format)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{path}: no such head file") from None
        except OSError as err:
            raise UsageError(f"{path}: cannot read: {err.strerror or err}") from None
        try:
            tensors = load(raw)
            header_len = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8:8 + header_len])
            meta = json.loads(header.get("__metadata__", {}).get("belka", "null"))
        except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as err:
            raise ModelError(f"{path}: not a belka head file ({err.__class__.__name__})") from None
        if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
            raise ModelError(f"{path}: not a belka head file (no belka-head metadata)")
        if int(meta.get("format_version", 0)) > HEAD_FORMAT_VERSION:
            raise ModelError(f"{path}: head format {meta.get('format_version')} is newer than this "
                             f"belka understands ({HEAD_FORMAT_VERSION}); upgrade belka")
        prior = {k: list(v) for k, v in meta.get("prior", {}).items()}
        layer = HeadLayer(None, torch.from_numpy(tensors["prior_mask"].astype(np.float32)),
                          torch.from_numpy(tensors["mean"].copy()),
                          torch.from_numpy(tensors["scale"].copy()),
                          torch.from_numpy(tensors["weight"].copy()),
                          torch.from_numpy(tensors["bias"].copy())).eval()
        labels = list(meta["labels"])
        floors = np.array([meta.get("novelty_floors", {}).get(l, 0.0) for l in labels], np.float32)
        tiling = meta.get("tiling")
        return cls(labels, layer, tensors["references"], tensors["reference_labels"].astype(np.int64),
                   floors, dict(meta["backbone"]), dict(meta.get("preprocessing", {})), prior,
                   dict(meta.get("thresholds", {})), Tiling.from_dict(tiling) if tiling else None,
                   dict(meta.get("training", {})), dict(meta.get("report", {})), str(path))


class HeadModel(Model):
    """A :class:`~belka.Model` whose classes are a head's: the backbone's layers, with its
    ``predictions`` layer replaced by the head (:class:`HeadLayer`). ``classify``, ``check``,
    ``probabilities``, ``class_indices`` and layer-level tools all see the head's labels."""

    def __init__(self, base: Model, head: Head):
        module = copy.deepcopy(base.module)
        layer = copy.deepcopy(head.layer)
        if layer.backbone is None:
            layer.backbone = _frozen_copy(classifier_layer(base.module))
        if head.layer.backbone is None:        # the head's prior scores need it too
            head.layer.backbone = layer.backbone
        setattr(module, EMBEDDING_LAYER, layer)
        super().__init__(base.name, module, base.preprocessing, head.labels,
                         weights_sha256=base.weights_sha256, device=base.device, groups={})
        self.head = head
        self.backbone = base
        # The engine runs the backbone (one exported graph serves every head); the head is
        # applied to its embedding here, in NumPy.
        self._engine = base._engine

    def fast_logits(self, x: np.ndarray) -> np.ndarray:
        return self.logits_from_backbone(*self.engine.run(x, ("logits", EMBEDDING)))

    def logits_from_backbone(self, logits: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        return getattr(self.module, EMBEDDING_LAYER).logits_from(embedding, logits)

    def __repr__(self) -> str:
        return (f"<belka.Model {self.name} + head {Path(self.head.path).name if self.head.path else ''}: "
                f"{', '.join(self.labels)}; input {self.preprocessing.size}px, {self.device}>")


def load_head(path: str | os.PathLike) -> Head:
    return Head.load(path)
