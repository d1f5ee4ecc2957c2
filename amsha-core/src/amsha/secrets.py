"""Secrets: referenced by environment variable name, held as ``SecretStr``, never emitted.

Config never holds a key itself, only the name of the variable that does
(``api_key_env: OPENAI_API_KEY``). :func:`get_secret` reads it and registers the value so
that :func:`redact` can scrub it from anything Amsha writes: events (token streams
included, across token boundaries), run records, states, error messages and logs.

The session reads every secret its backends reference when it is built, before the first
run record is written: it finds them in each backend's validated options with
:func:`secret_env_refs` (fields named ``*_env``, or those an options model lists in
``amsha_secret_env_fields``).

What is scrubbed, for each registered value ``S`` (replaced by ``***``):

* ``S`` itself;
* for values of 16 characters or more, a masked form of it, as APIs echo keys back: 4 to 8
  of its first characters, a run of mask characters (``*``, ``•``, ``…``, ``.``) and
  optionally up to 4 last characters (OpenAI's ``sk-abc1****wxyz``);
* for those values too, the longest prefix or suffix of ``S`` of at least 8 characters
  found in the text (a key cut short, or its tail).

(Prefixes and masked forms are recognised from any of the first 4 characters on.)
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from .errors import ConfigError

__all__ = [
    "MASK",
    "StreamScrubber",
    "get_secret",
    "has_secrets",
    "redact",
    "redact_obj",
    "register_secret",
    "secret_env_refs",
]

MASK = "***"
MIN_SECRET = 6
"""Shorter values are not registered: they would mask ordinary text; no real key is that short."""
FRAGMENT_MIN_SECRET = 16
FRAGMENT = 8
_MASK_CHARS = "*•….·"
_MASK_SET = frozenset(_MASK_CHARS)
HOLD_MIN = 4
_MAX_DEPTH = 256
_NEST = 64
"""Fragments are looked for within the first and last 64 characters of a long secret."""

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_pattern: re.Pattern[str] | None = None
_partial: re.Pattern[str] | None = None
_grams_re: re.Pattern[str] | None = None
_LONGEST = 0
ACTIVE = False
"""True once a secret is registered (read on hot paths instead of calling a function)."""


def _prefix(chars: str, required: int) -> str:
    """The first ``required`` characters of ``chars``, then as many more as match."""
    out = ""
    for ch in reversed(chars[required:]):
        out = f"(?:{re.escape(ch)}{out})?"
    return re.escape(chars[:required]) + out


def _suffix(chars: str, required: int) -> str:
    """The last ``required`` characters of ``chars``, with as many before them as match."""
    out = ""
    for ch in chars[:-required]:
        out = f"(?:{out}{re.escape(ch)})?"
    return out + re.escape(chars[-required:])


def _compile(secrets: Iterable[str]) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    full: list[str] = []
    partial: list[str] = []
    masks = f"[{re.escape(_MASK_CHARS)}]"
    # Longer secrets first, so one that contains another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        full.append(re.escape(secret))
        if len(secret) < FRAGMENT_MIN_SECRET:
            continue
        last = secret[-4:]
        ends = "|".join(re.escape(last[-n:]) for n in range(4, 0, -1))
        starts = "|".join(re.escape(last[:n]) for n in range(3, 0, -1))
        # Fragments may begin up to HOLD_MIN - 1 characters into the secret: a stream lets
        # that many through before the piece that completes them (see StreamScrubber).
        heads = "|".join(_prefix(secret[j:FRAGMENT], 4) for j in range(HOLD_MIN))
        # At one position the first alternative that matches wins: the masked form before
        # the bare prefix, so its visible tail goes too.
        full.append(f"(?:{heads}){masks}{{2,}}(?:{ends})?")
        span = secret[:_NEST]
        full.append("|".join(_prefix(span[j:], FRAGMENT) for j in range(HOLD_MIN)))
        span = secret[-_NEST:]
        full.append(_suffix(span, FRAGMENT))
        partial.append(f"(?:{heads}){masks}*(?:(?<={masks})(?:{starts}))?$")
    if not full:
        return None, None
    return re.compile("|".join(full)), (re.compile("|".join(partial)) if partial else None)


def register_secret(value: str) -> None:
    """Remember a secret value so that it is scrubbed from everything Amsha emits."""
    global _secrets, _pattern, _partial, _grams_re, _LONGEST, ACTIVE
    if len(value) < MIN_SECRET:
        return
    with _lock:
        if value in _secrets:
            return
        secrets = (*_secrets, value)
        pattern, partial = _compile(secrets)
        grams = dict.fromkeys(g for s in secrets for g in _grams_of(s))
        grams_re = re.compile("|".join(re.escape(g) for g in grams))
        _secrets, _pattern, _partial, _grams_re = secrets, pattern, partial, grams_re
        _LONGEST = max(_LONGEST, len(value) + 16)
        ACTIVE = True


def _whitespace_error(env_name: str, key: str) -> ConfigError:
    return ConfigError(
        [
            (
                key,
                f"environment variable {env_name!r} holds its secret with leading or trailing whitespace "
                "(a newline from a file or an echo?); remove it: HTTP headers cannot carry it",
            )
        ]
    )


def get_secret(env_name: str, *, required: bool = True, key: str = "api_key_env") -> SecretStr | None:
    """Read the secret held by environment variable ``env_name`` and register it.

    Raises :class:`ConfigError` naming the variable and the config key that referenced it
    when ``required`` and the variable is unset or empty, and always when the value has
    leading or trailing whitespace (both the value as read and as stripped are registered
    first, so neither can appear in any message).
    """
    value = os.environ.get(env_name)
    if not value or not value.strip():
        if required:
            raise ConfigError([(key, f"environment variable {env_name!r} is not set (it should hold the secret)")])
        return None
    register_secret(value)
    stripped = value.strip()
    if stripped != value:
        register_secret(stripped)
        raise _whitespace_error(env_name, key)
    return SecretStr(value)


def secret_env_refs(options: Any, key: str = "") -> list[tuple[str, str]]:
    """``(config key, environment variable name)`` for every secret a backend's options name.

    ``options`` is the validated options object of a backend (a pydantic model, or a plain
    mapping for a backend without a model). Secret references are the fields listed in the
    model's ``amsha_secret_env_fields`` class attribute when it declares one, else every
    field whose name ends in ``_env``. A field may hold one variable name (``str``), a list
    of them, or a mapping whose values are names (``{"x-api-key": "ACME_KEY"}``). ``key``
    is where the options sit in config (``provider.options``), for error messages.
    """
    if options is None:
        return []
    declared = getattr(type(options), "amsha_secret_env_fields", None)
    if isinstance(options, Mapping):
        items: Iterable[tuple[str, Any]] = options.items()
    else:
        fields = getattr(type(options), "model_fields", None)
        if fields is None:
            return []
        items = ((name, getattr(options, name, None)) for name in fields)
    refs: list[tuple[str, str]] = []
    prefix = f"{key}." if key else ""
    for name, value in items:
        if not isinstance(name, str):
            continue
        if declared is not None:
            if name not in declared:
                continue
        elif not name.endswith("_env"):
            continue
        if isinstance(value, str):
            refs.append((f"{prefix}{name}", value))
        elif isinstance(value, Mapping):
            refs.extend((f"{prefix}{name}.{k}", v) for k, v in value.items() if isinstance(v, str))
        elif isinstance(value, list | tuple):
            refs.extend((f"{prefix}{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str))
    return refs


def read_secret_refs(refs: Iterable[tuple[str, str]]) -> None:
    """Read and register the secret of each ``(config key, variable)`` pair that is set.

    A variable that is unset is left for the backend to judge (it may be optional); one
    whose value has surrounding whitespace raises :class:`ConfigError` naming both.
    """
    for key, env_name in refs:
        if env_name and env_name in os.environ:
            get_secret(env_name, required=False, key=key)


def redact(text: str) -> str:
    """``text`` with every registered secret, and recognisable fragments of one, replaced
    by ``***``."""
    pattern = _pattern
    if pattern is None or _grams_re is None or _grams_re.search(text) is None:
        return text
    return pattern.sub(MASK, text)


def _grams_of(secret: str) -> tuple[str, ...]:
    """Short pieces one of which any scrubbed form of ``secret`` contains: a cheap test
    before the full pattern (which is slow to search)."""
    if len(secret) < FRAGMENT_MIN_SECRET:
        return (secret,)
    # A masked form or a prefix holds 4 characters starting within the first HOLD_MIN; a
    # suffix of 8 or more holds the last 4.
    return (*(secret[j : j + 4] for j in range(HOLD_MIN)), secret[-4:])


def redact_obj(obj: Any, _depth: int = 0) -> Any:
    """A JSON-like object with every registered secret scrubbed from its strings (keys
    included). Containers are copied, never changed in place; tuples become lists."""
    if _pattern is None:
        return obj
    if isinstance(obj, str):
        return redact(obj)
    if _depth > _MAX_DEPTH:
        # Deeper than any JSON a store accepts (or a value inside itself): nothing below is
        # kept, rather than recursing without end.
        return MASK
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: redact_obj(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v, _depth + 1) for v in obj]
    return obj


def has_secrets() -> bool:
    """True once any secret is registered."""
    return ACTIVE


class StreamScrubber:
    """Scrubs a stream of text pieces (a call's tokens) so that a registered secret split
    across pieces is still scrubbed: :meth:`feed` returns the part of the text seen so far
    that can no longer turn into a secret or a fragment of one, holding back the rest;
    :meth:`flush` returns what is held (scrubbed) when the stream ends. Joined, the returned
    pieces never hold a secret nor a fragment :func:`redact` scrubs; at most the first three
    characters of one may pass before the piece that shows it is one (a tail of fewer than
    :data:`HOLD_MIN` characters is not held, so ordinary text is never delayed for a letter
    that happens to occur in a key). Those characters are remembered, so a fragment that
    begins with them is still recognised and scrubbed."""

    __slots__ = ("held", "seen")

    def __init__(self) -> None:
        self.held = ""
        self.seen = ""
        """The last characters let through (as they were), for matching across pieces."""

    def feed(self, text: str) -> str:
        """The scrubbed text that is safe to emit now (may be '')."""
        text = self.held + text if self.held else text
        pattern = _pattern
        if pattern is None:
            self.held = ""
            return text
        seen = self.seen
        window = seen + text
        start = len(seen)
        keep = min(_hold(window), len(text))
        cut = len(window) - keep
        if keep:
            # Never cut through a match: what is held must start where a secret could start.
            for found in pattern.finditer(window, max(0, cut - _LONGEST)):
                if found.start() < cut < found.end():
                    cut = max(start, found.start())
                    break
        self.held = window[cut:]
        self.seen = window[:cut][-(HOLD_MIN - 1) :]
        return _scrub_from(pattern, window[:cut], start)

    def flush(self) -> str:
        """What is held back, scrubbed; the scrubber is empty afterwards."""
        pattern = _pattern
        held, seen = self.held, self.seen
        self.held = self.seen = ""
        if not held or pattern is None:
            return held
        return _scrub_from(pattern, seen + held, len(seen))


def _scrub_from(pattern: re.Pattern[str], text: str, start: int) -> str:
    """``text[start:]`` scrubbed, matches looked for in the whole of ``text`` (a match that
    began in ``text[:start]``, already sent, masks its part in ``text[start:]``)."""
    if _grams_re is None or _grams_re.search(text) is None:
        return text[start:]
    if start == 0:
        return pattern.sub(MASK, text)
    out: list[str] = []
    pos = start
    for found in pattern.finditer(text):
        if found.end() <= start:
            continue
        begin = max(found.start(), start)
        out.append(text[pos:begin])
        out.append(MASK)
        pos = found.end()
    out.append(text[pos:])
    return "".join(out)


def _hold(text: str) -> int:
    """How many trailing characters of ``text`` might be the start of a secret (or of a
    fragment of one) that the next piece completes."""
    keep = 0
    n = len(text)
    for secret in _secrets:
        # The longest tail of text that occurs in the secret: each longer tail contains the
        # shorter one, so the first miss ends the search.
        k = 0
        limit = min(n, len(secret) - 1)
        while k < limit and text[n - k - 1 :] in secret:
            k += 1
        # A tail of fewer than HOLD_MIN characters is let through: the rest of the secret
        # that follows is a long enough fragment to be scrubbed, and ordinary text is not
        # delayed for a letter that happens to occur in a key.
        if k >= HOLD_MIN:
            keep = max(keep, k)
    partial = _partial
    if partial is not None and not _MASK_SET.isdisjoint(text[-64:]):
        found = partial.search(text, max(0, n - 64))
        if found is not None:
            keep = max(keep, n - found.start())
    return keep
