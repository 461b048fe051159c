"""belka scan (belka.bulk): Parquet rows against `belka check --json` / `belka classify --json`,
resuming after SIGKILL, the Ray runner against the local one, and train/evaluate on the engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is a dependency: pip install -e .")

from belka import bulk  # noqa: E402
from belka.cli import main  # noqa: E402

PICKS = {"squirrel": 4, "cat": 3, "other": 3}


@pytest.fixture(scope="module")
def folder(photos_dir, tmp_path_factory) -> Path:
    """A few photos of each kind (symlinks, nothing copied) and one file that is not an image."""
    root = tmp_path_factory.mktemp("bulk-photos")
    for label, n in PICKS.items():
        (root / label).mkdir()
        for src in sorted((photos_dir / label).iterdir())[:n]:
            (root / label / src.name).symlink_to(src)
    (root / "other" / "broken.jpg").write_bytes(b"this is not a JPEG")
    return root


@pytest.fixture(scope="module")
def exported():
    """Make the ONNX export once (into the session's cache) so subprocesses and actors reuse it."""
    import belka

    model = belka.load()
    model.engine
    return model


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def json_lines(output: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {r["path"]: r for r in rows}


def table_rows(out: Path) -> dict[str, dict]:
    rows = bulk.read(out).to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a file has more than one row"
    return {r["path"]: r for r in rows}


def test_check_rows_equal_belka_check_json(folder, tmp_path, exported):
    reference = json_lines(invoke("check", str(folder), "--allow", "squirrel", "--json").output)
    result = invoke("scan", str(folder), "-o", str(tmp_path / "out"), "--task", "check",
                    "--allow", "squirrel", "--sha256")
    assert result.exit_code == 0, result.output
    rows = table_rows(tmp_path / "out")
    assert set(rows) == set(reference) and len(rows) == sum(PICKS.values()) + 1
    verdicts = set()
    for path, ref in reference.items():
        row = rows[path]
        if "error" in ref:
            assert row["error"] and row["verdict"] is None
            continue
        assert row["error"] is None
        assert row["verdict"] == ref["verdict"]
        assert abs(row["score"] - ref["score"]) <= 1e-5
        assert row["threshold"] == ref["threshold"]
        assert row["box"] == ref["tile"]
        assert row["labels"] == [p["label"] for p in ref["predictions"]]
        np.testing.assert_allclose(row["probabilities"],
                                   [p["probability"] for p in ref["predictions"]], atol=1e-5)
        assert row["size"] == os.path.getsize(path)
        import hashlib

        assert row["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        verdicts.add(row["verdict"])
    assert verdicts == {"accept", "warn"}      # both branches were compared


def test_classify_rows_equal_belka_classify_json(folder, tmp_path, exported):
    # Same decode settings on both sides, whatever the default is.
    for flag in ([], ["--fast-decode"]):
        reference = json_lines(invoke("classify", str(folder), "--json", "--top", "3",
                                      *flag).output)
        out = tmp_path / f"out{len(flag)}"
        assert invoke("scan", str(folder), "-o", str(out), "--top", "3", *flag).exit_code == 0
        rows = table_rows(out)
        assert set(rows) == set(reference)
        for path, ref in reference.items():
            if "error" in ref:
                assert rows[path]["error"] == ref["error"]
                continue
            assert rows[path]["indices"] == [p["index"] for p in ref["predictions"]]
            np.testing.assert_allclose(rows[path]["probabilities"],
                                       [p["probability"] for p in ref["predictions"]], atol=1e-5)


def test_embed_rows_are_the_engines_embedding(folder, tmp_path, exported):
    out = tmp_path / "emb"
    assert invoke("scan", str(folder / "cat"), "-o", str(out), "--task", "embed").exit_code == 0
    rows = table_rows(out)
    from belka.pipeline import load_resized

    for path, row in rows.items():
        batch = load_resized(path, exported.preprocessing)[np.newaxis]
        _, emb = exported.embed_batch(batch)
        np.testing.assert_allclose(row["embedding"], emb[0], atol=1e-5)
        assert len(row["embedding"]) == 1280


def test_resume_after_sigkill(photos_dir, tmp_path, exported):
    """Killed mid-scan (SIGKILL, no clean-up), then rerun: exactly one row per file."""
    files = tmp_path / "many"
    files.mkdir()
    sources = sorted(p for p in (photos_dir / "cat").iterdir())
    for i in range(72):                             # 72 names, the photos repeated
        src = sources[i % len(sources)]
        (files / f"{i:03d}{src.suffix.lower()}").symlink_to(src)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from belka.cli import main; main()", "scan", str(files),
           "-o", str(out), "--checkpoint", "3", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(out.glob("part-*.parquet")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint written in 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    before = table_rows(out)
    assert 0 < len(before) < 72                     # it really stopped in the middle
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(before)} already there" in rerun.stderr
    rows = table_rows(out)
    assert sorted(rows) == sorted(str(p) for p in files.iterdir())
    for path, row in before.items():               # earlier rows kept as they were
        assert rows[path]["indices"] == row["indices"]
    assert not list(out.glob(".*.tmp"))
    # Rows of the same photo under different names agree: nothing was mixed up on resume.
    by_source: dict[str, list[int]] = {}
    for path, row in rows.items():
        by_source.setdefault(os.path.realpath(path), []).append(row["indices"][0])
    assert all(len(set(v)) == 1 for v in by_source.values())
    # A third run has nothing to do.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "0 rows written" in again.stderr and len(table_rows(out)) == 72


def test_sources_list_glob_limit(folder, tmp_path, exported):
    listing = tmp_path / "list.txt"
    cats = sorted(str(p) for p in (folder / "cat").iterdir())
    listing.write_text("# photos\n" + "\n".join(cats + [cats[0], str(tmp_path / "gone.jpg")])
                       + "\n")
    files = bulk.list_files([listing])
    assert files == cats + [str(tmp_path / "gone.jpg")]             # de-duplicated, in order
    assert bulk.list_files([folder], glob="broken*") == [str(folder / "other" / "broken.jpg")]
    assert len(bulk.list_files([folder], limit=2)) == 2
    out = tmp_path / "out"
    assert invoke("scan", str(listing), "-o", str(out)).exit_code == 0
    rows = table_rows(out)
    assert rows[str(tmp_path / "gone.jpg")]["error"] and rows[cats[0]]["error"] is None


def test_uri_sources_read_through_pyarrow_filesystems(folder, tmp_path, exported):
    """file:// URIs go through pyarrow's filesystems (the path s3:// takes), with the same rows."""
    plain, uri = tmp_path / "plain", tmp_path / "uri"
    assert invoke("scan", str(folder / "cat"), "-o", str(plain)).exit_code == 0
    assert invoke("scan", f"file://{folder / 'cat'}", "-o", str(uri)).exit_code == 0
    a, b = table_rows(plain), table_rows(uri)
    assert sorted(b) == sorted(f"file://{p}" for p in a)
    for path, row in a.items():
        assert b[f"file://{path}"]["indices"] == row["indices"]
        assert b[f"file://{path}"]["size"] == row["size"]
    r = CliRunner().invoke(main, ["scan", f"file://{tmp_path}/nothing-here", "-o",
                                  str(tmp_path / "x")])
    assert r.exit_code != 0 and "no such file or folder" in r.output


def test_user_mistakes_are_one_line(folder, tmp_path, exported):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["scan", str(tmp_path / "nope"), "-o", str(out)])
    assert r.exit_code != 0 and "no such file or folder" in r.output and not out.exists()
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["scan", str(folder), "-o", str(out), "--engine", "ray"])
    assert r.exit_code == 2 and "--runner ray" in r.output
    r = CliRunner().invoke(main, ["scan", str(folder), "-o", str(out), "--allow", "cat"])
    assert r.exit_code != 0 and "--task check" in r.output and not out.exists()
    r = CliRunner().invoke(main, ["scan", str(folder), "-o", str(out), "--task", "check",
                                  "--allow", "no-such-class-anywhere"])
    assert r.exit_code != 0 and r.output.count("\n") == 1 and not out.exists()
    assert invoke("scan", str(folder / "cat"), "-o", str(out)).exit_code == 0
    r = CliRunner().invoke(main, ["scan", str(folder / "cat"), "-o", str(out), "--top", "2"])
    assert r.exit_code != 0 and "other settings (top)" in r.output
    r = CliRunner().invoke(main, ["scan", str(folder / "cat"), "-o", str(folder / "cat")])
    assert r.exit_code != 0 and "not a belka scan" in r.output


def test_without_ray_the_runner_says_how_to_install_it(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)        # `import ray` fails as if not installed
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["scan", str(folder), "-o", str(out), "--runner", "ray"])
    assert r.exit_code != 0 and "pip install 'belka[ray]'" in r.output
    assert r.output.count("\n") == 1 and not out.exists()


def test_evaluate_on_the_engine_matches_the_gate(folder, exported):
    from belka.gate import Gate

    result = invoke("evaluate", str(folder), "--allow", "squirrel", "--json", "--runner",
                    "local")
    report = json.loads(result.output.splitlines()[-1])
    gate = Gate(exported, allow="squirrel")
    expected = {"squirrel": 0, "cat": 0, "other": 0}
    for path, res, error in gate.check_paths([folder], progress=False):
        if error is None:
            expected[Path(path).parent.name] += int(res.accepted)
    assert {k: v["accepted"] for k, v in report["folders"].items()} == expected
    assert [e["path"] for e in report["errors"]] == [str(folder / "other" / "broken.jpg")]


def test_training_embeddings_on_the_engine(folder, exported):
    from belka import heads

    paths = sorted(str(p) for p in (folder / "squirrel").iterdir())[:2]
    reference = heads.embed_photos(exported, paths, progress=False)
    got = bulk.embed_for_training(bulk.Task("views"), paths, model=exported)
    np.testing.assert_allclose(got.whole, reference.whole, atol=1e-5)
    for a, b in zip(got.tiles + got.augment, reference.tiles + reference.augment):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert got.boxes == reference.boxes and got.forwards == reference.forwards


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"Ray is not installed here ({exc}); pip install -e '.[test]' brings it")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_runner_matches_local(folder, tmp_path, exported, ray_cluster):
    task = bulk.Task("check", allow="squirrel")
    local = bulk.scan([folder], tmp_path / "local", task, progress=False)
    remote = bulk.scan([folder], tmp_path / "ray", task, runner="ray", workers=2, checkpoint=4,
                       progress=False)
    assert remote.written == local.written == sum(PICKS.values()) + 1
    assert len(list((tmp_path / "ray").glob("part-*.parquet"))) >= 3   # written in parts
    a, b = table_rows(tmp_path / "local"), table_rows(tmp_path / "ray")
    assert set(a) == set(b)
    for path in a:
        assert (a[path]["error"] is None) == (b[path]["error"] is None)
        if a[path]["error"] is None:
            assert a[path]["verdict"] == b[path]["verdict"] and a[path]["box"] == b[path]["box"]
            assert abs(a[path]["score"] - b[path]["score"]) <= 1e-5
            assert a[path]["labels"] == b[path]["labels"]
    # Resuming on Ray: nothing left to do, nothing doubled.
    again = bulk.scan([folder], tmp_path / "ray", task, runner="ray", progress=False)
    assert again.written == 0 and again.already == len(a)
    # train's embedding step on Ray equals the local one.
    paths = sorted(str(p) for p in (folder / "cat").iterdir())[:2]
    here = bulk.embed_for_training(bulk.Task("views"), paths, model=exported)
    there = bulk.embed_for_training(bulk.Task("views"), paths, runner="ray", workers=1)
    np.testing.assert_allclose(there.whole, here.whole, atol=1e-5)
