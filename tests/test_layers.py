"""The layer rule, enforced: each unit imports only the units below it (the README's table)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BASE = {"jetflows", "pipelines.io", "pipelines.errors"}  # the core, files, the user-error type
# unit -> the units it may import (besides itself); a unit is a package or a module
MAY_IMPORT = {
    "jetflows": set(),
    "convae": {"jetflows"},
    "flows": {"jetflows", "convae"},
    "pipelines.io": {"jetflows", "pipelines.errors"},
    "pipelines.errors": set(),
    "pipelines.data": BASE,
    "pipelines.evaluation": BASE | {"convae", "pipelines.data"},
    "pipelines.run": BASE | {"convae", "flows", "pipelines.data", "pipelines.evaluation"},
    "pipelines.experiments": BASE
    | {"convae", "flows", "pipelines.data", "pipelines.evaluation", "pipelines.run"},
    "pipelines.cli": {"*"},  # the command line: any layer, imported lazily (start-up time)
    "pipelines": set(),  # the package's __init__; a new module gets its own row above
}
#: the one exception, by file: ``jetflows.load("top")`` (the shipped models) is what a user
#: types first, so the package's __init__ imports it from above, lazily (`__getattr__`)
FRONT_DOOR = {"jetflows/__init__.py": {"pipelines.run"}}


def _unit(module: str) -> str | None:
    """The unit a dotted module name belongs to (the longest matching prefix), or None."""
    hits = [u for u in MAY_IMPORT if module == u or module.startswith(u + ".")]
    return max(hits, key=len) if hits else None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


FILES = [
    p for pkg in ("jetflows", "convae", "flows", "pipelines") for p in (ROOT / pkg).rglob("*.py")
]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_the_layers_below_it(path):
    unit = _unit(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
    assert unit is not None, f"{path}: not in MAY_IMPORT (add its unit to the table)"
    allowed = MAY_IMPORT[unit] | {unit} | FRONT_DOOR.get(path.relative_to(ROOT).as_posix(), set())
    used = {_unit(name) for name in _imports(path)} - {None, "pipelines"}
    bad = {u for u in used if u not in allowed and "*" not in allowed}
    assert not bad, f"{path.relative_to(ROOT)} ({unit}) imports {sorted(bad)}"
