"""Area ``secrets``: a canary key is planted (the server insists on it, so it is really
sent), then made to come back every way a key comes back: as a run input, in the answer
split across tokens, masked (``sk-abc1****wxyz``), echoed in 401 and 500 bodies with the
``Authorization`` header, inside an HTML page. Then every artifact is searched for it and
for its fragments: stdout and stderr of ``amsha run`` and of the ``runs`` commands, the jsonl
file, the file store's files, the sqlite database's bytes (and its WAL), the OpenTelemetry
export (console in the CLI, in-memory in process), and the str, repr and args of every
exception raised (and of every exception chained to it). Each artifact is one case."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from _tally import Tally
from amsha import ExecutionSession
from amsha.cli import main as cli_main
from amsha_openai.testing import OpenAIServer, Reply

CANARY = f"sk-canary-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
ENV = "CANARY_OPENAI_KEY"


def fragments() -> list[str]:
    """The key, its masked form, and every 8 characters of it after ``sk-``."""
    return [CANARY, f"{CANARY[:8]}*", *(CANARY[i : i + 8] for i in range(3, len(CANARY) - 7))]


def leaks(blob: str | bytes) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return [f for f in fragments() if f in text]


def scenarios() -> dict[str, list[Reply]]:
    k = CANARY
    return {
        "answer": [Reply(chunks=[f"here {k[:5]}", k[5:20], k[20:], f" masked {k[:8]}****{k[-4:]} end"])],
        "echo_401": [Reply.fail(401, "bad key", echo_auth=True)],
        "echo_500": [Reply.fail(500, "boom", echo_auth=True, times=3)],
        "html": [Reply(raw_body=f"<html>key {k} refused</html>".encode(), times=3)],
        "masked_401": [Reply.fail(401, f"Incorrect API key provided: {k[:8]}****{k[-4:]}.")],
    }


def config(server: OpenAIServer, tmp: Path, store: str, otel: str) -> dict[str, Any]:
    state = (
        {"name": "file", "options": {"path": str(tmp / "store")}}
        if store == "file"
        else {"name": "sqlite", "options": {"path": str(tmp / "amsha.db")}}
    )
    return {
        "provider": server.provider_config(api_key_env=ENV),
        "retry": {"max_retries": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02},
        "state": state,
        "observers": [
            {"name": "jsonl", "options": {"path": str(tmp / f"events-{store}.jsonl")}},
            "console",
            {"name": "opentelemetry", "options": {"exporter": otel, "capture_content": True}},
        ],
        "agents": {"a": {"role": "Writer", "goal": "Repeat {topic}"}},
        "tasks": {"t": {"description": "Say {topic}.", "agent": "a"}},
    }


def chain(error: BaseException) -> str:
    out: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out += [str(current), repr(current), repr(current.args)]
        if hasattr(current, "to_dict"):
            out.append(json.dumps(current.to_dict(), default=str))
        for attr in ("cause", "error", "partial_text"):
            out.append(repr(getattr(current, attr, None)))
        current = current.__cause__ or current.__context__
    return "\n".join(out)


def cli(tally: Tally, server: OpenAIServer, tmp: Path) -> None:
    env = {**os.environ, ENV: CANARY}
    for store in ("file", "sqlite"):
        path = tmp / f"amsha-{store}.json"
        path.write_text(json.dumps(config(server, tmp, store, "console")))
        run_ids = []
        for name, replies in scenarios().items():
            server.reset()
            server.script(*replies)
            proc = subprocess.run(
                [sys.executable, "-m", "amsha", "run", str(path), "--input", f"topic=the key {CANARY}", "--json"],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
            tally.check(proc.returncode in (0, 1), f"cli {store}/{name}: exit {proc.returncode}: {proc.stderr[-300:]}")
            for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                found = leaks(text)
                tally.check(not found, f"cli {store}/{name} {stream} holds {found[:2]}")
            found_ids = re.findall(r'"run_id": "(run-[^"]+)"', proc.stdout)
            tally.check(bool(found_ids), f"cli {store}/{name}: no run id on stdout")
            run_ids += found_ids[:1]
        commands = [["runs", "list", "--json"], ["runs", "list"]]
        for run_id in run_ids:
            commands += [
                ["runs", "show", run_id, "--json"],
                ["runs", "show", run_id],
                ["runs", "events", run_id, "--json"],
                ["runs", "events", run_id],
            ]
        # The ``runs`` commands read what the runs stored; run in this process (the CLI's
        # own main) to keep the suite quick, with the key in the environment as above.
        os.environ[ENV] = CANARY
        for command in commands:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli_main([*command, "--config", str(path)])
            found = leaks(out.getvalue() + err.getvalue())
            tally.check(code == 0 and not found, f"{store} {' '.join(command[:2])}: exit {code}, holds {found[:2]}")


def in_process(tally: Tally, server: OpenAIServer, tmp: Path) -> None:
    os.environ[ENV] = CANARY
    cfg = config(server, tmp, "sqlite", "memory")
    cfg["state"]["options"]["path"] = str(tmp / "inproc.db")
    with ExecutionSession(cfg) as session:
        for name, replies in scenarios().items():
            server.reset()
            server.script(*replies)
            handle = session.run(inputs={"topic": f"the key {CANARY}"})
            events = [e.to_dict() for e in handle.stream()]
            found = leaks(json.dumps(events, ensure_ascii=False))
            tally.check(not found, f"stream events of {name} hold {found[:2]}")
            try:
                handle.result(timeout=30)
            except Exception as exc:
                found = leaks(chain(exc))
                tally.check(not found, f"the {name} run's exception holds {found[:2]}")
            found = leaks(json.dumps(session.store.get_run(handle.run_id).to_dict(), default=str))
            tally.check(not found, f"the {name} run's record holds {found[:2]}")
            # The LLM alone, outside any run.
            server.reset()
            server.script(*replies)
            try:
                list(session.llm().stream(f"the key {CANARY}"))
            except Exception as exc:
                found = leaks(chain(exc))
                tally.check(not found, f"session.llm().stream() exception for {name} holds {found[:2]}")
        session.flush_observers(10)
        otel = next(o for o in session.observers if type(o).__name__.startswith("Otel") or hasattr(o, "span_exporter"))
        spans = [span.to_json() for span in otel.span_exporter.get_finished_spans()]
        tally.check(bool(spans), "no spans were exported")
        found = leaks("\n".join(spans))
        tally.check(not found, f"the OpenTelemetry export holds {found[:2]}")


def files(tally: Tally, tmp: Path) -> None:
    paths = [p for p in tmp.rglob("*") if p.is_file() and not p.name.startswith("amsha-")]
    tally.check(len(paths) >= 6, f"only {len(paths)} artifact files")
    for path in paths:
        found = leaks(path.read_bytes())
        tally.check(not found, f"{path.relative_to(tmp)} holds {found[:2]}")


def main() -> None:
    tally = Tally("secrets")
    tmp = Path(tempfile.mkdtemp())
    with OpenAIServer(api_key=CANARY) as server:
        cli(tally, server, tmp)
        in_process(tally, server, tmp)
        # The key really was sent: the server checks it.
        tally.check(
            any(r.headers.get("authorization") == f"Bearer {CANARY}" for r in server.requests), "the key was never sent"
        )
    files(tally, tmp)
    tally.report()


if __name__ == "__main__":
    main()
