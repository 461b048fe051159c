"""``belka summary``, ``belka layers`` and ``belka activations``: look inside a model."""

from __future__ import annotations

import json

import click

from . import main
from .commands_models import load_model, model_options

MODEL_OPTION = click.option("--model", "model_name", default="efficientnet_lite0",
                            show_default=True, metavar="NAME",
                            help="model to describe (see `belka models`); no weights are needed")


def _architecture(model_name: str):
    """The model's network without its weights (the layers and shapes do not depend on them)."""
    import belka

    return belka.load(model_name, weights="none", device="cpu")


@main.command("summary")
@MODEL_OPTION
@click.option("--input-size", type=click.IntRange(16, 4096), default=None, metavar="PIXELS",
              help="square input side [default: the model's own, 224]")
@click.option("--depth", type=click.IntRange(1, 32), default=None, metavar="N",
              help="nested modules down to N levels, named by dotted path (torchinfo's view), "
                   "with kernel size and parameter share columns [default: one row per layer, "
                   "as Keras]")
@click.option("--json", "as_json", is_flag=True,
              help='one JSON object: {"model", "input_shape", "layout", "layers": [{"index", '
                   '"name", "type", "output_shape", "params", "trainable_params", "macs", '
                   '"activation_bytes"} (with --depth also "depth", "kernel")], "total_params", '
                   '"trainable_params", "non_trainable_params", "macs", "activation_bytes"}')
def summary_command(model_name, input_size, depth, as_json):
    """Keras-style table of a model: one row per layer in execution order with its type, output
    shape, parameters, multiply-adds and output memory; totals at the bottom.

    Shapes are (batch, channels, height, width). Parameters are counted as Keras counts them
    (BatchNorm moving mean and variance are non-trainable parameters). Needs no weights and no
    network, for every model.

    \b
    Examples:
      belka summary
      belka summary --model mobilenet_v2
      belka summary --model mobilenet_v2 --json | jq '.layers[] | select(.macs > 2e7) | .name'
      belka summary --depth 2
    """
    from ..inspect import summarize

    result = summarize(_architecture(model_name), input_size, depth=depth)
    click.echo(result.to_json() if as_json else result.to_table())


@main.command("layers")
@click.argument("query", required=False)
@MODEL_OPTION
@click.option("--depth", type=click.IntRange(1, 32), default=1, show_default=True, metavar="N",
              help="also list nested modules down to N levels, by dotted name (usable wherever "
                   "a layer is named: belka explain --layer, belka activations --layer)")
@click.option("--json", "as_json", is_flag=True,
              help='JSON lines: {"index", "name", "type", "output_shape"}')
def layers_command(query, model_name, depth, as_json):
    """List a model's layers: index, name, type and output shape (for one image).

    QUERY keeps the layers whose name contains it (case-insensitive). The index or the name
    selects a layer elsewhere (`belka activations --layer`, `model.split(...)`).

    \b
    Examples:
      belka layers
      belka layers --model mobilenet_v2 block_12
      belka layers --depth 3 conv
    """
    from ..inspect import find_layers, format_shape, summarize

    model = _architecture(model_name)
    wanted = {layer.name for layer in find_layers(model, query, depth)}
    rows = [r for r in summarize(model, depth=None if depth == 1 else depth).rows[1:]
            if r.name in wanted]
    width = max(len(r.name) for r in rows)
    for r in rows:
        if as_json:
            click.echo(json.dumps({"index": r.index, "name": r.name, "type": r.type,
                                   "output_shape": r.output_shape}))
        else:
            shape = format_shape(r.output_shape)
            click.echo(f"{r.index:4}  {r.name:{width}}  {r.type:16}  {shape}")


@main.command("activations")
@click.argument("image", type=click.Path())
@click.option("--layer", "layer_name", required=True, metavar="NAME|INDEX",
              help="the layer whose output to draw (see `belka layers`)")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="picture to write (.png, .jpg or .webp)")
@click.option("--max-channels", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="draw at most this many channels (the first ones)")
@click.option("--gray", is_flag=True, help="grayscale instead of the viridis colormap")
@model_options
def activations_command(image, layer_name, out_path, max_channels, gray, model_name, weights,
                        resize):
    """Draw a layer's feature maps for one image as a labelled grid.

    Each channel is min-max normalised on its own (bright = strongest response in that
    channel) and labelled with its index; the title gives the layer, its output shape and how
    many channels are shown.

    \b
    Examples:
      belka activations squirrel.jpg --layer block6a_expand_conv -o grid.png
      belka activations squirrel.jpg --layer 0 --max-channels 16 --gray -o stem.png
      # the seed article's layer (downloads the Keras MobileNetV2 weights once):
      belka activations squirrel.jpg --model mobilenet_v2 --layer block_12_expand -o grid.png
    """
    from .. import images
    from ..inspect import activations, feature_grid, get_layer

    model = load_model(model_name, weights)
    layer = get_layer(model, layer_name)
    act = activations(model, image, [layer.name], resize=resize)[layer.name]
    shape = " x ".join(str(d) for d in act.shape)
    if act.dim() == 4:
        shown = min(act.shape[1], max_channels)
        what = f"channels 0-{shown - 1} of {act.shape[1]}"
    else:
        what = f"{act[0].numel()} values as one map"
    title = f"{model.name} / {layer.name} ({layer.type}) {shape}: {what}"
    grid = feature_grid(act[0], title=title, max_channels=max_channels,
                        cmap="gray" if gray else "viridis")
    path = images.save(grid, out_path)
    click.echo(f"{path}: {layer.name} {shape}, {what} ({grid.shape[1]} x {grid.shape[0]} px)")
