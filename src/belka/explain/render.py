"""Turning heat maps into pictures: colormaps, overlays and the side-by-side grid.

The default colormap is *turbo* (Mikhailov, "Turbo, An Improved Rainbow Colormap for
Visualization", Google AI Blog, 2019). Its 256-entry table is computed here from the published
degree-5 polynomial approximation of each channel, so no plotting library is needed. The
polynomial is close to the reference table (mean difference 6 of 255 levels) except at the very
dark end, where it is a little greyer (up to 32 levels off in blue at 0).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Published polynomial approximation of turbo: channel(x) = sum_i c_i x^i, x in [0, 1].
_TURBO_POLY = {
    "r": (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943),
    "g": (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604),
    "b": (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973),
}

COLORMAPS = ("turbo", "jet", "hot", "gray")


@lru_cache(maxsize=None)
def colormap_table(name: str = "turbo") -> np.ndarray:
    """A 256 x 3 ``uint8`` lookup table for a colormap name (see :data:`COLORMAPS`)."""
    x = np.linspace(0.0, 1.0, 256)
    if name == "turbo":
        channels = [np.polynomial.polynomial.polyval(x, _TURBO_POLY[c]) for c in "rgb"]
    elif name == "jet":
        # Piecewise-linear jet: blue -> cyan -> yellow -> red.
        channels = [np.clip(1.5 - np.abs(4.0 * x - k), 0.0, 1.0) for k in (3.0, 2.0, 1.0)]
    elif name == "hot":
        channels = [np.clip(3.0 * x, 0, 1), np.clip(3.0 * x - 1.0, 0, 1), np.clip(3.0 * x - 2.0, 0, 1)]
    elif name == "gray":
        channels = [x, x, x]
    else:
        from ..errors import UsageError

        raise UsageError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    table = np.stack([np.clip(c, 0.0, 1.0) for c in channels], axis=1)
    table = np.round(table * 255.0).astype(np.uint8)
    table.setflags(write=False)
    return table


def colorize(heatmap: np.ndarray, colormap: str = "turbo") -> np.ndarray:
    """An H x W map with values in [0, 1] -> H x W x 3 ``uint8`` colours (NaN counts as 0)."""
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    index = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return colormap_table(colormap)[index]


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array[:, :, :3]


def overlay(image, heatmap: np.ndarray, colormap: str = "turbo", alpha: float = 0.5) -> Image.Image:
    """Blend a colourised heat map over an image of the same size: ``(1 - alpha) * image +
    alpha * colour``. A heat map of another size is resized (bilinear) to the image first."""
    if not 0.0 <= alpha <= 1.0:
        from ..errors import UsageError

        raise UsageError(f"alpha must be between 0 and 1, got {alpha}")
    rgb = _as_rgb(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        heat = np.asarray(Image.fromarray(heat).resize(
            (rgb.shape[1], rgb.shape[0]), Image.Resampling.BILINEAR))
    colour = colorize(heat, colormap).astype(np.float32)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def grid(image, heatmap: np.ndarray, caption: str = "", colormap: str = "turbo",
         alpha: float = 0.5, height: int | None = None) -> Image.Image:
    """The image, the colourised heat map and the overlay side by side, with ``caption`` (for
    example the label and probability) written underneath. ``height`` rescales the panels
    (default: the image's own height, at most 512 pixels)."""
    rgb = _as_rgb(image)
    panels = [Image.fromarray(rgb), Image.fromarray(colorize(
        _fit(heatmap, rgb.shape[:2]), colormap)), overlay(rgb, heatmap, colormap, alpha)]
    h, w = rgb.shape[:2]
    height = height or min(h, 512)
    width = max(1, round(w * height / h))
    panels = [p.resize((width, height), Image.Resampling.BILINEAR) for p in panels]
    gap = 6
    font = _font(max(12, height // 18))
    lines = caption.splitlines() or [""]
    line_h = (font.getbbox("Ag")[3] - font.getbbox("Ag")[1]) + 6
    text_h = line_h * len(lines) + 8 if caption else 0
    canvas = Image.new("RGB", (3 * width + 4 * gap, height + 2 * gap + text_h), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(panel, (gap + i * (width + gap), gap))
    if caption:
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(lines):
            draw.text((gap, height + 2 * gap + i * line_h), line, fill=(0, 0, 0), font=font)
    return canvas


def _fit(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape == tuple(shape):
        return heat
    return np.asarray(Image.fromarray(heat).resize((shape[1], shape[0]),
                                                             Image.Resampling.BILINEAR))
