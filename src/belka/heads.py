"""Custom classes on a frozen backbone: train a *head*, save it as a ``.belka`` file, use it.

A head is a small linear softmax layer on the backbone's pooled embedding (the input of its
``predictions`` layer: 1280 numbers for EfficientNet-Lite0). The backbone is never changed, so
training needs one forward pass per photo view, done once and kept in memory:

* **views**: each training photo is seen whole, flipped left-right, and as four corner crops of
  80% of its shorter side (6 embeddings per photo). Of the tiles, only those of the catch-all
  class (a folder named ``other``, ``none``, ``background`` or ``unknown``) are used: theirs is
  the only tile label that is certain (a tile of a squirrel photo may show only grass, a tile of
  an ``other`` photo is never a squirrel). They weigh as much as one photo in all
  (``other_tiles`` = 1.0), and teach the head what the tiled gate's close-ups of non-squirrels
  look like: on the shared photos the tiled head gate accepted 18 instead of 15 of 19 squirrels
  with them (17 instead of 16 with the stricter burst grouping), at the same false accepts
  (``docs/training.md``; with 112 px tiles they once hurt).
* **features**: the embedding, standardised; plus, for every class whose name is also an
  ImageNet class or group (``squirrel`` -> ``fox squirrel``, ``cat`` -> the five cats), the
  backbone's own ImageNet log-probability of it (*prior features*). The ImageNet classifier saw
  ~1300 photos of each class and 999 look-alikes; a head trained on 20 photos cannot relearn
  that, but it can weigh it. The embedding weights are regularised (weight decay 0.1, from a
  measured plateau of 0.03-0.3) 1000 times more strongly than the prior weights.
* **fit**: mini-batch Adam on class-balanced cross-entropy with L2 weight decay, from a seeded
  generator: the same photos, options and seed give the same head, bit for bit.
* **none of the above**: besides the ``other`` class (train one when you can), every class
  keeps reference embeddings (its training photos whole and flipped, unit length, float16) and a
  *novelty floor*: a view counts for a class only when its nearest reference of that class has
  cosine similarity at least the floor. The floor is 0.9 x the lowest similarity any training
  photo of the class has to the class's photos from *other* bursts (leave-one-burst-out), so
  every training photo would pass even with its own burst removed. A photo of something the head
  never saw is then not accepted just because the allowed class was the least unlikely.
* **cross-validation**: k folds (default 5) with :class:`~sklearn.model_selection.StratifiedGroupKFold`,
  grouped by burst (:mod:`belka.bursts`: near-repeats by name, EXIF time and content). Every
  photo gets out-of-fold scores from a head that never saw its burst; thresholds, the report
  and the confusion matrix come from those.

The ``.belka`` file is one safetensors file: tensors ``weight`` (K x F), ``bias`` (K), ``mean`` and
``scale`` (F, the standardisation), ``prior_mask`` (P x C: which backbone classes make each prior
feature; the backbone's classifier itself is not copied, it comes from the model the head is
attached to), ``references`` (R x D float16) and ``reference_labels`` (R), and in the safetensors
header metadata two strings: ``format`` = ``belka-head`` and ``belka`` = a JSON document with
the format version, belka version, labels, backbone (name, weights sha256, embedding size),
preprocessing, prior classes, novelty floors, thresholds, tiling, training options and report,
and the fingerprint of the head's weights. Loading a head onto a different backbone raises
:class:`~belka.errors.ModelError`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import images
from .errors import BelkaError, ModelError, UsageError
from .files import write_atomic
from .models.model import ImageLike, Model
from .tiling import DEFAULT_TILING, Box, Tiling, combine, views as tile_views

HEAD_FORMAT = "belka-head"
HEAD_FORMAT_VERSION = 1
HEAD_SUFFIX = ".belka"
EMBEDDING_LAYER = "predictions"       # the head replaces this layer and reads its input
AUGMENT_CROP = 0.8                   # corner crops keep this share of the shorter side
NOVELTY_FACTOR = 0.9                 # floor = factor x lowest leave-one-burst-out similarity
MIN_HEAD_THRESHOLD = 0.1             # calibrated head thresholds never go below this
DEFAULT_HEAD_THRESHOLD = 0.5         # when no calibrated threshold fits (several classes allowed)
OTHER_NAMES = ("other", "others", "none", "background", "unknown")   # catch-all class names


# ------------------------------------------------------------------------------------------
# Labelled photos


@dataclass
class LabelledPhotos:
    """Photos with a class each, from one sub-folder per class."""

    paths: list[str]
    labels: list[str]                  # class names, sorted
    y: np.ndarray                      # class index per photo
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why)
    root: str | None = None            # the data folder (its sub-folders name sources)

    def subset(self, keep: np.ndarray) -> "LabelledPhotos":
        keep = np.asarray(keep)
        return LabelledPhotos([p for p, k in zip(self.paths, keep) if k], self.labels,
                              self.y[keep], self.skipped, self.root)

    def sources(self, *, groups_file=None, embeddings: np.ndarray | None = None):
        """Each photo's source group (:func:`belka.sources.photo_groups`)."""
        from .sources import photo_groups

        return photo_groups(self.paths, root=self.root, labels=[self.labels[i] for i in self.y],
                            groups_file=groups_file, embeddings=embeddings)


def read_folder(data_dir: str | os.PathLike, classes: Sequence[str] | None = None, *,
                min_classes: int = 2, purpose: str = "a head") -> LabelledPhotos:
    """Labelled photos from ``DATA_DIR/<class>/**`` (one sub-folder per class; hidden folders
    are skipped; ``classes`` keeps only those sub-folders). Fewer than ``min_classes`` class
    folders is a :class:`UsageError` that says what ``purpose`` needs."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; expected one sub-folder of photos per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is not None:
        wanted = {c.lower() for c in classes}
        missing = wanted - {p.name.lower() for p in folders}
        if missing:
            raise UsageError(f"{root}: no sub-folder for {', '.join(sorted(missing))}")
        folders = [p for p in folders if p.name.lower() in wanted]
    paths: list[str] = []
    ys: list[int] = []
    labels = [p.name for p in folders]
    for index, folder in enumerate(folders):
        for file in images.iter_image_files([folder]):
            paths.append(str(file))
            ys.append(index)
    counts = np.bincount(np.array(ys, dtype=np.int64), minlength=len(labels))
    if len(labels) < min_classes:
        example = "squirrel/ and other/" if min_classes > 1 else "squirrel/"
        raise UsageError(f"{root}: found {len(labels)} class folder(s); {purpose} needs at least "
                         f"{min_classes} (e.g. {example}), each holding photos")
    empty = [name for name, n in zip(labels, counts) if n == 0]
    if empty:
        raise UsageError(f"{root}: no images in {', '.join(empty)}")
    return LabelledPhotos(paths, labels, np.array(ys, dtype=np.int64), root=str(root))


# ------------------------------------------------------------------------------------------
# Running the backbone: logits and embeddings in one forward


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
    from .engine import EMBEDDING

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


def augment_views(image: np.ndarray, preprocessing, whole: np.ndarray | None = None) -> np.ndarray:
    """The training views besides the whole image: its mirror image and four corner crops of
    :data:`AUGMENT_CROP` of the shorter side (each resized by the model's policy)."""
    whole = preprocessing.resize(image) if whole is None else whole
    height, width = image.shape[:2]
    side = max(1, int(round(min(height, width) * AUGMENT_CROP)))
    pil = Image.fromarray(image)
    out = [np.ascontiguousarray(whole[:, ::-1])]
    for x, y in ((0, 0), (width - side, 0), (0, height - side), (width - side, height - side)):
        out.append(preprocessing.resize(np.asarray(pil.crop((x, y, x + side, y + side)))))
    return np.stack(out)


@dataclass
class Embedded:
    """Every view of every photo, embedded once: what training and calibration work from."""

    whole: np.ndarray                       # N x D, the whole image as the gate sees it
    augment: list[np.ndarray]               # per photo: A x D (mirror, corner crops)
    tiles: list[np.ndarray]                 # per photo: T x D (may be 0 x D)
    boxes: list[list[Box]]                  # per photo: the tiles' boxes
    forwards: int = 0
    seconds: float = 0.0

    def views(self, i: int, tiles: bool = True) -> np.ndarray:
        """Photo ``i``'s gate views: whole first, then its tiles."""
        return np.concatenate([self.whole[i:i + 1], self.tiles[i]]) if tiles else self.whole[i:i + 1]


def embed_photos(model: Model, photos: Sequence[ImageLike], *, augment: bool = True,
                 tiling: Tiling | None = DEFAULT_TILING, batch_size: int = 32,
                 progress: bool | None = None, desc: str = "embedding") -> Embedded:
    """Run the backbone once over every view of every photo (see :class:`Embedded`).

    Images that cannot be read raise :class:`~belka.errors.ImageError` naming the file.
    """
    started = time.perf_counter()
    from tqdm import tqdm

    pending: list[np.ndarray] = []
    spans: list[tuple[int, int, int, list[Box]]] = []   # per photo: n tiles, n augment, boxes
    whole, augs, tiles_out, boxes_out = [], [], [], []
    forwards = 0

    def flush() -> None:
        nonlocal forwards
        if not pending:
            return
        batch = np.concatenate(pending)
        forwards += len(batch)
        _, emb = forward_features(model, batch, chunk=batch_size)
        at = 0
        for n_tiles, n_aug, boxes in spans:
            whole.append(emb[at])
            tiles_out.append(emb[at + 1:at + 1 + n_tiles])
            augs.append(emb[at + 1 + n_tiles:at + 1 + n_tiles + n_aug])
            boxes_out.append(boxes)
            at += 1 + n_tiles + n_aug
        pending.clear()
        spans.clear()

    disable = (True if len(photos) <= 4 else None) if progress is None else not progress
    with tqdm(photos, desc=desc, unit="photo", disable=disable, leave=False,
              dynamic_ncols=True) as bar:
        for photo in bar:
            image = model.decode(photo)
            stack, boxes = tile_views(image, model.preprocessing, tiling)
            parts = [stack]
            n_aug = 0
            if augment:
                extra = augment_views(image, model.preprocessing, stack[0])
                parts.append(extra)
                n_aug = len(extra)
            pending.append(np.concatenate(parts))
            spans.append((len(stack) - 1, n_aug, [b for b in boxes if b is not None]))
            if sum(len(p) for p in pending) >= batch_size:
                flush()
        flush()
    dim = whole[0].shape[0] if whole else 0
    return Embedded(np.stack(whole) if whole else np.zeros((0, dim), np.float32),
                    augs, [t.reshape(-1, dim) for t in tiles_out], boxes_out, forwards,
                    time.perf_counter() - started)


# ------------------------------------------------------------------------------------------
# The head as a layer


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


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------
# Scoring views (shared by the gate, training and calibration)


def view_scores(probs: np.ndarray, allow: Sequence[int], similarities: np.ndarray | None = None,
                floors: np.ndarray | None = None) -> np.ndarray:
    """One score per view: the allowed classes' summed probability, set to 0 for a view that is
    not close enough to any allowed class's references (``similarities`` V x K, ``floors`` K)."""
    scores = probs[:, list(allow)].sum(axis=1)
    if similarities is not None and floors is not None:
        known = (similarities[:, list(allow)] >= floors[list(allow)]).any(axis=1)
        scores = np.where(known, scores, 0.0)
    return scores


def image_score(probs: np.ndarray, allow: Sequence[int], similarities: np.ndarray | None = None,
                floors: np.ndarray | None = None, method: str = "max") -> tuple[float, int]:
    """(score, deciding view) for one image from its views' probabilities (whole first)."""
    return combine(view_scores(probs, allow, similarities, floors), method)


# ------------------------------------------------------------------------------------------
# Training


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

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("epochs", "seed", "learning_rate", "weight_decay",
                                             "prior_weight_decay", "batch_size", "augment",
                                             "other_tiles", "folds", "max_false_accept")}
        out["tiling"] = self.tiling.to_dict() if self.tiling else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainOptions":
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "tiling"}
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


def other_class(labels: Sequence[str]) -> int | None:
    """The index of the catch-all class (``other``, ``none``, ...), if the head has one."""
    for i, label in enumerate(labels):
        if label.lower() in OTHER_NAMES:
            return i
    return None


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
        return probs, _similarities(views, self.references, self.reference_labels, n_classes)


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
    references = _unit(np.concatenate(refs))
    ref_labels_a, ref_groups_a = np.array(ref_labels), np.array(ref_groups)
    floors = np.zeros(n_classes, np.float32)
    for c in range(n_classes):
        sims = []
        for i in rows:
            if y[i] != c:
                continue
            other = (ref_labels_a == c) & (ref_groups_a != groups[i])
            if other.any():
                sims.append(float((_unit(embedded.whole[i]) @ references[other].T).max()))
        floors[c] = NOVELTY_FACTOR * min(sims) if sims else 0.0
    return _Fitted(layer, references, ref_labels_a, floors)


def _similarities(embeddings: np.ndarray, references: np.ndarray, reference_labels: np.ndarray,
                  n_classes: int) -> np.ndarray:
    """V x K: each view's highest cosine similarity to each class's references."""
    sims = _unit(embeddings) @ references.T
    out = np.full((len(embeddings), n_classes), -1.0, np.float32)
    for c in range(n_classes):
        mask = reference_labels == c
        if mask.any():
            out[:, c] = sims[:, mask].max(axis=1)
    return out


@dataclass
class OutOfFold:
    """Each photo's scores from a head that never saw its burst."""

    probs: list[np.ndarray]          # per photo: V x K (whole first, then tiles)
    similarities: list[np.ndarray]   # per photo: V x K
    floors: list[np.ndarray]         # per photo: the floors of the head that scored it
    fold: np.ndarray                 # per photo

    def scores(self, allow: Sequence[int], tiles: bool = True, novelty: bool = True,
               method: str = "max") -> np.ndarray:
        out = []
        for p, s, f in zip(self.probs, self.similarities, self.floors):
            p, s = (p, s) if tiles else (p[:1], s[:1])
            out.append(image_score(p, allow, s if novelty else None, f if novelty else None,
                                   method)[0])
        return np.array(out)


def fold_splits(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each burst group whole (fewer folds when there are fewer
    groups of the rarest class)."""
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = [len(set(groups[y == c])) for c in np.unique(y)]
    k = min(folds, max(per_class))
    if k < 2:
        raise UsageError("cross-validation needs at least two bursts (photos with different "
                         "names) of some class")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "the least populated class has fewer members"
        return list(splitter.split(np.zeros(len(y)), y, groups))


def cross_validate(model: Model, embedded: Embedded, y: np.ndarray, groups: np.ndarray,
                   labels: Sequence[str], options: TrainOptions, progress: bool | None = None,
                   ) -> OutOfFold:
    """Out-of-fold probabilities and similarities for every photo (see :class:`OutOfFold`)."""
    from tqdm import tqdm

    backbone, prior_mask = _backbone_parts(model, labels)
    n = len(y)
    probs: list = [None] * n
    sims: list = [None] * n
    floors: list = [None] * n
    fold_of = np.zeros(n, np.int64)
    splits = fold_splits(y, groups, options.folds, options.seed)
    with tqdm(total=len(splits), desc="cross-validating", unit="fold", leave=False,
              disable=(not progress) if progress is not None else None, dynamic_ncols=True) as bar:
        for k, (train_rows, test_rows) in enumerate(splits):
            fitted = _fit(backbone, prior_mask, embedded, y, groups, train_rows, labels, options)
            for i in test_rows:
                probs[i], sims[i] = fitted.score(embedded.views(i, tiles=True))
                floors[i] = fitted.floors
                fold_of[i] = k
            bar.update(1)
    return OutOfFold(probs, sims, floors, fold_of)


def _frozen_copy(layer: nn.Module) -> nn.Module:
    out = copy.deepcopy(layer).float().cpu().eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


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


# ------------------------------------------------------------------------------------------
# The Head object and the .belka file


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
        return _similarities(embeddings, self.references.astype(np.float32),
                             self.reference_labels, len(self.labels))

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
        import belka

        return {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION,
                "belka_version": belka.__version__, "labels": list(self.labels),
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
        setattr(module, EMBEDDING_LAYER, layer)
        super().__init__(base.name, module, base.preprocessing, head.labels,
                         weights_sha256=base.weights_sha256, device=base.device, groups={})
        self.head = head
        self.backbone = base
        # The engine runs the backbone (one exported graph serves every head); the head is
        # applied to its embedding here, in NumPy.
        self._engine = base._engine

    def fast_logits(self, x: np.ndarray) -> np.ndarray:
        from .engine import EMBEDDING

        return self.logits_from_backbone(*self.engine.run(x, ("logits", EMBEDDING)))

    def logits_from_backbone(self, logits: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        return getattr(self.module, EMBEDDING_LAYER).logits_from(embedding, logits)

    def __repr__(self) -> str:
        return (f"<belka.Model {self.name} + head {Path(self.head.path).name if self.head.path else ''}: "
                f"{', '.join(self.labels)}; input {self.preprocessing.size}px, {self.device}>")


def load_head(path: str | os.PathLike) -> Head:
    return Head.load(path)


# ------------------------------------------------------------------------------------------
# The whole training run


@dataclass
class TrainResult:
    head: Head
    out_of_fold: OutOfFold
    photos: LabelledPhotos
    groups: np.ndarray
    embedded: Embedded
    confusion: np.ndarray            # K x K, rows true, columns predicted (whole image, OOF)
    seconds: dict


def _preprocessing_dict(model: Model) -> dict:
    p = model.preprocessing
    return {"size": p.size, "crop_fraction": p.crop_fraction, "mean": list(p.mean),
            "std": list(p.std), "policy": p.policy}


def train(model: Model, photos: LabelledPhotos, options: TrainOptions = TrainOptions(), *,
          embedded: Embedded | None = None, progress: bool | None = None,
          groups_file: str | os.PathLike | None = None) -> TrainResult:
    """Embed every photo once, cross-validate holding out whole sources (:mod:`belka.sources`:
    ``groups_file``, sub-folders, cameras, else bursts), choose thresholds, fit the final head
    on all.

    ``embedded`` (from :func:`embed_photos` with the same photos) skips the embedding step.
    """
    from .calibrate import choose_threshold, cross_validated_threshold

    timings = {}
    started = time.perf_counter()
    if embedded is None:
        embedded = embed_photos(model, photos.paths, augment=options.augment,
                                tiling=options.tiling, progress=progress)
    timings["embedding"] = embedded.seconds
    grouping = photos.sources(groups_file=groups_file, embeddings=embedded.whole)
    groups = grouping.ids
    y, labels = photos.y, photos.labels
    t0 = time.perf_counter()
    oof = cross_validate(model, embedded, y, groups, labels, options, progress)
    timings["cross_validation"] = time.perf_counter() - t0

    # report: per-class precision / recall of the whole-image argmax, out of fold
    k = len(labels)
    predicted = np.array([p[0].argmax() for p in oof.probs])
    confusion = np.zeros((k, k), np.int64)
    for t, p in zip(y, predicted):
        confusion[t, p] += 1
    per_class = {}
    for c, label in enumerate(labels):
        tp = confusion[c, c]
        per_class[label] = {
            "photos": int(confusion[c].sum()),
            "sources": len(set(groups[y == c].tolist())),
            "precision": round(float(tp / confusion[:, c].sum()), 4) if confusion[:, c].sum() else None,
            "recall": round(float(tp / confusion[c].sum()), 4) if confusion[c].sum() else None}
    thresholds: dict = {"whole": {}, "tiles": {}}
    gate_report: dict = {}
    modes = [("whole", False)] + ([("tiles", True)] if options.tiling else [])
    for c, label in enumerate(labels):
        positive = y == c
        for mode, tiles in modes:
            scores = oof.scores([c], tiles=tiles)
            t = max(MIN_HEAD_THRESHOLD, choose_threshold(scores[~positive], options.max_false_accept))
            thresholds[mode][label] = round(float(t), 6)
            held = cross_validated_threshold(scores, positive, groups, options.max_false_accept,
                                             folds=options.folds, seed=options.seed,
                                             floor=MIN_HEAD_THRESHOLD)
            gate_report.setdefault(label, {})[mode] = {
                "threshold": thresholds[mode][label],
                "accept_rate": round(float((scores[positive] >= t).mean()), 4),
                "false_accept_rate": round(float((scores[~positive] >= t).mean()), 4),
                "heldout_accept_rate": round(held.heldout_accept_rate, 4),
                "heldout_false_accept_rate": round(held.heldout_false_accept_rate, 4),
                "heldout_refused": _named(photos, scores, positive & ~held.accepted, True),
                "heldout_false_accepts": _named(photos, scores, ~positive & held.accepted, False)}

    t0 = time.perf_counter()
    backbone, prior_mask = _backbone_parts(model, labels)
    from tqdm import tqdm

    with tqdm(total=options.epochs, desc="training", unit="epoch", leave=False,
              disable=(not progress) if progress is not None else None, dynamic_ncols=True) as bar:
        fitted = _fit(backbone, prior_mask, embedded, y, groups, np.arange(len(y)), labels,
                      options, progress=lambda _e: bar.update(1))
    timings["final_fit"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    report = {
        "photos": int(len(y)), "groups": int(len(set(groups.tolist()))),
        "grouping": grouping.kind,
        "folds": int(oof.fold.max() + 1), "classes": per_class,
        "confusion": {"labels": list(labels), "matrix": confusion.tolist()},
        "gate": gate_report, "forwards": embedded.forwards,
        "seconds": {k_: round(v, 2) for k_, v in timings.items()},
        "skipped": [{"path": p, "error": e} for p, e in photos.skipped],
    }
    files = []
    for path, label_index in zip(photos.paths, y):
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        except OSError:
            digest = None
        files.append({"sha256_16": digest, "label": labels[label_index]})
    head = Head(list(labels), fitted.layer, fitted.references.astype(np.float16),
                fitted.reference_labels, fitted.floors,
                {"name": model.name, "weights_sha256": model.weights_sha256,
                 "embedding_dim": int(embedded.whole.shape[1])},
                _preprocessing_dict(model), prior_classes(model, labels), thresholds,
                options.tiling, {"options": options.to_dict(), "files": files}, report)
    return TrainResult(head, oof, photos, groups, embedded, confusion, timings)


def _named(photos: LabelledPhotos, scores: np.ndarray, mask: np.ndarray, ascending: bool,
           ) -> list[dict]:
    """The photos in ``mask`` as ``{"file": "class/name.jpg", "score": s}``, worst first."""
    rows = [{"file": f"{photos.labels[photos.y[i]]}/{Path(photos.paths[i]).name}",
             "score": round(float(scores[i]), 4)} for i in np.flatnonzero(mask)]
    return sorted(rows, key=lambda r: r["score"], reverse=not ascending)


def seen_in_training(head: Head, paths: Iterable[str]) -> list[bool]:
    """Whether each file's content (sha256) is among the head's training photos."""
    known = {f.get("sha256_16") for f in head.training.get("files", [])}
    out = []
    for path in paths:
        try:
            out.append(hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] in known)
        except OSError:
            out.append(False)
    return out


def plot_confusion(confusion: np.ndarray, labels: Sequence[str], path: str | os.PathLike,
                   title: str = "out-of-fold confusion (whole image)") -> Path:
    """The confusion matrix as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=30, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = confusion.max() if confusion.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center",
                    color="white" if confusion[i, j] > top / 2 else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
