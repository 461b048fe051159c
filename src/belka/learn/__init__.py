"""Learning from scratch: the article's gradient-descent loop and a small hand-written MLP.

This package never reads images from disk itself; callers pass arrays.
"""

from .scratch import (
    MLP,
    SGD,
    Adam,
    LinearFit,
    fit_linear,
    fit_linear_article,
    fit_sin,
    least_squares,
    linear_gradients,
    mse,
    numerical_gradients,
    sin_data,
    train,
)

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "LinearFit",
    "fit_linear",
    "fit_linear_article",
    "fit_sin",
    "least_squares",
    "linear_gradients",
    "mse",
    "numerical_gradients",
    "sin_data",
    "train",
]
