"""Entry point module of amsha-state-sqlite (group ``amsha``): registers the state store ``sqlite``.

Kept tiny on purpose: plugin modules are imported at session creation, so this module
declares the options and names the factory as a ``"module:attr"`` string; ``sqlite3`` and the
store itself are imported only when a session selects ``state: sqlite``.
"""

from __future__ import annotations

from typing import Literal

from amsha import hookimpl
from amsha.hookspecs import Register
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AMSHA_PLUGIN_API", "SqliteStoreOptions", "amsha_register_state_stores"]

AMSHA_PLUGIN_API = "1.0"


class SqliteStoreOptions(BaseModel):
    """Options of the ``sqlite`` state store (``state: {name: sqlite, options: {...}}``)."""

    model_config = ConfigDict(extra="forbid")

    path: str = "amsha.db"
    """The database file; a relative path is relative to the config file's folder."""
    timeout_s: float = Field(default=30.0, gt=0)
    """How long a write waits for another connection's write to finish (SQLite's busy timeout)."""
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite's ``synchronous`` in WAL mode. NORMAL: a committed write survives a crash of the
    process; a power loss may undo the last commits but never corrupts the file. FULL: also
    survives a power loss, at the price of an fsync per commit."""
    wal_limit_mb: float = Field(default=64.0, gt=0)
    """The checkpoint policy: when the WAL file has grown past this many MB, a writer copies it
    into the database and truncates it (waiting up to ``timeout_s`` for readers)."""


@hookimpl
def amsha_register_state_stores(register: Register) -> None:
    register(
        "sqlite",
        "amsha_sqlite.store:build",
        options=SqliteStoreOptions,
        description="one SQLite file (WAL): versioned states stored by change, run records, events",
    )
