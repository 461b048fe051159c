"""``belka pca ...`` (eigen-images) and ``belka learn ...`` (gradient descent from scratch)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import warnings
from collections.abc import Iterator

import click

from ..errors import UsageError
from . import main


@contextlib.contextmanager
def _notes() -> Iterator[None]:
    """Show library warnings (k clipped, file skipped) as ``belka: note: ...`` lines on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, UserWarning):
                    click.echo(f"belka: note: {w.message}", err=True)


def _progress() -> bool:
    return sys.stderr.isatty()


def _size(ctx, param, value: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", value or "")
    if not match:
        raise UsageError(f"--size takes WIDTHxHEIGHT like 64x64 (or one number for a square), got {value!r}")
    w = int(match[1])
    return w, int(match[2] or w)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise UsageError(f"{what} takes whole numbers separated by commas, got {text!r}") from None
    if not values:
        raise UsageError(f"{what} needs at least one number")
    return values


# ---------------------------------------------------------------------------------------------
# belka pca


@main.group("pca")
def pca_group() -> None:
    """Eigen-images: describe photos by a few PCA numbers and draw them back.

    \b
    Examples:
      belka pca fit photos/ -k 340 -o eigen.npz
      belka pca encode eigen.npz squirrel.jpg --json
      belka pca reconstruct eigen.npz squirrel.jpg -o back.png
      belka pca show eigen.npz -o grid.png --curve curve.png
    """


@pca_group.command("fit")
@click.argument("folders", metavar="FOLDER...", nargs=-1, required=True)
@click.option("-k", "k", default=340, show_default=True, type=int,
              help="components to keep (clipped to what the images allow)")
@click.option("-o", "--output", required=True, metavar="MODEL.npz", help="where to write the model")
@click.option("--size", default="64x64", show_default=True, callback=_size, metavar="WxH",
              help="size every photo is resized to first")
@click.option("--gray", is_flag=True, help="work on grey levels instead of RGB")
@click.option("--incremental", is_flag=True,
              help="read the photos in batches (bounded memory for large folders)")
@click.option("--batch-size", default=256, show_default=True, type=int, help="images per batch with --incremental")
def pca_fit(folders, k, output, size, gray, incremental, batch_size):
    """Fit eigen-images to the photos in FOLDER(s) (or image files)."""
    from ..ops import pca

    start = time.perf_counter()
    with _notes():
        model = pca.fit(list(folders), k, size=size, gray=gray, method="incremental" if incremental else "randomized",
                        batch_size=batch_size, progress=_progress())
    seconds = time.perf_counter() - start
    model.save(output)
    s = model.stats()
    click.echo(
        f"{model.k} eigen-images from {model.n_images} photos at {size[0]}x{size[1]}{' grey' if gray else ''} "
        f"({model.method}, {seconds:.1f} s), explaining {100 * s['explained_variance']:.1f}% of the variance\n"
        f"each photo: {model.k} numbers = {s['code_bytes_float32']} bytes as float32 "
        f"({s['code_bytes_float16']} as float16) instead of {s['raw_bytes']} bytes of pixels\n"
        f"wrote {output}"
    )


@pca_group.command("encode")
@click.argument("model_path", metavar="MODEL.npz")
@click.argument("image")
@click.option("-o", "--output", metavar="CODES.npy", default=None, help="write the codes as a .npy file")
@click.option("--json", "as_json", is_flag=True, help="print the codes as a JSON list")
@click.option("-k", "k", type=int, default=None, help="keep only the first k codes")
def pca_encode(model_path, image, output, as_json, k):
    """Describe IMAGE by the model's k numbers."""
    from ..ops import pca

    model = pca.load(model_path)
    codes = model.encode(image, k)
    if output:
        pca.save_array(codes, output)
        click.echo(f"{codes.size} codes -> {output}", err=as_json)
    if as_json:
        click.echo(json.dumps([round(float(c), 6) for c in codes]))
    elif not output:
        click.echo(" ".join(f"{c:.6g}" for c in codes))


@pca_group.command("reconstruct")
@click.argument("model_path", metavar="MODEL.npz")
@click.argument("image", required=False)
@click.option("--codes", "codes_path", metavar="CODES.npy", default=None,
              help="draw these codes (from `belka pca encode -o`) instead of an IMAGE")
@click.option("-o", "--output", required=True, metavar="OUT.png")
@click.option("-k", "k", type=int, default=None, help="use only the first k components")
def pca_reconstruct(model_path, image, codes_path, output, k):
    """Draw an image back from its codes: IMAGE through the model, or --codes."""
    import numpy as np

    from .. import images
    from ..ops import pca

    if (image is None) == (codes_path is None):
        raise UsageError("give either an IMAGE or --codes CODES.npy (exactly one)")
    model = pca.load(model_path)
    if image is not None:
        codes = model.encode(image, k)
    else:
        codes = _load_codes(codes_path, model.k)[:k]
    picture = model.decode(codes)
    images.save(picture, output)
    message = f"{codes.size} codes -> {output} ({model.size[0]}x{model.size[1]})"
    if image is not None:
        err = float(np.mean((model.inverse(codes[None])[0] - model.pixels(image)) ** 2))
        message += f", PSNR {pca.psnr(err):.1f} dB"
    click.echo(message)


def _load_codes(path: str, k: int):
    """A .npy of 1..k numbers in one row, or a one-line UsageError."""
    import numpy as np

    hint = "expected a .npy from `belka pca encode -o`"
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read the codes ({exc}); {hint}", path=path) from None
    if not isinstance(codes, np.ndarray):
        codes.close()
        raise UsageError(f"this is an .npz archive, not codes; {hint}", path=path)
    if codes.ndim != 1 or codes.dtype.kind not in "fiu" or not 1 <= codes.size <= k:
        raise UsageError(f"expected 1 to {k} numbers in one row, got an array of shape {codes.shape} "
                         f"({codes.dtype})", path=path)
    return codes.astype(np.float32)


@pca_group.command("show")
@click.argument("model_path", metavar="MODEL.npz")
@click.option("-o", "--output", required=True, metavar="GRID.png", help="mean and top eigen-images")
@click.option("--curve", metavar="CURVE.png", default=None, help="also draw the explained-variance curve")
@click.option("-n", "n", default=15, show_default=True, type=int, help="eigen-images in the grid")
def pca_show(model_path, output, curve, n):
    """Draw the mean image and the top eigen-images (and the explained-variance curve)."""
    from ..ops import pca

    model = pca.load(model_path)
    model.show(output, n=n, curve=curve)
    click.echo(f"wrote {output}" + (f" and {curve}" if curve else ""))


@pca_group.command("strip")
@click.argument("model_path", metavar="MODEL.npz")
@click.argument("image")
@click.option("-o", "--output", required=True, metavar="STRIP.png")
@click.option("--ks", default="5,20,50,100,340", show_default=True,
              help="numbers of components to compare (capped at the model's k)")
def pca_strip(model_path, image, output, ks):
    """IMAGE next to its reconstructions from more and more components, with PSNR."""
    from ..ops import pca

    model = pca.load(model_path)
    chosen = sorted({min(v, model.k) for v in _ints(ks, "--ks")})
    model.reconstruction_strip(image, chosen, output)
    click.echo(f"wrote {output} (k = {', '.join(map(str, chosen))})")


@pca_group.command("baseline")
@click.argument("folder")
@click.option("--positive", default="squirrel", show_default=True, help="the subfolder that holds the yes-class")
@click.option("-k", "k", default=16, show_default=True, type=int)
@click.option("--size", default="32x32", show_default=True, callback=_size, metavar="WxH")
@click.option("--classifier", type=click.Choice(["logistic", "knn"]), default="logistic", show_default=True)
@click.option("--folds", default=5, show_default=True, type=int)
def pca_baseline(folder, positive, k, size, classifier, folds):
    """Cross-validated squirrel-vs-not accuracy of PCA codes (FOLDER/<class>/ layout)."""
    from ..ops import pca

    with _notes():
        report = pca.baseline_report(folder, positive=positive, k=k, size=size, classifier=classifier,
                                     folds=folds, progress=_progress())
    click.echo(str(report))


# ---------------------------------------------------------------------------------------------
# belka learn


class _ListOptionCommand(click.Command):
    """Lets ``--x 1 2 3 4`` take every value up to the next option.

    Click options take a fixed number of values, so before parsing, each value after a list
    option is rewritten as its own ``--x VALUE`` (the option is ``multiple=True``). Negative
    numbers count as values; ``--x 1,2,3`` and ``--x=1,2,3`` work too.
    """

    list_options: tuple[str, ...] = ("--x", "--y")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        current: str | None = None
        for i, token in enumerate(args):
            if token == "--":
                rewritten += args[i:]
                break
            if current is not None and not _looks_like_option(token):
                rewritten += [current, token]
                continue
            current = token if token in self.list_options else None
            if current is None:
                rewritten.append(token)
        return super().parse_args(ctx, rewritten)


def _looks_like_option(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
    except ValueError:
        return True
    return False


def _floats(ctx, param, values: tuple[str, ...]) -> list[float]:
    numbers = []
    for value in values:
        for part in re.split(r"[,\s]+", value.strip()):
            if not part:
                continue
            try:
                numbers.append(float(part))
            except ValueError:
                raise UsageError(f"--{param.name} takes numbers, got {part!r}") from None
    return numbers


@main.group("learn")
def learn_group() -> None:
    """Gradient descent written out by hand: the article's line fit and a small MLP.

    \b
    Examples:
      belka learn linear --x 1 2 3 4 --y 7 9 11 13
      belka learn linear --x 1 2 3 4 --y 7 9 11 13 --article --lr 0.001 --steps 10000
      belka learn mlp --widths 1,32,32,1 --plot sin.png
    """


@learn_group.command("linear", cls=_ListOptionCommand)
@click.option("--x", "x", multiple=True, required=True, callback=_floats, metavar="X...",
              help="inputs: --x 1 2 3 4 (or 1,2,3,4)")
@click.option("--y", "y", multiple=True, required=True, callback=_floats, metavar="Y...",
              help="outputs, as many as inputs")
@click.option("--lr", default=None, type=float, help="learning rate [0.05; 0.001 with --article]")
@click.option("--steps", default=None, type=int, help="gradient steps [1000; 10000 with --article]")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the random start")
@click.option("--every", default=None, type=int, help="print the loss every N steps [steps/10]")
@click.option("--article", is_flag=True,
              help="use the article's update rule (gradient times the outputs, summed) instead of the true gradient")
@click.option("--plot", metavar="OUT.png", default=None, help="draw the loss curve and the fitted line")
def learn_linear(x, y, lr, steps, seed, every, article, plot):
    """Fit y = a*x + b by gradient descent on the mean squared error."""
    from ..learn import scratch

    lr = lr if lr is not None else (0.001 if article else 0.05)
    steps = steps if steps is not None else (10000 if article else 1000)
    every = every or max(1, steps // 10)

    def report(step: int, loss: float, params: tuple[float, ...]) -> None:
        if step % every == 0:
            click.echo(f"step {step:>6}  loss {loss:<12.6g} a={params[0]:<10.6g} b={params[1]:.6g}")

    rule = scratch.fit_linear_article if article else scratch.fit_linear
    fit = rule(x, y, lr=lr, steps=steps, seed=seed, callback=report)
    a_ls, b_ls = scratch.least_squares(x, y)
    if fit.diverged:
        click.echo(f"diverged after {len(fit.history) - 1} steps (loss {fit.loss:.3g}): lr={lr} is too large"
                   + (" or the article's rule cannot fit these outputs" if article else ""))
    else:
        click.echo(f"step {steps:>6}  loss {fit.loss:<12.6g}\n"
                   f"a = {fit.a:.6f}, b = {fit.b:.6f}   (least squares: a = {a_ls:.6f}, b = {b_ls:.6f})")
        if abs(fit.a - a_ls) + abs(fit.b - b_ls) > 1e-3:
            mean_y = sum(y) / len(y)
            to_spurious = abs(fit.a) + abs(fit.b - mean_y)
            if article and to_spurious < abs(fit.a - a_ls) + abs(fit.b - b_ls):
                click.echo(f"the article's update is not the gradient of the loss: it is heading "
                           f"for a = 0, b = mean(y) = {mean_y:.6g} (its other resting point), not "
                           "the least-squares line, and more steps will not change that. Drop "
                           "--article for true gradient descent", err=True)
            else:
                click.echo("not converged yet: try more --steps or a larger --lr", err=True)
    if plot:
        _plot_linear(fit, x, y, (a_ls, b_ls), "article's rule" if article else "gradient descent", plot)
        click.echo(f"wrote {plot}")


@learn_group.command("mlp")
@click.option("--widths", default="1,32,32,1", show_default=True, help="layer sizes, first and last 1")
@click.option("--no-relu", is_flag=True, help="no activation: the layers collapse into one straight line")
@click.option("--steps", default=2000, show_default=True, type=int)
@click.option("--lr", default=0.005, show_default=True, type=float)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--every", default=None, type=int, help="print the loss every N steps [steps/10]")
@click.option("--plot", metavar="OUT.png", default=None, help="draw the loss curve and the fit of sin")
def learn_mlp(widths, no_relu, steps, lr, optimizer, seed, every, plot):
    """Train a small MLP (hand-written backprop) to fit sin on [-pi, pi]."""
    from tqdm.auto import tqdm

    from ..learn import scratch

    sizes = _ints(widths, "--widths")
    every = every or max(1, steps // 10)
    bar = tqdm(total=steps, desc="training", unit="step", disable=not _progress(), leave=False)

    def report(step: int, loss: float, _params) -> None:
        bar.update(1)
        if step % every == 0:
            bar.write(f"step {step:>6}  loss {loss:.6g}", file=sys.stdout)

    with bar:
        model, history = scratch.fit_sin(sizes, activation=None if no_relu else "relu", steps=steps, lr=lr,
                                         optimizer=optimizer, seed=seed, callback=report)
    xs, ys = scratch.sin_data()
    a, b = scratch.least_squares(xs, ys)
    line = scratch.mse(a * xs + b, ys)
    click.echo(f"step {len(history) - 1:>6}  loss {history[-1]:.6g}   (best straight line: {line:.6g})")
    if no_relu:
        w, c = model.collapse()
        click.echo(f"without ReLU the {len(sizes) - 1} layers are one line: y = {w.item():.6f}*x + {c.item():.6f} "
                   f"(least squares: {a:.6f}*x + {b:.6f})")
    if plot:
        _plot_mlp(model, history, (a, b), plot)
        click.echo(f"wrote {plot}")


def _plot_linear(fit, x, y, ls: tuple[float, float], label: str, path: str) -> None:
    import numpy as np

    from ..ops.pca import new_figure, save_figure

    fig = new_figure(10, 4)
    loss_ax, fit_ax = fig.subplots(1, 2)
    loss_ax.semilogy(np.maximum(fit.history, 1e-300))
    loss_ax.set(xlabel="step", ylabel="MSE (log)", title=f"loss, {label}")
    grid = np.linspace(min(x) - 0.5, max(x) + 0.5, 50)
    fit_ax.scatter(x, y, color="black", zorder=3, label="data")
    if not fit.diverged:
        fit_ax.plot(grid, fit.predict(grid), label=f"fit: {fit.a:.4f}x + {fit.b:.4f}")
    fit_ax.plot(grid, ls[0] * grid + ls[1], ls="--", color="grey", label=f"least squares: {ls[0]:.4f}x + {ls[1]:.4f}")
    fit_ax.set(xlabel="x", ylabel="y", title="y = a*x + b")
    fit_ax.legend()
    save_figure(fig, path)


def _plot_mlp(model, history, ls: tuple[float, float], path: str) -> None:
    import numpy as np

    from ..ops.pca import new_figure, save_figure

    fig = new_figure(10, 4)
    loss_ax, fit_ax = fig.subplots(1, 2)
    loss_ax.semilogy(np.maximum(history, 1e-300))
    loss_ax.set(xlabel="step", ylabel="MSE (log)", title="loss")
    xs = np.linspace(-np.pi, np.pi, 400).reshape(-1, 1)
    fit_ax.plot(xs, np.sin(xs), color="black", label="sin")
    kind = "ReLU" if model.activation else "no activation"
    fit_ax.plot(xs, model(xs), label=f"MLP {','.join(map(str, model.widths))} ({kind})")
    fit_ax.plot(xs, ls[0] * xs + ls[1], ls="--", color="grey", label="best straight line")
    fit_ax.set(xlabel="x", title="fit of sin on [-pi, pi]")
    fit_ax.legend()
    save_figure(fig, path)
