"""The ``amsha`` command line.

::

    amsha plugins [--json]
    amsha config check CONFIG
    amsha run CONFIG [--task NAME]... [--input KEY=VALUE]... [--mode interactive|background] [--json]
    amsha runs list|show RUN_ID|events RUN_ID|replay RUN_ID [--config CONFIG] [--json]

Bad input exits non-zero with a one-line error; ``--traceback`` (or ``AMSHA_TRACEBACK=1``)
shows the traceback too. Exit codes: 0 success, 1 the run failed or was cancelled, 2 bad
input (config, plugin, arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

DEFAULT_CONFIGS = ("amsha.yaml", "amsha.yml", "amsha.toml")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="amsha", description="Amsha: run, observe and replay LLM and agent work.")
    parser.add_argument("--version", action="version", version=f"amsha {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list plugins, what they register and their load errors")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("config", help="config commands")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    c = csub.add_parser("check", help="validate a config file and its backends")
    c.add_argument("config", help="path to amsha.yaml / amsha.toml")
    c.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="run tasks from a config")
    p.add_argument("config", help="path to amsha.yaml / amsha.toml")
    p.add_argument("--task", action="append", dest="tasks", metavar="NAME", help="a task to run (repeatable, in order)")
    p.add_argument(
        "--input",
        action="append",
        dest="inputs",
        default=[],
        metavar="KEY=VALUE",
        help="fills {KEY} in agent and task texts",
    )
    p.add_argument("--mode", choices=["interactive", "background"], default="interactive")
    p.add_argument("--json", action="store_true", help="print one JSON object: run_id, status, outputs, metrics")

    p = sub.add_parser("runs", help="inspect recorded runs in the configured store")
    rsub = p.add_subparsers(dest="runs_command", required=True, metavar="SUBCOMMAND")
    for name, help_text in (
        ("list", "recent runs"),
        ("show", "one run's record"),
        ("events", "one run's events, in order"),
        ("replay", "re-run a recorded run offline from its recorded LLM exchanges"),
    ):
        r = rsub.add_parser(name, help=help_text)
        if name != "list":
            r.add_argument("run_id")
        r.add_argument(
            "--config", help="config whose state store holds the runs (default: ./amsha.yaml or ./amsha.toml)"
        )
        r.add_argument("--json", action="store_true")
        if name == "list":
            r.add_argument("--limit", type=int, default=20)
        if name == "events":
            r.add_argument("--from-seq", type=int, default=0)
            r.add_argument("--no-tokens", action="store_true", help="leave out llm.token events")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amsha`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    show_tb = args.traceback or bool(os.environ.get("AMSHA_TRACEBACK"))
    from .errors import AmshaError, ExecutionError, RunCancelledError, RunFailedError

    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("amsha: interrupted", file=sys.stderr)
        return 130
    except (RunFailedError, RunCancelledError) as exc:
        if show_tb:
            traceback.print_exc()
        print(f"amsha: {_one_line(exc)}", file=sys.stderr)
        return 1
    except AmshaError as exc:
        if show_tb:
            traceback.print_exc()
        print(f"amsha: error: {_one_line(exc)}", file=sys.stderr)
        return 1 if isinstance(exc, ExecutionError) and not isinstance(exc, ValueError) else 2
    except BrokenPipeError:
        return 0


def _one_line(exc: BaseException) -> str:
    from .secrets import redact

    text = redact(str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "plugins":
        return _plugins(args)
    if args.command == "config":
        return _config_check(args)
    if args.command == "run":
        return _run(args)
    return _runs(args)


def _plugins(args: argparse.Namespace) -> int:
    from .plugins import describe, load_plugins

    plugins = load_plugins()
    rows = describe(plugins)
    conflicts = [str(c) for c in plugins.conflicts()]
    if args.json:
        print(json.dumps({"plugins": rows, "conflicts": conflicts}, indent=2))
        return 0
    for row in rows:
        dist = f"{row['distribution']} {row['version'] or ''}".strip() if row["distribution"] else "(in code)"
        flag = "" if row["compatible"] else f"  INCOMPATIBLE (plugin API {row['plugin_api']})"
        print(f"{row['name']}  [{dist}]{flag}")
        for reg in row["registers"]:
            print(f"    {reg['kind'].replace('_', ' ')}: {reg['name']}")
        if row["error"]:
            print(f"    LOAD ERROR: {row['error']}")
    for text in conflicts:
        print(f"CONFLICT: {text}")
    return 0


def _session(config: str | None) -> Any:
    from .session import ExecutionSession

    return ExecutionSession(config)


def _config_check(args: argparse.Namespace) -> int:
    session = _session(args.config)
    cfg = session.config
    summary = {
        "config": args.config,
        "provider": cfg.provider.name,
        "model": cfg.provider.model,
        "llms": list(cfg.llms),
        "orchestrator": cfg.orchestrator.name,
        "state": cfg.state.name,
        "observers": [o.name for o in cfg.observers],
        "agents": list(cfg.agents),
        "tasks": list(cfg.tasks),
        "placeholders": sorted(session.registry.placeholders()),
    }
    session.close()
    if args.json:
        print(json.dumps({"ok": True, **summary}, indent=2))
    else:
        print(f"{args.config}: ok")
        for key, value in summary.items():
            if key != "config":
                print(f"  {key}: {value if not isinstance(value, list) else ', '.join(value) or '-'}")
    return 0


def _parse_inputs(pairs: list[str]) -> dict[str, str]:
    from .errors import InputError

    inputs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--input expects KEY=VALUE, got {pair!r}")
        inputs[key] = value
    return inputs


def _error_payload(exc: BaseException) -> dict[str, Any]:
    """The JSON of a failed or cancelled run's error: the error that ended the run (as its
    record holds it), not the wrapper the handle raised."""
    recorded = getattr(exc, "error", None)
    if isinstance(recorded, dict) and recorded.get("type"):
        return {
            "type": recorded["type"],
            "message": _one_line(exc),
            **{k: v for k, v in recorded.items() if k not in ("type", "message")},
        }
    return {"type": type(exc).__name__, "message": _one_line(exc)}


def _run(args: argparse.Namespace) -> int:
    from .builtins.observers import ConsoleObserver
    from .errors import RunCancelledError, RunFailedError
    from .handle import ExecutionMode

    inputs = _parse_inputs(args.inputs)
    session = _session(args.config)
    has_console = any(isinstance(o, ConsoleObserver) for o in session.observers)
    try:
        mode = ExecutionMode(args.mode)
        handle = session.run(args.tasks, inputs=inputs, mode=mode)
        renderer = None if (args.json or has_console) else ConsoleObserver()
        if mode is ExecutionMode.INTERACTIVE:
            try:
                for event in handle.stream():
                    if renderer is not None:
                        renderer.on_event(event)
            except KeyboardInterrupt:
                handle.cancel("interrupted from the terminal")
        else:
            if not args.json:
                print(f"run {handle.run_id} started in the background", file=sys.stderr)
            last = None
            while not handle.done():
                status = handle.status()
                if status != last and not args.json:
                    print(f"  status: {status}", file=sys.stderr)
                    last = status
                time.sleep(0.05)
            if renderer is not None:
                for event in handle.stream(
                    kinds=("task.finished", "task.failed", "run.finished", "run.failed", "run.cancelled")
                ):
                    renderer.on_event(event)
        # Observers (the console one among them) run on threads of their own: let them
        # finish printing before the summary.
        session.flush_observers(timeout=10)
        try:
            result = handle.result()
            payload = result.to_dict()
            code = 0
        except (RunFailedError, RunCancelledError) as exc:
            payload = {
                "run_id": handle.run_id,
                "status": handle.status(),
                "outputs": dict(session._runs[handle.run_id].outputs),
                "metrics": handle.metrics.to_dict(),
                "error": _error_payload(exc),
            }
            code = 1
            if not args.json:
                print(f"amsha: {_one_line(exc)}", file=sys.stderr)
        if args.json:
            from .secrets import redact_obj

            payload.pop("state", None)
            print(json.dumps(redact_obj(payload), indent=2, ensure_ascii=False))
        elif code == 0:
            _print_metrics(payload["metrics"])
        return code
    finally:
        session.close()


def _print_metrics(metrics: dict[str, Any] | None) -> None:
    if not metrics:
        return
    total = metrics["total"]
    est = " (estimated)" if total["tokens_estimated"] else ""
    ttft = metrics.get("ttft_s")
    print(
        f"metrics: {total['calls']} LLM calls, tokens {total['input_tokens']} in + {total['output_tokens']} out"
        f" = {total['total_tokens']}{est}, retries {total['retries']}, errors {total['errors']}, "
        f"latency {metrics.get('latency_s') or 0:.3f}s"
        + (f", first token after {ttft:.3f}s" if ttft is not None else "")
    )
    for name, task in metrics["tasks"].items():
        print(f"  {name}: {task['calls']} calls, {task['total_tokens']} tokens, {task['latency_s']:.3f}s")


def _find_config(path: str | None) -> str | None:
    if path:
        return path
    for name in DEFAULT_CONFIGS:
        if Path(name).exists():
            return name
    return None


def _runs(args: argparse.Namespace) -> int:
    session = _session(_find_config(args.config))
    try:
        if session.config.state.name == "memory" and not args.json:
            print("amsha: note: the state store is 'memory'; it holds only this process's runs", file=sys.stderr)
        cmd = args.runs_command
        if cmd == "list":
            records = session.runs(args.limit)
            if args.json:
                print(json.dumps([r.to_dict() for r in records], indent=2, ensure_ascii=False))
            else:
                for r in records:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
                    print(f"{r.run_id}  {r.status:<9}  {r.mode:<11}  {when}  {','.join(r.tasks)}")
            return 0
        if cmd == "show":
            record = session.store.get_run(args.run_id)
            if args.json:
                print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
            else:
                print(f"run {record.run_id}: {record.status} ({record.mode})")
                print(f"  tasks: {', '.join(record.tasks)}")
                if record.inputs:
                    print(f"  inputs: {json.dumps(record.inputs, ensure_ascii=False)}")
                print(f"  state: {record.state_id} v{record.state_version}")
                if record.error:
                    print(f"  error: {record.error.get('type')}: {record.error.get('message')}")
                for name, output in record.outputs.items():
                    text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
                    print(f"  output {name}: {text}")
                _print_metrics(record.metrics)
            return 0
        if cmd == "events":
            events = session.events(args.run_id, args.from_seq)
            for e in events:
                if args.no_tokens and e.kind == "llm.token":
                    continue
                if args.json:
                    print(json.dumps(e.to_dict(), ensure_ascii=False))
                else:
                    where = "/".join(x for x in (e.task, e.agent) if x)
                    detail = e.text if e.kind == "llm.token" else ""
                    print(
                        f"{e.seq:>5}  {e.kind:<15} {where:<24} {detail!r}"
                        if detail
                        else f"{e.seq:>5}  {e.kind:<15} {where}"
                    )
            return 0
        # replay
        from .errors import RunCancelledError, RunFailedError

        handle = session.replay(args.run_id)
        try:
            result = handle.result()
        except (RunFailedError, RunCancelledError) as exc:
            if args.json:
                print(
                    json.dumps(
                        {
                            "run_id": handle.run_id,
                            "replay_of": args.run_id,
                            "status": handle.status(),
                            "error": _one_line(exc),
                        }
                    )
                )
            raise
        original = session.store.get_run(args.run_id)
        same = result.outputs == original.outputs
        if args.json:
            print(
                json.dumps(
                    {
                        "run_id": result.run_id,
                        "replay_of": args.run_id,
                        "status": result.status,
                        "outputs": result.outputs,
                        "matches_original": same,
                    },
                    indent=2,
                    ensure_ascii=False,
                )
            )
        else:
            print(
                f"replayed {args.run_id} as {result.run_id}: {result.status}; outputs {'match' if same else 'DIFFER from'} the original"
            )
            for name, output in result.outputs.items():
                print(f"  {name}: {output}")
        return 0 if same else 1
    finally:
        session.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
