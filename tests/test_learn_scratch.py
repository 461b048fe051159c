"""The hand-written gradient descent: linear fit, the article's rule, MLP backprop and Adam."""

from __future__ import annotations

import numpy as np
import pytest

from belka.errors import UsageError
from belka.learn import (
    MLP,
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

X = [1, 2, 3, 4]
Y = [7, 9, 11, 13]


# --- y = a*x + b -------------------------------------------------------------------------------


def test_linear_reaches_the_line() -> None:
    fit = fit_linear(X, Y, lr=0.01, steps=5000)
    assert fit.a == pytest.approx(2, abs=1e-2)
    assert fit.b == pytest.approx(5, abs=1e-2)
    assert not fit.diverged


def test_linear_loss_decreases_monotonically() -> None:
    fit = fit_linear(X, Y, lr=0.01, steps=1000)
    assert len(fit.history) == 1001
    assert np.all(np.diff(fit.history) <= 1e-15)
    assert fit.history[-1] < fit.history[0] / 100


def test_linear_matches_closed_form_least_squares() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, 50)
    y = -1.5 * x + 0.3 + rng.normal(0, 0.2, 50)
    a, b = least_squares(x, y)
    fit = fit_linear(x, y, lr=0.1, steps=2000)
    assert (fit.a, fit.b) == pytest.approx((a, b), abs=1e-9)
    assert least_squares(X, Y) == pytest.approx((2, 5))


def test_linear_gradients_are_the_derivative_of_the_mse() -> None:
    x, y = np.array(X, float), np.array(Y, float)
    a, b, eps = 0.3, -0.7, 1e-6
    _, ga, gb = linear_gradients(a, b, x, y)
    num_a = (mse((a + eps) * x + b, y) - mse((a - eps) * x + b, y)) / (2 * eps)
    num_b = (mse(a * x + b + eps, y) - mse(a * x + b - eps, y)) / (2 * eps)
    assert ga == pytest.approx(num_a, rel=1e-8)
    assert gb == pytest.approx(num_b, rel=1e-8)


def test_callback_sees_every_step() -> None:
    seen = []
    fit_linear(X, Y, steps=7, callback=lambda step, loss, params: seen.append((step, loss)))
    assert [s for s, _ in seen] == list(range(7))


def test_linear_diverges_above_the_stability_limit() -> None:
    # The largest curvature of the MSE for x = 1..4 is 16.7, so lr > 2 / 16.7 = 0.12 blows up.
    assert fit_linear(X, Y, lr=0.13, steps=2000).diverged
    assert not fit_linear(X, Y, lr=0.11, steps=2000).diverged


def test_article_rule_reaches_the_line_slowly_and_is_less_stable() -> None:
    fit = fit_linear_article(X, Y, lr=0.001, steps=10000)
    # Near the article's printed result [6.95, 8.98, 11.01, 13.03]: a ~ 2.03, b ~ 4.93.
    assert fit.a == pytest.approx(2, abs=0.05)
    assert fit.b == pytest.approx(5, abs=0.1)
    assert abs(fit.b - 5) > 1e-2  # not converged where the true gradient (same lr) would be
    assert fit_linear_article(X, Y, lr=0.03, steps=2000).diverged


def test_article_rule_fails_on_negative_outputs() -> None:
    y = [-v for v in Y]
    assert fit_linear_article(X, y, lr=0.001, steps=10000).diverged
    good = fit_linear(X, y, lr=0.05, steps=3000)
    assert (good.a, good.b) == pytest.approx((-2, -5), abs=1e-6)


def test_article_rule_flattens_a_falling_line() -> None:
    # Positive outputs but a negative slope: the rule settles on its other fixed point,
    # a = 0, b = mean(y), a horizontal line, while true gradient descent finds y = 20 - 2x.
    y = [18, 16, 14, 12]
    wrong = fit_linear_article(X, y, lr=0.005, steps=10000)
    assert not wrong.diverged
    assert (wrong.a, wrong.b) == pytest.approx((0, 15), abs=1e-3)
    right = fit_linear(X, y, lr=0.1, steps=1000)
    assert (right.a, right.b) == pytest.approx((-2, 20), abs=1e-6)


@pytest.mark.parametrize(
    "x, y, lr, steps",
    [([1, 2], [1], 0.01, 10), ([1], [1], 0.01, 10), (X, Y, 0.0, 10), (X, Y, 0.01, 0)],
)
def test_linear_rejects_bad_input(x, y, lr, steps) -> None:
    with pytest.raises(UsageError):
        fit_linear(x, y, lr=lr, steps=steps)


# --- MLP -------------------------------------------------------------------------------------


def _small_problem(activation="relu", widths=(1, 5, 4, 1), seed=3):
    rng = np.random.default_rng(seed)
    model = MLP.create(widths, activation=activation, seed=seed)
    for b in model.biases:  # non-zero biases so every gradient is exercised
        b[:] = rng.normal(0, 0.5, b.shape)
    x = rng.uniform(-np.pi, np.pi, (16, widths[0]))
    y = np.sin(x).sum(axis=1, keepdims=True) * np.ones((1, widths[-1]))
    return model, x, y


@pytest.mark.parametrize("activation", ["relu", None])
@pytest.mark.parametrize("widths", [(1, 5, 4, 1), (3, 6, 2), (2, 4, 4, 4, 3)])
def test_backprop_matches_finite_differences(activation, widths) -> None:
    model, x, y = _small_problem(activation, widths)
    _, grads = model.loss_and_grads(x, y)
    numeric = numerical_gradients(model, x, y, eps=1e-6)
    for g, n in zip(grads, numeric):
        assert g.shape == n.shape
        rel = np.linalg.norm(g - n) / max(np.linalg.norm(g) + np.linalg.norm(n), 1e-300)
        assert rel < 1e-6


@pytest.mark.parametrize("activation", ["relu", None])
def test_backprop_matches_torch_autograd(activation) -> None:
    torch = pytest.importorskip("torch")
    model, x, y = _small_problem(activation, (1, 8, 8, 1))
    loss, grads = model.loss_and_grads(x, y)

    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in model.params]
    h = torch.tensor(x, dtype=torch.float64)
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i < len(params) - 2 and activation == "relu":
            h = torch.relu(h)
    t_loss = torch.mean((h - torch.tensor(y, dtype=torch.float64)) ** 2)
    t_loss.backward()

    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    for g, p in zip(grads, params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_mlp_fits_sin() -> None:
    model, history = fit_sin((1, 32, 32, 1), steps=2000, seed=0)
    assert history[-1] < 1e-3
    assert history[-1] < history[0] / 100
    x, y = sin_data(101)  # points between the training grid
    assert mse(model(x), y) < 2e-3


def test_plain_gradient_descent_also_learns() -> None:
    _, history = fit_sin((1, 32, 32, 1), steps=1500, optimizer="sgd", lr=0.01)
    assert history[-1] < 0.05 < history[0]


def test_no_relu_network_is_one_affine_map() -> None:
    model, history = fit_sin((1, 32, 32, 1), activation=None, steps=1500, seed=0)
    w, b = model.collapse()
    assert w.shape == (1, 1) and b.shape == (1,)
    x = np.linspace(-5, 5, 41).reshape(-1, 1)
    np.testing.assert_allclose(model(x), x @ w + b, rtol=1e-12, atol=1e-12)

    # ... so it cannot beat the least-squares line on sin, and a ReLU network can.
    xs, ys = sin_data()
    a, c = least_squares(xs, ys)
    line = mse(a * xs + c, ys)
    assert history[-1] >= line - 1e-12
    assert history[-1] == pytest.approx(line, rel=1e-3)
    _, relu_history = fit_sin((1, 32, 32, 1), steps=1500, seed=0)
    assert relu_history[-1] < line / 100


def test_collapse_needs_no_activation() -> None:
    with pytest.raises(UsageError):
        MLP.create([1, 4, 1]).collapse()


@pytest.mark.parametrize("widths", [[1], [1, 0, 1], []])
def test_bad_widths(widths) -> None:
    with pytest.raises(UsageError):
        MLP.create(widths)


def test_train_rejects_unknown_optimizer() -> None:
    model = MLP.create([1, 2, 1])
    x, y = sin_data(8)
    with pytest.raises(UsageError):
        train(model, x, y, optimizer="rmsprop")


# --- CLI ---------------------------------------------------------------------------------------


def _cli(*args):
    from click.testing import CliRunner

    from belka.cli import main

    return CliRunner().invoke(main, ["learn", *map(str, args)])


def test_cli_linear_exactly_as_the_article_writes_it(tmp_path) -> None:
    result = _cli("linear", "--x", 1, 2, 3, 4, "--y", 7, 9, 11, 13, "--lr", 0.1, "--plot", tmp_path / "fit.png")
    assert result.exit_code == 0, result.output
    assert "step      0  loss" in result.stdout and "step    100  loss" in result.stdout
    assert "a = 2.000000, b = 5.000000" in result.stdout
    assert (tmp_path / "fit.png").stat().st_size > 1000


def test_cli_linear_defaults_and_other_spellings() -> None:
    result = _cli("linear", "--x", "1,2,3,4", "--y=7,9,11,13")
    assert result.exit_code == 0, result.output
    assert "a = 2.000000, b = 4.99999" in result.stdout and "not converged" not in result.stderr
    short = _cli("linear", "--x", "1,2,3,4", "--y=7,9,11,13", "--lr", "0.01")
    assert "a = 2.06" in short.stdout and "not converged yet" in short.stderr
    negative = _cli("linear", "--y", -1, -3, "--x", -1, -2, "--steps", 3000, "--lr", 0.1, "--every", 1000)
    assert negative.exit_code == 0, negative.output
    assert "a = 2.000000, b = 1.000000" in negative.stdout


def test_cli_linear_article_rule() -> None:
    result = _cli("linear", "--x", 1, 2, 3, 4, "--y", 7, 9, 11, 13, "--article")
    assert result.exit_code == 0, result.output
    assert "a = 2.02" in result.stdout
    diverging = _cli("linear", "--x", 1, 2, 3, 4, "--y", -7, -9, -11, -13, "--article")
    assert diverging.exit_code == 0 and "diverged" in diverging.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["linear", "--x", 1, 2, 3, "--y", 7, 9],
        ["linear", "--x", 1, "two", "--y", 7, 9],
        ["linear", "--x", 1, 2, "--y", 7, 9, "--lr", -1],
        ["mlp", "--widths", "1,x,1"],
        ["mlp", "--widths", "2,8,1"],
    ],
)
def test_cli_bad_input_is_one_line(args) -> None:
    result = _cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("belka: ")
    assert "Traceback" not in result.output


def test_cli_mlp(tmp_path) -> None:
    result = _cli("mlp", "--steps", 300, "--plot", tmp_path / "sin.png")
    assert result.exit_code == 0, result.output
    assert "best straight line: 0.19883" in result.stdout
    assert (tmp_path / "sin.png").exists()
    flat = _cli("mlp", "--no-relu", "--widths", "1,8,8,1", "--steps", 1500)
    assert flat.exit_code == 0, flat.output
    assert "are one line: y = 0.30040" in flat.stdout


def test_the_cli_blames_the_articles_rule_not_the_step_count_on_a_falling_line() -> None:
    """On a falling line the article's rule rests at a = 0, b = mean(y); "more steps" was the
    wrong advice."""
    from click.testing import CliRunner

    from belka.cli import main

    result = CliRunner().invoke(main, ["learn", "linear", "--x", "1", "2", "3", "4",
                                       "--y", "13", "11", "9", "7", "--article"])
    assert result.exit_code == 0
    assert "the article's update is not the gradient" in result.output
    assert "b = mean(y) = 10" in result.output and "more --steps" not in result.output
    plain = CliRunner().invoke(main, ["learn", "linear", "--x", "1", "2", "3", "4",
                                      "--y", "13", "11", "9", "7", "--steps", "5"])
    assert "not converged yet: try more --steps" in plain.output
