"""The snapshot/delta codec of state versions: :mod:`amsha.delta` (shared with
``amsha-state-sqlite``), and this store's :class:`Tip`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from amsha.delta import MAX_DEPTH, Row, apply, decode, decode_all, encode, encode_all, plan, size

__all__ = ["MAX_DEPTH", "Row", "Tip", "apply", "decode", "decode_all", "encode", "encode_all", "plan", "size"]


class Tip(NamedTuple):
    """A stored version as a write needs it: its chain position and its values, encoded.
    ``write_id`` identifies the row (a version deleted and written again has another)."""

    version: int
    write_id: bytes
    base: int
    depth: int
    chain: int
    values: Mapping[str, bytes]  # key -> encoded JSON value, in the state's key order
    size: int  # bytes of the encoded values and keys
