"""amsha-ui: ``amsha ui``, a local run inspector in the browser, over any Amsha state store.

Importing this package is cheap (no web framework): :func:`create_app` imports Starlette
when it is called. ``amsha ui --config amsha.yaml`` serves it; from Python::

    from amsha import ExecutionSession
    from amsha_ui import create_app

    app = create_app(ExecutionSession("amsha.yaml"))  # any ASGI server
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["__version__", "create_app"]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .app import create_app
else:

    def create_app(*args: Any, **kwargs: Any) -> Any:
        """The ASGI app (see :func:`amsha_ui.app.create_app`); imports Starlette on first use."""
        from .app import create_app as build

        return build(*args, **kwargs)
