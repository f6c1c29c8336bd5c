"""The layer map of ARCHITECTURE.md holds in the code: every import of an fcn module (at the top
of a file or inside a function: a lazy import is still an import) goes down the map, the two
capabilities never import each other, nothing forms a cycle, and the engine stays free of Ray
and MLflow."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Bottom to top; a module may import its own package and any layer below its own.
LAYERS = (
    ("base", ("fcn.config", "fcn.storage", "fcn.runtime")),
    ("engine", ("fcn.engine",)),
    ("data", ("fcn.data",)),
    ("tracking", ("fcn.tracking",)),
    ("evaluation", ("fcn.evaluation",)),
    ("capabilities", ("fcn.training", "fcn.nightly", "fcn.compare")),
    ("cycle", ("fcn.cycle",)),
    ("facades", ("fcn.models", "fcn.metrics")),
    ("jobs", ("jobs",)),
)
# Third-party packages a layer must not import: the engine is plain PyTorch/NumPy (plus the
# storage clients of fcn.storage, which checkpoints are read through).
FORBIDDEN = {"engine": ("ray", "mlflow"), "data": ("mlflow",)}


def modules() -> dict[str, Path]:
    out = subprocess.run(
        ["git", "ls-files", "fcn", "jobs"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for line in out.splitlines():
        if line.endswith(".py") and (REPO / line).is_file():
            name = line[:-3].replace("/", ".").removesuffix(".__init__")
            found[name] = REPO / line
    return found


def imports(path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(fcn modules, third-party top-level names) that the file at `path` imports anywhere.
    `from fcn.a import b` imports module fcn.a.b when b is a module, else fcn.a."""
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in known
                else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in ("fcn", "jobs"):
                internal.add(name)
            else:
                external.add(top)
    return internal, external


def owner(module: str) -> tuple[int, str]:
    """(layer index, package) of `module`: the package is the layer entry it falls under."""
    for index, (_, packages) in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return index, package
    raise AssertionError(f"{module} is in no layer of the map: add it to ARCHITECTURE.md")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        internal, _ = imports(path, known)
        edges[name] = internal
    return edges


def climbs(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in edges.items():
        if source == "fcn":
            continue
        level, package = owner(source)
        for target in targets:
            if target == "fcn":
                continue
            target_level, target_package = owner(target)
            if target_package == package:
                continue  # inside one package
            if target_level < level and LAYERS[target_level][0] != "facades":
                continue
            bad.append(f"{source} -> {target}")
    return sorted(bad)


def test_every_import_goes_down_the_map(graph):
    bad = climbs(graph)
    assert not bad, f"imports that climb, cross between capabilities or use a facade: {bad}"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back(graph):
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_engine_and_data_stay_free_of_ray_and_mlflow():
    known = modules()
    bad = []
    for name, path in known.items():
        layer = LAYERS[owner(name)[0]][0] if name != "fcn" else None
        _, external = imports(path, known)
        bad += [f"{name} imports {m}" for m in external if m in FORBIDDEN.get(layer, ())]
    assert not bad, bad


def test_the_checker_catches_a_climb_a_crossing_and_a_cycle():
    """The checks above fail on the mistakes they exist for (no check that cannot fail)."""
    assert climbs({"fcn.engine.inference": {"fcn.tracking"}}) == [
        "fcn.engine.inference -> fcn.tracking"
    ]
    assert climbs({"fcn.training.driver": {"fcn.nightly.drift"}}) == [
        "fcn.training.driver -> fcn.nightly.drift"
    ]
    assert climbs({"fcn.nightly.driver": {"fcn.models"}}) == ["fcn.nightly.driver -> fcn.models"]
    assert climbs({"fcn.storage": {"fcn.config"}}) == ["fcn.storage -> fcn.config"]
    assert climbs({"fcn.nightly.plan": {"fcn.tracking", "fcn.nightly.masks"}}) == []
    loop = {"fcn.engine.a": {"fcn.engine.b"}, "fcn.engine.b": {"fcn.engine.a"}}
    assert cycles(loop) == [["fcn.engine.a", "fcn.engine.b"]]


def test_the_map_in_architecture_md_is_the_one_checked():
    text = (REPO / "ARCHITECTURE.md").read_text()
    block = re.search(r"<!-- layers -->\n```\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md lost its layer map (the block after <!-- layers -->)"
    written = []
    for line in block.group(1).splitlines():
        name, _, rest = line.partition(":")
        packages = tuple(re.findall(r"(?:fcn|jobs)[\w.]*", rest.split("--")[0]))
        written.append((name.strip(), packages))
    assert tuple(reversed(written)) == LAYERS
