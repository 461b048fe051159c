"""``belka style`` and ``belka visualize``: pictures made with the model (docs/pictures.md)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import click

from . import main
from ..errors import UsageError
from .commands_models import load_model

MAX_SIZE = 1024
MAX_STEPS = 2000


def __getattr__(name: str):
    # parse_channels and parse_direction live in belka.optimize.common (the server uses them
    # too); they are loaded on first use so that `belka --help` does not import torch.
    if name in ("parse_channels", "parse_direction"):
        from ..optimize import common

        return getattr(common, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _model_option(f):
    f = click.option("--weights", metavar="PATH|URL", default=None,
                     help="weight file or URL instead of the model's default source")(f)
    return click.option("--model", "model_name", default="efficientnet_lite0", show_default=True,
                        metavar="NAME", help="model whose layers paint (see `belka models`)")(f)


@contextmanager
def _bar(desc: str):
    """A tqdm bar on a terminal (nothing when stderr is a pipe or a file) fed by the library's
    progress callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1, desc=desc, unit="step", disable=not sys.stderr.isatty(), leave=False)

    def progress(done: int, total: int, _preview) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    with bar:
        yield progress


def _save(image, out_path: str) -> str:
    """Write atomically (belka.images.save goes through belka.files.write_atomic)."""
    from .. import images

    return str(images.save(image, out_path))


@main.command("style")
@click.argument("content", type=click.Path())
@click.argument("style_image", metavar="STYLE", type=click.Path())
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="picture to write (.png, .jpg or .webp)")
@click.option("--size", default=384, show_default=True, type=click.IntRange(32, MAX_SIZE),
              help="longest side of the result in pixels (made small first, then refined up)")
@click.option("--steps", default=120, show_default=True, type=click.IntRange(1, MAX_STEPS),
              help="optimisation steps over all scales")
@click.option("--style-weight", default=10.0, show_default=True,
              type=click.FloatRange(0, 1e6), help="how much the style counts against the content")
@click.option("--seed", default=0, show_default=True, type=int,
              help="the random jitter's seed: the same seed gives the same picture")
@click.option("--single-scale", is_flag=True,
              help="optimise at the final size only (slower for the same look)")
@click.option("--json", "as_json", is_flag=True,
              help='print one JSON object: {"path", "width", "height", "style_loss", '
                   '"style_loss_start", "style_gain", "content_cosine", "stages", "steps", '
                   '"seconds"}')
@_model_option
def style_command(content, style_image, out_path, size, steps, style_weight, seed, single_scale,
                  as_json, model_name, weights):
    """Paint CONTENT in the style of STYLE (neural style transfer, offline, on the model).

    STYLE is a picture file, or the name of a built-in pattern: strokes (brush strokes) or
    mosaic (stained glass).

    The style is taken from early and middle layers (their Gram matrices), the content from
    a deeper one; docs/pictures.md shows the choices. The result keeps CONTENT's aspect ratio.

    \b
    Examples:
      belka style squirrel.jpg strokes -o painted.png
      belka style squirrel.jpg mosaic -o big.png --size 1024 --steps 160
      belka style squirrel.jpg painting.jpg -o soft.png --style-weight 3 --seed 7
    """
    from .. import images
    from ..optimize import style

    model = load_model(model_name, weights)
    content_rgb = images.decode(content)
    style_rgb = _style_source(style_image)
    with _bar("painting") as progress:
        result = style(content_rgb, style_rgb, model=model, size=size, steps=steps,
                       style_weight=style_weight, seed=seed, multiscale=not single_scale,
                       progress=progress)
    path = _save(result.image, out_path)
    if as_json:
        click.echo(json.dumps({"path": path, **result.to_dict()}))
        return
    sizes = ", ".join(f"{w}x{h}" for h, w in result.stages)
    click.echo(f"{path}: {result.image.shape[1]} x {result.image.shape[0]} px; style loss "
               f"{result.style_loss_start:.3g} -> {result.style_loss:.3g} "
               f"({result.style_gain:.1f}x lower), content cosine {result.content_cosine:.2f}; "
               f"{result.steps} steps at {sizes} in {result.seconds:.1f} s")


def _style_source(text: str):
    """A style picture: a file, or a built-in pattern's name (strokes, mosaic) when no such
    file exists."""
    import os

    from .. import images
    from ..optimize.patterns import NAMES, pattern

    if text in NAMES and not os.path.exists(text):
        return pattern(text)
    return images.decode(text)


@main.command("visualize")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="picture to write (.png, .jpg or .webp); several pictures become one grid")
@click.option("--layer", "-l", default=None, metavar="NAME|INDEX",
              help="the layer of a channel, neuron or direction (see `belka layers`)")
@click.option("--channel", "-c", default=None, type=click.IntRange(0), metavar="C",
              help="visualise this channel of --layer (its mean activation)")
@click.option("--channels", default=None, metavar="LIST",
              help="one picture per channel, drawn as a grid: 0-15, 3,7,9 (at most 64)")
@click.option("--neuron", is_flag=True,
              help="with --channel: only the activation at the centre of the map")
@click.option("--direction", default=None, metavar="C:W,...|FILE.npy",
              help="a direction in --layer's channel space: CHANNEL:WEIGHT pairs or a .npy vector")
@click.option("--class", "target", default=None, metavar="CLASS",
              help='a class to visualise: an index (335) or a name ("fox squirrel")')
@click.option("--diversity", default=1, show_default=True, type=click.IntRange(1, 64),
              metavar="N", help="make N different pictures of the objective (a grid)")
@click.option("--size", default=224, show_default=True, type=click.IntRange(32, MAX_SIZE),
              help="side of each picture in pixels")
@click.option("--steps", default=256, show_default=True, type=click.IntRange(1, MAX_STEPS))
@click.option("--seed", default=0, show_default=True, type=int,
              help="the start's and the transformations' seed: same seed, same picture")
@click.option("--json", "as_json", is_flag=True,
              help='print one JSON object: {"path", "objective", "layer", "index", "count", '
                   '"width", "height", "values", "steps", "seconds"}')
@_model_option
def visualize_command(out_path, layer, channel, channels, neuron, direction, target, diversity,
                      size, steps, seed, as_json, model_name, weights):
    """Draw what a channel, a neuron, a direction or a class of the model looks for.

    The picture is optimised in a decorrelated colour space and a Fourier basis, and every
    step sees it shifted, scaled and turned a little, so what comes out is what the unit
    responds to robustly, not pixel noise.

    \b
    Examples:
      belka visualize --class 335 -o squirrel-class.png
      belka visualize --layer block5c_expand_activation --channel 3 -o channel.png
      belka visualize --layer block5c_expand_activation --channels 0-15 --size 128 -o grid.png
      belka visualize --layer block4c_add --direction 12:1,40:-0.5 -o direction.png
      belka visualize --class "fox squirrel" --diversity 4 -o four.png
    """
    from ..optimize import visualize
    from ..optimize.common import parse_channels, parse_direction
    from ..optimize.visualize import _channels

    model = load_model(model_name, weights)
    grid = parse_channels(channels) if channels is not None else None
    vector = None
    if direction is not None:
        if layer is None:
            raise UsageError("--direction needs --layer")
        from ..inspect import get_layer

        vector = parse_direction(direction, _channels(model, get_layer(model, layer).name))
    if neuron and channel is None:
        raise UsageError("--neuron needs --channel")
    with _bar("visualising") as progress:
        result = visualize(model, layer=layer, channel=channel, channels=grid, neuron=neuron,
                           direction=vector, target=_class(target), size=size, steps=steps,
                           diversity=diversity, seed=seed, progress=progress)
    picture = result.images[0] if len(result.images) == 1 else result.grid()
    path = _save(picture, out_path)
    if as_json:
        click.echo(json.dumps({"path": path, **result.to_dict()}))
        return
    what = result.objective.describe()
    if grid is not None:
        what = f"{result.objective.layer} channels {channels}"
    values = ", ".join(f"{v:.3g}" for v in result.values[:8])
    more = " ..." if len(result.values) > 8 else ""
    click.echo(f"{path}: {what}, {len(result.images)} picture(s) of {size} px; objective "
               f"{values}{more}; {steps} steps in {result.seconds:.1f} s")


def _class(target: str | None):
    if target is None:
        return None
    return int(target) if target.strip().isdigit() and target.strip().isascii() else target
