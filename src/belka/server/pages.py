"""Server-rendered pages: Upload, Gallery, Explain. Small vanilla JS, no build step."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(resources.files("belka.server") / "templates"))


def render(request: Request, name: str, **context) -> HTMLResponse:
    service = request.app.state.service
    head = service.gate.head
    score = ("its probability" if head is None else
             "the head's and ImageNet's agreement on it" if head.agreement else
             "the head's probability of it")
    return templates.TemplateResponse(request, name, {
        "allowed": service.gate.allowed, "threshold": service.gate.threshold, "score": score,
        "model": service.model.name, "max_mb": service.config.max_upload_bytes / 2**20,
        **context})


@router.get("/", response_class=HTMLResponse)
async def upload_page(request: Request):
    return render(request, "upload.html", page="upload")


@router.get("/gallery", response_class=HTMLResponse)
async def gallery_page(request: Request):
    return render(request, "gallery.html", page="gallery")


@router.get("/explain", response_class=HTMLResponse)
async def explain_page(request: Request):
    from ..explain import METHODS
    from ..explain.base import layer_shapes

    service = request.app.state.service
    # Only the layers an explanation can use: those with a C x H x W feature map (the pooled
    # vector and the class scores are refused by every layer method).
    shapes = dict(layer_shapes(service.model))
    layers = [name for name in service.model.layer_names
              if shapes.get(name) is not None and len(shapes[name]) == 4]
    # Grad-CAM first (the default: one forward on the engine), the rest as the library lists them.
    names = sorted(METHODS, key=lambda name: name != "gradcam")
    methods = [{"name": name, "title": METHODS[name].title or name, "slow": METHODS[name].slow,
                "uses_layer": METHODS[name].uses_layer} for name in names]
    return render(request, "explain.html", page="explain", layers=layers, methods=methods)
