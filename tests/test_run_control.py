"""Runs across processes and machines, on the real executors: a thread pool, a process pool
(spawn), a Dask ``LocalCluster`` with worker processes and Ray (local, worker processes),
each handed in as a ``concurrent.futures.Executor``; with the ``file`` and ``sqlite`` stores.

Every LLM call goes through the real ``openai`` SDK to the local Chat Completions server, so
the server sees what the worker does: how many requests, and whether a stream was closed by
the client (a cancelled run) or completed.

Per executor and store: the starting process's handle streams a worker run live (tokens
arrive while the run goes, not at the end), code observers see the worker's events in order,
cancel from the starting handle closes the worker's HTTP stream and records CANCELLED with
the partial text; a worker killed mid-run becomes LOST within ``lease_s + 2`` s; a third
process attaches, streams and cancels.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from amsha import Event, ExecutionSession, RunStatus
from amsha.errors import RunCancelledError, RunLostError
from amsha_openai.testing import OpenAIServer, Reply
from conftest import REPO, amsha_here, clean_env, describe

sys.path.insert(0, str(REPO / "examples" / "distributed"))
from ray_executor import RayExecutor  # the example's adapter, tested here

KEY_ENV = "AMSHA_RUN_CONTROL_TEST_KEY"
# Worker processes (spawned pools, Dask's and Ray's) inherit the environment when they start.
os.environ[KEY_ENV] = "sk-run-control-test"
LEASE_S = 4.0
WORDS = [f"w{i} " for i in range(12)]
EXECUTORS = ["thread", "process", "dask", "ray"]
STORES = ["file", "sqlite"]


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(chunk_delay_s=0.03) as srv:
        yield srv


def write_config(folder: Path, server: OpenAIServer, store: str) -> Path:
    """Two tasks, provider openai on the local server, the chosen store next to the config."""
    folder.mkdir(parents=True, exist_ok=True)
    state = (
        {"name": "file", "options": {"path": ".amsha"}}
        if store == "file"
        else {
            "name": "sqlite",
            "options": {"path": "amsha.db"},
        }
    )
    config = {
        "provider": server.provider_config(api_key_env=KEY_ENV),
        "state": state,
        "agents": {"a": {"role": "Writer", "goal": "write"}},
        "tasks": {
            "t1": {"description": "first {topic}", "agent": "a"},
            "t2": {"description": "second {topic}", "agent": "a", "context": ["t1"]},
        },
        "retry": {"max_retries": 0},
        "runs": {"lease_s": LEASE_S, "cancel_poll_s": 0.05},
    }
    path = folder / "amsha.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class _Executors:
    """One executor of each kind for the module, started on first use."""

    def __init__(self) -> None:
        self._made: dict[str, concurrent.futures.Executor] = {}
        self._cleanup: list[Callable[[], None]] = []

    def get(self, kind: str) -> concurrent.futures.Executor:
        if kind not in self._made:
            self._made[kind] = self._make(kind)
        return self._made[kind]

    def _make(self, kind: str) -> concurrent.futures.Executor:
        if kind == "thread":
            pool = concurrent.futures.ThreadPoolExecutor(2)
            self._cleanup.append(pool.shutdown)
            return pool
        if kind == "process":
            return self.process_pool()
        if kind == "dask":
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            self._cleanup += [cluster.close, client.close]
            return client.get_executor()
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self._cleanup.append(ray.shutdown)
        return RayExecutor()

    def process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        self._cleanup.append(lambda: pool.shutdown(wait=False, cancel_futures=True))
        return pool

    def close(self) -> None:
        for fn in reversed(self._cleanup):
            try:
                fn()
            except Exception:
                pass


@pytest.fixture(scope="module")
def executors() -> Iterator[_Executors]:
    made = _Executors()
    yield made
    made.close()


class Collector:
    """An observer passed in code: what it was sent, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def owner_pid(session: ExecutionSession, run_id: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = session.get_run(run_id)
        if record.owner:
            return int(record.owner["pid"])
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} was never claimed")


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("kind", EXECUTORS)
def test_worker_run_streams_live_to_the_starting_handle_and_its_observers(
    tmp_path: Path, server: OpenAIServer, executors: _Executors, kind: str, store: str
) -> None:
    config = write_config(tmp_path / "cfg", server, store)
    server.default = Reply(chunks=WORDS)
    collector = Collector()
    with ExecutionSession(config, observers=[collector], executor=executors.get(kind)) as session:
        handle = session.run(inputs={"topic": "kelp"}, mode="background")
        arrived: list[tuple[float, Event]] = [(time.monotonic(), event) for event in handle.stream()]
        result = handle.result(timeout=60)
        assert result.status == RunStatus.SUCCEEDED
        assert result.outputs == {"t1": "".join(WORDS), "t2": "".join(WORDS)}
        seqs = [event.seq for _, event in arrived]
        assert seqs == list(range(len(seqs))), "every event once, in order"
        assert arrived[-1][1].kind == "run.finished"
        tokens = [t for t, event in arrived if event.kind == "llm.token"]
        assert len(tokens) == 2 * len(WORDS)
        # Live: the server sends a word every 30 ms, so 24 tokens span well over 0.5 s; tokens
        # that came only at the end would arrive within a few ms of each other.
        assert tokens[-1] - tokens[0] > 0.4, f"tokens arrived in a burst ({tokens[-1] - tokens[0]:.3f}s)"
        stored = [(e.seq, e.kind) for e in session.events(handle.run_id)]
        assert stored == [(e.seq, e.kind) for _, e in arrived]
        assert session.flush_observers(timeout=10)
        deadline = time.monotonic() + 10
        while len(collector.events) < len(stored) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [(e.seq, e.kind) for e in collector.events] == stored, "code observers see the worker's run"
        record = session.get_run(handle.run_id)
        if kind != "thread":
            assert record.owner is not None and record.owner["pid"] != os.getpid()


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("kind", EXECUTORS)
def test_cancel_closes_the_workers_http_stream(
    tmp_path: Path, server: OpenAIServer, executors: _Executors, kind: str, store: str
) -> None:
    config = write_config(tmp_path / "cfg", server, store)
    long = [f"x{i} " for i in range(200)]
    server.reset()
    server.default = Reply(chunks=long, chunk_delay_s=0.05)
    with ExecutionSession(config, executor=executors.get(kind)) as session:
        handle = session.run(inputs={"topic": "kelp"}, mode="background")
        seen = 0
        for event in handle.stream():
            if event.kind == "llm.token":
                seen += 1
                if seen == 3:
                    asked = time.monotonic()
                    assert handle.cancel("enough") is True
        with pytest.raises(RunCancelledError) as info:
            handle.result(timeout=30)
        # The worker closed its HTTP stream: the server saw the client go away, well before
        # the 10 s the answer takes, and task 2 never made a request.
        assert server.wait_for(lambda s: any(r.outcome == "client_closed" for r in s.requests), timeout=5)
        assert time.monotonic() - asked < 3
        assert server.attempts == 1
        record = session.get_run(handle.run_id)
        assert record.status == RunStatus.CANCELLED and record.error["message"] == "enough"
        partial = record.outputs["t1"]
        assert partial and "".join(long).startswith(partial) and len(partial) < len("".join(long))
        assert record.metrics["total"]["calls"] == 1
        assert info.value.result.outputs["t1"] == partial
        assert handle.cancel() is False, "cancelling a finished run changes nothing"


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("kind", ["process", "dask", "ray"])
def test_a_killed_worker_makes_the_run_lost(
    tmp_path: Path, server: OpenAIServer, executors: _Executors, kind: str, store: str
) -> None:
    config = write_config(tmp_path / "cfg", server, store)
    server.default = Reply(chunks=[f"y{i} " for i in range(400)], chunk_delay_s=0.05)
    executor = executors.process_pool() if kind == "process" else executors.get(kind)
    with ExecutionSession(config, executor=executor) as session:
        handle = session.run(inputs={"topic": "kelp"}, mode="background")
        for event in handle.stream():
            if event.kind == "llm.token":
                break
        pid = owner_pid(session, handle.run_id)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(RunLostError) as info:
            handle.result(timeout=LEASE_S + 20)
        took = time.monotonic() - killed
        assert took <= LEASE_S + 2, f"LOST after {took:.2f}s"
        assert info.value.owner["pid"] == pid and info.value.heartbeat_at is not None
        assert session.attach(handle.run_id).status() == RunStatus.LOST
        # The store still says RUNNING: LOST is what every reader derives from the lease.
        assert session.store.get_run(handle.run_id).status == RunStatus.RUNNING
        listed = amsha_here("runs", "list", "--config", str(config), "--json")
        assert listed.returncode == 0, describe(listed)
        statuses = {r["run_id"]: r["status"] for r in json.loads(listed.stdout)}
        assert statuses[handle.run_id] == "LOST"


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_third_process_attaches_streams_and_cancels(
    tmp_path: Path, server: OpenAIServer, executors: _Executors, kind: str
) -> None:
    config = write_config(tmp_path / "cfg", server, "sqlite")
    server.reset()
    server.default = Reply(chunks=[f"z{i} " for i in range(300)], chunk_delay_s=0.03)
    with ExecutionSession(config, executor=executors.get(kind)) as session:
        handle = session.run(inputs={"topic": "kelp"}, mode="background")
        watch = subprocess.Popen(
            [sys.executable, "-m", "amsha", "runs", "watch", handle.run_id, "--config", str(config), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        assert watch.stdout is not None
        tokens = 0
        lines: list[str] = []
        for line in watch.stdout:
            lines.append(line)
            if '"llm.token"' in line:
                tokens += 1
                if tokens == 5:
                    cancel = amsha_here("runs", "cancel", handle.run_id, "--config", str(config))
                    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout, describe(cancel)
        code = watch.wait(60)
        assert code == 1, "runs watch exits with the run's status: CANCELLED is not success"
        events = [json.loads(line) for line in lines if line.startswith('{"schema"')]
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert events[-1]["kind"] == "run.cancelled"
        assert json.loads(lines[-1])["status"] == "CANCELLED"
        with pytest.raises(RunCancelledError):
            handle.result(timeout=30)
        assert server.wait_for(lambda s: any(r.outcome == "client_closed" for r in s.requests), timeout=5)


def test_a_run_queued_on_a_busy_executor_is_cancelled_before_it_starts(tmp_path: Path, server: OpenAIServer) -> None:
    config = write_config(tmp_path / "cfg", server, "sqlite")
    server.reset()
    server.default = Reply(chunks=[f"q{i} " for i in range(40)], chunk_delay_s=0.03)
    with (
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
        ExecutionSession(config, executor=pool) as session,
    ):
        busy = session.run(inputs={"topic": "a"}, mode="background")
        queued = session.run(inputs={"topic": "b"}, mode="background")
        assert queued.status() == RunStatus.PENDING
        assert session.cancel_run(queued.run_id, "not needed") == "cancelled"
        assert busy.result(timeout=60).status == RunStatus.SUCCEEDED
        with pytest.raises(RunCancelledError):
            queued.result(timeout=30)
        # It never ran: one run's two requests reached the server.
        assert server.attempts == 2
        assert session.cancel_run(queued.run_id) == "ended"


def test_the_memory_store_is_refused_for_a_process_pool(tmp_path: Path) -> None:
    from amsha.errors import InputError

    with (
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
        ExecutionSession(
            {"agents": {"a": {"role": "r", "goal": "g"}}, "tasks": {"t": {"description": "d", "agent": "a"}}}
        ) as session,
    ):
        with pytest.raises(InputError, match=r"'memory' store .*\(state: file, sqlite or postgres\)"):
            session.run(mode="background", executor=pool)


def test_closing_a_session_under_running_background_runs_never_crashes(tmp_path: Path) -> None:
    """close() cancels runs still executing here, waits for each to write its end, and only then
    closes the store: 200 rounds, closed at varied moments of a run that writes to sqlite."""
    config = {
        "provider": {"name": "scripted", "options": {"token_delay_s": 0.0005, "default": "a b c d e f g h i j " * 3}},
        "state": {"name": "sqlite", "options": {"path": str(tmp_path / "close.db")}},
        "agents": {"a": {"role": "r", "goal": "g"}},
        "tasks": {"t1": {"description": "one", "agent": "a"}, "t2": {"description": "two", "agent": "a"}},
        "runs": {"event_flush_s": 0},
    }
    ids = []
    for i in range(200):
        session = ExecutionSession(config)
        handle = session.run(mode="background")
        ids.append(handle.run_id)
        time.sleep((i % 20) * 0.001)
        session.close()
        assert handle.status() in (RunStatus.SUCCEEDED, RunStatus.CANCELLED)
    with ExecutionSession(config) as session:
        for run_id in ids:
            record = session.get_run(run_id)
            assert record.status in (RunStatus.SUCCEEDED, RunStatus.CANCELLED), record
            events = session.events(run_id)
            assert [e.seq for e in events] == list(range(len(events)))
            assert events[-1].kind in ("run.finished", "run.cancelled")


# ---- the command line: signals, --detach, watch ------------------------------------------------


def start_cli(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "amsha", "run", str(config), "--input", "topic=kelp", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def wait_for_tokens(session: ExecutionSession, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in session.runs(5):
            if any(e.kind == "llm.token" for e in session.events(record.run_id)):
                return record.run_id
        time.sleep(0.05)
    raise AssertionError("no run streamed a token")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("mode", ["interactive", "background"])
def test_a_signal_during_amsha_run_cancels_the_run_and_exits_with_its_code(
    tmp_path: Path, server: OpenAIServer, sig: int, code: int, mode: str
) -> None:
    config = write_config(tmp_path / "cfg", server, "sqlite")
    server.default = Reply(chunks=[f"s{i} " for i in range(200)], chunk_delay_s=0.03)
    proc = start_cli(config, "--mode", mode)
    with ExecutionSession(config) as session:
        run_id = wait_for_tokens(session)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, f"exit {proc.returncode}\n{out}\n{err}"
        assert "Traceback" not in err and "could not persist" not in err, err
        record = session.get_run(run_id)
        assert record.status == RunStatus.CANCELLED and record.error["message"] == "interrupted"
        events = session.events(run_id)
        assert [e.seq for e in events] == list(range(len(events)))
        assert events[-1].kind == "run.cancelled", "its events were flushed"
        assert record.outputs["t1"], "the partial text is in the record"


def test_detach_then_watch_and_kill(tmp_path: Path, server: OpenAIServer) -> None:
    config = write_config(tmp_path / "cfg", server, "sqlite")
    server.default = Reply(chunks=WORDS)
    started = time.monotonic()
    proc = amsha_here("run", str(config), "--input", "topic=kelp", "--detach")
    assert proc.returncode == 0, describe(proc)
    run_id = proc.stdout.strip()
    assert run_id.startswith("run-") and time.monotonic() - started < 30
    watch = amsha_here("runs", "watch", run_id, "--config", str(config))
    assert watch.returncode == 0, describe(watch)
    assert "".join(WORDS).strip() in watch.stdout and "metrics:" in watch.stdout
    with ExecutionSession(config) as session:
        record = session.get_run(run_id)
        assert record.status == RunStatus.SUCCEEDED and record.owner["pid"] != os.getpid()
        # A detached run whose process is killed is LOST for every reader.
        server.default = Reply(chunks=[f"k{i} " for i in range(400)], chunk_delay_s=0.05)
        proc = amsha_here("run", str(config), "--input", "topic=kelp", "--detach")
        victim = proc.stdout.strip()
        os.kill(owner_pid(session, victim), signal.SIGKILL)
        with pytest.raises(RunLostError):
            session.attach(victim).result(timeout=LEASE_S + 20)
        show = amsha_here("runs", "show", victim, "--config", str(config))
        assert show.returncode == 0 and "LOST" in show.stdout and "owner:" in show.stdout, describe(show)


def test_a_stale_owner_that_comes_back_writes_nothing(tmp_path: Path, server: OpenAIServer) -> None:
    """A paused owner (SIGSTOP, as a paused VM) whose lease expired finds it gone when it
    resumes: it stops without writing, and readers keep seeing LOST."""
    config = write_config(tmp_path / "cfg", server, "sqlite")
    server.default = Reply(chunks=[f"p{i} " for i in range(300)], chunk_delay_s=0.02)
    with ExecutionSession(config) as session:
        proc = start_cli(config, "--mode", "background")
        run_id = wait_for_tokens(session)
        pid = owner_pid(session, run_id)
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(RunLostError):
                session.attach(run_id).result(timeout=LEASE_S + 20)
            before = len(session.events(run_id))
        finally:
            os.kill(pid, signal.SIGCONT)
        proc.communicate(timeout=60)
        time.sleep(0.5)
        assert session.get_run(run_id).status == RunStatus.LOST
        assert len(session.events(run_id)) == before, "the stale owner wrote no event after it came back"


def test_a_handle_stream_and_observers_from_an_async_caller(tmp_path: Path, server: OpenAIServer) -> None:
    """arun() hands a run to a process pool; astream() tails it live."""
    import asyncio

    config = write_config(tmp_path / "cfg", server, "file")
    server.default = Reply(chunks=WORDS)

    async def main() -> list[str]:
        with (
            concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
            ExecutionSession(config) as session,
        ):
            handle = await session.arun(inputs={"topic": "kelp"}, mode="background", executor=pool)
            texts = [t async for t in handle.astream_text()]
            result = await handle.aresult(timeout=60)
            assert result.status == RunStatus.SUCCEEDED
            return texts

    assert "".join(asyncio.run(main())) == "".join(WORDS) * 2


def test_the_dask_example_runs(tmp_path: Path) -> None:
    """examples/distributed/run_dask.py, as a user runs it: a LocalCluster of two worker
    processes, runs on it, one streamed here, one cancelled from here."""
    import shutil

    example = tmp_path / "distributed"
    shutil.copytree(REPO / "examples" / "distributed", example, ignore=shutil.ignore_patterns(".amsha"))
    proc = subprocess.run(
        [sys.executable, str(example / "run_dask.py"), "--runs", "3"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, describe(proc)
    out = proc.stdout
    assert "Tide pools fill and empty twice a day" in out
    assert "cancel run-" in out and ": True" in out
    assert out.count("SUCCEEDED") >= 2 and "CANCELLED" in out
    assert "ran on vm pid" in out or "ran on " in out
