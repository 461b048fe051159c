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
