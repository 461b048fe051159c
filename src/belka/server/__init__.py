"""The gate service: a FastAPI app (``create_app``) with the HTTP API under /api/v1, pages,
durable upload storage and background jobs. ``belka serve`` runs it."""

from .app import create_app
from .service import ServerConfig

__all__ = ["create_app", "ServerConfig"]
