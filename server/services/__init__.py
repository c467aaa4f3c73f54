"""Use cases of the server: plain functions over a database session and the data store."""
