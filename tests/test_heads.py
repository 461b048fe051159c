"""Heads: burst groups, training (reproducible), the .belka file (save/load, backbone check),
"none of the above", and the train/classify/check/evaluate commands.

Small and fast: the photos are 96 x 96 crops of scikit-image's sample pictures (too small for
tiles), embedded once per module."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import belka
from belka import heads
from belka.cli import main
from belka.errors import ModelError, UsageError

skdata = pytest.importorskip("skimage.data")

CLASSES = {"cat": "chelsea", "coffee": "coffee", "other": "astronaut"}
UNKNOWN = ("rocket", "hubble_deep_field", "immunohistochemistry", "coins", "moon", "camera",
           "page", "horse")


def _crops(image: np.ndarray, n: int, seed: int, size: int = 96) -> list[np.ndarray]:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = (255 * (image.astype(float) / max(1, image.max()))).astype(np.uint8)
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(0.6, 0.9))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(np.asarray(Image.fromarray(image[y:y + side, x:x + side]).resize((size, size))))
    return out


def make_folder(root: Path, per_class: int = 4, classes: dict = CLASSES) -> Path:
    for label, name in classes.items():
        (root / label).mkdir(parents=True)
        for i, crop in enumerate(_crops(getattr(skdata, name)(), per_class, seed=len(label))):
            # distinct stems: every photo is its own burst
            Image.fromarray(crop).save(root / label / f"{label}_{'abcdefgh'[i]}.png")
    return root


@pytest.fixture(scope="module")
def model():
    return belka.load()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, model):
    root = make_folder(tmp_path_factory.mktemp("heads"))
    photos = heads.read_folder(root)
    embedded = heads.embed_photos(model, photos.paths, augment=True, tiling=None, progress=False)
    return root, photos, embedded


OPTIONS = heads.TrainOptions(epochs=15, folds=3, tiling=None)


@pytest.fixture(scope="module")
def trained(model, dataset):
    _, photos, embedded = dataset
    return heads.train(model, photos, OPTIONS, embedded=embedded, progress=False)


# -- folds -----------------------------------------------------------------------------------
def test_folds_keep_bursts_together():
    y = np.array([0] * 14 + [0, 0, 0] + [1] * 10)
    groups = np.array([0] * 14 + [1, 2, 3] + list(range(4, 14)))
    for train, test in heads.fold_splits(y, groups, 3, seed=0):
        assert not set(groups[train]) & set(groups[test])


def test_folds_leave_one_group_out_when_there_are_enough_folds():
    """--by-source: with folds >= the number of sources, each source is held out on its own."""
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    groups = np.array([5, 5, 7, 7, 9, 9, 11, 11])
    splits = heads.fold_splits(y, groups, 4, seed=0)
    assert sorted(tuple(sorted(set(groups[test]))) for _, test in splits) == [(5,), (7,), (9,), (11,)]
    for train, test in splits:
        assert sorted(np.concatenate([train, test])) == list(range(len(y)))


def test_read_folder_needs_two_classes(tmp_path):
    (tmp_path / "squirrel").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "squirrel" / "a.png")
    with pytest.raises(UsageError, match="a head needs at least 2"):
        heads.read_folder(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(UsageError, match="no images in cat"):
        heads.read_folder(tmp_path)


# -- training and the file --------------------------------------------------------------------
def test_head_learns_and_reports(trained, dataset):
    _, photos, _ = dataset
    head = trained.head
    assert head.labels == ["cat", "coffee", "other"]
    assert head.prior == {"cat": [281, 282, 283, 284, 285]}      # "cat" is an ImageNet group
    assert trained.confusion.sum() == len(photos.paths)
    assert np.trace(trained.confusion) >= len(photos.paths) - 1  # out of fold, nearly all right
    for label in head.labels:
        assert set(head.report["classes"][label]) == {"photos", "sources", "precision", "recall"}
        t = head.thresholds["whole"][label]
        assert heads.MIN_HEAD_THRESHOLD <= t <= 1.0
    assert head.floors.shape == (3,) and (head.floors > 0).all()


def test_save_and_reload_give_identical_outputs(trained, model, dataset, tmp_path):
    root, photos, _ = dataset
    path = trained.head.save(tmp_path / "h.belka")
    loaded = heads.Head.load(path)
    batch = np.stack([model.preprocessing.resize(belka.images.decode(p)) for p in photos.paths[:6]])
    before = trained.head.attach(model).probabilities_from_batch(batch)
    after = loaded.attach(model).probabilities_from_batch(batch)
    np.testing.assert_array_equal(before, after)
    assert loaded.fingerprint == trained.head.fingerprint
    assert loaded.thresholds == trained.head.thresholds
    np.testing.assert_array_equal(loaded.floors, trained.head.floors)
    # the metadata travels in the safetensors header
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        assert {"weight", "bias", "mean", "scale", "references"} <= set(f.keys())
    assert meta["format"] == "belka-head"
    doc = json.loads(meta["belka"])
    assert doc["backbone"] == {"name": "efficientnet_lite0", "weights_sha256": model.weights_sha256,
                               "embedding_dim": 1280}
    assert doc["labels"] == ["cat", "coffee", "other"] and doc["belka_version"] == belka.__version__
    assert doc["preprocessing"]["size"] == 224 and "report" in doc and "thresholds" in doc
    # belka.load(head=...) gives a model whose classes are the head's
    with_head = belka.load(head=path)
    assert with_head.labels == ["cat", "coffee", "other"]
    top = with_head.classify(photos.paths[0], top=1)[0]
    assert top.label == "cat"


def test_a_format_1_head_scores_the_head_alone(trained, model, tmp_path):
    """Heads saved before agreement (format 1, no "agreement" option) keep scoring as they were
    calibrated; this version's heads say format 2 and use agreement."""
    from safetensors.numpy import load, save

    path = trained.head.save(tmp_path / "new.belka")
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    doc = json.loads(header["__metadata__"]["belka"])
    assert doc["format_version"] == 2 and doc["training"]["options"]["agreement"] is True
    assert trained.head.agreement
    doc["format_version"] = 1
    del doc["training"]["options"]["agreement"]
    old_path = tmp_path / "old.belka"
    old_path.write_bytes(save(load(raw), metadata={"format": "belka-head",
                                                   "belka": json.dumps(doc)}))
    old = heads.Head.load(old_path)
    assert not old.agreement
    emb = np.random.default_rng(0).normal(size=(3, 1280)).astype(np.float32)
    old.attach(model)
    assert old.prior_scores(emb, [0]) is None
    new = heads.Head.load(path)
    new.attach(model)
    assert new.prior_scores(emb, [0]).shape == (3,)
    assert new.prior_scores(emb, [1]) is None          # "coffee" is no ImageNet class or group


def test_training_is_reproducible_with_a_seed(model, dataset, trained):
    _, photos, embedded = dataset
    again = heads.train(model, photos, OPTIONS, embedded=embedded, progress=False)
    assert again.head.fingerprint == trained.head.fingerprint
    other_seed = heads.train(model, photos, heads.TrainOptions(epochs=15, folds=3, tiling=None,
                                                               seed=1),
                             embedded=embedded, progress=False)
    assert other_seed.head.fingerprint != trained.head.fingerprint


def test_a_different_backbone_is_refused(trained, model, tmp_path):
    path = trained.head.save(tmp_path / "h.belka")
    with pytest.raises(ModelError, match="trained on efficientnet_lite0"):
        belka.load("mobilenet_v2", weights="none", head=path)
    impostor = belka.load()
    impostor.weights_sha256 = "0" * 64                      # same architecture, other weights
    with pytest.raises(ModelError, match="weights sha256"):
        heads.Head.load(path).attach(impostor)


def test_bad_head_files_are_clear(tmp_path):
    with pytest.raises(UsageError, match="no such head file"):
        heads.Head.load(tmp_path / "missing.belka")
    (tmp_path / "junk.belka").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ModelError, match="not a belka head file"):
        heads.Head.load(tmp_path / "junk.belka")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelError, match="not a belka head file"):
        heads.Head.load(tmp_path / "plain.safetensors")


# -- none of the above -------------------------------------------------------------------------
def _cat_and_coffee(dataset):
    """The dataset without its `other` class: a head that must call everything cat or coffee."""
    _, photos, embedded = dataset
    keep = photos.y != photos.labels.index("other")
    two = heads.LabelledPhotos([p for p, k in zip(photos.paths, keep) if k], ["cat", "coffee"],
                               photos.y[keep])
    sub = heads.Embedded(embedded.whole[keep], [a for a, k in zip(embedded.augment, keep) if k],
                         [t for t, k in zip(embedded.tiles, keep) if k],
                         [b for b, k in zip(embedded.boxes, keep) if k])
    return two, sub


def test_unknown_things_are_not_accepted_as_the_least_unlikely_class(model, dataset):
    """A cat-vs-coffee head (no `other` class) sees pictures of neither: the softmax must pick
    one of the two, but the novelty floor keeps them from being accepted as cats."""
    two, sub = _cat_and_coffee(dataset)
    # the novelty floor alone (agreement with ImageNet's cats would refuse them first)
    options = dataclasses.replace(OPTIONS, agreement=False)
    head = heads.train(model, two, options, embedded=sub, progress=False).head
    assert not head.agreement
    head_model = head.attach(model)
    unknown = [c for name in UNKNOWN for c in _crops(getattr(skdata, name)(), 1, seed=3, size=160)]
    gate = belka.Gate(head_model, "cat", tiles=False)
    results = gate.check_many(unknown)
    probs = head_model.probabilities(unknown)[:, 0]
    assert (probs > 0.5).sum() >= 2          # the trap: two classes, so P(cat) is often high
    assert not any(r.accepted for r in results), [(r.score, r.known) for r in results]
    # every one the head alone would have accepted is flagged "none of the above"
    assert sum(not r.known for r in results) == (probs >= gate.threshold).sum() >= 2
    assert "none of the above" in next(r for r in results if not r.known).message
    # while real cats are still accepted
    cats = [c for c in _crops(skdata.chelsea(), 3, seed=11, size=128)]
    assert all(r.accepted for r in gate.check_many(cats))


def test_agreement_scores_the_geometric_mean_of_head_and_imagenet(model, dataset):
    """With agreement (the default) a view scores sqrt(P_head(cat) x P_imagenet(the five
    cats)), computed here by hand from the backbone's own classifier; the same trap as above
    is refused because ImageNet sees no cat, and the message says so."""
    two, sub = _cat_and_coffee(dataset)
    head = heads.train(model, two, OPTIONS, embedded=sub, progress=False).head
    assert head.agreement and head.prior["cat"] == model.class_indices("cat")
    assert "coffee" not in head.prior or head.prior["coffee"]
    head_model = head.attach(model)
    gate = belka.Gate(head_model, "cat", tiles=False)
    images_ = ([c for name in UNKNOWN for c in _crops(getattr(skdata, name)(), 1, seed=3, size=160)]
               + _crops(skdata.chelsea(), 3, seed=11, size=128))
    results = gate.check_many(images_)
    p_head = head_model.probabilities(images_)[:, 0]
    p_imagenet = model.probabilities(images_)[:, model.class_indices("cat")].sum(axis=1)
    expected = np.sqrt(p_head * p_imagenet)
    # the novelty floor zeroes a view that resembles no training cat
    close = np.array([head.similarities(r.embedding[None])[0, 0] >= head.floors[0]
                      for r in results])
    assert close.sum() >= 3
    np.testing.assert_allclose([r.score for r in results], np.where(close, expected, 0.0),
                               rtol=1e-4, atol=1e-6)
    unknown, cats = results[:len(UNKNOWN)], results[len(UNKNOWN):]
    assert not any(r.accepted for r in unknown)
    refused_by_prior = [r for r, p in zip(unknown, p_head) if p >= gate.threshold and r.known]
    assert refused_by_prior and all(not r.agreed for r in refused_by_prior)
    assert "base model sees no cat" in refused_by_prior[0].message
    assert all(r.accepted for r in cats)
    # an old head (format 1, saved options without the key) scores the head alone
    assert not heads.TrainOptions.from_dict({"epochs": 3}).agreement


OUTSIDE = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "cat",
           "hubble_deep_field", "immunohistochemistry", "moon", "page", "coins", "grass", "gravel",
           "brick", "retina", "text", "clock", "logo", "colorwheel")


def test_agreement_keeps_pictures_from_an_unseen_source_out(model, photos_dir):
    """Heads trained on the shared photos (squirrel, cat, other; tiles) see 20 scikit-image
    pictures, a source they never saw: grass, gravel, a microscope slide, a cat, ... The head
    alone calls a tile of one of them a squirrel with confidence (it learned the shared
    photos' places, not only the animal); with agreement none comes near its threshold."""
    photos = heads.read_folder(photos_dir, ["squirrel", "cat", "other"])
    embedded = heads.embed_photos(model, photos.paths, augment=True, progress=False)
    pictures = []
    for name in OUTSIDE:
        image = getattr(skdata, name)()
        image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        pictures.append(np.ascontiguousarray(image, dtype=np.uint8))
    scores = {}
    for agreement in (True, False):
        options = heads.TrainOptions(seed=0, agreement=agreement)
        head = heads.train(model, photos, options, embedded=embedded, progress=False).head
        gate = belka.Gate(head.attach(model), "squirrel")
        results = gate.check_many(pictures)
        scores[agreement] = (np.array([r.score for r in results]), gate.threshold)
    with_agreement, threshold = scores[True]
    alone, _ = scores[False]
    assert with_agreement.max() < threshold / 2, dict(zip(OUTSIDE, with_agreement.round(3)))
    assert alone.max() > 0.5, dict(zip(OUTSIDE, alone.round(3)))      # fooled by a tile


# -- the commands ------------------------------------------------------------------------------
def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_train_classify_check_evaluate_commands(tmp_path):
    data = make_folder(tmp_path / "data", per_class=3,
                       classes={"cat": "chelsea", "other": "coffee"})
    out = tmp_path / "cat.belka"
    result = run("train", str(data), "-o", str(out), "--epochs", "10", "--folds", "3",
                 "--no-tiles", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "precision" in result.stdout and "threshold" in result.stdout
    assert out.exists() and (tmp_path / "cat.confusion.png").exists()
    report = json.loads((tmp_path / "cat.report.json").read_text())
    assert set(report["classes"]) == {"cat", "other"}
    # where the gate fails, by file: refused photos are the class's own, let-through ones not
    assert "where the gate fails" in result.stdout
    gate = report["gate"]["cat"]["whole"]
    assert all(r["file"].startswith("cat/") for r in gate["heldout_refused"])
    refused = len(gate["heldout_refused"])
    assert refused == round((1 - gate["heldout_accept_rate"]) * 3)
    assert all(r["file"].startswith("other/") for r in gate["heldout_false_accepts"])
    assert report["classes"]["cat"]["sources"] <= 3
    assert report["grouping"] == "bursts"                           # no sub-folders, no EXIF
    assert "has photos from only" in result.stderr                 # 3 sources: rough rates
    assert "grouped by bursts" in result.stdout
    assert report["burst_share"] == 1.0 and "grouped by bursts only" in result.stderr
    assert report["agreement"] is True and "agreement with the backbone's" in result.stdout
    cat = data / "cat" / "cat_a.png"
    classify = run("classify", str(cat), "--head", str(out), "--json", "--top", "2")
    assert classify.exit_code == 0, classify.output
    preds = json.loads(classify.stdout)["predictions"]
    assert [p["label"] for p in preds] == ["cat", "other"]
    check = run("check", str(cat), "--head", str(out), "--allow", "cat", "--no-tiles", "--json")
    record = json.loads(check.stdout)
    assert check.exit_code == 0 and record["verdict"] == "accept" and record["tile"] is None
    assert {"path", "verdict", "score", "threshold", "allowed", "predictions"} <= set(record)
    warned = run("check", str(data / "other" / "other_a.png"), "--head", str(out), "--allow",
                 "cat", "--no-tiles")
    assert warned.exit_code == 3
    bad = run("check", str(cat), "--head", str(out), "--allow", "squirrel")
    assert bad.exit_code == 2 and "unknown class" in bad.stderr
    evaluated = run("evaluate", str(data), "--head", str(out), "--allow", "cat", "--no-tiles",
                    "--json")
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads(evaluated.stdout)
    assert summary["folders"]["cat"]["positive"] and summary["folders"]["cat"]["photos"] == 3
    assert summary["seen_in_training"] == 6
    text = run("evaluate", str(data), "--head", str(out), "--allow", "cat", "--no-tiles")
    assert "false accepts" in text.stdout and "(should be accepted)" in text.stdout


def test_head_on_the_engine_matches_the_module(trained, model, dataset):
    """A head model runs the backbone on the engine and its head in NumPy: the same numbers as
    the head model's PyTorch module, on both engines."""
    import torch

    _, photos, _ = dataset
    batch = np.stack([model.preprocessing.resize(belka.images.decode(p)) for p in photos.paths[:6]])
    head_model = trained.head.attach(model)
    assert head_model.engine is model.engine
    x = head_model.engine.prepare(batch)
    with torch.inference_mode():
        want = torch.softmax(head_model.module(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(head_model.probabilities_from_batch(batch), want, atol=1e-5)
    on_torch = trained.head.attach(belka.load(engine="torch"))
    np.testing.assert_allclose(on_torch.probabilities_from_batch(batch), want, atol=1e-5)
    probs, emb = heads.forward_features(head_model, batch)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert emb.shape == (6, 1280)


def test_serve_with_a_head(trained, dataset, tmp_path, monkeypatch):
    """`belka serve --head` gates on the head's classes (uvicorn.run is replaced by a test
    client on the same app); a missing head file is one clear line and exit 2."""
    import uvicorn
    from fastapi.testclient import TestClient

    root, photos, _ = dataset
    path = trained.head.save(tmp_path / "h.belka")
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    result = CliRunner().invoke(main, ["serve", "--head", str(path), "--allow", "cat",
                                       "--data", str(tmp_path / "data")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cat = next(p for p in photos.paths if "/cat/" in p.replace("\\", "/"))
    with TestClient(apps[0]) as client:
        assert client.get("/api/v1/health").json()["allow"] == "cat"
        with open(cat, "rb") as f:
            answer = client.post("/api/v1/classify", files={"file": ("c.png", f, "image/png")})
        assert answer.status_code == 200
        assert {p["label"] for p in answer.json()["predictions"]} <= {"cat", "coffee", "other"}
    missing = CliRunner().invoke(main, ["serve", "--head", str(tmp_path / "nope.belka")])
    assert missing.exit_code == 2 and "nope.belka" in missing.output
    assert "Traceback" not in missing.output
