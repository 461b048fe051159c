"""belka.images: safe decoding, resize policies, file discovery and atomic saving.

Every image, good or bad, is generated here with Pillow; nothing is read from committed files.
"""

from __future__ import annotations

import io
import os
import random
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from belka import images
from belka.errors import ImageError, UsageError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(height: int = 48, width: int = 64) -> np.ndarray:
    """Red, green, blue and white quadrants: four colours, so palette formats keep them exactly."""
    out = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    out[:h, :w], out[:h, w:], out[h:, :w], out[h:, w:] = RED, GREEN, BLUE, WHITE
    return out


def write(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG (valid IHDR and CRCs) that claims width x height but has a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def assert_close_lossy(decoded: np.ndarray, pixels: np.ndarray) -> None:
    """Lossy codecs smear colour across the quadrant edges (chroma subsampling); away from the
    edges the colours must survive, and the average error must stay small."""
    difference = np.abs(decoded.astype(int) - pixels.astype(int))
    height, width = pixels.shape[:2]
    interior = np.ones((height, width), bool)
    interior[height // 2 - 8 : height // 2 + 8] = False
    interior[:, width // 2 - 8 : width // 2 + 8] = False
    assert difference[interior].max() <= 8
    assert difference.mean() < 6


def assert_rgb(array: np.ndarray) -> None:
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert array.flags.c_contiguous and array.flags.writeable


# --------------------------------------------------------------------------------------------
# Formats and sources


@pytest.mark.parametrize(
    "suffix, options, lossy",
    [
        (".png", {}, False),
        (".bmp", {}, False),
        (".tif", {}, False),
        (".tiff", {"compression": "tiff_lzw"}, False),
        (".gif", {}, False),
        (".webp", {"lossless": True}, False),
        (".webp", {"quality": 90}, True),
        (".jpg", {"quality": 95}, True),
    ],
)
def test_every_format_round_trips(tmp_path, suffix, options, lossy):
    pixels = quadrants()
    path = write(Image.fromarray(pixels), tmp_path / f"picture{suffix}", **options)
    decoded = images.decode(path)
    assert_rgb(decoded)
    assert decoded.shape == pixels.shape
    if lossy:
        assert_close_lossy(decoded, pixels)
    else:
        np.testing.assert_array_equal(decoded, pixels)


def test_path_bytes_file_objects_and_pil_images_decode_alike(tmp_path):
    path = write(Image.fromarray(quadrants()), tmp_path / "picture.png")
    data = path.read_bytes()
    expected = quadrants()
    with open(path, "rb") as stream:
        from_stream = images.decode(stream)
    with Image.open(path) as lazy:
        from_pil = images.decode(lazy)
    for decoded in (
        images.decode(str(path)),
        images.decode(path),
        images.decode(data),
        images.decode(bytearray(data)),
        images.decode(memoryview(data)),
        images.decode(io.BytesIO(data)),
        from_stream,
        from_pil,
    ):
        assert_rgb(decoded)
        np.testing.assert_array_equal(decoded, expected)


def test_file_object_is_read_from_its_current_position():
    data = encoded(Image.fromarray(quadrants()), "PNG")
    stream = io.BytesIO(b"some header" + data)
    stream.seek(len(b"some header"))
    np.testing.assert_array_equal(images.decode(stream), quadrants())


def test_rgb_array_passes_through_without_a_copy():
    pixels = quadrants()
    assert np.shares_memory(images.decode(pixels), pixels)


def test_arrays_of_other_layouts_are_converted():
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    np.testing.assert_array_equal(images.decode(grey), np.repeat(grey[:, :, None], 3, axis=2))

    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(images.decode(rgba), [[RED, WHITE]])

    as_float = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(images.decode(as_float)[0, :, 0], [0, 128, 255])

    fortran_order = np.asfortranarray(quadrants())
    decoded = images.decode(fortran_order)
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, quadrants())


@pytest.mark.parametrize(
    "array",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.int64), np.zeros((0, 4, 3), np.uint8)],
)
def test_unusable_arrays_raise_image_error(array):
    with pytest.raises(ImageError, match="array|no pixels"):
        images.decode(array, name="input")


def test_wrong_source_types_are_programming_errors():
    with pytest.raises(TypeError):
        images.decode(12345)
    with pytest.raises(TypeError, match="binary mode"):
        images.decode(io.StringIO("text"))


# --------------------------------------------------------------------------------------------
# Orientation and modes


def test_exif_orientation_6_rotates_a_jpeg(tmp_path):
    stored = np.empty((24, 40, 3), np.uint8)  # 40 wide, 24 high as stored
    stored[:] = BLUE
    stored[:12, :12] = RED  # top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = write(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)

    decoded = images.decode(path)
    assert decoded.shape == (40, 24, 3)
    # Rotating clockwise moves the stored top-left corner to the top-right.
    np.testing.assert_allclose(decoded[2, -3], RED, atol=20)
    np.testing.assert_allclose(decoded[2, 2], BLUE, atol=20)
    np.testing.assert_allclose(decoded[-3, -3], BLUE, atol=20)


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (1, lambda a: a),
        (2, lambda a: a[:, ::-1]),
        (3, lambda a: a[::-1, ::-1]),
        (4, lambda a: a[::-1]),
        (5, lambda a: a.transpose(1, 0, 2)),
        (6, lambda a: np.rot90(a, k=-1)),
        (7, lambda a: a[::-1, ::-1].transpose(1, 0, 2)),
        (8, lambda a: np.rot90(a, k=1)),
    ],
)
def test_every_exif_orientation_is_applied(orientation, expected):
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(Image.fromarray(stored), "PNG", exif=exif)
    decoded = images.decode(data)
    assert_rgb(decoded)
    np.testing.assert_array_equal(decoded, expected(stored))
    with Image.open(io.BytesIO(data)) as image:
        np.testing.assert_array_equal(decoded, np.asarray(ImageOps.exif_transpose(image)))


def test_malformed_exif_does_not_make_pixels_unreadable():
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera maker"  # Make, an ASCII tag...
    data = encoded(Image.fromarray(quadrants(24, 40)), "JPEG", exif=exif)
    make_entry = b"\x01\x0f\x00\x02"  # big-endian tag 0x010F, type 2 (ASCII)
    assert data.count(make_entry) == 1
    data = data.replace(make_entry, b"\x01\x00\x00\x02")  # ...relabelled ImageWidth
    with Image.open(io.BytesIO(data)) as image, pytest.raises(struct.error):
        ImageOps.exif_transpose(image)  # Pillow cannot write that EXIF block back
    assert images.decode(data).shape == (40, 24, 3)


def test_caller_pil_image_is_not_rotated_in_place(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(Image.fromarray(quadrants(24, 40)), tmp_path / "rotated.png", exif=exif)
    with Image.open(path) as image:
        assert images.decode(image).shape == (40, 24, 3)
        assert image.size == (40, 24)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composites_on_white(fmt):
    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([*RED, *GREEN, *BLUE] + [0] * (256 * 3 - 9))
    palette_image.putdata([0, 1, 2])
    decoded = images.decode(encoded(palette_image, fmt, transparency=1))
    np.testing.assert_array_equal(decoded, [[RED, WHITE, BLUE]])


def test_palette_without_transparency_uses_palette_colours():
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([*GREEN, *BLUE] + [0] * (256 * 3 - 6))
    palette_image.putdata([1, 0])
    np.testing.assert_array_equal(images.decode(encoded(palette_image, "PNG")), [[BLUE, GREEN]])


@pytest.mark.parametrize("fmt, tolerance", [("TIFF", 0), ("JPEG", 6)])
def test_cmyk_becomes_rgb(fmt, tolerance):
    cmyk = Image.new("CMYK", (24, 8), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((0, 255, 255, 0), (8, 0, 16, 8))  # magenta + yellow: red
    cmyk.paste((0, 0, 0, 255), (16, 0, 24, 8))  # key: black
    decoded = images.decode(encoded(cmyk, fmt))
    assert_rgb(decoded)
    np.testing.assert_allclose(decoded[4, 3], WHITE, atol=tolerance)
    np.testing.assert_allclose(decoded[4, 11], RED, atol=tolerance)
    np.testing.assert_allclose(decoded[4, 20], (0, 0, 0), atol=tolerance)


@pytest.mark.parametrize("fmt, mode", [("PNG", "I;16"), ("TIFF", "I;16B")])
def test_sixteen_bit_grey_is_scaled_not_clipped(fmt, mode):
    dtype = ">u2" if mode.endswith("B") else "<u2"

    def decode_sixteen(row: list[int]) -> np.ndarray:
        values = np.array([row], dtype=dtype)
        data = encoded(Image.frombytes(mode, (len(row), 1), values.tobytes()), fmt)
        with Image.open(io.BytesIO(data)) as reopened:
            assert reopened.mode.startswith("I;16")  # the test really exercises a 16-bit decode
        decoded = images.decode(data)
        assert_rgb(decoded)
        assert (decoded[..., 0] == decoded[..., 2]).all()
        return decoded[0, :, 0]

    grey = decode_sixteen([0, 257, 32768, 65535])
    assert grey[0] == 0 and grey[1] == 1 and grey[3] == 255
    assert abs(int(grey[2]) - 128) <= 1
    # A dark image stays dark: 0..65535 is the scale, not the image's own range.
    np.testing.assert_array_equal(decode_sixteen([0, 1000, 16384]), [0, 4, 64])


def test_thirty_two_bit_and_float_grey_are_scaled():
    as_int = Image.fromarray(np.array([[0, 32768, 65535]], np.int32))
    assert as_int.mode == "I"
    np.testing.assert_array_equal(images.decode(as_int)[0, :, 1], [0, 128, 255])

    beyond_sixteen_bits = Image.fromarray(np.array([[-10, 0, 1_000_000]], np.int32))
    np.testing.assert_array_equal(images.decode(beyond_sixteen_bits)[0, :, 1], [0, 0, 255])

    as_float = Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32))
    assert as_float.mode == "F"
    np.testing.assert_array_equal(images.decode(as_float)[0, :, 2], [0, 64, 255])


def test_alpha_is_composited_onto_white():
    grey_alpha = Image.new("LA", (2, 1))
    grey_alpha.putdata([(100, 0), (100, 255)])
    np.testing.assert_array_equal(
        images.decode(encoded(grey_alpha, "PNG")), [[WHITE, (100, 100, 100)]]
    )

    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 255, 128)])
    decoded = images.decode(encoded(rgba, "PNG"))
    np.testing.assert_array_equal(decoded[0, :2], [WHITE, RED])
    np.testing.assert_allclose(decoded[0, 2], (127, 127, 255), atol=1)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel_become_three_equal_channels(mode):
    grey = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert(mode)
    decoded = images.decode(encoded(grey, "PNG"))
    np.testing.assert_array_equal(decoded[..., 0], [[0, 255], [255, 0]])
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


def test_unsupported_mode_is_named():
    with pytest.raises(ImageError, match="unsupported image mode 'HSV'") as caught:
        images.decode(Image.new("HSV", (2, 2)), name="odd")
    assert caught.value.path == "odd"


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.n_frames == 2
    decoded = images.decode(data)
    assert decoded.shape == (8, 8, 3)
    assert (decoded == RED).all()


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_truncated_image_is_an_error(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), fmt)
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt") as caught:
        images.decode(path)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_header_after_valid_magic_is_reported_as_corrupt():
    with pytest.raises(ImageError, match="truncated or corrupt image data: the PNG header"):
        images.decode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, name="upload")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(ImageError, match=r"file is empty \(0 bytes\)"):
        images.decode(path)
    with pytest.raises(ImageError, match="empty"):
        images.decode(b"")


@pytest.mark.parametrize(
    "content",
    [
        bytes(random.Random(7).randrange(256) for _ in range(4096)),
        b"just some notes about squirrels\n" * 20,
    ],
)
def test_not_an_image(tmp_path, content):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as caught:
        images.decode(path)
    message = str(caught.value)
    assert "not an image" in message
    assert "supported: JPEG, PNG, WebP, GIF, BMP, TIFF" in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "head, kind",
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "AVIF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    ],
)
def test_common_unsupported_formats_are_named(head, kind):
    with pytest.raises(ImageError, match=f"unsupported image format {kind}.*convert it"):
        images.decode(head + b"\x00" * 64)


def test_pillow_formats_outside_the_supported_set_are_refused():
    ppm = encoded(Image.fromarray(quadrants()), "PPM")
    assert Image.open(io.BytesIO(ppm)).size == (64, 48)  # Pillow itself would read it
    with pytest.raises(ImageError, match="not an image"):
        images.decode(ppm)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file") as caught:
        images.decode(tmp_path / "nope.png")
    assert caught.value.path == str(tmp_path / "nope.png")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ImageError, match="is a folder"):
        images.decode(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads everything")
def test_permission_denied(tmp_path):
    path = write(Image.fromarray(quadrants()), tmp_path / "secret.png")
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            images.decode(path)
    finally:
        path.chmod(0o600)


def test_permission_denied_message(tmp_path, monkeypatch):
    """The same mapping, for machines where the tests run as root and chmod cannot deny reads."""
    path = write(Image.fromarray(quadrants()), tmp_path / "secret.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(ImageError, match="permission denied; check that the file is readable"):
        images.decode(path)


def test_mangled_files_raise_only_image_error():
    """Random byte flips and cuts in every format give pixels or ImageError, never a raw error."""
    noise = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    rng = random.Random(11)
    outcomes = set()
    for fmt in ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"]:
        data = encoded(Image.fromarray(noise), fmt)
        for _ in range(40):
            mangled = bytearray(data)
            if rng.random() < 0.5:
                mangled = mangled[: rng.randrange(1, len(mangled))]
            for _ in range(rng.randint(1, 6)):
                position = rng.randrange(min(len(mangled), 256))
                mangled[position] = rng.randrange(256)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Pillow warns about mangled TIFF tags
                    assert_rgb(images.decode(bytes(mangled)))
                outcomes.add("decoded")
            except ImageError:
                outcomes.add("refused")
    assert outcomes == {"decoded", "refused"}


# --------------------------------------------------------------------------------------------
# Pixel limit


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    assert path.stat().st_size < 200

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageError) as caught:
            images.decode(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 50 * 2**20
    message = str(caught.value)
    assert "image is 100000x100000 = 10000.0 megapixels" in message
    assert "over the 50.0-megapixel limit" in message
    assert "raise the limit with BELKA_MAX_PIXELS (belka serve: --max-pixels)" in message


def test_limit_is_belkas_not_pillows(monkeypatch):
    # 8000 x 8000 = 64 MP: under Pillow's own warning threshold (~89 MP), over belka's 50 MP.
    assert 8000 * 8000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="8000x8000 = 64.0 megapixels"):
        images.decode(png_claiming(8000, 8000))

    # And a tiny Pillow limit does not matter when belka's allows the image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = images.decode(encoded(Image.fromarray(quadrants()), "PNG"))
    assert decoded.shape == (48, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_limit_from_argument_and_environment(monkeypatch):
    data = encoded(Image.fromarray(quadrants(80, 100)), "PNG")  # 8000 pixels
    assert images.decode(data, max_pixels=8000).shape == (80, 100, 3)
    with pytest.raises(ImageError, match="over the 0.008-megapixel limit"):
        images.decode(data, max_pixels=7999)

    monkeypatch.setenv("BELKA_MAX_PIXELS", "7999")
    with pytest.raises(ImageError, match="100x80"):
        images.decode(data)
    assert images.decode(data, max_pixels=8000).shape == (80, 100, 3)  # the argument wins

    monkeypatch.setenv("BELKA_MAX_PIXELS", "8000")
    assert images.decode(data).shape == (80, 100, 3)

    monkeypatch.setenv("BELKA_MAX_PIXELS", "lots")
    with pytest.raises(UsageError, match="BELKA_MAX_PIXELS"):
        images.decode(data)
    with pytest.raises(UsageError):
        images.decode(data, max_pixels=0)


def test_limit_applies_to_pil_images_but_not_to_arrays():
    with pytest.raises(ImageError, match="megapixel limit"):
        images.decode(Image.new("RGB", (100, 80)), max_pixels=100)
    assert images.decode(quadrants(), max_pixels=1).shape == (48, 64, 3)


# --------------------------------------------------------------------------------------------
# Draft decoding


def test_draft_decodes_a_large_jpeg_at_reduced_scale():
    data = encoded(Image.fromarray(np.tile(quadrants(), (16, 16, 1))), "JPEG")  # 1024 x 768
    assert images.decode(data).shape == (768, 1024, 3)
    small = images.decode(data, draft=(200, 200))
    assert small.shape == (384, 512, 3)  # scale 1/2: the largest that keeps both sides >= 200
    png = encoded(Image.fromarray(quadrants()), "PNG")
    assert images.decode(png, draft=(8, 8)).shape == (48, 64, 3)  # only JPEG has a draft mode


def test_draft_size_is_taken_in_upright_coordinates():
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.tile(quadrants(), (8, 16, 1))  # stored 1024 wide x 384 high, displayed 384 x 1024
    data = encoded(Image.fromarray(stored), "JPEG", exif=exif)
    decoded = images.decode(data, draft=(96, 256))  # upright width 96, height 256
    assert decoded.shape == (256, 96, 3)  # 1/4 scale; ignoring the rotation would give 1/2


# --------------------------------------------------------------------------------------------
# Resizing


def bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


@pytest.mark.parametrize("policy", images.RESIZE_POLICIES)
@pytest.mark.parametrize("shape", [(256, 512), (512, 256), (100, 100), (7, 300)])
def test_resize_output_shape(policy, shape):
    pixels = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = images.resize(pixels, 224, policy)
    assert_rgb(out)
    assert out.shape == (224, 224, 3)


def test_crop_takes_the_centre_after_scaling_the_short_side_to_256():
    pixels = np.zeros((256, 512, 3), np.uint8)  # 512 wide: no scaling needed for 224 / 0.875
    pixels[:, 144:148] = RED  # the crop's first columns
    pixels[16, :] = GREEN  # the crop's first row
    out = images.resize(pixels, 224, "crop")
    np.testing.assert_array_equal(out, pixels[16:240, 144:368])
    assert (out[:, :4][out[:, :4, 1] == 0] == RED).all()
    assert (out[0, 5:] == GREEN).all()


@pytest.mark.parametrize(
    "height, width, scaled, box",
    [
        (300, 600, (512, 256), (16, 144)),  # landscape: 600x300 -> 512x256, centre crop
        (600, 300, (256, 512), (144, 16)),  # portrait
        (333, 500, (384, 256), (16, 80)),  # round(500 * 256 / 333) = 384
        (300, 603, (515, 256), (16, 146)),  # offset int(round(145.5)) = 146: round half to even
    ],
)
def test_crop_matches_pillow_resize_then_centre_crop(height, width, scaled, box):
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    top, left = box
    expected = bilinear(pixels, scaled)[top : top + 224, left : left + 224]
    np.testing.assert_array_equal(images.resize(pixels, 224, "crop"), expected)


def test_crop_of_a_thin_strip_resamples_only_the_centre(monkeypatch):
    requested = []
    original_resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        requested.append(size)
        return original_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    strip = np.random.default_rng(5).integers(0, 256, (4, 2000, 3), dtype=np.uint8)
    out = images.resize(strip, 224, "crop")
    assert out.shape == (224, 224, 3)
    # Scaling the whole strip would mean 128000 x 256 pixels.
    assert max(w * h for w, h in requested) <= 224 * 224


def test_crop_of_a_thin_strip_stays_within_one_level_of_the_full_resize():
    strip = np.random.default_rng(6).integers(0, 256, (10, 400, 3), dtype=np.uint8)
    full = bilinear(strip, (10240, 256))  # short side 10 -> 256
    left = (10240 - 224) // 2
    expected = full[16:240, left : left + 224]
    difference = np.abs(images.resize(strip, 224, "crop").astype(int) - expected)
    assert difference.max() <= 1


def test_crop_fraction_changes_the_scaled_short_side():
    pixels = np.random.default_rng(2).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    expected = bilinear(pixels, (128, 64))[0:64, 32:96]  # crop_fraction 1: short side -> 64
    np.testing.assert_array_equal(images.resize(pixels, 64, "crop", crop_fraction=1.0), expected)
    with pytest.raises(UsageError):
        images.resize(pixels, 64, "crop", crop_fraction=1.5)


def test_squash_equals_pillow_bilinear_resize():
    pixels = np.random.default_rng(3).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    expected = bilinear(pixels, (224, 224))
    np.testing.assert_array_equal(images.resize(pixels, 224, "squash"), expected)


@pytest.mark.parametrize("height, width", [(200, 400), (400, 200)])
def test_letterbox_keeps_aspect_and_pads_with_fill(height, width):
    fill = (10, 20, 30)
    pixels = np.full((height, width, 3), 200, np.uint8)
    out = images.resize(pixels, 100, "letterbox", fill=fill)
    if width > height:
        padding, content = np.concatenate([out[:25], out[75:]]), out[25:75]
    else:
        padding, content = np.concatenate([out[:, :25], out[:, 75:]], axis=1), out[:, 25:75]
    assert (padding == fill).all()
    assert (content == 200).all()


def test_letterbox_content_is_the_bilinear_resize():
    pixels = np.random.default_rng(4).integers(0, 256, (150, 300, 3), dtype=np.uint8)
    out = images.resize(pixels, 100, "letterbox")
    np.testing.assert_array_equal(out[25:75], bilinear(pixels, (100, 50)))


def test_unknown_resize_policy():
    with pytest.raises(UsageError) as caught:
        images.resize(quadrants(), 224, "stretch")
    for policy in ("crop", "squash", "letterbox"):
        assert policy in str(caught.value)


# --------------------------------------------------------------------------------------------
# Finding files


def test_iter_image_files_walks_folders_sorted_and_skips_hidden(tmp_path):
    for relative in [
        "b.jpg", "A.PNG", "notes.txt", ".hidden.jpg", ".git/inside.png",
        "sub/c.webp", "sub/deeper/d.TIF", "sub/.secret/e.gif", "z.bmp",
    ]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    named = tmp_path / "elsewhere" / "upload.dat"
    named.parent.mkdir()
    named.write_bytes(b"x")

    found = images.iter_image_files([tmp_path, named])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "A.PNG", "b.jpg", "z.bmp", "sub/c.webp", "sub/deeper/d.TIF", "elsewhere/upload.dat",
    ]
    shallow = images.iter_image_files(tmp_path, recursive=False)
    assert [p.name for p in shallow] == ["A.PNG", "b.jpg", "z.bmp"]
    named_first = images.iter_image_files([tmp_path / "b.jpg", tmp_path])
    assert named_first[0] == tmp_path / "b.jpg"
    assert len(named_first) == len(set(named_first)) == 5  # b.jpg is not listed twice


def test_iter_image_files_missing_path(tmp_path):
    with pytest.raises(ImageError, match="no such file or folder"):
        images.iter_image_files([tmp_path / "gone"])


def test_image_extensions():
    expected = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    assert images.IMAGE_EXTENSIONS == expected


# --------------------------------------------------------------------------------------------
# Encoding and saving


@pytest.mark.parametrize(
    "suffix, lossy", [(".png", False), (".jpg", True), (".jpeg", True), (".webp", True)]
)
def test_save_round_trips(tmp_path, suffix, lossy):
    pixels = quadrants()
    path = images.save(pixels, tmp_path / f"out{suffix}")
    assert path == tmp_path / f"out{suffix}"
    decoded = images.decode(path)
    if lossy:
        assert_close_lossy(decoded, pixels)
    else:
        np.testing.assert_array_equal(decoded, pixels)
    assert os.listdir(tmp_path) == [f"out{suffix}"]


def test_save_rgba_pil_image_as_jpeg_composites_on_white(tmp_path):
    transparent = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    decoded = images.decode(images.save(transparent, tmp_path / "out.jpg"))
    assert (decoded >= 250).all()


def test_save_unknown_suffix(tmp_path):
    with pytest.raises(UsageError, match=r"\.png"):
        images.save(quadrants(), tmp_path / "out.bmp")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "failure", [RuntimeError("encoder crashed"), OSError(28, "No space left on device")]
)
def test_save_is_atomic(tmp_path, monkeypatch, failure):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous contents")

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise failure

    monkeypatch.setattr(Image.Image, "save", failing_save)
    expected = ImageError if isinstance(failure, OSError) else RuntimeError
    with pytest.raises(expected):
        images.save(quadrants(), target)
    assert os.listdir(tmp_path) == ["out.png"]  # no temporary file left behind
    assert target.read_bytes() == b"previous contents"


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(ImageError, match="could not write"):
        images.save(quadrants(), tmp_path / "missing" / "out.png")


def test_encode():
    png = images.encode(quadrants())
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(images.decode(png), quadrants())
    assert images.encode(quadrants(), "jpg").startswith(b"\xff\xd8\xff")
    small, large = (len(images.encode(quadrants(), "JPEG", quality=q)) for q in (10, 100))
    assert small < large
    with pytest.raises(UsageError):
        images.encode(quadrants(), "GIF")


def test_to_pil_and_from_pil():
    pixels = quadrants()
    image = images.to_pil(pixels)
    assert image.mode == "RGB" and image.size == (64, 48)
    np.testing.assert_array_equal(images.from_pil(image), pixels)
    with pytest.raises(ValueError):
        images.to_pil(pixels.astype(np.float32))


def test_error_kinds_tell_bad_format_from_corrupt_data(tmp_path):
    """The web API maps these to 415 / 422 / 413; each kind must be raised where it belongs."""
    from belka.errors import CorruptImageError, ImageTooLargeError, NotAnImageError

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAnImageError):
        images.decode(tmp_path / "notes.txt")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "JPEG")
    with pytest.raises(CorruptImageError):
        images.decode(buf.getvalue()[:300])
    with pytest.raises(CorruptImageError):
        images.decode(b"")
    with pytest.raises(ImageTooLargeError):
        images.decode(buf.getvalue(), max_pixels=100)
