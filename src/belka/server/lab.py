"""The image-math lab in the web app: kernel playground, CSS transform playground, PCA slider
and the gradient-descent fit (API under /api/v1/lab, page at /lab)."""

from __future__ import annotations

import math
import warnings
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from .. import images
from ..errors import UsageError
from .api import MAX_ID, one_file
from .app import error_response, run_blocking

router = APIRouter(dependencies=[Depends(one_file)])
pages = APIRouter(include_in_schema=False)
LAB_MAX_SIDE = 1024  # the lab works on a preview-sized copy so every action stays interactive
# What one lab request may ask for: each bound keeps a request's work to a few seconds at most.
MAX_KERNEL_SIDE = 31      # a 31 x 31 kernel on a 1024 px preview: about 3 G multiply-adds
MAX_KERNEL_TEXT = 20_000  # characters of a [[...]] literal (a 31 x 31 one needs about 8,000)
MAX_POINTS = 10_000       # points of the gradient-descent fit
MAX_STEPS = 5_000         # its steps (10,000 points x 5,000 steps: about a second)
MAX_CSS = 2_000           # characters of a CSS transform
PCA_SIDES = (8, 128)      # eigen-image side, pixels
PCA_MAX_K = 500
PCA_MAX_IMAGES = 2000
PCA_MAX_BYTES = 256 * 2**20  # images x side^2 x 3 float64 values, the data matrix PCA holds


async def _read_reserved(request: Request, file: UploadFile):
    """The upload's bytes and their memory reservation (decoding happens in the work)."""
    service = request.app.state.service
    data = await file.read()
    return data, service.memory.reserve(service.cost(data, file.filename or "upload"))


TRANSFORM_SIDE = 320  # shown at natural size beside the browser's rendering, so px mean the same


def _preview(data: bytes, name: str, side: int = LAB_MAX_SIDE) -> np.ndarray:
    image = images.decode(data, name=name)
    h, w = image.shape[:2]
    if max(h, w) > side:
        from PIL import Image

        pil = Image.fromarray(image)
        pil.thumbnail((side, side))
        image = np.asarray(pil)
    return image


def _png_url(request: Request, image: np.ndarray) -> str:
    return f"/api/v1/png/{request.app.state.service.pngs.put(images.encode(image))}"


@pages.get("/lab", response_class=HTMLResponse)
async def lab_page(request: Request):
    from ..ops.filters import list_kernels
    from .pages import render

    return render(request, "lab.html", page="lab", kernels=[k.name for k in list_kernels()])


def lab_kernel(text: str) -> np.ndarray:
    """A catalogue kernel by name or a ``[[...]]`` literal, at most MAX_KERNEL_SIDE wide; never
    a file on the server (the command line's ``--kernel FILE`` is not for HTTP clients)."""
    from ..ops.filters import _CATALOGUE, _canonical, parse_kernel, resolve_kernel

    text = text.strip()
    if text.startswith("["):
        if len(text) > MAX_KERNEL_TEXT:
            raise UsageError(f"the kernel literal is {len(text):,} characters; at most "
                             f"{MAX_KERNEL_TEXT:,} (a {MAX_KERNEL_SIDE} x {MAX_KERNEL_SIDE} kernel)")
        try:
            k = parse_kernel(text)
        except RecursionError:
            raise UsageError("the kernel literal is nested too deeply: write it as rows of "
                             "numbers, like [[0,-1,0],[-1,5,-1],[0,-1,0]]") from None
    elif _canonical(text) in _CATALOGUE:
        k = resolve_kernel(text)
    else:
        raise UsageError(f"unknown kernel {text[:60]!r}: give a name from the list "
                         "(GET /lab shows them) or a literal like [[0,-1,0],[-1,5,-1],[0,-1,0]]")
    side = max(np.asarray(k).shape[-2:])
    if side > MAX_KERNEL_SIDE:
        raise UsageError(f"the kernel is {side} wide; the lab takes at most "
                         f"{MAX_KERNEL_SIDE} x {MAX_KERNEL_SIDE}")
    return k


@router.post("/filter")
async def filter_image(request: Request, file: Annotated[UploadFile, File()],
                       kernel: Annotated[str, Form(max_length=MAX_KERNEL_TEXT)] = "gaussian-blur",
                       padding: Annotated[str, Form(max_length=20)] = "reflect",
                       gray: bool = Form(False),
                       stride: Annotated[int, Form(ge=1, le=64)] = 1):
    """The image filtered with a named kernel or a custom one ("[[0,-1,0],[-1,5,-1],[0,-1,0]]")."""
    from ..ops.filters import convolve

    k = lab_kernel(kernel)
    data, room = await _read_reserved(request, file)

    def work():
        image = _preview(data, file.filename or "upload")
        out = convolve(image, k, padding=padding, mode="gray" if gray else "rgb", stride=stride)
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=2)
        return {"kernel": np.asarray(k).tolist(), "url": _png_url(request, out),
                "width": int(out.shape[1]), "height": int(out.shape[0])}

    async with room:
        return await run_blocking(request, work)


@router.post("/transform")
async def transform_image(request: Request, file: Annotated[UploadFile, File()],
                          css: Annotated[str, Form(max_length=MAX_CSS)]):
    """belka's warp of the image by a CSS transform, with the 4x4 matrix in DOMMatrix order; the
    page shows it beside the browser's own rendering of the same CSS."""
    from ..ops.transforms import parse_transform, to_dommatrix_string, warp

    data, room = await _read_reserved(request, file)

    def work():
        image = _preview(data, file.filename or "upload", TRANSFORM_SIDE)
        h, w = image.shape[:2]
        matrix = parse_transform(css, resolve_relative=(w, h, 16.0))
        out = warp(image, css)
        return {"m": list(matrix.values),
                "dommatrix": to_dommatrix_string(matrix.m, matrix.is2d),
                "url": _png_url(request, out), "source_url": _png_url(request, image),
                "width": w, "height": h}

    async with room:
        return await run_blocking(request, work)


@router.post("/pca")
async def pca_fit(request: Request,
                  k: Annotated[int, Form(ge=1, le=PCA_MAX_K)] = 50,
                  size: Annotated[int, Form(ge=PCA_SIDES[0], le=PCA_SIDES[1])] = 48):
    """Fit eigen-images on the stored uploads (a background job); poll /jobs/{id}."""
    service = request.app.state.service
    uploads = await run_blocking(request, service.storage.list, limit=PCA_MAX_IMAGES)
    paths = [service.storage.path_for(u.sha256, u.ext) for u in uploads]
    paths = [p for p in paths if p.exists()]
    if len(paths) < 3:
        return error_response(400, "store at least 3 photos first (Upload page, 'upload anyway' "
                                   "works too): PCA learns from the stored uploads", "bad_request")
    need = len(paths) * size * size * 3 * 8
    if need > PCA_MAX_BYTES:
        most = PCA_MAX_BYTES // (len(paths) * 3 * 8)
        raise UsageError(f"eigen-images of {size} x {size} px on {len(paths)} photos would need "
                         f"{need / 2**20:.0f} MB; at most {PCA_MAX_BYTES / 2**20:.0f} MB, so "
                         f"size <= {math.isqrt(most)} for this many photos")

    def work(job):
        from ..ops import pca

        job.progress(0, 1)
        service.memory.acquire(need)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = pca.fit(paths, k=min(k, len(paths) - 1), size=(size, size),
                                progress=False)
        finally:
            service.memory.release(need)
        service.lab_pca = model
        job.progress(1, 1)
        return {"k": model.k, "images": len(paths), "size": size,
                "explained": [float(v) for v in np.cumsum(model.explained_variance_ratio)]}

    job = service.jobs.submit("pca", work)
    return JSONResponse(job.to_dict(), status_code=202)


@router.get("/pca/reconstruct")
async def pca_reconstruct(request: Request, upload_id: Annotated[int, Query(ge=1, le=MAX_ID)],
                          k: Annotated[int, Query(ge=1, le=PCA_MAX_K)] = 10):
    """A stored upload rebuilt from its first k eigen-image codes (after /lab/pca)."""
    service = request.app.state.service
    model = getattr(service, "lab_pca", None)
    record = service.storage.get(upload_id)
    if model is None:
        return error_response(409, "fit the eigen-images first", "not_ready")
    if record is None:
        return error_response(404, f"no upload {upload_id}", "not_found")
    path = service.storage.path_for(record.sha256, record.ext)

    def work():
        kk = max(1, min(k, model.k))
        out = model.reconstruct(path, kk)
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=2)
        return {"k": kk, "url": _png_url(request, out)}

    return await run_blocking(request, work)


def _numbers(text: str, name: str) -> list[float]:
    values = [v for v in text.replace(" ", ",").split(",") if v]
    if len(values) > MAX_POINTS:
        raise UsageError(f"{name} has {len(values):,} numbers; the lab fits at most {MAX_POINTS:,}")
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers") from None
    if not all(math.isfinite(v) for v in numbers):
        raise UsageError(f"{name} must be finite numbers (no inf or nan)")
    return numbers


def _finite(value: float) -> float | None:
    """JSON has no inf or nan: a diverged value is sent as null."""
    value = float(value)
    return value if math.isfinite(value) else None


@router.post("/learn")
async def learn_linear(request: Request,
                       x: Annotated[str, Form(max_length=MAX_POINTS * 24)] = "1,2,3,4",
                       y: Annotated[str, Form(max_length=MAX_POINTS * 24)] = "7,9,11,13",
                       lr: Annotated[float, Form(gt=0, le=1e6, allow_inf_nan=False)] = 0.05,
                       steps: Annotated[int, Form(ge=1, le=MAX_STEPS)] = 300):
    """The from-scratch gradient-descent fit of y = a*x + b: every step's a, b and loss, for the
    page to animate. Runs on a worker thread; at most MAX_POINTS points and MAX_STEPS steps."""
    from ..learn.scratch import fit_linear

    xs, ys = _numbers(x, "x"), _numbers(y, "y")

    def work():
        trace: list[tuple[int, float, float, float]] = []
        fit = fit_linear(xs, ys, lr=lr, steps=steps,
                         callback=lambda step, loss, params: trace.append((step, loss, *params)))
        return {"a": _finite(fit.a), "b": _finite(fit.b), "diverged": bool(fit.diverged),
                "x": xs, "y": ys,
                "trace": [{"step": int(s), "loss": _finite(loss), "a": _finite(a), "b": _finite(b)}
                          for s, loss, a, b in trace]}

    return await run_blocking(request, work)
