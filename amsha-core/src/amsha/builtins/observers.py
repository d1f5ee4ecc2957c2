"""Built-in observers: ``console`` (live tokens and a line per task, with rich) and ``jsonl``
(every event as one JSON line in a file)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict

from ..events import Event
from ..plugins import BackendContext
from ..secrets import redact_obj

__all__ = ["ConsoleObserver", "ConsoleOptions", "JsonlObserver", "JsonlOptions"]


class ConsoleOptions(BaseModel):
    """Options of the ``console`` observer."""

    model_config = ConfigDict(extra="forbid")
    tokens: bool = True
    stream: str = "stdout"


class ConsoleObserver:
    """Prints streamed tokens as they come and a progress line per task and run."""

    def __init__(self, options: ConsoleOptions | None = None, file: IO[str] | None = None) -> None:
        from rich.console import Console

        self.options = options or ConsoleOptions()
        out = file or (sys.stderr if self.options.stream == "stderr" else sys.stdout)
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self._in_tokens = False
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        with self._lock:
            self._render(event)

    def _render(self, event: Event) -> None:
        # Event text (task names, error messages, tokens) is never parsed as rich markup:
        # "[/path]" in a message must print as itself, not fail.
        kind = event.kind
        if kind == "llm.token":
            if self.options.tokens:
                self.console.out(_printable(str(event.data.get("text", ""))), end="")
                self._in_tokens = True
            return
        if self._in_tokens and kind != "llm.retry":
            self.console.out("")
            self._in_tokens = False
        if kind == "task.started":
            self._line(
                ("▶ task ", "bold cyan"),
                (event.task, "bold cyan"),
                (" (agent ", "dim"),
                (event.agent, "dim"),
                (")", "dim"),
            )
        elif kind == "task.finished":
            self._line(("✔ task ", "green"), (event.task, "green"), (" finished", "green"))
        elif kind == "task.failed":
            err = event.data.get("error", {})
            self._line(
                ("✘ task ", "red"), (event.task, "red"), (f" failed: {err.get('type')}: {err.get('message')}", "red")
            )
        elif kind == "llm.retry":
            d = event.data
            self._line(
                (f"↻ retry {d.get('attempt')} in {d.get('wait_s')}s after {d.get('error', {}).get('type')}", "yellow")
            )
        elif kind == "run.finished":
            m = event.data.get("metrics", {}).get("total", {})
            self._line(
                (f"run {event.run_id} succeeded", "bold green"),
                (" ", ""),
                (
                    f"{m.get('calls', 0)} calls, {m.get('input_tokens', 0)} in / {m.get('output_tokens', 0)} out tokens"
                    f"{' (estimated)' if m.get('tokens_estimated') else ''}, {event.data.get('latency_s', 0):.3f}s",
                    "dim",
                ),
            )
        elif kind == "run.failed":
            err = event.data.get("error", {})
            self._line((f"run {event.run_id} failed: {err.get('type')}: {err.get('message')}", "bold red"))
        elif kind == "run.cancelled":
            self._line((f"run {event.run_id} cancelled: {event.data.get('reason')}", "bold yellow"))

    def _line(self, *parts: tuple[object, str]) -> None:
        from rich.text import Text

        line = Text()
        for value, style in parts:
            line.append(_printable(str(value)), style=style or None)
        self.console.print(line)

    def close(self) -> None:
        pass


class JsonlOptions(BaseModel):
    """Options of the ``jsonl`` observer."""

    model_config = ConfigDict(extra="forbid")
    path: str = "amsha-events.jsonl"
    tokens: bool = True


class JsonlObserver:
    """Appends every event to a JSON-lines file (secrets scrubbed), flushed per event."""

    def __init__(self, path: str | Path, *, tokens: bool = True) -> None:
        self.path = Path(path)
        self.tokens = tokens
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A lone surrogate (a str Python can hold, UTF-8 cannot) occurs only inside a JSON
        # string here, and "backslashreplace" writes it as the JSON escape \\udXXX: the line
        # stays valid UTF-8 and reads back as the same string.
        self._fh: IO[str] | None = open(  # noqa: SIM115 (kept open for the session)
            self.path, "a", encoding="utf-8", errors="backslashreplace"
        )
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        if not self.tokens and event.kind == "llm.token":
            return
        line = json.dumps(redact_obj(event.to_dict()), ensure_ascii=False, default=repr)
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _printable(text: str) -> str:
    """``text`` as a terminal can take it: a surrogate pair becomes its character, a lone
    surrogate U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def build_console(ctx: BackendContext) -> ConsoleObserver:
    return ConsoleObserver(ctx.options)


def build_jsonl(ctx: BackendContext) -> JsonlObserver:
    opts: JsonlOptions = ctx.options
    path = Path(opts.path)
    return JsonlObserver(path if path.is_absolute() else ctx.base_dir / path, tokens=opts.tokens)
