"""Sources for cross-validation: a groups file, sub-folders per place, EXIF camera and day, else
bursts; whole sources stay in one fold."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from belka import heads
from belka.errors import UsageError
from belka.sources import (FEW_SOURCES, bursts_only_warning, camera_key, few_sources_warning,
                           photo_groups)


def photo(path, colour=(120, 80, 40), exif: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (16, 16), colour)
    if exif:
        data = Image.Exif()
        for tag, value in exif.items():
            data[tag] = value
        image.save(path, "JPEG", exif=data.tobytes())
    else:
        image.save(path, "JPEG")
    return path


def test_subfolders_are_sources_shared_across_classes(tmp_path):
    """A webcam that sees squirrels and empty lawns: one source in both class folders."""
    for name in ("a", "b"):
        photo(tmp_path / "squirrel" / "garden-cam" / f"{name}.jpg")
        photo(tmp_path / "other" / "garden-cam" / f"lawn_{name}.jpg")
        photo(tmp_path / "squirrel" / "park" / f"{name}.jpg")
    photo(tmp_path / "other" / "street.jpg")
    photos = heads.read_folder(tmp_path)
    grouping = photos.sources()
    by_name = {p.replace(str(tmp_path) + "/", ""): g for p, g in zip(photos.paths, grouping.ids)}
    cam = {by_name[k] for k in by_name if "garden-cam" in k}
    park = {by_name[k] for k in by_name if "/park/" in k}
    assert len(cam) == 1 and len(park) == 1 and cam != park
    assert by_name["other/street.jpg"] not in cam | park
    assert grouping.kind == "mixed (6 by sub-folders, 1 by bursts)"
    assert grouping.count(photos.y == photos.labels.index("squirrel")) == 2


def test_a_groups_file_wins_and_is_checked(tmp_path):
    for name in ("a1", "a2", "b1"):
        photo(tmp_path / "squirrel" / f"{name}.jpg")
        photo(tmp_path / "other" / f"{name}.jpg")
    groups = tmp_path / "groups.csv"
    groups.write_text("path,group\nsquirrel/a1.jpg,alice\nsquirrel/a2.jpg,alice\n"
                      "other/a1.jpg,alice\nsquirrel/b1.jpg,bob\n")
    photos = heads.read_folder(tmp_path)
    grouping = photos.sources(groups_file=groups)
    ids = dict(zip((p.replace(str(tmp_path) + "/", "") for p in photos.paths), grouping.ids))
    assert ids["squirrel/a1.jpg"] == ids["squirrel/a2.jpg"] == ids["other/a1.jpg"]
    assert ids["squirrel/b1.jpg"] != ids["squirrel/a1.jpg"]
    assert "3 by groups file" in grouping.kind or grouping.kind.startswith("mixed (4 by groups")
    bad = tmp_path / "bad.csv"
    bad.write_text("squirrel/a1.jpg\n")
    with pytest.raises(UsageError, match="expected 'path,group'"):
        photos.sources(groups_file=bad)
    none = tmp_path / "none.csv"
    none.write_text("elsewhere/x.jpg,alice\n")
    with pytest.raises(UsageError, match="names none of these photos"):
        photos.sources(groups_file=none)


def test_cameras_group_by_make_model_and_day(tmp_path):
    make, model, when = 271, 272, 306
    a = photo(tmp_path / "a.jpg", exif={make: "Acme", model: "Cam 1", when: "2026:05:01 10:00:00"})
    b = photo(tmp_path / "b.jpg", exif={make: "Acme", model: "Cam 1", when: "2026:05:01 17:30:00"})
    c = photo(tmp_path / "c.jpg", exif={make: "Acme", model: "Cam 1", when: "2026:06:12 09:00:00"})
    d = photo(tmp_path / "d.jpg", (10, 200, 10))
    assert camera_key(a) == "Acme Cam 1 2026-05-01" and camera_key(d) is None
    grouping = photo_groups([str(a), str(b), str(c), str(d)])
    assert grouping.ids[0] == grouping.ids[1] != grouping.ids[2]
    assert grouping.rules == ["cameras", "cameras", "cameras", "bursts"]


def test_bursts_group_only_what_no_other_rule_places(tmp_path):
    """The groups file is the user's word; the frames it leaves out fall back to bursts."""
    paths = [photo(tmp_path / f"IMG_{n}.jpg") for n in (1, 2, 3, 4)]
    groups = tmp_path / "g.csv"
    groups.write_text(f"{paths[0]},x\n{paths[1]},y\n")
    grouping = photo_groups([str(p) for p in paths], groups_file=groups)
    assert grouping.rules == ["groups file", "groups file", "bursts", "bursts"]
    assert grouping.ids[0] != grouping.ids[1]
    assert grouping.ids[2] == grouping.ids[3]      # one burst by name (no EXIF, no embeddings)
    assert grouping.burst_share == 0.5
    assert bursts_only_warning(grouping.burst_share) is None       # half is not "most"
    three = photo_groups([str(p) for p in paths], groups_file=None)
    assert three.burst_share == 1.0
    assert "flatter" in bursts_only_warning(three.burst_share)


def test_few_sources_are_warned_about():
    from belka.sources import Grouping

    few = Grouping(np.array([0, 0, 1, 2]), ["bursts"] * 4)
    assert "only 2 source(s)" in few_sources_warning(few, np.array([1, 1, 1, 0], bool), "squirrel")
    many = Grouping(np.arange(FEW_SOURCES + 1), ["sub-folders"] * (FEW_SOURCES + 1))
    assert few_sources_warning(many, np.ones(FEW_SOURCES + 1, bool), "squirrel") is None
