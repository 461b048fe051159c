"""The FastAPI app factory: the HTTP API under /api/v1, the pages, error mapping, and the
guards at the door (:mod:`.guard`). ``belka serve`` runs :func:`create_app` under uvicorn."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (BelkaError, CorruptImageError, ImageError, ImageTooLargeError, ModelError,
                      NotAnImageError, UsageError)
from .guard import BodyGuard, BodyTimeout, BodyTooLarge, Door, Refused
from .service import ServerConfig, Service, return_big_buffers_to_the_os

log = logging.getLogger("belka.server")
DOCS_STATIC_URL = "/static-offline-docs"  # the API docs' own scripts and styles


def error_response(status: int, message: str, kind: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "error": kind}, status_code=status, headers=headers)


def status_for(err: BelkaError) -> tuple[int, str]:
    """HTTP status and short kind for a user-caused error."""
    if isinstance(err, NotAnImageError):
        return 415, "unsupported_media_type"
    if isinstance(err, ImageTooLargeError):
        return 413, "image_too_large"
    if isinstance(err, (CorruptImageError, ImageError)):
        return 422, "corrupt_image"
    if isinstance(err, (ModelError, UsageError)):
        return 400, "bad_request"
    return 400, "bad_request"


def create_app(config: ServerConfig | None = None, *, model=None) -> FastAPI:
    """A ready app; ``model`` lets tests share one loaded model between apps."""
    config = config or ServerConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        return_big_buffers_to_the_os()
        service = Service(config, model=model)
        report = service.recovery
        if report.temp_files_removed or report.orphan_files_removed or report.rows_without_files:
            log.warning("storage recovery: removed %d temp and %d orphan files; rows without "
                        "files: %s", report.temp_files_removed, report.orphan_files_removed,
                        report.rows_without_files or "none")
        app.state.service = service
        try:
            yield
        finally:
            service.close()

    # /docs (Swagger UI) and /redoc with their scripts, styles and icon served from the
    # fastapi-offline package under /static-offline-docs: no CDN, so they work offline.
    app = FastAPIOffline(title="belka", version=_version(), lifespan=lifespan,
                         static_url=DOCS_STATIC_URL,
                         # no badge fetched from validator.swagger.io either
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Classify, check and explain images; store the uploads "
                                     "that pass the gate. Errors are JSON: "
                                     "{\"detail\": message, \"error\": kind}.")

    @app.exception_handler(BelkaError)
    async def belka_error(request: Request, err: BelkaError):
        status, kind = status_for(err)
        return error_response(status, err.message if isinstance(err, ImageError) else str(err), kind)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        parts = []
        for e in err.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return error_response(422, "; ".join(parts) or "invalid request", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = ("payload_too_large" if isinstance(err, BodyTooLarge) else
                "request_timeout" if isinstance(err, BodyTimeout) else
                "not_found" if err.status_code == 404 else
                "method_not_allowed" if err.status_code == 405 else "http_error")
        return error_response(err.status_code, str(err.detail), kind,
                              getattr(err, "headers", None))

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused):
        return err.response()

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, err: RecursionError):
        return error_response(400, "a parameter is nested too deeply to read", "bad_request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error: the server failed on this request (its log "
                                   "has the details)", "internal_error")

    from . import api, lab, pages, pictures, webgate

    app.include_router(api.router, prefix="/api/v1")
    app.include_router(lab.router, prefix="/api/v1/lab")
    app.include_router(pages.router)
    app.include_router(lab.pages)
    app.include_router(pictures.router, prefix="/api/v1")   # /style, /visualize (docs/pictures.md)
    app.include_router(pictures.pages)
    app.include_router(webgate.router)   # /web/: the gate for the browser (belka export web)
    app.mount("/static", StaticFiles(directory=str(resources.files("belka.server") / "static")),
              name="static")
    app.add_middleware(BodyGuard, limit=config.max_upload_bytes, idle_s=config.body_idle_s,
                       total_s=config.body_total_s)
    app.add_middleware(Door, allowed_hosts=config.allowed_hosts, token=config.token)
    app.openapi = partial(_openapi_with_errors, app)
    return app


ERROR_SCHEMA = {
    "title": "Error", "type": "object", "required": ["detail", "error"],
    "properties": {"detail": {"type": "string", "description": "what went wrong, for people"},
                   "error": {"type": "string", "description": "the kind, for programs"}}}


def _openapi_with_errors(app: FastAPI) -> dict:
    """FastAPI's schema, with every error answer described as it really is: ``{"detail",
    "error"}`` (FastAPI documents its own validation-error shape, which belka replaces)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "invalid request", "content": error_ref}
            responses.setdefault("4XX", {"description": "refused (see `error`)",
                                         "content": error_ref})
            responses.setdefault("5XX", {"description": "busy, storage full or unavailable",
                                         "content": error_ref})
    app.openapi_schema = schema
    return schema


async def run_blocking(request: Request, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run model work on the service's worker pool, never on the event loop."""
    service: Service = request.app.state.service
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(service.executor, partial(fn, *args, **kwargs))


def _version() -> str:
    from .. import __version__

    return __version__

