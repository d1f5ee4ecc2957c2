"""``amsha run --detach``: a run in a detached process of its own.

:class:`DetachedProcess` is a ``concurrent.futures.Executor`` that starts each submitted run
spec in a new Python process, in a session of its own (``start_new_session``: the terminal's
signals don't reach it, and it outlives the command that started it). The child executes the
spec with :func:`amsha.session.run_spec` against the shared store; nothing comes back through
the executor: the store is how every other process sees the run.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DetachedProcess", "main"]


class DetachedProcess(concurrent.futures.Executor):
    """Runs each submitted run spec in a detached child process (see the module docs). The
    returned future never completes: the run reports through the store."""

    def __init__(self, *, log_path: str | os.PathLike[str] | None = None) -> None:
        self.log_path = log_path
        self.pids: list[int] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        from .session import run_spec

        if fn is not run_spec or len(args) != 1 or kwargs:
            raise TypeError("DetachedProcess executes run specs only (ExecutionSession.run hands them over)")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "amsha._detach"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(args[0]).encode("utf-8"))
        proc.stdin.close()
        self.pids.append(proc.pid)
        return concurrent.futures.Future()


def main() -> int:
    """The detached child: read the spec from stdin, execute it. If the run cannot even be
    started, record it FAILED (if it is still queued) so that it does not stay PENDING."""
    spec = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    from .session import run_spec

    try:
        run_spec(spec)
        return 0
    except BaseException as exc:
        _record_failure(spec, exc)
        raise


def _record_failure(spec: dict[str, Any], exc: BaseException) -> None:
    from .config import AmshaConfig
    from .secrets import redact
    from .session import ExecutionSession
    from .state import RunStatus

    try:
        with ExecutionSession(AmshaConfig.model_validate(spec["config"]), base_dir=spec["base_dir"]) as session:
            record = session.store.get_run(spec["run_id"])
            if record.status == RunStatus.PENDING and not record.owner:
                record.status = RunStatus.FAILED
                record.error = {"type": type(exc).__name__, "message": redact(str(exc))}
                record.finished_at = time.time()
                session.store.put_run(record)
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
