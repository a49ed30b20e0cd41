"""The shape of the code base, checked statically (imports parsed with ast, nothing imported).

Five packages, dependencies pointing one way: the core (``edgeface``) imports none of the others;
``converters``, ``device`` and ``benchmarks`` import the core (the converters also ``calibration_data``), never
each other; and no module imports itself back through others (no import cycles, lazy imports included).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# source folder -> import name (setup.cfg package_dir)
PACKAGES = {"edgeface": "edgeface", "converters": "edgeface.converters",
            "calibration_data": "edgeface.calibration_data", "device": "edgeface.device",
            "benchmarks": "edgeface.benchmarks"}
PARTS = ("edgeface.converters", "edgeface.calibration_data", "edgeface.device", "edgeface.benchmarks")
# which parts each part may import besides the core
# (benchmarks measure the door too: they may use the device's public modules, never a _private one, and the
# device never imports benchmarks)
ALLOWED = {"edgeface": set(), "edgeface.converters": {"edgeface.calibration_data"},
           "edgeface.calibration_data": set(), "edgeface.device": set(),
           "edgeface.benchmarks": {"edgeface.device"}}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _part(module: str) -> str:
    return next((p for p in PARTS if module == p or module.startswith(p + ".")), "edgeface")


def _resolve(name: str) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) lives in; None if not ours."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    """Every edgeface module ``module`` imports, at the top or inside functions."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target and target != module:
                found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[frozenset]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def _package_cycle(comp: frozenset) -> bool:
    """A package __init__ re-exporting its own submodules (which import siblings through it) is no cycle
    of design: the re-export is the package's public face."""
    inits = [m for m in comp if _is_package(m)]
    return len(inits) == 1 and all(m.startswith(inits[0] + ".") for m in comp - set(inits))


def test_the_graph_sees_the_code():
    assert {"edgeface.cli", "edgeface.converters.build", "edgeface.device.app", "edgeface.benchmarks.cli",
            "edgeface.calibration_data.builder", "edgeface.converters.prune.pipeline"} <= set(MODULES)
    assert "edgeface.converters.build" in GRAPH["edgeface.converters.commands"]
    assert "edgeface.calibration_data.builder" in GRAPH["edgeface.converters.build"]
    assert "edgeface.errors" in GRAPH["edgeface.device.cli"]


def test_dependencies_point_one_way():
    wrong = []
    for module, targets in GRAPH.items():
        own = _part(module)
        for target in targets:
            other = _part(target)
            if other not in (own, "edgeface") and other not in ALLOWED[own]:
                wrong.append(f"{module} -> {target}")
            elif other not in (own, "edgeface") and any(p.startswith("_") for p in target.split(".")):
                wrong.append(f"{module} -> {target} (a private module)")
    assert not wrong, "imports against the one-way rule:\n" + "\n".join(sorted(wrong))


def test_the_core_imports_no_other_part_even_by_name():
    """Plug-ins are found through entry points (setup.cfg), never by an import or a dotted name in the core."""
    for module, path in MODULES.items():
        if _part(module) == "edgeface":
            text = path.read_text()
            for part in PARTS:
                assert f'"{part}' not in text and f"'{part}" not in text, f"{module} names {part}"


def test_import_graph_has_no_cycles():
    cycles = [c for c in _cycles() if not _package_cycle(c)]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)
