"""``belka serve``: the web app and HTTP API."""

from __future__ import annotations

from pathlib import Path

import click

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
@head_option
@engine_option
def serve(host, port, data_dir, allow, threshold, model_name, weights, max_upload_mb, workers,
          head):
    """Start the web app: upload a photo, see the verdict and why, keep the ones that pass.

    Pages at http://HOST:PORT/ (Upload, Gallery, Explain); the HTTP API under /api/v1 with its
    OpenAPI schema at /docs. Records go to SQLite and images to files under --data.

    \b
    Example:
      belka serve --allow squirrel --port 8000
      belka serve --head squirrel.belka --allow squirrel
      curl -F file=@cat.jpg http://127.0.0.1:8000/api/v1/check
    """
    import uvicorn

    from ..server import ServerConfig, create_app

    config = ServerConfig(data_dir=Path(data_dir), model=model_name, weights=weights, allow=allow,
                          threshold=threshold, max_upload_bytes=int(max_upload_mb * 2**20))
    if workers:
        config.workers = workers
    # Load the model and check --allow before binding the port, so mistakes fail fast; the
    # engine is made (and the model exported, the first time) now, not on the first request.
    model = load_model(model_name, weights, head)
    model.class_indices(allow)
    model.engine
    app = create_app(config, model=model)
    click.echo(f"belka is serving on http://{host}:{port}/  (API docs: http://{host}:{port}/docs; "
               "Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
