"""belka.ops.transforms and `belka transform` against Chromium: the 55 shared cases, the
renders, composition order, origins, errors and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from belka.cli import main
from belka.errors import UsageError
from belka.ops.transforms import (
    CSSMatrix,
    TransformError,
    computed_transform,
    format_number,
    page_matrix,
    parse_transform,
    render_on_page,
    sin_cos_degrees,
    to_computed_string,
    to_dommatrix_string,
    warp,
)

BOX = (200.0, 150.0, 16.0)  # the fixture element: 200x150 px, font-size 16px


@pytest.fixture(scope="module")
def css_dir(fixtures_dir):
    path = fixtures_dir / "css_transforms"
    if not (path / "cases.json").exists():
        pytest.skip("css_transforms fixtures are absent")
    return path


@pytest.fixture(scope="module")
def cases(css_dir):
    return json.loads((css_dir / "cases.json").read_text())["cases"]


def test_all_shared_cases_are_present(cases):
    assert len(cases) == 55


def test_dommatrix_values_strings_and_is2d_match_chromium(cases):
    for case in cases:
        css = case["css"]
        if case["m"] is None:
            with pytest.raises(TransformError):
                parse_transform(css)
            continue
        got = parse_transform(css)
        np.testing.assert_allclose(got.values, case["m"], rtol=0, atol=1e-6, err_msg=css)
        assert got.is2d == case["is2D"], css
        assert got.is_identity == case["isIdentity"], css
        assert str(got) == case["dommatrix_string"], css
        assert to_dommatrix_string(got.m, got.is2d) == case["dommatrix_string"]


def test_the_values_are_bit_exact_too(cases):
    """Not required (1e-6 is), but the angle snapping and operation order make them exact."""
    for case in cases:
        if case["m"] is not None:
            assert list(parse_transform(case["css"]).values) == [float(v) for v in case["m"]]


def test_computed_matrices_match_getcomputedstyle(cases):
    for case in cases:
        css = case["css"]
        if not case["css_supports"]:  # rejected by the style system: computed is 'none'
            assert case["computed"] == "none"
            continue
        got = computed_transform(css, box=BOX[:2], font_size=BOX[2])
        np.testing.assert_allclose(got.values, case["computed_m"], rtol=0, atol=1e-6,
                                   err_msg=css)
        assert got.is2d == case["computed_is2D"], css
        if case["computed"] != "none":
            assert to_computed_string(got.m) == case["computed"], css


def test_relative_units_need_a_box_and_resolve_against_it(cases):
    relative = [c for c in cases if c["dommatrix_error"]
                and "resolvable at parse time" in c["dommatrix_error"]]
    assert relative
    for case in relative:
        with pytest.raises(TransformError, match="resolvable at parse time"):
            parse_transform(case["css"])
        got = parse_transform(case["css"], resolve_relative=BOX)
        np.testing.assert_allclose(got.values, case["computed_m"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("css, expected", [
    ("translateX(50%)", (100, 0)),
    ("translateY(50%)", (0, 75)),
    ("translate(10%, 2em)", (20, 32)),
    ("translate3d(1rem, 100%, 5px)", (16, 150)),
    ("translateX(calc(50% - 10px))", (90, 0)),
])
def test_resolve_relative_mode(css, expected):
    with pytest.raises(TransformError, match="resolvable at parse time"):
        parse_transform(css)
    m = parse_transform(css, resolve_relative=BOX).m
    assert (m[3, 0], m[3, 1]) == expected


def test_invalid_and_keyword_cases(cases):
    by_css = {c["css"]: c for c in cases}
    assert parse_transform("none").is_identity
    assert parse_transform("").is_identity  # new DOMMatrix('') is the identity
    assert by_css[""]["m"] is not None and by_css["none"]["m"] is not None
    assert parse_transform("rotate(90deg").values == parse_transform("rotate(90deg)").values
    for css in ("initial", "inherit", "none rotate(1deg)"):
        with pytest.raises(TransformError):
            parse_transform(css)
    assert computed_transform("inherit").is_identity


@pytest.mark.parametrize("css, words", [
    ("skewX(1)", ["skewX", "'1'", "unit"]),
    ("rotate(90)", ["rotate", "'90'", "deg"]),
    ("matrix(1, 0, 0, 1)", ["matrix", "6", "got 4"]),
    ("rotate(90deg), translateX(10px)", ["','", "spaces"]),
    ("translate(10px 20px)", ["','", "'20px'"]),
    ("rotat(45deg)", ["'rotat'", "rotate"]),
    ("rotate (45deg)", ["'rotate'", "space"]),
    ("translateX(10)", ["'10'", "length"]),
    ("translateX(10qq)", ["'10qq'", "unit"]),
    ("perspective(-5px)", ["'-5px'", "negative"]),
    ("scale(2px)", ["'2px'", "number"]),
    ("translateX(2em)", ["'2em'", "resolvable at parse time"]),
    ("perspective(none)", ["perspective(none)", "never returns"]),
])
def test_errors_name_the_bad_token(css, words):
    with pytest.raises(UsageError) as err:
        parse_transform(css)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("css, m_expected", [
    ("ROTATE(0.5TURN)", [-1, 0, 0, -1]),
    ("rotate(0)", [1, 0, 0, 1]),  # unitless zero is an angle in transform functions
    ("skew(0, 0)", [1, 0, 0, 1]),
    ("rotate(-90deg)", [0, -1, 1, 0]),
    ("rotate(-270deg)", [0, 1, -1, 0]),
    ("rotate(calc(45deg * 2))", [0, 1, -1, 0]),
    ("scale(50%, 200%)", [0.5, 0, 0, 2]),
    ("rotate(45deg)/* comment */scale(1)", [math.sqrt(0.5), math.sqrt(0.5), -math.sqrt(0.5),
                                             math.sqrt(0.5)]),
])
def test_syntax_variants(css, m_expected):
    m = parse_transform(css).m
    np.testing.assert_allclose([m[0, 0], m[0, 1], m[1, 0], m[1, 1]], m_expected, atol=1e-15)


def test_units_and_perspective():
    assert parse_transform("translateX(1in)").m[3, 0] == 96
    assert parse_transform("translateX(12pt)").m[3, 0] == 16
    assert parse_transform("perspective(0)").m[2, 3] == -1  # perspective(0) is 1px
    assert parse_transform("perspective(0.25px)").m[2, 3] == -1
    assert parse_transform("perspective(400px)").m[2, 3] == -1 / 400
    assert parse_transform("perspective(none)", resolve_relative=BOX).is_identity
    assert parse_transform("rotate3d(0, 0, 0, 30deg)").is_identity  # zero axis: no rotation


def test_multiples_of_90_degrees_are_exact():
    for degrees in range(-720, 721, 45):
        s, c = sin_cos_degrees(float(degrees))
        if degrees % 90 == 0:
            assert {abs(s), abs(c)} == {0.0, 1.0}
        assert s == pytest.approx(math.sin(math.radians(degrees)), abs=1e-15)
    assert parse_transform("rotate(30deg) rotate(60deg)").values[:2] == (0.0, 1.0)


def transform_point(m, x, y, z=0.0):
    v = np.array([x, y, z, 1.0]) @ m
    return v[:3] / v[3]


def test_composition_order_rightmost_function_acts_first():
    # rotate(90deg) translateX(50px): translate first, then rotate -> (50, 0) goes to (0, 50)
    np.testing.assert_allclose(
        transform_point(parse_transform("rotate(90deg) translateX(50px)").m, 0, 0), [0, 50, 0])
    np.testing.assert_allclose(
        transform_point(parse_transform("translateX(100px) rotate(90deg)").m, 10, 0),
        [100, 10, 0])
    a, b = parse_transform("scale(2)").m, parse_transform("translate(3px, 4px)").m
    assert np.array_equal(parse_transform("scale(2) translate(3px, 4px)").m, b @ a)


def test_matrix3d_is_column_major_and_round_trips():
    m = parse_transform("matrix3d(0, -1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, -100, 0, 0, 1)")
    assert m.values == (0, -1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, -100, 0, 0, 1)
    np.testing.assert_allclose(transform_point(m.m, 10, 0), [-100, -10, 0])  # the article's turn
    rng = np.random.default_rng(0)
    for _ in range(50):
        values = rng.normal(size=16) * 10.0 ** rng.integers(-8, 8, size=16)
        text = to_dommatrix_string(values, False)
        assert "e" not in text
        assert parse_transform(text).values == tuple(values)
        assert parse_transform(str(parse_transform(text))).values == tuple(values)
    two_d = to_dommatrix_string(parse_transform("matrix(1.5, 0.5, -0.25, 2, 10, -20)").m, True)
    assert two_d == "matrix(1.5, 0.5, -0.25, 2, 10, -20)"


def test_dommatrix_number_format():
    assert format_number(2.653589793079694e-06) == "0.000002653589793079694"
    assert format_number(1e21) == "1000000000000000000000"
    assert format_number(-0.0) == "0"
    assert format_number(0.49999999999999994) == "0.49999999999999994"
    assert format_number(-100.0) == "-100"
    with pytest.raises(UsageError):
        to_dommatrix_string([float("nan")] + [0.0] * 15, False)


# --------------------------------------------------------------------------------------------
# Warps


@pytest.fixture(scope="module")
def renders(css_dir):
    index = json.loads((css_dir / "renders" / "index.json").read_text())
    source = np.asarray(Image.open(css_dir / "renders" / "source_200x150.png").convert("RGB"))
    return index, source


def interior_mask(page_m, size=(400, 300), w=200, h=150, inset=1.0):
    """Page pixels whose centre maps at least ``inset`` px inside the image (the 1-px band at
    the outline is anti-aliased by Chromium)."""
    a = page_m[np.ix_([0, 1, 3], [0, 1, 3])].T
    ys, xs = np.mgrid[0:size[1], 0:size[0]] + 0.5
    v = np.linalg.inv(a) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    x, y = (v[0] / v[2]).reshape(size[1], size[0]), (v[1] / v[2]).reshape(size[1], size[0])
    inside = (x >= inset) & (x <= w - inset) & (y >= inset) & (y <= h - inset)
    outside = (x < -inset) | (x > w + inset) | (y < -inset) | (y > h + inset)
    return inside, outside


EXACT_RENDERS = {"00_none.png", "01_translatex_100px.png",
                 "04_matrix3d_0_1_0_0_1_0_0_0_0_0_1_0_100_0_0_1.png",
                 "05_rotate_90deg_translatex_50px.png"}


def test_renders_match_chromium(renders, css_dir):
    index, source = renders
    assert len(index["renders"]) == 7
    for render in index["renders"]:
        css, name = render["css"], render["file"]
        page_m = page_matrix(parse_transform(css).m, (200, 150), (100, 75))
        np.testing.assert_allclose(page_m.ravel(), render["page_from_image_m"], atol=1e-9)
        chromium = np.asarray(Image.open(css_dir / "renders" / name).convert("RGB")).astype(float)
        ours = render_on_page(source, css, (400, 300), (100, 75))
        exact = render_on_page(source, css, (400, 300), (100, 75), as_float=True)
        inside, outside = interior_mask(page_m)
        diff = np.abs(ours.astype(float) - chromium)[inside]
        float_diff = np.abs(exact - chromium)[inside]
        assert float_diff.max() < 1, name
        assert float_diff.mean() < 0.3, name
        assert diff.max() <= 1 and diff.mean() < 0.01, name
        assert np.all(ours[outside] == 255), name  # the page stays white away from the image
        if name in EXACT_RENDERS:
            assert np.array_equal(ours, chromium.astype(np.uint8)), name
        else:  # the anti-aliased outline is blended like the browser's, roughly
            assert np.abs(ours.astype(float) - chromium).mean() < 0.15, name


def test_warp_identity_rotations_and_fit():
    img = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    assert np.array_equal(warp(img, "none"), img)
    assert np.array_equal(warp(img, "rotate(180deg)"), img[::-1, ::-1])
    assert np.array_equal(warp(img, "rotate(90deg)", output="fit"), np.rot90(img, -1))
    assert np.array_equal(warp(img, "scaleX(-1)"), img[:, ::-1])
    assert warp(img, "scale(2)", output="fit").shape == (12, 18, 3)
    shifted = warp(img, "translateX(3px)")
    assert np.array_equal(shifted[:, 3:], img[:, :-3]) and np.all(shifted[:, :3] == 255)
    assert np.array_equal(warp(img, "translateX(calc(100% / 3))"), shifted)  # % of the image
    assert np.array_equal(warp(img, parse_transform("translateX(3px)")), shifted)
    assert np.array_equal(warp(img[:, :, 0], "rotate(180deg)"), img[::-1, ::-1, 0])


def test_warp_origin():
    img = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    # about the top-left corner a half turn sends the whole image off the canvas
    assert np.all(warp(img, "rotate(180deg)", origin=(0, 0)) == 255)
    assert np.array_equal(warp(img, "rotate(180deg)", origin=(4, 4)), img[::-1, ::-1])
    # scale(2) about the top-left corner shows the top-left quarter, about the bottom-right
    # corner the bottom-right quarter
    quarters = np.full((8, 8, 3), 200, dtype=np.uint8)
    quarters[:4, :4] = 10
    top_left = warp(quarters, "scale(2)", origin=(0, 0))
    assert np.all(top_left[:7, :7] == 10) and np.all(top_left[9:, 9:] == 200)
    assert np.all(warp(quarters, "scale(2)", origin=(8, 8))[1:, 1:] == 200)
    # the origin is a fixed point of page_matrix
    m = page_matrix(parse_transform("rotate(33deg) scale(1.7)").m, (8, 8), origin=(2, 5))
    np.testing.assert_allclose(transform_point(m, 2, 5), [2, 5, 0], atol=1e-12)


def test_warp_background_perspective_and_errors():
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    out = warp(img, "scale(0.5)", background=(0, 0, 255), antialias=False)
    assert out[0, 0].tolist() == [0, 0, 255] and out[5, 5].tolist() == [0, 0, 0]
    assert np.all(warp(img, "scale(0)") == 255)  # singular: nothing is drawn
    # rotateX(90deg) seen edge-on, and a plane tilted behind the viewer
    assert np.all(warp(img, "rotateX(90deg)") == 255)
    with pytest.raises(UsageError, match="behind the viewer"):
        warp(img, "perspective(2px) rotateY(80deg)", output="fit")
    with pytest.raises(UsageError):
        warp(img, "none", output="stretch")
    with pytest.raises(UsageError):
        warp(img, "none", background=(1, 2))


def test_cssmatrix_accessors():
    m = parse_transform("translate(1px, 2px)")
    assert isinstance(m, CSSMatrix) and m.is2d and not m.is_identity
    assert m.values[12:14] == (1.0, 2.0)
    assert str(m) == "matrix(1, 0, 0, 1, 1, 2)"


# --------------------------------------------------------------------------------------------
# CLI


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_print_matrix_needs_no_image():
    result = invoke("transform", "--css",
                    "matrix3d(0, -1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, -100, 0, 0, 1)",
                    "--print-matrix")
    assert result.exit_code == 0, result.output
    numbers, dom = result.output.strip().splitlines()
    assert numbers.split() == ["0", "-1", "0", "0", "1", "0", "0", "0", "0", "0", "1", "0",
                               "-100", "0", "0", "1"]
    assert dom == "matrix3d(0, -1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, -100, 0, 0, 1)"
    result = invoke("transform", "--css", "rotate(3.14159rad)", "--print-matrix")
    assert "0.000002653589793079694" in result.output


def test_cli_warps_an_image(tmp_path):
    src = tmp_path / "in.png"
    pixels = np.random.default_rng(2).integers(0, 256, (10, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src)
    out = tmp_path / "out.png"
    result = invoke("transform", str(src), "--css", "rotate(90deg)", "--fit", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(out)), np.rot90(pixels, -1))
    result = invoke("transform", str(src), "--css", "translateX(50%)", "--background", "#000",
                    "--origin", "0", "0", "-o", str(out), "--print-matrix")
    assert result.exit_code == 0, result.output
    assert "matrix(1, 0, 0, 1, 8, 0)" in result.output
    saved = np.asarray(Image.open(out))
    assert np.all(saved[:, :8] == 0) and np.array_equal(saved[:, 8:], pixels[:, :8])
    result = invoke("transform", str(src), "--css", "none", "--background", "10,20,30",
                    "-o", str(out))
    assert result.exit_code == 0
    result = invoke("transform", str(src), "--css", "translate(50%, 1em)", "--print-matrix")
    assert result.exit_code == 0 and "matrix(1, 0, 0, 1, 8, 16)" in result.output


@pytest.mark.parametrize("args, words", [
    (["--css", "skewX(1)", "--print-matrix"], ["skewX", "'1'"]),
    (["--css", "translateX(2em)", "--print-matrix"], ["resolvable at parse time"]),
    (["--css", "rotate(45deg)"], ["IMAGE"]),
    (["IMG", "--css", "rotate(45deg)", "--background", "nocolour", "-o", "OUT"], ["colour"]),
    (["IMG", "--css", "rotate(45deg)"], ["-o"]),
    (["IMG", "--css", "perspective(1px) rotateY(85deg)", "--fit", "-o", "OUT"], ["behind"]),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(src)
    args = [str(src) if a == "IMG" else str(tmp_path / "o.png") if a == "OUT" else a
            for a in args]
    result = invoke("transform", *args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("belka: ")
    for word in words:
        assert word in lines[0]
