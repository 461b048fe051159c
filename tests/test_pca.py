"""Eigen-images: reconstruction error, round trips, the two fitting methods, errors, the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.linalg import subspace_angles

from belka import images
from belka.cli import main
from belka.errors import BelkaError, UsageError
from belka.ops import pca

W, H = 8, 6  # small non-square images: rows H, columns W


def random_images(n: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """``n`` random H x W x 3 images (float 0..1, or uint8)."""
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    return rng.random((n, H, W, 3), dtype=np.float32)


def low_rank_images(n: int, rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images that are exactly mean + codes @ basis (float64 math, float32 pixels); and the basis."""
    rng = np.random.default_rng(seed)
    d = H * W * 3
    basis = np.linalg.qr(rng.normal(size=(d, rank)))[0].T  # orthonormal rows
    codes = rng.normal(size=(n, rank)) * np.linspace(3, 1, rank)
    rows = 0.5 + 0.05 * (codes @ basis)
    return rows.reshape(n, H, W, 3).astype(np.float32), basis


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pca.PcaWarning)
        yield


# --- reconstruction ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["randomized", "incremental"])
def test_error_falls_with_k_and_vanishes_at_full_rank(method) -> None:
    data = random_images(12)
    model = pca.fit(data, k=11, size=(W, H), method=method, batch_size=4, progress=False)
    assert model.k == 11
    curve = model.psnr_curve(data, range(1, 12))
    mses = [p.mse for p in curve]
    assert all(b <= a + 1e-12 for a, b in zip(mses, mses[1:]))
    assert mses[0] > 1e-3
    assert curve[-1].mse < 1e-6 and curve[-1].psnr > 60


def test_error_falls_with_k_on_held_out_images() -> None:
    model = pca.fit(random_images(30), k=20, size=(W, H), progress=False)
    mses = [p.mse for p in model.psnr_curve(random_images(5, seed=9), [1, 2, 5, 10, 20])]
    assert all(b <= a for a, b in zip(mses, mses[1:]))


def test_encode_decode_round_trip() -> None:
    data = random_images(10, dtype=np.uint8)
    model = pca.fit(list(data), k=9, size=(W, H), progress=False)
    for image in data:
        codes = model.encode(image)
        assert codes.shape == (9,) and codes.dtype == np.float32
        back = model.decode(codes)
        assert back.dtype == np.uint8 and back.shape == (H, W, 3)
        np.testing.assert_array_equal(back, image)  # full rank: exact after rounding
    assert model.decode(model.encode(data[0], k=3)).shape == (H, W, 3)
    assert model.encode(data[0], k=3).shape == (3,)


def test_codes_are_the_projection() -> None:
    data = random_images(15)
    model = pca.fit(data, k=5, size=(W, H), progress=False)
    rows = data.reshape(15, -1)
    np.testing.assert_allclose(model.components @ model.components.T, np.eye(5), atol=1e-5)
    np.testing.assert_allclose(model.encode(data[3]), (rows[3] - rows.mean(0)) @ model.components.T, atol=1e-5)
    assert np.all(np.diff(model.explained_variance_ratio) <= 1e-9)


def test_files_gray_and_resize(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for i in range(6):
        images.save(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8), tmp_path / f"im{i}.png")
    model = pca.fit(tmp_path, k=3, size=(16, 12), gray=True, progress=False)
    assert model.mean.shape == (16 * 12,)
    assert model.decode(model.encode(tmp_path / "im0.png")).shape == (12, 16)
    assert model.n_images == 6


# --- save / load -------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path) -> None:
    data = random_images(8)
    model = pca.fit(data, k=4, size=(W, H), progress=False)
    path = model.save(tmp_path / "model.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary file left
    again = pca.load(path)
    for field in ("mean", "components", "explained_variance", "explained_variance_ratio"):
        np.testing.assert_array_equal(getattr(again, field), getattr(model, field))
    assert (again.size, again.gray, again.n_images, again.method, again.policy) == (
        (W, H), False, 8, "randomized", "crop")
    np.testing.assert_array_equal(again.encode(data[1]), model.encode(data[1]))


# --- the two methods ---------------------------------------------------------------------------


def test_incremental_and_randomized_find_the_same_subspace() -> None:
    data, basis = low_rank_images(60, rank=4)
    randomized = pca.fit(data, k=4, size=(W, H), progress=False)
    incremental = pca.fit(data, k=4, size=(W, H), method="incremental", batch_size=10, progress=False)
    assert incremental.method == "incremental" and incremental.n_images == 60
    angles = subspace_angles(randomized.components.T, incremental.components.T)
    assert np.max(angles) < 1e-3
    assert np.max(subspace_angles(randomized.components.T, basis.T)) < 1e-3
    np.testing.assert_allclose(randomized.mean, incremental.mean, atol=1e-6)
    np.testing.assert_allclose(randomized.explained_variance_ratio, incremental.explained_variance_ratio, rtol=1e-3)


def test_incremental_batches_never_too_small() -> None:
    # 23 images in batches of 5 with k=4: the tail must be merged, not fitted alone.
    data = random_images(23)
    model = pca.fit(data, k=4, size=(W, H), method="incremental", batch_size=5, progress=False)
    assert model.k == 4 and model.n_images == 23


# --- errors ------------------------------------------------------------------------------------


def test_k_larger_than_rank_is_clipped_with_a_message() -> None:
    data = random_images(5)
    with pytest.warns(pca.PcaWarning, match=r"5 images have at most 4 components\); using k=4"):
        model = pca.fit(data, k=340, size=(W, H), progress=False)
    assert model.k == 4
    with pytest.raises(UsageError, match="k=340 is larger than the data allows"):
        pca.fit(data, k=340, size=(W, H), progress=False, clip=False)


def test_duplicates_lower_the_rank() -> None:
    data = np.concatenate([random_images(3)] * 4)
    with pytest.warns(pca.PcaWarning, match="only span 2 dimensions"):
        model = pca.fit(data, k=10, size=(W, H), progress=False)
    assert model.k == 2


@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_positive(k) -> None:
    with pytest.raises(UsageError):
        pca.fit(random_images(4), k=k, size=(W, H), progress=False)


def test_empty_folder(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(UsageError, match="no images"), warnings.catch_warnings():
        warnings.simplefilter("ignore", pca.PcaWarning)
        pca.fit(tmp_path, k=3, progress=False)


def test_one_image_is_not_enough() -> None:
    with pytest.raises(UsageError, match="at least 2 images"):
        pca.fit(random_images(1), k=1, size=(W, H), progress=False)


def test_unreadable_files_are_skipped(tmp_path, quiet) -> None:
    for i in range(4):
        images.save(random_images(1, seed=i, dtype=np.uint8)[0], tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(pca.PcaWarning, match="skipped"):
        model = pca.fit(tmp_path, k=2, size=(W, H), progress=False)
    assert model.n_images == 4


def _bad_npz(tmp_path, name: str):
    good = pca.fit(random_images(5), k=2, size=(W, H), progress=False)
    path = tmp_path / name
    if name == "text.npz":
        path.write_text("hello")
    elif name == "array.npz":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif name == "truncated.npz":
        good.save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif name == "other.npz":
        np.savez(path, weights=np.zeros(3))
    elif name == "shape.npz":
        good.save(path)
        data = dict(np.load(path))
        data["mean"] = data["mean"][:-1]
        np.savez(path, **data)
    elif name == "nan.npz":
        good.save(path)
        data = dict(np.load(path))
        data["components"][0, 0] = np.nan
        np.savez(path, **data)
    elif name == "pickle.npz":
        good.save(path)
        data = dict(np.load(path))
        data["method"] = np.array([{"evil": 1}], dtype=object)
        np.savez(path, **data)
    return path


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.npz", "no such model file"),
        ("text.npz", "cannot read the model"),
        ("array.npz", "not an .npz archive"),
        ("truncated.npz", "cannot read the model"),
        ("other.npz", "missing format"),
        ("shape.npz", "mean has shape"),
        ("nan.npz", "non-finite"),
        ("pickle.npz", "cannot read the model"),
    ],
)
def test_bad_model_files(tmp_path, name, message) -> None:
    path = _bad_npz(tmp_path, name) if name != "missing.npz" else tmp_path / name
    with pytest.raises(BelkaError, match=message):
        pca.load(path)


def test_k_outside_the_model() -> None:
    model = pca.fit(random_images(6), k=3, size=(W, H), progress=False)
    with pytest.raises(UsageError):
        model.psnr_curve(random_images(2), [4])
    with pytest.raises(UsageError):
        model.decode(np.zeros(5))


# --- stats, pictures, baseline -----------------------------------------------------------------


def test_stats() -> None:
    model = pca.fit(random_images(12), k=10, size=(W, H), progress=False)
    s = model.stats()
    assert s["pixels_per_image"] == s["raw_bytes"] == W * H * 3
    assert s["code_bytes_float32"] == 40 and s["code_bytes_float16"] == 20
    assert 0 < s["explained_variance"] <= 1 + 1e-6


def test_pictures(tmp_path) -> None:
    data = random_images(10)
    model = pca.fit(data, k=6, size=(W, H), progress=False)
    model.show(tmp_path / "grid.png", n=5, curve=tmp_path / "curve.png")
    model.reconstruction_strip(data[0], [1, 3, 6], tmp_path / "strip.png")
    for name in ("grid.png", "curve.png", "strip.png"):
        picture = images.decode(tmp_path / name)
        assert picture.shape[0] > 100 and picture.shape[1] > 100
        assert picture.std() > 5  # something was drawn


def test_near_duplicates_share_a_group() -> None:
    rng = np.random.default_rng(0)
    # Smooth, distinct pictures: 4x4 colour noise blown up to 64x64.
    pics = [images.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), 64, "squash") for _ in range(6)]
    # The same photo re-encoded as a low-quality JPEG and cropped by a few pixels.
    copy = images.decode(images.encode(pics[2][3:, 2:], "JPEG", quality=40))
    rows = np.stack([pca._pixels(im, (64, 64), False, "squash") for im in [*pics, copy]])
    groups = pca.near_duplicate_groups(rows, (64, 64, 3))
    assert groups[6] == groups[2]
    assert len(set(groups[:6])) == 6


def test_numbered_series_share_a_group() -> None:
    rows = random_images(5).reshape(5, -1)
    names = ["cjmcdd_squirrel1.jpg", "cjmcdd_squirrel14.jpg", "0.png", "1.png", "sift_squirrel1.jpg"]
    groups = pca.near_duplicate_groups(rows, (H, W, 3), names=names)
    assert groups[0] == groups[1]
    assert len(set(groups[1:])) == 4


def test_baseline_on_synthetic_classes(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for label, tint in (("squirrel", (200, 90, 40)), ("cat", (60, 60, 200))):
        (tmp_path / label).mkdir()
        for i in range(10):
            pic = np.clip(rng.normal(tint, 60, (24, 24, 3)), 0, 255).astype(np.uint8)
            images.save(pic, tmp_path / label / f"{i}.png")
    report = pca.baseline_report(tmp_path, k=4, size=(12, 12), folds=5)
    assert report.accuracy == 1.0 and report.n_images == 20 and report.n_positive == 10
    assert pca.baseline_accuracy(tmp_path, k=4, size=(12, 12), classifier="knn") == 1.0


def test_cli_baseline(tmp_path) -> None:
    rng = np.random.default_rng(1)
    for label, tint in (("squirrel", (220, 120, 30)), ("other", (30, 120, 220))):
        (tmp_path / label).mkdir()
        for i in range(6):
            images.save(np.clip(rng.normal(tint, 40, (16, 16, 3)), 0, 255).astype(np.uint8),
                        tmp_path / label / f"p{i}x.png")
    result = _run("pca", "baseline", tmp_path, "-k", 3, "--size", "8", "--folds", 3)
    assert result.exit_code == 0, result.output
    assert "accuracy 1.000" in result.stdout


def test_baseline_needs_class_folders(tmp_path) -> None:
    with pytest.raises(UsageError):
        pca.baseline_report(tmp_path)


def test_real_photos(photos_dir, tmp_path, quiet) -> None:
    squirrels = images.iter_image_files(photos_dir / "squirrel")
    model = pca.fit(squirrels[1:], k=8, size=(24, 24), progress=False)
    incremental = pca.fit(squirrels[1:], k=8, size=(24, 24), method="incremental", batch_size=9, progress=False)
    assert model.k == incremental.k == 8
    # The top component (mostly brightness) agrees between the methods.
    assert abs(float(model.components[0] @ incremental.components[0])) > 0.95
    held_out = model.psnr_curve([squirrels[0]], [1, 4, 8])
    assert held_out[0].mse >= held_out[-1].mse
    accuracy = pca.baseline_accuracy(photos_dir, size=(16, 16), k=8)
    assert 0.0 <= accuracy <= 1.0


# --- CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(random_images(7, dtype=np.uint8)):
        images.save(image, folder / f"{i}.png")
    return folder


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_cli_pca_round_trip(photo_folder, tmp_path) -> None:
    model = tmp_path / "m.npz"
    result = _run("pca", "fit", photo_folder, "-k", 340, "-o", model, "--size", "8x6")
    assert result.exit_code == 0, result.output
    assert "k=340 is larger than the data allows" in result.stderr
    assert "6 eigen-images from 7 photos" in result.stdout

    image = photo_folder / "3.png"
    result = _run("pca", "encode", model, image, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 6

    codes = tmp_path / "codes.npy"
    assert _run("pca", "encode", model, image, "-o", codes).exit_code == 0
    assert np.load(codes).shape == (6,)

    for source in ([image], ["--codes", codes]):
        back = tmp_path / "back.png"
        result = _run("pca", "reconstruct", model, *source, "-o", back)
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(images.decode(back), images.decode(image))

    result = _run("pca", "show", model, "-o", tmp_path / "grid.png", "--curve", tmp_path / "curve.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").exists() and (tmp_path / "curve.png").exists()
    assert _run("pca", "strip", model, image, "-o", tmp_path / "s.png", "--ks", "1,3,99").exit_code == 0


def test_cli_pca_incremental_gray(photo_folder, tmp_path) -> None:
    result = _run("pca", "fit", photo_folder, "-k", 3, "-o", tmp_path / "m.npz", "--gray", "--incremental",
                  "--size", "10")
    assert result.exit_code == 0, result.output
    assert "10x10 grey (incremental" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["pca", "fit", "{empty}", "-o", "{tmp}/m.npz"],
        ["pca", "fit", "{tmp}/nowhere", "-o", "{tmp}/m.npz"],
        ["pca", "fit", "{photos}", "-o", "{tmp}/m.npz", "--size", "big"],
        ["pca", "encode", "{tmp}/missing.npz", "{photos}/1.png"],
        ["pca", "encode", "{photos}/1.png", "{photos}/1.png"],
        ["pca", "reconstruct", "{model}", "-o", "{tmp}/b.png"],
        ["pca", "reconstruct", "{model}", "--codes", "{photos}/1.png", "-o", "{tmp}/b.png"],
        ["pca", "encode", "{model}", "{tmp}/nothing.jpg"],
        ["pca", "reconstruct", "{model}", "--codes", "{model}", "-o", "{tmp}/b.png"],
        ["pca", "reconstruct", "{model}", "--codes", "{tmp}/big.npy", "-o", "{tmp}/b.png"],
        ["pca", "reconstruct", "{model}", "{photos}/1.png", "--codes", "{tmp}/big.npy", "-o", "{tmp}/b.png"],
        ["pca", "fit", "{photos}", "-o", "{tmp}/no/such/folder/m.npz"],
        ["pca", "show", "{model}", "-o", "{tmp}/grid.txt"],
    ],
)
def test_cli_pca_bad_input_is_one_line(args, photo_folder, tmp_path, quiet) -> None:
    (tmp_path / "empty").mkdir()
    model = pca.fit(photo_folder, k=3, size=(8, 6), progress=False).save(tmp_path / "model.npz")
    np.save(tmp_path / "big.npy", np.zeros(10))
    names = {"tmp": tmp_path, "photos": photo_folder, "empty": tmp_path / "empty", "model": model}
    result = _run(*[a.format(**names) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("belka: note:")]
    assert len(lines) == 1 and lines[0].startswith("belka: "), result.stderr
    assert "Traceback" not in result.output
