"""A tiny static file server for an exported web folder, with the headers the browser runtime
wants: ``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy:
require-corp`` (cross-origin isolation, which WebAssembly threads need), ``application/wasm``
for ``.wasm`` and ``text/javascript`` for ``.mjs``. For trying an export and for tests; any
production file server with the same headers does the same job (docs/client.md).

    python -m belka.web.serve web/ [--port 8001]
"""

from __future__ import annotations

import argparse
import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin",
                     "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}
MIME_TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
              ".onnx": "application/octet-stream", ".json": "application/json"}


class Handler(SimpleHTTPRequestHandler):
    """Static files from ``directory``, plus read-only ``mounts`` (URL prefix -> folder)."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    mounts: dict[str, Path] = {}
    isolated = True

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, folder in self.mounts.items():
            if clean.startswith(prefix):
                from urllib.parse import unquote

                rel = Path(unquote(clean[len(prefix):]))
                target = (folder / rel).resolve()
                if folder.resolve() in target.parents or target == folder.resolve():
                    return str(target)
                return str(folder / "__outside__")
        return super().translate_path(path)

    def end_headers(self) -> None:
        if self.isolated:
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:   # quiet
        pass


def start(root: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0,
          mounts: dict[str, str | os.PathLike] | None = None, isolated: bool = True
          ) -> ThreadingHTTPServer:
    """Serve ``root`` in a background thread; ``server.server_address`` says where.
    ``isolated=False`` leaves out the COOP/COEP headers (the page then runs one thread)."""
    handler = type("BoundHandler", (Handler,), {
        "mounts": {k: Path(v) for k, v in (mounts or {}).items()}, "isolated": isolated})
    server = ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="belka-web").start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder `belka export web` wrote")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    server = start(args.folder, host=args.host, port=args.port)
    print(f"serving {args.folder} on http://{args.host}:{server.server_address[1]}/ "
          "(Ctrl-C stops)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
