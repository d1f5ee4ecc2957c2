"""A reference observer, written as a third party would: every event as a JSON line, kept
in memory (as a file or exporter would write it), under a lock."""

from __future__ import annotations

import json
import threading

from amsha import Event


class ReferenceObserver:
    """Keeps ``lines``: one JSON line per event."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines: list[str] = []
        self.closed = False

    def on_event(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), ensure_ascii=False, default=str)
        with self.lock:
            self.lines.append(line)

    def output(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def close(self) -> None:
        self.closed = True
