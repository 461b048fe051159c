"""Model families, the registry and weight sources."""

from .registry import ModelSpec, WeightSource, available, get_spec, register

__all__ = ["ModelSpec", "WeightSource", "available", "get_spec", "register"]
