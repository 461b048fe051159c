"""Tiling: tile geometry, view batches, score combination, heat-map placement, and the point of
it all: a small object that the whole image misses is found in a tile."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import belka
from belka.errors import UsageError
from belka.gate import Gate
from belka.models.preprocessing import Preprocessing
from belka.tiling import (Box, Tiling, combine, explain_view, place_heatmap, tile_boxes, views,
                          whole_view_box)

skdata = pytest.importorskip("skimage.data")


@pytest.mark.parametrize("height,width,grids", [(900, 900, (4, 9)), (375, 500, (6, 15)),
                                                (1279, 1920, (8, 15))])
def test_tiles_are_square_overlapping_and_cover_the_image(height, width, grids):
    boxes = tile_boxes(height, width, min_tile=112)
    assert len(boxes) == sum(grids)
    start = 0
    for n, count in zip((2, 3), grids):
        level = boxes[start:start + count]
        start += count
        side = level[0].width
        assert side == pytest.approx(min(height, width) / (n - (n - 1) * 0.25), abs=1)
        covered = np.zeros((height, width), bool)
        for b in level:
            assert b.width == b.height == side
            assert 0 <= b.x0 < b.x1 <= width and 0 <= b.y0 < b.y1 <= height
            covered[b.y0:b.y1, b.x0:b.x1] = True
        assert covered.all()
        # neighbours in a row overlap by at least a quarter of a tile (1% slack for rounding)
        row = [b for b in level if b.y0 == level[0].y0]
        for a, b in zip(row, row[1:]):
            assert a.x1 - b.x0 >= 0.24 * side


def test_small_images_get_no_tiles_and_grids_are_configurable():
    assert tile_boxes(108, 86) == []
    # tiles under min_tile (180 px by default) are skipped: a 500 x 375 photo gets the 2 x 3
    # tiles of 214 px but not the 3 x 5 of 150 px; a 451 x 300 one none at all
    assert len(tile_boxes(375, 500)) == 6 and len(tile_boxes(375, 500, min_tile=112)) == 21
    assert tile_boxes(300, 451) == []
    assert len(tile_boxes(300, 300, grids=(2,), overlap=0.5)) == 4
    assert len(tile_boxes(300, 300, grids=(3,), min_tile=200)) == 0
    with pytest.raises(UsageError):
        Tiling(overlap=1.0)
    with pytest.raises(UsageError):
        Tiling(combine="mean")
    assert Tiling.from_dict(Tiling(grids=(2,), combine="noisy-or").to_dict()) == Tiling(
        grids=(2,), combine="noisy-or")


def test_views_start_with_the_usual_whole_image():
    pre = Preprocessing()
    image = skdata.chelsea()
    stack, boxes = views(image, pre)
    assert stack.shape == (1 + len(tile_boxes(*image.shape[:2])), 224, 224, 3)
    assert stack.dtype == np.uint8 and boxes[0] is None and all(isinstance(b, Box) for b in boxes[1:])
    np.testing.assert_array_equal(stack[0], pre.resize(image))
    only, boxes = views(image, pre, None)
    assert only.shape == (1, 224, 224, 3) and boxes == [None]
    # a tile is its box of the image, resized: a flat-coloured box gives a flat-coloured view
    patch = np.zeros((600, 600, 3), np.uint8)
    patch[:343, :343] = (200, 10, 10)
    stack, boxes = views(patch, pre)
    assert boxes[1] == Box(0, 0, 343, 343)
    assert (stack[1][4:-4, 4:-4].reshape(-1, 3) == (200, 10, 10)).all()   # the filter's edge
    assert (stack[-1][4:-4, 4:-4] == 0).all()                               # may blur 1-2 px


def test_combine_max_and_noisy_or():
    scores = np.array([0.1, 0.5, 0.2])
    assert combine(scores, "max") == (0.5, 1)
    value, best = combine(scores, "noisy-or")
    assert value == pytest.approx(1 - 0.9 * 0.5 * 0.8) and best == 1
    with pytest.raises(UsageError):
        combine(scores, "mean")


def test_heatmap_goes_back_where_the_tile_was():
    canvas = place_heatmap(np.ones((7, 7)), Box(10, 20, 30, 50), (100, 80, 3))
    assert canvas.shape == (100, 80)
    assert canvas[20:50, 10:30].min() == pytest.approx(1.0) and canvas.sum() == pytest.approx(600)
    pre = Preprocessing()
    seen = []

    def explain(view):
        seen.append(view.shape)
        return np.ones((7, 7), np.float32)

    image = np.zeros((400, 600, 3), np.uint8)
    heat = explain_view(image, Box(100, 50, 300, 250), explain, pre)
    assert seen == [(224, 224, 3)] and heat[50:250, 100:300].min() == pytest.approx(1.0)
    assert heat.sum() == pytest.approx(200 * 200)
    whole = explain_view(image, None, explain, pre)
    box = whole_view_box(image.shape, pre)            # the centre crop the model saw
    assert box == Box(125, 25, 475, 375)
    assert whole.sum() == pytest.approx(box.width * box.height)


def _paste(background: np.ndarray, obj: np.ndarray, width: int, at: tuple[int, int]) -> tuple[np.ndarray, Box]:
    height = int(round(width * obj.shape[0] / obj.shape[1]))
    small = np.asarray(Image.fromarray(obj).resize((width, height), Image.Resampling.BILINEAR))
    out = background.copy()
    y, x = at
    out[y:y + height, x:x + width] = small
    return out, Box(x, y, x + width, y + height)


@pytest.fixture(scope="module")
def model():
    return belka.load()


@pytest.fixture(scope="module")
def grass() -> np.ndarray:
    texture = np.asarray(Image.fromarray(skdata.grass()).resize((900, 900)))
    return np.repeat(texture[:, :, None], 3, axis=2)


def _inside(box: Box, tile: Box) -> bool:
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return tile.x0 <= cx <= tile.x1 and tile.y0 <= cy <= tile.y1


def test_tiles_find_a_small_cat_the_whole_image_misses(model, grass):
    image, where = _paste(grass, skdata.chelsea()[30:290, 100:380], 160, (600, 120))
    whole = Gate(model, "cat", tiles=False).check_many([image])[0]
    tiled = Gate(model, "cat").check_many([image])[0]
    assert whole.score < 0.05 and whole.views == 1 and whole.tile is None
    assert tiled.score > 0.3 and tiled.views == 14
    assert tiled.tile is not None and _inside(where, tiled.tile)
    assert tiled.to_dict()["tile"] == tiled.tile.to_list()


def test_tiles_find_a_small_real_squirrel(model, grass, photos_dir):
    """A real squirrel photo shrunk to a third of a grass picture: whole image ~0.003, tile
    ~0.23 (measured)."""
    squirrel = belka.images.decode(photos_dir / "squirrel" / "imagen_n02355227_4298_squirrel.jpg")
    image, where = _paste(grass, squirrel, 300, (80, 560))
    whole = Gate(model, "squirrel", tiles=False).check_many([image])[0]
    tiled = Gate(model, "squirrel").check_many([image])[0]
    assert whole.score < 0.02
    assert tiled.score > max(0.1, 10 * whole.score), (whole.score, tiled.score)
    assert _inside(where, tiled.tile)
