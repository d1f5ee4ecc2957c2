"""Serving the app: ``amsha ui`` binds, prints the URL and runs uvicorn until interrupted."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import sys
import threading
import webbrowser
from pathlib import Path

from amsha.errors import InputError

from .plugin import TOKEN_ENV

__all__ = ["is_loopback", "resolve_token", "serve"]

DEFAULT_CONFIGS = ("amsha.yaml", "amsha.yml", "amsha.toml")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(given: str | None, host: str) -> str | None:
    """The token to require: ``--token VALUE``, a fresh one for a bare ``--token``, else
    ``$AMSHA_UI_TOKEN``. None on a loopback address without any; an error on another one."""
    token = given if given else None
    if given == "":
        token = secrets.token_urlsafe(24)
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise InputError(
            f"amsha ui: binding {host} exposes your runs to the network; pass --token (a random one is made "
            f"when it has no value) or set {TOKEN_ENV}"
        )
    if token is not None and len(token) < 8:
        raise InputError("amsha ui: the token must be at least 8 characters")
    return token


def _find_config(path: str | None) -> str:
    if path:
        if not Path(path).exists():
            raise InputError(f"amsha ui: config {path!r} does not exist")
        return path
    for name in DEFAULT_CONFIGS:
        if Path(name).exists():
            return name
    raise InputError("amsha ui: no config given and no ./amsha.yaml or ./amsha.toml here; pass --config CONFIG")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise InputError(f"amsha ui: cannot listen on {host}:{port}: {exc.strerror}; pass another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class _Stopped(Exception):
    """SIGTERM, after the server has shut down."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def serve(
    *,
    config: str | None,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    open_browser: bool = False,
) -> int:
    """Serve the run inspector over ``config``'s store until interrupted; returns 0."""
    import uvicorn
    from amsha import ExecutionSession

    from .app import create_app

    token = resolve_token(token, host)
    session = ExecutionSession(_find_config(config))
    try:
        if session.config.state.name == "memory":
            print("amsha ui: note: the state store is 'memory'; it holds no runs of other processes", file=sys.stderr)
        app = create_app(session, token=token, loopback_only=is_loopback(host))
        sock = _bind(host, port)
        bound = sock.getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
        print(f"amsha ui: serving {session.config.state.name} store at {url}  (Ctrl-C stops)", flush=True)
        if open_browser:
            threading.Timer(0.5, webbrowser.open, args=(url,)).start()
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, access_log=False, lifespan="off")
        )
        # uvicorn shuts down gracefully on SIGINT or SIGTERM and then raises the signal again
        # with the handler it found: make that an ordinary stop (exit 0), not a kill.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stop) if main else None
        try:
            server.run(sockets=[sock])
        except (KeyboardInterrupt, _Stopped):
            pass
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            sock.close()
        return 0
    finally:
        session.close()
