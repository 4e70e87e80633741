"""`endless --help` and each subcommand's help: every command listed, every option explained."""

from __future__ import annotations

import argparse
import importlib

import pytest

from server.cli import COMMANDS, main


def _parser(module: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(p)
    return p


def test_top_level_help_lists_every_command(capsys):
    """`endless --help` names each subcommand with its one-line description."""
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, (_, text) in COMMANDS.items():
        assert name in out and text in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help(name):
    """Each argument of `endless NAME` carries a help text (none left bare)."""
    bare = [
        "/".join(a.option_strings) or a.dest
        for a in _parser(COMMANDS[name][0])._actions
        if a.help is None and not isinstance(a, argparse._HelpAction)
    ]
    assert not bare, f"endless {name}: options without help: {bare}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_exits_cleanly(name, capsys):
    """`endless NAME --help` prints its usage and exits 0."""
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"usage: endless {name}" in capsys.readouterr().out
