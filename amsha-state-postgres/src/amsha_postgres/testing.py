"""A throwaway PostgreSQL server for tests and benchmarks, started from the machine's own
PostgreSQL binaries (Debian's ``postgresql`` package here; installed with ``apt-get`` when
missing and the process may do so).

::

    server = PostgresServer.launch()
    store = PostgresStore(server.dsn(), schema="t1")
    ...
    server.close()

``initdb`` runs in a new temporary folder; the server listens on a free port of 127.0.0.1
and on a Unix socket in that folder, with password (SCRAM) authentication for the user
``amsha``. As root, the binaries run as the ``postgres`` user (PostgreSQL refuses to run as
root), and the folder is handed to that user. Nothing here is imported by the store.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["PostgresServer", "ServerUnavailable", "find_bindir"]

# Settings for throwaway test servers: durability is not what they test (see ``durable``).
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class ServerUnavailable(RuntimeError):
    """PostgreSQL's binaries are missing and could not be installed, or the server did not start."""


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path)) or (0,)


def _find() -> Path | None:
    env = os.environ.get("AMSHA_PG_BINDIR")
    candidates: list[str] = [env] if env else []
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    candidates += [
        str(Path(p).parent)
        for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)
    ]
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def find_bindir(install: bool = True) -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (``AMSHA_PG_BINDIR``, ``pg_config
    --bindir``, Debian's versioned folders, then PATH). When missing and ``install``, runs
    ``apt-get install -y postgresql`` (as root). Raises :class:`ServerUnavailable`."""
    found = _find()
    if found is not None or not install:
        if found is None:
            raise ServerUnavailable("PostgreSQL's initdb and pg_ctl were not found")
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerUnavailable(
            "PostgreSQL's initdb and pg_ctl were not found, and this process cannot install them "
            "(it needs root and apt-get): install the postgresql package, or set AMSHA_PG_BINDIR"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]
    steps = [[*apt, "install", "postgresql"], [*apt, "update"], [*apt, "install", "postgresql"]]
    for i, step in enumerate(steps):
        result = subprocess.run(step, capture_output=True, text=True, env=env, timeout=1200, check=False)
        if result.returncode == 0 and step[-1] == "postgresql":
            break
        if i == len(steps) - 1:
            raise ServerUnavailable(
                f"apt-get install postgresql failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
    found = _find()
    if found is None:
        raise ServerUnavailable("apt-get installed postgresql, but initdb and pg_ctl are still not found")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server in a temporary folder (see the module docs).

    ``durable``: keep PostgreSQL's default fsync and commit settings (benchmarks); by
    default the server skips fsync, as a test server may. ``settings`` are more ``-c``
    parameters. The superuser is ``amsha`` with a random ``password``.
    """

    def __init__(self, *, durable: bool = False, settings: dict[str, Any] | None = None, install: bool = True) -> None:
        self.bindir = find_bindir(install)
        self.user = "amsha"
        self.password = f"pw-{secrets.token_hex(12)}"
        self.folder = Path(tempfile.mkdtemp(prefix="amsha-pg-"))
        self.data = self.folder / "data"
        self.socket_dir = self.folder
        self.logfile = self.folder / "server.log"
        self.port = _free_port()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "max_connections": "300",
            "unix_socket_directories": str(self.socket_dir),
            **({} if durable else FAST),
            **{k: str(v) for k, v in (settings or {}).items()},
        }
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable(
                    "running as root, but there is no 'postgres' user to run the server as"
                ) from None
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        else:
            self._uid, self._gid = os.getuid(), os.getgid()
        self.folder.chmod(0o700)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        os.chown(pwfile, self._uid, self._gid)
        pwfile.chmod(0o600)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                self.user,
                "-A",
                "scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.started = False

    @classmethod
    def launch(cls, **kwargs: Any) -> PostgresServer:
        """A new server, started."""
        server = cls(**kwargs)
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    def _run(self, tool: str, *args: str, timeout: float = 120) -> str:
        cmd = [*self._as, str(self.bindir / tool), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.folder, check=False)
        if result.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise ServerUnavailable(
                f"{tool} {' '.join(args[:3])} failed ({result.returncode}): {result.stderr[-2000:]}\n{log}"
            )
        return result.stdout

    def start(self) -> None:
        """Start (or start again) the server on its port; waits until it accepts connections."""
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} {options}",
            "start",
        )
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions and disconnect;
        ``immediate``: like a crash, recovery at the next start)."""
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            self.started = False

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop("immediate")
        except ServerUnavailable:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", *, host: str = "127.0.0.1", port: int | None = None) -> str:
        """A URL-style DSN with the password, for ``dbname`` over TCP (or ``host`` = the
        socket folder)."""
        where = quote(host, safe="") if host.startswith("/") else host
        return f"postgresql://{self.user}:{quote(self.password, safe='')}@{where}:{port or self.port}/{dbname}"

    def admin(self, dbname: str = "postgres") -> Any:
        """An autocommit psycopg connection as the superuser."""
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def create_database(self, name: str, *settings: str) -> str:
        """Create database ``name`` (``settings``: ``ALTER DATABASE ... SET`` clauses); its DSN."""
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            for setting in settings:
                conn.execute(f'ALTER DATABASE "{name}" SET {setting}')
        return self.dsn(name)
