"""A *policy*: a calibrated gate setting in a small JSON file (what to allow, the threshold,
tiling on or off, which backbone and head it was measured for, and the measurement).
:mod:`belka.calibrate` makes one; ``Gate(policy=...)`` and ``belka check --policy`` use it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelError, UsageError
from .files import write_atomic

POLICY_FORMAT = "belka-policy"
POLICY_VERSION = 1


@dataclass
class Policy:
    """A calibrated gate setting, saved as JSON."""

    allow: list[str]
    threshold: float
    tiles: bool = True
    max_false_accept: float | None = None
    model: str | None = None
    weights_sha256: str | None = None
    head: str | None = None                  # the head's fingerprint, None for ImageNet labels
    head_labels: list[str] | None = None
    calibration: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        try:
            write_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))
        except OSError as err:
            raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Policy":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{path}: no such policy file") from None
        except (OSError, ValueError) as err:
            raise UsageError(f"{path}: not a belka policy (JSON) file: {err}") from None
        if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
            raise UsageError(f"{path}: not a belka policy file (format must be {POLICY_FORMAT!r})")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            policy = cls(**fields)
            policy.threshold = float(policy.threshold)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{path}: bad policy: {err}") from None
        if not 0.0 <= policy.threshold <= 1.0:
            raise UsageError(f"{path}: threshold must be between 0 and 1")
        return policy

    def check_model(self, model) -> None:
        """Raise unless ``model`` (and its head) is what this policy was calibrated for."""
        head = getattr(model, "head", None)
        if self.head and head is None:
            raise UsageError("this policy was calibrated for a head: pass the same --head "
                             f"(classes {', '.join(self.head_labels or [])})")
        if head is not None and self.head != head.fingerprint:
            raise UsageError("this policy was calibrated for a different head (or for the "
                             "ImageNet classes): calibrate again with this head")
        if self.model and model.name != self.model:
            raise ModelError(f"this policy was calibrated on {self.model}, the model is {model.name}")
        if self.weights_sha256 and model.weights_sha256 and self.weights_sha256 != model.weights_sha256:
            raise ModelError("this policy was calibrated on other weights of "
                             f"{model.name}: calibrate again")
