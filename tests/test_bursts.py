"""Burst groups: near-repeats stay together, a camera roll's numbers alone do not make one burst."""

from __future__ import annotations

import numpy as np
from PIL import Image

from belka import bursts


def test_burst_keys_and_groups():
    assert bursts.burst_key("photos/cjmcdd_squirrel14.jpg") == "cjmcdd_squirrel"
    assert bursts.burst_key("IMG_0042 (2).JPG") == "img"
    assert bursts.burst_key("2024.jpg") == "2024"
    names = [f"cjmcdd_squirrel{i}.jpg" for i in range(1, 15)] + [
        "IMG_0042.jpg", "IMG_0950.jpg", "imagen_n02355227_4298_squirrel.jpg", "sift_squirrel1.jpg"]
    groups = bursts.burst_groups(names)
    assert len(set(groups[:14])) == 1                      # one burst
    assert len(set(groups.tolist())) == 5                  # IMG_0042 and IMG_0950 are apart
    # near-identical embeddings join groups even with unrelated names
    emb = np.eye(4, 8, dtype=np.float32)
    emb[3] = emb[0] + 0.01
    assert bursts.burst_groups(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], emb).tolist() == [0, 1, 2, 0]


def _photo_taken_at(path, when: str, shade: int):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = when                # DateTimeOriginal
    Image.new("RGB", (32, 24), (shade, 90, 40)).save(path, exif=exif)
    return str(path)


def test_camera_roll_numbers_alone_do_not_make_a_burst(tmp_path):
    # IMG_4501..4503 within seconds: one burst; IMG_4504 the next day: apart, although its
    # number is next in line; a file without EXIF keeps to the names-only rule.
    paths = [_photo_taken_at(tmp_path / "IMG_4501.jpg", "2026:05:01 10:00:00", 10),
             _photo_taken_at(tmp_path / "IMG_4502.jpg", "2026:05:01 10:00:01", 20),
             _photo_taken_at(tmp_path / "IMG_4503.jpg", "2026:05:01 10:00:09", 30),
             _photo_taken_at(tmp_path / "IMG_4504.jpg", "2026:05:02 16:30:00", 40)]
    assert bursts.capture_time(paths[1]) - bursts.capture_time(paths[0]) == 1.0
    assert bursts.capture_time(tmp_path / "missing.jpg") is None
    assert bursts.burst_groups(paths).tolist() == [0, 0, 0, 1]
    # without EXIF times, embeddings decide: neighbours join only when they show one scene
    names = ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]
    emb = np.array([[1, 0, 0], [0.9, 0.3, 0], [0, 0, 1]], dtype=np.float32)
    assert float(bursts._unit(emb[0]) @ bursts._unit(emb[1])) > bursts.SAME_SCENE
    assert bursts.burst_groups(names, emb).tolist() == [0, 0, 1]
    assert bursts.burst_groups(names).tolist() == [0, 0, 0]      # names only: together
