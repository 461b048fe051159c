"""Explaining many images: explain_many over files and folders, and `belka explain` with
several files or a folder (-o DIR: one PNG per image, index.json, --grid contact sheet), and
`belka explain --compare DIR`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import belka
from belka.cli import main
from belka.explain import explain, explain_many, map_statistics

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def model():
    return belka.load()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    (root / "cat").mkdir()
    (root / "other").mkdir()
    Image.fromarray(skdata.chelsea()).save(root / "cat" / "chelsea.jpg", quality=92)
    Image.fromarray(skdata.coffee()).save(root / "other" / "coffee.png")
    Image.fromarray(skdata.astronaut()[::2, ::2]).save(root / "other" / "chelsea.png")  # same stem
    (root / "other" / "broken.jpg").write_bytes(b"not a picture")
    return root


def test_explain_many_equals_one_at_a_time_and_records_bad_files(model, folder):
    calls = []
    items = explain_many(model, [folder], progress=lambda done, total: calls.append((done, total)),
                         batch_size=2)
    names = [Path(i.source).name for i in items]
    assert names == ["chelsea.jpg", "broken.jpg", "chelsea.png", "coffee.png"]
    assert [i.ok for i in items] == [True, False, True, True]
    assert "not an image" in items[1].error
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    for item in items:
        if item.ok:
            alone = explain(model, item.source)
            assert item.explanation.indices == alone.indices
            np.testing.assert_allclose(item.explanation.heatmap, alone.heatmap, atol=1e-5)
    record = items[0].to_dict()
    assert record["path"].endswith("chelsea.jpg") and record["indices"][0] in range(281, 286)
    stats = record["stats"]
    assert set(stats) == {"peak_xy", "centroid_xy", "mean", "area", "spread"}
    assert 0 <= stats["mean"] <= 1 and 0 <= stats["area"] <= 1


def test_explain_many_targets_per_image_and_errors(model, folder):
    files = [folder / "cat" / "chelsea.jpg", folder / "other" / "coffee.png"]
    items = explain_many(model, files, target=["cat", 967])
    assert items[0].explanation.label == "cat" and items[1].explanation.indices == (967,)
    with pytest.raises(belka.BelkaError, match="2 images"):
        explain_many(model, files, target=["cat"])
    with pytest.raises(belka.BelkaError, match="not an image"):
        explain_many(model, [folder / "other" / "broken.jpg"], on_error="raise")
    with pytest.raises(belka.BelkaError, match="no such file"):
        explain_many(model, [folder / "missing.jpg"])


def test_map_statistics_of_a_known_map(model):
    e = explain(model, skdata.chelsea())
    e.heatmap = np.zeros((10, 20), np.float32)
    e.heatmap[2:4, 10:14] = 1.0
    stats = map_statistics(e)
    assert stats["area"] == pytest.approx(8 / 200)
    assert stats["centroid_xy"] == pytest.approx([12 / 20, 3 / 10])
    assert stats["peak_xy"] == pytest.approx([10.5 / 20, 2.5 / 10])


def test_cli_explains_a_folder_into_a_folder(folder, tmp_path):
    out = tmp_path / "maps"
    r = CliRunner().invoke(main, ["explain", str(folder), "-o", str(out), "--grid"])
    assert r.exit_code == 2, r.output                        # one file could not be read
    assert "broken.jpg" in r.stderr and "Traceback" not in r.output
    index = json.loads((out / "index.json").read_text())
    assert index["count"] == 4 and index["failed"] == 1 and index["layer"] == "top_activation"
    written = sorted(p.name for p in out.iterdir())
    assert written == ["chelsea-2.png", "chelsea.png", "coffee.png", "contact_sheet.png",
                       "index.json"]
    ok = [i for i in index["items"] if "error" not in i]
    assert [Path(i["output"]).name for i in ok] == ["chelsea.png", "chelsea-2.png", "coffee.png"]
    for item in ok:
        with Image.open(item["output"]) as picture:
            assert picture.size == tuple(reversed(item["size"]))
        assert {"label", "score", "probability", "stats"} <= set(item)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]     # no temporary files left


def test_cli_several_files_json_lines_and_single_file_unchanged(folder, tmp_path):
    files = [str(folder / "cat" / "chelsea.jpg"), str(folder / "other" / "coffee.png")]
    r = CliRunner().invoke(main, ["explain", *files, "-o", str(tmp_path / "two"), "--json",
                                  "--method", "layercam"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["method"] for line in lines] == ["layercam", "layercam"]
    r = CliRunner().invoke(main, ["explain", files[0], "-o", str(tmp_path / "one.png")])
    assert r.exit_code == 0 and (tmp_path / "one.png").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["-o", "PICTURE.png"], "images need a folder"),
    ([], "missing -o"),
    (["-o", "DIR", "--metrics"], "--metrics is for one image"),
])
def test_cli_batch_mistakes_are_one_line(folder, tmp_path, args, fragment):
    args = [a.replace("PICTURE", str(tmp_path / "p")).replace("DIR", str(tmp_path / "d"))
            for a in args]
    r = CliRunner().invoke(main, ["explain", str(folder), *args])
    assert r.exit_code == 2 and fragment in r.stderr and "Traceback" not in r.output


def test_cli_compare_ranks_methods_on_a_labelled_folder(folder, tmp_path):
    labelled = tmp_path / "labelled"
    (labelled / "cat").mkdir(parents=True)
    shutil.copy(folder / "cat" / "chelsea.jpg", labelled / "cat")
    Image.fromarray(skdata.chelsea()[:, ::-1].copy()).save(labelled / "cat" / "mirrored.jpg")
    out = tmp_path / "compare.json"
    r = CliRunner().invoke(main, ["explain", "--compare", str(labelled), "--methods",
                                  "gradcam", "--limit", "1", "--sanity", "1",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    table = json.loads(out.read_text())
    assert table["images"] == 1 and table["targets"] == {"cat": "cat"}
    rows = {row["method"]: row for row in table["methods"]}
    assert set(rows) == {"gradcam", "random"} and rows["gradcam"]["rank"] == 1.0
    assert rows["gradcam"]["insertion"] > rows["random"]["insertion"]
    assert rows["gradcam"]["sanity"] is not None and rows["random"]["sanity"] is None
    assert "| gradcam |" in r.stdout and "sanity" in r.stdout
    bad = tmp_path / "unlabelled"
    (bad / "not a class").mkdir(parents=True)
    shutil.copy(folder / "cat" / "chelsea.jpg", bad / "not a class")
    r = CliRunner().invoke(main, ["explain", "--compare", str(bad)])
    assert r.exit_code == 2 and "names no class" in r.stderr


def test_engine_fast_path_equals_pytorch_gradcam(model, folder):
    """Batches run Grad-CAM at top_activation on the engine (ONNX Runtime: one forward-only run
    that also returns the feature map); the maps equal PyTorch's autograd Grad-CAM to 1e-5."""
    from belka.engine import OnnxEngine

    model.engine = OnnxEngine(model)                 # exported once per test session
    torch_model = belka.load(engine="torch")
    files = [folder / "cat" / "chelsea.jpg", folder / "other" / "coffee.png",
             folder / "other" / "chelsea.png"]
    fast = explain_many(model, files, target=[282, "espresso", None])
    slow = explain_many(torch_model, files, target=[282, "espresso", None], fast=False)
    for f, s in zip(fast, slow):
        f, s = f.explanation, s.explanation
        assert f.details["fast_path"] and not s.details["fast_path"] and f.indices == s.indices
        np.testing.assert_allclose(f.raw, s.raw, atol=1e-5 * float(np.abs(s.raw).max()), rtol=0)
        np.testing.assert_allclose(f.heatmap, s.heatmap, atol=1e-5, rtol=0)
