"""``belka scan``: one task over many files (millions), written as resumable Parquet, in this
process or on a Ray cluster.

Naming: ``--engine`` means what it means on every belka command, the inference backend (auto,
onnx, torch); where the work runs is ``--runner local|ray`` (also on ``belka train`` and
``belka evaluate``)."""

from __future__ import annotations

import click

from . import main
from .commands_models import ENGINE_HELP, RESIZE_HELP

RUNNER_HELP = ("where the work runs: local (this process: decode threads + the model on all "
               "cores) or ray (Ray Data: decode tasks and a pool of scoring actors, one model "
               "each; needs `pip install 'belka[ray]'`)")
ADDRESS_HELP = ("with --runner ray: the cluster to join; `auto` for the one `ray start` runs on "
                "this machine, `ray://HOST:10001` for a remote one [default: start a "
                "one-machine cluster for this command]")


def _backend(ctx, param, value):
    if value is None:
        return None
    value = value.strip().lower()
    if value in ("local", "ray"):
        raise click.BadParameter(
            f"--engine picks the inference backend (auto, onnx, torch); to run on {value}, "
            f"use --runner {value}", ctx=ctx, param=param)
    if value not in ("auto", "onnx", "torch"):
        raise click.BadParameter(f"{value!r} is not one of auto, onnx, torch", ctx=ctx,
                                 param=param)
    return value


def runner_options(f):
    """--runner local|ray, --address and --workers (scan, train, evaluate)."""
    f = click.option("--workers", type=click.IntRange(1, 4096), default=None, metavar="N",
                     help="local: decode threads and model threads [default: the physical "
                          "cores]; ray: scoring actors [default: the cluster's CPUs]")(f)
    f = click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
                     help=ADDRESS_HELP)(f)
    f = click.option("--runner", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True, help=RUNNER_HELP)(f)
    return f


def check_runner(runner: str, address: str | None) -> None:
    from ..errors import UsageError

    if address is not None and runner != "ray":
        raise UsageError("--address needs --runner ray")
    if runner == "ray":
        from ..bulk.ray_runner import import_ray

        import_ray()


@main.command("scan")
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(), metavar="FOLDER",
              help="output folder of Parquet files; rerun with the same options to resume")
@click.option("--task", type=click.Choice(["classify", "check", "embed"]), default="classify",
              show_default=True,
              help="classify: top-k classes; check: the upload gate's verdict, score and box "
                   "(as `belka check`); embed: the pooled backbone embedding (1280 numbers) "
                   "and the top-k classes")
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="classes stored per file")
@click.option("--allow", default=None, metavar="CLASSES",
              help="check: what to accept, as in `belka check` [default: squirrel, or the "
                   "policy's]")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, metavar="P",
              help="check: as in `belka check`")
@click.option("--tiles/--no-tiles", default=None,
              help="check: also look at tiles, as in `belka check` [default: on]")
@click.option("--policy", type=click.Path(dir_okay=False), default=None, metavar="FILE.json",
              help="check: a calibrated policy from `belka calibrate`")
@click.option("--head", type=click.Path(dir_okay=False), default=None, metavar="FILE.belka",
              help="a head from `belka train`: its classes replace ImageNet's")
@click.option("--model", "model_name", default=None, metavar="NAME",
              help="model to run [default: efficientnet_lite0, or the head's backbone]")
@click.option("--weights", metavar="PATH|URL", default=None)
@click.option("--resize", type=click.Choice(["crop", "squash", "letterbox"]), default=None,
              help=RESIZE_HELP)
@click.option("--engine", "backend", default=None, callback=_backend,
              metavar="auto|onnx|torch", help=ENGINE_HELP)
@click.option("--fast-decode/--full-decode", "fast_decode", default=None,
              help="classify/embed: decode large JPEGs at a reduced scale (as `belka classify "
                   "--fast-decode`) or every pixel [default: what `belka classify` does]; check "
                   "always decodes every pixel")
@click.option("--sha256", is_flag=True, help="store each file's SHA-256 (one more read pass "
                                              "over the bytes already in memory)")
@click.option("--glob", default=None, metavar="PATTERN",
              help="only files whose path or name matches, e.g. '*.jpg'")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="only the first N files")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 512),
              help="images per model run")
@click.option("--checkpoint", default=1000, show_default=True, type=click.IntRange(1),
              metavar="ROWS", help="rows per Parquet part: the most a killed scan redoes")
@click.option("--overwrite", is_flag=True, help="discard OUT's earlier rows and start again")
@click.option("--progress/--no-progress", default=None,
              help="progress bar with rate and ETA [default: on a terminal]")
@runner_options
def scan_command(sources, out, task, top, allow, threshold, tiles, policy, head, model_name,
                 weights, resize, backend, fast_decode, sha256, glob, limit, batch_size,
                 checkpoint, overwrite, progress, runner, address, workers):
    """Run one task over every image in SOURCES and write one Parquet row per file to OUT.

    SOURCES are folders (walked recursively), image files, text files listing one path or URI
    a line (.txt, .lst, .list), or URIs (s3://bucket/prefix/ where pyarrow finds credentials).
    Each row has path, size, sha256 (with --sha256) and error (unreadable files get a row with
    the error), plus the task's columns: labels, indices, probabilities (top-k); verdict,
    score, threshold, box for check; embedding for embed.

    Resumable: killed and rerun with the same options, it skips the files already written and
    ends with exactly one row per file. Read OUT with pyarrow.parquet.read_table(OUT), pandas
    or DuckDB ('OUT/*.parquet').

    \b
    Examples:
      belka scan photos/ -o labels/
      belka scan photos/ -o gate/ --task check --allow squirrel --sha256
      belka scan list.txt -o emb/ --task embed --glob '*.jpg' --limit 100000
      belka scan s3://bucket/uploads/ -o gate/ --task check --runner ray --address auto
    """
    from .. import bulk
    from ..errors import UsageError

    check_runner(runner, address)
    if task != "check" and any(v is not None for v in (allow, threshold, tiles, policy)):
        raise UsageError("--allow, --threshold, --tiles and --policy belong to --task check")
    job = bulk.Task(task, model=model_name or (None if head else "efficientnet_lite0"),
                    weights=weights, head=head, backend=backend, resize=resize, top=top,
                    draft=fast_decode, sha256=sha256, allow=allow, threshold=threshold,
                    tiles=tiles, policy=policy)
    summary = bulk.scan(sources, out, job, runner=runner, address=address, workers=workers,
                        batch_size=batch_size, checkpoint=checkpoint, glob=glob, limit=limit,
                        overwrite=overwrite, progress=progress)
    verdicts = "".join(f", {n} {v}" for v, n in sorted(summary.counts.items()))
    rate = f" ({summary.rate:.1f} img/s)" if summary.written else ""
    click.echo(f"belka: {summary.out}: {summary.written} rows written{rate}"
               f"{verdicts}, {summary.errors} unreadable; {summary.already} already there; "
               f"{summary.files} files in all ({summary.runner} runner)", err=True)
