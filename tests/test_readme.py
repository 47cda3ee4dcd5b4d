"""The README's examples work as written: every Python block runs, every ``trainlab`` command line parses.

Examples rot silently: the Python example once used an undefined ``model`` and described ``wl.data()`` as a
tuple. Python blocks are executed in a fresh working directory (what they write lands there). Shell lines are
parsed by trainlab's own parsers without running anything; ``torchrun ... -m trainlab ...`` lines are parsed
from the part after ``-m trainlab``. Usage synopses (``[--out DIR]``, ``{workloads,models}``) are skipped:
they describe commands, they are not ones.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from trainlab.cli import STUDIES, build_parser, build_study_parser

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SYNOPSIS = re.compile(r"(^|\s)[\[{]|[\]}](\s|$)")  # [OPTIONAL] or {A,B} placeholders


def blocks(language: str) -> list[tuple[int, str]]:
    """(first line number, text) of each fenced block of ``language`` in the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


def trainlab_commands() -> list[tuple[int, list[str]]]:
    """(line number, argv after ``trainlab``) of each example command in the README's bash blocks."""
    commands = []
    for first, text in blocks("bash"):
        pending, number = "", first
        for i, line in enumerate(text.split("\n")):
            if not pending:
                number = first + i
            if line.endswith("\\"):  # a shell continuation joins lines, also inside quotes
                pending += line[:-1]
                continue
            line, pending = pending + line, ""
            for command in line.split("&&"):
                words = shlex.split(command, comments=True)
                if "-m" in words and words[words.index("-m") + 1:][:1] == ["trainlab"]:  # torchrun ... -m trainlab
                    words = words[words.index("-m") + 1:]
                if words[:1] == ["trainlab"] and not SYNOPSIS.search(command.split("#")[0]):
                    commands.append((number, words[1:]))
    return commands


def parse(argv: list[str]) -> None:
    """Parse ``argv`` as ``trainlab.cli.main`` does (the studies have parsers of their own); run nothing."""
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in STUDIES:
        build_study_parser(argv[1]).parse_args(argv[2:])
    else:
        build_parser().parse_args(argv)


def test_the_readme_has_examples_to_check():
    assert len(blocks("python")) >= 1 and len(trainlab_commands()) >= 20


@pytest.mark.parametrize("first, code", blocks("python"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_block_runs(first, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md, block at line {first}", "exec"), {"__name__": "readme_example"})


@pytest.mark.parametrize("number, argv", trainlab_commands(),
                         ids=lambda v: f"line{v}" if isinstance(v, int) else " ".join(v)[:60])
def test_cli_example_parses(number, argv, capsys):
    try:
        parse(argv)
    except SystemExit as exit_:  # --version and --help exit 0 after printing; a parse error exits 2
        assert exit_.code == 0, f"README.md line {number}: trainlab {shlex.join(argv)}\n{capsys.readouterr().err}"
