"""``belka export web``: the gate as a static folder that runs in the browser (docs/client.md)."""

from __future__ import annotations

import click

from . import main
from .commands_models import head_option, load_model


@main.group("export")
def export_group():
    """Export belka for other runtimes."""


@export_group.command("web")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="folder to write (created; its files are replaced)")
@click.option("--allow", default=None, metavar="CLASSES",
              help="what to accept (as belka check) [default: squirrel, or the policy's]")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, metavar="P",
              help="accept when the allowed classes' summed probability is at least P "
                   "[default: as belka check]")
@click.option("--tiles/--no-tiles", default=None,
              help="also look at overlapping tiles, all in one batched run [default: on]")
@click.option("--policy", "policy", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.json", help="a calibrated policy from `belka calibrate`")
@click.option("--fp16", is_flag=True,
              help="store the weights as float16: half the download; the arithmetic stays "
                   "float32 (agreement with fp32 in docs/client.md)")
@click.option("--upload-url", default=None, metavar="URL",
              help="where the demo page uploads accepted (or confirmed) photos "
                   "[default: none, the demo stops at the verdict]")
@click.option("--model", "model_name", default="efficientnet_lite0", show_default=True,
              metavar="NAME", help="model to export (see `belka models`)")
@click.option("--weights", metavar="PATH|URL", default=None,
              help="weight file or URL instead of the model's default source")
@head_option
def export_web(out_dir, allow, threshold, tiles, policy, fp16, upload_url, model_name, weights,
               head):
    """Write a static folder that runs the upload gate in the browser: model.onnx, policy.json,
    belka.js (an ES module), the onnxruntime-web runtime and a demo page (index.html).

    Any static file server can host it (no build step, no CDN). Multi-threading needs the page
    to be cross-origin isolated (COOP/COEP headers); see docs/client.md.

    \b
    Examples:
      belka export web -o web/
      belka export web -o web/ --head squirrel.belka --policy policy.json --fp16
    """
    from ..gate import Gate
    from ..web import export_web as export

    model = load_model(model_name, weights, head)
    gate = Gate(model, allow=allow, threshold=threshold, tiles=tiles, policy=policy)
    result = export(out_dir, gate, fp16=fp16, upload_url=upload_url)
    p = result.policy
    click.echo(f"wrote {result.out_dir}/: {len(result.files)} files, "
               f"{result.total_bytes / 2**20:.1f} MB ({p['precision']} model "
               f"{result.files['model.onnx'] / 2**20:.1f} MB, runtime "
               f"{sum(v for k, v in result.files.items() if k.startswith('ort/')) / 2**20:.1f} MB)")
    click.echo(f"gate: allow {', '.join(p['allow'])} at {p['threshold']:g}, "
               f"tiles {'on' if p['tiles'] else 'off'}"
               + (f", head {', '.join(p['head_labels'])}" if p['head'] else ""))
    click.echo(f"try it: python -m belka.web.serve {result.out_dir}   (serves it with the "
               "COOP/COEP headers; then open the printed URL)")
