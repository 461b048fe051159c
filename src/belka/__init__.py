"""belka: classify images on-device, look inside the model, see why it decided, and gate uploads.

>>> import belka
>>> model = belka.load()                      # packaged EfficientNet-Lite0, offline
>>> model.classify("squirrel.jpg", top=5)     # [Prediction(label='fox squirrel', ...), ...]
>>> model.check("upload.jpg", allow="squirrel").verdict
'accept'
"""

from __future__ import annotations

import os

from .errors import BelkaError, ImageError, ModelError, UsageError, WeightsError
from .version import __version__


def load(name: str | None = None, *, weights: str | os.PathLike | None = None,
         device: str | None = None, progress: bool = True,
         head: str | os.PathLike | None = None, engine: str | None = None):
    """Load a pretrained model by name (``belka.models.available()`` lists them).

    ``weights`` overrides the default source: a local file or an http(s) URL (cached and
    checked). The default model, EfficientNet-Lite0, ships with the package and needs no
    network. ``device`` defaults to CUDA when present, else the CPU.

    ``head`` is a ``.belka`` file from ``belka train``: the model's classes become the head's
    (``classify`` and ``check`` use them). ``name`` then defaults to the head's backbone; a
    head trained on another backbone or other weights raises :class:`ModelError`.

    ``engine`` runs the forward-only work (classify, check, scans): ``"auto"`` (the default:
    ONNX Runtime when installed, else PyTorch), ``"onnx"`` or ``"torch"``; ``$BELKA_ENGINE``
    sets the default. Gradients (explanations, training) always use PyTorch.
    """
    from .models.model import load_model

    if head is None:
        return load_model(name or "efficientnet_lite0", weights=weights, device=device,
                          progress=progress, engine=engine)
    from .heads.head import Head

    trained = Head.load(head)
    base = load_model(name or trained.backbone.get("name") or "efficientnet_lite0",
                      weights=weights, device=device, progress=progress, engine=engine)
    return trained.attach(base)


def __getattr__(name: str):
    # Heavy modules (torch) load on first use, so `import belka` and `belka --help` stay fast.
    if name == "explain":  # the package is callable: belka.explain(model, images, ...)
        import importlib

        return importlib.import_module(".explain", __name__)
    if name in {"Model", "Prediction"}:
        from .models import model

        return getattr(model, name)
    if name in {"style", "visualize"}:  # pictures made with the model (docs/pictures.md)
        from . import optimize

        return getattr(optimize, name)
    if name in {"Gate", "CheckResult"}:
        from . import gate

        return getattr(gate, name)
    raise AttributeError(f"module 'belka' has no attribute {name!r}")


__all__ = ["load", "explain", "style", "visualize", "Model", "Prediction", "Gate", "CheckResult",
           "BelkaError", "ImageError", "ModelError", "UsageError", "WeightsError", "__version__"]
