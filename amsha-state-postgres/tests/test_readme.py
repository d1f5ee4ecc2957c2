"""The README's Python example runs as written (against the test server, in a schema of its own)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from amsha_postgres.testing import PostgresServer

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(
    pg_server: PostgresServer, schema: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMSHA_POSTGRES_DSN", pg_server.dsn())
    block = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    exec(block.replace('"schema": "readme"', f'"schema": "{schema}"'), {})
    assert capsys.readouterr().out.splitlines() == ["{'topic': 'kelp'}", "[1, 2]"]
