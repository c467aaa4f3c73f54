"""The ``scribbleflow`` console script offers the commands of every layer."""

from __future__ import annotations

import argparse

import pytest

from clients import entry
from server import cli


def _choices(parser: argparse.ArgumentParser, *path: str) -> set[str]:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_every_layer_registers_its_commands():
    parser = cli.build_parser(entry.COMMAND_MODULES)
    assert {"serve", "token", "train", "evaluate", "bench"} <= _choices(parser)
    assert {"offline", "propagate"} <= _choices(parser, "bench")
    assert set(cli.COMMAND_MODULES) <= set(entry.COMMAND_MODULES)


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exited:
        entry.main(["bench", "--help"])
    assert exited.value.code == 0
    assert "propagate" in capsys.readouterr().out
