"""No import cycles among the project's own modules, lazy (function-level) imports included.

Every module under gruv_hpc/ is parsed with ast, not
imported: an import inside a function counts as much as one at the top, since it runs too, later
and in an order nobody checks. A cycle is a design fault even when Python happens to resolve it
(the lower layer knows the upper one); the failure prints each cycle, module by module, with the
line of each import.
"""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gruv_hpc"
SOURCES = {PACKAGE: ROOT / "gruv_hpc"}


def module_files(sources: dict[str, Path] = SOURCES) -> dict[str, Path]:
    """Module name -> file, for every .py file of each source tree (symlinks not followed)."""
    mods: dict[str, Path] = {}
    for name, root in sources.items():
        stack = [root]
        while stack:
            d = stack.pop()
            for p in sorted(d.iterdir()):
                if p.is_symlink() or p.name == "__pycache__":
                    continue
                if p.is_dir():
                    stack.append(p)
                elif p.suffix == ".py":
                    parts = p.relative_to(root).with_suffix("").parts
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    mods[".".join((name, *parts))] = p
    return mods


def _is_package(mod: str, mods: dict[str, Path]) -> bool:
    return mod in mods and mods[mod].name == "__init__.py"


def imports_of(mod: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int]]:
    """The project modules that ``mod`` imports, anywhere in its file, with the line of each import.
    ``from pkg import name`` is an import of pkg.name when that is a module, else of pkg."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = mod if _is_package(mod, mods) else mod.rpartition(".")[0]
    out: list[tuple[str, int]] = []

    def own(name: str) -> bool:
        return name == PACKAGE or name.startswith(PACKAGE + ".")

    def nearest(name: str) -> str | None:
        """The longest prefix of a dotted name that is one of our modules."""
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if own(a.name) and (m := nearest(a.name)):
                    out.append((m, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not own(target):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                m = sub if sub in mods else nearest(target)
                if m:
                    out.append((m, node.lineno))
    return [(m, line) for m, line in out if m != mod]


def import_graph(sources: dict[str, Path] = SOURCES) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """module -> {imported module: first line importing it}."""
    mods = module_files(sources)
    graph: dict[str, dict[str, int]] = {}
    for mod, path in mods.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(mod, path, mods):
            edges.setdefault(target, line)
        graph[mod] = edges
    return graph, mods


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), as the
    shortest cycle through its smallest module: enough to name the fault, not every loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth = module count (~60): fine
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in sorted(comps):
        members, start = set(comp), comp[0]
        # breadth-first from start back to start, inside the component
        prev: dict[str, str] = {}
        frontier, seen, found = [start], {start}, None
        while frontier and not found:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if found:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(prev[path[-1]])
        out.append(path[::-1] + [start])
    return out


def describe(cycle: list[str], graph: dict[str, dict[str, int]], mods: dict[str, Path]) -> str:
    def where(m: str) -> str:
        p = mods[m]
        return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
    steps = [f"{a} ({where(a)}:{graph[a][b]}) imports {b}" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def test_no_import_cycles():
    graph, mods = import_graph()
    assert len(mods) > 20 and any(graph.values()), "found no modules or no imports: the scan is broken"
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s) among the project's modules (lazy imports included):\n" + \
        "\n".join(describe(c, graph, mods) for c in found)


def test_cycle_detection_catches_lazy_and_from_imports(tmp_path):
    """The checker itself: a cycle closed by an import inside a function, through `from pkg import
    submodule`, is found; the same tree without that import is clean."""
    pkg = tmp_path / "gruv_hpc"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from gruv_hpc.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\n\ndef f():\n    from gruv_hpc import a\n    return a\n")
    (pkg / "c.py").write_text("from gruv_hpc.sub.b import f\nfrom . import a\n")
    graph, mods = import_graph({PACKAGE: pkg})
    assert graph["gruv_hpc.a"] == {"gruv_hpc.sub.b": 1}
    assert graph["gruv_hpc.c"] == {"gruv_hpc.sub.b": 1, "gruv_hpc.a": 2}
    assert cycles(graph) == [["gruv_hpc.a", "gruv_hpc.sub.b", "gruv_hpc.a"]]
    assert f"{pkg / 'sub' / 'b.py'}:4) imports gruv_hpc.a" in describe(cycles(graph)[0], graph, mods)
    (pkg / "sub" / "b.py").write_text("import os\n")
    graph, _ = import_graph({PACKAGE: pkg})
    assert cycles(graph) == []


# The layers, lowest first: each may import only from the layers before it (and from its own).
# The shared machinery (configs, paths, files, locks, folder swaps, errors, progress, plotting, the job's
# environment) stands on no package; dataset on it alone; training reads datasets; generation
# continues trained runs; analysis reads runs (and generates from them); cluster runs all of them
# as jobs; the applications (the command line, the TensorBoard server) sit on top. Every module
# has a layer: test_every_module_has_a_layer.
LAYERS = [
    {f"{PACKAGE}"} | {f"{PACKAGE}.{m}" for m in ("config", "errors", "fsio", "lock", "paths", "plotting", "progress",
                                                 "jobenv", "swap")},
    {f"{PACKAGE}.dataset"},
    {f"{PACKAGE}.training"},
    {f"{PACKAGE}.generation"},
    {f"{PACKAGE}.analysis"},
    {f"{PACKAGE}.cluster"},
    {f"{PACKAGE}.cli", f"{PACKAGE}.tbserver"},
]
NAMES = "shared < dataset < training < generation < analysis < cluster < apps"


def layer_of(mod: str) -> int | None:
    """The most specific layer entry naming ``mod`` or a package above it (gruv_hpc itself is the
    shared layer only as a module, not as the prefix of every module)."""
    best, depth = None, -1
    for i, layer in enumerate(LAYERS):
        for m in layer:
            if (mod == m or mod.startswith(m + ".")) and m != PACKAGE or mod == m:
                if m.count(".") > depth:
                    best, depth = i, m.count(".")
    return best


def test_every_module_has_a_layer():
    _, mods = import_graph()
    loose = sorted(m for m in mods if layer_of(m) is None)
    assert not loose, f"modules in no layer (add each to LAYERS in {Path(__file__).name}): {', '.join(loose)}"


def test_lower_layers_do_not_import_upper_ones():
    graph, mods = import_graph()
    bad = [f"{a} ({mods[a].relative_to(ROOT)}:{line}) imports {b}"
           for a, edges in sorted(graph.items()) for b, line in edges.items()
           if layer_of(b) > layer_of(a)]
    assert not bad, f"imports from a higher layer ({NAMES}):\n  " + "\n  ".join(bad)


def test_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself: a training module that imports generation is named, with its line."""
    pkg = tmp_path / "gruv_hpc"
    for sub in ("training", "generation"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "generation" / "sample.py").write_text("import os\n")
    (pkg / "training" / "trainer.py").write_text("import os\n\ndef hook():\n    from gruv_hpc.generation import sample\n")
    graph, mods = import_graph({PACKAGE: pkg})
    up = [(a, b) for a, edges in graph.items() for b in edges if layer_of(b) > layer_of(a)]
    assert up == [("gruv_hpc.training.trainer", "gruv_hpc.generation.sample")]
