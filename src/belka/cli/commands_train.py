"""``belka train``, ``belka calibrate`` and ``belka evaluate``: custom classes and calibrated
gates from folders of labelled photos (one sub-folder per class)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import main
from .commands_models import head_option, load_model
from .commands_scan import check_runner, runner_options

FOLDERS_HELP = "DATA_DIR holds one sub-folder of photos per class (e.g. squirrel/, cat/, other/)."


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


GROUPS_HELP = ("CSV of 'path,group' lines naming each photo's source (camera, place, "
               "photographer); cross-validation holds out whole sources [default: sub-folders "
               "inside each class folder, else EXIF camera and day, else bursts]")


def _files(rows: list[dict], limit: int = 4) -> str:
    if not rows:
        return "none"
    shown = ", ".join(f"{r['file']} ({r['score']:.2g})" for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more (see the report)" if len(rows) > limit else "")


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              metavar="FILE.belka", help="the head file to write")
@click.option("--model", "model_name", default="efficientnet_lite0", show_default=True,
              metavar="NAME", help="the frozen backbone (see `belka models`)")
@click.option("--weights", metavar="PATH|URL", default=None,
              help="weight file or URL instead of the model's default source")
@click.option("--epochs", default=60, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--seed", default=0, show_default=True, type=int,
              help="the same photos, options and seed give the same head")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 50),
              help="cross-validation folds (each source stays in one fold)")
@click.option("--groups", "groups_file", type=click.Path(exists=True, dir_okay=False),
              default=None, metavar="FILE.csv", help=GROUPS_HELP)
@click.option("--max-false-accept", default=0.01, show_default=True,
              type=click.FloatRange(0, 1), help="false-accept target for the saved thresholds")
@click.option("--tiles/--no-tiles", default=True, show_default=True,
              help="embed tiles too: thresholds for the tiled gate, and 'other' tiles for "
                   "training (14-22 forwards per photo instead of 6)")
@click.option("--agreement/--no-agreement", default=True, show_default=True,
              help="a view counts as much as the head and the backbone's own ImageNet class "
                   "agree (sqrt of both probabilities), for classes ImageNet knows (squirrel, "
                   "cat, ...): measured by source it keeps tiles of known places from passing")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="where to write the confusion matrix PNG and the report JSON "
                   "[default: next to the head file]")
@runner_options
def train(data_dir, out, model_name, weights, epochs, seed, folds, groups_file, max_false_accept,
          tiles, agreement, report_dir, runner, address, workers):
    """Train a head for your own classes on a frozen backbone.

    \b
    DATA_DIR holds one sub-folder of photos per class, e.g.
      photos/squirrel/*.jpg  photos/cat/*.jpg  photos/other/*.jpg
    An `other` folder (anything that is none of the classes) makes the gate much safer.

    Each photo is embedded once (whole, mirrored, four corner crops, and tiles), a linear head
    is cross-validated holding out whole sources (a sub-folder per place inside each class
    folder, --groups FILE, else EXIF camera and day, else bursts of similar photos), thresholds
    are chosen on the out-of-fold scores, and the final head is trained on every photo. Prints
    per-class precision and recall and writes a confusion-matrix PNG and a JSON report.

    \b
    Photos from few places teach the place as much as the animal: put each place's photos in
    its own sub-folder (photos/squirrel/garden-cam/, photos/other/garden-cam/) so the held-out
    figures are measured on places the head has not seen.

    \b
    Examples:
      belka train photos/ -o squirrel.belka
      belka train photos/ -o squirrel.belka --runner ray --address auto
      belka check upload.jpg --head squirrel.belka --allow squirrel
    """
    from .. import bulk, heads
    from ..tiling import DEFAULT_TILING

    check_runner(runner, address)
    model = load_model(model_name, weights)
    photos = heads.read_folder(data_dir)
    counts = ", ".join(f"{l} {int((photos.y == i).sum())}" for i, l in enumerate(photos.labels))
    click.echo(f"{len(photos.paths)} photos in {len(photos.labels)} classes ({counts}); "
               f"backbone {model.name}", err=True)
    options = heads.TrainOptions(epochs=epochs, seed=seed, folds=folds,
                                 max_false_accept=max_false_accept,
                                 tiling=DEFAULT_TILING if tiles else None, agreement=agreement)
    # The embedding step runs on the bulk engine (belka scan's): this process or a Ray cluster.
    embedded = bulk.embed_for_training(
        bulk.Task("views", model=model_name, weights=weights, augment=options.augment,
                  view_tiles=tiles), photos.paths, runner=runner, address=address,
        workers=workers, model=model)
    result = heads.train(model, photos, options, groups_file=groups_file, embedded=embedded)
    head = result.head
    out_path = head.save(out)
    folder = Path(report_dir) if report_dir else out_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    stem = out_path.name[:-len(heads.HEAD_SUFFIX)] if out_path.name.endswith(
        heads.HEAD_SUFFIX) else out_path.stem
    png = heads.plot_confusion(result.confusion, photos.labels, folder / f"{stem}.confusion.png")
    report_path = folder / f"{stem}.report.json"
    report_path.write_text(json.dumps(head.metadata()["report"], indent=2) + "\n",
                           encoding="utf-8")

    rep = head.report
    click.echo(f"\nhead {out_path}: {', '.join(head.labels)}; {rep['photos']} photos from "
               f"{rep['groups']} sources (grouped by {rep.get('grouping', 'bursts')}), "
               f"{rep['folds']}-fold cross-validation holding out whole sources; "
               f"{rep['forwards']} forwards ({rep['forwards'] / max(1, rep['photos']):.1f} per "
               f"photo), {rep['seconds'].get('total', 0):.0f} s")
    if head.agreement:
        agreeing = [l for l in head.labels if head.prior.get(l)]
        click.echo(f"agreement with the backbone's ImageNet classes for: "
                   f"{', '.join(agreeing) or 'none (no class is an ImageNet class or group)'}")
    click.echo("\nout of fold, whole image, most likely class:")
    click.echo(f"  {'class':16} {'photos':>6} {'precision':>9} {'recall':>7}")
    for label, row in rep["classes"].items():
        click.echo(f"  {label:16} {row['photos']:6} {_pct(row['precision']):>9} "
                   f"{_pct(row['recall']):>7}")
    click.echo(f"\nthresholds for --allow CLASS (<= {max_false_accept:g} false accepts on "
               f"out-of-fold scores; held-out: chosen on other folds):")
    for label, modes in rep["gate"].items():
        for mode, g in modes.items():
            click.echo(f"  {label:16} {mode:5}  threshold {g['threshold']:.4g}: accepts "
                       f"{_pct(g['accept_rate'])} of {label}, {g['false_accept_rate']:.1%} of the "
                       f"rest (held-out {_pct(g['heldout_accept_rate'])} / "
                       f"{g['heldout_false_accept_rate']:.1%})")
    mode = "tiles" if tiles else "whole"
    click.echo(f"\nwhere the gate fails, held out ({mode}; --allow CLASS refuses / lets through):")
    for label, modes in rep["gate"].items():
        g = modes[mode]
        click.echo(f"  {label:16} refused: {_files(g.get('heldout_refused', []))}")
        click.echo(f"  {'':16} let through: {_files(g.get('heldout_false_accepts', []))}")
    from ..sources import FEW_SOURCES, bursts_only_warning

    note = bursts_only_warning(rep.get("burst_share", 0.0))
    if note:
        click.echo(f"warning: {note}.", err=True)
    for label, row in rep["classes"].items():
        sources = row.get("sources", row.get("bursts", row["photos"]))
        if sources < FEW_SOURCES:
            click.echo(f"warning: {label} has photos from only {sources} source(s) "
                       f"({row['photos']} photos, grouped by {rep.get('grouping', 'bursts')}): "
                       "a head learns the place as much as the animal, and held-out figures "
                       "from this few sources predict new places only roughly. Add photos from "
                       f"{FEW_SOURCES}+ places, one sub-folder per place (or --groups FILE).",
                       err=True)
    if photos.skipped:
        click.echo(f"\nskipped {len(photos.skipped)} unreadable files (see the report)", err=True)
    click.echo(f"\nconfusion matrix: {png}\nreport: {report_path}")


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--allow", default="squirrel", show_default=True, metavar="CLASSES",
              help="what the gate accepts; the sub-folder(s) named after it are the positives")
@click.option("--max-false-accept", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="highest share of the other folders' photos the gate may accept")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.json|FILE.belka",
              help="save the threshold: a policy JSON (for `belka check --policy`), or, with "
                   "--head and a .belka name, a copy of the head with this threshold")
@click.option("--roc", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="where to write the ROC curve [default: OUT with .roc.png, else roc.png]")
@click.option("--tiles/--no-tiles", default=True, show_default=True)
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 50))
@click.option("--groups", "groups_file", type=click.Path(exists=True, dir_okay=False),
              default=None, metavar="FILE.csv", help=GROUPS_HELP)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="print the calibration as JSON")
@head_option
@click.option("--model", "model_name", default="efficientnet_lite0", show_default=True,
              metavar="NAME")
@click.option("--weights", metavar="PATH|URL", default=None)
def calibrate(data_dir, allow, max_false_accept, out, roc, tiles, folds, groups_file, seed,
              as_json, head, model_name, weights):
    """Choose the threshold that keeps false accepts at or under a target.

    \b
    DATA_DIR holds one sub-folder per class; the folder named after --allow holds the photos
    to accept, all others the photos to refuse. Every photo is scored by the gate, the
    threshold is chosen on training folds and measured on held-out folds (whole sources kept
    together: --groups FILE, sub-folders per place, EXIF camera and day, else bursts), and the
    held-out false-accept and accept rates are printed. A head
    that was trained on some of these photos is retrained in cross-validation, so that no photo
    is scored by a head that has seen it.

    \b
    Examples:
      belka calibrate photos/ --allow squirrel --max-false-accept 0.01 -o policy.json
      belka check upload.jpg --policy policy.json
      belka calibrate photos/ --head squirrel.belka --allow squirrel -o squirrel.belka
    """
    from .. import calibrate as cal
    from ..errors import UsageError

    model = load_model(model_name, weights, head)
    if out and out.endswith(".belka") and head is None:
        raise UsageError("saving the threshold into a .belka file needs --head")
    scored = cal.score_folder(model, data_dir, allow, tiles=tiles, folds=folds, seed=seed,
                              groups_file=groups_file)
    floor = 0.0
    if getattr(model, "head", None) is not None:
        from ..heads.training import MIN_HEAD_THRESHOLD

        floor = MIN_HEAD_THRESHOLD
    result = cal.calibrate_scores(scored, allow, max_false_accept, folds=folds, seed=seed,
                                  floor=floor, tiles=tiles)
    roc_path = Path(roc) if roc else (Path(out).with_suffix(".roc.png") if out else Path("roc.png"))
    cal.plot_roc(scored.scores, scored.positive, roc_path, threshold=result.threshold,
                 title=f"{allow}: {'tiles' if tiles else 'whole image'}, "
                       f"{'out-of-fold ' if scored.out_of_fold else ''}scores")
    saved = None
    if out:
        if out.endswith(".belka"):
            trained = model.head
            mode = "tiles" if tiles else "whole"
            labels = [a.strip() for a in allow.split(",")]
            if len(labels) != 1 or labels[0] not in trained.labels:
                raise UsageError("a head stores thresholds for one of its classes: use -o "
                                 "policy.json to save a threshold for several")
            trained.thresholds.setdefault(mode, {})[labels[0]] = round(result.threshold, 6)
            trained.report.setdefault("calibration", {})[f"{labels[0]}/{mode}"] = result.to_dict()
            saved = trained.save(out)
        else:
            saved = cal.policy_for(model, result, allow).save(out)
    if as_json:
        click.echo(json.dumps(result.to_dict() | {"roc": str(roc_path),
                                                  "saved": str(saved) if saved else None}))
        return
    held = result.heldout
    from ..sources import FEW_SOURCES, bursts_only_warning

    sources = len(set(scored.groups[scored.positive].tolist()))
    click.echo(f"{result.positives} {allow} photos from {sources} sources, {result.negatives} "
               f"others; grouped by {scored.grouping}; gate: "
               f"{'head' if floor else 'ImageNet classes'}, "
               f"{'whole image + tiles' if tiles else 'whole image'}"
               f"{'; scores out of fold (head retrained without each source)' if scored.out_of_fold else ''}")
    note = bursts_only_warning(scored.burst_share)
    if note:
        click.echo(f"warning: {note}.", err=True)
    if sources < FEW_SOURCES:
        click.echo(f"warning: the {allow} photos come from only {sources} source(s): held-out "
                   "figures predict photos from new places only roughly; add photos from "
                   f"{FEW_SOURCES}+ places, one sub-folder per place (or --groups FILE)", err=True)
    click.echo(f"threshold {result.threshold:.4g} (<= {max_false_accept:g} false accepts): accepts "
               f"{result.accept_rate:.0%} of {allow} photos, {result.false_accept_rate:.1%} of others")
    click.echo(f"held out ({len(held.thresholds)} folds, threshold chosen on the others): accepts "
               f"{held.heldout_accept_rate:.0%} ({held.accepts}/{held.positives}), false accepts "
               f"{held.heldout_false_accept_rate:.1%} ({held.false_accepts}/{held.negatives})")
    for path in result.false_accepts:
        click.echo(f"  false accept: {path}")
    for title, paths in (("held out, refused", result.heldout_refused),
                         ("held out, let through", result.heldout_let_through)):
        for path in paths:
            click.echo(f"  {title}: {path}")
    click.echo(f"ROC curve: {roc_path}" + (f"\nsaved: {saved}" if saved else ""))


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--allow", default=None, metavar="CLASSES",
              help="what the gate accepts [default: squirrel, or the policy's]")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, metavar="P")
@click.option("--policy", type=click.Path(dir_okay=False), default=None, metavar="FILE.json")
@click.option("--tiles/--no-tiles", default=None, help="[default: on, or the policy's]")
@click.option("--json", "as_json", is_flag=True,
              help='JSON: {"folders": {name: {"photos", "accepted", "rate", "positive", '
                   '"sources"}}, "false_accepts": [{"path", "score", "tile"}], "missed": [...]}')
@click.option("--sheet", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="draw the mistakes (false accepts, refused photos) as a contact sheet, the "
                   "deciding tile outlined")
@click.option("--groups", "groups_file", type=click.Path(exists=True, dir_okay=False),
              default=None, metavar="FILE.csv", help=GROUPS_HELP)
@head_option
@click.option("--model", "model_name", default="efficientnet_lite0", show_default=True,
              metavar="NAME")
@click.option("--weights", metavar="PATH|URL", default=None)
@runner_options
def evaluate(data_dir, allow, threshold, policy, tiles, as_json, sheet, groups_file, head,
             model_name, weights, runner, address, workers):
    """Run the gate over labelled folders: accept rate per sub-folder, false accepts by file.

    The sub-folder named after --allow should be accepted; every other folder's accepted
    photos are false accepts and are listed, with the view that decided (the whole image or a
    tile). Each folder's photos are counted by source (--groups FILE, sub-folders per place,
    EXIF camera and day, else bursts): rates from few sources say little about new places.

    \b
    Example:
      belka evaluate photos/ --head squirrel.belka --allow squirrel --sheet mistakes.png
      belka evaluate big-photos/ --allow squirrel --runner ray --address auto
    """
    from .. import bulk, heads
    from ..calibrate import positive_folders
    from ..gate import Gate

    check_runner(runner, address)
    model = load_model(model_name, weights, head)
    gate = Gate(model, allow=allow, threshold=threshold, tiles=tiles, policy=policy)
    photos = heads.read_folder(data_dir, min_classes=1, purpose="evaluation")
    positive = positive_folders(model, photos.labels, gate.allow)
    label_of = dict(zip(photos.paths, photos.y.tolist()))
    stats = {l: {"photos": 0, "accepted": 0, "positive": bool(p)}
             for l, p in zip(photos.labels, positive)}
    false_accepts, missed, errors = [], [], []
    # The gate runs on the bulk engine (belka scan's): this process or a Ray cluster.
    job = bulk.Task("check", model=model_name, weights=weights, head=head, allow=allow,
                    threshold=threshold, tiles=tiles, policy=gate.policy)
    rows = {r["path"]: r for r in bulk.iter_rows(job, [str(p) for p in photos.paths],
                                                 runner=runner, address=address,
                                                 workers=workers, model=model)}
    for path in photos.paths:
        row = rows[str(path)]
        if row["error"] is not None:
            errors.append({"path": row["path"], "error": row["error"]})
            continue
        label = photos.labels[label_of[path]]
        accepted = row["verdict"] == "accept"
        stats[label]["photos"] += 1
        stats[label]["accepted"] += int(accepted)
        entry = {"path": row["path"], "score": round(row["score"], 6), "tile": row["box"]}
        if accepted and not stats[label]["positive"]:
            false_accepts.append(entry)
        elif not accepted and stats[label]["positive"]:
            missed.append(entry)
    for s in stats.values():
        s["rate"] = round(s["accepted"] / s["photos"], 4) if s["photos"] else None
    grouping = photos.sources(groups_file=groups_file)
    for c, label in enumerate(photos.labels):
        stats[label]["sources"] = grouping.count(photos.y == c)
    if sheet:
        from ..sheets import contact_sheet

        drawn = contact_sheet(
            [e | {"kind": "false accept"} for e in false_accepts]
            + [e | {"kind": "refused"} for e in missed], sheet,
            title=f"{gate.allowed} gate, threshold {gate.threshold:g}: {len(false_accepts)} "
                  f"false accepts, {len(missed)} refused")
    seen = sum(heads.seen_in_training(model.head, photos.paths)) if getattr(
        model, "head", None) is not None else 0
    if as_json:
        click.echo(json.dumps({"allow": gate.allowed, "threshold": gate.threshold,
                               "tiles": gate.tiles, "folders": stats, "grouping": grouping.kind,
                               "false_accepts": false_accepts, "missed": missed,
                               "errors": errors, "seen_in_training": seen,
                               "sheet": str(drawn) if sheet else None}))
        return
    click.echo(f"gate: allow {gate.allowed}, threshold {gate.threshold:g}, "
               f"{'whole image + tiles' if gate.tiles else 'whole image'}; sources grouped by "
               f"{grouping.kind}")
    click.echo(f"  {'folder':16} {'photos':>6} {'sources':>7} {'accepted':>8} {'rate':>6}")
    for label, s in stats.items():
        mark = "  (should be accepted)" if s["positive"] else ""
        click.echo(f"  {label:16} {s['photos']:6} {s['sources']:7} {s['accepted']:8} "
                   f"{_pct(s['rate']):>6}{mark}")
    for title, entries in (("false accepts", false_accepts),
                           ("refused, should be accepted", missed)):
        click.echo(f"\n{title}: {len(entries)}")
        for e in entries:
            where = f" in tile {e['tile']}" if e["tile"] else ""
            click.echo(f"  {e['path']}  score {e['score']:.3g}{where}")
    if seen:
        click.echo(f"\nnote: {seen} of these photos were used to train the head, so these rates "
                   f"are optimistic; `belka calibrate` gives held-out rates", err=True)
    if sheet:
        click.echo(f"\ncontact sheet of the mistakes: {drawn}")
    for e in errors:
        click.echo(f"belka: {e['path']}: {e['error']}", err=True)
