"""Runs in worker processes: BACKGROUND runs on a process pool, attached by run id from another
process through a ``file`` store; the sync API under a running event loop; the async API
inside a worker process.

Process pools use the ``spawn`` start method: portable, and safe in a test process that
already runs threads (Amsha's loop thread among them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from amsha import ExecutionSession, RunStatus
from amsha.errors import RunFailedError
from conftest import clean_env, describe

RESEARCH = "Fact one. Fact two. Fact three."
WRITE = "A short paragraph built from the facts."
TERMINAL = {"run.finished", "run.failed", "run.cancelled"}


def write_config(folder: Path, **provider_options: Any) -> Path:
    """Two agents, two tasks, the scripted provider, a ``file`` store next to the config."""
    config = {
        "provider": {
            "name": "scripted",
            "model": "scripted-1",
            "options": {
                "responses": [{"match": "Research", "text": RESEARCH}, {"match": "Write", "text": WRITE}],
                **provider_options,
            },
        },
        "state": {"name": "file", "options": {"path": ".amsha"}},
        "agents": {
            "researcher": {"role": "Researcher", "goal": "Find facts about {topic}"},
            "writer": {"role": "Writer", "goal": "Write about {topic}"},
        },
        "tasks": {
            "research": {"description": "Research {topic}.", "agent": "researcher"},
            "write": {"description": "Write about {topic}.", "agent": "writer", "context": ["research"]},
        },
        "retry": {"max_retries": 0},
    }
    path = folder / "amsha.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class CountingPool(concurrent.futures.ProcessPoolExecutor):
    """A process pool that remembers what it was handed."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.submitted: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted.append(f"{fn.__module__}.{fn.__qualname__}")
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def pool() -> Iterator[CountingPool]:
    """One spawn worker for the module: it starts once (imports take a while)."""
    with CountingPool() as executor:
        yield executor


def attach_elsewhere(config: Path, run_id: str) -> dict[str, Any]:
    """Attach to ``run_id`` from a fresh Python process and report what it reads."""
    code = textwrap.dedent(
        """
        import json, sys
        from amsha import ExecutionSession
        with ExecutionSession(sys.argv[1]) as session:
            handle = session.attach(sys.argv[2])
            result = handle.result(timeout=60)
            events = session.events(sys.argv[2])
            print(json.dumps({
                "status": handle.status(),
                "mode": handle.mode.value,
                "outputs": result.outputs,
                "state": None if result.state is None else {"data": result.state.to_dict(), "version": result.state.version},
                "tokens": result.metrics.total_tokens,
                "events": [[e.seq, e.kind, e.task] for e in events],
                "pid": __import__("os").getpid(),
            }))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(config), run_id],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=config.parent.parent,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, describe(proc)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


# ---- process pool + attach ------------------------------------------------------------------


def test_background_run_on_a_process_pool_then_attached_from_another_process(
    tmp_path: Path, pool: CountingPool
) -> None:
    config = write_config(tmp_path)
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "eels"}, mode="background", executor=pool)
        assert handle.mode.value == "background"
        result = handle.result(timeout=120)
        assert pool.submitted[-1] == "amsha._run.run_spec"  # it ran in the worker
        assert result.status == RunStatus.SUCCEEDED
        assert result.outputs == {"research": RESEARCH, "write": WRITE}
        assert result.metrics is not None and result.metrics.total_tokens > 0
        assert result.state is not None and result.state.to_dict() == result.outputs
        local_events = [(e.seq, e.kind) for e in handle.stream()]
        run_id = handle.run_id

    seen = attach_elsewhere(config, run_id)
    assert seen["pid"] != os.getpid()
    assert seen["status"] == "SUCCEEDED" and seen["mode"] == "background"
    assert seen["outputs"] == {"research": RESEARCH, "write": WRITE}
    assert seen["tokens"] == result.metrics.total_tokens
    seqs = [seq for seq, _kind, _task in seen["events"]]
    assert seqs == list(range(len(seqs)))
    assert [(seq, kind) for seq, kind, _task in seen["events"]] == local_events
    assert seen["events"][0][1] == "run.started" and seen["events"][-1][1] == "run.finished"
    assert [task for _s, kind, task in seen["events"] if kind == "task.finished"] == ["research", "write"]
    # The state the run wrote is readable from the other process too.
    assert seen["state"] == {"data": result.outputs, "version": result.state.version}


def test_failed_run_on_a_process_pool_is_failed_here_and_when_attached(tmp_path: Path, pool: CountingPool) -> None:
    config = write_config(tmp_path, failures=[{"kind": "auth", "message": "bad key"}])
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "eels"}, mode="background", executor=pool)
        with pytest.raises(RunFailedError) as info:
            handle.result(timeout=120)
        assert info.value.task == "research"
        assert type(info.value.cause).__name__ == "AuthenticationError"
        assert handle.status() == RunStatus.FAILED
        record = session.store.get_run(handle.run_id)
        assert record.status == RunStatus.FAILED and record.error is not None
        assert record.error["type"] == "AuthenticationError"
    code = textwrap.dedent(
        """
        import sys
        from amsha import ExecutionSession
        from amsha.errors import RunFailedError
        with ExecutionSession(sys.argv[1]) as session:
            try:
                session.attach(sys.argv[2]).result(timeout=60)
            except RunFailedError as exc:
                print(type(exc.cause).__name__, exc.task)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(config), handle.run_id],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.split() == ["AuthenticationError", "research"]


def test_attach_while_the_run_is_going_streams_every_event(tmp_path: Path, pool: CountingPool) -> None:
    """The other process is ready (imports done, session built) before the run starts, so it
    attaches while the run is still streaming; it then follows the run live to its end."""
    config = write_config(tmp_path, token_delay_s=0.08)
    code = textwrap.dedent(
        """
        import json, sys
        from amsha import ExecutionSession
        with ExecutionSession(sys.argv[1]) as session:
            print("ready", flush=True)
            handle = session.attach(sys.stdin.readline().strip())
            first = handle.status()
            events = [[e.seq, e.kind] for e in handle.stream()]
            result = handle.result(timeout=60)
            print(json.dumps({"first": first, "events": events, "outputs": result.outputs}))
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        with ExecutionSession(config) as session:
            handle = session.run(inputs={"topic": "eels"}, mode="background", executor=pool)
            proc.stdin.write(handle.to_json() + "\n")
            proc.stdin.flush()
            result = handle.result(timeout=120)
            stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    seen = json.loads(stdout)
    assert seen["first"] in ("PENDING", "RUNNING")
    assert seen["outputs"] == result.outputs == {"research": RESEARCH, "write": WRITE}
    assert [seq for seq, _kind in seen["events"]] == list(range(len(seen["events"])))
    assert seen["events"][-1][1] == "run.finished"
    assert sum(1 for _seq, kind in seen["events"] if kind == "llm.token") > 4


def test_config_tools_run_on_a_process_pool(tmp_path: Path, pool: CountingPool) -> None:
    """Tools declared in config travel with the config: such a run works on a process pool."""
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["tools"] = {"upper": "string:capwords"}
    data["tasks"]["research"]["tools"] = ["upper"]
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "eels"}, mode="background", executor=pool)
        result = handle.result(timeout=120)
    assert result.outputs == {"research": RESEARCH, "write": WRITE}


# ---- sync API under a running loop; async API in a worker -----------------------------------


def test_sync_api_inside_a_running_event_loop(tmp_path: Path, pool: CountingPool) -> None:
    config = write_config(tmp_path)

    async def main() -> dict[str, Any]:
        assert asyncio.get_running_loop() is not None
        with ExecutionSession(config) as session:
            interactive = session.run(inputs={"topic": "eels"}).result(timeout=60)
            streamed = "".join(e.text for e in session.run(inputs={"topic": "eels"}).stream())
            background = session.run(inputs={"topic": "eels"}, mode="background").result(timeout=60)
            on_pool = session.run(inputs={"topic": "eels"}, mode="background", executor=pool).result(timeout=120)
            with concurrent.futures.ThreadPoolExecutor(1) as threads:
                on_threads = session.run(inputs={"topic": "eels"}, mode="background", executor=threads).result(60)
            return {
                "interactive": interactive.outputs,
                "streamed": streamed,
                "background": background.outputs,
                "pool": on_pool.outputs,
                "threads": on_threads.outputs,
                "runs": len(session.runs()),
            }

    out = asyncio.run(main())
    expected = {"research": RESEARCH, "write": WRITE}
    assert out["interactive"] == out["background"] == out["pool"] == out["threads"] == expected
    assert out["streamed"] == RESEARCH + WRITE
    assert out["runs"] == 5


def async_api_in_worker(config: str) -> dict[str, Any]:
    """Runs in the worker process: the async API on the worker's own event loop."""

    async def main() -> dict[str, Any]:
        async with ExecutionSession(config) as session:
            handle = await session.arun(inputs={"topic": "eels"})
            kinds = [event.kind async for event in handle.astream()]
            result = await handle.aresult(timeout=60)
            text = "".join([t async for t in (await session.arun(inputs={"topic": "eels"})).astream_text()])
            background = await session.arun(inputs={"topic": "eels"}, mode="background")
            late = await background.aresult(timeout=60)
            attached = await session.attach(background.run_id).aresult(timeout=60)
            llm = session.llm()
            answer = await llm.agenerate("Research quickly")
            return {
                "pid": os.getpid(),
                "status": result.status,
                "outputs": result.outputs,
                "kinds": kinds,
                "text": text,
                "background": [background.mode.value, late.status, late.outputs],
                "attached": attached.outputs,
                "llm": answer.text,
            }

    return asyncio.run(main())


def test_async_api_inside_a_worker_process(tmp_path: Path, pool: CountingPool) -> None:
    config = write_config(tmp_path)
    out = pool.submit(async_api_in_worker, str(config)).result(timeout=120)
    expected = {"research": RESEARCH, "write": WRITE}
    assert out["pid"] != os.getpid()
    assert out["status"] == "SUCCEEDED" and out["outputs"] == expected
    assert out["kinds"][0] == "run.started" and out["kinds"][-1] == "run.finished"
    assert out["kinds"].count("task.finished") == 2
    assert out["text"] == RESEARCH + WRITE
    assert out["background"] == ["background", "SUCCEEDED", expected]
    assert out["attached"] == expected
    assert out["llm"] == RESEARCH
    # The worker's runs are in the shared store, readable here.
    with ExecutionSession(config) as session:
        records = session.runs()
    assert len(records) == 3 and {r.status for r in records} == {"SUCCEEDED"}
