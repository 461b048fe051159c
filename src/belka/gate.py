"""The upload gate: "warn the user when the picture is not a squirrel".

The decision sums the probabilities of the allowed classes (a group such as ``squirrel`` or
``cat``, ImageNet class names, or indices) and accepts when the sum reaches the threshold.
Exit codes used by ``belka check``: 0 accept, 3 warn, 2 bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .errors import UsageError
from .models import labels as _labels
from .models.model import ImageLike, Model, Prediction

ACCEPT, WARN = "accept", "warn"

# ImageNet probabilities are small for small or partly hidden animals: on the shared photos
# P(fox squirrel) >= 0.5 accepts only 5 of 19 real squirrels, while no cat or other photo (93 of
# them) scores above 0.0033. 0.01 keeps a 3x margin over that and accepts 15 of 19 squirrels.
DEFAULT_THRESHOLD = 0.01


@dataclass(frozen=True)
class CheckResult:
    """The gate's decision on one image."""

    verdict: str                      # "accept" or "warn"
    score: float                      # summed probability of the allowed classes
    threshold: float
    allowed: str                      # what was allowed, in words ("squirrel")
    predictions: list[Prediction] = field(default_factory=list)  # top-5, for the message
    path: str | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict == ACCEPT

    @property
    def message(self) -> str:
        top = self.predictions[0] if self.predictions else None
        guess = f"top guess {top.label} {top.probability:.2f}" if top else "no prediction"
        if self.accepted:
            return f"looks like a {self.allowed} (score {self.score:.3f} >= {self.threshold:g}; {guess})"
        return (f"this does not look like a {self.allowed}: {guess} "
                f"(score {self.score:.3f} < {self.threshold:g})")

    def to_dict(self) -> dict:
        out = {"verdict": self.verdict, "score": round(self.score, 6), "threshold": self.threshold,
               "allowed": self.allowed, "predictions": [p.to_dict() for p in self.predictions]}
        return {"path": self.path, **out} if self.path is not None else out


class Gate:
    """Accept images whose allowed-class probability reaches ``threshold``."""

    def __init__(self, model: Model, allow: str | Iterable[str | int] = "squirrel",
                 threshold: float | None = None):
        self.model = model
        self.allow_indices = model.class_indices(allow)
        self.allowed = _labels.describe(allow)
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"threshold must be between 0 and 1, got {self.threshold}")

    def decide(self, probs: np.ndarray, path: str | None = None) -> CheckResult:
        """A decision from one probability vector."""
        score = float(probs[self.allow_indices].sum())
        verdict = ACCEPT if score >= self.threshold else WARN
        return CheckResult(verdict, score, self.threshold, self.allowed,
                           self.model.rank(probs, 5), path)

    def check_many(self, images_: Sequence[ImageLike], *, resize: str | None = None) -> list[CheckResult]:
        probs = self.model.probabilities(list(images_), resize=resize)
        return [self.decide(p) for p in probs]
