"""Amsha's benchmarks, side by side with peers: one JSON line per figure on stdout.

    python bench/run.py [--quick] [--only NAME ...] [--list]

Each line is ``{"name", "amsha", "peer", "peer_name", "unit", "ratio", "goal"}``: every figure
is lower-is-better, ``ratio`` is amsha / peer and ``goal`` the target ratio (null: reported
only). Progress, notes, checks and a summary table go to stderr. The exit status is 0 when
every selected benchmark ran and every check passed, 1 otherwise (a missed goal is not a
failure: the figure is printed all the same). ``nox -s bench`` runs it; see README.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

# Modules holding benchmarks, imported in this order (their figures print in this order).
# Each is bench/<name>.py (never named after a package it imports: this folder is first on
# sys.path); a figure set that is not there yet is left out.
MODULES = (
    "core",
    "sqlite_store",
    "postgres_store",
    "openai_provider",
    "crewai_orchestrator",
    "langgraph_orchestrator",
    "otel_observer",
    "runs",
    "ui_inspector",
)
HERE = Path(__file__).resolve().parent

# The peer runs in its default, offline configuration: no tracing to a server.
OFFLINE = {"LANGCHAIN_TRACING_V2": "false", "LANGSMITH_TRACING": "false", "LANGSMITH_TRACING_V2": "false"}


def _versions() -> str:
    from importlib import metadata

    parts = [f"python {platform.python_version()} ({platform.machine()}, {os.cpu_count()} cpus)"]
    for dist in ("amsha-core", "langchain-core"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return "; ".join(parts)


def _table(figures: list[harness.Figure]) -> None:
    rows = [("figure", "amsha", "peer", "unit", "ratio", "goal", "")]
    for f in figures:
        d = f.to_dict()
        status = {True: "met", False: "MISSED", None: "-"}[f.met]
        peer = "-" if d["peer"] is None else f"{d['peer']:g}"
        ratio = "-" if d["ratio"] is None else f"{d['ratio']:g}"
        goal = "-" if f.goal is None else f"{f.goal:g}"
        rows.append((f.name, f"{d['amsha']:g}", peer, f.unit, ratio, goal, status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    harness.log()
    for row in rows:
        harness.log("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (under ~15 s; for CI)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only the figures named (exact name, dotted prefix such as 'llm', or glob); repeatable",
    )
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    args = parser.parse_args(argv)

    os.environ.update(OFFLINE)
    for module in MODULES:
        if (HERE / f"{module}.py").is_file():
            importlib.import_module(module)
    selected = harness.select(args.only)
    if args.list:
        for bench in harness.REGISTRY:
            for name in bench.figures:
                print(f"{name}\t({bench.module})")
        return 0
    if not selected:
        names = ", ".join(f for b in harness.REGISTRY for f in b.figures)
        parser.error(f"--only {' '.join(args.only or [])} selects no figure; the figures are: {names}")

    settings = harness.Settings(quick=args.quick)
    harness.log(f"amsha bench{' (quick)' if args.quick else ''}: {_versions()}")
    started = time.perf_counter()
    figures: list[harness.Figure] = []
    broken: list[str] = []
    skipped: list[str] = []
    for bench in selected:
        harness.log(f"{bench.name} ...")
        t0 = time.perf_counter()
        try:
            produced = bench.fn(settings)
        except harness.Skip as exc:
            harness.log(f"  skipped: {exc}")
            skipped.append(bench.name)
            continue
        except Exception:
            harness.log(traceback.format_exc().rstrip())
            broken.append(bench.name)
            continue
        for figure in produced:
            if harness.matches(figure.name, args.only):
                print(figure.to_json(), flush=True)
                figures.append(figure)
        harness.log(f"  ({time.perf_counter() - t0:.1f} s)")

    if figures:
        _table(figures)
    failed = [c for c in harness.CHECKS if not c.ok]
    harness.log(f"\n{len(figures)} figures in {time.perf_counter() - started:.1f} s")
    if skipped:
        harness.log(f"skipped: {', '.join(skipped)}")
    if broken:
        harness.log(f"benchmarks that raised: {', '.join(broken)}")
    if failed:
        harness.log(f"checks that FAILED: {', '.join(c.name for c in failed)}")
    return 1 if broken or failed else 0


if __name__ == "__main__":
    sys.exit(main())
