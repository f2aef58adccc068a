"""Every `jetflows` command shown in the README and in docs/ parses, and every script, config and
page it names exists: the docs cannot drift from the command line unnoticed."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from pipelines.cli import build_parser

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code_lines(text: str) -> list[str]:
    """The lines of fenced code blocks, continuations (trailing backslash) joined."""
    lines, code, joined = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
            continue
        if code:
            joined += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                lines.append(joined)
                joined = ""
    return lines


def _commands(text: str) -> list[str]:
    """`jetflows ...` in code blocks (a `# comment` cut) and in inline code spans; also the part
    after `-m pipelines.cli` (torchrun)."""
    found = [line.split(" #")[0] for line in _code_lines(text)]
    found += re.findall(r"`([^`\n]*jetflows [^`\n]*)`", text)
    commands = []
    for candidate in found:
        candidate = candidate.strip().removeprefix(".venv/bin/")
        match = re.search(r"(?:^|\s)(?:jetflows|-m pipelines\.cli)\s+(.*)$", candidate)
        if match and (candidate.startswith("jetflows") or "-m pipelines.cli" in candidate):
            commands.append(match.group(1))
    return commands


CASES = [(page, c) for page in PAGES for c in _commands(page.read_text())]


def test_the_pages_show_commands():
    assert len(CASES) >= 25, CASES  # the extraction itself works


def _named_command(parser, words: list[str]) -> bool:
    """``words`` name a (sub-)command, as prose does (`jetflows data summary`)."""
    for word in words:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            return False
        parser = subparsers[0].choices[word]
    return True


@pytest.mark.parametrize(("page", "command"), CASES, ids=[f"{p.name}:{c[:40]}" for p, c in CASES])
def test_every_command_shown_parses(page, command, capsys):
    words = shlex.split(command)
    if _named_command(build_parser(), words):  # prose naming a command, not running it
        return
    if "--help" in words:
        with pytest.raises(SystemExit) as shown:
            build_parser().parse_args(words)
        assert shown.value.code == 0 and "example:" in capsys.readouterr().out
        return
    args = build_parser().parse_args(words)  # argparse exits 2 on a bad one
    assert callable(args.func), f"{page.name}: {command}"


PATHS = sorted(
    {
        (page, path)
        for page in PAGES
        for path in re.findall(
            r"(?<![\w/.])((?:benchmarks|scripts|configs|docs)/[\w./-]+\.(?:py|sh|yaml|md))",
            page.read_text(),
        )
    }
)


@pytest.mark.parametrize(("page", "path"), PATHS, ids=[f"{p.name}:{q}" for p, q in PATHS])
def test_every_file_named_exists(page, path):
    assert (ROOT / path).is_file(), f"{page.name} names {path}, which does not exist"
