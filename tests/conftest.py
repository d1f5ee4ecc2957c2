"""Shared fixtures of the cross-package tests.

Two kinds of environment are used:

* fresh virtual environments (``venv_main``, ``venv_dup``) built once per test session,
  with amsha-core and chosen fixture plugin distributions from ``fixtures/plugins``
  installed as real distributions, so their entry points are discovered as a user's would be;
* the current environment (``sys.executable``), for end-to-end CLI and worker-process tests:
  under ``nox -s cross`` it holds amsha-core and the four first-party plugins.

Every command runs in a subprocess with the plugin-loading variables and ``AMSHA__*``
overrides removed, so the developer's shell cannot change what is tested.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CORE = REPO / "amsha-core"
FIXTURE_PLUGINS = TESTS / "fixtures" / "plugins"
QUICKSTART = REPO / "examples" / "quickstart"
TIMEOUT = 120

# The venvs: one with a good, a broken and an incompatible plugin; one with two plugins
# that claim the same provider name.
MAIN_PLUGINS = ("amsha-fixture-good", "amsha-fixture-broken", "amsha-fixture-incompatible")
DUP_PLUGINS = ("amsha-fixture-good", "amsha-fixture-dup")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without anything that steers Amsha (``AMSHA_*``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMSHA")}
    env.setdefault("PYTHONIOENCODING", "utf-8")
    env.update(extra or {})
    return env


def run(
    cmd: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)


def amsha_here(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m amsha ARGS`` in the current environment."""
    return run([sys.executable, "-m", "amsha", *args], env=clean_env(env), cwd=cwd)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed assertion on a subprocess should show."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


@dataclass(frozen=True)
class Venv:
    """A virtual environment with amsha-core and some fixture plugins installed."""

    root: Path
    plugins: tuple[str, ...]

    @property
    def bin(self) -> Path:
        return self.root / ("Scripts" if os.name == "nt" else "bin")

    @property
    def python(self) -> Path:
        return self.bin / ("python.exe" if os.name == "nt" else "python")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = clean_env(extra)
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(key, None)
        env["PYTHONNOUSERSITE"] = "1"  # no ~/.local entry points either
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "")])
        return env

    def amsha(
        self, *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The venv's ``amsha`` console script."""
        return run([str(self.bin / "amsha"), *args], env=self.env(env), cwd=cwd)

    def py(
        self, code: str, *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -c CODE ARGS`` with the venv's interpreter."""
        return run([str(self.python), "-c", code, *args], env=self.env(env), cwd=cwd)


def _copy_source(src: Path, dest: Path) -> Path:
    """A clean copy of a distribution's source: the build never writes into the repository,
    and a new path means an installer's cache cannot hand back a stale build."""
    shutil.copytree(
        src,
        dest,
        ignore=shutil.ignore_patterns(
            "__pycache__",
            "*.pyc",
            ".ruff_cache",
            ".mypy_cache",
            ".hypothesis",
            ".pytest_cache",
            "tests",
            "dist",
            "build",
        ),
    )
    return dest


def build_venv(root: Path, plugins: tuple[str, ...], sources: Path) -> Venv:
    """Create a venv at ``root`` (``uv venv`` if uv is on PATH, else ``python -m venv``) and
    install amsha-core and ``plugins`` into it, non-editable."""
    dists = [_copy_source(CORE, sources / "amsha-core")]
    dists += [_copy_source(FIXTURE_PLUGINS / name, sources / name) for name in plugins]
    venv = Venv(root, plugins)
    env = clean_env()
    env.pop("VIRTUAL_ENV", None)
    uv = shutil.which("uv")
    if uv:
        steps = [
            [uv, "venv", "--quiet", "--python", sys.executable, str(root)],
            [uv, "pip", "install", "--quiet", "--python", str(venv.python), *map(str, dists)],
        ]
    else:
        steps = [
            [sys.executable, "-m", "venv", str(root)],
            [str(venv.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *map(str, dists)],
        ]
    for cmd in steps:
        proc = run(cmd, env=env, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"building the test venv failed: {' '.join(cmd)}\n{describe(proc)}")
    return venv


@pytest.fixture(scope="session")
def _fixture_venvs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Venv]]:
    """Both fixture venvs, built side by side (installs take seconds each)."""
    base = tmp_path_factory.mktemp("venvs")
    wanted = {"main": MAIN_PLUGINS, "dup": DUP_PLUGINS}
    with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
        futures = {
            key: pool.submit(build_venv, base / key, plugins, base / f"{key}-src") for key, plugins in wanted.items()
        }
        venvs = {key: future.result() for key, future in futures.items()}
    yield venvs


@pytest.fixture(scope="session")
def venv_main(_fixture_venvs: dict[str, Venv]) -> Venv:
    """amsha-core + amsha-fixture-good + amsha-fixture-broken + amsha-fixture-incompatible."""
    return _fixture_venvs["main"]


@pytest.fixture(scope="session")
def venv_dup(_fixture_venvs: dict[str, Venv]) -> Venv:
    """amsha-core + amsha-fixture-good + amsha-fixture-dup (both register ``echo-fixture``)."""
    return _fixture_venvs["dup"]


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """A copy of examples/quickstart (its config files only), so its ``.amsha`` store lands
    in the test's tmp dir. Returns the copied config file."""
    dest = tmp_path / "quickstart"
    dest.mkdir()
    for path in QUICKSTART.iterdir():
        if path.is_file() and path.suffix in (".yaml", ".yml", ".toml"):
            shutil.copy2(path, dest / path.name)
    assert (dest / "amsha.yaml").is_file()
    return dest / "amsha.yaml"
