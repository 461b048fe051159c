"""The documentation's examples run as written, and print what the documentation says.

A fenced block in README.md or docs/*.md that follows a line ``<!-- runnable -->`` is run here:

* ``console`` blocks: each ``$ command`` runs in bash, in one scratch folder per document (so a
  later command can use an earlier one's output), offline (``BELKA_OFFLINE=1``), with belka's
  console script on the PATH. The lines printed under a command in the block are compared with
  the first lines the command really prints (stdout and stderr together; runs of spaces count
  as one; a line ``...`` ends the comparison, a line ending in ``...`` need only start the
  same). A command with no lines under it must exit 0; ``echo $?`` sees the status of the
  command before it.
* ``python`` blocks: run as a script in the same folder; they must not raise.

The scratch folder holds the files the examples name: ``cat.jpg``, ``upload.jpg`` and
``photo.jpg`` (belka's bundled cat photo), ``squirrel.jpg`` (a shared fox squirrel photo) and
``photos/`` (a few of scikit-image's sample pictures). Examples that need the network, a GPU
or another model's weights are not marked runnable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w+)\s*$")
SQUIRREL = Path("squirrel") / "eli_n02356798_fox_squirrel.jpg"


@dataclass
class Block:
    doc: Path
    line: int       # 1-based line of the opening fence
    kind: str       # console | python
    text: list[str]

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def runnable_blocks() -> list[Block]:
    blocks = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == MARK:
                j = i + 1
                while j < len(lines) and not lines[j].strip():
                    j += 1
                fence = FENCE.match(lines[j]) if j < len(lines) else None
                if not fence:
                    raise AssertionError(f"{doc.name}:{i + 1}: {MARK} is not followed by a fence")
                end = j + 1
                while end < len(lines) and not lines[end].startswith("```"):
                    end += 1
                blocks.append(Block(doc, j + 1, fence.group(1), lines[j + 1:end]))
                i = end
            i += 1
    return blocks


BLOCKS = runnable_blocks()


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each ``$ `` line of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in block.text:
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def _norm(line: str) -> str:
    return " ".join(line.split())


def matches(expected: list[str], actual: list[str]) -> str | None:
    """None when ``actual`` begins as ``expected`` says, else what differs."""
    for k, want in enumerate(expected):
        if want.strip() == "...":
            return None
        got = actual[k] if k < len(actual) else "<no more output>"
        if want.rstrip().endswith("..."):
            if not _norm(got).startswith(_norm(want.rstrip()[:-3])):
                return f"line {k + 1}: expected {want!r} (prefix), got {got!r}"
        elif _norm(got) != _norm(want):
            return f"line {k + 1}: expected {want!r}, got {got!r}"
    return None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, photos_dir) -> dict[Path, Path]:
    """One prepared folder per document."""
    from PIL import Image
    from skimage import data

    base = tmp_path_factory.mktemp("docs")
    bundled = ROOT / "src" / "belka" / "data" / "chelsea.jpg"
    folders = {}
    for doc in DOCS:
        folder = base / doc.stem
        (folder / "photos").mkdir(parents=True)
        for name in ("cat.jpg", "upload.jpg", "photo.jpg"):
            shutil.copy(bundled, folder / name)
        shutil.copy(photos_dir / SQUIRREL, folder / "squirrel.jpg")
        for name in ("chelsea", "coffee", "astronaut", "rocket", "camera"):
            Image.fromarray(getattr(data, name)()).convert("RGB").save(
                folder / "photos" / f"{name}.jpg", quality=90)
        folders[doc] = folder
    return folders


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                         "BELKA_OFFLINE": "1", "COLUMNS": "100", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_documented_example_runs_as_written(block: Block, scratch):
    folder = scratch[block.doc]
    if block.kind == "python":
        script = folder / f"example_{block.line}.py"
        script.write_text("\n".join(block.text) + "\n")
        done = subprocess.run([sys.executable, str(script)], cwd=folder, env=_env(),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{block.id}:\n{done.stdout}\n{done.stderr}"
        return
    assert block.kind == "console", f"{block.id}: runnable blocks are console or python"
    status = 0
    for command, expected in commands(block):
        done = subprocess.run(["bash", "-c", f"(exit {status}); {command}"], cwd=folder,
                              env=_env(), capture_output=True, text=True, timeout=600)
        status = done.returncode
        actual = [line for line in (done.stdout + done.stderr).splitlines()
                  if not line.startswith("belka: exporting") and "exported in" not in line]
        if not [e for e in expected if e.strip()]:
            assert status == 0 or command.rstrip().endswith("# fails"), (
                f"{block.id}: `{command}` exited {status}:\n" + "\n".join(actual[-20:]))
            continue
        problem = matches(expected, actual)
        assert problem is None, (f"{block.id}: `{command}`: {problem}\nit printed:\n"
                                 + "\n".join(actual[:30]))


def test_there_are_runnable_examples():
    docs = {b.doc.name for b in BLOCKS}
    assert "README.md" in docs and len(BLOCKS) >= 6, sorted(docs)


def test_the_comparison_catches_drift():
    """The README said 38.32% for a cat that scores 37.95%: that must fail."""
    assert matches(["   38.32%  tiger cat  (282)"], ["   37.95%  tiger cat  (282)"])
    assert matches(["a", "..."], ["a", "anything"]) is None
    assert matches(["WARN cat.jpg: this does not ..."], ["WARN    cat.jpg: this does not look"]) is None
    assert matches(["3"], []) is not None
