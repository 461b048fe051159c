"""CSS transforms the way Chromium evaluates them, and image warps that look like the browser's.

Matrix convention (the DOMMatrix one): a transform is a 4x4 float64 array ``M`` with
``M[i, j] = m{i+1}{j+1}``, so ``M.ravel()`` lists m11, m12, ..., m44, which is also the order of
the ``matrix3d()`` arguments (CSS writes them column-major; m41, m42, m43 are the translation).
A point maps as a row vector, ``[x, y, z, 1] @ M``, then divides by w. In a list of functions
the rightmost is applied to a point first: ``"f g"`` is ``M_g @ M_f``.

:func:`parse_transform` follows ``new DOMMatrix(css)``: lengths must be absolute, unless a box is
given with ``resolve_relative=(width, height, font_size)``, which resolves ``em``/``rem``/``%`` the
way ``getComputedStyle`` does (:func:`computed_transform` also applies its 6-significant-digit
rounding). :func:`warp` and :func:`render_on_page` draw an image through such a matrix with an
inverse-mapped bilinear sampler that matches Chromium's renders to within rounding.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

from ..errors import UsageError

__all__ = [
    "CSSMatrix",
    "TransformError",
    "computed_transform",
    "format_number",
    "page_matrix",
    "parse_transform",
    "render_on_page",
    "sin_cos_degrees",
    "to_computed_string",
    "to_dommatrix_string",
    "warp",
]

Box = tuple[float, float, float]  # width, height, font-size in CSS px


class TransformError(UsageError):
    """A CSS transform string that Chromium would reject (or could not evaluate)."""


# --------------------------------------------------------------------------------------------
# The result type


@dataclass(frozen=True, eq=False)
class CSSMatrix:
    """A parsed transform: ``m`` in DOMMatrix layout (see the module docstring) and ``is2d``."""

    m: np.ndarray = field(repr=False)
    is2d: bool

    @property
    def values(self) -> tuple[float, ...]:
        """The 16 numbers in DOMMatrix order m11, m12, ..., m44."""
        return tuple(float(v) for v in self.m.ravel())

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.m, np.eye(4)))

    def __str__(self) -> str:
        return to_dommatrix_string(self.m, self.is2d)


# --------------------------------------------------------------------------------------------
# Tokenizer (the part of CSS Syntax 3 that transform values use)

_NUMBER = r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?"
_IDENT = r"(?:--|-?[A-Za-z_\u0080-\U0010ffff])[-\w\u0080-\U0010ffff]*"
_TOKEN = re.compile(
    rf"(?P<ws>[ \t\r\n\f]+)|(?P<comment>/\*.*?(?:\*/|\Z))"
    rf"|(?P<num>{_NUMBER})(?:(?P<pct>%)|(?P<unit>{_IDENT}))?"
    rf"|(?P<func>{_IDENT})\(|(?P<ident>{_IDENT})|(?P<delim>.)",
    re.DOTALL,
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # ws, num, dim, pct, func, ident, "(", ")", ",", delim
    text: str
    value: float = 0.0
    unit: str = ""


def _tokenize(css: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    for match in _TOKEN.finditer(css):
        text = match.group()
        if match["comment"] is not None:
            continue
        if match["ws"] is not None:
            if not tokens or tokens[-1].kind != "ws":
                tokens.append(_Tok("ws", " "))
        elif match["num"] is not None:
            value = float(match["num"])
            if match["pct"]:
                tokens.append(_Tok("pct", text, value, "%"))
            elif match["unit"]:
                tokens.append(_Tok("dim", text, value, match["unit"].lower()))
            else:
                tokens.append(_Tok("num", text, value))
        elif match["func"] is not None:
            tokens.append(_Tok("func", text, unit=match["func"].lower()))
        elif match["ident"] is not None:
            tokens.append(_Tok("ident", text, unit=text.lower()))
        else:
            kind = text if text in "()," else "delim"
            tokens.append(_Tok(kind, text))
    return tokens


@dataclass
class _Block:
    """A function call: its name (lower case), its source text and its argument components."""

    name: str
    text: str
    args: list[_Tok | _Block]


def _read_block(tokens: list[_Tok], i: int) -> tuple[_Block, int]:
    """Read a function starting at tokens[i] (a func token) up to its ')' or the end of input."""
    head = tokens[i]
    args: list[_Tok | _Block] = []
    i += 1
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind == ")":
            i += 1
            break
        if tok.kind == "func":
            inner, i = _read_block(tokens, i)
            args.append(inner)
            continue
        if tok.kind == "(":  # a bare ( ... ) block: keep it as an unnamed function
            inner, i = _read_block(tokens, i)
            inner.name = ""
            args.append(inner)
            continue
        args.append(tok)
        i += 1
    text = head.text + "".join(_text(a) for a in args) + ")"
    return _Block(head.unit, text, args), i


def _text(component: _Tok | _Block) -> str:
    return component.text


# --------------------------------------------------------------------------------------------
# Units

_ABSOLUTE_PX = {
    "px": 1.0, "cm": 96.0 / 2.54, "mm": 96.0 / 25.4, "q": 96.0 / 101.6, "in": 96.0,
    "pt": 96.0 / 72.0, "pc": 16.0,
}
_FONT_RELATIVE = {"em", "rem"}
_OTHER_RELATIVE = {
    "ex", "ch", "cap", "ic", "lh", "rlh", "rex", "rch", "rcap", "ric", "vw", "vh", "vi", "vb",
    "vmin", "vmax", "svw", "svh", "lvw", "lvh", "dvw", "dvh", "svmin", "svmax", "lvmin", "lvmax",
    "dvmin", "dvmax", "cqw", "cqh", "cqi", "cqb", "cqmin", "cqmax",
}
_ROOT_FONT_SIZE = 16.0  # CSS initial root font size, used for rem


def _to_degrees(value: float, unit: str) -> float:
    """Blink's conversions to degrees (the order of operations matters to the last bit)."""
    if unit == "deg":
        return value
    if unit == "rad":
        return value * (180.0 / math.pi)
    if unit == "grad":
        return value * 360.0 / 400.0
    if unit == "turn":
        return value * 360.0
    raise KeyError(unit)


_ANGLE_UNITS = ("deg", "rad", "grad", "turn")


# --------------------------------------------------------------------------------------------
# Values: numbers, lengths, angles, and calc()/min()/max()/clamp() over them


class _Evaluator:
    """Evaluates argument components to floats in px / degrees / plain numbers."""

    def __init__(self, css: str, fn: str, box: Box | None):
        self.css = css
        self.fn = fn
        self.box = box

    # errors ----------------------------------------------------------------------------------

    def fail(self, detail: str) -> TransformError:
        return TransformError(f"invalid CSS transform {self.css!r}: {self.fn}(): {detail}")

    def relative(self, token: str, what: str) -> TransformError:
        return TransformError(
            f"cannot build a matrix from {self.css!r}: values must be resolvable at parse time, "
            f"and {token!r} is relative to {what}; resolve it against a box "
            "(resolve_relative=(width, height, font_size); the CLI uses the image's size)"
        )

    # typed evaluation --------------------------------------------------------------------------

    def typed(self, c: _Tok | _Block, basis: float | None, *, top: bool = True
              ) -> tuple[str, float]:
        """(kind, value): kind is number, length (px), angle (deg) or percent."""
        if isinstance(c, _Block):
            if top and not c.name:
                raise self.fail(f"unexpected parentheses {c.text!r} (use calc())")
            return self.math(c, basis)
        if c.kind == "num":
            return "number", c.value
        if c.kind == "pct":
            return "percent", c.value
        if c.kind == "dim":
            unit = c.unit
            if unit in _ABSOLUTE_PX:
                return "length", c.value * _ABSOLUTE_PX[unit]
            if unit in _ANGLE_UNITS:
                return "angle", _to_degrees(c.value, unit)
            if unit in _FONT_RELATIVE:
                if self.box is None:
                    raise self.relative(c.text, "the font size")
                size = self.box[2] if unit == "em" else _ROOT_FONT_SIZE
                return "length", c.value * size
            if unit in _OTHER_RELATIVE:
                if self.box is None:
                    raise self.relative(c.text, "the font or the viewport")
                raise TransformError(
                    f"cannot resolve {c.text!r} in {self.css!r}: belka resolves only em, rem and "
                    "% against a box (no font metrics or viewport here)"
                )
            raise self.fail(f"unknown unit in {c.text!r}")
        if c.kind == "ident":
            raise self.fail(f"unexpected keyword {c.text!r}")
        raise self.fail(f"unexpected {c.text!r}")

    def math(self, block: _Block, basis: float | None) -> tuple[str, float]:
        if block.name in ("calc", ""):
            parts = _split_commas(block.args)
            if len(parts) != 1:
                raise self.fail(f"{block.text!r} takes one expression")
            return self.sum(parts[0], block, basis)
        if block.name in ("min", "max", "clamp"):
            parts = _split_commas(block.args)
            if any(not p for p in parts) or (block.name == "clamp" and len(parts) != 3):
                raise self.fail(f"bad arguments in {block.text!r}")
            values = [self.sum(p, block, basis) for p in parts]
            if len({k for k, _ in values}) > 1:  # percentages among lengths become lengths
                values = [self.as_length(v, basis, block.text) for v in values]
            if len({k for k, _ in values}) != 1:
                raise self.fail(f"{block.text!r} mixes incompatible types")
            numbers = [v for _, v in values]
            if block.name == "min":
                result = min(numbers)
            elif block.name == "max":
                result = max(numbers)
            else:
                result = max(numbers[0], min(numbers[1], numbers[2]))
            return values[0][0], result
        raise self.fail(f"{block.name}() is not allowed here")

    def sum(self, items: list[_Tok | _Block], block: _Block, basis: float | None
            ) -> tuple[str, float]:
        """calc() grammar: product (('+'|'-') product)*, with whitespace around + and -."""
        terms: list[list[_Tok | _Block]] = [[]]
        signs = [1.0]
        seq = list(items)
        i = 0
        while i < len(seq):
            c = seq[i]
            if isinstance(c, _Tok) and c.kind == "delim" and c.text in "+-":
                if not (0 < i < len(seq) - 1 and _is_ws(seq[i - 1]) and _is_ws(seq[i + 1])):
                    raise self.fail(f"'{c.text}' in {block.text!r} needs whitespace on both sides")
                terms.append([])
                signs.append(1.0 if c.text == "+" else -1.0)
            elif not _is_ws(c):
                terms[-1].append(c)
            i += 1
        kind, total = None, 0.0
        for sign, term in zip(signs, terms, strict=True):
            if not term:
                raise self.fail(f"incomplete expression {block.text!r}")
            k, v = self.product(term, block, basis)
            if kind is None:
                kind = k
            elif k != kind:
                if {k, kind} == {"length", "percent"}:
                    total = self.as_length((kind, total), basis, block.text)[1]
                    v = self.as_length((k, v), basis, block.text)[1]
                    kind = k = "length"
                else:
                    raise self.fail(f"cannot add {kind} and {k} in {block.text!r}")
            total += sign * v
        assert kind is not None
        return kind, total

    def product(self, items: list[_Tok | _Block], block: _Block, basis: float | None
                ) -> tuple[str, float]:
        kind, value = self.typed(items[0], basis, top=False)
        i = 1
        while i < len(items):
            op = items[i]
            if not (isinstance(op, _Tok) and op.kind == "delim" and op.text in "*/"):
                raise self.fail(f"expected an operator before {_text(op)!r} in {block.text!r}")
            if i + 1 >= len(items):
                raise self.fail(f"incomplete expression {block.text!r}")
            k2, v2 = self.typed(items[i + 1], basis, top=False)
            if op.text == "*":
                if kind == "number":
                    kind, value = k2, value * v2
                elif k2 == "number":
                    value *= v2
                else:
                    raise self.fail(f"cannot multiply {kind} by {k2} in {block.text!r}")
            else:
                if k2 != "number":
                    raise self.fail(f"cannot divide by a {k2} in {block.text!r}")
                if v2 == 0:
                    raise self.fail(f"division by zero in {block.text!r}")
                value /= v2
            i += 2
        return kind, value

    def as_length(self, typed: tuple[str, float], basis: float | None, text: str
                  ) -> tuple[str, float]:
        kind, value = typed
        if kind != "percent":
            return kind, value
        if basis is None:
            raise self.fail(f"a percentage is not allowed in {text!r}")
        if self.box is None:
            raise self.relative(text, "the size of the box")
        return "length", basis * value / 100.0

    # one argument of a given type --------------------------------------------------------------

    def number(self, c: _Tok | _Block) -> float:
        kind, value = self.typed(c, None)
        if kind != "number":
            raise self.fail(f"expected a number, got {_text(c)!r}")
        return value

    def number_or_percent(self, c: _Tok | _Block) -> float:
        kind, value = self.typed(c, None)
        if kind == "percent":
            return value / 100.0
        if kind != "number":
            raise self.fail(f"expected a number or a percentage, got {_text(c)!r}")
        return value

    def angle(self, c: _Tok | _Block) -> float:
        kind, value = self.typed(c, None)
        if kind == "number" and value == 0 and isinstance(c, _Tok):
            return 0.0  # unitless zero is allowed for angles in transform functions
        if kind != "angle":
            raise self.fail(
                f"{_text(c)!r} is not an angle; give it a unit (deg, rad, grad or turn), "
                f"e.g. {self.fn}({_text(c)}deg)"
            )
        return value

    def length(self, c: _Tok | _Block, basis: float | None = None) -> float:
        """A length (or length-percentage when ``basis`` is given) in px."""
        kind, value = self.typed(c, basis)
        if kind == "number" and value == 0 and isinstance(c, _Tok):
            return 0.0  # unitless zero is a length
        if kind == "percent":
            if basis is None:
                raise self.fail(f"{_text(c)!r}: a percentage is not allowed here")
            kind, value = self.as_length((kind, value), basis, _text(c))
        if kind != "length":
            raise self.fail(f"expected a length such as 10px, got {_text(c)!r}")
        return value


def _split_commas(items: list[_Tok | _Block]) -> list[list[_Tok | _Block]]:
    parts: list[list[_Tok | _Block]] = [[]]
    for c in items:
        if isinstance(c, _Tok) and c.kind == ",":
            parts.append([])
        else:
            parts[-1].append(c)
    return [_strip_ws(p) for p in parts]


def _is_ws(c: _Tok | _Block) -> bool:
    return isinstance(c, _Tok) and c.kind == "ws"


def _strip_ws(items: list[_Tok | _Block]) -> list[_Tok | _Block]:
    start, end = 0, len(items)
    while start < end and _is_ws(items[start]):
        start += 1
    while end > start and _is_ws(items[end - 1]):
        end -= 1
    return items[start:end]


# --------------------------------------------------------------------------------------------
# Matrices of the individual functions (DOMMatrix layout, row vectors)


def sin_cos_degrees(degrees: float) -> tuple[float, float]:
    """sin and cos of an angle in degrees, as Chromium computes them.

    The angle is range-reduced by octants to [0, 45] degrees before calling sin/cos, so multiples
    of 45 degrees come out exact (0, +-1, +-sqrt(2)/2) and, e.g., rotate(30deg) rotate(60deg)
    composes to exactly 0/1.
    """
    if not -9e7 < degrees < 9e7:
        rad = math.fmod(degrees, 360.0) * math.pi / 180.0
        return math.sin(rad), math.cos(rad)
    eighths = degrees / 45.0
    octant = int(eighths)  # truncates towards zero, like a C cast
    if octant == eighths:
        h = math.sqrt(2.0) / 2.0
        table = ((0.0, 1.0), (h, h), (1.0, 0.0), (h, -h), (0.0, -1.0), (-h, -h), (-1.0, 0.0),
                 (-h, h))
        return table[octant & 7]
    if degrees < 0:
        octant -= 1
    reduced = degrees - octant * 45.0
    if octant & 1:
        reduced = 45.0 - reduced
    rad = reduced * math.pi / 180.0
    s, c = math.sin(rad), math.cos(rad)
    if (octant + 1) & 2:
        s, c = c, s
    if octant & 4:
        s = -s
    if (octant + 2) & 4:
        c = -c
    return s, c


def _identity() -> list[list[float]]:
    return [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]


def _translate(tx: float, ty: float, tz: float) -> list[list[float]]:
    m = _identity()
    m[3][0], m[3][1], m[3][2] = tx, ty, tz
    return m


def _scale(sx: float, sy: float, sz: float) -> list[list[float]]:
    m = _identity()
    m[0][0], m[1][1], m[2][2] = sx, sy, sz
    return m


def _rotate(x: float, y: float, z: float, degrees: float) -> list[list[float]]:
    """Rotation about the axis (x, y, z); the identity for a zero axis."""
    m = _identity()
    square = x * x + y * y + z * z
    if square == 0:
        return m
    if square != 1:
        scale = 1.0 / math.sqrt(square)
        x, y, z = x * scale, y * scale, z * scale
    s, c = sin_cos_degrees(degrees)
    if (x, y, z) == (0.0, 0.0, 1.0):
        m[0][0], m[0][1], m[1][0], m[1][1] = c, s, -s, c
        return m
    if (x, y, z) == (1.0, 0.0, 0.0):
        m[1][1], m[1][2], m[2][1], m[2][2] = c, s, -s, c
        return m
    if (x, y, z) == (0.0, 1.0, 0.0):
        m[0][0], m[0][2], m[2][0], m[2][2] = c, -s, s, c
        return m
    k = 1.0 - c
    # Column-vector rotation R = cI + (1-c) u u^T + s [u]x, stored transposed (row vectors).
    m[0][0], m[1][0], m[2][0] = c + x * x * k, x * y * k - z * s, x * z * k + y * s
    m[0][1], m[1][1], m[2][1] = y * x * k + z * s, c + y * y * k, y * z * k - x * s
    m[0][2], m[1][2], m[2][2] = z * x * k - y * s, z * y * k + x * s, c + z * z * k
    return m


def _skew(ax_degrees: float, ay_degrees: float) -> list[list[float]]:
    m = _identity()
    m[1][0] = math.tan(ax_degrees * math.pi / 180.0)
    m[0][1] = math.tan(ay_degrees * math.pi / 180.0)
    return m


def _perspective(depth: float | None) -> list[list[float]]:
    m = _identity()
    if depth is not None:
        m[2][3] = -1.0 / max(depth, 1.0)  # depths under 1px are used as 1px (perspective(0))
    return m


def _matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    """Plain 4x4 product summed left to right (no BLAS/FMA), so exact zeros stay exact."""
    return [[a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j] + a[i][3] * b[3][j]
             for j in range(4)] for i in range(4)]


def _f32(value: float) -> float:
    """Blink keeps translate x/y as single-precision ``Length`` values."""
    return float(np.float32(value))


_FUNCTIONS = (
    "matrix", "matrix3d", "translate", "translatex", "translatey", "translatez", "translate3d",
    "scale", "scalex", "scaley", "scalez", "scale3d", "rotate", "rotatex", "rotatey", "rotatez",
    "rotate3d", "skew", "skewx", "skewy", "perspective",
)
_3D_FUNCTIONS = frozenset({
    "matrix3d", "translatez", "translate3d", "scalez", "scale3d", "rotatex", "rotatey", "rotate3d",
    "perspective",
})
_CSS_WIDE = frozenset({"initial", "inherit", "unset", "revert", "revert-layer"})
_PRETTY = {name: name for name in _FUNCTIONS} | {
    "translatex": "translateX", "translatey": "translateY", "translatez": "translateZ",
    "scalex": "scaleX", "scaley": "scaleY", "scalez": "scaleZ", "rotatex": "rotateX",
    "rotatey": "rotateY", "rotatez": "rotateZ", "skewx": "skewX", "skewy": "skewY",
}


def _function_matrix(block: _Block, css: str, box: Box | None) -> list[list[float]]:
    name = block.name
    ev = _Evaluator(css, _PRETTY.get(name, name), box)
    args = _split_commas(block.args)
    if args == [[]]:
        args = []
    for arg in args:
        if not arg:
            raise ev.fail("empty argument (a stray comma?)")
        if len(arg) > 1:
            bad = next(c for c in arg[1:] if not _is_ws(c))
            raise ev.fail(f"expected ',' between arguments, got {_text(bad)!r}")
    values = [a[0] for a in args]
    width, height = (box[0], box[1]) if box is not None else (None, None)

    def need(*counts: int) -> None:
        if len(values) not in counts:
            want = " or ".join(str(n) for n in counts)
            plural = "" if counts == (1,) else "s"
            raise ev.fail(f"takes {want} argument{plural}, got {len(values)}")

    # A None basis forbids percentages; 0.0 stands in when there is no box (error raised later).
    def basis(size: float | None) -> float:
        return 0.0 if size is None else size

    if name == "matrix":
        need(6)
        a, b, c, d, e, f = (ev.number(v) for v in values)
        return [[a, b, 0.0, 0.0], [c, d, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [e, f, 0.0, 1.0]]
    if name == "matrix3d":
        need(16)
        flat = [ev.number(v) for v in values]
        return [flat[0:4], flat[4:8], flat[8:12], flat[12:16]]
    if name in ("translate", "translatex", "translatey"):
        need(1, 2) if name == "translate" else need(1)
        if name == "translatey":
            return _translate(0.0, _f32(ev.length(values[0], basis(height))), 0.0)
        tx = _f32(ev.length(values[0], basis(width)))
        ty = _f32(ev.length(values[1], basis(height))) if len(values) == 2 else 0.0
        return _translate(tx, ty, 0.0)
    if name == "translatez":
        need(1)
        return _translate(0.0, 0.0, ev.length(values[0]))
    if name == "translate3d":
        need(3)
        return _translate(_f32(ev.length(values[0], basis(width))),
                          _f32(ev.length(values[1], basis(height))), ev.length(values[2]))
    if name in ("scale", "scalex", "scaley", "scalez", "scale3d"):
        need(1, 2) if name == "scale" else need(3) if name == "scale3d" else need(1)
        s = [ev.number_or_percent(v) for v in values]
        if name == "scale":
            return _scale(s[0], s[1] if len(s) == 2 else s[0], 1.0)
        if name == "scale3d":
            return _scale(*s)
        axis = "xyz".index(name[-1])
        factors = [1.0, 1.0, 1.0]
        factors[axis] = s[0]
        return _scale(*factors)
    if name in ("rotate", "rotatez", "rotatex", "rotatey"):
        need(1)
        axis = {"rotate": (0.0, 0.0, 1.0), "rotatez": (0.0, 0.0, 1.0), "rotatex": (1.0, 0.0, 0.0),
                "rotatey": (0.0, 1.0, 0.0)}[name]
        return _rotate(*axis, ev.angle(values[0]))
    if name == "rotate3d":
        need(4)
        x, y, z = (ev.number(v) for v in values[:3])
        return _rotate(x, y, z, ev.angle(values[3]))
    if name in ("skew", "skewx", "skewy"):
        need(1, 2) if name == "skew" else need(1)
        angles = [ev.angle(v) for v in values]
        if name == "skewy":
            return _skew(0.0, angles[0])
        return _skew(angles[0], angles[1] if len(angles) == 2 else 0.0)
    if name == "perspective":
        need(1)
        v = values[0]
        if isinstance(v, _Tok) and v.kind == "ident" and v.unit == "none":
            if box is None:
                raise TransformError(
                    f"cannot build a DOMMatrix from {css!r}: Chromium's new DOMMatrix() never "
                    "returns for perspective(none); its computed style is the identity (resolve "
                    "against a box, or use computed_transform)")
            return _perspective(None)
        depth = ev.length(v)
        if depth < 0:
            raise ev.fail(f"the depth must not be negative, got {_text(v)!r}")
        return _perspective(depth)
    raise AssertionError(name)


# --------------------------------------------------------------------------------------------
# Parsing


def _syntax_error(css: str, detail: str) -> TransformError:
    return TransformError(f"invalid CSS transform {css!r}: {detail}")


def _functions(css: str) -> list[_Block] | None:
    """The function blocks of a transform list; [] for none/empty; None for a CSS-wide keyword."""
    tokens = _tokenize(css)
    significant = [t for t in tokens if t.kind != "ws"]
    if not significant:
        return []
    if len(significant) == 1 and significant[0].kind == "ident":
        word = significant[0].unit
        if word == "none":
            return []
        if word in _CSS_WIDE:
            return None
    blocks: list[_Block] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind == "ws":
            i += 1
            continue
        if tok.kind != "func":
            if tok.kind == "ident" and tok.unit == "none":
                raise _syntax_error(css, "'none' cannot be combined with transform functions")
            if tok.kind == "," and blocks:
                raise _syntax_error(
                    css, f"unexpected ',' after {blocks[-1].text}; separate transform functions "
                         "with spaces, not commas")
            if tok.kind == "ident" and tok.unit in _FUNCTIONS:
                raise _syntax_error(css, f"{tok.text!r} must be followed by '(' with no space "
                                         "in between")
            if tok.kind == "ident":
                hint = _suggest(tok.unit)
                raise _syntax_error(css, f"expected a transform function, got {tok.text!r}"
                                         + (f" (did you mean {hint}()?)" if hint else ""))
            raise _syntax_error(css, f"expected a transform function, got {tok.text!r}")
        if tok.unit not in _FUNCTIONS:
            hint = _suggest(tok.unit)
            raise _syntax_error(css, f"unknown transform function {tok.text[:-1]!r}"
                                     + (f"; did you mean {hint}()?" if hint else ""))
        block, i = _read_block(tokens, i)  # an unclosed ( is closed by the end of the input
        blocks.append(block)
    return blocks


def _suggest(name: str) -> str | None:
    close = difflib.get_close_matches(name.lower(), _FUNCTIONS, n=1)
    return _PRETTY[close[0]] if close else None


def parse_transform(css: str, *, resolve_relative: Box | None = None) -> CSSMatrix:
    """Parse a CSS ``transform`` value into a :class:`CSSMatrix`, like ``new DOMMatrix(css)``.

    ``none`` and ``""`` give the identity. ``perspective(none)`` is the identity when a box is
    given (what the computed style shows) and raises otherwise (Chromium's DOMMatrix constructor
    never returns on it). Without
    ``resolve_relative`` relative lengths (em, %, ...) raise :class:`TransformError` ("values must
    be resolvable at parse time"); with ``(width, height, font_size)`` they are resolved against
    that box (``%`` of width for x, of height for y; ``em`` = font size, ``rem`` = 16px).
    ``is2d`` follows DOMMatrix: false as soon as any 3D function or ``matrix3d`` is used.
    Anything Chromium rejects raises :class:`TransformError` naming the offending token.
    """
    if not isinstance(css, str):
        raise TypeError(f"css must be a string, got {type(css).__name__}")
    blocks = _functions(css)
    if blocks is None:
        raise _syntax_error(css, "a CSS-wide keyword has no matrix")
    m = _identity()
    is2d = True
    for block in blocks:
        step = _function_matrix(block, css, resolve_relative)
        m = _matmul(step, m)  # row vectors: the new (right-hand) function acts first
        is2d = is2d and block.name not in _3D_FUNCTIONS
    return CSSMatrix(np.array(m, dtype=np.float64), is2d)


def computed_transform(css: str, box: tuple[float, float] = (200.0, 150.0),
                       font_size: float = 16.0) -> CSSMatrix:
    """``new DOMMatrix(getComputedStyle(el).transform)`` for an element of size ``box``.

    Relative units are resolved against the box, every value is rounded to 6 significant digits
    (the computed string's precision) and ``is2d`` is true whenever the result is 2D-representable.
    ``none``, ``""`` and CSS-wide keywords compute to the identity.
    """
    blocks = _functions(css)
    if blocks is None:
        return CSSMatrix(np.eye(4), True)
    exact = parse_transform(css, resolve_relative=(box[0], box[1], font_size))
    rounded = np.array([float(f"{v:.6g}") for v in exact.values]).reshape(4, 4)
    return CSSMatrix(rounded, _is_2d_representable(rounded))


def _is_2d_representable(m: np.ndarray) -> bool:
    off = (m[0, 2], m[0, 3], m[1, 2], m[1, 3], m[2, 0], m[2, 1], m[2, 3], m[3, 2])
    return all(v == 0 for v in off) and m[2, 2] == 1 and m[3, 3] == 1


# --------------------------------------------------------------------------------------------
# Serialisation


def _as_matrix(m: np.ndarray | Sequence[float]) -> np.ndarray:
    arr = np.asarray(m, dtype=np.float64)
    if arr.shape == (16,):
        arr = arr.reshape(4, 4)
    if arr.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix or 16 values, got shape {arr.shape}")
    return arr


def format_number(value: float) -> str:
    """A number as DOMMatrix.toString() prints it: the shortest digits that round-trip, written
    out without an exponent (0.000002653589793079694), and -0 as 0."""
    if value == 0:
        return "0"
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def to_dommatrix_string(m: np.ndarray | Sequence[float], is2d: bool) -> str:
    """``DOMMatrix.toString()``: ``matrix(a, b, c, d, e, f)`` if ``is2d`` else ``matrix3d(...)``.

    ``m`` is a 4x4 matrix in DOMMatrix layout or the 16 values in m11..m44 order.
    """
    arr = _as_matrix(m)
    if not np.all(np.isfinite(arr)):
        raise UsageError("a matrix with NaN or infinite values cannot be serialized")
    flat = arr.ravel()
    values = [flat[i] for i in (0, 1, 4, 5, 12, 13)] if is2d else list(flat)
    name = "matrix" if is2d else "matrix3d"
    return f"{name}({', '.join(format_number(v) for v in values)})"


def to_computed_string(m: np.ndarray | Sequence[float]) -> str:
    """``getComputedStyle(el).transform`` for a matrix: 6 significant digits, ``matrix()``
    whenever the matrix is 2D-representable, else ``matrix3d()``."""
    arr = _as_matrix(m)
    flat = [float(f"{v:.6g}") for v in arr.ravel()]
    rounded = np.array(flat).reshape(4, 4)
    values = [flat[i] for i in (0, 1, 4, 5, 12, 13)] if _is_2d_representable(rounded) else flat
    name = "matrix" if len(values) == 6 else "matrix3d"
    return f"{name}({', '.join(f'{v + 0.0:.6g}' for v in values)})"


# --------------------------------------------------------------------------------------------
# Warping


def _translation(tx: float, ty: float) -> np.ndarray:
    m = np.eye(4)
    m[3, 0], m[3, 1] = tx, ty
    return m


def page_matrix(transform: np.ndarray, box_size: tuple[float, float],
                box_position: tuple[float, float] = (0.0, 0.0),
                origin: tuple[float, float] | None = None) -> np.ndarray:
    """Map box-local px to page px: ``translate(position + origin) . M . translate(-origin)``
    (DOMMatrix notation), returned in DOMMatrix layout. ``origin`` is the transform-origin inside
    the box, by default its centre (CSS ``50% 50%``)."""
    ox, oy = origin if origin is not None else (box_size[0] / 2.0, box_size[1] / 2.0)
    m = _as_matrix(transform)
    return _translation(-ox, -oy) @ m @ _translation(ox + box_position[0], oy + box_position[1])


def _homography(page_m: np.ndarray) -> np.ndarray:
    """The 3x3 column-vector homography (x, y, 1) -> (X', Y', W') for points with z = 0."""
    return page_m[np.ix_([0, 1, 3], [0, 1, 3])].T


def _inverse3(h: np.ndarray) -> np.ndarray | None:
    """Inverse through the adjugate (exact for the integer matrices of 90-degree turns)."""
    a, b, c = h[0]
    d, e, f = h[1]
    g, k, m = h[2]
    adj = np.array([
        [e * m - f * k, c * k - b * m, b * f - c * e],
        [f * g - d * m, a * m - c * g, c * d - a * f],
        [d * k - e * g, b * g - a * k, a * e - b * d],
    ])
    det = a * adj[0, 0] + b * adj[1, 0] + c * adj[2, 0]
    if det == 0 or not np.isfinite(det):
        return None
    return adj / det


def _background(background: Sequence[float], channels: int) -> np.ndarray:
    values = [float(v) for v in background]
    if len(values) == 3 and channels == 4:
        values.append(255.0)
    if channels == 1 and len(values) == 3:
        values = [0.299 * values[0] + 0.587 * values[1] + 0.114 * values[2]]
    if len(values) != channels:
        raise UsageError(f"background has {len(values)} values but the image has {channels} "
                         "channels")
    return np.array(values)


def _edges(page_m: np.ndarray, w: int, h: int) -> np.ndarray | None:
    """The image outline in output px as 4 lines (a, b, c), a*X + b*Y + c = signed distance,
    positive inside; None when a corner is behind the viewer (then edges are not lines)."""
    corners = np.array([[0, 0, 0, 1], [w, 0, 0, 1], [w, h, 0, 1], [0, h, 0, 1]], float) @ page_m
    if np.any(corners[:, 3] <= 0):
        return None
    pts = corners[:, :2] / corners[:, 3:4]
    nxt = np.roll(pts, -1, axis=0)
    area = np.sum(pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1])
    if area == 0:
        return None
    d = nxt - pts
    length = np.hypot(d[:, 0], d[:, 1])
    if np.any(length == 0):
        return None
    sign = 1.0 if area > 0 else -1.0
    a, b = -d[:, 1] * sign / length, d[:, 0] * sign / length
    return np.stack([a, b, -(a * pts[:, 0] + b * pts[:, 1])], axis=1)


def _sample(image: np.ndarray, page_m: np.ndarray, out_size: tuple[int, int],
            background: Sequence[float], *, antialias: bool = True, as_float: bool = False,
            rows_per_chunk: int = 256) -> np.ndarray:
    """Inverse-mapped bilinear warp: each output pixel centre goes through the inverse
    homography (perspective divide included) and samples the image with texel centres at
    i + 0.5 and clamped edges. Points outside the image or behind the viewer (w <= 0) get
    ``background``. With ``antialias`` the pixels the image outline crosses are blended with
    the background by their approximate coverage, as the browser does."""
    squeeze = image.ndim == 2
    src = image[:, :, None] if squeeze else image
    h, w, channels = src.shape
    out_w, out_h = out_size
    fill = _background(background, channels)
    out = np.empty((out_h, out_w, channels), dtype=np.float32 if as_float else np.uint8)
    out[:] = fill if as_float else np.clip(np.rint(fill), 0, 255).astype(np.uint8)
    inverse = _inverse3(_homography(page_m))
    if inverse is None or h == 0 or w == 0:
        return out[:, :, 0] if squeeze else out
    edges = _edges(page_m, w, h) if antialias else None
    srcf = src.astype(np.float32)
    xs = np.arange(out_w, dtype=np.float64) + 0.5
    for y0 in range(0, out_h, rows_per_chunk):
        ys = np.arange(y0, min(out_h, y0 + rows_per_chunk), dtype=np.float64)[:, None] + 0.5
        vx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
        vy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
        vw = inverse[2, 0] * xs + inverse[2, 1] * ys + inverse[2, 2]
        ahead = vw > 0  # forward w = 1 / vw: only points in front of the viewer are drawn
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(ahead, vx / np.where(ahead, vw, 1.0), -1.0)
            y = np.where(ahead, vy / np.where(ahead, vw, 1.0), -1.0)
        if edges is None:
            inside = ahead & (x >= 0) & (x < w) & (y >= 0) & (y < h)
            coverage = None
        else:
            cover = np.ones(vx.shape)
            for a, b, c in edges:
                cover *= np.clip(a * xs + b * ys + c + 0.5, 0.0, 1.0)
            inside = ahead & (cover > 0)
            coverage = cover[inside][:, None]
        if not inside.any():
            continue
        x, y = x[inside] - 0.5, y[inside] - 0.5
        x0, y0f = np.floor(x), np.floor(y)
        fx, fy = (x - x0)[:, None], (y - y0f)[:, None]
        xa = np.clip(x0, 0, w - 1).astype(np.intp)
        xb = np.clip(x0 + 1, 0, w - 1).astype(np.intp)
        ya = np.clip(y0f, 0, h - 1).astype(np.intp)
        yb = np.clip(y0f + 1, 0, h - 1).astype(np.intp)
        value = ((1 - fy) * ((1 - fx) * srcf[ya, xa] + fx * srcf[ya, xb])
                 + fy * ((1 - fx) * srcf[yb, xa] + fx * srcf[yb, xb]))
        if coverage is not None:
            value = coverage * value + (1 - coverage) * fill
        band = out[y0:y0 + ys.shape[0]]
        band[inside] = value if as_float else np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return out[:, :, 0] if squeeze else out


def _matrix_for(image: np.ndarray, transform: str | CSSMatrix | np.ndarray | Sequence[float],
                font_size: float = 16.0) -> np.ndarray:
    if isinstance(transform, str):
        h, w = image.shape[:2]
        return parse_transform(transform, resolve_relative=(float(w), float(h), font_size)).m
    if isinstance(transform, CSSMatrix):
        return transform.m
    return _as_matrix(transform)


def render_on_page(image: np.ndarray, transform: str | CSSMatrix | np.ndarray,
                   page_size: tuple[int, int], box_position: tuple[float, float], *,
                   origin: tuple[float, float] | None = None,
                   background: Sequence[float] = (255, 255, 255), antialias: bool = True,
                   as_float: bool = False) -> np.ndarray:
    """Draw ``image`` as an ``<img>`` box at ``box_position`` (left, top) on a page of
    ``page_size`` (width, height) filled with ``background``, with the CSS ``transform`` applied
    about ``origin`` (box-local px; default the box centre), as Chromium paints it.

    ``antialias`` blends the pixels the outline crosses with the background; ``as_float``
    returns unrounded float32 values instead of uint8."""
    h, w = image.shape[:2]
    page_m = page_matrix(_matrix_for(image, transform), (w, h), box_position, origin)
    return _sample(image, page_m, page_size, background, antialias=antialias, as_float=as_float)


def warp(image: np.ndarray, transform: str | CSSMatrix | np.ndarray | Sequence[float], *,
         origin: tuple[float, float] | None = None, output: str = "original",
         background: Sequence[float] = (255, 255, 255), antialias: bool = True,
         as_float: bool = False, max_pixels: int = 100_000_000) -> np.ndarray:
    """Warp an H x W (x C) uint8 image through a CSS transform.

    ``transform`` is a CSS string (relative units resolve against the image: % of its size,
    em = 16px), a :class:`CSSMatrix`, or a 4x4 DOMMatrix-layout matrix / 16 values.
    ``origin`` is the transform-origin in image px (default the centre). ``output="original"``
    keeps the image's size and place (what a browser shows in a same-size box that clips);
    ``"fit"`` grows or shrinks the canvas to the transformed bounds, whose top-left corner
    becomes the canvas origin (so quarter turns stay pixel-exact).
    Sampling is bilinear at each output pixel centre through the inverse matrix (texel centres at
    i + 0.5, clamped edges); what falls outside the image or behind the viewer (w <= 0) is
    ``background``. ``antialias`` and ``as_float`` are as in :func:`render_on_page`.
    """
    if output not in ("original", "fit"):
        raise UsageError(f"output must be 'original' or 'fit', got {output!r}")
    h, w = image.shape[:2]
    page_m = page_matrix(_matrix_for(image, transform), (w, h), (0.0, 0.0), origin)
    size = (w, h)
    if output == "fit":
        corners = np.array([[0, 0, 0, 1], [w, 0, 0, 1], [0, h, 0, 1], [w, h, 0, 1]], float)
        mapped = corners @ page_m
        if np.any(mapped[:, 3] <= 0):
            raise UsageError("part of the image ends up behind the viewer (w <= 0), so it has "
                             "no bounds to fit; use the original canvas instead of --fit")
        pts = mapped[:, :2] / mapped[:, 3:4]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        lo = np.where(np.abs(lo - np.round(lo)) < 1e-9, np.round(lo), lo)  # float noise
        left, top = lo
        width, height = np.ceil(hi - lo - 1e-9)
        size = (max(1, int(width)), max(1, int(height)))
        if size[0] * size[1] > max_pixels:
            raise UsageError(f"the fitted canvas would be {size[0]}x{size[1]} pixels; that is "
                             "too large (use the original canvas)")
        page_m = page_m @ _translation(-left, -top)
    return _sample(image, page_m, size, background, antialias=antialias, as_float=as_float)
