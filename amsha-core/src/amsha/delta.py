"""Change-only storage of state versions, for store authors: the encoding of values and the
snapshot/delta layout that ``amsha-state-sqlite`` and ``amsha-state-postgres`` share.

Each version of a state is one
row, either a *snapshot* (the whole state as one JSON object) or a *delta* on the version
before it (the keys whose value changed or that were added, the keys removed, and the key
order when applying the delta would not give it). A snapshot is written for the first
version, when the delta would be more than half the state, when the deltas since the last
snapshot would add up to more than the state, or after :data:`MAX_DEPTH` deltas; so a read
decodes at most about twice the state's size in at most ``MAX_DEPTH + 1`` rows.

Values are compact UTF-8 JSON: orjson when it encodes the value exactly, otherwise the
standard library's json with one leading space (the mark that tells :func:`decode` to read
it back with the standard library too). The encoding is deterministic, so two values with
the same bytes are the same value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from amsha.errors import StateError
from amsha.state import check_json

__all__ = ["MAX_DEPTH", "Row", "TipLike", "apply", "decode", "decode_all", "encode", "encode_all", "plan", "size"]

MAX_DEPTH = 100
"""At most this many deltas follow a snapshot."""
_DELTA_SHARE = 0.5
"""A version is stored whole when its delta would be more than this share of the state..."""
_CHAIN_SHARE = 1.0
"""...or when the deltas since the last snapshot would add up to more than this share."""

try:  # a dependency of the stores that use this (amsha-core does not need it): faster JSON
    import orjson  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - the standard library's json is the fallback
    orjson = None

# Make orjson refuse what is not plain JSON (dates, dataclasses, subclasses) instead of
# converting it, so such values take the checked path below.
_ORJSON_OPTS = (
    (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS)
    if orjson is not None
    else 0
)


def encode(value: Any, key: str = "value") -> bytes:
    """``value`` as compact UTF-8 JSON.

    orjson when it can encode the value exactly; otherwise (integers beyond 64 bits, lone
    surrogates in strings) the standard library's json, after :func:`check_json`, with one
    leading space: still JSON text, and the mark that tells :func:`decode` to read it back
    with the standard library too (orjson would read a big integer as a float). The encoding
    is deterministic, so two values with the same bytes are the same value (types, nesting
    and key order included).
    """
    if orjson is not None:
        try:
            blob: bytes = orjson.dumps(value, option=_ORJSON_OPTS)
        except (TypeError, ValueError):
            pass
        else:
            if b"null" in blob:
                check_json(key, value)  # orjson writes NaN and infinity as null: refuse them
            return blob
    check_json(key, value)
    # surrogatepass: a lone surrogate is a valid str (and JSON \ud800); json.loads(bytes)
    # decodes with surrogatepass too.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return b" " + text.encode("utf-8", "surrogatepass")


def decode(blob: bytes) -> Any:
    if orjson is not None and blob[:1] != b" ":
        return orjson.loads(blob)
    return json.loads(blob)


_NO_FLOAT = frozenset({str, int, bool, type(None)})


def encode_all(state_id: str, data: Mapping[Any, Any]) -> dict[str, bytes]:
    """Every value of a state, encoded (the hot path of :func:`encode`, inlined)."""
    values: dict[str, bytes] = {}
    dumps = orjson.dumps if orjson is not None else None
    for key, value in data.items():
        if type(key) is not str and not isinstance(key, str):
            raise StateError(f"state {state_id!r}: key {key!r} is not a string")
        if dumps is not None:
            try:
                blob = dumps(value, option=_ORJSON_OPTS)
            except (TypeError, ValueError):
                blob = encode(value, key)
            else:
                # orjson writes NaN and infinity as null: refuse them. Only a float or a
                # container can hold one, so a string (often the bulk of a state) is not scanned.
                if type(value) not in _NO_FLOAT and b"null" in blob:
                    check_json(key, value)
        else:  # pragma: no cover
            blob = encode(value, key)
        values[key] = blob
    return values


def decode_all(values: Mapping[str, bytes]) -> dict[str, Any]:
    """The values of :func:`encode_all`, decoded: new objects, owned by the caller."""
    if orjson is None:  # pragma: no cover
        return {key: json.loads(blob) for key, blob in values.items()}
    loads = orjson.loads
    return {key: loads(blob) if blob[:1] != b" " else json.loads(blob) for key, blob in values.items()}


_NAMES: dict[str, bytes] = {}
"""Key name -> its JSON string (state keys repeat from version to version)."""


def _name(key: str) -> bytes:
    name = _NAMES.get(key)
    if name is None:
        name = encode(key)
        if len(_NAMES) >= 4096:
            _NAMES.clear()
        _NAMES[key] = name
    return name


def _object(items: Iterable[tuple[str, bytes]]) -> bytes:
    """A JSON object from keys and their already encoded values, marked (leading space) for
    the standard library's decoder when any part needed it."""
    parts = [b"{"]
    slow = False
    for key, blob in items:
        name = _name(key)
        if name[:1] == b" " or blob[:1] == b" ":
            slow = True
        parts += (name, b":", blob, b",")
    if len(parts) > 1:
        parts[-1] = b"}"
    else:
        parts.append(b"}")
    if slow:
        parts[0] = b" {"
    return b"".join(parts)


def size(values: Mapping[str, bytes]) -> int:
    """Bytes of the encoded values and their keys (what the chain budget counts)."""
    return sum(len(k) + len(v) + 4 for k, v in values.items())


class Row(NamedTuple):
    """What a version's row stores: a snapshot (base == its version) or a delta."""

    base: int
    depth: int
    chain: int
    removed: bytes | None
    ord: bytes | None
    data: bytes


class TipLike(Protocol):
    """A stored version as a write needs it: its chain position (``base``, ``depth``,
    ``chain``) and its values, encoded (``values``: key -> encoded JSON, in the state's key
    order; ``size``: bytes of the values and keys). A store's own tuple adds how it knows the
    row (a timestamp, a write id)."""

    @property
    def base(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def chain(self) -> int: ...
    @property
    def values(self) -> Mapping[str, bytes]: ...
    @property
    def size(self) -> int: ...


def plan(version: int, prev: TipLike | None, values: Mapping[str, bytes], total: int) -> Row:
    """The row of ``version`` holding ``values``, given the version before it (``prev``,
    None when it is the first one or unknown): a delta on ``prev``, or a snapshot when a delta
    would not pay (see the module docs)."""
    if prev is not None and prev.depth < MAX_DEPTH:
        old = prev.values
        changed = [(k, v) for k, v in values.items() if old.get(k) != v]
        removed = [k for k in old if k not in values]
        removed_blob = encode(removed) if removed else None
        # Applying the delta keeps the surviving keys in place and appends the new ones in
        # their order: store the order only when the state's differs from that.
        keys = list(values)
        if removed or len(keys) != len(old):
            natural = [k for k in old if k in values] + [k for k in keys if k not in old]
        else:
            natural = list(old)
        ord_blob = encode(keys) if keys != natural else None
        cost = sum(len(k) + len(v) + 4 for k, v in changed) + len(removed_blob or b"") + len(ord_blob or b"")
        if cost <= total * _DELTA_SHARE and prev.chain + cost <= total * _CHAIN_SHARE:
            return Row(prev.base, prev.depth + 1, prev.chain + cost, removed_blob, ord_blob, _object(changed))
    return Row(version, 0, 0, None, None, _object(values.items()))


def apply(state: dict[str, Any] | None, removed: bytes | None, ord_: bytes | None, data: bytes) -> dict[str, Any]:
    """The state after one stored row (``state`` is the version before; ignored for a snapshot,
    whose caller passes None). Mutates and returns ``state``."""
    values: dict[str, Any] = decode(data)
    if state is None:
        return values
    if removed is not None:
        for key in decode(removed):
            del state[key]
    state.update(values)
    if ord_ is not None:
        state = {key: state[key] for key in decode(ord_)}
    return state
