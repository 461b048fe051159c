"""The HTTP API, mounted under /api/v1 (OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from .app import error_response, run_blocking
from .service import Service, validate_top

router = APIRouter()
ImageFile = Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, GIF, BMP, TIFF)")]


def service(request: Request) -> Service:
    return request.app.state.service


async def read_image(request: Request, file: UploadFile):
    """The upload's bytes and decoded pixels (ImageError -> 415/422 via the app's handler)."""
    data = await file.read()
    image = await run_blocking(request, service(request).decode, data, file.filename or "upload")
    return data, image


@router.get("/health")
async def health(request: Request):
    """Liveness and what the service runs."""
    s = service(request)
    return {"status": "ok", "model": s.model.name, "allow": s.gate.allowed,
            "threshold": s.gate.threshold, "uploads": s.storage.count(),
            "rows_without_files": s.recovery.rows_without_files}


@router.post("/classify")
async def classify(request: Request, file: ImageFile, top: Annotated[int, Query(ge=1, le=1000)] = 5):
    """Top-k ImageNet labels for an image."""
    _, image = await read_image(request, file)
    predictions = await run_blocking(request, service(request).classify, image, validate_top(top))
    return {"filename": file.filename, "predictions": predictions}


@router.post("/check")
async def check(request: Request, file: ImageFile, allow: str | None = Query(None),
                threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
                heatmap: bool = True):
    """The gate's verdict (accept / warn), the allowed-class score, the top-5, and a heat map
    of the class that decided."""
    s = service(request)
    _, image = await read_image(request, file)
    gate = s.gate_for(allow, threshold)
    return await run_blocking(request, s.check, image, gate, heatmap)


@router.post("/explain")
async def explain(request: Request, file: ImageFile,
                  method: str = Form("gradcam"), layer: str | None = Form(None),
                  target: str | None = Form(None, alias="class"),
                  background: bool = Form(False)):
    """A heat map of where the model looked. Slow methods (Score-CAM, occlusion) may run as a
    background job with ``background=true``: the answer is 202 with the job to poll."""
    s = service(request)
    _, image = await read_image(request, file)
    target_value = int(target) if target and target.isdigit() else (target or None)
    layer_value = int(layer) if layer and layer.lstrip("-").isdigit() else (layer or None)
    if background:
        job = s.jobs.submit("explain", lambda job: s.explain(
            image, method=method, layer=layer_value, target=target_value, job=job))
        return JSONResponse(job.to_dict(), status_code=202)
    return await run_blocking(request, s.explain, image, method=method, layer=layer_value,
                              target=target_value)


def job_answer(job, job_id: str):
    """A job's state, or 404 when there is no such job (unknown, or forgotten)."""
    if job is None:
        return error_response(404, f"no job {job_id}", "not_found")
    return job.to_dict()


@router.get("/jobs/{job_id}")
async def job_status(request: Request, job_id: str):
    return job_answer(service(request).jobs.get(job_id), job_id)


@router.get("/jobs/{job_id}/result")
async def job_result(request: Request, job_id: str):
    job = service(request).jobs.get(job_id)
    if job is None:
        return error_response(404, f"no job {job_id}", "not_found")
    if job.status != "done":
        return error_response(409, f"job {job_id} is {job.status}", "not_ready")
    return job.result


@router.delete("/jobs/{job_id}")
async def job_cancel(request: Request, job_id: str):
    return job_answer(service(request).jobs.cancel(job_id), job_id)


@router.get("/png/{key}")
async def png(request: Request, key: str):
    data = service(request).pngs.get(key)
    if data is None:
        return error_response(404, "this picture has expired; ask for it again", "not_found")
    return Response(data, media_type="image/png")


@router.post("/uploads", status_code=201)
async def create_upload(request: Request, file: ImageFile, confirm: bool = False):
    """Store an image with its verdict. A warned image is stored only with ``confirm=true``
    (otherwise 409 with the verdict, so the page can ask "upload anyway?")."""
    s = service(request)
    data, image = await read_image(request, file)
    result = await run_blocking(request, s.check, image, s.gate, False)
    if result["verdict"] != "accept" and not confirm:
        return JSONResponse({"detail": result["message"], "error": "not_allowed",
                             "stored": False, **result}, status_code=409)
    record, created = await run_blocking(request, s.store, data, image, file.filename, result)
    body = record.to_dict() | {"stored": True, "duplicate": not created}
    return JSONResponse(body, status_code=201 if created else 200)


@router.get("/uploads")
async def list_uploads(request: Request, offset: Annotated[int, Query(ge=0)] = 0,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       verdict: str | None = Query(None, pattern="^(accept|warn)$")):
    """Stored uploads, newest first."""
    s = service(request)
    items, total = s.storage.page(offset=offset, limit=limit, verdict=verdict)
    return {"items": [u.to_dict() for u in items], "total": total,
            "offset": offset, "limit": limit}


@router.get("/uploads/{upload_id}")
async def get_upload(request: Request, upload_id: int):
    record = service(request).storage.get(upload_id)
    if record is None:
        return error_response(404, f"no upload {upload_id}", "not_found")
    return record.to_dict()


@router.get("/uploads/{upload_id}/image")
async def get_upload_image(request: Request, upload_id: int, thumbnail: bool = False):
    s = service(request)
    record = s.storage.get(upload_id)
    path = s.storage.path_for(record.sha256, record.ext) if record else None
    if record is None or not path.exists():
        return error_response(404, f"no image for upload {upload_id}", "not_found")
    if thumbnail:
        return Response(await run_blocking(request, s.thumbnail, path), media_type="image/jpeg")
    return FileResponse(path)


@router.delete("/uploads/{upload_id}", status_code=204)
async def delete_upload(request: Request, upload_id: int):
    if not service(request).storage.delete(upload_id):
        return error_response(404, f"no upload {upload_id}", "not_found")
    return Response(status_code=204)
