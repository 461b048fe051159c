"""The upload gate: "warn the user when the picture is not a squirrel".

The decision sums the probabilities of the allowed classes (a group such as ``squirrel`` or
``cat``, ImageNet class names, or indices; or a head's classes, see :mod:`belka.heads`) and
accepts when the sum reaches the threshold.

By default the gate looks at the whole image *and* at overlapping tiles at higher resolution
(:mod:`belka.tiling`), all in one batched forward, and an image's score is the best view's
(``max``); the result says which tile decided (``tile``, None for the whole image). Small
squirrels in park photos are found that way; it costs 14 forwards for a square photo and 22 for
a 4:3 one instead of 1. ``tiles=False`` looks at the whole image only, as before.

With a head, a view counts only if it is close enough to the head's training photos of an
allowed class (the novelty floor, "none of the above"); with a policy (:mod:`belka.calibrate`)
the allowed classes, threshold and tiling come from a calibration.

Exit codes used by ``belka check``: 0 accept, 3 warn, 2 bad input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from . import images
from .errors import ImageError, UsageError
from .features import forward_features
from .models import labels as _labels
from .models.model import ImageLike, Model, Prediction
from .policy import Policy
from .scores import image_score
from .tiling import DEFAULT_TILING, Box, Tiling, views as tile_views

ACCEPT, WARN = "accept", "warn"

# Whole image, ImageNet classes (tiles=False). On the shared photos P(fox squirrel) >= 0.5
# accepts only 5 of 19 real squirrels, while no cat or other photo (93 of them) scores above
# 0.0033. 0.01 keeps a 3x margin over that and accepts 15 of 19 squirrels.
DEFAULT_THRESHOLD_NO_TILES = 0.01

# With tiles (the default), ImageNet classes: the image's score is its best view's, and the
# best tile of a non-squirrel photo can look a little like a fox squirrel. Re-calibrated on the
# shared photos (19 squirrels, 90 cat/other; bench/gate.py, tiles of at least 180 px): the
# highest non-squirrel scores are 0.026 and 0.025, while 17 of 19 squirrels score >= 0.15 (the
# whole image at 0.01 accepts 15). 0.1 sits between: about 4x above the highest non-squirrel
# and 1.5x below the 17th squirrel. The rule itself (4x the highest non-squirrel), applied with
# one source of the shared photos held out at a time, accepts 17 of 19 squirrels and 0 of 90
# others (bench/gate.py --by-source); neighbour classes, test-time averaging, fewer tiles and
# a logistic model on ImageNet's probabilities did no better held out (bench/gate_ideas.py).
# (With 112 px tiles allowed, Chelsea the cat's 120 px corner
# tile scored 0.079 as PNG and 0.13 as JPEG: small enlarged tiles are noise, see tiling.py.)
DEFAULT_THRESHOLD = 0.1

# With a head, when no calibrated threshold fits (several classes allowed: a head calibrates
# one threshold per class).
DEFAULT_HEAD_THRESHOLD = 0.5


def default_threshold(tiles: bool) -> float:
    """The ImageNet gate's default threshold with or without tiles (see the comments above)."""
    return DEFAULT_THRESHOLD if tiles else DEFAULT_THRESHOLD_NO_TILES


@dataclass(frozen=True)
class CheckResult:
    """The gate's decision on one image."""

    verdict: str                      # "accept" or "warn"
    score: float                      # summed probability of the allowed classes (best view)
    threshold: float
    allowed: str                      # what was allowed, in words ("squirrel")
    predictions: list[Prediction] = field(default_factory=list)  # top-5 of the whole image
    path: str | None = None
    tile: Box | None = None           # the tile that decided; None: the whole image
    views: int = 1                    # forwards spent on this image
    known: bool = True                # False: the head alone would accept, but no view
                                      # resembles its training photos (none of the above)
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
                                      # the whole image's backbone embedding, when computed
    allow_indices: tuple[int, ...] = field(default=(), repr=False, compare=False)
    agreed: bool = True               # False: the head alone would accept, but the base model
                                      # sees no such class in any view (agreement)

    @property
    def accepted(self) -> bool:
        return self.verdict == ACCEPT

    @property
    def message(self) -> str:
        top = self.predictions[0] if self.predictions else None
        guess = f"top guess {top.label} {top.probability:.2f}" if top else "no prediction"
        where = f" in tile {self.tile}" if self.tile is not None else ""
        if self.accepted:
            return (f"looks like a {self.allowed} (score {self.score:.3f} >= {self.threshold:g}"
                    f"{where}; {guess})")
        if not self.known:
            return (f"this does not look like a {self.allowed}: {guess}, but nothing in it "
                    f"resembles the {self.allowed} photos the head was trained on "
                    f"(none of the above; score {self.score:.3f} < {self.threshold:g})")
        if not self.agreed:
            return (f"not sure this is a {self.allowed}: the head says so, but the base model "
                    f"sees no {self.allowed} in any view (score {self.score:.3f} < "
                    f"{self.threshold:g}; a view counts only when both agree)")
        if top is not None and top.index in self.allow_indices:
            return (f"not sure this is a {self.allowed}: the top guess is {top.label}, but only "
                    f"at {top.probability:.2f} (score {self.score:.3f} < {self.threshold:g}"
                    f"{where})")
        return (f"this does not look like a {self.allowed}: {guess} "
                f"(score {self.score:.3f} < {self.threshold:g}{where})")

    def to_dict(self) -> dict:
        out = {"verdict": self.verdict, "score": round(self.score, 6), "threshold": self.threshold,
               "allowed": self.allowed, "predictions": [p.to_dict() for p in self.predictions],
               "tile": self.tile.to_list() if self.tile is not None else None}
        return {"path": self.path, **out} if self.path is not None else out


class Gate:
    """Accept images whose allowed-class probability reaches ``threshold``.

    ``tiles``: True (default) for the whole image plus tiles, False for the whole image only, or
    a :class:`~belka.tiling.Tiling`. ``policy``: a :class:`~belka.policy.Policy` or the path
    of its JSON file; it supplies ``allow``, ``threshold`` and ``tiles`` unless they are given.
    Threshold when none is given: the policy's; else the head's calibrated one for this class
    and tiling; else :data:`DEFAULT_THRESHOLD` (tiles) or :data:`DEFAULT_THRESHOLD_NO_TILES`.
    """

    def __init__(self, model: Model, allow: str | Iterable[str | int] | None = None,
                 threshold: float | None = None, *, tiles: bool | Tiling | None = None,
                 policy=None):
        if policy is not None and not isinstance(policy, Policy):
            policy = Policy.load(policy)
        if policy is not None:
            policy.check_model(model)
            if allow is not None and (model.class_indices(allow)
                                      != model.class_indices(policy.allow)):
                raise UsageError(f"the policy is calibrated for {', '.join(policy.allow)}; "
                                 f"leave out --allow, or calibrate a policy for {allow}")
            allow = policy.allow if allow is None else allow
            tiles = policy.tiles if tiles is None else tiles
        allow = "squirrel" if allow is None else allow
        self.model = model
        self.head = getattr(model, "head", None)
        self.policy = policy
        if isinstance(tiles, Tiling):
            self.tiling: Tiling | None = tiles
        elif tiles is None or tiles:
            self.tiling = (self.head.tiling if self.head is not None and self.head.tiling
                           else DEFAULT_TILING)
        else:
            self.tiling = None
        self.allow = allow
        self.allow_indices = model.class_indices(allow)
        self.allowed = _labels.describe(allow, model.labels)
        if threshold is None and policy is not None:
            threshold = policy.threshold
        if threshold is None and self.head is not None:
            threshold = self.head.threshold_for(self.allow_indices, self.tiling is not None)
            threshold = DEFAULT_HEAD_THRESHOLD if threshold is None else threshold
        self.threshold = (default_threshold(self.tiling is not None) if threshold is None
                          else float(threshold))
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"threshold must be between 0 and 1, got {self.threshold}")

    @property
    def tiles(self) -> bool:
        return self.tiling is not None

    # -- deciding ----------------------------------------------------------------------
    def decide(self, probs: np.ndarray, path: str | None = None) -> CheckResult:
        """A decision from one whole-image probability vector (no tiles, no novelty check)."""
        score = float(probs[self.allow_indices].sum())
        verdict = ACCEPT if score >= self.threshold else WARN
        return CheckResult(verdict, score, self.threshold, self.allowed,
                           self.model.rank(probs, 5), path,
                           allow_indices=tuple(self.allow_indices))

    def decide_views(self, probs: np.ndarray, boxes: Sequence[Box | None],
                     embeddings: np.ndarray | None = None, path: str | None = None) -> CheckResult:
        """A decision from one image's views (whole image first), see the module docstring."""
        sims = floors = prior = None
        method = self.tiling.combine if self.tiling is not None else "max"
        allow = self.allow_indices
        if self.head is not None and embeddings is not None:
            sims, floors = self.head.similarities(embeddings), self.head.floors
            prior = self.head.prior_scores(embeddings, allow)
        score, best = image_score(probs, allow, sims, floors, method, prior)
        verdict = ACCEPT if score >= self.threshold else WARN
        known = agreed = True
        if verdict == WARN and self.head is not None:
            # Why a head refused what its probabilities alone would accept: the backbone's
            # prior does not agree (agreement), or it does but no view is close enough to the
            # allowed class's training photos ("none of the above").
            with_prior = image_score(probs, allow, None, None, method, prior)[0]
            if sims is not None and with_prior >= self.threshold:
                known = False
            elif prior is not None:
                agreed = image_score(probs, allow, None, None, method)[0] < self.threshold
        tile = boxes[best] if best < len(boxes) else None
        return CheckResult(verdict, score, self.threshold, self.allowed,
                           self.model.rank(probs[0], 5), path, tile, len(boxes), known,
                           None if embeddings is None else embeddings[0],
                           tuple(allow), agreed)

    def views(self, image: np.ndarray, resize: str | None = None) -> tuple[np.ndarray, list]:
        """The views the gate runs for one decoded image, and their boxes."""
        return tile_views(image, self.model.preprocessing, self.tiling, resize)

    def check_decoded(self, decoded: Sequence[np.ndarray], paths: Sequence[str | None] | None = None,
                      *, resize: str | None = None) -> list[CheckResult]:
        """Decisions for decoded H x W x 3 uint8 images: every view of every image in one
        batched forward (split into chunks of 32)."""
        if not decoded:
            return []
        stacks, boxes = zip(*(self.views(im, resize) for im in decoded))
        probs, emb = forward_features(self.model, np.concatenate(stacks))
        out, at = [], 0
        for i, (stack, bx) in enumerate(zip(stacks, boxes)):
            n = len(stack)
            out.append(self.decide_views(probs[at:at + n], bx, emb[at:at + n],
                                         paths[i] if paths else None))
            at += n
        return out

    def check_many(self, images_: Sequence[ImageLike], *, resize: str | None = None) -> list[CheckResult]:
        return self.check_decoded([self.model.decode(im) for im in images_], resize=resize)

    def check_paths(self, paths: Sequence[str | os.PathLike], *, batch_size: int = 16,
                    resize: str | None = None, progress: bool | None = None
                    ) -> Iterator[tuple[str, CheckResult | None, str | None]]:
        """(path, result, None) or (path, None, error) for every image file under ``paths``
        (folders walked), in order; unreadable files are reported, not raised."""
        from tqdm import tqdm

        entries = list(images.expand_paths(paths))
        disable = (True if len(entries) <= 4 else None) if progress is None else not progress
        pending: list[tuple[str, np.ndarray]] = []

        def flush():
            if pending:
                results = self.check_decoded([im for _, im in pending], [p for p, _ in pending],
                                             resize=resize)
                for (path, _), result in zip(pending, results):
                    yield path, result, None
                bar.update(len(pending))
                pending.clear()

        with tqdm(total=len(entries), unit="img", disable=disable, leave=False,
                  dynamic_ncols=True) as bar:
            for path, error in entries:
                if error is None:
                    try:
                        pending.append((path, images.decode(path)))
                    except ImageError as err:
                        error = err.message
                if error is not None:
                    yield from flush()
                    bar.update(1)
                    yield path, None, error
                    continue
                if len(pending) >= batch_size:
                    yield from flush()
            yield from flush()
