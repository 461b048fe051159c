"""What the web app does, apart from HTTP: decode, classify, check, explain, store.

Every method here is blocking (model math); the routes call them on the inference executor so
the event loop never waits on the model.
"""

from __future__ import annotations

import copy
import io
import itertools
import os
import queue
import sys
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .. import images
from ..errors import UsageError
from ..gate import Gate
from .guard import MemoryBudget, Refused
from .jobs import JobManager
from .storage import Storage, StorageError

FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


# What a decoded image costs while a request works on it, per pixel: Pillow's copy (4 bytes a
# pixel for RGB), the RGB array (3) and the resized copies the model and tiles are cut from.
# Measured: decoding a 49-megapixel PNG raised the peak by 437 MB, about 9 bytes a pixel.
BYTES_PER_PIXEL = 12
DISPLAY_SIDE = 1024  # heat maps and overlays are drawn at most this large: pictures to look at


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in os.environ.get(name, "").split(",") if v.strip())


@dataclass
class ServerConfig:
    """Settings of one running service (``belka serve`` options)."""

    data_dir: Path = Path("belka-data")
    model: str = "efficientnet_lite0"
    weights: str | None = None
    allow: str = "squirrel"
    threshold: float | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    explain_method: str = "gradcam"
    max_pixels: int | None = None          # the decoder's limit (None: BELKA_MAX_PIXELS or 50 MP)
    memory_bytes: int = 512 * 2**20        # decoded pixels in flight, all requests and jobs
    memory_wait_s: float = 30.0            # how long a request waits for that room, then 503
    job_workers: int = 1                   # threads for background jobs, apart from `workers`
    max_jobs: int = 32                     # jobs queued or running at once; past it 429
    # Host names besides the loopback ones ("*": any); BELKA_ALLOWED_HOSTS adds to them.
    allowed_hosts: tuple[str, ...] = field(default_factory=lambda: _env_list("BELKA_ALLOWED_HOSTS"))
    token: str | None = field(default_factory=lambda: os.environ.get("BELKA_TOKEN") or None)
    body_idle_s: float = 15.0              # a request body may pause this long between chunks
    body_total_s: float = 120.0            # and take this long in all


class HeatmapCache:
    """The most recent rendered PNGs (heat maps, overlays), by random id; bounded in count and
    in bytes so memory stays flat however many requests come (an overlay of a phone photo is
    about a megabyte; the newest picture is always kept, however large)."""

    def __init__(self, capacity: int = 256, max_bytes: int = 64 * 2**20):
        self.capacity, self.max_bytes = capacity, max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, png: bytes) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = png
            self._bytes += len(png)
            while len(self._items) > 1 and (len(self._items) > self.capacity
                                            or self._bytes > self.max_bytes):
                self._bytes -= len(self._items.popitem(last=False)[1])
        return key

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._items.get(key)


class ModelViews:
    """Copies of the model for explanations, one per explanation running at the same time.

    An explanation puts a forward hook on a layer of the network, and a hook fires on every
    forward pass through that module object, from any thread: on the one shared module, two
    explanations at once, or an explanation and a plain check, record each other's activations
    (a 400 "layer ... runs more than once per forward pass" for one of them, or a failed
    check). A view has its own module objects, so its hooks are its own, but the very same
    weight tensors (read-only here): a view costs kilobytes, not a second copy of the weights.
    Views are made on demand and reused, so there are at most as many as there are threads
    explaining at once (the service's workers)."""

    def __init__(self, model):
        self.model = model
        self._free: queue.SimpleQueue = queue.SimpleQueue()

    def _new_view(self):
        module = self.model.module
        shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
        view = copy.deepcopy(self.model, shared)
        _trace_quietly(view)
        return view

    def prefill(self, n: int) -> None:
        """Make ``n`` views now, before serving: a view is traced (torch.fx) when it is made,
        and a trace must not run while other threads run the network."""
        for _ in range(n):
            self._free.put(self._new_view())

    @contextmanager
    def borrow(self):
        try:
            view = self._free.get_nowait()
        except queue.Empty:
            view = self._new_view()
        try:
            yield view
        finally:
            self._free.put(view)


def _trace_quietly(model) -> None:
    """Trace the model's graph (the split machinery, pictures) now; a model torch.fx cannot
    trace is simply left untraced (those features say so when asked)."""
    from ..errors import ModelError
    from ..inspect import trace

    try:
        trace(model)
    except ModelError:
        pass


def return_big_buffers_to_the_os(threshold: int = 1 << 20) -> bool:
    """glibc only: allocations of ``threshold`` bytes or more always get their own mapping,
    handed back to the OS when freed. By default glibc raises that threshold (up to 32 MB) each
    time it frees such a block, after which the multi-megabyte buffers of every request (decoded
    photos, heat maps, overlays) are carved from per-thread heaps that keep the memory: a server
    with 2 workers sat near 950 MB resident instead of 400 MB (same speed). Leaves an explicit
    MALLOC_MMAP_THRESHOLD_ alone. True when set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def png(picture: Image.Image) -> bytes:
    """PNG bytes, quickly: zlib level 1 takes about a quarter of the time of Pillow's default
    level 6 on a photo-sized overlay, for a few percent more bytes (it was most of a check's
    time)."""
    buf = io.BytesIO()
    picture.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def sniff_format(data: bytes) -> str:
    """The stored file extension for encoded image bytes (decode has already validated them)."""
    with Image.open(io.BytesIO(data)) as im:
        return FORMAT_EXT.get(im.format or "", "img")


class Service:
    """The model, the gate, storage, the worker pool and background jobs of one app."""

    def __init__(self, config: ServerConfig, model=None):
        import belka

        self.config = config
        self.model = model if model is not None else belka.load(config.model, weights=config.weights)
        self.gate = Gate(self.model, allow=config.allow, threshold=config.threshold)
        self.storage = Storage(config.data_dir)
        self.recovery = self.storage.recover()
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="belka-infer")
        self.jobs = JobManager(workers=config.job_workers, max_pending=config.max_jobs)
        self.memory = MemoryBudget(config.memory_bytes, wait_s=config.memory_wait_s)
        self.pngs = HeatmapCache()
        self.explain_models = ModelViews(self.model)
        # Everything torch.fx traces is traced now, before any request runs the network.
        _trace_quietly(self.model)
        self.explain_models.prefill(config.workers + config.job_workers)

    def close(self) -> None:
        self.jobs.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.storage.close()

    # -- model work (blocking) -----------------------------------------------------------
    def decode(self, data: bytes, name: str) -> np.ndarray:
        return images.decode(data, name=name, max_pixels=self.config.max_pixels)

    def cost(self, data: bytes, name: str) -> int:
        """Bytes that decoding and working on this image will hold, from its header alone (the
        header's pixel count, capped at the pixel limit; 0 when it is not an image, which the
        decoder will say)."""
        limit = self.config.max_pixels or images._resolve_max_pixels(None)
        try:
            width, height = images.dimensions(data, name=name)
        except Exception:  # not an image, or no header: decode() gives the real message
            return 0
        return min(width * height, limit) * BYTES_PER_PIXEL

    def gate_for(self, allow: str | None, threshold: float | None) -> Gate:
        if allow is None and threshold is None:
            return self.gate
        return Gate(self.model, allow=allow or self.config.allow,
                    threshold=self.config.threshold if threshold is None else threshold)

    def classify(self, image: np.ndarray, top: int) -> list[dict]:
        return [p.to_dict() for p in self.model.classify(image, top=top)]

    def check(self, image: np.ndarray, gate: Gate, heatmap: bool = True) -> dict:
        result = gate.check_many([image])[0]
        out = result.to_dict() | {"message": result.message}
        if heatmap:
            # Explain the class that decided: the best allowed class when accepted, else the
            # top guess ("why does it think this is a tiger cat?").
            probs = np.zeros(len(self.model.labels))
            for p in result.predictions:
                probs[p.index] = p.probability
            target = result.predictions[0].index
            box = None
            if result.accepted and result.tile is not None:
                # A tile decided: explain that tile, for what the gate scored on it (the
                # allowed classes together), drawn in its box on the photo.
                target, box = list(gate.allow_indices), result.tile
            elif result.accepted:
                target = max(gate.allow_indices, key=lambda i: probs[i])
            out["heatmap"] = self.explain(image, method=self.config.explain_method, target=target,
                                          box=box)
        return out

    def explain(self, image: np.ndarray, *, method: str = "gradcam", layer: str | None = None,
                target: str | int | list[int] | None = None, job=None, box=None) -> dict:
        """A heat map and overlay of ``image`` (or, with ``box``, of that tile of it, as the gate
        saw it, drawn in its box). The model sees the photo as every other path does (the same
        input tensor, so the same numbers); the pictures are drawn on a copy at most
        DISPLAY_SIDE px on its longer side, so a huge photo costs no more than a big one."""
        from ..explain import explain
        from ..tiling import crop_resized

        prep = self.model.preprocessing
        if box is None:
            x = prep([image])
        else:
            x = prep.normalize(crop_resized(image, box, prep.size)[np.newaxis].copy())
        # A job's progress(done, total) callback also stops the work when it is cancelled.
        # Never on the shared model: its hooks would catch other threads' forward passes.
        with self.explain_models.borrow() as model:
            exp = explain(model, x[0], target=target, method=method, layer=layer,
                          progress=job.progress if job is not None else False)
        overlay_url, heatmap_url = self.draw(image, exp, box)
        return {"method": exp.method, "layer": exp.layer, "classes": list(exp.indices),
                "label": exp.label, "probability": exp.probability, "score": exp.score,
                "tile": None if box is None else box.to_list(),
                "overlay_url": overlay_url, "heatmap_url": heatmap_url}

    def draw(self, image: np.ndarray, exp, box=None) -> tuple[str, str]:
        """URLs of the overlay and the grey heat map of ``exp`` (explained on the model's input
        made from ``image``, or from its tile ``box``), drawn on a copy at most DISPLAY_SIDE px
        on its longer side; a tile's heat map lands in its box, outlined."""
        from ..explain.base import geometry, heatmap_on_image
        from ..explain.render import overlay as draw_overlay
        from ..tiling import Box, place_heatmap

        prep = self.model.preprocessing
        shown = display_copy(image)
        sy, sx = image.shape[0] / shown.shape[0], image.shape[1] / shown.shape[1]
        if box is None:
            geo = geometry(image.shape[0], image.shape[1], prep.size, prep.policy,
                           prep.crop_fraction)
            geo = type(geo)(shown.shape[0], shown.shape[1], geo.size, geo.scale_y * sy,
                            geo.scale_x * sx, geo.offset_y, geo.offset_x)
            heatmap = heatmap_on_image(exp.raw, geo)
        else:
            shown_box = Box(int(box.x0 / sx), int(box.y0 / sy), max(int(box.x0 / sx) + 1,
                            round(box.x1 / sx)), max(int(box.y0 / sy) + 1, round(box.y1 / sy)))
            heatmap = place_heatmap(exp.heatmap, shown_box, shown.shape)
        picture = draw_overlay(shown, heatmap).convert("RGB")
        if box is not None:
            from PIL import ImageDraw

            width = max(2, round(max(shown.shape[:2]) / 200))
            ImageDraw.Draw(picture).rectangle(
                [shown_box.x0, shown_box.y0, shown_box.x1 - 1, shown_box.y1 - 1],
                outline=(255, 255, 255), width=width)
        heat = Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8))  # grey, "L"
        return (f"/api/v1/png/{self.pngs.put(png(picture))}",
                f"/api/v1/png/{self.pngs.put(png(heat))}")

    def store(self, data: bytes, image: np.ndarray, filename: str, result: dict):
        try:
            return self.storage.add(
                data, ext=sniff_format(data), filename=filename or "upload",
                width=int(image.shape[1]), height=int(image.shape[0]), verdict=result["verdict"],
                score=float(result["score"]), allowed=result["allowed"],
                predictions=result["predictions"])
        except StorageError as err:
            raise refused_for(err) from None

    def delete(self, upload_id: int) -> bool:
        try:
            return self.storage.delete(upload_id)
        except StorageError as err:
            raise refused_for(err) from None

    def thumbnail(self, path: Path, size: int = 256) -> bytes:
        image = Image.fromarray(display_copy(images.decode(path, max_pixels=self.config.max_pixels),
                                             size))
        return images.encode(np.asarray(image), format="JPEG", quality=85)


def refused_for(err: StorageError) -> Refused:
    if err.full:
        return Refused(err.message, status=507, kind="insufficient_storage")
    return Refused(err.message, status=503, kind="storage_unavailable", retry_after=30)


def display_copy(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """The image itself when it fits in side x side, else a copy scaled down to fit."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    pil = Image.fromarray(image)
    pil.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(pil)


def validate_top(top: int) -> int:
    if not 1 <= top <= 1000:
        raise UsageError(f"top must be between 1 and 1000, got {top}")
    return top
