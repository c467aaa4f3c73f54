"""The ``scribbleflow`` console script: the server's commands plus the clients' (bench stream).

It lives in the top layer (clients -> server -> learner -> registration) so that the
server's command line never imports clients."""

from __future__ import annotations

import sys

from server.cli import build_parser

#: Command modules of this layer, added to server.cli's.
CLIENT_COMMAND_MODULES = ("clients.commands",)  # bench stream


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(extra_modules=CLIENT_COMMAND_MODULES)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
