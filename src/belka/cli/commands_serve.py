"""``belka serve``: the web app and HTTP API."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import click

from ..errors import UsageError
from . import main
from .commands_models import engine_option, head_option, load_model


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--data", "data_dir", default="belka-data", show_default=True,
              type=click.Path(file_okay=False), help="folder for the database and stored images")
@click.option("--allow", default="squirrel", show_default=True, metavar="CLASSES",
              help="what the gate accepts (a group, class names or indices)")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, metavar="P",
              help="accept when the allowed classes' probability reaches P")
@click.option("--model", "model_name", default="efficientnet_lite0", show_default=True)
@click.option("--weights", default=None, metavar="PATH|URL")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0.001),
              help="larger request bodies get 413")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="inference threads [default: the CPU count, at most 4]")
@click.option("--max-pixels", type=click.IntRange(1), default=None, metavar="N",
              help="largest image, in pixels, the decoder accepts [default: BELKA_MAX_PIXELS or "
                   "50,000,000]")
@click.option("--memory-mb", default=512, show_default=True, type=click.IntRange(16),
              help="decoded images in flight, all requests together; past it requests wait, "
                   "then get 503")
@click.option("--jobs", "job_workers", default=1, show_default=True, type=click.IntRange(1, 16),
              help="threads for background jobs (apart from --workers)")
@click.option("--max-jobs", default=32, show_default=True, type=click.IntRange(1, 10000),
              help="background jobs queued or running at once; past it 429")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="a Host name to answer to besides 127.0.0.1, localhost and ::1 (repeat it; "
                   "'*' for any, behind a proxy that checks it); BELKA_ALLOWED_HOSTS adds too")
@click.option("--token", default=None, metavar="TOKEN",
              help="require this token (API: 'Authorization: Bearer TOKEN'; pages: open the "
                   "printed link once) [default: BELKA_TOKEN]; --token auto makes one")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="seconds a client has to send a request's line and headers")
@click.option("--body-timeout", default=120.0, show_default=True, type=click.FloatRange(0.1),
              help="seconds a client has to send a request's body (and 15 s at most between "
                   "two pieces)")
@click.option("--max-connections", default=256, show_default=True, type=click.IntRange(1),
              help="open connections at once; past it new ones are closed")
@head_option
@engine_option
def serve(host, port, data_dir, allow, threshold, model_name, weights, max_upload_mb, workers,
          max_pixels, memory_mb, job_workers, max_jobs, allowed_hosts, token, header_timeout,
          body_timeout, max_connections, head):
    """Start the web app: upload a photo, see the verdict and why, keep the ones that pass.

    Pages at http://HOST:PORT/ (Upload, Gallery, Explain, Lab); the HTTP API under /api/v1 with
    its OpenAPI schema at /docs. Records go to SQLite and images to files under --data.

    Only loopback addresses are served without a token: to listen on another address
    (--host 0.0.0.0), give --token (or BELKA_TOKEN). Requests from other websites, and
    requests naming an unknown Host, are refused. See docs/server.md, "Threat model".

    \b
    Example:
      belka serve --allow squirrel --port 8000
      belka serve --head squirrel.belka --allow squirrel
      curl -F file=@cat.jpg http://127.0.0.1:8000/api/v1/check
      belka serve --host 0.0.0.0 --token auto --allowed-host photos.example.org
    """
    import uvicorn

    from ..server import ServerConfig, create_app
    from ..server.guard import guarded_protocol, is_loopback
    from ..server.storage import StorageError, check_writable

    token = token or os.environ.get("BELKA_TOKEN") or None
    if token == "auto":
        token = secrets.token_urlsafe(24)
    if not is_loopback(host) and not token:
        raise UsageError(f"refusing to serve on {host} without a token: anyone who can reach "
                         "this machine could read, store and delete uploads. Give --token TOKEN "
                         "(or --token auto, or BELKA_TOKEN), or listen on 127.0.0.1")
    if token is not None and len(token) < 16:
        raise UsageError("the token is too short to be a secret: use 16 characters or more "
                         "(--token auto makes one)")
    try:
        check_writable(data_dir)
    except StorageError as err:
        raise UsageError(err.message) from None
    _check_port_free(host, port)
    config = ServerConfig(data_dir=Path(data_dir), model=model_name, weights=weights, allow=allow,
                          threshold=threshold, max_upload_bytes=int(max_upload_mb * 2**20),
                          max_pixels=max_pixels, memory_bytes=memory_mb * 2**20,
                          job_workers=job_workers, max_jobs=max_jobs, token=token,
                          body_total_s=body_timeout,
                          body_idle_s=min(15.0, body_timeout))
    config.allowed_hosts = (*config.allowed_hosts, *allowed_hosts) + (
        () if host in ("0.0.0.0", "::", "") else (host,))
    if workers:
        config.workers = workers
    # Load the model and check --allow before binding the port, so mistakes fail fast; the
    # engine is made (and the model exported, the first time) now, not on the first request.
    model = load_model(model_name, weights, head)
    model.class_indices(allow)
    model.engine
    app = create_app(config, model=model)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    click.echo(f"belka is serving on {url}  (API docs: {url}docs; Ctrl-C stops)")
    if token:
        click.echo(f"open {url}?token={token} once in the browser; API clients send "
                   "'Authorization: Bearer <the token>'")
    uvicorn.run(app, host=host, port=port, log_level="warning", http=guarded_protocol(
        header_timeout, max_connections), timeout_keep_alive=5,
        limit_concurrency=max_connections + 64)


def _check_port_free(host: str, port: int) -> None:
    """Say it in one line, before loading anything, when the port is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UsageError(f"port {port} on {host} is already in use ({err.strerror}): stop "
                             "what is using it, or choose another with --port") from None
