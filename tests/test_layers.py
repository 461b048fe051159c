"""The package's layers (docs/architecture.md): imports go one way, and there is no import cycle.

Every module under src/belka is parsed with ``ast``: module-level and function-level imports,
relative and absolute. Imports under ``if TYPE_CHECKING:`` are left out (they never run; they
only name types). A package listed as one unit below (an interface or a tool) is one node: its
inner imports are its own business. The heads and models packages are listed module by module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "belka"

# Lowest first. A module may import modules of its own layer or of lower layers, never higher.
# "pkg.*" lists every module of a package on its own; a plain package name is one unit.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["belka.version", "belka.errors", "belka.files", "belka.images", "belka.bursts",
              "belka.sources", "belka.sheets"]),
    ("network", ["belka.models", "belka.models.*", "belka.engine", "belka.inspect",
                 "belka.pipeline", "belka.scan", "belka.features"]),
    ("scores", ["belka.scores"]),
    ("views", ["belka.tiling"]),
    ("decision", ["belka.thresholds", "belka.policy", "belka.gate"]),
    ("heads", ["belka.heads", "belka.heads.*"]),
    ("calibration", ["belka.calibrate"]),
    ("tools", ["belka.explain", "belka.optimize", "belka.ops", "belka.learn"]),
    ("api", ["belka"]),
    ("interfaces", ["belka.bulk", "belka.web", "belka.server", "belka.cli"]),
]

# Deliberate upward imports, each with its reason. Keep this list short.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("belka.models.model", "belka.gate"):
        "Model.check() is the README's one-line gate; it builds a Gate inside the method",
}


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``src`` (a package is its __init__)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(name: str, source: str, known: set[str], is_package: bool) -> list[tuple[str, int]]:
    """(imported belka module, line) for every import in ``source``, at any depth."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def target(module: str, alias: str | None) -> str:
        if alias and f"{module}.{alias}" in known:
            return f"{module}.{alias}"      # `from . import heads` imports the module
        return module

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names
                             if a.name.split(".")[0] == "belka")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                if module.split(".")[0] == "belka":
                    found.extend((target(module, a.name), child.lineno) for a in child.names)
            visit(child)

    visit(ast.parse(source))
    return found


def unit_of(module: str) -> tuple[str, int] | None:
    """(the node a module belongs to, its layer index), or None when no layer lists it."""
    best: tuple[int, str, int] | None = None
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if entry.endswith(".*"):
                package = entry[:-2]
                if module.startswith(package + "."):
                    hit = (len(package) + 1, module, index)
                else:
                    continue
            elif module == entry or (entry != "belka" and module.startswith(entry + ".")):
                hit = (len(entry), entry, index)
            else:
                continue
            if best is None or hit[0] > best[0]:
                best = hit
    return None if best is None else (best[1], best[2])


def import_graph(sources: dict[str, tuple[str, bool]]):
    """{unit: {imported unit: (module, line)}} from {module: (source, is_package)}."""
    known = set(sources)
    graph: dict[str, dict[str, tuple[str, int]]] = {}
    for name, (source, is_package) in sources.items():
        unit = unit_of(name)
        assert unit is not None, f"{name} is in no layer: add it to LAYERS in {__file__}"
        edges = graph.setdefault(unit[0], {})
        for imported, line in imports_of(name, source, known, is_package):
            other = unit_of(imported)
            assert other is not None, f"{name}:{line} imports {imported}, which is in no layer"
            if other[0] != unit[0]:
                edges.setdefault(other[0], (name, line))
    return graph


def layer_violations(graph) -> list[str]:
    layer_name = {unit: LAYERS[unit_of(unit)[1]][0] for unit in graph}
    out = []
    for unit, edges in graph.items():
        for other, (module, line) in edges.items():
            if unit_of(other)[1] > unit_of(unit)[1] and (unit, other) not in EXCEPTIONS:
                out.append(f"{module}:{line} imports {other}: layer {layer_name[unit]!r} is "
                           f"below {LAYERS[unit_of(other)[1]][0]!r}")
    return sorted(out)


def find_cycle(graph) -> list[str] | None:
    """One import cycle (a list of units, first repeated at the end), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = 1
        path.append(unit)
        for other in sorted(graph.get(unit, {})):
            if (unit, other) in EXCEPTIONS:
                continue
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        path.pop()
        state[unit] = 2
        return None

    for unit in sorted(graph):
        if unit not in state:
            cycle = visit(unit)
            if cycle:
                return cycle
    return None


def read_sources(src: Path = SRC) -> dict[str, tuple[str, bool]]:
    return {name: (path.read_text(encoding="utf-8"), path.name == "__init__.py")
            for name, path in module_files(src).items()}


@pytest.fixture(scope="module")
def sources():
    return read_sources()


def test_every_module_has_a_layer(sources):
    missing = [name for name in sources if unit_of(name) is None]
    assert not missing, f"add these modules to LAYERS in tests/test_layers.py: {missing}"


def test_no_import_cycle(sources):
    cycle = find_cycle(import_graph(sources))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_lower_layers_never_import_higher_ones(sources):
    violations = layer_violations(import_graph(sources))
    assert not violations, "\n".join(violations)


def test_exceptions_are_still_needed(sources):
    graph = import_graph(sources)
    stale = [pair for pair in EXCEPTIONS if pair[1] not in graph.get(pair[0], {})]
    assert not stale, f"these exceptions are no longer used, remove them: {stale}"


def test_an_upward_import_inside_a_function_is_caught(sources):
    """The check sees function-level and relative imports: tiling asking heads is refused."""
    changed = dict(sources)
    source, is_package = changed["belka.tiling"]
    changed["belka.tiling"] = (source + "\n\ndef _late():\n    from .heads import Head\n",
                               is_package)
    violations = layer_violations(import_graph(changed))
    assert any(v.startswith("belka.tiling:") and "imports belka.heads" in v for v in violations)
    changed["belka.tiling"] = (source + "\n\ndef _late():\n    import belka.gate\n", is_package)
    assert find_cycle(import_graph(changed)) is not None
