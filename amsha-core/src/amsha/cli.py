"""The ``amsha`` command line.

::

    amsha plugins [--json]
    amsha config check CONFIG
    amsha run CONFIG [--task NAME]... [--input KEY=VALUE]... [--mode interactive|background] [--detach] [--json]
    amsha runs list|show RUN_ID|events RUN_ID|watch RUN_ID|cancel RUN_ID|replay RUN_ID [--config CONFIG] [--json]

Bad input exits non-zero with a one-line error; ``--traceback`` (or ``AMSHA_TRACEBACK=1``)
shows the traceback too, also that of a failed run's error. Exit codes: 0 success, 1 the run
failed, was cancelled or was lost, 2 bad input (config, plugin, arguments), 130 interrupted
(SIGINT), 143 terminated (SIGTERM): either signal during ``amsha run`` cancels the run first
(reason ``interrupted``) and waits for it to record CANCELLED.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

    # --traceback is accepted before the command and after it (a parent of every subparser;
    # SUPPRESS keeps a subparser from resetting what was given before the command).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="amsha", description="Amsha: run, observe and replay LLM and agent work.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"amsha {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("plugins", help="list plugins, what they register and their load errors", parents=[common])
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("config", help="config commands", parents=[common])
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    c = csub.add_parser("check", help="validate a config file and its backends", parents=[common])
    c.add_argument("config", help="path to amsha.yaml / amsha.toml")
    c.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="run tasks from a config", parents=[common])
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
    p.add_argument(
        "--detach",
        action="store_true",
        help="start the run in a detached process of its own, print its run id and exit (watch it with "
        "'amsha runs watch RUN_ID'); needs a store other processes reach (file, sqlite, postgres)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object: run_id, status, outputs, metrics")

    p = sub.add_parser("runs", help="inspect, watch and cancel runs in the configured store", parents=[common])
    rsub = p.add_subparsers(dest="runs_command", required=True, metavar="SUBCOMMAND")
    for name, help_text in (
        ("list", "recent runs"),
        ("show", "one run's record"),
        ("events", "one run's events, in order"),
        ("watch", "stream a run live, from any process; exits with its status"),
        ("cancel", "cancel a run, wherever it executes"),
        ("replay", "re-run a recorded run offline from its recorded LLM exchanges"),
    ):
        r = rsub.add_parser(name, help=help_text, parents=[common])
        if name != "list":
            r.add_argument("run_id")
        r.add_argument(
            "--config", help="config whose state store holds the runs (default: ./amsha.yaml or ./amsha.toml)"
        )
        r.add_argument("--json", action="store_true")
        if name == "list":
            r.add_argument("--limit", type=int, default=20)
        if name in ("events", "watch"):
            r.add_argument("--from-seq", type=int, default=0)
            r.add_argument("--no-tokens", action="store_true", help="leave out llm.token events")
        if name == "cancel":
            r.add_argument("--reason", default="cancelled from the command line")
            r.add_argument("--wait", action="store_true", help="wait until the run has ended")
    _add_plugin_commands(sub, common)
    return parser


def _add_plugin_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Subcommands registered by plugins (``amsha_register_commands``), with the options
    every command takes (``common``). A plugin whose setup fails gets a command that
    reports the failure when used; the others are unaffected."""
    from .errors import PluginLoadError
    from .plugins import load_plugins

    plugins = load_plugins()
    for name in sorted(plugins.commands):
        entry = plugins.command(name)
        if entry is None:  # contested: `amsha plugins` lists the conflict
            continue
        p = sub.add_parser(
            name, help=entry.help or f"(from plugin {entry.plugin})", description=entry.help or None, parents=[common]
        )
        try:
            handler = entry.resolve_setup()(p)
            if not callable(handler):
                raise TypeError(f"the setup of command {name!r} returned {handler!r}, not a handler")
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, PluginLoadError)
                else PluginLoadError(entry.plugin, entry.distribution, entry.version, exc)
            )

            def handler(_args: argparse.Namespace, _error: PluginLoadError = error) -> int:
                raise _error

        p.set_defaults(_amsha_handler=handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amsha`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    show_tb = getattr(args, "traceback", False) or bool(os.environ.get("AMSHA_TRACEBACK"))
    args.show_tb = show_tb
    from .errors import AmshaError, ExecutionError, RunCancelledError, RunFailedError, RunLostError

    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("amsha: interrupted", file=sys.stderr)
        return 130
    except (RunFailedError, RunCancelledError, RunLostError) as exc:
        if show_tb:
            _print_traceback(exc)
        print(f"amsha: {_one_line(exc)}", file=sys.stderr)
        return 1
    except AmshaError as exc:
        if show_tb:
            traceback.print_exc()
        print(f"amsha: error: {_one_line(exc)}", file=sys.stderr)
        return 1 if isinstance(exc, ExecutionError) and not isinstance(exc, ValueError) else 2
    except BrokenPipeError:
        return 0


def _print_traceback(exc: BaseException) -> None:
    """The traceback of ``exc``; for a failed run, of the error that ended it."""
    from .secrets import redact

    cause = getattr(exc, "cause", None)
    target = cause if isinstance(cause, BaseException) and cause.__traceback__ is not None else exc
    text = "".join(traceback.format_exception(target))
    print(redact(text), file=sys.stderr, end="")


def _one_line(exc: BaseException) -> str:
    from .secrets import redact

    text = redact(str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "_amsha_handler", None)
    if handler is not None:  # a plugin's command
        code = handler(args)
        return 0 if code is None else int(code)
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


class _Interrupt:
    """SIGINT and SIGTERM during ``amsha run``: the first cancels the run (reason
    ``interrupted``) and lets it record CANCELLED and flush its events; the exit code is then
    130 or 143. A second signal stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handle: Any = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is not None or self.handle is None:
            raise KeyboardInterrupt
        self.signum = signum
        self.handle.cancel("interrupted")

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)

    @property
    def code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum


def _renderer() -> Any:
    """The terminal view of a run: tokens and task lines. The run's outcome (metrics or the
    error) is printed once, by the command, not by the renderer."""
    from .builtins.observers import ConsoleObserver

    class Renderer(ConsoleObserver):
        def on_event(self, event: Any) -> None:
            if event.kind in ("run.finished", "run.failed", "run.cancelled"):
                return
            if event.kind == "task.failed":
                self.console.out("")
                self.console.print(f"✘ task {event.task} failed", style="red", markup=False, highlight=False)
                return
            super().on_event(event)

    return Renderer()


def _run(args: argparse.Namespace) -> int:
    from .builtins.observers import ConsoleObserver
    from .handle import ExecutionMode

    inputs = _parse_inputs(args.inputs)
    session = _session(args.config)
    try:
        if args.detach:
            return _detached(args, session, inputs)
        has_console = any(isinstance(o, ConsoleObserver) for o in session.observers)
        mode = ExecutionMode(args.mode)
        renderer = None if (args.json or has_console) else _renderer()
        with _Interrupt() as interrupt:
            handle = session.run(args.tasks, inputs=inputs, mode=mode)
            interrupt.handle = handle
            if mode is ExecutionMode.BACKGROUND and not args.json:
                print(f"run {handle.run_id} started in the background", file=sys.stderr, flush=True)
            kinds = None if mode is ExecutionMode.INTERACTIVE else ("task.started", "task.finished", "task.failed")
            for event in handle.stream(kinds=kinds):
                if renderer is not None:
                    renderer.on_event(event)
            # Observers (the console one among them) run on threads of their own: let them
            # finish printing before the outcome.
            session.flush_observers(timeout=10)
            code = _outcome(args, handle, print_metrics=not has_console, print_error=not has_console)
        return interrupt.code or code
    finally:
        session.close()


def _outcome(args: argparse.Namespace, handle: Any, *, print_metrics: bool, print_error: bool) -> int:
    """Print a run's outcome once (JSON, or metrics, or its error) and return the exit code."""
    from .errors import RunCancelledError, RunFailedError, RunLostError

    try:
        result = handle.result()
        payload = result.to_dict()
        code = 0
    except (RunFailedError, RunCancelledError, RunLostError) as exc:
        partial = exc.result
        payload = {
            "run_id": handle.run_id,
            "status": handle.status(),
            "outputs": dict(partial.outputs) if partial is not None else {},
            "metrics": handle.metrics.to_dict(),
            "error": _error_payload(exc),
        }
        code = 1
        if args.show_tb:
            _print_traceback(exc)
        if not args.json and print_error:
            print(f"amsha: {_one_line(exc)}", file=sys.stderr)
    if args.json:
        from .secrets import redact_obj

        payload.pop("state", None)
        print(json.dumps(redact_obj(payload), indent=2, ensure_ascii=False))
    elif code == 0 and print_metrics:
        _print_metrics(payload["metrics"])
    return code


def _detached(args: argparse.Namespace, session: Any, inputs: dict[str, str]) -> int:
    from ._detach import DetachedProcess
    from .errors import InputError
    from .runcontrol import require_run_control

    if getattr(session.store, "process_local", False):
        raise InputError(
            f"--detach runs in another process, which cannot reach the {session.config.state.name!r} store of this "
            f"one; configure a store both reach (state: file, sqlite or postgres)"
        )
    require_run_control(session.store, "--detach")
    handle = session.run(args.tasks, inputs=inputs, mode="background", executor=DetachedProcess())
    if args.json:
        print(json.dumps({"run_id": handle.run_id, "status": handle.status()}))
    else:
        print(handle.run_id)
        print(f"amsha: watch it with: amsha runs watch {handle.run_id} --config {args.config}", file=sys.stderr)
    return 0


def _watch(args: argparse.Namespace, session: Any) -> int:
    """``runs watch``: stream a run live (tokens, task lines), then its outcome; the exit code
    is its status (0 SUCCEEDED, 1 otherwise). Interrupting stops watching; the run goes on."""
    handle = session.attach(args.run_id)
    renderer = None if args.json else _renderer()
    kinds = None
    if args.no_tokens:
        kinds = ("task.started", "task.finished", "task.failed", "run.finished", "run.failed", "run.cancelled")
    for event in handle.stream(args.from_seq, kinds=kinds):
        if args.json:
            print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
        elif renderer is not None:
            renderer.on_event(event)
    if renderer is not None:
        renderer.console.out("")
    if args.json:
        # The terminal event is committed before the final record: wait for the record.
        try:
            handle.result()
        except Exception:
            pass
        status = handle.status()
        print(json.dumps({"run_id": args.run_id, "status": status}))
        return 0 if status == "SUCCEEDED" else 1
    return _outcome(args, handle, print_metrics=True, print_error=True)


def _cancel(args: argparse.Namespace, session: Any) -> int:
    """``runs cancel``: record a cancel request (or cancel a queued run at once)."""
    from .state import CancelOutcome

    outcome = session.cancel_run(args.run_id, args.reason)
    status = session.get_run(args.run_id).status
    text = {
        CancelOutcome.REQUESTED: f"run {args.run_id}: cancel requested; its owner stops it within runs.cancel_poll_s",
        CancelOutcome.CANCELLED: f"run {args.run_id} had not started: it is CANCELLED and will not start",
        CancelOutcome.ENDED: f"run {args.run_id} had already ended ({status}): nothing to cancel",
        CancelOutcome.LOST: f"run {args.run_id} is LOST (its owner stopped renewing its lease): nothing to cancel",
    }[outcome]
    if args.wait and outcome == CancelOutcome.REQUESTED:
        handle = session.attach(args.run_id)
        try:
            handle.result()
        except Exception:
            pass
        status = handle.status()
        text += f"; it ended {status}"
    if args.json:
        print(json.dumps({"run_id": args.run_id, "outcome": outcome, "status": status}))
    else:
        print(text)
    return 0


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
        if cmd == "watch":
            return _watch(args, session)
        if cmd == "cancel":
            return _cancel(args, session)
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
            record = session.get_run(args.run_id)
            if args.json:
                print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
            else:
                print(f"run {record.run_id}: {record.status} ({record.mode})")
                print(f"  tasks: {', '.join(record.tasks)}")
                if record.inputs:
                    print(f"  inputs: {json.dumps(record.inputs, ensure_ascii=False)}")
                print(f"  state: {record.state_id} v{record.state_version}")
                if record.owner:
                    owner = record.owner
                    beat = (
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.heartbeat_at))
                        if record.heartbeat_at
                        else "never"
                    )
                    print(f"  owner: {owner.get('host')} pid {owner.get('pid')}; last heartbeat {beat}")
                if record.cancel_request:
                    print(f"  cancel requested: {record.cancel_request.get('reason')}")
                if record.status == "LOST":
                    print("  lost: its owner stopped renewing its lease; the last state snapshot is kept")
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
