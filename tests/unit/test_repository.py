"""The repository explains itself and keeps its house style: checks over the tracked files."""

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# A function may run longer than this when a comment beside its `def` says why ("long: ...").
MAX_FUNCTION_LINES = 60


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return [REPO / line for line in out.splitlines() if (REPO / line).is_file()]


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|(?<![\w/])(PAPER|ENVIRONMENT)\.md")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in tracked()
        if path.suffix not in (".png", ".parquet", ".pt")
        for n, line in enumerate(path.read_text(errors="ignore").splitlines(), 1)
        if outside.search(line)
    ]
    assert not offenders, f"references to files outside the repository: {offenders}"


def test_docs_the_code_cites_exist():
    cited = set()
    for path in tracked("*.py", "*.md", "Makefile", "cluster/*"):
        cited.update(re.findall(r"docs/[\w.-]+\.md", path.read_text(errors="ignore")))
    missing = sorted(c for c in cited if not (REPO / c).is_file())
    assert not missing, f"cited but absent: {missing}"


def test_functions_in_fcn_and_jobs_are_short_or_say_why():
    long = []
    for path in tracked("fcn/*.py", "fcn/**/*.py", "jobs/*.py"):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                reason = "long:" in " ".join(lines[max(0, node.lineno - 3) : node.lineno + 1])
                if length > MAX_FUNCTION_LINES and not reason:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a reason: {long}"


# A module may run longer than this when its docstring says why ("Long module: ...").
MAX_MODULE_LINES = 400


def test_modules_in_fcn_and_jobs_are_short_or_say_why():
    long = []
    for path in tracked("fcn/*.py", "fcn/**/*.py", "jobs/*.py"):
        source = path.read_text()
        length = len(source.splitlines())
        reason = "Long module:" in (ast.get_docstring(ast.parse(source)) or "")
        if length > MAX_MODULE_LINES and not reason:
            long.append(f"{path.relative_to(REPO)} ({length})")
    assert not long, f"modules over {MAX_MODULE_LINES} lines without a reason: {long}"
