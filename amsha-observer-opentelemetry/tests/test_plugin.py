"""Discovery, the light entry module, and the core's observer contract suite."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from amsha.testing import ObserverContract


def test_discovered_and_listed_by_amsha_plugins() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "amsha", "plugins", "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert '"opentelemetry"' in proc.stdout and "amsha-observer-opentelemetry" in proc.stdout


def test_entry_module_and_session_creation_import_no_opentelemetry() -> None:
    code = (
        "import sys, json, amsha, amsha_otel.plugin; amsha.ExecutionSession().close(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


class TestOtelObserverContract(ObserverContract):
    @pytest.fixture
    def observer(self) -> Iterator[Any]:
        from amsha_otel import OtelObserver

        observer = OtelObserver({"exporter": "memory", "capture_content": True, "openinference": True})
        yield observer
        observer.close()

    @pytest.fixture
    def observer_output(self, observer: Any) -> Any:
        def spans() -> str:
            # What the exporter received: every finished span as the SDK serialises it.
            return "\n".join(span.to_json() for span in observer.span_exporter.get_finished_spans())

        return spans


def test_readme_examples_run() -> None:
    import re
    from pathlib import Path

    import yaml
    from amsha_otel import OtelOptions

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    (entry,) = yaml.safe_load(block)["observers"]
    assert entry["name"] == "opentelemetry"
    OtelOptions.model_validate(entry["options"])
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"name": "chat"' in proc.stdout and '"gen_ai.operation.name": "chat"' in proc.stdout
