"""Cross-validation: every photo scored by a head that never saw its source (grouped folds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..models.model import Model
from ..scores import image_score
from ..thresholds import fold_splits
from .embed import Embedded
from .fit import TrainOptions, _backbone_parts, _fit
from .head import prior_classes, prior_indices


@dataclass
class OutOfFold:
    """Each photo's scores from a head that never saw its source (or burst)."""

    probs: list[np.ndarray]          # per photo: V x K (whole first, then tiles)
    similarities: list[np.ndarray]   # per photo: V x K
    floors: list[np.ndarray]         # per photo: the floors of the head that scored it
    fold: np.ndarray                 # per photo
    backbone: list[np.ndarray] | None = None   # per photo: V x P, ImageNet probabilities of
    prior_columns: list[int] | None = None     # ... these backbone classes (all priors' union)
    prior: dict | None = None                  # head label -> its backbone classes
    labels: Sequence[str] = ()
    agreement: bool = False

    def scores(self, allow: Sequence[int], tiles: bool = True, novelty: bool = True,
               method: str = "max", agreement: bool | None = None) -> np.ndarray:
        """Each photo's image score for ``allow``, as the gate of the final head computes it
        (``agreement`` None: as the options said)."""
        agreement = self.agreement if agreement is None else agreement
        indices = (prior_indices(self.prior or {}, self.labels, allow)
                   if agreement and self.backbone is not None else None)
        columns = ([self.prior_columns.index(i) for i in indices]
                   if indices is not None else None)
        out = []
        for k, (p, s, f) in enumerate(zip(self.probs, self.similarities, self.floors)):
            prior = self.backbone[k][:, columns].sum(axis=1) if columns is not None else None
            if not tiles:
                p, s, prior = p[:1], s[:1], None if prior is None else prior[:1]
            out.append(image_score(p, allow, s if novelty else None, f if novelty else None,
                                   method, prior)[0])
        return np.array(out)


def cross_validate(model: Model, embedded: Embedded, y: np.ndarray, groups: np.ndarray,
                   labels: Sequence[str], options: TrainOptions, progress: bool | None = None,
                   ) -> OutOfFold:
    """Out-of-fold probabilities and similarities for every photo (see :class:`OutOfFold`)."""
    from tqdm import tqdm

    backbone, prior_mask = _backbone_parts(model, labels)
    prior = prior_classes(model, labels)
    columns = sorted({i for indices in prior.values() for i in indices})
    n = len(y)
    probs: list = [None] * n
    sims: list = [None] * n
    priors: list = [None] * n
    floors: list = [None] * n
    fold_of = np.zeros(n, np.int64)
    splits = fold_splits(y, groups, options.folds, options.seed)
    with tqdm(total=len(splits), desc="cross-validating", unit="fold", leave=False,
              disable=(not progress) if progress is not None else None, dynamic_ncols=True) as bar:
        for k, (train_rows, test_rows) in enumerate(splits):
            fitted = _fit(backbone, prior_mask, embedded, y, groups, train_rows, labels, options)
            for i in test_rows:
                views = embedded.views(i, tiles=True)
                probs[i], sims[i] = fitted.score(views)
                priors[i] = fitted.layer.backbone_probabilities(views)[:, columns]
                floors[i] = fitted.floors
                fold_of[i] = k
            bar.update(1)
    return OutOfFold(probs, sims, floors, fold_of, priors, columns, prior, list(labels),
                     options.agreement)
