"""Explain several uploaded images as one background job: ``POST /api/v1/explain`` with many
``files`` (wired in :mod:`belka.server.api`; this module only provides the handler's body).

The request is answered at once with 202 and the job (``GET /api/v1/jobs/{id}`` to poll,
``.../result`` for the answer, ``DELETE`` to cancel). The job explains the images with
:func:`belka.explain.explain_many` a chunk at a time on a borrowed model view (the service's
rule: hooks never go on the shared model), holding the memory budget for one chunk's decoded
pixels only, calls ``job.progress(done, total)`` after every chunk (which stops the work when
the job is cancelled), and draws each image's overlay and heat map at display size as the
single-image route does. A file that cannot be decoded is an item with ``error`` in the result;
the others are still explained. The answer:

    {"method": "gradcam", "layer": "top_activation", "count": 3, "failed": 1,
     "items": [{"filename": "a.jpg", "label": "tiger cat", "classes": [282], "probability": ...,
                "score": ..., "overlay_url": "/api/v1/png/...", "heatmap_url": ...,
                "stats": {"peak_xy": [...], "centroid_xy": [...], "mean": ..., "area": ...,
                          "spread": ...}},
               {"filename": "b.txt", "error": "not an image ..."}, ...]}
"""

from __future__ import annotations

from fastapi import Request, UploadFile
from fastapi.responses import JSONResponse

from ..errors import BelkaError, UsageError

MAX_FILES = 64       # images one job may take
CHUNK = 8            # images decoded and explained together inside the job


def explain_uploads(service, uploads: list[tuple[str, bytes]], *, method: str = "gradcam",
                    layer=None, target=None, job=None, chunk: int = CHUNK) -> dict:
    """The job's work: (filename, bytes) pairs -> the answer described in the module doc."""
    from ..explain import explain_many, map_statistics

    total = len(uploads)
    items: list[dict] = []
    layer_name = None
    if job is not None:
        job.progress(0, total)
    with service.explain_models.borrow() as model:
        for start in range(0, total, chunk):
            part = uploads[start:start + chunk]
            cost = sum(service.cost(data, name) for name, data in part)
            service.memory.acquire(cost)
            try:
                decoded, answers = [], []
                for name, data in part:
                    try:
                        decoded.append(service.decode(data, name))
                        answers.append({"filename": name})
                    except BelkaError as err:
                        answers.append({"filename": name, "error": str(err)})
                done_before = start

                def report(done, _total, base=done_before):
                    if job is not None:
                        job.progress(base + done, total)

                ok = [a for a in answers if "error" not in a]
                results = explain_many(model, decoded, target=target, method=method, layer=layer,
                                       progress=report, batch_size=chunk) if decoded else []
                for answer, image, item in zip(ok, decoded, results):
                    exp = item.explanation
                    layer_name = exp.layer
                    overlay_url, heatmap_url = service.draw(image, exp)
                    answer.update({
                        "method": exp.method, "layer": exp.layer, "classes": list(exp.indices),
                        "label": exp.label, "probability": exp.probability, "score": exp.score,
                        "overlay_url": overlay_url, "heatmap_url": heatmap_url,
                        "stats": map_statistics(exp)})
                items.extend(answers)
            finally:
                service.memory.release(cost)
            if job is not None:
                job.progress(min(start + chunk, total), total)
    return {"method": method, "layer": layer_name, "count": len(items),
            "failed": sum(1 for i in items if "error" in i), "items": items}


async def explain_files(request: Request, files: list[UploadFile], method: str = "gradcam",
                        layer: str | None = None, target: str | None = None) -> JSONResponse:
    """202 with a background job that explains every uploaded file (see the module doc).

    The method, layer and class are checked before the job is queued, so a typo is a 400 now
    and not a failed job later; too many files (over :data:`MAX_FILES`) or none is a 400 too.
    """
    from ..explain.base import get_method, resolve_layer, resolve_target
    from .api import integer_or_name

    s = request.app.state.service
    if not files:
        raise UsageError("send at least one image in the field 'files'")
    if len(files) > MAX_FILES:
        raise UsageError(f"one job explains at most {MAX_FILES} images (got {len(files)}); "
                         "send them in several requests")
    layer, target = integer_or_name(layer), integer_or_name(target)
    cls = get_method(method)
    if cls.uses_layer and layer is not None:
        resolve_layer(s.model, layer)
    if target is not None:
        resolve_target(s.model, target)
    uploads = [(f.filename or f"upload-{i + 1}", await f.read()) for i, f in enumerate(files)]

    def work(job):
        return explain_uploads(s, uploads, method=method, layer=layer, target=target, job=job)

    return JSONResponse(s.jobs.submit("explain", work).to_dict(), status_code=202)
