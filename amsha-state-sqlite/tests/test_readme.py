"""The README's Python example runs as written (with its file in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    block = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    exec(block.replace("/tmp/amsha-readme.db", str(tmp_path / "readme.db")), {})
    assert capsys.readouterr().out.splitlines() == ["{'topic': 'kelp'}", "[1, 2]"]
