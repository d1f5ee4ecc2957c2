"""The bench harness: the figure record, the registry of benchmarks, checks and timing helpers.

A benchmark is a function ``fn(settings) -> list[Figure]`` registered with :func:`benchmark`
under the names of the figures it produces. ``run.py`` imports the modules that hold
benchmarks, selects them (``--only``), runs them and prints one JSON line per figure.
"""

from __future__ import annotations

import fnmatch
import gc
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REGISTRY",
    "Benchmark",
    "Check",
    "Figure",
    "Paired",
    "Settings",
    "Skip",
    "Timing",
    "benchmark",
    "check",
    "log",
    "paired",
    "python_env",
    "select",
    "sig",
    "time_python",
    "timed",
]


def log(message: str = "") -> None:
    """Progress and notes: stderr only (stdout carries nothing but the JSON figures)."""
    print(message, file=sys.stderr, flush=True)


# ---- figures ------------------------------------------------------------------------------


def sig(value: float | None, digits: int) -> float | None:
    """``value`` rounded to ``digits`` significant digits (None, 0 and non-finite unchanged)."""
    if value is None or value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


@dataclass(slots=True)
class Figure:
    """One lower-is-better figure, Amsha against a peer. ``ratio`` is amsha / peer.

    ``goal`` is the target ratio (None: reported only). ``detail`` goes to stderr only.
    """

    name: str
    amsha: float
    peer: float | None
    peer_name: str
    unit: str
    goal: float | None
    detail: str = ""
    noise: float | None = None
    """The noise bound of ``amsha`` (same unit), where the benchmark measures one: what an
    A/A control (two identical subjects, measured as Amsha is) reads."""

    @property
    def ratio(self) -> float | None:
        if self.peer is None or self.peer <= 0:
            return None
        return self.amsha / self.peer

    @property
    def met(self) -> bool | None:
        """Whether the ratio is within the goal; None when there is no goal (or no ratio)."""
        ratio = self.ratio
        if self.goal is None or ratio is None:
            return None
        return ratio <= self.goal

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "amsha": sig(self.amsha, 4),
            "peer": sig(self.peer, 4),
            "peer_name": self.peer_name,
            "unit": self.unit,
            "ratio": sig(self.ratio, 3),
            "goal": self.goal,
            **({"noise": sig(self.noise, 3)} if self.noise is not None else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


# ---- registry -----------------------------------------------------------------------------


class Skip(Exception):
    """Raised by a benchmark that cannot run here (a peer or a backend is not installed)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the command line asked for. ``quick``: fewer, shorter repeats (for CI)."""

    quick: bool = False

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass(frozen=True, slots=True)
class Benchmark:
    """A registered benchmark: the figures it produces and the function producing them."""

    figures: tuple[str, ...]
    fn: Callable[[Settings], list[Figure]]
    module: str

    @property
    def name(self) -> str:
        return self.figures[0]

    def wants(self, patterns: Sequence[str] | None) -> bool:
        return any(matches(f, patterns) for f in self.figures)


REGISTRY: list[Benchmark] = []


def benchmark(*figures: str) -> Callable[[Callable[[Settings], list[Figure]]], Callable[[Settings], list[Figure]]]:
    """Register ``fn(settings) -> list[Figure]`` as producing the figures named here."""
    if not figures:
        raise ValueError("a benchmark must name the figures it produces")

    def register(fn: Callable[[Settings], list[Figure]]) -> Callable[[Settings], list[Figure]]:
        taken = {f for b in REGISTRY for f in b.figures}
        clash = taken.intersection(figures)
        if clash:
            raise ValueError(f"figure names registered twice: {', '.join(sorted(clash))}")
        REGISTRY.append(Benchmark(tuple(figures), fn, fn.__module__))
        return fn

    return register


def matches(name: str, patterns: Sequence[str] | None) -> bool:
    """``--only`` matching: no patterns selects all; a pattern is an exact name, a dotted
    prefix (``llm`` selects ``llm.generate.overhead_per_call``) or a shell glob."""
    if not patterns:
        return True
    for pattern in patterns:
        if name == pattern or name.startswith(pattern.rstrip(".") + ".") or fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def select(patterns: Sequence[str] | None) -> list[Benchmark]:
    return [b for b in REGISTRY if b.wants(patterns)]


# ---- checks -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


CHECKS: list[Check] = []


def check(name: str, ok: bool, detail: str) -> bool:
    """Record a pass/fail property found while benchmarking (printed to stderr; a failed
    check makes ``run.py`` exit non-zero after all figures are printed)."""
    CHECKS.append(Check(name, ok, detail))
    log(f"  check {name}: {'ok' if ok else 'FAILED'}: {detail}")
    return ok


# ---- in-process timing --------------------------------------------------------------------


def _batch(fn: Callable[[], object], number: int, settle: Callable[[], object] | None = None) -> int:
    """Nanoseconds for ``number`` calls of ``fn``, then ``settle()`` if given (work ``fn``
    left to other threads, finished inside the timing, so none of it lands in the next
    batch). Like timeit: the garbage collector is collected before and paused during the
    batch, so a collection triggered by one side's garbage does not land in the other side's
    time."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        loop = itertools.repeat(None, number)
        t0 = time.perf_counter_ns()
        for _ in loop:
            fn()
        if settle is not None:
            settle()
        return time.perf_counter_ns() - t0
    finally:
        if was_enabled:
            gc.enable()


def _calibrate(fn: Callable[[], object], target_ns: int) -> int:
    """How many calls make a batch of about ``target_ns`` (warms ``fn`` up on the way)."""
    number = 1
    while True:
        elapsed = _batch(fn, number)
        if elapsed >= target_ns // 4 or number >= 1 << 22:
            per_call = max(elapsed / number, 1.0)
            return max(1, round(target_ns / per_call))
        number *= 4


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-operation nanoseconds of repeated batches: ``median`` and the quartiles."""

    median: float
    low: float
    high: float
    number: int
    repeat: int


def timed(
    fn: Callable[[], object],
    *,
    settings: Settings,
    target_ms: float | None = None,
    repeat: int | None = None,
    after_batch: Callable[[], object] | None = None,
) -> Timing:
    """Median nanoseconds per call of ``fn`` over ``repeat`` batches of ~``target_ms`` each.
    ``after_batch`` runs untimed after each batch (to release what the batch created)."""
    target = int((target_ms or settings.pick(25, 8)) * 1e6)
    repeat = repeat or settings.pick(21, 7)
    number = _calibrate(fn, target)
    if after_batch is not None:
        after_batch()
    _batch(fn, number)  # warm-up batch, not counted
    if after_batch is not None:
        after_batch()
    per_call: list[float] = []
    for _ in range(repeat):
        per_call.append(_batch(fn, number) / number)
        if after_batch is not None:
            after_batch()
    low, high = _quartiles(per_call)
    return Timing(statistics.median(per_call), low, high, number, repeat)


@dataclass(frozen=True, slots=True)
class Paired:
    """``wrapped`` against ``bare`` timed in adjacent batches: ``overhead`` is the median of
    the per-round differences (ns per operation), with its quartiles."""

    wrapped: float
    bare: float
    overhead: float
    low: float
    high: float
    number: int
    repeat: int

    def describe(self, scale: float = 1e3, unit: str = "us", per: float = 1.0) -> str:
        f = scale * per
        return (
            f"overhead {self.overhead / f:.3g} {unit} (quartiles {self.low / f:.3g}..{self.high / f:.3g}) = "
            f"{self.wrapped / f:.4g} - {self.bare / f:.4g} {unit} bare; {self.repeat} rounds of {self.number}"
        )


def paired(
    wrapped: Callable[[], object],
    bare: Callable[[], object],
    *,
    settings: Settings,
    target_ms: float | None = None,
    repeat: int | None = None,
    settle: tuple[Callable[[], object], Callable[[], object]] | None = None,
) -> Paired:
    """Overhead of ``wrapped`` over ``bare`` per call. Both run the same number of calls per
    batch (calibrated on ``wrapped``, the slower one); each round times both back to back,
    alternating which goes first, so drift (CPU clock, other load) hits both alike.
    ``settle``: (for wrapped, for bare), each called once at the end of every batch of its
    side, inside the timing (see :func:`_batch`)."""
    target = int((target_ms or settings.pick(25, 8)) * 1e6)
    repeat = repeat or settings.pick(21, 7)
    ws, bs = settle if settle is not None else (None, None)
    number = _calibrate(wrapped, target)
    _calibrate(bare, target // 4)  # warm the bare path up too
    _batch(wrapped, number, ws)
    _batch(bare, number, bs)
    w: list[float] = []
    b: list[float] = []
    for r in range(repeat):
        if r % 2 == 0:
            w.append(_batch(wrapped, number, ws) / number)
            b.append(_batch(bare, number, bs) / number)
        else:
            b.append(_batch(bare, number, bs) / number)
            w.append(_batch(wrapped, number, ws) / number)
    diffs = [x - y for x, y in zip(w, b, strict=True)]
    low, high = _quartiles(diffs)
    return Paired(statistics.median(w), statistics.median(b), statistics.median(diffs), low, high, number, repeat)


# ---- fresh-process timing -----------------------------------------------------------------


def python_env() -> dict[str, str]:
    """The environment for child interpreters: this one's, except that bytecode may be
    written, so that after a warm-up run every import is timed from its ``.pyc`` cache (as
    an installed package is used), never from source on one side and cached on the other."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run_python(code: str, env: dict[str, str]) -> int:
    t0 = time.perf_counter_ns()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter_ns() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return elapsed


def time_python(codes: Iterable[str], *, runs: int, warmup: bool = True) -> dict[str, list[int]]:
    """Wall nanoseconds of ``python -c CODE`` in fresh interpreters, for each code: one
    untimed warm-up run each (it writes missing bytecode and fills the OS file cache), then
    ``runs`` rounds, the order rotated every round."""
    codes = list(dict.fromkeys(codes))
    env = python_env()
    if warmup:
        for code in codes:
            _run_python(code, env)
    out: dict[str, list[int]] = {code: [] for code in codes}
    for r in range(runs):
        shift = r % len(codes)
        for code in codes[shift:] + codes[:shift]:
            out[code].append(_run_python(code, env))
    return out
