"""The fault suite: ``nox -s faults`` (or ``python faults/run.py``).

Each area runs in a process of its own (secrets registered by one cannot hide a leak in
another), two at a time; each prints one JSON line ``{"area", "cases", "held", "broke",
"lost"}``. The suite fails unless every area ran and broke and lost are 0 everywhere.

Areas: ``provider`` (a chaos Chat Completions server through ``LLM``, sessions and
``amsha run``), ``configs`` and ``stores`` (hypothesis over config files, and over states and
run inputs on every built-in store), ``secrets`` (a canary key planted, every artifact
scanned), ``kills`` (SIGKILL and SIGINT rounds on writers and on ``amsha run``).
``python faults/run.py AREA...`` runs only those.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AREAS = {
    "provider": "chaos.py",
    "secrets": "secrets_scan.py",
    "kills": "kills.py",
    "configs": "inputs.py",
    "stores": "inputs.py",
}
TIMEOUT_S = 480


def _run(area: str) -> tuple[str, dict[str, object] | None, str]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "AMSHA_FAULT_AREA": area}
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / AREAS[area]), area],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return area, None, f"timed out after {TIMEOUT_S}s\n{exc.stderr or ''}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"area"')]
    if proc.returncode != 0 or not lines:
        return area, None, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return area, json.loads(lines[-1]), proc.stderr


def main(argv: list[str]) -> int:
    areas = argv or list(AREAS)
    started = time.perf_counter()
    failed = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=int(os.environ.get("AMSHA_FAULT_JOBS", "2"))) as pool:
        for area, result, log in pool.map(_run, areas):
            if log.strip():
                print(log.rstrip(), file=sys.stderr)
            if result is None:
                failed = True
                print(json.dumps({"area": area, "cases": 0, "held": 0, "broke": 1, "lost": 0, "crashed": True}))
                continue
            print(json.dumps(result), flush=True)
            failed = failed or bool(result["broke"]) or bool(result["lost"]) or not result["cases"]
    print(f"faults: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
