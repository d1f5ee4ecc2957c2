"""amsha-ui over the other store plugins (here: amsha-state-sqlite), as ``nox -s cross``
installs them: ``amsha ui`` in a process of its own lists, shows and cancels runs recorded
by other processes in the same SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SCRIPT = """
import sys
from amsha import ExecutionSession
with ExecutionSession(sys.argv[1]) as session:
    handle = session.run(inputs={"topic": sys.argv[2]}, run_id=sys.argv[3])
    try:
        handle.result()
    except Exception as exc:
        print(type(exc).__name__)
"""


def _config(folder: Path, words: int, delay: float) -> Path:
    config = {
        "provider": {
            "name": "scripted",
            "options": {"default": " ".join(f"w{i}" for i in range(words)), "token_delay_s": delay},
        },
        "state": {"name": "sqlite", "options": {"path": "runs.db"}},
        "runs": {"cancel_poll_s": 0.05},
        "agents": {"a": {"role": "Writer", "goal": "Write about {topic}"}},
        "tasks": {"t": {"description": "Write about {topic}.", "agent": "a"}},
    }
    path = folder / f"amsha-{words}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _run(config: Path, topic: str, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(config), topic, run_id], stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    config = _config(tmp_path, 5, 0.0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "amsha", "ui", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "http://" in line, (line, proc.stderr.read() if proc.stderr else "")
    yield line[line.index("http://") :].split()[0].rstrip("/"), tmp_path
    proc.terminate()
    assert proc.wait(10) == 0


def test_ui_over_sqlite_lists_shows_and_cancels(ui: tuple[str, Path]) -> None:
    url, folder = ui
    done = _run(_config(folder, 5, 0.0), "<script>kelp</script>", "run-sqlite-done")
    assert done.wait(60) == 0
    with httpx.Client(base_url=url, timeout=10) as client:
        runs = client.get("/api/runs").json()["runs"]
        assert [(r["run_id"], r["status"]) for r in runs] == [("run-sqlite-done", "SUCCEEDED")]
        page = client.get("/runs/run-sqlite-done").text
        assert "&lt;script&gt;kelp&lt;/script&gt;" in page and "<script>kelp" not in page
        assert client.get("/api/runs", params={"q": "kelp"}).json()["runs"][0]["run_id"] == "run-sqlite-done"

        slow = _run(_config(folder, 2000, 0.02), "owls", "run-sqlite-slow")
        try:
            deadline = time.monotonic() + 30
            while True:
                events = client.get("/api/runs/run-sqlite-slow/events").json().get("events") or []
                if any(e["kind"] == "llm.token" for e in events):
                    break
                assert time.monotonic() < deadline, "the slow run never streamed"
                time.sleep(0.05)
            assert (
                client.get("/api/runs", params={"status": "RUNNING"}).json()["runs"][0]["run_id"] == "run-sqlite-slow"
            )
            seen: list[dict[str, object]] = []
            ended = None
            kind = None
            with client.stream("GET", "/api/runs/run-sqlite-slow/stream", params={"from_seq": len(events)}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "end":
                        ended = json.loads(line[6:])
                        break
                    elif line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if len(seen) == 5:
                            cancel = client.post(
                                "/api/runs/run-sqlite-slow/cancel",
                                json={"reason": "from the test"},
                                headers={"X-Amsha-UI": "1"},
                            )
                            assert cancel.json()["outcome"] == "requested"
            assert seen[0]["seq"] == len(events)  # the stream resumed where the read left off
            assert [e["seq"] for e in seen] == list(range(len(events), len(events) + len(seen)))
            assert seen[-1]["kind"] == "run.cancelled" and ended == {"status": "CANCELLED"}
            assert slow.wait(30) == 0 and slow.stdout is not None and "RunCancelledError" in slow.stdout.read()
            record = client.get("/api/runs/run-sqlite-slow").json()["run"]
            assert record["status"] == "CANCELLED" and record["error"]["message"] == "from the test"
        finally:
            if slow.poll() is None:
                slow.kill()
