"""amsha-ui's hook implementation: the command ``amsha ui``.

Imported at every plugin discovery, so it imports nothing heavy: argparse setup only.
Starlette, uvicorn and Jinja are imported by :func:`run`, when the command runs.
"""

from __future__ import annotations

import argparse

from amsha import hookimpl
from amsha.hookspecs import CommandRegister

AMSHA_PLUGIN_API = "1.1"

TOKEN_ENV = "AMSHA_UI_TOKEN"


@hookimpl
def amsha_register_commands(register: CommandRegister) -> None:
    register("ui", setup, help="browse recorded runs in the browser: a local run inspector")


def setup(parser: argparse.ArgumentParser) -> object:
    """Arguments of ``amsha ui``; returns its handler."""
    parser.add_argument(
        "--config", help="config whose state store holds the runs (default: ./amsha.yaml or ./amsha.toml)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 picks a free one)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a token)"
    )
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    parser.add_argument(
        "--token",
        nargs="?",
        const="",
        default=None,
        metavar="TOKEN",
        help=f"require this token on every request (without a value: a random one; default: ${TOKEN_ENV} if set)",
    )
    return run


def run(args: argparse.Namespace) -> int:
    """The handler of ``amsha ui``: serve until interrupted."""
    from .server import serve

    return serve(config=args.config, host=args.host, port=args.port, token=args.token, open_browser=args.open)
