"""Persistence: database models and engine (metadata), data store (volume files)."""
