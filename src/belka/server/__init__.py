"""The gate service: a FastAPI app (``create_app``) with the HTTP API under /api/v1, pages,
durable upload storage and background jobs. ``belka serve`` runs it; :mod:`.launch` runs it
in a subprocess for tests and benchmarks.

``create_app`` and ``ServerConfig`` are imported on first use, so ``belka.server.launch``
(standard library only) does not pull in FastAPI, torch and the model code."""

__all__ = ["create_app", "ServerConfig"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerConfig":
        from .service import ServerConfig

        return ServerConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
