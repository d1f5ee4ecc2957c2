"""Figures of amsha-ui: time to first byte of its pages against the same data read with the
``amsha runs`` commands.

The data: 10,000 recorded runs (records with metrics, written to the store directly, newest
first on the page) and one run of 5,000 events recorded by a real session (two tasks on the
scripted provider streaming about 2,500 chunks each). The store is ``sqlite`` (the store a
user with ten thousand runs has); a reported-only figure repeats the list on the ``file``
store.

``amsha ui`` runs as users run it, in a process of its own (``amsha ui --config ...``), and
each figure is the median time to first byte of a fresh HTTP connection's ``GET`` over
several rounds: request sent, status line and headers received (Starlette sends them once the
page is rendered, so this is the whole server-side work). The peer reads the same data the
page shows: ``amsha runs list --limit 50 --json`` (the page shows 50 rows) and
``amsha runs events RUN --json`` (every event of the run), timed two ways: in this process
(``amsha.cli.main``, stdout to a buffer: the command's own work, with its session creation)
and as a fresh ``amsha`` process (what typing the command costs). Goal: at most 1.5 times the
in-process command.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Figure, Settings, Skip, benchmark, check, log

RUNS = 10_000
PAGE = 50
EVENTS = 5_000


def _need() -> None:
    try:
        import amsha_sqlite  # noqa: F401
        import amsha_ui  # noqa: F401
    except ImportError as exc:
        raise Skip(f"amsha-ui and amsha-state-sqlite must be installed: {exc}") from None


def _config(folder: Path, store: dict[str, Any], words: int = 10) -> Path:
    text = " ".join(f"w{i}" for i in range(words))
    config = {
        "provider": {"name": "scripted", "model": "scripted-1", "options": {"default": text}},
        "state": store,
        "agents": {"a": {"role": "Writer", "goal": "Write"}},
        "tasks": {"one": {"description": "Write.", "agent": "a"}, "two": {"description": "Again.", "agent": "a"}},
        "pipeline": ["one", "two"],
    }
    path = folder / f"amsha-{store['name']}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _fill(config: Path, n: int) -> str:
    """``n`` run records with metrics, and one real run of about EVENTS events; its id."""
    from amsha import ExecutionSession
    from amsha.state import RunRecord

    with ExecutionSession(config) as session:
        store = session.store
        now = time.time() - n
        base = {
            "calls": 2, "input_tokens": 120, "output_tokens": 90, "total_tokens": 210, "cached_input_tokens": 0,
            "reasoning_tokens": 0, "tokens_estimated": False, "latency_s": 2.5, "retries": 0, "errors": 0,
        }  # fmt: skip
        for i in range(n):
            status = ("SUCCEEDED", "FAILED", "CANCELLED")[i % 3]
            store.put_run(
                RunRecord(
                    run_id=f"run-bench-{i:05d}",
                    status=status,
                    tasks=["one", "two"],
                    inputs={"topic": f"topic {i}"},
                    created_at=now + i,
                    started_at=now + i,
                    finished_at=now + i + 2.5,
                    outputs={"one": "text " * 20, "two": "more " * 20},
                    error={"type": "ServerError", "message": "boom"} if status == "FAILED" else None,
                    metrics={"latency_s": 2.5, "ttft_s": 0.2, "total": base, "tasks": {}, "calls": []},
                )
            )
        big = session.run().result()
        return big.run_id


class _UI:
    """``amsha ui`` in a process of its own."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amsha", "ui", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(
                f"amsha ui did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        url = line[line.index("http://") :].split()[0]
        self.port = int(url.rsplit(":", 1)[1].strip("/"))

    def ttfb(self, path: str) -> tuple[float, int, int]:
        """Seconds to the status line and headers of ``GET path``, its status and body size."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.connect()
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            elapsed = time.perf_counter() - t0
            body = response.read()
            return elapsed, response.status, len(body)
        finally:
            conn.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _cli_in_process(argv: list[str]) -> tuple[float, int]:
    from amsha import cli

    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"amsha {' '.join(argv)} exited {code}")
    return elapsed, len(out.getvalue())


def _cli_process(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "amsha", *argv], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def _median(fn: Any, rounds: int) -> float:
    fn()  # warm-up, not counted
    return statistics.median(fn() for _ in range(rounds))


@benchmark(
    "ui.runs_page.ttfb_10k_runs",
    "ui.runs_page.ttfb_10k_runs_vs_process",
    "ui.run_page.ttfb_5k_events",
    "ui.run_page.ttfb_5k_events_vs_process",
    "ui.runs_page.ttfb_10k_runs_file_store",
)
def ui_pages(settings: Settings) -> list[Figure]:
    _need()
    rounds = settings.pick(9, 3)
    n = RUNS
    folder = Path(tempfile.mkdtemp(prefix="amsha-bench-ui-"))
    figures: list[Figure] = []
    try:
        sqlite = _config(folder, {"name": "sqlite", "options": {"path": "runs.db"}}, words=EVENTS // 2 - 6)
        t0 = time.perf_counter()
        big = _fill(sqlite, n)
        log(f"  recorded {n} runs and one run in {time.perf_counter() - t0:.1f} s")
        from amsha import ExecutionSession

        with ExecutionSession(sqlite) as session:
            events = len(session.store.read_events(big))
        list_argv = ["runs", "list", "--config", str(sqlite), "--limit", str(PAGE), "--json"]
        events_argv = ["runs", "events", big, "--config", str(sqlite), "--json"]
        ui = _UI(sqlite)
        try:
            page = _median(lambda: ui.ttfb(f"/?limit={PAGE}")[0], rounds)
            status, size = ui.ttfb(f"/?limit={PAGE}")[1:]
            check("ui.runs_page.ok", status == 200 and size > 10_000, f"GET / answered {status} with {size} bytes")
            run_page = _median(lambda: ui.ttfb(f"/runs/{big}")[0], rounds)
            status, size = ui.ttfb(f"/runs/{big}")[1:]
            check("ui.run_page.ok", status == 200, f"GET /runs/{big} answered {status} with {size} bytes")
            older = ui.ttfb(f"/?limit={PAGE}&q=topic%2012")  # a text filter walks the whole table
            log(f"  runs page with a text filter: {older[0] * 1e3:.1f} ms")
        finally:
            ui.close()
        cli_list = _median(lambda: _cli_in_process(list_argv)[0], rounds)
        cli_events = _median(lambda: _cli_in_process(events_argv)[0], rounds)
        proc_list = _median(lambda: _cli_process(list_argv), settings.pick(5, 2))
        proc_events = _median(lambda: _cli_process(events_argv), settings.pick(5, 2))
        check("ui.runs_page.under_1s", page < 1.0, f"the runs page of {n} runs: first byte after {page * 1e3:.1f} ms")
        check("ui.run_page.events", events >= EVENTS, f"the big run has {events} events")
        log(
            f"  runs page {page * 1e3:.1f} ms vs runs list --json {cli_list * 1e3:.1f} ms in process, "
            f"{proc_list * 1e3:.0f} ms as a process; run page ({events} events) {run_page * 1e3:.1f} ms vs "
            f"runs events --json {cli_events * 1e3:.1f} ms in process, {proc_events * 1e3:.0f} ms as a process"
        )
        figures += [
            Figure("ui.runs_page.ttfb_10k_runs", page * 1e3, cli_list * 1e3, "amsha runs list --json (in process)", "ms", 1.5),
            Figure("ui.runs_page.ttfb_10k_runs_vs_process", page * 1e3, proc_list * 1e3, "amsha runs list --json (process)", "ms", 1.5),
            Figure("ui.run_page.ttfb_5k_events", run_page * 1e3, cli_events * 1e3, "amsha runs events --json (in process)", "ms", 1.5),
            Figure("ui.run_page.ttfb_5k_events_vs_process", run_page * 1e3, proc_events * 1e3, "amsha runs events --json (process)", "ms", 1.5),
        ]  # fmt: skip

        # The same list on the file store (a file per run): reported only.
        files = _config(folder, {"name": "file", "options": {"path": "files"}})
        _fill(files, n)
        ui = _UI(files)
        try:
            cold = ui.ttfb(f"/?limit={PAGE}")[0]
            warm = _median(lambda: ui.ttfb(f"/?limit={PAGE}")[0], rounds)
        finally:
            ui.close()
        file_cli = _median(
            lambda: _cli_in_process(["runs", "list", "--config", str(files), "--limit", str(PAGE), "--json"])[0], rounds
        )
        log(
            f"  file store: runs page {warm * 1e3:.1f} ms ({cold * 1e3:.0f} ms on the first visit) vs runs list {file_cli * 1e3:.1f} ms"
        )
        check(
            "ui.runs_page.file_store_under_1s",
            warm < 1.0,
            f"file store, {n} runs: {warm * 1e3:.1f} ms after the first visit",
        )
        figures.append(
            Figure(
                "ui.runs_page.ttfb_10k_runs_file_store",
                warm * 1e3,
                file_cli * 1e3,
                "amsha runs list --json (in process)",
                "ms",
                None,
            )
        )
        return figures
    finally:
        shutil.rmtree(folder, ignore_errors=True)
