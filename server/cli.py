"""The ``scribbleflow`` command line: one parser, sub-commands registered by their modules.

Each command module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed arguments, returns an exit code). Command modules keep
heavy imports (torch, SimpleITK) inside their functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules whose register(subparsers, bench_subparsers) adds their commands.
_COMMAND_MODULES: tuple[str, ...] = (
    "server.commands",  # serve, token
    "server.db_commands",  # db upgrade, db current
    "learner.commands",  # train, bench offline
    "learner.worker_commands",  # worker (distributed mode)
    "registration.commands",  # bench propagate
)


def build_parser(extra_modules: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The parser of this layer's commands plus those of ``extra_modules`` (a higher layer's
    command modules, e.g. clients/entry.py adds ``bench stream``)."""
    parser = argparse.ArgumentParser(prog="scribbleflow", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    bench = subparsers.add_parser("bench", help="benchmarks that write JSON results")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for module_name in _COMMAND_MODULES + tuple(extra_modules):
        importlib.import_module(module_name).register(subparsers, bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
