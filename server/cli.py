"""The command line of the lower layers (``python -m server.cli``): the server's and the
learner's commands in one parser. The ``scribbleflow`` console script is
``clients.entry``, which adds the commands of the top layer to the same parser.

Each command module exposes ``register(subparsers, bench_subparsers)`` which adds its
parsers and sets ``func`` (called with the parsed arguments, returns an exit code).
Command modules import heavy modules (torch, SimpleITK) inside their functions so that
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from learner import commands as learner_commands
from learner import worker_commands
from server import commands as server_commands
from server import db_commands

#: serve, token, user; db upgrade, db current; train, evaluate, bench offline, bench propagate;
#: worker (distributed mode).
COMMAND_MODULES: tuple[ModuleType, ...] = (server_commands, db_commands, learner_commands, worker_commands)


def build_parser(modules: Sequence[ModuleType] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scribbleflow", description="On-premise server that learns to segment 3D medical images while radiologists annotate them.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    bench = subparsers.add_parser("bench", help="benchmarks that write JSON results")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for module in modules:
        module.register(subparsers, bench_sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
