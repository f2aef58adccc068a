"""Size figures of the package's code: lines, functions, function lengths, the longest ones.

    python benchmarks/code_figures.py [--top 10]

Counts every .py file of the four packages (jetflows, convae, flows, pipelines); a function is
any def (methods and nested ones included), its length the lines from def to its last line.
"""

from __future__ import annotations

import argparse
import ast
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jetflows", "convae", "flows", "pipelines")


def functions(path: Path) -> list[tuple[int, str]]:
    """(length in lines, "file:line name") of every function defined in ``path``."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            found.append((length, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="how many longest functions")
    args = parser.parse_args()
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    lines = sum(len(p.read_text().splitlines()) for p in files)
    found = [f for p in files for f in functions(p)]
    lengths = [n for n, _ in found]
    print(f"{len(files)} files, {lines} lines, {len(found)} functions")
    median, mean = statistics.median(lengths), statistics.mean(lengths)
    print(f"function length: median {median:g}, mean {mean:.1f}")
    print(f"longest {args.top}:")
    for n, where in sorted(found, reverse=True)[: args.top]:
        print(f"  {n:4d}  {where}")


if __name__ == "__main__":
    main()
