"""Safe image decoding, resizing and saving.

Every image belka looks at goes through :func:`decode`, which follows these rules:

* Only JPEG, PNG, WebP, GIF, BMP and TIFF are read. Pillow's other decoders (some of which hand
  the file to external programs, e.g. EPS to Ghostscript) are never tried.
* The pixel count is checked against a limit (the ``max_pixels`` argument, else the
  ``BELKA_MAX_PIXELS`` environment variable, else :data:`DEFAULT_MAX_PIXELS`) from the header,
  before any pixel memory is allocated, so a decompression bomb (a tiny file whose header claims
  a gigantic canvas) costs nothing. Files are identified through Pillow's decoder registry
  rather than ``Image.open`` so that this limit, not Pillow's process-wide
  ``Image.MAX_IMAGE_PIXELS``, decides; no Pillow global is read-modify-written.
* Every pixel is decoded eagerly (``load()``) with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left at
  False, so truncated or corrupt files fail here instead of turning into grey half-images.
* Anything wrong with the input (missing, unreadable, empty, not an image, corrupt, too large,
  unsupported mode) raises :class:`~belka.errors.ImageError` with a message that says what is
  wrong and what to do; no raw Pillow error or ``OSError`` escapes for bad input.
* The result is always a C-contiguous, writable H x W x 3 ``uint8`` RGB array, turned upright
  by the EXIF orientation, with transparency composited onto white.

:func:`save` writes atomically: a temporary file in the target folder, flushed and fsynced, then
renamed over the target, so an error never leaves a half-written image behind.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
from PIL import (  # noqa: F401  (importing a plugin registers its decoder)
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from .errors import (BelkaError, CorruptImageError, ImageError, ImageTooLargeError, NotAnImageError,
                     UsageError)
from .files import write_atomic

DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "BELKA_MAX_PIXELS"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
RESIZE_POLICIES = ("crop", "squash", "letterbox")

StrPath = str | os.PathLike
ImageSource = StrPath | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray

# Pillow's registry ids, in the order they are tried, and the names people know them by.
_FORMATS = {
    "JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP", "TIFF": "TIFF"
}
_SUPPORTED = ", ".join(_FORMATS.values())
_ENCODERS = {"PNG": "PNG", "JPEG": "JPEG", "JPG": "JPEG", "WEBP": "WEBP"}
_SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

# What Pillow raises for malformed data, while identifying or decoding.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)

_RGB_CONVERTIBLE = frozenset({"RGB", "1", "L", "P", "CMYK", "YCbCr"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
# EXIF orientation -> the transposition that makes the image upright, as in
# ``ImageOps.exif_transpose``, which is not called because it also rewrites the EXIF block and
# raises on malformed but harmless metadata that belka throws away anyway.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # those that swap width and height
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_SNIFF_BYTES = 512
# ``crop`` scales the whole image and then crops it while the scaled image is at most this many
# times the output's area (an aspect ratio of about 12:1 at crop_fraction 0.875).
_MAX_CROP_INTERMEDIATE = 16


# --------------------------------------------------------------------------------------------
# Decoding


def decode(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    name: str | None = None,
    draft: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode an image into a C-contiguous H x W x 3 ``uint8`` RGB array.

    ``source`` is a path, encoded bytes, a binary file object, a ``PIL.Image.Image`` or an array
    (H x W x 3 ``uint8`` passes through; grey, grey+alpha, RGBA and 16-bit/float greys are
    converted). ``max_pixels`` overrides ``BELKA_MAX_PIXELS`` and :data:`DEFAULT_MAX_PIXELS`.
    ``name`` labels error messages when the source has no path. ``draft`` = (width, height) lets
    a JPEG decode at a reduced scale that is still at least that size (fast scans); other
    formats and PIL images ignore it. Raises :class:`ImageError` for anything wrong with the input.
    """
    if draft is not None and min(draft) < 1:
        raise ValueError(f"draft size must be positive, got {draft}")
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    limit = _resolve_max_pixels(max_pixels)
    if isinstance(source, Image.Image):
        return _decode_image(source, limit, name)
    label, stream = _open_source(source, name)
    with stream:
        return _decode_image(_identify(stream, label), limit, label, draft=draft)


def dimensions(source: StrPath | bytes, *, name: str | None = None) -> tuple[int, int]:
    """(width, height) as stored, from the header alone (no pixels are decoded); raises
    :class:`ImageError` as :func:`decode` would for a file that is not an image."""
    label, stream = _open_source(source, name)
    with stream:
        return _identify(stream, label).size


def from_pil(image: Image.Image, *, name: str | None = None) -> np.ndarray:
    """Convert a PIL image of any supported mode to a writable H x W x 3 ``uint8`` RGB array.

    Transparency is composited onto white; 16-bit and 32-bit greys are scaled from 0..65535 and
    float greys from 0..1 (data outside that range is stretched from its minimum to maximum).
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        grey = _scale_to_uint8(np.asarray(image), 1.0 if mode == "F" else 65535.0)
        return np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    if mode in _ALPHA_MODES or (mode in _RGB_CONVERTIBLE and "transparency" in image.info):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    elif mode not in _RGB_CONVERTIBLE:
        raise NotAnImageError(
            f"unsupported image mode {mode!r} (belka reads RGB, RGBA, grey, palette, CMYK, "
            "16-bit and float images); convert it to RGB first",
            path=name,
        )
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def to_pil(image: np.ndarray) -> Image.Image:
    """Wrap an H x W, H x W x 3 or H x W x 4 ``uint8`` array as an L, RGB or RGBA PIL image."""
    layout_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
    if image.dtype != np.uint8 or not layout_ok:
        raise ValueError(
            "expected an H x W, H x W x 3 or H x W x 4 uint8 array, "
            f"got shape {image.shape} dtype {image.dtype}"
        )
    return Image.fromarray(np.ascontiguousarray(image))


def _resolve_max_pixels(max_pixels: int | None) -> int:
    if max_pixels is not None:
        if max_pixels < 1:
            raise UsageError(f"the pixel limit must be a positive number, got {max_pixels}")
        return int(max_pixels)
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {raw!r}")
    return value


def _open_source(source: object, name: str | None) -> tuple[str | None, IO[bytes]]:
    """A label for messages and a seekable binary stream that starts at the image's first byte."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(source)
        return path, _open_path(path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, data = name, bytes(source)
    elif hasattr(source, "read"):
        label = name or _stream_name(source)
        try:
            data = source.read()
        except OSError as exc:
            raise ImageError(f"could not read the image data ({exc})", path=label) from exc
        if not isinstance(data, bytes):
            raise TypeError("file objects must be opened in binary mode ('rb')")
    else:
        raise TypeError(f"cannot decode an image from a {type(source).__name__}")
    if not data:
        raise CorruptImageError("image data is empty (0 bytes)", path=label)
    return label, io.BytesIO(data)


def _stream_name(stream: object) -> str | None:
    stream_name = getattr(stream, "name", None)
    return os.fsdecode(stream_name) if isinstance(stream_name, (str, bytes, os.PathLike)) else None


def _open_path(path: str) -> IO[bytes]:
    folder_message = "is a folder, not an image file; pass the images inside it"
    try:
        stream = open(path, "rb")  # noqa: SIM115  (returned open; the caller closes it)
    except FileNotFoundError as exc:
        raise ImageError("no such file", path=path) from exc
    except IsADirectoryError as exc:
        raise ImageError(folder_message, path=path) from exc
    except PermissionError as exc:
        if os.path.isdir(path):  # Windows reports opening a folder as a permission error
            raise ImageError(folder_message, path=path) from exc
        raise ImageError("permission denied; check that the file is readable", path=path) from exc
    except OSError as exc:
        raise ImageError(f"could not open the file ({exc.strerror or exc})", path=path) from exc
    try:
        info = os.fstat(stream.fileno())
        if stat.S_ISREG(info.st_mode):
            if info.st_size > 0:
                return stream
            data = b""
        else:  # a pipe or a device: read it whole, because the decoders seek
            data = stream.read()
    except OSError as exc:
        stream.close()
        raise ImageError(f"could not read the file ({exc.strerror or exc})", path=path) from exc
    stream.close()
    if not data:
        raise CorruptImageError("file is empty (0 bytes)", path=path)
    return io.BytesIO(data)


def _identify(stream: IO[bytes], label: str | None) -> ImageFile.ImageFile:
    """Open the header with the first supported decoder whose magic bytes match; no pixels yet."""
    head = stream.read(_SNIFF_BYTES)
    for registry_id, format_name in _FORMATS.items():
        factory, accept = Image.OPEN[registry_id]
        match = accept(head[:16]) if accept else True
        if not match or isinstance(match, str):  # Pillow's accept() returns a str to mean "no"
            continue
        stream.seek(0)
        try:
            return factory(stream, "")
        except _DECODE_ERRORS as exc:
            raise CorruptImageError(
                f"truncated or corrupt image data: the {format_name} header is unreadable ({exc})",
                path=label,
            ) from exc
    other = _unsupported_format(head)
    if other:
        raise NotAnImageError(
            f"unsupported image format {other} (supported: {_SUPPORTED}); "
            "convert it to JPEG or PNG first",
            path=label,
        )
    raise NotAnImageError(
        "not an image (the file starts with bytes that match no known image format; "
        f"supported: {_SUPPORTED})",
        path=label,
    )


def _unsupported_format(head: bytes) -> str | None:
    """Name common formats people mistake for supported ones, so the message can say so."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF"
    if head.startswith(b"%PDF"):
        return "PDF"
    if b"<svg" in head.lower():
        return "SVG"
    return None


def _decode_image(
    image: Image.Image, limit: int, label: str | None, *, draft: tuple[int, int] | None = None
) -> np.ndarray:
    """Check the header size against ``limit``, then decode every pixel and make it upright RGB."""
    width, height = image.size
    if width * height > limit:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {_megapixels(width * height)} megapixels, over the "
            f"{_megapixels(limit)}-megapixel limit; raise the limit with {MAX_PIXELS_ENV} "
            "(belka serve: --max-pixels)",
            path=label,
        )
    try:
        if draft is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
            if _orientation(image) in _TRANSPOSING_ORIENTATIONS:
                draft = (draft[1], draft[0])
            image.draft("RGB", draft)
        image.load()
        upright = _UPRIGHT.get(_orientation(image))
        if upright is not None:
            image = image.transpose(upright)
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"truncated or corrupt image data: {exc}", path=label) from exc
    return from_pil(image, name=label)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright). An unreadable EXIF block counts as upright: broken
    metadata should not make readable pixels unusable."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except _DECODE_ERRORS:
        return 1


def _megapixels(pixels: int) -> str:
    megapixels = pixels / 1e6
    return f"{megapixels:.1f}" if megapixels >= 1 else f"{megapixels:.2g}"


def _from_array(array: np.ndarray, name: str | None) -> np.ndarray:
    if array.size == 0:
        raise ImageError(f"image has no pixels (array shape {array.shape})", path=name)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    try:
        image = Image.fromarray(np.ascontiguousarray(array))
    except (TypeError, ValueError) as exc:
        raise ImageError(
            f"unsupported array of shape {array.shape} and dtype {array.dtype}; pass H x W, "
            "H x W x 3 or H x W x 4 uint8 pixels (or an H x W 16-bit or float grey image)",
            path=name,
        ) from exc
    return from_pil(image, name=name)


def _scale_to_uint8(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Map 0..full_scale to 0..255 with rounding; data outside that range is min-max stretched."""
    values = values.astype(np.float32)
    values[~np.isfinite(values)] = 0.0
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > full_scale:
        values -= low
        full_scale = (high - low) or 1.0
    return np.rint(values * np.float32(255.0 / full_scale)).clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Resizing


def resize(
    image: np.ndarray,
    size: int,
    policy: str = "crop",
    *,
    crop_fraction: float = 0.875,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Resize an H x W x 3 ``uint8`` image to ``size`` x ``size`` x 3 with bilinear filtering.

    ``crop``: scale the shorter side to ``round(size / crop_fraction)``, keep the aspect ratio and
    take the centre square. ``squash``: resize straight to the square, distorting the aspect
    ratio. ``letterbox``: scale the longer side to ``size`` and pad the rest with ``fill``.
    """
    if policy not in RESIZE_POLICIES:
        choices = ", ".join(RESIZE_POLICIES)
        raise UsageError(f"unknown resize policy {policy!r}; choose one of {choices}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ValueError(f"expected a non-empty H x W x 3 image, got shape {image.shape}")
    source = to_pil(image)
    width, height = source.size
    if policy == "squash":
        result = resample(source, (size, size))
    elif policy == "crop":
        if not 0 < crop_fraction <= 1:
            raise UsageError(f"crop fraction must be in (0, 1], got {crop_fraction}")
        short = round(size / crop_fraction)
        scale = short / min(width, height)
        if width <= height:
            scaled_size = (short, round(height * scale))
        else:
            scaled_size = (round(width * scale), short)
        left, top = _centre(scaled_size[0], size), _centre(scaled_size[1], size)
        if scaled_size[0] * scaled_size[1] <= _MAX_CROP_INTERMEDIATE * size * size:
            scaled = resample(source, scaled_size)
            result = scaled.crop((left, top, left + size, top + size))
        else:
            # A thin strip (say 1 x 50000) would scale to gigapixels: resample only the window
            # that becomes the crop. Pillow's box arithmetic differs by at most 1 level.
            x_step, y_step = width / scaled_size[0], height / scaled_size[1]
            window = (left * x_step, top * y_step, (left + size) * x_step, (top + size) * y_step)
            result = resample(source, (size, size), window)
    else:
        scale = size / max(width, height)
        scaled_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        result = Image.new("RGB", (size, size), tuple(int(c) for c in fill))
        offset = (_centre(size, scaled_size[0]), _centre(size, scaled_size[1]))
        result.paste(resample(source, scaled_size), offset)
    return np.array(result)


def resample(image: Image.Image, size: tuple[int, int],
             box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Pillow's bilinear (antialiased) ``image.resize(size, box=box)``, always horizontal pass
    first, then vertical: the one resampling belka uses everywhere.

    Pillow computes the same thing in one call, but which pass it runs first is its own choice
    (Pillow 13 runs the vertical one first for some sizes) and the two orders round differently
    (by one level here and there). Fixing the order keeps belka's numbers the same across
    Pillow versions and lets other implementations (``belka.js`` in the browser) reproduce them
    bit for bit: only the rows the vertical pass reads are resampled horizontally (Pillow's own
    ``ybox`` range), each pass is a one-axis Pillow resize.
    """
    width, height = image.size
    out_w, out_h = size
    x0, y0, x1, y1 = box if box is not None else (0, 0, width, height)
    first, last = _rows_read(height, y0, y1, out_h)
    strip = image if (first, last) == (0, height) else image.crop((0, first, width, last))
    rows = last - first
    wide = strip.resize((out_w, rows), Image.Resampling.BILINEAR, box=(x0, 0, x1, rows))
    return wide.resize((out_w, out_h), Image.Resampling.BILINEAR,
                       box=(0, y0 - first, out_w, y1 - first))


def _rows_read(height: int, y0: float, y1: float, out: int) -> tuple[int, int]:
    """The source rows [first, last) a bilinear vertical pass from y0..y1 to ``out`` rows
    reads: Pillow's ``precompute_coeffs`` bounds (box edges as C floats, casts truncating)."""
    in0, in1 = float(np.float32(y0)), float(np.float32(y1))
    scale = (in1 - in0) / out
    support = max(scale, 1.0)              # the bilinear filter's support is 1
    first = max(0, int(in0 + 0.5 * scale - support + 0.5))
    last = min(height, int(in0 + (out - 1 + 0.5) * scale + support + 0.5))
    return first, last


def _centre(outer: int, inner: int) -> int:
    return int(round((outer - inner) / 2.0))


# --------------------------------------------------------------------------------------------
# Finding files


def iter_image_files(
    paths: Iterable[StrPath] | StrPath, *, recursive: bool = True
) -> list[Path]:
    """Expand files and folders into a list of image files, without duplicates.

    A folder contributes its files with an image suffix (:data:`IMAGE_EXTENSIONS`, any case) in
    name order, then, with ``recursive``, those of its subfolders the same way; hidden files and
    folders are skipped. Symbolic links to folders are followed (a folder reached twice, through
    a link loop or two links, is read once). Files named explicitly are kept whatever their
    suffix. A named path that does not exist raises :class:`ImageError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            found.update(dict.fromkeys(_images_in(path, recursive)))
        elif path.exists():
            found[path] = None
        else:
            raise ImageError("no such file or folder", path=str(path))
    return list(found)


def expand_paths(paths: Iterable[StrPath]) -> Iterator[tuple[str, str | None]]:
    """(file, None) for every image file under ``paths``, or (path, error) for a bad path or
    a folder with no image in it (so an empty folder is said, not silently skipped)."""
    for path in paths:
        try:
            found = iter_image_files([path])
        except BelkaError as err:
            yield str(path), err.message
            continue
        if not found and os.path.isdir(path):
            yield str(path), ("no images in this folder (looked for "
                              f"{', '.join(sorted(IMAGE_EXTENSIONS))}, in sub-folders too; "
                              "hidden files are skipped)")
        for file in found:
            yield str(file), None


def _images_in(folder: Path, recursive: bool) -> Iterator[Path]:
    seen: set[str] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = sorted(f for f in folders if not f.startswith(".")) if recursive else []
        for file_name in sorted(files):
            if not file_name.startswith(".") and Path(file_name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(root, file_name)


# --------------------------------------------------------------------------------------------
# Encoding and saving


def encode(image: np.ndarray | Image.Image, format: str = "PNG", quality: int = 90) -> bytes:
    """Encode an image as PNG, JPEG or WebP bytes (``quality`` applies to JPEG and WebP)."""
    pillow_format = _ENCODERS.get(format.upper())
    if pillow_format is None:
        raise UsageError(f"cannot encode images as {format!r}; use PNG, JPEG or WebP")
    buffer = io.BytesIO()
    _write(_as_pil(image), buffer, pillow_format, quality)
    return buffer.getvalue()


def save(image: np.ndarray | Image.Image, path: StrPath, quality: int = 90) -> Path:
    """Write an image atomically, in the format its suffix names (.png, .jpg/.jpeg or .webp).

    The image goes to a hidden temporary file in the same folder, which is flushed, fsynced and
    then renamed over ``path``; on any error the temporary file is removed and ``path`` is left
    as it was. Returns ``path``.
    """
    path = Path(path)
    pillow_format = _SUFFIX_FORMATS.get(path.suffix.lower())
    if pillow_format is None:
        raise UsageError(
            f"cannot tell the image format from {path.name!r}; end the name with .png, .jpg, "
            ".jpeg or .webp"
        )
    picture = _as_pil(image)
    try:
        write_atomic(path, lambda stream: _write(picture, stream, pillow_format, quality))
    except OSError as exc:
        raise _write_error(exc, path) from exc
    return path


def _as_pil(image: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return to_pil(image)
    raise TypeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")


def _write(image: Image.Image, stream: IO[bytes], pillow_format: str, quality: int) -> None:
    if pillow_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = Image.fromarray(from_pil(image))  # JPEG has no alpha: composite onto white
    options = {"quality": quality} if pillow_format in ("JPEG", "WEBP") else {}
    image.save(stream, format=pillow_format, **options)


def _write_error(exc: OSError, path: Path) -> ImageError:
    return ImageError(
        f"could not write the image ({exc.strerror or exc}); check that the folder exists and "
        "is writable",
        path=str(path),
    )
