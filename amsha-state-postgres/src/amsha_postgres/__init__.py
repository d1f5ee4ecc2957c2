"""Amsha plugin distribution for the state store `postgres` (PostgreSQL, psycopg 3)."""

__version__ = "0.1.0"
