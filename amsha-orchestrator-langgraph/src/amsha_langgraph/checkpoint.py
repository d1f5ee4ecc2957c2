"""``AmshaCheckpointSaver``: LangGraph checkpoints kept in any Amsha ``StateStore``.

It uses only the :class:`~amsha.StateStore` protocol, so ``memory``, ``file``, ``sqlite``
and third-party stores all work, and a graph that interrupts for a human in one process can
be resumed from the same store in another.

Layout (every id is percent-encoded, so it contains no ``/`` and never starts with ``.``):

- the checkpoints of one thread and namespace are the versions of the state
  ``lgcp.<thread>.<ns>``, oldest first; each version's ``reason`` is
  ``checkpoint <id>`` so a checkpoint is found without reading the others; a version
  holds ``schema``, ``checkpoint_id``, ``parent_id`` and the checkpoint and its metadata
  as JSON text (one string each, so a store copies and scans one value, not a tree);
- the pending writes of one checkpoint are the latest version of
  ``lgw.<thread>.<ns>.<checkpoint id>`` (each ``put_writes`` adds a version holding all
  writes so far, each value as JSON text, with optimistic concurrency);
- the namespaces a thread has checkpoints in are the latest version of
  ``lgns.<thread>`` (a list, written when a saver first puts into a namespace it has not
  seen), so ``list()`` without ``checkpoint_ns`` covers them all;
- every version is written with ``run_id = "lgthread.<thread>"``, so ``delete_thread``
  is the store's ``delete_run`` of that id.

It answers as LangGraph's own savers (``InMemorySaver``, ``SqliteSaver``) do: ``list()``
given a thread and no ``checkpoint_ns`` lists every namespace of the thread; results come
newest checkpoint id first; putting a checkpoint id again replaces that checkpoint (one
entry, the last one put). Checked by LangGraph's ``langgraph-checkpoint-conformance`` suite
and side by side with ``InMemorySaver`` in this plugin's tests.

Values are stored as JSON, never pickle or msgpack (:class:`JsonCheckpointSerializer`):
LangChain messages through langchain-core's ``message_to_dict`` form, LangGraph's ``Send``, ``Interrupt`` and ``Command``, tuples,
sets, bytes, datetimes and UUIDs by tag. Other classes (a pydantic state, a dataclass) are
revived only when listed in ``allowed_types``; anything else fails loudly, naming the type.

Channel versions carry a random suffix (as ``InMemorySaver``'s do), so a version names one
value even across forks; the saver keeps the JSON text of the channel values it last wrote
per thread and re-serialises only the channels whose version changed.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import importlib
import json
import math
import random
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

from amsha import StateStore
from amsha.errors import InputError, StateError, StateNotFoundError, VersionConflictError
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    writes_sort_key,
)
from langgraph.types import Command, Interrupt, Send
from pydantic import BaseModel

__all__ = ["AmshaCheckpointSaver", "JsonCheckpointSerializer"]

CHECKPOINT_SCHEMA = 2
"""Checkpoint layout written (1: the checkpoint as a JSON tree, still read)."""
_READABLE = (1, 2)
_CACHED_THREADS = 256
"""Threads whose last channel texts and writes a saver keeps in memory."""
_TAG = "__lg__"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class JsonCheckpointSerializer:
    """LangGraph's ``SerializerProtocol`` over plain JSON (see the module docs).

    ``allowed_types``: classes (or ``"module:QualName"`` strings) of pydantic models and
    dataclasses that may be revived from a checkpoint."""

    def __init__(self, allowed_types: Iterable[type | str] = ()) -> None:
        self.allowed = {t if isinstance(t, str) else _qualname(t) for t in allowed_types}
        self._dump = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
        self._dump_plain = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=self.encode).encode

    def text(self, obj: Any) -> str:
        """``obj`` as JSON text (:meth:`encode`, then dumped)."""
        return self._dump(self.encode(obj))

    def plain_text(self, obj: Any) -> str:
        """JSON text of mostly-plain data (LangGraph's bookkeeping: ids, versions, metadata):
        dumped directly, tagging only values JSON has no type for; tuples become lists."""
        return self._dump_plain(obj)

    # ---- SerializerProtocol -------------------------------------------------------------

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return "json", self.text(obj).encode()

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, blob = data
        if kind != "json":
            raise StateError(f"checkpoint value of type {kind!r} is not readable: this saver stores JSON only")
        return self.decode(json.loads(blob))

    # ---- JSON form ------------------------------------------------------------------------

    def encode(self, obj: Any) -> Any:
        """``obj`` as plain JSON (tagged where JSON has no type for it)."""
        kind = type(obj)
        if kind is str or kind is int or kind is bool or obj is None:
            return obj
        if kind is dict:
            if _TAG not in obj and all(type(k) is str for k in obj):
                encode = self.encode
                return {k: encode(v) for k, v in obj.items()}
        elif kind is list:
            encode = self.encode
            return [encode(v) for v in obj]
        if isinstance(obj, bool | int | str):
            return obj
        if isinstance(obj, float):
            if not math.isfinite(obj):
                return {_TAG: "float", "v": repr(obj)}
            return obj
        if isinstance(obj, list):
            return [self.encode(v) for v in obj]
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj) and _TAG not in obj:
                return {k: self.encode(v) for k, v in obj.items()}
            return {_TAG: "dict", "v": [[self.encode(k), self.encode(v)] for k, v in obj.items()]}
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return {_TAG: "tuple", "v": [self.encode(v) for v in obj]}
        if isinstance(obj, set | frozenset):
            return {_TAG: "set", "v": [self.encode(v) for v in obj]}
        if isinstance(obj, bytes | bytearray):
            return {_TAG: "bytes", "v": base64.b64encode(bytes(obj)).decode()}
        if isinstance(obj, BaseMessage):
            return {_TAG: "message", "v": self.encode(message_to_dict(obj))}
        if isinstance(obj, Interrupt):
            return {_TAG: "interrupt", "value": self.encode(obj.value), "id": obj.id}
        if isinstance(obj, Send):
            return {_TAG: "send", "node": obj.node, "arg": self.encode(obj.arg)}
        if isinstance(obj, Command):
            return {
                _TAG: "command",
                "graph": obj.graph,
                "update": self.encode(obj.update),
                "resume": self.encode(obj.resume),
                "goto": self.encode(obj.goto),
            }
        if isinstance(obj, datetime.datetime):
            return {_TAG: "datetime", "v": obj.isoformat()}
        if isinstance(obj, datetime.date):
            return {_TAG: "date", "v": obj.isoformat()}
        if isinstance(obj, uuid.UUID):
            return {_TAG: "uuid", "v": str(obj)}
        if isinstance(obj, BaseModel):
            return {_TAG: "model", "cls": _qualname(type(obj)), "v": self.encode(obj.model_dump())}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            return {_TAG: "dataclass", "cls": _qualname(type(obj)), "v": self.encode(fields)}
        if isinstance(obj, tuple):  # a NamedTuple
            return {_TAG: "tuple", "v": [self.encode(v) for v in obj]}
        raise StateError(
            f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} in a LangGraph checkpoint: "
            "checkpoints are JSON; use JSON values, LangChain messages, pydantic models or dataclasses"
        )

    def decode(self, obj: Any) -> Any:
        """The inverse of :meth:`encode`."""
        if isinstance(obj, list):
            return [self.decode(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        tag = obj.get(_TAG)
        if tag is None:
            return {k: self.decode(v) for k, v in obj.items()}
        if tag == "dict":
            return {self.decode(k): self.decode(v) for k, v in obj["v"]}
        if tag == "tuple":
            return tuple(self.decode(v) for v in obj["v"])
        if tag == "set":
            return {self.decode(v) for v in obj["v"]}
        if tag == "float":
            return float(obj["v"])
        if tag == "bytes":
            return base64.b64decode(obj["v"])
        if tag == "message":
            return messages_from_dict([self.decode(obj["v"])])[0]
        if tag == "interrupt":
            return Interrupt(value=self.decode(obj["value"]), id=obj["id"])
        if tag == "send":
            return Send(obj["node"], self.decode(obj["arg"]))
        if tag == "command":
            return Command(
                graph=obj["graph"],
                update=self.decode(obj["update"]),
                resume=self.decode(obj["resume"]),
                goto=self.decode(obj["goto"]),
            )
        if tag == "datetime":
            return datetime.datetime.fromisoformat(obj["v"])
        if tag == "date":
            return datetime.date.fromisoformat(obj["v"])
        if tag == "uuid":
            return uuid.UUID(obj["v"])
        if tag in ("model", "dataclass"):
            cls = self._allowed_class(obj["cls"])
            fields = self.decode(obj["v"])
            return cls.model_validate(fields) if tag == "model" else cls(**fields)
        raise StateError(f"checkpoint value with unknown tag {tag!r}: written by a newer amsha-orchestrator-langgraph?")

    def _allowed_class(self, name: str) -> Any:
        if name not in self.allowed:
            raise StateError(
                f"checkpoint holds a {name} and that class is not allowed to be revived; "
                f"list it in the orchestrator option `checkpoint_types` (or AmshaCheckpointSaver(allowed_types=[...]))"
            )
        module, _, qual = name.partition(":")
        target: Any = importlib.import_module(module)
        for part in qual.split("."):
            target = getattr(target, part)
        return target


@functools.lru_cache(maxsize=1024)
def _enc(part: str) -> str:
    return quote(part, safe="").replace(".", "%2E") or "~"


class AmshaCheckpointSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer over an Amsha :class:`~amsha.StateStore` (see module docs).

    ``store``: any StateStore (``session.store``). ``allowed_types``: pydantic models and
    dataclasses that may be revived from checkpoints."""

    def __init__(self, store: StateStore, *, allowed_types: Iterable[type | str] = ()) -> None:
        super().__init__(serde=JsonCheckpointSerializer(allowed_types))
        self.store = store
        self.json = JsonCheckpointSerializer(allowed_types)
        self._heads: OrderedDict[str, int] = OrderedDict()
        """The last version this saver wrote or saw per state id: saves a listing per put."""
        self._channels: OrderedDict[str, dict[str, tuple[Any, str]]] = OrderedDict()
        """Per checkpoints id: channel -> (version, JSON text) last written."""
        self._writes: OrderedDict[str, tuple[int, list[list[Any]]]] = OrderedDict()
        """Per writes id: (store version, rows) last written by this saver."""
        self._namespaces: OrderedDict[str, frozenset[str]] = OrderedDict()
        """Per thread: the namespaces known to be in its index."""

    @staticmethod
    def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > _CACHED_THREADS:
            cache.popitem(last=False)

    # ---- ids ------------------------------------------------------------------------------

    @staticmethod
    def _ids(config: RunnableConfig) -> tuple[str, str]:
        conf = config.get("configurable") or {}
        thread_id = conf.get("thread_id")
        if thread_id is None:
            raise InputError("a LangGraph checkpoint needs configurable.thread_id in the graph config")
        return str(thread_id), str(conf.get("checkpoint_ns", ""))

    @staticmethod
    def checkpoints_id(thread_id: str, ns: str = "") -> str:
        """The state id holding the checkpoints of ``thread_id`` in namespace ``ns``."""
        return f"lgcp.{_enc(thread_id)}.{_enc(ns)}"

    @staticmethod
    def _writes_id(thread_id: str, ns: str, checkpoint_id: str) -> str:
        return f"lgw.{_enc(thread_id)}.{_enc(ns)}.{_enc(checkpoint_id)}"

    @staticmethod
    def _namespaces_id(thread_id: str) -> str:
        return f"lgns.{_enc(thread_id)}"

    @staticmethod
    def thread_marker(thread_id: str) -> str:
        """The ``run_id`` every version of ``thread_id`` is written under."""
        return f"lgthread.{_enc(thread_id)}"

    # ---- store access -----------------------------------------------------------------------

    def _append(self, state_id: str, data: dict[str, Any], thread_id: str, reason: str) -> None:
        expected = self._heads.get(state_id)
        for _ in range(20):
            if expected is None:
                versions = self.store.list_versions(state_id)
                expected = versions[-1].version if versions else 0
            try:
                version = self.store.put_state(
                    state_id, data, expected_version=expected, run_id=self.thread_marker(thread_id), reason=reason
                )
                self._remember(self._heads, state_id, version)
                return
            except VersionConflictError as exc:
                expected = exc.actual
        raise StateError(f"{state_id!r}: could not append a checkpoint version after 20 conflicting writers")

    def _latest(self, state_id: str) -> Any:
        try:
            return self.store.get_state(state_id)
        except StateNotFoundError:
            return None

    def _find(self, state_id: str, checkpoint_id: str) -> Any:
        reason = f"checkpoint {checkpoint_id}"
        for snap in reversed(self.store.list_versions(state_id)):
            if snap.reason == reason:
                return self.store.get_state(state_id, snap.version)
        return None

    def _value(self, stored: Any, schema: Any) -> Any:
        return self.json.decode(json.loads(stored) if schema == 2 else stored)

    def _tuple(self, thread_id: str, ns: str, data: dict[str, Any]) -> CheckpointTuple:
        schema = data.get("schema")
        if schema not in _READABLE:
            raise StateError(
                f"LangGraph checkpoint schema {schema!r} is not readable "
                f"(this release reads {', '.join(map(str, _READABLE))})"
            )
        checkpoint_id = data["checkpoint_id"]
        writes_snap = self._latest(self._writes_id(thread_id, ns, checkpoint_id))
        writes = writes_snap.data if writes_snap is not None else {}
        rows = sorted(writes.get("writes", []), key=lambda r: writes_sort_key(r[4], r[0], r[1]))
        parent = data.get("parent_id")
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}},
            checkpoint=self._value(data["checkpoint"], schema),
            metadata=self._value(data["metadata"], schema),
            parent_config=(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
                if parent
                else None
            ),
            pending_writes=[(r[0], r[2], self._value(r[3], writes.get("schema", 1))) for r in rows],
        )

    # ---- BaseCheckpointSaver ------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns = self._ids(config)
        state_id = self.checkpoints_id(thread_id, ns)
        checkpoint_id = get_checkpoint_id(config)
        snap = self._find(state_id, checkpoint_id) if checkpoint_id else self._latest(state_id)
        return None if snap is None else self._tuple(thread_id, ns, snap.data)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """The checkpoints of ``config``'s thread, newest checkpoint id first: of its
        ``checkpoint_ns`` when the config names one, else of every namespace of the thread.
        ``filter`` matches metadata keys; ``before`` keeps ids below its checkpoint id."""
        if config is None:
            raise InputError(
                "AmshaCheckpointSaver.list needs a config with configurable.thread_id "
                "(a state store keeps no index of threads)"
            )
        thread_id, _ = self._ids(config)
        conf = config.get("configurable") or {}
        ns_given = conf.get("checkpoint_ns")
        namespaces = [str(ns_given)] if ns_given is not None else self._thread_namespaces(thread_id)
        wanted = get_checkpoint_id(config)
        before_id = get_checkpoint_id(before) if before else None
        found: list[tuple[str, str, str, int]] = []  # (checkpoint id, ns, state id, version)
        for ns in namespaces:
            state_id = self.checkpoints_id(thread_id, ns)
            seen: set[str] = set()
            # Newest version first: a checkpoint id put again is the version put last.
            for snap in reversed(self.store.list_versions(state_id)):
                checkpoint_id = snap.reason.removeprefix("checkpoint ")
                if checkpoint_id in seen:
                    continue
                seen.add(checkpoint_id)
                if (wanted and checkpoint_id != wanted) or (before_id and checkpoint_id >= before_id):
                    continue
                found.append((checkpoint_id, ns, state_id, snap.version))
        found.sort(key=lambda f: f[0], reverse=True)
        for _checkpoint_id, ns, state_id, version in found:
            if limit is not None and limit <= 0:
                return
            data = self.store.get_state(state_id, version).data
            item = self._tuple(thread_id, ns, data)
            if filter and not all(item.metadata.get(k) == v for k, v in filter.items()):  # type: ignore[misc]
                continue
            if limit is not None:
                limit -= 1
            yield item

    def _thread_namespaces(self, thread_id: str) -> list[str]:
        """Every namespace ``thread_id`` has checkpoints in, root first (the root is always
        looked at: checkpoints written before the index existed are all there)."""
        snap = self._latest(self._namespaces_id(thread_id))
        listed = snap.data.get("namespaces", []) if snap is not None else []
        return ["", *(str(ns) for ns in listed if ns != "")]

    def _index_namespace(self, thread_id: str, ns: str) -> None:
        """Add ``ns`` to the thread's namespace index (once per saver and namespace)."""
        known = self._namespaces.get(thread_id)
        if known is not None and ns in known:
            return
        state_id = self._namespaces_id(thread_id)
        for _ in range(20):
            snap = self._latest(state_id)
            listed = [str(n) for n in snap.data.get("namespaces", [])] if snap is not None else []
            if ns in listed:
                break
            try:
                self.store.put_state(
                    state_id,
                    {"schema": 1, "namespaces": [*listed, ns]},
                    expected_version=snap.version if snap is not None else 0,
                    run_id=self.thread_marker(thread_id),
                    reason="namespaces",
                )
                listed.append(ns)
                break
            except VersionConflictError:
                continue  # another writer added one: read it and try again
        else:
            raise StateError(f"{state_id!r}: could not index namespace {ns!r} after 20 conflicting writers")
        self._remember(self._namespaces, thread_id, frozenset(listed))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        thread_id, ns = self._ids(config)
        parent = (config.get("configurable") or {}).get("checkpoint_id")
        state_id = self.checkpoints_id(thread_id, ns)
        data = {
            "schema": CHECKPOINT_SCHEMA,
            "checkpoint_id": checkpoint["id"],
            "parent_id": parent,
            "checkpoint": self._checkpoint_text(state_id, checkpoint),
            "metadata": self.json.plain_text(dict(metadata)),
        }
        if ns:
            self._index_namespace(thread_id, ns)
        self._append(state_id, data, thread_id, f"checkpoint {checkpoint['id']}")
        # A checkpoint just written has no pending writes yet: the first put_writes need not
        # read (a writer in another process shows up as a version conflict).
        self._remember(self._writes, self._writes_id(thread_id, ns, checkpoint["id"]), (0, []))
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    def _text(self, value: Any) -> str:
        return self.json.text(value)

    def _checkpoint_text(self, state_id: str, checkpoint: Checkpoint) -> str:
        """The checkpoint as JSON text; a channel whose version this saver wrote last time
        reuses that text instead of being encoded again."""
        values: dict[str, Any] = dict(checkpoint.get("channel_values") or {})
        if _TAG in values:
            return self._text(dict(checkpoint))
        # The rest is LangGraph's own bookkeeping (ids, versions, the channels seen): plain
        # JSON, with the tagged form only for what JSON has no type for (pending sends).
        rest = self.json.plain_text({k: v for k, v in checkpoint.items() if k != "channel_values"})
        versions = checkpoint.get("channel_versions") or {}
        known = self._channels.get(state_id) or {}
        fresh: dict[str, tuple[Any, str]] = {}
        parts = []
        for channel, value in values.items():
            version = versions.get(channel)
            hit = known.get(channel)
            text = hit[1] if hit is not None and version is not None and hit[0] == version else self._text(value)
            if version is not None:
                fresh[channel] = (version, text)
            parts.append(f"{json.dumps(channel, ensure_ascii=False)}:{text}")
        self._remember(self._channels, state_id, fresh)
        head = '{"channel_values":{' + ",".join(parts) + "}"
        return head + ("," + rest[1:] if rest != "{}" else "}")

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        thread_id, ns = self._ids(config)
        checkpoint_id = (config.get("configurable") or {})["checkpoint_id"]
        state_id = self._writes_id(thread_id, ns, checkpoint_id)
        cached = self._writes.get(state_id)
        for _ in range(20):
            if cached is not None:
                version, rows = cached[0], list(cached[1])
            else:
                snap = self._latest(state_id)
                version = snap.version if snap is not None else 0
                rows = [] if snap is None else self._upgrade_rows(snap.data)
            index = {(r[0], r[1]): i for i, r in enumerate(rows)}
            changed = False
            for idx, (channel, value) in enumerate(writes):
                key = (task_id, WRITES_IDX_MAP.get(channel, idx))
                row = [task_id, key[1], channel, self._text(value), task_path]
                if key in index:
                    if key[1] >= 0:
                        continue  # a regular write is recorded once
                    rows[index[key]] = row
                else:
                    index[key] = len(rows)
                    rows.append(row)
                changed = True
            if not changed:
                return
            try:
                written = self.store.put_state(
                    state_id,
                    {"schema": CHECKPOINT_SCHEMA, "writes": rows},
                    expected_version=version,
                    run_id=self.thread_marker(thread_id),
                    reason="writes",
                )
                self._remember(self._writes, state_id, (written, rows))
                return
            except VersionConflictError:
                cached = None  # another writer: read what it wrote
                continue
        raise StateError(f"{state_id!r}: could not record writes after 20 conflicting writers")

    def _upgrade_rows(self, data: dict[str, Any]) -> list[list[Any]]:
        rows = [list(r) for r in data.get("writes", [])]
        if data.get("schema", 1) == 1:  # values as JSON trees: as text, like new rows
            for r in rows:
                r[3] = json.dumps(r[3], ensure_ascii=False, allow_nan=False)
        return rows

    def delete_thread(self, thread_id: str) -> None:
        self.store.delete_run(self.thread_marker(str(thread_id)))
        self._heads.clear()
        self._channels.clear()
        self._writes.clear()
        self._namespaces.clear()

    def get_next_version(self, current: str | None, channel: None = None) -> str:
        # Zero-padded so versions compare as strings, with a random part so that a version
        # names one value even when a thread forks (both as InMemorySaver's do).
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # ---- async twins: the store's methods are short, one transaction each ----------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in self.list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)
