"""Every third-party package the product imports (fcn/, jobs/) is declared in pyproject.toml's
dependencies: one that only arrives through another package (matplotlib, pandas and packaging
came with MLflow) disappears the day that package drops it. Dev extras do not count: the
cluster image installs the project without them."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement line (PEP 503)."""
    return re.sub(
        r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)[1]
    ).lower()


def imported_modules(*roots: str) -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for absolute imports anywhere in the files
    (function-level ones too) of `roots`, standard library and fcn left out."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "fcn":
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for module, files in sorted(imported_modules("fcn", "jobs").items()):
        names = {_name(d) for d in distributions.get(module, [])}
        if not names & declared:  # mlflow's module ships in several distributions: any one
            shown = ", ".join(sorted(names)) or "no installed distribution"
            undeclared.append(f"{module} ({shown}; imported by {', '.join(sorted(files))})")
    assert not undeclared, "imported but not in pyproject dependencies: " + "; ".join(undeclared)


def test_the_check_sees_function_level_imports():
    """The plotting imports sit inside functions (no matplotlib cost at import time)."""
    found = imported_modules("fcn")
    assert "matplotlib" in found and "pandas" in found and "packaging" in found
