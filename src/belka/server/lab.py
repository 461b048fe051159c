"""The image-math lab in the web app: kernel playground, CSS transform playground, PCA slider
and the gradient-descent fit (API under /api/v1/lab, page at /lab)."""

from __future__ import annotations

import warnings
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from .. import images
from ..errors import UsageError
from .app import error_response, run_blocking

router = APIRouter()
pages = APIRouter(include_in_schema=False)
LAB_MAX_SIDE = 1024  # the lab works on a preview-sized copy so every action stays interactive


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


@router.post("/filter")
async def filter_image(request: Request, file: Annotated[UploadFile, File()],
                       kernel: str = Form("gaussian-blur"), padding: str = Form("reflect"),
                       gray: bool = Form(False), stride: int = Form(1)):
    """The image filtered with a named kernel or a custom one ("[[0,-1,0],[-1,5,-1],[0,-1,0]]")."""
    from ..ops.filters import convolve, resolve_kernel

    data = await file.read()

    def work():
        image = _preview(data, file.filename or "upload")
        k = resolve_kernel(kernel)
        out = convolve(image, k, padding=padding, mode="gray" if gray else "rgb", stride=stride)
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=2)
        return {"kernel": np.asarray(k).tolist(), "url": _png_url(request, out),
                "width": int(out.shape[1]), "height": int(out.shape[0])}

    return await run_blocking(request, work)


@router.post("/transform")
async def transform_image(request: Request, file: Annotated[UploadFile, File()],
                          css: str = Form(...)):
    """belka's warp of the image by a CSS transform, with the 4x4 matrix in DOMMatrix order; the
    page shows it beside the browser's own rendering of the same CSS."""
    from ..ops.transforms import parse_transform, to_dommatrix_string, warp

    data = await file.read()

    def work():
        image = _preview(data, file.filename or "upload", TRANSFORM_SIDE)
        h, w = image.shape[:2]
        matrix = parse_transform(css, resolve_relative=(w, h, 16.0))
        out = warp(image, css)
        return {"m": list(matrix.values),
                "dommatrix": to_dommatrix_string(matrix.m, matrix.is2d),
                "url": _png_url(request, out), "source_url": _png_url(request, image),
                "width": w, "height": h}

    return await run_blocking(request, work)


@router.post("/pca")
async def pca_fit(request: Request, k: int = Form(50), size: int = Form(48)):
    """Fit eigen-images on the stored uploads (a background job); poll /jobs/{id}."""
    service = request.app.state.service
    uploads = service.storage.list(limit=2000)
    paths = [service.storage.path_for(u.sha256, u.ext) for u in uploads]
    paths = [p for p in paths if p.exists()]
    if len(paths) < 3:
        return error_response(400, "store at least 3 photos first (Upload page, 'upload anyway' "
                                   "works too): PCA learns from the stored uploads", "bad_request")

    def work(job):
        from ..ops import pca

        job.progress(0, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pca.fit(paths, k=min(k, len(paths) - 1), size=(size, size), progress=False)
        service.lab_pca = model
        job.progress(1, 1)
        return {"k": model.k, "images": len(paths), "size": size,
                "explained": [float(v) for v in np.cumsum(model.explained_variance_ratio)]}

    job = service.jobs.submit("pca", work)
    return JSONResponse(job.to_dict(), status_code=202)


@router.get("/pca/reconstruct")
async def pca_reconstruct(request: Request, upload_id: int, k: int = 10):
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


@router.post("/learn")
async def learn_linear(request: Request, x: str = Form("1,2,3,4"), y: str = Form("7,9,11,13"),
                       lr: float = Form(0.05), steps: int = Form(300)):
    """The from-scratch gradient-descent fit of y = a*x + b: every step's a, b and loss, for the
    page to animate."""
    from ..learn.scratch import fit_linear

    try:
        xs = [float(v) for v in x.replace(" ", ",").split(",") if v]
        ys = [float(v) for v in y.replace(" ", ",").split(",") if v]
    except ValueError:
        raise UsageError("x and y must be comma-separated numbers") from None
    if not 1 <= steps <= 5000:
        raise UsageError("steps must be between 1 and 5000")
    trace: list[tuple[int, float, float, float]] = []
    fit = fit_linear(xs, ys, lr=lr, steps=steps,
                     callback=lambda step, loss, params: trace.append((step, loss, *params)))
    return {"a": float(fit.a), "b": float(fit.b), "diverged": bool(fit.diverged), "x": xs, "y": ys,
            "trace": [{"step": int(s), "loss": float(loss), "a": float(a), "b": float(b)}
                      for s, loss, a, b in trace]}
