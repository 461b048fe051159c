"""Fitting one head on embedded photos: the training rows (views and their weights), class-
balanced softmax regression with Adam, reference embeddings and novelty floors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..features import classifier_layer
from ..models.model import Model
from ..scores import similarities, unit
from ..tiling import DEFAULT_TILING, Tiling
from .embed import Embedded
from .head import HeadLayer, _frozen_copy, prior_classes
from .photos import other_class

NOVELTY_FACTOR = 0.9                 # floor = factor x lowest leave-one-burst-out similarity


@dataclass(frozen=True)
class TrainOptions:
    """How a head is trained (every field is saved in the ``.belka`` file)."""

    epochs: int = 60
    seed: int = 0
    learning_rate: float = 0.01
    weight_decay: float = 0.1            # on the embedding weights
    prior_weight_decay: float = 1e-4     # on the prior-feature weights
    batch_size: int = 128
    augment: bool = True
    other_tiles: float = 1.0             # total weight of a catch-all photo's tiles (0: unused)
    folds: int = 5
    max_false_accept: float = 0.01
    tiling: Tiling | None = DEFAULT_TILING
    agreement: bool = True               # views score sqrt(head x ImageNet prior), scores.agreement

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("epochs", "seed", "learning_rate", "weight_decay",
                                             "prior_weight_decay", "batch_size", "augment",
                                             "other_tiles", "folds", "max_false_accept",
                                             "agreement")}
        out["tiling"] = self.tiling.to_dict() if self.tiling else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainOptions":
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "tiling"}
        fields.setdefault("agreement", False)     # saved options without it: a format-1 head
        tiling = data.get("tiling")
        return cls(**fields, tiling=Tiling.from_dict(tiling) if tiling else None)


def _fit_linear(features: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, n_classes: int,
                n_prior: int, options: TrainOptions, progress: Callable[[int], None] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced, weight-decayed softmax regression on standardised features."""
    generator = torch.Generator().manual_seed(options.seed)
    dim = features.shape[1]
    weight = (torch.randn(n_classes, dim, generator=generator) * 0.01).requires_grad_(True)
    bias = torch.zeros(n_classes, requires_grad=True)
    counts = torch.bincount(y, weights=weights, minlength=n_classes).float()
    class_weight = counts.sum() / (n_classes * counts.clamp(min=1.0))
    row_weight = class_weight[y] * weights
    decay = torch.full((1, dim), options.weight_decay)
    decay[:, :n_prior] = options.prior_weight_decay
    optimizer = _Adam([weight, bias], options.learning_rate)
    # Tiny matrices: one thread. Several threads only wait on each other here, and on a busy
    # machine their spinning made a 5-second fit take minutes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _adam_epochs(features, y, weight, bias, row_weight, decay, optimizer, generator, options,
                     progress)
    finally:
        torch.set_num_threads(threads)
    return weight.detach(), bias.detach()


class _Adam:
    """Adam (Kingma & Ba, 2015) in a few lines: ``torch.optim`` imports torch's compiler stack on
    first use, which costs seconds for a fit that takes less."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            m_hat = m / (1 - b1 ** self.t)
            v_hat = v / (1 - b2 ** self.t)
            p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


def _adam_epochs(features, y, weight, bias, row_weight, decay, optimizer, generator, options,
                 progress) -> None:
    for epoch in range(options.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), options.batch_size):
            idx = order[start:start + options.batch_size]
            loss = nn.functional.cross_entropy(features[idx] @ weight.T + bias, y[idx],
                                               reduction="none")
            w = row_weight[idx]
            loss = (loss * w).sum() / w.sum() + (decay * weight ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if progress:
            progress(epoch)


def _training_rows(embedded: Embedded, y: np.ndarray, rows: np.ndarray, options: TrainOptions,
                   other: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, ws = [], [], []
    for i in rows:
        views = [embedded.whole[i:i + 1]]
        if options.augment and len(embedded.augment[i]):
            views.append(embedded.augment[i])
        n = sum(len(v) for v in views)
        xs.extend(views)
        ys.append(np.full(n, y[i]))
        ws.append(np.ones(n, np.float32))
        tiles = embedded.tiles[i]
        # A tile's label is known only when it holds for every part of the photo: a tile of an
        # "other" photo is "other"; a tile of a squirrel photo may show only grass.
        if other is not None and y[i] == other and options.other_tiles > 0 and len(tiles):
            xs.append(tiles)
            ys.append(np.full(len(tiles), y[i]))
            ws.append(np.full(len(tiles), options.other_tiles / len(tiles), np.float32))
    return (np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64),
            np.concatenate(ws))


@dataclass
class _Fitted:
    layer: HeadLayer
    references: np.ndarray           # R x D unit, float32
    reference_labels: np.ndarray     # R
    floors: np.ndarray               # K

    def score(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities V x K, similarities to each class's references V x K) for V views."""
        with torch.no_grad():
            probs = torch.softmax(self.layer(torch.from_numpy(views)), dim=1).numpy()
        n_classes = probs.shape[1]
        return probs, similarities(views, self.references, self.reference_labels, n_classes)


def _fit(backbone: nn.Linear, prior_mask: torch.Tensor, embedded: Embedded, y: np.ndarray,
         groups: np.ndarray, rows: np.ndarray, labels: Sequence[str], options: TrainOptions,
         progress: Callable[[int], None] | None = None) -> _Fitted:
    """Train one head on the photos ``rows``."""
    n_classes = len(labels)
    use = options
    x, ys, ws = _training_rows(embedded, y, rows, use, other_class(labels))
    empty_layer = HeadLayer(backbone, prior_mask, torch.zeros(1), torch.ones(1),
                            torch.zeros(n_classes, 1), torch.zeros(n_classes))
    with torch.no_grad():
        feats = empty_layer.features(torch.from_numpy(x))
    mean = feats.mean(dim=0)
    scale = feats.std(dim=0, unbiased=False) + 1e-2
    standard = (feats - mean) / scale
    weight, bias = _fit_linear(standard, torch.from_numpy(ys), torch.from_numpy(ws), n_classes,
                               prior_mask.shape[0], use, progress)
    layer = HeadLayer(backbone, prior_mask, mean, scale, weight, bias).eval()
    refs, ref_labels, ref_groups = [], [], []
    for i in rows:
        refs.append(embedded.whole[i:i + 1])
        if len(embedded.augment[i]):
            refs.append(embedded.augment[i][:1])          # the mirror image
        n = 1 + (1 if len(embedded.augment[i]) else 0)
        ref_labels += [y[i]] * n
        ref_groups += [groups[i]] * n
    references = unit(np.concatenate(refs))
    ref_labels_a, ref_groups_a = np.array(ref_labels), np.array(ref_groups)
    floors = np.zeros(n_classes, np.float32)
    for c in range(n_classes):
        sims = []
        for i in rows:
            if y[i] != c:
                continue
            other = (ref_labels_a == c) & (ref_groups_a != groups[i])
            if other.any():
                sims.append(float((unit(embedded.whole[i]) @ references[other].T).max()))
        floors[c] = NOVELTY_FACTOR * min(sims) if sims else 0.0
    return _Fitted(layer, references, ref_labels_a, floors)


def _backbone_parts(model: Model, labels: Sequence[str]) -> tuple[nn.Linear, torch.Tensor]:
    layer = classifier_layer(model.module)
    if isinstance(layer, HeadLayer):
        raise UsageError("train on the plain backbone, not on a model that already has a head")
    backbone = _frozen_copy(layer)
    prior = prior_classes(model, labels)
    mask = torch.zeros(len(prior), backbone.out_features)
    for row, indices in enumerate(prior.values()):
        mask[row, indices] = 1.0
    return backbone, mask
