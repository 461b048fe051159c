"""Sources: which photos come from the same place (one camera, one webcam, one photographer's
set), so that cross-validation holds out whole sources and its figures predict photos from
places the gate has never seen.

A head trained on few photos per place learns the place as much as the animal (a webcam's lawn
scores high even when empty). Cross-validation that lets the same place into training and test
cannot see that, so its figures flatter. Each photo's source is, in this order:

1. the group a ``--groups FILE`` names for it (a CSV of ``path,group`` lines; paths relative to
   the data folder or absolute; a header line ``path,group`` is allowed);
2. its sub-folder inside the class folder (``photos/squirrel/garden-cam/001.jpg`` is source
   ``garden-cam``; the same sub-folder name under another class is the same source, since a
   webcam sees squirrels and empty lawns alike);
3. its camera: EXIF make and model and the day it was taken;
4. its burst (:mod:`belka.bursts`): the least a source can be.

A source named by rules 1-3 is the user's word (or the camera's): bursts only group the photos
that no other rule places.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .bursts import burst_groups
from .errors import UsageError

FEW_SOURCES = 5   # fewer sources of the allowed class than this: the figures are a rough guide
RULES = ("groups file", "sub-folders", "cameras", "bursts")


@dataclass
class Grouping:
    """A group id per photo, and which rule named each photo's source."""

    ids: np.ndarray
    rules: list[str]
    names: list[str] = field(default_factory=list)   # the source's name, per photo

    @property
    def kind(self) -> str:
        """The rule that grouped the photos, or ``mixed (...)`` with the count of each."""
        counts = Counter(self.rules)
        if len(counts) == 1:
            return next(iter(counts))
        return "mixed (" + ", ".join(f"{counts[r]} by {r}" for r in RULES if counts[r]) + ")"

    def count(self, mask: np.ndarray | None = None) -> int:
        ids = self.ids if mask is None else self.ids[np.asarray(mask)]
        return len(set(ids.tolist()))

    @property
    def burst_share(self) -> float:
        """The share of photos whose source is only their burst (nothing said where they came
        from)."""
        return sum(r == "bursts" for r in self.rules) / len(self.rules) if self.rules else 0.0


def read_groups_file(path: str | os.PathLike, root: str | os.PathLike | None) -> dict[str, str]:
    """{resolved photo path: group} from a CSV of ``path,group`` lines."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise UsageError(f"cannot read the groups file {str(file)!r} ({err.strerror})") from None
    out: dict[str, str] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2 or not row[1].strip():
            raise UsageError(f"{file}:{number}: expected 'path,group', got {','.join(row)!r}")
        name, group = row[0].strip(), row[1].strip()
        if number == 1 and (name.lower(), group.lower()) == ("path", "group"):
            continue
        photo = Path(name)
        if not photo.is_absolute() and root is not None:
            photo = Path(root) / photo
        out[os.path.normpath(str(photo))] = group
    if not out:
        raise UsageError(f"the groups file {str(file)!r} names no photo ('path,group' lines)")
    return out


def camera_key(path: str | os.PathLike) -> str | None:
    """``make model YYYY-MM-DD`` from EXIF, or None when the photo does not say."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            make, model = str(exif.get(271, "")).strip("\x00 "), str(exif.get(272, "")).strip("\x00 ")
            when = exif.get_ifd(0x8769).get(36867) or exif.get(306)
    except Exception:          # not readable, no EXIF: the camera is unknown
        return None
    if not (make or model):
        return None
    day = str(when).strip("\x00 ")[:10].replace(":", "-") if when else "undated"
    return " ".join(p for p in (make, model, day) if p)


def subfolder(path: str | os.PathLike, root: str | os.PathLike | None, label: str | None) -> str | None:
    """The first folder between the class folder and the photo, if any."""
    if root is None or label is None:
        return None
    try:
        rel = Path(path).resolve().relative_to((Path(root) / label).resolve())
    except (ValueError, OSError):
        return None
    return rel.parts[0] if len(rel.parts) > 1 else None


def photo_groups(paths: Sequence[str | os.PathLike], *, root: str | os.PathLike | None = None,
                 labels: Sequence[str] | None = None, groups_file: str | os.PathLike | None = None,
                 embeddings: np.ndarray | None = None) -> Grouping:
    """Each photo's source group, by the rules in the module docstring. ``labels`` is each
    photo's class folder name (for sub-folders); ``embeddings`` help find bursts."""
    named = read_groups_file(groups_file, root) if groups_file is not None else {}
    bursts = burst_groups(paths, embeddings)
    keys: list[str] = []
    rules: list[str] = []
    names: list[str] = []
    used_file = 0
    for i, path in enumerate(paths):
        label = labels[i] if labels is not None else None
        if (source := named.get(os.path.normpath(str(path)))) is not None:
            used_file += 1
            rule = "groups file"
        elif (source := subfolder(path, root, label)) is not None:
            rule = "sub-folders"
        elif (source := camera_key(path)) is not None:
            rule = "cameras"
        else:
            source, rule = f"burst {bursts[i]}", "bursts"
        keys.append(f"{rule}:{source}")
        rules.append(rule)
        names.append(source)
    if named and not used_file:
        raise UsageError("the groups file names none of these photos: write their paths as "
                         "they are under the data folder (e.g. squirrel/001.jpg)")
    index = {key: n for n, key in enumerate(dict.fromkeys(keys))}
    ids = np.array([index[k] for k in keys], dtype=np.int64)
    return Grouping(ids, rules, names)


def few_sources_warning(grouping: Grouping, positive: np.ndarray, allowed: str) -> str | None:
    """A sentence when the allowed class comes from fewer than FEW_SOURCES sources."""
    n = grouping.count(positive)
    if n >= FEW_SOURCES:
        return None
    return (f"the {allowed} photos come from only {n} source(s) (grouped by {grouping.kind}): "
            "the held-out figures hold out whole sources, but with this few they predict photos "
            f"from new places only roughly. Add {allowed} photos from {FEW_SOURCES}+ places, in "
            "a sub-folder per place (or name the places with --groups FILE)")


def bursts_only_warning(share: float) -> str | None:
    """A sentence when most photos were grouped by bursts only: their places are unknown, so
    held-out folds may hold a place's other photos, and the figures flatter."""
    if share <= 0.5:
        return None
    return (f"{share:.0%} of the photos were grouped by bursts only (no sub-folder per place, "
            "--groups file or camera EXIF said where they came from): photos of one place may be "
            "in training and in test, and the held-out figures flatter. On the shared photos "
            "burst folds reported 95% of squirrels for the head where leaving each source out "
            "gave 89% (21% before agreement). Put each place's photos in their own sub-folder, "
            "or name the places with --groups FILE")
