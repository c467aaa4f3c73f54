"""``scribbleflow serve``, ``scribbleflow token ...`` and ``scribbleflow user ...``: the server's
command-line entry points.

The server's modules are imported inside the command functions: parsing (``--help``) must
not pay for FastAPI, SQLAlchemy and torch.

Both read the same settings (``SCRIBBLEFLOW_*`` environment variables), so a token made
with ``token create`` is valid for the server started with ``serve`` on the same data
directory / database.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers, bench_subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the REST API with the embedded training executor",
        description="Run the server (API + in-process training) on the configured data directory.",
    )
    serve.add_argument("--host", default=None, help="interface to listen on (default: SCRIBBLEFLOW_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default: SCRIBBLEFLOW_PORT)")
    serve.set_defaults(func=serve_command)

    token = subparsers.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it (only the token, on stdout)")
    create.add_argument("--role", choices=("annotator", "admin"), required=True)
    create.add_argument("--owner", default="admin", help="the person the token belongs to (audit trail)")
    create.set_defaults(func=token_create_command)
    listing = token_sub.add_parser("list", help="list tokens (ids, roles, owners; never the secrets)")
    listing.set_defaults(func=token_list_command)
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    revoke.set_defaults(func=token_revoke_command)

    user = subparsers.add_parser("user", help="manage users who log in with a password (POST /auth/token)")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create_user = user_sub.add_parser(
        "create", help="create a user; the password is asked twice, or read from stdin with --password-stdin"
    )
    create_user.add_argument("--name", required=True, help="the user name to log in with")
    create_user.add_argument("--role", choices=("annotator", "admin"), required=True)
    create_user.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    create_user.set_defaults(func=user_create_command)
    list_users = user_sub.add_parser("list", help="list users (ids, names, roles; never the hashes)")
    list_users.set_defaults(func=user_list_command)


def _session_factory():
    # start-up cost (module doc)
    from server.settings import Settings
    from server.storage.datastore import DataStore
    from server.storage.db import make_engine, make_session_factory
    from server.storage.migrate import create_schema

    settings = Settings()
    DataStore(settings.resolved_data_dir)
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    return make_session_factory(engine), engine


def serve_command(args: argparse.Namespace) -> int:
    # start-up cost (module doc)
    import logging

    import uvicorn

    from server.app import create_app
    from server.settings import Settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    print(f"scribbleflow: data in {settings.resolved_data_dir}, serving on http://{settings.host}:{settings.port}",
          file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def token_create_command(args: argparse.Namespace) -> int:
    # start-up cost (module doc)
    from server.auth import create_token
    from server.errors import ServiceError

    factory, engine = _session_factory()
    try:
        with factory() as db:
            token, _row = create_token(db, args.role, args.owner, created_by="command line")
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(token)
    return 0


def token_list_command(args: argparse.Namespace) -> int:
    # start-up cost (module doc)
    from server.auth import list_tokens

    factory, engine = _session_factory()
    with factory() as db:
        for row in list_tokens(db):
            state = "revoked" if row.revoked_at else "active"
            print(f"{row.id}\t{row.role}\t{row.owner}\t{state}\t{row.created_at.isoformat(timespec='seconds')}")
    engine.dispose()
    return 0


def user_create_command(args: argparse.Namespace) -> int:
    # start-up cost (module doc)
    import getpass

    from server.auth import create_user
    from server.errors import ServiceError

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 2
    factory, engine = _session_factory()
    try:
        with factory() as db:
            user = create_user(db, args.name, args.role, password, created_by="command line")
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"user {user.name!r} ({user.role}) created", file=sys.stderr)
    return 0


def user_list_command(args: argparse.Namespace) -> int:
    # start-up cost (module doc)
    from server.auth import list_users

    factory, engine = _session_factory()
    with factory() as db:
        for row in list_users(db):
            state = "disabled" if row.disabled_at else "active"
            print(f"{row.id}\t{row.name}\t{row.role}\t{state}\t{row.created_at.isoformat(timespec='seconds')}")
    engine.dispose()
    return 0


def token_revoke_command(args: argparse.Namespace) -> int:
    # start-up cost (module doc)
    from server.auth import revoke_token
    from server.errors import ServiceError

    factory, engine = _session_factory()
    try:
        with factory() as db:
            revoke_token(db, args.token_id)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0
