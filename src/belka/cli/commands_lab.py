"""``belka filter`` and ``belka transform``: the seed article's image lab (blur kernels and CSS
transforms) as commands."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from . import main

_PADDINGS = click.Choice(["zero", "reflect", "edge"])


def _catalogue_text() -> str:
    from ..ops.filters import kernel, list_kernels

    lines = []
    for info in list_kernels():
        params = ", ".join(f"{k}={v:g}" for k, v in info.params.items())
        shape = "x".join(str(d) for d in kernel(info.name).shape[-2:])
        label = f"{info.name}({params})" if params else info.name
        lines.append(f"{label:32} {shape:>6}  {info.description}")
    return "\n".join(lines)


@main.command("filter")
@click.argument("image", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-k", "--kernel", "kernel_spec", metavar="NAME|[[...]]|FILE",
              help="a catalogue name (see --list), a kernel literal such as "
                   "'[[0,-1,0],[-1,5,-1],[0,-1,0]]' (fractions like 1/16 allowed), or a .json "
                   "or .npy file")
@click.option("--sigma", type=float, help="sigma for gaussian and unsharp")
@click.option("--size", type=int, help="kernel size for box-blur, identity and gaussian")
@click.option("--amount", type=float, help="strength of unsharp")
@click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="keep every Nth output pixel in each direction")
@click.option("--padding", type=_PADDINGS, default="reflect", show_default=True,
              help="how to extend the image past its edges (the article's loop pads nothing "
                   "and leaves the last rows and columns unfiltered)")
@click.option("--gray", is_flag=True, help="filter the luma (BT.601) and write a gray image")
@click.option("--normalize", is_flag=True,
              help="divide the kernel by its sum (zero-sum kernels: by their positive weights)")
@click.option("--flip", is_flag=True,
              help="true convolution (kernel rotated 180 degrees) instead of correlation")
@click.option("--list", "list_only", is_flag=True, help="print the kernel catalogue and exit")
@click.option("--progress", is_flag=True, help="show a progress bar (useful on large images)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the result (.png, .jpg or .webp)")
def filter_command(image, kernel_spec, sigma, size, amount, stride, padding, gray, normalize,
                   flip, list_only, progress, output):
    """Filter IMAGE with a kernel: blur, sharpen, edges, emboss, or your own numbers.

    Kernels are applied as cross-correlation (like OpenCV's filter2D and the seed article's
    loop): the kernel is laid on the image as written. Results are rounded and clamped to
    0..255 like a JavaScript Uint8ClampedArray, so the negative half of signed kernels
    (sobel-x, laplacian, ...) shows as black; `sobel` gives the gradient magnitude.

    \b
    Examples:
      belka filter --list
      belka filter squirrel.jpg -k gaussian-blur -o blurred.png
      belka filter squirrel.jpg -k gaussian --sigma 2.5 -o soft.png
      belka filter squirrel.jpg -k sobel --gray -o edges.png
      belka filter squirrel.jpg -k '[[0,-1,0],[-1,5,-1],[0,-1,0]]' -o sharp.png
      belka filter squirrel.jpg -k '[[1,2,1],[2,4,2],[1,2,1]]' --normalize --stride 2 -o half.png
    """
    if list_only:
        click.echo(_catalogue_text())
        return
    from .. import images
    from ..ops.filters import convolve, resolve_kernel

    if image is None:
        raise UsageError("give an IMAGE to filter (or --list to see the kernels)")
    if not kernel_spec:
        raise UsageError("choose a kernel with --kernel NAME (see --list) or --kernel '[[...]]'")
    if output is None:
        raise UsageError("give the output file with -o OUT.png")
    params = {k: v for k, v in (("sigma", sigma), ("size", size), ("amount", amount))
              if v is not None}
    k = resolve_kernel(kernel_spec, **params)
    pixels = images.decode(image)
    result = convolve(pixels, k, stride=stride, padding=padding, mode="gray" if gray else "rgb",
                      normalize=normalize, flip=flip, progress=progress)
    images.save(result, output)
    click.echo(f"{output}: {result.shape[1]}x{result.shape[0]}, kernel "
               f"{'x'.join(str(d) for d in k.shape[-2:])}")


def _parse_color(text: str) -> tuple[int, int, int]:
    from PIL import ImageColor

    value = text.strip()
    parts = value.split(",")
    if len(parts) == 3:
        try:
            rgb = tuple(int(p) for p in parts)
        except ValueError:
            rgb = None
        if rgb is not None and all(0 <= c <= 255 for c in rgb):
            return rgb  # type: ignore[return-value]
    try:
        color = ImageColor.getrgb(value)
    except ValueError:
        raise UsageError(f"unknown colour {text!r}; use a name (white), #rgb, #rrggbb or "
                         "R,G,B") from None
    return color[:3]


@main.command("transform")
@click.argument("image", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--css", required=True, metavar="TRANSFORM",
              help="a CSS transform value, e.g. 'rotate(30deg) scale(1.2)'")
@click.option("--print-matrix", is_flag=True,
              help="print the 16 DOMMatrix numbers (m11..m44) and the DOMMatrix string; needs "
                   "no image (with one, % and em resolve against its size)")
@click.option("--origin", nargs=2, type=float, metavar="X Y",
              help="transform-origin in image pixels [default: the centre]")
@click.option("--fit", is_flag=True,
              help="grow the canvas to the transformed image instead of keeping its size")
@click.option("--background", default="white", show_default=True, metavar="COLOR",
              help="colour of uncovered pixels: a name, #rrggbb or R,G,B")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the warped image (.png, .jpg or .webp)")
def transform_command(image, css, print_matrix, origin, fit, background, output):
    """Apply a CSS transform to IMAGE the way Chromium draws it, or print its matrix.

    The transform string follows Chromium exactly: functions compose right to left (the
    rightmost acts on a point first), matrix3d() takes its 16 numbers column-major, angles need
    a unit (skewX(1) is invalid; skewX(1rad) is fine), and multiples of 90 degrees are exact.
    The image is the CSS box: % resolves against its size and em is 16px. It turns about
    --origin (default the centre, as CSS does).

    \b
    Examples:
      belka transform --css 'matrix3d(0,-1,0,0, 1,0,0,0, 0,0,1,0, -100,0,0,1)' --print-matrix
      belka transform squirrel.jpg --css 'rotate(30deg)' -o turned.png
      belka transform squirrel.jpg --css 'perspective(500px) rotateY(45deg)' --fit -o 3d.png
      belka transform squirrel.jpg --css 'skewX(20deg)' --origin 0 0 --background black -o skew.png
    """
    from ..ops.transforms import parse_transform, warp

    if print_matrix and image is None:
        _echo_matrix(parse_transform(css))
        return
    if image is None:
        raise UsageError("give an IMAGE to transform (or --print-matrix to see the matrix)")
    if output is None and not print_matrix:
        raise UsageError("give the output file with -o OUT.png")
    from .. import images

    fill = _parse_color(background)
    pixels = images.decode(image)
    h, w = pixels.shape[:2]
    matrix = parse_transform(css, resolve_relative=(float(w), float(h), 16.0))
    if print_matrix:  # relative units resolved against the image
        _echo_matrix(matrix)
        if output is None:
            return
    result = warp(pixels, matrix, origin=tuple(origin) if origin else None,
                  output="fit" if fit else "original", background=fill)
    images.save(result, output)
    click.echo(f"{output}: {result.shape[1]}x{result.shape[0]}")


def _echo_matrix(matrix) -> None:
    from ..ops.transforms import format_number

    click.echo(" ".join(format_number(v) for v in matrix.values))
    click.echo(str(matrix))
