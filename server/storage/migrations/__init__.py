"""Alembic migrations of the database schema (server/storage/migrate.py runs them)."""
