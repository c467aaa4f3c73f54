"""The ``scribbleflow`` console script: one parser over the commands of every layer.

It lives in the top layer (clients -> server -> learner -> registration) so that it may
import the command modules of all of them (the lower layers' through
``server.cli.COMMAND_MODULES``, and the clients' own: ``bench stream``) while no lower
layer imports ``clients``. A new command module of the clients joins ``COMMAND_MODULES``
here; one of a lower layer joins ``server.cli.COMMAND_MODULES``.
"""

from __future__ import annotations

import sys
from types import ModuleType

from clients import commands as client_commands
from server import cli

COMMAND_MODULES: tuple[ModuleType, ...] = (*cli.COMMAND_MODULES, client_commands)


def main(argv: list[str] | None = None) -> int:
    return cli.run(cli.build_parser(COMMAND_MODULES), argv)


if __name__ == "__main__":
    sys.exit(main())
