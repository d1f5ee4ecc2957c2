"""A ``concurrent.futures.Executor`` over Ray tasks, for handing Amsha runs to a Ray cluster.

Ray has no Executor of its own; this is all it takes: each ``submit`` is a Ray task, and an
``ObjectRef`` already converts to a ``concurrent.futures.Future``::

    import ray
    from amsha import ExecutionSession
    from ray_executor import RayExecutor

    ray.init()  # or ray.init(address="auto") on a cluster
    session = ExecutionSession("amsha.yaml", executor=RayExecutor())
    handle = session.run(inputs={"topic": "kelp"}, mode="background")

Ray retries a task whose worker died (``max_retries``); Amsha's lease makes that safe: the
retry finds the run owned (or LOST) and does not run it a second time.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any


class RayExecutor(concurrent.futures.Executor):
    """Submits each call as a Ray task; ``options`` go to ``ray.remote`` (``num_cpus``, ...)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._remote: dict[Callable[..., Any], Any] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        import ray

        remote = self._remote.get(fn)
        if remote is None:
            remote = ray.remote(**self.options)(fn) if self.options else ray.remote(fn)
            self._remote[fn] = remote
        future: concurrent.futures.Future[Any] = remote.remote(*args, **kwargs).future()
        return future
