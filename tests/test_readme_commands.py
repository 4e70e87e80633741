"""The `endless` commands the README shows use only options the CLI has (features still
being built sit in `<!-- pending -->` blocks and are checked once those are dropped)."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

from server.cli import COMMANDS

README = Path(__file__).resolve().parents[1] / "README.md"
PENDING = re.compile(r"<!-- pending: [^>]*-->.*?<!-- /pending -->", re.S)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def options(name: str) -> set[str]:
    p = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[name][0]).add_arguments(p)
    return {o for a in p._actions for o in a.option_strings}


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its --options) for each `endless SUB ...` line in code blocks, with
    continuation lines joined and pending blocks left out."""
    found = []
    for block in FENCE.findall(PENDING.sub("", text)):
        current = None  # the command an indented line continues
        for line in block.replace("\\\n", " ").splitlines():
            words = line.split(" #")[0].split()
            flags = FLAG.findall(" ".join(words[1:]))
            if len(words) > 1 and words[0] == "endless" and words[1] in COMMANDS:
                current = words[1]
                found.append((current, flags))
            elif words[:1] == ["SAMPLING:"]:  # the sampling options of serve and render
                current = "SAMPLING"
                found += [("serve", flags), ("render", flags)]
            elif line[:1].isspace() and current == "SAMPLING":
                found += [("serve", FLAG.findall(line)), ("render", FLAG.findall(line))]
            elif line[:1].isspace() and current:
                found.append((current, FLAG.findall(line)))
            else:
                current = None
    return found


def test_parser_reads_commands_and_skips_pending():
    """The reader finds commands in code blocks and ignores those inside pending blocks."""
    text = (
        "```bash\nendless render --seed 1 \\\n  --bogus -o x.mp4   # --comment\n```\n"
        "<!-- pending: issue 1 -->\n```\nendless serve --later\n```\n<!-- /pending -->\n"
    )
    assert readme_commands(text) == [("render", ["--seed", "--bogus"])]
    block = "```\nendless watch URL [--record X]\n    [--seconds S]\nSAMPLING: --steps K\n```\n"
    assert readme_commands(block) == [
        ("watch", ["--record"]),
        ("watch", ["--seconds"]),
        ("serve", ["--steps"]),
        ("render", ["--steps"]),
    ]


def test_readme_commands_use_real_options():
    """Every option of every `endless` line in the README exists on that subcommand."""
    commands = readme_commands(README.read_text())
    assert {name for name, _ in commands} >= {"serve", "render", "watch", "evaluate"}
    unknown = [(n, f) for n, flags in commands for f in flags if f not in options(n)]
    assert unknown == []


def test_readme_shell_lines_parse():
    """The README's shell lines are well-formed (quotes closed)."""
    for block in FENCE.findall(PENDING.sub("", README.read_text())):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(("endless ", "./ops/", ".venv/")):
                shlex.split(line.split(" #")[0])
