"""Every error Amsha raises, under one root.

Each error says what went wrong, where (config file and key path, plugin name and
distribution, run id, task) and, where there is one, what to do about it::

    AmshaError
    ├── ConfigError                    bad config: file, key path, what was expected
    ├── PluginError
    │   ├── PluginLoadError            an entry point failed to import or register
    │   ├── DuplicatePluginError       two plugins claim one backend name
    │   ├── PluginVersionError         a plugin built for an incompatible plugin API
    │   └── UnknownBackendError        a config names a backend nobody registered
    ├── StateError
    │   ├── NonJSONValueError          a value that is not JSON, with its key
    │   ├── VersionConflictError       optimistic concurrency: expected vs actual version
    │   ├── StateNotFoundError         no such state id or version
    │   ├── RunNotFoundError           no such run id in the store
    │   ├── LeaseLostError             a run's owner lost its lease: the write was refused
    │   └── SchemaVersionError         a saved state or event of an unknown schema
    ├── ProviderError                  an LLM call failed; ``retryable`` says if a retry may help
    │   ├── AuthenticationError        401, not retryable
    │   ├── PermissionDeniedError      403, not retryable
    │   ├── NotFoundError              404 (usually a bad model name), not retryable
    │   ├── BadRequestError            400/422, not retryable, carries the server's message
    │   ├── ConflictError              409, retryable
    │   ├── RateLimitError             429, retryable, carries ``retry_after``
    │   ├── ProviderTimeoutError       408 or a client timeout, retryable
    │   ├── ProviderConnectionError    connection refused or reset, retryable
    │   ├── ServerError                5xx, retryable
    │   ├── StreamInterruptedError     the stream broke after the first token; never retried,
    │   │                              carries the partial text
    │   └── StructuredOutputError      the model's JSON did not match the requested schema
    └── ExecutionError
        ├── RunCancelledError          the run was cancelled (``reason`` says why)
        ├── RunFailedError             a run ended in failure; ``cause`` is the original error
        ├── RunTimeoutError            ``result(timeout=...)`` expired; the run goes on
        ├── RunLostError               the run's owner stopped renewing its lease (process
        │                              died, machine paused): the run is LOST
        ├── InputError                 a ``{placeholder}`` had no input, or a task is unknown
        └── ReplayDivergenceError      a replayed run asked for an exchange the record lacks
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AmshaError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "DuplicatePluginError",
    "ExecutionError",
    "InputError",
    "LeaseLostError",
    "NonJSONValueError",
    "NotFoundError",
    "PermissionDeniedError",
    "PluginError",
    "PluginLoadError",
    "PluginVersionError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeoutError",
    "RateLimitError",
    "ReplayDivergenceError",
    "RunCancelledError",
    "RunFailedError",
    "RunLostError",
    "RunNotFoundError",
    "RunTimeoutError",
    "SchemaVersionError",
    "ServerError",
    "StateError",
    "StateNotFoundError",
    "StreamInterruptedError",
    "StructuredOutputError",
    "UnknownBackendError",
    "VersionConflictError",
    "error_from_dict",
]


class AmshaError(Exception):
    """Root of every error Amsha raises. Its text never shows a registered secret."""

    def __str__(self) -> str:
        from .secrets import redact

        return redact(super().__str__())

    def __repr__(self) -> str:
        from .secrets import redact

        return redact(super().__repr__())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description (type and message) for run records and events."""
        return {"type": type(self).__name__, "message": str(self)}


class ConfigError(AmshaError):
    """A config value is missing, misspelled or of the wrong type.

    ``problems`` holds one ``(key_path, message)`` pair per mistake; the message
    lists them all, prefixed by the file they came from.
    """

    def __init__(self, problems: list[tuple[str, str]], *, source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        if len(problems) == 1:
            key, msg = problems[0]
            text = f"{where}{key}: {msg}" if key else f"{where}{msg}"
        else:
            lines = [f"  {key}: {msg}" if key else f"  {msg}" for key, msg in problems]
            text = f"{where}{len(problems)} config errors:\n" + "\n".join(lines)
        super().__init__(text)


class PluginError(AmshaError):
    """Something is wrong with a plugin."""


class PluginLoadError(PluginError):
    """An ``amsha`` entry point failed to import or register.

    Other plugins still load; a session fails only if it selects a backend this
    plugin would have provided.
    """

    def __init__(self, name: str, distribution: str | None, version: str | None, error: BaseException) -> None:
        self.name = name
        self.distribution = distribution
        self.version = version
        self.error = error
        dist = f" from {distribution} {version or ''}".rstrip() if distribution else ""
        super().__init__(f'error loading plugin "{name}"{dist}: {type(error).__name__}: {error}')


class DuplicatePluginError(PluginError):
    """Two plugins register the same backend name for one kind."""

    def __init__(self, kind: str, name: str, owners: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.owners = owners
        super().__init__(
            f"{kind} {name!r} is registered by more than one plugin ({', '.join(owners)}); "
            f"uninstall one, or restrict loading with AMSHA_LOAD_PLUGINS"
        )


class PluginVersionError(PluginError):
    """A plugin was built for a plugin API this core does not speak. Its hooks are not
    called; a session selecting a backend it would provide fails with this error, naming
    the config key and file, the plugin and both versions."""

    def __init__(
        self,
        plugin: str,
        plugin_api: str,
        core_api: str,
        distribution: str | None = None,
        *,
        key: str = "",
        source: str | None = None,
        backend: str | None = None,
        version: str | None = None,
    ) -> None:
        self.plugin = plugin
        self.plugin_api = plugin_api
        self.core_api = core_api
        self.key = key
        self.source = source
        dist = distribution or plugin
        where = "".join(f"{part}: " for part in (source, key) if part)
        what = f"{backend} is not available: " if backend else ""
        shipped = f" ({distribution} {version})" if distribution and version else ""
        super().__init__(
            f"{where}{what}plugin {plugin!r}{shipped} targets Amsha plugin API {plugin_api}, but this amsha-core "
            f"speaks {core_api}; install a release of {dist} built for plugin API "
            f"{core_api.split('.', maxsplit=1)[0]}.x (or an amsha-core that speaks {plugin_api})"
        )


class UnknownBackendError(PluginError):
    """A config selects a backend name that no loaded plugin registers."""

    def __init__(
        self,
        kind: str,
        name: str,
        installed: list[str],
        *,
        hint: str | None = None,
        key: str | None = None,
        source: str | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.installed = installed
        self.source = source
        where = "".join(f"{part}: " for part in (source, key) if part)
        names = ", ".join(sorted(installed)) or "none"
        text = f"{where}unknown {kind} {name!r}; installed {kind}s: {names}"
        if hint:
            text += f"; {hint}"
        super().__init__(text)


class StateError(AmshaError):
    """A problem with an ExecutionState or a state store."""


class NonJSONValueError(StateError, TypeError):
    """A value put into an ExecutionState cannot be represented as JSON."""

    def __init__(self, key: str, value: object, detail: str = "") -> None:
        self.key = key
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"state key {key!r}: value of type {type(value).__name__} is not JSON-serializable{extra}; "
            f"store str, int, float, bool, None, lists and dicts with string keys"
        )


class VersionConflictError(StateError):
    """A write named a version that is no longer the latest; nothing was written."""

    def __init__(self, state_id: str, expected: int, actual: int) -> None:
        self.state_id = state_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"state {state_id!r}: version conflict, the write expected version {expected} "
            f"but the store holds version {actual}; load version {actual}, reapply the change and retry"
        )


class StateNotFoundError(StateError, KeyError):
    """No state with that id (or no such version of it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunNotFoundError(StateError, KeyError):
    """No run with that id in the configured store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LeaseLostError(StateError):
    """A run's owner no longer holds its lease (it expired, or another owner holds it): the
    store refused the write and nothing was written. The owner stops the run without
    writing; readers see it LOST."""

    def __init__(self, run_id: str, detail: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id}: {detail}")


class SchemaVersionError(StateError):
    """A saved state, event or record has a schema version this release cannot read."""


class ProviderError(AmshaError):
    """An LLM call failed.

    ``retryable`` says whether Amsha's retry may try again; ``status`` is the HTTP
    status when there was one; ``provider`` names the backend.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        if retryable is not None:
            self.retryable = retryable
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.update(provider=self.provider, status=self.status, retryable=self.retryable)
        return data


class AuthenticationError(ProviderError):
    """The provider rejected the credentials (401)."""


class PermissionDeniedError(ProviderError):
    """The credentials may not do this (403)."""


class NotFoundError(ProviderError):
    """The provider does not know the model or endpoint (404)."""


class BadRequestError(ProviderError):
    """The provider refused the request as malformed (400, 422)."""


class ConflictError(ProviderError):
    """The provider reported a conflict (409)."""

    retryable = True


class RateLimitError(ProviderError):
    """The provider is rate limiting (429); ``retry_after`` is in seconds, if given."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["retry_after"] = self.retry_after
        return data


class ProviderTimeoutError(ProviderError):
    """The call timed out (408 or a client-side timeout)."""

    retryable = True


class ProviderConnectionError(ProviderError):
    """The provider could not be reached."""

    retryable = True


class ServerError(ProviderError):
    """The provider failed on its side (5xx)."""

    retryable = True


class StreamInterruptedError(ProviderError):
    """A stream broke after it had produced output.

    Never retried: the caller already saw tokens. ``partial_text`` holds what arrived.
    """

    retryable = False

    def __init__(self, message: str, *, partial_text: str = "", **kw: Any) -> None:
        self.partial_text = partial_text
        kw["retryable"] = False
        super().__init__(message, **kw)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["partial_text"] = self.partial_text
        return data


class StructuredOutputError(ProviderError):
    """The model's output did not parse or validate against the requested schema."""

    def __init__(self, message: str, *, text: str = "", **kw: Any) -> None:
        self.text = text
        super().__init__(message, **kw)


class ExecutionError(AmshaError):
    """A run could not be executed as asked."""


class RunCancelledError(ExecutionError):
    """The run was cancelled; ``reason`` says by whom or why. ``result`` (when raised by a
    handle) holds the partial :class:`~amsha.RunResult`: outputs of finished tasks, state,
    metrics."""

    result: Any = None

    def __init__(self, run_id: str | None = None, reason: str = "cancelled") -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id} was cancelled: {reason}" if run_id else f"cancelled: {reason}")


class RunFailedError(ExecutionError):
    """A run failed. ``cause`` holds the error that ended it, ``task`` the task it was in,
    ``result`` the partial :class:`~amsha.RunResult` (outputs of the tasks that finished)."""

    result: Any = None

    def __init__(self, run_id: str, error: dict[str, Any], cause: BaseException | None = None) -> None:
        self.run_id = run_id
        self.error = error
        self.cause = cause
        self.task = error.get("task")
        where = f" in task {self.task!r}" if self.task else ""
        super().__init__(f"run {run_id} failed{where}: {error.get('type')}: {error.get('message')}")


class RunTimeoutError(ExecutionError, TimeoutError):
    """``result(timeout=...)`` expired before the run finished; the run is not cancelled."""


class RunLostError(ExecutionError):
    """The run is LOST: the process that owned it stopped renewing its lease (it died, or its
    machine paused) before the run ended. ``owner`` (``{"id", "host", "pid"}``) and
    ``heartbeat_at`` say who and when it was last heard of; ``result`` holds what was
    recorded (outputs of finished tasks; the state's last snapshot stays loadable, so the
    client may rerun from it: Amsha never resumes on its own)."""

    result: Any = None

    def __init__(
        self, run_id: str, owner: dict[str, Any] | None = None, heartbeat_at: float | None = None
    ) -> None:
        import time

        self.run_id = run_id
        self.owner = owner
        self.heartbeat_at = heartbeat_at
        who = (
            f"{owner.get('host')} pid {owner.get('pid')} (owner {str(owner.get('id', ''))[:8]})"
            if owner
            else "its owner"
        )
        when = (
            f"; last heartbeat {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(heartbeat_at))}"
            f" ({max(0.0, time.time() - heartbeat_at):.1f}s ago)"
            if heartbeat_at
            else ""
        )
        super().__init__(
            f"run {run_id} is LOST: {who} stopped renewing its lease{when}; its last state snapshot "
            f"is kept, rerun from it if you want"
        )


class InputError(ExecutionError, ValueError):
    """A run was asked for something the registry or inputs cannot provide."""


class ReplayDivergenceError(ExecutionError):
    """A replay asked for an LLM exchange that the recorded run does not hold.

    Exchanges are matched by identity (a hash of the whole request), never by position.
    ``request_hash`` is what the replay asked for; ``expected`` the first recorded exchange
    not yet replayed (its task, agent, call index and request hash), or None.
    """

    def __init__(self, run_id: str, request_hash: str, expected: dict[str, Any] | None) -> None:
        self.run_id = run_id
        self.request_hash = request_hash
        self.expected = expected
        if expected is None:
            detail = "the recorded run made no further LLM call"
        else:
            detail = (
                f"the first recorded exchange not replayed is task {expected.get('task')!r}, agent "
                f"{expected.get('agent')!r}, call #{expected.get('index')} (request {expected.get('request_hash')})"
            )
        super().__init__(
            f"replay of run {run_id} diverges: an LLM request (hash {request_hash}) matches no recorded exchange; {detail}"
        )


_BY_NAME: dict[str, type[AmshaError]] = {}


def error_from_dict(data: dict[str, Any]) -> AmshaError:
    """Rebuild a best-effort error from :meth:`AmshaError.to_dict` output (for attached runs)."""
    if not _BY_NAME:
        _BY_NAME.update({c.__name__: c for c in _all_subclasses(AmshaError)})
    cls = _BY_NAME.get(str(data.get("type")))
    message = str(data.get("message", ""))
    if (
        cls is not None
        and issubclass(cls, ProviderError)
        and cls not in (RateLimitError, StreamInterruptedError, StructuredOutputError)
    ):
        return cls(message, provider=data.get("provider"), status=data.get("status"))
    err = ExecutionError(f"{data.get('type')}: {message}")
    return err


def _all_subclasses(cls: type[AmshaError]) -> list[type[AmshaError]]:
    out: list[type[AmshaError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out
