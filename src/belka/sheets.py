"""Contact sheets: the gate's mistakes as one picture, each photo with the view that decided.

``belka evaluate --sheet mistakes.png`` draws every false accept and every refused photo of the
allowed class as a thumbnail with its score, the deciding tile outlined (a tile that let a cat
through is the first thing to look at), and its file name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import images
from .files import write_atomic

THUMB = 220                      # thumbnail side, pixels
CAPTION = 40                     # caption height under each thumbnail
COLOURS = {"false accept": (179, 38, 30), "refused": (179, 89, 0)}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def contact_sheet(entries: Sequence[dict], out: str | os.PathLike, *, columns: int = 5,
                  title: str = "") -> Path:
    """Write a PNG of ``entries`` (dicts with ``path``, ``score``, ``tile`` [x0, y0, x1, y1] or
    None, and ``kind``: "false accept" or "refused") and return its path. An empty list still
    gives a sheet that says there was nothing to show."""
    columns = max(1, min(columns, len(entries) or 1))
    rows = max(1, -(-len(entries) // columns))
    head = 36 if title else 0
    sheet = Image.new("RGB", (columns * THUMB, head + rows * (THUMB + CAPTION)), (250, 250, 247))
    draw = ImageDraw.Draw(sheet)
    small, big = _font(13), _font(18)
    if title:
        draw.text((8, 8), title, fill=(34, 34, 34), font=big)
    if not entries:
        draw.text((8, head + 8), "no mistakes", fill=(27, 127, 59), font=big)
    for n, entry in enumerate(entries):
        x, y = (n % columns) * THUMB, head + (n // columns) * (THUMB + CAPTION)
        colour = COLOURS.get(entry.get("kind", ""), (80, 80, 80))
        try:
            pixels = images.decode(entry["path"])
        except Exception:  # the file went away or broke since it was scored
            draw.text((x + 8, y + 8), "unreadable", fill=colour, font=small)
            continue
        h, w = pixels.shape[:2]
        scale = (THUMB - 8) / max(h, w)
        thumb = Image.fromarray(pixels).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                               Image.Resampling.BILINEAR)
        ox, oy = x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2
        sheet.paste(thumb, (ox, oy))
        draw.rectangle([x + 1, y + 1, x + THUMB - 2, y + THUMB - 2], outline=colour, width=2)
        tile = entry.get("tile")
        if tile:
            x0, y0, x1, y1 = (np.asarray(tile, dtype=float) * scale).tolist()
            draw.rectangle([ox + x0, oy + y0, ox + x1 - 1, oy + y1 - 1], outline=(255, 255, 255),
                           width=3)
            draw.rectangle([ox + x0 - 1, oy + y0 - 1, ox + x1, oy + y1], outline=colour, width=1)
        where = "tile" if tile else "whole"
        draw.text((x + 6, y + THUMB + 2), f"{entry.get('kind', '')} · {entry['score']:.3f} ({where})",
                  fill=colour, font=small)
        name = Path(entry["path"]).name
        draw.text((x + 6, y + THUMB + 20), name if len(name) <= 30 else name[:27] + "...",
                  fill=(60, 60, 60), font=small)

    path = Path(out)
    write_atomic(path, lambda stream: sheet.save(stream, "PNG"))
    return path
