"""pyproject.toml says what is true: every declared dependency is used, the license is an SPDX expression, and
the Python versions claimed are those the lock is made for."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_distributions() -> set[str]:
    """Distributions whose modules src/ imports (by ``import``/``from`` or a quoted module name), normalised."""
    names: set[str] = set()
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        names |= set(re.findall(r"[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']", text))  # importlib.import_module("x")
    by_module = importlib.metadata.packages_distributions()
    return {re.sub(r"[-_.]+", "-", d).lower() for m in names for d in by_module.get(m, [])}


def test_every_declared_dependency_is_used():
    used = _imported_distributions()
    declared = [re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in _project()["dependencies"]]
    unused = [d for d in declared if re.sub(r"[-_.]+", "-", d).lower() not in used]
    assert not unused, f"declared but never imported: {unused}"


def test_license_and_python_classifiers_match_the_lock():
    project = _project()
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # PEP 639: the expression only
    lock_header = (ROOT / "requirements.lock").read_text().splitlines()[0]
    locked = set(re.findall(r"Python (3\.\d+)", lock_header))
    claimed = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
               if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert claimed and claimed == locked, (claimed, locked)
