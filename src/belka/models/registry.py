"""The model registry: a name -> how to build the network, where its weights come from, and how
its inputs are prepared. ``belka.load(name)`` reads from here."""

from __future__ import annotations

from ..errors import ModelError
from .spec import ModelSpec, WeightSource  # noqa: F401  (re-exported: what a registration is)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    for key in (spec.name, *spec.aliases):
        _REGISTRY[key] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(available())}."
        ) from None


def available() -> list[str]:
    _ensure_builtin()
    return sorted({spec.name for spec in _REGISTRY.values()})


_builtin_registered = False


def _ensure_builtin() -> None:
    # The built-in families are imported on first use, so `import belka` stays light; each
    # module lists its specs (it does not import the registry).
    global _builtin_registered
    if _builtin_registered:
        return
    from . import efficientnet_lite, mobilenet_v2

    for spec in (*efficientnet_lite.SPECS, *mobilenet_v2.SPECS):
        register(spec)
    _builtin_registered = True
