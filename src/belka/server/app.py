"""The FastAPI app factory: the HTTP API under /api/v1, the pages, error mapping and the upload
size limit. ``belka serve`` runs :func:`create_app` under uvicorn."""

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
from .service import ServerConfig, Service, return_big_buffers_to_the_os

log = logging.getLogger("belka.server")
DOCS_STATIC_URL = "/static-offline-docs"  # the API docs' own scripts and styles


class BodyTooLarge(StarletteHTTPException):
    """The request body went past the configured limit. An HTTP exception, so the framework's
    body parsing passes it through unchanged and it is answered as a 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"upload too large: the limit is {limit / 2**20:g} MB")


def error_response(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"detail": message, "error": kind}, status_code=status)


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


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, whether or not Content-Length says
    so up front (chunked bodies are counted as they arrive)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = BodyTooLarge(self.limit).detail
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await error_response(413, message, "payload_too_large")(scope, receive, send)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return event

        async def tracking_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await error_response(413, message, "payload_too_large")(scope, receive, send)


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
        kind = "payload_too_large" if isinstance(err, BodyTooLarge) else "http_error"
        return error_response(err.status_code, str(err.detail), kind)

    from . import api, lab, pages

    app.include_router(api.router, prefix="/api/v1")
    app.include_router(lab.router, prefix="/api/v1/lab")
    app.include_router(pages.router)
    app.include_router(lab.pages)
    app.mount("/static", StaticFiles(directory=str(resources.files("belka.server") / "static")),
              name="static")
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)
    return app


async def run_blocking(request: Request, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run model work on the service's worker pool, never on the event loop."""
    service: Service = request.app.state.service
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(service.executor, partial(fn, *args, **kwargs))


def _version() -> str:
    from .. import __version__

    return __version__

