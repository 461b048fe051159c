"""Gradient descent written out by hand in NumPy: the article's y = a*x + b, and a small MLP.

Nothing here uses an autograd library; the tests check the hand-written gradients against
central finite differences and against PyTorch autograd on the same weights.

Normalisation: every loss here is the *mean* squared error, ``L = 1/n * sum((y_hat - y)**2)``,
so its gradients carry a ``2/n``: ``dL/da = 2/n * sum((y_hat - y) * x)`` and
``dL/db = 2/n * sum(y_hat - y)``. The learning rate is therefore independent of how many points
there are. (The article sums instead of averaging; :func:`fit_linear_article` keeps that.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np

from ..errors import UsageError

#: ``callback(step, loss, params)`` is called once per step, before the update.
Callback = Callable[[int, float, tuple[float, ...]], None]


# ---------------------------------------------------------------------------------------------
# y = a*x + b
# ---------------------------------------------------------------------------------------------


@dataclass
class LinearFit:
    """Result of fitting y = a*x + b: the parameters and the loss before every step."""

    a: float
    b: float
    history: np.ndarray
    #: The loss became inf/NaN or ended higher than it started.
    diverged: bool = False

    @property
    def loss(self) -> float:
        """Loss at the returned parameters (NaN/inf when diverged)."""
        return float(self.history[-1]) if len(self.history) else float("nan")

    def predict(self, x: Sequence[float] | np.ndarray) -> np.ndarray:
        """a*x + b."""
        return self.a * np.asarray(x, dtype=np.float64) + self.b


def _xy(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise UsageError(f"x and y must have the same length (got {x.size} and {y.size})")
    if x.size < 2:
        raise UsageError(f"need at least 2 points to fit a line (got {x.size})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise UsageError("x and y must be finite numbers")
    return x, y


def _check_schedule(lr: float, steps: int) -> None:
    if not lr > 0:
        raise UsageError(f"learning rate must be positive (got {lr})")
    if steps < 1:
        raise UsageError(f"steps must be at least 1 (got {steps})")


def mse(y_hat: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error."""
    return float(np.mean((np.asarray(y_hat) - np.asarray(y)) ** 2))


def linear_gradients(a: float, b: float, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Loss and exact gradients of the MSE of y = a*x + b: ``(loss, dL/da, dL/db)``."""
    r = a * x + b - y
    n = x.size
    return float(np.mean(r * r)), float(2.0 / n * np.sum(r * x)), float(2.0 / n * np.sum(r))


def least_squares(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Closed-form least-squares line: ``a = cov(x, y) / var(x)``, ``b = mean(y) - a * mean(x)``."""
    x, y = _xy(x, y)
    xc = x - x.mean()
    denom = float(xc @ xc)
    if denom == 0:
        raise UsageError("all x values are equal: the slope is undefined")
    a = float(xc @ (y - y.mean())) / denom
    return a, float(y.mean() - a * x.mean())


def _initial(seed: int) -> tuple[float, float]:
    # Like the article: both parameters uniform in [0, 1).
    a, b = np.random.default_rng(seed).random(2)
    return float(a), float(b)


def _descend(
    x: np.ndarray,
    y: np.ndarray,
    grads: Callable[[float, float], tuple[float, float]],
    lr: float,
    steps: int,
    seed: int,
    callback: Callback | None,
) -> LinearFit:
    """The loop both rules share: record the MSE, call back, step against ``grads``."""
    _check_schedule(lr, steps)
    a, b = _initial(seed)
    history = np.empty(steps + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(steps):
            loss = mse(a * x + b, y)
            history[step] = loss
            if not np.isfinite(loss):
                return LinearFit(a, b, history[: step + 1], diverged=True)
            if callback is not None:
                callback(step, loss, (a, b))
            ga, gb = grads(a, b)
            a, b = a - lr * ga, b - lr * gb
        history[steps] = mse(a * x + b, y)
    diverged = not np.isfinite(history[steps]) or history[steps] > history[0]
    return LinearFit(a, b, history, diverged=diverged)


def fit_linear(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    lr: float = 0.01,
    steps: int = 1000,
    seed: int = 0,
    callback: Callback | None = None,
) -> LinearFit:
    """Fit y = a*x + b by plain gradient descent on the MSE with the correct gradients.

    ``history[i]`` is the MSE before step ``i``; the last entry is the MSE at the returned
    ``a, b``. Stable for ``lr < 2 / lambda_max`` where ``lambda_max`` is the largest eigenvalue of
    ``2/n * [[sum x^2, sum x], [sum x, n]]`` (16.7 for x = 1..4, so lr < 0.12).
    """
    x, y = _xy(x, y)
    return _descend(x, y, lambda a, b: linear_gradients(a, b, x, y)[1:], lr, steps, seed, callback)


def fit_linear_article(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    lr: float = 0.001,
    steps: int = 10000,
    seed: int = 0,
    callback: Callback | None = None,
) -> LinearFit:
    """The article's update rule, kept for comparison: NOT the gradient of its loss.

    ``gradA = sum((y_hat - y) * y_hat)`` (the outputs where the inputs belong) and
    ``gradB = sum(y_hat - y)``, summed without ``1/n``. Its fixed points are the least-squares line
    and ``a = 0, b = mean(y)``; it happens to reach the line when the outputs are positive and
    lr is small, but is unstable sooner than true gradient descent and diverges when the outputs
    are negative. ``history`` records the same MSE as :func:`fit_linear` for comparison.
    """
    x, y = _xy(x, y)

    def grads(a: float, b: float) -> tuple[float, float]:
        y_hat = a * x + b
        r = y_hat - y
        return float(np.sum(r * y_hat)), float(np.sum(r))

    return _descend(x, y, grads, lr, steps, seed, callback)


# ---------------------------------------------------------------------------------------------
# A small multi-layer perceptron
# ---------------------------------------------------------------------------------------------

Activation = Literal["relu"] | None


@dataclass
class MLP:
    """Fully connected network ``widths[0] -> ... -> widths[-1]``; ReLU between layers or none.

    Weights are ``W[i]`` of shape (in, out) and ``b[i]`` of shape (out,), so a batch ``x`` of
    shape (n, in) maps to ``x @ W + b``. The last layer is always linear.
    """

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activation: Activation = "relu"

    @classmethod
    def create(
        cls, widths: Sequence[int], activation: Activation = "relu", seed: int = 0, dtype=np.float64
    ) -> "MLP":
        """He-initialised weights (uniform), zero biases."""
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise UsageError(f"widths need at least two positive sizes, like 1,32,32,1 (got {widths})")
        if activation not in ("relu", None):
            raise UsageError(f"unknown activation {activation!r}; use 'relu' or None")
        rng = np.random.default_rng(seed)
        weights, biases = [], []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            limit = np.sqrt(6.0 / fan_in)
            weights.append(rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(dtype))
            biases.append(np.zeros(fan_out, dtype=dtype))
        return cls(weights, biases, activation)

    @property
    def widths(self) -> list[int]:
        return [self.weights[0].shape[0]] + [w.shape[1] for w in self.weights]

    @property
    def params(self) -> list[np.ndarray]:
        """All parameters in order ``W0, b0, W1, b1, ...`` (the arrays themselves, not copies)."""
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Output and the cache for :meth:`backward`: the input of every layer."""
        h = np.asarray(x, dtype=self.weights[0].dtype)
        inputs = []
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(h)
            h = h @ w + b
            if i < last and self.activation == "relu":
                h = np.maximum(h, 0.0)
        return h, inputs

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[0]

    def backward(self, inputs: list[np.ndarray], grad_out: np.ndarray) -> list[np.ndarray]:
        """Backprop ``dL/d(output)`` through the layers; gradients in :attr:`params` order."""
        grads: list[np.ndarray] = [np.empty(0)] * (2 * len(self.weights))
        g = grad_out
        for i in reversed(range(len(self.weights))):
            h = inputs[i]
            grads[2 * i] = h.T @ g
            grads[2 * i + 1] = g.sum(axis=0)
            if i > 0:
                g = g @ self.weights[i].T
                if self.activation == "relu":
                    # inputs[i] is relu(z) of the layer before; relu'(z) = 1 where z > 0, i.e. h > 0.
                    g = g * (h > 0)
        return grads

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """MSE over all samples and outputs, and its gradient for every parameter."""
        out, inputs = self.forward(x)
        r = out - y
        return float(np.mean(r * r)), self.backward(inputs, 2.0 * r / r.size)

    def collapse(self) -> tuple[np.ndarray, np.ndarray]:
        """Without an activation the network is one affine map: ``x @ W + b``.

        ``W = W0 @ W1 @ ... @ Wl`` and ``b = (((b0 @ W1) + b1) @ W2 + b2) ...``.
        """
        if self.activation is not None:
            raise UsageError("only a network without activation collapses to one linear layer")
        w, b = self.weights[0], self.biases[0]
        for wi, bi in zip(self.weights[1:], self.biases[1:]):
            w, b = w @ wi, b @ wi + bi
        return w, b


def numerical_gradients(model: MLP, x: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> list[np.ndarray]:
    """Central finite differences of :meth:`MLP.loss_and_grads`'s loss (for tests; slow)."""
    grads = []
    for p in model.params:
        g = np.zeros_like(p)
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for j in range(flat.size):
            keep = flat[j]
            flat[j] = keep + eps
            plus = model.loss_and_grads(x, y)[0]
            flat[j] = keep - eps
            minus = model.loss_and_grads(x, y)[0]
            flat[j] = keep
            gflat[j] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


@dataclass
class Adam:
    """Adam written out: running means of the gradient and its square, bias-corrected."""

    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: list[np.ndarray] = field(default_factory=list)
    v: list[np.ndarray] = field(default_factory=list)

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update ``params`` in place."""
        if not self.m:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        c1, c2 = 1 - self.beta1**self.t, 1 - self.beta2**self.t
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


@dataclass
class SGD:
    """Plain gradient descent: ``p -= lr * g``."""

    lr: float = 1e-2

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        for p, g in zip(params, grads):
            p -= self.lr * g


def train(
    model: MLP,
    x: np.ndarray,
    y: np.ndarray,
    steps: int = 2000,
    lr: float = 1e-2,
    optimizer: Literal["adam", "sgd"] = "adam",
    callback: Callback | None = None,
) -> np.ndarray:
    """Full-batch training on the MSE; returns the loss before every step plus the final loss."""
    _check_schedule(lr, steps)
    if optimizer == "adam":
        opt: Adam | SGD = Adam(lr=lr)
    elif optimizer == "sgd":
        opt = SGD(lr=lr)
    else:
        raise UsageError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'")
    x = np.asarray(x, dtype=model.weights[0].dtype)
    y = np.asarray(y, dtype=model.weights[0].dtype)
    history = np.empty(steps + 1)
    params = model.params
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(steps):
            loss, grads = model.loss_and_grads(x, y)
            history[step] = loss
            if not np.isfinite(loss):
                return history[: step + 1]
            if callback is not None:
                callback(step, loss, ())
            opt.step(params, grads)
        history[steps] = model.loss_and_grads(x, y)[0]
    return history


def sin_data(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``n`` evenly spaced points of sin on [-pi, pi], as (n, 1) columns."""
    x = np.linspace(-np.pi, np.pi, n).reshape(-1, 1)
    return x, np.sin(x)


def fit_sin(
    widths: Sequence[int] = (1, 32, 32, 1),
    activation: Activation = "relu",
    steps: int = 2000,
    lr: float = 5e-3,
    optimizer: Literal["adam", "sgd"] = "adam",
    seed: int = 0,
    n: int = 256,
    callback: Callback | None = None,
) -> tuple[MLP, np.ndarray]:
    """Train an MLP on sin over [-pi, pi]; returns the model and its loss history."""
    widths = list(widths)
    if widths[0] != 1 or widths[-1] != 1:
        raise UsageError(f"a 1-D function needs widths that start and end with 1 (got {widths})")
    model = MLP.create(widths, activation=activation, seed=seed)
    x, y = sin_data(n)
    return model, train(model, x, y, steps=steps, lr=lr, optimizer=optimizer, callback=callback)
