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
* **agreement** (``TrainOptions.agreement``, default on; ``belka train --no-agreement``): for
  a class with prior features, a view scores ``sqrt(P_head(class) x P_imagenet(its classes))``
  (:func:`belka.scores.agreement`), so a view counts only as much as the head *and* the
  backbone's own classifier see the class in it. A head trained on few places scores tiles of
  those places high whatever they show; the ImageNet classifier does not know the places.
  Leaving one source of the shared photos out at a time, the tiled head gate accepted 17 of 19
  squirrels at 1 false accept in 90 with agreement, and 4 of 19 at 2 without
  (``bench/gate_ideas.py``, docs/training.md). Heads of format 1 (saved before) score without.
* **cross-validation**: k folds (default 5) with :class:`~sklearn.model_selection.StratifiedGroupKFold`,
  grouped by source (:mod:`belka.sources`: ``--groups FILE``, sub-folders, camera, else bursts
  of near-repeats); with ``folds`` at least the number of sources, one source is left out at a
  time. Every photo gets out-of-fold scores from a head that never saw its source; thresholds,
  the report and the confusion matrix come from those.

The ``.belka`` file is one safetensors file: tensors ``weight`` (K x F), ``bias`` (K), ``mean`` and
``scale`` (F, the standardisation), ``prior_mask`` (P x C: which backbone classes make each prior
feature; the backbone's classifier itself is not copied, it comes from the model the head is
attached to), ``references`` (R x D float16) and ``reference_labels`` (R), and in the safetensors
header metadata two strings: ``format`` = ``belka-head`` and ``belka`` = a JSON document with
the format version, belka version, labels, backbone (name, weights sha256, embedding size),
preprocessing, prior classes, novelty floors, thresholds, tiling, training options (with
``agreement``) and report,
and the fingerprint of the head's weights. Loading a head onto a different backbone raises
:class:`~belka.errors.ModelError`.

Where the code is: :mod:`~belka.heads.photos` (labelled photo folders),
:mod:`~belka.heads.embed` (views embedded once), :mod:`~belka.heads.head` (the layer, the
``.belka`` file, the head model), :mod:`~belka.heads.fit` (fitting one head, references and
floors), :mod:`~belka.heads.crossval` (out-of-fold scores), :mod:`~belka.heads.training` (the
whole run and its report), :mod:`~belka.heads.plots`. Scoring views is :mod:`belka.scores`,
choosing thresholds :mod:`belka.thresholds`. Every name is importable from ``belka.heads``.
"""

from __future__ import annotations

from ..features import EMBEDDING_LAYER, classifier_layer, forward_features
from ..gate import DEFAULT_HEAD_THRESHOLD
from ..scores import image_score, view_scores
from ..thresholds import fold_splits
from .crossval import OutOfFold, cross_validate
from .embed import AUGMENT_CROP, Embedded, augment_views, embed_photos
from .fit import NOVELTY_FACTOR, TrainOptions, _backbone_parts, _fit
from .head import (HEAD_FORMAT, HEAD_FORMAT_VERSION, HEAD_SUFFIX, Head, HeadLayer, HeadModel,
                   load_head, prior_classes)
from .photos import OTHER_NAMES, LabelledPhotos, other_class, read_folder
from .plots import plot_confusion
from .training import MIN_HEAD_THRESHOLD, TrainResult, seen_in_training, train

__all__ = [
    "AUGMENT_CROP", "DEFAULT_HEAD_THRESHOLD", "EMBEDDING_LAYER", "HEAD_FORMAT", "HEAD_FORMAT_VERSION",
    "HEAD_SUFFIX", "MIN_HEAD_THRESHOLD", "NOVELTY_FACTOR", "OTHER_NAMES", "Embedded", "Head",
    "HeadLayer", "HeadModel", "LabelledPhotos", "OutOfFold", "TrainOptions", "TrainResult",
    "augment_views", "classifier_layer", "cross_validate", "embed_photos", "fold_splits",
    "forward_features", "image_score", "load_head", "other_class", "plot_confusion",
    "prior_classes", "read_folder", "seen_in_training", "train", "view_scores",
]
# _fit and _backbone_parts are imported above for bench/gate.py, which fits heads itself.
