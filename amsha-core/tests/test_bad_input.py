"""Bad input gives typed errors naming the file or key (exit 2 from the CLI), never a
RecursionError, a UnicodeDecodeError, a rich MarkupError or a store left half-written."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from _amsha_support import make_config

from amsha import ExecutionSession, ExecutionState
from amsha.builtins.observers import ConsoleObserver, JsonlObserver
from amsha.builtins.stores import FileStore, MemoryStore
from amsha.cli import main
from amsha.config import load_config
from amsha.errors import ConfigError, InputError, NonJSONValueError, ProviderError, StateError
from amsha.events import Event
from amsha.state import RunRecord, RunStatus


def _deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _cycle() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


# ---- config files -----------------------------------------------------------------------


def test_a_config_that_is_not_utf8_is_a_config_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "amsha.yaml"
    path.write_bytes("provider: scripted\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "UTF-8" in str(info.value)
    assert main(["config", "check", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_deep_nesting_in_a_config_is_a_config_error(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"amsha{suffix}"
    if suffix == ".toml":
        path.write_text("x = " + "[" * 600 + "1" + "]" * 600 + "\n", encoding="utf-8")
    else:
        path.write_text(json.dumps({"provider": {"name": "scripted", "options": {"deep": _deep(600)}}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "deep" in str(info.value)
    assert main(["config", "check", str(path)]) == 2
    assert "RecursionError" not in capsys.readouterr().err


def test_deep_nesting_in_a_mapping_config_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"provider": {"name": "scripted", "options": {"deep": _deep(600)}}})
    assert info.value.problems[0][0].startswith("provider.options.deep[0]")


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = tmp_path / "amsha.yaml"
    path.write_text("provider:\n  name: scripted\n  options:\n" + "".join(f"    {line}\n" for line in lines))
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - started < 2
    assert "aliases" in str(info.value) and str(path) in str(info.value)


def test_a_yaml_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "amsha.yaml"
    path.write_text("provider:\n  name: scripted\n  options:\n    loop: &x [1, *x]\n")
    with pytest.raises(ConfigError, match="contains itself"):
        load_config(path)


def test_nul_bytes_in_a_config_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "amsha.yaml"
    path.write_bytes(b"provider: scr\x00ipted\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_bad_values_are_described_without_their_whole_repr() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"retry": {"max_retries": list(range(100_000))}})
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"write": ["write"]}, "its own output"),
        ({"research": ["write"], "write": ["research"]}, "cycle"),
    ],
)
def test_context_cycles_and_self_references_fail_with_a_pipeline(context: dict[str, list[str]], expected: str) -> None:
    config = make_config(pipeline=["research", "write"])
    for name, refs in context.items():
        config["tasks"][name]["context"] = refs
    with pytest.raises(ConfigError, match=expected):
        load_config(config)


# ---- state values and run inputs ----------------------------------------------------------


def test_deep_and_self_referencing_state_values_are_typed_errors_naming_the_key() -> None:
    with pytest.raises(NonJSONValueError) as info:
        ExecutionState({"notes": _deep(1500)})
    assert info.value.key.startswith("notes[0]") and "deep" in str(info.value)
    with pytest.raises(NonJSONValueError, match="contains itself") as info:
        ExecutionState({"loop": _cycle()})
    assert info.value.key.startswith("loop")


BAD_VALUES = [
    math.nan,
    math.inf,
    b"bytes",
    {1, 2},
    object(),
    {1: "int key"},
    {(1, 2): "tuple key"},
    _cycle(),
    _deep(1500),
    decimal.Decimal("1.5"),
    datetime.date(2026, 1, 1),
    1j,
]


@pytest.mark.parametrize("store_kind", ["memory", "file"])
@pytest.mark.parametrize("value", BAD_VALUES, ids=[type(v).__name__ + str(i) for i, v in enumerate(BAD_VALUES)])
def test_stores_refuse_non_json_with_a_typed_error(tmp_path: Path, store_kind: str, value: Any) -> None:
    store = MemoryStore() if store_kind == "memory" else FileStore(tmp_path)
    with pytest.raises(StateError):
        store.put_state("s", {"k": value}, expected_version=0)
    if store_kind == "file":
        with pytest.raises(StateError):
            store.put_run(RunRecord("r", inputs={"k": value}))
        assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
        with pytest.raises(Exception) as info:
            store.get_state("s")
        assert isinstance(info.value, StateError)


@pytest.mark.parametrize("value", [b"raw", math.nan, {1: 2}, _cycle()], ids=["bytes", "nan", "intkey", "cycle"])
def test_run_inputs_must_be_json(session_factory: Any, value: Any) -> None:
    session = session_factory()
    with pytest.raises(InputError) as info:
        session.run(inputs={"topic": value})
    assert "'topic" in str(info.value)


def test_any_string_python_can_hold_survives_the_file_store_and_the_observers(tmp_path: Path) -> None:
    # (Two surrogate code points that form a pair come back as their one character: JSON
    # cannot tell them apart.)
    odd = "lone \ud800 high, lone \udfff low, pair 😀, nul \x00, é"
    out = io.StringIO()
    config = make_config(
        provider_options={"responses": [{"text": f"echo {odd}"}]},
        state={"name": "file", "options": {"path": str(tmp_path / "store")}},
    )
    jsonl = JsonlObserver(tmp_path / "events.jsonl")
    with ExecutionSession(config, observers=[jsonl, ConsoleObserver(file=out)]) as session:
        handle = session.run(inputs={"topic": odd}, state={"odd": odd})
        result = handle.result(timeout=10)
        session.flush_observers(5)
        record = session.store.get_run(handle.run_id)
        assert record.status == RunStatus.SUCCEEDED and record.inputs == {"topic": odd}
        assert ExecutionState.from_store(session.store, result.state.state_id).get("odd") == odd
        assert odd in "".join(e.text for e in session.events(handle.run_id))
    lines = (tmp_path / "events.jsonl").read_bytes().decode("utf-8").splitlines()
    assert any(odd in text for line in lines for text in _strings(json.loads(line)))
    assert "lone" in out.getvalue()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


# ---- messages and errors ----------------------------------------------------------------


def test_markup_like_text_in_messages_prints_as_itself() -> None:
    out = io.StringIO()
    console = ConsoleObserver(file=out)
    error = {"type": "ProviderError", "message": "failed at [/path] with [bold]x[/bold] [/]"}
    console.on_event(Event("task.failed", "r", 0, 0.0, "s", task="t[/x]", data={"error": error}))
    console.on_event(Event("run.failed", "r", 1, 0.0, "s", data={"error": error}))
    console.on_event(Event("run.cancelled", "r", 2, 0.0, "s", data={"reason": "[/]"}))
    text = out.getvalue()
    assert "[/path]" in text and "[bold]x[/bold]" in text and "t[/x]" in text


def test_amsha_run_prints_a_markup_like_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(
        provider_options={"failures": [{"kind": "bad_request", "message": "no such file [/path]", "times": 5}]},
        observers=["console"],
    )
    path = tmp_path / "amsha.json"
    path.write_text(json.dumps(config))
    assert main(["run", str(path), "--input", "topic=x"]) == 1
    captured = capsys.readouterr()
    assert "MarkupError" not in captured.err and "Traceback" not in captured.err
    assert "[/path]" in captured.out + captured.err


@pytest.mark.parametrize("mode", ["generate", "stream", "agenerate", "astream"])
def test_provider_errors_are_never_their_own_cause(session_factory: Any, mode: str) -> None:
    import asyncio

    session = session_factory(make_config(provider_options={"failures": [{"kind": "auth", "times": 5}]}))
    llm = session.llm()

    async def consume_async() -> None:
        if mode == "agenerate":
            await llm.agenerate("hi")
        else:
            async for _ in llm.astream("hi"):
                pass

    with pytest.raises(ProviderError) as info:
        if mode == "generate":
            llm.generate("hi")
        elif mode == "stream":
            list(llm.stream("hi"))
        else:
            asyncio.run(consume_async())
    error: BaseException | None = info.value
    seen = 0
    while error is not None:
        assert error.__cause__ is not error and error.__context__ is not error
        error = error.__cause__ or error.__context__
        seen += 1
        assert seen < 10


def test_a_missing_registry_file_names_the_key_and_the_config(tmp_path: Path) -> None:
    path = tmp_path / "amsha.yaml"
    path.write_text("agents: missing.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0][0] == "agents" and str(path) in str(info.value) and "missing.yaml" in str(info.value)


def test_events_appended_after_a_torn_line_stay_readable(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.append_events("r", [{"seq": 0, "kind": "a"}])
    with open(tmp_path / "events" / "r.jsonl", "ab") as fh:
        fh.write(b'{"seq": 1, "ki')  # a writer killed mid-line
    store.append_events("r", [{"seq": 2, "kind": "c"}, {"seq": 3, "kind": "d"}])
    assert [e["seq"] for e in store.read_events("r")] == [0, 2, 3]
