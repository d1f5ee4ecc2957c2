"""Secrets: refused with whitespace, read when the session is built, scrubbed from every
event (token streams across token boundaries), record and state by the core itself, and
recognisable fragments (a masked key) scrubbed too."""

from __future__ import annotations

import io
import json
import random
import types
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from _amsha_support import make_config
from pydantic import BaseModel, ConfigDict

from amsha import ExecutionSession, hookimpl
from amsha.builtins.observers import ConsoleObserver
from amsha.builtins.scripted import ScriptedProvider
from amsha.cli import main
from amsha.errors import ConfigError
from amsha.plugins import BackendContext
from amsha.provider import LLMChunk, LLMRequest
from amsha.secrets import StreamScrubber, get_secret, redact, redact_obj, register_secret, secret_env_refs
from amsha.state import RunRecord, StateSnapshot


def _key() -> str:
    """A fresh key per test: registrations are process-wide."""
    return "sk-" + uuid.uuid4().hex + uuid.uuid4().hex[:8]


def _fragments(key: str) -> list[str]:
    """The key, its masked form, and every 8 characters of it but its first 3 (``sk-``)."""
    return [key, f"{key[:8]}****{key[-4:]}", *(key[i : i + 8] for i in range(3, len(key) - 7))]


def _assert_clean(blob: str | bytes, key: str) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    for fragment in _fragments(key):
        assert fragment not in text, f"{fragment!r} leaked"


class KeyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token_env: str = "AMSHA_TEST_TOKEN"
    chunks: list[str] = []


class ChunkProvider(ScriptedProvider):
    """Streams the exact pieces it is given (so a secret can be split across tokens);
    never reads its key itself."""

    def __init__(self, chunks: Sequence[str]) -> None:
        super().__init__({"default": "".join(chunks)}, model="chunks-1")
        self.chunks = list(chunks)

    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]:
        for piece in self.chunks:
            yield LLMChunk(piece)
        yield LLMChunk(finish_reason="stop")

    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        for piece in self.chunks:
            yield LLMChunk(piece)
        yield LLMChunk(finish_reason="stop")


class DictStore:
    """A third-party store that never heard of scrubbing."""

    def __init__(self) -> None:
        self.states: dict[str, list[StateSnapshot]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}

    def put_state(
        self, state_id: str, data: dict[str, Any], *, expected_version: int, run_id: Any = None, reason: str = ""
    ) -> int:
        versions = self.states.setdefault(state_id, [])
        versions.append(StateSnapshot(state_id, len(versions) + 1, json.loads(json.dumps(data)), run_id=run_id))
        return len(versions)

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        return self.states[state_id][-1 if version is None else version - 1]

    def list_versions(self, state_id: str) -> list[StateSnapshot]:
        return list(self.states.get(state_id, []))

    def put_run(self, record: RunRecord) -> None:
        self.runs[record.run_id] = json.loads(json.dumps(record.to_dict()))

    def get_run(self, run_id: str) -> RunRecord:
        return RunRecord.from_dict(self.runs[run_id])

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        return [RunRecord.from_dict(r) for r in self.runs.values()][:limit]

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        self.events.setdefault(run_id, []).extend(json.loads(json.dumps(list(events))))

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events.get(run_id, []) if e["seq"] >= from_seq]

    def delete_run(self, run_id: str) -> None:
        self.runs.pop(run_id, None)

    def close(self) -> None:
        pass


def _plugin(chunks: Sequence[str], store: DictStore | None = None) -> types.ModuleType:
    module = types.ModuleType(f"secret_test_plugin_{uuid.uuid4().hex[:6]}")

    def build(ctx: BackendContext) -> ChunkProvider:
        return ChunkProvider(ctx.options.chunks or chunks)

    @hookimpl
    def amsha_register_providers(register: Any) -> None:
        register("chunks", build, options=KeyOptions)

    module.amsha_register_providers = amsha_register_providers  # type: ignore[attr-defined]
    if store is not None:

        @hookimpl
        def amsha_register_state_stores(register: Any) -> None:
            register("dictstore", lambda ctx: store)

        module.amsha_register_state_stores = amsha_register_state_stores  # type: ignore[attr-defined]
    return module


def _config(tmp_path: Path, env: str, *, state: Any = None, observers: Any = ()) -> dict[str, Any]:
    return make_config(
        provider={"name": "chunks", "model": "chunks-1", "options": {"token_env": env}},
        state=state or {"name": "file", "options": {"path": str(tmp_path / "store")}},
        observers=list(observers),
    )


def _tree_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


# ---- whitespace ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["\n", " ", "\r\n", "\t"])
def test_key_with_surrounding_whitespace_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    key = _key()
    monkeypatch.setenv("AMSHA_WS_KEY", key + suffix)
    with pytest.raises(ConfigError) as info:
        get_secret("AMSHA_WS_KEY", key="provider.options.api_key_env")
    text = str(info.value)
    assert "AMSHA_WS_KEY" in text and "whitespace" in text and "provider.options.api_key_env" in text
    _assert_clean(text + repr(info.value) + repr(info.value.args), key)
    # Registered as read and as stripped, so an HTTP library quoting the header cannot leak it.
    assert redact(f"Illegal header value b'Bearer {key}{suffix}'") == "Illegal header value b'Bearer ***'"
    assert redact(f"Bearer {key}{suffix!r}") == f"Bearer ***{suffix!r}"


def test_session_refuses_a_whitespace_key_when_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = _key()
    monkeypatch.setenv("AMSHA_WS_SESSION_KEY", f" {key}\n")
    with pytest.raises(ConfigError) as info:
        ExecutionSession(_config(tmp_path, "AMSHA_WS_SESSION_KEY"), plugins=[_plugin(["hi"])])
    assert info.value.problems[0][0] == "provider.options.token_env"
    assert "AMSHA_WS_SESSION_KEY" in str(info.value)
    _assert_clean(str(info.value), key)
    assert not (tmp_path / "store" / "runs").exists() or not list((tmp_path / "store" / "runs").iterdir())


# ---- read when the session is built -----------------------------------------------------


def test_secrets_named_by_options_are_read_when_the_session_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _key()
    monkeypatch.setenv("AMSHA_BUILD_KEY", key)
    session = ExecutionSession(_config(tmp_path, "AMSHA_BUILD_KEY"), plugins=[_plugin(["ok"])])
    try:
        # The provider itself never reads the key; the session did, before any record.
        handle = session.run(inputs={"topic": f"use {key} please"}, mode="background")
        first = (tmp_path / "store" / "runs" / f"{handle.run_id}.json").read_bytes()
        _assert_clean(first, key)
        handle.result(timeout=10)
    finally:
        session.close()
    _assert_clean(_tree_bytes(tmp_path / "store"), key)


def test_secret_env_refs_finds_env_fields_and_declared_lists() -> None:
    class Declared(BaseModel):
        amsha_secret_env_fields: ClassVar[tuple[str, ...]] = ("credentials",)
        credentials: dict[str, str] = {"x-key": "ACME_KEY"}
        other_env: str = "NOT_A_SECRET"

    class ByName(BaseModel):
        api_key_env: str = "A"
        headers_env: dict[str, str] = {"h": "B"}
        keys_env: list[str] = ["C"]
        base_url: str = "http://x"

    assert secret_env_refs(Declared(), "state.options") == [("state.options.credentials.x-key", "ACME_KEY")]
    assert secret_env_refs(ByName(), "p") == [("p.api_key_env", "A"), ("p.headers_env.h", "B"), ("p.keys_env[0]", "C")]
    assert secret_env_refs({"token_env": "D", "x": 1}, "o") == [("o.token_env", "D")]


# ---- token streams ----------------------------------------------------------------------


def test_a_secret_split_across_tokens_never_reaches_a_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = _key()
    monkeypatch.setenv("AMSHA_SPLIT_KEY", key)
    text = f"The key is {key}, or masked {key[:8]}****{key[-4:]}, or cut {key[:12]} and {key[-10:]}."
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(text)), 30))
    chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    console_out = io.StringIO()
    config = _config(
        tmp_path,
        "AMSHA_SPLIT_KEY",
        observers=[{"name": "jsonl", "options": {"path": str(tmp_path / "events.jsonl")}}],
    )
    with ExecutionSession(config, plugins=[_plugin(chunks)], observers=[ConsoleObserver(file=console_out)]) as session:
        handle = session.run("research", inputs={"topic": "keys"})
        tokens = [e.text for e in handle.stream() if e.kind == "llm.token"]
        handle.result(timeout=10)
        session.flush_observers(5)
        stored = session.events(handle.run_id)
    joined = "".join(tokens)
    assert joined.count("***") >= 4 and joined.startswith("The key is ") and joined.endswith(".")
    _assert_clean(joined, key)
    _assert_clean("".join(e.text for e in stored), key)
    _assert_clean(console_out.getvalue(), key)
    _assert_clean((tmp_path / "events.jsonl").read_bytes(), key)
    _assert_clean(_tree_bytes(tmp_path / "store"), key)


def test_stream_scrubber_joins_to_the_scrubbed_whole() -> None:
    key = _key()
    register_secret(key)
    rng = random.Random(3)
    text = f"a {key} b {key[:8]}••••{key[-4:]} c {key[:20]} d {key[-9:]}{key}"
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 25)))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        scrubber = StreamScrubber()
        out = [scrubber.feed(p) for p in pieces] + [scrubber.flush()]
        _assert_clean("".join(out), key)
        assert "".join(out).count("***") >= 5


# ---- fragments --------------------------------------------------------------------------


def test_masked_and_cut_fragments_of_a_registered_key_are_scrubbed() -> None:
    key = _key()
    register_secret(key)
    masked = f"Incorrect API key provided: {key[:8]}****{key[-4:]}. You can find your API key at ..."
    assert redact(masked) == "Incorrect API key provided: ***. You can find your API key at ..."
    assert redact(f"{key[:6]}...{key[-4:]}") == "***"
    assert redact(f"prefix {key[:10]} suffix {key[-12:]}") == "prefix *** suffix ***"
    assert redact("an ordinary sentence with sk- in it") == "an ordinary sentence with sk- in it"


# ---- the core scrubs what it hands a store -------------------------------------------------


def test_a_store_that_never_scrubs_still_gets_nothing_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = _key()
    monkeypatch.setenv("AMSHA_STORE_KEY", key)
    store = DictStore()
    config = _config(tmp_path, "AMSHA_STORE_KEY", state={"name": "dictstore"})
    with ExecutionSession(config, plugins=[_plugin(["echo: ", key[:5], key[5:]], store)]) as session:
        handle = session.run(inputs={"topic": key}, state={"given": key, "nested": [{"k": key}]})
        result = handle.result(timeout=10)
        result.state.commit(session.store, reason=f"manual {key}")
    blob = json.dumps([store.runs, store.events, [[s.data for s in v] for v in store.states.values()]])
    assert "***" in blob
    _assert_clean(blob, key)


def test_amsha_run_json_scrubs_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _key()
    register_secret(key)
    cfg = make_config(provider_options={"responses": [{"text": f"here: {key} and {key[:8]}****{key[-4:]}"}]})
    path = tmp_path / "amsha.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    assert main(["run", str(path), "--input", f"topic={key}", "--json"]) == 0
    out = capsys.readouterr()
    assert "***" in out.out
    _assert_clean(out.out + out.err, key)


def test_ordinary_text_is_not_held_back() -> None:
    register_secret(_key())
    scrubber = StreamScrubber()
    words = ["Fact", "one.", "Fact", "two.", "Fact", "three,", "then", "the", "end."]
    assert [scrubber.feed(w + " ") for w in words] == [w + " " for w in words]
    assert scrubber.flush() == ""


def test_redact_obj_copies_and_scrubs_keys() -> None:
    key = _key()
    register_secret(key)
    value = {key: [key, (1, key)], "n": None}
    assert redact_obj(value) == {"***": ["***", [1, "***"]], "n": None}
    assert value[key] == [key, (1, key)]


def test_the_scrubbing_store_passes_everything_else_through(tmp_path: Path) -> None:
    import pickle

    from amsha._scrub import ScrubbingStore
    from amsha.builtins.stores import FileStore

    with ExecutionSession(make_config(state={"name": "file", "options": {"path": str(tmp_path)}})) as session:
        store = session.store
        assert isinstance(store, ScrubbingStore) and isinstance(store.inner, FileStore)
        assert store.root == store.inner.root  # the backend's own attributes
    wrapped = ScrubbingStore(DictStore())  # type: ignore[arg-type]
    wrapped.put_run(RunRecord("r1"))
    copy = pickle.loads(pickle.dumps(wrapped))
    assert isinstance(copy.inner, DictStore) and copy.get_run("r1").run_id == "r1"


def test_a_third_party_providers_own_exception_is_scrubbed_in_the_chain() -> None:
    from amsha import LLM
    from amsha.errors import ProviderError

    key = _key()
    register_secret(key)

    class Leaky(ScriptedProvider):
        def generate(self, request: LLMRequest) -> Any:
            raise RuntimeError(f"auth failed for key {key}")

    with pytest.raises(ProviderError) as info:
        LLM(Leaky({"default": "x"}, model="m")).generate("hi")
    cause = info.value.__cause__
    assert isinstance(cause, RuntimeError)
    _assert_clean(str(info.value) + repr(info.value) + str(cause) + repr(cause) + repr(cause.args), key)
