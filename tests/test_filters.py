"""belka.ops.filters and `belka filter`: every pixel against a naive loop, padding, strides,
tiling, clamping, the catalogue, kernel parsing and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from belka.cli import main
from belka.errors import UsageError
from belka.ops import filters
from belka.ops.filters import convolve, kernel, list_kernels, parse_kernel, resolve_kernel

NP_PAD = {"zero": "constant", "reflect": "reflect", "edge": "edge"}
LUMA = np.array([0.299, 0.587, 0.114])


def naive_filter(image, k, *, stride=1, padding="zero", mode="rgb", flip=False):
    """The definition, one output pixel at a time: cross-correlation anchored at (kh//2, kw//2),
    magnitude for a (n, kh, kw) stack, float64 throughout."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and mode == "gray":
        img = img[:, :, :3] @ LUMA
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    stack = np.asarray(k, dtype=np.float64)
    stack = stack if stack.ndim == 3 else stack[None]
    kh, kw = stack.shape[1:]
    cy, cx = kh // 2, kw // 2
    if flip:
        stack = stack[:, ::-1, ::-1]
        cy, cx = kh - 1 - cy, kw - 1 - cx
    padded = np.pad(img, ((cy, kh - 1 - cy), (cx, kw - 1 - cx), (0, 0)), mode=NP_PAD[padding])
    h, w, c = img.shape
    out = np.zeros(((h - 1) // stride + 1, (w - 1) // stride + 1, c))
    for oy in range(out.shape[0]):
        for ox in range(out.shape[1]):
            for ch in range(c):
                window = padded[oy * stride:oy * stride + kh, ox * stride:ox * stride + kw, ch]
                responses = [float(np.sum(window * one)) for one in stack]
                out[oy, ox, ch] = (responses[0] if len(responses) == 1
                                   else sum(r * r for r in responses) ** 0.5)
    return out[:, :, 0] if squeeze else out


def to_uint8(values):
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).integers(0, 256, (11, 14, 3), dtype=np.uint8)


RNG = np.random.default_rng(3)
KERNELS = {
    "identity-1x1": kernel("identity"),
    "article-blur-3x3": kernel("gaussian-blur"),
    "sharpen-3x3": kernel("sharpen"),
    "gaussian-5x5": kernel("gaussian", sigma=1.2, size=5),
    "random-5x3": RNG.normal(size=(5, 3)),
    "random-1x5": RNG.normal(size=(1, 5)),
    "sobel-magnitude": kernel("sobel"),
}
DYADIC = {"identity-1x1", "article-blur-3x3", "sharpen-3x3", "sobel-magnitude"}


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["zero", "reflect", "edge"])
@pytest.mark.parametrize("mode", ["rgb", "gray"])
def test_every_pixel_matches_the_naive_loop(image, name, stride, padding, mode):
    k = KERNELS[name]
    ref = naive_filter(image, k, stride=stride, padding=padding, mode=mode)
    exact = convolve(image, k, stride=stride, padding=padding, mode=mode, clamp=False,
                     dtype="float64")
    assert exact.shape == ref.shape
    np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-9)
    assert np.array_equal(convolve(image, k, stride=stride, padding=padding, mode=mode,
                                   dtype="float64"), to_uint8(ref))
    fast = convolve(image, k, stride=stride, padding=padding, mode=mode)  # float32
    if name in DYADIC and mode == "rgb":  # exactly representable: float32 is exact too
        assert np.array_equal(fast, to_uint8(ref))
    else:  # float32 may only differ where the exact value sits on a rounding tie
        diff = np.abs(fast.astype(int) - to_uint8(ref).astype(int))
        near_tie = np.abs(np.abs(ref - np.floor(ref)) - 0.5) < 1e-3
        assert diff.max() <= 1 and np.all(near_tie[diff > 0])


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (2, 3), (4, 5, 4)])
@pytest.mark.parametrize("padding", ["zero", "reflect", "edge"])
def test_tiny_and_odd_shapes_including_kernels_larger_than_the_image(shape, padding):
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    k = np.random.default_rng(2).normal(size=(5, 5))
    for stride in (1, 2):
        got = convolve(img, k, stride=stride, padding=padding, clamp=False, dtype="float64")
        np.testing.assert_allclose(got, naive_filter(img, k, stride=stride, padding=padding),
                                   atol=1e-9)


def test_even_kernels_anchor_at_half_the_size(image):
    k = np.random.default_rng(4).normal(size=(2, 4))
    for flip in (False, True):
        got = convolve(image, k, padding="edge", clamp=False, dtype="float64", flip=flip)
        np.testing.assert_allclose(got, naive_filter(image, k, padding="edge", flip=flip),
                                   atol=1e-9)


@pytest.mark.parametrize("mode", ["rgb", "gray"])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_tiled_and_untiled_are_identical(mode, stride, monkeypatch):
    img = np.random.default_rng(5).integers(0, 256, (53, 37, 3), dtype=np.uint8)
    k = KERNELS["gaussian-5x5"]
    whole = convolve(img, k, stride=stride, mode=mode, padding="reflect", tile=10_000)
    for tile in (1, 2, 7, None):
        assert np.array_equal(
            convolve(img, k, stride=stride, mode=mode, padding="reflect", tile=tile), whole)
    monkeypatch.setattr(filters, "_BAND_ELEMENTS", 500)  # force automatic multi-band tiling
    assert np.array_equal(convolve(img, k, stride=stride, mode=mode, padding="reflect"), whole)


def test_progress_bar_does_not_change_the_result(image, capsys):
    k = kernel("box-blur")
    assert np.array_equal(convolve(image, k, progress=True, tile=3), convolve(image, k))


def test_convolve_is_correlation_not_flipped_convolution():
    """belka computes cross-correlation (like cv2.filter2D and the article's loop): on an
    impulse the output is the kernel rotated by 180 degrees; flip=True is true convolution."""
    impulse = np.zeros((5, 5), dtype=np.float64)
    impulse[2, 2] = 1.0
    k = np.arange(1.0, 10.0).reshape(3, 3)
    correlated = convolve(impulse, k, clamp=False, dtype="float64")
    assert np.array_equal(correlated[1:4, 1:4], k[::-1, ::-1])
    convolved = convolve(impulse, k, clamp=False, dtype="float64", flip=True)
    assert np.array_equal(convolved[1:4, 1:4], k)
    # sobel-x is written for correlation: positive where it gets brighter to the right
    ramp = np.tile(np.arange(6, dtype=np.float64) * 10, (5, 1))
    assert np.all(convolve(ramp, kernel("sobel-x"), clamp=False, padding="edge")[:, 1:-1] > 0)


def test_agrees_with_scipy_correlate_and_convolve(image):
    ndimage = pytest.importorskip("scipy.ndimage")
    k = KERNELS["random-5x3"]
    img = image.astype(np.float64)
    ours = convolve(image, k, padding="reflect", clamp=False, dtype="float64")
    np.testing.assert_allclose(ours, ndimage.correlate(img, k[:, :, None], mode="mirror"),
                               atol=1e-9)
    ours_flipped = convolve(image, k, padding="reflect", clamp=False, dtype="float64", flip=True)
    np.testing.assert_allclose(ours_flipped, ndimage.convolve(img, k[:, :, None], mode="mirror"),
                               atol=1e-9)


@pytest.mark.parametrize("padding", ["reflect", "edge"])
def test_article_blur_keeps_a_constant_image_constant_up_to_the_edges(padding):
    flat = np.full((9, 12, 3), 137, dtype=np.uint8)
    out = convolve(flat, kernel("gaussian-blur"), padding=padding)
    assert np.array_equal(out, flat)


def test_zero_padding_darkens_the_border_only():
    flat = np.full((6, 6), 200, dtype=np.uint8)
    out = convolve(flat, kernel("gaussian-blur"), padding="zero")
    assert np.all(out[1:-1, 1:-1] == 200)
    assert out[0, 0] == round(200 * 9 / 16)  # corner keeps 9/16 of the weight: 112.5 -> 112
    assert out[0, 3] == 150  # an edge keeps 12/16


def test_normalize_divides_by_the_sum_or_by_the_positive_weights():
    img = np.random.default_rng(8).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    unnormalised = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64)
    assert np.array_equal(convolve(img, unnormalised, normalize=True, padding="edge"),
                          convolve(img, kernel("gaussian-blur"), padding="edge"))
    step = np.zeros((5, 8), dtype=np.uint8)
    step[:, 4:] = 255
    edges = convolve(step, kernel("sobel-x"), normalize=True, padding="edge")  # sobel-x / 4
    assert edges[:, 3].tolist() == [255] * 5 and edges[:, 4].tolist() == [255] * 5
    assert np.all(edges[:, :3] == 0) and np.all(edges[:, 5:] == 0)


def test_clamp_rounds_half_to_even_then_clamps_like_uint8clampedarray():
    values = np.array([[0.5, 1.5, 2.5, 3.5, -7.0, 254.5, 255.5, 300.0]])
    out = convolve(values, [[1.0]])
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 2, 2, 4, 0, 254, 255, 255]]
    assert convolve(np.array([[np.nan, 1.0]]), [[1.0]]).tolist() == [[0, 1]]
    raw = convolve(values, [[1.0]], clamp=False)
    assert raw.dtype == np.float32 and raw.tolist() == values.astype(np.float32).tolist()
    assert convolve(values, [[1.0]], clamp=False, dtype="float64").dtype == np.float64


def test_output_shapes_and_gray_mode():
    img = np.zeros((10, 7, 3), dtype=np.uint8)
    assert convolve(img, kernel("box-blur"), stride=3).shape == (4, 3, 3)
    assert convolve(img, kernel("box-blur"), mode="gray").shape == (10, 7)
    assert convolve(img[:, :, 0], kernel("box-blur")).shape == (10, 7)
    rgba = np.full((4, 4, 4), 50, dtype=np.uint8)
    assert convolve(rgba, kernel("identity")).shape == (4, 4, 4)
    assert np.all(convolve(rgba, kernel("identity"), mode="gray") == 50)


@pytest.mark.parametrize("bad", [dict(stride=0), dict(stride=1.5), dict(padding="wrap"),
                                 dict(mode="hsv"), dict(tile=0), dict(dtype="float16")])
def test_bad_arguments_are_usage_errors(bad):
    with pytest.raises(UsageError):
        convolve(np.zeros((4, 4), np.uint8), kernel("identity"), **bad)


def test_catalogue():
    names = [info.name for info in list_kernels()]
    for expected in ["identity", "box-blur", "gaussian-blur", "gaussian", "sharpen", "unsharp",
                     "sobel-x", "sobel-y", "sobel", "prewitt-x", "prewitt-y", "scharr-x",
                     "scharr-y", "laplacian", "emboss", "outline"]:
        assert expected in names
    assert kernel("gaussian-blur").tolist() == [[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8],
                                                [1 / 16, 1 / 8, 1 / 16]]
    for name in ["box-blur", "gaussian-blur", "gaussian", "sharpen", "unsharp", "identity"]:
        assert kernel(name).sum() == pytest.approx(1.0)
    for name in ["sobel-x", "sobel-y", "prewitt-x", "scharr-y", "laplacian", "outline"]:
        assert kernel(name).sum() == 0
    assert kernel("sobel").shape == (2, 3, 3)
    assert kernel("sobel-y").tolist() == kernel("sobel-x").T.tolist()
    assert kernel("gaussian", sigma=1).shape == (7, 7)
    assert kernel("gaussian", sigma=2).shape == (13, 13)
    assert kernel("gaussian", sigma=2, size=5).shape == (5, 5)
    assert kernel("box-blur", size=5).shape == (5, 5)
    assert kernel("Box_Blur").shape == (3, 3)  # case and underscores are forgiven
    unsharp = kernel("unsharp", amount=0.5, sigma=1.0)
    assert unsharp[3, 3] == pytest.approx(1.5 - 0.5 * kernel("gaussian", sigma=1.0)[3, 3])


@pytest.mark.parametrize("call, words", [
    (lambda: kernel("sobl"), ["unknown kernel", "sobel"]),
    (lambda: kernel("sobel", sigma=2), ["sobel", "sigma"]),
    (lambda: kernel("box-blur", size=4), ["odd"]),
    (lambda: kernel("gaussian", sigma=-1), ["sigma", "positive"]),
    (lambda: kernel("gaussian", sigma=500), ["sigma"]),
])
def test_catalogue_errors_say_what_is_wrong(call, words):
    with pytest.raises(UsageError) as err:
        call()
    for word in words:
        assert word in str(err.value)


def test_parse_kernel_literals():
    assert parse_kernel("[[0,-1,0],[-1,5,-1],[0,-1,0]]").tolist() == kernel("sharpen").tolist()
    assert parse_kernel(" [[1/16, 1/8, 1/16], [1/8, 1/4, 1/8], [1/16, 1/8, 1/16]] ").tolist() \
        == kernel("gaussian-blur").tolist()
    assert parse_kernel("[1, 2, 1]").shape == (1, 3)  # a flat list is one row
    assert parse_kernel("[[1e-1, +2.5, -.5]]").tolist() == [[0.1, 2.5, -0.5]]
    assert parse_kernel("[[1, 2], [3, 4]]", allow_even=True).shape == (2, 2)


@pytest.mark.parametrize("text, words", [
    ("[[1, 2, 3], [4, 5]]", ["ragged", "row 2", "2 values", "3"]),
    ("[]", ["empty"]),
    ("[[]]", ["empty"]),
    ("[[1, a, 3]]", ["'a'", "not a number"]),
    ("[[1, 2], [3, 4]]", ["2x2", "even", "odd"]),
    ("[[1, 2, 3]", ["]"]),
    ("[[1, 2, 3]] 4", ["'4'"]),
    ("[[1 2 3]]", ["','"]),
    ("[[[1]]]", ["2-D"]),
    ("[[1, 1/0, 1]]", ["zero"]),
])
def test_parse_kernel_errors_name_the_problem(text, words):
    with pytest.raises(UsageError) as err:
        parse_kernel(text)
    for word in words:
        assert word in str(err.value)


def test_kernel_files(tmp_path):
    good_json = tmp_path / "k.json"
    good_json.write_text(json.dumps([[0, 1, 0], [1, -4, 1], [0, 1, 0]]))
    assert parse_kernel(str(good_json)).tolist() == kernel("laplacian").tolist()
    good_npy = tmp_path / "k.npy"
    np.save(good_npy, kernel("emboss"))
    assert parse_kernel(good_npy).tolist() == kernel("emboss").tolist()
    assert resolve_kernel(str(good_npy)).tolist() == kernel("emboss").tolist()
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"not an npy file")
    even_npy = tmp_path / "even.npy"
    np.save(even_npy, np.ones((4, 4)))
    nan_npy = tmp_path / "nan.npy"
    np.save(nan_npy, np.array([[np.nan]]))
    text_npy = tmp_path / "text.npy"
    np.save(text_npy, np.array([["a"]]))
    for path, word in [(bad_npy, "npy"), (even_npy, "even"), (nan_npy, "NaN"),
                       (text_npy, "numbers"), (tmp_path / "missing.json", "does not exist"),
                       (tmp_path / "k.txt", ".json or .npy")]:
        with pytest.raises(UsageError, match=word):
            parse_kernel(str(path))


def test_resolve_kernel_keeps_parameters_for_named_kernels():
    assert resolve_kernel("gaussian", sigma=0.5).shape == (5, 5)
    with pytest.raises(UsageError, match="sigma"):
        resolve_kernel("[[1]]", sigma=2.0)


# --------------------------------------------------------------------------------------------
# CLI


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "in.png"
    pixels = np.random.default_rng(9).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path, pixels


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_list():
    result = invoke("filter", "--list")
    assert result.exit_code == 0
    assert "gaussian-blur" in result.output and "sobel" in result.output
    assert "sigma=1" in result.output


def test_cli_filters_an_image(photo, tmp_path):
    path, pixels = photo
    out = tmp_path / "out.png"
    result = invoke("filter", str(path), "-k", "gaussian-blur", "-o", str(out))
    assert result.exit_code == 0, result.output
    expected = convolve(pixels, kernel("gaussian-blur"), padding="reflect")
    assert np.array_equal(np.asarray(Image.open(out)), expected)

    out2 = tmp_path / "edges.png"
    result = invoke("filter", str(path), "-k", "[[0,-1,0],[-1,5,-1],[0,-1,0]]", "--gray",
                    "--stride", "2", "--padding", "edge", "-o", str(out2))
    assert result.exit_code == 0, result.output
    saved = Image.open(out2)
    assert saved.mode == "L" and saved.size == (15, 10)
    assert np.array_equal(np.asarray(saved), convolve(pixels, kernel("sharpen"), stride=2,
                                                      padding="edge", mode="gray"))

    result = invoke("filter", str(path), "-k", "gaussian", "--sigma", "0.8", "--normalize",
                    "-o", str(tmp_path / "g.png"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, words", [
    (["-k", "[[1,2],[3,4]]"], ["even"]),
    (["-k", "[[1,2,3],[4]]"], ["ragged"]),
    (["-k", "nope"], ["unknown kernel"]),
    (["-k", "[[1]]", "--sigma", "2"], ["sigma"]),
    (["-k", "sobel", "--size", "5"], ["size"]),
    ([], ["--kernel"]),
])
def test_cli_bad_input_is_one_line_and_exit_2(photo, tmp_path, args, words):
    path, _ = photo
    result = invoke("filter", str(path), *args, "-o", str(tmp_path / "o.png"))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("belka: ")
    for word in words:
        assert word in lines[0]


def test_cli_needs_an_image_and_an_output(photo):
    path, _ = photo
    for args in (["-k", "sharpen"], [str(path), "-k", "sharpen"],
                 [str(path.parent / "missing.png"), "-k", "sharpen", "-o", "x.png"]):
        result = invoke("filter", *args)
        assert result.exit_code == 2 and result.output.startswith("belka: ")
