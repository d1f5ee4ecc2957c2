"""``amsha ui`` as users get it: discovered through the entry point, import-light, refusing
to expose runs without a token, serving what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _ui_support import Recorded, amsha_cli
from amsha import load_plugins


def test_the_command_is_registered_by_the_installed_plugin() -> None:
    found = load_plugins(refresh=True)
    entry = found.command("ui")
    assert entry is not None and entry.distribution == "amsha-ui"
    out = subprocess.run([*amsha_cli(), "plugins"], capture_output=True, text=True, check=True).stdout
    assert "command: ui" in out


def test_discovery_imports_no_web_framework() -> None:
    code = (
        "import sys; from amsha import cli; cli._parser();"
        "heavy = [m for m in ('starlette', 'uvicorn', 'jinja2', 'amsha_ui.app', 'amsha_ui.server') if m in sys.modules];"
        "assert 'amsha_ui.plugin' in sys.modules, 'the plugin was not loaded';"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_another_address_needs_a_token(host: str, recorded: Recorded) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AMSHA_UI_TOKEN"}
    proc = subprocess.run(
        [*amsha_cli(), "ui", "--config", str(recorded.config), "--host", host, "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--token" in proc.stderr and "AMSHA_UI_TOKEN" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_config_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([*amsha_cli(), "ui"], capture_output=True, text=True, cwd=tmp_path, timeout=30, check=False)
    assert proc.returncode == 2 and "--config" in proc.stderr


def _serve(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*amsha_cli(), "ui", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise AssertionError(f"amsha ui printed {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return proc, line[line.index("http://") :].split()[0]


def _get(url: str, **kw: object) -> httpx.Response:
    deadline = time.monotonic() + 10
    while True:
        try:
            return httpx.get(url, timeout=5, **kw)  # type: ignore[arg-type]
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_amsha_ui_serves_the_url_it_prints(recorded: Recorded) -> None:
    proc, url = _serve(["--config", str(recorded.config), "--port", "0"])
    try:
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        page = _get(url)
        assert page.status_code == 200 and recorded.ok in page.text
        assert _get(url + "api/runs").json()["runs"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_a_bare_token_flag_makes_one_and_requires_it(recorded: Recorded) -> None:
    proc, url = _serve(["--config", str(recorded.config), "--port", "0", "--token"])
    try:
        base, _, token = url.partition("?token=")
        assert len(token) >= 24
        assert _get(base + "api/runs").status_code == 401
        assert _get(base + "api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        with httpx.Client(follow_redirects=True) as client:
            page = client.get(url)
            assert page.status_code == 200 and recorded.ok in page.text and str(page.url) == base
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_token_from_the_environment(recorded: Recorded) -> None:
    env = {**os.environ, "AMSHA_UI_TOKEN": "from-the-environment"}
    proc, url = _serve(["--config", str(recorded.config), "--port", "0"], env=env)
    try:
        assert url.endswith("?token=from-the-environment")
        assert _get(url.split("?")[0] + "api/runs").status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_taken_port_is_one_line(recorded: Recorded) -> None:
    proc, url = _serve(["--config", str(recorded.config), "--port", "0"])
    try:
        port = url.rsplit(":", 1)[1].strip("/")
        again = subprocess.run(
            [*amsha_cli(), "ui", "--config", str(recorded.config), "--port", port],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert again.returncode == 2 and "--port" in again.stderr
    finally:
        proc.terminate()
        proc.wait(10)
