"""Amsha plugin distribution for the state store `sqlite` (SQLite)."""

__version__ = "0.1.0"
