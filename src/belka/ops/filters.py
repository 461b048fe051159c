"""Image filters: a named kernel catalogue, custom kernels, and a tiled depthwise convolution.

Correlation, not flipped convolution: :func:`convolve` lays the kernel over the image as written,
``out[y, x] = sum_ij K[i, j] * img[y + i - cy, x + j - cx]`` with the anchor ``(cy, cx) =
(kh // 2, kw // 2)``. That is what ``cv2.filter2D``, ``torch.nn.functional.conv2d``,
``scipy.ndimage.correlate`` and the seed article's loop compute. Pass ``flip=True`` for true
convolution (the kernel rotated by 180 degrees, what ``scipy.ndimage.convolve`` computes). The
catalogue kernels are written for correlation: ``sobel-x`` is positive where brightness grows to
the right.

Edges are padded (``zero``, ``reflect`` = mirror without repeating the edge pixel, i.e. numpy
``reflect`` / OpenCV ``BORDER_REFLECT_101`` / scipy ``mirror``, or ``edge`` = repeat the edge
pixel), so the output has the input's size (divided by the stride, rounded up). The article's
loop pads nothing: it leaves the last ``kw`` columns and ``kh`` rows unfiltered.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

__all__ = [
    "KernelInfo",
    "MAX_KERNEL_SIZE",
    "check_kernel",
    "convolve",
    "kernel",
    "list_kernels",
    "parse_kernel",
    "resolve_kernel",
]

MAX_KERNEL_SIZE = 255
PADDINGS = ("zero", "reflect", "edge")
MODES = ("rgb", "gray")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as PIL's "L" conversion
_BAND_ELEMENTS = 1 << 22  # input floats per band (16 MB in float32) when tile is None
_LANES = 16  # channels x column strips fed to one depthwise convolution


# --------------------------------------------------------------------------------------------
# Catalogue


@dataclass(frozen=True)
class KernelInfo:
    """One catalogue entry: its name, parameters with defaults, and what it does."""

    name: str
    params: dict[str, float]
    description: str
    magnitude: bool = False  # a stack of kernels whose responses combine as sqrt(sum of squares)


def _odd_size(name: str, size: float) -> int:
    if size != int(size) or int(size) < 1 or int(size) % 2 == 0:
        raise UsageError(f"kernel {name!r}: size must be a positive odd integer, got {size:g}")
    if int(size) > MAX_KERNEL_SIZE:
        raise UsageError(f"kernel {name!r}: size {int(size)} is over the limit of "
                         f"{MAX_KERNEL_SIZE}")
    return int(size)


def _positive(name: str, param: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"kernel {name!r}: {param} must be a positive number, got {value:g}")
    return float(value)


def _gaussian_1d(sigma: float, size: int | None) -> np.ndarray:
    radius = max(1, math.ceil(3.0 * sigma)) if size is None else size // 2
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _gaussian(sigma: float = 1.0, size: float = 0) -> np.ndarray:
    sigma = _positive("gaussian", "sigma", sigma)
    n = _odd_size("gaussian", size) if size else None
    if n is None and 2 * max(1, math.ceil(3.0 * sigma)) + 1 > MAX_KERNEL_SIZE:
        raise UsageError(f"kernel 'gaussian': sigma {sigma:g} needs a kernel over "
                         f"{MAX_KERNEL_SIZE} pixels wide")
    g = _gaussian_1d(sigma, n)
    return np.outer(g, g)


def _unsharp(amount: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    if not math.isfinite(amount):
        raise UsageError(f"kernel 'unsharp': amount must be a number, got {amount}")
    blur = _gaussian(sigma)
    k = -amount * blur
    c = k.shape[0] // 2
    k[c, c] += 1.0 + amount
    return k


def _box(size: float = 3) -> np.ndarray:
    n = _odd_size("box-blur", size)
    return np.full((n, n), 1.0 / (n * n))


def _identity(size: float = 1) -> np.ndarray:
    n = _odd_size("identity", size)
    k = np.zeros((n, n))
    k[n // 2, n // 2] = 1.0
    return k


_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_PREWITT_X = np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], dtype=np.float64)
_SCHARR_X = np.array([[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]], dtype=np.float64)


def _fixed(values: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: np.array(values, dtype=np.float64)


_CATALOGUE: dict[str, tuple[Callable[..., np.ndarray], KernelInfo]] = {}


def _register(fn: Callable[..., np.ndarray], name: str, description: str,
              params: dict[str, float] | None = None, magnitude: bool = False) -> None:
    _CATALOGUE[name] = (fn, KernelInfo(name, params or {}, description, magnitude))


_register(_identity, "identity", "copies the image (size n: an n x n kernel with a centre 1)",
          {"size": 1})
_register(_box, "box-blur", "mean of an n x n square", {"size": 3})
_register(_fixed(np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0), "gaussian-blur",
          "the seed article's 3x3 blur: 1/16 1/8 1/16 / 1/8 1/4 1/8 / 1/16 1/8 1/16")
_register(_gaussian, "gaussian",
          "normalised Gaussian; size 2*ceil(3*sigma)+1 unless size is given",
          {"sigma": 1.0, "size": 0})
_register(_fixed(np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])), "sharpen",
          "3x3 sharpen (centre 5, the 4 neighbours -1)")
_register(_unsharp, "unsharp",
          "unsharp mask: (1 + amount) * image - amount * gaussian(sigma)",
          {"amount": 1.0, "sigma": 1.0})
_register(_fixed(_SOBEL_X), "sobel-x", "horizontal gradient (positive where it gets brighter "
          "to the right)")
_register(_fixed(_SOBEL_X.T), "sobel-y", "vertical gradient (positive where it gets brighter "
          "downwards)")
_register(_fixed(np.stack([_SOBEL_X, _SOBEL_X.T])), "sobel",
          "gradient magnitude sqrt(sobel-x^2 + sobel-y^2)", magnitude=True)
_register(_fixed(_PREWITT_X), "prewitt-x", "horizontal gradient, Prewitt weights")
_register(_fixed(_PREWITT_X.T), "prewitt-y", "vertical gradient, Prewitt weights")
_register(_fixed(np.stack([_PREWITT_X, _PREWITT_X.T])), "prewitt",
          "gradient magnitude with Prewitt weights", magnitude=True)
_register(_fixed(_SCHARR_X), "scharr-x", "horizontal gradient, Scharr weights")
_register(_fixed(_SCHARR_X.T), "scharr-y", "vertical gradient, Scharr weights")
_register(_fixed(np.stack([_SCHARR_X, _SCHARR_X.T])), "scharr",
          "gradient magnitude with Scharr weights", magnitude=True)
_register(_fixed(np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]])), "laplacian",
          "4-neighbour Laplacian (second derivative; zero on flat areas)")
_register(_fixed(np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])), "emboss",
          "emboss, lit from the top left")
_register(_fixed(np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])), "outline",
          "8-neighbour outline (edges bright, flat areas black)")

_ALIASES = {"box": "box-blur", "blur": "gaussian-blur", "unsharp-mask": "unsharp",
            "gauss": "gaussian", "edges": "outline"}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


def list_kernels() -> list[KernelInfo]:
    """The catalogue, in a stable order."""
    return [info for _, info in _CATALOGUE.values()]


def kernel(name: str, **params: float) -> np.ndarray:
    """A catalogue kernel as a float64 array: (kh, kw), or (2, kh, kw) for magnitude filters.

    Parameters not given take the defaults listed by :func:`list_kernels`; unknown names and
    parameters raise :class:`UsageError`.
    """
    key = _canonical(name)
    if key not in _CATALOGUE:
        close = difflib.get_close_matches(key, list(_CATALOGUE), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown kernel {name!r}{hint} (`belka filter --list` shows them all)")
    fn, info = _CATALOGUE[key]
    unknown = sorted(set(params) - set(info.params))
    if unknown:
        takes = ", ".join(info.params) or "no parameters"
        raise UsageError(f"kernel {info.name!r} takes {takes}; it has no {', '.join(unknown)}")
    return fn(**params)


# --------------------------------------------------------------------------------------------
# Custom kernels

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_KERNEL_TOKEN = re.compile(
    rf"\s*(?:(?P<open>\[)|(?P<close>\])|(?P<comma>,)|(?P<num>{_NUM}(?:\s*/\s*{_NUM})?)"
    rf"|(?P<bad>[^\s\[\],]+))"
)


def _parse_literal(text: str) -> list:
    """Parse nested lists of numbers (JSON, plus fractions such as 1/16)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _KERNEL_TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            break
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    for kind, value in tokens:
        if kind == "bad":
            raise UsageError(f"kernel value {value!r} is not a number")

    def parse(i: int) -> tuple[object, int]:
        if i >= len(tokens):
            raise UsageError("kernel text ends early: a ']' is missing")
        kind, value = tokens[i]
        if kind == "num":
            if "/" in value:
                num, den = (float(p) for p in value.split("/"))
                if den == 0:
                    raise UsageError(f"kernel value {value!r} divides by zero")
                return num / den, i + 1
            return float(value), i + 1
        if kind != "open":
            raise UsageError(f"unexpected {value!r} in the kernel text")
        items: list[object] = []
        i += 1
        if i < len(tokens) and tokens[i][0] == "close":
            return items, i + 1
        while True:
            item, i = parse(i)
            items.append(item)
            if i >= len(tokens):
                raise UsageError("kernel text ends early: a ']' is missing")
            kind, value = tokens[i]
            if kind == "close":
                return items, i + 1
            if kind != "comma":
                raise UsageError(f"expected ',' or ']' in the kernel text, got {value!r}")
            i += 1

    if not tokens:
        raise UsageError("the kernel is empty")
    value, end = parse(0)
    if end != len(tokens):
        raise UsageError(f"unexpected {tokens[end][1]!r} after the kernel's closing ']'")
    if not isinstance(value, list):
        value = [[value]]
    return value


def _rows_to_array(rows: list) -> np.ndarray:
    if not rows:
        raise UsageError("the kernel is empty")
    if all(not isinstance(r, list) for r in rows):
        rows = [rows]  # a flat list is one row
    if not all(isinstance(r, list) for r in rows):
        raise UsageError("the kernel mixes numbers and rows; write it as [[...], [...]]")
    for r, row in enumerate(rows, 1):
        if not row:
            raise UsageError(f"kernel row {r} is empty")
        if any(isinstance(v, list) for v in row):
            raise UsageError("the kernel must be 2-D (a list of rows of numbers)")
        if len(row) != len(rows[0]):
            raise UsageError(f"the kernel is ragged: row {r} has {len(row)} values but row 1 has "
                             f"{len(rows[0])}")
    return np.array(rows, dtype=np.float64)


def check_kernel(k: np.ndarray, *, allow_even: bool = False) -> np.ndarray:
    """Validate a kernel (2-D, or a 3-D stack for a magnitude filter) and return it as float64."""
    arr = np.asarray(k)
    if arr.dtype.kind not in "biuf":
        raise UsageError(f"the kernel must hold numbers, got {arr.dtype} values")
    arr = arr.astype(np.float64)
    if arr.ndim not in (2, 3) or arr.size == 0:
        if arr.size == 0:
            raise UsageError("the kernel is empty")
        raise UsageError(f"the kernel must be 2-D, got {arr.ndim}-D shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise UsageError("the kernel holds NaN or infinite values")
    kh, kw = arr.shape[-2:]
    if max(kh, kw) > MAX_KERNEL_SIZE:
        raise UsageError(f"the kernel is {kh}x{kw}; the limit is {MAX_KERNEL_SIZE} per side")
    if not allow_even and (kh % 2 == 0 or kw % 2 == 0):
        raise UsageError(f"the kernel is {kh}x{kw}: an even size has no centre pixel; use odd "
                         "sizes (1, 3, 5, ...)")
    return arr


def parse_kernel(spec: str | Path, *, allow_even: bool = False) -> np.ndarray:
    """A custom kernel from text like ``"[[0,-1,0],[-1,5,-1],[0,-1,0]]"`` (JSON; fractions such
    as ``1/16`` are allowed) or from a ``.json`` / ``.npy`` file. Ragged, empty, non-numeric
    and (unless ``allow_even``) even-sized kernels raise :class:`UsageError`."""
    if isinstance(spec, Path) or not str(spec).lstrip().startswith("["):
        path = Path(spec)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".npy"):
            raise UsageError(f"kernel file {str(path)!r} must end in .json or .npy")
        if not path.is_file():
            raise UsageError(f"kernel file {str(path)!r} does not exist")
        if suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise UsageError(f"kernel file {str(path)!r} is not a readable .npy array "
                                 f"({exc})") from exc
            return check_kernel(arr, allow_even=allow_even)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read kernel file {str(path)!r} ({exc})") from exc
        return check_kernel(_rows_to_array(_parse_literal(text)), allow_even=allow_even)
    return check_kernel(_rows_to_array(_parse_literal(str(spec))), allow_even=allow_even)


def resolve_kernel(spec: str, **params: float) -> np.ndarray:
    """What ``--kernel`` accepts: a catalogue name, a ``[[...]]`` literal or a .json/.npy file.

    ``params`` (sigma, size, amount) apply to catalogue kernels only.
    """
    text = spec.strip()
    if not text:
        raise UsageError("the kernel is empty")
    custom = text.startswith("[") or (_canonical(text) not in _CATALOGUE and (
        Path(text).suffix.lower() in (".json", ".npy") or Path(text).is_file()))
    if not custom:
        return kernel(text, **params)
    if params:
        raise UsageError(f"{', '.join(sorted(params))} only apply to catalogue kernels, not to a "
                         "custom kernel")
    return parse_kernel(text)


# --------------------------------------------------------------------------------------------
# Convolution


def _pad_index(n: int, pos: np.ndarray, padding: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Source indices for (possibly out-of-range) positions on an axis of length n, and for zero
    padding the mask of positions that fall outside (None if there are none)."""
    if padding == "edge":
        return np.clip(pos, 0, n - 1), None
    if padding == "reflect":
        if n == 1:
            return np.zeros_like(pos), None
        period = 2 * (n - 1)
        m = np.mod(pos, period)
        return np.where(m < n, m, period - m), None
    outside = (pos < 0) | (pos >= n)
    return np.clip(pos, 0, n - 1), (outside if outside.any() else None)


class _Columns:
    """Pads a band of rows to the columns the strips need (positions -cx .. padded_w - cx - 1)."""

    def __init__(self, w: int, cx: int, padded_w: int, padding: str):
        pos = np.arange(padded_w) - cx
        inside = np.flatnonzero((pos >= 0) & (pos < w))
        self.lo, self.hi = int(inside[0]), int(inside[-1]) + 1  # a slice of the source
        self.src_lo = int(pos[self.lo])
        self.outside = np.flatnonzero((pos < 0) | (pos >= w))
        index, _ = _pad_index(w, pos[self.outside], padding)
        self.index = None if padding == "zero" else index
        self.padded_w = padded_w

    def pad(self, band: np.ndarray) -> np.ndarray:
        out = np.empty((band.shape[0], self.padded_w, band.shape[2]), dtype=band.dtype)
        out[:, self.lo:self.hi] = band[:, self.src_lo:self.src_lo + self.hi - self.lo]
        if self.outside.size:
            out[:, self.outside] = 0 if self.index is None else band[:, self.index]
        return out


def _prepare_kernel(k: np.ndarray, normalize: bool, flip: bool) -> tuple[np.ndarray, int, int]:
    arr = check_kernel(k, allow_even=True)
    stack = arr if arr.ndim == 3 else arr[None]
    kh, kw = stack.shape[-2:]
    cy, cx = kh // 2, kw // 2
    if flip:
        stack = stack[:, ::-1, ::-1]
        cy, cx = kh - 1 - cy, kw - 1 - cx
    if normalize:
        out = []
        for one in stack:
            total = one.sum()
            if abs(total) > 1e-12 * np.abs(one).sum():
                out.append(one / total)
            else:  # zero-sum (edge) kernels: scale so the positive weights sum to 1
                out.append(one / one[one > 0].sum() if np.any(one > 0) else one)
        stack = np.stack(out)
    return np.ascontiguousarray(stack), cy, cx


def _to_working(image: np.ndarray, mode: str) -> tuple[np.ndarray, bool, bool]:
    """The H x W x C source, whether to drop the channel axis at the end, and whether to take
    the luma of its first three channels (done band by band)."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise UsageError(f"the image must hold numbers, got {arr.dtype}")
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0 or (
            arr.ndim == 3 and arr.shape[2] == 0):
        raise UsageError(f"expected an H x W or H x W x C image, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        return arr[:, :, None], True, False
    if mode == "gray" and arr.shape[2] != 1:
        if arr.shape[2] < 3:
            raise UsageError(f"gray mode needs 1, 3 or 4 channels, got {arr.shape[2]}")
        return arr, True, True
    return arr, mode == "gray", False


def convolve(
    image: np.ndarray,
    kernel: np.ndarray,
    *,
    stride: int = 1,
    padding: str = "zero",
    mode: str = "rgb",
    normalize: bool = False,
    clamp: bool = True,
    tile: int | None = None,
    progress: bool = False,
    flip: bool = False,
    dtype: str = "float32",
) -> np.ndarray:
    """Filter an image with a kernel (cross-correlation; ``flip=True`` for true convolution).

    ``image`` is H x W or H x W x C (any numeric dtype; uint8 is typical). ``kernel`` is
    (kh, kw), or (n, kh, kw) for a magnitude filter whose n responses combine as
    sqrt(sum of squares) (``sobel``). The anchor is (kh // 2, kw // 2), so odd kernels are
    centred. Output pixel (y, x) is centred on input pixel (y * stride, x * stride); the output
    is ceil(H / stride) x ceil(W / stride).

    ``padding``: ``zero``, ``reflect`` (mirror, edge pixel not repeated) or ``edge`` (repeat).
    ``mode``: ``rgb`` filters every channel on its own (depthwise); ``gray`` first takes BT.601
    luma and returns H x W. ``normalize`` divides the kernel by its sum (zero-sum kernels: by
    the sum of their positive weights). ``clamp`` returns uint8 the way a JS
    ``Uint8ClampedArray`` stores numbers (round half to even, then clamp to 0..255); otherwise
    the raw float values. ``tile`` is the number of output rows per band (default: bands of about
    16 MB of float input) so that large images use bounded memory; ``progress`` shows a tqdm bar.
    ``dtype`` is the working precision, ``float32`` (fast) or ``float64``.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise UsageError(f"stride must be a positive integer, got {stride!r}")
    if padding not in PADDINGS:
        raise UsageError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
    if mode not in MODES:
        raise UsageError(f"mode must be 'rgb' or 'gray', got {mode!r}")
    if tile is not None and (isinstance(tile, bool) or int(tile) != tile or tile < 1):
        raise UsageError(f"tile must be a positive number of rows, got {tile!r}")
    if dtype not in ("float32", "float64"):
        raise UsageError(f"dtype must be float32 or float64, got {dtype!r}")
    np_dtype = np.float32 if dtype == "float32" else np.float64
    torch_dtype = torch.float32 if dtype == "float32" else torch.float64

    src, squeeze, luma = _to_working(image, mode)
    stack, cy, cx = _prepare_kernel(kernel, normalize, flip)
    n, kh, kw = stack.shape
    h, w = src.shape[:2]
    channels = 1 if luma else src.shape[2]
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1

    # oneDNN's depthwise kernel vectorises over channels and is fastest with 16 or so of them,
    # so the image is cut into column strips (each with its halo) that go through side by side
    # as extra channels ("lanes"). The last strip may run past the image; that part is dropped.
    strips = max(1, min(_LANES // channels, out_w))
    strip_w = -(-out_w // strips)  # output columns per strip
    span = (strip_w - 1) * stride + kw  # input columns per strip
    padded_w = (strips * strip_w - 1) * stride + kw  # input columns of all strips together
    lanes = strips * channels
    # Depthwise weights: output channel l * n + j is lane l through kernel j.
    weight = torch.from_numpy(np.tile(stack, (lanes, 1, 1))[:, None].astype(np_dtype))
    if tile is None:
        tile = max(1, _BAND_ELEMENTS // max(1, span * lanes * stride) - kh)
        if dtype == "float64":  # no oneDNN kernel: torch's im2col path copies every window
            tile = min(tile, max(1, _BAND_ELEMENTS // max(1, strip_w * lanes * n * kh * kw)))
    tile = int(tile)

    columns = _Columns(w, cx, padded_w, padding)
    luma_weights = torch.tensor(GRAY_WEIGHTS, dtype=torch_dtype)[:, None]
    # The output is written strip-wide and trimmed at the end.
    out = np.empty((out_h, strips * strip_w, channels), dtype=np.uint8 if clamp else np_dtype)
    bar = tqdm(total=out_h, unit="row", desc="filter", disable=not progress, leave=False)
    try:
        for o0 in range(0, out_h, tile):
            o1 = min(out_h, o0 + tile)
            r0 = o0 * stride - cy
            rows, row_mask = _pad_index(h, np.arange(r0, (o1 - 1) * stride - cy + kh), padding)
            band = src[r0:r0 + rows.size] if r0 >= 0 and r0 + rows.size <= h else src[rows]
            if luma:
                band = (torch.from_numpy(band[:, :, :3]).to(torch_dtype) @ luma_weights).numpy()
            band = columns.pad(band)  # rows x padded_w x channels, in the source dtype
            if row_mask is not None:
                band[row_mask] = 0
            # Gather the overlapping strips and convert to float in one copy, laid out as
            # rows x span x strips x channels = 1 x lanes x rows x span in channels-last order,
            # oneDNN's fast CPU layout (the batch stride must cover the whole band for torch to
            # recognise it).
            r = band.shape[0]
            view = torch.from_numpy(band).as_strided(
                (r, span, strips, channels),
                (padded_w * channels, channels, strip_w * stride * channels, 1))
            x = torch.empty((r, span, strips, channels), dtype=torch_dtype).copy_(view)
            x = x.reshape(1, r, span, lanes).permute(0, 3, 1, 2)
            y = F.conv2d(x, weight, stride=stride, groups=lanes)[0]
            if n > 1:
                y = y.reshape(lanes, n, *y.shape[1:]).square().sum(1).sqrt()
            if clamp:  # like a JS Uint8ClampedArray: NaN -> 0, round half to even, clamp
                if src.dtype.kind == "f":
                    y = y.nan_to_num_(0.0)
                y = y.round_().clamp_(0, 255)
            # lanes x rows x strip_w -> rows x strips x strip_w x channels; copy_ converts.
            y = y.reshape(strips, channels, o1 - o0, strip_w).permute(2, 0, 3, 1)
            target = torch.from_numpy(out[o0:o1]).view(o1 - o0, strips, strip_w, channels)
            target.copy_(y)
            bar.update(o1 - o0)
    finally:
        bar.close()
    out = out[:, :out_w] if strips * strip_w != out_w else out
    return np.ascontiguousarray(out[:, :, 0] if squeeze else out)
