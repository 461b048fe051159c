"""ImageNet class names and named groups of them ("squirrel", "cat", ...).

A *target* is how a user names what they want: a class index, a class name ("fox squirrel"),
or a group name ("squirrel"). :func:`resolve` turns any of them into class indices.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

from ..errors import ModelError


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (index 335 is "fox squirrel")."""
    text = resources.files("belka").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(labels) == 1000, "imagenet_classes.txt must list 1000 classes"
    return labels


def _span(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


# Named groups of ImageNet classes. ImageNet has one squirrel class (335 "fox squirrel"): the
# others people call squirrels (marmot, chipmunk-like rodents) are separate, unrelated classes.
IMAGENET_GROUPS: dict[str, tuple[int, ...]] = {
    "squirrel": (335,),
    "cat": _span(281, 285),                      # tabby, tiger, Persian, Siamese, Egyptian cat
    "big cat": _span(286, 293),                  # cougar ... cheetah
    "dog": _span(151, 268),                      # Chihuahua ... Mexican hairless
    "bird": _span(7, 24) + _span(80, 100) + _span(127, 146),
    "fox": _span(277, 280),
    "bear": _span(294, 297),
}


def resolve(targets: str | int | Iterable[str | int], labels: Sequence[str],
            groups: dict[str, tuple[int, ...]] | None = None) -> list[int]:
    """Class indices for an index, a class name, a group name, or several of them.

    Several may be given as a list or as one comma-separated string ("squirrel,cat").
    Unknown names raise :class:`ModelError` listing close matches.
    """
    groups = IMAGENET_GROUPS if groups is None else groups
    if isinstance(targets, str):
        items: list[str | int] = [t.strip() for t in targets.split(",") if t.strip()]
    elif isinstance(targets, int):
        items = [targets]
    else:
        items = list(targets)
    if not items:
        raise ModelError("no class given: name an ImageNet class, a group or an index")
    lookup: dict[str, int] | None = None      # built only when a class name needs it
    out: list[int] = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isascii() and item.isdigit()):
            index = int(item)
            if not 0 <= index < len(labels):
                raise ModelError(f"class index {index} is out of range 0..{len(labels) - 1}")
            found: Sequence[int] = [index]
        elif item.lower() in groups:
            found = groups[item.lower()]
        elif item.lower() in (lookup := lookup or {n.lower(): i for i, n in enumerate(labels)}):
            found = [lookup[item.lower()]]
        else:
            choices = list(groups) + list(labels)
            close = difflib.get_close_matches(item, choices, n=4, cutoff=0.6)
            hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
            raise ModelError(f"unknown class or group {item!r}.{hint} Groups: "
                             f"{', '.join(groups)}; or any name from `belka labels`.")
        out.extend(i for i in found if i not in out)
    return out


def describe(targets: str | int | Iterable[str | int],
             labels: Sequence[str] | None = None) -> str:
    """A short human name for what was allowed ("squirrel", "tabby or tiger cat"); with
    ``labels``, class indices are named too (335 -> "fox squirrel")."""
    if isinstance(targets, str):
        items: list[str | int] = [t.strip() for t in targets.split(",") if t.strip()]
    elif isinstance(targets, int):
        items = [targets]
    else:
        items = list(targets)

    def name(item: str | int) -> str:
        text = str(item)
        if labels is not None and text.isascii() and text.isdigit() and int(text) < len(labels):
            return labels[int(text)]
        return text

    return " or ".join(name(t) for t in items)
