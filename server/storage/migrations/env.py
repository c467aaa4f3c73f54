"""Alembic environment: runs on the connection that ``server.storage.migrate`` hands over
(``config.attributes["connection"]``); there is no alembic.ini."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
