"""Calibration: the threshold rule, held-out false accepts at or under the target, the ROC
curve, policies, and the calibrate command with `belka check --policy`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import belka
from belka import calibrate as cal
from belka import heads
from belka.cli import main
from belka.errors import UsageError

skdata = pytest.importorskip("skimage.data")


def test_choose_threshold_counts_false_accepts():
    neg = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02]
    t0 = cal.choose_threshold(neg, 0.0)
    assert t0 > 0.9 and sum(s >= t0 for s in neg) == 0
    t1 = cal.choose_threshold(neg, 0.1)                 # one of ten may pass
    assert 0.5 < t1 <= 0.9 and sum(s >= t1 for s in neg) == 1
    assert cal.choose_threshold(neg, 0.19) == t1        # floor(1.9) = 1
    assert cal.choose_threshold(neg, 1.0) == 0.0
    assert cal.choose_threshold(neg, 0.0, floor=0.95) == 0.95
    assert cal.choose_threshold([1.0], 0.0) == 1.0      # never above 1
    with pytest.raises(UsageError):
        cal.choose_threshold(neg, 1.5)


def _synthetic(seed: int = 0, negatives: int = 3000, positives: int = 600):
    rng = np.random.default_rng(seed)
    raw = np.concatenate([rng.normal(0, 1, negatives), rng.normal(3.5, 1, positives)])
    scores = 1 / (1 + np.exp(-(raw - 2)))
    positive = np.arange(len(raw)) >= negatives
    groups = np.arange(len(raw)) // 4                   # bursts of four
    return scores, positive, groups


@pytest.mark.parametrize("target", [0.01, 0.02, 0.05])
def test_held_out_false_accepts_meet_the_target(target):
    scores, positive, groups = _synthetic()
    held = cal.cross_validated_threshold(scores, positive, groups, target, folds=5, seed=0)
    assert held.negatives == (~positive).sum() and held.positives == positive.sum()
    assert len(held.thresholds) == 5
    # chosen on 4/5 of the negatives, measured on the other 1/5: at most sampling noise above
    assert held.heldout_false_accept_rate <= target * 1.3 + 0.002
    assert held.heldout_accept_rate > 0.5
    assert held.accepted.sum() == held.false_accepts + held.accepts


def test_roc_curve_and_png(tmp_path):
    scores, positive, _ = _synthetic(negatives=200, positives=50)
    fa, acc, th = cal.roc_curve(scores, positive)
    assert fa[0] == acc[0] == 0 and fa[-1] == acc[-1] == 1
    assert (np.diff(fa) >= 0).all() and (np.diff(acc) >= 0).all()
    png = cal.plot_roc(scores, positive, tmp_path / "roc.png", threshold=0.5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_policy_round_trip_and_errors(tmp_path):
    policy = cal.Policy(allow=["squirrel"], threshold=0.3, tiles=True, max_false_accept=0.01,
                        model="efficientnet_lite0", weights_sha256="ab" * 32)
    path = policy.save(tmp_path / "p.json")
    assert cal.Policy.load(path) == policy
    assert json.loads(path.read_text())["format"] == "belka-policy"
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(UsageError, match="not a belka policy"):
        cal.Policy.load(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="no such policy"):
        cal.Policy.load(tmp_path / "missing.json")


def _folder(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    sources = {"cat": [skdata.chelsea()], "other": [skdata.coffee(), skdata.astronaut(),
                                                    skdata.rocket()]}
    for label, pictures in sources.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = pictures[i % len(pictures)]
            h, w = image.shape[:2]
            side = int(min(h, w) * rng.uniform(0.7, 0.95))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(image[y:y + side, x:x + side]).resize((100, 100))
            crop.save(root / label / f"{label}_{'abcdefgh'[i]}.png")
    return root


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_calibrate_command_writes_policy_and_roc_and_check_uses_it(tmp_path):
    data = _folder(tmp_path / "data")
    policy_path = tmp_path / "policy.json"
    result = run("calibrate", str(data), "--allow", "cat", "--max-false-accept", "0.0",
                 "--no-tiles", "--folds", "2", "-o", str(policy_path))
    assert result.exit_code == 0, result.output
    assert "held out" in result.stdout and "threshold" in result.stdout
    assert (tmp_path / "policy.roc.png").exists()
    policy = cal.Policy.load(policy_path)
    assert policy.allow == ["cat"] and policy.tiles is False and policy.head is None
    assert policy.calibration["false_accept_rate"] == 0.0
    assert policy.calibration["heldout"]["negatives"] == 4
    cat = str(data / "cat" / "cat_a.png")
    checked = run("check", cat, "--policy", str(policy_path), "--json")
    record = json.loads(checked.stdout)
    assert record["threshold"] == pytest.approx(policy.threshold) and record["allowed"] == "cat"
    assert checked.exit_code == (0 if record["score"] >= policy.threshold else 3)
    clash = run("check", cat, "--policy", str(policy_path), "--allow", "squirrel")
    assert clash.exit_code == 2 and "policy is calibrated for cat" in clash.stderr
    as_json = run("calibrate", str(data), "--allow", "cat", "--no-tiles", "--folds", "2",
                  "--json", "--roc", str(tmp_path / "r.png"))
    doc = json.loads(as_json.stdout)
    assert doc["positives"] == 4 and doc["negatives"] == 4 and doc["roc"].endswith("r.png")
    held = doc["heldout"]              # the held-out mistakes, by file, add up to its counts
    assert len(doc["heldout_refused"]) == held["positives"] - held["accepts"]
    assert len(doc["heldout_let_through"]) == held["false_accepts"]
    assert all("/cat/" in p for p in doc["heldout_refused"])
    assert all("/other/" in p for p in doc["heldout_let_through"])


def test_calibrating_a_head_on_its_own_photos_uses_out_of_fold_scores(tmp_path):
    data = _folder(tmp_path / "data", per_class=3)
    model = belka.load()
    photos = heads.read_folder(data)
    options = heads.TrainOptions(epochs=10, folds=3, tiling=None)
    head = heads.train(model, photos, options, progress=False).head
    with_head = head.attach(model)
    scored = cal.score_folder(with_head, data, "cat", tiles=False, folds=3)
    assert scored.out_of_fold and len(scored.scores) == 6 and scored.positive.sum() == 3
    result = cal.calibrate_scores(scored, "cat", 0.0, folds=3, floor=heads.MIN_HEAD_THRESHOLD,
                                  tiles=False)
    assert result.threshold >= heads.MIN_HEAD_THRESHOLD and result.false_accept_rate == 0.0
    policy = cal.policy_for(with_head, result, "cat")
    assert policy.head == head.fingerprint and policy.head_labels == ["cat", "other"]
    with pytest.raises(UsageError, match="calibrated for a head"):
        policy.check_model(model)
    policy.check_model(with_head)


def test_evaluate_takes_one_folder_and_calibrate_says_what_it_misses(tmp_path):
    data = _folder(tmp_path / "data")
    shutil.rmtree(data / "other")                   # only cats left
    evaluated = run("evaluate", str(data), "--allow", "cat", "--no-tiles", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    doc = json.loads(evaluated.stdout)
    cats = doc["folders"]["cat"]
    assert cats["photos"] == 4 and cats["positive"] and not doc["false_accepts"]
    assert len(doc["missed"]) == 4 - cats["accepted"]     # every refused cat is listed
    text = run("evaluate", str(data), "--allow", "cat", "--no-tiles")
    assert "refused, should be accepted" in text.stdout
    refused = run("calibrate", str(data), "--allow", "cat", "--no-tiles")
    assert refused.exit_code == 2
    assert "calibration" in refused.stderr and "other/" in refused.stderr


def test_evaluate_counts_sources_and_draws_its_mistakes(tmp_path):
    """Sub-folders per place are sources; the contact sheet shows every mistake, and a tile
    that decided is outlined."""
    data = _folder(tmp_path / "data")
    for folder in ("cat", "other"):                        # two places each
        place = data / folder / "garden"
        place.mkdir()
        for path in sorted((data / folder).glob("*.*"))[:2]:
            path.rename(place / path.name)
    sheet = tmp_path / "mistakes.png"
    evaluated = run("evaluate", str(data), "--allow", "cat", "--json", "--sheet", str(sheet),
                    "--threshold", "0.9")
    assert evaluated.exit_code == 0, evaluated.output
    doc = json.loads(evaluated.stdout)
    assert doc["folders"]["cat"]["sources"] >= 2 and "sub-folders" in doc["grouping"]
    mistakes = len(doc["false_accepts"]) + len(doc["missed"])
    assert mistakes >= 1 and doc["sheet"] == str(sheet)
    picture = Image.open(sheet)
    columns = min(5, mistakes)
    assert picture.size == (columns * 220, 36 + -(-mistakes // columns) * 260)
