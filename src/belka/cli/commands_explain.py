"""``belka explain``: a heat map of why the model gave an image its score."""

from __future__ import annotations

import json

import click

from . import main
from .commands_models import load_model, model_options

METHOD_HELP = ("gradcam (default), gradcam++, xgradcam, layercam, hirescam, scorecam (slow: one "
               "forward per channel), eigencam, ablationcam, guidedgradcam, layercam-fused "
               "(several layers: --layer a,b,c), saliency, smoothgrad, ig (integrated gradients), "
               "occlusion, guidedbackprop, deeplift, gradientshap, fullgrad, lime")


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
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--method", "-m", default="gradcam", show_default=True, metavar="METHOD",
              help=METHOD_HELP)
@click.option("--layer", "-l", default=None, metavar="NAME|INDEX",
              help="layer to explain (name from `belka layers`, or an index; negative counts from "
                   "the end) [default: the last convolutional layer before the pooling]")
@click.option("--class", "-c", "target", default=None, metavar="CLASS",
              help='what to explain: an ImageNet class name ("fox squirrel"), a group '
                   '("squirrel", "cat": the sum of its logits) or an index [default: the top '
                   'prediction]')
@click.option("-o", "--output", type=click.Path(), default=None,
              help="one image: the picture to write (.png, .jpg or .webp). Several images or a "
                   "folder: a folder for one PNG per image and index.json")
@click.option("--grid", is_flag=True,
              help="one image: the image, the heat map and the overlay side by side, with the "
                   "label and probability underneath. Several: also a contact sheet, "
                   "contact_sheet.png")
@click.option("--metrics", is_flag=True,
              help="also print the deletion and insertion AUC, Average Drop / Increase in "
                   "Confidence and the model-randomisation sanity check (one image; a few dozen "
                   "extra forward passes)")
@click.option("--compare", "compare_dir", type=click.Path(file_okay=False), default=None,
              metavar="DIR",
              help="rank methods on a labelled folder (subfolders named after a class or group, "
                   "e.g. DIR/squirrel, DIR/cat) by deletion, insertion, ROAD and Average "
                   "Drop / Increase, with the sanity check, in one table; -o FILE.json also "
                   "writes the numbers")
@click.option("--methods", "compare_methods", default=None, metavar="A,B,...",
              help="with --compare: the methods to rank [default: the fast ones]")
@click.option("--limit", default=None, type=click.IntRange(1), metavar="N",
              help="with --compare: at most N photos per subfolder")
@click.option("--sanity", "sanity_n", default=2, show_default=True, type=click.IntRange(0),
              metavar="N", help="with --compare: run the sanity check on the first N photos")
@click.option("--colormap", default="turbo", show_default=True,
              type=click.Choice(["turbo", "jet", "hot", "gray"]))
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="opacity of the heat map in the overlay")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 256),
              help="images explained together")
@click.option("--option", "-O", "method_options", multiple=True, metavar="KEY=VALUE",
              help="a method option, e.g. -O steps=64 (ig), -O samples=50 (smoothgrad), "
                   "-O window=16 (occlusion)")
@click.option("--json", "as_json", is_flag=True,
              help='one image: one JSON object {"path", "output", "method", "layer", "indices", '
                   '"label", "score", "probability", "peak", "size", ...}; several: one per line')
@model_options
def explain_command(images, method, layer, target, output, grid, metrics, compare_dir,
                    compare_methods, limit, sanity_n, colormap, alpha, batch_size, method_options, as_json,
                    model_name, weights, resize):
    """Explain why the model scored each image as it did: a heat map over the image, written
    as an overlay.

    IMAGES are image files or folders (searched recursively). One file with -o FILE.png writes
    that picture. Several files or a folder need -o DIR: one PNG per image (named after the
    file), and DIR/index.json with each image's class, score, probability and heat-map
    statistics (peak, centroid, mean, area above 0.5, spread); --grid adds a contact sheet. A
    file that cannot be read is reported and skipped (exit code 2 at the end).

    \b
    Examples:
      belka explain squirrel.jpg -o cam.png
      belka explain squirrel.jpg --class "fox squirrel" --layer block6a_project_bn -o cam.png
      belka explain cat.jpg --method scorecam --grid -o why.png
      belka explain cat.jpg --class cat --metrics -o cam.png
      belka explain a.jpg b.jpg photos/ -o maps/ --grid
      belka explain --compare photos/ --methods gradcam,layercam,fullgrad --limit 8
    """
    from pathlib import Path

    from ..errors import UsageError
    from ..explain import get_method

    options = _parse_options(method_options)
    if compare_dir is not None:
        if images:
            raise UsageError("--compare DIR takes no IMAGES (the folder's subfolders are them)")
        _compare(compare_dir, compare_methods, limit, sanity_n, output, options, as_json,
                 model_name, weights, resize)
        return
    if not images:
        raise UsageError("name at least one image or folder (or --compare DIR)")
    if output is None:
        raise UsageError("missing -o: a picture for one image, a folder for several")
    get_method(method)                     # an unknown method fails before the model loads
    if layer is not None and "," in layer:
        layer = [part.strip() for part in layer.split(",") if part.strip()]
    out = Path(output)
    single = (len(images) == 1 and not Path(images[0]).is_dir() and not out.is_dir()
              and out.suffix != "")
    if single:
        _explain_one(images[0], method, layer, target, output, grid, metrics, colormap, alpha,
                     options, as_json, model_name, weights, resize)
    else:
        if metrics:
            raise UsageError("--metrics is for one image; for a folder use --compare DIR")
        _explain_folder(images, method, layer, target, out, grid, colormap, alpha, batch_size,
                        options, as_json, model_name, weights, resize)


def _explain_one(image, method, layer, target, output, grid, metrics, colormap, alpha, options,
                 as_json, model_name, weights, resize):
    from .. import images as _images
    from ..explain import explain
    from ..explain.metrics import confidence_change, deletion, insertion, sanity_check

    model = load_model(model_name, weights)
    _engine_when_cheap(model)
    decoded = model.decode(image)
    result = explain(model, decoded, target=target, method=method, layer=layer, resize=resize,
                     progress=None if as_json else True, **options)
    picture = (result.grid(colormap=colormap, alpha=alpha) if grid
               else result.overlay(colormap=colormap, alpha=alpha))
    _images.save(picture, output)
    record = {"path": str(image), "output": str(output), **result.to_dict()}
    lines = [f"{image}: {result.caption} -> {output}"]
    if "note" in result.details:
        lines.append(f"  ({result.details['note']})")
    if metrics:
        dele = deletion(model, None, result)
        ins = insertion(model, None, result)
        conf = confidence_change(model, None, result)
        sanity = sanity_check(model, None, result, **options)
        record.update(deletion_auc=round(dele.auc, 6), insertion_auc=round(ins.auc, 6),
                      drop=round(conf.drop, 6), increase=conf.increase,
                      masked_probability=round(conf.masked_probability, 6),
                      sanity_spearman=round(sanity.spearman, 6), sanity_passed=sanity.passed,
                      sanity_randomized=sanity.randomized)
        lines.append(f"  deletion AUC  {dele.auc:.4f}  (lower is better; removed pixels -> "
                     f"image mean)")
        lines.append(f"  insertion AUC {ins.auc:.4f}  (higher is better; from a blurred copy)")
        lines.append(f"  confidence    {conf.probability:.3f} -> {conf.masked_probability:.3f} on "
                     f"the image times the map (drop {conf.drop:.1%}"
                     f"{', an increase' if conf.increase else ''})")
        verdict = "passed" if sanity.passed else "FAILED: the map barely depends on the weights"
        lines.append(f"  sanity check  Spearman {sanity.spearman:+.3f} against a copy with "
                     f"random {', '.join(sanity.randomized)}: {verdict}")
    click.echo(json.dumps(record) if as_json else "\n".join(lines))


def _output_names(items) -> list[str]:
    """One PNG name per item, after the file's name, unique in the folder."""
    taken = {"index.json", "contact_sheet.png"}
    names = []
    for n, item in enumerate(items):
        from pathlib import Path

        stem = Path(item.source).stem if item.source and not item.source.startswith("image ") \
            else f"image-{n + 1}"
        name, k = f"{stem}.png", 2
        while name.lower() in taken:
            name, k = f"{stem}-{k}.png", k + 1
        taken.add(name.lower())
        names.append(name)
    return names


def _explain_folder(sources, method, layer, target, out, grid, colormap, alpha, batch_size,
                    options, as_json, model_name, weights, resize):
    import sys

    from .. import images as _images
    from ..errors import UsageError
    from ..explain import contact_sheet, explain_many
    from ..files import write_atomic

    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {str(out)!r} is a file; several images need a folder")
    if out.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") and not out.exists():
        raise UsageError(f"-o {str(out)!r} looks like a picture, but several images need a "
                         "folder (one PNG per image and index.json)")
    _images.iter_image_files(list(sources))          # a missing path fails before the model loads
    model = load_model(model_name, weights)
    _engine_when_cheap(model)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot make the folder {str(out)!r}: {exc.strerror or exc}") from None
    items = explain_many(model, list(sources), target=target, method=method, layer=layer,
                         batch_size=batch_size, resize=resize, progress=None, **options)
    names = _output_names(items)
    records = []
    failed = 0
    for item, name in zip(items, names):
        if not item.ok:
            failed += 1
            message = item.error if item.source in (item.error or "") else f"{item.source}: {item.error}"
            click.echo(f"belka: {message}", err=True)
            records.append(item.to_dict())
            continue
        path = out / name
        _images.save(item.explanation.overlay(colormap=colormap, alpha=alpha), path)
        item.extra["output"] = str(path)
        record = item.to_dict()
        records.append(record)
        ex = item.explanation
        if as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(f"{item.source}: {ex.caption} -> {path}")
    sheet = None
    if grid:
        sheet = out / "contact_sheet.png"
        _images.save(contact_sheet(items, colormap=colormap, alpha=alpha), sheet)
    explained = [i for i in items if i.ok]
    index = {"model": model.name, "method": explained[0].explanation.method if explained else method,
             "layer": explained[0].explanation.layer if explained else None,
             "count": len(items), "failed": failed,
             "contact_sheet": str(sheet) if sheet else None, "items": records}
    index_path = out / "index.json"
    write_atomic(index_path, (json.dumps(index, indent=1) + "\n").encode())
    if not as_json:
        click.echo(f"{len(items) - failed} of {len(items)} explained -> {out}/ (index.json"
                   f"{', contact_sheet.png' if sheet else ''})")
    sys.exit(2 if failed else 0)


def _compare(folder, methods, limit, sanity_n, output, options, as_json, model_name, weights,
             resize):
    from ..explain.compare import DEFAULT_METHODS, compare_methods
    from ..files import write_atomic

    names = [m.strip() for m in methods.split(",")] if methods else list(DEFAULT_METHODS)
    from ..explain import get_method

    for name in names:
        get_method(name)
    model = load_model(model_name, weights)
    _engine_when_cheap(model)
    table = compare_methods(model, folder, names, limit=limit, sanity=sanity_n, resize=resize,
                            progress=None if not as_json else False,
                            options={n: options for n in names} if options else None)
    if output:
        write_atomic(output, (json.dumps(table.to_dict(), indent=1) + "\n").encode())
    click.echo(json.dumps(table.to_dict()) if as_json else table.to_text())
