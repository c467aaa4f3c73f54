"""``scribbleflow db upgrade`` and ``scribbleflow db current``: the database schema's revision
(Alembic migrations in server/storage/migrations/, run by server/storage/migrate.py).

The server's modules are imported inside the command functions: parsing (``--help``) must
not pay for SQLAlchemy and Alembic."""

from __future__ import annotations

import argparse
import sys


def _engine():
    # start-up cost (module doc)
    from server.settings import Settings
    from server.storage.db import make_engine

    return make_engine(Settings().resolved_database_url)


def _upgrade(args: argparse.Namespace) -> int:
    # start-up cost (module doc)
    from server.storage.migrate import current_revision, upgrade_schema

    engine = _engine()
    try:
        before = current_revision(engine)
        after = upgrade_schema(engine, args.revision)
    finally:
        engine.dispose()
    print(f"database schema: {before or 'none'} -> {after}", file=sys.stderr)
    return 0


def _current(args: argparse.Namespace) -> int:
    # start-up cost (module doc)
    from server.storage.migrate import current_revision, head_revision

    engine = _engine()
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    print(f"{current or 'none'} (newest: {head_revision()})")
    return 0


def register(subparsers, bench_subparsers) -> None:
    db = subparsers.add_parser("db", help="database schema migrations (SCRIBBLEFLOW_DATABASE_URL)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="bring the database to the current schema, keeping its data")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head, the newest)")
    upgrade.set_defaults(func=_upgrade)
    current = db_sub.add_parser("current", help="print the database's schema revision")
    current.set_defaults(func=_current)
