"""Entry point module of amsha-state-postgres (group ``amsha``): registers the state store ``postgres``.

Kept tiny on purpose: plugin modules are imported at session creation, so this module
declares the options and names the factory as a ``"module:attr"`` string; psycopg, its pool
and the store itself are imported only when a session selects ``state: postgres``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from amsha import hookimpl
from amsha.hookspecs import Register
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["AMSHA_PLUGIN_API", "PostgresStoreOptions", "amsha_register_state_stores"]

AMSHA_PLUGIN_API = "1.1"

# Keys that would put a credential into a config file: refused, by name, with what to do.
_CREDENTIAL_KEYS = ("password", "dsn", "conninfo", "url", "sslpassword", "passfile")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


def _register(value: Any) -> None:
    """Register what is secret in a value given where it does not belong: the password of
    a DSN (not the whole DSN: its host and user are not secrets, and registering them would
    mask ordinary text), or the value itself when it is not a DSN."""
    from amsha.secrets import register_secret

    if not isinstance(value, str) or not value:
        return
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(value)
    except Exception:
        params = None
    if params and ("host" in params or "dbname" in params or "user" in params):
        if params.get("password"):
            register_secret(str(params["password"]))
        return
    register_secret(value)


class PostgresStoreOptions(BaseModel):
    """Options of the ``postgres`` state store (``state: {name: postgres, options: {...}}``).

    The connection string (DSN) is never part of the config: ``dsn_env`` names the
    environment variable that holds it, so a password lives only in the environment.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # The variable named by dsn_env holds a DSN, not a secret: the store registers its
    # password (registering the whole DSN would mask every "postgres..." in the output).
    amsha_secret_env_fields: ClassVar[tuple[str, ...]] = ()

    dsn_env: str = "AMSHA_POSTGRES_DSN"
    """The environment variable holding the DSN (``postgresql://user:password@host:5432/db``
    or ``host=... dbname=...``). Its password is registered as a secret: scrubbed from every
    error, event, log line and record."""
    schema_name: str = Field(default="amsha", alias="schema")
    """The PostgreSQL schema holding the store's tables (created if missing)."""
    pool_min_size: int = Field(default=1, ge=0)
    """Connections the pool keeps open."""
    pool_max_size: int = Field(default=10, ge=1)
    """At most this many connections per process (plus one per thread waiting for events)."""
    statement_timeout_s: float = Field(default=30.0, gt=0)
    """The server cancels a statement running longer; the store retries it within ``retry_budget_s``."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """How long opening a connection (or waiting for one from the pool) may take."""
    retry_budget_s: float = Field(default=15.0, ge=0)
    """How long one store call keeps retrying a dropped connection, a server restart, a
    statement timeout, a serialization failure or a deadlock before raising ``StateError``."""
    notifications: Literal["auto", "on", "off"] = "auto"
    """``wait_for_events`` wakes on LISTEN/NOTIFY. ``auto`` checks once that a notification
    comes back and polls otherwise; ``off`` always polls (behind PgBouncer in transaction
    mode, which drops LISTEN)."""
    poll_interval_s: float = Field(default=0.5, gt=0)
    """The longest pause between polls when notifications are not used."""
    prepared_statements: bool = True
    """Server-side prepared statements (set false behind a pooler that cannot keep them,
    such as PgBouncer in transaction mode before 1.21)."""
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    """TLS, passed through to libpq (None: what the DSN or libpq's default says)."""
    sslrootcert: str | None = None
    """CA certificate file to verify the server with (libpq's ``sslrootcert``)."""
    sslcert: str | None = None
    """Client certificate file (libpq's ``sslcert``)."""
    sslkey: str | None = None
    """Client key file (libpq's ``sslkey``)."""
    application_name: str = "amsha"
    """Shown in ``pg_stat_activity``."""

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _CREDENTIAL_KEYS:
                if key in data:
                    # The value is the secret itself: registered, so that no error, log or
                    # record shows it (the config error quotes what it got).
                    _register(data[key])
                    raise ValueError(
                        f"option {key!r} is refused: credentials never go into config; put the DSN "
                        f"(with its password) in an environment variable and name it in dsn_env"
                    )
        return data

    @field_validator("dsn_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            # A DSN pasted here by mistake carries its password: registered before it is quoted.
            _register(value)
            raise ValueError("must be the name of an environment variable (letters, digits, _), not a DSN")
        return value

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        if not _SCHEMA_NAME.match(value):
            raise ValueError("must be a lower-case identifier of at most 48 characters (letters, digits, _)")
        return value

    @model_validator(mode="after")
    def _pool(self) -> PostgresStoreOptions:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(f"pool_min_size ({self.pool_min_size}) exceeds pool_max_size ({self.pool_max_size})")
        return self


@hookimpl
def amsha_register_state_stores(register: Register) -> None:
    register(
        "postgres",
        "amsha_postgres.store:build",
        options=PostgresStoreOptions,
        description="PostgreSQL (psycopg 3): versioned states stored by change, run records, events, leases, LISTEN/NOTIFY",
    )
