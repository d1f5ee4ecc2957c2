"""pytest plugin of the mutation harness: records every failure of every test class, stops
running a mutant's class at its first failure (it is killed), and writes the record as JSON
to the file named by ``KIT_RESULTS``."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_failures: dict[str, list[dict[str, str]]] = {}
_ran: dict[str, int] = {}


def _owner(item: Any) -> str:
    return str(item.cls.__name__) if getattr(item, "cls", None) is not None else "?"


def pytest_runtest_setup(item: pytest.Item) -> None:
    owner = _owner(item)
    if getattr(item.cls, "MUTANT", None) and _failures.get(owner):
        pytest.skip("mutant already killed")
    _ran[owner] = _ran.get(owner, 0) + 1


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.failed:
        return
    owner = report.nodeid.split("::")[1] if "::" in report.nodeid else "?"
    text = report.longreprtext.strip()
    # A contract failure (pytest.fail with pytrace=False) is its message alone.
    _failures.setdefault(owner, []).append(
        {"test": report.nodeid.split("::")[-1], "when": report.when, "message": text}
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("KIT_RESULTS")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"failures": _failures, "ran": _ran}, fh)
