"""Secrets: referenced by environment variable name, held as ``SecretStr``, never emitted.

Config never holds a key itself, only the name of the variable that does
(``api_key_env: OPENAI_API_KEY``). :func:`get_secret` reads it and remembers the value so
that :func:`redact` can scrub it from anything Amsha writes: events, run records, error
messages and logs.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from pydantic import SecretStr

from .errors import ConfigError

__all__ = ["get_secret", "redact", "redact_obj", "register_secret"]

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
MASK = "***"


def register_secret(value: str) -> None:
    """Remember a secret value so that it is scrubbed from everything Amsha emits."""
    global _secrets
    # Very short values would mask ordinary text; no real key is that short.
    if len(value) < 6:
        return
    with _lock:
        if value not in _secrets:
            _secrets = (*_secrets, value)


def get_secret(env_name: str, *, required: bool = True, key: str = "api_key_env") -> SecretStr | None:
    """Read the secret held by environment variable ``env_name``.

    Raises :class:`ConfigError` naming the variable and the config key that referenced
    it when ``required`` and the variable is unset or empty.
    """
    value = os.environ.get(env_name)
    if not value:
        if required:
            raise ConfigError([(key, f"environment variable {env_name!r} is not set (it should hold the secret)")])
        return None
    register_secret(value)
    return SecretStr(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_obj(obj: Any) -> Any:
    """A JSON-like object with every registered secret scrubbed from its strings."""
    if not _secrets:
        return obj
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj


def has_secrets() -> bool:
    return bool(_secrets)
