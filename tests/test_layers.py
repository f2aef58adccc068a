"""The layer rule, enforced: each unit imports only the units below it (docs/development.md's
table), no module imports itself through others (no cycles, inside a unit too), and scripts
(benchmarks/, scripts/) use the package's public names only."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BASE = {"jetflows", "pipelines.io"}  # the core and files
# unit -> the units it may import (besides itself); a unit is a package or a module
MAY_IMPORT = {
    "jetflows": set(),
    "convae": {"jetflows"},
    "flows": {"jetflows", "convae"},
    "pipelines.io": {"jetflows"},
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
FRONT_DOOR_UNITS = {"pipelines.run"}


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


def _runtime_imports(path: Path) -> set[str]:
    """The modules ``path`` imports when it runs, at any depth (inside functions too), less
    those under ``if TYPE_CHECKING:`` (annotations only)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for stmt in branch.body
        for node in ast.walk(stmt)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            # "from pkg import module" runs pkg's __init__ first, but needs only the module
            # where every name is one: count the package only for names it defines
            names |= subs if subs <= MODULES else {node.module} | subs
    return names


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for pkg in ("jetflows", "convae", "flows", "pipelines")
    for p in (ROOT / pkg).rglob("*.py")
}


def _graph() -> dict[str, set[str]]:
    """module -> the package modules it imports; the front door's lazy import (`FRONT_DOOR`,
    asked for by a user after every module has loaded) left out."""
    modules = {_module(p): p for p in FILES}
    graph = {
        name: {m for m in _runtime_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    graph["jetflows"] = {m for m in graph["jetflows"] if _unit(m) not in FRONT_DOOR_UNITS}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], found = 1, None
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_through_others():
    """Issue 39: run/generators.py and run/stages.py imported each other (imports inside
    functions hid the loop from Python, not from a reader)."""
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


SCRIPTS = [p for folder in ("benchmarks", "scripts") for p in (ROOT / folder).rglob("*.py")]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_use_the_packages_public_names(path):
    """benchmarks/ imported a private `_jet_level_sampler`: a script is a user of the package."""
    private = sorted(
        name
        for name in _runtime_imports(path)
        if name.split(".")[0] in {"jetflows", "convae", "flows", "pipelines"}
        and any(part.startswith("_") and not part.startswith("__") for part in name.split("."))
    )
    assert not private, f"{path.relative_to(ROOT)} imports private names {private}"
