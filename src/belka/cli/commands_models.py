"""``belka classify``, ``belka check``, ``belka models`` and ``belka labels``."""

from __future__ import annotations

import json
import sys

import click

from . import main

RESIZE_HELP = ("how to fit the image to the model's square input: crop (default: shorter side to "
               "256, centre 224), squash (stretch; distorts shapes) or letterbox (fit and pad)")


ENGINE_HELP = ("what runs the forward passes: auto (ONNX Runtime when installed, else PyTorch; "
               "the first ONNX run of a model exports it once, then it is cached), onnx or "
               "torch. Gradients always use PyTorch. Default: $BELKA_ENGINE or auto")


def _remember_engine(ctx: click.Context, _param, value: str | None) -> None:
    if value is not None:
        ctx.meta["belka.engine"] = value


def engine_option(f):
    """--engine auto|onnx|torch, kept in the click context for :func:`load_model`."""
    return click.option("--engine", type=click.Choice(["auto", "onnx", "torch"]), default=None,
                        expose_value=False, callback=_remember_engine, is_eager=True,
                        help=ENGINE_HELP)(f)


def chosen_engine() -> str | None:
    """The --engine of the running command, if any."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("belka.engine") if ctx is not None else None


def model_options(f):
    """--model, --weights, --resize and --engine, shared by every command that runs a model."""
    f = engine_option(f)
    f = click.option("--resize", type=click.Choice(["crop", "squash", "letterbox"]), default=None,
                     help=RESIZE_HELP)(f)
    f = click.option("--weights", metavar="PATH|URL", default=None,
                     help="weight file or URL instead of the model's default source")(f)
    f = click.option("--model", "model_name", default="efficientnet_lite0", show_default=True,
                     metavar="NAME", help="model to run (see `belka models`)")(f)
    return f


def head_option(f):
    """--head FILE.belka: a head from `belka train` whose classes replace ImageNet's."""
    return click.option("--head", "head", type=click.Path(dir_okay=False), default=None,
                        metavar="FILE.belka",
                        help="a head from `belka train`: its classes replace ImageNet's "
                             "(the model defaults to the head's backbone)")(f)


def load_model(model_name: str, weights: str | None, head: str | None = None):
    import belka

    engine = chosen_engine()
    if head is None:
        return belka.load(model_name, weights=weights, engine=engine)
    # With a head, --model defaults to the head's own backbone unless given explicitly.
    ctx = click.get_current_context(silent=True)
    explicit = ctx is not None and ctx.get_parameter_source("model_name") not in (
        None, click.core.ParameterSource.DEFAULT)
    return belka.load(model_name if explicit else None, weights=weights, head=head, engine=engine)


def _emit(as_json: bool, record: dict, text: str) -> None:
    click.echo(json.dumps(record) if as_json else text)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="how many classes to list per image")
@click.option("--json", "as_json", is_flag=True,
              help='JSON lines: {"path", "predictions": [{"label", "index", "probability"}]} '
                   'or {"path", "error"}')
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 512))
@click.option("--tiles/--no-tiles", default=False, show_default=True,
              help="also look at overlapping tiles at higher resolution; each class is scored "
                   "by its best view (probabilities then no longer sum to 1)")
@click.option("--fast-decode", is_flag=True,
              help="decode large JPEGs at a reduced scale (JPEG draft mode): faster scans, but "
                   "not the pixels every other interface sees, so a few answers change (measured "
                   "in docs/engine.md); off by default")
@head_option
@model_options
def classify(paths, top, as_json, batch_size, tiles, fast_decode, head, model_name, weights,
             resize):
    """Name what is in each image: the top ImageNet classes (or a head's classes) with their
    probabilities.

    PATHS are image files or folders (walked recursively). A file that cannot be read is
    reported and skipped; the exit code is 2 if any failed, else 0.

    \b
    Examples:
      belka classify squirrel.jpg
      belka classify photos/ --top 3 --json > labels.jsonl
      belka classify park.jpg --head squirrel.belka --tiles
    """
    from ..scan import scan

    model = load_model(model_name, weights, head)
    failed = 0
    items = _tiled_items(model, paths, resize) if tiles else scan(
        model, paths, batch_size=batch_size, resize=resize, draft=fast_decode)
    for item in items:
        if item.error is not None:
            failed += 1
            if as_json:
                click.echo(json.dumps({"path": item.path, "error": item.error}))
            else:
                click.echo(f"belka: {item.path}: {item.error}", err=True)
            continue
        preds = model.rank(item.probabilities, top)
        lines = [item.path] + [f"  {p.probability:7.2%}  {p.label}  ({p.index})" for p in preds]
        _emit(as_json, {"path": item.path, "predictions": [p.to_dict() for p in preds]},
              "\n".join(lines))
    sys.exit(2 if failed else 0)


def _tiled_items(model, paths, resize):
    """scan()-like items whose probabilities are each class's best view (belka.tiling)."""
    from .. import images
    from ..errors import ImageError
    from ..scan import ScanItem
    from ..tiling import tiled_probabilities

    for path, error in images.expand_paths(paths):
        if error is None:
            try:
                probs, _, _ = tiled_probabilities(model, images.decode(path), policy=resize)
                yield ScanItem(path, probabilities=probs)
                continue
            except ImageError as err:
                error = err.message
        yield ScanItem(path, error=error)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--allow", default=None, metavar="CLASSES",
              help="what to accept: a group (squirrel, cat, dog, bird, ...), ImageNet class names "
                   "or indices, comma-separated; with --head, the head's class names "
                   "[default: squirrel, or the policy's]")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, metavar="P",
              help="accept when the allowed classes' summed probability is at least P "
                   "[default: the policy's; else the head's calibrated threshold; else 0.1 with "
                   "tiles, 0.01 without; see the README]")
@click.option("--tiles/--no-tiles", default=None,
              help="also look at overlapping tiles at higher resolution (finds small squirrels; "
                   "14-22 forwards per photo instead of 1) [default: on]")
@click.option("--policy", "policy", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.json",
              help="a calibrated policy from `belka calibrate`: allowed classes, threshold, tiles")
@click.option("--json", "as_json", is_flag=True,
              help='JSON lines: {"path", "verdict", "score", "threshold", "allowed", '
                   '"predictions", "tile"} or {"path", "error"}; "tile" is [x0, y0, x1, y1] of '
                   'the tile that decided, null for the whole image')
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 512))
@head_option
@model_options
def check(paths, allow, threshold, tiles, policy, as_json, batch_size, head, model_name, weights,
          resize):
    """The upload gate: accept an image when it looks like an allowed class, warn when not.

    Exit code: 0 every image accepted, 3 at least one warned ("this does not look like a
    squirrel: top guess tiger cat 0.71"), 2 at least one could not be read.

    \b
    Examples:
      belka check upload.jpg --allow squirrel
      belka check uploads/ --allow cat,dog --json
      belka check upload.jpg --head squirrel.belka --allow squirrel
      belka check upload.jpg --head squirrel.belka --policy policy.json
    """
    from ..gate import ACCEPT, Gate

    model = load_model(model_name, weights, head)
    gate = Gate(model, allow=allow, threshold=threshold, tiles=tiles, policy=policy)
    worst = 0
    for path, result, error in gate.check_paths(paths, batch_size=batch_size, resize=resize):
        if error is not None:
            worst = 2
            if as_json:
                click.echo(json.dumps({"path": path, "error": error}))
            else:
                click.echo(f"belka: {path}: {error}", err=True)
            continue
        if result.verdict != ACCEPT and worst == 0:
            worst = 3
        _emit(as_json, result.to_dict(), f"{result.verdict.upper():6}  {path}: {result.message}")
    sys.exit(worst)


@main.command("models")
def models_command():
    """List the models belka can load, and where their weights come from."""
    from ..models import available, get_spec

    for name in available():
        spec = get_spec(name)
        source = spec.weights.help or spec.weights.url if spec.weights else "no weights"
        click.echo(f"{name:28} {spec.description}\n{'':28} weights: {source}")


@main.command("labels")
@click.argument("query", required=False)
def labels_command(query):
    """List ImageNet class names with their indices (filtered by QUERY), and the groups."""
    from ..models.labels import IMAGENET_GROUPS, imagenet_labels

    for i, name in enumerate(imagenet_labels()):
        if not query or query.lower() in name.lower():
            click.echo(f"{i:4}  {name}")
    if not query:
        click.echo("\ngroups (for --allow):")
        for group, indices in IMAGENET_GROUPS.items():
            click.echo(f"  {group:10} {len(indices)} classes")


@main.command()
@click.option("-o", "--out", "out_dir", default="belka-demo", show_default=True,
              type=click.Path(file_okay=False), help="folder for the report")
def demo(out_dir):
    """A one-minute tour on the bundled photo: classify it, run the squirrel gate, write a report.

    Needs no network and no files of your own (this is what `make run` starts).
    """
    import time
    from importlib import resources
    from pathlib import Path

    import belka
    from .. import images
    from ..files import write_atomic
    from ..gate import Gate

    photo = resources.files("belka").joinpath("data/chelsea.jpg")
    photo_bytes = photo.read_bytes()
    image = images.decode(photo_bytes, name="chelsea.jpg")
    started = time.perf_counter()
    model = belka.load()
    loaded = time.perf_counter()
    predictions = model.classify(image, top=5)
    result = Gate(model, allow="squirrel").check_many([image])[0]
    done = time.perf_counter()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The photo's own bytes, not a re-encoding: `belka classify belka-demo/photo.jpg` must say
    # what the demo said.
    write_atomic(out / "photo.jpg", photo_bytes)
    rows = "\n".join(f"| {i} | {p.label} | {p.index} | {p.probability:.4f} |"
                     for i, p in enumerate(predictions, 1))
    report = (f"# belka demo\n\n![photo](photo.jpg)\n\nModel: {model!r}\n\n"
              f"| rank | label | index | probability |\n|---|---|---|---|\n{rows}\n\n"
              f"Squirrel gate: **{result.verdict}**: {result.message}\n\n"
              f"Load {1000 * (loaded - started):.0f} ms, classify + check "
              f"{1000 * (done - loaded):.0f} ms on {model.device}.\n")
    (out / "report.md").write_text(report, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(
        {"model": model.name, "predictions": [p.to_dict() for p in predictions],
         "check": result.to_dict()}, indent=2), encoding="utf-8")

    click.echo(f"belka {belka.__version__} demo: the bundled photo of Chelsea the cat\n")
    for p in predictions:
        click.echo(f"  {p.probability:7.2%}  {p.label}  ({p.index})")
    click.echo(f"\nbelka check --allow squirrel: {result.verdict.upper()}: {result.message}")
    click.echo(f"\nreport written to {out / 'report.md'}")
    click.echo("next: belka classify YOUR_PHOTO.jpg   |   belka check YOUR_PHOTO.jpg --allow squirrel")
