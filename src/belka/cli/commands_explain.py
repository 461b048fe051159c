"""``belka explain``: a heat map of why the model gave an image its score."""

from __future__ import annotations

import json

import click

from . import main
from .commands_models import load_model, model_options

METHOD_HELP = ("gradcam (default), gradcam++, xgradcam, layercam, hirescam, scorecam (slow: one "
               "forward per channel), eigencam, saliency, smoothgrad, ig (integrated gradients), "
               "occlusion")


def _parse_options(pairs: tuple[str, ...]) -> dict:
    from ..errors import UsageError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option takes KEY=VALUE, got {pair!r}")
        for cast in (int, float):
            try:
                options[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            options[key.strip()] = value
    return options


def _engine_when_cheap(model) -> None:
    """Make the model's engine when that costs no export (explicit --engine onnx, or a graph
    already cached): Grad-CAM's fast path and Score-CAM's forwards then run on it."""
    from ..engine import is_exported

    if model.engine_kind == "onnx" or (model.engine_kind == "auto" and is_exported(model)):
        model.engine


@main.command("explain")
@click.argument("image", type=click.Path())
@click.option("--method", "-m", default="gradcam", show_default=True, metavar="METHOD",
              help=METHOD_HELP)
@click.option("--layer", "-l", default=None, metavar="NAME|INDEX",
              help="layer to explain (name from `belka layers`, or an index; negative counts from "
                   "the end) [default: the last convolutional layer before the pooling]")
@click.option("--class", "-c", "target", default=None, metavar="CLASS",
              help='what to explain: an ImageNet class name ("fox squirrel"), a group '
                   '("squirrel", "cat": the sum of its logits) or an index [default: the top '
                   'prediction]')
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="where to write the picture (.png, .jpg or .webp)")
@click.option("--grid", is_flag=True,
              help="write the image, the heat map and the overlay side by side, with the label "
                   "and probability underneath")
@click.option("--metrics", is_flag=True,
              help="also print the deletion and insertion AUC and the model-randomisation sanity "
                   "check (a few dozen extra forward passes)")
@click.option("--colormap", default="turbo", show_default=True,
              type=click.Choice(["turbo", "jet", "hot", "gray"]))
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="opacity of the heat map in the overlay")
@click.option("--option", "-O", "method_options", multiple=True, metavar="KEY=VALUE",
              help="a method option, e.g. -O steps=64 (ig), -O samples=50 (smoothgrad), "
                   "-O window=16 (occlusion)")
@click.option("--json", "as_json", is_flag=True,
              help='print one JSON object: {"path", "output", "method", "layer", "indices", '
                   '"label", "score", "probability", "peak", "size", ...}')
@model_options
def explain_command(image, method, layer, target, output, grid, metrics, colormap, alpha,
                    method_options, as_json, model_name, weights, resize):
    """Explain why the model scored IMAGE as it did: a heat map over the image, written as an
    overlay to OUTPUT.

    \b
    Examples:
      belka explain squirrel.jpg -o cam.png
      belka explain squirrel.jpg --class "fox squirrel" --layer block6a_project_bn -o cam.png
      belka explain cat.jpg --method scorecam --grid -o why.png
      belka explain cat.jpg --class cat --metrics -o cam.png
    """
    from .. import images
    from ..explain import explain, get_method
    from ..explain.metrics import deletion, insertion, sanity_check

    get_method(method)                     # an unknown method fails before the model loads
    options = _parse_options(method_options)
    model = load_model(model_name, weights)
    _engine_when_cheap(model)
    decoded = model.decode(image)
    result = explain(model, decoded, target=target, method=method, layer=layer, resize=resize,
                     progress=None if as_json else True, **options)
    picture = (result.grid(colormap=colormap, alpha=alpha) if grid
               else result.overlay(colormap=colormap, alpha=alpha))
    images.save(picture, output)
    record = {"path": str(image), "output": str(output), **result.to_dict()}
    lines = [f"{image}: {result.caption} -> {output}"]
    if "note" in result.details:
        lines.append(f"  ({result.details['note']})")
    if metrics:
        dele = deletion(model, None, result)
        ins = insertion(model, None, result)
        sanity = sanity_check(model, None, result, **options)
        record.update(deletion_auc=round(dele.auc, 6), insertion_auc=round(ins.auc, 6),
                      sanity_spearman=round(sanity.spearman, 6), sanity_passed=sanity.passed,
                      sanity_randomized=sanity.randomized)
        lines.append(f"  deletion AUC  {dele.auc:.4f}  (lower is better; removed pixels -> "
                     f"image mean)")
        lines.append(f"  insertion AUC {ins.auc:.4f}  (higher is better; from a blurred copy)")
        verdict = "passed" if sanity.passed else "FAILED: the map barely depends on the weights"
        lines.append(f"  sanity check  Spearman {sanity.spearman:+.3f} against a copy with "
                     f"random {', '.join(sanity.randomized)}: {verdict}")
    click.echo(json.dumps(record) if as_json else "\n".join(lines))
