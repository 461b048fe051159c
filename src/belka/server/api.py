"""The HTTP API, mounted under /api/v1 (OpenAPI schema at /docs)."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from ..errors import UsageError
from .app import error_response, run_blocking
from .guard import FILE_CSP
from .service import Service, validate_top

MAX_ID = 2**63 - 1  # SQLite's integers; larger ids cannot exist
NAME = 200          # longest class list, class, layer or method name a request may send
ImageFile = Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, GIF, BMP, TIFF)")]
UploadId = Annotated[int, Path(ge=1, le=MAX_ID)]
_DIGITS = re.compile(r"-?[0-9]{1,9}")
MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
        "bmp": "image/bmp", "tif": "image/tiff"}


async def one_file(request: Request) -> None:
    """Refuse a form with more than one ``file`` part (which one would be checked?)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        if len(form.getlist("file")) > 1:
            raise UsageError("send one image per request, in the field 'file' (this request has "
                             f"{len(form.getlist('file'))}); POST /explain with `files` takes many")


router = APIRouter(dependencies=[Depends(one_file)])


def service(request: Request) -> Service:
    return request.app.state.service


@asynccontextmanager
async def decoded(request: Request, data: bytes, name: str):
    """The decoded pixels of an upload, with their memory reserved in the service's budget
    until the block ends (a request past the budget waits, then gets 503)."""
    s = service(request)
    async with s.memory.reserve(s.cost(data, name)):
        yield await run_blocking(request, s.decode, data, name)


def integer_or_name(value: str | None) -> int | str | None:
    """A class or layer given as digits (ASCII only: '²' is no number) or as a name."""
    if not value:
        return None
    return int(value) if _DIGITS.fullmatch(value) else value


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
    data = await file.read()
    async with decoded(request, data, file.filename or "upload") as image:
        predictions = await run_blocking(request, service(request).classify, image,
                                         validate_top(top))
    return {"filename": file.filename, "predictions": predictions}


@router.post("/check")
async def check(request: Request, file: ImageFile,
                allow: Annotated[str | None, Query(max_length=NAME)] = None,
                threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
                heatmap: bool = True):
    """The gate's verdict (accept / warn), the allowed-class score, the top-5, and a heat map
    of the class that decided."""
    s = service(request)
    data = await file.read()
    gate = s.gate_for(allow, threshold)
    async with decoded(request, data, file.filename or "upload") as image:
        return await run_blocking(request, s.check, image, gate, heatmap)


@router.post("/explain")
async def explain(request: Request,
                  file: Annotated[UploadFile | None, File(description="the image")] = None,
                  files: Annotated[list[UploadFile] | None, File(
                      description="several images, explained as one background job")] = None,
                  method: Annotated[str, Form(max_length=NAME)] = "gradcam",
                  layer: Annotated[str | None, Form(max_length=NAME)] = None,
                  target: Annotated[str | None, Form(alias="class", max_length=NAME)] = None,
                  background: bool = Form(False)):
    """A heat map of where the model looked. Slow methods (Score-CAM, occlusion) may run as a
    background job with ``background=true``: the answer is 202 with the job to poll. A queued
    job keeps the file's bytes, not its pixels; it decodes when it starts. Several images in
    ``files`` are always one background job (202), whose result lists one answer per image."""
    from .explain_batch import explain_files

    if files:
        if file is not None:
            raise UsageError("send either one image in 'file' or several in 'files', not both")
        return await explain_files(request, files, method, layer, target)
    if file is None:
        raise UsageError("send an image in the field 'file' (or several in 'files')")
    s = service(request)
    data = await file.read()
    name = file.filename or "upload"
    options = dict(method=method, layer=integer_or_name(layer), target=integer_or_name(target))
    if background:
        async with decoded(request, data, name):  # refuse a bad file now, not in the job
            pass

        def work(job):
            s.memory.acquire(s.cost(data, name))
            try:
                return s.explain(s.decode(data, name), job=job, **options)
            finally:
                s.memory.release(s.cost(data, name))

        return JSONResponse(s.jobs.submit("explain", work).to_dict(), status_code=202)
    async with decoded(request, data, name) as image:
        return await run_blocking(request, s.explain, image, **options)


def job_answer(job, job_id: str):
    """A job's state, or 404 when there is no such job (unknown, or forgotten)."""
    if job is None:
        return error_response(404, f"no job {job_id}", "not_found")
    return job.to_dict()


@router.get("/jobs")
async def list_jobs(request: Request, active: bool = False):
    """Background jobs the server knows now, oldest first: every queued or running one, and
    the most recent ended ones (``active=true``: only queued and running)."""
    jobs = service(request).jobs
    items = [j.to_dict() for j in jobs.list(active_only=active)]
    return {"items": items, "limit": jobs.max_pending, "workers": jobs.workers}


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
    data = await file.read()
    async with decoded(request, data, file.filename or "upload") as image:
        result = await run_blocking(request, s.check, image, s.gate, False)
        if result["verdict"] != "accept" and not confirm:
            return JSONResponse({"detail": result["message"], "error": "not_allowed",
                                 "stored": False, **result}, status_code=409)
        record, created = await run_blocking(request, s.store, data, image, file.filename,
                                             result)
    body = record.to_dict() | {"stored": True, "duplicate": not created}
    return JSONResponse(body, status_code=201 if created else 200)


@router.get("/uploads")
async def list_uploads(request: Request, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       verdict: str | None = Query(None, pattern="^(accept|warn)$")):
    """Stored uploads, newest first."""
    s = service(request)
    items, total = s.storage.page(offset=offset, limit=limit, verdict=verdict)
    return {"items": [u.to_dict() for u in items], "total": total,
            "offset": offset, "limit": limit}


@router.get("/uploads/{upload_id}")
async def get_upload(request: Request, upload_id: UploadId):
    record = service(request).storage.get(upload_id)
    if record is None:
        return error_response(404, f"no upload {upload_id}", "not_found")
    return record.to_dict()


@router.get("/uploads/{upload_id}/image")
async def get_upload_image(request: Request, upload_id: UploadId, thumbnail: bool = False):
    """The stored file as it was uploaded (or a 256 px JPEG thumbnail). Served as an image
    that can never run as a page: its own image type, ``nosniff``, a sandboxing CSP and a
    Content-Disposition with a safe name."""
    s = service(request)
    record = s.storage.get(upload_id)
    path = s.storage.path_for(record.sha256, record.ext) if record else None
    if record is None or not path.exists():
        return error_response(404, f"no image for upload {upload_id}", "not_found")
    headers = {"Content-Security-Policy": FILE_CSP}
    if thumbnail:
        async with s.memory.reserve(s.cost(str(path), path.name)):
            data = await run_blocking(request, s.thumbnail, path)
        return Response(data, media_type="image/jpeg", headers=headers | {
            "Content-Disposition": f'inline; filename="upload-{upload_id}-thumbnail.jpg"'})
    return FileResponse(path, media_type=MIME.get(record.ext, "application/octet-stream"),
                        headers=headers | {"Content-Disposition":
                                           f'inline; filename="upload-{upload_id}.{record.ext}"'})


@router.delete("/uploads/{upload_id}", status_code=204)
async def delete_upload(request: Request, upload_id: UploadId):
    if not await run_blocking(request, service(request).delete, upload_id):
        return error_response(404, f"no upload {upload_id}", "not_found")
    return Response(status_code=204)
