"""The server's own gate for the browser: ``/web/`` serves what ``belka export web`` writes
(``belka.js``, ``policy.json``, ``model.onnx``, the onnxruntime-web runtime under ``ort/``) for
the server's model and gate settings, so the Upload page can check a photo before it leaves
the user's device (docs/client.md). The server still checks every upload itself.

The folder is built on the first request into ``<data dir>/web-gate/<key>/`` (key: model,
weights, allowed classes, threshold, tiling, belka version), a few seconds once, then reused.
Without the browser runtime (``make web-runtime`` not run) ``/web/policy.json`` answers 404
with a JSON error and the page falls back to the server's check.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
               ".json": "application/json", ".onnx": "application/octet-stream",
               ".html": "text/html; charset=utf-8", ".css": "text/css"}
# Cross-origin isolation (WebAssembly threads) needs these on the page and on what it loads.
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin",
             "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin"}
_lock = threading.Lock()


def gate_key(gate) -> str:
    """What the built folder depends on."""
    import belka

    model = gate.model
    parts = {"model": model.name, "weights": model.weights_sha256,
             "head": gate.head.fingerprint if gate.head is not None else None,
             "allow": [int(i) for i in gate.allow_indices], "threshold": gate.threshold,
             "tiling": gate.tiling.to_dict() if gate.tiling is not None else None,
             "belka": belka.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def build(service) -> Path:
    """The folder for the service's gate, built once (thread-safe)."""
    from ..web import export_web
    from ..web.export import POLICY_FILE

    gate = service.gate
    folder = Path(service.config.data_dir) / "web-gate" / gate_key(gate)
    with _lock:
        if not (folder / POLICY_FILE).is_file():
            part = folder.with_name(f"{folder.name}.part")
            export_web(part, gate)
            try:
                part.rename(folder)
            except OSError:      # another process built it meanwhile: use theirs
                if not (folder / POLICY_FILE).is_file():
                    raise
    return folder


@router.get("/web/{name:path}")
async def web_file(request: Request, name: str):
    from ..errors import UsageError

    service = request.app.state.service
    try:
        folder = await run_in_threadpool(build, service)
    except UsageError as err:    # no browser runtime here
        return JSONResponse({"detail": str(err), "error": "no_web_runtime"}, status_code=404,
                            headers=ISOLATION)
    target = (folder / name).resolve()
    if folder.resolve() not in target.parents or not target.is_file():
        return JSONResponse({"detail": f"no such file: /web/{name}", "error": "not_found"},
                            status_code=404, headers=ISOLATION)
    return FileResponse(target, media_type=MEDIA_TYPES.get(target.suffix,
                                                           "application/octet-stream"),
                        headers={**ISOLATION, "Cache-Control": "no-cache"})
