"""The postgres store on a real server: config and options, secrets never emitted, storage
by change with bounded chains, retention, threads, fork and spawn, several processes on one
state."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from amsha import ExecutionSession, load_plugins
from amsha.errors import ConfigError, NonJSONValueError, StateError, VersionConflictError
from amsha.state import RunRecord, RunStatus
from amsha_postgres._codec import MAX_DEPTH
from amsha_postgres.store import PostgresStore
from amsha_postgres.testing import PostgresServer

CTX = multiprocessing.get_context("spawn")


def layout(server: PostgresServer, schema: str) -> dict[str, int]:
    with server.admin() as conn:
        rows, snapshots, stored = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE base = version), "
            f"coalesce(sum(length(data) + coalesce(length(removed), 0) + coalesce(length(ord), 0)), 0) "
            f'FROM "{schema}".state_versions'
        ).fetchone()
    return {"rows": rows, "snapshots": snapshots, "bytes": stored}


# ---- config and options -----------------------------------------------------------------------


def test_selected_by_config_with_the_dsn_from_the_environment(
    pg_server: PostgresServer, schema: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AMSHA_TEST_PG_DSN", pg_server.dsn())
    (tmp_path / "amsha.yaml").write_text(
        f"state: {{name: postgres, options: {{dsn_env: AMSHA_TEST_PG_DSN, schema: {schema}, pool_max_size: 3, "
        f"statement_timeout_s: 5}}}}\n"
        "provider: {name: scripted, options: {responses: [{match: Say, text: hello there}]}}\n"
        "agents: {a: {role: A, goal: Say hello}}\n"
        "tasks: {t: {description: Say hello., agent: a}}\n"
    )
    with ExecutionSession(tmp_path / "amsha.yaml") as session:
        store = session.store.inner
        assert isinstance(store, PostgresStore)
        assert (store.schema, store.pool_max_size, store.statement_timeout_s) == (schema, 3, 5.0)
        # The DSN's password is the secret, not the whole DSN (whose parts are ordinary words).
        from amsha.secrets import redact

        assert redact(pg_server.dsn()) == pg_server.dsn().replace(pg_server.password, "***")
        assert redact("amsha-state-postgres on 127.0.0.1") == "amsha-state-postgres on 127.0.0.1"
        assert store.schema_version() == 2
        handle = session.run(["t"])
        assert handle.result(timeout=30).outputs == {"t": "hello there"}
        assert store.get_run(handle.run_id).status == RunStatus.SUCCEEDED
        assert [e["seq"] for e in store.read_events(handle.run_id)] == list(range(len(list(handle.stream()))))
        with store._get_pool().connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"
            assert conn.prepare_threshold == 0
    info = next(p for p in load_plugins(refresh=True).plugins if p.name == "postgres")
    assert ("state_store", "postgres") in info.registers


@pytest.mark.parametrize("key", ["password", "dsn", "conninfo", "url"])
def test_credentials_in_config_are_refused_naming_the_key(key: str) -> None:
    secret = "hunter2-in-config"
    with pytest.raises(ConfigError) as info:
        ExecutionSession({"state": {"name": "postgres", "options": {key: secret}}})
    assert "state.options" in str(info.value) and repr(key) in str(info.value)
    assert "dsn_env" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value)


def test_bad_options_are_config_errors_that_do_not_echo_a_dsn() -> None:
    pasted = "postgresql://u:leaky-pass-123@db/x"
    with pytest.raises(ConfigError) as info:
        ExecutionSession({"state": {"name": "postgres", "options": {"dsn_env": pasted}}})
    assert "state.options.dsn_env" in str(info.value) and "leaky-pass-123" not in str(info.value)
    for options, key in (
        ({"schema": "Bad-Name"}, "state.options.schema"),
        ({"pool_min_size": 5, "pool_max_size": 2}, "pool_min_size"),
        ({"sslmode": "sometimes"}, "state.options.sslmode"),
        ({"pool_size": 3}, "state.options.pool_size"),
    ):
        with pytest.raises(ConfigError) as info:
            ExecutionSession({"state": {"name": "postgres", "options": options}})
        assert key in str(info.value), str(info.value)


def test_an_unset_or_invalid_dsn_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMSHA_TEST_NO_DSN", raising=False)
    with pytest.raises(ConfigError, match="AMSHA_TEST_NO_DSN"):
        ExecutionSession({"state": {"name": "postgres", "options": {"dsn_env": "AMSHA_TEST_NO_DSN"}}})
    monkeypatch.setenv("AMSHA_TEST_NO_DSN", "host=x password=bad-dsn-secret-9 nonsense")
    with pytest.raises(ConfigError) as info:
        ExecutionSession({"state": {"name": "postgres", "options": {"dsn_env": "AMSHA_TEST_NO_DSN"}}})
    assert "not hold a valid PostgreSQL DSN" in str(info.value) and "bad-dsn-secret-9" not in str(info.value)


# ---- secrets ----------------------------------------------------------------------------------


def test_the_password_never_appears_in_errors_logs_or_rows(
    pg_server: PostgresServer, schema: str, make_store: Callable[..., PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    password = pg_server.password
    caplog.set_level(logging.DEBUG)
    store = make_store()
    # Data that carries the password (a client's mistake) is scrubbed before it is written.
    store.put_state("s", {"note": f"dsn is {pg_server.dsn()}"}, expected_version=0)
    store.put_run(RunRecord("r", inputs={"k": password}))
    store.append_events("r", [{"seq": 0, "kind": "k", "data": {"text": password}}])
    assert password not in json.dumps(store.get_state("s").data)
    messages: list[str] = []
    # A wrong password, a refused port, a missing database: errors name the place, never the secret.
    wrong = pg_server.dsn().replace(password, "wrong-" + password[::-1])
    for dsn in (wrong, pg_server.dsn(port=1), pg_server.dsn("no_such_db")):
        with pytest.raises(StateError) as info:
            PostgresStore(dsn, schema=schema, retry_budget_s=0.5, connect_timeout_s=1)
        messages += [str(info.value), repr(info.value)]
    assert "refused the credentials" in messages[0] and "does not exist" in messages[4]
    assert "cannot reach the server" in messages[2]
    everything = "\n".join(messages) + caplog.text
    assert password not in everything and password[::-1] not in everything
    with pg_server.admin() as conn:
        for table in ("state_versions", "runs", "events"):
            for (row,) in conn.execute(f'SELECT t::text FROM "{schema}".{table} t'):
                assert password not in row and password.encode().hex() not in row
        conn.execute("CHECKPOINT")
    # Nor in any file of the server: tables, TOAST, WAL, its log.
    for path in Path(pg_server.folder).rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


# ---- storage by change ------------------------------------------------------------------------


def test_a_version_stores_only_the_keys_that_changed(
    pg_server: PostgresServer, schema: str, store: PostgresStore
) -> None:
    big = {f"k{i}": f"{i}:" + "x" * 10_000 for i in range(100)}  # about 1 MB
    store.put_state("s", big, expected_version=0)
    first = layout(pg_server, schema)
    assert first["rows"] == first["snapshots"] == 1 and 1_000_000 < first["bytes"] < 1_010_000
    state = dict(big)
    for v in range(1, 51):
        state[f"k{v % 7}"] = f"changed {v}"
        store.put_state("s", state, expected_version=v)
    after = layout(pg_server, schema)
    assert after["rows"] == 51 and after["snapshots"] == 1
    assert after["bytes"] - first["bytes"] < 50 * 40
    assert store.get_state("s").data == state
    assert store.get_state("s", 1).data == big
    other = PostgresStore(pg_server.dsn(), schema=schema)  # no cache: rebuilds from the rows
    assert other.get_state("s").data == state and other.get_state("s", 31).data["k2"] == "changed 30"
    other.close()
    store.put_state("s", {k: v + "!" for k, v in state.items()}, expected_version=51)
    assert layout(pg_server, schema)["snapshots"] == 2


def test_reads_build_on_a_bounded_chain(pg_server: PostgresServer, schema: str, store: PostgresStore) -> None:
    state = {f"k{i}": f"{i}:" + "y" * 1_000 for i in range(20)}
    for v in range(250):
        state = {**state, f"k{v % 20}": f"{v}:" + "z" * 1_000}
        store.put_state("s", state, expected_version=v)
    with pg_server.admin() as conn:
        chains = conn.execute(
            f'SELECT version, base, depth, chain FROM "{schema}".state_versions ORDER BY version'
        ).fetchall()
    assert all(v - base == depth <= MAX_DEPTH for v, base, depth, _ in chains)
    assert all(chain <= 21_000 for *_, chain in chains)
    assert 10 <= len([v for v, base, _, _ in chains if v == base]) <= 16
    fresh = PostgresStore(pg_server.dsn(), schema=schema)
    assert fresh.get_state("s").data == state
    assert fresh.get_state("s", 137).data["k16"].startswith("136:")
    fresh.close()


def test_every_version_reads_back_exactly_with_key_order(store: PostgresStore) -> None:
    history = [
        {"a": 1, "b": [1, 2], "c": {"d": None}},
        {"a": 1, "b": [1, 2, 3], "c": {"d": None}},
        {"b": [1, 2, 3], "c": {"d": None}},
        {"b": [1, 2, 3], "c": {"d": None}, "a": "back"},
        {"z": 0, "b": [1, 2, 3], "c": {"d": None}, "a": "back"},
        {"a": "back", "c": {"d": None}, "b": [1, 2, 3], "z": 0},
        {},
        {"a": 1, "big": 2**80, "surrogate": "\ud800"},
    ]
    for i, data in enumerate(history):
        assert store.put_state("s", data, expected_version=i) == i + 1
    for i, data in enumerate(history, start=1):
        got = store.get_state("s", i).data
        assert got == data and list(got) == list(data), i
    with pytest.raises(NonJSONValueError, match="nan"):
        store.put_state("s", {"nan": float("nan")}, expected_version=len(history))


def test_the_cached_latest_version_never_hides_another_writer(make_store: Callable[..., PostgresStore]) -> None:
    a, b = make_store(), make_store()
    a.put_state("s", {"k": "from a", "big": "x" * 5000}, expected_version=0, run_id="run-a")
    assert b.put_state("s", {"k": "from b", "big": "x" * 5000}, expected_version=1, run_id="run-b") == 2
    assert a.get_state("s").data["k"] == "from b"
    with pytest.raises(VersionConflictError) as info:
        a.put_state("s", {"k": "stale"}, expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    b.delete_run("run-b")
    assert a.put_state("s", {"k": "again", "big": "y" * 5000}, expected_version=1) == 2
    assert b.get_state("s").data["k"] == "again"


def test_delete_run_keeps_later_versions_exact(store: PostgresStore) -> None:
    states = []
    state = {f"k{i}": "v" * 500 for i in range(10)}
    for v in range(12):
        state = {**state, f"k{v % 10}": f"{v}" * 400}
        states.append(state)
        store.put_state("s", state, expected_version=v, run_id="doomed" if 3 <= v < 7 else "kept")
    store.put_run(RunRecord("doomed"))
    store.append_events("doomed", [{"seq": 0, "kind": "k"}])
    store.delete_run("doomed")
    assert [v.version for v in store.list_versions("s")] == [1, 2, 3, 8, 9, 10, 11, 12]
    for v in (1, 2, 3, 8, 9, 10, 11, 12):
        assert store.get_state("s", v).data == states[v - 1], v
    assert store.read_events("doomed") == []
    store.vacuum()
    assert store.size_bytes() > 0
    assert store.put_state("s", {"after": 1}, expected_version=12) == 13


# ---- threads and processes --------------------------------------------------------------------


def test_many_threads_share_one_store(store: PostgresStore) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(20):
                store.put_state(f"t{t}", {"i": i}, expected_version=i, run_id=f"r{t}")
                store.append_events(f"r{t}", [{"seq": i, "kind": "k"}])
                store.put_run(RunRecord(f"r{t}", status=RunStatus.RUNNING))
                assert store.get_state(f"t{t}").data == {"i": i}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for t in range(8):
        assert [e["seq"] for e in store.read_events(f"r{t}")] == list(range(20))


def _child_writes(store: PostgresStore, out: Any) -> None:
    try:
        store.put_state("child", {"from": os.getpid()}, expected_version=0)
        out.put(store.get_state("child").data["from"])
    except BaseException as exc:
        out.put(repr(exc))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_store_used_after_fork_and_in_spawned_children(store: PostgresStore, method: str) -> None:
    store.put_state("parent", {"a": 1}, expected_version=0)
    ctx = multiprocessing.get_context(method)
    out = ctx.Queue()
    child = ctx.Process(target=_child_writes, args=(store, out))
    child.start()
    got = out.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0 and isinstance(got, int), got
    # The parent's connections still work (the child never closed them).
    assert store.get_state("child").data == {"from": got}
    assert store.put_state("parent", {"a": 2}, expected_version=1) == 2
    assert pickle.loads(pickle.dumps(store)).get_state("parent").data == {"a": 2}


def _counter(dsn: str, schema: str, worker: int, increments: int, out: Any) -> None:
    try:
        store = PostgresStore(dsn, schema=schema)
        conflicts = 0
        for i in range(increments):
            while True:
                snap = store.get_state("counter")
                try:
                    store.put_state("counter", {"n": snap.data["n"] + 1}, expected_version=snap.version)
                    break
                except VersionConflictError:
                    conflicts += 1
            store.append_events("shared", [{"seq": worker * 1000 + i, "kind": "k"}])
        store.close()
        out.put(("ok", conflicts))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def test_processes_writing_one_state_report_conflicts_and_lose_nothing(
    pg_server: PostgresServer, schema: str, store: PostgresStore
) -> None:
    store.put_state("counter", {"n": 0}, expected_version=0)
    workers, increments = 4, 25
    out = CTX.Queue()
    procs = [CTX.Process(target=_counter, args=(pg_server.dsn(), schema, w, increments, out)) for w in range(workers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(r[0] == "ok" for r in results), results
    final = store.get_state("counter")
    assert final.data["n"] == workers * increments and final.version == workers * increments + 1
    assert len(store.read_events("shared")) == workers * increments


@pytest.mark.parametrize("secret", ["plain-canary-51f0e2", 'quote"canary\\51f0e2', "ctrl\tcanary-ünï-51f0e2"])
def test_secrets_in_state_values_and_keys_are_scrubbed_however_they_are_encoded(
    pg_server: PostgresServer, schema: str, store: PostgresStore, secret: str
) -> None:
    from amsha.secrets import register_secret

    register_secret(secret)
    data = {
        "plain": f"before {secret} after",
        "nested": {"deep": [1, {"x": f"{secret}{secret}"}], secret: "as a key"},
        f"key-{secret}": "value",
        "clean": "nothing here " * 1000,
    }
    store.put_state("s", data, expected_version=0)
    got = store.get_state("s").data
    text = json.dumps(got, ensure_ascii=False)
    assert secret not in text and secret not in repr(got)
    assert got["plain"] == "before *** after" and got["nested"]["deep"][1]["x"] == "******"
    assert got["nested"]["***"] == "as a key" and got["key-***"] == "value"
    assert got["clean"] == data["clean"]
    fresh = PostgresStore(pg_server.dsn(), schema=schema)
    assert fresh.get_state("s").data == got  # what is stored, not only what was kept
    fresh.close()
