"""Config first: pydantic models for ``amsha.yaml`` / ``amsha.toml`` / a dict.

Every mistake is reported as a :class:`~amsha.errors.ConfigError` that names the file,
the key path (``tasks.write.agent``) and what was expected. Environment variables of the
form ``AMSHA__KEY__SUBKEY=value`` override keys (values are parsed as JSON when they can
be, so ``AMSHA__RETRY__MAX_RETRIES=5`` is an int). Secrets are never in config: only the
names of the environment variables that hold them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from .errors import ConfigError

__all__ = [
    "AgentSpec",
    "AmshaConfig",
    "BackendConfig",
    "ProviderConfig",
    "RetryConfig",
    "RunsConfig",
    "TaskSpec",
    "check_config_shape",
    "format_validation_error",
    "load_config",
]

ENV_PREFIX = "AMSHA__"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryConfig(_Strict):
    """Amsha's single retry policy for LLM calls.

    Only retryable errors are retried (408, 409, 429, 5xx, timeouts, connection errors),
    never after the first streamed token. The wait is exponential backoff with full jitter,
    or the server's Retry-After when it gives one (up to ``max_retry_after_s``; a longer
    Retry-After fails the call at once instead of waiting).
    """

    max_retries: int = Field(2, ge=0, le=100, description="retries after the first attempt")
    initial_backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)
    jitter: bool = True
    max_retry_after_s: float = Field(60.0, ge=0)


class BackendConfig(_Strict):
    """A backend chosen by name, with its options (validated by the backend's own model)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class ObserverConfig(BackendConfig):
    """An observer chosen by name. Events reach it on a thread of its own, so it never holds
    back a run; ``queue_max`` bounds the events waiting for it (beyond, they are dropped for it
    and reported), ``drain_timeout_s`` is how long closing the session waits for it to catch up,
    ``delivery_interval_s`` how long its thread gathers events before handing them over (unset:
    the observer's own preference, else 20 ms; ``0``: each event as soon as the thread is free)."""

    queue_max: int = Field(100_000, ge=1)
    drain_timeout_s: float = Field(5.0, ge=0)
    delivery_interval_s: float | None = Field(None, ge=0, le=60)


class ProviderConfig(BackendConfig):
    """The LLM provider: backend ``name``, default ``model``, ``options`` and ``retry``."""

    name: str = "scripted"
    model: str | None = None
    retry: RetryConfig | None = None


class LLMConfig(_Strict):
    """A named LLM. Unset fields inherit from the top-level ``provider``; ``options`` merge."""

    provider: str | None = None
    model: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    retry: RetryConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_model(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value


class AgentSpec(_Strict):
    """An agent: who it is (role, goal, backstory), which LLM it uses, which tools it may call.

    ``options`` are handed to the orchestrator untouched (framework-specific settings).
    """

    name: str = ""
    role: str
    goal: str
    backstory: str = ""
    llm: str | None = None
    tools: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class TaskSpec(_Strict):
    """A task: what to do, what a good answer looks like, which agent does it.

    ``context`` names earlier tasks whose outputs this one receives; ``output_schema`` asks
    for structured (JSON schema) output.
    """

    name: str = ""
    description: str
    expected_output: str = ""
    agent: str
    context: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class RunsConfig(_Strict):
    """How runs are controlled across processes (see "Where runs execute" in the README)."""

    lease_s: float = Field(15.0, gt=0, le=3600, description="the owner's lease; renewed every lease_s / 3")
    cancel_poll_s: float = Field(0.1, gt=0, le=60, description="how often the owner reads cancel requests")
    tail_poll_max_s: float = Field(
        0.25, gt=0, le=60, description="the longest pause between reads of a run's events when tailing the store"
    )
    event_flush_s: float = Field(
        0.01, ge=0, le=60, description="the longest an event waits before it is written to the store"
    )


class AmshaConfig(_Strict):
    """The whole config. Every section has a default, so ``{}`` is a valid config."""

    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    llms: dict[str, LLMConfig] = Field(default_factory=dict)
    orchestrator: BackendConfig = Field(default_factory=lambda: BackendConfig(name="direct"))
    state: BackendConfig = Field(default_factory=lambda: BackendConfig(name="memory"))
    observers: list[ObserverConfig] = Field(default_factory=list)
    agents: dict[str, AgentSpec] = Field(default_factory=dict)
    tasks: dict[str, TaskSpec] = Field(default_factory=dict)
    pipeline: list[str] | None = None
    tools: dict[str, str] = Field(default_factory=dict, description="tool name -> 'module:callable'")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    runs: RunsConfig = Field(default_factory=RunsConfig)

    @model_validator(mode="after")
    def _names_and_refs(self, info: ValidationInfo) -> AmshaConfig:
        problems: list[tuple[str, str]] = []
        # Tools passed in code (ExecutionSession(tools=...)) count as declared.
        known_tools = set(self.tools) | set((info.context or {}).get("code_tools", ()))
        for name, agent in self.agents.items():
            agent.name = name
            if agent.llm is not None and agent.llm not in self.llms:
                problems.append(
                    (f"agents.{name}.llm", f"unknown llm {agent.llm!r}; expected one of: {_names(self.llms)}")
                )
            for i, tool in enumerate(agent.tools):
                if tool not in known_tools:
                    problems.append((f"agents.{name}.tools[{i}]", _unknown_tool(tool)))
        order = list(self.tasks)
        for name, task in self.tasks.items():
            task.name = name
            if task.agent not in self.agents:
                problems.append(
                    (f"tasks.{name}.agent", f"unknown agent {task.agent!r}; expected one of: {_names(self.agents)}")
                )
            for i, ref in enumerate(task.context):
                if ref not in self.tasks:
                    problems.append(
                        (f"tasks.{name}.context[{i}]", f"unknown task {ref!r}; expected one of: {_names(self.tasks)}")
                    )
                elif ref == name:
                    problems.append((f"tasks.{name}.context[{i}]", "a task cannot take its own output as context"))
                elif self.pipeline and ref in self.pipeline and name in self.pipeline:
                    if self.pipeline.index(ref) > self.pipeline.index(name):
                        problems.append(
                            (f"tasks.{name}.context[{i}]", f"task {ref!r} must come before {name!r} in the pipeline")
                        )
                elif order.index(ref) >= order.index(name) and not self.pipeline:
                    problems.append((f"tasks.{name}.context[{i}]", f"task {ref!r} must come before {name!r}"))
            for i, tool in enumerate(task.tools):
                if tool not in known_tools:
                    problems.append((f"tasks.{name}.tools[{i}]", _unknown_tool(tool)))
        for i, ref in enumerate(self.pipeline or []):
            if ref not in self.tasks:
                problems.append((f"pipeline[{i}]", f"unknown task {ref!r}; expected one of: {_names(self.tasks)}"))
        cycle = _context_cycle(self.tasks)
        if cycle:
            problems.append((f"tasks.{cycle[0]}.context", f"the tasks' context forms a cycle: {' -> '.join(cycle)}"))
        for name, path in self.tools.items():
            if ":" not in path:
                problems.append((f"tools.{name}", f"expected 'module:callable', got {path!r}"))
        if problems:
            raise _RefErrors(problems)
        return self


def _context_cycle(tasks: Mapping[str, TaskSpec]) -> list[str] | None:
    """A cycle of task names through ``context`` (``[a, b, a]``), or None. Self-references
    are reported on their own."""
    done: set[str] = set()
    for start in tasks:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, i = stack.pop()
            refs = [r for r in tasks[node].context if r in tasks and r != node]
            if i == 0:
                path.append(node)
                on_path.add(node)
            if i < len(refs):
                stack.append((node, i + 1))
                nxt = refs[i]
                if nxt in on_path:
                    return [*path[path.index(nxt) :], nxt]
                if nxt not in done:
                    stack.append((nxt, 0))
            else:
                path.pop()
                on_path.discard(node)
                done.add(node)
    return None


class _RefErrors(ValueError):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))


def _names(mapping: Mapping[str, Any]) -> str:
    return ", ".join(mapping) or "(none defined)"


def format_validation_error(err: ValidationError, *, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic error into ``(key_path, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    for e in err.errors(include_url=False):
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _RefErrors):
            problems.extend((_join(prefix, k), m) for k, m in ctx_err.problems)
            continue
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        key = _join(prefix, path)
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = f"{e['msg']} (got {_shown(e.get('input'))})"
        problems.append((key, msg))
    return problems


def _shown(value: Any) -> str:
    """A short description of a bad value: never the repr of a container (a YAML alias bomb
    would expand it), a scalar's repr cut to 80 characters."""
    if isinstance(value, dict | list | tuple | set):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value) if isinstance(value, str | int | float | bool) or value is None else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


MAX_CONFIG_DEPTH = 64
"""The deepest nesting a config may have (lists and mappings)."""
MAX_CONFIG_VALUES = 100_000
"""The most values a config may hold once YAML aliases are expanded."""


def check_config_shape(data: Any, source: str | None = None) -> None:
    """Refuse a config nested more than :data:`MAX_CONFIG_DEPTH` levels, holding more than
    :data:`MAX_CONFIG_VALUES` values once aliases are expanded (a YAML "billion laughs"), or
    containing itself (a YAML alias inside its own anchor): :class:`ConfigError` naming the
    file and the key. Shared values are measured once, so a bomb is refused at once."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def measure(value: Any, path: str, depth: int) -> int:
        if not isinstance(value, dict | list):
            return 1
        vid = id(value)
        known = sizes.get(vid)
        if known is not None:
            return known
        where = path or "(top level)"
        if vid in active:
            raise ConfigError(
                [(where, "the value contains itself (a YAML alias inside its own anchor?)")], source=source
            )
        if depth >= MAX_CONFIG_DEPTH:
            raise ConfigError([(where, f"nested more than {MAX_CONFIG_DEPTH} levels deep")], source=source)
        active.add(vid)
        size = 1
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, child in items:
            sub = f"{path}[{k}]" if isinstance(k, int) else (f"{path}.{k}" if path else str(k))
            size += measure(child, sub[:200], depth + 1)
            if size > MAX_CONFIG_VALUES:
                raise ConfigError(
                    [(where, f"holds more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded")],
                    source=source,
                )
        active.discard(vid)
        sizes[vid] = size
        return size

    measure(data, "", 0)


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    return f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("", "config file not found")], source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [
                (
                    "",
                    f"the file is not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r}); save it as UTF-8",
                )
            ],
            source=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file: {exc.strerror}")], source=str(path)) from None
    if _nesting(text) > MAX_CONFIG_DEPTH:
        # Refused before parsing: a YAML parser takes seconds to reach its recursion limit.
        raise ConfigError([("", f"nested more than {MAX_CONFIG_DEPTH} levels deep")], source=str(path))
    try:
        data = _parse(text, path)
    except RecursionError:
        raise ConfigError(
            [("", f"nested too deeply (more than {MAX_CONFIG_DEPTH} levels)")], source=str(path)
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([("", f"the top level must be a mapping, got {type(data).__name__}")], source=str(path))
    check_config_shape(data, str(path))
    return data


def _nesting(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` in ``text``, outside quotes and comments (an
    estimate that never overcounts a well-formed file by more than its unbalanced brackets)."""
    if text.count("[") + text.count("{") <= MAX_CONFIG_DEPTH:
        return 0
    depth = peak = 0
    quote = ""
    comment = False
    escaped = False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "[{":
            depth += 1
            peak = max(peak, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            comment = True
    return peak


def _parse(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([("", f"invalid YAML: {where}{problem}")], source=str(path)) from None
    elif suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([("", f"invalid TOML: {exc}")], source=str(path)) from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError([("", f"invalid JSON: {exc}")], source=str(path)) from None
    else:
        raise ConfigError(
            [("", f"unsupported config file type {suffix!r}; expected .yaml, .yml, .toml or .json")], source=str(path)
        )
    return data


def _include_registry_files(data: dict[str, Any], base_dir: Path, source: str | None) -> None:
    """``agents: agents.yaml`` and ``tasks: tasks.yaml`` point at CrewAI-style files.

    Keys Amsha does not know in those files (CrewAI settings such as ``verbose``) are kept
    under each entry's ``options`` for the orchestrator, instead of failing.
    """
    for section, model in (("agents", AgentSpec), ("tasks", TaskSpec)):
        ref = data.get(section)
        if not isinstance(ref, str):
            continue
        path = (base_dir / ref).resolve()
        try:
            loaded = _read_file(path)
        except ConfigError as exc:
            detail = "; ".join(f"{k}: {m}" if k else m for k, m in exc.problems)
            raise ConfigError([(section, f"cannot read {ref!r} ({path}): {detail}")], source=source) from None
        known = set(model.model_fields)
        entries: dict[str, Any] = {}
        for name, raw in loaded.items():
            entry = raw
            if isinstance(raw, dict):
                extra = {k: v for k, v in raw.items() if k not in known}
                entry = {k: v for k, v in raw.items() if k in known}
                if extra:
                    entry["options"] = {**extra, **entry.get("options", {})}
            entries[name] = entry
        data[section] = entries


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key in [k for k in environ if k.startswith(ENV_PREFIX) and len(k) > len(ENV_PREFIX)]:
        raw = environ[key]
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        try:
            value: Any = json.loads(raw)
        except (ValueError, RecursionError):
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part in ("provider", "orchestrator", "state"):
                child = {"name": child}
            if not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[parts[-1]] = value


def load_config(
    source: AmshaConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    code_tools: Iterable[str] = (),
) -> tuple[AmshaConfig, Path]:
    """Load and validate a config; returns it with the directory relative paths resolve from.

    ``source`` is a file path (YAML, TOML or JSON), a mapping, an :class:`AmshaConfig`, or
    None for the defaults. Environment overrides (``AMSHA__...``) apply to files and mappings.
    ``code_tools``: names of tools given in code, which agents and tasks may name too.
    """
    env = os.environ if environ is None else environ
    if isinstance(source, AmshaConfig):
        return source, Path.cwd()
    label: str | None = None
    if source is None:
        data: dict[str, Any] = {}
        base_dir = Path.cwd()
    elif isinstance(source, Mapping):
        check_config_shape(source)
        data = json.loads(json.dumps(source, default=str)) if source else {}
        base_dir = Path.cwd()
    else:
        path = Path(source)
        label = str(path)
        data = _read_file(path)
        base_dir = path.resolve().parent
    _include_registry_files(data, base_dir, label)
    _apply_env(data, env)
    check_config_shape(data, label)
    try:
        return AmshaConfig.model_validate(data, context={"code_tools": list(code_tools)}), base_dir
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), source=label) from None


def _unknown_tool(tool: str) -> str:
    return f"unknown tool {tool!r}; declare it under 'tools' (module:callable) or pass it with tools={{...}}"
