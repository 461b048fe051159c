"""Eigen-images: PCA on small copies of photos ("eigen-squirrels").

Every photo is resized to ``size`` (width, height), optionally turned grey, scaled to 0..1 and
flattened into one row; PCA (scikit-learn) finds the ``k`` directions of largest variance. A
photo is then ``k`` numbers (its *codes*), and ``mean + codes @ components`` brings it back.

``method="randomized"`` reads every image into memory and runs a randomized SVD;
``method="incremental"`` reads ``batch_size`` images at a time (memory bounded by about
``batch_size + k`` images, whatever the folder size) and updates the fit batch by batch.

Pictures (mean and eigen-images grid, explained-variance curve, reconstruction strip) are drawn
with matplotlib's Agg canvas, without touching pyplot's global backend, and written with
:func:`belka.images.save`.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Union

import numpy as np

from .. import images
from ..bursts import connected_groups
from ..errors import BelkaError, ImageError, UsageError
from ..files import write_atomic

Size = tuple[int, int]
Source = Union[str, os.PathLike, np.ndarray]
Method = Literal["randomized", "incremental"]

FORMAT = "belka.eigen-images"
VERSION = 1
# ITU-R BT.601 luma, the weights Pillow's "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_KEYS = ("format", "version", "mean", "components", "explained_variance", "explained_variance_ratio",
         "size", "gray", "n_images", "method", "policy")


class PcaWarning(UserWarning):
    """Something was adjusted or skipped, not fatal (k clipped, an unreadable file skipped)."""


# ---------------------------------------------------------------------------------------------
# Reading pixels


def _pixels(source: Source, size: Size, gray: bool, policy: str) -> np.ndarray:
    """One image -> flat float32 row in 0..1 (H*W*3, or H*W when grey).

    Arrays already at ``size`` may be float (taken as 0..1 as they are) or uint8; anything else
    goes through :func:`belka.images.decode` and a resize.
    """
    w, h = size
    if isinstance(source, np.ndarray) and source.dtype.kind == "f" and source.shape[:2] == (h, w):
        pixels = source.astype(np.float32)
    else:
        name = None if isinstance(source, np.ndarray) else str(source)
        array = images.decode(source, draft=(w, h) if name else None)
        if array.shape[:2] != (h, w):
            array = _resize(array, size, policy)
        pixels = array.astype(np.float32) / np.float32(255)
    if pixels.ndim == 3 and pixels.shape[2] not in (1, 3):
        raise ImageError(f"expected 1 or 3 channels, got an array of shape {source.shape}")
    if gray:
        if pixels.ndim == 3:
            pixels = pixels @ _LUMA if pixels.shape[2] == 3 else pixels[..., 0]
    elif pixels.ndim == 2 or pixels.shape[2] == 1:
        pixels = np.repeat(pixels.reshape(h, w, 1), 3, axis=2)
    return pixels.ravel()


def _resize(array: np.ndarray, size: Size, policy: str) -> np.ndarray:
    """Square sizes use :func:`belka.images.resize` (whole centre square for ``crop``); other
    sizes squash, or centre-crop to the target aspect ratio first."""
    w, h = size
    if w == h:
        return images.resize(array, w, policy, crop_fraction=1.0)
    if policy == "crop":
        ih, iw = array.shape[:2]
        if iw * h > ih * w:  # too wide
            cw = max(1, round(ih * w / h))
            left = (iw - cw) // 2
            array = array[:, left : left + cw]
        else:
            ch = max(1, round(iw * h / w))
            top = (ih - ch) // 2
            array = array[top : top + ch]
    elif policy != "squash":
        raise UsageError(f"policy {policy!r} needs a square size; use crop or squash for {w}x{h}")
    from PIL import Image

    return np.asarray(images.to_pil(np.ascontiguousarray(array)).resize((w, h), Image.Resampling.BILINEAR))


def _sources(paths_or_arrays: Source | Iterable[Source]) -> list[Source]:
    """A folder, a file, an N x H x W (x C) array, or a list of any of those -> list of images."""
    if isinstance(paths_or_arrays, np.ndarray):
        if paths_or_arrays.ndim not in (3, 4):
            raise UsageError(f"expected a stack of images (N x H x W x C), got shape {paths_or_arrays.shape}")
        return list(paths_or_arrays)
    if isinstance(paths_or_arrays, (str, os.PathLike)):
        paths_or_arrays = [paths_or_arrays]
    found: list[Source] = []
    for item in paths_or_arrays:
        if isinstance(item, np.ndarray):
            found.append(item)
        else:
            files = images.iter_image_files(item)
            if not files and Path(item).is_dir():
                warnings.warn(f"{item}: no images in this folder", PcaWarning, stacklevel=3)
            found.extend(files)
    if not found:
        raise UsageError("no images to fit: the folders are empty or hold no .jpg/.png/... files")
    return found


def _read(sources: Sequence[Source], size: Size, gray: bool, policy: str, progress: bool) -> Iterator[np.ndarray]:
    """Pixels of each readable source in order; unreadable files are skipped with a warning."""
    from tqdm.auto import tqdm

    for source in tqdm(sources, desc="reading images", unit="img", disable=not progress, leave=False):
        try:
            yield _pixels(source, size, gray, policy)
        except ImageError as err:
            if isinstance(source, np.ndarray):
                raise
            warnings.warn(f"skipped {err}", PcaWarning, stacklevel=3)


def _matrix(sources: Sequence[Source], size: Size, gray: bool, policy: str, progress: bool = False) -> np.ndarray:
    rows = list(_read(sources, size, gray, policy, progress))
    if not rows:
        raise UsageError("none of the images could be read")
    return np.stack(rows)


# ---------------------------------------------------------------------------------------------
# The model


class PsnrPoint(NamedTuple):
    """Reconstruction quality with the first ``k`` components (pixels in 0..1)."""

    k: int
    mse: float
    psnr: float


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for pixels in 0..1 (inf for a perfect copy)."""
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


@dataclass
class EigenImages:
    """A fitted PCA of images: ``pixels ~ mean + codes @ components``, pixels in 0..1."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows, largest variance first
    explained_variance: np.ndarray  # (k,)
    explained_variance_ratio: np.ndarray  # (k,)
    size: Size  # (width, height)
    gray: bool = False
    n_images: int = 0
    method: str = "randomized"
    policy: str = "crop"

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one image: (H, W) grey or (H, W, 3)."""
        w, h = self.size
        return (h, w) if self.gray else (h, w, 3)

    def pixels(self, image: Source) -> np.ndarray:
        """One image as the flat 0..1 row the model works on."""
        return _pixels(image, self.size, self.gray, self.policy)

    def _k(self, k: int | None) -> int:
        if k is None:
            return self.k
        if not 1 <= k <= self.k:
            raise UsageError(f"k must be between 1 and {self.k} (the model's components), got {k}")
        return int(k)

    def encode(self, image: Source, k: int | None = None) -> np.ndarray:
        """An image (path, bytes or array) -> its first ``k`` codes (all by default), float32."""
        return self.transform(self.pixels(image)[None], k)[0]

    def transform(self, rows: np.ndarray, k: int | None = None) -> np.ndarray:
        """Flat pixel rows (n, d) -> codes (n, k)."""
        return ((rows - self.mean) @ self.components[: self._k(k)].T).astype(np.float32)

    def inverse(self, codes: np.ndarray) -> np.ndarray:
        """Codes (n, j) with j <= k -> flat float rows (n, d), not clipped."""
        codes = np.atleast_2d(np.asarray(codes, dtype=np.float32))
        return self.mean + codes @ self.components[: self._k(codes.shape[1])]

    def decode(self, codes: Sequence[float] | np.ndarray) -> np.ndarray:
        """Codes (the first j <= k of them) -> image, uint8 H x W x 3 (H x W when grey)."""
        codes = np.asarray(codes, dtype=np.float32)
        if codes.ndim != 1 or not np.isfinite(codes).all():
            raise UsageError(f"codes must be one row of finite numbers, got shape {codes.shape}")
        return to_uint8(self.inverse(codes)[0].reshape(self.shape))

    def reconstruct(self, image: Source, k: int | None = None) -> np.ndarray:
        """Encode then decode with the first ``k`` components: the uint8 image the codes give."""
        return self.decode(self.encode(image, k))

    def psnr_curve(self, images_: Source | Iterable[Source], ks: Iterable[int]) -> list[PsnrPoint]:
        """Mean squared error and PSNR over ``images_`` for each ``k`` (float, unclipped).

        The MSE is pooled over all pixels of all images; projecting onto more components never
        increases it.
        """
        ks = [self._k(k) for k in ks]
        rows = _matrix(_sources(images_), self.size, self.gray, self.policy)
        codes = self.transform(rows)
        points = []
        for k in ks:
            err = float(np.mean((self.inverse(codes[:, :k]) - rows) ** 2, dtype=np.float64))
            points.append(PsnrPoint(k, err, psnr(err)))
        return points

    def stats(self) -> dict[str, float | int]:
        """Numbers and bytes per image against raw uint8 pixels, and the model's own size."""
        d = int(self.mean.size)
        return {
            "k": self.k,
            "pixels_per_image": d,
            "raw_bytes": d,
            "code_bytes_float32": 4 * self.k,
            "code_bytes_float16": 2 * self.k,
            "ratio_float32": d / (4 * self.k),
            "ratio_float16": d / (2 * self.k),
            "explained_variance": float(np.sum(self.explained_variance_ratio)),
            "model_bytes": int(self.components.nbytes + self.mean.nbytes),
            "n_images": self.n_images,
        }

    # -- files ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        arrays = {
            "format": np.array(FORMAT),
            "version": np.array(VERSION),
            "mean": self.mean.astype(np.float32),
            "components": self.components.astype(np.float32),
            "explained_variance": self.explained_variance.astype(np.float64),
            "explained_variance_ratio": self.explained_variance_ratio.astype(np.float64),
            "size": np.array(self.size, dtype=np.int64),
            "gray": np.array(self.gray),
            "n_images": np.array(self.n_images, dtype=np.int64),
            "method": np.array(self.method),
            "policy": np.array(self.policy),
        }
        _atomic_write(path, lambda stream: np.savez(stream, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EigenImages":
        """Read a model written by :meth:`save`; anything else raises :class:`BelkaError`."""
        path = Path(path)
        hint = "expected an .npz written by `belka pca fit`"
        if not path.is_file():
            raise BelkaError("no such model file", path=str(path))
        try:
            npz = np.load(path, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise BelkaError(f"not an .npz archive; {hint}", path=str(path))
            with npz:
                missing = [key for key in _KEYS if key not in npz.files]
                if missing:
                    raise BelkaError(f"not a belka PCA model (missing {', '.join(missing)}); {hint}", path=str(path))
                data = {key: npz[key] for key in _KEYS}
        except BelkaError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise BelkaError(f"cannot read the model ({exc}); {hint}", path=str(path)) from None
        return cls._validated(data, path, hint)

    @classmethod
    def _validated(cls, data: dict[str, np.ndarray], path: Path, hint: str) -> "EigenImages":
        def bad(what: str) -> BelkaError:
            return BelkaError(f"corrupt PCA model: {what}; {hint}", path=str(path))

        if data["format"].shape != () or str(data["format"]) != FORMAT:
            raise bad(f"format is {data['format']!s}, not {FORMAT}")
        if int(data["version"]) != VERSION:
            raise BelkaError(f"PCA model version {int(data['version'])} is not supported "
                             f"(this belka reads {VERSION})", path=str(path))
        size = tuple(int(v) for v in np.ravel(data["size"]))
        if len(size) != 2 or min(size) < 1:
            raise bad(f"size {size}")
        gray = bool(data["gray"])
        mean, comps = data["mean"], data["components"]
        evar, ratio = data["explained_variance"], data["explained_variance_ratio"]
        d = size[0] * size[1] * (1 if gray else 3)
        if mean.shape != (d,):
            raise bad(f"mean has shape {mean.shape}, expected ({d},) for {size[0]}x{size[1]}{' grey' if gray else ''}")
        if comps.ndim != 2 or comps.shape[1] != d or comps.shape[0] < 1:
            raise bad(f"components have shape {comps.shape}, expected (k, {d})")
        k = comps.shape[0]
        if evar.shape != (k,) or ratio.shape != (k,):
            raise bad("explained variance does not match the components")
        for name, array in (("mean", mean), ("components", comps), ("explained variance", ratio)):
            if array.dtype.kind != "f" or not np.isfinite(array).all():
                raise bad(f"{name} holds non-finite or non-float values")
        return cls(
            mean=mean.astype(np.float32),
            components=comps.astype(np.float32),
            explained_variance=evar.astype(np.float64),
            explained_variance_ratio=ratio.astype(np.float64),
            size=size,  # type: ignore[arg-type]
            gray=gray,
            n_images=int(data["n_images"]),
            method=str(data["method"]),
            policy=str(data["policy"]),
        )

    # -- pictures -------------------------------------------------------------------------------

    def component_image(self, i: int) -> np.ndarray:
        """Component ``i`` as a viewable uint8 image: 0 is mid-grey, +-max|c| are white/black."""
        c = self.components[i]
        scale = float(np.abs(c).max()) or 1.0
        return to_uint8((0.5 + c / (2 * scale)).reshape(self.shape))

    def show(self, path: str | os.PathLike, n: int = 15, curve: str | os.PathLike | None = None) -> Path:
        """PNG grid: the mean image then the top ``n`` eigen-images, each labelled with its share
        of the variance. With ``curve``, also write the explained-variance curve there."""
        n = max(1, min(n, self.k))
        tiles = [(to_uint8(self.mean.reshape(self.shape)), f"mean of {self.n_images}")]
        ratios = self.explained_variance_ratio
        tiles += [(self.component_image(i), f"PC{i + 1}  {100 * ratios[i]:.1f}%") for i in range(n)]
        save_figure(_tile_figure(tiles, f"eigen-images ({self.size[0]}x{self.size[1]}, k={self.k})"), path)
        if curve is not None:
            self.plot_curve(curve)
        return Path(path)

    def plot_curve(self, path: str | os.PathLike) -> Path:
        """PNG: cumulative explained variance (and each component's share) against k."""
        fig = new_figure(7, 4)
        ax = fig.add_subplot()
        ks = np.arange(1, self.k + 1)
        cumulative = 100 * np.cumsum(self.explained_variance_ratio)
        ax.plot(ks, cumulative, color="tab:blue", label="cumulative")
        ax.bar(ks, 100 * self.explained_variance_ratio, color="tab:orange", alpha=0.6, label="per component")
        for level in (50, 90, 95):
            hit = np.searchsorted(cumulative, level)
            if hit < self.k:
                ax.axhline(level, color="grey", lw=0.5, ls=":")
                ax.annotate(f"{level}% at k={hit + 1}", (hit + 1, level), textcoords="offset points",
                            xytext=(4, -11), fontsize=8)
        ax.set(xlabel="k (components)", ylabel="explained variance (%)", ylim=(0, 100),
               title=f"explained variance, {self.n_images} images at {self.size[0]}x{self.size[1]}")
        ax.legend(loc="center right")
        return save_figure(fig, path)

    def reconstruction_strip(self, image: Source, ks: Iterable[int], path: str | os.PathLike) -> Path:
        """PNG: the (resized) image, then its reconstruction from k codes for each k, with PSNR."""
        row = self.pixels(image)
        tiles = [(to_uint8(row.reshape(self.shape)), "original")]
        codes = self.transform(row[None])
        for k in ks:
            k = self._k(k)
            back = self.inverse(codes[:, :k])[0]
            err = float(np.mean((back - row) ** 2))
            tiles.append((to_uint8(back.reshape(self.shape)), f"k={k}  {psnr(err):.1f} dB"))
        return save_figure(_tile_figure(tiles, None, cols=len(tiles)), path)


# ---------------------------------------------------------------------------------------------
# Fitting


def fit(
    paths_or_arrays: Source | Iterable[Source],
    k: int,
    size: Size = (64, 64),
    gray: bool = False,
    method: Method = "randomized",
    batch_size: int = 256,
    progress: bool = True,
    policy: str = "crop",
    seed: int = 0,
    clip: bool = True,
) -> EigenImages:
    """Fit ``k`` eigen-images to a folder, files or arrays.

    ``k`` larger than the data allows (``n_images - 1`` or the pixel count, and after a
    randomized fit the numerical rank) is clipped with a :class:`PcaWarning`, or raises
    :class:`UsageError` with ``clip=False``. Unreadable files are skipped with a warning.
    """
    size = _check_size(size)
    if method not in ("randomized", "incremental"):
        raise UsageError(f"unknown PCA method {method!r}; use randomized or incremental")
    if int(k) < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    sources = _sources(paths_or_arrays)
    d = size[0] * size[1] * (1 if gray else 3)
    if method == "randomized":
        rows = _matrix(sources, size, gray, policy, progress)
        k = _clip(int(k), len(rows), d, clip)
        model = _fit_randomized(rows, k, seed)
    else:
        if batch_size < 2:
            raise UsageError(f"batch size must be at least 2, got {batch_size}")
        k = _clip(int(k), len(sources), d, clip)
        model = _fit_incremental(sources, k, max(batch_size, k), size, gray, policy, progress)
    model.size, model.gray, model.policy = size, gray, policy
    return _drop_null(model, clip)


def _check_size(size: Size) -> Size:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UsageError(f"size must be (width, height), got {size!r}") from None
    if w < 1 or h < 1:
        raise UsageError(f"size must be positive, got {w}x{h}")
    return w, h


def _clip(k: int, n: int, d: int, clip: bool) -> int:
    """k can be at most n - 1 (centred data) and d (pixels)."""
    limit = min(n - 1, d)
    if limit < 1:
        raise UsageError(f"PCA needs at least 2 images, got {n}")
    if k <= limit:
        return k
    if limit == n - 1:
        why = f"{n} images have at most {n - 1} components"
    else:
        why = f"{d} pixels allow at most {d} components"
    if not clip:
        raise UsageError(f"k={k} is larger than the data allows: {why}")
    warnings.warn(f"k={k} is larger than the data allows ({why}); using k={limit}", PcaWarning, stacklevel=3)
    return limit


def _fit_randomized(rows: np.ndarray, k: int, seed: int) -> EigenImages:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(rows)
    return _from_sklearn(pca, len(rows), "randomized")


def _fit_incremental(
    sources: Sequence[Source], k: int, batch_size: int, size: Size, gray: bool, policy: str, progress: bool
) -> EigenImages:
    from sklearn.decomposition import IncrementalPCA

    pca = IncrementalPCA(n_components=k)
    buffer: list[np.ndarray] = []
    n = 0
    try:
        for row in _read(sources, size, gray, policy, progress):
            buffer.append(row)
            # Flush only when at least k rows stay behind, so the last batch is never too small.
            if len(buffer) >= batch_size + k:
                pca.partial_fit(np.stack(buffer[:batch_size]))
                n += batch_size
                del buffer[:batch_size]
        if buffer:
            pca.partial_fit(np.stack(buffer))
            n += len(buffer)
    except ValueError as exc:  # fewer readable images than k
        raise UsageError(f"incremental PCA failed: {exc}") from None
    if n == 0:
        raise UsageError("none of the images could be read")
    return _from_sklearn(pca, n, "incremental")


def _from_sklearn(pca, n: int, method: str) -> EigenImages:
    return EigenImages(
        mean=pca.mean_.astype(np.float32),
        components=pca.components_.astype(np.float32),
        explained_variance=np.asarray(pca.explained_variance_, dtype=np.float64),
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_, dtype=np.float64),
        size=(0, 0),
        n_images=n,
        method=method,
    )


def _drop_null(model: EigenImages, clip: bool) -> EigenImages:
    """Drop trailing components with no variance (duplicate images lower the rank)."""
    total = float(np.sum(model.explained_variance)) or 1.0
    keep = int(np.sum(model.explained_variance > 1e-9 * total))
    if keep == model.k or keep == 0:
        return model
    message = f"the images only span {keep} dimensions (duplicates?); k={model.k} clipped to {keep}"
    if not clip:
        raise UsageError(message)
    warnings.warn(message, PcaWarning, stacklevel=3)
    model.components = model.components[:keep]
    model.explained_variance = model.explained_variance[:keep]
    model.explained_variance_ratio = model.explained_variance_ratio[:keep]
    return model


def load(path: str | os.PathLike) -> EigenImages:
    """Same as :meth:`EigenImages.load`."""
    return EigenImages.load(path)


# ---------------------------------------------------------------------------------------------
# Squirrel or not, from PCA codes


@dataclass
class BaselineReport:
    """Cross-validated squirrel-vs-not accuracy of PCA codes plus a simple classifier."""

    accuracy: float
    balanced_accuracy: float
    majority_accuracy: float  # always answering "not squirrel"
    n_images: int
    n_positive: int
    n_groups: int
    folds: int
    k: int
    classifier: str
    grouping: str
    confusion: tuple[int, int, int, int]  # tn, fp, fn, tp

    def __str__(self) -> str:
        tn, fp, fn, tp = self.confusion
        return (
            f"{self.classifier} on {self.k} PCA codes, {self.folds}-fold CV grouped by {self.grouping} over "
            f"{self.n_images} images ({self.n_positive} positive, {self.n_groups} groups): "
            f"accuracy {self.accuracy:.3f}, balanced "
            f"{self.balanced_accuracy:.3f} (always-negative: {self.majority_accuracy:.3f}); "
            f"tp={tp} fn={fn} fp={fp} tn={tn}"
        )


def near_duplicate_groups(
    rows: np.ndarray, shape: tuple[int, ...], threshold: float = 0.9, names: Sequence[str] | None = None
) -> np.ndarray:
    """Group ids that put near-duplicate images together, for grouped cross-validation.

    ``rows`` are flat 0..1 pixels of images of ``shape``. Images whose 16x16 grey thumbnails
    correlate above ``threshold`` (the same photo re-encoded, resized or slightly cropped) are
    joined, transitively. With ``names``, files of one numbered series (``cat1.jpg``,
    ``cat12.jpg``: the same stem once trailing digits are dropped) are joined too, since burst
    shots of one scene differ too much in pixels to be caught by the correlation.
    """
    h, w = shape[:2]
    pics = rows.reshape(len(rows), *shape)
    if pics.ndim == 4:
        pics = pics @ _LUMA
    bh, bw = max(1, h // 16), max(1, w // 16)
    thumbs = pics[:, : h // bh * bh, : w // bw * bw].reshape(len(rows), h // bh, bh, w // bw, bw).mean(axis=(2, 4))
    t = thumbs.reshape(len(rows), -1).astype(np.float64)
    t -= t.mean(axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True) + 1e-12
    pairs = list(zip(*np.nonzero(np.triu((t @ t.T) > threshold, 1))))
    if names is not None:
        first: dict[str, int] = {}
        for i, name in enumerate(names):
            stem = Path(name).stem.lower()
            series = stem.rstrip("0123456789")
            if series != stem and any(c.isalpha() for c in series):  # "12.jpg" is no series
                pairs.append((first.setdefault(series, i), i))
    return connected_groups(len(rows), pairs)


def labelled_folder(folder: str | os.PathLike, positive: str = "squirrel") -> tuple[list[Path], np.ndarray]:
    """Files under ``folder/<class>/`` and labels: 1 for the ``positive`` subfolder, 0 otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError("not a folder", path=str(folder))
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for sub in classes:
        found = images.iter_image_files(sub)
        files += found
        labels += [int(sub.name == positive)] * len(found)
    y = np.array(labels, dtype=int)
    if not files:
        raise UsageError(f"no images in class subfolders (expected e.g. {folder}/{positive}/ and {folder}/cat/)")
    if y.sum() == 0 or y.sum() == len(y):
        raise UsageError(f"need images both in {folder}/{positive}/ and in other subfolders")
    return files, y


def baseline_report(
    folder: str | os.PathLike,
    positive: str = "squirrel",
    k: int = 16,
    size: Size = (32, 32),
    gray: bool = False,
    classifier: Literal["logistic", "knn"] = "logistic",
    folds: int = 5,
    seed: int = 0,
    progress: bool = False,
    grouping: Literal["series", "pixels"] = "series",
    rows: np.ndarray | None = None,
) -> BaselineReport:
    """Squirrel vs not from PCA codes, cross-validated with near-duplicates kept in one fold.

    Each fold fits its own PCA on its training images only. ``grouping="pixels"`` keeps only
    near-identical pictures together; ``"series"`` also keeps numbered series of one shoot
    (``squirrel1.jpg`` ... ``squirrel14.jpg``) together. ``rows`` may pass pixels already read
    (in the order of :func:`labelled_folder`) to save decoding again.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline

    files, y = labelled_folder(folder, positive)
    size = _check_size(size)
    if rows is None:
        rows = _matrix(files, size, gray, "crop", progress)
    if len(rows) != len(y):
        raise UsageError("some images could not be read; remove them and try again")
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    if grouping not in ("series", "pixels"):
        raise UsageError(f"unknown grouping {grouping!r}; use series or pixels")
    groups = near_duplicate_groups(rows, shape, names=[f.name for f in files] if grouping == "series" else None)
    folds = min(folds, len(set(groups[y == 1])), len(set(groups[y == 0])))
    if folds < 2:
        raise UsageError("need at least 2 independent images (not near-duplicates) of each class for cross-validation")
    smallest_train = len(y) - math.ceil(len(y) / folds) * 2  # generous lower bound with grouping
    k = max(1, min(k, smallest_train - 1, rows.shape[1]))
    if classifier == "logistic":
        head = LogisticRegression(class_weight="balanced", max_iter=5000)
        pca = PCA(n_components=k, whiten=True, random_state=seed)
    elif classifier == "knn":
        head = KNeighborsClassifier(n_neighbors=1)
        pca = PCA(n_components=k, random_state=seed)
    else:
        raise UsageError(f"unknown classifier {classifier!r}; use logistic or knn")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(make_pipeline(pca, head), rows, y, groups=groups, cv=cv)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    return BaselineReport(
        accuracy=float(accuracy_score(y, predicted)),
        balanced_accuracy=float(balanced_accuracy_score(y, predicted)),
        majority_accuracy=float(1 - y.mean()),
        n_images=len(y),
        n_positive=int(y.sum()),
        n_groups=int(groups.max() + 1),
        folds=folds,
        k=k,
        classifier=classifier,
        grouping=grouping,
        confusion=(tn, fp, fn, tp),
    )


def baseline_accuracy(folder: str | os.PathLike, **options) -> float:
    """Cross-validated accuracy of :func:`baseline_report` (see there for the options)."""
    return baseline_report(folder, **options).accuracy


# ---------------------------------------------------------------------------------------------
# Small helpers shared with the CLI


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """0..1 floats -> uint8, clipped and rounded."""
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(stream)`` on a temporary file next to ``path``, then rename it over ``path``."""
    try:
        write_atomic(path, write)
    except OSError as exc:
        raise BelkaError(f"could not write ({exc.strerror or exc})", path=str(path)) from None


def save_array(array: np.ndarray, path: str | os.PathLike) -> Path:
    """``np.save`` atomically (the name is kept as given)."""
    path = Path(path)
    _atomic_write(path, lambda stream: np.save(stream, array, allow_pickle=False))
    return path


def new_figure(width: float, height: float):
    """A matplotlib figure on its own Agg canvas (pyplot's global backend is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    fig.get_layout_engine().set(h_pad=0.08, w_pad=0.06)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Render a matplotlib figure on the Agg canvas and write it with :func:`belka.images.save`."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return images.save(pixels, path)


def _tile_figure(tiles: list[tuple[np.ndarray, str]], title: str | None, cols: int = 4):
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = new_figure(2.2 * cols, 2.35 * rows + (0.3 if title else 0))
    for i, (pic, label) in enumerate(tiles):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(pic, cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


__all__ = [
    "BaselineReport",
    "EigenImages",
    "PcaWarning",
    "PsnrPoint",
    "baseline_accuracy",
    "baseline_report",
    "fit",
    "labelled_folder",
    "load",
    "near_duplicate_groups",
    "new_figure",
    "psnr",
    "save_array",
    "save_figure",
    "to_uint8",
]
