"""What every area counts: cases tried, held (the documented behaviour), broke (anything
else: an untyped error, a wrong answer, a hang, a leaked secret) and lost (acknowledged data
that did not survive)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Tally:
    """One area's counts; :meth:`check` records one case."""

    area: str
    cases: int = 0
    held: int = 0
    broke: int = 0
    lost: int = 0
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def check(self, ok: bool, what: str, *, lost: int = 0) -> bool:
        """Count one case: held if ``ok`` and nothing was lost, else broke (or lost)."""
        self.cases += 1
        if lost:
            self.lost += lost
            self.notes.append(f"LOST {lost}: {what}")
        if ok and not lost:
            self.held += 1
        elif not lost:
            self.broke += 1
            self.notes.append(f"BROKE: {what}")
        return ok and not lost

    def line(self) -> str:
        return json.dumps(
            {"area": self.area, "cases": self.cases, "held": self.held, "broke": self.broke, "lost": self.lost}
        )

    def report(self) -> None:
        """Notes to stderr (at most 30), the JSON line to stdout."""
        for note in self.notes[:30]:
            print(f"[{self.area}] {note}", file=sys.stderr)
        print(f"[{self.area}] {time.perf_counter() - self.started:.1f}s", file=sys.stderr)
        print(self.line(), flush=True)
