"""Pictures made with the model, over HTTP: ``POST /api/v1/style`` and
``POST /api/v1/visualize`` start background jobs (202 with the job to poll at
``/api/v1/jobs/{id}``, cancel with ``DELETE``), ``GET /api/v1/pictures/{id}/preview`` shows the
picture so far, and the job's result names the finished PNG. The page is ``/pictures``.

What one request may ask for is bounded (:data:`LIMITS`), so a job takes minutes at most on a
small CPU: style up to 1024 px and 400 steps, visualisations up to 512 px, 512 steps and 16
pictures of at most 224 px each (a grid). Parameters are checked before the job is queued
(400 / 422 JSON); uploads are checked from their header in the request and decoded on the
job's worker.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .. import images
from ..errors import UsageError
from .app import error_response, run_blocking

router = APIRouter()
pages = APIRouter(include_in_schema=False)

STYLE_MAX_SIZE = 1024
STYLE_MAX_STEPS = 400
VIS_MAX_SIZE = 512
VIS_MAX_STEPS = 512
VIS_MAX_PICTURES = 16
VIS_GRID_MAX_SIZE = 224   # each picture of a grid or a diversity set
PREVIEW_EVERY_S = 1.0     # a fresh preview at most this often
LIMITS = {"style": {"max_size": STYLE_MAX_SIZE, "max_steps": STYLE_MAX_STEPS},
          "visualize": {"max_size": VIS_MAX_SIZE, "max_steps": VIS_MAX_STEPS,
                        "max_pictures": VIS_MAX_PICTURES, "grid_max_size": VIS_GRID_MAX_SIZE}}
NAME = 200


class Previews:
    """The newest preview PNG key (in the service's PNG cache) of each picture job; bounded."""

    def __init__(self, keep: int = 256):
        self.keep = keep
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def set(self, job_id: str, key: str) -> None:
        with self._lock:
            self._items[job_id] = key
            self._items.move_to_end(job_id)
            while len(self._items) > self.keep:
                self._items.popitem(last=False)

    def get(self, job_id: str) -> str | None:
        with self._lock:
            return self._items.get(job_id)


PREVIEWS = Previews()


def _png_url(service, image) -> str:
    return f"/api/v1/png/{service.pngs.put(images.encode(image))}"


def _reporter(service, job, grid: bool = False):
    """The library's progress callback for a job: progress (raises Cancelled on cancel) and a
    preview PNG now and then."""
    last = [0.0]

    def progress(done: int, total: int, preview) -> None:
        job.progress(done, total)
        now = time.monotonic()
        if done == total or now - last[0] >= PREVIEW_EVERY_S:
            last[0] = now
            from ..optimize import tile

            pictures = preview()
            picture = tile(pictures) if grid and len(pictures) > 1 else pictures[0]
            PREVIEWS.set(job.id, service.pngs.put(images.encode(picture)))

    return progress


@contextmanager
def _model_for_job(service):
    """A view of the service's model (own module objects, shared weights) when the service
    keeps them, so no other request's hook ever sees this job's passes."""
    views = getattr(service, "explain_models", None)
    with (views.borrow() if views is not None else nullcontext(service.model)) as model:
        yield model


@contextmanager
def _memory(service, n: int):
    if n <= 0:
        yield
        return
    service.memory.acquire(n)
    try:
        yield
    finally:
        service.memory.release(n)


async def _checked_upload(request: Request, file: UploadFile, field: str) -> tuple[bytes, str]:
    """The upload's bytes, refused now (415/422) if its header is not an image's."""
    data = await file.read()
    name = file.filename or field
    if not data:
        raise UsageError(f"the {field} image is empty")
    await run_blocking(request, images.dimensions, data, name=name)
    return data, name


def _accepted(job) -> JSONResponse:
    body = job.to_dict() | {"preview_url": f"/api/v1/pictures/{job.id}/preview"}
    return JSONResponse(body, status_code=202)


@router.post("/style", status_code=202)
async def style_job(request: Request,
                    content: Annotated[UploadFile, File(description="the photo to paint")],
                    style: Annotated[UploadFile | None,
                                     File(description="the picture whose style to use")] = None,
                    pattern: Annotated[str | None,
                                       Form(max_length=20,
                                            description="or a built-in style: strokes, mosaic")
                                       ] = None,
                    size: Annotated[int, Form(ge=32, le=STYLE_MAX_SIZE)] = 384,
                    steps: Annotated[int, Form(ge=1, le=STYLE_MAX_STEPS)] = 120,
                    style_weight: Annotated[float, Form(ge=0, le=1e4, allow_inf_nan=False)] = 10.0,
                    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0):
    """Paint ``content`` in the style of ``style`` (a background job: 202 with the job; poll
    ``/api/v1/jobs/{id}``, preview at ``preview_url``, the result names the PNG)."""
    service = request.app.state.service
    content_data, content_name = await _checked_upload(request, content, "content")
    from ..optimize.patterns import NAMES

    if (style is None) == (pattern is None):
        raise UsageError("send a style picture (field 'style') or name a built-in pattern "
                         f"(field 'pattern': {', '.join(NAMES)}), one of the two")
    if pattern is not None and pattern not in NAMES:
        raise UsageError(f"no built-in style {pattern!r}: choose {', '.join(NAMES)}")
    style_data, style_name = (await _checked_upload(request, style, "style") if style
                              else (b"", pattern))
    need = service.cost(content_data, content_name) + (
        service.cost(style_data, style_name) if style_data else 0)

    def work(job):
        from ..optimize import style as paint

        job.progress(0, steps)
        with _memory(service, need):
            content_rgb = service.decode(content_data, content_name)
            if style_data:
                style_rgb = service.decode(style_data, style_name)
            else:
                from ..optimize.patterns import pattern as draw

                style_rgb = draw(style_name)
            with _model_for_job(service) as model:
                result = paint(content_rgb, style_rgb, model=model, size=size, steps=steps,
                               style_weight=style_weight, seed=seed,
                               progress=_reporter(service, job))
        return {"url": _png_url(service, result.image), **result.to_dict()}

    return _accepted(service.jobs.submit("style", work))


@router.post("/visualize", status_code=202)
async def visualize_job(request: Request,
                        layer: Annotated[str | None, Form(max_length=NAME)] = None,
                        channel: Annotated[int | None, Form(ge=0, le=100_000)] = None,
                        channels: Annotated[str | None, Form(max_length=NAME)] = None,
                        neuron: Annotated[bool, Form()] = False,
                        direction: Annotated[str | None, Form(max_length=20_000)] = None,
                        target: Annotated[str | None, Form(alias="class", max_length=NAME)] = None,
                        size: Annotated[int, Form(ge=32, le=VIS_MAX_SIZE)] = 224,
                        steps: Annotated[int, Form(ge=1, le=VIS_MAX_STEPS)] = 256,
                        diversity: Annotated[int, Form(ge=1, le=VIS_MAX_PICTURES)] = 1,
                        seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0):
    """What a channel (``layer`` + ``channel``), a neuron (+ ``neuron=true``), a direction
    (``layer`` + ``direction`` as ``C:W,...``), several channels (``layer`` + ``channels`` like
    ``0-15``: a grid) or a class (``class``) looks for. A background job like ``/style``."""
    from ..inspect import get_layer
    from ..optimize.common import parse_channels, parse_direction
    from ..optimize.visualize import _channels, make_objective

    service = request.app.state.service
    model = service.model
    grid = parse_channels(channels) if channels else None
    vector = None
    if direction:
        if not layer:
            raise UsageError("a direction needs a layer")
        vector = parse_direction(direction, _channels(model, get_layer(model, _key(layer)).name))
    target_key = _key(target) if target else None
    objective = await run_blocking(request, make_objective, model, layer=_key(layer),
                                   channel=channel, channels=grid, neuron=neuron,
                                   direction=vector, target=target_key)
    count = len(grid) if grid else diversity
    if grid and diversity > 1:
        raise UsageError("a grid of channels makes one picture per channel; leave diversity at 1")
    if count > VIS_MAX_PICTURES:
        raise UsageError(f"at most {VIS_MAX_PICTURES} pictures per request, not {count}")
    if count > 1 and size > VIS_GRID_MAX_SIZE:
        raise UsageError(f"several pictures are made at most {VIS_GRID_MAX_SIZE} px each; "
                         f"ask for size <= {VIS_GRID_MAX_SIZE}")

    def work(job):
        from ..optimize import visualize

        job.progress(0, steps)
        with _model_for_job(service) as view:
            result = visualize(view, layer=objective.layer if objective.kind != "class" else None,
                               channel=channel if not grid else None, channels=grid,
                               neuron=neuron, direction=vector, target=target_key, size=size,
                               steps=steps, diversity=diversity, seed=seed,
                               progress=_reporter(service, job, grid=True))
        picture = result.images[0] if len(result.images) == 1 else result.grid()
        return {"url": _png_url(service, picture),
                "urls": [_png_url(service, p) for p in result.images] if count > 1 else None,
                "description": objective.describe(), **result.to_dict()}

    return _accepted(service.jobs.submit("visualize", work))


def _key(value: str | None):
    """A layer or class given as ASCII digits is an index; anything else is a name."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else value


@router.get("/pictures/limits")
async def picture_limits():
    """What one style or visualize request may ask for."""
    return LIMITS


@router.get("/pictures/{job_id}/preview", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the picture so far"}})
async def picture_preview(request: Request, job_id: str):
    """The newest preview PNG of a style or visualize job (404 until the first one)."""
    key = PREVIEWS.get(job_id[:64])
    data = request.app.state.service.pngs.get(key) if key else None
    if data is None:
        return error_response(404, f"no preview for job {job_id[:64]} yet", "not_found")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@pages.get("/pictures", response_class=HTMLResponse)
async def pictures_page(request: Request):
    from .pages import render

    service = request.app.state.service
    return render(request, "pictures.html", page="pictures", layers=service.model.layer_names,
                  limits=LIMITS)
