"""What a bulk scan computes for each file: the task (classify, check, embed, or training views),
split into a cheap, model-free *prepare* step (read, hash, decode, resize, cut tiles) and a
*score* step that holds the model (one engine per process or Ray actor).

The split is what lets the Ray runner decode in plain parallel tasks and score in a pool of
actors; the local runner runs the same two steps in a thread pool and the calling thread.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import images
from ..errors import BelkaError, UsageError
from .sources import read_bytes

KINDS = ("classify", "check", "embed", "views")
TASKS = ("classify", "check", "embed")          # what `belka scan --task` offers


def pipeline_draft_default() -> bool:
    """The decode choice of :func:`belka.pipeline.iter_predictions` (reduced-scale JPEG draft
    decoding or every pixel): bulk scans follow whatever the pipeline does by default."""
    from ..pipeline import iter_predictions

    return bool(inspect.signature(iter_predictions).parameters["draft"].default)


@dataclass(frozen=True)
class Task:
    """A picklable description of the work, from which each process (or Ray actor) loads its
    own model once. ``backend`` is the inference engine (auto, onnx, torch); ``threads`` the
    ONNX Runtime intra-op threads of each scorer (None: the engine's default)."""

    kind: str = "classify"
    model: str | None = "efficientnet_lite0"
    weights: str | None = None
    head: str | None = None
    backend: str | None = None
    resize: str | None = None
    top: int = 5
    draft: bool | None = None          # None: the pipeline's default
    sha256: bool = False
    allow: Any = None
    threshold: float | None = None
    tiles: bool | None = None
    policy: Any = None                 # a path or a belka.policy.Policy (picklable)
    augment: bool = True               # "views" only: mirror and corner crops too
    view_tiles: bool = True            # "views" only: embed the tiles too
    threads: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"unknown task {self.kind!r}; choose one of {', '.join(TASKS)}")

    @property
    def decodes_draft(self) -> bool:
        """Whether large JPEGs are decoded at a reduced scale: only classify and embed may
        (the gate and training always decode every pixel, as `belka check` does)."""
        if self.kind not in ("classify", "embed"):
            return False
        return pipeline_draft_default() if self.draft is None else bool(self.draft)

    def settings(self) -> dict:
        """What must match for a rerun to resume into the same output (JSON-able)."""
        policy = self.policy
        if policy is not None and not isinstance(policy, str):
            policy = getattr(policy, "to_dict", lambda: repr(policy))()
        return {"task": self.kind, "model": self.model, "weights": self.weights,
                "head": self.head, "resize": self.resize, "top": self.top,
                "draft": self.decodes_draft, "sha256": self.sha256,
                "allow": self.allow if isinstance(self.allow, (str, type(None))) else list(self.allow),
                "threshold": self.threshold, "tiles": self.tiles, "policy": policy}

    def load_model(self):
        import belka

        model = belka.load(self.model if (self.model or not self.head) else None,
                           weights=self.weights, head=self.head, engine=self.backend,
                           progress=False)
        if self.threads:
            from ..engine import OnnxEngine, make_engine

            if model.engine_kind != "torch":
                made = make_engine(model, model.engine_kind, threads=self.threads)
                if isinstance(made, OnnxEngine):
                    model.engine = made
        return model

    def scorer(self, model=None) -> "Scorer":
        return Scorer(self, self.load_model() if model is None else model)


# -- prepare: no model, only its preprocessing ------------------------------------------


@dataclass
class Prepared:
    """One file, read and cut into the views the scorer runs (or the error that stopped it)."""

    path: str
    size: int | None = None
    sha256: str | None = None
    error: str | None = None
    views: np.ndarray | None = None            # V x S x S x 3 uint8
    boxes: list = field(default_factory=list)  # per view: Box or None (the whole image)
    n_aug: int = 0                             # "views": trailing augmentation views


@dataclass(frozen=True)
class Preparer:
    """The model-free half of a task: everything needed to turn a file into views. Built once
    on the driver from a loaded model, then shipped to decode threads or Ray tasks."""

    kind: str
    preprocessing: Any
    policy: str
    tiling: Any = None
    draft_to: tuple[int, int] | None = None
    sha256: bool = False
    augment: bool = False

    @classmethod
    def of(cls, task: Task, model, gate=None) -> "Preparer":
        from ..models.preprocessing import draft_size
        from ..tiling import DEFAULT_TILING

        prep = model.preprocessing
        policy = task.resize or prep.policy
        tiling = None
        if task.kind == "check":
            tiling = gate.tiling
        elif task.kind == "views" and task.view_tiles:
            tiling = DEFAULT_TILING
        return cls(task.kind, prep, policy, tiling,
                   draft_size(prep, policy) if task.decodes_draft else None, task.sha256,
                   task.kind == "views" and task.augment)

    def __call__(self, path: str) -> Prepared:
        out = Prepared(path)
        try:
            data = read_bytes(path)
            out.size = len(data)
            if self.sha256:
                out.sha256 = hashlib.sha256(data).hexdigest()
            if self.kind in ("classify", "embed"):
                # pipeline.load_resized's decode, from the bytes already read
                out.views = self.preprocessing.resize(
                    images.decode(data, name=path, draft=self.draft_to), self.policy)[np.newaxis]
                out.boxes = [None]
            else:
                from ..tiling import views as tile_views

                image = images.decode(data, name=path)
                out.views, out.boxes = tile_views(image, self.preprocessing, self.tiling,
                                                  self.policy)
                if self.augment:
                    from ..heads.embed import augment_views

                    extra = augment_views(image, self.preprocessing, out.views[0])
                    out.views = np.concatenate([out.views, extra])
                    out.n_aug = len(extra)
        except BelkaError as exc:
            out.error, out.views = exc.message, None
        except OSError as exc:
            out.error, out.views = f"cannot read: {exc}", None
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a long scan
            out.error, out.views = f"unexpected error: {type(exc).__name__}: {exc}", None
        return out


# -- score: holds the model -------------------------------------------------------------


class Scorer:
    """Runs one batch of prepared files through the model and returns their rows."""

    def __init__(self, task: Task, model):
        from ..gate import Gate

        self.task = task
        self.model = model
        self.gate = (Gate(model, allow=task.allow, threshold=task.threshold, tiles=task.tiles,
                          policy=task.policy) if task.kind == "check" else None)
        self.preparer = Preparer.of(task, model, self.gate)
        self.busy = 0.0                 # seconds spent in the model

    def score(self, batch: Sequence[Prepared]) -> list[dict]:
        from ..features import forward_features

        good = [p for p in batch if p.error is None]
        started = time.perf_counter()
        probs = emb = None
        if good:
            stack = np.concatenate([p.views for p in good])
            if self.task.kind == "classify":
                probs = self.model.probabilities_from_batch(stack)
            elif self.task.kind == "embed":
                probs, emb = self.model.embed_batch(stack)
            else:
                probs, emb = forward_features(self.model, stack)
        self.busy += time.perf_counter() - started
        rows, at = [], 0
        for p in batch:
            row = {"path": p.path, "size": p.size, "sha256": p.sha256, "error": p.error}
            if p.error is None:
                n = len(p.views)
                row.update(self._row(p, probs[at:at + n], None if emb is None else emb[at:at + n]))
                at += n
            rows.append(row)
        return rows

    def _row(self, p: Prepared, probs: np.ndarray, emb: np.ndarray | None) -> dict:
        kind = self.task.kind
        if kind == "views":
            n_tiles = len(p.views) - 1 - p.n_aug
            return {"embeddings": np.ascontiguousarray(emb, np.float32), "n_tiles": n_tiles,
                    "n_aug": p.n_aug, "boxes": [b.to_list() for b in p.boxes if b is not None]}
        if kind == "check":
            result = self.gate.decide_views(probs, p.boxes, emb, p.path)
            top = self.model.rank(probs[0], self.task.top)
            return {**_top(top), "verdict": result.verdict, "score": result.score,
                    "threshold": result.threshold, "known": result.known,
                    "box": None if result.tile is None else [int(v) for v in result.tile.to_list()],
                    "views": result.views, "allowed": result.allowed}
        row = _top(self.model.rank(probs[0], self.task.top))
        if kind == "embed":
            row["embedding"] = np.asarray(emb[0], np.float32)
        return row


def _top(predictions) -> dict:
    return {"labels": [p.label for p in predictions],
            "indices": [int(p.index) for p in predictions],
            "probabilities": [float(p.probability) for p in predictions]}


# -- moving prepared files between Ray stages (Arrow columns, no pickled arrays) ------------


def prepared_to_columns(items: Sequence[Prepared]) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("path", "size", "sha256", "error", "views",
                                              "n_views", "side", "boxes", "n_aug")}
    for p in items:
        cols["path"].append(p.path)
        cols["size"].append(p.size)
        cols["sha256"].append(p.sha256)
        cols["error"].append(p.error)
        cols["views"].append(None if p.views is None else p.views.tobytes())
        cols["n_views"].append(0 if p.views is None else len(p.views))
        cols["side"].append(0 if p.views is None else p.views.shape[1])
        cols["boxes"].append(json.dumps([None if b is None else b.to_list() for b in p.boxes]))
        cols["n_aug"].append(p.n_aug)
    return cols


def prepared_from_columns(cols: dict[str, list]) -> list[Prepared]:
    from ..tiling import Box

    out = []
    for i, path in enumerate(cols["path"]):
        views = cols["views"][i]
        n, side = cols["n_views"][i], cols["side"][i]
        arr = (None if views is None else
               np.frombuffer(views, np.uint8).reshape(n, side, side, 3))
        boxes = [None if b is None else Box(*b) for b in json.loads(cols["boxes"][i])]
        out.append(Prepared(path, cols["size"][i], cols["sha256"][i], cols["error"][i], arr,
                            boxes, cols["n_aug"][i]))
    return out
