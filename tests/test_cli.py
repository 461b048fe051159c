"""`belka classify`, `belka check` and friends, as a user runs them: output, JSON schema, exit
codes, and one-line messages (never a traceback) for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from belka.cli import main

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder with a cat, a cup, and a nested folder with a grayscale camera photo."""
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.chelsea()).save(root / "cat.jpg", quality=95)
    Image.fromarray(skdata.coffee()).save(root / "coffee.png")
    (root / "nested").mkdir()
    Image.fromarray(skdata.camera()).save(root / "nested" / "camera.png")
    return root


def huge_png_header(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


def bad_files(root: Path) -> dict[str, tuple[Path, str]]:
    """Every bad-input case, with a fragment its message must contain."""
    good = root / "good.jpg"
    Image.fromarray(skdata.chelsea()).save(good, quality=95)
    data = good.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is a text file, not a photo\n")
    return {
        "missing": (root / "missing.jpg", "no such file"),
        "truncated": (root / "truncated.jpg", "truncated"),
        "empty": (root / "empty.jpg", "empty"),
        "not an image": (root / "notes.jpg", "not an image"),
        "too large": (huge_png_header(root / "bomb.png"), "megapixel"),
    }


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_classify_table(photos):
    result = run("classify", str(photos / "cat.jpg"), "--top", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith("cat.jpg") and len(lines) == 4
    assert "tiger cat" in result.stdout and "(282)" in result.stdout


def test_classify_json_walks_folders(photos):
    result = run("classify", str(photos), "--json", "--top", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}
    assert set(by_name) == {"cat.jpg", "coffee.png", "camera.png"}
    for r in records:
        assert set(r) == {"path", "predictions"} and len(r["predictions"]) == 2
        assert set(r["predictions"][0]) == {"label", "index", "probability"}
    assert by_name["coffee.png"]["predictions"][0]["label"] == "espresso"
    assert by_name["camera.png"]["predictions"][0] == {
        "label": "tripod", "index": 872, "probability": pytest.approx(0.94, abs=0.05)}


@pytest.mark.parametrize("case", ["missing", "truncated", "empty", "not an image", "too large"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    path, fragment = bad_files(tmp_path)[case]
    for verb in (["classify"], ["check", "--allow", "squirrel"]):
        result = run(*verb, str(path))
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("belka:")]
        assert len(errors) == 1 and str(path) in errors[0] and fragment in errors[0].lower()


def test_bad_file_is_skipped_and_reported_in_json(tmp_path):
    files = bad_files(tmp_path)
    result = run("classify", "--json", str(tmp_path / "good.jpg"), str(files["truncated"][0]))
    assert result.exit_code == 2
    good, bad = [json.loads(line) for line in result.stdout.splitlines()]
    assert good["predictions"][0]["index"] in range(281, 286)
    assert set(bad) == {"path", "error"} and "truncated" in bad["error"]


def test_check_exit_codes(photos, tmp_path):
    cat = str(photos / "cat.jpg")
    assert run("check", cat, "--allow", "cat").exit_code == 0
    warned = run("check", cat, "--allow", "squirrel")
    assert warned.exit_code == 3
    assert "this does not look like a squirrel: top guess tiger cat" in warned.stdout
    # Several files: the worst verdict wins (bad input beats warn beats accept).
    assert run("check", cat, str(photos / "coffee.png"), "--allow", "cat").exit_code == 3
    (tmp_path / "bad.jpg").write_bytes(b"")
    assert run("check", cat, str(tmp_path / "bad.jpg"), "--allow", "squirrel").exit_code == 2


def test_check_json_schema(photos):
    result = run("check", str(photos), "--allow", "cat", "--json")
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["cat.jpg"]["verdict"] == "accept" and records["coffee.png"]["verdict"] == "warn"
    assert set(records["cat.jpg"]) == {"path", "verdict", "score", "threshold", "allowed",
                                       "predictions", "tile"}
    assert records["cat.jpg"]["score"] > 0.9


def test_unknown_class_and_model_are_clear(photos):
    result = run("check", str(photos / "cat.jpg"), "--allow", "squirel")
    assert result.exit_code == 2 and "unknown class or group 'squirel'" in result.stderr
    assert "'squirrel'" in result.stderr
    result = run("classify", str(photos / "cat.jpg"), "--model", "resnet9000")
    assert result.exit_code == 2 and "unknown model 'resnet9000'" in result.stderr


def test_help_explains_every_command():
    out = run("--help").output
    for verb in ("classify", "check", "models", "labels", "demo"):
        assert verb in out
    assert "exit code" in run("check", "--help").output.lower()


def test_console_script_runs_without_traceback(tmp_path):
    """The installed `belka` entry point, as a separate process."""
    exe = Path(sys.executable).with_name("belka")
    proc = subprocess.run([str(exe), "classify", str(tmp_path / "nope.jpg")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no such file" in proc.stderr


def test_demo_writes_a_report(tmp_path):
    result = run("demo", "-o", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["predictions"][0]["index"] in range(281, 286)
    assert report["check"]["verdict"] == "warn"
    assert (tmp_path / "demo" / "report.md").read_text().startswith("# belka demo")


def test_an_empty_folder_is_said_not_skipped(tmp_path, photos):
    """`belka classify EMPTY_DIR` printed nothing and exited 0."""
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no photos here")
    for command in (["classify", str(empty)], ["check", str(empty), "--allow", "cat"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2
        assert "no images in this folder" in result.output and "Traceback" not in result.output
    # Beside a folder with photos, the empty one is named and the photos are still classified.
    result = CliRunner().invoke(main, ["classify", str(empty), str(photos), "--json"])
    assert result.exit_code == 2
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert {line["path"] for line in lines if "error" in line} == {str(empty)}
    assert sum("predictions" in line for line in lines) == 3


def test_symlinked_folders_are_followed_once(tmp_path, photos):
    """Class folders (or sub-folders) that are symbolic links are read, and a link loop ends."""
    root = tmp_path / "set"
    root.mkdir()
    (root / "cats").symlink_to(photos, target_is_directory=True)
    (root / "again").symlink_to(photos, target_is_directory=True)   # the same folder twice
    (photos / "loop").symlink_to(photos, target_is_directory=True)  # a link back up
    try:
        from belka import images

        found = images.iter_image_files(root)
        assert sorted(p.name for p in found) == ["camera.png", "cat.jpg", "coffee.png"]
        result = CliRunner().invoke(main, ["classify", str(root), "--json"])
        assert result.exit_code == 0
        assert len(result.output.splitlines()) == 3
    finally:
        (photos / "loop").unlink()
