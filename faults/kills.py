"""Area ``kills``: SIGKILL and SIGINT rounds on writers, and SIGINT on ``amsha run``.

A writer process (``writer.py``) commits state versions and events to a file or sqlite
store and acknowledges each on stdout; it is killed at a random moment, then the store is
opened again: every acknowledged version must read back exactly and every acknowledged
event be in the log (else it counts as lost), and the store must open and take the next
writer (else broke). ``amsha run`` interrupted with SIGINT mid-stream must exit within
seconds (130 or 1) and leave its run recorded as ended, not RUNNING."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _tally import Tally
from amsha.errors import AmshaError
from writer import expected

HERE = Path(__file__).resolve().parent
ROUNDS = int(os.environ.get("AMSHA_FAULT_KILL_ROUNDS", "12"))
ACKED = [0]


def _open(kind: str, path: Path):
    if kind == "sqlite":
        from amsha_sqlite.store import SqliteStore

        return SqliteStore(path)
    from amsha.builtins.stores import FileStore

    return FileStore(path)


def _round(tally: Tally, kind: str, path: Path, sig: signal.Signals, rng: random.Random) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "writer.py"), kind, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acks: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ack "):
                acks.append(int(line.split()[1]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while not acks and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.05, 0.4))
    proc.send_signal(sig)
    try:
        proc.wait(10)
        exited = True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        exited = False
    reader.join(5)
    what = f"{kind} {sig.name} after {len(acks)} acks"
    if not acks:
        tally.check(
            False, f"{what}: the writer never acknowledged a write: {proc.stderr.read()[-300:] if proc.stderr else ''}"
        )
        return
    try:
        store = _open(kind, path)
        missing = 0
        for version in acks:
            try:
                if store.get_state("kill-state", version).data != expected(version):
                    missing += 1
            except AmshaError:
                missing += 1
        ACKED[0] += len(acks)
        seen = {e["seq"] for e in store.read_events("kill-run")}
        missing += sum(1 for v in acks if v not in seen)
        store.close()
    except Exception as exc:
        tally.check(False, f"{what}: the store did not open or read: {type(exc).__name__}: {exc}")
        return
    tally.check(exited, f"{what}: the writer did not exit within 10 s", lost=missing)


def _amsha_run_sigint(tally: Tally, tmp: Path, i: int) -> None:
    config = {
        "provider": {
            "name": "scripted",
            "model": "m",
            "options": {"default": " ".join(f"w{n}" for n in range(400)), "token_delay_s": 0.01},
        },
        "state": {"name": "sqlite", "options": {"path": str(tmp / "runs.db")}},
        "agents": {"a": {"role": "r", "goal": "g"}},
        "tasks": {"t": {"description": "talk", "agent": "a"}},
    }
    path = tmp / f"run{i}.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "amsha", "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    got = ""
    deadline = time.monotonic() + 30
    while "w5" not in got and time.monotonic() < deadline:
        got += proc.stdout.read(1) or ""
        if proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=15)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        code = None
    from amsha_sqlite.store import SqliteStore

    store = SqliteStore(tmp / "runs.db")
    records = store.list_runs(100)
    store.close()
    running = [r.run_id for r in records if r.status in ("PENDING", "RUNNING")]
    ok = code in (1, 130) and not running
    tally.check(ok, f"amsha run SIGINT #{i}: exit {code}, still running: {running}")


def main() -> None:
    tally = Tally("kills")
    rng = random.Random(int(os.environ.get("AMSHA_FAULT_SEED", "14")))
    tmp = Path(tempfile.mkdtemp())
    for kind in ("sqlite", "file"):
        path = tmp / ("kill.db" if kind == "sqlite" else "kill-files")
        for n in range(ROUNDS):
            _round(tally, kind, path, signal.SIGKILL if n % 3 else signal.SIGINT, rng)
    for i in range(3):
        _amsha_run_sigint(tally, tmp, i)
    print(f"[kills] {ACKED[0]} acknowledged writes checked after the kills", file=sys.stderr)
    tally.report()


if __name__ == "__main__":
    main()
