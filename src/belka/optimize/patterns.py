"""Style pictures drawn with NumPy and Pillow, so style transfer has styles to show without
shipping anyone's painting: ``strokes`` (short brush strokes in blues and yellows along a
swirling flow field) and ``mosaic`` (stained glass: coloured cells with dark lead lines).
``belka style photo.jpg strokes -o out.png`` uses them by name."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

NAMES = ("strokes", "mosaic")


def strokes(size: int = 512, seed: int = 0) -> np.ndarray:
    """Brush strokes (H x W x 3 uint8): 9,000 short thick lines, each turned along a smooth
    flow field, coloured from a night-sky palette with a little noise."""
    rng = np.random.default_rng(seed)
    palette = np.array([(18, 38, 96), (36, 74, 160), (64, 122, 200), (240, 200, 60),
                        (250, 232, 150), (20, 90, 110), (230, 240, 250)], dtype=np.float64)
    weights = np.array([.22, .22, .18, .12, .08, .1, .08])
    image = Image.new("RGB", (size, size), (24, 48, 110))
    draw = ImageDraw.Draw(image)
    k = size / 512
    for _ in range(int(9000 * k * k)):
        x, y = rng.uniform(0, size, 2)
        a = (np.sin(x / size * 6.0) * 1.6 + np.cos(y / size * 5.0) * 1.6
             + np.sin((x + y) / size * 9) * 0.5)
        half = rng.uniform(8, 22) * k
        width = max(1, int(rng.integers(3, 7) * k))
        color = palette[rng.choice(len(palette), p=weights)] + rng.normal(0, 12, 3)
        color = tuple(int(v) for v in np.clip(color, 0, 255))
        draw.line([(x - half * np.cos(a), y - half * np.sin(a)),
                   (x + half * np.cos(a), y + half * np.sin(a))], fill=color, width=width)
    return np.asarray(image).copy()


def mosaic(size: int = 512, seed: int = 1) -> np.ndarray:
    """Stained glass (H x W x 3 uint8): 90 Voronoi cells in six glass colours, softly shaded,
    with dark lines where two cells meet."""
    rng = np.random.default_rng(seed)
    n = 90
    points = rng.uniform(0, size, (n, 2))
    glass = np.array([(200, 40, 40), (240, 170, 30), (30, 110, 180), (40, 150, 80),
                      (230, 220, 200), (120, 50, 140)], dtype=np.float64)
    colors = glass[rng.integers(0, len(glass), n)] + rng.normal(0, 15, (n, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.empty((size, size, n), np.float32)
    for i, (px, py) in enumerate(points):
        dist[..., i] = (xx - px) ** 2 + (yy - py) ** 2
    nearest = np.partition(dist, 1, axis=-1)[..., :2]
    cell = dist.argmin(-1)
    lead = (np.sqrt(nearest.max(-1)) - np.sqrt(nearest.min(-1))) < 4 * size / 512
    shade = 0.85 + 0.15 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    out = np.clip(colors[cell], 0, 255) * shade[..., None]
    out[lead] = (25, 20, 18)
    return out.astype(np.uint8)


def pattern(name: str, size: int = 512) -> np.ndarray:
    """A built-in style picture by name (:data:`NAMES`)."""
    from ..errors import UsageError

    if name not in NAMES:
        raise UsageError(f"no built-in style {name!r}: choose {', '.join(NAMES)}")
    return strokes(size) if name == "strokes" else mosaic(size)
