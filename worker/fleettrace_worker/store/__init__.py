"""Storing records in PostgreSQL: schema and migrations, writes, queries, retention."""
