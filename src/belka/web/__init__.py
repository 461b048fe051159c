"""The gate in the browser: ``belka export web`` writes a static folder (ONNX model, policy JSON,
``belka.js``, the onnxruntime-web runtime, a demo page) that any file server can host.
See docs/client.md and :mod:`belka.web.export`."""

from .export import (RUNTIME_FILES, RUNTIME_VERSION, WebExport, build_graph, export_web,
                     find_runtime, web_policy)

__all__ = ["RUNTIME_FILES", "RUNTIME_VERSION", "WebExport", "build_graph", "export_web",
           "find_runtime", "web_policy"]
